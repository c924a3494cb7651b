"""The FAISS first stage of search: which index, built how, stored where.

The first stage ranks every video by cos(t, vbar) (the normalized mean embedding) and hands its top K to the
exact GARE rerank (:mod:`gare.search.search`). Kinds (docs/search.md, docs/scale.md):

- ``flat``: ``IndexFlatIP``, exact; needs no training, so it is built when an engine opens and never stored.
- ``ivf``: ``IndexIVFFlat`` (k-means with ``nlist`` = 4 sqrt(N) lists, ``nprobe`` lists visited per query);
  vectors stored uncompressed (4 D + 8 bytes per video).
- ``ivfpq``: ``IndexIVFPQ``, the same lists with each vector compressed to ``m`` sub-quantizer codes of
  ``nbits`` bits (default m = D / 16 and 8 bits: 32 bytes + an 8-byte id per video at D = 512), for archives
  whose vectors no longer fit in memory. Its scores are approximate, so by default the top ``refine`` x K of
  its shortlist are re-ordered by their exact cosine with the stored mean vectors (read from the memory-mapped
  shards) and the best K kept.
- ``auto``: ``flat`` below :data:`IVF_MIN_VIDEOS` videos, ``ivf`` from there.

The trained kinds (``ivf``, ``ivfpq``) are stored in the index folder, ``first_stage/<kind>-<key>.faiss``
(its settings and what it was built from in ``<kind>-<key>.json`` next to it), written atomically. The key
hashes everything the index depends on: its kind and parameters, the dimension, the index's creation time,
the model, the sha256 of the sorted video ids and of a sample of the normalized mean vectors (a video id is
never reused, and a video's mean vector never changes while its id lives: ``--update`` gives a changed file
a new id). A reader computes the key from the rows it has just read and opens only the file of that key,
so a first stage written by a concurrent ``gare index --update`` can never be used with other rows: it is
stale, and the reader builds the first stage of its own rows in memory (and stores it when it can).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write
from .store import FolderLock, SearchIndexError

log = logging.getLogger(__name__)

FIRST_STAGES = ("auto", "flat", "ivf", "ivfpq")
TRAINED = ("ivf", "ivfpq")
# "auto" switches from the exact flat index to IVF at this collection size. Chosen from the measured curves
# (docs/scale.md, sections 1 and 6): flat costs 15-16 CPU ms per query at 10^5 videos and 150-152 at 10^6, while IVF at
# the default nprobe = 32 kept only 0.65 (clustered) and 0.08 (isotropic generated vectors) of the flat top 1,024
# at 10^5. Below 10^6 the exact first stage is affordable; beyond it, memory and time call for IVF.
IVF_MIN_VIDEOS = 1_000_000
FIRST_STAGE_DIR = "first_stage"
DEFAULT_NPROBE = 32
DEFAULT_REFINE = 2  # ivfpq: exact re-ordering of the top refine x K of its shortlist (1: none)
KEY_VERSION = 1
SAMPLE_ROWS = 256


def check_kind(kind: str) -> str:
    """``kind`` if it names a first stage, else a ValueError naming the choices."""
    if kind not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {', '.join(repr(k) for k in FIRST_STAGES)}, got {kind!r}")
    return kind


def default_nlist(n: int) -> int:
    """4 sqrt(N) inverted lists (at least 1, at most N)."""
    return max(1, min(n, int(round(4 * math.sqrt(n)))))


def default_pq_m(d: int) -> int:
    """Sub-quantizers of IVF-PQ: D / 16 (16 dimensions each: 8 at D = 128, 32 at 512, 64 at 1024), else the
    largest divisor of D not above it."""
    target = max(1, d // 16)
    return max(m for m in range(1, target + 1) if d % m == 0)


@dataclass(frozen=True)
class FirstStageSpec:
    """What a first stage is built with (its stored file's parameters; ``nprobe`` and ``refine`` are chosen
    per engine and are not part of it)."""

    kind: str  # flat | ivf | ivfpq
    dim: int
    nlist: int = 0
    m: int = 0
    nbits: int = 0

    @property
    def trained(self) -> bool:
        return self.kind in TRAINED

    def bytes_per_video(self) -> int:
        """The first stage's own memory per video: the vector or its code, and its 8-byte id."""
        if self.kind == "ivfpq":
            return (self.m * self.nbits + 7) // 8 + 8
        return 4 * self.dim + (8 if self.kind == "ivf" else 0)


