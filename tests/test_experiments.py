"""Experiment grids: the runner's table against the per-run results, every recipe and grid resolves, every
ablation switch changes the model or the loss, modality-gap geometry on known embeddings, diagnostics runs."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import MICRO_ARCH
from gare.config import ConfigError, load_config
from gare.experiments import (
    aggregate,
    collect,
    export_backbone,
    load_grid,
    mean_std,
    resolve_run,
    run_grid,
    run_overrides,
)
from gare.objectives import GareLossConfig, gare_loss

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "configs" / "experiments"
TINY = EXP / "tiny-shapes.yaml"  # the recipe the grids build on (a frozen copy of the demo recipe of their runs)
GRIDS = sorted(p for p in EXP.glob("*.yaml") if "variants" in (yaml.safe_load(p.read_text()) or {}))
RECIPES = sorted(p for p in EXP.glob("*.yaml") if p not in GRIDS)



def micro_overrides(shapes_dir) -> list[str]:
    return [f"data.videos={shapes_dir}", "data.synthetic_videos=40", "data.synthetic_seed=3", MICRO_ARCH,
            "model.temporal.layers=1", "data.max_frames=4", "train.batch_size=8", "train.eval_every=2",
            "train.log_every=1", "train.tensorboard=false", "train.eval_batch_size=16"]


def write_grid(tmp_path, shapes_dir, variants, seeds=(0, 1), **extra) -> Path:
    g = {"name": "micro", "recipe": str(TINY), "seeds": list(seeds), "steps": 2,
         "overrides": micro_overrides(shapes_dir), "output": str(tmp_path / "runs"),
         "results": str(tmp_path / "results" / "micro"), "variants": variants, **extra}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


# ------------------------------------------------------------------------------------------ the runner
def test_mean_std_known_values():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, None)
    m, s = mean_std([])
    assert math.isnan(m) and s is None


def test_micro_grid_table_matches_per_run_results(shapes_dir, tmp_path):
    variants = [{"name": "full", "paper": 49.1, "overrides": []},
                {"name": "delta_only", "paper": 47.4,
                 "overrides": ["loss.use_ib=false", "loss.use_radius=false", "loss.use_direction=false"]}]
    grid = load_grid(write_grid(tmp_path, shapes_dir, variants))
    payload = run_grid(grid, command="gare sweep grid.yaml")
    runs = collect(grid)
    assert {v: sorted(s) for v, s in runs.items()} == {"full": [0, 1], "delta_only": [0, 1]}
    md = grid.results.with_suffix(".md").read_text()
    for row in payload["rows"]:
        per = [json.loads((grid.run_dir(next(v for v in grid.variants if v.name == row["variant"]), s)
                           / "results.json").read_text()) for s in (0, 1)]
        for d, k in (("t2v", "R1"), ("t2v", "R5"), ("t2v", "R10"), ("t2v", "MnR"), ("v2t", "R1")):
            vals = [r["test"][d][k] for r in per]
            st = row["stats"][f"{d}_{k}"]
            assert st["n"] == 2
            assert st["mean"] == pytest.approx(statistics.mean(vals), abs=1e-9)
            assert st["std"] == pytest.approx(statistics.stdev(vals), abs=1e-9)
        r1 = [r["test"]["t2v"]["R1"] for r in per]
        cell = f"{statistics.mean(r1):.1f} ± {statistics.stdev(r1):.1f}"
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row['variant']} |"))
        assert cell in line and str(row["paper"]) in line
        # geometry of the test split is recorded with every run
        assert "gap" in per[0]["test_geometry"] and "alignment_corrected" in per[0]["test_geometry"]
    assert "gare sweep grid.yaml" in md
    # each run records the equivalent `gare train` command, which resolves to the same config
    marker = json.loads((grid.run_dir(grid.variants[1], 1) / "sweep_run.json").read_text())
    assert marker["overrides"] == run_overrides(grid, grid.variants[1], 1)
    assert "loss.use_ib=false" in marker["command"] and "train.seed=1" in marker["command"]
    # the disabled loss terms are exactly zero in the delta_only runs' logs, non-zero in the full ones
    for name, zero in (("delta_only", True), ("full", False)):
        recs = [json.loads(x) for x in (grid.output / name / "seed0" / "metrics.jsonl").read_text().splitlines()]
        tr = [r for r in recs if r["kind"] == "train"]
        assert tr and all((r["ib"] == 0 and r["radius"] == 0 and r["direction"] == 0) == zero for r in tr)
    # a second invocation reuses the finished runs (no retraining): results files untouched
    stamp = {p: p.stat().st_mtime_ns for p in grid.output.rglob("results.json")}
    run_grid(grid, command="gare sweep grid.yaml")
    assert {p: p.stat().st_mtime_ns for p in grid.output.rglob("results.json")} == stamp
    # rebuilding only the table keeps the command that trained the runs and notes the rebuild
    run_grid(grid, table_only=True, command="gare sweep grid.yaml --table-only")
    md = grid.results.with_suffix(".md").read_text()
    assert "gare sweep grid.yaml\n# table rebuilt with: gare sweep grid.yaml --table-only" in md
    assert "2 steps per run; 4/4 runs finished" in md
    # a finished run counts only for exactly its resolved config: an edited recipe or override trains again
    from gare.experiments import run_finished

    v0 = grid.variants[0]
    assert run_finished(grid.run_dir(v0, 0), resolve_run(grid, v0, 0))
    # a key added to gare after the run (absent from its record, default value now) keeps it finished;
    # a key gare no longer knows does not
    marker = grid.run_dir(v0, 0) / "sweep_run.json"
    rec = json.loads(marker.read_text())
    del rec["config"]["model"]["scorer"]["delta_norm"]
    marker.write_text(json.dumps(rec))
    assert run_finished(grid.run_dir(v0, 0), resolve_run(grid, v0, 0))
    rec["config"]["model"]["scorer"]["retired_option"] = 1
    marker.write_text(json.dumps(rec))
    assert not run_finished(grid.run_dir(v0, 0), resolve_run(grid, v0, 0))
    grid.overrides.append("loss.alpha=3")
    assert not run_finished(grid.run_dir(v0, 0), resolve_run(grid, v0, 0))
    assert collect(grid) == {}


def test_finished_run_reuse_refuses_other_semantics_version_or_feature_cache(tmp_path):
    """A finished run stands for a config only with the same code-semantics version and feature cache; each
    refusal names what differs (runs made before the version was recorded, e.g. before the eta sign fix of
    the video side, count as version 1)."""
    from safetensors.torch import save_file

    from gare.experiments import SEMANTICS_VERSION, reuse_refusal, run_inputs
    from gare.experiments.runner import config_record as record

    def cache(path, key):
        save_file({"text": torch.zeros(1, 2)}, str(path), metadata={"key": json.dumps(key), "dtype": "float16"})
        return path

    feats = cache(tmp_path / "f.safetensors", {"weights_sha256": "a"})
    cfg = load_config(TINY, [f"train.features={feats}"])
    run = tmp_path / "run"
    run.mkdir()
    assert reuse_refusal(run, cfg) == "not finished"
    (run / "results.json").write_text("{}")
    marker = {"config": record(cfg), "inputs": run_inputs(cfg)}
    (run / "sweep_run.json").write_text(json.dumps(marker))
    assert SEMANTICS_VERSION >= 2 and run_inputs(cfg)["semantics_version"] == SEMANTICS_VERSION
    assert reuse_refusal(run, cfg) is None
    # another resolved config: the refusal names the key and both values
    why = reuse_refusal(run, load_config(TINY, [f"train.features={feats}", "model.scorer.eta=-1"]))
    assert why.startswith("config differs") and "model.scorer.eta: 1.0 -> -1.0" in why
    # a run recorded before the semantics version existed (or with an older one)
    (run / "sweep_run.json").write_text(json.dumps({"config": record(cfg)}))
    why = reuse_refusal(run, cfg)
    assert f"semantics version 1, this code is version {SEMANTICS_VERSION}" in why
    # the same path holding features made with other weights
    (run / "sweep_run.json").write_text(json.dumps(marker))
    cache(feats, {"weights_sha256": "b"})
    why = reuse_refusal(run, cfg)
    assert why.startswith("feature cache differs") and marker["inputs"]["features"] in why


def test_single_seed_shows_value_without_std(tmp_path):
    from gare.experiments import Grid, Variant, markdown_table

    g = Grid(name="g", path=tmp_path / "g.yaml", recipe=tmp_path / "r.yaml", variants=[Variant("a")], seeds=[3])
    rows = aggregate(g, {"a": {3: {"test": {"t2v": {"R1": 12.345, "R5": 50.0, "R10": 60.0, "MnR": 7.25},
                                            "v2t": {"R1": 11.0}}}}})
    line = markdown_table(g, rows).splitlines()[2]
    assert "| 12.3 | 50.0 | 60.0 | 7.2 | 11.0 | 1 |" in line and "±" not in line


def test_grid_file_errors_name_the_problem(tmp_path, shapes_dir):
    with pytest.raises(ConfigError, match="not a grid file"):
        load_grid(EXP / "base.yaml")
    p = write_grid(tmp_path, shapes_dir, [{"name": "a", "overrides": ["loss.alpah=2"]}])
    with pytest.raises(ConfigError, match=r"variant 'a'.*did you mean 'loss.alpha'"):
        resolve_run(load_grid(p), load_grid(p).variants[0], 0)
    p = write_grid(tmp_path, shapes_dir, [{"name": "a"}, {"name": "a"}])
    with pytest.raises(ConfigError, match="unique"):
        load_grid(p)
    p = write_grid(tmp_path, shapes_dir, [{"name": "a", "overrides": ["loss.alpha"]}])
    with pytest.raises(ConfigError, match="key=value"):
        load_grid(p)
    p = write_grid(tmp_path, shapes_dir, [{"name": "a"}], plot={"metric": "t2v_R1"})
    with pytest.raises(ConfigError, match="series"):
        load_grid(p)


# ------------------------------------------------------------------------------------------ the recipes
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_experiment_recipes_load(path):
    cfg = load_config(path)
    assert cfg.model.backbone.arch == "tiny"


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_every_grid_variant_resolves_and_maps_to_the_paper(path):
    grid = load_grid(path)
    text = path.read_text()
    assert text.startswith("#"), "each grid starts with a comment mapping it to the paper"
    seen_dirs = set()
    for s in grid.seeds:
        for v in grid.variants:
            cfg = resolve_run(grid, v, s)
            assert cfg.train.seed == s
            assert Path(cfg.train.output_dir) == grid.run_dir(v, s)
            seen_dirs.add(cfg.train.output_dir)
    assert len(seen_dirs) == len(grid.seeds) * len(grid.variants)


def test_shared_ablation_output_never_gives_one_name_two_configs():
    """The ablation grids share their run folders: a variant name must mean the same overrides everywhere."""
    by_dir: dict[str, list[str]] = {}
    for path in GRIDS:
        grid = load_grid(path)
        for v in grid.variants:
            key = str(grid.run_dir(v, grid.seeds[0]))
            ov = run_overrides(grid, v, grid.seeds[0])
            assert by_dir.setdefault(key, ov) == ov, f"{path.name}: {v.name} clashes with another grid"


# ------------------------------------------------------------------------------------------ the switches
def _signature(cfg) -> list[float]:
    """Numbers that any model or loss switch must move: scores and Delta of a seeded micro model on fixed
    features, and the loss terms on fixed increments of three scales (the radius truncation bites at
    different lambdas) with a corrected tensor that carries the gradient-supervision graph."""
    from gare.config import BackboneConfig
    from gare.model import GareModel

    mcfg = cfg.model
    mcfg.backbone = BackboneConfig(arch="tiny", arch_cfg={
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "patch_size": 16,
                                        "head_width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}})
    torch.manual_seed(0)
    model = GareModel(mcfg).eval()
    g = torch.Generator().manual_seed(1)
    B, Fr, L, D = 5, 4, 6, 16
    t, f = torch.randn(B, D, generator=g), torch.randn(B, Fr, D, generator=g)
    words, wmask = torch.randn(B, L, D, generator=g), torch.ones(B, L, dtype=torch.bool)
    mask = torch.ones(B, Fr, dtype=torch.bool)
    mask[0, 3] = False
    with torch.no_grad():
        out = model.score_pairs(t, f, mask, words, wmask)
    sig = [float(out.sim.sum()), float((out.sim * torch.arange(B * B).reshape(B, B)).sum())]
    lc = GareLossConfig(**asdict(cfg.loss))
    vhat = torch.randn(B, B, D, generator=g)
    base = torch.randn(B, B, D, generator=g)
    scale = torch.linspace(0.5, 1.5, B)[None, :, None]
    for var_target in (0.05, 0.3, 2.0):
        delta = (base / base.norm(dim=-1, keepdim=True) * scale * math.sqrt(var_target / 0.15625)).requires_grad_(True)
        corrected = t[:, None, :] + delta
        sim = (F.normalize(corrected, dim=-1) * F.normalize(vhat, dim=-1)).sum(-1)
        d_in = delta if cfg.model.scorer.use_delta else None
        total, terms = gare_loss(sim, d_in, torch.tensor(math.log(10.0)), lc, corrected=corrected)
        sig += [float(total.detach())] + [float(terms[k]) for k in ("nce", "ib", "radius", "direction", "gs")]
    return sig


def _ablation_variants():
    out = []
    for path in GRIDS:
        grid = load_grid(path)
        if "noise" in path.name:  # noise grids change the data, not the model or loss (tested below)
            continue
        if path.name == "release_vs_default.yaml":  # optimizer/group switches act in training: tests/test_release.py
            continue
        for v in grid.variants:
            out.append((path.name, v.name))
    return out


@pytest.fixture(scope="module")
def full_signature():
    grid = load_grid(EXP / "ablation_loss.yaml")
    return _signature(resolve_run(grid, next(v for v in grid.variants if v.name == "full"), 0))


@pytest.mark.parametrize("grid_name,variant", _ablation_variants())
def test_each_ablation_switch_changes_the_model_or_loss(grid_name, variant, full_signature):
    grid = load_grid(EXP / grid_name)
    v = next(x for x in grid.variants if x.name == variant)
    sig = _signature(resolve_run(grid, v, 0))
    if not v.overrides:  # the recipe itself ("full"; Table 7's text_frames_eta+1)
        assert sig == pytest.approx(full_signature, rel=0, abs=0)
        return
    assert max(abs(a - b) for a, b in zip(sig, full_signature)) > 1e-6, f"{grid_name}:{variant} changes nothing"
    ov = " ".join(v.overrides)
    if "use_delta=false" in ov:
        assert all(sig[i + k] == 0 for i in (2, 8, 14) for k in (2, 3, 4, 5))  # ib radius direction gs
    for flag, k in (("use_ib=false", 2), ("use_radius=false", 3), ("use_direction=false", 4)):
        if flag in ov:
            assert all(sig[i + k] == 0 for i in (2, 8, 14)), flag
    if "lambda_gs" in ov:
        assert all(sig[i + 5] > 0 for i in (2, 8, 14))


def test_radius_truncation_sweep_switches_where_specified():
    """The lambda grid's runs differ exactly where -L_eps crosses each lambda."""
    grid = load_grid(EXP / "ablation_eps_truncate.yaml")
    radius = {v.name: [_signature(resolve_run(grid, v, 0))[i + 3] for i in (2, 8, 14)] for v in grid.variants}
    for name, lam in (("lambda_0.01", 0.01), ("lambda_0.1", 0.1), ("full", 0.5), ("lambda_10", 10.0)):
        ref = radius["lambda_10"]
        for r_lam, r_ref in zip(radius[name], ref):
            assert r_ref < 0
            assert (r_lam == 0) == (-r_ref > lam)


