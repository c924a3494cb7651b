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

import datetime
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..data.video import FrameTransform, iter_video_files
from ..model import fast_scorer
from ..model.checkpoint import resolve_checkpoint
from ..model.gallery import VideoGallery
from ..pipeline import load_run_model
from .first_stage import FIRST_STAGES, full_key, normalized, obtain, prune, resolve, rows_key, sample_positions
from .media import DecodedVideo, decode_video
from .store import (
    DB_NAME,
    DTYPES,
    INDEX_FORMAT,
    OLD_FORMATS,
    SHARD_DIR,
    THUMB_DIR,
    Damaged,
    Encoded,
    FolderLock,
    IndexMismatchError,
    IndexSettings,
    SearchIndexError,
    StagingWriter,
    add_bases,
    checkpoint_sampling,
    cleanup,
    compact,
    connect,
    file_sha256,
    gather,
    gather_rows,
    index_command,
    merge_staged,
    read_meta,
    read_staged,
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
    first_stage: str | None = None  # the trained first stage stored for search, and whether it was (re)built
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"index {self.index_dir}: {self.total} videos searchable; {self.added} added, "
                 f"{self.unchanged} unchanged, {self.removed} removed, {len(self.damaged)} damaged "
                 f"({self.new_damaged} new) in {self.seconds:.1f} s"]
        if self.first_stage:
            lines.append(f"first stage for search: {self.first_stage}")
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
@dataclass
class Ranks:
    """Where this process stands in a build: rank ``rank`` of ``world`` (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this build started the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, todo: list) -> list:
        """This rank's disjoint, deterministic share of the (path-sorted) work list: every world-th item."""
        return todo[self.rank::self.world]

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (in rank order) on rank 0; None elsewhere."""
        if self.world == 1:
            return [obj]
        boxes = [None] * self.world if self.is_main else None
        dist.gather_object(obj, boxes, dst=0)
        return boxes


def join_ranks() -> Ranks:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group, else a single process.

    The build exchanges only small Python objects (the work list, counts), so the group uses gloo even when
    the ranks encode on GPUs; it waits up to a day at the final barrier for the slowest rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Ranks()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(days=1))
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def _rank_device(device: str, ranks: Ranks) -> str:
    if ranks.world > 1 and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


def build_index(video_dir: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
                update: bool = False, framerate: float | None = None, max_frames: int | None = None,
                decoder: str | None = None, dtype: str = "float32", batch_size: int = 16, workers: int = 2,
                device: str = "cpu", flush_every: int = 256, thumb_frames: int = 6, thumb_height: int = 96,
                follow_symlinks: bool = False, first_stage: str = "auto", progress: bool = False) -> IndexReport:
    """Index (or resume / update the index of) every video file under ``video_dir``.

    Under ``torchrun --nproc_per_node=N [--nnodes=M ...]`` every process runs this same call: rank 0 plans
    (which files are new or changed), each rank encodes every N-th file of the path-sorted list into its own
    staging files, and rank 0 merges them into the index. Videos get their ids in path order at the merge,
    so the index is the one a single process builds (same ids; the same embeddings up to the last bits that
    the encoder's batch composition changes). A rank that dies loses only its unflushed videos: run the same
    command again (with any number of processes). ``out`` and ``video_dir`` must be the same paths on every
    machine (a shared file system).

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
        device: "cpu", "cuda" (under torchrun: each rank its ``LOCAL_RANK`` GPU) or "cuda:K".
        follow_symlinks: also index files that symbolic links lead to outside ``video_dir`` (and enter linked
            folders). Off by default: a link out of the folder is listed in the report and skipped, and
            ``gare serve`` refuses to serve a file whose real path has left the folder since indexing.
        first_stage: the trained FAISS first stage to store for search when the rows changed
            (:mod:`gare.search.first_stage`): "auto" (IVF-Flat from ``IVF_MIN_VIDEOS`` videos, else none),
            "ivf", "ivfpq", or "none"/"flat" (store none). Search loads it instead of training it at every open.
        progress: show a progress bar on stderr (rank 0 only).

    Returns:
        The report (on ranks other than 0: only ``added`` / ``new_damaged`` of that rank's share).

    Raises:
        FileNotFoundError: missing video folder or checkpoint.
        IndexMismatchError: ``out`` holds an index built with another model, settings or folder.
    """
    ranks = join_ranks()
    try:
        return _build(ranks, video_dir, model, out, update=update, framerate=framerate, max_frames=max_frames,
                      decoder=decoder, dtype=dtype, batch_size=batch_size, workers=workers,
                      device=_rank_device(device, ranks), flush_every=flush_every, thumb_frames=thumb_frames,
                      thumb_height=thumb_height, follow_symlinks=follow_symlinks, first_stage=first_stage,
                      progress=progress)
    finally:
        if ranks.owns_group:
            dist.destroy_process_group()


@dataclass
class _Plan:
    """What rank 0 sends every rank: the settings and the work list (or the error that stops the build)."""

    settings: IndexSettings | None = None
    todo: list[tuple[Path, str]] = field(default_factory=list)
    error: BaseException | None = None


def _build(ranks: Ranks, video_dir, model, out, *, update: bool, framerate, max_frames, decoder, dtype: str,
           batch_size: int, workers: int, device: str, flush_every: int, thumb_frames: int, thumb_height: int,
           follow_symlinks: bool, first_stage: str, progress: bool) -> IndexReport:
    t0 = time.perf_counter()
    out = Path(out).resolve()
    report = IndexReport(index_dir=str(out))
    if not ranks.is_main:
        plan = ranks.broadcast(None)
        if plan.error is not None:
            raise plan.error
        ckpt = resolve_checkpoint(model)
        _encode_share(ranks, out, ckpt, plan, report, device=device, batch_size=batch_size, workers=workers,
                      flush_every=flush_every, thumb_frames=thumb_frames, thumb_height=thumb_height, progress=False)
        ranks.gather((report.added, report.new_damaged))
        return report

    with ExitStack() as stack:
        try:
            root = Path(video_dir).resolve()
            if not root.is_dir():
                raise FileNotFoundError(f"video folder not found: {video_dir}")
            if dtype not in DTYPES:
                raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
            if first_stage not in (*FIRST_STAGES, "none"):
                raise ValueError(f"first_stage must be one of {', '.join(repr(k) for k in (*FIRST_STAGES, 'none'))}, "
                                 f"got {first_stage!r}")
            ckpt = resolve_checkpoint(model)
            out.mkdir(parents=True, exist_ok=True)
            (out / SHARD_DIR).mkdir(exist_ok=True)
            (out / THUMB_DIR).mkdir(exist_ok=True)
            stack.enter_context(FolderLock(out))
            con = stack.enter_context(closing(connect(out / DB_NAME)))
            settings = _settings(con, out, root, ckpt, framerate, max_frames, decoder, dtype, device)
            cleanup(con, out)
            _upgrade(con, out, ckpt, device, settings)
            with con:
                con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('follow_symlinks', ?)",
                            ("1" if follow_symlinks else "0",))
            files = iter_video_files(root, followlinks=follow_symlinks)
            todo, on_disk = _plan(con, out, root, files, update, report, follow_symlinks=follow_symlinks)
            plan = _Plan(settings, todo)
        except BaseException as e:  # every rank stops, with the same error
            ranks.broadcast(_Plan(error=e))
            raise
        ranks.broadcast(plan)
        log.info("index %s: %d file(s) to encode on %d process(es), %d unchanged", out, len(todo), ranks.world,
                 report.unchanged)
        try:
            _encode_share(ranks, out, ckpt, plan, report, device=device, batch_size=batch_size, workers=workers,
                          flush_every=flush_every, thumb_frames=thumb_frames, thumb_height=thumb_height,
                          progress=progress)
        except KeyboardInterrupt:
            if ranks.world == 1:  # alone: what was staged goes into the index now
                merge_staged(con, out, on_disk)
            raise
        ranks.gather((report.added, report.new_damaged))  # also the barrier: every rank has staged its share
        report.added, report.new_damaged = merge_staged(con, out, on_disk)
        compact(con, out)
        report.first_stage = refresh_first_stage(con, out, first_stage)
        report.total = con.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        report.damaged = [{"path": p, "kind": k, "reason": r} for p, k, r in
                          con.execute("SELECT path, kind, reason FROM damaged ORDER BY path")]
    report.seconds = time.perf_counter() - t0
    if report.damaged:
        log.warning("%d damaged file(s) were not indexed (listed in the report)", len(report.damaged))
    return report


def refresh_first_stage(con: sqlite3.Connection, out: Path, kind: str = "auto") -> str | None:
    """Store the trained first stage ``kind`` of the index's current rows unless it is stored already (an
    earlier one of this index is brought up to date without training when the collection has not doubled or
    halved since it was trained), and delete stored first stages of other rows (the caller holds the folder
    lock). Returns what it did, for the report (None when the kind needs no training)."""
    if kind == "none":
        return None
    meta = read_meta(con)
    settings = IndexSettings.from_dict(json.loads(meta["settings"]))
    ids, parts = gather_rows(out, con)
    spec = resolve(kind, len(ids), settings.embed_dim)

    def means_at(pos: np.ndarray) -> np.ndarray:
        """Stored vbar of the videos at positions ``pos`` (only their rows are read)."""
        if not len(pos):
            return np.zeros((0, settings.embed_dim), np.float32)
        slot = torch.full((len(ids),), -1, dtype=torch.long)
        slot[torch.from_numpy(pos)] = torch.arange(len(pos))
        picks = [(sh, r[slot[p] >= 0], slot[p][slot[p] >= 0]) for sh, r, p in parts]
        picks = [x for x in picks if len(x[2])]
        return gather(picks, with_gallery=False, keys=("mean",))[1]["mean"].float().numpy()

    if not spec.trained:  # first stages of earlier rows are of no use any more
        prune(out, full_key(spec, rows_key(ids, means_at(sample_positions(len(ids))), meta.get("created"),
                                           settings.model_id)))
        return None
    mean = means_at(np.arange(len(ids)))
    t0 = time.perf_counter()
    # the same vectors, normalized the same way, as SearchEngine.vbar
    _, spec, source = obtain(out, spec, ids, means_at=lambda pos: mean[pos],
                             vectors=lambda: normalized(mean), created=meta.get("created"),
                             model_id=settings.model_id, locked=True)
    extra = f", m={spec.m}, nbits={spec.nbits}" if spec.kind == "ivfpq" else ""
    what = {"stored": "current", "updated": "updated without training"}.get(source.split()[0], "trained")
    if what != "current":
        what += f" in {time.perf_counter() - t0:.1f} s"
    return f"{spec.kind} (nlist={spec.nlist}{extra}) {what}"


def _settings(con: sqlite3.Connection, out: Path, root: Path, ckpt: Path, framerate, max_frames, decoder,
              dtype: str, device: str) -> IndexSettings:
    """The settings of the index in ``con``: checked against the ones asked for, or recorded for a new index."""
    model_id = file_sha256(ckpt)
    samp = {"framerate": 1.0, "max_frames": 12, "decoder": "pyav"}
    samp.update(checkpoint_sampling(ckpt))
    for k, v in (("framerate", framerate), ("max_frames", max_frames), ("decoder", decoder)):
        if v is not None:
            samp[k] = v
    meta = read_meta(con)
    if meta:
        _check_existing(meta, out, root, model_id, samp, dtype, ckpt)
        return IndexSettings.from_dict(json.loads(meta["settings"]))
    gmodel = load_run_model(ckpt, device=device)  # a new index records the model's dimensions
    settings = IndexSettings(model_id=model_id, embed_dim=gmodel.embed_dim, image_size=gmodel.image_size,
                             framerate=float(samp["framerate"]), max_frames=int(samp["max_frames"]),
                             decoder=str(samp["decoder"]), dtype=dtype)
    with con:
        con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
            ("format", INDEX_FORMAT), ("root", str(root)), ("model_path", str(ckpt)),
            ("settings", json.dumps(asdict(settings))), ("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
        ])
    return settings


def supports_gallery(gmodel) -> bool:
    """Whether the model's scorer has exact cached bases (``model.gallery``); other configurations are
    indexed with their frames only and scored from them."""
    return fast_scorer.supports(gmodel.scorer)


def gallery_of(gmodel, frames: torch.Tensor, mask: torch.Tensor, dtype: str) -> VideoGallery:
    """The bases of ``frames [n, F, D]`` float32 (``mask [n, F]``), rows stored in ``dtype``, on the CPU."""
    with torch.inference_mode():
        g = gmodel.gallery(frames.to(gmodel.device), mask.to(gmodel.device),
                           dtype=torch.float16 if dtype == "float16" else None)
    return g.to("cpu")


def _upgrade(con: sqlite3.Connection, out: Path, ckpt: Path, device: str, settings: IndexSettings) -> None:
    """An index of an older format gets its bases in place (no video is decoded again)."""
    meta = read_meta(con)
    if meta.get("format") == INDEX_FORMAT:
        return
    gmodel = load_run_model(ckpt, device=device)
    if supports_gallery(gmodel):
        n = add_bases(con, out, lambda f, m: gallery_of(gmodel, f.float(), m, settings.dtype))
        log.info("index %s: upgraded to %s (bases written for %d shard(s))", out, INDEX_FORMAT, n)
    with con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'format'", (INDEX_FORMAT,))


def _mismatch_message(out: Path, diff: list[str], rebuild: str) -> str:
    return (f"index {out} was built with other settings and cannot take these ({'; '.join(diff)}). "
            "Use the same model and sampling settings, or choose another --out folder (or delete this one); "
            f"an index for these settings: `{rebuild}`")


def _check_existing(meta: dict, out: Path, root: Path, model_id: str, samp: dict, dtype: str,
                    ckpt: Path | None = None) -> None:
    rebuild = index_command(root, ckpt or "CHECKPOINT", out.with_name(out.name + "-new"), samp, dtype)
    if meta.get("format") not in (INDEX_FORMAT, *OLD_FORMATS):
        raise SearchIndexError(f"{out / DB_NAME}: unknown index format {meta.get('format')!r} (this gare writes "
                               f"{INDEX_FORMAT}); choose another --out folder: `{rebuild}`")
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
        raise IndexMismatchError(_mismatch_message(out, diff, rebuild))


def _plan(con: sqlite3.Connection, out: Path, root: Path, files: Iterable[Path], update: bool,
          report: IndexReport, *, follow_symlinks: bool) -> tuple[list[tuple[Path, str]], dict[str, tuple[int, int]]]:
    """Compare the folder with the index and with what an interrupted build staged; apply removals
    (``update``). Returns the files to encode, sorted by path, and every file on disk (path -> size, mtime)."""
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
    staged_rows, staged_damaged = read_staged(out)
    staged = {(r.path, r.size, r.mtime_ns) for r in staged_rows} | {(d[0], d[1], d[2]) for d in staged_damaged}
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
    todo = [(p, rel) for p, rel in todo if (rel, *on_disk[rel][1:]) not in staged]  # staged earlier: merged below
    if drop_ids or drop_damaged:
        with con:
            con.executemany("DELETE FROM videos WHERE id = ?", [(i,) for i in drop_ids])
            con.executemany("DELETE FROM damaged WHERE path = ?", [(r,) for r in drop_damaged])
        for i in drop_ids:
            (out / THUMB_DIR / f"{i}.jpg").unlink(missing_ok=True)
        report.removed = len(drop_ids)
        log.info("index %s: dropped %d deleted/changed file(s)", out, report.removed)
    todo.sort(key=lambda x: x[1])
    return todo, {rel: v[1:] for rel, v in on_disk.items()}


def _encode_share(ranks: Ranks, out: Path, ckpt: Path, plan: _Plan, report: IndexReport, *, device: str,
                  batch_size: int, workers: int, flush_every: int, thumb_frames: int, thumb_height: int,
                  progress: bool) -> None:
    """Encode this rank's share of ``plan.todo`` into its staging files (flushed every ``flush_every``)."""
    todo = ranks.share(plan.todo)
    if not todo:
        return
    settings = plan.settings
    gmodel = load_run_model(ckpt, device=device)  # same file as the settings' sha256 (checked by rank 0)
    with_bases = supports_gallery(gmodel)
    transform = FrameTransform(settings.image_size, train=False)
    dtype = DTYPES[settings.dtype]
    writer = StagingWriter(out, ranks.rank)
    done: list[Encoded] = []  # encoded, not yet staged
    bad: list[Damaged] = []
    batch: list[DecodedVideo] = []

    def encode() -> None:
        if not batch:
            return
        x = torch.stack([transform(it.frames) for it in batch])  # [B, F, 3, S, S]
        m = torch.from_numpy(np.stack([it.mask for it in batch]))  # [B, F]
        with torch.inference_mode():
            v = gmodel.encode_video(x.to(gmodel.device), m.to(gmodel.device)).float()  # [B, F, D]
            mean = gmodel.mean_video(v, m.to(v.device))  # [B, D]
        v, mean = v.cpu(), mean.cpu()
        for j, it in enumerate(batch):
            done.append(Encoded(it.rel, it.size, it.mtime_ns, it.duration, it.width, it.height, it.thumb,
                                v[j], m[j], mean[j]))
        batch.clear()

    def flush() -> None:
        encode()
        if done or bad:
            gallery = None
            if done and with_bases:
                frames = torch.stack([e.frames for e in done])  # [n, F, D] float32
                gallery = gallery_of(gmodel, frames, torch.stack([e.mask for e in done]), settings.dtype)
            writer.write(done, bad, gallery, dtype)
            report.added += len(done)
            report.new_damaged += len(bad)
        done.clear()
        bad.clear()

    bar = tqdm(total=len(todo), unit="video", desc="indexing", dynamic_ncols=True) if progress else None
    fn = partial(decode_video, framerate=settings.framerate, max_frames=settings.max_frames,
                 decoder=settings.decoder, image_size=settings.image_size, thumb_frames=thumb_frames,
                 thumb_height=thumb_height)
    try:
        for it in ordered_map(fn, todo, workers, lookahead=2 * batch_size + workers):
            if it.error is not None:
                log.warning("damaged video %s: [%s] %s", it.path, *it.error)
                bad.append(Damaged(it.rel, it.size, it.mtime_ns, *it.error))
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
        writer.close()
        if bar is not None:
            bar.close()
