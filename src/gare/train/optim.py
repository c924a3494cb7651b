"""Optimizers and learning-rate schedules of the two modes (docs/method-notes.md, "release vs default").

Default: AdamW with four groups ({CLIP, new modules} x {decay, no decay}; biases, norms and logit_scale not
decayed), linear warm-up then cosine decay over the real number of steps (a ``LambdaLR``). torch's fused AdamW
kernel where the parameters' device and dtypes have one (CPU and CUDA): the same update as the per-tensor loop,
equal to it within float rounding, and several times faster on models with a large token embedding (the
demo's 6.3M-row CLIP vocabulary is most of its parameters); else the ``foreach`` form (bit-identical to the loop).

Release (``release.optimizer``): the official release's "BertAdam". For each tensor p with gradient g::

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2          (m, v in p's dtype: fp16 for fp16 weights)
    u = m / (sqrt(v) + e)                                        (no bias correction)
    u <- u + wd p                                                (when wd > 0)
    p <- p - lr_group * f(s / T) * u                             (s = steps this tensor took before this one)

with ``f(x) = x / w`` for ``x < w`` and ``0.5 (1 + cos(pi x))`` after (not shifted by the warm-up, and rising
again past ``x = 1``). The schedule lives inside the optimizer, so no scheduler is returned. Each tensor's
gradient is also clipped to norm 1 (a no-op after the caller's global clip).

Release groups (``release.param_groups``): the substring rule applied to the official parameter names: no
decay for names containing ``bias``, ``LayerNorm.bias`` or ``LayerNorm.weight``; lr x ``clip_lr_coef`` for
names containing ``clip.``.

Caller order (the Trainer's): ``backward``, global ``clip_grad_norm_(1.0)``, ``optimizer.step()``,
``scheduler.step()`` when a scheduler was returned, then clamp logit_scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config, TrainConfig, resolve_compat
from ..model.convert import official_name

#: The release's no-decay substrings, matched against official parameter names.
RELEASE_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
#: The release's substring for the CLIP learning-rate coefficient.
RELEASE_CLIP_KEY = "clip."


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Four groups: {CLIP, new modules} x {decay, no decay}. logit_scale counts as CLIP (as in the paper)."""
    groups: dict[tuple[bool, bool], list] = {(c, d): [] for c in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_clip = name.startswith("backbone.")
        no_decay = p.ndim < 2 or name.endswith(".bias") or "logit_scale" in name
        groups[(is_clip, not no_decay)].append(p)
    return _make_groups(groups, cfg)


def release_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The release's groups: the substring rule on each parameter's official name (model/convert.py)."""
    groups: dict[tuple[bool, bool], list] = {(c, d): [] for c in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        off = official_name(name)
        no_decay = any(s in off for s in RELEASE_NO_DECAY)
        is_clip = RELEASE_CLIP_KEY in off
        groups[(is_clip, not no_decay)].append(p)
    return _make_groups(groups, cfg)


def _make_groups(groups: dict[tuple[bool, bool], list], cfg: TrainConfig) -> list[dict]:
    out = []
    for (is_clip, decay), params in groups.items():
        if not params:
            continue
        lr = cfg.lr * (cfg.clip_lr_coef if is_clip else 1.0)
        out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'clip' if is_clip else 'new'}_{'decay' if decay else 'no_decay'}"})
    return out


def release_schedule_factor(x: float, warmup: float) -> float:
    """The release's warm-up/cosine factor at progress ``x = s / T``: ``x / w`` below ``w``, else
    ``0.5 (1 + cos(pi x))`` (not shifted by the warm-up; past ``x = 1`` it rises again)."""
    if x < warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


class BertAdam(torch.optim.Optimizer):
    """The official release's optimizer (see the module docstring): Adam moments without bias correction,
    decoupled weight decay added to the update, and the warm-up/cosine schedule computed per tensor from
    the steps it has taken. ``t_total`` is the schedule length T in steps (``<= 0``: constant lr)."""

    def __init__(self, params, lr: float, *, t_total: int, warmup: float = 0.1, betas=(0.9, 0.98), eps: float = 1e-6,
                 weight_decay: float = 0.0, max_grad_norm: float = 1.0):
        if lr < 0:
            raise ValueError(f"BertAdam: lr must be >= 0, got {lr}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"BertAdam: warmup must be in [0, 1), got {warmup}")
        defaults = dict(lr=lr, t_total=int(t_total), warmup=float(warmup), betas=tuple(betas), eps=float(eps),
                        weight_decay=float(weight_decay), max_grad_norm=float(max_grad_norm))
        super().__init__(params, defaults)

    def scheduled_lr(self, group: dict, step: int) -> float:
        if group["t_total"] <= 0:
            return group["lr"]
        return group["lr"] * release_schedule_factor(step / group["t_total"], group["warmup"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                g = p.grad
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0.0:
                    update += group["weight_decay"] * p
                lr_t = self.scheduled_lr(group, state["step"])
                group["scheduled_lr"] = lr_t
                p.add_(-(lr_t * update))
                state["step"] += 1
        return loss


def lr_factor(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Linear warm-up over ``warmup_ratio * total_steps`` then cosine decay to 0 at ``total_steps``."""
    warm = int(round(warmup_ratio * total_steps))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_ratio))


def build_optimizer(model: nn.Module, cfg: Config, total_steps: int):
    """``(optimizer, scheduler or None)`` for the run configuration ``cfg`` (the full :class:`Config`).

    ``total_steps`` is the schedule length: the run's steps in the default mode; in release mode
    (``release.optimizer``) the release's T, the steps of ``release.schedule_epochs`` (5) epochs, which the
    Trainer computes that way. Release mode returns no scheduler (the schedule is inside BertAdam).
    """
    if not isinstance(cfg, Config):
        raise TypeError(f"build_optimizer needs the full Config (got {type(cfg).__name__}); "
                        "pass the run configuration, e.g. gare.config.load_config(path)")
    resolve_compat(cfg)
    tc = cfg.train
    groups = release_param_groups(model, tc) if cfg.release.param_groups else param_groups(model, tc)
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameter")
    if cfg.release.optimizer:
        opt = BertAdam(groups, lr=tc.lr, t_total=total_steps, warmup=tc.warmup_ratio, betas=tuple(tc.betas),
                       eps=tc.adam_eps, weight_decay=tc.weight_decay, max_grad_norm=1.0)
        return opt, None
    opt = adamw(groups, lr=tc.lr, betas=tuple(tc.betas), eps=tc.adam_eps)
    return opt, build_scheduler(opt, total_steps, tc.warmup_ratio)


def adamw(groups: list[dict], **kw) -> torch.optim.AdamW:
    """AdamW over ``groups``: the fused kernel when the parameters' device and dtypes allow it, else foreach."""
    params = [p for g in groups for p in g["params"]]
    devices = {p.device.type for p in params}
    if len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, ValueError):  # no fused kernel for this device/dtype in this torch
            pass
    return torch.optim.AdamW(groups, foreach=True, **kw)


def current_lr(group: dict) -> float:
    """The learning rate a group used at its last step (BertAdam's scheduled one, else the group's)."""
    return group.get("scheduled_lr", group["lr"])
