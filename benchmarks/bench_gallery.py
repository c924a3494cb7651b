"""Gallery benchmark: exact GARE scores from cached per-video bases (``model.gallery``), one run.

    python benchmarks/bench_gallery.py [--videos 100000] [--distinct 10000] [--batch 64] [--k 256]
                                       [--heads-texts 1000] [--ref-texts 100] [--threads 1] [--out FILE]
    gare bench gallery [same options]

ViT-B/32 sizes (D = 512, F = 12), generated CLIP-scale features, a GARE model whose scorer parameters
are non-initial random values (benchmarks/bench_scorer.py ``trained_like``), one torch thread. Measured
side by side in one run, each time as wall seconds and as CPU seconds of this process
(``time.process_time``; with one thread it is the work done, the figure to read on a shared machine):

(a) rerank of K candidates for one query: ``model.similarity(t1, g_sub)`` on the candidates' slice of a
    gallery, against today's path ``model.similarity(t1, v_sub, m_sub)`` on their features (one text:
    the blockwise reference, as on main before the gallery); also the slice ``g[cand]`` plus scoring.
(b) exhaustive exact scoring of ``--videos`` videos (``--distinct`` distinct ones tiled, so the bases
    are built in seconds; scores of copies are equal, the work per video is not): one query, next to the
    time to just read the gallery's bytes (a sum over every tensor); then batches of ``--batch`` queries.
    Also the float16 gallery's top-10 agreement with float32 (on the distinct videos).
(c) the full ``--heads-texts`` x ``--heads-texts`` matrix with 8 psi heads and with 1 head:
    ``model.similarity(t, v)`` (bases built once per call) against the reference ``PairScorer.similarity``
    measured on ``--ref-texts`` texts and scaled (its cost is linear in the texts).

Prints the figures and writes them to docs/results/bench_gallery.json (``--out``). ``run(args)`` is
the entry point for other scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, machine, setup, table  # noqa: E402
from bench_scorer import features, trained_like  # noqa: E402
from gare.config import BackboneConfig, ModelConfig, PsiConfig, ScorerConfig, TemporalConfig  # noqa: E402
from gare.io import atomic_write  # noqa: E402
from gare.model import GareModel  # noqa: E402
from gare.model.gallery import ROW_FIELDS, VideoGallery  # noqa: E402
from gare.model.two_stage import topk_agreement  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "results" / "bench_gallery.json"


def micro_model(dim: int, heads: int = 1, layers: int = 1, seed: int = 0) -> GareModel:
    """A GareModel of width ``dim`` with one-layer micro towers (only its scorer is exercised here)."""
    torch.manual_seed(seed)
    arch = {"embed_dim": dim, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                             "head_width": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    cfg = ModelConfig(backbone=BackboneConfig(arch="tiny", arch_cfg=arch), temporal=TemporalConfig(kind="meanP"),
                      scorer=ScorerConfig(psi=PsiConfig(heads=heads, layers=layers)))
    m = GareModel(cfg)
    trained_like(m.scorer, seed)
    return m.eval()


def clock(fn, repeats: int = 1) -> dict:
    """Median wall and CPU seconds of ``repeats`` calls, and the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "out": out}


def interleave(fns: dict, repeats: int) -> dict:
    """Like :func:`clock` for several functions, alternating them so load changes hit all alike."""
    runs = {k: {"wall": [], "cpu": [], "out": None} for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            runs[k]["out"] = fn()
            runs[k]["wall"].append(time.perf_counter() - w0)
            runs[k]["cpu"].append(time.process_time() - c0)
    return {k: {"wall_s": statistics.median(r["wall"]), "cpu_s": statistics.median(r["cpu"]), "out": r["out"]}
            for k, r in runs.items()}


def _ms(x: float) -> str:
    return f"{1e3 * x:.2f}"


def rerank(model: GareModel, args) -> dict:
    """(a) one query against K candidates."""
    n, K = max(args.k * 8, 2048), args.k
    t, f = features(1, n, args.frames, args.dim, args.seed)
    mask = torch.ones(n, args.frames, dtype=torch.bool)
    mask[::3, -4:] = False  # some padded videos
    g = model.gallery(f, mask)
    cand = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))[:K]
    g_sub, v_sub, m_sub = g[cand], f[cand].contiguous(), mask[cand].contiguous()
    model.similarity(t, g_sub)  # warm-up (the scorer's folded maps are computed once per model)
    r = interleave({"gallery": lambda: model.similarity(t, g_sub),
                    "slice_and_gallery": lambda: model.similarity(t, g[cand]),
                    "today": lambda: model.similarity(t, v_sub, m_sub)}, args.repeats_small)
    diff = float((r["gallery"]["out"] - r["today"]["out"]).abs().max())
    out = {"k": K, "max_abs_diff": diff}
    for name in ("gallery", "slice_and_gallery", "today"):
        out[name] = {"wall_ms": 1e3 * r[name]["wall_s"], "cpu_ms": 1e3 * r[name]["cpu_s"]}
    for name in ("gallery", "slice_and_gallery"):
        out[f"speedup_{name}_wall"] = r["today"]["wall_s"] / r[name]["wall_s"]
        out[f"speedup_{name}_cpu"] = r["today"]["cpu_s"] / r[name]["cpu_s"]
    return out


