"""The search engine's FAISS first stage at scale: open time with a stored index vs training it, IVF-Flat vs
IVF-PQ recall of the exact (flat) ranking, bytes per video, query time.

    nice -n 5 python benchmarks/bench_first_stage.py [--videos 100000 1000000] [--data isotropic clustered]
                                                     [--queries 100] [--json docs/results/bench_first_stage.json]

For each collection size and data kind, an index folder is written the way ``gare index`` lays it out
(``index.sqlite`` rows and ``shards/`` with the mean vectors vbar; generated vectors, D = 512, no videos:
the frames are a 1 x 1 placeholder and search scores nothing but the first stage) with a tiny model whose
sha256 the index records. Then, one thread:

1. ``SearchEngine.open(first_stage=kind)`` for ``flat``, ``ivf`` and ``ivfpq``: the first open finds no stored
   first stage, trains it and stores it (``first_stage/``); the second loads the stored file. Both times the
   whole open is timed (metadata, memory-mapped shards, first stage) and its first-stage part separately.
2. Recall against the exact flat first stage, for ``--queries`` queries (each a random indexed vector plus
   noise): the share of the flat top 1024 inside the approximate top 1024, of the flat top 10 inside the
   approximate top 10, and of the flat top 10 inside the approximate top 1024 (what the GARE rerank at the
   default K = 1024 receives), for IVF-Flat and IVF-PQ at each ``--nprobe``, IVF-PQ with each ``--refine``
   (0: its own approximate order; R: the top R x K re-ordered by the exact cosine with the stored vectors).
3. Per query, the first stage's wall and CPU ms (K = 1024); bytes per video of each stored file.
4. With ``--update-share S``: a share S of the rows is deleted and as many new ones added (what
   ``gare index --update`` does to the metadata and shards), then each kind is opened again: its stored file is
   brought up to date (no training) and stored; timed like step 1.

Data: ``isotropic`` (each vbar an isotropic random direction, like bench_search.py's generated videos: the
worst case for IVF, whose lists follow clusters) and ``clustered`` (vbar around 1,000 random centres, cosine
about 0.67 to its centre; closer to real embeddings, which are clustered).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Clock, add_common_args, machine, setup  # noqa: E402
from gare.config import BackboneConfig, ModelConfig, TemporalConfig  # noqa: E402
from gare.model import GareModel  # noqa: E402
from gare.search import SearchEngine  # noqa: E402
from gare.search.first_stage import FIRST_STAGE_DIR, normalized  # noqa: E402
from gare.search.store import DB_NAME, INDEX_FORMAT, SHARD_DIR, connect, file_sha256  # noqa: E402

ROWS_PER_SHARD = 100_000


def vectors(kind: str, n: int, dim: int, seed: int, chunk: int = 100_000):
    """Chunks of ``n`` float32 vbar vectors (not normalized, as the shards store them)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        if kind == "clustered":
            x = centres[rng.integers(0, len(centres), m)] + 0.7 * x
        elif kind != "isotropic":
            raise ValueError(f"--data must be isotropic or clustered, got {kind!r}")
        yield x


def write_index(folder: Path, ckpt: Path, kind: str, n: int, dim: int, seed: int) -> None:
    """An index folder of ``n`` generated vbar vectors, laid out as ``gare index`` writes it."""
    (folder / SHARD_DIR).mkdir(parents=True)
    con = connect(folder / DB_NAME)
    settings = {"model_id": file_sha256(ckpt), "embed_dim": dim, "image_size": 64, "framerate": 1.0,
                "max_frames": 1, "decoder": "pyav", "dtype": "float32"}
    with con:
        con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
            ("format", INDEX_FORMAT), ("root", str(folder / "videos")), ("model_path", str(ckpt)),
            ("settings", json.dumps(settings)), ("created", time.strftime("%Y-%m-%dT%H:%M:%S"))])
    vid = 1
    for c, x in enumerate(vectors(kind, n, dim, seed, ROWS_PER_SHARD)):
        m = len(x)
        ids = torch.arange(vid, vid + m, dtype=torch.int64)
        name = f"gen-{c:05d}.safetensors"
        save_file({"ids": ids, "mask": torch.ones(m, 1, dtype=torch.bool), "mean": torch.from_numpy(x),
                   "frames": torch.zeros(m, 1, 1, dtype=torch.float16)}, str(folder / SHARD_DIR / name))
        with con:
            con.executemany("INSERT INTO videos(id, path, size, mtime_ns, duration, n_frames, width, height, shard, "
                            "row, added) VALUES (?, ?, 1000, 0, 10.0, 1, 64, 64, ?, ?, 0)",
                            [(vid + r, f"v/{vid + r:08d}.mp4", name, r) for r in range(m)])
        vid += m
    con.close()


