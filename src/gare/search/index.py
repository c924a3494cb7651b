"""``gare index``: encode every video of a folder once and store what search needs.

The index layout (SQLite metadata, safetensors shards, thumbnails) is described in :mod:`gare.search.store`;
reading the files (frames, duration, thumbnails) lives in :mod:`gare.search.media`. This module decides
what to encode and writes it.

Indexing commits after every ``flush_every`` videos, so an interrupted run resumes where it stopped.
Running it again on the same folder adds the files that are new; ``update=True`` also drops the files
that were deleted and re-encodes the ones that changed (size or modification time). A file the decoder
cannot read is recorded with its reason, counted and listed, and never stops the run. An index refuses
a model or sampling settings other than the ones it was built with (:class:`IndexMismatchError`).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.video import FrameTransform, iter_video_files
from ..model.checkpoint import resolve_checkpoint
from ..model.factory import load_model
from .media import DecodedVideo, decode_video
from .store import (
    DB_NAME,
    DTYPES,
    INDEX_FORMAT,
    SHARD_DIR,
    THUMB_DIR,
    FolderLock,
    IndexMismatchError,
    IndexSettings,
    SearchIndexError,
    checkpoint_sampling,
    cleanup,
    compact,
    connect,
    file_sha256,
    read_meta,
    write_shard,
    write_thumb,
)

log = logging.getLogger(__name__)


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
    outside: list[str] = field(default_factory=list)  # symbolic links out of the folder, not followed
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
        if self.outside:
            lines.append(f"{len(self.outside)} symbolic link(s) lead out of the folder and were not indexed (run "
                         "with --follow-symlinks to index them): " + ", ".join(self.outside[:10])
                         + (" ..." if len(self.outside) > 10 else ""))
        if self.missing:
            lines.append(f"{len(self.missing)} indexed file(s) no longer exist (run with --update to drop them): "
                         + ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else ""))
        return "\n".join(lines)


_END = object()


def ordered_map(fn: Callable, items: Iterable, workers: int, lookahead: int) -> Iterator:
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


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------- building
def build_index(video_dir: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
                update: bool = False, framerate: float | None = None, max_frames: int | None = None,
                decoder: str | None = None, dtype: str = "float32", batch_size: int = 16, workers: int = 2,
                device: str = "cpu", flush_every: int = 256, thumb_frames: int = 6, thumb_height: int = 96,
                follow_symlinks: bool = False, progress: bool = False) -> IndexReport:
    """Index (or resume / update the index of) every video file under ``video_dir``.

    Args:
        video_dir: folder searched recursively for video files.
        model: gare checkpoint (``.safetensors``) or run folder holding ``best.safetensors``.
        out: index folder (created; an existing index there is resumed).
        update: also drop deleted files and re-encode changed ones.
        framerate, max_frames, decoder: frame sampling (default: the checkpoint's training settings,
            else 1 fps, 12 frames, pyav).
        dtype: storage type of the frame embeddings: "float32" (default; search scores equal the evaluation
            protocol's) or "float16" (half the size; rounding can reorder close scores).
        batch_size: videos per encoder call. workers: decoding threads. flush_every: videos per commit.
        follow_symlinks: also index files that symbolic links lead to outside ``video_dir`` (and enter linked
            folders). Off by default: a link out of the folder is listed in the report and skipped, and
            ``gare serve`` refuses to serve a file whose real path has left the folder since indexing.
        progress: show a progress bar on stderr.

    Raises:
        FileNotFoundError: missing video folder or checkpoint.
        IndexMismatchError: ``out`` holds an index built with another model, settings or folder.
    """
    t0 = time.perf_counter()
    root = Path(video_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"video folder not found: {video_dir}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    ckpt = resolve_checkpoint(model)
    model_id = file_sha256(ckpt)
    samp = {"framerate": 1.0, "max_frames": 12, "decoder": "pyav"}
    samp.update(checkpoint_sampling(ckpt))
    for k, v in (("framerate", framerate), ("max_frames", max_frames), ("decoder", decoder)):
        if v is not None:
            samp[k] = v
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    (out / THUMB_DIR).mkdir(exist_ok=True)
    report = IndexReport(index_dir=str(out))

    with FolderLock(out):
        con = connect(out / DB_NAME)
        try:
            meta = read_meta(con)
            if meta:
                _check_existing(meta, out, root, model_id, samp, dtype)
            gmodel = None
            if meta:  # everything was checked against the stored settings: the model loads only if needed
                settings = IndexSettings.from_dict(json.loads(meta["settings"]))
            else:
                gmodel = load_model(ckpt, device=device)
                settings = IndexSettings(model_id=model_id, embed_dim=gmodel.embed_dim,
                                         image_size=gmodel.image_size, framerate=float(samp["framerate"]),
                                         max_frames=int(samp["max_frames"]), decoder=str(samp["decoder"]),
                                         dtype=dtype)
                with con:
                    con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                        ("format", INDEX_FORMAT), ("root", str(root)), ("model_path", str(ckpt)),
                        ("settings", json.dumps(asdict(settings))), ("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
                    ])
            cleanup(con, out)
            with con:
                con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('follow_symlinks', ?)",
                            ("1" if follow_symlinks else "0",))
            files = iter_video_files(root, followlinks=follow_symlinks)
            todo = _plan(con, out, root, files, update, report, follow_symlinks=follow_symlinks)
            log.info("index %s: %d file(s) to encode, %d unchanged", out, len(todo), report.unchanged)
            if todo and gmodel is None:
                gmodel = load_model(ckpt, device=device)  # same file (sha256 checked), so same dimensions
            _encode_all(con, out, gmodel, settings, todo, report, batch_size=batch_size, workers=workers,
                        flush_every=flush_every, thumb_frames=thumb_frames, thumb_height=thumb_height,
                        progress=progress)
            compact(con, out)
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
    old = asdict(IndexSettings.from_dict(json.loads(meta["settings"])))
    diff = []
    if old["model_id"] != model_id:
        diff.append(f"model: index built with {meta.get('model_path')} (sha256 {old['model_id'][:12]}), "
                    f"asked for sha256 {model_id[:12]}")
    for k in ("framerate", "max_frames", "decoder"):
        if old[k] != samp[k] and not (k == "framerate" and float(old[k]) == float(samp[k])):
            diff.append(f"{k}: index has {old[k]!r}, asked for {samp[k]!r}")
    if old.get("dtype", "float32") != dtype:
        diff.append(f"dtype: index has {old.get('dtype')!r}, asked for {dtype!r}")
    if diff:
        raise IndexMismatchError(_mismatch_message(out, diff))


def _plan(con: sqlite3.Connection, out: Path, root: Path, files: Iterable[Path], update: bool,
          report: IndexReport, *, follow_symlinks: bool) -> list[tuple[Path, str]]:
    """Compare the folder with the index; apply removals (``update``); return the files to encode."""
    on_disk: dict[str, tuple[Path, int, int]] = {}
    for p in files:
        real = p.resolve()
        if _is_under(real, out):
            continue
        if not follow_symlinks and not _is_under(real, root):
            report.outside.append(p.relative_to(root).as_posix())
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        on_disk[p.relative_to(root).as_posix()] = (p, st.st_size, st.st_mtime_ns)
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
    if not todo:
        return
    transform = FrameTransform(settings.image_size, train=False)
    dtype = DTYPES[settings.dtype]
    done: list[tuple[DecodedVideo, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # encoded, not yet committed
    bad: list[DecodedVideo] = []
    batch: list[DecodedVideo] = []

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
                for row, (it, _v, _m, _mean) in enumerate(done):
                    cur = con.execute(
                        "INSERT INTO videos(path, size, mtime_ns, duration, n_frames, width, height, shard, row, "
                        "added) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
                        (it.rel, it.size, it.mtime_ns, it.duration, int(it.mask.sum()), it.width, it.height, row, now))
                    ids.append(cur.lastrowid)
                for vid, (it, *_rest) in zip(ids, done):
                    write_thumb(out / THUMB_DIR, vid, it.thumb)
                name = write_shard(out / SHARD_DIR, {
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
        bar = tqdm(total=len(todo), unit="video", desc="indexing", dynamic_ncols=True)
    fn = partial(decode_video, framerate=settings.framerate, max_frames=settings.max_frames,
                 decoder=settings.decoder, image_size=settings.image_size, thumb_frames=thumb_frames,
                 thumb_height=thumb_height)
    try:
        for it in ordered_map(fn, todo, workers, lookahead=2 * batch_size + workers):
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
