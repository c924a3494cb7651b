"""psi (the increment module) and the pairwise scorer: gradients, masks, chaining, hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gare.config import PsiConfig, ScorerConfig
from gare.model import IncrementModule, PairScorer
from gare.model.scorer import masked_mean

D64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randomize(module: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Give every parameter (LayerNorms and biases included) a non-trivial random value."""
    g = _gen(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm gain around 1
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---------------------------------------------------------------------------------------------
# reference psi written from the paper's psi block (docs/architecture.md, "psi, the increment module") with plain
# tensor ops, one pair at a time
# ---------------------------------------------------------------------------------------------
def _ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _lin(P, name, x):
    return x @ P[name + ".weight"].T + P[name + ".bias"]


def ref_psi_pair(P, q, ctx, heads=1, layers=1):
    """Delta for one pair: ``q [D]``, ``ctx [F_valid, D]`` (valid context rows only) -> ``[D]``."""
    D = q.shape[0]
    dh = D // heads
    x = q
    for l in range(layers):
        pre = f"layers.{l}."
        ln1w, ln1b = P[pre + "layer_norm1.weight"], P[pre + "layer_norm1.bias"]
        lq, lc = _ln(x, ln1w, ln1b), _ln(ctx, ln1w, ln1b)  # LN1 shared by query and context
        Q = _lin(P, pre + "cross_attn.q_proj", lq)
        K = _lin(P, pre + "cross_attn.k_proj", lc)
        V = _lin(P, pre + "cross_attn.v_proj", lc)
        heads_out = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            w = torch.softmax(K[:, sl] @ Q[sl] / math.sqrt(dh), dim=0)  # over the context rows
            heads_out.append(w @ V[:, sl])
        a = _lin(P, pre + "cross_attn.out_proj", torch.cat(heads_out))
        y = _ln(a, P[pre + "layer_norm2.weight"], P[pre + "layer_norm2.bias"])
        x = _ln(y + _lin(P, pre + "linear1", y), P[pre + "layer_norm3.weight"], P[pre + "layer_norm3.bias"])
    return _lin(P, "mean_proj", x)


def _params(module):
    return {k: v.detach() for k, v in module.state_dict().items()}


def _cos(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


def ref_score(scorer: PairScorer, t, f, mask, words=None, word_mask=None):
    """s_ij by hand (loops over pairs, padded frames physically removed): ``[B_t, B_v]``."""
    cfg = scorer.cfg
    P = _params(scorer.psi) if scorer.psi is not None else None
    out = torch.zeros(t.shape[0], f.shape[0], dtype=t.dtype)
    for i in range(t.shape[0]):
        for j in range(f.shape[0]):
            valid = f[j][mask[j].bool()] if mask is not None else f[j]
            vbar = valid.mean(0)
            if cfg.pooling == "text":
                w = torch.softmax(valid @ t[i] / cfg.pool_temperature, dim=0)
                vhat = (w[:, None] * valid).sum(0)
            else:
                vhat = vbar
            if not cfg.use_delta:
                out[i, j] = _cos(t[i], vhat)
                continue
            if cfg.query == "text":
                q = t[i]
            else:  # eta = +1 is the gap v - t on either side (paper Table 7)
                q = cfg.eta * (vbar - t[i])
            ctx = valid if cfg.context == "frames" else words[i][word_mask[i].bool()]
            delta = ref_psi_pair(P, q, ctx, cfg.psi.heads, cfg.psi.layers)
            out[i, j] = _cos(t[i] + delta, vhat) if cfg.side == "text" else _cos(t[i], vhat + delta)
    return out


def _inputs(Bt=2, Bv=3, Fr=4, D=8, seed=0, dtype=D64):
    g = _gen(seed)
    t = torch.randn(Bt, D, generator=g, dtype=dtype)
    f = torch.randn(Bv, Fr, D, generator=g, dtype=dtype) + 0.5
    mask = torch.ones(Bv, Fr, dtype=torch.bool)
    mask[0, Fr - 1] = False
    if Bv > 2:
        mask[2, 1:] = False  # a video with a single valid frame
    return t, f, mask


def _scorer(dim=8, seed=0, dtype=D64, **kw):
    psi_kw = {k[4:]: kw.pop(k) for k in list(kw) if k.startswith("psi_")}
    cfg = ScorerConfig(psi=PsiConfig(dropout=0.0, **psi_kw), **kw)
    torch.manual_seed(seed)
    s = PairScorer(cfg, dim).to(dtype).eval()
    if s.psi is not None:
        _randomize(s.psi, seed)
    return s


# ---------------------------------------------------------------------------------------------
# psi
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("layers", [1, 2])
def test_psi_gradcheck_frames_context(heads, layers):
    psi = _randomize(IncrementModule(8, heads=heads, layers=layers, dropout=0.0).double().eval(), seed=heads + layers)
    g = _gen(3)
    q = torch.randn(2, 3, 8, generator=g, dtype=D64, requires_grad=True)
    ctx = torch.randn(3, 3, 8, generator=g, dtype=D64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: psi(a, b, mask, ctx_axis=1)[0], (q, ctx), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2])
def test_psi_gradcheck_words_context(heads):
    psi = _randomize(IncrementModule(8, heads=heads, layers=2, dropout=0.0).double().eval(), seed=7)
    g = _gen(4)
    q = torch.randn(2, 3, 8, generator=g, dtype=D64, requires_grad=True)
    words = torch.randn(2, 4, 8, generator=g, dtype=D64, requires_grad=True)  # context per text
    wmask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, b: psi(a, b, wmask, ctx_axis=0)[0], (q, words), eps=1e-6, atol=1e-6)


