"""Training-step benchmark: time per component (backbone, temporal, psi/scorer, objectives) on CPU.

    python benchmarks/bench_train_step.py [--configs tiny ViT-B-32] [--tiny-batch 32] [--tiny-frames 12]
                                          [--vit-batch 4] [--vit-frames 4] [--repeats 3] [--threads 1]
                                          [--json FILE]

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
sum of the parts can be compared with it. Medians over ``--repeats`` (after one warm-up), in wall and CPU
seconds of this process; ``--json FILE`` writes them with the command, the machine and its load average
(docs/results/bench_train_step.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, clock, finish_record, med, random_batch, setup, start_record, table  # noqa: E402
from gare.config import BackboneConfig, ModelConfig, TemporalConfig  # noqa: E402
from gare.model.gare import GareModel  # noqa: E402
from gare.objectives import gare_loss  # noqa: E402


def _fwd_bwd(fn, inputs_fn, seed: int) -> dict[str, float]:
    """Forward ``fn(*inputs)`` then backward with a fixed random cotangent; wall and CPU seconds of each."""
    inputs = inputs_fn()
    w_f, c_f, out = clock(lambda: fn(*inputs))
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    surrogate = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs if o is not None and o.requires_grad)
    w_b, c_b, _ = clock(lambda: surrogate.backward())
    return {"fwd_wall": w_f, "bwd_wall": w_b, "fwd_cpu": c_f, "bwd_cpu": c_b}


def component_times(model: GareModel, ids, frames, mask, seed: int) -> dict[str, dict[str, float]]:
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
    w_f, c_f, (loss, _) = clock(lambda: gare_loss(sim, delta, model.logit_scale.detach()))
    w_b, c_b, _ = clock(lambda: loss.backward())
    res["objectives (gare_loss)"] = {"fwd_wall": w_f, "bwd_wall": w_b, "fwd_cpu": c_f, "bwd_cpu": c_b}
    model.zero_grad(set_to_none=True)
    return res


def full_step(model: GareModel, opt, ids, frames, mask) -> dict[str, float]:
    def step():
        out = model(ids, frames, mask)
        loss, _ = gare_loss(out.sim, out.delta, model.logit_scale)
        loss.backward()
        return loss

    w_fb, c_fb, _ = clock(step)
    w_o, c_o, _ = clock(lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
    return {"step_wall": w_fb, "step_cpu": c_fb, "adamw_wall": w_o, "adamw_cpu": c_o}


def run_config(name: str, B: int, Fr: int, L: int, repeats: int, seed: int, scorer_batch: int = 0) -> dict:
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
    comps: dict[str, list[dict[str, float]]] = {}
    steps: list[dict[str, float]] = []
    for r in range(repeats):
        for k, v in component_times(model, ids, frames, mask, seed + 10 * r).items():
            comps.setdefault(k, []).append(v)
        steps.append(full_step(model, opt, ids, frames, mask))
    out: dict = {"config": name, "batch": B, "frames": Fr, "tokens": L, "image_size": model.image_size,
                 "embed_dim": model.embed_dim, "parameters": n_par, "temporal_layers": layers, "repeats": repeats,
                 "components": {}}
    for k, vals in comps.items():
        c = {key: med([v[key] for v in vals]) for key in vals[0]}
        c["wall"], c["cpu"] = c["fwd_wall"] + c["bwd_wall"], c["fwd_cpu"] + c["bwd_cpu"]
        out["components"][k] = c
    for kind in ("wall", "cpu"):
        total = sum(c[kind] for c in out["components"].values())
        out[f"sum_of_components_{kind}"] = total
        for c in out["components"].values():
            c[f"share_{kind}"] = c[kind] / total
    out["full_step"] = {key: med([s_[key] for s_ in steps]) for key in steps[0]}
    rows = [(k, f"{1000 * c['fwd_wall']:.1f} / {1000 * c['fwd_cpu']:.1f}",
             f"{1000 * c['bwd_wall']:.1f} / {1000 * c['bwd_cpu']:.1f}",
             f"{1000 * c['wall']:.1f} / {1000 * c['cpu']:.1f}",
             f"{100 * c['share_cpu']:.1f}%") for k, c in out["components"].items()]
    fs = out["full_step"]
    rows.append(("sum of components", "", "", f"{1000 * out['sum_of_components_wall']:.1f} / "
                 f"{1000 * out['sum_of_components_cpu']:.1f}", "100%"))
    rows.append(("full step: forward + backward", "", "",
                 f"{1000 * fs['step_wall']:.1f} / {1000 * fs['step_cpu']:.1f}",
                 f"{100 * fs['step_cpu'] / out['sum_of_components_cpu']:.0f}% of sum"))
    rows.append(("full step: AdamW update", "", "", f"{1000 * fs['adamw_wall']:.1f} / {1000 * fs['adamw_cpu']:.1f}",
                 ""))
    print(table(rows, ("component", "forward ms (wall / CPU)", "backward ms", "total ms", "share of CPU")))
    if scorer_batch:
        D = model.embed_dim
        g = torch.Generator().manual_seed(seed)
        tb = torch.randn(scorer_batch, D, generator=g).requires_grad_()
        fb = torch.randn(scorer_batch, Fr, D, generator=g).requires_grad_()
        times = [_fwd_bwd(lambda a, b: (lambda o: (o.sim, o.delta))(model.scorer(a, b, None)), lambda: (tb, fb),
                          seed) for _ in range(2)]
        last = times[-1]
        out["scorer_alone"] = {"batch": scorer_batch, "pairs": scorer_batch ** 2, "frames": Fr, **last,
                               "wall": last["fwd_wall"] + last["bwd_wall"], "cpu": last["fwd_cpu"] + last["bwd_cpu"]}
        print(f"{name}: psi/scorer alone at batch {scorer_batch} ({scorer_batch ** 2} pairs, {Fr} frames): "
              f"forward {1000 * last['fwd_cpu']:.0f} ms, backward {1000 * last['bwd_cpu']:.0f} ms CPU "
              f"({1000 * last['fwd_wall']:.0f} / {1000 * last['bwd_wall']:.0f} ms wall)")
    sh = {k: c["share_cpu"] for k, c in out["components"].items()}
    print(f"{name}: psi/scorer {100 * sh['psi / scorer']:.2f}% of forward+backward CPU time; backbone "
          f"{100 * (sh['backbone (text tower)'] + sh['backbone (image tower)']):.1f}%; "
          f"objectives {100 * sh['objectives (gare_loss)']:.2f}%")
    return out


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
    ap.add_argument("--json", default=None, help="write the figures (with command, machine, load) to this file")
    add_common_args(ap)
    args = ap.parse_args(argv)
    setup(args)
    res = start_record("bench_train_step.py", argv)
    res["args"] = vars(args)
    res["configs"] = {}
    print("training-step benchmark (CPU, float32, random initialization)")
    print(f"machine: {res['machine']}")
    for name in args.configs:
        if name == "tiny":
            res["configs"][name] = run_config(name, args.tiny_batch, args.tiny_frames, args.words, args.repeats,
                                              args.seed, args.scorer_batch)
        else:
            res["configs"][name] = run_config(name, args.vit_batch, args.vit_frames, args.words, args.vit_repeats,
                                              args.seed, args.scorer_batch)
    finish_record(res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