def update_rows(folder: Path, share: float, dim: int, data: str, seed: int) -> tuple[int, int]:
    """Delete a random ``share`` of the videos and add as many new ones (a new shard, new ids)."""
    con = connect(folder / DB_NAME)
    ids = np.array([r[0] for r in con.execute("SELECT id FROM videos")])
    rng = np.random.default_rng(seed)
    u = max(1, int(share * len(ids)))
    gone = rng.choice(ids, u, replace=False)
    x = next(vectors(data, u, dim, seed + 7, u))
    new = torch.arange(int(ids.max()) + 1, int(ids.max()) + 1 + u, dtype=torch.int64)
    name = "gen-update.safetensors"
    save_file({"ids": new, "mask": torch.ones(u, 1, dtype=torch.bool), "mean": torch.from_numpy(x),
               "frames": torch.zeros(u, 1, 1, dtype=torch.float16)}, str(folder / SHARD_DIR / name))
    with con:
        con.executemany("DELETE FROM videos WHERE id = ?", [(int(i),) for i in gone])
        con.executemany("INSERT INTO videos(id, path, size, mtime_ns, duration, n_frames, width, height, shard, row, "
                        "added) VALUES (?, ?, 1000, 0, 10.0, 1, 64, 64, ?, ?, 0)",
                        [(int(v), f"v/{int(v):08d}.mp4", name, r) for r, v in enumerate(new)])
    con.close()
    return u, u


def open_engine(folder: Path, kind: str, **kw) -> tuple[SearchEngine, dict]:
    with Clock() as c:
        eng = SearchEngine.open(folder, first_stage=kind, fast=False, **kw)
    return eng, {"source": eng.first.source, "open_wall_s": round(c.wall, 3), "open_cpu_s": round(c.cpu, 3),
                 "first_stage_wall_s": round(eng.first_stage_s, 3), "label": eng.first_stage_kind}


def recall(flat_top: list[np.ndarray], approx_top: list[np.ndarray], k_true: int, k_found: int) -> float:
    return float(np.mean([len(np.intersect1d(t[:k_true], a[:k_found])) / k_true for t, a in zip(flat_top, approx_top)]))


def search_all(eng: SearchEngine, q: np.ndarray, K: int) -> tuple[list[np.ndarray], dict]:
    tops, wall, cpu = [], [], []
    for i in range(len(q)):
        with Clock() as c:
            _, pos = eng.first.search(q[i:i + 1], K)
        tops.append(pos)
        wall.append(c.wall * 1e3)
        cpu.append(c.cpu * 1e3)
    return tops, {"query_ms_p50_wall": round(float(np.median(wall)), 3),
                  "query_ms_p50_cpu": round(float(np.median(cpu)), 3)}


