"""End-to-end search latency on a trained model's index: ``gare search`` per query, text encoder included.

    python benchmarks/bench_search_e2e.py [--model runs/demo/gare/best.safetensors] [--index DIR]
                                          [--queries 200] [--threads 1] [--json FILE]
    gare bench search_e2e [same options]

Indexes the videos of the model's dataset (the folder its run config names; default: the demo's model and its
4,000 generated videos; ``--index DIR`` reuses or resumes an index there), then runs the test split's captions
through one warm :class:`~gare.search.SearchEngine` (what ``gare serve`` keeps in memory), measured side by
side in one run, alternating query by query:

* ``bases``: today's engine: FAISS first stage, then the exact GARE rerank of the top K from the index's
  stored per-video score bases (``model.similarity(t, gallery)``);
* ``frames``: the engine before stored bases: the same first stage, then GARE on the candidates' frame
  embeddings through the blockwise reference (``SearchEngine(fast=False)``);
* ``encoder``: the text encoder alone (``engine.encode_query``), the part both share.

Per query: wall and CPU milliseconds (``time.process_time``; one torch thread). Both engines must return the
same top 10 (counted over the queries). Also the one-shot ``gare search INDEX QUERY`` command (a new process:
Python and torch start-up, model and index loading, one query), a few times. Writes
docs/results/bench_search_e2e.json (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, machine, setup  # noqa: E402
from gare.io import atomic_write  # noqa: E402
from gare.model.checkpoint import run_config  # noqa: E402
from gare.search import SearchEngine, build_index  # noqa: E402
from gare.search.search import DEFAULT_RERANK_K  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "runs" / "demo" / "gare" / "best.safetensors"
DEFAULT_OUT = ROOT / "docs" / "results" / "bench_search_e2e.json"


def dataset_of(ckpt: Path) -> Path:
    """The dataset folder named by the checkpoint's stored run config (relative paths: the repository's)."""
    videos = ((run_config(ckpt) or {}).get("data") or {}).get("videos")
    if not videos:
        raise SystemExit(f"{ckpt}: its run config names no dataset folder; pass a checkpoint trained by `gare train`")
    p = Path(videos)
    p = p if p.is_absolute() else ROOT / p
    if not (p / "annotations.jsonl").exists():
        raise SystemExit(f"{p}: no annotations.jsonl (the dataset of {ckpt}); generate it again with `gare demo`")
    return p


def test_captions(data: Path, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` (caption, video file name) pairs of the test split, spread over its videos."""
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines() if line.strip()]
    pairs = [(c, Path(r["video"]).name) for r in rows if r["split"] == "test" for c in r["captions"]]
    step = max(1, len(pairs) // n)
    return pairs[::step][:n]


def stats(xs: list[float]) -> dict:
    a = 1000 * np.asarray(xs)
    return {"p50_ms": float(np.median(a)), "p90_ms": float(np.quantile(a, 0.9)), "mean_ms": float(a.mean())}


def one_query(fn) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run(args) -> dict:
    setup(args)
    ckpt = Path(args.model)
    if not ckpt.exists():
        raise SystemExit(f"no model at {ckpt}: run `make demo` first, or pass --model CHECKPOINT")
    data = dataset_of(ckpt)
    res: dict = {"command": "python benchmarks/bench_search_e2e.py " + " ".join(sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
                 "load_average_start": list(os.getloadavg()), "threads": torch.get_num_threads(),
                 "model": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt)}
    tmp = None
    index_dir = Path(args.index) if args.index else Path(tmp := tempfile.mkdtemp(prefix="bench-e2e-")) / "index"
    w0, c0 = time.perf_counter(), time.process_time()
    rep = build_index(data / "videos" if (data / "videos").is_dir() else data, ckpt, index_dir, workers=2)
    res["index"] = {"videos": rep.total, "damaged": len(rep.damaged), "build_wall_s": time.perf_counter() - w0,
                    "build_cpu_s": time.process_time() - c0, "note": "CPU of this process only (decoding threads "
                    "included; reused or resumed indexes take less)"}
    engines = {"bases": SearchEngine.open(index_dir), "frames": SearchEngine.open(index_dir, fast=False)}
    assert engines["bases"].rows.has_bases, "the index has no stored bases"
    caps = test_captions(data, args.queries)
    K = DEFAULT_RERANK_K
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in ("bases", "frames", "encoder")}
    found = agree = 0
    for c, _ in caps[:3]:  # warm-up
        for eng in engines.values():
            eng.search(c, k=10)
    for caption, video in caps:
        hits = {}
        for name, eng in engines.items():
            w, cpu, hits[name] = one_query(lambda e=eng: e.search(caption, k=10))  # noqa: B023 - called now
            times[name]["wall"].append(w)
            times[name]["cpu"].append(cpu)
        w, cpu, _ = one_query(lambda: engines["bases"].encode_query(caption))  # noqa: B023 - called now
        times["encoder"]["wall"].append(w)
        times["encoder"]["cpu"].append(cpu)
        agree += [h.id for h in hits["bases"]] == [h.id for h in hits["frames"]]
        found += video in [h.rel_path.split("/")[-1] for h in hits["bases"][:5]]
    res["queries"] = len(caps)
    res["rerank_k"] = min(K, rep.total)
    for name, tv in times.items():
        res[name] = {"wall": stats(tv["wall"]), "cpu": stats(tv["cpu"])}
    res["speedup_p50_wall"] = res["frames"]["wall"]["p50_ms"] / res["bases"]["wall"]["p50_ms"]
    res["speedup_p50_cpu"] = res["frames"]["cpu"]["p50_ms"] / res["bases"]["cpu"]["p50_ms"]
    res["same_top10"] = agree
    res["top5_hits"] = found
    # the one-shot command: a new process per query
    cli = []
    for caption, _ in caps[:args.cli_runs]:
        cmd = [sys.executable, "-m", "gare.cli", "search", str(index_dir), caption, "-k", "10", "--json"]
        env = {**os.environ, "GARE_THREADS": str(max(1, args.threads))}
        w, _, out = one_query(lambda c=cmd, e=env: subprocess.run(c, capture_output=True, text=True, env=e))
        if out.returncode != 0:
            raise SystemExit(f"gare search failed: {out.stderr[-2000:]}")
        cli.append(w)
    res["cli_one_shot"] = {"runs": len(cli), **stats(cli),
                           "note": "wall time of `gare search INDEX QUERY` in a new process (start-up, model and "
                                   "index loading, one query)"}
    res["load_average_end"] = list(os.getloadavg())
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="trained checkpoint (default: the demo's)")
    ap.add_argument("--index", default=None, help="index folder to build, reuse or resume (default: a temporary one)")
    ap.add_argument("--queries", type=int, default=200, help="test captions searched")
    ap.add_argument("--cli-runs", type=int, default=3, help="one-shot `gare search` runs")
    ap.add_argument("--json", default=str(DEFAULT_OUT), help="results file ('' to skip writing)")
    add_common_args(ap)
    args = ap.parse_args(argv)
    res = run(args)
    print(f"{machine()}\n{res['index']['videos']} indexed videos, {res['queries']} test captions, "
          f"rerank K = {res['rerank_k']}")
    for name in ("bases", "frames", "encoder"):
        r = res[name]
        print(f"  {name:8s} p50 {r['wall']['p50_ms']:7.1f} ms wall  {r['cpu']['p50_ms']:7.1f} ms CPU   "
              f"p90 {r['wall']['p90_ms']:7.1f} ms wall")
    print(f"  stored bases vs frames: {res['speedup_p50_wall']:.1f}x wall, {res['speedup_p50_cpu']:.1f}x CPU (p50); "
          f"same top 10 on {res['same_top10']}/{res['queries']}; top-5 hits {res['top5_hits']}/{res['queries']}")
    one = res["cli_one_shot"]
    print(f"  one-shot `gare search`: p50 {one['p50_ms']:.0f} ms wall over {one['runs']} runs")
    if args.json:
        atomic_write(args.json, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
