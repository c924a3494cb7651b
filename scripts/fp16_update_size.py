"""How far fp16 BertAdam moves CLIP weights at lr 1e-7, relative to fp32 AdamW (docs/method-notes.md).

The release trains CLIP's Linear/Conv/projection weights stored in fp16 (no fp32 master copy) with BertAdam
at lr 1e-4 x 1e-3 = 1e-7. fp16 has about 3 significant decimal digits: a weight of size 0.02 is spaced
~1.5e-5 from its neighbours, so an update of ~1e-7 is rounded away unless it is at least half a spacing.
This script simulates that: a weight tensor like CLIP's (N(0, 0.02), 262,144 entries), 20 steps with fresh
Gaussian gradients of a given scale, the same gradients fed to

- fp32 AdamW (torch.optim.AdamW: bias correction, decoupled decay), the default mode's optimizer;
- fp32 BertAdam (the release's update rule, no bias correction) - isolates the rule from the storage;
- fp16 BertAdam with fp16 moments - the release on CUDA;

at a constant lr of 1e-7 and weight decay 0.2 (the decayed group), and reports the size of the total weight
change ||p_20 - p_0|| of each relative to fp32 AdamW, and the fraction of fp16 entries that moved at all.

    python scripts/fp16_update_size.py [--out docs/results/fp16_update_size]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from gare.io import atomic_write
from gare.train.optim import BertAdam

SCALES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LR, WD, STEPS, N, W_STD = 1e-7, 0.2, 20, 512 * 512, 0.02


def simulate(scale: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(N, generator=g) * W_STD
    grads = [torch.randn(N, generator=g) * scale for _ in range(STEPS)]
    runs = {}
    for name in ("adamw_fp32", "bertadam_fp32", "bertadam_fp16"):
        dtype = torch.float16 if name.endswith("fp16") else torch.float32
        p = torch.nn.Parameter(w0.clone().to(dtype))
        start = p.detach().clone()
        if name.startswith("adamw"):
            opt = torch.optim.AdamW([p], lr=LR, betas=(0.9, 0.98), eps=1e-6, weight_decay=WD)
        else:
            opt = BertAdam([p], lr=LR, t_total=-1, betas=(0.9, 0.98), eps=1e-6, weight_decay=WD, max_grad_norm=-1)
        for gr in grads:
            p.grad = gr.to(dtype)
            opt.step()
        d = p.detach().double() - start.double()
        runs[name] = {"norm": float(d.norm()), "moved": float((d != 0).double().mean())}
    ref = runs["adamw_fp32"]["norm"]
    return {"grad_scale": scale,
            "update_norm_adamw_fp32": ref,
            "ratio_bertadam_fp32": runs["bertadam_fp32"]["norm"] / ref,
            "ratio_bertadam_fp16": runs["bertadam_fp16"]["norm"] / ref,
            "fraction_moved_fp16": runs["bertadam_fp16"]["moved"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/fp16_update_size", help="results path without suffix")
    a = ap.parse_args()
    t0 = time.perf_counter()
    rows = [simulate(s) for s in SCALES]
    meta = {"lr": LR, "weight_decay": WD, "steps": STEPS, "entries": N, "weight_std": W_STD,
            "torch": torch.__version__, "machine": platform.machine(), "seconds": time.perf_counter() - t0,
            "command": "python scripts/fp16_update_size.py"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["| gradient scale | fp32 AdamW ‖Δw‖ | fp32 BertAdam / fp32 AdamW | fp16 BertAdam / fp32 AdamW | "
             "fp16 entries that moved |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grad_scale']:.0e} | {r['update_norm_adamw_fp32']:.2e} | {r['ratio_bertadam_fp32']:.3f} | "
                     f"{r['ratio_bertadam_fp16']:.3f} | {100 * r['fraction_moved_fp16']:.2f}% |")
    table = "\n".join(lines) + "\n"
    atomic_write(out.with_suffix(".md"), f"<!-- written by: {meta['command']} -->\n" + table)
    print(table)


if __name__ == "__main__":
    main()
