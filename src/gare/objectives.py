"""Training objectives of GARE (docs/architecture.md, "The objective"; choices in docs/method-notes.md).

All functions are pure and vectorized (no Python loop over batch items) and work in any float dtype.

Notation (shapes):

- ``sim``   ``[B_t, B_v]`` cosine scores s_ij, texts on rows, videos on columns. Unless a ``positives``
  mask is given, the matched pairs are on the diagonal (which requires ``B_t == B_v``).
- ``delta`` ``[B_t, B_v, D]`` the per-pair increments Delta_ij.
- ``logit_scale`` the *log* of the temperature scale (CLIP's parameter): logits = s * exp(logit_scale).

The total loss of one batch (:func:`gare_loss`) is::

    L = L_nce + beta * L_ib + lambda_eps * L_eps + lambda_dir * L_dir + lambda_gs * L_gs
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .config import LossConfig

__all__ = [
    "GareLossConfig",
    "direction_loss",
    "gare_loss",
    "gradient_supervision_loss",
    "ib_kl",
    "ideal_increment",
    "info_nce",
    "radius_loss",
    "repeated_video_positives",
]

logger = logging.getLogger(__name__)

_NORM_EPS = 1e-8


def _safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False, eps: float = _NORM_EPS) -> Tensor:
    """Euclidean norm along ``dim`` clamped below by ``eps`` (guards divisions by zero norms)."""
    return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim).clamp_min(eps)


# --------------------------------------------------------------------------------------------------
# InfoNCE
# --------------------------------------------------------------------------------------------------
def repeated_video_positives(video_ids: Tensor) -> Tensor:
    """Positive mask for a batch in which one video may appear several times.

    Args:
        video_ids: ``[B]`` integer id of the video of each (caption, video) pair of the batch.

    Returns:
        ``[B, B]`` bool, ``True`` where caption ``i`` and video ``j`` belong to the same video (so every
        caption of a repeated video counts as a positive of every copy of that video). The diagonal is
        always ``True``; with distinct ids this is the identity.
    """
    video_ids = torch.as_tensor(video_ids)
    if video_ids.dim() != 1:
        raise ValueError(f"video_ids must be 1-D [B], got shape {tuple(video_ids.shape)}")
    return video_ids[:, None] == video_ids[None, :]


def _multi_positive_ce(logits: Tensor, positives: Tensor, dim: int) -> Tensor:
    """Mean over the slices along ``1 - dim`` of -log(sum_pos exp / sum_all exp), softmax along ``dim``.

    Slices without any positive (e.g. the column of a video none of whose captions is in a rectangular
    batch) are left out of the mean (0 if no slice has a positive). No host synchronisation.
    """
    lse_all = torch.logsumexp(logits, dim=dim)
    # A large finite negative rather than -inf keeps the backward of logsumexp finite for empty slices;
    # exp(min - x) is exactly 0, so a single positive gives lse_pos == its logit bit for bit.
    lse_pos = torch.logsumexp(logits.masked_fill(~positives, torch.finfo(logits.dtype).min), dim=dim)
    has_pos = positives.any(dim=dim)
    per_slice = torch.where(has_pos, lse_all - lse_pos, torch.zeros_like(lse_all))
    return per_slice.sum() / has_pos.sum().clamp_min(1).to(per_slice.dtype)


def info_nce(sim: Tensor, logit_scale: Tensor | float, positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: ``0.5 * (CE over rows + CE over columns)`` of ``sim * exp(logit_scale)``.

    The text-to-video term takes the softmax of each row (text i against all videos), the video-to-text
    term the softmax of each column of the same matrix (video j against all texts).

    Args:
        sim: ``[B_t, B_v]`` scores (cosines), positives on the diagonal when ``positives`` is ``None``.
        logit_scale: scalar tensor (or float), the log of the logit scale.
        positives: optional ``[B_t, B_v]`` bool mask of the positive pairs. Multi-positive form: per row
            ``-log(sum_{j pos} exp(l_ij) / sum_j exp(l_ij))`` and likewise per column. With the identity
            mask it equals the plain form exactly (the plain form is computed as that case).
            Rows/columns without a positive are left out of their mean.

    Returns:
        scalar loss.
    """
    if sim.dim() != 2:
        raise ValueError(f"sim must be [B_t, B_v], got shape {tuple(sim.shape)}")
    scale = torch.as_tensor(logit_scale, dtype=sim.dtype, device=sim.device).exp()
    logits = sim * scale
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(
                f"sim is {tuple(sim.shape)}: a rectangular batch needs an explicit `positives` mask"
            )
        # The plain form is the identity-mask case of the same arithmetic (bit-identical by construction).
        positives = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    positives = torch.as_tensor(positives, device=sim.device)
    if positives.shape != sim.shape or positives.dtype != torch.bool:
        raise ValueError(
            f"positives must be a bool mask of shape {tuple(sim.shape)}, got "
            f"{positives.dtype} {tuple(positives.shape)}"
        )
    row = _multi_positive_ce(logits, positives, dim=1)
    col = _multi_positive_ce(logits, positives, dim=0)
    return 0.5 * (row + col)


