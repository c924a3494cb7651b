"""Two-stage retrieval: stage-1 cosine ranking, exact GARE rerank of the top K, top-n agreement."""

import copy

import pytest
import torch
from torch import nn

from gare.config import PsiConfig, ScorerConfig
from gare.model import PairScorer
from gare.model.scorer import masked_mean
from gare.model.two_stage import (
    OUTSIDE_OFFSET,
    candidates_by_video,
    stage1_similarity,
    topk_agreement,
    two_stage_similarity,
)

D, F_ = 32, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


class _Model(nn.Module):
    """The slice of GareModel that two-stage retrieval uses (scorer + similarity), without CLIP towers."""

    def __init__(self, **scorer_kw):
        super().__init__()
        torch.manual_seed(0)
        self.scorer = PairScorer(ScorerConfig(psi=PsiConfig(heads=2), **scorer_kw), D)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in self.scorer.named_parameters():
                if name.endswith("weight") and p.dim() == 1:
                    p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        self.eval()

    def similarity(self, t, v, video_mask=None, *, words=None, word_mask=None, fast=True,
                   memory_budget=256 * 2**20, two_stage_k=None):
        from gare.model.fast_scorer import fast_similarity, supports

        if two_stage_k is not None:
            return two_stage_similarity(self, t, v, video_mask, k=two_stage_k, words=words, word_mask=word_mask,
                                        fast=fast, memory_budget=memory_budget)
        if fast and supports(self.scorer):
            return fast_similarity(self.scorer, t, v, video_mask, words=words, word_mask=word_mask,
                                   memory_budget=memory_budget)
        return self.scorer.similarity(t, v, video_mask, words=words, word_mask=word_mask)


def _data(n_t=17, n_v=23, seed=0, masked=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n_t, D, generator=g)
    v = torch.randn(n_v, F_, D, generator=g)
    vm = None
    if masked:
        vm = torch.rand(n_v, F_, generator=g) > 0.3
        vm[:, 0] = True
    words = torch.randn(n_t, 6, D, generator=g)
    return t, v, vm, words


def test_stage1_is_cosine_with_masked_mean():
    t, v, vm, _ = _data()
    s1 = stage1_similarity(t, v, vm)
    vbar = masked_mean(v, vm)
    i, j = 3, 5
    expect = torch.dot(t[i], vbar[j]) / (t[i].norm() * vbar[j].norm())
    assert abs(float(s1[i, j] - expect)) < 1e-6


@pytest.mark.parametrize("k", [23, 24, 100])
def test_k_at_least_n_videos_is_exhaustive_exactly(k):
    m = _Model()
    t, v, vm, _ = _data()
    assert torch.equal(two_stage_similarity(m, t, v, vm, k=k), m.similarity(t, v, vm))


@pytest.mark.parametrize("k", [2, 5])  # 2 of 23 videos: per-pair rerank; 5 of 23 (>= DENSE_FRACTION): dense
@pytest.mark.parametrize("context", ["frames", "words"])
@pytest.mark.parametrize("fast", [True, False])
def test_rerank_gives_exact_scores_on_the_candidates(context, fast, k):
    m = _Model(context=context)
    t, v, vm, words = _data()
    exact = m.similarity(t, v, vm, words=words, fast=False)
    S = two_stage_similarity(m, t, v, vm, k=k, words=words, fast=fast)
    s1 = stage1_similarity(t, v, vm)
    cand = s1.topk(k, dim=1).indices
    inside = torch.zeros_like(S, dtype=torch.bool).scatter_(1, cand, True)
    assert (S[inside] - exact[inside]).abs().max() < 1e-5
    assert torch.allclose(S[~inside], s1[~inside] - OUTSIDE_OFFSET)
    # every reranked score is above every other one of its row
    low_in = S.masked_fill(~inside, float("inf")).min(dim=1).values
    high_out = S.masked_fill(inside, float("-inf")).max(dim=1).values
    assert bool((low_in > high_out).all())
    # the two rerank paths (pairs grouped by video / blocks of texts) agree
    other = two_stage_similarity(m, t, v, vm, k=k, words=words, fast=not fast)
    assert (S - other).abs().max() < 1e-5


