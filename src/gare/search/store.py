"""The on-disk index: SQLite metadata, safetensors shards of embeddings, the folder lock.

An index is a folder::

    index.sqlite     metadata: one row per video (path relative to the indexed folder, size, modification
                     time, duration, frame count, where its embeddings live), the damaged files with their
                     reasons, and the settings the index was built with (model hash, sampling settings)
    shards/*.safetensors
                     embeddings, a few hundred videos per file: ``ids`` int64 [n], ``frames`` [n, F, D]
                     (temporal-module outputs, float32 by default, float16 on request: what the GARE scorer
                     reranks), ``mask`` bool [n, F] and ``mean`` float32 [n, D] (vbar, the first-stage embedding)
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
import shutil
import sqlite3
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..io import atomic_write
from ..model.checkpoint import run_config

log = logging.getLogger(__name__)

INDEX_FORMAT = "gare-video-index-v1"
DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
THUMB_DIR = "thumbs"
STAGING_DIR = "staging"
MERGED_ROWS_PER_SHARD = 4096
DTYPES = {"float16": torch.float16, "float32": torch.float32}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    duration REAL,
    n_frames INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    shard TEXT NOT NULL,
    row INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS damaged (
    path TEXT PRIMARY KEY,
    size INTEGER,
    mtime_ns INTEGER,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    seen REAL NOT NULL
);
"""


STAGING_SCHEMA = """
CREATE TABLE IF NOT EXISTS staged (
    sid INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    duration REAL,
    n_frames INTEGER NOT NULL,
    width INTEGER,
    height INTEGER,
    shard TEXT NOT NULL,
    row INTEGER NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS staged_damaged (
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    seen REAL NOT NULL
);
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
        if meta.get("format") != INDEX_FORMAT:
            raise SearchIndexError(f"{db}: unknown index format {meta.get('format')!r} (expected {INDEX_FORMAT})")
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
def load_embeddings(index_dir: str | os.PathLike, con: sqlite3.Connection | None = None):
    """All stored embeddings, ordered by video id.

    Returns ``ids`` int64 np [N], ``frames`` [N, F, D] (stored dtype), ``mask`` bool [N, F] and
    ``mean`` float32 [N, D] (torch tensors).
    """
    index_dir = Path(index_dir)
    own = con is None
    con = con or connect_readonly(index_dir)
    try:
        rows = con.execute("SELECT id, shard, row FROM videos ORDER BY id").fetchall()
        settings = json.loads(read_meta(con)["settings"])
    finally:
        if own:
            con.close()
    F, D = int(settings["max_frames"]), int(settings["embed_dim"])
    dtype = DTYPES[settings.get("dtype", "float32")]
    n = len(rows)
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    frames = torch.empty(n, F, D, dtype=dtype)
    mask = torch.zeros(n, F, dtype=torch.bool)
    mean = torch.empty(n, D, dtype=torch.float32)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for pos, (_vid, shard, row) in enumerate(rows):
        by_shard.setdefault(shard, []).append((pos, row))
    for shard, entries in by_shard.items():
        path = index_dir / SHARD_DIR / shard
        if not path.is_file():
            raise SearchIndexError(f"index {index_dir}: shard {path} is missing; build the index again")
        t = load_file(str(path))
        pos = torch.tensor([p for p, _ in entries])
        rws = torch.tensor([r for _, r in entries])
        if not torch.equal(t["ids"][rws], torch.from_numpy(ids[pos.numpy()])):
            raise SearchIndexError(f"index {index_dir}: shard {shard} does not match the metadata")
        frames[pos] = t["frames"][rws].to(dtype)
        mask[pos] = t["mask"][rws].bool()
        mean[pos] = t["mean"][rws].float()
    return ids, frames, mask, mean


def write_shard(folder: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Write one shard atomically under a fresh unique name; returns the name."""
    name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.safetensors"
    data = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(folder / name, lambda tmp: save_file(data, str(tmp)))
    return name


def write_thumb(folder: Path, vid: int | str, data: bytes) -> None:
    """``thumbs/<vid>.jpg``, written atomically."""
    atomic_write(folder / f"{vid}.jpg", data)


def cleanup(con: sqlite3.Connection, out: Path) -> None:
    """Delete shard and thumbnail files no row refers to (left by an interrupted run or by removals)."""
    shards = {r[0] for r in con.execute("SELECT DISTINCT shard FROM videos")}
    for p in (out / SHARD_DIR).iterdir():
        if p.name not in shards:
            p.unlink(missing_ok=True)
    ids = {r[0] for r in con.execute("SELECT id FROM videos")}
    for p in (out / THUMB_DIR).iterdir():
        stem = p.name.split(".", 1)[0]
        if not (stem.isdigit() and int(stem) in ids and p.suffix == ".jpg"):
            p.unlink(missing_ok=True)


