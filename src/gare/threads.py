"""How many intra-op threads torch uses: chosen from the cores this process may run on and the machine's load.

torch's default is one OpenMP thread per core of the machine. On a machine whose cores are busy with other
processes, every parallel region of a small operation then waits for its slowest thread, which the kernel has
descheduled: the step slows down several-fold instead of by the share of CPU taken (measured figures in
docs/performance.md, "Threads", from ``benchmarks/bench_threads.py``).

The policy (:func:`choose_threads`): the cores of the process's CPU affinity (``os.sched_getaffinity``, which
also reflects ``taskset`` and container CPU sets), less the cores other processes keep busy (the larger of the
1-minute load average, rounded down, minus what this process itself contributes, and the number of other tasks
runnable right now: the load average lags by about a minute, so a competitor that has just started would
otherwise go unseen), shared among the processes of one
``torchrun`` on this machine (``LOCAL_WORLD_SIZE``), at least 1. An explicit choice wins:
``GARE_THREADS=N`` in the environment, then the config key ``train.threads`` (0 = automatic), then
``OMP_NUM_THREADS=N`` (the standard OpenMP setting, which torch also reads).
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

log = logging.getLogger(__name__)

ENV = "GARE_THREADS"

__all__ = ["ENV", "available_cores", "apply_threads", "choose_threads", "runnable_others"]


def runnable_others(samples: int = 5, interval: float = 0.01, path: str = "/proc/loadavg") -> float:
    """Tasks other than the calling thread that are runnable right now (the median of ``samples`` readings of
    the kernel's count in ``path``, ``interval`` seconds apart); 0.0 where the count is unavailable."""
    counts = []
    for i in range(samples):
        try:
            with open(path) as fh:
                running = int(fh.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        counts.append(max(0, running - 1))  # the reading thread is runnable itself
        if i + 1 < samples:
            time.sleep(interval)
    counts.sort()
    return float(counts[len(counts) // 2])


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None = None, *, cores: int | None = None, load: float | None = None,
                   own_load: float = 0.0) -> int:
    """Threads for torch's intra-op pool.

    Args:
        requested: an explicit count (> 0) wins over everything but ``GARE_THREADS``; 0 or None: automatic
            (or ``OMP_NUM_THREADS`` when set).
        cores: cores available (default: :func:`available_cores`).
        load: the load other processes put on the cores (default: the larger of ``os.getloadavg()[0]`` and
            :func:`runnable_others`, the latter only outside ``torchrun``, whose sibling ranks are runnable too
            and are accounted for by ``LOCAL_WORLD_SIZE``).
        own_load: the part of ``load`` this process itself causes (e.g. its current thread count when it has
            been busy for a minute), so a running job does not count itself as competition.

    Raises:
        ValueError: ``GARE_THREADS`` or ``requested`` is not a non-negative integer.
    """
    env = os.environ.get(ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{ENV}={env!r} must be a non-negative integer (0 = automatic)") from None
        if n < 0:
            raise ValueError(f"{ENV}={env!r} must be a non-negative integer (0 = automatic)")
        if n > 0:
            return n
    if requested is not None:
        if not isinstance(requested, int) or requested < 0:
            raise ValueError(f"threads={requested!r} must be a non-negative integer (0 = automatic)")
        if requested > 0:
            return requested
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = available_cores() if cores is None else max(1, int(cores))
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # ranks of one torchrun on this machine
    except ValueError:
        local = 1
    if load is None:
        try:
            load = os.getloadavg()[0] - own_load
        except (AttributeError, OSError):
            load = 0.0
        if local == 1:
            load = max(load, runnable_others())
        own_load = 0.0
    busy = max(0, math.floor(load - own_load + 0.25))  # cores kept busy by others (a load of 0.8 counts as 1)
    return max(1, min(cores, cores - busy) // local)


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads by :func:`choose_threads` and return the count (logged)."""
    n = choose_threads(requested)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    log.info("torch threads: %d (%s; %d core(s) available, load %.2f)", n,
             f"{ENV}" if os.environ.get(ENV, "").strip() not in ("", "0") else
             ("train.threads" if requested else
              "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS", "").strip() else "automatic"), available_cores(),
             os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    return n
