"""Three release-mode training steps of gare vs the official release's own code (docs/reproduce.md).

    python scripts/compare_release.py /path/to/GARE-text-video-retrieval [--batch 4] [--float64] [--out FILE]

The release checkout is only imported from (its ``tvr.models``), never copied. Without an argument the script
says so and exits 0. On the CPU both sides run in fp32 (the release turns fp16 on only with CUDA); dropout is
set to 0 on both sides (the random masks of two programs cannot match). If the checkout has no
``tvr/models/ViT-B-32.pt`` (OpenAI CLIP), a ViT-B/32 with seeded random weights is written there first.

Steps: the release builds its model (CLIP + seqTransf initialized from the text tower + psi with its global
N(0, 0.02) init); its state dict, in the official layout, is loaded with ``gare.load_model`` (compat=release by
default for that layout). Both train three steps on the same batch (ViT-B/32 recipe: 32 tokens, 12 frame slots,
two videos with padded slots; lr 1e-4, CLIP x 1e-3, weight decay 0.2, BertAdam with warm-up 0.1 of T) in the
same order: backward, global clip_grad_norm_(1.0), optimizer step, clamp logit_scale. Reported: the loss of
each step on both sides, and per tensor the relative difference of the total update
``||d_gare - d_release|| / ||d_release||`` (CLIP tensors and the rest separately).

``--float64`` runs both sides in float64, to take fp32 rounding out of the comparison (at initialization the
full loss's fp32 gradient is itself far from the exact one: scripts/ib_fp32_conditioning.py). Both models are
built and seeded exactly as in fp32, then cast with ``.double()`` (fp32 -> fp64 is exact, so both start from the
same weights); the batch is cast to float64. The release's code casts to float32 in a few places
(``.float()`` on its text and video features, ``x.type(torch.float32)`` in its LayerNorm, float32 constants
such as ``torch.eye(N).float()``). Its code is not changed or copied: while its forward runs, a context manager
(``_release_in_float64``) temporarily makes ``torch.Tensor.float`` and ``torch.Tensor.type(torch.float32)``
return a float64 tensor unchanged (other dtypes convert as usual) and sets torch's default dtype to float64, and
forward pre-hooks on every release module record the dtype of each floating input. The script asserts that all
release parameters, every floating module input and the loss are float64 (and the same for gare's side), so no
float32 computation is left on either side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


def _random_openai_clip(path: Path, seed: int = 0) -> None:
    """An OpenAI-layout ViT-B/32 state dict with seeded random weights (open_clip's initialization)."""
    import open_clip

    torch.manual_seed(seed)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    sd = {k: v for k, v in clip.state_dict().items() if k != "attn_mask"}
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    torch.save(sd, path)


def _batch(B: int, F: int = 12, L: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L, dtype=torch.long)
    lens = [5 + (3 * i) % 20 for i in range(B)]
    for i, n in enumerate(lens):
        ids[i, 0] = 49406
        ids[i, 1:n + 1] = torch.randint(1, 49000, (n,), generator=g)
        ids[i, n + 1] = 49407
    text_mask = (torch.arange(L)[None] <= torch.tensor(lens)[:, None] + 1).long()
    frames = torch.randn(B, F, 3, 224, 224, generator=g)
    mask = torch.ones(B, F, dtype=torch.long)
    mask[1, 7:] = 0  # padded slots (zero tensors, as the release's loader pads)
    if B > 2:
        mask[2, 3:] = 0
    frames = frames * mask[:, :, None, None, None]
    return ids, text_mask, frames, mask


@contextmanager
def _release_in_float64(model: nn.Module):
    """While active: ``Tensor.float()`` and ``Tensor.type(torch.float32)`` leave float64 tensors as they are,
    the default dtype is float64, and the dtypes of all floating inputs of ``model``'s modules are collected
    (yielded set). Restores everything on exit."""
    orig_float, orig_type = torch.Tensor.float, torch.Tensor.type
    orig_default = torch.get_default_dtype()
    seen: set = set()

    def keep_float(self, *args, **kwargs):
        if self.dtype == torch.float64 and not args and not kwargs:
            return self
        return orig_float(self, *args, **kwargs)

    def keep_type(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("dtype")
        if self.dtype == torch.float64 and target in (torch.float32, "torch.FloatTensor"):
            return self
        return orig_type(self, *args, **kwargs)

    def record(_mod, inputs):
        for x in inputs:
            if torch.is_tensor(x) and x.is_floating_point():
                seen.add(x.dtype)

    handles = [m.register_forward_pre_hook(record) for m in model.modules()]
    torch.Tensor.float, torch.Tensor.type = keep_float, keep_type
    torch.set_default_dtype(torch.float64)
    try:
        yield seen
    finally:
        torch.Tensor.float, torch.Tensor.type = orig_float, orig_type
        torch.set_default_dtype(orig_default)
        for h in handles:
            h.remove()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", nargs="?", help="path of a checkout of github.com/musicman217/GARE-text-video-retrieval")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--schedule-steps", type=int, default=10, help="T of the release's schedule (warm-up 0.1 T)")
    ap.add_argument("--beta", type=float, default=1e-4, help="IB weight on both sides (0 isolates the IB term)")
    ap.add_argument("--float64", action="store_true",
                    help="run both sides in float64 (the release's float32 casts neutralized at run time)")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = ap.parse_args()
    if not a.release:
        print("compare_release: no release checkout given; skipped (pass the path of a checkout of "
              "github.com/musicman217/GARE-text-video-retrieval)")
        return 0
    root = Path(a.release).resolve()
    if not (root / "tvr" / "models" / "modeling.py").exists():
        print(f"compare_release: {root} is not a checkout of the GARE release (no tvr/models/modeling.py)",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    clip_file = root / "tvr" / "models" / "ViT-B-32.pt"
    if not clip_file.exists():
        print(f"writing a random ViT-B/32 (seed 0) to {clip_file}")
        _random_openai_clip(clip_file)
    sys.path.insert(0, str(root))
    from tvr.models.modeling import GARE  # the release's own model
    from tvr.models.optimization import BertAdam as ReleaseBertAdam

    import gare
    from gare.config import load_config
    from gare.model.convert import official_name
    from gare.objectives import gare_loss
    from gare.train import build_optimizer
    from gare.train.trainer import apply_release_model_switches

    args = types.SimpleNamespace(interaction="wti", agg_module="seqTransf", base_encoder="ViT-B/32",
                                 num_hidden_layers=4, temp=3.0, center=8, alpha=2.0, beta=a.beta, lambda_dir=0.01,
                                 lambda_epsilon=0.01, lambda_lower=0.5, local_rank=0, world_size=1,
                                 datatype="msrvtt")
    torch.manual_seed(42)
    rel = GARE(args)
    for m in rel.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ckpt = Path("/tmp") / f"gare_release_official_{int(time.time())}.pth"
    torch.save(rel.state_dict(), ckpt)
    ours = gare.load_model(ckpt, dropout=0.0)
    ckpt.unlink()
    assert ours.cfg.compat == "release"
    dtype = torch.float64 if a.float64 else torch.float32
    if a.float64:  # after the fp32 construction, so that both start from the same (exactly cast) weights
        rel.double()
        ours.double()
    for name, model in (("release", rel), ("gare", ours)):
        bad = sorted({str(p.dtype) for p in model.parameters()} - {str(dtype)})
        assert not bad, f"{name} model has parameters of dtype {bad}, expected {dtype}"

    lr, coef, wd, warm, T = 1e-4, 1e-3, 0.2, 0.1, a.schedule_steps
    # the release's optimizer and groups, built as its main_retrieval.prep_optimizer does
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    named = list(rel.named_parameters())
    dec = [(n, p) for n, p in named if not any(nd in n for nd in no_decay)]
    nod = [(n, p) for n, p in named if any(nd in n for nd in no_decay)]
    groups = [{"params": [p for n, p in dec if "clip." in n], "weight_decay": wd, "lr": lr * coef},
              {"params": [p for n, p in dec if "clip." not in n], "weight_decay": wd},
              {"params": [p for n, p in nod if "clip." in n], "weight_decay": 0.0, "lr": lr * coef},
              {"params": [p for n, p in nod if "clip." not in n], "weight_decay": 0.0}]
    opt_rel = ReleaseBertAdam(groups, lr=lr, warmup=warm, schedule="warmup_cosine", b1=0.9, b2=0.98, e=1e-6,
                              t_total=T, weight_decay=wd, max_grad_norm=1.0)
    cfg = load_config(None, ["compat=release", f"train.lr={lr}", f"train.clip_lr_coef={coef}",
                             f"train.weight_decay={wd}", f"train.warmup_ratio={warm}", f"loss.beta={a.beta}"])
    apply_release_model_switches(ours, cfg, "cpu")  # conv1 frozen (fp16 weights need CUDA), as the Trainer does
    opt_ours, sched = build_optimizer(ours, cfg, T)
    assert sched is None

    ids, text_mask, frames, mask = _batch(a.batch)
    frames = frames.to(dtype)
    idx = torch.arange(a.batch)
    rel_start = {n: p.detach().clone() for n, p in rel.named_parameters()}
    our_start = {n: p.detach().clone() for n, p in ours.named_parameters()}
    losses = []
    for step in range(a.steps):
        rel.train()
        if a.float64:
            with _release_in_float64(rel) as seen:
                loss_r, _, _ = rel(ids, text_mask, frames, mask, idx, step + 1, None)
            assert seen == {torch.float64}, f"release forward saw floating inputs of dtypes {seen}"
        else:
            loss_r, _, _ = rel(ids, text_mask, frames, mask, idx, step + 1, None)
        assert loss_r.dtype == dtype, f"release loss is {loss_r.dtype}, expected {dtype}"
        loss_r.backward()
        torch.nn.utils.clip_grad_norm_(rel.parameters(), 1.0)
        opt_rel.step()
        opt_rel.zero_grad()
        torch.clamp_(rel.clip.logit_scale.data, max=math.log(100))

        ours.train()
        out = ours(ids=ids, frames=frames, mask=mask.bool())
        loss_o, _ = gare_loss(out.sim, out.delta, ours.logit_scale, cfg.loss)
        assert loss_o.dtype == dtype, f"gare loss is {loss_o.dtype}, expected {dtype}"
        opt_ours.zero_grad(set_to_none=True)
        loss_o.backward()
        torch.nn.utils.clip_grad_norm_([p for p in ours.parameters() if p.requires_grad], 1.0)
        opt_ours.step()
        with torch.no_grad():
            ours.logit_scale.clamp_(max=math.log(100))
        lr_, lo_ = float(loss_r.detach()), float(loss_o.detach())
        losses.append({"step": step + 1, "release": lr_, "gare": lo_, "abs_diff": abs(lr_ - lo_)})
        print(f"step {step + 1}: loss release {lr_:.7f}  gare {lo_:.7f}  diff {abs(lr_ - lo_):.2e}")

    rel_params = dict(rel.named_parameters())
    per_tensor = {}
    for n, p in ours.named_parameters():
        off = official_name(n)
        d_o = (p.detach() - our_start[n]).double()
        d_r = (rel_params[off].detach() - rel_start[off]).double()
        nr = float(d_r.norm())
        per_tensor[off] = {"release_update_norm": nr, "gare_update_norm": float(d_o.norm()),
                           "rel_diff": float((d_o - d_r).norm()) / nr if nr > 0 else float(d_o.norm())}
    clip_t = {k: v for k, v in per_tensor.items() if k.startswith("clip.")}
    rest_t = {k: v for k, v in per_tensor.items() if not k.startswith("clip.")}

    # psi's key bias has an exactly zero gradient (the softmax over frames ignores the constant q . b_k): both
    # sides' updates of it are rounding noise that BertAdam scales to lr size, so it is reported apart
    degenerate = {k: v for k, v in per_tensor.items() if k.endswith("cross_attn.k_proj.bias")}

    def worst(d):
        moved = {k: v for k, v in d.items() if v["release_update_norm"] > 0 and k not in degenerate}
        k = max(moved, key=lambda k: moved[k]["rel_diff"])
        return k, moved[k]["rel_diff"], len(moved), len(d)

    wc, wr = worst(clip_t), worst(rest_t)
    summary = {"losses": losses, "max_loss_diff": max(x["abs_diff"] for x in losses),
               "clip_worst": {"tensor": wc[0], "rel_diff": wc[1], "moved": wc[2], "tensors": wc[3]},
               "rest_worst": {"tensor": wr[0], "rel_diff": wr[1], "moved": wr[2], "tensors": wr[3]},
               "zero_gradient_tensors": degenerate, "beta": a.beta,
               "unmoved_both": sorted(k for k, v in per_tensor.items()
                                      if v["release_update_norm"] == 0 and v["gare_update_norm"] == 0),
               "batch": a.batch, "steps": a.steps, "schedule_T": T, "seconds": time.perf_counter() - t0,
               "torch": torch.__version__, "device": "cpu", "dtype": "fp64" if a.float64 else "fp32", "dropout": 0.0}
    print(f"max loss diff {summary['max_loss_diff']:.2e}; CLIP tensors: worst update rel diff {wc[1]:.2e} "
          f"({wc[0]}, {wc[2]}/{wc[3]} moved); other tensors: worst {wr[1]:.2e} ({wr[0]}, {wr[2]}/{wr[3]} moved); "
          f"{summary['seconds']:.0f} s")
    if a.out:
        from gare.io import atomic_write

        atomic_write(a.out, json.dumps({"summary": summary, "per_tensor": per_tensor}, indent=2))
    ok = summary["max_loss_diff"] < 1e-4 and wc[1] < 0.05 and wr[1] < 1e-3
    print("matches the release within the issue's bounds (loss 1e-4, CLIP 5%, rest 0.1%)" if ok
          else "DOES NOT match the release within the issue's bounds")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
