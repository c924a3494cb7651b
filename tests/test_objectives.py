"""Objectives: hand-computed values, gradient checks, equivalences."""

import math

import pytest
import torch
import torch.nn.functional as F

from gare.objectives import (
    GareLossConfig,
    direction_loss,
    gare_loss,
    gradient_supervision_loss,
    ib_kl,
    ideal_increment,
    info_nce,
    radius_loss,
    repeated_video_positives,
)

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# ----------------------------------------------------------------------------- InfoNCE
def test_info_nce_hand_computed_2x2():
    a, b, c, d = 0.9, 0.2, -0.1, 0.5
    sim = torch.tensor([[a, b], [c, d]], dtype=D64)
    s = 2.0  # scale; logit_scale = log 2
    rows = (_lse(s * a, s * b) - s * a + _lse(s * c, s * d) - s * d) / 2
    cols = (_lse(s * a, s * c) - s * a + _lse(s * b, s * d) - s * d) / 2
    expected = 0.5 * (rows + cols)
    got = info_nce(sim, torch.tensor(math.log(2.0), dtype=D64))
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_info_nce_matches_cross_entropy_and_identity_mask_exactly():
    g = _gen(1)
    sim = torch.rand(6, 6, generator=g, dtype=D64) * 2 - 1
    ls = torch.tensor(math.log(30.0), dtype=D64)
    logits = sim * 30.0
    target = torch.arange(6)
    ref = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    plain = info_nce(sim, ls)
    masked = info_nce(sim, ls, torch.eye(6, dtype=torch.bool))
    assert plain.item() == pytest.approx(ref.item(), abs=1e-12)
    assert torch.equal(plain, masked)
    # float32 as well (the training dtype)
    s32 = sim.float()
    assert torch.equal(info_nce(s32, ls.float()), info_nce(s32, ls.float(), torch.eye(6, dtype=torch.bool)))


def test_info_nce_multi_positive_hand_computed():
    # videos of the three pairs: 0, 0, 1 -> captions 0 and 1 are both positives of videos 0 and 1
    ids = torch.tensor([0, 0, 1])
    pos = repeated_video_positives(ids)
    assert pos.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    m = [[0.8, 0.6, 0.1], [0.5, 0.7, 0.2], [0.0, 0.3, 0.9]]
    sim = torch.tensor(m, dtype=D64)
    rows = [
        _lse(m[0][0], m[0][1], m[0][2]) - _lse(m[0][0], m[0][1]),
        _lse(m[1][0], m[1][1], m[1][2]) - _lse(m[1][0], m[1][1]),
        _lse(m[2][0], m[2][1], m[2][2]) - m[2][2],
    ]
    cols = [
        _lse(m[0][0], m[1][0], m[2][0]) - _lse(m[0][0], m[1][0]),
        _lse(m[0][1], m[1][1], m[2][1]) - _lse(m[0][1], m[1][1]),
        _lse(m[0][2], m[1][2], m[2][2]) - m[2][2],
    ]
    expected = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    got = info_nce(sim, torch.tensor(0.0, dtype=D64), pos)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # differs from the plain (diagonal-only) form
    assert abs(info_nce(sim, 0.0).item() - expected) > 1e-3


def test_info_nce_rectangular_skips_columns_without_positive():
    m = [[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]]
    sim = torch.tensor(m, dtype=D64)
    pos = torch.tensor([[True, False, False], [False, True, False]])
    rows = [_lse(*m[0]) - m[0][0], _lse(*m[1]) - m[1][1]]
    cols = [_lse(m[0][0], m[1][0]) - m[0][0], _lse(m[0][1], m[1][1]) - m[1][1]]  # column 2 has no positive
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    sim.requires_grad_(True)
    loss = info_nce(sim, 0.0, pos)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    loss.backward()
    assert torch.isfinite(sim.grad).all()
    with pytest.raises(ValueError, match="positives"):
        info_nce(torch.zeros(2, 3), 0.0)


def test_info_nce_gradcheck():
    g = _gen(2)
    sim = (torch.rand(4, 4, generator=g, dtype=D64) * 2 - 1).requires_grad_()
    ls = torch.tensor(1.5, dtype=D64, requires_grad=True)
    pos = repeated_video_positives(torch.tensor([3, 1, 3, 2]))
    assert torch.autograd.gradcheck(lambda s, l: info_nce(s, l), (sim, ls))
    assert torch.autograd.gradcheck(lambda s, l: info_nce(s, l, pos), (sim, ls))


# ----------------------------------------------------------------------------- IB
# delta[i][j] = the 2-d increment of text i and video j
DELTA_2x2x2 = [[[1.0, 0.0], [0.5, -1.0]], [[3.0, 2.0], [-0.5, 1.0]]]


