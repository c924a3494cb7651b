"""GPU checks of the two training modes and of the fast scorer (run by scripts/gpu-check.sh; docs/reproduce.md).

1. release mode (compat=release): CLIP weights in fp16 (as the release on CUDA), BertAdam, frozen conv1,
   padded frames attended; ``--steps`` steps of ViT-B/32 at batch ``--batch`` (12 frame slots, 32 tokens);
2. default mode: fp32 weights under bf16 autocast, AdamW, same size;
3. the fast scorer on the device against the blockwise reference (1,000 texts x 1,000 videos).

Random weights and random inputs (no data needed): the checks are about numerics and speed, not accuracy.
Writes a JSON file (``--out``) with the losses of every step, step times, peak memory and the scorer error.

    python scripts/gpu_check.py [--device cuda] [--arch ViT-B-32] [--steps 20] [--batch 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from gare.config import load_config
from gare.io import atomic_write
from gare.model.gare import GareModel
from gare.objectives import gare_loss
from gare.train import build_optimizer
from gare.train.trainer import apply_release_model_switches


def _batch(model: GareModel, B: int, F: int, L: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L, dtype=torch.long)
    for i in range(B):
        n = 4 + i % (L - 6)
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = 49406, torch.randint(1, 49000, (n,), generator=g), 49407
    size = model.image_size
    frames = torch.randn(B, F, 3, size, size, generator=g)
    mask = torch.ones(B, F, dtype=torch.bool)
    mask[::4, F // 2:] = False  # a quarter of the videos padded
    return ids.to(device), frames.to(device), mask.to(device)


def train_mode(mode: str, args) -> dict:
    device = torch.device(args.device)
    over = [f"model.backbone.arch={args.arch}", "model.backbone.weights=null", f"model.backbone.max_words={args.words}"]
    if mode == "release":
        over.append("compat=release")
    cfg = load_config(None, over)
    torch.manual_seed(0)
    model = GareModel(cfg.model).to(device)
    fp16 = apply_release_model_switches(model, cfg, device)
    amp = None if (fp16 or device.type != "cuda") else torch.bfloat16
    opt, sched = build_optimizer(model, cfg, total_steps=max(args.steps * 5, 10))
    ids, frames, mask = _batch(model, args.batch, args.frames, args.words, device, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    losses, times = [], []
    model.train()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(ids=ids, frames=frames, mask=mask)
        loss, _ = gare_loss(out.sim.float(), out.delta.float(), model.logit_scale, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    return {"mode": mode, "fp16_weights": fp16, "autocast": str(amp), "optimizer": type(opt).__name__,
            "losses": losses, "all_finite": all(math.isfinite(x) for x in losses),
            "step_seconds_median": sorted(times)[len(times) // 2], "first_step_seconds": times[0],
            "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30) if device.type == "cuda" else None}


def fast_scorer(args) -> dict:
    device = torch.device(args.device)
    cfg = load_config(None, [f"model.backbone.arch={args.arch}", "model.backbone.weights=null"])
    torch.manual_seed(0)
    model = GareModel(cfg.model).to(device).eval()
    g = torch.Generator().manual_seed(2)
    D = model.embed_dim
    t = torch.randn(args.texts, D, generator=g).to(device)
    v = torch.randn(args.videos, args.frames, D, generator=g).to(device)
    m = torch.ones(args.videos, args.frames, dtype=torch.bool)
    m[::3, args.frames // 2:] = False
    m = m.to(device)
    out = {}
    for name, fast in (("reference", False), ("fast", True)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out[name] = model.similarity(t, v, m, fast=fast)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name + "_seconds"] = time.perf_counter() - t0
    err = float((out["fast"] - out["reference"]).abs().max())
    return {"texts": args.texts, "videos": args.videos, "max_abs_diff": err,
            "reference_seconds": out["reference_seconds"], "fast_seconds": out["fast_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--out", default="docs/results/gpu_check.json")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: CUDA is not available on this machine (use --device cpu for a smoke run)")
    t0 = time.perf_counter()
    res = {"device": torch.cuda.get_device_name() if a.device.startswith("cuda") else platform.processor() or "cpu",
           "torch": torch.__version__, "arch": a.arch, "batch": a.batch, "steps": a.steps,
           "release": train_mode("release", a), "default": train_mode("default", a), "fast_scorer": fast_scorer(a)}
    res["seconds"] = time.perf_counter() - t0
    atomic_write(a.out, json.dumps(res, indent=2))
    for k in ("release", "default"):
        r = res[k]
        print(f"{k}: {r['optimizer']}, fp16 weights {r['fp16_weights']}, autocast {r['autocast']}: losses "
              f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}, finite {r['all_finite']}, "
              f"{r['step_seconds_median'] * 1000:.0f} ms/step, peak {r['peak_memory_gib']} GiB")
    fs = res["fast_scorer"]
    print(f"fast scorer vs reference ({fs['texts']}x{fs['videos']}): max |diff| {fs['max_abs_diff']:.2e}, "
          f"{fs['fast_seconds']:.2f} s vs {fs['reference_seconds']:.2f} s; total {res['seconds']:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
