"""Running a grid: the one-off setup (pre-trained towers, cached features), each (variant, seed) run, and the
reuse of finished runs (a run is finished when its ``results.json`` exists for the same resolved config, code
semantics version and feature cache)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from .. import distributed as dist_utils
from ..config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from ..evaluate.geometry import split_geometry
from ..io import atomic_write
from ..model.factory import load_model
from ..train.features import check_features, extract_features, features_fingerprint, rebuild_command
from ..train.trainer import Trainer, train
from .grid import Grid, Variant, rel_path, resolve_run, run_overrides, train_command
from .report import write_results

log = logging.getLogger(__name__)

__all__ = ["SEMANTICS_VERSION", "collect", "config_record", "ensure_setup", "export_backbone", "reuse_refusal",
           "run_finished", "run_grid", "run_inputs", "run_one"]


def config_record(cfg: Config) -> dict:
    """The resolved config as plain JSON values (what ``sweep_run.json`` stores and compares)."""
    return json.loads(json.dumps(config_to_dict(cfg), default=str))


# Version of what a run's numbers mean for a given config. Bump it (and say why below) whenever a change of
# gare's code changes the results of an unchanged config, so finished runs made before it are not reused:
#   1: runs before the version was recorded
#   2: eta means the same gap on both sides (eta=+1: vbar - t; video-side runs before it had the other sign);
#      feature caches keyed on weights and data (format v2, every split's texts and word embeddings);
#      validation and test of cached-feature runs read the cache
SEMANTICS_VERSION = 2


def run_inputs(cfg: Config) -> dict:
    """What a run depends on besides its config: the code-semantics version and the feature cache's key."""
    out: dict = {"semantics_version": SEMANTICS_VERSION}
    if cfg.train.features and Path(cfg.train.features).exists():
        out["features"] = features_fingerprint(cfg.train.features)
    return out


def reuse_refusal(run_dir: Path, cfg: Config, inputs: dict | None = None) -> str | None:
    """Why the finished run in ``run_dir`` cannot stand for ``cfg`` (None: it can).

    A finished run has ``results.json`` and ``sweep_run.json``; it is reused only for the same resolved
    config (read back through the config tree: keys added to gare since the run take their defaults, so a
    new option that changes nothing does not retrain finished runs; a removed key does), the same
    :data:`SEMANTICS_VERSION` and the same feature cache (its key and dtype).
    """
    marker = run_dir / "sweep_run.json"
    if not (run_dir / "results.json").exists() or not marker.exists():
        return "not finished"
    try:
        rec = json.loads(marker.read_text())
        stored = rec.get("config")
        if stored is None:
            return "sweep_run.json records no config"
        old, new = config_record(config_from_dict(stored)), config_record(cfg)
    except (OSError, json.JSONDecodeError, ConfigError, TypeError) as e:
        return f"unreadable sweep_run.json ({e})"
    if old != new:
        diff = [k for k in _flat_keys(old) | _flat_keys(new) if _get(old, k) != _get(new, k)]
        shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in sorted(diff)[:8])
        return f"config differs ({shown})"
    have = rec.get("inputs") or {}
    want = inputs if inputs is not None else run_inputs(cfg)
    if have.get("semantics_version", 1) != want["semantics_version"]:
        return (f"made by code of semantics version {have.get('semantics_version', 1)}, this code is version "
                f"{want['semantics_version']} (scoring or evaluation semantics changed since; see "
                "gare.experiments.runner.SEMANTICS_VERSION)")
    if have.get("features") != want.get("features"):
        return f"feature cache differs (run: {have.get('features')}, now: {want.get('features')})"
    return None


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat_keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def run_finished(run_dir: Path, cfg: Config, inputs: dict | None = None) -> bool:
    """A finished run of exactly this resolved config, code semantics and feature cache."""
    return reuse_refusal(run_dir, cfg, inputs) is None


def split_test_geometry(trainer: Trainer) -> dict:
    """Modality-gap measures of the test split with the checkpoint the test metrics came from."""
    best_path = trainer.run_dir / "best.safetensors"
    model = load_model(best_path, device=trainer.device) if best_path.exists() else trainer.model
    enc = trainer.encode("test", model)
    return split_geometry(model, enc.t, enc.v, enc.mask, enc.query_video, words=enc.words, word_mask=enc.word_mask)


def export_backbone(checkpoint: Path, out: Path) -> Path:
    """Write the CLIP towers of a gare checkpoint as an open_clip state dict (``model.backbone.weights``)."""
    model = load_model(checkpoint, device="cpu")
    state = {k: v.detach().clone() for k, v in model.backbone.clip.state_dict().items()}
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    log.info("exported the CLIP towers of %s to %s", checkpoint, out)
    return out


