"""Results of a grid: per-run numbers, mean ± sample std over seeds, the markdown tables, ``<results>.md`` and
``<results>.json`` (figures drawn by :mod:`gare.plots`)."""

from __future__ import annotations

import json
import logging
import math
import platform
from pathlib import Path

import torch

from ..io import atomic_write
from ..plots import plot_mean_curves, plot_metric_by_series
from .grid import Grid, rel_path, resolve_run, train_command

log = logging.getLogger(__name__)

__all__ = ["GEOMETRY_KEYS", "TABLE_METRICS", "aggregate", "format_stat", "geometry_table", "markdown_table", "mean_std",
           "run_metrics", "write_results"]

TABLE_METRICS = (("t2v", "R1"), ("t2v", "R5"), ("t2v", "R10"), ("t2v", "MnR"), ("v2t", "R1"))
GEOMETRY_KEYS = ("gap", "alignment", "uniformity_video", "pos_cos", "neg_cos", "gap_corrected", "alignment_corrected",
                 "delta_norm_ratio")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None for a single value."""
    if not values:
        return float("nan"), None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in values) / (len(values) - 1))


def run_metrics(res: dict) -> dict[str, float]:
    """Flat numbers of one run's results: ``t2v_R1`` ..., ``val_R1``, ``geo_gap`` ..., ``train_seconds``."""
    out = {}
    test = res.get("test", {})
    for d in ("t2v", "v2t"):
        for k, val in (test.get(d) or {}).items():
            out[f"{d}_{k}"] = float(val)
    if "best_val" in res:
        out["val_R1"] = float(res["best_val"]["R1"])
    for k, val in (res.get("test_geometry") or {}).items():
        out[f"geo_{k}"] = float(val)
    for k in ("train_seconds", "wall_seconds"):
        if k in res:
            out[k] = float(res[k])
    return out


def aggregate(grid: Grid, runs: dict[str, dict[int, dict]]) -> list[dict]:
    """Per variant: the per-seed metrics and their mean/std. One dict per variant, in grid order."""
    rows = []
    for v in grid.variants:
        per_seed = {s: run_metrics(r) for s, r in sorted(runs.get(v.name, {}).items())}
        keys = sorted({k for m in per_seed.values() for k in m})
        stats = {}
        for k in keys:
            vals = [m[k] for m in per_seed.values() if k in m and not math.isnan(m[k])]
            mu, sd = mean_std(vals)
            stats[k] = {"mean": mu, "std": sd, "n": len(vals)}
        rows.append({"variant": v.name, "paper": v.paper, "series": v.series, "x": v.x, "note": v.note,
                     "overrides": v.overrides, "seeds": sorted(per_seed), "per_seed": per_seed, "stats": stats})
    return rows


def format_stat(stat: dict | None, digits: int = 1) -> str:
    """``mean ± std`` of a ``{mean, std, n}`` record (the mean alone for one value, "–" for none)."""
    if not stat or stat["n"] == 0:
        return "–"
    if stat["std"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_table(grid: Grid, rows: list[dict]) -> str:
    """The results table: one row per variant, mean ± std over seeds."""
    has_paper = any(r["paper"] is not None for r in rows)
    head = ["variant", "overrides"] + ([f"paper ({grid.paper_metric or 'R@1'})"] if has_paper else [])
    head += ["t2v R@1", "t2v R@5", "t2v R@10", "t2v MnR", "v2t R@1", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ov = "<br>".join(f"`{o}`" for o in r["overrides"]) or "(recipe)"
        cells = [r["variant"], ov] + ([("–" if r["paper"] is None else str(r["paper"]))] if has_paper else [])
        cells += [format_stat(r["stats"].get(f"{d}_{k}")) for d, k in TABLE_METRICS]
        cells.append(str(len(r["seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geometry_table(rows: list[dict]) -> str:
    """Test-split geometry, best validation R@1 and training time: one row per variant."""
    keys = [k for k in GEOMETRY_KEYS if any(f"geo_{k}" in r["stats"] for r in rows)]
    head = ["variant", "best val R@1"] + [k.replace("_", " ") for k in keys] + ["train s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], format_stat(r["stats"].get("val_R1"))]
        cells += [format_stat(r["stats"].get(f"geo_{k}"), 3) for k in keys]
        cells.append(format_stat(r["stats"].get("train_seconds"), 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(grid: Grid, runs: dict[str, dict[int, dict]], command: str | None = None,
                  wall_seconds: float | None = None) -> dict:
    """Aggregate the finished runs (``{variant: {seed: results.json}}``, see :func:`gare.experiments.collect`)
    and write ``<results>.md``, ``<results>.json`` (and the figures)."""
    rows = aggregate(grid, runs)
    grid.results.parent.mkdir(parents=True, exist_ok=True)
    figs = []
    if grid.plot:
        figs.append(plot_metric_by_series(rows, grid.plot, f"{grid.title} (mean ± std over seeds)",
                                          grid.results.with_suffix(".png")))
    if grid.diagnostics:
        p = plot_mean_curves({v.name: [grid.run_dir(v, s) for s in grid.seeds] for v in grid.variants},
                             grid.diagnostics, f"{grid.title}: training diagnostics (mean over seeds)",
                             Path(str(grid.results) + "_diagnostics.png"),
                             series={v.name: v.series for v in grid.variants})
        if p:
            figs.append(p)
    expected = len(grid.variants) * len(grid.seeds)
    done = sum(len(r["seeds"]) for r in rows)
    any_run = next((r for by_seed in runs.values() for r in by_seed.values()), None)
    n_test = (any_run or {}).get("test", {}).get("n_videos")
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "threads": torch.get_num_threads()}
    md = [f"# {grid.title}", ""]
    if grid.description:
        md += [grid.description.strip(), ""]
    steps = grid.steps if grid.steps is not None else resolve_run(grid, grid.variants[0], grid.seeds[0]).train.max_steps
    md += [f"Grid file: `{rel_path(grid.path)}`; recipe: `{rel_path(grid.recipe)}`; seeds {grid.seeds}; "
           f"{steps or 'recipe (epochs)'} steps per run; {done}/{expected} runs finished.", ""]
    if command:
        md += ["Command:", "", "```", command, "```", ""]
    if n_test:
        md += [f"Test split: {n_test} videos (chance R@1 = {100.0 / n_test:.2f}%). Checkpoint of each run chosen on "
               "the validation split. Values: mean ± sample std over the seeds (single seed: the value).", ""]
    md += [markdown_table(grid, rows), "", "Test-split geometry (normalized embeddings; see "
           "`gare.evaluate.geometry`), best validation R@1, training time:", "", geometry_table(rows), ""]
    for f in figs:
        md += [f"![{f.stem}]({f.name})", ""]
    if wall_seconds is not None:
        md += [f"Wall time of this invocation: {wall_seconds / 60:.1f} min ({env}).", ""]
    atomic_write(grid.results.with_suffix(".md"), "\n".join(md))
    payload = {"grid": str(rel_path(grid.path)), "title": grid.title, "recipe": str(rel_path(grid.recipe)),
               "seeds": grid.seeds, "steps": grid.steps, "overrides": grid.overrides, "command": command,
               "environment": env, "rows": rows,
               "runs": {v: {str(s): train_command(grid, next(x for x in grid.variants if x.name == v), s)
                            for s in by_seed} for v, by_seed in runs.items()}}
    atomic_write(grid.results.with_suffix(".json"), json.dumps(payload, indent=2, default=float))
    log.info("wrote %s (%d/%d runs)", grid.results.with_suffix(".md"), done, expected)
    return payload