def resolve(kind: str, n: int, dim: int, *, nlist: int | None = None, m: int | None = None,
            nbits: int | None = None) -> FirstStageSpec:
    """The concrete first stage ``kind`` means for ``n`` videos of dimension ``dim``."""
    check_kind(kind)
    if kind == "auto":
        kind = "ivf" if n >= IVF_MIN_VIDEOS else "flat"
    if kind in TRAINED and n < 2:
        kind = "flat"
    if kind == "flat":
        return FirstStageSpec("flat", dim)
    nl = default_nlist(n) if nlist is None else max(1, min(int(nlist), n))
    if kind == "ivf":
        return FirstStageSpec("ivf", dim, nl)
    m = default_pq_m(dim) if m is None else int(m)
    if m < 1 or dim % m:
        raise ValueError(f"IVF-PQ sub-quantizers m={m} must divide the dimension {dim}")
    # 2^nbits centroids per sub-quantizer need at least as many training vectors
    nb = min(8, max(1, int(math.log2(n)))) if nbits is None else int(nbits)
    if not 1 <= nb <= 16:
        raise ValueError(f"IVF-PQ nbits must be from 1 to 16, got {nb}")
    return FirstStageSpec("ivfpq", dim, nl, m, nb)


# ------------------------------------------------------------------------------------------ building
def build(xb: np.ndarray, spec: FirstStageSpec, ids: np.ndarray):
    """The FAISS index of ``spec`` over the normalized vectors ``xb [N, D]`` float32. The trained kinds are
    labelled with the video ``ids``; flat with positions 0..N-1."""
    import faiss  # lazy on purpose: FAISS loads (and probes CPU features) only when a first stage is built

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(spec.dim)
        if len(xb):
            index.add(xb)
        return index
    quantizer = faiss.IndexFlatIP(spec.dim)
    if spec.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, spec.dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, spec.dim, spec.nlist, spec.m, spec.nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(xb)
    index.add_with_ids(xb, np.ascontiguousarray(ids, dtype=np.int64))
    return index


class FirstStage:
    """A built or loaded first stage: ``search(q, K)`` -> (cosines, positions) of the best K videos."""

    def __init__(self, spec: FirstStageSpec, index, ids: np.ndarray, *, nprobe: int | None = None,
                 refine: int | None = None, exact: Callable[[np.ndarray], np.ndarray] | None = None,
                 source: str = "built"):
        self.spec = spec
        self.index = index
        self.ids = ids
        self.source = source  # "built", "stored <file>"
        self.nprobe = 0
        if spec.trained:
            self.nprobe = max(1, min(spec.nlist, int(nprobe) if nprobe else DEFAULT_NPROBE))
            index.nprobe = self.nprobe
        self.refine = 0
        self.exact = None
        if spec.kind == "ivfpq":
            self.refine = DEFAULT_REFINE if refine is None else int(refine)
            self.exact = exact if self.refine >= 1 else None

    @property
    def label(self) -> str:
        s = self.spec
        if s.kind == "flat":
            return "flat"
        if s.kind == "ivf":
            return f"ivf(nlist={s.nlist}, nprobe={self.nprobe})"
        return (f"ivfpq(nlist={s.nlist}, m={s.m}, nbits={s.nbits}, nprobe={self.nprobe}, "
                f"refine={self.refine if self.exact is not None else 0})")

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of the normalized query ``q [1, D]``: cosines (exact, also for ivfpq when it
        re-orders) and positions in id order, best first."""
        n = self.index.ntotal
        kk = min(n, k * self.refine) if self.exact is not None else min(n, k)
        if kk <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, labels = self.index.search(np.ascontiguousarray(q, dtype=np.float32), kk)
        keep = labels[0] >= 0
        scores, labels = scores[0][keep], labels[0][keep]
        pos = np.searchsorted(self.ids, labels) if self.spec.trained else labels
        if self.exact is not None and len(pos):
            scores = (self.exact(pos) @ q[0]).astype(np.float32)
            order = np.argsort(-scores, kind="stable")[:k]
            scores, pos = scores[order], pos[order]
        return scores, pos.astype(np.int64)


# -------------------------------------------------------------------------------------------- storing
def rows_key(ids: np.ndarray, sample: np.ndarray, created: str | None, model_id: str | None) -> dict:
    """What a first stage was built from: the ids, a sample of the stored mean vectors (``sample`` [S, D]
    float32 at :func:`sample_positions`), the index's creation time and model."""
    return {"n": int(len(ids)),
            "ids_sha256": hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest(),
            "sample_sha256": hashlib.sha256(np.ascontiguousarray(sample, dtype="<f4").tobytes()).hexdigest(),
            "index_created": created, "model_id": model_id}


