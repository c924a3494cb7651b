"""Grid files: reading and checking them, and the config of each (variant, seed) run.

The file format is described in :mod:`gare.experiments` and docs/experiments.md.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, ConfigError, load_config

__all__ = ["Grid", "Variant", "load_grid", "resolve_run", "rel_path", "run_overrides", "train_command"]

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
    """The ``gare train`` command equivalent to one run of the grid."""
    return "gare train " + " ".join(shlex.quote(x) for x in [str(rel_path(grid.recipe)), *run_overrides(grid, variant,
                                                                                                        seed)])


def rel_path(p: Path) -> Path:
    """``p`` relative to the working directory when it lies under it (paths shown in tables and commands)."""
    try:
        return p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return p
