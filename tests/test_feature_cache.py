"""Feature cache: word embeddings (float32 exact, float16 close), cached word-context training and evaluation
without the towers, and every refusal of a stale cache."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import MICRO_ARCH
from gare.config import ConfigError, load_config
from gare.evaluate.metrics import t2v_v2t_metrics
from gare.evaluate.protocol import encode_texts, encode_videos
from gare.model.backbone import ClipBackbone
from gare.model.gare import GareModel
from gare.pipeline import load_data
from gare.train.features import FeatureCache, encode_split_cached, extract_features, features_fingerprint, load_features


def micro_cfg(shapes_dir, out, *extra):
    return load_config("demo", [
        f"data.videos={shapes_dir}", "data.synthetic_videos=40", "data.synthetic_seed=3", f"train.output_dir={out}",
        "data.synthetic_options={}", MICRO_ARCH, "model.temporal.layers=1", "data.max_frames=4",
        "train.batch_size=8", "train.max_steps=4", "train.eval_every=2", "train.log_every=1",
        "train.tensorboard=false", "data.augment=false", "data.workers=0", "model.scorer.context=words",
        "train.device=cpu", *extra])


def micro_model(cfg, seed: int = 42) -> GareModel:
    torch.manual_seed(seed)  # what the trainer does before building the model: the random towers depend on it
    return GareModel(cfg.model).eval()


@pytest.fixture(scope="module")
def caches(shapes_dir, tmp_path_factory):
    """The same micro features in float32 and float16 (towers: seed 42, the trainer's default)."""
    root = tmp_path_factory.mktemp("features")
    out = {}
    for dtype in ("float32", "float16"):
        cfg = micro_cfg(shapes_dir, root / "run")
        torch.manual_seed(42)
        out[dtype] = extract_features(cfg, root / f"f_{dtype}.safetensors", dtype=dtype)
    return out


def test_cache_holds_every_split_text_with_exact_word_embeddings(shapes_dir, caches, tmp_path):
    cfg = micro_cfg(shapes_dir, tmp_path)
    model = micro_model(cfg)
    data = load_data(cfg, image_size=model.image_size)
    cache = load_features(caches["float32"], model, cfg, data)
    for name, sp in data.splits.items():
        texts = sp.queries()[0] if name != "train" else sorted({c for _, c in sp.train_pairs()})
        rows = cache.text_rows(texts, name)
        t, w, m = model.encode_text(texts, return_words=True)
        assert torch.equal(cache.text[rows], t) and torch.equal(cache.words[rows], w)
        assert torch.equal(cache.word_mask[rows], m)
        assert cache.words.shape[1:] == (cfg.model.backbone.max_words, model.embed_dim)


def test_cached_evaluation_equals_tower_evaluation_float32_and_float16_agreement(shapes_dir, caches, tmp_path):
    from gare.data.loader import VideoDataset, collate
    from gare.data.video import FrameTransform

    cfg = micro_cfg(shapes_dir, tmp_path)
    model = micro_model(cfg)
    data = load_data(cfg, image_size=model.image_size)
    sp = data.splits["test"]
    texts, qv = sp.queries()
    t, w, wm = encode_texts(model, texts, return_words=True)
    vds = VideoDataset(sp, framerate=cfg.data.framerate, max_frames=cfg.data.max_frames,
                       transform=FrameTransform(model.image_size, train=False), store=data.store)
    v, m = encode_videos(model, vds, collate=collate)
    S_tower = model.similarity(t, v, m, words=w, word_mask=wm)
    scores = {}
    for dtype, path in caches.items():
        enc = encode_split_cached(model, FeatureCache(path), sp, words=True)
        assert enc.query_video == list(qv)
        scores[dtype] = model.similarity(enc.t, enc.v, enc.mask, words=enc.words, word_mask=enc.word_mask)
    assert (scores["float32"] - S_tower).abs().max() < 1e-5
    diff = float((scores["float16"] - scores["float32"]).abs().max())
    same_top1 = float((scores["float16"].argmax(1) == scores["float32"].argmax(1)).float().mean())
    r1 = {k: t2v_v2t_metrics(s, qv)["t2v"]["R1"] for k, s in scores.items()}
    print(f"float16 vs float32 cache: max |score diff| {diff:.2e}, same top-1 {same_top1:.3f}, R@1 {r1}")
    assert 0 < diff < 5e-3 and same_top1 >= 0.9
    assert abs(r1["float16"] - r1["float32"]) <= 100.0 / len(texts) * 2


def test_word_context_trains_validates_and_tests_from_the_cache_without_towers(shapes_dir, caches, tmp_path,
                                                                                monkeypatch):
    from gare.train.trainer import train

    def no_towers(*a, **k):
        raise AssertionError("the towers ran although every feature is cached")

    monkeypatch.setattr(ClipBackbone, "encode_text", no_towers)
    monkeypatch.setattr(ClipBackbone, "encode_frames", no_towers)
    res = train(micro_cfg(shapes_dir, tmp_path / "run", f"train.features={caches['float16']}"),
                show_progress=False)
    assert 0.0 <= res["test"]["t2v"]["R1"] <= 100.0 and res["test"]["n_queries"] == 32
    val = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["kind"] == "val"]
    # the validation geometry of a word-context model includes the Delta-corrected measures
    assert len(val) == 2 and all(0.0 < r["geo_gap"] < 2.0 and "geo_gap_corrected" in r for r in val)

    # `gare eval` of the run reads the same cache (the run config names it): the trainer's test numbers exactly,
    # and QB-Norm's bank of training captions carries their word embeddings
    from gare.evaluate.metrics import t2v_v2t_metrics as metrics
    from gare.evaluate.postprocess import qb_norm
    from gare.evaluate.run import evaluate_checkpoint
    from gare.model.factory import load_model

    out = tmp_path / "eval"
    ev = evaluate_checkpoint(tmp_path / "run", qb_norm=True, out=out, device="cpu")
    assert ev["features"] == str(caches["float16"]) and ev["t2v"] == res["test"]["t2v"]
    model = load_model(tmp_path / "run" / "best.safetensors")
    cache = FeatureCache(caches["float16"])
    cfg = micro_cfg(shapes_dir, tmp_path / "run")
    data = load_data(cfg)
    bank_texts = sorted({c for _, c in data.splits["train"].train_pairs()})
    rows = cache.text_rows(bank_texts, "bank")
    enc = encode_split_cached(model, cache, data.splits["test"], words=True)
    bank = model.similarity(cache.text[rows], enc.v, enc.mask, words=cache.words[rows],
                            word_mask=cache.word_mask[rows], fast=False)
    stored = torch.load(out / "qb_bank_test.pt")
    torch.testing.assert_close(stored["bank"], bank, atol=1e-5, rtol=0)
    S = model.similarity(enc.t, enc.v, enc.mask, words=enc.words, word_mask=enc.word_mask)
    qb = ev["extra"]["QB-Norm (post-processing, not in the paper's numbers)"]["t2v"]
    assert qb == pytest.approx(metrics(qb_norm(S, bank), enc.query_video)["t2v"], abs=1e-9)
    # a bank stored for other weights is recomputed, not reused
    torch.save({"key": {**stored["key"], "weights_sha256": "other"}, "bank": torch.zeros_like(bank)},
               out / "qb_bank_test.pt")
    evaluate_checkpoint(tmp_path / "run", qb_norm=True, out=out, device="cpu")
    torch.testing.assert_close(torch.load(out / "qb_bank_test.pt")["bank"], stored["bank"], atol=0, rtol=0)
    # without the cache the towers run (and are refused here): --features none
    with pytest.raises(AssertionError, match="the towers ran"):
        evaluate_checkpoint(tmp_path / "run", features="none", device="cpu")


