"""Scorer benchmark: exact fast GARE scoring vs the per-pair reference vs a dual encoder, one run.

    python benchmarks/bench_scorer.py [--texts 1000] [--videos 1000] [--frames 12] [--dim 512]
                                      [--ref-texts 200] [--repeats 3] [--heads 1] [--layers 1] [--threads 1]
                                      [--json FILE]

Scores ``texts x videos`` pairs with the default scorer (text-conditioned pooling, gap query, frame
context, one psi layer) whose parameters are set to non-initial random values (LayerNorm gains and
all biases included), on CLIP-scale random features (norm about 10):

- fast: ``gare.model.fast_scorer.fast_similarity`` on the whole matrix (per-video work included);
- reference: ``PairScorer.similarity`` (plain psi on every pair, blockwise) on the first ``--ref-texts``
  texts against all videos; its time per pair is exactly linear in the number of texts, so the full
  figure is that time scaled by ``texts / ref-texts`` (``--ref-texts 1000`` measures it all);
- fast on the same subset, for a ratio on identical pairs;
- pooling only (no Delta, fast path) and a dual encoder's product ``normalize(t) @ normalize(vbar).T``
  (gallery embeddings ready), the floor any exact GARE scoring is compared with.

Prints times (wall and CPU seconds of this process, medians), ratios and the largest absolute difference
of the fast scores from the float32 reference and from a float64 reference; ``--json FILE`` writes them
with the command, the machine and its load average (docs/results/bench_scorer.json).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, clock, finish_record, interleaved_clock, med, setup, start_record, table  # noqa: E402
from gare.config import PsiConfig, ScorerConfig  # noqa: E402
from gare.model.fast_scorer import fast_similarity  # noqa: E402
from gare.model.scorer import PairScorer, masked_mean  # noqa: E402


def trained_like(sc: PairScorer, seed: int = 0) -> PairScorer:
    """Non-initial parameters (LayerNorm gains/biases, Linear biases, unit-scale weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sc.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return sc.eval()


def features(n_t: int, n_v: int, frames: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 / dim ** 0.5
    base = torch.randn(n_v, 1, dim, generator=g)
    f = (base + 0.5 * torch.randn(n_v, frames, dim, generator=g)) * scale
    t = (base[torch.arange(n_t) % n_v, 0] + torch.randn(n_t, dim, generator=g)) * scale
    return t, f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ref-texts", type=int, default=200, help="texts scored by the (slow) reference")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--budget-mib", type=int, default=256, help="memory budget of both scorers")
    ap.add_argument("--json", default=None, help="write the figures (with command, machine, load) to this file")
    add_common_args(ap)
    args = ap.parse_args(argv)
    setup(args)
    res = start_record("bench_scorer.py", argv)
    n_ref = min(args.ref_texts, args.texts)
    budget = args.budget_mib * 2**20
    sc = trained_like(PairScorer(ScorerConfig(psi=PsiConfig(heads=args.heads, layers=args.layers)), args.dim))
    nd = PairScorer(ScorerConfig(use_delta=False), args.dim).eval()
    t, f = features(args.texts, args.videos, args.frames, args.dim, args.seed)
    print(f"scorer benchmark: {args.texts} texts x {args.videos} videos x {args.frames} frames x D={args.dim}, "
          f"psi heads={args.heads} layers={args.layers}")
    print(f"machine: {res['machine']}")

    vbar_n = F.normalize(masked_mean(f, None), dim=-1)
    fns = {
        "fast": lambda: fast_similarity(sc, t, f, memory_budget=budget),
        "fast_subset": lambda: fast_similarity(sc, t[:n_ref], f, memory_budget=budget),
        "pool_only": lambda: fast_similarity(nd, t, f, memory_budget=budget),
        "dual": lambda: F.normalize(t, dim=-1) @ vbar_n.T,
    }
    fns["fast"]()  # warm-up
    times = interleaved_clock(fns, args.repeats)
    ref_wall, ref_cpu, S_ref = clock(lambda: sc.similarity(t[:n_ref], f, memory_budget=budget))
    more = interleaved_clock(fns, 1)
    for k in times:
        for kind in ("wall", "cpu"):
            times[k][kind] += more[k][kind]
    S_fast = fast_similarity(sc, t, f, memory_budget=budget)
    diff32 = float((S_fast[:n_ref] - S_ref).abs().max())
    n64 = min(20, n_ref)
    sc64 = copy.deepcopy(sc).double()
    S64 = sc64.similarity(t[:n64].double(), f.double(), memory_budget=budget)
    diff64 = float((S_fast[:n64].double() - S64).abs().max())

    scale = args.texts / n_ref
    secs = {k: {kind: med(times[k][kind]) for kind in ("wall", "cpu")} for k in times}
    secs["reference_scaled"] = {"wall": ref_wall * scale, "cpu": ref_cpu * scale}
    secs["reference_subset"] = {"wall": ref_wall, "cpu": ref_cpu}
    dual = secs["dual"]
    rows = [(label, f"{secs[k]['wall']:.3f}", f"{secs[k]['cpu']:.3f}", f"{secs[k]['cpu'] / dual['cpu']:.1f}x")
            for k, label in (("dual", "dual encoder product (N_t x N_v x D)"),
                             ("pool_only", "pooling only, no Delta (fast path)"), ("fast", "GARE fast (exact)"),
                             ("reference_scaled", f"GARE reference ({n_ref} texts measured, x{scale:g})"))]
    print(table(rows, ("scoring of the full matrix", "wall s (median)", "CPU s (median)", "vs dual encoder, CPU")))
    ratios = {kind: {"fast_vs_reference": secs["reference_scaled"][kind] / secs["fast"][kind],
                     "fast_vs_reference_same_pairs": secs["reference_subset"][kind] / secs["fast_subset"][kind],
                     "fast_vs_dual": secs["fast"][kind] / dual[kind],
                     "pool_only_vs_dual": secs["pool_only"][kind] / dual[kind],
                     "fast_vs_pool_only": secs["fast"][kind] / secs["pool_only"][kind]} for kind in ("wall", "cpu")}
    r = ratios["cpu"]
    print(f"speed-up fast vs reference, full matrix ({args.texts}x{args.videos}): {r['fast_vs_reference']:.1f}x CPU "
          f"({ratios['wall']['fast_vs_reference']:.1f}x wall)")
    print(f"speed-up fast vs reference, same {n_ref}x{args.videos} pairs both measured: "
          f"{r['fast_vs_reference_same_pairs']:.1f}x CPU")
    print(f"fast GARE cost / dual-encoder cost: {r['fast_vs_dual']:.1f}x CPU   (pooling only: "
          f"{r['pool_only_vs_dual']:.1f}x)")
    print(f"max |fast - reference float32| over {n_ref}x{args.videos}: {diff32:.2e}")
    print(f"max |fast - reference float64| over {n64}x{args.videos}: {diff64:.2e}")
    print(f"score range: [{float(S_fast.min()):.3f}, {float(S_fast.max()):.3f}], std {float(S_fast.std()):.3f}")
    res.update({"args": vars(args), "ref_texts_measured": n_ref, "seconds": secs, "runs": times, "ratios": ratios,
                "max_abs_diff_float32": diff32, "max_abs_diff_float64": diff64, "float64_texts": n64})
    finish_record(res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
