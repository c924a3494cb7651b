"""``gare demo``: the reduced pipeline end to end (data, two end-to-end models, frozen towers, cached features,
the seeded grid, the report), the verdict sentence on known numbers, and the thread policy."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MICRO_ARCH
from gare.demo import pooled_std, run_demo, summary_block, verdict
from gare.threads import ENV, choose_threads


def test_reduced_demo_end_to_end(shapes_dir, tmp_path):
    out = tmp_path / "demo"
    rep = run_demo(out=out, data_dir=str(shapes_dir), steps=4, videos=40, quick=True, seeds=[0, 1], seeded_steps=3,
                   jobs=1, extra=["data.synthetic_seed=3", MICRO_ARCH])
    d = json.loads((out / "report.json").read_text())
    assert d == json.loads(json.dumps(rep))
    for variant in ("gare", "baseline"):
        for direction in ("t2v", "v2t"):
            m = d[variant][direction]
            assert set(m) >= {"R1", "R5", "R10", "MdR", "MnR"}
            assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100
    # the seeded comparison: each condition's mean/std/n equal the per-seed numbers of the grid's runs
    grid_json = json.loads((out / "seeded.json").read_text())
    per_run = {r["variant"]: r["per_seed"] for r in grid_json["rows"]}
    for cond, (g, b) in {"clean": ("gare_clean", "baseline_clean"),
                         "noisy50": ("gare_noisy50", "baseline_noisy50")}.items():
        for key, name in (("gare", g), ("baseline", b)):
            st = d["seeded"][cond][key]
            vals = [per_run[name][s]["t2v_R1"] for s in ("0", "1")]
            assert st["n"] == 2 and st["mean"] == pytest.approx(sum(vals) / 2)
            assert st["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
            # each seeded run trained on the cached features of the frozen end-to-end GARE towers
            cfg = json.loads((out / "seeded" / name / "seed0" / "sweep_run.json").read_text())["config"]
            assert cfg["train"]["features"] == str(out / "features.safetensors")
            assert cfg["model"]["backbone"]["weights"] == str(out / "towers.pt")
            assert cfg["data"]["noise_fraction"] == (0.5 if cond == "noisy50" else 0.0)
    assert d["seeded"]["verdict"] == verdict(d["seeded"])
    md = (out / "report.md").read_text()
    assert d["seeded"]["verdict"] in md and "| 50% corrupted |" in md and md.count("| GARE |") == 2
    for piece in summary_block(d).split("\n\n"):  # what README quotes of a report is in the report
        assert piece in md, piece
    for png in ("curves.png", "seeded.png"):
        assert (out / png).stat().st_size > 1000
    assert d["seconds"] > 0 and d["cpu_seconds"] > 0 and d["machine"]["jobs"] == 1
    # the towers really are those of the end-to-end GARE model
    from gare.model.factory import load_model

    towers = torch.load(out / "towers.pt")
    clip = load_model(out / "gare" / "best.safetensors", device="cpu").backbone.clip.state_dict()
    assert towers.keys() == clip.keys() and all(torch.equal(towers[k], clip[k]) for k in towers)


def _stat(mean, std, n=3):
    return {"mean": mean, "std": std, "n": n}


def test_verdict_calls_a_gap_within_one_pooled_std_noise():
    seeded = {"clean": {"gare": _stat(24.7, 1.2), "baseline": _stat(24.1, 0.5)},
              "noisy50": {"gare": _stat(24.0, 1.1), "baseline": _stat(18.2, 1.0)}}
    assert pooled_std(seeded["noisy50"]["gare"], seeded["noisy50"]["baseline"]) == pytest.approx(
        ((1.1 ** 2 + 1.0 ** 2) / 2) ** 0.5)
    v = verdict(seeded)
    assert v == ("Test t2v R@1 over 3 seeds: On clean captions the two are within noise (+0.6 points, pooled std "
                 "0.9); with 50% of the training captions corrupted GARE is ahead by 5.8 points (5.5 pooled std).")
    seeded["clean"]["baseline"] = _stat(30.0, 1.0)
    assert "On clean captions the baseline is ahead by 5.3 points" in verdict(seeded)


def test_thread_policy(monkeypatch):
    for var in (ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert choose_threads(cores=2, load=0.1) == 2  # idle machine: every core
    assert choose_threads(cores=2, load=0.8) == 1  # one core busy elsewhere
    assert choose_threads(cores=2, load=9.0) == 1  # never below one
    assert choose_threads(cores=8, load=2.9) == 5
    assert choose_threads(cores=8, load=3.0, own_load=2.0) == 7  # this process's own load is not competition
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads(cores=8, load=0.0) == 4  # two torchrun ranks share the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(cores=8, load=0.0) == 3
    assert choose_threads(5, cores=8, load=0.0) == 5  # train.threads beats OMP_NUM_THREADS
    monkeypatch.setenv(ENV, "6")
    assert choose_threads(5, cores=8, load=0.0) == 6  # GARE_THREADS beats everything
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(ValueError, match="GARE_THREADS='many' must be a non-negative integer"):
        choose_threads()
    monkeypatch.delenv(ENV)
    with pytest.raises(ValueError, match="threads=-1"):
        choose_threads(-1)


def test_trainer_applies_train_threads(shapes_dir, tmp_path, monkeypatch):
    from gare.config import load_config
    from gare.train.trainer import Trainer

    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    try:
        cfg = load_config("demo", [f"data.videos={shapes_dir}", "data.synthetic_videos=40",
                                                "data.synthetic_seed=3", "data.synthetic_options={}", MICRO_ARCH,
                                                f"train.output_dir={tmp_path}", "train.threads=3",
                                                "train.tensorboard=false", "data.max_frames=4"])
        Trainer(cfg, show_progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_thread_policy_sees_a_competitor_the_load_average_has_not_caught_up_with(monkeypatch, tmp_path):
    """The 1-minute load average lags: a process that started seconds ago counts through the runnable-task
    count of /proc/loadavg (bench_threads measured 4.5x slower steps with 2 threads than with 1 next to one
    competitor that the load average, at 0.65, did not show yet)."""
    from gare import threads

    for var in (ENV, "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    fake = tmp_path / "loadavg"
    fake.write_text("0.65 0.40 0.30 2/345 12345\n")  # this thread and one other runnable
    assert threads.runnable_others(samples=3, interval=0.0, path=str(fake)) == 1.0
    fake.write_text("0.65 0.40 0.30 1/345 12345\n")
    assert threads.runnable_others(samples=1, path=str(fake)) == 0.0
    assert threads.runnable_others(path=str(tmp_path / "missing")) == 0.0  # no /proc: no reading
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(threads, "runnable_others", lambda: 1.0)
    assert choose_threads(cores=2) == 1
    monkeypatch.setattr(threads, "runnable_others", lambda: 0.0)
    assert choose_threads(cores=2) == 2
    monkeypatch.setattr(threads, "runnable_others", lambda: 1.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # under torchrun the siblings are runnable: not counted twice
    assert choose_threads(cores=8) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert choose_threads(cores=8, own_load=2.0) == 7  # its own load is still discounted