@pytest.mark.parametrize("masked", [True, False])
def test_dense_rerank_equals_the_per_pair_rerank(monkeypatch, masked):
    """Above DENSE_FRACTION of the videos the fast rerank scores every pair densely and keeps the candidates'
    scores: the same matrix as the per-pair path, to rounding."""
    import gare.model.two_stage as ts

    m = _Model()
    t, v, vm, _ = _data(masked=masked)
    calls = []
    per_pair = ts.fast_pair_similarity
    monkeypatch.setattr(ts, "fast_pair_similarity", lambda *a, **kw: calls.append(1) or per_pair(*a, **kw))
    monkeypatch.setattr(ts, "DENSE_FRACTION", 0.0)
    dense = two_stage_similarity(m, t, v, vm, k=3)
    assert calls == []  # the dense path
    monkeypatch.setattr(ts, "DENSE_FRACTION", 2.0)
    pairs = two_stage_similarity(m, t, v, vm, k=3)
    assert calls == [1]  # the per-pair path
    assert (dense - pairs).abs().max() < 1e-6
    s1 = stage1_similarity(t, v, vm)
    outside = torch.ones_like(s1, dtype=torch.bool).scatter_(1, s1.topk(3, dim=1).indices, False)
    assert torch.equal(dense[outside], pairs[outside])  # the non-candidates keep stage-1 - 3 exactly


def test_two_stage_recovers_the_top_n_when_stage1_holds_it():
    """Videos built so the GARE top 3 of each text is inside its stage-1 top K: same top 3 ranking."""
    m = _Model()
    t, v, vm, _ = _data(n_t=12, n_v=40, masked=False)
    exact = m.similarity(t, v, vm)
    s1 = stage1_similarity(t, v, vm)
    top3 = exact.topk(3, dim=1).indices
    rank1 = s1.argsort(dim=1, descending=True).argsort(dim=1)  # stage-1 rank of every video
    k = int(rank1.gather(1, top3).max()) + 1
    assert k < 40
    S = two_stage_similarity(m, t, v, vm, k=k)
    assert torch.equal(S.topk(3, dim=1).indices, top3)
    assert topk_agreement(exact, S, n=3) == 1.0


def test_topk_agreement_on_constructed_cases():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
                      [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    assert topk_agreement(a, a, n=3) == 1.0
    assert topk_agreement(a, -a, n=3) == 0.0
    # row 0: top-2 {0,1} vs {0,2} -> 1/2 ; row 1: top-2 {5,4} vs {5,4} -> 1
    b = torch.tensor([[5.0, 3.0, 4.0, 2.0, 1.0, 0.0],
                      [0.0, 1.0, 2.0, 3.0, 4.5, 5.0]])
    assert topk_agreement(a, b, n=2) == pytest.approx(0.75)
    # order inside the top n does not matter; n is capped at the number of videos
    c = torch.tensor([[4.0, 5.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 5.0, 4.0]])
    assert topk_agreement(a, c, n=2) == 1.0
    assert topk_agreement(a, -a, n=100) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        topk_agreement(a, a[:, :3])


def test_candidates_by_video_inverts_the_lists():
    cand = torch.tensor([[2, 0], [2, 1], [0, 2]])
    out = candidates_by_video(cand, 4)
    assert out.tolist() == [[0, 2, -1], [1, -1, -1], [0, 1, 2], [-1, -1, -1]]


def test_two_stage_leaves_the_training_flag_and_rejects_bad_k():
    m = _Model()
    m.scorer.train()
    t, v, vm, _ = _data()
    before = copy.deepcopy(m.scorer.state_dict())
    two_stage_similarity(m, t, v, vm, k=3)
    assert m.scorer.training
    assert all(torch.equal(before[k], x) for k, x in m.scorer.state_dict().items())
    with pytest.raises(ValueError, match="K must be"):
        two_stage_similarity(m, t, v, vm, k=0)


def test_gare_model_two_stage_option(tiny_model):
    """GareModel.similarity(two_stage_k=...) routes to the two-stage scorer."""
    D_m = tiny_model.embed_dim
    g = torch.Generator().manual_seed(3)
    t = torch.randn(9, D_m, generator=g)
    v = torch.randn(14, 4, D_m, generator=g)
    full = tiny_model.similarity(t, v)
    S = tiny_model.similarity(t, v, two_stage_k=4)
    assert torch.equal(S, two_stage_similarity(tiny_model, t, v, None, k=4))
    assert torch.equal(tiny_model.similarity(t, v, two_stage_k=14), full)
    assert ((S >= -1.0).sum(dim=1) == 4).all()
