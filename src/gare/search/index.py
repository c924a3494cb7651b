"""``gare index``: encode every video of a folder once and store what search needs.

An index is a folder::

    index.sqlite     metadata: one row per video (path relative to the indexed folder, size, modification
                     time, duration, frame count, where its embeddings live), the damaged files with their
                     reasons, and the settings the index was built with (model hash, sampling settings)
    shards/*.safetensors
                     embeddings, a few hundred videos per file: ``ids`` int64 [n], ``frames`` [n, F, D]
                     (temporal-module outputs, float32 by default, float16 on request: what the GARE scorer reranks),
                     ``mask`` bool [n, F] and ``mean`` float32 [n, D] (vbar, the first-stage embedding)
    thumbs/<id>.jpg  a strip of a few frames per video

Indexing commits after every ``flush_every`` videos, so an interrupted run resumes where it stopped.
Running it again on the same folder adds the files that are new; ``update=True`` also drops the files
that were deleted and re-encodes the ones that changed (size or modification time). A file the decoder
cannot read is recorded with its reason, counted and listed, and never stops the run. An index refuses
a model or sampling settings other than the ones it was built with (:class:`IndexMismatchError`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

INDEX_FORMAT = "gare-video-index-v1"
DB_NAME = "index.sqlite"
SHARD_DIR = "shards"
THUMB_DIR = "thumbs"
DTYPES = {"float16": torch.float16, "float32": torch.float32}

_SCHEMA = """
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
    backend: str
    dtype: str = "float32"

    def differences(self, other: IndexSettings) -> list[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: index has {a[k]!r}, asked for {b[k]!r}" for k in a if a[k] != b[k]]


@dataclass
class IndexReport:
    """What one ``build_index`` run did. ``damaged`` lists every unreadable file of the folder."""

    index_dir: str
    total: int = 0  # searchable videos after this run
    added: int = 0
    unchanged: int = 0
    removed: int = 0  # dropped by update (deleted files, and changed files before re-encoding)
    stale: list[str] = field(default_factory=list)  # changed since indexed, kept as indexed (use update)
    missing: list[str] = field(default_factory=list)  # indexed, no longer on disk, kept (use update)
    damaged: list[dict] = field(default_factory=list)  # {"path", "kind", "reason"}
    new_damaged: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"index {self.index_dir}: {self.total} videos searchable; {self.added} added, "
                 f"{self.unchanged} unchanged, {self.removed} removed, {len(self.damaged)} damaged "
                 f"({self.new_damaged} new) in {self.seconds:.1f} s"]
        if self.damaged:
            lines.append(f"damaged files ({len(self.damaged)}, not indexed):")
            lines += [f"  {d['path']}: [{d['kind']}] {d['reason']}" for d in self.damaged]
        if self.stale:
            lines.append(f"{len(self.stale)} file(s) changed since they were indexed (run with --update to "
                         f"re-encode them): " + ", ".join(self.stale[:10]) + (" ..." if len(self.stale) > 10 else ""))
        if self.missing:
            lines.append(f"{len(self.missing)} indexed file(s) no longer exist (run with --update to drop them): "
                         + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else ""))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ helpers
def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding best/model/last.safetensors -> the file."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return (p / name).resolve()
        raise FileNotFoundError(f"{p} is a folder without best/model/last.safetensors")
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return p.resolve()


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
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        data = json.loads(meta.get("run_config", "{}")).get("data", {})
    except Exception as e:  # noqa: BLE001 - metadata is optional; defaults apply
        log.debug("no run config in %s: %s", path, e)
        return {}
    out = {}
    if "framerate" in data:
        out["framerate"] = float(data["framerate"])
    if "max_frames" in data:
        out["max_frames"] = int(data["max_frames"])
    if "decoder" in data:
        out["backend"] = str(data["decoder"])
    return out


def probe_duration(path: Path) -> float | None:
    """Container duration in seconds (None when the file does not say)."""
    try:
        import av

        with av.open(str(path)) as c:
            if c.duration:
                return float(c.duration) / av.time_base
            for s in c.streams.video:
                if s.duration and s.time_base:
                    return float(s.duration * s.time_base)
    except Exception:  # noqa: BLE001 - duration is informative only
        return None
    return None


