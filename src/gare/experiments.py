"""Experiment grids: several variants of one recipe, several seeds each, one results table.

A grid file (YAML) names a base recipe, overrides common to every run, the seeds, and the variants::

    name: table3_loss                     # used for the default output folders
    title: "Loss components (paper Table 3)"
    recipe: base.yaml                     # a normal recipe, path relative to this file
    overrides: [train.eval_every=100]     # common to every run (key=value, as on the command line)
    seeds: [0, 1]
    seed_keys: [train.seed]               # config keys set to the seed of each run (default: train.seed)
    steps: 200                            # train.max_steps of every run (optional)
    output: runs/experiments/table3_loss  # one sub-folder per variant and seed (relative to the working dir)
    results: docs/results/table3_loss     # writes <results>.md, <results>.json (and <results>.png with `plot`)
    paper_metric: "MSR-VTT t2v R@1"       # what the variants' `paper` numbers are
    variants:
      - name: delta_only
        paper: 47.4                       # the paper's number for this row (optional)
        overrides: [loss.use_ib=false, loss.use_radius=false, loss.use_direction=false]
    plot:                                 # optional: metric against a numeric x, one line per series
      x_label: "corrupted training captions (%)"
      metric: t2v_R1
    diagnostics: [diag_anchor_cancellation, diag_delta_share]   # optional: mean training curves per variant
    setup:                                # optional, made once before the runs when the files are missing
      pretrain: {recipe: pretrain.yaml, weights: runs/experiments/pretrain/backbone.pt}
      features: runs/experiments/features/shapes.safetensors

``setup.pretrain`` trains its recipe (unless that run already finished) and exports the CLIP towers of its
best checkpoint as an open_clip state dict (``model.backbone.weights`` of the grid's recipe should name it);
``setup.features`` extracts the frozen-tower features (``train.features`` of the recipe should name it) with
the config of the grid's first run.

Variants used by ``plot`` carry ``series`` (line name) and ``x`` (number). Run order of the overrides:
grid ``overrides``, ``train.max_steps``, the variant's ``overrides``, the seed keys, then the output folder
and the run name. Every run is an ordinary training run directory; each also gets ``sweep_run.json``
(the overrides and the equivalent ``gare train`` command) and the test-split geometry
(:mod:`gare.evaluate.geometry`) in its ``results.json`` under ``test_geometry``. A run whose
``results.json`` exists with the same resolved config is not run again (``--force`` reruns), so an interrupted
sweep continues where it stopped; a run whose resolved config differs (an edited recipe) is trained again.

The table reports, per variant, mean ± sample standard deviation (n - 1) over the seeds of test t2v
R@1/R@5/R@10/MnR and v2t R@1 (a single seed shows the value alone).

Command line: ``gare sweep GRID.yaml [GRID2.yaml ...] [key=value ...] [--seeds 0,1] [--steps N] [--only a,b]
[--dry-run] [--force] [--table-only]`` (overrides before the options) or ``python -m gare.experiments ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config

log = logging.getLogger(__name__)

__all__ = ["Grid", "Variant", "aggregate", "load_grid", "markdown_table", "resolve_run", "run_grid",
           "add_sweep_command", "main"]

TABLE_METRICS = (("t2v", "R1"), ("t2v", "R5"), ("t2v", "R10"), ("t2v", "MnR"), ("v2t", "R1"))
GEOMETRY_KEYS = ("gap", "alignment", "uniformity_video", "pos_cos", "neg_cos", "gap_corrected", "alignment_corrected",
                 "delta_norm_ratio")
_GRID_KEYS = {"name", "title", "description", "recipe", "overrides", "seeds", "seed_keys", "steps", "output",
              "results", "paper_metric", "variants", "plot", "diagnostics", "geometry", "setup"}
_VARIANT_KEYS = {"name", "overrides", "paper", "series", "x", "note"}


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    paper: Any = None  # the paper's number (or text) for this row
    series: str | None = None  # plot line
    x: float | None = None  # plot abscissa
    note: str | None = None


@dataclass
class Grid:
    name: str
    path: Path
    recipe: Path
    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [42])
    seed_keys: list[str] = field(default_factory=lambda: ["train.seed"])
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None
    output: Path = Path("runs/experiments")
    results: Path = Path("docs/results/grid")
    title: str = ""
    description: str = ""
    paper_metric: str = ""
    plot: dict | None = None
    diagnostics: list[str] = field(default_factory=list)
    geometry: bool = True  # modality-gap measures of the test split after each run
    setup: dict = field(default_factory=dict)  # pretrain / features made before the runs

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.output / variant.name / f"seed{seed}"


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of key=value strings, got {value!r}")
    for v in value:
        if "=" not in v:
            raise ConfigError(f"{where}: '{v}' must look like key=value (e.g. loss.alpha=2)")
    return list(value)


def load_grid(path: str | Path, *, seeds: list[int] | None = None, steps: int | None = None,
              only: list[str] | None = None, extra_overrides: list[str] | None = None,
              output: str | Path | None = None, results: str | Path | None = None) -> Grid:
    """Read and check a grid file; the keyword arguments replace the file's values (command-line options)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"grid file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a grid file is a mapping (name, recipe, seeds, variants, ...)")
    unknown = set(data) - _GRID_KEYS
    if unknown and "variants" not in data:
        raise ConfigError(f"{path} is not a grid file (no 'variants'): a recipe? Recipes run with `gare train`")
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(unknown)}; valid: {sorted(_GRID_KEYS)}")
    for req in ("recipe", "variants"):
        if req not in data:
            raise ConfigError(f"{path}: grid key '{req}' is missing")
    recipe = (path.parent / str(data["recipe"])).resolve()
    if not recipe.exists():
        raise ConfigError(f"{path}: recipe {data['recipe']} not found (looked for {recipe})")
    name = str(data.get("name") or path.stem)
    raw_variants = data["variants"]
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ConfigError(f"{path}: 'variants' must be a non-empty list")
    variants = []
    for i, rv in enumerate(raw_variants):
        if not isinstance(rv, dict) or "name" not in rv:
            raise ConfigError(f"{path}: variant {i} must be a mapping with a 'name'")
        bad = set(rv) - _VARIANT_KEYS
        if bad:
            raise ConfigError(f"{path}: variant '{rv['name']}' has unknown keys {sorted(bad)}; valid: "
                              f"{sorted(_VARIANT_KEYS)}")
        vname = str(rv["name"])
        if not vname or "/" in vname or vname.startswith("."):
            raise ConfigError(f"{path}: variant name {vname!r} must be a plain folder name")
        variants.append(Variant(vname, _str_list(rv.get("overrides"), f"{path}: variant '{vname}' overrides"),
                                rv.get("paper"), rv.get("series"),
                                None if rv.get("x") is None else float(rv["x"]), rv.get("note")))
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: variant names must be unique, repeated: {dup}")
    if only:
        missing = [o for o in only if o not in names]
        if missing:
            raise ConfigError(f"--only: no variant named {missing} in {path}; variants: {names}")
        variants = [v for v in variants if v.name in only]
    file_seeds = data.get("seeds", [42])
    if not isinstance(file_seeds, list) or not file_seeds or not all(isinstance(s, int) for s in file_seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers, got {file_seeds!r}")
    seeds = list(seeds) if seeds else list(file_seeds)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds must be distinct, got {seeds}")
    steps = steps if steps is not None else data.get("steps")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"{path}: 'steps' must be a positive integer, got {steps!r}")
    plot = data.get("plot")
    if plot is not None:
        if not isinstance(plot, dict):
            raise ConfigError(f"{path}: 'plot' must be a mapping (x_label, metric)")
        for v in variants:
            if v.series is None or v.x is None:
                raise ConfigError(f"{path}: with 'plot', every variant needs 'series' and 'x' ('{v.name}' lacks one)")
    seed_keys = data.get("seed_keys", ["train.seed"])
    if not isinstance(seed_keys, list) or not all(isinstance(k, str) for k in seed_keys):
        raise ConfigError(f"{path}: 'seed_keys' must be a list of config keys")
    diags = data.get("diagnostics") or []
    if not isinstance(diags, list):
        raise ConfigError(f"{path}: 'diagnostics' must be a list of metrics.jsonl keys")
    setup = data.get("setup") or {}
    if not isinstance(setup, dict) or set(setup) - {"pretrain", "features"}:
        raise ConfigError(f"{path}: 'setup' is a mapping with keys 'pretrain' and/or 'features'")
    if "pretrain" in setup:
        pre = setup["pretrain"]
        if not isinstance(pre, dict) or set(pre) != {"recipe", "weights"}:
            raise ConfigError(f"{path}: setup.pretrain needs exactly 'recipe' and 'weights'")
        pre = {"recipe": (path.parent / str(pre["recipe"])).resolve(), "weights": Path(pre["weights"])}
        if not pre["recipe"].exists():
            raise ConfigError(f"{path}: setup.pretrain.recipe not found: {pre['recipe']}")
        setup = {**setup, "pretrain": pre}
    if "features" in setup:
        setup = {**setup, "features": Path(str(setup["features"]))}
    return Grid(
        setup=setup, name=name, path=path, recipe=recipe, variants=variants, seeds=seeds, seed_keys=list(seed_keys),
        overrides=_str_list(data.get("overrides"), f"{path}: overrides") + list(extra_overrides or []),
        steps=steps, output=Path(output or data.get("output") or f"runs/experiments/{name}"),
        results=Path(results or data.get("results") or f"docs/results/{name}"), title=str(data.get("title") or name),
        description=str(data.get("description") or ""), paper_metric=str(data.get("paper_metric") or ""),
        plot=plot, diagnostics=[str(d) for d in diags], geometry=bool(data.get("geometry", True)))