def ensure_setup(grid: Grid) -> None:
    """Make the grid's pre-trained towers and cached features when they are missing."""
    pre = grid.setup.get("pretrain")
    if pre and not pre["weights"].exists():
        cfg = load_config(pre["recipe"])
        run_dir = Path(cfg.train.output_dir)
        if not ((run_dir / "results.json").exists() and (run_dir / "best.safetensors").exists()):
            if (run_dir / "metrics.jsonl").exists():
                (run_dir / "metrics.jsonl").unlink()
            log.info("setup: pre-training the towers with %s -> %s", pre["recipe"], run_dir)
            train(cfg, show_progress=False)
        export_backbone(run_dir / "best.safetensors", pre["weights"])
    feats = grid.setup.get("features")
    if feats:
        ov = run_overrides(grid, grid.variants[0], grid.seeds[0]) + ["train.features=null"]
        cfg = load_config(grid.recipe, ov)
        cmd = rebuild_command(feats, rel_path(grid.recipe), [o for o in ov if not o.startswith(("train.", "name="))])
        if not feats.exists():
            log.info("setup: extracting frozen-tower features -> %s", feats)
            extract_features(cfg, feats, command=cmd)
        else:  # refuse a stale cache before any run reads it
            check_features(feats, cfg, rebuild=cmd)


def run_one(grid: Grid, variant: Variant, seed: int, *, force: bool = False) -> dict:
    """Train one (variant, seed) of the grid (or reuse its finished run). Returns its ``results.json``."""
    ov = run_overrides(grid, variant, seed)
    run_dir = grid.run_dir(variant, seed)
    cfg = resolve_run(grid, variant, seed)
    inputs = run_inputs(cfg)
    why = reuse_refusal(run_dir, cfg, inputs)
    if not force and why is None:
        log.info("sweep %s: %s seed %d already done (%s)", grid.name, variant.name, seed, run_dir)
        return json.loads((run_dir / "results.json").read_text())
    if why != "not finished" and (run_dir / "results.json").exists():
        log.info("sweep %s: %s seed %d: the finished run in %s is not reused: %s", grid.name, variant.name, seed,
                 run_dir, "--force" if force else why)
    if run_dir.exists():
        if not ((run_dir / "metrics.jsonl").exists() or (run_dir / "sweep_run.json").exists()
                or not any(run_dir.iterdir())):
            raise ConfigError(f"{run_dir} exists and is not a run directory; refusing to overwrite it")
        shutil.rmtree(run_dir)  # metrics.jsonl is appended to: a rerun starts from an empty folder
    run_dir.mkdir(parents=True)
    atomic_write(run_dir / "sweep_run.json", json.dumps(
        {"grid": str(grid.path), "variant": variant.name, "seed": seed, "overrides": ov,
         "command": train_command(grid, variant, seed), "config": config_record(cfg), "inputs": inputs}, indent=2))
    log.info("sweep %s: training %s seed %d -> %s", grid.name, variant.name, seed, run_dir)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, show_progress=False)
    try:
        res = trainer.fit()
        if grid.geometry:
            try:
                res["test_geometry"] = split_test_geometry(trainer)
            except Exception as e:  # noqa: BLE001 - a geometry failure must not lose the run
                log.warning("geometry of %s failed: %s", run_dir, e)
        res["wall_seconds"] = time.perf_counter() - t0
    finally:
        dist_utils.cleanup()
    # results.json last: its presence marks the run as finished
    atomic_write(run_dir / "results.json", json.dumps(res, indent=2, default=float))
    return res


def collect(grid: Grid) -> dict[str, dict[int, dict]]:
    """Finished runs of the grid: ``{variant: {seed: results}}`` (missing runs are left out)."""
    out: dict[str, dict[int, dict]] = {}
    for v in grid.variants:
        for s in grid.seeds:
            p = grid.run_dir(v, s) / "results.json"
            if p.exists() and run_finished(grid.run_dir(v, s), resolve_run(grid, v, s)):
                out.setdefault(v.name, {})[s] = json.loads(p.read_text())
    return out


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
                write_results(grid, collect(grid), command, time.perf_counter() - t0)  # the table grows
    if table_only:  # keep the command that trained the runs; the rebuild is noted next to it
        prev = grid.results.with_suffix(".json")
        if prev.exists():
            try:
                old = json.loads(prev.read_text()).get("command")
            except json.JSONDecodeError:
                old = None
            if old:
                command = old if command is None or command in old else f"{old}\n# table rebuilt with: {command}"
        return write_results(grid, collect(grid), command, None)
    return write_results(grid, collect(grid), command, time.perf_counter() - t0)
