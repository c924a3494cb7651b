"""Evaluation of a model on a split: encode the gallery and the queries once, score, report metrics.

Every rank takes part (each encodes a contiguous shard; shards are gathered in order), so nothing
hangs when evaluation runs under torchrun. DSL and QB-Norm are separately labelled extra rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ..distributed import all_gather_nograd
from ..model.fast_scorer import supports
from ..model.gallery import VideoGallery
from .metrics import t2v_v2t_metrics
from .postprocess import dual_softmax, qb_norm

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    texts: list[str]
    query_video: list[int]
    t: Tensor  # [N_q, D]
    v: Tensor  # [N_v, F, D]
    mask: Tensor  # [N_v, F]
    words: Tensor | None = None  # [N_q, L, D] word embeddings (context="words" models only)
    word_mask: Tensor | None = None  # [N_q, L]
    gallery: VideoGallery | None = None  # cached score bases of v (set by cache_gallery when v is scored twice)

    def videos(self) -> tuple[Tensor | VideoGallery, Tensor | None]:
        """What ``model.similarity`` scores: the gallery when one is cached (it holds the mask), else ``(v, mask)``."""
        return (self.gallery, None) if self.gallery is not None else (self.v, self.mask)


def cache_gallery(model, enc: EncodedSplit) -> None:
    """Compute the per-video score bases of ``enc.v`` once (``model.gallery``), for a split whose videos are
    scored by several sets of texts (e.g. the queries and a QB-Norm bank); no-op where the fast scorer
    does not cover the model."""
    if enc.gallery is None and supports(model.scorer):
        enc.gallery = model.gallery(enc.v, enc.mask)


def _shard(n: int, rank: int, world: int) -> range:
    per = (n + world - 1) // world
    return range(min(n, rank * per), min(n, (rank + 1) * per))


def needs_words(model) -> bool:
    sc = model.cfg.scorer
    return bool(sc.use_delta and sc.context == "words")


@torch.no_grad()
def encode_texts(model, texts: list[str], batch_size: int = 256, rank: int = 0, world: int = 1,
                 return_words: bool = False):
    """``[N, D]`` text embeddings (with ``return_words``: also ``[N, L, D]`` words and ``[N, L]`` masks)."""
    idx = _shard(len(texts), rank, world)
    out, words, masks = [], [], []
    for i in range(idx.start, idx.stop, batch_size):
        chunk = texts[i:min(i + batch_size, idx.stop)]
        if return_words:
            t, w, m = model.encode_text(chunk, return_words=True)
            out.append(t.float())
            words.append(w.float())
            masks.append(m)
        else:
            out.append(model.encode_text(chunk).float())
    local = torch.cat(out) if out else torch.zeros(0, model.embed_dim, device=model.device)
    if not return_words:
        return all_gather_nograd(local)
    L = model.backbone.max_words
    w = torch.cat(words) if words else torch.zeros(0, L, model.embed_dim, device=model.device)
    m = torch.cat(masks) if masks else torch.zeros(0, L, dtype=torch.bool, device=model.device)
    return all_gather_nograd(local), all_gather_nograd(w), all_gather_nograd(m)


@torch.no_grad()
def encode_videos(model, video_ds, batch_size: int = 32, workers: int = 0, rank: int = 0, world: int = 1,
                  collate=None) -> tuple[Tensor, Tensor]:
    """Temporal-module outputs ``[N_v, F, D]`` and masks ``[N_v, F]`` of every item of ``video_ds``."""
    idx = _shard(len(video_ds), rank, world)
    loader = DataLoader(Subset(video_ds, list(idx)), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    vs, ms = [], []
    for batch in loader:
        mask = batch["mask"].to(model.device)
        vs.append(model.encode_video(batch["frames"].to(model.device), mask).float())
        ms.append(mask)
    if vs:
        v, m = torch.cat(vs), torch.cat(ms)
    else:
        n_f = getattr(video_ds, "max_frames", 1)
        v = torch.zeros(0, n_f, model.embed_dim, device=model.device)
        m = torch.zeros(0, n_f, dtype=torch.bool, device=model.device)
    return all_gather_nograd(v), all_gather_nograd(m)


def score_rows(model, enc: EncodedSplit, *, two_stage_k: int | None = None) -> Tensor:
    v, mask = enc.videos()
    return model.similarity(enc.t, v, mask, words=enc.words, word_mask=enc.word_mask,
                            two_stage_k=two_stage_k).float().cpu()


def evaluate_encoded(model, enc: EncodedSplit, *, dsl: bool = False, qb_bank: Tensor | None = None,
                     two_stage_k: int | None = None) -> dict:
    """Metrics of an encoded split. Returns ``{"t2v", "v2t", "RSum", "extra": {label: metrics}, "seconds"}``."""
    t0 = time.perf_counter()
    S = score_rows(model, enc, two_stage_k=two_stage_k)
    res = t2v_v2t_metrics(S, enc.query_video)
    res["seconds_scoring"] = time.perf_counter() - t0
    res["n_queries"], res["n_videos"] = int(S.shape[0]), int(S.shape[1])
    extra = {}
    if dsl:
        extra["DSL (post-processing, not in the paper's numbers)"] = t2v_v2t_metrics(dual_softmax(S), enc.query_video)
    if qb_bank is not None:
        extra["QB-Norm (post-processing, not in the paper's numbers)"] = {
            "t2v": t2v_v2t_metrics(qb_norm(S, qb_bank), enc.query_video)["t2v"]}
    if extra:
        res["extra"] = extra
    return res


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table of ``{row label: {"t2v": m, "v2t": m}}``."""
    keys = ["R1", "R5", "R10", "R50", "MdR", "MnR"]
    lines = ["| model | dir | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for label, r in rows.items():
        for d in ("t2v", "v2t"):
            if d in r and r[d]:
                vals = " | ".join(f"{r[d][k]:.1f}" for k in keys)
                lines.append(f"| {label} | {d} | {vals} |")
    return "\n".join(lines)