def run_overrides(grid: Grid, variant: Variant, seed: int) -> list[str]:
    """The ``key=value`` list that turns the grid's recipe into the config of one run."""
    ov = list(grid.overrides)
    if grid.steps is not None:
        ov.append(f"train.max_steps={grid.steps}")
    ov += variant.overrides
    ov += [f"{k}={seed}" for k in grid.seed_keys]
    ov += [f"train.output_dir={grid.run_dir(variant, seed)}", f"name={grid.output.name}-{variant.name}-s{seed}"]
    return ov


def resolve_run(grid: Grid, variant: Variant, seed: int) -> Config:
    """The validated config of one run (raises :class:`ConfigError` naming the grid and variant)."""
    try:
        return load_config(grid.recipe, run_overrides(grid, variant, seed))
    except ConfigError as e:
        raise ConfigError(f"{grid.path}: variant '{variant.name}' (seed {seed}): {e}") from e


def train_command(grid: Grid, variant: Variant, seed: int) -> str:
    return "gare train " + " ".join(shlex.quote(x) for x in [str(_rel(grid.recipe)), *run_overrides(grid, variant,
                                                                                                        seed)])


def _rel(p: Path) -> Path:
    try:
        return p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return p


# ----------------------------------------------------------------------------------------- running
def _config_record(cfg: Config) -> dict:
    return json.loads(json.dumps(config_to_dict(cfg), default=str))