# --------------------------------------------------------------------------------------------------
# Regularizers on Delta
# --------------------------------------------------------------------------------------------------
def _check_delta(delta: Tensor, name: str = "delta") -> None:
    if delta.dim() != 3:
        raise ValueError(f"{name} must be [B_t, B_v, D], got shape {tuple(delta.shape)}")


def ib_kl(
    delta: Tensor,
    anchor: str = "video",
    convention: str = "sum",
    prior_sigma: float = 1.0,
) -> Tensor:
    """Relaxed information bottleneck: KL of the per-anchor Gaussian fit of Delta to an isotropic prior.

    ``anchor="video"`` (default, the paper's): for each video j, over the texts i (dim 0),
    ``mu_j = mean_i Delta_ij`` and ``sigma_j = std_i Delta_ij + 1e-6`` (unbiased std). ``anchor="text"``:
    for each text i, statistics over the videos j (dim 1). Then, per anchor and dimension d, with prior
    ``N(0, p^2)`` (``p = prior_sigma``)::

        kl_d = log(p / sigma_d) + (sigma_d^2 + mu_d^2) / (2 p^2) - 1/2
             = 0.5 * (sigma_d^2 + mu_d^2 - 1 - 2 log sigma_d)          for p = 1

    ``convention="sum"`` sums kl_d over the D dimensions (use with beta = 1e-4); ``"mean"`` averages
    over D (the paper's beta = 0.07 belongs to this one), so ``sum == D * mean``. The result is averaged
    over the anchors.

    Args:
        delta: ``[B_t, B_v, D]``; needs at least 2 entries along the statistics axis.

    Returns:
        scalar.
    """
    _check_delta(delta)
    if anchor == "video":
        stat_dim = 0
    elif anchor == "text":
        stat_dim = 1
    else:
        raise ValueError(f"anchor must be 'video' or 'text', got {anchor!r}")
    if convention not in ("sum", "mean"):
        raise ValueError(f"convention must be 'sum' or 'mean', got {convention!r}")
    if delta.shape[stat_dim] < 2:
        raise ValueError(
            f"ib_kl(anchor={anchor!r}) needs at least 2 {'texts' if stat_dim == 0 else 'videos'} per "
            f"batch for an unbiased std, got delta of shape {tuple(delta.shape)}"
        )
    if prior_sigma <= 0:
        raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
    mu = delta.mean(dim=stat_dim)  # [A, D]
    sigma = delta.std(dim=stat_dim, unbiased=True) + 1e-6  # [A, D]
    p2 = float(prior_sigma) ** 2
    kl = 0.5 * ((sigma.square() + mu.square()) / p2 - 1.0) - torch.log(sigma) + 0.5 * torch.log(
        torch.as_tensor(p2, dtype=delta.dtype, device=delta.device)
    )
    per_anchor = kl.sum(dim=-1) if convention == "sum" else kl.mean(dim=-1)
    return per_anchor.mean()


