"""Exact fast GARE scoring at inference (dropout off; docs/performance.md, section 1).

The reference (:meth:`PairScorer.forward`) runs psi on every (text i, video j) pair: several ``D x D``
products per pair. This module computes the same numbers without any per-pair ``D x D`` product.

Why it is exact
---------------
In eval mode the attention output of a psi layer is a convex combination of per-context vectors,
``a_ij = sum_{h,l} A_ijhl U_hl + b_out`` with ``U_hl = W_out[:, head h] (W_v LN1(c_l) + b_v)[head h]``.
Everything after it is affine maps, LayerNorms and dot products. A LayerNorm of a vector written in a
basis, ``x = rho * sum_m alpha_m P_m + sum_s zeta_s Z_s``, is again such a vector: centre and scale the
basis rows once (``g * C P``, ``g * C Z``, and the bias ``b`` as a new shared row) and divide the pair's
coefficients by ``sigma``, whose square comes from the centred Gram matrices of the basis
(``|C x|^2 = rho^2 a'Ga + 2 rho a'Hz + z'Kz``). Linear maps act on the basis rows only. So every psi
vector of pair (i, j) lives in the span of ``M = heads * L`` rows that belong to the *context owner*
(video j for frame context, text i for word context) plus a few shared constant rows, and only its
``M + S`` coefficients are per pair. The next layer's query is the previous output (no residual from
the query), so chained layers keep the property.

What is left per pair:

* pooling logits ``<t_i, f_jk>`` and the gap query's LayerNorm statistics (from ``<t_i, vbar_j>``),
* query-key logits: ``<W_q LN1(q_ij), K_l>`` is affine in ``q_ij``: with the rows
  ``Kt_hl = C(g1 * W_q[head h]^T K_hl)`` it equals ``sigma^-1 eta <vbar_j - t_i, Kt_hl> + <c, K_hl>``,
* ``<t_i, Delta_ij>`` (norm of ``t_i + Delta_ij``) from ``<t_i, P_m>`` with the final basis rows,
* ``O(M^2)`` Gram contractions for the LayerNorm statistics and the norms, softmaxes over ``L``.

With frame context (the default) the three large products ``t @ [f_jk; Kt_jhl; P_jm]^T`` are the
only ``D``-sized work per pair: ``(F + 1 + 2 H F) D`` multiply-adds instead of about ``4 D^2``. With
word context the increment lives in the text's span but the pooled vector in the video's, so
``Delta_ij`` and ``vhat_ij`` are assembled explicitly (``(H L + F) D`` per pair, still no ``D x D``).

Layout: per-pair tensors are ``[n_owner, X, n_partner]`` (owner = video for frame context, text for
word context) so the small per-owner matrices batch as ``bmm`` over owners and the long axis is last.

Covered: every :class:`~gare.config.ScorerConfig` option (pooling text/mean, query gap/text,
eta +-1, context frames/words, side text/video, psi heads >= 1, layers >= 1, no Delta). Any psi that
exposes the standard module names (``layers[i].cross_attn.{q,k,v,out}_proj``, ``layer_norm{1,2,3}``,
``linear1``, ``mean_proj``) is read through those names. Training keeps the reference path
(dropout is active there); this module always computes the inference (dropout-off) scores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .scorer import PairScorer, check_inputs, final_cosine, masked_mean

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------------
@dataclass
class _LN:
    g: Tensor  # [D]
    b: Tensor  # [D]
    eps: float


@dataclass
class _Layer:
    ln1: _LN
    ln2: _LN
    ln3: _LN
    wq: Tensor
    bq: Tensor
    wk: Tensor
    bk: Tensor
    wv: Tensor
    bv: Tensor
    wo: Tensor
    bo: Tensor
    w1: Tensor
    b1: Tensor
    heads: int
    # single-head folds (None when heads > 1): W_k' W_q, W_q' b_k, W_k' c, c . b_k with c = W_q b1 + b_q,
    # and the value-output map W_out W_v, W_out b_v
    wkq: Tensor | None = None
    kq_bias: Tensor | None = None
    kc_vec: Tensor | None = None
    kc_const: Tensor | None = None
    wov: Tensor | None = None
    ov_bias: Tensor | None = None

    def fold(self) -> _Layer:
        if self.heads == 1:
            c = self.wq @ self.ln1.b + self.bq
            self.wkq, self.kq_bias = self.wk.T @ self.wq, self.wq.T @ self.bk
            self.kc_vec, self.kc_const = self.wk.T @ c, c @ self.bk
            self.wov, self.ov_bias = (self.wo @ self.wv).T, self.wo @ self.bv
        return self


def _is_linear(m: object, dim: int) -> bool:
    return isinstance(m, nn.Linear) and m.in_features == dim and m.out_features == dim


def _is_layer_norm(m: object, dim: int) -> bool:
    return isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (dim,)


def _psi_structure_ok(psi: nn.Module, dim: int) -> bool:
    layers = getattr(psi, "layers", None)
    if layers is None or len(layers) == 0 or not _is_linear(getattr(psi, "mean_proj", None), dim):
        return False
    for layer in layers:
        attn = getattr(layer, "cross_attn", None)
        if attn is None:
            return False
        heads = int(getattr(attn, "heads", 1))
        if heads < 1 or dim % heads:
            return False
        if not all(_is_linear(getattr(attn, n, None), dim) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
            return False
        if not _is_linear(getattr(layer, "linear1", None), dim):
            return False
        if not all(_is_layer_norm(getattr(layer, f"layer_norm{i}", None), dim) for i in (1, 2, 3)):
            return False
    return True


def supports(scorer: PairScorer) -> bool:
    """Whether :func:`fast_similarity` reproduces ``scorer`` exactly (at inference).

    True for every option of :class:`~gare.config.ScorerConfig` as long as psi has the standard
    structure (``layers[i].cross_attn.{q,k,v,out}_proj``, ``layer_norm{1,2,3}``, ``linear1``,
    ``mean_proj``, all ``D x D`` / ``[D]``); False for unknown option values or another psi.
    """
    cfg = scorer.cfg
    if getattr(scorer, "release_padding", False):
        return False  # compat: release attends to padded slots; the reference scores it
    if cfg.pooling not in ("text", "mean") or cfg.query not in ("gap", "text"):
        return False
    if cfg.context not in ("frames", "words") or cfg.side not in ("text", "video"):
        return False
    if getattr(cfg, "delta_norm", None) is not None and scorer.psi is not None:
        return False  # normalized Delta: a per-pair norm outside the per-video span; the reference scores it
    if scorer.psi is None:
        return True
    return _psi_structure_ok(scorer.psi, scorer.dim)


def _vec(p: Tensor | None, dim: int, fill: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    if p is None:
        return torch.full((dim,), fill, dtype=dtype, device=device)
    return p.detach().to(dtype=dtype, device=device)


def _read_psi(psi: nn.Module, dim: int, dtype: torch.dtype,
              device: torch.device) -> tuple[list[_Layer], Tensor, Tensor]:
    """Psi weights in the compute dtype: per-layer parameters, mean head ``(W_mu, b_mu)``."""

    def lin(m: nn.Linear) -> tuple[Tensor, Tensor]:
        return m.weight.detach().to(dtype=dtype, device=device), _vec(m.bias, dim, 0.0, dtype, device)

    def ln(m: nn.LayerNorm) -> _LN:
        return _LN(_vec(m.weight, dim, 1.0, dtype, device), _vec(m.bias, dim, 0.0, dtype, device), float(m.eps))

    layers = []
    for layer in psi.layers:
        a = layer.cross_attn
        wq, bq = lin(a.q_proj)
        wk, bk = lin(a.k_proj)
        wv, bv = lin(a.v_proj)
        wo, bo = lin(a.out_proj)
        w1, b1 = lin(layer.linear1)
        layers.append(_Layer(ln(layer.layer_norm1), ln(layer.layer_norm2), ln(layer.layer_norm3),
                             wq, bq, wk, bk, wv, bv, wo, bo, w1, b1, int(getattr(a, "heads", 1))).fold())
    wmu, bmu = lin(psi.mean_proj)
    return layers, wmu, bmu


# --------------------------------------------------------------------------------------------------
# vectors written in a basis: x = rho * sum_m alpha_m P[o, m] + sum_s zeta_s Z[s]
# --------------------------------------------------------------------------------------------------
def _center(x: Tensor) -> Tensor:
    return x - x.mean(dim=-1, keepdim=True)


@dataclass
class _Grams:
    """Gram matrices of a basis: ``pp [n_o, M, M]``, ``pz [n_o, M, S]``, ``zz [S, S]``."""

    pp: Tensor  # [n_o, M, M] rows with rows
    pz: Tensor  # [n_o, M, S] rows with shared rows
    zz: Tensor  # [S, S] shared rows with shared rows

    @staticmethod
    def of(P: Tensor, Z: Tensor) -> _Grams:
        return _Grams(P @ P.transpose(1, 2), P @ Z.T, Z @ Z.T)


def _ln_basis(P: Tensor, Z: Tensor, ln: _LN) -> tuple[Tensor, Tensor, _Grams]:
    """LayerNorm acting on basis rows: ``(g * C P, [g * C Z; b])`` and the centred Grams of the input."""
    Pc, Zc = _center(P), _center(Z)  # [n_o, M, D], [S, D]
    return ln.g * Pc, torch.cat([ln.g * Zc, ln.b[None]]), _Grams.of(Pc, Zc)


def _linear_basis(P: Tensor, Z: Tensor, W: Tensor, b: Tensor, residual: bool = False) -> tuple[Tensor, Tensor]:
    """``x -> W x + b`` (``+ x`` with ``residual``) on basis rows; the bias joins the last shared row,
    whose coefficient is always 1."""
    P2, Z2 = P @ W.T, Z @ W.T  # [n_o, M, D], [S, D]
    if residual:
        P2, Z2 = P2 + P, Z2 + Z  # [n_o, M, D], [S, D]
    Z2 = torch.cat([Z2[:-1], (Z2[-1] + b)[None]])  # [S, D]
    return P2, Z2


def _sq_norm(q: Tensor, lin: Tensor, zz: list[list[float]], rho: Tensor | float, zeta: Tensor) -> Tensor:
    """``|x|^2`` for ``x = rho * alpha'P + zeta'Z`` from ``q = alpha'G_pp alpha [n_o, 1, n_p]``,
    ``lin = G_pz' alpha [n_o, S, n_p]`` and the shared rows' Gram ``zz`` (S x S, S <= 4 or so);
    ``zeta [n_o, S, n_p]``."""
    out = rho * (rho * q + 2.0 * (lin * zeta).sum(1, keepdim=True))  # [n_o, 1, n_p]
    for r in range(len(zz)):
        zr = zeta[:, r:r + 1]  # [n_o, 1, n_p]
        acc = zz[r][r] * zr  # [n_o, 1, n_p]
        for c in range(r + 1, len(zz)):
            acc = acc + (2.0 * zz[r][c]) * zeta[:, c:c + 1]  # [n_o, 1, n_p]
        out = out + acc * zr  # [n_o, 1, n_p]
    return out


def _ln_step(q: Tensor, lin: Tensor, zz: list[list[float]], eps: float, dim: int, rho: Tensor | float,
             zeta: Tensor) -> tuple[Tensor, Tensor]:
    """Coefficients after a LayerNorm (its basis side is :func:`_ln_basis`): ``rho / sigma`` and
    ``[zeta / sigma; 1]``."""
    inv = torch.rsqrt(_sq_norm(q, lin, zz, rho, zeta).clamp_min(0.0) / dim + eps)  # [n_o, 1, n_p]
    return rho * inv, torch.cat([(zeta * inv).expand(-1, -1, inv.shape[2]), torch.ones_like(inv)], dim=1)


# --------------------------------------------------------------------------------------------------
# per-owner precomputation (owner = video for frame context, text for word context)
# --------------------------------------------------------------------------------------------------
@dataclass
class _OwnerLayer:
    """One psi layer, per owner.

    ``stack [n_o, 3M + S2 + S3 + Sn + E, M]`` holds every matrix that multiplies the layer's attention
    weights ``alpha [n_o, M, n_p]`` (one ``bmm`` per block of pairs): the three ``M x M`` Grams (LN2,
    LN3, and "next" = the next layer's LN1, or the uncentred Gram of Delta after the last layer), the
    matching ``G_pz'`` rows, then the tail: the next layer's query-key logits (``[H'L, M]``) or, after
    the last layer, ``E`` extra rows ``<X_e, P_delta_m>`` asked for by the caller.
    """

    heads: int
    logit_mask: Tensor | None  # [n_o, 1, L, 1] bool, False on padded context rows
    kt: Tensor | None  # layer 0: [n_o, H*L, D] rows C(g1 * W_q[h]^T K_hl) / sqrt(d_h)
    ck: Tensor | None  # layer 0: [n_o, H*L, 1] <W_q b1 + b_q, K_hl> / sqrt(d_h)
    stack: Tensor  # [n_o, 3M + S2 + S3 + Sn + E (or H'L), M]
    zz: tuple[list[list[float]], ...]  # shared-row Grams of the three norms (S x S)
    eps: tuple[float, float, float | None]  # LayerNorm eps of the three norms (None: plain |Delta|^2)
    qk_z_next: Tensor | None  # [n_o, H'L, S_next] next layer's logits of the shared rows


@dataclass
class _Owner:
    layers: list[_OwnerLayer]
    p_delta: Tensor  # [n_o, M, D] final basis rows of Delta
    z_delta: Tensor  # [S, D] shared rows (the last one has coefficient 1)


def _keys_values(lp: _Layer, kc: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-head keys ``[n_o, L, H, d_h]`` and values (None when H = 1: folded into the output map)."""
    n_o, L, D = kc.shape
    H = lp.heads
    kh = (kc @ lp.wk.T + lp.bk).view(n_o, L, H, D // H)  # [n_o, L, H, d_h]
    vh = (kc @ lp.wv.T + lp.bv).view(n_o, L, H, D // H) if H > 1 else None  # [n_o, L, H, d_h]
    return kh, vh


def _attention_basis(lp: _Layer, kc: Tensor, vh: Tensor | None) -> Tensor:
    """``U [n_o, H*L, D]``: ``U_hl = W_out[:, head h] v_hl`` (one ``D x D`` map per row when H = 1)."""
    n_o, L, D = kc.shape
    H = lp.heads
    if H == 1:
        return kc @ lp.wov + lp.ov_bias  # [n_o, L, D]
    return torch.einsum("olhe,dhe->ohld", vh, lp.wo.view(D, H, D // H)).reshape(n_o, H * L, D)  # [n_o, HL, D]


def _prepare_owner(layers: list[_Layer], wmu: Tensor, bmu: Tensor, ctx: Tensor, cmask: Tensor | None,
                   extra: Tensor | None = None) -> _Owner:
    """Everything psi needs that depends on the context owner only.

    ``ctx [n_o, L, D]``, ``cmask [n_o, L]``; ``extra [n_o, E, D]``: vectors whose products with the
    final basis rows the caller needs per pair (they end the last layer's stack).
    """
    n_o, L, D = ctx.shape
    kcs = [torch.nn.functional.layer_norm(ctx, (D,), lp.ln1.g, lp.ln1.b, lp.ln1.eps) for lp in layers]  # [n_o, L, D]
    mask = None if cmask is None else cmask.bool().view(n_o, 1, L, 1)  # [n_o, 1, L, 1]
    out: list[_OwnerLayer] = []
    kh_next = vh = None
    for li, lp in enumerate(layers):
        H = lp.heads
        dh = D // H
        scale = 1.0 / math.sqrt(dh)
        kt = ck = None
        if li == 0:
            # <W_q(g1 * C q), K_h> = <q, C(g1 * W_q[h]^T K_h)>;  K_h = W_k[h] kc + b_k[h]
            if H == 1:
                kt = _center(lp.ln1.g * (kcs[0] @ lp.wkq + lp.kq_bias)) * scale  # [n_o, L, D]
                ck = (kcs[0] @ lp.kc_vec + lp.kc_const)[:, :, None] * scale  # [n_o, L, 1]
            else:
                c = lp.wq @ lp.ln1.b + lp.bq  # [D]
                kh, vh = _keys_values(lp, kcs[0])  # [n_o, L, H, d_h] each
                kt = _center(lp.ln1.g * torch.einsum("olhe,hed->ohld", kh, lp.wq.view(H, dh, D)))  # [n_o, H, L, D]
                kt = (kt * scale).reshape(n_o, H * L, D)  # [n_o, HL, D]
                ck = (torch.einsum("he,olhe->ohl", c.view(H, dh), kh) * scale).reshape(n_o, H * L, 1)  # [n_o, HL, 1]
        else:
            kh, vh = kh_next, vh
        P = _attention_basis(lp, kcs[li], vh)  # [n_o, M, D]
        Z = lp.bo[None]  # [1, D]
        P, Z, g2 = _ln_basis(P, Z, lp.ln2)  # [n_o, M, D], [2, D]
        P, Z = _linear_basis(P, Z, lp.w1, lp.b1, residual=True)  # [n_o, M, D], [2, D]
        P, Z, g3 = _ln_basis(P, Z, lp.ln3)  # [n_o, M, D], [3, D]
        qk_z_next = None
        if li + 1 < len(layers):
            nl = layers[li + 1]
            Hn = nl.heads
            kh_next, vh = _keys_values(nl, kcs[li + 1])  # [n_o, L, H', d_h'] each
            P1, Z1, gn = _ln_basis(P, Z, nl.ln1)  # [n_o, M, D], [4, D]
            Pq, Zq = _linear_basis(P1, Z1, nl.wq, nl.bq)  # [n_o, M, D], [4, D]
            sn = 1.0 / math.sqrt(D // Hn)
            tail = torch.einsum("omhe,olhe->ohlm", Pq.view(n_o, -1, Hn, D // Hn), kh_next)  # [n_o, H', L, M]
            tail = tail.reshape(n_o, Hn * L, -1)  # [n_o, H'L, M]
            qk_z_next = torch.einsum("she,olhe->ohls", Zq.view(-1, Hn, D // Hn), kh_next)  # [n_o, H', L, 4]
            qk_z_next = qk_z_next.reshape(n_o, Hn * L, -1)  # [n_o, H'L, 4]
            tail, qk_z_next = tail * sn, qk_z_next * sn
            eps_n = nl.ln1.eps
        else:
            P, Z = _linear_basis(P, Z, wmu, bmu)  # [n_o, M, D], [3, D]
            gn = _Grams.of(P, Z)
            if extra is not None:
                tail = torch.bmm(extra, P.transpose(1, 2))  # [n_o, E, M]
            else:
                tail = P.new_zeros(n_o, 0, P.shape[1])  # [n_o, 0, M]
            eps_n = None
        stack = torch.cat([g2.pp, g3.pp, gn.pp, g2.pz.transpose(1, 2), g3.pz.transpose(1, 2),
                           gn.pz.transpose(1, 2), tail], dim=1)  # [n_o, 3M + S2 + S3 + Sn + E, M]
        out.append(_OwnerLayer(H, mask, kt, ck, stack, (g2.zz.tolist(), g3.zz.tolist(), gn.zz.tolist()),
                               (lp.ln2.eps, lp.ln3.eps, eps_n), qk_z_next))
    return _Owner(out, P, Z)


def _psi_coeffs(own: _Owner, logits0: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Coefficients of ``Delta`` in the owner's final basis from the first layer's scaled logits
    ``[n_o, H*L, n_p]`` (``n_p`` may be 1 when they do not depend on the partner).

    Returns ``alpha [n_o, M, n_p]``, ``rho [n_o, 1, n_p]``, ``zeta [n_o, S, n_p]`` (``Delta = rho
    alpha'P + zeta'Z``), ``|Delta|^2 [n_o, 1, n_p]`` and the extra rows times alpha ``[n_o, E, n_p]``.
    """
    logits = logits0
    for ol in own.layers:
        n_o, M, n_p = logits.shape
        lg = logits.view(n_o, ol.heads, M // ol.heads, n_p)  # [n_o, H, L, n_p]
        if ol.logit_mask is not None:
            lg = lg.masked_fill(~ol.logit_mask, float("-inf"))
        alpha = lg.softmax(dim=2).reshape(n_o, M, n_p)  # [n_o, M, n_p]
        Y = torch.bmm(ol.stack, alpha)  # [n_o, 3M + S2 + S3 + Sn + E, n_p]
        quads = (Y[:, :3 * M].view(n_o, 3, M, n_p) * alpha[:, None]).sum(2)  # [n_o, 3, n_p]
        off = 3 * M
        lins = []
        for zz in ol.zz:
            lins.append(Y[:, off:off + len(zz)])  # [n_o, S_k, n_p]
            off += len(zz)
        tail = Y[:, off:]  # [n_o, E or H'L, n_p]
        rho, zeta = 1.0, alpha.new_ones(1, 1, 1)
        for k in (0, 1):
            # rho [n_o, 1, n_p], zeta [n_o, S, n_p]
            rho, zeta = _ln_step(quads[:, k:k + 1], lins[k], ol.zz[k], ol.eps[k], dim, rho, zeta)
        if ol.eps[2] is not None:  # the next layer's LN1 and query-key logits
            rho, zeta = _ln_step(quads[:, 2:3], lins[2], ol.zz[2], ol.eps[2], dim, rho, zeta)
            logits = rho * tail + torch.bmm(ol.qk_z_next, zeta)  # [n_o, H'L, n_p]
            continue
        dd = _sq_norm(quads[:, 2:3], lins[2], ol.zz[2], rho, zeta)  # [n_o, 1, n_p] |Delta|^2
        return alpha, rho, zeta, dd, tail
    raise AssertionError("unreachable: the last layer returns")


def _first_logits(own: _Owner, q_mode: str, sign: float, tk: Tensor, vk: Tensor | None, inv_q: Tensor) -> Tensor:
    """Layer-0 logits: gap query ``sign * inv_q * (vK - tK) + cK``; text query ``inv_q * tK + cK``."""
    ol = own.layers[0]
    if q_mode == "gap":
        return (sign * inv_q) * (vk - tk) + ol.ck  # [n_o, HL, n_p]
    return inv_q * tk + ol.ck  # [n_o, HL, n_p]


def _gap_inv_sigma(ln: _LN, sign: float, tt_c: Tensor, vv_c: Tensor, tv: Tensor, mt: Tensor, mv: Tensor,
                   dim: int) -> Tensor:
    """``1 / sigma`` of LN1 applied to ``sign * (vbar - t)``:
    ``|C(v - t)|^2 = |Cv|^2 + |Ct|^2 - 2(<t,v> - D m_t m_v)``."""
    sq = vv_c + tt_c - 2.0 * (tv - dim * mt * mv)  # broadcast of the inputs, e.g. [n_v, 1, n_p]
    return torch.rsqrt((sign * sign) * sq.clamp_min(0.0) / dim + ln.eps)


# --------------------------------------------------------------------------------------------------
# block scoring
# --------------------------------------------------------------------------------------------------
class _Plan:
    def __init__(self, scorer: PairScorer, dtype: torch.dtype, device: torch.device):
        cfg = scorer.cfg
        self.cfg = cfg
        self.dim = scorer.dim
        self.use_delta = scorer.psi is not None
        self.sign = cfg.eta  # q = eta * (vbar - t) on either side
        self.inv_temp = 1.0 / cfg.pool_temperature
        if self.use_delta:
            self.layers, self.wmu, self.bmu = _read_psi(scorer.psi, self.dim, dtype, device)
            self.ln1 = self.layers[0].ln1


@dataclass
class _TextStats:
    """Per-text scalars. Built ``[N_t]``; the block code reshapes them (:meth:`map`) to broadcast
    against per-pair tensors (``[1, 1, n_p]``, ``[n_o, 1, g]`` or ``[n_t, 1, 1]``)."""

    tt: Tensor  # |t|^2
    mt: Tensor  # mean of t's entries
    tt_c: Tensor  # |C t|^2 (C: centring)
    inv_t: Tensor | None = None  # 1 / sigma of LN1(t) (text query); None without psi
    tz: Tensor | None = None  # <Z_delta_s, t> with Delta's shared rows, ``[..., S, ...]``; set per video block

    def map(self, fn) -> _TextStats:
        """The same statistics with ``fn`` applied to every scalar field (``tz`` is left out: the caller
        lays it out)."""
        return _TextStats(fn(self.tt), fn(self.mt), fn(self.tt_c), None if self.inv_t is None else fn(self.inv_t))

    def slice(self, i: int, n: int) -> _TextStats:
        """Texts ``i .. i + n - 1`` (``[n]`` each)."""
        return self.map(lambda x: x[i:i + n])

    def gather(self, idx: Tensor) -> _TextStats:
        """The texts of ``idx [n_o, g]``, shaped ``[n_o, 1, g]`` each."""
        return self.map(lambda x: x.index_select(0, idx.reshape(-1)).view(idx.shape)[:, None])


@dataclass
class _VideoStats:
    """Per-video mean frame and its scalars."""

    vbar: Tensor  # [n_v, D] mean of the valid frames
    vv: Tensor  # [n_v] |vbar|^2
    mv: Tensor  # [n_v] mean of vbar's entries
    vv_c: Tensor  # [n_v] |C vbar|^2

    def slice(self, j: int, n: int) -> _VideoStats:
        return _VideoStats(self.vbar[j:j + n], self.vv[j:j + n], self.mv[j:j + n], self.vv_c[j:j + n])


@dataclass
class _VideoRows:
    """Per-video matrices of the frame-context path (one video block).

    ``rows [n_v, Q, D + 1]``: the vectors the texts are multiplied with, ``[f / T_pool; vbar; Kt; P_delta]``
    (each part only when needed), with one extra column that meets a constant 1 appended to the texts:
    ``-<vbar, Kt>`` on the Kt rows of the gap query, so the product gives ``<t - vbar, Kt>`` directly.
    """

    rows: Tensor  # [n_v, Q, D + 1]
    ff: Tensor | None  # [n_v, F, F] frame Gram (text pooling)
    zx: Tensor | None  # <x, Z_delta_s>: [n_v, F, S] with x the frames (text pooling), [n_v, S, 1] with x = vbar (mean)


def _text_stats(plan: _Plan, t: Tensor) -> _TextStats:
    """Per-text quantities ``[N_t]``: squared norm, mean, centred squared norm, text-query LN1 scale."""
    D = plan.dim
    tc = _center(t)  # [N_t, D]
    tt_c = (tc * tc).sum(-1)  # [N_t]
    inv_t = torch.rsqrt(tt_c / D + plan.ln1.eps) if plan.use_delta else None  # [N_t]
    return _TextStats((t * t).sum(-1), t.mean(-1), tt_c, inv_t)


def _video_stats(f: Tensor, mask: Tensor | None) -> _VideoStats:
    vbar = masked_mean(f, mask)  # [n_v, D]
    vc = _center(vbar)  # [n_v, D]
    return _VideoStats(vbar, (vbar * vbar).sum(-1), vbar.mean(-1), (vc * vc).sum(-1))


def _video_rows(plan: _Plan, own: _Owner | None, f: Tensor, vs: _VideoStats) -> _VideoRows:
    """The product rows and small per-video matrices of the frame-context path (once per video block)."""
    cfg = plan.cfg
    ff = zx = None
    rows = []
    if cfg.pooling == "text":
        ff = f @ f.transpose(1, 2)  # [n_v, F, F]
        rows.append(f * plan.inv_temp)  # [n_v, F, D]
    if cfg.pooling == "mean" or (own is not None and cfg.query == "gap"):
        rows.append(vs.vbar[:, None])  # [n_v, 1, D]
    if own is not None:
        rows += [own.layers[0].kt, own.p_delta]  # [n_v, HL, D], [n_v, M, D]
    R = torch.cat(rows, dim=1)  # [n_v, Q, D]
    R = torch.cat([R, R.new_zeros(R.shape[0], R.shape[1], 1)], dim=2)  # [n_v, Q, D + 1]
    if own is not None:
        kt = own.layers[0].kt  # [n_v, HL, D]
        HL, M = kt.shape[1], own.p_delta.shape[1]
        if cfg.query == "gap":
            R[:, -(HL + M):-M, -1] = -torch.bmm(kt, vs.vbar[:, :, None])[:, :, 0]  # [n_v, HL]
        if cfg.pooling == "text":
            zx = f @ own.z_delta.T  # [n_v, F, S]
        else:
            zx = (own.z_delta @ vs.vbar.T).T[:, :, None]  # [n_v, S, 1]
    return _VideoRows(R, ff, zx)


def _video_extra(plan: _Plan, f: Tensor, vs: _VideoStats) -> Tensor:
    """Vectors whose products with Delta's basis the frame path needs: the frames ``[n_v, F, D]`` (text
    pooling) or the mean video ``[n_v, 1, D]``."""
    return f if plan.cfg.pooling == "text" else vs.vbar[:, None]


def _score_video_owner(plan: _Plan, own: _Owner | None, vr: _VideoRows, fmask: Tensor | None, vs: _VideoStats,
                       G: Tensor, ps: _TextStats) -> Tensor:
    """Frame context (or no Delta): videos own the basis.

    ``G [n_v, Q, n_p]``: ``vr.rows`` times the texts (with a constant 1 appended); ``ps``: text
    statistics shaped ``[1 or n_v, 1, n_p]`` (``tz``: ``[1 or n_v, S, n_p]``). Returns ``[n_v, n_p]``.
    """
    cfg, D = plan.cfg, plan.dim
    n_v = G.shape[0]
    text_pool = cfg.pooling == "text"
    pos = 0
    if text_pool:
        Fr = vr.ff.shape[1]
        lg = G[:, :Fr]  # [n_v, F, n_p] <t, f> / T_pool
        pos = Fr
        w = (lg if fmask is None else lg.masked_fill(~fmask[:, :, None], float("-inf"))).softmax(dim=1)  # [n_v, F, n_p]
        t_vhat = (w * lg).sum(1, keepdim=True) * cfg.pool_temperature  # [n_v, 1, n_p]
        vhat_sq = (torch.bmm(vr.ff, w) * w).sum(1, keepdim=True)  # [n_v, 1, n_p]
    if cfg.pooling == "mean" or (own is not None and cfg.query == "gap"):
        tv = G[:, pos:pos + 1]  # [n_v, 1, n_p] <t, vbar>
        pos += 1
    if cfg.pooling == "mean":
        t_vhat = tv  # [n_v, 1, n_p]
        vhat_sq = vs.vv.view(n_v, 1, 1)  # [n_v, 1, 1]
    if own is None:
        return final_cosine(t_vhat, ps.tt, vhat_sq)[:, 0]  # [n_v, n_p]
    ol = own.layers[0]
    HL = ol.kt.shape[1]
    g_k = G[:, pos:pos + HL]  # [n_v, HL, n_p] gap: <t - vbar, Kt>; text query: <t, Kt>
    tp = G[:, pos + HL:]  # [n_v, M, n_p] <t, P_delta>
    if cfg.query == "gap":
        inv_q = _gap_inv_sigma(plan.ln1, plan.sign, ps.tt_c, vs.vv_c.view(n_v, 1, 1), tv,
                               ps.mt, vs.mv.view(n_v, 1, 1), D)  # [n_v, 1, n_p]
        logits0 = torch.addcmul(ol.ck, inv_q, g_k, value=-plan.sign)  # [n_v, HL, n_p]
    else:
        logits0 = torch.addcmul(ol.ck, ps.inv_t, g_k)  # [n_v, HL, n_p]
    alpha, rho, zeta, dd, xp = _psi_coeffs(own, logits0, D)  # xp = <X_e, alpha'P_delta> [n_v, E, n_p]
    t_delta = rho * (alpha * tp).sum(1, keepdim=True) + (zeta * ps.tz).sum(1, keepdim=True)  # [n_v, 1, n_p]
    if text_pool:
        d_vhat = ((rho * xp + torch.bmm(vr.zx, zeta)) * w).sum(1, keepdim=True)  # [n_v, 1, n_p]
    else:
        d_vhat = rho * xp + (zeta * vr.zx).sum(1, keepdim=True)  # [n_v, 1, n_p]
    s = final_cosine(t_vhat, ps.tt, vhat_sq, side=cfg.side, t_delta=t_delta, d_vhat=d_vhat, dd=dd)
    return s[:, 0]  # [n_v, n_p]


def _score_text_owner(plan: _Plan, own: _Owner, t: Tensor, ts: _TextStats, f: Tensor, fmask: Tensor | None,
                      vs: _VideoStats) -> Tensor:
    """Word context: texts ``t [n_t, D]`` own the basis; videos ``f [n_v, F, D]``. Returns ``[n_t, n_v]``."""
    cfg, D = plan.cfg, plan.dim
    n_t = t.shape[0]
    n_v, Fr, _ = f.shape
    vbar = vs.vbar  # [n_v, D]
    kt = own.layers[0].kt  # [n_t, HL, D]
    HL = kt.shape[1]
    tk = torch.bmm(kt, t[:, :, None])  # [n_t, HL, 1] <t, Kt>
    tp = torch.bmm(own.p_delta, t[:, :, None])  # [n_t, M, 1] <t, P_delta>
    tz = (own.z_delta @ t.T).T[:, :, None]  # [n_t, S, 1] <t, Z_delta>
    # products with the mean video: [t; Kt; P_delta] . vbar
    rows = [t[:, None]]  # [n_t, 1, D]
    if cfg.query == "gap":
        rows.append(kt)  # [n_t, HL, D]
    if cfg.pooling == "mean":
        rows.append(own.p_delta)  # [n_t, M, D]
    R = torch.cat(rows, dim=1)  # [n_t, Q, D]
    G = (R.reshape(-1, D) @ vbar.T).view(n_t, -1, n_v)  # [n_t, Q, n_v]
    tv = G[:, :1]  # [n_t, 1, n_v] <t, vbar>
    pos = 1
    ts = ts.map(lambda x: x.view(n_t, 1, 1))  # [n_t, 1, 1] each
    if cfg.query == "gap":
        vk = G[:, pos:pos + HL]  # [n_t, HL, n_v] <vbar, Kt>
        pos += HL
        inv_q = _gap_inv_sigma(plan.ln1, plan.sign, ts.tt_c, vs.vv_c[None, None], tv,
                               ts.mt, vs.mv[None, None], D)  # [n_t, 1, n_v]
        logits0 = _first_logits(own, "gap", plan.sign, tk, vk, inv_q)  # [n_t, HL, n_v]
    else:
        logits0 = _first_logits(own, "text", plan.sign, tk, None, ts.inv_t)  # [n_t, HL, 1]
    alpha, rho, zeta, dd, _ = _psi_coeffs(own, logits0, D)  # [n_t, M, n_v or 1], [n_t, 1, .], [n_t, S, .], [n_t, 1, .]
    t_delta = rho * (alpha * tp).sum(1, keepdim=True) + (zeta * tz).sum(1, keepdim=True)  # [n_t, 1, n_v or 1]
    if cfg.pooling == "mean":
        vp = G[:, pos:]  # [n_t, M, n_v] <vbar, P_delta>
        vz = (own.z_delta @ vbar.T)[None]  # [1, S, n_v]
        t_vhat = tv  # [n_t, 1, n_v]
        vhat_sq = vs.vv[None, None]  # [1, 1, n_v]
        d_vhat = rho * (alpha * vp).sum(1, keepdim=True) + (zeta * vz).sum(1, keepdim=True)  # [n_t, 1, n_v]
    else:
        tf = (t @ f.reshape(n_v * Fr, D).T).view(n_t, n_v, Fr)  # [n_t, n_v, F] <t, f>
        lg = tf * plan.inv_temp  # [n_t, n_v, F]
        if fmask is not None:
            lg = lg.masked_fill(~fmask.bool()[None], float("-inf"))
        w = lg.softmax(dim=-1)  # [n_t, n_v, F]
        t_vhat = (w * tf).sum(-1)[:, None]  # [n_t, 1, n_v]
        vhat = torch.bmm(w.transpose(0, 1), f)  # [n_v, n_t, D]
        vhat_sq = (vhat * vhat).sum(-1).T[:, None]  # [n_t, 1, n_v]
        delta = rho.transpose(1, 2) * torch.bmm(alpha.transpose(1, 2), own.p_delta) + \
            zeta.transpose(1, 2) @ own.z_delta  # [n_t, n_v or 1, D] Delta_ij explicitly
        d_vhat = (delta * vhat.transpose(0, 1)).sum(-1)[:, None]  # [n_t, 1, n_v]
    s = final_cosine(t_vhat, ts.tt, vhat_sq, side=cfg.side, t_delta=t_delta, d_vhat=d_vhat, dd=dd)
    return s[:, 0]  # [n_t, n_v]


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------
PAIRS_PER_BLOCK = 2**16  # per-pair tensors of one block stay cache-sized (measured on a 2-core EPYC)
OWNERS_PER_BLOCK = 128
GATHERED_PAIRS_PER_BLOCK = 2**14  # pair path: the gathered texts of a block stay in cache


def block_sizes(n_owner: int, n_partner: int, dim: int, frames: int, ctx_len: int, heads: int, layers: int,
                words: bool, itemsize: int, memory_budget: int) -> tuple[int, int]:
    """``(owner block, partner block)``: at most about 40% of ``memory_budget`` bytes for per-owner
    bases and 40% for per-pair tensors, and blocks of at most ``PAIRS_PER_BLOCK`` pairs (the per-pair
    work is a chain of elementwise passes that run several times faster in cache)."""
    M = heads * ctx_len
    per_owner = itemsize * (dim * (frames + ctx_len + 1 + (6 + 6 * layers) * M) + layers * 4 * (M + 8) ** 2
                            + (M + 8) * (frames + 8))
    per_pair = itemsize * (frames * 4 + M * 12 + 64 + (3 * dim if words else 0))
    bo = int(max(1, min(n_owner, OWNERS_PER_BLOCK, (0.4 * memory_budget) // per_owner)))
    bp = int(max(1, min(n_partner, max(1, PAIRS_PER_BLOCK // bo), (0.4 * memory_budget) // (per_pair * bo))))
    return bo, bp


def _setup(scorer: PairScorer, t: Tensor, f: Tensor, video_mask: Tensor | None):
    if not supports(scorer):
        raise ValueError("the fast scorer does not cover this scorer configuration; use PairScorer.similarity")
    check_inputs(t, f, video_mask)
    dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    t, f = t.to(dtype), f.to(device=t.device, dtype=dtype)
    if video_mask is not None:
        video_mask = video_mask.to(t.device).bool()
    return _Plan(scorer, dtype, t.device), t, f, video_mask


def _video_block(plan: _Plan, f: Tensor, mask: Tensor | None) -> tuple[_VideoStats, _Owner | None, _VideoRows]:
    """Per-video work of one block of videos ``f [n_v, F, D]``: statistics, psi bases, product rows."""
    vs = _video_stats(f, mask)
    own = None
    if plan.use_delta:
        own = _prepare_owner(plan.layers, plan.wmu, plan.bmu, f, mask, _video_extra(plan, f, vs))
    return vs, own, _video_rows(plan, own, f, vs)


def _shape_info(plan: _Plan) -> tuple[int, int]:
    return (plan.layers[0].heads, len(plan.layers)) if plan.use_delta else (1, 0)


def reference_is_cheaper(scorer: PairScorer, n_texts: int, n_videos: int, frames: int,
                         words_len: int | None = None) -> bool:
    """Whether the per-pair reference costs less than the fast path for this many texts and videos.

    The fast path spends about ``4 F D^2`` per context owner (a video, or a text with word context) on its
    bases and then ``O(F D)`` per pair; the reference spends ``2 F D^2`` per owner (keys and values) and
    about ``4 D^2`` per pair. With a handful of partners per owner (a single search query against K
    candidates) the reference is cheaper: measured crossover near ``3F/4`` partners on a 2-core CPU.
    """
    if scorer.psi is None:
        return False
    if scorer.cfg.context == "words":
        return 4 * n_videos < 3 * (words_len or 1)
    return 4 * n_texts < 3 * frames


@torch.no_grad()
def fast_similarity(scorer: PairScorer, t: Tensor, f: Tensor, video_mask: Tensor | None = None, *,
                    words: Tensor | None = None, word_mask: Tensor | None = None,
                    memory_budget: int = 256 * 2**20, auto_reference: bool = True) -> Tensor:
    """Exact inference scores ``[N_t, N_v]`` (same numbers as :meth:`PairScorer.forward` in eval mode).

    ``t [N_t, D]`` texts, ``f [N_v, F, D]`` temporal outputs, ``video_mask [N_v, F]`` (True = valid),
    ``words [N_t, L, D]`` + ``word_mask [N_t, L]`` for word context. Work is done in blocks so the
    working set stays near ``memory_budget`` bytes (plus the output). Half-precision inputs are
    computed in float32 (the LayerNorm statistics come from Gram matrices). With ``auto_reference``
    the blockwise reference is used where it is cheaper (:func:`reference_is_cheaper`: very few texts,
    e.g. one search query); both give the same scores.
    """
    if auto_reference and supports(scorer) and reference_is_cheaper(
            scorer, t.shape[0], f.shape[0], f.shape[1], words.shape[1] if words is not None else None):
        was_training = scorer.training
        scorer.eval()
        try:
            return scorer.similarity(t, f, video_mask, words=words, word_mask=word_mask, memory_budget=memory_budget)
        finally:
            scorer.train(was_training)
    out_dtype = t.dtype
    plan, t, f, video_mask = _setup(scorer, t, f, video_mask)
    out = torch.empty(t.shape[0], f.shape[0], dtype=out_dtype, device=t.device)  # [N_t, N_v]
    if plan.use_delta and plan.cfg.context == "words":
        words, word_mask = _check_words(t, words, word_mask)
        _similarity_words(plan, t, f, video_mask, words, word_mask, memory_budget, out)
    else:
        _similarity_frames(plan, t, f, video_mask, memory_budget, out)
    return out


def _check_words(t: Tensor, words: Tensor | None, word_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    N_t, D = t.shape
    if words is None:
        raise ValueError("context='words' needs the word embeddings of the texts (encode_text(..., "
                         "return_words=True))")
    if words.dim() != 3 or words.shape[0] != N_t or words.shape[2] != D:
        raise ValueError(f"words must be [N_t, L, D] = [{N_t}, L, {D}], got {tuple(words.shape)}")
    words = words.to(device=t.device, dtype=t.dtype)
    if word_mask is not None:
        word_mask = word_mask.to(t.device).bool()
        if tuple(word_mask.shape) != tuple(words.shape[:2]):
            raise ValueError(f"word mask must be [N_t, L] = {tuple(words.shape[:2])}, got {tuple(word_mask.shape)}")
    return words, word_mask


def _similarity_frames(plan: _Plan, t: Tensor, f: Tensor, video_mask: Tensor | None, memory_budget: int,
                       out: Tensor) -> None:
    """Frame context (or no Delta): videos own the basis; fills ``out [N_t, N_v]`` block by block."""
    N_t, N_v, Fr, D = t.shape[0], f.shape[0], f.shape[1], f.shape[2]
    heads, n_layers = _shape_info(plan)
    ts = _text_stats(plan, t)
    t1 = torch.cat([t, t.new_ones(N_t, 1)], dim=1)  # [N_t, D + 1]
    bo, bp = block_sizes(N_v, N_t, D, Fr, Fr, heads, n_layers, False, t.element_size(), memory_budget)
    for j in range(0, N_v, bo):
        mj = video_mask[j:j + bo] if video_mask is not None else None  # [n_v, F]
        vs, own, vr = _video_block(plan, f[j:j + bo], mj)
        tz = (own.z_delta @ t.T).T if own is not None else None  # [N_t, S]: shared rows, the same for all videos
        Q = vr.rows.shape[1]
        for i in range(0, N_t, bp):
            ps = ts.slice(i, bp).map(lambda x: x.view(1, 1, -1))  # [1, 1, n_p] each
            if tz is not None:
                ps.tz = tz[i:i + bp].T[None]  # [1, S, n_p]
            G = (vr.rows.view(-1, D + 1) @ t1[i:i + bp].T).view(-1, Q, t1[i:i + bp].shape[0])  # [n_v, Q, n_p]
            out[i:i + bp, j:j + bo] = _score_video_owner(plan, own, vr, mj, vs, G, ps).T


def _similarity_words(plan: _Plan, t: Tensor, f: Tensor, video_mask: Tensor | None, words: Tensor,
                      word_mask: Tensor | None, memory_budget: int, out: Tensor) -> None:
    """Word context: texts own the basis (their words); fills ``out [N_t, N_v]`` block by block."""
    N_t, N_v, Fr, D = t.shape[0], f.shape[0], f.shape[1], f.shape[2]
    heads, n_layers = _shape_info(plan)
    ts = _text_stats(plan, t)
    bo, bp = block_sizes(N_t, N_v, D, Fr, words.shape[1], heads, n_layers, True, t.element_size(), memory_budget)
    vs_all = _video_stats(f, video_mask)
    for i in range(0, N_t, bo):
        wm = word_mask[i:i + bo] if word_mask is not None else None  # [n_t, L]
        own = _prepare_owner(plan.layers, plan.wmu, plan.bmu, words[i:i + bo], wm)
        tsi = ts.slice(i, bo)  # [n_t] each
        for j in range(0, N_v, bp):
            mj = video_mask[j:j + bp] if video_mask is not None else None  # [n_v, F]
            out[i:i + bo, j:j + bp] = _score_text_owner(plan, own, t[i:i + bo], tsi, f[j:j + bp], mj,
                                                        vs_all.slice(j, bp))


def supports_pairs(scorer: PairScorer) -> bool:
    """Whether :func:`fast_pair_similarity` covers ``scorer`` (frame context, or no Delta)."""
    return supports(scorer) and (scorer.psi is None or scorer.cfg.context == "frames")


@torch.no_grad()
def fast_pair_similarity(scorer: PairScorer, t: Tensor, f: Tensor, video_mask: Tensor | None, text_idx: Tensor, *,
                         memory_budget: int = 256 * 2**20) -> Tensor:
    """Exact scores of selected pairs, grouped by video (two-stage reranking).

    ``text_idx [N_v, g]`` (long): the texts to score against each video, valid entries first, ``-1``
    for padding. Returns ``[N_v, g]`` with ``S[j, r] = s(t[text_idx[j, r]], video j)`` (NaN on
    padding). Cost is that of the selected pairs only; videos with similar numbers of texts are
    processed together so padding stays small.
    """
    if not supports_pairs(scorer):
        raise ValueError("fast_pair_similarity covers frame context only (see supports_pairs)")
    out_dtype = t.dtype
    plan, t, f, video_mask = _setup(scorer, t, f, video_mask)
    N_t, D = t.shape
    N_v, Fr = f.shape[:2]
    if text_idx.dim() != 2 or text_idx.shape[0] != N_v:
        raise ValueError(f"text_idx must be [N_v, g] = [{N_v}, g], got {tuple(text_idx.shape)}")
    text_idx = text_idx.to(t.device).long()
    if bool((text_idx >= N_t).any()):
        raise ValueError(f"text_idx holds indices >= N_t = {N_t}")
    out = torch.full(tuple(text_idx.shape), float("nan"), dtype=out_dtype, device=t.device)
    counts = (text_idx >= 0).sum(1)
    order = torch.argsort(counts, descending=True)
    g_max = int(counts.max()) if N_v else 0
    if g_max == 0:
        return out
    ts = _text_stats(plan, t)
    t1 = torch.cat([t, t.new_ones(N_t, 1)], dim=1)
    heads, n_layers = _shape_info(plan)
    itemsize = t.element_size()
    bo, _ = block_sizes(N_v, 1, D, Fr, Fr, heads, n_layers, False, itemsize, memory_budget)
    per_pair = itemsize * (Fr * 4 + heads * Fr * 12 + 64 + D + 1)
    bo = int(max(1, min(bo, GATHERED_PAIRS_PER_BLOCK // g_max, (0.4 * memory_budget) // (per_pair * g_max))))
    tz_all = None
    for j in range(0, N_v, bo):
        vid = order[j:j + bo]
        g = int(counts[vid].max())
        if g == 0:
            break
        idx = text_idx[vid, :g].clamp_min(0)  # [n_o, g]
        flat = idx.reshape(-1)
        mj = video_mask[vid] if video_mask is not None else None
        vs, own, vr = _video_block(plan, f[vid], mj)
        if own is not None and tz_all is None:
            tz_all = (own.z_delta @ t.T).T  # [N_t, S]
        ps = ts.gather(idx)  # [n_o, 1, g] each
        if tz_all is not None:
            ps.tz = tz_all.index_select(0, flat).view(*idx.shape, -1).transpose(1, 2)  # [n_o, S, g]
        G = torch.bmm(vr.rows, t1.index_select(0, flat).view(*idx.shape, -1).transpose(1, 2))  # [n_o, Q, g]
        res = _score_video_owner(plan, own, vr, mj, vs, G, ps).to(out_dtype)  # [n_o, g]
        valid = text_idx[vid, :g] >= 0
        out[vid, :g] = torch.where(valid, res, out[vid, :g])
    return out