def _kl_1d(mu, sigma, p=1.0):
    return math.log(p / sigma) + (sigma**2 + mu**2) / (2 * p**2) - 0.5


def _ib_reference(delta, anchor, convention, p=1.0):
    bt, bv, d = len(delta), len(delta[0]), len(delta[0][0])
    groups = (
        [[delta[i][j] for i in range(bt)] for j in range(bv)]
        if anchor == "video"
        else [[delta[i][j] for j in range(bv)] for i in range(bt)]
    )
    per_anchor = []
    for vecs in groups:
        n = len(vecs)
        kls = []
        for k in range(d):
            xs = [v[k] for v in vecs]
            mu = sum(xs) / n
            sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) + 1e-6
            kls.append(_kl_1d(mu, sd, p))
        per_anchor.append(sum(kls) if convention == "sum" else sum(kls) / d)
    return sum(per_anchor) / len(per_anchor)


def test_ib_kl_hand_computed_2x2x2():
    delta = torch.tensor(DELTA_2x2x2, dtype=D64)
    # video 0 over texts: (1,0),(3,2): mu=(2,1), sd=(sqrt2, sqrt2)
    s = math.sqrt(2) + 1e-6
    v0 = 0.5 * (s**2 + 4 - 1 - 2 * math.log(s)) + 0.5 * (s**2 + 1 - 1 - 2 * math.log(s))
    # video 1 over texts: (0.5,-1),(-0.5,1): mu=(0,0), sd=(1/sqrt2, sqrt2)
    s1, s2 = 1 / math.sqrt(2) + 1e-6, math.sqrt(2) + 1e-6
    v1 = 0.5 * (s1**2 - 1 - 2 * math.log(s1)) + 0.5 * (s2**2 - 1 - 2 * math.log(s2))
    expected = (v0 + v1) / 2
    assert ib_kl(delta).item() == pytest.approx(expected, abs=1e-12)
    assert ib_kl(delta, anchor="video", convention="sum").item() == pytest.approx(
        _ib_reference(DELTA_2x2x2, "video", "sum"), abs=1e-12
    )
    assert ib_kl(delta, anchor="text").item() == pytest.approx(
        _ib_reference(DELTA_2x2x2, "text", "sum"), abs=1e-12
    )
    # anchors are genuinely different statistics here
    assert abs(ib_kl(delta, anchor="text").item() - expected) > 1e-2


def test_ib_kl_prior_sigma_and_conventions():
    g = _gen(3)
    delta = torch.randn(3, 4, 5, generator=g, dtype=D64)
    dl = delta.tolist()
    for anchor in ("video", "text"):
        for p in (0.1, 1.0, 10.0):
            got_sum = ib_kl(delta, anchor, "sum", prior_sigma=p).item()
            got_mean = ib_kl(delta, anchor, "mean", prior_sigma=p).item()
            assert got_sum == pytest.approx(_ib_reference(dl, anchor, "sum", p), rel=1e-12)
            assert got_sum == pytest.approx(5 * got_mean, rel=1e-12)  # factor D exactly
    with pytest.raises(ValueError, match="anchor"):
        ib_kl(delta, anchor="pair")
    with pytest.raises(ValueError, match="convention"):
        ib_kl(delta, convention="avg")
    with pytest.raises(ValueError, match="at least 2"):
        ib_kl(delta[:1])


def test_ib_kl_gradcheck():
    delta = torch.randn(3, 4, 2, generator=_gen(4), dtype=D64).requires_grad_()
    for anchor in ("video", "text"):
        for conv in ("sum", "mean"):
            assert torch.autograd.gradcheck(lambda d, a=anchor, c=conv: ib_kl(d, a, c, 2.0), (delta,))


# ----------------------------------------------------------------------------- radius
def test_radius_hand_computed():
    # one text, three videos with norms 0.5, 0.3, 0.4 (3-4-5 triangles scaled)
    delta = torch.tensor([[[0.3, 0.4], [0.0, 0.3], [0.4, 0.0]]], dtype=D64, requires_grad=True)
    norms = [0.5, 0.3, 0.4]
    mean = sum(norms) / 3
    var = sum((x - mean) ** 2 for x in norms) / 2
    loss = radius_loss(delta, truncate=0.5)
    assert loss.item() == pytest.approx(-var, abs=1e-12)
    loss.backward()
    # d(-var)/d eps_j = -2 (eps_j - mean) / (n - 1); d eps_j / d delta_j = delta_j / eps_j
    for j, vec in enumerate([[0.3, 0.4], [0.0, 0.3], [0.4, 0.0]]):
        coef = -2 * (norms[j] - mean) / 2 / norms[j]
        assert delta.grad[0, j].tolist() == pytest.approx([coef * x for x in vec], abs=1e-12)