def tile(g: VideoGallery, n: int) -> VideoGallery:
    reps = -(-n // len(g))
    return VideoGallery.cat([g] * reps)[:n].apply(lambda x: x.contiguous())


def exhaustive(model: GareModel, args) -> dict:
    """(b) every video of a large gallery, exactly."""
    distinct = min(args.distinct, args.videos)
    t, f = features(args.batch, distinct, args.frames, args.dim, args.seed + 1)
    mask = torch.ones(distinct, args.frames, dtype=torch.bool)
    mask[::3, -4:] = False
    build = clock(lambda: model.gallery(f, mask))
    g_small = build["out"]
    g16_small = model.gallery(f, mask, dtype=torch.float16)
    n_agree = min(args.batch * 4, 256)
    tq, _ = features(n_agree, distinct, args.frames, args.dim, args.seed + 2)
    S32, S16 = model.similarity(tq, g_small), model.similarity(tq, g16_small)
    agree = {"top10_agreement": topk_agreement(S32, S16, n=10), "top1_agreement": topk_agreement(S32, S16, n=1),
             "max_abs_diff": float((S32 - S16).abs().max()), "queries": n_agree, "videos": distinct}
    del S32, S16, g16_small
    g = tile(g_small, args.videos)
    del g_small
    row_bytes = sum(getattr(g, n).nbytes for n in ROW_FIELDS if getattr(g, n) is not None)

    def read_all() -> float:
        return float(sum(float(x.sum()) for x in g.tensors().values() if x.is_floating_point()))

    model.similarity(t[:1], g[:1000])  # warm-up
    single = interleave({"query": lambda: model.similarity(t[:1], g), "read": read_all}, args.repeats_small)
    batch = clock(lambda: model.similarity(t, g), args.repeats_large)
    out = {"videos": args.videos, "distinct_videos": distinct, "gallery_bytes": g.nbytes(),
           "bytes_per_video": g.nbytes() / args.videos, "row_bytes_per_video": row_bytes / args.videos,
           "build_per_video_ms": {"wall": 1e3 * build["wall_s"] / distinct, "cpu": 1e3 * build["cpu_s"] / distinct},
           "single_query_ms": {"wall": 1e3 * single["query"]["wall_s"], "cpu": 1e3 * single["query"]["cpu_s"]},
           "read_gallery_ms": {"wall": 1e3 * single["read"]["wall_s"], "cpu": 1e3 * single["read"]["cpu_s"]},
           "batch": args.batch,
           "batch_per_query_ms": {"wall": 1e3 * batch["wall_s"] / args.batch, "cpu": 1e3 * batch["cpu_s"] / args.batch},
           "float16": agree}
    return out


def full_matrix(args, heads: int) -> dict:
    """(c) texts x videos with ``heads`` psi heads: fast (bases once per call) vs the reference."""
    model = micro_model(args.dim, heads=heads, seed=args.seed)
    n = args.heads_texts
    n_ref = min(args.ref_texts, n)
    t, f = features(n, n, args.frames, args.dim, args.seed + 3)
    model.similarity(t[:16], f[:16])  # warm-up
    fast = clock(lambda: model.similarity(t, f))
    g = model.gallery(f)
    scoring = clock(lambda: model.similarity(t, g))
    ref = clock(lambda: model.similarity(t[:n_ref], f, fast=False))
    diff = float((fast["out"][:n_ref] - ref["out"]).abs().max())
    scale = n / n_ref
    return {"heads": heads, "texts": n, "videos": n, "ref_texts_measured": n_ref, "max_abs_diff": diff,
            "fast_s": {"wall": fast["wall_s"], "cpu": fast["cpu_s"]},
            "gallery_scoring_only_s": {"wall": scoring["wall_s"], "cpu": scoring["cpu_s"]},
            "reference_s_scaled": {"wall": ref["wall_s"] * scale, "cpu": ref["cpu_s"] * scale},
            "speedup_wall": ref["wall_s"] * scale / fast["wall_s"], "speedup_cpu": ref["cpu_s"] * scale / fast["cpu_s"]}


def run(args) -> dict:
    """Run the gallery benchmark with parsed ``args`` (see :func:`parser`); prints and returns the figures."""
    setup(args)
    t_all = time.perf_counter()
    load0 = os.getloadavg()[0]
    res: dict = {"machine": machine(), "note": "shared machine: other engineers' jobs ran at the same time; "
                 "read the CPU-time columns (time.process_time, one thread) and the ratios", "args": vars(args)}
    model = micro_model(args.dim, heads=1, seed=args.seed)
    print(res["machine"], flush=True)
    res["rerank"] = a = rerank(model, args)
    print(f"\n(a) rerank K = {a['k']}, one query (ms)")
    print(table([(name, _ms(a[name]["wall_ms"] / 1e3), _ms(a[name]["cpu_ms"] / 1e3),
                  f"{a.get(f'speedup_{name}_wall', 1):.1f}x", f"{a.get(f'speedup_{name}_cpu', 1):.1f}x")
                 for name in ("gallery", "slice_and_gallery", "today")],
                ("path", "wall ms", "cpu ms", "speed-up wall", "speed-up cpu")))
    print(f"max |gallery - today| = {a['max_abs_diff']:.2e}", flush=True)
    if args.videos > 0:
        res["exhaustive"] = b = exhaustive(model, args)
        print(f"\n(b) exhaustive exact over {b['videos']:,} videos ({b['distinct_videos']:,} distinct, tiled); "
              f"gallery {b['gallery_bytes'] / 2**30:.2f} GiB ({b['bytes_per_video'] / 1024:.1f} KiB/video, "
              f"rows {b['row_bytes_per_video'] / 1024:.1f} KiB); build {b['build_per_video_ms']['cpu']:.2f} ms "
              "CPU per video")
        print(table([("one query", f"{b['single_query_ms']['wall']:.0f}", f"{b['single_query_ms']['cpu']:.0f}"),
                     ("read every gallery byte (sum)", f"{b['read_gallery_ms']['wall']:.0f}",
                      f"{b['read_gallery_ms']['cpu']:.0f}"),
                     (f"per query, batches of {b['batch']}", f"{b['batch_per_query_ms']['wall']:.1f}",
                      f"{b['batch_per_query_ms']['cpu']:.1f}")], ("", "wall ms", "cpu ms")))
        h = b["float16"]
        print(f"float16 rows vs float32 ({h['queries']} queries x {h['videos']:,} videos): top-10 agreement "
              f"{h['top10_agreement']:.4f}, top-1 {h['top1_agreement']:.4f}, max |diff| {h['max_abs_diff']:.1e}",
              flush=True)
    res["full_matrix"] = []
    for heads in args.heads:
        c = full_matrix(args, heads)
        res["full_matrix"].append(c)
        print(f"\n(c) {c['texts']} x {c['videos']}, {heads} head(s): fast {c['fast_s']['cpu']:.2f} s CPU "
              f"({c['fast_s']['wall']:.2f} wall; scoring a built gallery {c['gallery_scoring_only_s']['cpu']:.2f} "
              f"CPU), reference {c['reference_s_scaled']['cpu']:.1f} s CPU ({c['reference_s_scaled']['wall']:.1f} "
              f"wall, {c['ref_texts_measured']} texts measured, scaled): {c['speedup_cpu']:.1f}x CPU, "
              f"{c['speedup_wall']:.1f}x wall; max |diff| {c['max_abs_diff']:.1e}", flush=True)
    res["seconds"] = time.perf_counter() - t_all
    res["load_average"] = {"start": load0, "end": os.getloadavg()[0]}
    print(f"\nall: {res['seconds']:.0f} s wall, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    if args.out:
        atomic_write(args.out, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return res


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--k", type=int, default=256, help="candidates of the rerank (a)")
    ap.add_argument("--videos", type=int, default=100_000, help="videos of the exhaustive search (b); 0 skips it")
    ap.add_argument("--distinct", type=int, default=10_000, help="distinct videos built, tiled to --videos")
    ap.add_argument("--batch", type=int, default=64, help="queries per batch in (b)")
    ap.add_argument("--heads", type=int, nargs="*", default=[8, 1], help="psi heads of the full-matrix runs (c)")
    ap.add_argument("--heads-texts", type=int, default=1000, help="texts = videos of (c)")
    ap.add_argument("--ref-texts", type=int, default=100, help="texts the reference scores in (c) (scaled)")
    ap.add_argument("--repeats-small", type=int, default=5, help="repeats of the fast measurements")
    ap.add_argument("--repeats-large", type=int, default=2, help="repeats of the batch measurement")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON ('' to skip writing)")
    add_common_args(ap)
    return ap


def main(argv=None) -> int:
    run(parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
