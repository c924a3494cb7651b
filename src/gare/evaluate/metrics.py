"""Retrieval metrics: R@K, median and mean rank, with an explicit treatment of ties.

Queries are on the rows of a score matrix, gallery items on the columns; higher score = better.
Everything is vectorized over queries (processed in chunks to bound memory) and runs in torch on
the device of the input (numpy arrays are wrapped without copy).

Ties. An item of the gallery whose score equals the score of the correct item could be ranked before
or after it. The CLIP4Clip metric code sorts and takes the position of the correct item, so ties are
broken by the sort's order, which can inflate results (a constant scorer can even get R@1 = 100). Here:

- ``"pessimistic"`` (default): every wrong item tied with the best correct item ranks ahead of it.
  A constant scorer gets the worst possible rank (R@1 = 0 when the gallery has more than one item).
- ``"mean"``: the expected rank under a uniformly random order of the tied items (can be fractional;
  R@K then counts ranks ``<= K``).
- ``"optimistic"``: every tied wrong item ranks after the correct one. This inflates the metrics and
  exists only to measure how much a result depends on ties; do not report it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["RECALL_KS", "metrics_from_ranks", "query_ranks", "retrieval_metrics", "t2v_v2t_metrics"]

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10, 50)
TIES = ("pessimistic", "mean", "optimistic")
_CHUNK_ELEMENTS = 1 << 24  # entries of the [chunk, N_g] working arrays


def _as_tensor(sim: Any) -> Tensor:
    if isinstance(sim, Tensor):
        x = sim.detach()
    else:
        x = torch.as_tensor(np.asarray(sim))
    if x.dim() != 2:
        raise ValueError(f"sim must be a 2-D [N_queries, N_gallery] matrix, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    if bool(torch.isnan(x).any()):
        raise ValueError("sim contains NaN scores; ranks would be meaningless")
    return x


def _ranks_from_mask_fn(
    sim: Tensor, mask_fn: Callable[[int, int], Tensor], ties: str, chunk_size: int | None
) -> np.ndarray:
    """Rank (1-based, float64) of the best-ranked correct item of every query.

    ``mask_fn(start, stop)`` returns the bool ``[stop - start, N_g]`` mask of the correct items of the
    queries ``start:stop``.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    n_q, n_g = sim.shape
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(n_g, 1))
    out = []
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        s = sim[start:stop]
        correct = mask_fn(start, stop)
        has = correct.any(dim=1)
        if not bool(has.all()):
            bad = int(torch.nonzero(~has)[0, 0]) + start
            n_bad = int((~has).sum())
            raise ValueError(f"{n_bad} queries have no correct gallery item (first: query {bad})")
        best = s.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)  # [c, 1]
        wrong = ~correct
        greater = ((s > best) & wrong).sum(dim=1)
        if ties == "optimistic":
            rank = greater.double() + 1.0
        else:
            at_best = s == best
            tied_wrong = (at_best & wrong).sum(dim=1).double()
            if ties == "pessimistic":
                rank = greater.double() + tied_wrong + 1.0
            else:
                tied_correct = (at_best & correct).sum(dim=1).double()
                # expected position of the first correct item among n_w wrong and n_c correct tied items
                rank = greater.double() + (tied_wrong + tied_correct + 1.0) / (tied_correct + 1.0)
        out.append(rank.cpu())
    if not out:
        return np.zeros(0, dtype=np.float64)
    return torch.cat(out).numpy()


def _gt_mask_fn(sim: Tensor, gt: Any) -> Callable[[int, int], Tensor]:
    n_q, n_g = sim.shape
    dev = sim.device
    if gt is None:
        if n_q != n_g:
            raise ValueError(
                f"sim is {n_q}x{n_g}: without `gt` the ground truth is the diagonal, which needs a square matrix"
            )
        return lambda a, b: torch.arange(a, b, device=dev)[:, None] == torch.arange(n_g, device=dev)[None, :]
    g = gt.detach() if isinstance(gt, Tensor) else torch.as_tensor(np.asarray(gt))
    g = g.to(dev)
    if g.dtype == torch.bool:
        if tuple(g.shape) != (n_q, n_g):
            raise ValueError(f"bool gt must have the shape of sim {(n_q, n_g)}, got {tuple(g.shape)}")
        return lambda a, b: g[a:b]
    if g.dtype.is_floating_point or g.dtype.is_complex:
        raise ValueError(f"gt must be integer gallery indices [N_q] or a bool mask [N_q, N_g], got {g.dtype}")
    if tuple(g.shape) != (n_q,):
        raise ValueError(f"integer gt must have one gallery index per query ({n_q},), got {tuple(g.shape)}")
    if n_q and (int(g.min()) < 0 or int(g.max()) >= n_g):
        raise ValueError(f"gt indices must be in [0, {n_g}), got range [{int(g.min())}, {int(g.max())}]")
    g = g.long()
    return lambda a, b: g[a:b, None] == torch.arange(n_g, device=dev)[None, :]


