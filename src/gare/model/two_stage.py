"""Two-stage retrieval (docs/performance.md, section 2): rank by plain ``cos(t_i, vbar_j)``, rescore each text's top K
videos with exact GARE scores.

Stage 1 is a dual-encoder product ``[N_t, N_v]`` (``vbar_j``: the masked frame mean of the temporal
outputs). Stage 2 scores only the ``N_t * K`` selected pairs: with frame context through
:func:`~gare.model.fast_scorer.fast_pair_similarity` (pairs grouped by video, exact), otherwise (word
context, or ``fast=False``: the reference scorer) text by text against its K candidates. Pairs outside
a text's top K get ``stage-1 cosine - 3``, which lies in ``[-4, -2]``, strictly below every GARE score
(a cosine, ``>= -1``), so each row ranks the reranked videos first (by GARE) and the rest after them
(by the stage-1 cosine).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from .fast_scorer import fast_pair_similarity, fast_similarity, gallery_similarity, supports, supports_pairs
from .gallery import VideoGallery
from .scorer import masked_mean

log = logging.getLogger(__name__)

OUTSIDE_OFFSET = 3.0  # non-reranked pairs score (stage-1 cosine - 3) < -1 <= any reranked cosine
# The fast scorer's dense path (every pair, one GEMM per block) costs about 1/7 of its per-pair path (each
# video against the texts that picked it) per pair: at 1,000 x 1,000, D = 512, F = 12, one thread, the rerank
# of K = 128 took 0.93x the exhaustive time and K = 256 1.56x (benchmarks/bench_two_stage.py). From this
# fraction of the videos on, the rerank scores every pair densely and keeps the candidates' scores.
DENSE_FRACTION = 0.14


def stage1_similarity(t: Tensor, v: Tensor | VideoGallery, video_mask: Tensor | None = None) -> Tensor:
    """``cos(t_i, vbar_j)`` ``[N_t, N_v]`` for ``t [N_t, D]``, ``v [N_v, F, D]``, ``video_mask [N_v, F]``
    (or a gallery, whose ``vbar`` is stored)."""
    vbar = v.vbar.to(t) if isinstance(v, VideoGallery) else masked_mean(v, video_mask)  # [N_v, D]
    return F.normalize(t, dim=-1) @ F.normalize(vbar, dim=-1).T


def candidates_by_video(cand: Tensor, n_videos: int) -> Tensor:
    """Invert per-text candidate lists ``cand [N_t, K]`` (video ids) into per-video text lists
    ``[N_v, g]`` (text ids, ascending, valid entries first, ``-1`` padding; ``g`` = most texts of one video)."""
    N_t, K = cand.shape
    vids = cand.reshape(-1)
    texts = torch.arange(N_t, device=cand.device).repeat_interleave(K)
    order = torch.argsort(vids * N_t + texts)  # by video, then by text
    vids, texts = vids[order], texts[order]
    counts = torch.bincount(vids, minlength=n_videos)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(vids.numel(), device=cand.device) - starts[vids]
    g = int(counts.max()) if vids.numel() else 0
    out = torch.full((n_videos, max(g, 1)), -1, dtype=torch.long, device=cand.device)
    out[vids, slot] = texts
    return out


@torch.no_grad()
def two_stage_similarity(model, t: Tensor, v: Tensor | VideoGallery, video_mask: Tensor | None = None, *, k: int,
                         words: Tensor | None = None, word_mask: Tensor | None = None, fast: bool = True,
                         memory_budget: int = 256 * 2**20) -> Tensor:
    """Scores ``[N_t, N_v]``: exact GARE scores on each text's top ``k`` videos by ``cos(t_i, vbar_j)``,
    ``cos(t_i, vbar_j) - 3`` elsewhere. ``k >= N_v`` gives the exhaustive matrix.

    ``model``: a :class:`~gare.model.gare.GareModel` (its ``scorer`` is used in eval mode). ``v``: temporal
    outputs ``[N_v, F, D]`` or a gallery (``model.gallery(v, video_mask)``; the rerank then slices the
    cached bases of the candidates instead of computing them).
    """
    if k < 1:
        raise ValueError(f"two-stage K must be >= 1, got {k}")
    N_v = len(v) if isinstance(v, VideoGallery) else v.shape[0]
    if k >= N_v:
        return model.similarity(t, v, video_mask, words=words, word_mask=word_mask, fast=fast,
                                memory_budget=memory_budget)
    scorer = model.scorer
    was_training = scorer.training
    scorer.eval()
    try:
        s1 = stage1_similarity(t, v, video_mask)
        cand = s1.topk(k, dim=1).indices  # [N_t, k]
        out = s1 - OUTSIDE_OFFSET
        if fast and supports_pairs(scorer) and k >= DENSE_FRACTION * N_v:
            dense = model.similarity(t, v, video_mask, fast=True, memory_budget=memory_budget)  # [N_t, N_v]
            out.scatter_(1, cand, dense.gather(1, cand).to(out.dtype))
            return out
        _rerank(out, scorer, t, v, video_mask, cand, words, word_mask, fast, memory_budget)
        return out
    finally:
        scorer.train(was_training)


def _rerank(out: Tensor, scorer, t: Tensor, v: Tensor | VideoGallery, video_mask: Tensor | None, cand: Tensor,
            words: Tensor | None, word_mask: Tensor | None, fast: bool, memory_budget: int) -> None:
    """Write the exact scores of the pairs ``(i, cand[i, r])`` into ``out [N_t, N_v]``."""
    N_t = cand.shape[0]
    N_v = len(v) if isinstance(v, VideoGallery) else v.shape[0]
    if fast and supports_pairs(scorer):
        by_video = candidates_by_video(cand, N_v)  # [N_v, g]
        s = fast_pair_similarity(scorer, t, v, video_mask, by_video, memory_budget=memory_budget)  # [N_v, g]
        valid = by_video >= 0
        vids = torch.arange(N_v, device=cand.device)[:, None].expand_as(by_video)[valid]
        out[by_video[valid], vids] = s[valid].to(out.dtype)
        return
    use_fast = fast and supports(scorer)
    if isinstance(v, VideoGallery) and use_fast:  # word context: the cached video side of each text's candidates
        for i in range(N_t):
            wi = words[i:i + 1] if words is not None else None
            wmi = word_mask[i:i + 1] if word_mask is not None else None
            s = gallery_similarity(scorer, t[i:i + 1], v[cand[i]], words=wi, word_mask=wmi, memory_budget=memory_budget)
            out[i, cand[i]] = s[0].to(out.dtype)
        return
    if isinstance(v, VideoGallery):
        v, video_mask = v.frames_and_mask()
    # the other cases score exactly the K * N_t needed pairs, one psi context at a time: frame context
    # (reference scorer) video by video against the texts that picked it, word context text by text
    # against its K candidate videos
    if scorer.psi is None or scorer.cfg.context == "frames":
        by_video = candidates_by_video(cand, N_v)
        for j in range(N_v):
            idx = by_video[j][by_video[j] >= 0]
            if idx.numel() == 0:
                continue
            vm = video_mask[j:j + 1] if video_mask is not None else None
            out[idx, j] = scorer(t[idx], v[j:j + 1], vm).sim[:, 0].to(out.dtype)
        return
    for i in range(N_t):
        ci = cand[i]
        vm = video_mask[ci] if video_mask is not None else None
        wi = words[i:i + 1] if words is not None else None
        wmi = word_mask[i:i + 1] if word_mask is not None else None
        if use_fast:
            s = fast_similarity(scorer, t[i:i + 1], v[ci], vm, words=wi, word_mask=wmi, memory_budget=memory_budget)
        else:
            s = scorer(t[i:i + 1], v[ci], vm, wi, wmi).sim
        out[i, ci] = s[0].to(out.dtype)


def topk_agreement(S_exact: Tensor, S_two_stage: Tensor, n: int = 10) -> float:
    """Mean over texts of ``|top-n(S_exact) & top-n(S_two_stage)| / n`` (``n`` capped at ``N_v``)."""
    if S_exact.shape != S_two_stage.shape:
        raise ValueError(f"shapes differ: {tuple(S_exact.shape)} vs {tuple(S_two_stage.shape)}")
    n = min(n, S_exact.shape[1])
    if n < 1 or S_exact.shape[0] == 0:
        raise ValueError("topk_agreement needs at least one text and one video")
    a = S_exact.topk(n, dim=1).indices
    b = S_two_stage.topk(n, dim=1).indices
    hit = (a[:, :, None] == b[:, None, :]).any(dim=2).sum(dim=1)
    return float(hit.double().mean() / n)