def test_radius_truncation_value_and_zero_gradient():
    # norms 0, 2 -> Var = 2 -> L = -2 < -0.5: truncated
    delta = torch.tensor([[[1.0, 1e-3], [2.0, 0.0]], [[0.0, 0.5], [0.0, 2.5]]], dtype=D64, requires_grad=True)
    eps = delta.detach().norm(dim=-1)
    raw = -eps.var(dim=1).mean().item()
    assert raw < -0.5
    loss = radius_loss(delta, truncate=0.5)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(delta.grad, torch.zeros_like(delta))
    # a looser threshold keeps it; truncate=None disables the switch
    assert radius_loss(delta.detach(), truncate=10.0).item() == pytest.approx(raw, abs=1e-12)
    assert radius_loss(delta.detach(), truncate=None).item() == pytest.approx(raw, abs=1e-12)


def test_radius_gradcheck():
    delta = (0.1 * torch.randn(3, 4, 2, generator=_gen(5), dtype=D64)).requires_grad_()
    assert radius_loss(delta).item() > -0.5
    assert torch.autograd.gradcheck(lambda d: radius_loss(d, 0.5), (delta,))


# ----------------------------------------------------------------------------- direction
def test_direction_hand_computed():
    # one text; videos: (2,0), (0,3) orthogonal, and (1,1) at 45 degrees from both
    delta = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]], dtype=D64)
    a = 2.0
    c45 = math.sqrt(0.5)
    gram = [[1, 0, c45], [0, 1, c45], [c45, c45, 1]]
    expected = math.log(sum(math.exp(-a * (1 - x)) for r in gram for x in r) / 9 + 1e-8)
    assert direction_loss(delta, alpha=a).item() == pytest.approx(expected, abs=1e-12)
    strict = sum(gram[j][k] ** 2 for j in range(3) for k in range(3) if j != k) / 6
    assert direction_loss(delta, strict=True).item() == pytest.approx(strict, abs=1e-12)


def test_direction_vectorized_equals_loop_reference():
    g = _gen(6)
    delta = torch.randn(4, 5, 3, generator=g, dtype=D64)
    delta[1, 2] = 0.0  # a zero increment is guarded, not NaN
    alpha = 1.5
    per_text = []
    for i in range(4):
        zs = []
        for j in range(5):
            v = delta[i, j].tolist()
            n = max(math.sqrt(sum(x * x for x in v)), 1e-8)
            zs.append([x / n for x in v])
        tot = 0.0
        for j in range(5):
            for k in range(5):
                dot = sum(p * q for p, q in zip(zs[j], zs[k]))
                tot += math.exp(-alpha * (1 - dot))
        per_text.append(math.log(tot / 25 + 1e-8))
    expected = sum(per_text) / 4
    got = direction_loss(delta, alpha=alpha)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_direction_gradcheck():
    delta = torch.randn(3, 4, 3, generator=_gen(7), dtype=D64).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: direction_loss(d, 2.0), (delta,))
    assert torch.autograd.gradcheck(lambda d: direction_loss(d, strict=True), (delta,))


# ----------------------------------------------------------------------------- gradient supervision
def test_ideal_increment_and_gs_hand_computed():
    grad = torch.tensor([[[3.0, 4.0], [0.0, 0.0]]], dtype=D64)
    star = ideal_increment(grad, eps=2.0)
    assert star[0, 0].tolist() == pytest.approx([-1.2, -1.6], abs=1e-12)
    assert star[0, 1].tolist() == [0.0, 0.0]
    # cos(delta, -g): (1,0) vs (1,0) -> 1 ; (0,2) vs (1,0) -> 0 ; (-1,0) vs (1,0) -> -1
    delta = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]], dtype=D64)
    g = torch.tensor([[[-1.0, 0.0], [-5.0, 0.0], [-0.5, 0.0]]], dtype=D64)
    assert gradient_supervision_loss(delta, g).item() == pytest.approx((0 + 1 + 2) / 3, abs=1e-12)


def test_gs_and_ideal_increment_gradcheck():
    g = _gen(8)
    delta = torch.randn(2, 3, 4, generator=g, dtype=D64).requires_grad_()
    grad = torch.randn(2, 3, 4, generator=g, dtype=D64).requires_grad_()
    assert torch.autograd.gradcheck(lambda d: gradient_supervision_loss(d, grad), (delta,))
    assert torch.autograd.gradcheck(lambda x: ideal_increment(x, 0.7), (grad,))
    # the target is detached: no gradient reaches grad
    gradient_supervision_loss(delta, grad).backward()
    assert grad.grad is None


