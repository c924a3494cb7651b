"""Modality-gap measures of an encoded split (the geometry the paper's argument is about).

On the evaluation embeddings (texts ``t [N_q, D]``, temporal outputs ``v [N_v, F, D]`` with mask
``[N_v, F]`` and ``query_video [N_q]``), all on L2-normalized vectors:

- ``gap``: distance between the text centroid and the video centroid (``vbar_j``, mean over valid
  frames); ``centroid_cos`` the cosine between the centroids; ``text_centroid_norm`` /
  ``video_centroid_norm`` their norms (1: all vectors identical, ~0: spread over the sphere);
- ``alignment``: ``mean_i ||t_i - vbar_{v(i)}||^2`` over the matched (query, video) pairs (Wang & Isola);
- ``uniformity_text`` / ``uniformity_video``: ``log mean_{i<j} exp(-2 ||x_i - x_j||^2)`` (lower = more uniform);
- ``pos_cos`` / ``neg_cos``: mean cosine of matched and of unmatched (t_i, vbar_j) pairs.

With Delta (``model.scorer.use_delta``), the same on the corrected side of the *matched* pairs only
(``c_i = t_i + Delta_ii`` against ``vhat_ii``; video side: ``t_i`` against ``vhat_ii + Delta_ii``):
``gap_corrected``, ``alignment_corrected``, and ``delta_norm_ratio = mean ||Delta_ii|| / ||t_i||``
(or ``/ ||vhat_ii||`` on the video side). Those need psi once per matched pair: ``N_q`` pairs, cheap.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .. import diagnostics as dg

log = logging.getLogger(__name__)

__all__ = ["matched_pair_outputs", "split_geometry"]


@torch.no_grad()
def matched_pair_outputs(model, t: Tensor, v: Tensor, mask: Tensor | None, query_video: Tensor,
                         block: int = 64, *, words: Tensor | None = None,
                         word_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Scorer outputs of the matched pairs only.

    Args:
        t: ``[N_q, D]`` texts; v: ``[N_v, F, D]`` temporal outputs; mask: ``[N_v, F]``;
        query_video: ``[N_q]`` index of each text's video; words, word_mask: ``[N_q, L, D]`` and
        ``[N_q, L]`` word embeddings of the texts (needed by ``context='words'`` models only).

    Returns:
        ``vhat [N_q, D]`` (pooled video of each matched pair), ``corrected [N_q, D]`` (the Delta-corrected
        vector: ``t + Delta`` or ``vhat + Delta``; equals ``t`` without Delta) and ``delta [N_q, D]`` or None.
        Computed in blocks of ``block`` queries against their own videos (the diagonal of each block).
    """
    scorer = model.scorer
    was = scorer.training
    scorer.eval()
    vh, co, de = [], [], []
    try:
        for s in range(0, t.shape[0], block):
            idx = query_video[s:s + block]
            ti = t[s:s + block]
            fi = v[idx]
            mi = mask[idx] if mask is not None else None
            wi = wmi = None
            if scorer.psi is not None and scorer.cfg.context == "words":
                if words is None or word_mask is None:
                    raise ValueError("geometry of a context='words' model needs the texts' word embeddings "
                                     "(words [N_q, L, D], word_mask [N_q, L])")
                wi, wmi = words[s:s + block].to(ti.device), word_mask[s:s + block].to(ti.device)
            out = scorer(ti, fi, mi, wi, wmi)
            n = ti.shape[0]
            ar = torch.arange(n, device=ti.device)
            vh.append(out.vhat[ar, ar])
            if out.delta is None:
                co.append(ti)
            else:
                co.append(out.corrected[ar, ar])
                de.append(out.delta[ar, ar])
    finally:
        scorer.train(was)
    return torch.cat(vh), torch.cat(co), (torch.cat(de) if de else None)


@torch.no_grad()
def split_geometry(model, t: Tensor, v: Tensor, mask: Tensor | None, query_video, *,
                   corrected: bool = True, words: Tensor | None = None,
                   word_mask: Tensor | None = None) -> dict[str, float]:
    """Modality-gap measures of one encoded split (see the module docstring for every key).

    Args:
        model: a :class:`gare.model.GareModel` (its scorer gives vhat and Delta of the matched pairs).
        t: ``[N_q, D]``; v: ``[N_v, F, D]``; mask: ``[N_v, F]`` or None; query_video: ``[N_q]`` ints.
        corrected: also compute the Delta-corrected measures (needs psi on ``N_q`` pairs).
        words, word_mask: ``[N_q, L, D]`` / ``[N_q, L]`` word embeddings of the texts; a ``context='words'``
            model needs them for the corrected measures (without them those are left out).
    """
    t = t.float()
    v = v.float()
    qv = torch.as_tensor(query_video, dtype=torch.long, device=t.device)
    if t.dim() != 2 or v.dim() != 3 or qv.shape != (t.shape[0],):
        raise ValueError(f"expected t [N_q, D], v [N_v, F, D], query_video [N_q]; got {tuple(t.shape)}, "
                         f"{tuple(v.shape)}, {tuple(qv.shape)}")
    vbar = model.mean_video(v, mask)
    out: dict[str, float] = dict(dg.modality_gap(t, vbar))
    out["alignment"] = dg.alignment(t, vbar[qv])
    out["uniformity_text"] = dg.uniformity(t)
    out["uniformity_video"] = dg.uniformity(vbar)
    tn = torch.nn.functional.normalize(t, dim=-1)
    vn = torch.nn.functional.normalize(vbar, dim=-1)
    cos = tn @ vn.T
    pos = torch.zeros_like(cos, dtype=torch.bool)
    pos[torch.arange(t.shape[0], device=t.device), qv] = True
    out["pos_cos"] = float(cos[pos].mean())
    out["neg_cos"] = float(cos[~pos].mean()) if bool((~pos).any()) else float("nan")
    has_context = model.scorer.cfg.context == "frames" or words is not None
    if corrected and model.scorer.psi is not None and has_context:
        vhat, corr, delta = matched_pair_outputs(model, t, v, mask, qv, words=words, word_mask=word_mask)
        if model.scorer.cfg.side == "text":
            out["gap_corrected"] = dg.modality_gap(corr, vbar)["gap"]
            out["alignment_corrected"] = dg.alignment(corr, vhat)
            ref = t
        else:
            out["gap_corrected"] = dg.modality_gap(t, corr)["gap"]
            out["alignment_corrected"] = dg.alignment(t, corr)
            ref = vhat
        out["delta_norm_ratio"] = float((delta.norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-12)).mean())
    return out
