"""The on-disk index: SQLite metadata, safetensors shards of embeddings, the folder lock.

An index is a folder::

    index.sqlite     metadata: one row per video (path relative to the indexed folder, size, modification
                     time, duration, frame count, where its embeddings live), the damaged files with their
                     reasons, and the settings the index was built with (model hash, sampling settings)
    shards/<name>.safetensors
                     per video: ``ids`` int64 [n], ``mask`` bool [n, F], ``mean`` float32 [n, D] (vbar, the
                     first-stage embedding) and, only when there is no bases file, ``frames`` [n, F, D]
                     (temporal-module outputs, float32 by default, float16 on request)
    bases/<name>.safetensors
                     the same videos' exact-score bases (``model.gallery(frames, mask)``, a
                     :class:`~gare.model.gallery.VideoGallery` as its tensor dict, plus ``ids``): the frames
                     themselves (``tx``, with vbar), keys, values and Gram matrices, so a query pays only its
                     own products per candidate. Memory-mapped by search. Indexes of format v1 have no bases:
                     ``gare index`` adds them in place, search computes them in memory until then.
    thumbs/<id>.jpg  a strip of a few frames per video
    staging/         only while a build runs (or after one was killed): each process of the build writes its
                     encoded videos to ``staging/rank-<r>.sqlite`` (same columns as ``videos``, keyed by a
                     staging id), ``staging/shards/`` and ``staging/thumbs/``; :func:`merge_staged` then moves
                     them into the index in path order, so the ids do not depend on who encoded what

This module reads and writes that layout; :mod:`gare.search.index` decides what goes into it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..io import atomic_write
from ..model.checkpoint import run_config
from ..model.gallery import VideoGallery

log = logging.getLogger(__name__)

INDEX_FORMAT = "gare-video-index-v2"
OLD_FORMATS = ("gare-video-index-v1",)  # readable; `gare index` upgrades them in place (adds bases/)
DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
BASES_DIR = "bases"
THUMB_DIR = "thumbs"
STAGING_DIR = "staging"
MERGED_ROWS_PER_SHARD = 4096
DTYPES = {"float16": torch.float16, "float32": torch.float32}

# one video row (the index's `videos` and a build's `staged` table) and one damaged file
_VIDEO_COLUMNS = ("size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, duration REAL, n_frames INTEGER NOT NULL, "
                  "width INTEGER, height INTEGER, shard TEXT NOT NULL, row INTEGER NOT NULL, added REAL NOT NULL")
_DAMAGED_COLUMNS = "size INTEGER, mtime_ns INTEGER, kind TEXT NOT NULL, reason TEXT NOT NULL, seen REAL NOT NULL"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, {_VIDEO_COLUMNS});
CREATE TABLE IF NOT EXISTS damaged (path TEXT PRIMARY KEY, {_DAMAGED_COLUMNS});
"""
STAGING_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS staged (sid INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, {_VIDEO_COLUMNS});
CREATE TABLE IF NOT EXISTS staged_damaged (path TEXT NOT NULL, {_DAMAGED_COLUMNS});
"""


class SearchIndexError(ValueError):
    """A folder that is not a usable index (missing, another format, damaged metadata)."""


class IndexMismatchError(SearchIndexError):
    """The index was built with another model or other sampling settings than the ones asked for."""


@dataclass(frozen=True)
class IndexSettings:
    """Everything that decides the stored embeddings; an index accepts only its own settings."""

    model_id: str  # sha256 of the checkpoint file
    embed_dim: int
    image_size: int
    framerate: float
    max_frames: int
    decoder: str
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict) -> IndexSettings:
        """Settings as stored in the metadata (indexes written before the rename call the decoder 'backend')."""
        d = dict(d)
        if "backend" in d:
            d.setdefault("decoder", d.pop("backend"))
        return cls(**d)

    def differences(self, other: IndexSettings) -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: index has {a[k]!r}, asked for {b[k]!r}" for k in a if a[k] != b[k]]


def index_command(root: str | os.PathLike, ckpt: str | os.PathLike, out: str | os.PathLike,
                  samp: dict | None = None, dtype: str = "float32") -> str:
    """The ``gare index`` command that builds an index of ``root`` with ``ckpt`` and these settings."""
    parts = ["gare", "index", str(root), "--model", str(ckpt), "--out", str(out)]
    for k, flag in (("framerate", "--framerate"), ("max_frames", "--max-frames"), ("decoder", "--decoder")):
        if samp and samp.get(k) is not None:
            parts += [flag, f"{samp[k]:g}" if k == "framerate" else str(samp[k])]
    if dtype != "float32":
        parts += ["--dtype", dtype]
    return " ".join(shlex.quote(x) for x in parts)


# ------------------------------------------------------------------------------------ model identity
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def checkpoint_sampling(path: Path) -> dict:
    """Sampling settings the checkpoint was trained with (from its run config), where it records them."""
    try:
        data = (run_config(path) or {}).get("data", {})
    except Exception as e:  # noqa: BLE001 - metadata is optional; defaults apply
        log.debug("no run config in %s: %s", path, e)
        return {}
    out = {}
    if "framerate" in data:
        out["framerate"] = float(data["framerate"])
    if "max_frames" in data:
        out["max_frames"] = int(data["max_frames"])
    if "decoder" in data:
        out["decoder"] = str(data["decoder"])
    return out


# ------------------------------------------------------------------------------------------ metadata
def connect(db: Path) -> sqlite3.Connection:
    """A read-write connection to ``db``, creating the tables if needed."""
    con = sqlite3.connect(str(db), timeout=30)
    con.executescript(SCHEMA)
    return con


def connect_readonly(index_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(index_dir) / DB_NAME}?mode=ro", uri=True, timeout=30)


def read_meta(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


def open_index_meta(index_dir: str | os.PathLike) -> dict:
    """An index's metadata: ``format``, ``root``, ``model_path``, ``settings`` (dict), ``created``,
    ``n_videos``, ``n_damaged``. Raises :class:`SearchIndexError` for a folder that is not an index."""
    d = Path(index_dir)
    db = d / DB_NAME
    if not db.is_file():
        raise SearchIndexError(f"{d} is not a gare index (no {DB_NAME}); build one with "
                               f"`gare index VIDEO_DIR --model CHECKPOINT --out {d}`")
    con = connect_readonly(d)
    try:
        meta = read_meta(con)
        if meta.get("format") not in (INDEX_FORMAT, *OLD_FORMATS):
            rebuild = index_command(meta.get("root", "VIDEO_DIR"), meta.get("model_path", "CHECKPOINT"),
                                    d.with_name(d.name + "-new"))
            raise SearchIndexError(f"{db}: unknown index format {meta.get('format')!r} (expected {INDEX_FORMAT}); "
                                   f"it was written by another version of gare; build it again: `{rebuild}`")
        out = dict(meta)
        out["settings"] = asdict(IndexSettings.from_dict(json.loads(meta["settings"])))
        out["n_videos"] = con.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        out["n_damaged"] = con.execute("SELECT COUNT(*) FROM damaged").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise SearchIndexError(f"{db}: cannot read the index metadata ({e})") from e
    finally:
        con.close()
    return out


class FolderLock:
    """An exclusive lock on the index folder so two ``gare index`` runs cannot interleave."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.fh.close()
            raise SearchIndexError(f"{self.path.parent} is being written by another `gare index` run") from e
        return self

    def __exit__(self, *exc):
        self.fh.close()