def _done(run_dir: Path, cfg: Config) -> bool:
    """A finished run of exactly this resolved config (a changed recipe or override means: train again)."""
    marker = run_dir / "sweep_run.json"
    if not (run_dir / "results.json").exists() or not marker.exists():
        return False
    try:
        stored = json.loads(marker.read_text()).get("config")
        # read back through the config tree: keys added to gare since the run take their defaults, so a new
        # option that changes nothing does not retrain finished runs (a removed key does)
        return stored is not None and _config_record(config_from_dict(stored)) == _config_record(cfg)
    except (OSError, json.JSONDecodeError, ConfigError, TypeError):
        return False


def _test_geometry(trainer, results: dict) -> dict:
    """Modality-gap measures of the test split with the checkpoint the test metrics came from."""
    from .data.loader import collate
    from .evaluate.geometry import split_geometry
    from .evaluate.protocol import encode_texts, encode_videos
    from .model.gare import load_model

    best_path = trainer.run_dir / "best.safetensors"
    model = load_model(best_path, device=trainer.device) if best_path.exists() else trainer.model
    model.eval()
    texts, qv = trainer.data.splits["test"].queries()
    t = encode_texts(model, texts)
    v, m = encode_videos(model, trainer.video_ds["test"], batch_size=trainer.cfg.train.eval_batch_size,
                         workers=trainer.cfg.data.workers, collate=collate)
    return split_geometry(model, t, v, m, qv)