def radius_loss(delta: Tensor, truncate: float | None = 0.5) -> Tensor:
    """Trust-region radius term: ``L = -mean_i Var_j(||Delta_ij||)`` (unbiased variance over videos).

    It rewards increments whose lengths differ across the videos of one text. When
    ``L < -truncate`` the term is switched off: the returned value is 0 and its gradient is 0 (the
    result stays attached to the graph). No host synchronisation: the switch is a ``torch.where``.
    ``truncate=None`` disables the truncation.

    Args:
        delta: ``[B_t, B_v, D]`` with ``B_v >= 2``.

    Returns:
        scalar.
    """
    _check_delta(delta)
    if delta.shape[1] < 2:
        raise ValueError(f"radius_loss needs B_v >= 2, got delta of shape {tuple(delta.shape)}")
    eps = torch.linalg.vector_norm(delta, dim=-1)  # [B_t, B_v]
    loss = -eps.var(dim=1, unbiased=True).mean()
    if truncate is None:
        return loss
    return torch.where(loss < -float(truncate), loss * 0.0, loss)


def direction_loss(delta: Tensor, alpha: float = 2.0, strict: bool = False) -> Tensor:
    """Directional diversity of the increments of each text.

    With ``z_ij = Delta_ij / max(||Delta_ij||, 1e-8)`` and the per-text Gram matrix
    ``G_i = Z_i Z_i^T`` (``[B_v, B_v]``, one batched matmul for all texts)::

        default:  L = mean_i log( mean_{j,k} exp(-alpha * (1 - G_ijk)) + 1e-8 )
        strict:   L = mean_i mean_{j != k} G_ijk^2        (strict-orthogonality variant)

    The sum over j, k includes j = k, as the specification writes it.

    Args:
        delta: ``[B_t, B_v, D]`` (``B_v >= 2`` for ``strict``).

    Returns:
        scalar.
    """
    _check_delta(delta)
    z = delta / _safe_norm(delta, dim=-1, keepdim=True)
    gram = torch.bmm(z, z.transpose(1, 2))  # [B_t, B_v, B_v]
    if strict:
        b_v = delta.shape[1]
        if b_v < 2:
            raise ValueError("direction_loss(strict=True) needs B_v >= 2")
        off = ~torch.eye(b_v, dtype=torch.bool, device=delta.device)
        return gram.square()[:, off].mean()
    kernel = torch.exp(-float(alpha) * (1.0 - gram))
    return torch.log(kernel.mean(dim=(1, 2)) + 1e-8).mean()


# --------------------------------------------------------------------------------------------------
# Gradient supervision (seed version of the paper)
# --------------------------------------------------------------------------------------------------
def ideal_increment(grad: Tensor, eps: float) -> Tensor:
    """First-order ideal increment under the trust region ``||Delta|| <= eps``.

    ``Delta*_ij = -eps * g_ij / ||g_ij||`` where ``g_ij`` is the gradient of the InfoNCE loss with respect
    to the corrected embedding ``t_i + Delta_ij``. Zero gradients give zero increments.

    Args:
        grad: ``[..., D]`` (typically ``[B_t, B_v, D]``).

    Returns:
        same shape as ``grad``.
    """
    return -float(eps) * grad / _safe_norm(grad, dim=-1, keepdim=True)


def gradient_supervision_loss(delta: Tensor, grad: Tensor) -> Tensor:
    """``L_gs = mean_ij (1 - cos(Delta_ij, -g_ij))`` with ``g`` detached.

    ``cos(Delta, Delta*)`` does not depend on ``eps`` (> 0), so the ideal increment's radius is not needed.
    Cosines use norms clamped at 1e-8 (a zero vector has cosine 0).

    Args:
        delta: ``[B_t, B_v, D]``.
        grad: ``[B_t, B_v, D]`` gradient of the InfoNCE loss w.r.t. the corrected embeddings.

    Returns:
        scalar.
    """
    if delta.shape != grad.shape:
        raise ValueError(f"delta {tuple(delta.shape)} and grad {tuple(grad.shape)} must have the same shape")
    target = -grad.detach()
    cos = (delta * target).sum(dim=-1) / (_safe_norm(delta) * _safe_norm(target))
    return (1.0 - cos).mean()