# ---------------------------------------------------------------------------------------- embeddings
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


def mmap_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, memory-mapped (copy-on-write: pages are read from the file on
    first use and shared with the page cache; nothing is read up front)."""
    path = Path(path)
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    if not header:
        return {}
    raw = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=8 + n))
    out = {}
    for name, info in header.items():
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise SearchIndexError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        out[name] = raw[a:b].view(dtype).reshape(info["shape"])
    return out


@dataclass
class Shard:
    """One shard's per-video tensors (``ids``, ``frames``, ``mask``, ``mean``) and bases (or None)."""

    tensors: dict[str, torch.Tensor]
    gallery: VideoGallery | None


def read_shard(root: Path, name: str, mmap: bool = True) -> Shard:
    """Shard ``name`` of the index (or staging) folder ``root``; ``frames`` come from the bases when the
    shard file does not hold them. Raises :class:`SearchIndexError` when a file is missing or they disagree."""
    path = root / SHARD_DIR / name
    if not path.is_file():
        raise SearchIndexError(f"index {root}: shard {path} is missing; build the index again")
    read = mmap_safetensors if mmap else load_file
    t = dict(read(path))
    g = None
    bases = root / BASES_DIR / name
    if bases.is_file():
        sd = dict(read(bases))
        ids = sd.pop("ids")
        if not torch.equal(ids, t["ids"]):
            raise SearchIndexError(f"index {root}: {bases} does not match its shard; run `gare index` again")
        g = VideoGallery.from_state_dict(sd)
        t.setdefault("frames", g.frames_and_mask()[0])
    elif "frames" not in t:
        raise SearchIndexError(f"index {root}: {bases} is missing; build the index again")
    return Shard(t, g)