def sample_positions(n: int) -> np.ndarray:
    """The positions whose stored mean vectors enter the key: up to :data:`SAMPLE_ROWS`, evenly spaced."""
    return np.unique(np.linspace(0, n - 1, min(n, SAMPLE_ROWS)).astype(np.int64)) if n else np.zeros(0, np.int64)


def full_key(spec: FirstStageSpec, rows: dict) -> dict:
    return {"version": KEY_VERSION, **asdict(spec), **rows}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def stored_path(index_dir: Path, key: dict) -> Path:
    return Path(index_dir) / FIRST_STAGE_DIR / f"{key['kind']}-{key_digest(key)}.faiss"


def why_stale(index_dir: Path, key: dict) -> str:
    """Why no stored first stage matches ``key``: none stored, or what differs in the stored one(s)."""
    folder = Path(index_dir) / FIRST_STAGE_DIR
    others = sorted(folder.glob(f"{key['kind']}-*.json")) if folder.is_dir() else []
    for p in others:
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not p.with_suffix(".faiss").is_file():
            continue
        if old.get("n") != key["n"] or old.get("ids_sha256") != key["ids_sha256"]:
            return (f"the stored {p.with_suffix('.faiss').name} is stale: it was built for {old.get('n')} videos "
                    f"and other ids; the index has {key['n']} now (rows added or removed since, e.g. by "
                    "`gare index --update`)")
        diff = [f"{f} {old.get(f)} -> {key[f]}" for f in ("nlist", "m", "nbits", "dim", "version")
                if old.get(f) != key.get(f)]
        if diff:
            return f"the stored {p.with_suffix('.faiss').name} has other parameters ({', '.join(diff)})"
        return f"the stored {p.with_suffix('.faiss').name} was built from other vectors or another index"
    return f"none stored in {folder}"


def load_stored(index_dir: Path, key: dict, mmap: bool = True):
    """The stored FAISS index of exactly ``key``, or ``(None, reason)``."""
    import faiss  # lazy on purpose: see build()

    path = stored_path(index_dir, key)
    if not path.is_file():
        return None, why_stale(index_dir, key)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except (RuntimeError, OSError) as e:  # removed by a concurrent writer, or damaged
        return None, f"cannot read {path} ({str(e).strip().splitlines()[-1] if str(e).strip() else e})"
    if index.ntotal != key["n"] or index.d != key["dim"]:
        return None, f"{path} holds {index.ntotal} vectors of dimension {index.d}, expected {key['n']} x {key['dim']}"
    return index, f"loaded {path.name}"


def store(index_dir: Path, key: dict, index, built_s: float, *, locked: bool = False,
          extra: dict | None = None) -> Path:
    """Write ``index`` as the first stage of ``key`` (atomically: its JSON, then the FAISS file) and delete
    the stored first stages that were built from other rows. ``locked``: the caller holds the folder lock
    (``gare index``); else it is taken here, and :class:`SearchIndexError` is raised when a ``gare index``
    run holds it. ``extra``: more fields for the JSON (``trained_n``: the rows its lists were trained on)."""
    import faiss  # lazy on purpose: see build()

    index_dir = Path(index_dir)
    path = stored_path(index_dir, key)

    def write() -> None:
        info = {**key, "trained_n": key["n"], **(extra or {}), "file": path.name, "built_s": round(built_s, 3),
                "faiss": faiss.__version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(path.with_suffix(".json"), json.dumps(info, indent=1))
        atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))
        prune(index_dir, key)

    if locked:
        write()
    else:
        with FolderLock(index_dir):
            write()
    return path