def query_ranks(
    sim: Any, gt: Any = None, *, ties: str = "pessimistic", chunk_size: int | None = None
) -> np.ndarray:
    """1-based rank of the best-ranked correct gallery item of each query.

    Args:
        sim: ``[N_q, N_g]`` scores (torch tensor on any device, or array-like), higher = better.
        gt: ``None`` (the diagonal; square ``sim``), integer gallery indices ``[N_q]``, or a bool mask
            ``[N_q, N_g]`` of the correct items (several per query allowed).
        ties: ``"pessimistic"`` (default), ``"mean"`` or ``"optimistic"`` (inflates; see module doc).
        chunk_size: queries per chunk (default: about 16M matrix entries per chunk).

    Returns:
        float64 array ``[N_q]``.
    """
    s = _as_tensor(sim)
    return _ranks_from_mask_fn(s, _gt_mask_fn(s, gt), ties, chunk_size)


def metrics_from_ranks(ranks: Sequence[float] | np.ndarray) -> dict[str, float]:
    """R1, R5, R10, R50 (percent), MdR (median rank), MnR (mean rank) from 1-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no queries: cannot compute retrieval metrics")
    out = {f"R{k}": float(100.0 * np.mean(r <= k)) for k in RECALL_KS}
    out["MdR"] = float(np.median(r))
    out["MnR"] = float(np.mean(r))
    return out


def retrieval_metrics(sim: Any, gt: Any = None, *, ties: str = "pessimistic") -> dict[str, float]:
    """Retrieval metrics for the queries on the rows of ``sim`` against the gallery on its columns.

    Ties count against the query by default (``ties="pessimistic"``): a gallery item whose score equals
    that of the correct item is ranked ahead of it, so a constant scorer gets the worst possible rank and
    R@1 = 0 (never 100) when the gallery has more than one item. ``ties="mean"`` uses the expected rank
    under a random order of the tied items; ``ties="optimistic"`` ranks the correct item first among
    its ties and therefore inflates the metrics (use it only to measure sensitivity to ties).

    Args:
        sim: ``[N_q, N_g]`` scores, torch tensor or array-like; NaN is rejected.
        gt: ground truth: ``None`` = the diagonal (square ``sim``); an integer sequence ``[N_q]`` = the
            gallery index of each query's single correct item; a bool array ``[N_q, N_g]`` = several
            correct items per query, the rank of a query being that of its best-ranked correct item.
        ties: ``"pessimistic"`` | ``"mean"`` | ``"optimistic"``.

    Returns:
        ``{"R1", "R5", "R10", "R50"}`` in percent, ``"MdR"`` median rank and ``"MnR"`` mean rank
        (1 = best), as Python floats.
    """
    return metrics_from_ranks(query_ranks(sim, gt, ties=ties))


def t2v_v2t_metrics(sim: Any, query_video: Any, *, ties: str = "pessimistic") -> dict[str, Any]:
    """Text-to-video and video-to-text metrics of one text-video score matrix.

    Args:
        sim: ``[N_text, N_video]`` scores.
        query_video: ``[N_text]`` integer, the video of each text (several texts per video allowed, e.g.
            MSVD's all-captions protocol). Every video needs at least one text.
        ties: see :func:`retrieval_metrics`.

    Returns:
        ``{"t2v": metrics, "v2t": metrics, "RSum": float}``. t2v: each text's correct item is its video.
        v2t: each video queries the texts, all its texts are correct and the best-ranked one counts.
        RSum = R1 + R5 + R10 of both directions.
    """
    s = _as_tensor(sim)
    n_t, n_v = s.shape
    qv = query_video.detach() if isinstance(query_video, Tensor) else torch.as_tensor(np.asarray(query_video))
    if qv.dtype.is_floating_point or qv.dtype == torch.bool or tuple(qv.shape) != (n_t,):
        raise ValueError(f"query_video must be integer video indices of shape ({n_t},), got {qv.dtype} "
                         f"{tuple(qv.shape)}")
    qv = qv.to(s.device).long()
    t2v = metrics_from_ranks(_ranks_from_mask_fn(s, _gt_mask_fn(s, qv), ties, None))
    counts = torch.bincount(qv, minlength=n_v) if n_t else torch.zeros(n_v, dtype=torch.long)
    if bool((counts[:n_v] == 0).any()):
        missing = int((counts[:n_v] == 0).sum())
        raise ValueError(f"{missing} of {n_v} videos have no text in query_video: v2t is undefined for them")
    st = s.T
    dev = s.device
    v2t_ranks = _ranks_from_mask_fn(
        st, lambda a, b: torch.arange(a, b, device=dev)[:, None] == qv[None, :], ties, None
    )
    v2t = metrics_from_ranks(v2t_ranks)
    rsum = sum(m[f"R{k}"] for m in (t2v, v2t) for k in (1, 5, 10))
    return {"t2v": t2v, "v2t": v2t, "RSum": float(rsum)}
