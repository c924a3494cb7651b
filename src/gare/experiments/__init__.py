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
``results.json`` exists with the same resolved config, the same code-semantics version
(:data:`.runner.SEMANTICS_VERSION`, bumped when a code change alters the results of an unchanged config) and
the same feature cache (its key) is not run again (``--force`` reruns), so an interrupted sweep continues where
it stopped; any other finished run is trained again, and the log says why.

The table reports, per variant, mean ± sample standard deviation (n - 1) over the seeds of test t2v
R@1/R@5/R@10/MnR and v2t R@1 (a single seed shows the value alone).

Modules: :mod:`.grid` (grid files, the config of each run), :mod:`.runner` (setup, running, reuse of
finished runs), :mod:`.report` (tables, ``<results>.md``/``.json``), :mod:`.command` (command line); the
figures are drawn by :mod:`gare.plots`.

Command line: ``gare sweep GRID.yaml [GRID2.yaml ...] [key=value ...] [--seeds 0,1] [--steps N] [--only a,b]
[--dry-run] [--force] [--table-only]`` (overrides before the options) or ``python -m gare.experiments ...``.
"""

from __future__ import annotations

from .command import add_sweep_command, main
from .grid import Grid, Variant, load_grid, resolve_run, run_overrides, train_command
from .report import aggregate, format_stat, geometry_table, markdown_table, mean_std, run_metrics, write_results
from .runner import (
                     SEMANTICS_VERSION,
                     collect,
                     ensure_setup,
                     export_backbone,
                     reuse_refusal,
                     run_finished,
                     run_grid,
                     run_inputs,
                     run_one,
)

__all__ = ["SEMANTICS_VERSION", "Grid", "Variant", "add_sweep_command", "aggregate", "collect", "ensure_setup",
           "export_backbone", "format_stat", "geometry_table", "load_grid", "main", "markdown_table", "mean_std",
           "resolve_run", "reuse_refusal", "run_finished", "run_grid", "run_inputs", "run_metrics", "run_one",
           "run_overrides", "train_command", "write_results"]
