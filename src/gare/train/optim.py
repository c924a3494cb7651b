"""AdamW with two learning rates (CLIP x coef), no decay on biases/norms, warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Four groups: {CLIP, new modules} x {decay, no decay}. logit_scale counts as CLIP (as in the paper)."""
    groups: dict[tuple[bool, bool], list] = {(c, d): [] for c in (True, False) for d in (True, False)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_clip = name.startswith("backbone.")
        no_decay = p.ndim < 2 or name.endswith(".bias") or "logit_scale" in name
        groups[(is_clip, not no_decay)].append(p)
    out = []
    for (is_clip, decay), params in groups.items():
        if not params:
            continue
        lr = cfg.lr * (cfg.clip_lr_coef if is_clip else 1.0)
        out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'clip' if is_clip else 'new'}_{'decay' if decay else 'no_decay'}"})
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)


def lr_factor(step: int, total_steps: int, warmup_ratio: float) -> float:
    """Linear warm-up over ``warmup_ratio * total_steps`` then cosine decay to 0 at ``total_steps``."""
    warm = int(round(warmup_ratio * total_steps))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total_steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(opt: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_ratio))
