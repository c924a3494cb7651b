"""Cheap, pure diagnostics for the paper's "optimization tension" and modality-gap analysis.

Every function runs under ``torch.no_grad``, takes tensors (or arrays) and returns a dict of Python
floats (or one float), so it can be called on a logged step or after evaluation without touching the
training graph. Nothing here is used by the loss.

- :func:`modality_gap`, :func:`alignment`, :func:`uniformity`: geometry of the embedding spaces
  (Liang et al. 2022 for the gap; Wang & Isola 2020 for alignment and uniformity).
- :func:`angle_stats`: how the increments Delta_ij relate to the semantic gap vbar_j - t_i, and their
  lengths for positive and negative pairs.
- :func:`anchor_gradient_split`: the pull of the positives and the push of the negatives on a text
  anchor under InfoNCE, and how much they cancel (the paper's Fig. 2).
- :func:`ideal_increment_cos`: agreement between Delta and the first-order ideal increment
  Delta* = -eps g/||g||.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .model.scorer import final_cosine

__all__ = [
    "alignment",
    "anchor_gradient_split",
    "angle_stats",
    "ideal_increment_cos",
    "modality_gap",
    "uniformity",
]

_EPS = 1e-12


def _t(x: Any) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t if t.dtype.is_floating_point else t.to(torch.float64)


def _unit(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(_EPS)


def _diag_mask(b_t: int, b_v: int, device: torch.device, positives: Any = None) -> Tensor:
    if positives is None:
        if b_t != b_v:
            raise ValueError(f"[{b_t}, {b_v}] pairs: a rectangular batch needs an explicit `positives` mask")
        return torch.eye(b_t, dtype=torch.bool, device=device)
    m = positives.detach() if isinstance(positives, Tensor) else torch.as_tensor(np.asarray(positives))
    m = m.to(device)
    if m.dtype != torch.bool or tuple(m.shape) != (b_t, b_v):
        raise ValueError(f"positives must be a bool mask of shape {(b_t, b_v)}, got {m.dtype} {tuple(m.shape)}")
    return m


def _masked_mean(x: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    return float(x[m].mean()) if n else float("nan")


def _masked_std(x: Tensor, m: Tensor) -> float:
    n = int(m.sum())
    return float(x[m].std(unbiased=False)) if n else float("nan")


# ----------------------------------------------------------------------------- modality geometry
@torch.no_grad()
def modality_gap(text_emb: Any, video_emb: Any) -> dict[str, float]:
    """Modality gap between the L2-normalized text and video embeddings.

    Args:
        text_emb: ``[N, D]``; video_emb: ``[M, D]`` (not necessarily normalized, N and M may differ).

    Returns:
        ``gap``: ``||c_t - c_v||`` with ``c_t, c_v`` the centroids of the normalized embeddings;
        ``centroid_cos``: cosine between the two centroids; ``text_centroid_norm``,
        ``video_centroid_norm``: norms of the centroids (1 = all embeddings identical, ~0 = spread).
    """
    t, v = _unit(_t(text_emb)), _unit(_t(video_emb))
    if t.dim() != 2 or v.dim() != 2 or t.shape[1] != v.shape[1]:
        raise ValueError(f"expected [N, D] and [M, D], got {tuple(t.shape)} and {tuple(v.shape)}")
    c_t, c_v = t.mean(dim=0), v.to(t.dtype).mean(dim=0)
    n_t, n_v = torch.linalg.vector_norm(c_t), torch.linalg.vector_norm(c_v)
    return {
        "gap": float(torch.linalg.vector_norm(c_t - c_v)),
        "centroid_cos": float((c_t @ c_v) / (n_t * n_v).clamp_min(_EPS)),
        "text_centroid_norm": float(n_t),
        "video_centroid_norm": float(n_v),
    }


@torch.no_grad()
def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """Alignment of matched pairs (Wang & Isola 2020): ``mean_i ||x_i - y_i||^alpha`` on normalized rows.

    Args:
        x, y: ``[N, D]`` matched embeddings (row i of x is paired with row i of y).
    """
    a, b = _unit(_t(x)), _unit(_t(y))
    if a.shape != b.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float(torch.linalg.vector_norm(a - b.to(a.dtype), dim=-1).pow(alpha).mean())


@torch.no_grad()
def uniformity(x: Any, t: float = 2.0, chunk_size: int = 1024) -> float:
    """Uniformity (Wang & Isola 2020): ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` on normalized rows.

    Lower = more uniform on the sphere. Computed in row chunks with a running log-sum-exp, so memory is
    ``O(chunk_size * N)``.

    Args:
        x: ``[N, D]`` with ``N >= 2``.
    """
    u = _unit(_t(x))
    n = u.shape[0]
    if u.dim() != 2 or n < 2:
        raise ValueError(f"uniformity needs [N, D] with N >= 2, got {tuple(u.shape)}")
    parts = []
    cols = torch.arange(n, device=u.device)
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n), device=u.device)
        sq = (2.0 - 2.0 * (u[rows] @ u.T)).clamp_min(0.0)  # squared distance of unit vectors
        logits = (-t * sq)[rows[:, None] < cols[None, :]]
        if logits.numel():
            parts.append(torch.logsumexp(logits, dim=0))
    total = torch.logsumexp(torch.stack(parts), dim=0)
    return float(total - np.log(n * (n - 1) / 2))


# ----------------------------------------------------------------------------- increments
@torch.no_grad()
def angle_stats(delta: Any, t: Any, vbar: Any, positives: Any = None) -> dict[str, float]:
    """Direction of the increments relative to the semantic gap, and their lengths.

    Args:
        delta: ``[B_t, B_v, D]`` increments.
        t: ``[B_t, D]`` text embeddings; vbar: ``[B_v, D]`` mean-pooled video embeddings.
        positives: ``[B_t, B_v]`` bool (default: the diagonal).

    Returns:
        ``cos_gap``, ``cos_gap_pos``, ``cos_gap_neg``: mean of ``cos(Delta_ij, vbar_j - t_i)`` over all,
        positive and negative pairs (computed from inner products, no ``[B_t, B_v, D]`` gap tensor);
        ``norm_pos_mean``/``norm_pos_std``/``norm_neg_mean``/``norm_neg_std``: statistics (population
        std) of ``||Delta_ij||`` for positive and negative pairs (NaN when a group is empty).
    """
    d, tt, vb = _t(delta), _t(t), _t(vbar)
    if d.dim() != 3 or tt.shape != (d.shape[0], d.shape[2]) or vb.shape != (d.shape[1], d.shape[2]):
        raise ValueError(
            f"expected delta [B_t, B_v, D], t [B_t, D], vbar [B_v, D], got {tuple(d.shape)}, "
            f"{tuple(tt.shape)}, {tuple(vb.shape)}"
        )
    tt, vb = tt.to(d.dtype), vb.to(d.dtype)
    pos = _diag_mask(d.shape[0], d.shape[1], d.device, positives)
    # <Delta_ij, vbar_j - t_i> and ||vbar_j - t_i||^2 expanded
    dot = torch.einsum("ijd,jd->ij", d, vb) - torch.einsum("ijd,id->ij", d, tt)
    gap_sq = (vb.square().sum(-1)[None, :] + tt.square().sum(-1)[:, None] - 2.0 * tt @ vb.T).clamp_min(0.0)
    norm = torch.linalg.vector_norm(d, dim=-1)  # [B_t, B_v]
    cos = final_cosine(dot, norm * norm, gap_sq)  # [B_t, B_v] cos(Delta_ij, vbar_j - t_i)
    allm = torch.ones_like(pos)
    return {
        "cos_gap": _masked_mean(cos, allm),
        "cos_gap_pos": _masked_mean(cos, pos),
        "cos_gap_neg": _masked_mean(cos, ~pos),
        "norm_pos_mean": _masked_mean(norm, pos),
        "norm_pos_std": _masked_std(norm, pos),
        "norm_neg_mean": _masked_mean(norm, ~pos),
        "norm_neg_std": _masked_std(norm, ~pos),
    }


@torch.no_grad()
def ideal_increment_cos(delta: Any, grad: Any, positives: Any = None) -> dict[str, float]:
    """Agreement of Delta with the ideal increment ``Delta* = -eps g / ||g||`` (its direction: ``-g``).

    Args:
        delta: ``[B_t, B_v, D]``; grad: ``[B_t, B_v, D]`` gradient of InfoNCE w.r.t. ``t_i + Delta_ij``.
        positives: ``[B_t, B_v]`` bool (default: the diagonal).

    Returns:
        mean ``cos(Delta_ij, -g_ij)`` over all (``cos_ideal``), positive (``cos_ideal_pos``) and negative
        (``cos_ideal_neg``) pairs.
    """
    d, g = _t(delta), _t(grad).to(_t(delta).dtype)
    if d.shape != g.shape or d.dim() != 3:
        raise ValueError(f"delta and grad must both be [B_t, B_v, D], got {tuple(d.shape)}, {tuple(g.shape)}")
    pos = _diag_mask(d.shape[0], d.shape[1], d.device, positives)
    cos = (_unit(d) * _unit(-g)).sum(-1)
    return {
        "cos_ideal": _masked_mean(cos, torch.ones_like(pos)),
        "cos_ideal_pos": _masked_mean(cos, pos),
        "cos_ideal_neg": _masked_mean(cos, ~pos),
    }


# ----------------------------------------------------------------------------- gradient split
@torch.no_grad()
def anchor_gradient_split(
    query: Any,
    gallery: Any,
    logit_scale: Any,
    positives: Any = None,
    symmetric: bool = False,
) -> dict[str, float]:
    """Split of the InfoNCE gradient on each text anchor into the pull of its positives and the push of
    its negatives, computed analytically (checked against autograd in the tests).

    Scores are ``s_ij = cos(c_ij, w_ij)`` with ``c`` the query-side vector (``t_i``, or the corrected
    ``t_i + Delta_ij``) and ``w`` the gallery vector (``vbar_j``, or the pooled ``vhat_ij``); logits
    ``l = s * exp(logit_scale)``. The loss is the sum over texts of the row (text-to-video) terms
    ``L_i = -log(sum_{j pos} e^{l_ij} / sum_j e^{l_ij})``; with ``symmetric=True``, the gradient of
    ``0.5 * (sum of row terms + sum of column terms)``. With ``dL/dl_ij = C_ij`` and
    ``ds_ij/dc_ij = (w_ij/|w_ij| - s_ij c_ij/|c_ij|) / |c_ij|`` the gradient reaching the anchor ``t_i``
    through ``c_ij`` (the direct path; a path through psi's input is not included) is
    ``sum_j C_ij ds_ij/dc_ij``, split into ``pos_i`` (positive j) and ``neg_i`` (the rest).

    Args:
        query: ``[B_t, D]`` or ``[B_t, B_v, D]``; gallery: ``[B_v, D]`` or ``[B_t, B_v, D]``.
        logit_scale: log of the logit scale (float or scalar tensor).
        positives: ``[B_t, B_v]`` bool (default: the diagonal).
        symmetric: include the video-to-text column terms.

    Returns:
        mean over anchors of ``pos_norm = ||pos_i||``, ``neg_norm = ||neg_i||``, ``sum_norm =
        ||pos_i + neg_i||``, ``cancellation = ||pos_i + neg_i|| / (||pos_i|| + ||neg_i||)`` (1: no
        cancellation, 0: complete) and ``pos_neg_cos = cos(pos_i, neg_i)`` (-1: exactly opposed).
    """
    c, w = _t(query), _t(gallery)
    w = w.to(c.dtype)
    if c.dim() not in (2, 3) or w.dim() not in (2, 3):
        raise ValueError(f"query must be [B_t, D] or [B_t, B_v, D], gallery [B_v, D] or [B_t, B_v, D]; "
                         f"got {tuple(c.shape)}, {tuple(w.shape)}")
    b_t = c.shape[0]
    b_v = w.shape[1] if w.dim() == 3 else w.shape[0]
    pos = _diag_mask(b_t, b_v, c.device, positives)
    scale = torch.as_tensor(logit_scale, dtype=c.dtype, device=c.device).exp()
    c_norm = torch.linalg.vector_norm(c, dim=-1).clamp_min(_EPS)  # [B_t] or [B_t, B_v]
    c_hat, w_hat = _unit(c), _unit(w)
    pair3 = c.dim() == 3 or w.dim() == 3
    if pair3:
        c3 = c_hat if c.dim() == 3 else c_hat[:, None, :].expand(b_t, b_v, -1)
        w3 = w_hat if w.dim() == 3 else w_hat[None, :, :].expand(b_t, b_v, -1)
        s = (c3 * w3).sum(-1)
    else:
        s = c_hat @ w_hat.T
    logits = s * scale
    big_neg = torch.finfo(logits.dtype).min

    def _coef(dim: int) -> Tensor:  # dL/dl for the slices softmaxed along `dim`
        p = torch.softmax(logits, dim=dim)
        q = torch.softmax(logits.masked_fill(~pos, big_neg), dim=dim) * pos
        has = pos.any(dim=dim, keepdim=True)
        return torch.where(has, p - q, torch.zeros_like(p))

    coef = _coef(1) if not symmetric else 0.5 * (_coef(1) + _coef(0))
    coef = coef * scale

    def _grad(cmat: Tensor) -> Tensor:  # sum_j cmat_ij ds_ij/dc_ij  -> [B_t, D]
        if pair3:
            k = cmat / (c_norm if c.dim() == 3 else c_norm[:, None])
            return torch.einsum("ij,ijd->id", k, w3) - torch.einsum("ij,ijd->id", k * s, c3)
        return (cmat @ w_hat - (cmat * s).sum(1, keepdim=True) * c_hat) / c_norm[:, None]

    g_pos = _grad(coef * pos)
    g_neg = _grad(coef * ~pos)
    n_pos = torch.linalg.vector_norm(g_pos, dim=-1)
    n_neg = torch.linalg.vector_norm(g_neg, dim=-1)
    n_sum = torch.linalg.vector_norm(g_pos + g_neg, dim=-1)
    return {
        "pos_norm": float(n_pos.mean()),
        "neg_norm": float(n_neg.mean()),
        "sum_norm": float(n_sum.mean()),
        "cancellation": float((n_sum / (n_pos + n_neg).clamp_min(_EPS)).mean()),
        "pos_neg_cos": float(((g_pos * g_neg).sum(-1) / (n_pos * n_neg).clamp_min(_EPS)).mean()),
    }
