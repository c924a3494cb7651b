"""Run every benchmark in turn and print all figures in one place.

    python benchmarks/run_all.py [--threads 1] [--checkpoint RUN_OR_FILE] [--only scorer memory ...]
                                 [--skip data ...]

Benchmarks (each its own process, each a few minutes at most on a 2-core CPU):
scorer (fast vs reference vs dual encoder), gallery (cached per-video bases: rerank, exhaustive search,
8 heads; ``bench_gallery.py``), memory (peak of 1,000 x 5,000 under a budget), two_stage
(speed-up and top-10 agreement at K = 256; the demo's split with ``--checkpoint``), train_step (time per
component, tiny and ViT-B/32) and data (frame store vs decoding, ``bench_data.py`` of the data layer).
Exits non-zero if any benchmark failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["scorer", "gallery", "memory", "two_stage", "train_step", "data"]


def command(name: str, args) -> list[str] | None:
    script = HERE / f"bench_{name}.py"
    if not script.exists():
        return None
    cmd = [sys.executable, str(script)]
    if name != "data":
        cmd += ["--threads", str(args.threads)]
    if name == "two_stage" and args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    return cmd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the model benchmarks (0: default)")
    ap.add_argument("--checkpoint", default=None, help="demo run folder/checkpoint for the two-stage test-set figures")
    ap.add_argument("--only", nargs="*", default=None, choices=ORDER)
    ap.add_argument("--skip", nargs="*", default=[], choices=ORDER)
    args = ap.parse_args(argv)
    names = [n for n in (args.only or ORDER) if n not in args.skip]
    failed = []
    t_all = time.perf_counter()
    for name in names:
        cmd = command(name, args)
        print(f"\n===== {name} " + "=" * (70 - len(name)), flush=True)
        if cmd is None:
            print(f"(benchmarks/bench_{name}.py not present: skipped)")
            continue
        print("$ " + " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd)), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s, exit {rc}]", flush=True)
        if rc != 0:
            failed.append(name)
    tail = f"; FAILED: {', '.join(failed)}" if failed else ""
    print(f"\nall benchmarks: {time.perf_counter() - t_all:.0f} s{tail}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