def test_noise_grid_corrupts_the_stated_fraction_of_training_captions():
    from gare.pipeline import training_pairs

    class Split:
        def train_pairs(self):
            return [(i // 4, f"video {i // 4} caption {i % 4}") for i in range(400)]

    grid = load_grid(EXP / "noise.yaml")
    for v in grid.variants:
        for s in grid.seeds:
            cfg = resolve_run(grid, v, s)
            assert cfg.data.noise_seed == s and cfg.train.diagnostics
            pairs, corrupted = training_pairs(cfg, Split())
            assert len(corrupted) == round(400 * v.x / 100)
            assert all(pairs[i][1] != Split().train_pairs()[i][1] for i in corrupted)
            assert cfg.model.scorer.use_delta == v.name.startswith("gare")


# ------------------------------------------------------------------------------------------ geometry
def _mean_model(use_delta: bool):
    from gare.config import ScorerConfig
    from gare.model.scorer import PairScorer

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scorer = PairScorer(ScorerConfig(use_delta=use_delta, pooling="mean"), 4)

        @staticmethod
        def mean_video(v, mask):
            from gare.model.scorer import masked_mean

            return masked_mean(v, mask)

    return M()


def test_geometry_known_values():
    from gare.evaluate.geometry import split_geometry

    e = torch.eye(4)
    t = torch.stack([e[0], e[0], e[1]])  # 3 queries
    v = torch.stack([e[2].repeat(2, 1), e[3].repeat(2, 1)])  # 2 videos of 2 frames, orthogonal to the texts
    v[1, 1] = 5 * e[3]  # frame scale does not change the direction of vbar_1
    qv = [0, 0, 1]
    g = split_geometry(_mean_model(False), t * 3.0, v, None, qv)
    c_t = (2 * e[0] + e[1]) / 3
    c_v = (e[2] + e[3]) / 2
    assert g["gap"] == pytest.approx(float((c_t - c_v).norm()))
    assert g["text_centroid_norm"] == pytest.approx(float(c_t.norm()))
    assert g["alignment"] == pytest.approx(2.0)  # orthogonal unit vectors: ||a - b||^2 = 2
    assert g["pos_cos"] == pytest.approx(0.0) and g["neg_cos"] == pytest.approx(0.0)
    # uniformity: pairs (0,1) identical, (0,2) and (1,2) at squared distance 2
    assert g["uniformity_text"] == pytest.approx(math.log((1 + 2 * math.exp(-4)) / 3))
    assert g["uniformity_video"] == pytest.approx(-4.0)
    assert "gap_corrected" not in g


def test_geometry_corrected_equals_plain_when_delta_is_zero_and_moves_with_delta():
    from gare.evaluate.geometry import split_geometry

    m = _mean_model(True)
    g = torch.Generator().manual_seed(0)
    t, v = torch.randn(6, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    qv = [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        m.scorer.psi.mean_proj.weight.zero_()
        m.scorer.psi.mean_proj.bias.zero_()
    z = split_geometry(m, t, v, None, qv)
    assert z["gap_corrected"] == pytest.approx(z["gap"]) and z["delta_norm_ratio"] == 0.0
    assert z["alignment_corrected"] == pytest.approx(z["alignment"])
    with torch.no_grad():
        m.scorer.psi.mean_proj.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # Delta = e0 for every pair
    d = split_geometry(m, t, v, None, qv)
    assert d["delta_norm_ratio"] == pytest.approx(float((1 / t.norm(dim=-1)).mean()), rel=1e-5)
    corrected = t + torch.tensor([1.0, 0.0, 0.0, 0.0])
    from gare.diagnostics import modality_gap

    assert d["gap_corrected"] == pytest.approx(modality_gap(corrected, v.mean(1))["gap"], rel=1e-5)


# ------------------------------------------------------------------------------------------ setup, diagnostics
def test_exported_backbone_loads_as_weights_and_encodes_identically(tmp_path):
    from gare.model import GareModel, load_model

    cfg = load_config(TINY, [MICRO_ARCH, "model.temporal.layers=1"])
    torch.manual_seed(5)
    model = GareModel(cfg.model)
    model.save(tmp_path / "m.safetensors")
    export_backbone(tmp_path / "m.safetensors", tmp_path / "towers.pt")
    again = load_model(tmp_path / "m.safetensors")
    cfg2 = load_config(TINY, [MICRO_ARCH, "model.temporal.layers=1",
                              f"model.backbone.weights={tmp_path / 'towers.pt'}"])
    fresh = GareModel(cfg2.model).eval()
    ids = fresh.tokenize(["a red circle moves left", "a blue square grows"])
    torch.testing.assert_close(fresh.encode_text(ids), again.encode_text(ids), rtol=0, atol=0)
    frames = torch.randn(1, 2, 3, 32, 32)
    torch.testing.assert_close(fresh.encode_frames(frames), again.encode_frames(frames), rtol=0, atol=0)


def test_diagnostics_run_logs_tension_terms_and_plot_renders_them(shapes_dir, tmp_path):
    from gare.plots import plot_run
    from gare.train.trainer import train

    cfg = load_config(TINY, micro_overrides(shapes_dir) + [
        f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2", "train.diagnostics=true"])
    train(cfg, show_progress=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    want = {"diag_anchor_pos_norm", "diag_anchor_neg_norm", "diag_anchor_sum_norm", "diag_anchor_cancellation",
            "diag_delta_share", "diag_cos_gap", "diag_norm_pos_mean", "diag_norm_neg_mean", "diag_cos_ideal"}
    assert want <= set(tr[0])
    r = tr[0]
    assert 0 <= r["diag_anchor_cancellation"] <= 1 and 0 <= r["diag_delta_share"] <= 1
    assert r["diag_anchor_sum_norm"] <= r["diag_anchor_pos_norm"] + r["diag_anchor_neg_norm"] + 1e-6
    outs = {p.name for p in plot_run(tmp_path / "run")}
    # validation logs the modality gap by default (train.geometry), so the geometry figure is drawn too
    assert {"curves.png", "diagnostics.png", "geometry.png"} <= outs
    assert (tmp_path / "run" / "diagnostics.png").stat().st_size > 1000


def test_plot_renders_geometry_of_validation_records(tmp_path):
    from gare.plots import plot_run

    recs = [{"kind": "train", "step": 0, "nce": 4.0, "lr": 1e-3},
            {"kind": "val", "step": 10, "t2v_R1": 5.0, "geo_gap": 0.8, "geo_alignment": 1.2},
            {"kind": "val", "step": 20, "t2v_R1": 9.0, "geo_gap": 0.6, "geo_alignment": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    outs = {p.name for p in plot_run(tmp_path)}
    assert "geometry.png" in outs and "diagnostics.png" not in outs
    assert (tmp_path / "geometry.png").stat().st_size > 1000


def test_gare_sweep_dry_run_prints_every_run_command(capsys):
    from gare.cli import main

    assert main(["sweep", str(EXP / "ablation_query.yaml"), "loss.beta=0.001", "--dry-run", "--seeds", "3,4"]) == 0
    out = capsys.readouterr().out
    cmds = [ln for ln in out.splitlines() if ln.startswith("gare train ")]
    assert len(cmds) == 4
    assert all("loss.beta=0.001" in c for c in cmds)
    assert sum("model.scorer.query=text" in c for c in cmds) == 2
    assert {c.split("train.seed=")[1].split()[0] for c in cmds} == {"3", "4"}
    assert main(["sweep", str(EXP / "base.yaml")]) == 2  # a recipe is not a grid: clear error, exit code 2


def test_grid_figures_are_drawn_from_rows_and_run_folders(tmp_path):
    from gare.plots import plot_mean_curves, plot_metric_by_series

    rows = [{"series": s, "x": x, "stats": {"t2v_R1": {"mean": m, "std": 1.0, "n": 2}}}
            for s, x, m in (("GARE", 0, 25.0), ("GARE", 50, 24.0), ("baseline", 0, 24.0), ("baseline", 50, 18.0))]
    out = plot_metric_by_series(rows, {"metric": "t2v_R1", "x_label": "noise (%)"}, "t", tmp_path / "m.png")
    assert out.stat().st_size > 1000
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.jsonl").write_text("\n".join(json.dumps({"kind": "train", "step": s, "diag_x": s * 0.1})
                                                   for s in (10, 20)) + "\n")
    assert plot_mean_curves({"a": [tmp_path / "a"]}, ["diag_missing"], "t", tmp_path / "none.png") is None
    p = plot_mean_curves({"a": [tmp_path / "a"], "b": [tmp_path / "b", tmp_path / "nowhere"]}, ["diag_x"], "t",
                         tmp_path / "c.png", series={"a": "GARE", "b": None})
    assert p.stat().st_size > 1000