def prune(index_dir: Path, key: dict) -> list[Path]:
    """Delete the stored first stages that are of no use next to ``key``'s: older files of its kind, files of
    another index or model, and files of other kinds that can neither be loaded for these rows nor brought up
    to date to them (trained on less than half or more than twice as many rows). Returns what was deleted."""
    folder = Path(index_dir) / FIRST_STAGE_DIR
    if not folder.is_dir():
        return []
    keep = stored_path(index_dir, key).name
    gone = []
    for p in sorted(folder.glob("*.faiss")) + sorted(folder.glob("*.json")):
        faiss_name = p.with_suffix(".faiss").name
        if faiss_name == keep:
            continue
        try:
            old = json.loads(p.with_suffix(".json").read_text())
            same_index = all(old.get(f) == key[f] for f in ("index_created", "model_id", "dim", "version"))
            useful = same_index and (old.get("ids_sha256") == key["ids_sha256"] or (
                key["n"] and 0.5 <= key["n"] / max(1, int(old.get("trained_n", old.get("n", 0)))) <= 2))
        except (OSError, ValueError, TypeError):
            useful = False
        if not useful or faiss_name.startswith(f"{key['kind']}-"):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` divided by their norm, float32 (``torch.nn.functional.normalize``, as SearchEngine.vbar)."""
    return np.ascontiguousarray(torch.nn.functional.normalize(torch.from_numpy(np.asarray(x, np.float32)), dim=-1)
                                .numpy(), dtype=np.float32)


def stored_ids(index) -> np.ndarray:
    """The labels (video ids) held by an IVF index, sorted."""
    import faiss  # lazy on purpose: see build()

    inv = index.invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(j), inv.list_size(j)).copy() for j in range(index.nlist)
             if inv.list_size(j)]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def updatable(index_dir: Path, key: dict, auto_nlist: bool) -> list[dict]:
    """Stored first stages of ``key``'s kind that can be brought up to ``key``'s rows without training: same
    index, model and parameters (any nlist when ``auto_nlist``), trained on between half and twice as many
    rows as the index has now (beyond, the lists no longer fit the collection: train again). Newest first."""
    folder = Path(index_dir) / FIRST_STAGE_DIR
    out = []
    for p in sorted(folder.glob(f"{key['kind']}-*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        same = all(info.get(f) == key[f] for f in ("version", "kind", "dim", "m", "nbits", "index_created",
                                                   "model_id"))
        if not same or not (auto_nlist or info.get("nlist") == key["nlist"]) or not p.with_suffix(".faiss").is_file():
            continue
        if key["n"] and 0.5 <= key["n"] / max(1, int(info.get("trained_n", info.get("n", 0)))) <= 2:
            out.append(info)
    return sorted(out, key=lambda d: d.get("written", ""), reverse=True)


def obtain(index_dir: Path, spec: FirstStageSpec, ids: np.ndarray, *, means_at: Callable[[np.ndarray], np.ndarray],
           vectors: Callable[[], np.ndarray], created: str | None, model_id: str | None, auto_nlist: bool = True,
           write: bool = True, locked: bool = False):
    """The trained first stage of ``spec`` over the rows ``ids``: ``(index, spec, source)``.

    In order: the stored file of exactly these rows (memory-mapped; with ``auto_nlist`` also one of these rows
    with another nlist, e.g. kept by an update); else a stored one of earlier rows of the same index brought up
    to date (the videos removed since are deleted from it and the new ones added: no training), else trained
    here. What was not loaded is stored (``write``) when the folder is writable and no ``gare index`` run holds
    its lock (``locked``: the caller holds it)."""
    import faiss  # lazy on purpose: see build()

    rows = rows_key(ids, means_at(sample_positions(len(ids))), created, model_id)
    key = full_key(spec, rows)
    tries = [key] + [full_key(replace(spec, nlist=int(info["nlist"])), rows)
                     for info in (updatable(index_dir, key, auto_nlist) if auto_nlist else [])]
    why = None
    for k in tries:
        if stored_path(index_dir, k).is_file():
            index, reason = load_stored(index_dir, k)
            if index is not None:
                return index, replace(spec, nlist=k["nlist"]), f"stored {stored_path(index_dir, k).name}"
            why = why or reason  # a damaged or vanished file: say so
    why = why or why_stale(index_dir, key)
    t0 = time.perf_counter()
    index, extra = None, {}
    for info in updatable(index_dir, key, auto_nlist):
        try:
            index = faiss.read_index(str(Path(index_dir) / FIRST_STAGE_DIR / info["file"]))  # in memory: edited
        except (RuntimeError, OSError):
            continue
        old = stored_ids(index)
        gone, new = np.setdiff1d(old, ids), np.setdiff1d(ids, old)
        if len(gone):
            index.remove_ids(np.ascontiguousarray(gone, dtype=np.int64))
        if len(new):
            index.add_with_ids(normalized(means_at(np.searchsorted(ids, new))), np.ascontiguousarray(new, np.int64))
        spec = replace(spec, nlist=int(info["nlist"]))
        key = full_key(spec, rows)
        extra = {"trained_n": int(info.get("trained_n", info["n"])), "updated_from": info["file"],
                 "removed": int(len(gone)), "added": int(len(new))}
        log.info("first stage %s of %s: %s; updated %s in place of training (%d removed, %d added)", spec.kind,
                 index_dir, why, info["file"], len(gone), len(new))
        source = f"updated {info['file']}"
        break
    if index is None:
        log.info("first stage %s of %s: %s; training it on %d videos", spec.kind, index_dir, why, len(ids))
        index = build(vectors(), spec, ids)
        source = "built"
    built_s = time.perf_counter() - t0
    log.info("first stage %s ready in %.1f s", spec.kind, built_s)
    if write:
        try:
            path = store(index_dir, key, index, built_s, locked=locked, extra=extra)
            log.info("first stage stored as %s (the next open loads it)", path)
        except SearchIndexError as e:  # a `gare index` run is writing the folder: it stores its own
            log.info("first stage not stored (%s)", e)
        except OSError as e:
            log.warning("index folder %s is not writable (%s): the %s first stage (%d videos) was built in "
                        "memory in %.1f s and is built again at every open; store it once with write access "
                        "(open the index with `gare search` as a user who can write it, or run `gare index`)",
                        index_dir, e.strerror or e, spec.kind, len(ids), built_s)
    return index, spec, source


def open_first_stage(index_dir: Path, spec: FirstStageSpec, ids: np.ndarray, *,
                     means_at: Callable[[np.ndarray], np.ndarray], vectors: Callable[[], np.ndarray],
                     created: str | None, model_id: str | None, nprobe: int | None = None,
                     refine: int | None = None, auto_nlist: bool = True, write: bool = True) -> FirstStage:
    """The first stage of ``spec`` over the index's rows (``ids`` in id order; ``means_at(pos)`` gives the
    stored mean vectors at positions, ``vectors()`` all of them normalized): flat is built; a trained kind
    comes from :func:`obtain` (stored, updated or trained, and the log says why)."""
    exact = (lambda pos: normalized(means_at(pos))) if spec.kind == "ivfpq" else None
    if not spec.trained:
        return FirstStage(spec, build(vectors(), spec, ids), ids, nprobe=nprobe, refine=refine, exact=exact)
    index, spec, source = obtain(index_dir, spec, ids, means_at=means_at, vectors=vectors, created=created,
                                 model_id=model_id, auto_nlist=auto_nlist, write=write)
    return FirstStage(spec, index, ids, nprobe=nprobe, refine=refine, exact=exact, source=source)
