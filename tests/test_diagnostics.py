"""Diagnostics on constructed inputs with known answers, and the gradient split against autograd."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gare.diagnostics import (
    alignment,
    anchor_gradient_split,
    angle_stats,
    ideal_increment_cos,
    modality_gap,
    uniformity,
)

D64 = torch.float64


def test_modality_gap_known_geometry():
    text = torch.tensor([[3.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # all along e1 after normalization
    video = np.array([[0.0, 2.0, 0.0], [0.0, 7.0, 0.0], [0.0, 1.0, 0.0]])  # all along e2
    g = modality_gap(text, video)
    assert g["gap"] == pytest.approx(math.sqrt(2))
    assert g["centroid_cos"] == pytest.approx(0.0, abs=1e-7)
    assert g["text_centroid_norm"] == pytest.approx(1.0) and g["video_centroid_norm"] == pytest.approx(1.0)
    # texts spread symmetrically: centroid at the origin, gap = |c_v| = 1
    spread = modality_gap(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]), video)
    assert spread["text_centroid_norm"] == pytest.approx(0.0) and spread["gap"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected"):
        modality_gap(text, torch.zeros(2, 4))


def test_alignment_and_uniformity_known_values():
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[5.0, 0.0], [0.0, -3.0]])  # distances after normalization: 0 and 2
    assert alignment(x, y) == pytest.approx(2.0)  # (0 + 4) / 2
    assert alignment(x, y, alpha=1) == pytest.approx(1.0)
    pts = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    # squared distances: two antipodal pairs (4), four orthogonal pairs (2)
    expected = math.log((2 * math.exp(-8) + 4 * math.exp(-4)) / 6)
    assert uniformity(pts) == pytest.approx(expected, abs=1e-6)
    assert uniformity(pts.double(), chunk_size=1) == pytest.approx(expected, abs=1e-12)
    # t=1 and a reference by explicit double loop on random points
    r = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=D64)
    u = F.normalize(r, dim=1)
    vals = [math.exp(-((u[i] - u[j]).norm().item() ** 2)) for i in range(9) for j in range(i + 1, 9)]
    assert uniformity(r, t=1.0, chunk_size=4) == pytest.approx(math.log(sum(vals) / len(vals)), abs=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        uniformity(r[:1])


def test_angle_stats_constructed_increments():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 3, generator=g, dtype=D64)
    vbar = torch.randn(4, 3, generator=g, dtype=D64)
    gap = vbar[None, :, :] - t[:, None, :]  # [i, j, d] = vbar_j - t_i
    coef = torch.full((4, 4), -0.5, dtype=D64)
    coef.fill_diagonal_(2.0)
    delta = coef[:, :, None] * gap  # positives along the gap, negatives against it
    out = angle_stats(delta, t, vbar)
    assert out["cos_gap_pos"] == pytest.approx(1.0, abs=1e-12)
    assert out["cos_gap_neg"] == pytest.approx(-1.0, abs=1e-12)
    assert out["cos_gap"] == pytest.approx((4 * 1 + 12 * -1) / 16, abs=1e-12)
    pos_norms = [2.0 * gap[i, i].norm().item() for i in range(4)]
    neg_norms = [0.5 * gap[i, j].norm().item() for i in range(4) for j in range(4) if i != j]
    assert out["norm_pos_mean"] == pytest.approx(sum(pos_norms) / 4, abs=1e-12)
    assert out["norm_neg_mean"] == pytest.approx(sum(neg_norms) / 12, abs=1e-12)
    assert out["norm_neg_std"] == pytest.approx(float(np.std(neg_norms)), abs=1e-12)
    # an explicit positives mask: with all pairs positive, the negative group is empty (NaN)
    allpos = angle_stats(delta, t, vbar, positives=torch.ones(4, 4, dtype=torch.bool))
    assert allpos["cos_gap_pos"] == pytest.approx(out["cos_gap"]) and math.isnan(allpos["cos_gap_neg"])


def test_ideal_increment_cos():
    grad = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 1.0]]])
    delta = torch.tensor([[[-2.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [-1.0, -1.0]]])
    out = ideal_increment_cos(delta, grad)
    # positives: (0,0) delta (-2,0) vs -g (-1,0) -> 1 ; (1,1) (-1,-1) vs (-1,-1) -> 1
    # negatives: (0,1) (1,0) vs (0,-2) -> 0 ; (1,0) (0,1) vs (-3,0) -> 0
    assert out["cos_ideal_pos"] == pytest.approx(1.0)
    assert out["cos_ideal_neg"] == pytest.approx(0.0)
    assert out["cos_ideal"] == pytest.approx(0.5)


def test_anchor_gradient_split_hand_computed():
    # t_i = v_i = e_i, logit_scale 0: the positive cosine is at its maximum, so its pull is zero and the
    # push of the one negative is (1 / (e + 1)) along the other axis
    e = torch.eye(2, dtype=D64)
    out = anchor_gradient_split(e, e, 0.0)
    assert out["pos_norm"] == pytest.approx(0.0, abs=1e-12)
    assert out["neg_norm"] == pytest.approx(1 / (math.e + 1), abs=1e-12)
    assert out["sum_norm"] == pytest.approx(1 / (math.e + 1), abs=1e-12)
    assert out["cancellation"] == pytest.approx(1.0, abs=1e-12)


def _autograd_split(t, delta, w, logit_scale, pos, symmetric):
    """Reference: pos/neg parts by letting the gradient flow only through the positive/negative scores."""
    res = {}
    for part in ("pos", "neg"):
        tt = t.clone().requires_grad_(True)
        c = tt[:, None, :] + delta if delta is not None else tt[:, None, :].expand(-1, w.shape[-2], -1)
        w3 = w if w.dim() == 3 else w[None].expand(t.shape[0], -1, -1)
        s_live = F.cosine_similarity(c, w3, dim=-1)
        keep = pos if part == "pos" else ~pos
        s = torch.where(keep, s_live, s_live.detach())
        lg = s * math.exp(logit_scale)

        def term(dim, lg=lg):
            masked = lg.masked_fill(~pos, torch.finfo(D64).min)
            return (torch.logsumexp(lg, dim) - torch.logsumexp(masked, dim)).sum()

        loss = term(1) if not symmetric else 0.5 * (term(1) + term(0))
        (res[part],) = torch.autograd.grad(loss, tt)
    return res["pos"], res["neg"]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("pairwise", [False, True])
def test_anchor_gradient_split_matches_autograd(symmetric, pairwise):
    g = torch.Generator().manual_seed(2)
    b, d = 5, 4
    t = torch.randn(b, d, generator=g, dtype=D64)
    delta = 0.3 * torch.randn(b, b, d, generator=g, dtype=D64) if pairwise else None
    w = torch.randn(b, b, d, generator=g, dtype=D64) if pairwise else torch.randn(b, d, generator=g, dtype=D64)
    pos = torch.eye(b, dtype=torch.bool)
    pos[0, 3] = pos[3, 0] = True  # a repeated video
    ls = math.log(10.0)
    gp, gn = _autograd_split(t, delta, w, ls, pos, symmetric)
    query = t[:, None, :] + delta if pairwise else t
    out = anchor_gradient_split(query, w, ls, positives=pos, symmetric=symmetric)
    n_p, n_n, n_s = gp.norm(dim=1), gn.norm(dim=1), (gp + gn).norm(dim=1)
    assert out["pos_norm"] == pytest.approx(n_p.mean().item(), rel=1e-10)
    assert out["neg_norm"] == pytest.approx(n_n.mean().item(), rel=1e-10)
    assert out["sum_norm"] == pytest.approx(n_s.mean().item(), rel=1e-10)
    assert out["cancellation"] == pytest.approx((n_s / (n_p + n_n)).mean().item(), rel=1e-10)
    cos = ((gp * gn).sum(1) / (n_p * n_n)).mean().item()
    assert out["pos_neg_cos"] == pytest.approx(cos, rel=1e-10)


def test_anchor_gradient_split_shows_tension_under_a_modality_gap():
    # texts clustered around e1, videos around e2 (a modality gap): pull and push nearly cancel
    g = torch.Generator().manual_seed(3)
    b, d = 16, 8
    e1, e2 = torch.zeros(d, dtype=D64), torch.zeros(d, dtype=D64)
    e1[0], e2[1] = 1.0, 1.0
    t = e1 + 0.1 * torch.randn(b, d, generator=g, dtype=D64)
    v = e2 + 0.1 * torch.randn(b, d, generator=g, dtype=D64)
    out = anchor_gradient_split(t, v, math.log(100.0))
    assert out["pos_neg_cos"] < -0.5
    assert out["cancellation"] < 0.5
    # without the gap (isotropic embeddings) the two parts are not opposed
    iso = anchor_gradient_split(torch.randn(b, d, generator=g, dtype=D64), torch.randn(b, d, generator=g, dtype=D64),
                                math.log(100.0))
    assert iso["cancellation"] > 0.5 > out["cancellation"]
