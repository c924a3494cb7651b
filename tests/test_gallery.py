"""The gallery path (cached per-video bases) equals the per-pair reference for every option, round-trips
through safetensors, slices, and refuses galleries of another model."""

import copy
import itertools

import pytest
import torch
from safetensors.torch import load_file, save_file

from gare.model.fast_scorer import build_gallery, fast_pair_similarity, fast_similarity, gallery_similarity
from gare.model.gallery import VideoGallery
from gare.model.two_stage import topk_agreement
from test_fast_scorer import STRUCTURAL, TOL32, _inputs, _reference, _scorer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _gallery_scores(sc, t, f, vm, words, wm, dtype=torch.float32):
    g = build_gallery(sc, f.to(dtype), vm)
    return gallery_similarity(sc, t.to(dtype), g, words=words.to(dtype), word_mask=wm)


@pytest.mark.parametrize("pooling,query,context,side", STRUCTURAL)
def test_gallery_equals_reference_every_option(pooling, query, context, side):
    """16 structural combinations x (eta +-1, heads 1/4/8, layers 1/2, padded or not) = 384 configurations."""
    for k, (eta, heads, layers, masked) in enumerate(itertools.product([1.0, -1.0], [1, 4, 8], [1, 2],
                                                                        [False, True])):
        sc = _scorer(seed=k, heads=heads, layers=layers, pooling=pooling, query=query, context=context, side=side,
                     eta=eta)
        t, f, vm, words, wm = _inputs(seed=k, masked=masked)
        ref64 = _reference(sc, t, f, vm, words, wm)
        label = f"eta={eta} heads={heads} layers={layers} masked={masked}"
        S = _gallery_scores(sc, t, f, vm, words, wm)
        assert S.dtype == torch.float32 and S.shape == ref64.shape
        assert (S.double() - ref64).abs().max() < TOL32, label
        S64 = _gallery_scores(sc.double(), t, f, vm, words, wm, torch.float64)  # the algebra is exact
        sc.float()
        assert (S64 - ref64).abs().max() < 1e-11, label
        assert ref64.std() > 0.05


def test_no_delta_gallery_matches_reference():
    from gare.config import ScorerConfig
    from gare.model import PairScorer

    for pooling, masked in itertools.product(["text", "mean"], [False, True]):
        sc = PairScorer(ScorerConfig(use_delta=False, pooling=pooling), 32).eval()
        t, f, vm, words, wm = _inputs(masked=masked)
        S = gallery_similarity(sc, t, build_gallery(sc, f, vm))
        assert (S.double() - _reference(sc, t, f, vm, words, wm)).abs().max() < TOL32


def test_gallery_blocks_slices_and_pairs():
    """Tiny memory budgets (many blocks), a slice of the gallery, and the pair path over a gallery give the
    same numbers as one dense call on the raw features."""
    sc = _scorer(seed=5, heads=4, layers=2)
    t, f, vm, words, wm = _inputs(seed=5, masked=True, n_t=23, n_v=31)
    whole = fast_similarity(sc, t, f, vm, auto_reference=False)
    g = build_gallery(sc, f, vm, memory_budget=30_000)
    assert (gallery_similarity(sc, t, g, memory_budget=30_000) - whole).abs().max() < 1e-6
    idx = torch.tensor([30, 2, 2, 17, 0])
    assert (gallery_similarity(sc, t, g[idx]) - whole[:, idx]).abs().max() < 1e-6
    assert (gallery_similarity(sc, t[:1], g[3:9]) - whole[:1, 3:9]).abs().max() < 1e-6
    text_idx = torch.full((31, 4), -1, dtype=torch.long)
    text_idx[::2, :3] = torch.tensor([0, 7, 22])
    S = fast_pair_similarity(sc, t, g, None, text_idx)
    S_raw = fast_pair_similarity(sc, t, f, vm, text_idx)
    valid = text_idx >= 0
    vids = torch.arange(31)[:, None].expand_as(text_idx)
    assert (S[valid] - whole[text_idx[valid], vids[valid]]).abs().max() < 1e-6
    assert (S_raw[valid] - S[valid]).abs().max() < 1e-6 and torch.isnan(S[~valid]).all()
    halves = VideoGallery.cat([g[:10], g[10:]])
    assert (gallery_similarity(sc, t, halves) - whole).abs().max() < 1e-6


def test_safetensors_round_trip(tmp_path):
    sc = _scorer(seed=3, heads=2, layers=2)
    t, f, vm, words, wm = _inputs(seed=3, masked=True)
    g = build_gallery(sc, f, vm)
    save_file(g.state_dict(), tmp_path / "g.safetensors")
    g2 = VideoGallery.from_state_dict(load_file(tmp_path / "g.safetensors"))
    assert g2.meta == g.meta and len(g2) == len(g) and g2.nbytes() == g.nbytes()
    assert torch.equal(gallery_similarity(sc, t, g2), gallery_similarity(sc, t, g))
    with pytest.raises(ValueError, match="no __meta__"):
        VideoGallery.from_state_dict({"tx": g.tx})
    bad = g.state_dict()
    bad["__meta__"] = torch.frombuffer(bytearray(b'{"format": "gare-gallery-v0"}'), dtype=torch.uint8)
    with pytest.raises(ValueError, match="is not 'gare-gallery-v1'"):
        VideoGallery.from_state_dict(bad)