def thumbnail_strip(frames: np.ndarray, n: int = 6, height: int = 96, quality: int = 80) -> bytes:
    """uint8 frames ``[T, H, W, 3]`` -> JPEG bytes of up to ``n`` evenly spaced frames side by side,
    each ``height`` pixels high (aspect kept, at most 2:1 wide)."""
    from PIL import Image

    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"thumbnail_strip needs frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    idx = np.unique(np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(np.int64))
    h, w = frames.shape[1:3]
    tw = int(min(2 * height, max(1, round(w * height / max(1, h)))))
    strip = Image.new("RGB", (tw * len(idx), height))
    for j, i in enumerate(idx):
        im = Image.fromarray(np.ascontiguousarray(frames[i]))
        scale = max(tw / w, height / h)  # cover the tile, then center-crop
        sw, sh = max(tw, round(w * scale)), max(height, round(h * scale))
        im = im.resize((sw, sh), Image.BICUBIC)
        left, top = (sw - tw) // 2, (sh - height) // 2
        strip.paste(im.crop((left, top, left + tw, top + height)), (j * tw, 0))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _ordered_map(fn: Callable, items: Iterable, workers: int, lookahead: int) -> Iterator:
    """``map(fn, items)`` on a thread pool, in order, with at most ``lookahead`` items in flight."""
    items = iter(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as ex:
        pending: deque = deque()
        for x in items:
            pending.append(ex.submit(fn, x))
            if len(pending) >= lookahead:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(items, _END)
            if nxt is not _END:
                pending.append(ex.submit(fn, nxt))
            yield fut.result()


_END = object()


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(db), timeout=30)
    con.executescript(_SCHEMA)
    return con


