"""Retrieval metrics: known matrices, ties, multi-positive ground truth, v2t with many captions."""

import itertools

import numpy as np
import pytest
import torch

from gare.evaluate import query_ranks, retrieval_metrics, t2v_v2t_metrics
from gare.evaluate.metrics import metrics_from_ranks


def test_perfect_matrix():
    m = retrieval_metrics(torch.eye(7))
    assert m == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "R50": 100.0, "MdR": 1.0, "MnR": 1.0}


def test_reversed_matrix():
    n = 7
    m = retrieval_metrics(1.0 - np.eye(n))  # the correct item always scores lowest
    assert m == {"R1": 0.0, "R5": 0.0, "R10": 100.0, "R50": 100.0, "MdR": 7.0, "MnR": 7.0}


def test_graded_ranks_1_to_60():
    n = 60
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    sim = np.where(j < i, 1.0, np.where(j == i, 0.5, 0.0))  # exactly i items above query i's correct one
    assert query_ranks(sim).tolist() == list(range(1, n + 1))
    m = retrieval_metrics(sim)
    assert m["R1"] == pytest.approx(100 / 60)
    assert m["R5"] == pytest.approx(500 / 60)
    assert m["R10"] == pytest.approx(1000 / 60)
    assert m["R50"] == pytest.approx(5000 / 60)
    assert m["MdR"] == 30.5 and m["MnR"] == 30.5
    # chunked processing gives the same ranks; torch and numpy inputs agree
    assert np.array_equal(query_ranks(sim, chunk_size=7), query_ranks(torch.from_numpy(sim)))


def test_constant_scorer_gets_worst_rank():
    n = 10
    sim = torch.zeros(n, n)
    m = retrieval_metrics(sim)
    assert m["R1"] == 0.0 and m["R5"] == 0.0 and m["MdR"] == 10.0 and m["MnR"] == 10.0
    assert retrieval_metrics(sim, ties="mean")["MnR"] == pytest.approx(5.5)
    # the optimistic mode shows the inflation the default avoids
    assert retrieval_metrics(sim, ties="optimistic")["R1"] == 100.0
    # a one-item gallery is trivially right
    assert retrieval_metrics(np.zeros((1, 1)))["R1"] == 100.0


def test_ties_hand_computed():
    # query 0: one wrong item above, two wrong items tied with the correct one (index 0)
    # query 1: clean rank 1
    sim = np.array([[0.5, 0.9, 0.5, 0.5, 0.1], [0.0, 0.8, 0.1, 0.2, 0.3]])
    gt = [0, 1]
    assert query_ranks(sim, gt).tolist() == [4.0, 1.0]
    assert query_ranks(sim, gt, ties="mean").tolist() == [3.0, 1.0]  # 1 + mean position among 3 = 1 + 2
    assert query_ranks(sim, gt, ties="optimistic").tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="ties"):
        query_ranks(sim, gt, ties="random")


def test_multi_positive_ground_truth():
    sim = np.array(
        [
            [0.9, 0.7, 0.8, 0.1],  # correct {1, 2}: best correct (0.8) has one item above -> rank 2
            [0.5, 0.5, 0.5, 0.0],  # correct {0, 1} tied with wrong item 2 at the top
            [0.1, 0.2, 0.3, 0.4],  # correct {3} -> rank 1
        ]
    )
    gt = np.array([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    assert query_ranks(sim, gt).tolist() == [2.0, 2.0, 1.0]
    assert query_ranks(sim, gt, ties="mean").tolist() == pytest.approx([2.0, 4 / 3, 1.0])
    assert query_ranks(sim, gt, ties="optimistic").tolist() == [2.0, 1.0, 1.0]
    m = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(gt))
    assert m["R1"] == pytest.approx(100 / 3) and m["MnR"] == pytest.approx(5 / 3) and m["MdR"] == 2.0


def _brute_force_ranks(scores, correct):
    """Positions of the first correct item over every ordering of the gallery consistent with scores."""
    n = len(scores)
    positions = []
    for perm in itertools.permutations(range(n)):
        order = sorted(range(n), key=lambda g: (-scores[g], perm.index(g)))
        positions.append(next(p for p, g in enumerate(order, 1) if correct[g]))
    return max(positions), sum(positions) / len(positions), min(positions)


def test_tie_modes_match_brute_force_over_orderings():
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 3, size=(12, 5)).astype(np.float32)
    gt = rng.random((12, 5)) < 0.35
    gt[np.arange(12), rng.integers(0, 5, size=12)] = True
    pess = query_ranks(sim, gt)
    mean = query_ranks(sim, gt, ties="mean")
    opt = query_ranks(sim, gt, ties="optimistic")
    for q in range(12):
        hi, avg, lo = _brute_force_ranks(sim[q].tolist(), gt[q].tolist())
        assert pess[q] == hi and opt[q] == lo
        assert mean[q] == pytest.approx(avg, abs=1e-12)