def test_stale_cache_refusals_name_the_difference_and_the_rebuild_command(shapes_dir, caches, tmp_path):
    import shutil

    cfg = micro_cfg(shapes_dir, tmp_path)
    model = micro_model(cfg)
    data = load_data(cfg, image_size=model.image_size)
    path = caches["float16"]
    load_features(path, model, cfg, data)  # the matching run is accepted

    def refused(match, *, c=cfg, mdl=model, d=data, p=path):
        with pytest.raises(ConfigError, match=match) as e:
            load_features(p, mdl, c, d, rebuild="gare data features R.yaml --out X")
        assert "gare data features R.yaml --out X" in str(e.value)

    # other tower weights (the random towers of another seed): the old settings check accepted this
    refused("weights_sha256", mdl=micro_model(cfg, seed=7))
    # frame sampling, decoder and text settings
    refused("framerate", c=micro_cfg(shapes_dir, tmp_path, "data.framerate=2.0"))  # the recipe samples 1 fps
    refused("max_frames", c=micro_cfg(shapes_dir, tmp_path, "data.max_frames=3"))
    refused("decoder", c=micro_cfg(shapes_dir, tmp_path, "data.decoder=opencv"))
    c = micro_cfg(shapes_dir, tmp_path, "model.backbone.max_words=12")
    refused("max_words", c=c, mdl=micro_model(c))
    # another rendering of the same video folder (the generator's format version or options changed)
    other = tmp_path / "shapes_copy"
    shutil.copytree(shapes_dir, other, ignore=shutil.ignore_patterns("*.store"))
    man = json.loads((other / "manifest.json").read_text())
    man["format_version"] = man["format_version"] - 1
    (other / "manifest.json").write_text(json.dumps(man))
    c = micro_cfg(other, tmp_path)
    refused("videos.format_version: cache 2, run 1", c=c, d=_data_without_generation(other))
    # a cache of the previous format (no key) and a cache without word embeddings for a word-context model
    old = tmp_path / "v1.safetensors"
    save_file({"frames": torch.zeros(1, 4, 16), "mask": torch.ones(1, 4, dtype=torch.uint8),
               "text": torch.zeros(1, 16)}, str(old), metadata={"video_ids": "[]", "captions": "[]",
                                                                "settings": "{}"})
    refused("format: cache 'gare-features-v1'", p=old)
    torch.manual_seed(42)
    nowords = extract_features(micro_cfg(shapes_dir, tmp_path / "r"), tmp_path / "nowords.safetensors", words=False)
    refused("no word embeddings", p=nowords)
    assert FeatureCache(nowords).words is None
    frames_cfg = micro_cfg(shapes_dir, tmp_path, "model.scorer.context=frames")
    load_features(nowords, model, frames_cfg, data)  # a frame-context model does not need them
    assert features_fingerprint(nowords) != features_fingerprint(path)


def _data_without_generation(root):
    """The run data of a copied folder whose manifest was edited (load_data would regenerate it)."""
    from gare.pipeline import RunData

    return RunData(splits={}, store=None, annotations=str(root / "annotations.jsonl"), videos=str(root))