def _read_meta(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT key, value FROM meta").fetchall())


def open_index_meta(index_dir: str | os.PathLike) -> dict:
    """An index's metadata: ``format``, ``root``, ``model_path``, ``settings`` (dict), ``created``,
    ``n_videos``, ``n_damaged``. Raises :class:`SearchIndexError` for a folder that is not an index."""
    d = Path(index_dir)
    db = d / DB_NAME
    if not db.is_file():
        raise SearchIndexError(f"{d} is not a gare index (no {DB_NAME}); build one with "
                               f"`gare index VIDEO_DIR --model CHECKPOINT --out {d}`")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        meta = _read_meta(con)
        if meta.get("format") != INDEX_FORMAT:
            raise SearchIndexError(f"{db}: unknown index format {meta.get('format')!r} (expected {INDEX_FORMAT})")
        out = dict(meta)
        out["settings"] = json.loads(meta["settings"])
        out["n_videos"] = con.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        out["n_damaged"] = con.execute("SELECT COUNT(*) FROM damaged").fetchone()[0]
    except sqlite3.DatabaseError as e:
        raise SearchIndexError(f"{db}: cannot read the index metadata ({e})") from e
    finally:
        con.close()
    return out


class _FolderLock:
    """An exclusive lock on the index folder so two ``gare index`` runs cannot interleave."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.fh.close()
            raise SearchIndexError(f"{self.path.parent} is being written by another `gare index` run") from e
        return self

    def __exit__(self, *exc):
        self.fh.close()


# --------------------------------------------------------------------------------------- embeddings
def load_embeddings(index_dir: str | os.PathLike, con: sqlite3.Connection | None = None):
    """All stored embeddings, ordered by video id.

    Returns ``ids`` int64 np [N], ``frames`` [N, F, D] (stored dtype), ``mask`` bool [N, F] and
    ``mean`` float32 [N, D] (torch tensors).
    """
    from safetensors.torch import load_file

    index_dir = Path(index_dir)
    own = con is None
    con = con or sqlite3.connect(f"file:{index_dir / DB_NAME}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT id, shard, row FROM videos ORDER BY id").fetchall()
        settings = json.loads(_read_meta(con)["settings"])
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


def _write_shard(folder: Path, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.safetensors"
    tmp = folder / (name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, folder / name)
    return name


def _cleanup(con: sqlite3.Connection, out: Path) -> None:
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


def _compact(con: sqlite3.Connection, out: Path, rows_per_shard: int = 4096) -> None:
    """Rewrite the live rows into few full shards when removals left many dead rows or many small shards."""
    from safetensors import safe_open

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
        name = _write_shard(out / SHARD_DIR, {"ids": torch.from_numpy(ids[sl]), "frames": frames[sl],
                                              "mask": mask[sl], "mean": mean[sl]})
        updates += [(name, r, int(i)) for r, i in enumerate(ids[sl])]
    with con:
        con.executemany("UPDATE videos SET shard = ?, row = ? WHERE id = ?", updates)
    _cleanup(con, out)


# ------------------------------------------------------------------------------------------- decoding
@dataclass
class _Decoded:
    path: Path
    rel: str
    size: int
    mtime_ns: int
    frames: np.ndarray | None = None  # uint8 [F, S, S, 3]
    mask: np.ndarray | None = None  # bool [F]
    thumb: bytes | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    error: tuple[str, str] | None = None  # (kind, reason)


def _decode(job: tuple[Path, str], *, settings: IndexSettings, thumb_frames: int, thumb_height: int) -> _Decoded:
    from ..data.video import VideoDecodeError, resize_center_crop, sample_frames

    path, rel = job
    try:
        st = path.stat()
    except OSError as e:
        return _Decoded(path, rel, 0, 0, error=("missing_video", str(e)))
    item = _Decoded(path, rel, st.st_size, st.st_mtime_ns)
    try:
        frames, mask = sample_frames(path, framerate=settings.framerate, max_frames=settings.max_frames,
                                     decoder=settings.backend, threads=1)
        if not mask.any():
            raise VideoDecodeError(path, "no frame could be sampled", "undecodable")
        item.height, item.width = int(frames.shape[1]), int(frames.shape[2])
        item.thumb = thumbnail_strip(frames[mask], n=thumb_frames, height=thumb_height)
        item.frames = resize_center_crop(frames, settings.image_size)
        item.mask = mask.astype(bool)
        item.duration = probe_duration(path)
    except VideoDecodeError as e:
        item.error = (e.kind, e.reason)
    except Exception as e:  # noqa: BLE001 - a damaged file must never stop indexing
        item.error = ("undecodable", f"{type(e).__name__}: {e}")
    return item


# ------------------------------------------------------------------------------------------- building
def build_index(video_dir: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
                update: bool = False, framerate: float | None = None, max_frames: int | None = None,
                backend: str | None = None, dtype: str = "float32", batch_size: int = 16, workers: int = 2,
                device: str = "cpu", flush_every: int = 256, thumb_frames: int = 6, thumb_height: int = 96,
                progress: bool = False) -> IndexReport:
    """Index (or resume / update the index of) every video file under ``video_dir``.

    Args:
        video_dir: folder searched recursively for video files.
        model: gare checkpoint (``.safetensors``) or run folder holding ``best.safetensors``.
        out: index folder (created; an existing index there is resumed).
        update: also drop deleted files and re-encode changed ones.
        framerate, max_frames, backend: frame sampling (default: the checkpoint's training settings,
            else 1 fps, 12 frames, pyav).
        dtype: storage type of the frame embeddings: "float32" (default; search scores equal the evaluation
            protocol's) or "float16" (half the size; rounding can reorder close scores).
        batch_size: videos per encoder call. workers: decoding threads. flush_every: videos per commit.
        progress: show a progress bar on stderr.

    Raises:
        FileNotFoundError: missing video folder or checkpoint.
        IndexMismatchError: ``out`` holds an index built with another model, settings or folder.
    """
    from ..data.video import iter_video_files
    from ..model.gare import load_model

    t0 = time.perf_counter()
    root = Path(video_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {video_dir}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ckpt = resolve_checkpoint(model)
    model_id = file_sha256(ckpt)
    samp = {"framerate": 1.0, "max_frames": 12, "backend": "pyav"}
    samp.update(checkpoint_sampling(ckpt))
    for k, v in (("framerate", framerate), ("max_frames", max_frames), ("backend", backend)):
        if v is not None:
            samp[k] = v
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    (out / THUMB_DIR).mkdir(exist_ok=True)
    report = IndexReport(index_dir=str(out))

    with _FolderLock(out):
        con = _connect(out / DB_NAME)
        try:
            meta = _read_meta(con)
            if meta:
                _check_existing(meta, out, root, model_id, samp, dtype)
            gmodel = None
            if meta:  # everything was checked against the stored settings: the model loads only if needed
                settings = IndexSettings(**json.loads(meta["settings"]))
            else:
                gmodel = load_model(ckpt, device=device)
                settings = IndexSettings(model_id=model_id, embed_dim=gmodel.embed_dim,
                                         image_size=gmodel.image_size, framerate=float(samp["framerate"]),
                                         max_frames=int(samp["max_frames"]), backend=str(samp["backend"]),
                                         dtype=dtype)
                with con:
                    con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                        ("format", INDEX_FORMAT), ("root", str(root)), ("model_path", str(ckpt)),
                        ("settings", json.dumps(asdict(settings))), ("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
                    ])
            _cleanup(con, out)
            todo = _plan(con, out, root, iter_video_files(root), update, report)
            log.info("index %s: %d file(s) to encode, %d unchanged", out, len(todo), report.unchanged)
            if todo and gmodel is None:
                gmodel = load_model(ckpt, device=device)  # same file (sha256 checked), so same dimensions
            _encode_all(con, out, gmodel, settings, todo, report, batch_size=batch_size, workers=workers,
                        flush_every=flush_every, thumb_frames=thumb_frames, thumb_height=thumb_height,
                        progress=progress)
            _compact(con, out)
            report.total = con.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
            report.damaged = [{"path": p, "kind": k, "reason": r} for p, k, r in
                              con.execute("SELECT path, kind, reason FROM damaged ORDER BY path")]
        finally:
            con.close()
    report.seconds = time.perf_counter() - t0
    if report.damaged:
        log.warning("%d damaged file(s) were not indexed (listed in the report)", len(report.damaged))
    return report


def _mismatch_message(out: Path, diff: list[str]) -> str:
    return (f"index {out} was built with other settings and cannot take these ({'; '.join(diff)}). "
            "Use the same model and sampling settings, or choose another --out folder (or delete this one).")


def _check_existing(meta: dict, out: Path, root: Path, model_id: str, samp: dict, dtype: str) -> None:
    if meta.get("format") != INDEX_FORMAT:
        raise SearchIndexError(f"{out / DB_NAME}: unknown index format {meta.get('format')!r}")
    if Path(meta["root"]) != root:
        raise IndexMismatchError(f"index {out} belongs to the folder {meta['root']}, not {root}; "
                                 "choose another --out folder for this one")
    old = json.loads(meta["settings"])
    diff = []
    if old["model_id"] != model_id:
        diff.append(f"model: index built with {meta.get('model_path')} (sha256 {old['model_id'][:12]}), "
                    f"asked for sha256 {model_id[:12]}")
    for k in ("framerate", "max_frames", "backend"):
        if old[k] != samp[k] and not (k == "framerate" and float(old[k]) == float(samp[k])):
            diff.append(f"{k}: index has {old[k]!r}, asked for {samp[k]!r}")
    if old.get("dtype", "float32") != dtype:
        diff.append(f"dtype: index has {old.get('dtype')!r}, asked for {dtype!r}")
    if diff:
        raise IndexMismatchError(_mismatch_message(out, diff))


def _plan(con: sqlite3.Connection, out: Path, root: Path, files: Iterable[Path], update: bool,
          report: IndexReport) -> list[tuple[Path, str]]:
    """Compare the folder with the index; apply removals (``update``); return the files to encode."""
    on_disk: dict[str, tuple[Path, int, int]] = {}
    for p in files:
        if _is_under(p.resolve(), out):
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        on_disk[_rel(p, root)] = (p, st.st_size, st.st_mtime_ns)
    indexed = {r[0]: (r[1], r[2], r[3]) for r in con.execute("SELECT path, id, size, mtime_ns FROM videos")}
    damaged = {r[0]: (r[1], r[2]) for r in con.execute("SELECT path, size, mtime_ns FROM damaged")}
    drop_ids: list[int] = []
    drop_damaged: list[str] = []
    todo: list[tuple[Path, str]] = []
    for rel, (vid, size, mtime) in indexed.items():
        if rel not in on_disk:
            if update:
                drop_ids.append(vid)
            else:
                report.missing.append(rel)
        elif on_disk[rel][1:] != (size, mtime):
            if update:
                drop_ids.append(vid)
                todo.append((on_disk[rel][0], rel))
            else:
                report.stale.append(rel)
                report.unchanged += 1
        else:
            report.unchanged += 1
    for rel, (size, mtime) in damaged.items():
        if rel not in on_disk or on_disk[rel][1:] != (size, mtime):
            drop_damaged.append(rel)  # gone, or changed: try it again
    skip_damaged = set(damaged) - set(drop_damaged)
    for rel, (p, _size, _mtime) in on_disk.items():
        if rel not in indexed and rel not in skip_damaged:
            todo.append((p, rel))
    if drop_ids or drop_damaged:
        with con:
            con.executemany("DELETE FROM videos WHERE id = ?", [(i,) for i in drop_ids])
            con.executemany("DELETE FROM damaged WHERE path = ?", [(r,) for r in drop_damaged])
        for i in drop_ids:
            (out / THUMB_DIR / f"{i}.jpg").unlink(missing_ok=True)
        report.removed = len(drop_ids)
        log.info("index %s: dropped %d deleted/changed file(s)", out, report.removed)
    todo.sort(key=lambda x: x[1])
    return todo


def _encode_all(con, out: Path, gmodel, settings: IndexSettings, todo: list[tuple[Path, str]], report: IndexReport,
                *, batch_size: int, workers: int, flush_every: int, thumb_frames: int, thumb_height: int,
                progress: bool) -> None:
    from functools import partial

    from ..data.video import FrameTransform

    if not todo:
        return
    transform = FrameTransform(settings.image_size, train=False)
    dtype = DTYPES[settings.dtype]
    done: list[tuple[_Decoded, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # encoded, not yet committed
    bad: list[_Decoded] = []
    batch: list[_Decoded] = []

    def encode() -> None:
        if not batch:
            return
        x = torch.stack([transform(it.frames) for it in batch])  # [B, F, 3, S, S]
        m = torch.from_numpy(np.stack([it.mask for it in batch]))  # [B, F]
        with torch.inference_mode():
            v = gmodel.encode_video(x, m).float()  # [B, F, D]
            mean = gmodel.mean_video(v, m.to(v.device))  # [B, D]
        v, mean = v.cpu(), mean.cpu()
        for j, it in enumerate(batch):
            it.frames = None  # free the pixels
            done.append((it, v[j].to(dtype), m[j], mean[j]))
        batch.clear()

    def flush() -> None:
        encode()
        if not done and not bad:
            return
        now = time.time()
        with con:
            if done:
                ids = []
                shard_rows = []
                for row, (it, _v, _m, _mean) in enumerate(done):
                    cur = con.execute(
                        "INSERT INTO videos(path, size, mtime_ns, duration, n_frames, width, height, shard, row, "
                        "added) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
                        (it.rel, it.size, it.mtime_ns, it.duration, int(it.mask.sum()), it.width, it.height, row, now))
                    ids.append(cur.lastrowid)
                    shard_rows.append(row)
                for vid, (it, *_rest) in zip(ids, done):
                    tmp = out / THUMB_DIR / f"{vid}.jpg.tmp"
                    tmp.write_bytes(it.thumb)
                    os.replace(tmp, out / THUMB_DIR / f"{vid}.jpg")
                name = _write_shard(out / SHARD_DIR, {
                    "ids": torch.tensor(ids, dtype=torch.int64),
                    "frames": torch.stack([d[1] for d in done]),
                    "mask": torch.stack([d[2] for d in done]),
                    "mean": torch.stack([d[3] for d in done]),
                })
                con.execute("UPDATE videos SET shard = ? WHERE shard = ''", (name,))
                report.added += len(done)
            for it in bad:
                kind, reason = it.error
                con.execute("INSERT OR REPLACE INTO damaged(path, size, mtime_ns, kind, reason, seen) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (it.rel, it.size, it.mtime_ns, kind, reason, now))
                report.new_damaged += 1
        done.clear()
        bad.clear()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="video", desc="indexing", dynamic_ncols=True)
    fn = partial(_decode, settings=settings, thumb_frames=thumb_frames, thumb_height=thumb_height)
    try:
        for it in _ordered_map(fn, todo, workers, lookahead=2 * batch_size + workers):
            if it.error is not None:
                log.warning("damaged video %s: [%s] %s", it.path, *it.error)
                bad.append(it)
            else:
                batch.append(it)
                if len(batch) >= batch_size:
                    encode()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(damaged=report.new_damaged + len(bad), refresh=False)
            if len(done) + len(batch) >= flush_every:
                flush()
        flush()
    except KeyboardInterrupt:
        log.warning("interrupted: saving the %d video(s) encoded so far; run the same command to resume",
                    len(done) + len(batch))
        flush()
        raise
    finally:
        if bar is not None:
            bar.close()