# ----------------------------------------------------------------------------- total
def _toy_batch(seed=9, b=4, d=3, dtype=D64):
    g = _gen(seed)
    t = torch.randn(b, d, generator=g, dtype=dtype)
    v = torch.randn(b, d, generator=g, dtype=dtype)
    delta = (0.3 * torch.randn(b, b, d, generator=g, dtype=dtype)).requires_grad_()
    return t, v, delta


def _score(t, v, delta):
    corrected = t[:, None, :] + delta
    sim = F.cosine_similarity(corrected, v[None, :, :].expand_as(corrected), dim=-1)
    return sim, corrected


def test_gare_loss_weighted_sum_and_terms():
    t, v, delta = _toy_batch()
    sim, corrected = _score(t, v, delta)
    ls = torch.tensor(math.log(20.0), dtype=D64)
    cfg = GareLossConfig(beta=0.3, lambda_eps=0.2, eps_truncate=100.0, lambda_dir=0.1, lambda_gs=0.05)
    total, terms = gare_loss(sim, delta, ls, cfg, corrected=corrected)
    assert set(terms) == {"nce", "ib", "radius", "direction", "gs"}
    nce = info_nce(sim, ls)
    ib = ib_kl(delta)
    rad = radius_loss(delta, 100.0)
    dr = direction_loss(delta, 2.0)
    (g,) = torch.autograd.grad(nce, corrected, retain_graph=True)
    gs = gradient_supervision_loss(delta, g)
    for k, ref in zip(["nce", "ib", "radius", "direction", "gs"], [nce, ib, rad, dr, gs]):
        assert terms[k].item() == pytest.approx(ref.item(), abs=1e-12), k
        assert not terms[k].requires_grad
    expected = nce + 0.3 * ib + 0.2 * rad + 0.1 * dr + 0.05 * gs
    assert total.item() == pytest.approx(expected.item(), abs=1e-12)
    assert float(terms["gs"]) > 0
    total.backward()
    assert torch.isfinite(delta.grad).all()


def test_gare_loss_switches_baseline_and_multi_positive():
    t, v, delta = _toy_batch()
    sim, corrected = _score(t, v, delta)
    ls = torch.tensor(2.0, dtype=D64)
    # baseline: delta None -> InfoNCE only
    total, terms = gare_loss(sim, None, ls, GareLossConfig())
    assert total.item() == pytest.approx(info_nce(sim, ls).item(), abs=1e-12)
    assert all(float(terms[k]) == 0.0 for k in ("ib", "radius", "direction", "gs"))
    # switches off
    cfg = GareLossConfig(use_ib=False, use_radius=False, use_direction=False)
    total, terms = gare_loss(sim, delta, ls, cfg)
    assert total.item() == pytest.approx(info_nce(sim, ls).item(), abs=1e-12)
    assert float(terms["ib"]) == 0.0 and float(terms["direction"]) == 0.0
    # multi-positive through video_ids; off by config -> plain
    ids = torch.tensor([0, 1, 0, 2])
    pos = repeated_video_positives(ids)
    on, _ = gare_loss(sim, None, ls, GareLossConfig(multi_positive=True), video_ids=ids)
    off, _ = gare_loss(sim, None, ls, GareLossConfig(multi_positive=False), video_ids=ids)
    assert on.item() == pytest.approx(info_nce(sim, ls, pos).item(), abs=1e-12)
    assert off.item() == pytest.approx(info_nce(sim, ls).item(), abs=1e-12)
    # gs needs corrected
    with pytest.raises(ValueError, match="corrected"):
        gare_loss(sim, delta, ls, GareLossConfig(lambda_gs=1.0))
    # under no_grad the gs term is skipped, the rest still computed
    with torch.no_grad():
        s2, c2 = _score(t, v, delta)
        total, terms = gare_loss(s2, delta, ls, GareLossConfig(lambda_gs=1.0), corrected=c2)
    assert float(terms["gs"]) == 0.0 and float(terms["nce"]) > 0


def test_gare_loss_gradcheck():
    t, v, delta = _toy_batch(seed=10, b=3, d=2)
    ls = torch.tensor(1.0, dtype=D64)
    cfg = GareLossConfig(beta=0.5, lambda_eps=0.3, eps_truncate=100.0, lambda_dir=0.2)

    def f(d):
        sim, _ = _score(t, v, d)
        return gare_loss(sim, d, ls, cfg)[0]

    assert torch.autograd.gradcheck(f, (delta,))