@pytest.mark.parametrize("heads", [1, 4])
def test_float16_gallery_ranking_agreement(heads):
    """float16 rows: scores within 1e-2 of float32, top-10 rankings nearly unchanged (measured at scale by
    benchmarks/bench_gallery.py)."""
    sc = _scorer(seed=8, heads=heads, layers=1)
    t, f, vm, words, wm = _inputs(seed=8, masked=True, n_t=40, n_v=200)
    g32 = build_gallery(sc, f, vm)
    S32 = gallery_similarity(sc, t, g32)  # [40, 200]
    g16 = build_gallery(sc, f, vm, dtype=torch.float16)
    assert g16.dtype == torch.float16 and g16.stacks[0].dtype == torch.float32  # rows half, small matrices not
    rows = ["tx"] if heads == 1 else ["tx", "k0", "v_last"]  # single head: queries meet the frames themselves
    assert all(getattr(g16, n).nbytes * 2 == getattr(g32, n).nbytes for n in rows)
    assert (g32.k0 is None) == (heads == 1)
    S16 = gallery_similarity(sc, t, g16)
    assert S16.dtype == torch.float32
    assert (S16 - S32).abs().max() < 1e-2
    assert topk_agreement(S32, S16, n=10) > 0.9


def test_gallery_of_another_model_or_width_is_refused():
    sc = _scorer(seed=1, heads=2)
    t, f, vm, words, wm = _inputs(seed=1)
    g = build_gallery(sc, f, vm)
    other = _scorer(seed=2, heads=2)
    with pytest.raises(ValueError, match="different model or scorer configuration"):
        gallery_similarity(other, t, g)
    with pytest.raises(ValueError, match="the gallery's width"):
        gallery_similarity(sc, t[:, :16], g)
    with pytest.raises(ValueError, match=r"D = 32 \(the model's width\)"):
        build_gallery(sc, f[:, :, :16])
    # weights changed in place (a training step): the old gallery is refused, a new one is exact again
    with torch.no_grad():
        sc.psi.layers[0].linear1.weight.mul_(1.5)
    with pytest.raises(ValueError, match="weights_sha256"):
        gallery_similarity(sc, t, g)
    ref = _reference(sc, t, f, vm, words, wm)
    assert (gallery_similarity(sc, t, build_gallery(sc, f, vm)).double() - ref).abs().max() < TOL32
    with pytest.raises(TypeError, match="expected a VideoGallery"):
        gallery_similarity(sc, t, f)


def test_evaluation_scores_one_gallery_for_several_text_sets(tiny_model):
    """gare eval with QB-Norm scores the split's videos twice: protocol.cache_gallery builds their bases once."""
    from gare.evaluate.protocol import EncodedSplit, cache_gallery, score_rows

    torch.manual_seed(1)
    D = tiny_model.embed_dim
    t, v = torch.randn(6, D), torch.randn(5, 4, D)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 3] = False
    enc = EncodedSplit([f"q{i}" for i in range(6)], [0, 1, 2, 3, 4, 0], t, v, mask)
    S = score_rows(tiny_model, enc)
    cache_gallery(tiny_model, enc)
    assert isinstance(enc.gallery, VideoGallery) and len(enc.gallery) == 5
    torch.testing.assert_close(score_rows(tiny_model, enc), S, atol=1e-5, rtol=0)


def test_model_gallery_api(tiny_model):
    """model.gallery / model.similarity(t, g) / two-stage on a gallery, through the public model API."""
    torch.manual_seed(0)
    m = copy.deepcopy(tiny_model)
    D = m.embed_dim
    t = torch.randn(5, D)
    v = torch.randn(12, 4, D)
    mask = torch.ones(12, 4, dtype=torch.bool)
    mask[3, 2:] = False
    g = m.gallery(v, mask)
    assert len(g) == 12 and g.frames == 4 and g.dim == D and g.dtype == torch.float32
    S = m.similarity(t, v, mask)
    torch.testing.assert_close(m.similarity(t, g), S, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.similarity(t, g, fast=False), m.similarity(t, v, mask, fast=False), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(m.similarity(t[:1], g[[4, 3, 11]]), S[:1, [4, 3, 11]], atol=1e-5, rtol=0)
    torch.testing.assert_close(m.similarity(t, g, two_stage_k=4), m.similarity(t, v, mask, two_stage_k=4),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="holds its own frame mask"):
        m.similarity(t, g, mask)
    g16 = m.gallery(v, mask, dtype=torch.float16)
    assert g16.dtype == torch.float16 and (m.similarity(t, g16) - S).abs().max() < 1e-2