# --------------------------------------------------------------------------------------------------
# Total
# --------------------------------------------------------------------------------------------------
# The objective's weights and switches are the ``loss`` section of the run configuration.
GareLossConfig = LossConfig


TERM_KEYS = ("nce", "ib", "radius", "direction", "gs")


def gare_loss(
    sim: Tensor,
    delta: Tensor | None,
    logit_scale: Tensor | float,
    cfg: GareLossConfig | None = None,
    *,
    corrected: Tensor | None = None,
    video_ids: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total GARE loss of one batch and its unweighted terms.

    Args:
        sim: ``[B, B]`` scores ``cos(t_i + Delta_ij, vhat_ij)`` (positives on the diagonal, or given by
            ``video_ids``).
        delta: ``[B, B, D]`` increments, or ``None`` for the baseline without Delta (InfoNCE only).
        logit_scale: log of the logit scale.
        cfg: weights and switches (defaults: :class:`GareLossConfig`).
        corrected: ``[B, B, D]`` the tensor ``sim`` was computed from (``t_i + Delta_ij``, or
            ``vhat_ij + Delta_ij`` for the video-side variant). Needed only when ``cfg.lambda_gs > 0``:
            ``g = d L_nce / d corrected`` (autograd, detached) is the gradient-supervision target.
        video_ids: ``[B]`` video id of each pair; with ``cfg.multi_positive`` all captions of a video
            that appears several times in the batch are positives.

    Returns:
        ``(total, terms)``: ``total = nce + beta*ib + lambda_eps*radius + lambda_dir*direction +
        lambda_gs*gs``; ``terms`` maps ``"nce", "ib", "radius", "direction", "gs"`` to the *unweighted*,
        detached scalar values (zeros for disabled terms). The ``gs`` term needs the autograd graph of
        ``sim``; when it is absent (e.g. under ``torch.no_grad``) ``gs`` is not computed and reported 0.
    """
    cfg = cfg or GareLossConfig()
    positives = None
    if cfg.multi_positive and video_ids is not None:
        positives = repeated_video_positives(torch.as_tensor(video_ids, device=sim.device))
    nce = info_nce(sim, logit_scale, positives)
    zero = sim.new_zeros(())
    terms = {k: zero for k in TERM_KEYS}
    terms["nce"] = nce
    total = nce
    if delta is not None:
        if cfg.use_ib and cfg.beta != 0:
            terms["ib"] = ib_kl(delta, cfg.ib_anchor, cfg.ib_convention, cfg.ib_prior_sigma)
            total = total + cfg.beta * terms["ib"]
        if cfg.use_radius and cfg.lambda_eps != 0:
            if cfg.radius_plain_zero:  # the release: below -lambda the term is the number 0 (host sync)
                r = radius_loss(delta, None)
                if cfg.eps_truncate is not None and float(r.detach()) < -float(cfg.eps_truncate):
                    r = zero
                terms["radius"] = r
            else:
                terms["radius"] = radius_loss(delta, cfg.eps_truncate)
            total = total + cfg.lambda_eps * terms["radius"]
        if cfg.use_direction and cfg.lambda_dir != 0:
            terms["direction"] = direction_loss(delta, cfg.alpha, cfg.direction_strict)
            total = total + cfg.lambda_dir * terms["direction"]
        if cfg.lambda_gs != 0:
            if corrected is None:
                raise ValueError("gare_loss: lambda_gs > 0 needs `corrected` (the t_i + Delta_ij tensor)")
            if nce.requires_grad and corrected.requires_grad:
                (grad,) = torch.autograd.grad(nce, corrected, retain_graph=True, create_graph=False)
                terms["gs"] = gradient_supervision_loss(delta, grad.detach())
                total = total + cfg.lambda_gs * terms["gs"]
            else:
                logger.debug("gare_loss: no autograd graph, gradient-supervision term skipped")
    return total, {k: v.detach() for k, v in terms.items()}
