"""Training engine: schedule, resume equivalence, NaN stop, bad configs, reduced demo end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import MICRO_ARCH
from gare.config import ConfigError, load_config
from gare.model.checkpoint import read_checkpoint
from gare.train.optim import lr_factor


def micro_cfg(shapes_dir, out, *extra):
    return load_config("demo", [
        f"data.videos={shapes_dir}", "data.synthetic_videos=40", "data.synthetic_seed=3", f"train.output_dir={out}",
        "data.synthetic_options={}",
        MICRO_ARCH, "model.temporal.layers=1", "data.max_frames=4", "train.batch_size=8", "train.max_steps=6",
        "train.eval_every=3", "train.log_every=1", "train.tensorboard=false", "model.scorer.psi.dropout=0.3",
        "data.augment=true", *extra])


def test_lr_schedule_warmup_then_cosine_over_real_steps():
    total, warm = 200, 0.1
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(1 / 20)
    assert f[19] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0)
    assert f[20] == pytest.approx(1.0)
    mid = 20 + (total - 20) // 2
    assert f[mid] == pytest.approx(0.5, abs=0.01)
    assert f[-1] < 1e-3 and all(a >= b for a, b in zip(f[20:], f[21:]))


def test_optimizer_fast_kernel_equals_the_plain_adamw_loop():
    """build_optimizer's AdamW (fused or foreach kernel) makes the plain per-tensor loop's updates."""
    from torch import nn

    from gare.train.optim import build_optimizer

    cfg = load_config("demo", ["train.weight_decay=0.05", "train.lr=1e-2"])

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4))

    fast, plain = make(), make()
    opt_fast, _ = build_optimizer(fast, cfg, total_steps=10)
    groups = [{k: v for k, v in g.items()} for g in opt_fast.param_groups]
    assert opt_fast.defaults["fused"] or opt_fast.defaults["foreach"]
    pgroups = [{**g, "params": [dict(plain.named_parameters())[n] for n, q in fast.named_parameters()
                                if any(q is r for r in g["params"])]} for g in groups]
    opt_plain = torch.optim.AdamW(pgroups, betas=tuple(cfg.train.betas), eps=cfg.train.adam_eps, foreach=False,
                                  fused=False)
    for step in range(5):
        torch.manual_seed(100 + step)
        ids = torch.randint(0, 10, (6,))  # most embedding rows get no gradient (decay only)
        for model, opt in ((fast, opt_fast), (plain, opt_plain)):
            opt.zero_grad()
            model(ids).square().sum().backward()
            opt.step()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    assert not torch.equal(fast[0].weight, make()[0].weight)


def test_seeded_items_seed_only_datasets_that_draw():
    """An augmenting dataset's item k is the same whatever was drawn before it; a dataset that draws
    nothing (``random = False``) is read without reseeding the global generators."""
    from gare.train.data import SeededItems

    class Noise:
        random = True

        def __len__(self):
            return 4

        def __getitem__(self, k):
            return torch.rand(3)

    class Fixed(Noise):
        random = False

    items = SeededItems(Noise(), seed=5)
    first = items[2]
    torch.rand(7)
    torch.testing.assert_close(items[2], first, atol=0, rtol=0)
    items.epoch = 1
    assert not torch.equal(items[2], first)
    fixed = SeededItems(Fixed(), seed=5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    fixed[2]
    after = torch.rand(1)
    torch.set_rng_state(state)
    torch.rand(3)  # the dataset's own draw, nothing else
    assert torch.equal(torch.rand(1), after)


def test_total_steps_follow_dataset_size(shapes_dir, tmp_path):
    from gare.train.trainer import Trainer

    cfg = micro_cfg(shapes_dir, tmp_path / "r", "train.max_steps=null", "train.epochs=2.5")
    tr = Trainer(cfg, show_progress=False)
    n_pairs = len(tr.train_ds)
    assert tr.steps_per_epoch == n_pairs // 8
    assert tr.total_steps == math.ceil(2.5 * tr.steps_per_epoch)
    # the scheduler's horizon is the real number of steps, not a hard-coded epoch count
    lam = tr.scheduler.lr_lambdas[0]
    assert lam(tr.total_steps - 1) < 0.05 and lam(int(0.1 * tr.total_steps)) > 0.9


def _weights(path):
    t, _ = read_checkpoint(path)
    return t


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_kill_and_resume_equals_uninterrupted_run(shapes_dir, tmp_path, workers):
    """Also with two loader worker processes (``data.workers=2``): the resumed batches, augmentations included,
    are the uninterrupted run's."""
    from gare.train.trainer import Trainer

    w = f"data.workers={workers}"
    full = Trainer(micro_cfg(shapes_dir, tmp_path / "full", w), show_progress=False)
    full.fit(final_test=False)
    part = Trainer(micro_cfg(shapes_dir, tmp_path / "resumed", w), show_progress=False)
    part.fit(final_test=False, stop_after=4)  # "killed" after 4 of 6 steps (last checkpoint at step 3)
    assert part.step == 4
    again = Trainer(micro_cfg(shapes_dir, tmp_path / "resumed", w, "train.resume=true"), show_progress=False)
    assert again.step == 3  # restarts from the last checkpoint written
    again.fit(final_test=False)
    a, b = _weights(tmp_path / "full" / "last.safetensors"), _weights(tmp_path / "resumed" / "last.safetensors")
    assert set(a) == set(b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst == 0.0, f"resumed run differs from the uninterrupted one by {worst}"
    # and the run really trained (weights moved away from their initial values)
    init = Trainer(micro_cfg(shapes_dir, tmp_path / "init"), show_progress=False).model.state_dict()
    moved = max(float((a[k].float() - init[k].float()).abs().max()) for k in a if k.startswith("scorer."))
    assert moved > 1e-4


def test_run_directory_contents_and_logged_terms(shapes_dir, tmp_path):
    from gare.train.trainer import train

    res = train(micro_cfg(shapes_dir, tmp_path / "run"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "last.safetensors", "last_state.pt", "best.safetensors",
                 "results.json", "data_report.json"):
        assert (run / name).exists(), name
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    assert len(tr) == 6 and [r["step"] for r in tr] == list(range(6))
    for key in ("lr", "loss", "nce", "ib", "radius", "direction", "gs", "samples_per_s"):
        assert key in tr[0]
    # total = nce + weighted terms (beta 1e-4, lambdas 0.01)
    r = tr[2]
    assert r["loss"] == pytest.approx(r["nce"] + 1e-4 * r["ib"] + 0.01 * r["radius"] + 0.01 * r["direction"],
                                      rel=1e-5, abs=1e-6)
    assert sum(1 for r in recs if r["kind"] == "val") == 2
    assert 0.0 <= res["test"]["t2v"]["R1"] <= 100.0


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(shapes_dir, tmp_path, monkeypatch):
    from gare.train import trainer as trainer_mod

    real = trainer_mod.gare_loss
    calls = {"n": 0}

    def flaky(*a, **k):
        total, terms = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 5:
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(trainer_mod, "gare_loss", flaky)
    tr = trainer_mod.Trainer(micro_cfg(shapes_dir, tmp_path / "nan", "train.save_every=1"), show_progress=False)
    with pytest.raises(trainer_mod.TrainingDiverged, match="non-finite loss at step 4"):
        tr.fit(final_test=False)
    state = torch.load(tmp_path / "nan" / "last_state.pt", weights_only=False)
    assert state["step"] == 4  # the checkpoint of the last good step survives
    w = _weights(tmp_path / "nan" / "last.safetensors")
    assert all(torch.isfinite(v.float()).all() for v in w.values())


def test_bad_configs_name_the_key_or_path(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'train.bach_size'.*did you mean 'train.batch_size'"):
        load_config("demo", ["train.bach_size=4"])
    with pytest.raises(ConfigError, match="'train.max_steps' must be an integer"):
        load_config("demo", ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="model.scorer.pooling"):
        load_config("demo", ["model.scorer.pooling=max"])
    from gare.train.trainer import Trainer

    cfg = load_config("configs/msrvtt.yaml", [f"data.annotations={tmp_path}/nowhere", "model.backbone.weights=null",
                                              "model.backbone.arch=tiny", "model.temporal.layers=1"])
    with pytest.raises(ConfigError, match="data.annotations path does not exist: .*nowhere"):
        Trainer(cfg, show_progress=False)


def test_word_context_model_trains_validates_and_tests(shapes_dir, tmp_path):
    from gare.train.trainer import train

    res = train(micro_cfg(shapes_dir, tmp_path / "words", "model.scorer.context=words", "train.max_steps=3"))
    assert 0.0 <= res["test"]["t2v"]["R1"] <= 100.0 and res["test"]["n_queries"] > 0
    assert (tmp_path / "words" / "best.safetensors").exists()


def test_validation_logs_modality_gap_equal_to_a_direct_computation(shapes_dir, tmp_path):
    """``train.geometry`` (on by default) adds ``geo_*`` to every validation record; the values equal
    split_geometry of the same model on the validation split, and switching it off changes no number."""
    from gare.evaluate.geometry import split_geometry
    from gare.model.factory import load_model
    from gare.train.trainer import Trainer

    on = Trainer(micro_cfg(shapes_dir, tmp_path / "on", "train.max_steps=3", "train.eval_every=3"),
                 show_progress=False)
    res_on = on.fit()
    val = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["kind"] == "val"]
    assert len(val) == 1
    geo = {k[4:]: v for k, v in val[0].items() if k.startswith("geo_")}
    assert 0.0 < geo["gap"] < 2.0 and -1.0 <= geo["pos_cos"] <= 1.0 and geo["delta_norm_ratio"] > 0
    model = load_model(tmp_path / "on" / "last.safetensors")  # the model of the last (only) validation
    enc = on.encode("val", model)
    direct = split_geometry(model, enc.t, enc.v, enc.mask, enc.query_video)
    assert set(direct) == set(geo)
    for k, v in direct.items():
        assert geo[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    off = Trainer(micro_cfg(shapes_dir, tmp_path / "off", "train.max_steps=3", "train.eval_every=3",
                            "train.geometry=false"), show_progress=False)
    res_off = off.fit()
    recs = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("geo_") for r in recs for k in r)
    assert res_off["test"]["t2v"] == res_on["test"]["t2v"]