def test_integer_gt_rectangular_and_errors():
    sim = np.array([[0.1, 0.9, 0.3, 0.2, 0.0], [0.4, 0.3, 0.2, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    assert query_ranks(sim, [1, 2, 4]).tolist() == [1.0, 3.0, 1.0]
    assert query_ranks(sim, torch.tensor([1, 2, 4])).tolist() == [1.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(sim)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        retrieval_metrics(sim, [1, 2, 5])
    with pytest.raises(ValueError, match="one gallery index per query"):
        retrieval_metrics(sim, [1, 2])
    with pytest.raises(ValueError, match="no correct gallery item"):
        retrieval_metrics(sim, np.zeros((3, 5), dtype=bool))
    bad = sim.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, [1, 2, 4])
    with pytest.raises(ValueError, match="no queries"):
        metrics_from_ranks([])


def test_t2v_v2t_many_captions_per_video():
    # 5 texts, 2 videos; texts 0,1,2 describe video 0, texts 3,4 describe video 1
    query_video = [0, 0, 0, 1, 1]
    sim = np.array(
        [
            [0.9, 0.1],  # t2v rank 1
            [0.2, 0.3],  # t2v rank 2
            [0.6, 0.6],  # tie -> rank 2 (pessimistic)
            [0.1, 0.8],  # rank 1
            [0.7, 0.5],  # rank 2
        ]
    )
    out = t2v_v2t_metrics(sim, query_video)
    assert out["t2v"]["R1"] == pytest.approx(40.0)
    assert out["t2v"]["MnR"] == pytest.approx(8 / 5)
    assert out["t2v"]["MdR"] == 2.0
    # v2t: video 0 scores texts [0.9, 0.2, 0.6, 0.1, 0.7] -> best correct is text 0 (0.9) -> rank 1
    #      video 1 scores texts [0.1, 0.3, 0.6, 0.8, 0.5] -> best correct is text 3 (0.8) -> rank 1
    assert out["v2t"]["R1"] == 100.0 and out["v2t"]["MnR"] == 1.0
    assert out["RSum"] == pytest.approx(40 + 100 + 100 + 300)
    # v2t equals retrieval_metrics on the transpose with the explicit mask
    mask = np.arange(2)[:, None] == np.array(query_video)[None, :]
    assert out["v2t"] == retrieval_metrics(sim.T, mask)
    # make video 1's best caption lose to two captions of video 0
    sim2 = sim.copy()
    sim2[:, 1] = [0.95, 0.9, 0.1, 0.2, 0.3]
    assert t2v_v2t_metrics(sim2, query_video)["v2t"]["MnR"] == pytest.approx((1 + 3) / 2)
    with pytest.raises(ValueError, match="no text"):
        t2v_v2t_metrics(np.zeros((2, 3)), [0, 1])


def test_large_random_matches_sort_based_reference():
    # no ties with continuous random scores: every tie mode equals the argsort rank
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(300, 200, generator=g)
    gt = torch.randint(0, 200, (300,), generator=g)
    order = torch.argsort(sim, dim=1, descending=True)
    ref = (order == gt[:, None]).float().argmax(dim=1) + 1
    for ties in ("pessimistic", "mean", "optimistic"):
        assert np.array_equal(query_ranks(sim, gt, ties=ties, chunk_size=64), ref.double().numpy())
