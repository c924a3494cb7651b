"""The fast exact scorer equals the plain per-pair reference (PairScorer.forward) for every option."""

import copy
import itertools

import pytest
import torch
from torch import nn

from gare.config import PsiConfig, ScorerConfig
from gare.model import PairScorer
from gare.model.fast_scorer import (
    PAIRS_PER_BLOCK,
    block_sizes,
    fast_pair_similarity,
    fast_similarity,
    reference_is_cheaper,
    supports,
    supports_pairs,
)

D, F_, L = 32, 5, 7
N_T, N_V = 6, 9
TOL32 = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-initial parameters: LayerNorm gains around 1, biases (LayerNorm and Linear) non-zero,
    weights with unit-scale rows (so psi's increments are not small next to t)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return module


def _scorer(seed=0, heads=1, layers=1, **kw) -> PairScorer:
    torch.manual_seed(seed)
    sc = PairScorer(ScorerConfig(psi=PsiConfig(heads=heads, layers=layers), **kw), D)
    return _randomize(sc, seed).eval()


def _inputs(seed=0, masked=False, n_t=N_T, n_v=N_V):
    g = torch.Generator().manual_seed(seed + 100)
    t = torch.randn(n_t, D, generator=g)
    f = torch.randn(n_v, F_, D, generator=g)
    words = torch.randn(n_t, L, D, generator=g)
    vm = wm = None
    if masked:
        vm = torch.rand(n_v, F_, generator=g) > 0.4
        vm[:, 0] = True
        vm[0] = True  # one video without padding
        wm = torch.rand(n_t, L, generator=g) > 0.4
        wm[:, 0] = True
        f[~vm] = 50.0 * torch.randn(int((~vm).sum()), D, generator=g)  # padded slots hold junk
    return t, f, vm, words, wm


def _reference(sc: PairScorer, t, f, vm, words, wm, dtype=torch.float64):
    ref = copy.deepcopy(sc).to(dtype).eval()
    with torch.no_grad():
        return ref(t.to(dtype), f.to(dtype), vm, words.to(dtype), wm.to(dtype) if wm is not None else None).sim


STRUCTURAL = list(itertools.product(["text", "mean"], ["gap", "text"], ["frames", "words"], ["text", "video"]))


@pytest.mark.parametrize("pooling,query,context,side", STRUCTURAL)
def test_fast_equals_reference_every_option(pooling, query, context, side):
    """16 structural combinations x (eta +-1, heads 1/4, layers 1/2, padded or not) = 256 configurations."""
    for k, (eta, heads, layers, masked) in enumerate(itertools.product([1.0, -1.0], [1, 4], [1, 2], [False, True])):
        sc = _scorer(seed=k, heads=heads, layers=layers, pooling=pooling, query=query, context=context, side=side,
                     eta=eta)
        assert supports(sc)
        t, f, vm, words, wm = _inputs(seed=k, masked=masked)
        ref64 = _reference(sc, t, f, vm, words, wm)
        ref32 = _reference(sc, t, f, vm, words, wm, torch.float32)
        fast32 = fast_similarity(sc, t, f, vm, words=words, word_mask=wm, auto_reference=False)
        fast64 = fast_similarity(sc.double(), t.double(), f.double(), vm, words=words.double(), word_mask=wm,
                                 auto_reference=False)
        sc.float()
        label = f"eta={eta} heads={heads} layers={layers} masked={masked}"
        assert fast32.dtype == torch.float32 and fast32.shape == (N_T, N_V)
        assert (fast32.double() - ref64).abs().max() < TOL32, label
        assert (fast32 - ref32).abs().max() < TOL32, label
        # the algebra is exact: in float64 only rounding separates the two
        assert (fast64 - ref64).abs().max() < 1e-11, label
        # scores are spread out (the test would catch a constant or a transposed matrix)
        assert ref64.std() > 0.05


def test_no_delta_baseline_matches_reference():
    for pooling, masked in itertools.product(["text", "mean"], [False, True]):
        sc = PairScorer(ScorerConfig(use_delta=False, pooling=pooling), D).eval()
        t, f, vm, words, wm = _inputs(masked=masked)
        assert supports(sc)
        assert (fast_similarity(sc, t, f, vm).double() - _reference(sc, t, f, vm, words, wm)).abs().max() < TOL32


def test_padded_frame_contents_do_not_matter():
    sc = _scorer(seed=3, heads=2, layers=2)
    t, f, vm, words, wm = _inputs(seed=3, masked=True)
    f2 = f.clone()
    f2[~vm] = -7.0
    a = fast_similarity(sc, t, f, vm)
    b = fast_similarity(sc, t, f2, vm)
    assert (a - b).abs().max() < 1e-6
    # and a fully valid mask differs from the padded one (the mask is really used)
    assert (fast_similarity(sc, t, f, None) - a).abs().max() > 1e-3


@pytest.mark.parametrize("context", ["frames", "words"])
def test_blocks_sized_by_budget_give_the_same_matrix(context):
    sc = _scorer(seed=5, heads=2, context=context)
    t, f, vm, words, wm = _inputs(seed=5, masked=True, n_t=23, n_v=31)
    whole = fast_similarity(sc, t, f, vm, words=words, word_mask=wm, memory_budget=2**30)
    tiny = fast_similarity(sc, t, f, vm, words=words, word_mask=wm, memory_budget=30_000)
    assert (whole - tiny).abs().max() < 1e-6
    assert (whole.double() - _reference(sc, t, f, vm, words, wm)).abs().max() < TOL32


def test_block_sizes_follow_the_budget():
    big = block_sizes(5000, 1000, 512, 12, 12, 1, 1, False, 4, 2 * 2**30)
    assert PAIRS_PER_BLOCK // 2 <= big[0] * big[1] <= PAIRS_PER_BLOCK  # cache-sized blocks
    small = block_sizes(5000, 1000, 512, 12, 12, 1, 1, False, 4, 8 * 2**20)
    assert big[0] * big[1] > 4 * small[0] * small[1]
    assert block_sizes(10, 10, 512, 12, 12, 1, 1, False, 4, 1) == (1, 1)
    assert block_sizes(10, 7, 32, 5, 5, 1, 1, False, 4, 2**40) == (10, 7)


def test_training_mode_scorer_gets_inference_scores():
    """Dropout is active in training; the fast path always computes the eval-mode numbers."""
    sc = _scorer(seed=1)
    t, f, vm, words, wm = _inputs(seed=1)
    ref = _reference(sc, t, f, vm, words, wm)
    sc.train()
    assert (fast_similarity(sc, t, f, vm).double() - ref).abs().max() < TOL32
    assert sc.training  # left as it was


def test_psi_with_standard_names_but_no_biases_or_affine():
    """Linear layers without bias and LayerNorms without affine parameters are read through the
    standard names."""
    sc = _scorer(seed=2, heads=2, layers=2)
    layer = sc.psi.layers[1]
    layer.cross_attn.q_proj = nn.Linear(D, D, bias=False)
    layer.linear1 = nn.Linear(D, D, bias=False)
    layer.layer_norm2 = nn.LayerNorm(D, elementwise_affine=False)
    sc.psi.layers[0].layer_norm3 = nn.LayerNorm(D, eps=1e-3)
    _randomize(sc, seed=9)
    sc.eval()
    assert supports(sc)
    t, f, vm, words, wm = _inputs(seed=2, masked=True)
    assert (fast_similarity(sc, t, f, vm).double() - _reference(sc, t, f, vm, words, wm)).abs().max() < TOL32


def test_unsupported_configurations_are_refused():
    sc = _scorer()
    sc.cfg.pooling = "max"
    assert not supports(sc)
    with pytest.raises(ValueError, match="does not cover"):
        fast_similarity(sc, *_inputs()[:3])
    sc = _scorer()
    sc.psi.mean_proj = nn.Identity()  # not the standard psi
    assert not supports(sc)
    sc = _scorer(context="words")
    assert supports(sc) and not supports_pairs(sc)
    t, f, vm, words, wm = _inputs()
    with pytest.raises(ValueError, match="word embeddings"):
        fast_similarity(sc, t, f, vm)
    with pytest.raises(ValueError, match="words must be"):
        fast_similarity(sc, t, f, vm, words=words[:2])


def test_half_precision_inputs_are_computed_in_float32():
    sc = _scorer(seed=4)
    t, f, vm, words, wm = _inputs(seed=4)
    out = fast_similarity(sc, t.bfloat16(), f.bfloat16(), vm)
    assert out.dtype == torch.bfloat16
    exact = fast_similarity(sc, t.bfloat16().float(), f.bfloat16().float(), vm)
    assert (out.float() - exact).abs().max() < 1e-2  # bf16 output rounding only


@pytest.mark.parametrize("pooling,query,side", list(itertools.product(["text", "mean"], ["gap", "text"],
                                                                        ["text", "video"])))
def test_pair_scores_equal_the_matrix(pooling, query, side):
    sc = _scorer(seed=6, heads=2, layers=2, pooling=pooling, query=query, side=side)
    t, f, vm, words, wm = _inputs(seed=6, masked=True, n_t=11, n_v=13)
    full = fast_similarity(sc, t, f, vm)
    g = torch.Generator().manual_seed(0)
    idx = torch.full((13, 11), -1, dtype=torch.long)
    for j in range(13):  # a different number of texts per video, valid entries first
        n = int(torch.randint(0, 12, (1,), generator=g))
        idx[j, :n] = torch.randperm(11, generator=g)[:n]
    for budget in (2**30, 20_000):
        S = fast_pair_similarity(sc, t, f, vm, idx, memory_budget=budget)
        valid = idx >= 0
        vids = torch.arange(13)[:, None].expand_as(idx)
        assert (S[valid] - full[idx[valid], vids[valid]]).abs().max() < 1e-6
        assert torch.isnan(S[~valid]).all()


@pytest.mark.parametrize("context", ["frames", "words"])
def test_few_texts_use_the_cheaper_reference_with_the_same_scores(context):
    sc = _scorer(seed=7, context=context)
    t, f, vm, words, wm = _inputs(seed=7, masked=True)
    # frame context: 1 text vs F=5 frames per video -> the reference is cheaper; 6 texts -> the fast path
    assert reference_is_cheaper(sc, 1, N_V, F_, L) == (context == "frames")
    assert not reference_is_cheaper(sc, N_T, N_V, F_, L)
    assert reference_is_cheaper(sc, N_T, 1, F_, L) == (context == "words")
    ref = _reference(sc, t, f, vm, words, wm)
    for n_t, n_v in ((1, N_V), (N_T, 1)):
        for auto in (True, False):
            out = fast_similarity(sc, t[:n_t], f[:n_v], vm[:n_v], words=words[:n_t], word_mask=wm[:n_t],
                                  auto_reference=auto)
            assert (out.double() - ref[:n_t, :n_v]).abs().max() < TOL32
    assert not sc.training
    nd = PairScorer(ScorerConfig(use_delta=False), D)
    assert not reference_is_cheaper(nd, 1, 1, F_)
