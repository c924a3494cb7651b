"""Two-stage text-to-video search over an index built by :func:`gare.search.build_index`.

First stage: FAISS inner product between the normalized query embedding and the normalized mean video
embeddings vbar (exact ``IndexFlatIP`` by default; ``IndexIVFFlat`` for large collections, ``IndexIVFPQ`` for
archives whose vectors do not fit in memory; :mod:`gare.search.first_stage`, which also stores the trained ones
in the index folder so that an open does not train them again). Second stage:
the top ``rerank_k`` candidates are rescored with the full GARE score (text-conditioned pooling + Delta)
through ``GareModel.similarity`` on their stored score bases (the index's memory-mapped ``bases/`` files,
sliced to the candidates: nothing per video is recomputed), and the best ``k`` are returned.
``exhaustive=True`` skips the first stage: every video gets its exact GARE score, shard by shard.

A :class:`SearchEngine` is safe to share between threads: model calls are serialized by a lock, and
everything else it holds is read-only after :meth:`SearchEngine.open`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..model.checkpoint import resolve_checkpoint
from ..model.gallery import VideoGallery
from ..pipeline import load_run_model
from .first_stage import (  # noqa: F401 (re-exported)
    DEFAULT_NPROBE,
    FIRST_STAGES,
    IVF_MIN_VIDEOS,
    FirstStage,
    check_kind,
    normalized,
    open_first_stage,
    resolve,
)
from .index import gallery_of, supports_gallery
from .store import (
    THUMB_DIR,
    IndexMismatchError,
    SearchIndexError,
    Shard,
    connect_readonly,
    file_sha256,
    gather,
    gather_rows,
    index_command,
    open_index_meta,
)

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_K = 100
# K: the mean-vector first stage's top 1024 held 93% of the exact GARE top 10 at 10^5 generated videos (256: 75%);
# docs/scale.md, benchmarks/bench_search.py
DEFAULT_RERANK_K = 1024
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"}


class QueryError(ValueError):
    """A query or parameter a user sent that cannot be searched; the message says why."""


def validate_query(q) -> str:
    """A user query -> the text to encode (whitespace collapsed). Raises :class:`QueryError` for a missing
    or empty query, one over :data:`MAX_QUERY_CHARS` characters, or one with control characters."""
    if q is None:
        raise QueryError("missing query: pass the text to search for (q=...)")
    if not isinstance(q, str):
        raise QueryError(f"the query must be text, got {type(q).__name__}")
    if len(q) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long: {len(q)} characters, the limit is {MAX_QUERY_CHARS}")
    bad = sorted({c for c in q if unicodedata.category(c) in _FORBIDDEN_CATEGORIES})
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad[:5])
        raise QueryError(f"the query contains control or non-printable characters ({codes}); send plain text")
    text = " ".join(q.split())
    if not text:
        raise QueryError("the query is empty: type what the video shows")
    return text


def validate_k(k, max_k: int = MAX_K) -> int:
    """``k`` as sent (int or decimal string) -> int in [1, max_k], else :class:`QueryError`."""
    if isinstance(k, bool):
        raise QueryError(f"k must be an integer from 1 to {max_k}, got {k!r}")
    if isinstance(k, str):
        s = k.strip()
        if not (s.isascii() and s.lstrip("+-").isdigit()) or len(s) > 12:
            raise QueryError(f"k must be an integer from 1 to {max_k}, got {k[:20]!r}")
        k = int(s)
    if not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= max_k:
        raise QueryError(f"k must be an integer from 1 to {max_k}, got {k!r}")
    return int(k)


@dataclass
class Hit:
    """One result: its rank (1 = best), the video id in the index, GARE score and first-stage cosine."""

    rank: int
    id: int
    path: str  # absolute path of the file
    rel_path: str  # path inside the indexed folder
    score: float  # GARE cosine s(t, v)
    first_stage: float  # cos(t, vbar)
    duration: float | None
    width: int | None
    height: int | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoRecord:
    id: int
    rel_path: str
    size: int
    duration: float | None
    n_frames: int
    width: int | None
    height: int | None


class IndexRows:
    """The embeddings of an open index in id order (position ``p`` = the p-th smallest id), read from its
    memory-mapped shards: only the rows a query touches are paged in."""

    def __init__(self, parts: list[tuple[Shard, torch.Tensor, torch.Tensor]], n: int):
        self.shards = [sh for sh, _, _ in parts]
        self.rows = [r for _, r, _ in parts]  # per shard: its rows that are live, in position order
        self.positions = [p for _, _, p in parts]
        self.part_of = np.zeros(n, dtype=np.int64)
        self.row_of = np.zeros(n, dtype=np.int64)
        for i, (_sh, r, p) in enumerate(parts):
            self.part_of[p.numpy()] = i
            self.row_of[p.numpy()] = r.numpy()
        self.has_bases = bool(parts) and all(sh.gallery is not None for sh in self.shards)

    def pick(self, pos: np.ndarray, with_gallery: bool) -> tuple[dict[str, torch.Tensor], VideoGallery | None]:
        """The rows at positions ``pos`` (in that order): tensors ``frames``, ``mask`` and their bases."""
        parts = []
        for i in np.unique(self.part_of[pos]):
            sel = np.nonzero(self.part_of[pos] == i)[0]
            parts.append((self.shards[i], torch.from_numpy(self.row_of[pos[sel]]), torch.from_numpy(sel)))
        _, t, g = gather(parts, with_gallery=with_gallery, keys=("frames", "mask"))
        return t, g

    def mean_at(self, pos: np.ndarray) -> np.ndarray:
        """Stored vbar ``[len(pos), D]`` float32 (not normalized) of the videos at positions ``pos`` (only their
        rows are read)."""
        parts = []
        for i in np.unique(self.part_of[pos]):
            sel = np.nonzero(self.part_of[pos] == i)[0]
            parts.append((self.shards[i], torch.from_numpy(self.row_of[pos[sel]]), torch.from_numpy(sel)))
        if not parts:
            return np.zeros((0, int(self.shards[0].tensors["mean"].shape[1]) if self.shards else 0), np.float32)
        return np.ascontiguousarray(gather(parts, with_gallery=False, keys=("mean",))[1]["mean"].float().numpy())

    def mean(self) -> torch.Tensor:
        """``[N, D]`` float32 vbar of every video (the first-stage vectors, in memory)."""
        parts = [(sh, r, p) for sh, r, p in zip(self.shards, self.rows, self.positions)]
        if not parts:
            return torch.zeros(0, 0)
        return gather(parts, with_gallery=False, keys=("mean",))[1]["mean"].float()


class SearchEngine:
    """Loaded index + model. Build with :meth:`open`; query with :meth:`search`."""

    def __init__(self, index_dir: Path, model, root: Path, records: list[VideoRecord], rows: IndexRows, meta: dict,
                 *, rerank_k: int = DEFAULT_RERANK_K, first_stage: str = "auto", nlist: int | None = None,
                 nprobe: int | None = None, fast: bool = True, pq_m: int | None = None, pq_nbits: int | None = None,
                 refine: int | None = None, store_first_stage: bool = True):
        check_kind(first_stage)
        if rerank_k < 1:
            raise ValueError(f"rerank_k must be >= 1, got {rerank_k}")
        self.index_dir = Path(index_dir)
        self.model = model
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self.follow_symlinks = meta.get("follow_symlinks") == "1"  # indexed with --follow-symlinks
        self.records = records
        self.by_id = {r.id: r for r in records}
        self.ids = np.array([r.id for r in records], dtype=np.int64)
        self.rows = rows
        self.meta = meta
        self.rerank_k = int(rerank_k)
        # GareModel.similarity's exact fast scorer on the stored bases (False: blockwise reference on the frames)
        self.fast = bool(fast)
        self._lock = threading.Lock()
        self._vbar: np.ndarray | None = None
        t0 = time.perf_counter()
        spec = resolve(first_stage, len(records), int(meta["settings"]["embed_dim"]), nlist=nlist, m=pq_m,
                       nbits=pq_nbits)
        self.first: FirstStage = open_first_stage(
            self.index_dir, spec, self.ids, means_at=rows.mean_at, vectors=lambda: self.vbar,
            created=meta.get("created"), model_id=meta["settings"].get("model_id"), nprobe=nprobe, refine=refine,
            auto_nlist=nlist is None, write=store_first_stage)
        self.first_stage_s = time.perf_counter() - t0  # seconds to load or build it
        self.first_stage_kind = self.first.label

    @property
    def vbar(self) -> np.ndarray:
        """``[N, D]`` normalized mean vectors of every video, read into memory on first use (the flat first
        stage and in-memory builds need them; a stored IVF or IVF-PQ first stage does not)."""
        if self._vbar is None:
            mean = self.rows.mean() if len(self.records) else torch.zeros(0, int(self.meta["settings"]["embed_dim"]))
            self._vbar = np.ascontiguousarray(torch.nn.functional.normalize(mean, dim=-1).numpy(), dtype=np.float32)
        return self._vbar

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | os.PathLike, *, model: str | os.PathLike | None = None, device: str = "cpu",
             rerank_k: int = DEFAULT_RERANK_K, first_stage: str = "auto", nlist: int | None = None,
             nprobe: int | None = None, root: str | os.PathLike | None = None, fast: bool = True,
             pq_m: int | None = None, pq_nbits: int | None = None, refine: int | None = None,
             store_first_stage: bool = True) -> SearchEngine:
        """Load an index and its model.

        Args:
            model: the checkpoint (default: the file the index was built with); it must be the same model
                (same sha256) or :class:`IndexMismatchError` is raised.
            rerank_k: K, candidates of the first stage rescored with GARE.
            first_stage: "flat" (exact), "ivf" (IVF-Flat, approximate, for large collections), "ivfpq"
                (IVF-PQ, compressed, for archives whose vectors do not fit in memory) or "auto" (flat below
                :data:`IVF_MIN_VIDEOS` videos, ivf from there). A trained first stage stored in the index
                folder for the current rows is loaded; else it is built and stored (docs/search.md).
            nlist, nprobe: IVF lists (default 4 sqrt(N)) and lists visited per query (default 32).
            pq_m, pq_nbits: IVF-PQ sub-quantizers (default D / 16) and bits per code (default 8).
            refine: IVF-PQ re-orders the top ``refine`` x K of its shortlist by the exact cosine with the stored
                mean vectors (default 2; 0: its own approximate order).
            store_first_stage: store a first stage built here in the index folder (when it is writable).
            root: where the indexed folder lives now, if it moved since indexing.
        """
        check_kind(first_stage)
        index_dir = Path(index_dir)
        meta = open_index_meta(index_dir)
        settings = meta["settings"]
        ckpt_arg = model if model is not None else meta["model_path"]
        try:
            ckpt = resolve_checkpoint(ckpt_arg)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; index {index_dir} was built with {meta['model_path']}: pass that "
                                    "checkpoint with --model") from e
        sha = file_sha256(ckpt)
        if sha != settings["model_id"]:
            rebuild = index_command(meta["root"], ckpt, index_dir.with_name(index_dir.name + "-new"),
                                    {k: settings.get(k) for k in ("framerate", "max_frames", "decoder")},
                                    settings.get("dtype", "float32"))
            raise IndexMismatchError(f"index {index_dir} was built with another model ({meta['model_path']}, "
                                     f"sha256 {settings['model_id'][:12]}) than {ckpt} (sha256 {sha[:12]}); "
                                     "search it with the model it was built with, or index again with this one: "
                                     f"`{rebuild}`")
        t0 = time.perf_counter()
        gmodel = load_run_model(ckpt, device=device)
        con = connect_readonly(index_dir)
        try:
            records = [VideoRecord(*r) for r in con.execute(
                "SELECT id, path, size, duration, n_frames, width, height FROM videos ORDER BY id")]
            ids, parts = gather_rows(index_dir, con)
        finally:
            con.close()
        if [r.id for r in records] != ids.tolist():
            raise SearchIndexError(f"index {index_dir} changed while it was being read; open it again")
        missing = [sh for sh, _, _ in parts if sh.gallery is None]
        if missing and fast and supports_gallery(gmodel):
            log.warning("index %s has no stored score bases (format %s); computing them in memory for this "
                        "session. Store them once (no video is decoded again): gare index %s --model %s --out %s",
                        index_dir, meta.get("format"), meta["root"], meta["model_path"], index_dir)
            for sh in missing:
                sh.gallery = gallery_of(gmodel, sh.tensors["frames"].float(), sh.tensors["mask"].bool(),
                                        settings.get("dtype", "float32"))
        eng = cls(index_dir, gmodel, Path(root) if root is not None else Path(meta["root"]), records,
                  IndexRows(parts, len(records)), meta, rerank_k=rerank_k, first_stage=first_stage, nlist=nlist,
                  nprobe=nprobe, fast=fast, pq_m=pq_m, pq_nbits=pq_nbits, refine=refine,
                  store_first_stage=store_first_stage)
        log.info("search index %s: %d videos, first stage %s (%s), rerank K=%d, %s (loaded in %.1f s)", index_dir,
                 len(records), eng.first_stage_kind, eng.first.source, rerank_k,
                 "stored bases" if eng.rows.has_bases else "frames only", time.perf_counter() - t0)
        return eng

    # -- information --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def info(self) -> dict:
        s = self.meta["settings"]
        return {"videos": len(self), "damaged": self.meta.get("n_damaged", 0), "model": self.meta["model_path"],
                "model_sha256": s["model_id"], "framerate": s["framerate"], "max_frames": s["max_frames"],
                "decoder": s["decoder"], "first_stage": self.first_stage_kind, "rerank_k": self.rerank_k,
                "max_k": MAX_K, "max_query_chars": MAX_QUERY_CHARS}

    def video_file(self, vid: int) -> Path | None:
        """The file of an indexed video (None for an unknown id, and for a file whose real path lies outside
        the indexed folder, e.g. a symbolic link changed since indexing, unless it was indexed with
        ``follow_symlinks``)."""
        r = self.by_id.get(int(vid))
        if r is None:
            return None
        path = self.root / r.rel_path
        if not self.follow_symlinks and not path.resolve().is_relative_to(self.real_root):
            log.warning("not serving video %d: %s leads out of the indexed folder %s", r.id, path, self.real_root)
            return None
        return path

    def thumb_file(self, vid: int) -> Path | None:
        if int(vid) not in self.by_id:
            return None
        return self.index_dir / THUMB_DIR / f"{int(vid)}.jpg"

    # -- search -------------------------------------------------------------------------------------
    def encode_query(self, text: str) -> torch.Tensor:
        """``[1, D]`` unnormalized text embedding (call under the lock or single-threaded)."""
        with torch.inference_mode():
            return self.model.encode_text([text]).float()

    def score(self, t: torch.Tensor, pos: np.ndarray) -> np.ndarray:
        """Exact GARE scores ``[len(pos)]`` of the text embedding ``t [1, D]`` against the videos at positions
        ``pos``: from their stored bases (only their rows are read), else from their frames."""
        use_bases = self.fast and self.rows.has_bases
        tensors, g = self.rows.pick(pos, with_gallery=use_bases)
        if use_bases:
            S = self.model.similarity(t, g)
        else:
            S = self.model.similarity(t, tensors["frames"].float(), tensors["mask"].bool(), fast=self.fast)
        return S[0].float().cpu().numpy()

    def score_all(self, t: torch.Tensor) -> np.ndarray:
        """Exact GARE scores ``[N]`` of ``t [1, D]`` against every indexed video, shard by shard (each shard's
        bases scored as one batch of candidates)."""
        out = np.empty(len(self), dtype=np.float32)
        use_bases = self.fast and self.rows.has_bases
        for sh, rows, pos in zip(self.rows.shards, self.rows.rows, self.rows.positions):
            if use_bases:
                S = self.model.similarity(t, sh.gallery)[0]  # [rows in the shard], dead rows included
            else:
                S = self.model.similarity(t, sh.tensors["frames"].float(), sh.tensors["mask"].bool(),
                                          fast=self.fast)[0]
            out[pos.numpy()] = S.float().cpu().numpy()[rows.numpy()]
        return out

    def search(self, query: str, k: int = 10, *, rerank_k: int | None = None, exhaustive: bool = False) -> list[Hit]:
        """Top ``k`` videos for ``query``: FAISS top ``rerank_k`` by cos(t, vbar), reranked by GARE; with
        ``exhaustive`` every video gets its exact GARE score (no first stage). Ties in the GARE score are
        broken by video id."""
        text = validate_query(query)
        k = validate_k(k)
        n = len(self)
        if n == 0:
            return []
        K = min(n, max(k, int(rerank_k or self.rerank_k)))
        with self._lock:
            t = self.encode_query(text)  # [1, D]
            tn = torch.nn.functional.normalize(t, dim=-1).cpu().numpy().astype(np.float32)
            if exhaustive:
                S = self.score_all(t)  # [N]
                cand = np.arange(n)
                fs = None
            else:
                fs, cand = self.first.search(tn, K)  # [K] cosines and positions
                S = self.score(t, cand)  # [K]
        order = np.lexsort((self.ids[cand], -S))[:k]  # by score desc, then id
        if fs is None:  # exhaustive: the first-stage cosine of the hits only
            fs = np.zeros(len(cand), dtype=np.float32)
            fs[order] = normalized(self.rows.mean_at(cand[order])) @ tn[0]
        hits = []
        for rank, j in enumerate(order, start=1):
            r = self.records[int(cand[j])]
            first = float(fs[j])
            hits.append(Hit(rank=rank, id=r.id, path=str(self.root / r.rel_path), rel_path=r.rel_path,
                            score=float(S[j]), first_stage=first, duration=r.duration, width=r.width,
                            height=r.height))
        return hits

    def search_exhaustive(self, query: str, k: int = 10) -> list[Hit]:
        """GARE scores for every indexed video (no first stage)."""
        return self.search(query, k, exhaustive=True)

