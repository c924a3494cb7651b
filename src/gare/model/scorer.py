"""Pairwise GARE scoring (docs/architecture.md, "The pairwise score").

For texts ``t [B_t, D]`` and videos ``f [B_v, F, D]`` (temporal-module outputs, frame mask ``[B_v, F]``)::

    w_ijk  = softmax_k(<t_i, f_jk> / T_pool)       over valid frames ("text" pooling; "mean": vhat = vbar)
    vhat_ij = sum_k w_ijk f_jk
    vbar_j  = mean of f_jk over valid frames
    q_ij    = eta (vbar_j - t_i)                   (query="text": q_ij = t_i)
    Delta_ij = psi(q_ij, C)                         C = frames of video j, or words of text i
    s_ij    = cos(t_i + Delta_ij, vhat_ij)
    side="video": the same q_ij (eta = +1 is the gap v - t on both sides, paper Table 7),
                  s_ij = cos(t_i, vhat_ij + Delta_ij)

Release padding (``release_padding=True``, a model with ``compat: release``), as the official release computes
it: vbar_j is the mean over ALL frame slots (padded ones included), psi attends to every slot (no mask), and the
pooling softmax runs over all slots before its weights are multiplied by the mask (the same cosine as masking
first). Without padded frames both treatments give the same scores.

``forward`` is the plain reference used in training (dropout active there) and in the tests;
``similarity`` computes ``[N_t, N_v]`` in blocks so memory stays bounded for any gallery size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ScorerConfig
from .increment import IncrementModule


@dataclass
class ScoreOutput:
    sim: Tensor  # [B_t, B_v] cosine scores
    delta: Tensor | None = None  # [B_t, B_v, D]
    corrected: Tensor | None = None  # [B_t, B_v, D]: t + Delta (or vhat + Delta on the video side)
    log_sigma: Tensor | None = None  # [B_t, B_v, D] when psi has a variance head
    t: Tensor | None = None  # [B_t, D] the text embeddings that were scored
    vhat: Tensor | None = None  # [B_t, B_v, D] pooled video per pair
    vbar: Tensor | None = None  # [B_v, D] mean over valid frames


def masked_mean(f: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over valid frames: ``f [N, F, D], mask [N, F] -> [N, D]``."""
    if mask is None:
        return f.mean(dim=1)
    m = mask.to(f.dtype).unsqueeze(-1)
    return (f * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


NORM_EPS = 1e-12  # F.normalize's floor on a norm


def final_cosine(t_vhat: Tensor, tt: Tensor, vv: Tensor, *, side: str = "text", t_delta: Tensor | float = 0.0,
                 d_vhat: Tensor | float = 0.0, dd: Tensor | float = 0.0) -> Tensor:
    """The GARE score from inner products (any shape, broadcast elementwise).

    ``side="text"``: ``cos(t + Delta, vhat)``; ``side="video"``: ``cos(t, vhat + Delta)``, from
    ``t_vhat = <t, vhat>``, ``tt = |t|^2``, ``vv = |vhat|^2``, ``t_delta = <t, Delta>``,
    ``d_vhat = <Delta, vhat>`` and ``dd = |Delta|^2``. Without the Delta terms (their default 0) it is
    the plain cosine of two vectors from their inner product and squared norms. Each norm is floored at
    ``NORM_EPS`` as ``F.normalize`` does.
    """
    if side == "text":
        num, sq1, sq2 = t_vhat + d_vhat, tt + 2.0 * t_delta + dd, vv
    elif side == "video":
        num, sq1, sq2 = t_vhat + t_delta, tt, vv + 2.0 * d_vhat + dd
    else:
        raise ValueError(f"side must be 'text' or 'video', got {side!r}")
    n1 = sq1.clamp_min(0.0).sqrt().clamp_min(NORM_EPS)
    n2 = sq2.clamp_min(0.0).sqrt().clamp_min(NORM_EPS)
    return num / (n1 * n2)


def check_inputs(t: Tensor, f: Tensor, mask: Tensor | None) -> None:
    if t.dim() != 2 or f.dim() != 3 or t.shape[-1] != f.shape[-1]:
        raise ValueError(f"expected text [N_t, D] and video [N_v, F, D], got {tuple(t.shape)} and {tuple(f.shape)}")
    if mask is not None:
        if tuple(mask.shape) != tuple(f.shape[:2]):
            raise ValueError(f"video mask must be [N_v, F] = {tuple(f.shape[:2])}, got {tuple(mask.shape)}")
        if not bool(mask.bool().any(dim=1).all()):
            bad = (~mask.bool().any(dim=1)).nonzero().flatten().tolist()[:10]
            raise ValueError(f"videos {bad} have no valid frame in their mask")


def _pair_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``cos(a, b)`` over the last axis (broadcast), written as the method states it: normalize, then
    multiply. The reference keeps this direct form (training numerics are those of every earlier run);
    the algebraic paths (fast scorer, gallery, diagnostics) share :func:`final_cosine`, which equals it
    to rounding."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


class PairScorer(nn.Module):
    def __init__(self, cfg: ScorerConfig, dim: int, release_padding: bool = False):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.release_padding = bool(release_padding)
        p = cfg.psi
        self.psi = (IncrementModule(dim, p.heads, p.layers, p.dropout, p.log_sigma_head, p.stochastic)
                    if cfg.use_delta else None)

    # -- pieces ------------------------------------------------------------------------------
    def pool(self, t: Tensor, f: Tensor, mask: Tensor | None) -> Tensor:
        """Pooled video per pair ``vhat [B_t, B_v, D]``."""
        if self.cfg.pooling == "mean":
            vbar = self.mean_frames(f, mask)
            return vbar.unsqueeze(0).expand(t.shape[0], -1, -1)
        logits = torch.einsum("td,vfd->tvf", t, f) / self.cfg.pool_temperature
        if self.release_padding:
            w = logits.softmax(dim=-1)
            if mask is not None:
                w = w * mask.to(w.dtype)[None]
            return torch.einsum("tvf,vfd->tvd", w, f)
        if mask is not None:
            logits = logits.masked_fill(~mask.bool()[None], float("-inf"))
        w = logits.softmax(dim=-1)
        return torch.einsum("tvf,vfd->tvd", w, f)

    def mean_frames(self, f: Tensor, mask: Tensor | None) -> Tensor:
        """vbar ``[B_v, D]``: mean over valid frames (release padding: over every slot)."""
        return f.mean(dim=1) if self.release_padding else masked_mean(f, mask)

    def query(self, t: Tensor, vbar: Tensor) -> Tensor:
        eta = self.cfg.eta
        if self.cfg.query == "text":
            return t.unsqueeze(1).expand(-1, vbar.shape[0], -1)
        gap = vbar[None, :, :] - t[:, None, :]
        return eta * gap  # the same gap on both sides: eta = +1 means vbar - t (paper Table 7)

    def forward(self, t: Tensor, f: Tensor, video_mask: Tensor | None = None,
                words: Tensor | None = None, word_mask: Tensor | None = None) -> ScoreOutput:
        """Reference scoring of every pair: ``t [B_t, D], f [B_v, F, D]`` -> :class:`ScoreOutput`."""
        vhat = self.pool(t, f, video_mask)
        if self.psi is None:
            sim = torch.einsum("td,tvd->tv", F.normalize(t, dim=-1), F.normalize(vhat, dim=-1))  # [B_t, B_v]
            return ScoreOutput(sim=sim, t=t, vhat=vhat)
        vbar = self.mean_frames(f, video_mask)
        q = self.query(t, vbar)
        if self.cfg.context == "frames":
            delta, log_sigma = self.psi(q, f, None if self.release_padding else video_mask, ctx_axis=1)
        else:
            if words is None:
                raise ValueError("context='words' needs the word embeddings of the texts (encode_text(..., "
                                 "return_words=True))")
            delta, log_sigma = self.psi(q, words, word_mask, ctx_axis=0)
        if self.cfg.delta_norm is not None:
            delta = self.cfg.delta_norm * F.normalize(delta, dim=-1)
        if self.cfg.side == "text":
            corrected = t[:, None, :] + delta  # [B_t, B_v, D]
            sim = _pair_cosine(corrected, vhat)  # [B_t, B_v]
        else:
            corrected = vhat + delta  # [B_t, B_v, D]
            sim = _pair_cosine(t[:, None, :], corrected)  # [B_t, B_v]
        return ScoreOutput(sim=sim, delta=delta, corrected=corrected, log_sigma=log_sigma, t=t, vhat=vhat, vbar=vbar)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def similarity(self, t: Tensor, f: Tensor, video_mask: Tensor | None = None, *,
                   words: Tensor | None = None, word_mask: Tensor | None = None,
                   block_texts: int | None = None, block_videos: int | None = None,
                   memory_budget: int = 256 * 2**20) -> Tensor:
        """``[N_t, N_v]`` cosine scores, computed in blocks (eval mode expected).

        Block sizes default to what keeps the largest per-block tensor (``[bt, bv, F, D]``-sized
        intermediates) under ``memory_budget`` bytes.
        """
        check_inputs(t, f, video_mask)
        Nt, Nv = t.shape[0], f.shape[0]
        Fr, D = f.shape[1], f.shape[2]
        if block_texts is None or block_videos is None:
            per_pair = 4 * (6 * D + 3 * Fr * max(1, self.cfg.psi.heads))  # bytes of live per-pair tensors
            pairs = max(1, memory_budget // per_pair)
            bv = block_videos or min(Nv, max(1, int(pairs ** 0.5)))
            bt = block_texts or min(Nt, max(1, pairs // bv))
        else:
            bt, bv = block_texts, block_videos
        out = t.new_empty(Nt, Nv)
        for i in range(0, Nt, bt):
            ti = t[i:i + bt]
            wi = words[i:i + bt] if words is not None else None
            wmi = word_mask[i:i + bt] if word_mask is not None else None
            for j in range(0, Nv, bv):
                mj = video_mask[j:j + bv] if video_mask is not None else None
                out[i:i + bt, j:j + bv] = self.forward(ti, f[j:j + bv], mj, wi, wmi).sim
        return out
