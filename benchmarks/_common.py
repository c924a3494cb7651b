"""Helpers shared by the benchmark scripts: thread setting, interleaved timing, memory readings, printing."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def add_common_args(ap) -> None:
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, oversubscribed CPU more threads make "
                         "every small op wait on the others; use 0 for torch's default)")
    ap.add_argument("--seed", type=int, default=0)


def setup(args) -> None:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"load average {load:.1f}")


class Clock:
    """Wall and CPU seconds of a block (``with Clock() as c: ...; c.wall, c.cpu``)."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run every function ``repeats`` times, alternating between them, so slow phases of a shared
    machine hit all of them alike. Returns the seconds of each run."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn)[0])
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rss_bytes() -> tuple[int, int]:
    """``(current RSS, peak RSS since the last reset)`` of this process, from /proc/self/status."""
    cur = peak = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def table(rows: list[tuple], header: tuple) -> str:
    cols = list(zip(*([header] + [tuple(str(c) for c in r) for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def mib(x: float) -> str:
    return f"{x / 2**20:.0f} MiB"


SOT, EOT = 49406, 49407  # CLIP's start and end-of-text token ids


def random_batch(image_size: int, B: int, Fr: int, L: int, seed: int, *, pad_first: bool = False):
    """A seeded training batch: token ids ``[B, L]`` (start, random ids, end-of-text, zero padding), frames
    ``[B, Fr, 3, S, S]`` and a frame mask ``[B, Fr]`` (``pad_first``: the first video's second half padded)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40000, (B, L), generator=g)
    ids[:, 0] = SOT
    lengths = torch.randint(4, L, (B,), generator=g)
    ids[torch.arange(B), lengths] = EOT
    ids[torch.arange(L)[None, :] > lengths[:, None]] = 0
    frames = torch.randn(B, Fr, 3, image_size, image_size, generator=g)
    mask = torch.ones(B, Fr, dtype=torch.bool)
    if pad_first:
        mask[0, Fr // 2:] = False
    return ids, frames, mask


def clock(fn: Callable[[], object]) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds of this process, result)`` of one call (CPU: ``time.process_time``)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def interleaved_clock(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """:func:`interleaved` with CPU time too: ``{name: {"wall": [s, ...], "cpu": [s, ...]}}``."""
    runs: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c, _ = clock(fn)
            runs[k]["wall"].append(w)
            runs[k]["cpu"].append(c)
    return runs


def start_record(script: str, argv: list[str] | None) -> dict:
    """The head of a results file: the command that made it, the date, the machine and the load average."""
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return {"command": " ".join(["python", f"benchmarks/{script}"] + args),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "load_average_start": list(os.getloadavg()), "_t0": (time.perf_counter(), time.process_time())}


def finish_record(res: dict, path: str | None) -> dict:
    """Add the run's wall and CPU seconds and the final load average; write ``res`` to ``path`` (atomically)."""
    import json

    from gare.io import atomic_write

    w0, c0 = res.pop("_t0")
    res["wall_s"] = time.perf_counter() - w0
    res["cpu_s"] = time.process_time() - c0
    res["load_average_end"] = list(os.getloadavg())
    print(f"run: {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU of this process; load average "
          f"{res['load_average_start'][0]:.1f} -> {res['load_average_end'][0]:.1f}")
    if path:
        atomic_write(path, json.dumps(res, indent=2) + "\n")
        print(f"wrote {path}")
    return res
