"""How exact is an fp32 gradient of the GARE loss at initialization? (docs/reproduce.md)

A ViT-B/32 GARE model with seeded random weights (compat=release, dropout 0) and the batch of
scripts/compare_release.py (4 pairs, 12 frame slots with padding, 32 tokens). The gradient of the release
loss is computed in fp32 and in fp64 from the same weights; per tensor, ``||g32 - g64|| / ||g64||``, with the
information-bottleneck term on (beta 1e-4) and off (beta 0). At initialization psi gives nearly the same Delta
to every text of a video, so the IB term's per-dimension std over texts is tiny and its gradient (weights
~1/sigma^2 on deviations of Delta from their mean) amplifies fp32 rounding of Delta.

    python scripts/ib_fp32_conditioning.py [--out docs/results/ib_fp32_conditioning.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gare.config import load_config
from gare.io import atomic_write
from gare.model.gare import GareModel
from gare.objectives import gare_loss
from gare.train.trainer import apply_release_model_switches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_release import _batch  # noqa: E402 - the same batch as the comparison with the release


def grads(beta: float, dtype: torch.dtype, state: dict) -> tuple[float, dict]:
    cfg = load_config(None, ["compat=release", "model.backbone.arch=ViT-B-32", "model.backbone.weights=null",
                             "model.scorer.psi.dropout=0", f"loss.beta={beta}"])
    model = GareModel(cfg.model)
    model.load_state_dict(state)
    model = model.to(dtype)
    apply_release_model_switches(model, cfg, "cpu")
    model.train()
    ids, _, frames, mask = _batch(4)
    out = model(ids=ids, frames=frames.to(dtype), mask=mask.bool())
    loss, terms = gare_loss(out.sim, out.delta, model.logit_scale, cfg.loss)
    loss.backward()
    info = {"loss": float(loss.detach()), "delta_std_over_texts_mean": float(out.delta.detach().std(0).mean()),
            "delta_std_over_texts_min": float(out.delta.detach().std(0).min()),
            "delta_abs_mean": float(out.delta.detach().abs().mean())}
    return info, {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/ib_fp32_conditioning.json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = load_config(None, ["model.backbone.arch=ViT-B-32", "model.backbone.weights=null"])
    state = GareModel(cfg.model).state_dict()
    res = {}
    for beta in (1e-4, 0.0):
        i32, g32 = grads(beta, torch.float32, state)
        i64, g64 = grads(beta, torch.float64, state)
        rel = {n: float((g32[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in g64.items()}
        zero = {n: v for n, v in rel.items() if n.endswith("cross_attn.k_proj.bias")}  # exact gradient 0
        rest = {n: v for n, v in rel.items() if n not in zero}
        groups = {"psi": [v for n, v in rest.items() if n.startswith("scorer.")],
                  "temporal": [v for n, v in rest.items() if n.startswith("temporal.")],
                  "clip": [v for n, v in rest.items() if n.startswith("backbone.")]}
        res[f"beta={beta:g}"] = {"fp32": i32, "fp64": i64,
                                 "max_rel_diff": {k: max(v) for k, v in groups.items()},
                                 "median_rel_diff": {k: sorted(v)[len(v) // 2] for k, v in groups.items()},
                                 "zero_gradient_tensors": zero}
        print(f"beta {beta:g}: fp32 vs fp64 gradient, max rel diff "
              + ", ".join(f"{k} {v:.1e}" for k, v in res[f'beta={beta:g}']['max_rel_diff'].items())
              + f"; Delta std over texts mean {i64['delta_std_over_texts_mean']:.1e} "
              f"(min {i64['delta_std_over_texts_min']:.1e}), |Delta| mean {i64['delta_abs_mean']:.2f}")
    res["seconds"] = time.perf_counter() - t0
    res["command"] = "python scripts/ib_fp32_conditioning.py"
    atomic_write(a.out, json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