def run_one(args, ckpt: Path, tmp: Path, data: str, n: int) -> dict:
    folder = tmp / f"index-{data}-{n}"
    out: dict = {"videos": n, "data": data, "dim": args.dim}
    with Clock() as c:
        write_index(folder, ckpt, data, n, args.dim, args.seed)
    out["write_index_wall_s"] = round(c.wall, 1)
    K = args.k
    flat, out["flat_open"] = open_engine(folder, "flat")
    rng = np.random.default_rng(args.seed + 1)
    pick = rng.integers(0, n, args.queries)
    q = normalized(flat.rows.mean_at(np.sort(pick))[np.argsort(np.argsort(pick))])
    q = normalized(q + rng.standard_normal(q.shape).astype(np.float32) * 0.7 / np.sqrt(args.dim))
    flat_top, out["flat"] = search_all(flat, q, K)
    del flat
    for kind in ("ivf", "ivfpq"):
        res: dict = {}
        eng, res["open_building"] = open_engine(folder, kind)
        del eng
        eng, res["open_stored"] = open_engine(folder, kind)
        stored = sorted((folder / FIRST_STAGE_DIR).glob(f"{kind}-*.faiss"))
        res["stored_file_bytes"] = stored[0].stat().st_size
        res["bytes_per_video"] = round(stored[0].stat().st_size / n, 1)
        res["bytes_per_video_codes_and_ids"] = eng.first.spec.bytes_per_video()
        res["spec"] = {f: getattr(eng.first.spec, f) for f in ("nlist", "m", "nbits")}
        res["runs"] = []
        for nprobe in args.nprobe:
            for refine in (args.refine if kind == "ivfpq" else [0]):
                eng.first.index.nprobe = nprobe
                eng.first.nprobe = nprobe
                eng.first.refine = refine
                eng.first.exact = ((lambda pos, e=eng: normalized(e.rows.mean_at(pos))) if refine else None)
                tops, t = search_all(eng, q, K)
                row = {"nprobe": nprobe, "refine": refine, "label": eng.first.label,
                       "recall_top1024_at_1024": round(recall(flat_top, tops, K, K), 4),
                       "recall_top10_at_10": round(recall(flat_top, tops, 10, 10), 4),
                       "recall_top10_at_1024": round(recall(flat_top, tops, 10, K), 4), **t}
                res["runs"].append(row)
                if args.progress:
                    print(f"  {data} {n} {kind} {row}", flush=True)
        del eng
        out[kind] = res
        if args.progress:
            print(f"{data} {n} {kind}: open building {res['open_building']}, stored {res['open_stored']}",
                  flush=True)
    if args.update_share:
        out["update"] = dict(zip(("removed", "added"), update_rows(folder, args.update_share, args.dim, data,
                                                                    args.seed)))
        for kind in ("ivf", "ivfpq"):
            eng, out[kind]["open_after_update"] = open_engine(folder, kind)
            del eng
            _, out[kind]["open_after_update_stored"] = open_engine(folder, kind)
            if args.progress:
                print(f"{data} {n} {kind} after update: {out[kind]['open_after_update']}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, nargs="+", default=[100_000])
    ap.add_argument("--data", nargs="+", default=["isotropic", "clustered"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=1024, help="first-stage K (the engine's default rerank K)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--refine", type=int, nargs="+", default=[0, 1, 2, 4])
    ap.add_argument("--update-share", type=float, default=0.0,
                    help="then delete this share of the rows, add as many, and open each kind again")
    ap.add_argument("--tmp", default=None, help="folder for the generated index folders (default: the system's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--progress", action="store_true")
    add_common_args(ap)
    args = ap.parse_args(argv)
    setup(args)
    import faiss  # lazy on purpose, as in the engine

    faiss.omp_set_num_threads(max(1, args.threads))
    logging.basicConfig(level=logging.INFO if args.progress else logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    t0, c0 = time.perf_counter(), time.process_time()
    res = {"command": "python benchmarks/bench_first_stage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "faiss": faiss.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "runs": []}
    with tempfile.TemporaryDirectory(dir=args.tmp) as td:
        ckpt = Path(td) / "tiny.safetensors"
        torch.manual_seed(0)
        GareModel(ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=1))).save(ckpt)
        for n in args.videos:
            for data in args.data:
                res["runs"].append(run_one(args, ckpt, Path(td), data, n))
                if args.json:  # partial results survive an interrupted long run
                    Path(args.json).write_text(json.dumps(res, indent=1))
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    res["total_cpu_s"] = round(time.process_time() - c0, 1)
    res["load_average_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
