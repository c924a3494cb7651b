"""Golden outputs: a committed nano checkpoint and the embeddings and scores it gave when it was made
(tests/golden/make_golden.py). A change of the checkpoint format, of the tokenizer or of any numerics
fails here; regenerate the files only for an intended change, and say so in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import gare

GOLDEN = Path(__file__).resolve().parent / "golden"
TOL = dict(rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN / "expected.safetensors"), framework="pt") as fh:
        texts = json.loads(fh.metadata()["texts"])
        exp = {k: fh.get_tensor(k) for k in fh.keys()}
    return texts, exp


@pytest.fixture(scope="module")
def model():
    return gare.load_model(GOLDEN / "model.safetensors")


def test_golden_checkpoint_is_small_and_reloads_its_config(model):
    assert (GOLDEN / "model.safetensors").stat().st_size < 1_000_000
    assert model.embed_dim == 8 and model.image_size == 32 and model.cfg.temporal.kind == "seqTransf"
    assert model.cfg.scorer.use_delta and not model.training


def test_golden_embeddings_and_scores(model, golden):
    texts, exp = golden
    frames, mask = exp["frames"], exp["mask"].bool()
    with torch.no_grad():
        t = model.encode_text(texts)
        v = model.encode_video(frames, mask)
        torch.testing.assert_close(t, exp["text"], **TOL)
        torch.testing.assert_close(v, exp["video"], **TOL)
        torch.testing.assert_close(model.mean_video(v, mask), exp["vbar"], **TOL)
        torch.testing.assert_close(model.similarity(t, v, mask), exp["similarity"], **TOL)  # fast scorer
        torch.testing.assert_close(model.similarity(t, v, mask, fast=False), exp["similarity"], **TOL)  # reference


def test_golden_scores_depend_on_psi(golden):
    """The golden model's increments move the scores well beyond the tolerance, so a scorer drift shows."""
    texts, exp = golden
    plain = gare.load_model(GOLDEN / "model.safetensors", use_delta=False)
    with torch.no_grad():
        s = plain.similarity(plain.encode_text(texts), plain.encode_video(exp["frames"], exp["mask"].bool()),
                             exp["mask"].bool())
    assert (s - exp["similarity"]).abs().max() > 1e-2
