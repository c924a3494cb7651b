"""gare.pipeline: every app decodes with the recipe's data.decoder; devices, recipes and run folders."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import MICRO_ARCH
from gare.config import ConfigError, config_to_dict, load_config, recipe_path
from gare.data import video
from gare.evaluate.run import evaluate_checkpoint
from gare.model import GareModel
from gare.pipeline import encode_split, load_data, load_run_model, resolve_device, run_recipe, text_items
from gare.train.features import extract_features


def _cfg(shapes_dir, *extra):
    return load_config(recipe_path("demo"), [
        f"data.videos={shapes_dir}", "data.synthetic_videos=40", "data.synthetic_seed=3", "data.synthetic_options={}",
        "data.frame_store=null", "data.workers=0", MICRO_ARCH, "model.temporal.layers=1", "data.max_frames=4",
        "train.eval_batch_size=16", *extra])


@pytest.fixture
def decoder_calls(monkeypatch):
    """Counts the videos each decoder decodes (the real decoders still run)."""
    calls = {"pyav": 0, "opencv": 0}

    def counting(name):
        real = video.SAMPLERS[name]

        def wrapped(*args, **kw):
            calls[name] += 1
            return real(*args, **kw)
        return wrapped

    for name in calls:
        monkeypatch.setitem(video.SAMPLERS, name, counting(name))
    return calls


@pytest.fixture
def micro_run(shapes_dir, tmp_path):
    """A run folder whose best.safetensors carries its run config (as `gare train` writes it)."""
    cfg = _cfg(shapes_dir)
    torch.manual_seed(0)
    model = GareModel(cfg.model)
    model.save(tmp_path / "run" / "best.safetensors", extra_metadata={"run_config": json.dumps(config_to_dict(cfg))})
    return tmp_path / "run"


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_gare_eval_decodes_with_the_recipes_decoder(micro_run, decoder_calls, decoder):
    res = evaluate_checkpoint(micro_run, split="test", overrides=[f"data.decoder={decoder}"], device="cpu")
    other = "pyav" if decoder == "opencv" else "opencv"
    assert decoder_calls[decoder] == res["n_videos"] > 0
    assert decoder_calls[other] == 0


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_gare_data_features_decodes_with_the_recipes_decoder(shapes_dir, tmp_path, decoder_calls, decoder):
    cfg = _cfg(shapes_dir, f"data.decoder={decoder}", "train.device=cpu")
    out = extract_features(cfg, tmp_path / "f.safetensors", batch_size=16)
    n_videos = sum(len(s.items) for s in load_data(cfg).splits.values())
    other = "pyav" if decoder == "opencv" else "opencv"
    assert decoder_calls[decoder] == n_videos > 0
    assert decoder_calls[other] == 0
    assert out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_encode_split_matches_the_model_on_the_same_frames(micro_run, shapes_dir):
    cfg = run_recipe(micro_run)
    model = load_run_model(micro_run)
    enc = encode_split(model, cfg, "val")
    texts, qv = text_items(cfg, "val")
    assert enc.texts == texts and enc.query_video == qv
    torch.testing.assert_close(enc.t, model.encode_text(texts).float())
    assert enc.v.shape == (len(load_data(cfg, splits=("val",)).splits["val"].items), 4, model.embed_dim)


def test_resolve_device_and_recipe_errors(micro_run, tmp_path):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda but CUDA is not available"):
            resolve_device("cuda")
    assert run_recipe(micro_run, overrides=["data.decoder=opencv"]).data.decoder == "opencv"
    bare = tmp_path / "bare.safetensors"
    GareModel(load_config(None, [MICRO_ARCH]).model).save(bare)
    with pytest.raises(ConfigError, match="carries no run config; pass --config"):
        run_recipe(bare)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run is a folder without best/model/last.safetensors"):
        load_run_model(tmp_path / "empty_run")
