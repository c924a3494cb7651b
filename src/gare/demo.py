"""``gare demo``: GARE vs the baseline (no Delta) on the generated moving-shapes data, on the CPU.

What it does (docs: README "Quick start"):

1. generates the dataset if absent and pre-decodes its frames (``data.frame_store``);
2. trains the demo recipe (``recipes/demo.yaml``) end to end twice, GARE and the baseline, with the same seed
   and steps; the GARE model is the demo's searchable model (``<out>/gare/best.safetensors``);
3. freezes the CLIP towers of that GARE model, caches their features of every video and training caption
   (as ``gare data features`` does), and runs the seeded comparison grid ``recipes/demo-seeded.yaml`` on them:
   GARE and the baseline, clean and with 50% of the training captions corrupted, 3 seeds each (each run trains
   the temporal module, and psi for GARE, from scratch: seconds per run instead of minutes);
4. writes ``report.json``, ``report.md``, ``curves.png`` (end-to-end training curves) and ``seeded.png``.

Jobs run in parallel worker processes, one per available core (``--jobs``), each on one torch thread
(``GARE_THREADS`` overrides): results do not depend on the number of jobs or on the machine's load, and a
loaded machine slows the demo down in proportion instead of making threads wait for each other.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import resource
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .config import RECIPES_DIR, load_config
from .evaluate.protocol import metrics_table
from .experiments import aggregate, collect, export_backbone, load_grid, run_grid, run_one, write_results
from .io import atomic_write
from .model.gare import GareModel
from .pipeline import load_data
from .plots import plot_curves, read_metrics
from .threads import available_cores, choose_threads
from .train.features import extract_features
from .train.trainer import train

log = logging.getLogger(__name__)

RECIPE = RECIPES_DIR / "demo.yaml"
SEEDED_GRID = Path(__file__).resolve().parent / "recipes" / "demo-seeded.yaml"
CONDITIONS = {"clean": ("gare_clean", "baseline_clean"), "noisy50": ("gare_noisy50", "baseline_noisy50")}
QUICK = ["train.batch_size=16", "train.eval_every=10", "train.tensorboard=false", "data.synthetic_options={}",
         "model.backbone.arch_cfg={embed_dim: 32, vision_cfg: {image_size: 32, layers: 1, width: 32, "
         "patch_size: 16, head_width: 16}, text_cfg: {context_length: 77, vocab_size: 49408, width: 32, "
         "heads: 2, layers: 1}}", "model.temporal.layers=1", "data.max_frames=4"]


def _common_overrides(data_dir: str, videos: int | None, quick: bool, extra: list[str] | None) -> list[str]:
    ov = [f"data.videos={data_dir}", "train.threads=1"]
    if videos is not None:
        ov.append(f"data.synthetic_videos={videos}")
    return ov + (QUICK if quick else []) + list(extra or [])


def demo_config(out: Path, data_dir: str, *, steps: int | None, videos: int | None, quick: bool,
                variant: str, extra: list[str] | None = None):
    """The config of one end-to-end demo model (``variant``: gare or baseline)."""
    overrides = [f"train.output_dir={out / variant}", f"name=demo-{variant}"]
    if steps is not None:
        overrides.append(f"train.max_steps={steps}")
    if variant == "baseline":
        overrides.append("model.scorer.use_delta=false")
    return load_config(RECIPE, _common_overrides(data_dir, videos, quick, extra) + overrides)


def seeded_grid(out: Path, data_dir: str, *, videos: int | None, quick: bool, extra: list[str] | None = None,
                seeds: list[int] | None = None, steps: int | None = None):
    """The seeded comparison grid on the frozen towers and cached features under ``out``."""
    ov = _common_overrides(data_dir, videos, quick, extra)
    ov += [f"model.backbone.weights={out / 'towers.pt'}", f"train.features={out / 'features.safetensors'}"]
    return load_grid(SEEDED_GRID, seeds=seeds, steps=steps, extra_overrides=ov, output=out / "seeded",
                     results=out / "seeded")


# ---------------------------------------------------------------------------------------------- jobs
def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _job_train(cfg) -> dict:
    run_dir = Path(cfg.train.output_dir)
    if (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # metrics.jsonl is appended to: a new demo starts it afresh
    return train(cfg, show_progress=False)


def _job_features(checkpoint: Path, towers: Path, cfg, out: Path) -> Path:
    export_backbone(checkpoint, towers)
    return extract_features(cfg, out)


def _job_seeded(grid, variant_name: str, seed: int) -> dict:
    variant = next(v for v in grid.variants if v.name == variant_name)
    return run_one(grid, variant, seed, force=True)  # new towers each demo: never reuse an older run


class _Jobs:
    """Jobs in ``n`` worker processes (in this process when ``n`` is 1), each on ``threads`` torch threads."""

    def __init__(self, n: int, threads: int):
        self.n, self.threads = n, threads
        self.pool = None
        if n > 1:
            self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init, initargs=(threads,))
        self.loads: list[float] = []

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        f: Future = Future()
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            f.set_result(fn(*args))
        finally:
            torch.set_num_threads(previous)
        return f

    def wait(self, futures: list[Future]) -> list:
        pending = set(futures)
        while pending:
            self.loads.append(os.getloadavg()[0])
            _, pending = wait(pending, timeout=5.0)
        return [f.result() for f in futures]  # re-raises a job's error

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


# ---------------------------------------------------------------------------------------------- report
def pooled_std(a: dict, b: dict) -> float | None:
    """sqrt((s_a^2 + s_b^2) / 2) of two ``{mean, std, n}`` records (None when a std is missing)."""
    if a.get("std") is None or b.get("std") is None:
        return None
    return math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)


def verdict(seeded: dict) -> str:
    """One sentence on the seeded comparison: each condition's gap, called "within noise" when it is at most
    about one pooled standard deviation."""
    parts = []
    for cond, label in (("clean", "on clean captions"), ("noisy50", "with 50% of the training captions corrupted")):
        g, b = seeded[cond]["gare"], seeded[cond]["baseline"]
        gap = g["mean"] - b["mean"]
        sd = pooled_std(g, b)
        if sd is None:
            parts.append(f"{label} GARE scores {g['mean']:.1f} and the baseline {b['mean']:.1f} (one seed: no "
                         f"measure of noise)")
        elif abs(gap) <= 1.2 * sd:
            parts.append(f"{label} the two are within noise ({gap:+.1f} points, pooled std {sd:.1f})")
        else:
            who = "GARE is ahead" if gap > 0 else "the baseline is ahead"
            parts.append(f"{label} {who} by {abs(gap):.1f} points ({abs(gap) / max(sd, 1e-9):.1f} pooled std)")
    n = seeded["clean"]["gare"]["n"]
    return (f"Test t2v R@1 over {n} seeds: {parts[0]}; {parts[1]}.").replace(": on", ": On", 1)


def seeded_summary(grid, runs: dict) -> dict:
    rows = {r["variant"]: r for r in aggregate(grid, runs)}
    out = {}
    for cond, (g, b) in CONDITIONS.items():
        out[cond] = {}
        for key, name in (("gare", g), ("baseline", b)):
            st = rows[name]["stats"].get("t2v_R1", {"mean": float("nan"), "std": None, "n": 0})
            out[cond][key] = {"mean": st["mean"], "std": st["std"], "n": st["n"],
                              "per_seed": {str(s): m["t2v_R1"] for s, m in rows[name]["per_seed"].items()}}
    return out


def seeded_table(seeded: dict) -> str:
    lines = ["| training captions | GARE t2v R@1 | baseline t2v R@1 | GARE − baseline | pooled std |",
             "|---|---|---|---|---|"]
    for cond, label in (("clean", "clean"), ("noisy50", "50% corrupted")):
        g, b = seeded[cond]["gare"], seeded[cond]["baseline"]
        sd = pooled_std(g, b)
        fmt = (lambda s: f"{s['mean']:.1f}" + ("" if s["std"] is None else f" ± {s['std']:.1f}"))  # noqa: E731
        lines.append(f"| {label} | {fmt(g)} | {fmt(b)} | {g['mean'] - b['mean']:+.1f} | "
                     f"{'–' if sd is None else f'{sd:.1f}'} |")
    return "\n".join(lines)


def end_to_end_table(report: dict) -> str:
    """The end-to-end models' test metrics (markdown)."""
    return metrics_table({"GARE": report["gare"], "baseline (no Delta)": report["baseline"]})


