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

import hashlib
import logging
import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from .gallery import GALLERY_FORMAT, VideoGallery, check_compatible
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


def _sq_norm(q: Tensor, lin: Tensor, zz: Tensor, rho: Tensor | float, zeta: Tensor) -> Tensor:
    """``|x|^2`` for ``x = rho * alpha'P + zeta'Z`` from ``q = alpha'G_pp alpha [n_o, 1, n_p]``,
    ``lin = G_pz' alpha [n_o, S, n_p]`` and the shared rows' Gram ``zz [S, S]`` (S <= 4);
    ``zeta [n_o or 1, S, n_p or 1]``."""
    out = rho * (rho * q + 2.0 * (lin * zeta).sum(1, keepdim=True))  # [n_o, 1, n_p]
    return out + (torch.matmul(zz, zeta) * zeta).sum(1, keepdim=True)  # [n_o, 1, n_p]


def _ln_step(q: Tensor, lin: Tensor, zz: Tensor, eps: float, dim: int, rho: Tensor | float,
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
    zz: tuple[Tensor, Tensor, Tensor]  # [S_k, S_k] x3: shared-row Grams of the three norms
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
    """Everything psi needs that depends on the context owner only, with explicit basis rows: the words of
    a text (word context), or the frames of a video with single-head psi layers (frame context, where
    explicit rows cost ``4 F D^2`` per video).

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
        out.append(_OwnerLayer(H, mask, kt, ck, stack, (g2.zz, g3.zz, gn.zz),
                               (lp.ln2.eps, lp.ln3.eps, eps_n), qk_z_next))
    return _Owner(out, P, Z)


def _psi_coeffs(layers: list[_OwnerLayer], logits0: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Coefficients of ``Delta`` in the owner's final basis from the first layer's scaled logits
    ``[n_o, H*L, n_p]`` (``n_p`` may be 1 when they do not depend on the partner).

    Returns ``alpha [n_o, M, n_p]``, ``rho [n_o, 1, n_p]``, ``zeta [n_o, S, n_p]`` (``Delta = rho
    alpha'P + zeta'Z``), ``|Delta|^2 [n_o, 1, n_p]`` and the extra rows times alpha ``[n_o, E, n_p]``.
    """
    logits = logits0
    for ol in layers:
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
            lins.append(Y[:, off:off + zz.shape[0]])  # [n_o, S_k, n_p]
            off += zz.shape[0]
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
# the model's side, folded once per model: maps acting on value coefficients
# --------------------------------------------------------------------------------------------------
@dataclass
class _LayerMaps:
    """One psi layer folded with the weights that follow its attention, for the gallery path.

    A layer's attention output is ``a = sum_hl alpha_hl U_hl + b_out`` with ``U_hl = W_out[:, head h] v_hl``:
    a combination of the columns of ``W_out`` with the coefficients ``v_hl`` (head block ``h``). Carrying
    the basis rows ``W_out[:, r]`` (``r < D``) through the layer's fixed linear chain once per model gives
    ``D x D`` matrices; a video's ``M x M`` Grams are then ``V B V'`` head block by head block
    (``O(F D^2 + H F^2 D)`` per video), and its per-pair products ``<x, P_hl> = <(out_rows x)[h], v_hl>``
    (``O(F D)`` per pair) whatever the head count.
    """

    grams: tuple[Tensor, Tensor, Tensor]  # [D, D] x3: Gram of the basis rows at LN2's, LN3's and the "next" norm
    pz: tuple[Tensor, Tensor, Tensor]  # [D, S_k] x3: the same rows with the shared rows of each norm
    zz: tuple[Tensor, Tensor, Tensor]  # [S_k, S_k] x3: shared rows with shared rows
    eps: tuple[float, float, float | None]  # eps of LN2, LN3, next LN1 (None after the last layer: |Delta|^2)
    out_rows: Tensor  # [D, D] last layer: Delta's basis rows; else the next query's rows W_q' LN1'(.) / sqrt(d_h')
    z_out: Tensor  # [S, D] the matching shared rows (last one has coefficient 1)


def _layer_maps(lp: _Layer, nl: _Layer | None, wmu: Tensor, bmu: Tensor) -> _LayerMaps:
    """Run :func:`_ln_basis` / :func:`_linear_basis` on the ``D`` basis rows ``W_out[:, r]`` (one "owner")."""
    D = lp.wo.shape[0]
    P, Z = lp.wo.T[None], lp.bo[None]  # [1, D, D] row r = W_out[:, r], [1, D]
    P, Z, g2 = _ln_basis(P, Z, lp.ln2)  # [1, D, D], [2, D]
    P, Z = _linear_basis(P, Z, lp.w1, lp.b1, residual=True)  # [1, D, D], [2, D]
    P, Z, g3 = _ln_basis(P, Z, lp.ln3)  # [1, D, D], [3, D]
    if nl is not None:
        P, Z, gn = _ln_basis(P, Z, nl.ln1)  # [1, D, D], [4, D]
        P, Z = _linear_basis(P, Z, nl.wq, nl.bq)  # [1, D, D], [4, D]
        scale = 1.0 / math.sqrt(D // nl.heads)
        P, Z, eps_n = P * scale, Z * scale, nl.ln1.eps  # [1, D, D], [4, D]
    else:
        P, Z = _linear_basis(P, Z, wmu, bmu)  # [1, D, D], [3, D]
        gn, eps_n = _Grams.of(P, Z), None
    return _LayerMaps((g2.pp[0], g3.pp[0], gn.pp[0]), (g2.pz[0], g3.pz[0], gn.pz[0]),
                      (g2.zz, g3.zz, gn.zz), (lp.ln2.eps, lp.ln3.eps, eps_n), P[0], Z)


class _Plan:
    """The scorer's options and weights in the compute dtype, with the per-model folds of the gallery path."""

    def __init__(self, scorer: PairScorer, dtype: torch.dtype, device: torch.device):
        cfg = scorer.cfg
        self.cfg = cfg
        self.dim = scorer.dim
        self.dtype = dtype
        self.use_delta = scorer.psi is not None
        self.sign = cfg.eta  # q = eta * (vbar - t) on either side
        self.inv_temp = 1.0 / cfg.pool_temperature
        self.meta = gallery_meta(scorer)
        self.heads, self.n_layers = 1, 0
        if self.use_delta:
            self.layers, self.wmu, self.bmu = _read_psi(scorer.psi, self.dim, dtype, device)
            self.ln1 = self.layers[0].ln1
            self.heads, self.n_layers = self.layers[0].heads, len(self.layers)
            self.maps = [_layer_maps(lp, self.layers[i + 1] if i + 1 < len(self.layers) else None, self.wmu, self.bmu)
                         for i, lp in enumerate(self.layers)]
            l0, ll = self.layers[0], self.layers[-1]
            self.c0 = l0.wq @ l0.ln1.b + l0.bq  # [D] W_q b1 + b_q
            # single-head psi: the keys and values never need storing. <W_q LN1(q), W_k LN1(f_l) + b_k> and
            # <t, P_l> are products of per-query vectors with the frames f_l themselves (scaled by f_l's
            # LN1 1/sigma), so a gallery holds (F + 1) D numbers per video instead of (3F + 1) D.
            self.frames_mode = l0.heads == 1 and ll.heads == 1
            if self.frames_mode:
                s0 = 1.0 / math.sqrt(self.dim)
                out = self.maps[-1].out_rows  # [D, D]
                self.qk_map = (l0.wq.T @ l0.wk) * s0  # [D, D]: x -> <W_q x, W_k y> as x' (.) y
                self.qk_bias = (l0.wq.T @ (l0.wk @ l0.ln1.b + l0.bk)) * s0  # [D]
                self.pv_map = out.T @ ll.wv  # [D, D]: t -> W_v' out_rows t
                self.pv_bias = out.T @ (ll.wv @ ll.ln1.b + ll.bv)  # [D]


_PLAN_CACHE_ATTR = "_gare_fast_plan_cache"


def _plan_for(scorer: PairScorer, dtype: torch.dtype, device: torch.device) -> _Plan:
    """The scorer's :class:`_Plan`, cached on the scorer until one of its parameters changes (in-place
    updates bump a tensor's version counter; a replaced parameter has another identity)."""
    params = tuple((id(p), p.data_ptr(), p._version) for p in scorer.parameters())
    key = (dtype, str(device), params, repr(scorer.cfg), getattr(scorer, "release_padding", False))
    cached = scorer.__dict__.get(_PLAN_CACHE_ATTR)
    if cached is not None and cached[0] == key:
        return cached[1]
    plan = _Plan(scorer, dtype, device)
    scorer.__dict__[_PLAN_CACHE_ATTR] = (key, plan)
    return plan


def gallery_meta(scorer: PairScorer) -> dict:
    """Header that ties a gallery to the model and options that built it (compared before scoring)."""
    cfg = scorer.cfg
    h = hashlib.sha256()
    for name, p in sorted(scorer.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    opts = {"pooling": cfg.pooling, "query": cfg.query, "context": cfg.context, "side": cfg.side,
            "eta": float(cfg.eta), "pool_temperature": float(cfg.pool_temperature), "use_delta": scorer.psi is not None}
    if scorer.psi is not None:
        opts["heads"] = int(getattr(scorer.psi.layers[0].cross_attn, "heads", 1))
        opts["layers"] = len(scorer.psi.layers)
    return {"format": GALLERY_FORMAT, "dim": int(scorer.dim), "scorer": opts, "weights_sha256": h.hexdigest()[:16]}


# --------------------------------------------------------------------------------------------------
# statistics of texts and videos
# --------------------------------------------------------------------------------------------------
@dataclass
class _TextStats:
    """Per-text scalars. Built ``[N_t]``; the block code reshapes them (:meth:`map`) to broadcast
    against per-pair tensors (``[1, 1, n_p]``, ``[n_o, 1, g]`` or ``[n_t, 1, 1]``)."""

    tt: Tensor  # |t|^2
    mt: Tensor  # mean of t's entries
    tt_c: Tensor  # |C t|^2 (C: centring)
    inv_t: Tensor | None = None  # 1 / sigma of LN1(t) (text query); None without psi

    def map(self, fn) -> _TextStats:
        """The same statistics with ``fn`` applied to every field."""
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


# --------------------------------------------------------------------------------------------------
# the gallery: per-video bases (frame context), built once per video
# --------------------------------------------------------------------------------------------------
def _head_gram(V: Tensor, B: Tensor) -> Tensor:
    """``[n, M, M]`` with entries ``v_hl' B[h, h'] v_h'l'`` for values ``V [n, L, H, d_h]`` and ``B [D, D]``."""
    n, L, H, dh = V.shape
    X = torch.einsum("nlhe,hef->nlhf", V, B.view(H, dh, H * dh))  # [n, L, H, D]
    G = torch.einsum("nlhge,nmge->nhlgm", X.view(n, L, H, H, dh), V)  # [n, H, L, H, L]
    return G.reshape(n, H * L, H * L)


def _build_block(plan: _Plan, f: Tensor, mask: Tensor | None) -> VideoGallery:
    """The gallery of one block of videos ``f [n, F, D]`` (compute dtype), ``mask [n, F]``."""
    cfg = plan.cfg
    n, L, D = f.shape
    vs = _video_stats(f, mask)
    tx = torch.cat([f, vs.vbar[:, None]], dim=1)  # [n, F + 1, D]
    g = VideoGallery(dict(plan.meta), tx, vs.vv, vs.mv, vs.vv_c, mask)
    if plan.use_delta and cfg.context == "words":
        return g  # word context: the text owns psi's basis; only the video side is cached
    if cfg.pooling == "text":
        g.ff = f @ f.transpose(1, 2)  # [n, F, F]
    if not plan.use_delta:
        return g
    if plan.frames_mode:
        return _build_frames_mode(plan, g, f, mask, vs)
    kcs = [torch.nn.functional.layer_norm(f, (D,), lp.ln1.g, lp.ln1.b, lp.ln1.eps) for lp in plan.layers]  # [n, L, D]
    H = plan.heads
    dh = D // H
    M = H * L
    keys = [(kc @ lp.wk.T + lp.bk).view(n, L, lp.heads, -1) for kc, lp in zip(kcs, plan.layers)]  # [n, L, H, d_h]
    vals = [(kc @ lp.wv.T + lp.bv).view(n, L, lp.heads, -1) for kc, lp in zip(kcs, plan.layers)]  # [n, L, H, d_h]
    k0 = keys[0] / math.sqrt(dh)  # [n, L, H, d_h]
    l0 = plan.layers[0]
    qv = (l0.ln1.g * vs.vbar - l0.ln1.g * vs.mv[:, None]) @ l0.wq.T  # [n, D] W_q (g1 * C vbar)
    g.k0 = k0.reshape(n, L, D)  # [n, L, D]
    g.kv = torch.einsum("nhe,nlhe->nhl", qv.view(n, H, dh), k0).reshape(n, M)  # [n, M]
    g.ck = torch.einsum("he,nlhe->nhl", plan.c0.view(H, dh), k0).reshape(n, M)  # [n, M]
    for li, mp in enumerate(plan.maps):
        V = vals[li]  # [n, L, H, d_h]
        Hl = V.shape[2]
        pps = [_head_gram(V, B) for B in mp.grams]  # [n, M, M] x3
        pzs = [torch.einsum("nlhe,hes->nshl", V, pz.view(Hl, D // Hl, -1)).reshape(n, -1, Hl * L)
               for pz in mp.pz]  # [n, S_k, M] x3
        if li + 1 < len(plan.maps):
            Kn = keys[li + 1]  # [n, L, H', d_h']
            Hn = Kn.shape[2]
            X = torch.einsum("nlhe,hef->nlhf", V, mp.out_rows.view(Hl, D // Hl, D))  # [n, L, H, D]
            tail = torch.einsum("nlhge,nmge->ngmhl", X.view(n, L, Hl, Hn, D // Hn), Kn)  # [n, H', L, H, L]
            tail = tail.reshape(n, Hn * L, Hl * L)  # [n, H'L, M]
            qkz = torch.einsum("sge,nmge->ngms", mp.z_out.view(-1, Hn, D // Hn), Kn)  # [n, H', L, S']
            g.qkz.append(qkz.reshape(n, Hn * L, -1))  # [n, H'L, S']
        else:
            extra = f if cfg.pooling == "text" else vs.vbar[:, None]  # [n, E, D] E = F or 1
            ex = (extra @ mp.out_rows.T).view(n, extra.shape[1], Hl, D // Hl)  # [n, E, H, d_h]
            tail = torch.einsum("nehd,nlhd->nehl", ex, V).reshape(n, extra.shape[1], Hl * L)  # [n, E, M]
            g.zx = extra @ mp.z_out.T  # [n, E, S]
            if cfg.pooling == "mean":
                g.zx = g.zx.transpose(1, 2)  # [n, S, 1]
            g.v_last = V.reshape(n, L, D)  # [n, L, D]
        g.stacks.append(torch.cat(pps + pzs + [tail], dim=1))  # [n, 3M + S2 + S3 + Sn + E (or H'L), M]
    return g


def _build_frames_mode(plan: _Plan, g: VideoGallery, f: Tensor, mask: Tensor | None, vs: _VideoStats) -> VideoGallery:
    """Single-head psi: explicit basis rows (``4 F D^2`` per video), and per frame the LN1 scales that let
    queries meet the frames directly (:class:`_Plan`, ``frames_mode``)."""
    n, L, D = f.shape
    extra = f if plan.cfg.pooling == "text" else vs.vbar[:, None]  # [n, E, D]
    own = _prepare_owner(plan.layers, plan.wmu, plan.bmu, f, mask, extra)
    g.stacks = [ol.stack for ol in own.layers]  # [n, 3M + S2 + S3 + Sn + E (or L), M] each
    g.qkz = [ol.qk_z_next for ol in own.layers[:-1]]  # [n, L, S'] each
    l0 = own.layers[0]
    g.kv = torch.bmm(l0.kt, vs.vbar[:, :, None])[:, :, 0]  # [n, L] <vbar, Kt_l> = <W_q (g1 * C vbar), k_l> / sqrt(D)
    g.ck = l0.ck[:, :, 0]  # [n, L]
    g.zx = extra @ own.z_delta.T  # [n, E, S]
    if plan.cfg.pooling == "mean":
        g.zx = g.zx.transpose(1, 2)  # [n, S, 1]
    fc = _center(f)  # [n, F, D]
    sq = (fc * fc).sum(-1) / D  # [n, F]
    g.sk = torch.rsqrt(sq + plan.layers[0].ln1.eps)  # [n, F] 1 / sigma of the frames' LN1 (layer 0: keys)
    g.sv = torch.rsqrt(sq + plan.layers[-1].ln1.eps)  # [n, F] the same in the last layer (values)
    return g


def _compute_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def build_gallery(scorer: PairScorer, f: Tensor, video_mask: Tensor | None = None, *,
                  dtype: torch.dtype | None = None, memory_budget: int = 256 * 2**20) -> VideoGallery:
    """The :class:`~gare.model.gallery.VideoGallery` of ``f [N, F, D]`` (temporal outputs) with
    ``video_mask [N, F]`` (True = valid).

    Computed in float32 (float64 for float64 input) in blocks of videos. ``dtype`` (default: the compute
    dtype) is the storage type of the ``D``-sized rows that every query reads (float16 halves the bytes
    at a measured cost in ranking agreement, docs/performance.md); the small per-video matrices stay in
    the compute dtype. Per video it costs about ``6 F D^2`` multiply-adds per psi layer whatever the
    head count.
    """
    if not supports(scorer):
        raise ValueError("the fast scorer does not cover this scorer configuration, so it has no gallery; "
                         "score with model.similarity(t, v, video_mask)")
    if f.dim() != 3 or f.shape[2] != scorer.dim:
        raise ValueError(f"videos must be [N, F, D] with D = {scorer.dim} (the model's width), got {tuple(f.shape)}")
    check_inputs(f.new_zeros(1, f.shape[2]), f, video_mask)
    cdt = _compute_dtype(f)
    store = dtype or cdt
    plan = _plan_for(scorer, cdt, f.device)
    if video_mask is not None:
        video_mask = video_mask.to(f.device).bool()
        if bool(video_mask.all()):
            video_mask = None
    N, Fr, D = f.shape
    bo, _ = block_sizes(N, 1, D, Fr, Fr, plan.heads, plan.n_layers, False, 4, memory_budget)
    out: VideoGallery | None = None
    for j in range(0, N, bo):
        mj = video_mask[j:j + bo] if video_mask is not None else None  # [n, F]
        gb = _build_block(plan, f[j:j + bo].to(cdt), mj).rows_as(store)
        if out is None:  # allocate the whole gallery once, by the first block's shapes
            out = gb.apply(lambda x: x.new_empty((N, *x.shape[1:])))
        dst = out.tensors()
        for name, x in gb.tensors().items():
            dst[name][j:j + bo] = x
    return out


def _check_gallery(plan: _Plan, g: VideoGallery, t: Tensor) -> None:
    if not isinstance(g, VideoGallery):
        raise TypeError(f"expected a VideoGallery (model.gallery(v)), got {type(g).__name__}")
    check_compatible(g.meta, plan.meta)
    if t.dim() != 2 or t.shape[1] != g.dim:
        raise ValueError(f"texts must be [N_t, D] with D = {g.dim} (the gallery's width), got {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------------
# scoring against a gallery
# --------------------------------------------------------------------------------------------------
@dataclass
class _Queries:
    """What a text contributes per pair (frame context). ``x`` meets the gallery's ``tx`` rows (frames and
    vbar) in one product; with multi-head psi ``qt`` and ``tp`` meet the stored keys and values head by head."""

    x: Tensor  # [n, k, D]: t (k = 1), or [t; a_k; a_v] for single-head psi (k = 3)
    qt: Tensor | None = None  # [n, D] W_q (g1 * C t) (multi-head)
    tp: Tensor | None = None  # [n, D] out_rows t (multi-head): <t, P_hl> = <tp[h], v_hl>
    c: Tensor | None = None  # [n, 2] single-head: constant parts of the layer-0 logit and of <t, P_l>
    tz: Tensor | None = None  # [n, S] <t, Z_delta_s>

    def map(self, fn) -> _Queries:
        return _Queries(*(None if getattr(self, k.name) is None else fn(getattr(self, k.name)) for k in fields(self)))


def _queries(plan: _Plan, t: Tensor) -> _Queries:
    if not plan.use_delta:
        return _Queries(t[:, None])
    l0, last = plan.layers[0], plan.maps[-1]
    x0 = l0.ln1.g * _center(t)  # [n, D] g1 * C t
    tz = t @ last.z_out.T  # [n, S]
    if plan.frames_mode:
        ll = plan.layers[-1]
        a_k = _center(l0.ln1.g * (x0 @ plan.qk_map))  # [n, D]: <a_k, f_l> / sigma_l + c_k = <W_q x0, k_l> / sqrt(D)
        a_v = _center(ll.ln1.g * (t @ plan.pv_map))  # [n, D]: <a_v, f_l> / sigma_l + c_v = <t, P_l>
        c = torch.stack([x0 @ plan.qk_bias, t @ plan.pv_bias], dim=1)  # [n, 2]
        return _Queries(torch.stack([t, a_k, a_v], dim=1), c=c, tz=tz)  # x [n, 3, D]
    return _Queries(t[:, None], qt=x0 @ l0.wq.T, tp=t @ last.out_rows.T, tz=tz)  # [n, 1, D], [n, D], [n, D]


def _head_products(rows: Tensor, x: Tensor, heads: int, gathered: bool) -> Tensor:
    """``<rows[v, l, head h], x[q, head h]>`` as ``[n_v, H*L, n_q]``; ``rows [n_v, L, D]``, ``x [n_q, D]``
    (``gathered``: ``x [n_v, g, D]``, one set of texts per video)."""
    n_v, L, D = rows.shape
    if heads == 1:
        return torch.bmm(rows, x.transpose(1, 2)) if gathered else (rows.reshape(-1, D) @ x.T).view(n_v, L, -1)
    dh = D // heads
    r = rows.view(n_v, L, heads, dh)  # [n_v, L, H, d_h]
    if gathered:
        out = torch.einsum("vlhe,vqhe->vhlq", r, x.view(n_v, x.shape[1], heads, dh))  # [n_v, H, L, g]
    else:
        out = torch.einsum("vlhe,qhe->vhlq", r, x.view(x.shape[0], heads, dh))  # [n_v, H, L, n_q]
    return out.reshape(n_v, heads * L, -1)


def _gallery_layers(plan: _Plan, g: VideoGallery) -> list[_OwnerLayer]:
    n, Fr = len(g), g.frames
    mask = None if g.mask is None else g.mask.view(n, 1, Fr, 1)  # [n, 1, L, 1]
    return [_OwnerLayer(lp.heads, mask, None, None, g.stacks[i], mp.zz, mp.eps,
                        g.qkz[i] if i < len(g.qkz) else None)
            for i, (lp, mp) in enumerate(zip(plan.layers, plan.maps))]


def _score_block(plan: _Plan, g: VideoGallery, q: _Queries, ps: _TextStats, gathered: bool) -> Tensor:
    """Scores ``[n_v, n_p]`` of a gallery block (compute dtype) against texts ``q`` (``[n_p, ...]``, or
    ``[n_v, n_p, ...]`` when ``gathered``: one set of texts per video). ``ps``: text statistics shaped
    ``[1 or n_v, 1, n_p]``."""
    cfg, D = plan.cfg, plan.dim
    n_v, Fr = len(g), g.frames
    k = q.x.shape[-2]
    if gathered:
        n_p = q.x.shape[1]
        G = torch.bmm(g.tx, q.x.reshape(n_v, n_p * k, D).transpose(1, 2))  # [n_v, F + 1, n_p * k]
        G = G.view(n_v, Fr + 1, n_p, k).permute(3, 0, 1, 2)  # [k, n_v, F + 1, n_p]
        G = G.contiguous()  # [k, n_v, F + 1, n_p]
    else:
        n_p = q.x.shape[0]
        G = q.x.reshape(n_p * k, D) @ g.tx.reshape(-1, D).T  # [n_p * k, n_v * (F + 1)] (faster than tx @ x')
        # contiguous per-pair slices: the elementwise passes that follow run faster on them than on views
        G = G.view(n_p, k, n_v, Fr + 1).permute(1, 2, 3, 0).contiguous()  # [k, n_v, F + 1, n_p]
    tv = G[0, :, Fr:]  # [n_v, 1, n_p] <t, vbar>
    if cfg.pooling == "text":
        tf = G[0, :, :Fr]  # [n_v, F, n_p] <t, f>
        lg = tf * plan.inv_temp  # [n_v, F, n_p]
        if g.mask is not None:
            lg = lg.masked_fill(~g.mask[:, :, None], float("-inf"))
        w = lg.softmax(dim=1)  # [n_v, F, n_p]
        t_vhat = (w * tf).sum(1, keepdim=True)  # [n_v, 1, n_p]
        vhat_sq = (torch.bmm(g.ff, w) * w).sum(1, keepdim=True)  # [n_v, 1, n_p]
    else:
        t_vhat = tv  # [n_v, 1, n_p]
        vhat_sq = g.vv.view(n_v, 1, 1)  # [n_v, 1, 1]
    if not plan.use_delta:
        return final_cosine(t_vhat, ps.tt, vhat_sq)[:, 0]  # [n_v, n_p]
    c = None if q.c is None else (q.c.T[:, None, None] if not gathered else q.c.permute(2, 0, 1)[:, :, None])
    if plan.frames_mode:  # c [2, 1 or n_v, 1, n_p]
        gk = torch.addcmul(c[0], G[1, :, :Fr], g.sk[:, :, None])  # [n_v, L, n_p] <W_q (g1 * C t), k_l> / sqrt(D)
        tp = torch.addcmul(c[1], G[2, :, :Fr], g.sv[:, :, None])  # [n_v, L, n_p] <t, P_l>
    else:
        gk = _head_products(g.k0, q.qt, plan.heads, gathered)  # [n_v, M, n_p] <W_q[h] (g1 * C t), k0_hl>
        tp = _head_products(g.v_last, q.tp, plan.layers[-1].heads, gathered)  # [n_v, M, n_p] <t, P_hl>
    ck = g.ck[:, :, None]  # [n_v, M, 1]
    if cfg.query == "gap":
        inv_q = _gap_inv_sigma(plan.ln1, plan.sign, ps.tt_c, g.vv_c.view(n_v, 1, 1), tv,
                               ps.mt, g.mv.view(n_v, 1, 1), D)  # [n_v, 1, n_p]
        logits0 = torch.addcmul(ck, plan.sign * inv_q, g.kv[:, :, None] - gk)  # [n_v, M, n_p]
    else:
        logits0 = torch.addcmul(ck, ps.inv_t, gk)  # [n_v, M, n_p]
    alpha, rho, zeta, dd, xp = _psi_coeffs(_gallery_layers(plan, g), logits0, D)  # xp [n_v, E, n_p]
    tz = q.tz.T[None] if not gathered else q.tz.transpose(1, 2)  # [1 or n_v, S, n_p]
    t_delta = rho * (alpha * tp).sum(1, keepdim=True) + (zeta * tz).sum(1, keepdim=True)  # [n_v, 1, n_p]
    if cfg.pooling == "text":
        d_vhat = ((rho * xp + torch.bmm(g.zx, zeta)) * w).sum(1, keepdim=True)  # [n_v, 1, n_p]
    else:
        d_vhat = rho * xp + (zeta * g.zx).sum(1, keepdim=True)  # [n_v, 1, n_p]
    s = final_cosine(t_vhat, ps.tt, vhat_sq, side=cfg.side, t_delta=t_delta, d_vhat=d_vhat, dd=dd)
    return s[:, 0]  # [n_v, n_p]


def _score_dense(plan: _Plan, g: VideoGallery, q: _Queries, ts: _TextStats, out: Tensor, memory_budget: int) -> None:
    """``out [N_t, n_v] = scores`` of every text against a gallery block, in cache-sized pair blocks."""
    n_v, N_t = len(g), q.x.shape[0]
    M = plan.heads * g.frames
    per_pair = 4 * (g.frames * 4 + M * 12 + 64)
    bp = int(max(1, min(N_t, _pairs_per_block(M) // max(n_v, 1) or 1, (0.4 * memory_budget) // (per_pair * n_v))))
    for i in range(0, N_t, bp):
        qi = q.map(lambda x: x[i:i + bp])  # noqa: B023 - called right away
        ps = ts.slice(i, bp).map(lambda x: x.view(1, 1, -1))  # [1, 1, n_p] each
        out[i:i + bp] = _score_block(plan, g, qi, ps, gathered=False).T


def _pairs_per_block(m: int) -> int:
    """Pairs per block: ``PAIRS_PER_BLOCK`` at ``M = heads * F <= 16``, fewer for larger ``M`` so the
    ``[n_v, M, n_p]`` per-pair tensors stay cache-sized."""
    return max(2**12, PAIRS_PER_BLOCK * 16 // max(m, 16))


def _score_blocks(plan: _Plan, g: VideoGallery, n_texts: int) -> int:
    """Videos per block when scoring a built gallery: about :func:`_pairs_per_block` pairs per block."""
    pairs = _pairs_per_block(plan.heads * g.frames)
    return int(max(1, min(len(g), max(OWNERS_PER_BLOCK, pairs // max(1, n_texts)))))


@torch.no_grad()
def gallery_similarity(scorer: PairScorer, t: Tensor, g: VideoGallery, *, words: Tensor | None = None,
                       word_mask: Tensor | None = None, memory_budget: int = 256 * 2**20) -> Tensor:
    """Exact scores ``[N_t, N]`` of texts ``t [N_t, D]`` against a gallery built by the same model (the
    same numbers as :meth:`PairScorer.forward` in eval mode on the videos it was built from).

    Frame context (or no Delta): each text pays ``(3F + 1) D`` products per video plus ``O((H F)^2)``
    contractions, as GEMMs over blocks of videos and texts. Word context: the text side (psi's basis
    over the words) is computed here per text, the video side comes from the gallery.
    """
    if not supports(scorer):
        raise ValueError("the fast scorer does not cover this scorer configuration; score with "
                         "model.similarity(t, v, video_mask)")
    cdt = _compute_dtype(t)
    plan = _plan_for(scorer, cdt, t.device)
    _check_gallery(plan, g, t)
    out_dtype = t.dtype
    t = t.to(cdt)
    out = torch.empty(t.shape[0], len(g), dtype=out_dtype, device=t.device)  # [N_t, N]
    if plan.use_delta and plan.cfg.context == "words":
        words, word_mask = _check_words(t, words, word_mask)
        _similarity_words(plan, t, g.to(t.device, cdt), words, word_mask, memory_budget, out)
        return out
    q, ts = _queries(plan, t), _text_stats(plan, t)
    bo = _score_blocks(plan, g, t.shape[0])
    for j in range(0, len(g), bo):
        gb = g[j:j + bo]
        if gb.dtype != cdt or gb.device != t.device:
            gb = gb.to(t.device, cdt)
        _score_dense(plan, gb, q, ts, out[:, j:j + bo], memory_budget)
    return out


# --------------------------------------------------------------------------------------------------
# word context: texts own the basis
# --------------------------------------------------------------------------------------------------
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
    alpha, rho, zeta, dd, _ = _psi_coeffs(own.layers, logits0, D)  # [n_t, M, n_v or 1], [n_t, 1, .], [n_t, S, .]
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


def _similarity_words(plan: _Plan, t: Tensor, g: VideoGallery, words: Tensor, word_mask: Tensor | None,
                      memory_budget: int, out: Tensor) -> None:
    """Word context: texts own the basis (their words); fills ``out [N_t, N_v]`` block by block."""
    N_t, N_v, Fr, D = t.shape[0], len(g), g.frames, g.dim
    ts = _text_stats(plan, t)
    bo, bp = block_sizes(N_t, N_v, D, Fr, words.shape[1], plan.heads, plan.n_layers, True, t.element_size(),
                         memory_budget)
    vs_all = _VideoStats(g.vbar, g.vv, g.mv, g.vv_c)
    for i in range(0, N_t, bo):
        wm = word_mask[i:i + bo] if word_mask is not None else None  # [n_t, L]
        own = _prepare_owner(plan.layers, plan.wmu, plan.bmu, words[i:i + bo], wm)
        tsi = ts.slice(i, bo)  # [n_t] each
        for j in range(0, N_v, bp):
            mj = g.mask[j:j + bp] if g.mask is not None else None  # [n_v, F]
            out[i:i + bo, j:j + bp] = _score_text_owner(plan, own, t[i:i + bo], tsi, g.tx[j:j + bp, :Fr], mj,
                                                        vs_all.slice(j, bp))


# --------------------------------------------------------------------------------------------------
# public entry points on encoded videos
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
    dtype = _compute_dtype(t)
    t, f = t.to(dtype), f.to(device=t.device, dtype=dtype)
    if video_mask is not None:
        video_mask = video_mask.to(t.device).bool()
    return _plan_for(scorer, dtype, t.device), t, f, video_mask


def reference_is_cheaper(scorer: PairScorer, n_texts: int, n_videos: int, frames: int,
                         words_len: int | None = None) -> bool:
    """Whether the per-pair reference costs less than the fast path for this many texts and videos
    *whose bases are not cached yet* (with a gallery, the fast path is always cheaper).

    The fast path spends about ``6 F D^2`` per context owner (a video, or a text with word context) on its
    bases and then ``O(F D)`` per pair; the reference spends ``2 F D^2`` per owner (keys and values) and
    about ``4 D^2`` per pair. With a handful of partners per owner (a single search query against K
    candidates) the reference is cheaper: crossover near ``3F/4`` partners on a 2-core CPU.
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
    ``words [N_t, L, D]`` + ``word_mask [N_t, L]`` for word context. The videos' bases are built once
    per call, a block of videos at a time (:func:`build_gallery`), and every text is scored against
    each block, so the working set stays near ``memory_budget`` bytes (plus the output). Half-precision
    inputs are computed in float32 (the LayerNorm statistics come from Gram matrices). With
    ``auto_reference`` the blockwise reference is used where it is cheaper (:func:`reference_is_cheaper`:
    very few texts, e.g. one search query against raw features); both give the same scores.
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
        _similarity_words(plan, t, _build_block(plan, f, video_mask), words, word_mask, memory_budget, out)
        return out
    N_v, Fr, D = f.shape
    q, ts = _queries(plan, t), _text_stats(plan, t)
    bo, _ = block_sizes(N_v, t.shape[0], D, Fr, Fr, plan.heads, plan.n_layers, False, t.element_size(),
                        memory_budget)
    for j in range(0, N_v, bo):
        mj = video_mask[j:j + bo] if video_mask is not None else None  # [n_v, F]
        gb = _build_block(plan, f[j:j + bo], mj)  # the block's bases, once
        _score_dense(plan, gb, q, ts, out[:, j:j + bo], memory_budget)
    return out


def supports_pairs(scorer: PairScorer) -> bool:
    """Whether :func:`fast_pair_similarity` covers ``scorer`` (frame context, or no Delta)."""
    return supports(scorer) and (scorer.psi is None or scorer.cfg.context == "frames")


@torch.no_grad()
def fast_pair_similarity(scorer: PairScorer, t: Tensor, f: Tensor | VideoGallery, video_mask: Tensor | None,
                         text_idx: Tensor, *, memory_budget: int = 256 * 2**20) -> Tensor:
    """Exact scores of selected pairs, grouped by video (two-stage reranking).

    ``f``: temporal outputs ``[N_v, F, D]`` (with ``video_mask``) or a gallery of ``N_v`` videos (then
    ``video_mask`` must be None: the gallery holds it). ``text_idx [N_v, g]`` (long): the texts to
    score against each video, valid entries first, ``-1`` for padding. Returns ``[N_v, g]`` with
    ``S[j, r] = s(t[text_idx[j, r]], video j)`` (NaN on padding). Cost is that of the selected pairs only
    (plus the bases of videos that have texts, when ``f`` is raw); videos with similar numbers of texts
    are processed together so padding stays small.
    """
    if not supports_pairs(scorer):
        raise ValueError("fast_pair_similarity covers frame context only (see supports_pairs)")
    out_dtype = t.dtype
    if isinstance(f, VideoGallery):
        if video_mask is not None:
            raise ValueError("a gallery holds its own frame mask; pass video_mask=None")
        cdt = _compute_dtype(t)
        plan = _plan_for(scorer, cdt, t.device)
        _check_gallery(plan, f, t)
        t = t.to(cdt)
        N_v, Fr = len(f), f.frames

        def block(vid: Tensor) -> VideoGallery:
            return f[vid].to(t.device, cdt)
    else:
        plan, t, f, video_mask = _setup(scorer, t, f, video_mask)
        N_v, Fr = f.shape[:2]

        def block(vid: Tensor) -> VideoGallery:
            return _build_block(plan, f[vid], video_mask[vid] if video_mask is not None else None)
    N_t, D = t.shape
    if text_idx.dim() != 2 or text_idx.shape[0] != N_v:
        raise ValueError(f"text_idx must be [N_v, g] = [{N_v}, g], got {tuple(text_idx.shape)}")
    text_idx = text_idx.to(t.device).long()
    if bool((text_idx >= N_t).any()):
        raise ValueError(f"text_idx holds indices >= N_t = {N_t}")
    out = torch.full(tuple(text_idx.shape), float("nan"), dtype=out_dtype, device=t.device)  # [N_v, g]
    counts = (text_idx >= 0).sum(1)  # [N_v]
    order = torch.argsort(counts, descending=True)  # [N_v]
    g_max = int(counts.max()) if N_v else 0
    if g_max == 0:
        return out
    q, ts = _queries(plan, t), _text_stats(plan, t)
    bo, _ = block_sizes(N_v, 1, D, Fr, Fr, plan.heads, plan.n_layers, False, t.element_size(), memory_budget)
    per_pair = t.element_size() * (Fr * 4 + plan.heads * Fr * 12 + 64 + 3 * D + 1)
    bo = int(max(1, min(bo, GATHERED_PAIRS_PER_BLOCK // g_max, (0.4 * memory_budget) // (per_pair * g_max))))
    for j in range(0, N_v, bo):
        vid = order[j:j + bo]  # [n_o]
        g = int(counts[vid].max())
        if g == 0:
            break
        idx = text_idx[vid, :g].clamp_min(0)  # [n_o, g]
        flat = idx.reshape(-1)  # [n_o * g]
        qg = q.map(lambda x: x.index_select(0, flat).view(*idx.shape, *x.shape[1:]))  # noqa: B023 - [n_o, g, ...]
        ps = ts.gather(idx)  # [n_o, 1, g] each
        res = _score_block(plan, block(vid), qg, ps, gathered=True).to(out_dtype)  # [n_o, g]
        valid = text_idx[vid, :g] >= 0  # [n_o, g]
        out[vid, :g] = torch.where(valid, res, out[vid, :g])
    return out