def export_backbone(checkpoint: Path, out: Path) -> Path:
    """Write the CLIP towers of a gare checkpoint as an open_clip state dict (``model.backbone.weights``)."""
    import torch

    from .model.gare import load_model

    model = load_model(checkpoint, device="cpu")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save({k: v.detach().clone() for k, v in model.backbone.clip.state_dict().items()}, tmp)
    tmp.replace(out)
    log.info("exported the CLIP towers of %s to %s", checkpoint, out)
    return out


def ensure_setup(grid: Grid) -> None:
    """Make the grid's pre-trained towers and cached features when they are missing."""
    pre = grid.setup.get("pretrain")
    if pre and not pre["weights"].exists():
        from .train.trainer import train

        cfg = load_config(pre["recipe"])
        run_dir = Path(cfg.train.output_dir)
        if not ((run_dir / "results.json").exists() and (run_dir / "best.safetensors").exists()):
            if (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").unlink()
            log.info("setup: pre-training the towers with %s -> %s", pre["recipe"], run_dir)
            train(cfg, show_progress=False)
        export_backbone(run_dir / "best.safetensors", pre["weights"])
    feats = grid.setup.get("features")
    if feats and not feats.exists():
        from .train.features import extract_features

        cfg = load_config(grid.recipe, run_overrides(grid, grid.variants[0], grid.seeds[0]) + ["train.features=null"])
        log.info("setup: extracting frozen-tower features -> %s", feats)
        extract_features(cfg, feats)


def run_one(grid: Grid, variant: Variant, seed: int, *, force: bool = False) -> dict:
    """Train one (variant, seed) of the grid (or reuse its finished run). Returns its ``results.json``."""
    from .train.trainer import Trainer

    ov = run_overrides(grid, variant, seed)
    run_dir = grid.run_dir(variant, seed)
    cfg = resolve_run(grid, variant, seed)
    if not force and _done(run_dir, cfg):
        log.info("sweep %s: %s seed %d already done (%s)", grid.name, variant.name, seed, run_dir)
        return json.loads((run_dir / "results.json").read_text())
    if run_dir.exists():
        if not ((run_dir / "metrics.jsonl").exists() or (run_dir / "sweep_run.json").exists()
                or not any(run_dir.iterdir())):
            raise ConfigError(f"{run_dir} exists and is not a run directory; refusing to overwrite it")
        shutil.rmtree(run_dir)  # metrics.jsonl is appended to: a rerun starts from an empty folder
    run_dir.mkdir(parents=True)
    (run_dir / "sweep_run.json").write_text(json.dumps(
        {"grid": str(grid.path), "variant": variant.name, "seed": seed, "overrides": ov,
         "command": train_command(grid, variant, seed), "config": _config_record(cfg)}, indent=2))
    log.info("sweep %s: training %s seed %d -> %s", grid.name, variant.name, seed, run_dir)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, show_progress=False)
    try:
        res = trainer.fit()
        if grid.geometry:
            try:
                res["test_geometry"] = _test_geometry(trainer, res)
            except Exception as e:  # noqa: BLE001 - a geometry failure must not lose the run
                log.warning("geometry of %s failed: %s", run_dir, e)
        res["wall_seconds"] = time.perf_counter() - t0
    finally:
        from .train import distributed as dist_utils

        dist_utils.cleanup()
    # results.json last: its presence marks the run as finished
    (run_dir / "results.json").write_text(json.dumps(res, indent=2, default=float))
    return res


def collect(grid: Grid) -> dict[str, dict[int, dict]]:
    """Finished runs of the grid: ``{variant: {seed: results}}`` (missing runs are left out)."""
    out: dict[str, dict[int, dict]] = {}
    for v in grid.variants:
        for s in grid.seeds:
            p = grid.run_dir(v, s) / "results.json"
            if p.exists() and _done(grid.run_dir(v, s), resolve_run(grid, v, s)):
                out.setdefault(v.name, {})[s] = json.loads(p.read_text())
    return out


