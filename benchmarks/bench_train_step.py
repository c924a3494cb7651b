"""Training-step benchmark: time per component (backbone, temporal, psi/scorer, objectives) on CPU.

    python benchmarks/bench_train_step.py [--configs tiny ViT-B-32] [--tiny-batch 32] [--tiny-frames 12]
                                          [--vit-batch 4] [--vit-frames 4] [--repeats 3] [--threads 1]

For each configuration (random initialization; ``tiny`` uses the 3-layer text tower so the temporal
module has 3 layers), on a batch of random token ids and frames, every component runs forward and
backward on its own, with its real input shapes and detached inputs:

- backbone: CLIP text tower on the ids and image tower on every frame (``encode_text``, ``encode_frames``);
- temporal: seqTransf on the per-frame embeddings;
- psi / scorer: ``PairScorer.forward`` (training mode, dropout on) on every (text, video) pair of the batch;
- objectives: ``gare.objectives.gare_loss`` (InfoNCE + IB + radius + direction) on the scores and increments.

The scorer's cost grows with the square of the batch, the towers' linearly: ``--scorer-batch`` (default
128, the paper's batch) also times psi/scorer alone at that batch.

Backward of a component is driven by a fixed random cotangent of its outputs (the objectives by their
loss). A full step (forward + backward of the whole model and the loss, AdamW step) is timed too, so the
sum of the parts can be compared with it. Medians over ``--repeats`` (after one warm-up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, machine, med, random_batch, setup, table, timed  # noqa: E402
from gare.config import BackboneConfig, ModelConfig, TemporalConfig  # noqa: E402
from gare.model.gare import GareModel  # noqa: E402
from gare.objectives import gare_loss  # noqa: E402


def _fwd_bwd(fn, inputs_fn, seed: int):
    """Forward ``fn(*inputs)`` then backward with a fixed random cotangent; returns (fwd s, bwd s)."""
    inputs = inputs_fn()
    t_f, out = timed(lambda: fn(*inputs))
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    surrogate = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs if o is not None and o.requires_grad)
    t_b, _ = timed(lambda: surrogate.backward())
    return t_f, t_b


def component_times(model: GareModel, ids, frames, mask, seed: int) -> dict[str, tuple[float, float]]:
    with torch.no_grad():
        t = model.backbone.encode_text(ids)
        f = model.backbone.encode_frames(frames, mask)
        fv = model.temporal_forward(f, mask)
        out = model.scorer(t, fv, mask)
    res = {
        "backbone (text tower)": _fwd_bwd(lambda x: model.backbone.encode_text(x), lambda: (ids,), seed),
        "backbone (image tower)": _fwd_bwd(lambda x, m: model.backbone.encode_frames(x, m), lambda: (frames, mask),
                                           seed + 1),
        "temporal (seqTransf)": _fwd_bwd(lambda x, m: model.temporal_forward(x, m),
                                         lambda: (f.clone().requires_grad_(), mask), seed + 2),
        "psi / scorer": _fwd_bwd(lambda a, b, m: (lambda o: (o.sim, o.delta))(model.scorer(a, b, m)),
                                 lambda: (t.clone().requires_grad_(), fv.clone().requires_grad_(), mask), seed + 3),
    }
    sim = out.sim.clone().requires_grad_()
    delta = out.delta.clone().requires_grad_() if out.delta is not None else None
    t_f, (loss, _) = timed(lambda: gare_loss(sim, delta, model.logit_scale.detach()))
    t_b, _ = timed(lambda: loss.backward())
    res["objectives (gare_loss)"] = (t_f, t_b)
    model.zero_grad(set_to_none=True)
    return res


def full_step(model: GareModel, opt, ids, frames, mask) -> tuple[float, float]:
    def step():
        out = model(ids, frames, mask)
        loss, _ = gare_loss(out.sim, out.delta, model.logit_scale)
        loss.backward()
        return loss

    t_fb, _ = timed(step)
    t_o, _ = timed(lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
    return t_fb, t_o


def run_config(name: str, B: int, Fr: int, L: int, repeats: int, seed: int, scorer_batch: int = 0) -> None:
    torch.manual_seed(seed)
    layers = 3 if name == "tiny" else 4
    model = GareModel(ModelConfig(backbone=BackboneConfig(arch=name, max_words=L),
                                  temporal=TemporalConfig(layers=layers))).train()
    n_par = sum(p.numel() for p in model.parameters())
    ids, frames, mask = random_batch(model.image_size, B, Fr, L, seed, pad_first=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    print(f"\n{name}: D={model.embed_dim}, {n_par / 1e6:.1f}M parameters, image {model.image_size}px; batch {B} "
          f"videos x {Fr} frames, {L} tokens; temporal layers {layers}")
    component_times(model, ids[:2], frames[:2], mask[:2], seed)  # warm-up (kernels, allocator)
    full_step(model, opt, ids[:2], frames[:2], mask[:2])
    comps: dict[str, list[tuple[float, float]]] = {}
    steps, opts = [], []
    for r in range(repeats):
        for k, v in component_times(model, ids, frames, mask, seed + 10 * r).items():
            comps.setdefault(k, []).append(v)
        fb, o = full_step(model, opt, ids, frames, mask)
        steps.append(fb)
        opts.append(o)
    rows = []
    total = 0.0
    parts = {}
    for k, vals in comps.items():
        f_ = med([v[0] for v in vals])
        b_ = med([v[1] for v in vals])
        parts[k] = f_ + b_
        total += f_ + b_
    for k, vals in comps.items():
        f_ = med([v[0] for v in vals])
        b_ = med([v[1] for v in vals])
        rows.append((k, f"{1000 * f_:.1f}", f"{1000 * b_:.1f}", f"{1000 * (f_ + b_):.1f}",
                     f"{100 * parts[k] / total:.1f}%"))
    rows.append(("sum of components", "", "", f"{1000 * total:.1f}", "100%"))
    rows.append(("full step: forward + backward", "", "", f"{1000 * med(steps):.1f}",
                 f"{100 * med(steps) / total:.0f}% of sum"))
    rows.append(("full step: AdamW update", "", "", f"{1000 * med(opts):.1f}", ""))
    print(table(rows, ("component", "forward ms", "backward ms", "total ms", "share")))
    if scorer_batch:
        D = model.embed_dim
        g = torch.Generator().manual_seed(seed)
        tb = torch.randn(scorer_batch, D, generator=g).requires_grad_()
        fb = torch.randn(scorer_batch, Fr, D, generator=g).requires_grad_()
        times = [_fwd_bwd(lambda a, b: (lambda o: (o.sim, o.delta))(model.scorer(a, b, None)), lambda: (tb, fb),
                          seed) for _ in range(2)]
        f_, b_ = times[-1]
        print(f"{name}: psi/scorer alone at batch {scorer_batch} ({scorer_batch ** 2} pairs, {Fr} frames): "
              f"forward {1000 * f_:.0f} ms, backward {1000 * b_:.0f} ms")
    psi_share = parts["psi / scorer"] / total
    print(f"{name}: psi/scorer {100 * psi_share:.2f}% of forward+backward; backbone "
          f"{100 * (parts['backbone (text tower)'] + parts['backbone (image tower)']) / total:.1f}%; "
          f"objectives {100 * parts['objectives (gare_loss)'] / total:.2f}%")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "ViT-B-32"])
    ap.add_argument("--tiny-batch", type=int, default=32)
    ap.add_argument("--tiny-frames", type=int, default=12)
    ap.add_argument("--vit-batch", type=int, default=4)
    ap.add_argument("--vit-frames", type=int, default=4)
    ap.add_argument("--words", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vit-repeats", type=int, default=1)
    ap.add_argument("--scorer-batch", type=int, default=128,
                    help="also time psi/scorer alone at this batch (the paper's 128; 0: skip)")
    add_common_args(ap)
    args = ap.parse_args(argv)
    setup(args)
    print("training-step benchmark (CPU, float32, random initialization)")
    print(f"machine: {machine()}")
    for name in args.configs:
        if name == "tiny":
            run_config(name, args.tiny_batch, args.tiny_frames, args.words, args.repeats, args.seed, args.scorer_batch)
        else:
            run_config(name, args.vit_batch, args.vit_frames, args.words, args.vit_repeats, args.seed,
                       args.scorer_batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