def test_psi_gradient_ignores_masked_frames():
    psi = _randomize(IncrementModule(8, dropout=0.0).double().eval())
    g = _gen(5)
    q = torch.randn(2, 2, 8, generator=g, dtype=D64)
    ctx = torch.randn(2, 3, 8, generator=g, dtype=D64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    psi(q, ctx, mask)[0].sum().backward()
    assert ctx.grad[0, 2].abs().max() == 0
    assert ctx.grad[0, :2].abs().max() > 1e-3 and ctx.grad[1].abs().min() > 0


@pytest.mark.parametrize("heads,layers", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_psi_respects_frame_mask(heads, layers):
    psi = _randomize(IncrementModule(8, heads=heads, layers=layers, dropout=0.0).double().eval(), seed=1)
    g = _gen(6)
    q = torch.randn(2, 3, 8, generator=g, dtype=D64)
    ctx = torch.randn(3, 4, 8, generator=g, dtype=D64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    base = psi(q, ctx, mask)[0]
    # append 3 masked frames with random (large) content
    extra = 10 * torch.randn(3, 3, 8, generator=g, dtype=D64)
    padded = psi(q, torch.cat([ctx, extra], 1), torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1))[0]
    torch.testing.assert_close(padded, base, atol=1e-6, rtol=0)
    # changing the content of already-masked slots changes nothing either
    ctx2 = ctx.clone()
    ctx2[1, 2:] = -7.0
    torch.testing.assert_close(psi(q, ctx2, mask)[0], base, atol=1e-6, rtol=0)
    # ... whereas the same change on valid frames does change Delta (the test can fail)
    ctx3 = ctx.clone()
    ctx3[1, :2] = -7.0
    assert (psi(q, ctx3, mask)[0] - base).abs().max() > 1e-3
    # no mask == an all-valid mask
    torch.testing.assert_close(psi(q, ctx, None)[0], psi(q, ctx, torch.ones(3, 4, dtype=torch.bool))[0])


def test_psi_layers_chain():
    g = _gen(8)
    q = torch.randn(2, 3, 8, generator=g, dtype=D64)
    ctx = torch.randn(3, 4, 8, generator=g, dtype=D64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    psi2 = _randomize(IncrementModule(8, layers=2, dropout=0.0).double().eval(), seed=2)
    psi1 = IncrementModule(8, layers=1, dropout=0.0).double().eval()
    psi1.layers[0].load_state_dict(psi2.layers[0].state_dict())
    psi1.mean_proj.load_state_dict(psi2.mean_proj.state_dict())
    d2, d1 = psi2(q, ctx, mask)[0], psi1(q, ctx, mask)[0]
    assert (d2 - d1).abs().max() > 1e-2
    # by hand: layer 0 on the query, then layer 1 with layer 0's output as query (same context)
    x = psi2.layers[0](q, ctx, mask, 1)
    x = psi2.layers[1](x, ctx, mask, 1)
    torch.testing.assert_close(d2, psi2.mean_proj(x), atol=1e-12, rtol=0)
    # not the "parallel" reading where every layer sees the original query
    parallel = psi2.mean_proj(psi2.layers[1](q, ctx, mask, 1))
    assert (d2 - parallel).abs().max() > 1e-2
    # and both layers agree with the reference written from the formulas
    P = _params(psi2)
    for i in range(2):
        for j in range(3):
            ref = ref_psi_pair(P, q[i, j], ctx[j][mask[j]], heads=1, layers=2)
            torch.testing.assert_close(d2[i, j], ref, atol=1e-12, rtol=0)


def test_psi_single_head_hand_computed():
    """Tiny example, D=4: the whole block written out from the paper with plain tensor ops."""
    D = 4
    psi = _randomize(IncrementModule(D, heads=1, layers=1, dropout=0.0).double().eval(), seed=11, std=0.5)
    g = _gen(12)
    q = torch.randn(2, 2, D, generator=g, dtype=D64)
    ctx = torch.randn(2, 3, D, generator=g, dtype=D64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    delta, log_sigma = psi(q, ctx, mask)
    assert log_sigma is None
    p = {k: v.detach() for k, v in psi.state_dict().items()}
    L = "layers.0."

    def ln(x, name):  # LayerNorm with biased variance and eps 1e-5
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * p[L + name + ".weight"] + p[L + name + ".bias"]

    def lin(x, name):
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    for i in range(2):
        for j in range(2):
            cj = ctx[j][mask[j]]  # valid frames only
            qq = lin(ln(q[i, j], "layer_norm1"), L + "cross_attn.q_proj")
            kk = lin(ln(cj, "layer_norm1"), L + "cross_attn.k_proj")
            vv = lin(ln(cj, "layer_norm1"), L + "cross_attn.v_proj")
            scores = kk @ qq / math.sqrt(D)
            w = torch.exp(scores - scores.max())
            w = w / w.sum()
            a = lin(w @ vv, L + "cross_attn.out_proj")
            x = ln(a, "layer_norm2")
            x = ln(x + lin(x, L + "linear1"), "layer_norm3")
            expected = lin(x, "mean_proj")
            torch.testing.assert_close(delta[i, j], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("heads", [2, 4])
def test_psi_multi_head_matches_reference(heads):
    psi = _randomize(IncrementModule(8, heads=heads, layers=1, dropout=0.0).double().eval(), seed=heads)
    g = _gen(13)
    q = torch.randn(2, 2, 8, generator=g, dtype=D64)
    ctx = torch.randn(2, 3, 8, generator=g, dtype=D64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    delta = psi(q, ctx, mask)[0]
    P = _params(psi)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(delta[i, j], ref_psi_pair(P, q[i, j], ctx[j][mask[j]], heads=heads),
                                       atol=1e-12, rtol=0)


def test_psi_heads_must_divide_width():
    with pytest.raises(ValueError, match="heads=3"):
        IncrementModule(8, heads=3)


def test_psi_dropout_only_on_linear1_branch():
    """With p=1 in training mode the W1 branch vanishes: x = LN3(LN2(a))."""
    psi = _randomize(IncrementModule(8, dropout=1.0).double(), seed=4).train()
    g = _gen(14)
    q = torch.randn(2, 2, 8, generator=g, dtype=D64)
    ctx = torch.randn(2, 3, 8, generator=g, dtype=D64)
    layer = psi.layers[0]
    a = layer.cross_attn(layer.layer_norm1(q), layer.layer_norm1(ctx), None, 1)
    expected = psi.mean_proj(layer.layer_norm3(layer.layer_norm2(a)))
    torch.testing.assert_close(psi(q, ctx)[0], expected, atol=1e-12, rtol=0)
    psi.eval()  # eval: the branch is back
    assert (psi(q, ctx)[0] - expected).abs().max() > 1e-3


def test_psi_parameter_count_at_512():
    psi = IncrementModule(512)
    n = sum(p.numel() for p in psi.parameters())
    assert n == 1_579_008  # the paper's 1.58M
    with_sigma = IncrementModule(512, log_sigma_head=True)
    assert sum(p.numel() for p in with_sigma.parameters()) == 1_579_008 + 512 * 512 + 512


def test_psi_init_statistics():
    torch.manual_seed(0)
    psi = IncrementModule(512, log_sigma_head=True)
    linears = [m for m in psi.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in psi.modules() if isinstance(m, nn.LayerNorm)]
    assert len(linears) == 7 and len(norms) == 3
    for m in linears:
        w = m.weight.detach()
        assert abs(float(w.mean())) < 2e-4  # sd of the mean: 0.02 / 512 = 4e-5
        assert abs(float(w.std()) - 0.02) < 4e-4  # relative sd of the sd estimate ~0.14%
        assert abs(float((w.abs() < 0.02).double().mean()) - 0.6827) < 0.005  # Gaussian, not uniform
        assert torch.count_nonzero(m.bias) == 0
    for m in norms:
        assert torch.equal(m.weight, torch.ones(512)) and torch.equal(m.bias, torch.zeros(512))


def test_psi_log_sigma_head_and_stochastic_sampling():
    torch.manual_seed(0)
    psi = _randomize(IncrementModule(8, dropout=0.0, log_sigma_head=True, stochastic=True).double(), seed=9, std=0.2)
    g = _gen(15)
    q = torch.randn(20, 30, 8, generator=g, dtype=D64)
    ctx = torch.randn(30, 3, 8, generator=g, dtype=D64)
    psi.eval()
    with torch.no_grad():
        mu, log_sigma = psi(q, ctx)
        x = psi.layers[0](q, ctx, None, 1)
    torch.testing.assert_close(mu, psi.mean_proj(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(log_sigma, psi.log_std_proj(x), atol=1e-12, rtol=0)
    psi.train()
    with torch.no_grad():
        sample = psi(q, ctx)[0]
        z = (sample - mu) / log_sigma.exp()
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05


# ---------------------------------------------------------------------------------------------
# scorer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"psi_heads": 2, "psi_layers": 2}, {"side": "video"}])
def test_scorer_gradcheck(kw):
    scorer = _scorer(**kw)
    t, f, mask = _inputs(Bt=2, Bv=3, Fr=3, D=8)
    t.requires_grad_(True)
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: scorer(a, b, mask).sim, (t, f), eps=1e-6, atol=1e-6)


def test_scorer_reference_values_default():
    scorer = _scorer()
    t, f, mask = _inputs()
    out = scorer(t, f, mask)
    torch.testing.assert_close(out.sim, ref_score(scorer, t, f, mask), atol=1e-12, rtol=0)
    # the outputs besides sim are consistent: corrected = t + Delta
    torch.testing.assert_close(out.corrected, t[:, None, :] + out.delta)


@pytest.mark.parametrize("kw", [
    {"side": "video"},
    {"eta": -1.0},
    {"query": "text"},
    {"pooling": "mean"},
    {"use_delta": False},
    {"use_delta": False, "pooling": "mean"},
    {"pool_temperature": 0.5},
    {"psi_heads": 2, "psi_layers": 2},
    {"side": "video", "eta": -1.0},
])
def test_scorer_options_match_hand_computation(kw):
    scorer = _scorer(**kw)
    t, f, mask = _inputs(seed=1)
    torch.testing.assert_close(scorer(t, f, mask).sim, ref_score(scorer, t, f, mask), atol=1e-12, rtol=0)


def test_scorer_options_change_the_scores():
    """Each option is not a no-op (otherwise the hand-computation tests above would prove little)."""
    t, f, mask = _inputs(seed=1)
    base = _scorer()(t, f, mask).sim
    for kw in [{"side": "video"}, {"eta": -1.0}, {"query": "text"}, {"pooling": "mean"}, {"use_delta": False}]:
        assert (_scorer(**kw)(t, f, mask).sim - base).abs().max() > 1e-3, kw


@pytest.mark.parametrize("kw", [{}, {"side": "video"}, {"eta": -1.0, "query": "text"}])
def test_scorer_words_context(kw):
    scorer = _scorer(context="words", **kw)
    t, f, mask = _inputs(seed=2)
    g = _gen(16)
    words = torch.randn(2, 5, 8, generator=g, dtype=D64)
    wmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    sim = scorer(t, f, mask, words, wmask).sim
    torch.testing.assert_close(sim, ref_score(scorer, t, f, mask, words, wmask), atol=1e-12, rtol=0)
    # masked words do not matter; valid words do
    w2 = words.clone()
    w2[0, 3:] = 5.0
    torch.testing.assert_close(scorer(t, f, mask, w2, wmask).sim, sim, atol=1e-12, rtol=0)
    w2[0, 0] = 5.0
    assert (scorer(t, f, mask, w2, wmask).sim[0] - sim[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="words"):
        scorer(t, f, mask)


def test_scorer_video_side_formula_explicit():
    """side='video': q = eta (vbar - t) (the same gap as the text side, paper Table 7) and
    s = cos(t, vhat + Delta), written out for one pair; eta = -1 flips the query."""
    scorer = _scorer(side="video")
    t, f, mask = _inputs(seed=3)
    out = scorer(t, f, mask)
    vbar = masked_mean(f, mask)
    vhat = scorer.pool(t, f, mask)
    q = vbar[None, :, :] - t[:, None, :]
    delta = scorer.psi(q, f, mask)[0]
    torch.testing.assert_close(out.delta, delta, atol=1e-12, rtol=0)
    flipped = _scorer(side="video", eta=-1)
    flipped.load_state_dict(scorer.state_dict())
    torch.testing.assert_close(flipped(t, f, mask).delta, scorer.psi(-q, f, mask)[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(out.corrected, vhat + delta, atol=1e-12, rtol=0)
    expected = F.cosine_similarity(t[:, None, :].expand_as(vhat), vhat + delta, dim=-1)
    torch.testing.assert_close(out.sim, expected, atol=1e-12, rtol=0)


def test_scorer_baseline_is_cosine_to_pooled_video():
    scorer = _scorer(use_delta=False)
    assert scorer.psi is None
    t, f, mask = _inputs(seed=4)
    out = scorer(t, f, mask)
    assert out.delta is None
    for i in range(t.shape[0]):
        for j in range(f.shape[0]):
            valid = f[j][mask[j]]
            w = torch.softmax(valid @ t[i] / 3.0, dim=0)
            assert abs(float(out.sim[i, j]) - _cos(t[i], w @ valid)) < 1e-12


def test_mean_pooling_equals_vbar():
    t, f, mask = _inputs(seed=5)
    scorer = _scorer(pooling="mean")
    vbar = torch.stack([f[j][mask[j]].mean(0) for j in range(f.shape[0])])
    torch.testing.assert_close(scorer.pool(t, f, mask), vbar[None].expand(t.shape[0], -1, -1), atol=1e-12, rtol=0)
    out = scorer(t, f, mask)
    expected = F.cosine_similarity(t[:, None, :] + out.delta, vbar[None], dim=-1)
    torch.testing.assert_close(out.sim, expected, atol=1e-12, rtol=0)
    base = _scorer(pooling="mean", use_delta=False)(t, f, mask).sim
    torch.testing.assert_close(base, F.cosine_similarity(t[:, None, :], vbar[None], dim=-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T,weights", [(3.0, [1 / 6, 2 / 6, 3 / 6]), (1.0, [1 / 36, 8 / 36, 27 / 36])])
def test_pooling_temperature_known_weights(T, weights):
    """<t, f_k> = 0, 3 ln 2, 3 ln 3: softmax weights 1:2:3 at T=3 and 1:8:27 at T=1; the padded 4th frame gets 0."""
    b, c = 3 * math.log(2), 3 * math.log(3)
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=D64)
    f = torch.tensor([[[0.0, 1.0, 0.0, 0.0], [b, 0.0, 1.0, 0.0], [c, 0.0, 0.0, 1.0], [50.0, 9.0, 9.0, 9.0]]],
                     dtype=D64)
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    w = torch.tensor(weights, dtype=D64)
    expected = w @ f[0, :3]
    scorer = _scorer(dim=4, pool_temperature=T, use_delta=False)
    torch.testing.assert_close(scorer.pool(t, f, mask)[0, 0], expected, atol=1e-12, rtol=0)
    assert abs(float(scorer(t, f, mask).sim[0, 0]) - _cos(t[0], expected)) < 1e-12


def test_padding_with_masked_frames_changes_no_score():
    scorer = _scorer(psi_heads=2)
    t, f, mask = _inputs(Bt=3, Bv=3, Fr=4, seed=6)
    base = scorer(t, f, mask).sim
    extra = 20 * torch.randn(3, 3, 8, generator=_gen(17), dtype=D64)
    fp = torch.cat([f, extra], 1)
    mp = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(scorer(t, fp, mp).sim, base, atol=1e-6, rtol=0)
    torch.testing.assert_close(scorer.similarity(t, fp, mp), base, atol=1e-6, rtol=0)
    # the padded content would matter if it were not masked
    assert (scorer(t, fp, torch.ones_like(mp)).sim - base).abs().max() > 1e-3


@pytest.mark.parametrize("blocks", [(1, 1), (2, 3), (4, 2), (5, 7), (3, 100)])
def test_blockwise_similarity_equals_one_shot(blocks):
    scorer = _scorer(dtype=torch.float32, psi_heads=2)
    t, f, mask = _inputs(Bt=5, Bv=7, Fr=4, seed=7, dtype=torch.float32)
    one_shot = scorer(t, f, mask).sim
    bt, bv = blocks
    torch.testing.assert_close(scorer.similarity(t, f, mask, block_texts=bt, block_videos=bv), one_shot,
                               atol=1e-6, rtol=0)


def test_memory_budget_forces_many_blocks(monkeypatch):
    scorer = _scorer(dtype=torch.float32)
    t, f, mask = _inputs(Bt=5, Bv=7, Fr=4, seed=8, dtype=torch.float32)
    one_shot = scorer(t, f, mask).sim
    calls = []
    original = scorer.forward

    def counting(*a, **k):
        calls.append(a[0].shape[0] * a[1].shape[0])
        return original(*a, **k)

    monkeypatch.setattr(scorer, "forward", counting)
    S = scorer.similarity(t, f, mask, memory_budget=1)
    assert len(calls) == 35 and max(calls) == 1  # one pair per block
    torch.testing.assert_close(S, one_shot, atol=1e-6, rtol=0)
    calls.clear()
    S = scorer.similarity(t, f, mask)  # default budget: one block
    assert calls == [35]
    torch.testing.assert_close(S, one_shot, atol=1e-6, rtol=0)


def test_similarity_rejects_bad_inputs():
    scorer = _scorer(dtype=torch.float32)
    t, f, mask = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"video mask must be \[N_v, F\]"):
        scorer.similarity(t, f, mask[:, :2])
    bad = mask.clone()
    bad[1] = False
    with pytest.raises(ValueError, match=r"videos \[1\] have no valid frame"):
        scorer.similarity(t, f, bad)
    with pytest.raises(ValueError, match="expected text"):
        scorer.similarity(t[:, :4], f, mask)


def test_normalized_delta_has_fixed_norm_and_uses_reference_path():
    import torch.nn.functional as F_

    from gare.config import ScorerConfig
    from gare.model.fast_scorer import supports
    from gare.model.scorer import PairScorer

    torch.manual_seed(0)
    base = PairScorer(ScorerConfig(), 8).eval()
    normed = PairScorer(ScorerConfig(delta_norm=0.5), 8).eval()
    normed.load_state_dict(base.state_dict())
    t, f = torch.randn(3, 8), torch.randn(4, 5, 8)
    out, ref = normed(t, f), base(t, f)
    assert torch.allclose(out.delta.norm(dim=-1), torch.full((3, 4), 0.5), atol=1e-6)
    assert torch.allclose(out.delta, 0.5 * F_.normalize(ref.delta, dim=-1), atol=1e-6)
    expect = (F_.normalize(t[:, None] + out.delta, dim=-1) * F_.normalize(out.vhat, dim=-1)).sum(-1)
    assert torch.allclose(out.sim, expect, atol=1e-6)
    assert supports(base) and not supports(normed)