# ----------------------------------------------------------------------------------------- tables
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


def _fmt(stat: dict | None, digits: int = 1) -> str:
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
        cells += [_fmt(r["stats"].get(f"{d}_{k}")) for d, k in TABLE_METRICS]
        cells.append(str(len(r["seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geometry_table(rows: list[dict]) -> str:
    keys = [k for k in GEOMETRY_KEYS if any(f"geo_{k}" in r["stats"] for r in rows)]
    head = ["variant", "best val R@1"] + [k.replace("_", " ") for k in keys] + ["train s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["variant"], _fmt(r["stats"].get("val_R1"))]
        cells += [_fmt(r["stats"].get(f"geo_{k}"), 3) for k in keys]
        cells.append(_fmt(r["stats"].get("train_seconds"), 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metric(grid: Grid, rows: list[dict], out: Path) -> Path | None:
    """Metric (mean ± std over seeds) against the variants' ``x``, one line per ``series``."""
    if not grid.plot:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = grid.plot.get("metrics") or [grid.plot.get("metric", "t2v_R1")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for series in dict.fromkeys(r["series"] for r in rows):
            pts = sorted((r["x"], r["stats"][metric]) for r in rows if r["series"] == series and metric in r["stats"])
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            es = [p[1]["std"] or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=series)
        ax.set_xlabel(grid.plot.get("x_label", "x"))
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{grid.title} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_diagnostics(grid: Grid, out: Path) -> Path | None:
    """Training diagnostics (``diag_*`` of metrics.jsonl), mean over seeds per variant, one panel per key."""
    if not grid.diagnostics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import read_metrics

    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for v in grid.variants:
        for s in grid.seeds:
            d = grid.run_dir(v, s)
            if not (d / "metrics.jsonl").exists():
                continue
            for r in read_metrics(d):
                if r.get("kind") != "train":
                    continue
                for k in grid.diagnostics:
                    if k in r and r[k] is not None and not (isinstance(r[k], float) and math.isnan(r[k])):
                        curves.setdefault(k, {}).setdefault(v.name, {}).setdefault(r["step"], []).append(r[k])
    keys = [k for k in grid.diagnostics if k in curves]
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.5 * nrows), squeeze=False)
    # one colour per variant (the same in every panel, also where a variant lacks a key); with series, one
    # line style per series
    cmap = plt.get_cmap("tab10")
    colour = {v.name: cmap(i % 10) for i, v in enumerate(grid.variants)}
    series = list(dict.fromkeys(v.series for v in grid.variants if v.series is not None))
    styles = ["-", "--", ":", "-."]
    style = {v.name: styles[series.index(v.series) % len(styles)] if v.series in series else "-"
             for v in grid.variants}
    handles = {}
    for ax, k in zip(axes.flat, keys):
        for v in grid.variants:
            by_step = curves[k].get(v.name)
            if not by_step:
                continue
            steps = sorted(by_step)
            (line,) = ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=colour[v.name],
                              linestyle=style[v.name], label=v.name)
            handles.setdefault(v.name, line)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.suptitle(f"{grid.title}: training diagnostics (mean over seeds)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_results(grid: Grid, command: str | None = None, wall_seconds: float | None = None) -> dict:
    """Aggregate the finished runs and write ``<results>.md``, ``<results>.json`` (and the figures)."""
    import torch

    runs = collect(grid)
    rows = aggregate(grid, runs)
    grid.results.parent.mkdir(parents=True, exist_ok=True)
    figs = []
    p = plot_metric(grid, rows, grid.results.with_suffix(".png"))
    if p:
        figs.append(p)
    p = plot_diagnostics(grid, Path(str(grid.results) + "_diagnostics.png"))
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
    md += [f"Grid file: `{_rel(grid.path)}`; recipe: `{_rel(grid.recipe)}`; seeds {grid.seeds}; "
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
    grid.results.with_suffix(".md").write_text("\n".join(md))
    payload = {"grid": str(_rel(grid.path)), "title": grid.title, "recipe": str(_rel(grid.recipe)),
               "seeds": grid.seeds, "steps": grid.steps, "overrides": grid.overrides, "command": command,
               "environment": env, "rows": rows,
               "runs": {v: {str(s): train_command(grid, next(x for x in grid.variants if x.name == v), s)
                            for s in by_seed} for v, by_seed in runs.items()}}
    grid.results.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float))
    log.info("wrote %s (%d/%d runs)", grid.results.with_suffix(".md"), done, expected)
    return payload


def run_grid(grid: Grid, *, force: bool = False, dry_run: bool = False, table_only: bool = False,
             command: str | None = None) -> dict:
    """Run every (variant, seed) of the grid in order (seeds outer, so a partial sweep has every variant
    at the first seeds), then write the table. ``dry_run`` only resolves and validates every config."""
    for s in grid.seeds:
        for v in grid.variants:
            resolve_run(grid, v, s)  # fail before training anything
    if dry_run:
        return {"runs": [(v.name, s, train_command(grid, v, s)) for s in grid.seeds for v in grid.variants]}
    t0 = time.perf_counter()
    if not table_only:
        ensure_setup(grid)
        for s in grid.seeds:
            for v in grid.variants:
                run_one(grid, v, s, force=force)
                write_results(grid, command, time.perf_counter() - t0)  # the table grows as runs finish
    if table_only:  # keep the command that trained the runs; the rebuild is noted next to it
        prev = grid.results.with_suffix(".json")
        if prev.exists():
            try:
                old = json.loads(prev.read_text()).get("command")
            except json.JSONDecodeError:
                old = None
            if old:
                command = old if command is None or command in old else f"{old}\n# table rebuilt with: {command}"
        return write_results(grid, command, None)
    return write_results(grid, command, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------- command line
def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="+", metavar="GRID.yaml | key=value",
                   help="one or more grid files (see gare.experiments), then key=value overrides for every run")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (replaces the grids')")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (replaces the grids')")
    p.add_argument("--only", default=None, help="comma-separated variant names (one grid file only)")
    p.add_argument("--output", default=None, help="folder of the run directories (one grid file only)")
    p.add_argument("--results", default=None, help="results path without suffix (one grid file only)")
    p.add_argument("--dry-run", action="store_true", help="validate every run's config and print the commands")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--table-only", action="store_true", help="only rebuild the tables from finished runs")


def cmd_sweep(a) -> int:
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else None
    only = [s for s in a.only.split(",") if s] if a.only else None
    grids = [x for x in a.items if "=" not in x]
    overrides = [x for x in a.items if "=" in x]
    if not grids:
        raise ConfigError("gare sweep needs at least one grid file")
    if len(grids) > 1 and (only or a.output or a.results):
        raise ConfigError("--only, --output and --results apply to a single grid file")
    argv = getattr(a, "argv", None)
    if argv is not None:
        command = "python -m gare.experiments " + " ".join(shlex.quote(x) for x in argv)
    else:
        command = "gare " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    loaded = [load_grid(g, seeds=seeds, steps=a.steps, only=only, extra_overrides=overrides, output=a.output,
                        results=a.results) for g in grids]
    for grid in loaded:  # validate every grid before training anything
        run_grid(grid, dry_run=True)
    for grid in loaded:
        res = run_grid(grid, force=a.force, dry_run=a.dry_run, table_only=a.table_only, command=command)
        if a.dry_run:
            for name, seed, cmd in res["runs"]:
                print(f"# {grid.name}: {name} seed {seed}\n{cmd}")
        else:
            print(grid.results.with_suffix(".md").read_text())
    return 0


def add_sweep_command(subparsers) -> argparse.ArgumentParser:
    """Register ``gare sweep`` on the ``gare`` command's sub-parsers."""
    p = subparsers.add_parser("sweep", help="run an experiment grid (variants x seeds) and write a results table")
    _add_arguments(p)
    p.set_defaults(func=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m gare.experiments", description="run an experiment grid")
    p.add_argument("-v", "--verbose", action="store_true")
    _add_arguments(p)
    a = p.parse_args(argv)
    a.argv = [x for x in argv if x not in ("-v", "--verbose")]
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return cmd_sweep(a)
    except (ConfigError, FileNotFoundError) as e:
        print(f"gare sweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