def time_sentence(report: dict) -> str:
    """Wall and CPU time, jobs, and the machine's load during the demo."""
    m = report["machine"]
    return (f"Wall time {report['seconds']:.0f} s ({report['seconds'] / 60:.1f} min), CPU time "
            f"{report['cpu_seconds']:.0f} s; {m['jobs']} job(s) x {m['threads_per_job']} thread(s) on "
            f"{m['cores_available']} core(s); 1-minute load average {m['load_before'][0]:.1f} before, "
            f"{m['load_mean_during']:.1f} on average during the demo (which itself adds up to {m['jobs']}).")


def summary_block(report: dict) -> str:
    """What README.md quotes of a demo report (docs/results/demo.json): the verdict, the seeded table, the
    end-to-end table and the time sentence; tests/test_readme_figures.py checks README holds exactly this."""
    return "\n\n".join([report["seeded"]["verdict"], seeded_table(report["seeded"]), end_to_end_table(report),
                        time_sentence(report)])


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# ---------------------------------------------------------------------------------------------- demo
def run_demo(out: str | Path = "runs/demo", data_dir: str = "data/shapes", *, steps: int | None = None,
             videos: int | None = None, quick: bool = False, extra: list[str] | None = None,
             seeds: list[int] | None = None, seeded_steps: int | None = None, jobs: int | None = None) -> dict:
    """Run the whole demo (see the module docstring) and return the report (also ``<out>/report.json``).

    ``steps``/``videos``/``quick``/``extra``: end-to-end steps, dataset size, tiny sizes (tests), overrides of
    every run; ``seeds``/``seeded_steps``: the seeded grid's seeds and steps (default: the grid file's);
    ``jobs``: parallel worker processes (default: the available cores).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    load_before = os.getloadavg()
    jobs = max(1, jobs if jobs is not None else available_cores())
    threads = choose_threads(1)  # one thread per job unless GARE_THREADS says otherwise
    cfgs = {v: demo_config(out, data_dir, steps=steps, videos=videos, quick=quick, variant=v, extra=extra)
            for v in ("gare", "baseline")}
    grid = seeded_grid(out, data_dir, videos=videos, quick=quick, extra=extra, seeds=seeds, steps=seeded_steps)
    run_grid(grid, dry_run=True)  # every seeded run's config resolves before anything trains
    image_size = GareModel(cfgs["gare"].model).image_size
    log.info("demo: data %s (generated and pre-decoded when missing)", data_dir)
    t_data = time.perf_counter()
    load_data(cfgs["gare"], image_size=image_size)
    t_data = time.perf_counter() - t_data
    pool = _Jobs(jobs, threads)
    timings = {"data_seconds": t_data}
    try:
        log.info("demo: training GARE and the baseline end to end (%s steps, %d job(s) x %d thread(s))",
                 cfgs["gare"].train.max_steps, jobs, threads)
        t1 = time.perf_counter()
        e2e = {v: pool.submit(_job_train, cfgs[v]) for v in ("gare", "baseline")}
        [res_gare] = pool.wait([e2e["gare"]])
        feat_cfg = load_config(RECIPE, grid.overrides + ["train.features=null"])
        feats = pool.submit(_job_features, out / "gare" / "best.safetensors", out / "towers.pt", feat_cfg,
                            out / "features.safetensors")
        pool.wait([feats])
        log.info("demo: seeded comparison (%d runs of %s steps on the frozen towers)",
                 len(grid.variants) * len(grid.seeds), grid.steps)
        seeded_jobs = [pool.submit(_job_seeded, grid, v.name, s) for s in grid.seeds for v in grid.variants]
        [res_base] = pool.wait([e2e["baseline"]])
        timings["end_to_end_seconds"] = time.perf_counter() - t1
        pool.wait(seeded_jobs)
    finally:
        pool.close()
    runs = collect(grid)
    write_results(grid, runs, command="gare demo", wall_seconds=None)
    report: dict = {}
    for variant, res in (("gare", res_gare), ("baseline", res_base)):
        test = res["test"]
        report[variant] = {"t2v": test["t2v"], "v2t": test["v2t"], "RSum": test.get("RSum"),
                           "best_val": res["best_val"], "train_seconds": res["train_seconds"], "steps": res["steps"],
                           "n_test_queries": test["n_queries"], "n_test_videos": test["n_videos"]}
    seeded = seeded_summary(grid, runs)
    report["seeded"] = {**seeded, "steps": grid.steps, "seeds": grid.seeds, "verdict": verdict(seeded)}
    report["seconds"] = time.perf_counter() - t0
    report["cpu_seconds"] = _cpu_seconds() - cpu0
    loads = pool.loads or [os.getloadavg()[0]]
    report["machine"] = {"cores_available": available_cores(), "jobs": jobs, "threads_per_job": threads,
                         "load_before": [round(x, 2) for x in load_before],
                         "load_mean_during": round(sum(loads) / len(loads), 2), "load_max_during": round(max(loads), 2),
                         "note": "1-minute load averages; the demo itself contributes up to `jobs` to them"}
    report["timings"] = timings
    report["chance_R1"] = 100.0 / max(1, report["gare"]["n_test_videos"])
    atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    plot_curves({"GARE": read_metrics(out / "gare"), "baseline": read_metrics(out / "baseline")}, out / "curves.png",
                title="gare demo: GARE vs baseline, end to end")
    md = (f"# gare demo: moving shapes, tiny CLIP trained from scratch on the CPU\n\n"
          f"## Seeded comparison\n\n{report['seeded']['verdict']}\n\n{seeded_table(seeded)}\n\n"
          f"Each run: the frozen CLIP towers of the end-to-end GARE model below, the temporal module (and psi for "
          f"GARE) trained from scratch for {grid.steps} steps on cached features; seeds {grid.seeds} (each seed "
          f"corrupts the same captions for both models). Per-run numbers: `seeded.md`, `seeded.json`.\n\n"
          f"![seeded](seeded.png)\n\n"
          f"## End-to-end models\n\n"
          f"Test split: {report['gare']['n_test_queries']} captions, {report['gare']['n_test_videos']} videos "
          f"(chance R@1 = {report['chance_R1']:.2f}%). Same seed and {report['gare']['steps']} steps for both; "
          f"checkpoint chosen on the validation split. The GARE model is the searchable one "
          f"(`gare index VIDEOS --model {out / 'gare'}`).\n\n"
          f"{end_to_end_table(report)}\n\n![curves](curves.png)\n\n{time_sentence(report)}\n")
    atomic_write(out / "report.md", md)
    print(md)
    return report
