"""Command line of the sweep: ``gare sweep GRID.yaml ...`` and ``python -m gare.experiments GRID.yaml ...``."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from ..config import ConfigError
from .grid import load_grid
from .runner import run_grid

__all__ = ["add_arguments", "add_sweep_command", "cmd_sweep", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sweep's arguments (shared by ``gare sweep`` and ``python -m gare.experiments``)."""
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
    """Run (or validate, or re-table) the grids named on the command line."""
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
    add_arguments(p)
    p.set_defaults(func=cmd_sweep)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m gare.experiments", description="run an experiment grid")
    p.add_argument("-v", "--verbose", action="store_true")
    add_arguments(p)
    a = p.parse_args(argv)
    a.argv = [x for x in argv if x not in ("-v", "--verbose")]
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return cmd_sweep(a)
    except (ConfigError, FileNotFoundError) as e:
        print(f"gare sweep: error: {e}", file=sys.stderr)
        return 2