def load_embeddings(index_dir: str | os.PathLike, con: sqlite3.Connection | None = None):
    """All stored embeddings, ordered by video id.

    Returns ``ids`` int64 np [N], ``frames`` [N, F, D] (stored dtype), ``mask`` bool [N, F] and
    ``mean`` float32 [N, D] (torch tensors, in memory).
    """
    ids, parts = gather_rows(index_dir, con)
    if not parts:
        return ids, torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0)
    _, t, _ = gather(parts, with_gallery=False)
    return ids, t["frames"], t["mask"].bool(), t["mean"].float()


def gather_rows(index_dir: str | os.PathLike, con: sqlite3.Connection | None = None,
                mmap: bool = True) -> tuple[np.ndarray, list[tuple[Shard, torch.Tensor, torch.Tensor]]]:
    """The videos of the index in id order: ``ids`` and, per shard, ``(shard, rows in it, positions)``."""
    index_dir = Path(index_dir)
    own = con is None
    con = con or connect_readonly(index_dir)
    try:
        rows = con.execute("SELECT id, shard, row FROM videos ORDER BY id").fetchall()
    finally:
        if own:
            con.close()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for pos, (_vid, shard, row) in enumerate(rows):
        by_shard.setdefault(shard, []).append((pos, row))
    parts = []
    for name, entries in by_shard.items():
        sh = read_shard(index_dir, name, mmap=mmap)
        pos = torch.tensor([p for p, _ in entries], dtype=torch.long)
        rws = torch.tensor([r for _, r in entries], dtype=torch.long)
        if not torch.equal(sh.tensors["ids"][rws], torch.from_numpy(ids[pos.numpy()])):
            raise SearchIndexError(f"index {index_dir}: shard {name} does not match the metadata")
        parts.append((sh, rws, pos))
    return ids, parts


