"""Memory benchmark: peak memory of exact GARE scoring of 1,000 x 5,000 under a memory budget.

    python benchmarks/bench_memory.py [--texts 1000] [--videos 5000] [--frames 12] [--dim 512]
                                      [--budget-mib 2048] [--also-mib 256] [--threads 1] [--json FILE]

Each measurement runs in a fresh child process: it builds the inputs, records its resident set size
(RSS), resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), scores the whole matrix with
``fast_similarity(..., memory_budget=B)`` and reads the peak RSS (``VmHWM``) again. The printed
figure is ``peak RSS - RSS before scoring``: everything the scoring allocated at its worst moment,
the output matrix included (the inputs are not counted). RSS is an upper bound of the live tensors
(the allocator may hold freed pages), so the check is conservative. Where clear_refs is not
permitted the child falls back to the peak over its whole life minus the RSS before scoring.
``--json FILE`` writes every child's figures (bytes, wall and CPU seconds of the scoring) with the command,
the machine and its load average (docs/results/bench_memory.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, finish_record, mib, reset_peak_rss, rss_bytes, setup, start_record, table  # noqa: E402


def child(args) -> dict:
    from bench_scorer import features, trained_like
    from gare.config import ScorerConfig
    from gare.model.fast_scorer import fast_similarity
    from gare.model.scorer import PairScorer

    setup(args)
    sc = trained_like(PairScorer(ScorerConfig(), args.dim))
    t, f = features(args.texts, args.videos, args.frames, args.dim, args.seed)
    fast_similarity(sc, t[:8], f[:8])  # load kernels outside the measurement
    before, _ = rss_bytes()
    reset_ok = reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    S = fast_similarity(sc, t, f, memory_budget=args.child_budget)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = rss_bytes()
    return {"before": before, "peak": peak, "increase": peak - before, "reset": reset_ok, "seconds": secs,
            "cpu_seconds": cpu,
            "output_bytes": S.numel() * S.element_size(), "input_bytes": (t.numel() + f.numel()) * 4,
            "finite": bool(torch.isfinite(S).all())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=5000)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--budget-mib", type=int, default=2048, help="the budget to check (default 2 GiB)")
    ap.add_argument("--also-mib", type=int, nargs="*", default=[256], help="further budgets to show the scaling")
    ap.add_argument("--json", default=None, help="write the figures (with command, machine, load) to this file")
    ap.add_argument("--child-budget", type=int, default=None, help=argparse.SUPPRESS)
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.child_budget is not None:
        print(json.dumps(child(args)))
        return 0
    setup(args)
    res = start_record("bench_memory.py", argv)
    res["args"] = vars(args)
    res["budgets"] = []
    print(f"memory benchmark: {args.texts} x {args.videos} pairs, {args.frames} frames, D={args.dim}, "
          f"fast exact scorer")
    print(f"machine: {res['machine']}")
    rows = []
    ok = True
    for b in [args.budget_mib] + list(args.also_mib):
        cmd = [sys.executable, __file__, "--texts", str(args.texts), "--videos", str(args.videos), "--frames",
               str(args.frames), "--dim", str(args.dim), "--threads", str(args.threads), "--seed", str(args.seed),
               "--child-budget", str(b * 2**20)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        under = r["increase"] <= b * 2**20
        res["budgets"].append({"budget_mib": b, **r, "under_budget": under})
        if b == args.budget_mib:
            ok = under
        rows.append((f"{b} MiB", mib(r["increase"]), mib(r["output_bytes"]), mib(r["increase"] - r["output_bytes"]),
                     f"{r['seconds']:.1f} / {r['cpu_seconds']:.1f}", "yes" if under else "NO",
                     "VmHWM reset" if r["reset"] else "lifetime peak"))
        inputs = r["input_bytes"]
    print(table(rows, ("budget", "peak RSS increase", "of which output", "working set", "seconds wall / CPU",
                       "increase under budget", "method")))
    print(f"(inputs, not counted: {mib(inputs)})")
    print(f"peak of scoring {args.texts} x {args.videos} under the {args.budget_mib} MiB budget: "
          f"{rows[0][1]} -> {'OK' if ok else 'OVER BUDGET'}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["children_cpu_s"] = ru.ru_utime + ru.ru_stime  # the child processes' whole lives, inputs included
    finish_record(res, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