def compact(con: sqlite3.Connection, out: Path, rows_per_shard: int = 4096) -> None:
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
    ids, frames, mask, mean = load_embeddings(out, con)
    updates = []
    for s in range(0, len(ids), rows_per_shard):
        sl = slice(s, s + rows_per_shard)
        name = write_shard(out / SHARD_DIR, {"ids": torch.from_numpy(ids[sl]), "frames": frames[sl],
                                             "mask": mask[sl], "mean": mean[sl]})
        updates += [(name, r, int(i)) for r, i in enumerate(ids[sl])]
    with con:
        con.executemany("UPDATE videos SET shard = ?, row = ? WHERE id = ?", updates)
    cleanup(con, out)


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
    frames: torch.Tensor  # [F, D], storage dtype
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

    def write(self, done: list[Encoded], bad: list[Damaged]) -> None:
        """Stage one flush: shard and thumbnails first, then the rows that refer to them (one transaction)."""
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
                name = write_shard(self.dir / SHARD_DIR, {
                    "ids": torch.tensor(sids, dtype=torch.int64),  # staging ids of this rank
                    "frames": torch.stack([e.frames for e in done]),
                    "mask": torch.stack([e.mask for e in done]),
                    "mean": torch.stack([e.mean for e in done]),
                })
                self.con.execute("UPDATE staged SET shard = ? WHERE shard = ''", (name,))
            self.con.executemany(
                "INSERT INTO staged_damaged(path, size, mtime_ns, kind, reason, seen) VALUES (?, ?, ?, ?, ?, ?)",
                [(d.rel, d.size, d.mtime_ns, d.kind, d.reason, now) for d in bad])

    def close(self) -> None:
        self.con.close()


@dataclass
class StagedRow:
    db: str  # staging database file name (rank-<r>.sqlite)
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
            rows += [StagedRow(db.name, *r) for r in con.execute(
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
    remaining: dict[tuple[str, str], int] = {}  # (db, shard) -> chosen rows still to copy from it
    for r in chosen:
        remaining[(r.db, r.shard)] = remaining.get((r.db, r.shard), 0) + 1
    cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    with con:
        for s in range(0, len(chosen), MERGED_ROWS_PER_SHARD):
            part = chosen[s:s + MERGED_ROWS_PER_SHARD]
            ids, frames, mask, mean = [], [], [], []
            for r in part:
                cur = con.execute(
                    "INSERT INTO videos(path, size, mtime_ns, duration, n_frames, width, height, shard, row, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
                    (r.path, r.size, r.mtime_ns, r.duration, r.n_frames, r.width, r.height, len(ids), r.added))
                ids.append(cur.lastrowid)
                key = (r.db, r.shard)
                if key not in cache:
                    cache[key] = load_file(str(folder / SHARD_DIR / r.shard))
                t = cache[key]
                if int(t["ids"][r.row]) != r.sid:
                    raise SearchIndexError(f"index {out}: staged shard {r.shard} does not match {r.db}; delete "
                                           f"{folder} and run the same command again")
                frames.append(t["frames"][r.row])
                mask.append(t["mask"][r.row])
                mean.append(t["mean"][r.row])
                remaining[key] -= 1
                if remaining[key] == 0:
                    del cache[key]  # every chosen row of this shard is copied: free it
                thumb = folder / THUMB_DIR / f"r{r.db[len('rank-'):-len('.sqlite')]}-{r.sid}.jpg"
                if thumb.is_file():
                    write_thumb(out / THUMB_DIR, ids[-1], thumb.read_bytes())
            name = write_shard(out / SHARD_DIR, {"ids": torch.tensor(ids, dtype=torch.int64),
                                                 "frames": torch.stack(frames), "mask": torch.stack(mask),
                                                 "mean": torch.stack(mean)})
            con.execute("UPDATE videos SET shard = ? WHERE shard = ''", (name,))
        con.executemany("INSERT OR REPLACE INTO damaged(path, size, mtime_ns, kind, reason, seen) "
                        "VALUES (?, ?, ?, ?, ?, ?)", list(bad.values()))
    shutil.rmtree(folder, ignore_errors=True)
    return len(chosen), len(bad)