def gather(parts: list[tuple[Shard, torch.Tensor, torch.Tensor]], with_gallery: bool = True,
           keys: tuple[str, ...] = ("ids", "frames", "mask", "mean")):
    """Rows picked from several shards (``(shard, rows, positions 0..n-1)``), put in the order of their
    positions: ``(n, {key: tensor}, gallery)`` (gallery None when a shard has none or ``with_gallery`` is
    False). Only the picked rows are read from the memory-mapped files."""
    n = sum(len(p) for _, _, p in parts)
    pos = torch.cat([p for _, _, p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    order = torch.empty_like(pos)
    order[pos] = torch.arange(n)  # where each output row sits among the concatenated picks
    if not parts:
        return 0, {}, None
    t = {k: torch.cat([sh.tensors[k][r] for sh, r, _ in parts])[order] for k in keys}
    g = None
    if with_gallery and all(sh.gallery is not None for sh, _, _ in parts):
        g = VideoGallery.cat([sh.gallery[r] for sh, r, _ in parts])[order]
    return n, t, g


def write_shard(root: Path, tensors: dict[str, torch.Tensor], gallery: VideoGallery | None = None) -> str:
    """Write one shard (and its bases, when given) atomically under a fresh unique name; returns the name.
    With bases, the frames live only in them (their ``tx``), not in the shard file."""
    name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.safetensors"
    data = {k: v.contiguous() for k, v in tensors.items() if not (gallery is not None and k == "frames")}
    if gallery is not None:
        sd = gallery.to("cpu").state_dict()
        sd["ids"] = data["ids"]
        (root / BASES_DIR).mkdir(exist_ok=True)
        atomic_write(root / BASES_DIR / name, lambda tmp: save_file(sd, str(tmp)))
    atomic_write(root / SHARD_DIR / name, lambda tmp: save_file(data, str(tmp)))
    return name


def write_thumb(folder: Path, vid: int | str, data: bytes) -> None:
    """``thumbs/<vid>.jpg``, written atomically."""
    atomic_write(folder / f"{vid}.jpg", data)


def cleanup(con: sqlite3.Connection, out: Path) -> None:
    """Delete shard, bases and thumbnail files no row refers to (left by an interrupted run or by removals)."""
    shards = {r[0] for r in con.execute("SELECT DISTINCT shard FROM videos")}
    for folder in (out / SHARD_DIR, out / BASES_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name not in shards:
                    p.unlink(missing_ok=True)
    ids = {r[0] for r in con.execute("SELECT id FROM videos")}
    for p in (out / THUMB_DIR).iterdir():
        stem = p.name.split(".", 1)[0]
        if not (stem.isdigit() and int(stem) in ids and p.suffix == ".jpg"):
            p.unlink(missing_ok=True)


def compact(con: sqlite3.Connection, out: Path, rows_per_shard: int = MERGED_ROWS_PER_SHARD) -> None:
    """Rewrite the live rows into few full shards when removals left many dead rows or many small shards."""
    live = con.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
    shards = [r[0] for r in con.execute("SELECT DISTINCT shard FROM videos")]
    stored = 0
    for s in shards:
        with safe_open(str(out / SHARD_DIR / s), framework="pt") as fh:
            stored += fh.get_slice("ids").get_shape()[0]
    if not shards or (stored <= 1.25 * live and len(shards) <= max(8, 2 * (live // rows_per_shard + 1))):
        return
    log.info("compacting index: %d live rows in %d shards holding %d rows", live, len(shards), stored)
    ids, parts = gather_rows(out, con)
    updates = []
    for s in range(0, len(ids), rows_per_shard):
        chunk = [(sh, r[(p >= s) & (p < s + rows_per_shard)], p[(p >= s) & (p < s + rows_per_shard)] - s)
                 for sh, r, p in parts]
        _, t, g = gather([c for c in chunk if len(c[2])])
        name = write_shard(out, t, g)
        updates += [(name, r, int(i)) for r, i in enumerate(t["ids"])]
    with con:
        con.executemany("UPDATE videos SET shard = ?, row = ? WHERE id = ?", updates)
    cleanup(con, out)


def add_bases(con: sqlite3.Connection, out: Path, build: Callable[[torch.Tensor, torch.Tensor], VideoGallery]) -> int:
    """Upgrade in place: write the bases of every shard that has none (``build(frames, mask)`` computes them).
    Returns how many shards were upgraded."""
    names = [r[0] for r in con.execute("SELECT DISTINCT shard FROM videos")]
    done = 0
    for name in names:
        if (out / BASES_DIR / name).is_file():
            continue
        t = load_file(str(out / SHARD_DIR / name))
        g = build(t["frames"], t["mask"].bool())
        sd = g.to("cpu").state_dict()
        sd["ids"] = t["ids"]
        (out / BASES_DIR).mkdir(exist_ok=True)
        atomic_write(out / BASES_DIR / name, lambda tmp, sd=sd: save_file(sd, str(tmp)))
        done += 1
    return done


# ------------------------------------------------------------------------------------------- staging
@dataclass
class Encoded:
    """One encoded video, ready to be staged."""

    rel: str
    size: int
    mtime_ns: int
    duration: float | None
    width: int | None
    height: int | None
    thumb: bytes
    frames: torch.Tensor  # [F, D] float32 (cast to the storage dtype when written)
    mask: torch.Tensor  # bool [F]
    mean: torch.Tensor  # float32 [D]


@dataclass
class Damaged:
    rel: str
    size: int
    mtime_ns: int
    kind: str
    reason: str


class StagingWriter:
    """What one process of a build encoded: ``staging/rank-<rank>.sqlite`` plus its shards and thumbnails.
    Only this process writes these files, so several processes (or machines sharing the folder) stage at once."""

    def __init__(self, out: Path, rank: int):
        self.dir = Path(out) / STAGING_DIR
        (self.dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (self.dir / THUMB_DIR).mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.con = sqlite3.connect(str(self.dir / f"rank-{rank}.sqlite"), timeout=30)
        self.con.executescript(STAGING_SCHEMA)

    def write(self, done: list[Encoded], bad: list[Damaged], gallery: VideoGallery | None, dtype: torch.dtype) -> None:
        """Stage one flush (``gallery``: the bases of ``done``, in order): shard, bases and thumbnails first,
        then the rows that refer to them (one transaction)."""
        now = time.time()
        with self.con:
            if done:
                sids = []
                for row, e in enumerate(done):
                    cur = self.con.execute(
                        "INSERT INTO staged(path, size, mtime_ns, duration, n_frames, width, height, shard, row, "
                        "added) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
                        (e.rel, e.size, e.mtime_ns, e.duration, int(e.mask.sum()), e.width, e.height, row, now))
                    sids.append(cur.lastrowid)
                for sid, e in zip(sids, done):
                    write_thumb(self.dir / THUMB_DIR, f"r{self.rank}-{sid}", e.thumb)
                name = write_shard(self.dir, {
                    "ids": torch.tensor(sids, dtype=torch.int64),  # staging ids of this rank
                    "frames": torch.stack([e.frames for e in done]).to(dtype),
                    "mask": torch.stack([e.mask for e in done]),
                    "mean": torch.stack([e.mean for e in done]),
                }, gallery)
                self.con.execute("UPDATE staged SET shard = ? WHERE shard = ''", (name,))
            self.con.executemany(
                "INSERT INTO staged_damaged(path, size, mtime_ns, kind, reason, seen) VALUES (?, ?, ?, ?, ?, ?)",
                [(d.rel, d.size, d.mtime_ns, d.kind, d.reason, now) for d in bad])

    def close(self) -> None:
        self.con.close()


@dataclass
class StagedRow:
    rank: int  # the process that staged it (its database is staging/rank-<rank>.sqlite)
    sid: int
    path: str
    size: int
    mtime_ns: int
    duration: float | None
    n_frames: int
    width: int | None
    height: int | None
    shard: str
    row: int
    added: float


def _link_thumb(src: Path, dst: Path) -> None:
    """``dst`` becomes the staged thumbnail ``src`` (already durable): a hard link, no copy and no fsync per
    video; a copy where the file system has no hard links. The staged file stays until the merge commits."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        atomic_write(dst, src.read_bytes())


def read_staged(out: Path) -> tuple[list[StagedRow], list[tuple]]:
    """Every staged video (``StagedRow``) and damaged file ``(path, size, mtime_ns, kind, reason, seen)``
    left in ``staging/`` by this build or by an interrupted one."""
    folder = Path(out) / STAGING_DIR
    rows: list[StagedRow] = []
    damaged: list[tuple] = []
    for db in sorted(folder.glob("rank-*.sqlite")):
        con = sqlite3.connect(str(db), timeout=30)
        try:
            con.executescript(STAGING_SCHEMA)
            rank = int(db.stem.split("-", 1)[1])
            rows += [StagedRow(rank, *r) for r in con.execute(
                "SELECT sid, path, size, mtime_ns, duration, n_frames, width, height, shard, row, added FROM staged "
                "WHERE shard != ''")]
            damaged += con.execute("SELECT path, size, mtime_ns, kind, reason, seen FROM staged_damaged").fetchall()
        finally:
            con.close()
    return rows, damaged


def merge_staged(con: sqlite3.Connection, out: Path, keep: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Move the staged videos and damaged files into the index, then delete ``staging/``.

    Only staged entries of files in ``keep`` (path -> (size, mtime_ns) on disk now) with the same size and
    modification time are kept (the newest when a file was staged twice), and none already in the index.
    Videos get their ids in path order, so the ids never depend on how the work was split between processes
    or runs. Returns (videos added, damaged files recorded).
    """
    out = Path(out)
    folder = out / STAGING_DIR
    if not folder.is_dir():
        return 0, 0
    rows, damaged = read_staged(out)
    indexed = {r[0] for r in con.execute("SELECT path FROM videos")}
    newest: dict[str, StagedRow] = {}
    for r in rows:
        if keep.get(r.path) == (r.size, r.mtime_ns) and r.path not in indexed:
            if r.path not in newest or r.added > newest[r.path].added:
                newest[r.path] = r
    chosen = [newest[p] for p in sorted(newest)]
    bad: dict[str, tuple] = {}
    for d in damaged:
        if keep.get(d[0]) == (d[1], d[2]) and d[0] not in indexed and d[0] not in newest:
            if d[0] not in bad or d[5] > bad[d[0]][5]:
                bad[d[0]] = d
    with con:
        for s in range(0, len(chosen), MERGED_ROWS_PER_SHARD):
            part = chosen[s:s + MERGED_ROWS_PER_SHARD]
            ids = []
            for j, r in enumerate(part):
                cur = con.execute(
                    "INSERT INTO videos(path, size, mtime_ns, duration, n_frames, width, height, shard, row, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
                    (r.path, r.size, r.mtime_ns, r.duration, r.n_frames, r.width, r.height, j, r.added))
                ids.append(cur.lastrowid)
                thumb = folder / THUMB_DIR / f"r{r.rank}-{r.sid}.jpg"
                if thumb.is_file():
                    _link_thumb(thumb, out / THUMB_DIR / f"{ids[-1]}.jpg")
            picks: dict[str, list[tuple[int, int]]] = {}  # staged shard -> (row in it, position in this part)
            for j, r in enumerate(part):
                picks.setdefault(r.shard, []).append((r.row, j))
            parts = []
            for name, rp in picks.items():
                sh = read_shard(folder, name)
                rows = torch.tensor([x for x, _ in rp], dtype=torch.long)
                sids = torch.tensor([part[j].sid for _, j in rp], dtype=torch.long)
                if not torch.equal(sh.tensors["ids"][rows], sids):
                    raise SearchIndexError(f"index {out}: staged shard {name} does not match its staging database; "
                                           f"delete {folder} and run the same command again")
                parts.append((sh, rows, torch.tensor([j for _, j in rp], dtype=torch.long)))
            _, t, g = gather(parts)
            t["ids"] = torch.tensor(ids, dtype=torch.int64)
            name = write_shard(out, t, g)
            con.execute("UPDATE videos SET shard = ? WHERE shard = ''", (name,))
        con.executemany("INSERT OR REPLACE INTO damaged(path, size, mtime_ns, kind, reason, seen) "
                        "VALUES (?, ?, ?, ?, ?, ?)", list(bad.values()))
    shutil.rmtree(folder, ignore_errors=True)
    return len(chosen), len(bad)
