"""DSL and QB-Norm on small matrices with known results."""

import math

import numpy as np
import pytest
import torch

from gare.evaluate import dual_softmax, qb_norm, retrieval_metrics


def test_dual_softmax_hand_computed():
    a, b, c, d = 0.3, -0.2, 0.1, 0.4
    temp = 0.5
    sim = torch.tensor([[a, b], [c, d]], dtype=torch.float64)
    out = dual_softmax(sim, temperature=temp)
    col0 = math.exp(a / temp) + math.exp(c / temp)
    col1 = math.exp(b / temp) + math.exp(d / temp)
    expected = [
        [a * math.exp(a / temp) / col0, b * math.exp(b / temp) / col1],
        [c * math.exp(c / temp) / col0, d * math.exp(d / temp) / col1],
    ]
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [pytest.approx(r, abs=1e-12) for r in expected]


def test_dual_softmax_fixes_a_hub_and_keeps_numpy_type():
    # both queries prefer gallery item 0 (a hub); query 0 is really about item 1
    sim = np.array([[0.9, 0.8], [0.85, 0.3]])
    gt = [1, 0]
    assert retrieval_metrics(sim, gt)["R1"] == 50.0
    out = dual_softmax(sim, temperature=0.1)
    assert isinstance(out, np.ndarray)
    p00 = math.exp(9) / (math.exp(9) + math.exp(8.5))
    p01 = math.exp(8) / (math.exp(8) + math.exp(3))
    assert out[0, 0] == pytest.approx(0.9 * p00) and out[0, 1] == pytest.approx(0.8 * p01)
    assert retrieval_metrics(out, gt)["R1"] == 100.0
    with pytest.raises(ValueError, match="temperature"):
        dual_softmax(sim, temperature=0.0)


BANK = np.array([[0.9, 0.5, 0.2], [0.8, 0.4, 0.3]])  # both bank queries retrieve gallery item 0 first


def test_qb_norm_hand_computed():
    beta = 20.0
    log_z = [
        math.log(math.exp(18) + math.exp(16)),
        math.log(math.exp(10) + math.exp(8)),
        math.log(math.exp(4) + math.exp(6)),
    ]
    sim = np.array(
        [
            [0.6, 0.55, 0.1],  # top-1 is item 0, in the activation set {0}: normalised
            [0.1, 0.2, 0.7],  # top-1 is item 2, not activated: unchanged
        ]
    )
    out = qb_norm(sim, BANK, k=1, beta=beta)
    assert isinstance(out, np.ndarray)
    assert out[0].tolist() == pytest.approx([beta * s - lz for s, lz in zip(sim[0], log_z)], abs=1e-9)
    assert out[1].tolist() == sim[1].tolist()
    # the hub lost the first query: its new top-1 is item 1
    assert int(np.argmax(out[0])) == 1
    # the log-space values are the log of exp(beta s) / Z_g
    ratio = [math.exp(beta * s) / math.exp(lz) for s, lz in zip(sim[0], log_z)]
    assert np.exp(out[0]).tolist() == pytest.approx(ratio, rel=1e-9)


def test_qb_norm_activation_set_with_k():
    # with k=2 the activation set is {0, 1}: a query whose top-1 is item 1 is now normalised
    sim = torch.tensor([[0.1, 0.6, 0.5]], dtype=torch.float64)
    unchanged = qb_norm(sim, BANK, k=1, beta=20.0)
    assert torch.equal(unchanged, sim)
    changed = qb_norm(sim, torch.from_numpy(BANK), k=2, beta=20.0)
    lz2 = math.log(math.exp(4) + math.exp(6))
    assert changed[0, 2].item() == pytest.approx(20 * 0.5 - lz2, abs=1e-9)
    assert int(changed.argmax()) == 2  # item 1 is a hub for the bank (Z large), item 2 wins
    with pytest.raises(ValueError, match="gallery columns"):
        qb_norm(sim, BANK[:, :2])
    with pytest.raises(ValueError, match="k must be"):
        qb_norm(sim, BANK, k=4)
