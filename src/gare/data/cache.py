"""Frame store: sampled frames decoded once into a memory-mappable uint8 array keyed by video id.

Layout of a store folder::

    meta.json       store version, sampling settings (framerate, max_frames, size, decoder), the generator
                    manifests of generated videos ("sources"), video ids, paths, segments and file stamps
    frames.u8       uint8 [N, F, size, size, 3], C order (np.memmap)
    mask.u8         uint8 [N, F] frame mask
    status.u8       uint8 [N]: 0 pending, 1 done, 2 failed
    failures.jsonl  {"video_id", "path", "kind", "reason"} of the videos that could not be decoded

Frames are resized so the short side is ``size`` and center-cropped to size x size with the same function
(:func:`gare.data.video.resize_center_crop`) that direct decoding uses, so reading a store gives exactly
the frames that decoding would. Builds are resumable: an interrupted build continues where it stopped, and
a build with more videos extends the store.

A store keys on everything its frames depend on, and refuses (:class:`StoreSettingsError`, naming the
difference and the command that rebuilds the store) when one of them differs:

- the sampling settings: framerate, max_frames, size and decoder (``open`` and ``build``);
- for generated videos, the generator's manifest (format version, seed, count, options) of their folder
  (:func:`gare.data.fingerprint.generated_fingerprint`; ``open`` and ``build``);
- each video file's identity, its size and modification time: ``open`` refuses a store whose videos
  changed since they were decoded, ``build`` decodes those videos again (a video whose file is gone keeps
  its frames: the store may outlive the files);
- the store format version.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..io import atomic_write, worker_pool_context
from .fingerprint import describe_difference, generated_fingerprint
from .report import BadInputReport
from .video import VideoDecodeError, sample_frames

log = logging.getLogger(__name__)

STORE_VERSION = 2  # 2: meta.json records the generator manifests of generated videos ("sources")
PENDING, DONE, FAILED = 0, 1, 2


class StoreSettingsError(ValueError):
    """A frame store does not match what it is asked for: other sampling settings, other generated data,
    changed video files or another store format. The message names the difference and the rebuild command."""


def _items_of(split_or_items) -> list:
    items = getattr(split_or_items, "items", split_or_items)
    return list(items)


class FrameStore:
    """Read access to a frame store (see the module docstring). Use :meth:`build` / :meth:`open`."""

    def __init__(self, path: Path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self.settings = meta["settings"]
        self.framerate = float(self.settings["framerate"])
        self.max_frames = int(self.settings["max_frames"])
        self.size = int(self.settings["size"])
        self.decoder = self.settings["decoder"]
        self.ids: list[str] = list(meta["ids"])
        self._index = {v: i for i, v in enumerate(self.ids)}
        self._frames = None
        self._mask = None
        self._status = None
        self._failures: dict[str, dict] | None = None

    # ------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path, *, framerate: float, max_frames: int, size: int, decoder: str | None = None,
             check_videos: bool = True) -> FrameStore:
        """Open an existing store, refusing it (:class:`StoreSettingsError`) when it does not match.

        Refused: other sampling settings (``decoder`` is checked when given), generated videos whose
        generator manifest changed, and, with ``check_videos``, video files that changed (size or
        modification time) since they were decoded. Videos whose files are gone are not checked.
        """
        p = Path(path)
        mpath = p / "meta.json"
        if not mpath.exists():
            raise FileNotFoundError(f"no frame store at {p} (missing meta.json); build one with "
                                    "`gare data cache` or FrameStore.build")
        meta = _read_meta(mpath)
        want = {"framerate": float(framerate), "max_frames": int(max_frames), "size": int(size)}
        if decoder is not None:
            want["decoder"] = decoder
        _check_settings(p, meta, want)
        _check_sources(p, meta, {d: generated_fingerprint(d) for d in meta.get("sources", {}) if Path(d).is_dir()})
        if check_videos:
            _check_stamps(p, meta)
        return cls(p, meta)

    @classmethod
    def build(cls, split_or_items, out_path, *, framerate: float, max_frames: int, size: int,
              decoder: str = "pyav", workers: int | None = None, report=None, progress: bool = False,
              flush_every: int = 64, command: str | None = None) -> FrameStore:
        """Decode the sampled frames of every video once into a store at ``out_path``.

        Args:
            split_or_items: a :class:`~gare.data.datasets.Split` or an iterable of
                :class:`~gare.data.datasets.VideoItem` (video_id, path, start, end are used).
            out_path: store folder (created; resumed or extended if it exists with the same settings).
            framerate, max_frames, size, decoder: sampling settings (recorded; see ``sample_frames``).
            workers: decoding processes (default: all cores; 1 decodes in this process).
            report: a :class:`~gare.data.report.BadInputReport` (or path) to record failed videos in.
            progress: show a tqdm progress bar.
            command: the command that builds this store, without its sampling flags (``gare data cache
                --dataset ... --out ...``): recorded, and named in refusals.

        Refused (:class:`StoreSettingsError`): an existing store with other sampling settings, or built
        from generated videos whose generator manifest has changed since. Videos whose file, path or
        segment changed are decoded again. Videos that fail to decode are marked failed (with the reason
        in ``failures.jsonl`` and in the
        report) and the build continues; ``store.get`` raises :class:`VideoDecodeError` for them.
        """
        items = _items_of(split_or_items)
        seen: dict[str, object] = {}
        for it in items:
            if it.video_id in seen and (seen[it.video_id].start, seen[it.video_id].end) != (it.start, it.end):
                raise ValueError(f"video id {it.video_id!r} appears twice with different segments; a store "
                                 "keys frames by video id")
            seen.setdefault(it.video_id, it)
        items = list(seen.values())
        out = Path(out_path)
        out.mkdir(parents=True, exist_ok=True)
        settings = {"framerate": float(framerate), "max_frames": int(max_frames), "size": int(size),
                    "decoder": decoder}
        mpath = out / "meta.json"
        sources = {}
        for d in sorted({str(Path(it.path).parent) for it in items}):
            fp = generated_fingerprint(d)
            if fp is not None:
                sources[d] = fp
        if mpath.exists():
            meta = _read_meta(mpath)
            _check_settings(out, meta, settings)
            _check_sources(out, meta, sources)
            old_ids = list(meta["ids"])
        else:
            meta = {"version": STORE_VERSION, "settings": settings, "sources": {}, "ids": [], "paths": [],
                    "segments": [], "stamps": []}
            old_ids = []
        meta.setdefault("stamps", [None] * len(old_ids))
        meta["version"] = STORE_VERSION  # a version-1 store gains its sources below (its stamps are checked)
        meta.setdefault("sources", {}).update(sources)
        if command is not None:
            meta["command"] = command
        known = {v: i for i, v in enumerate(old_ids)}
        new = [it for it in items if it.video_id not in known]
        for it in new:
            meta["ids"].append(it.video_id)
            meta["paths"].append(str(it.path))
            meta["segments"].append([it.start, it.end])
            meta["stamps"].append(None)
        n = len(meta["ids"])
        _resize_arrays(out, n, max_frames, size)
        status = np.memmap(out / "status.u8", dtype=np.uint8, mode="r+", shape=(n,))
        # A video whose file, path or segment changed since it was decoded is decoded again.
        stale = 0
        for it in items:
            i = known.get(it.video_id)
            if i is None or status[i] == PENDING:
                continue
            if (meta["paths"][i] != str(it.path) or meta["segments"][i] != [it.start, it.end]
                    or meta["stamps"][i] != _stamp(it.path)):
                meta["paths"][i], meta["segments"][i] = str(it.path), [it.start, it.end]
                status[i] = PENDING
                stale += 1
        if stale:
            log.info("frame store %s: %d videos changed since they were decoded; decoding them again", out, stale)
        status.flush()
        atomic_write(mpath, json.dumps(meta))

        store = cls(out, meta)
        wanted = {it.video_id for it in items}
        todo = [i for i, v in enumerate(meta["ids"]) if v in wanted and status[i] == PENDING]
        rep = BadInputReport.coerce(report) if report is not None else None
        t0 = time.time()
        if todo:
            log.info("frame store %s: decoding %d of %d videos", out, len(todo), n)
            tasks = [(i, meta["paths"][i], meta["segments"][i]) for i in todo]
            bar = None
            if progress:
                bar = tqdm(total=len(tasks), desc="frame store", unit="video")
            workers = workers or os.cpu_count() or 1
            done_since_flush = 0
            results = _run_tasks(tasks, str(out), n, settings, workers)
            fail_f = open(out / "failures.jsonl", "a", encoding="utf-8")
            try:
                for i, err in results:
                    meta["stamps"][i] = _stamp(meta["paths"][i])
                    if err is None:
                        status[i] = DONE
                    else:
                        status[i] = FAILED
                        vid = meta["ids"][i]
                        entry = {"video_id": vid, "path": meta["paths"][i], "kind": err[0], "reason": err[1]}
                        fail_f.write(json.dumps(entry) + "\n")
                        fail_f.flush()
                        if rep is not None:
                            rep.add(err[0], vid, err[1], path=meta["paths"][i], stage="frame store")
                    done_since_flush += 1
                    if done_since_flush >= flush_every:
                        status.flush()
                        done_since_flush = 0
                    if bar is not None:
                        bar.update(1)
            finally:
                status.flush()
                atomic_write(mpath, json.dumps(meta))
                fail_f.close()
                if bar is not None:
                    bar.close()
        del status
        n_failed = sum(1 for i in range(n) if store.status(i) == FAILED and meta["ids"][i] in wanted)
        log.info("frame store %s: %d videos ready, %d failed (%.1f s)", out, len(wanted) - n_failed, n_failed,
                 time.time() - t0)
        return store

    # --------------------------------------------------------------------------------------- access
    def _open_arrays(self):
        n = len(self.ids)
        f, s = self.max_frames, self.size
        self._frames = np.memmap(self.path / "frames.u8", dtype=np.uint8, mode="r", shape=(n, f, s, s, 3))
        self._mask = np.memmap(self.path / "mask.u8", dtype=np.uint8, mode="r", shape=(n, f))
        self._status = np.memmap(self.path / "status.u8", dtype=np.uint8, mode="r", shape=(n,))

    def __getstate__(self):  # DataLoader workers re-map the files instead of copying the arrays
        d = dict(self.__dict__)
        d["_frames"] = d["_mask"] = d["_status"] = None
        return d

    def status(self, i: int) -> int:
        if self._status is None:
            self._open_arrays()
        return int(self._status[i])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, video_id: str) -> bool:
        i = self._index.get(video_id)
        return i is not None and self.status(i) == DONE

    def failure(self, video_id: str) -> dict | None:
        """The recorded failure of a video (kind, reason), or None."""
        if self._failures is None:
            self._failures = {}
            fp = self.path / "failures.jsonl"
            if fp.exists():
                for line in fp.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        e = json.loads(line)
                        self._failures[e["video_id"]] = e
        return self._failures.get(video_id)

    def get(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 [F, size, size, 3] and mask bool [F] of a video (copies, safe to modify).

        Raises:
            KeyError: the video is not in the store (or its decoding has not run yet).
            VideoDecodeError: the video failed to decode when the store was built.
        """
        i = self._index.get(video_id)
        if i is None:
            raise KeyError(f"video {video_id!r} is not in the frame store {self.path}")
        st = self.status(i)
        if st == FAILED:
            f = self.failure(video_id) or {}
            raise VideoDecodeError(self.meta["paths"][i], f.get("reason", "failed when the store was built"),
                                   f.get("kind", "undecodable"))
        if st != DONE:
            raise KeyError(f"video {video_id!r} has not been decoded into {self.path} yet (interrupted "
                           "build?); run the build again to finish it")
        return np.array(self._frames[i]), self._mask[i].astype(bool)

    def settings_dict(self) -> dict:
        return dict(self.settings)


# ------------------------------------------------------------------------------------------- helpers
_FLAGS = {"framerate": "--framerate", "max_frames": "--max-frames", "size": "--size", "decoder": "--decoder"}


def rebuild_command(path: Path, meta: dict, settings: dict | None = None) -> str:
    """How to rebuild the store at ``path``, with its recorded settings updated by ``settings``."""
    st = {**meta.get("settings", {}), **(settings or {})}
    flags = " ".join(f"{flag} {st[k]:g}" if k == "framerate" else f"{flag} {st[k]}"
                     for k, flag in _FLAGS.items() if st.get(k) is not None)
    base = meta.get("command") or ("gare data cache --dataset DATASET --split SPLIT --annotations ANNOTATIONS "
                                   f"--videos VIDEOS --out {path}")
    return (f"`rm -r {path}` then `{base} {flags}` (a run with data.frame_store=auto rebuilds it by itself "
            "once it is removed)")


def _check_settings(path: Path, meta: dict, want: dict) -> None:
    version = meta.get("version", 1)
    if version > STORE_VERSION:
        raise StoreSettingsError(f"frame store {path} has format version {version}, newer than this gare "
                                 f"reads ({STORE_VERSION}); upgrade gare, or rebuild it: {rebuild_command(path, meta)}")
    have = meta["settings"]
    for k, v in want.items():
        h = have.get(k)
        same = (abs(float(h) - float(v)) < 1e-9) if k == "framerate" and h is not None else h == v
        if not same:
            raise StoreSettingsError(
                f"frame store {path} was built with {k}={h!r} but {k}={v!r} was asked for; use matching "
                f"settings, build into another folder, or rebuild it with the new ones: "
                f"{rebuild_command(path, meta, want)}")


def _check_sources(path: Path, meta: dict, now: dict[str, dict | None]) -> None:
    """Refuse when a folder of generated videos the store was built from has another generator manifest."""
    recorded = meta.get("sources", {})
    for d, fp in now.items():
        old = recorded.get(d)
        if old is not None and old != fp:
            what = describe_difference(old, fp) if fp is not None else "its generator manifest is gone"
            raise StoreSettingsError(
                f"frame store {path} was built from generated videos in {d} that have been generated again "
                f"with other settings ({what}); its frames are stale. Rebuild it: {rebuild_command(path, meta)}")


def _check_stamps(path: Path, meta: dict) -> None:
    """Refuse when decoded videos' files changed (size or modification time); gone files are skipped."""
    status = np.fromfile(path / "status.u8", dtype=np.uint8, count=len(meta["ids"]))
    changed = []
    for i, stamp in enumerate(meta.get("stamps", [])):
        if stamp is None or status[i] == PENDING:
            continue
        now = _stamp(meta["paths"][i])
        if now is not None and now != stamp:
            changed.append(i)
    if changed:
        i = changed[0]
        now = _stamp(meta["paths"][i])
        raise StoreSettingsError(
            f"frame store {path}: {len(changed)} video file(s) changed since they were decoded, e.g. "
            f"{meta['paths'][i]} (size, mtime_ns {meta['stamps'][i]} -> {now}); its frames are stale. "
            f"Decode them again by building it again (`gare data cache` with the same arguments, or "
            f"FrameStore.build), or rebuild it from scratch: {rebuild_command(path, meta)}")


def _stamp(path) -> list | None:
    """[size, mtime_ns] of a file (None if it does not exist): tells when a video changed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_meta(path: Path) -> dict:
    """meta.json of a store; stores written before the decoder setting got its one name say "backend"."""
    meta = json.loads(path.read_text())
    settings = meta["settings"]
    if "backend" in settings and "decoder" not in settings:
        settings["decoder"] = settings.pop("backend")
    return meta


def _resize_arrays(out: Path, n: int, max_frames: int, size: int) -> None:
    """Create or grow the array files to hold n videos (new rows are zero = pending)."""
    for name, row in (("frames.u8", max_frames * size * size * 3), ("mask.u8", max_frames), ("status.u8", 1)):
        p = out / name
        want = n * row
        have = p.stat().st_size if p.exists() else 0
        if have > want:
            raise ValueError(f"{p} is larger than its meta.json says; the store is damaged, rebuild it")
        if have < want:
            with open(p, "ab") as f:
                f.truncate(want)


# Worker state (one memmap per worker process).
_W: dict = {}


def _worker_init(out: str, n: int, settings: dict, pool_worker: bool = True):
    if pool_worker:
        torch.set_num_threads(1)  # one decoding process per core
    f, s = settings["max_frames"], settings["size"]
    _W["frames"] = np.memmap(Path(out) / "frames.u8", dtype=np.uint8, mode="r+", shape=(n, f, s, s, 3))
    _W["mask"] = np.memmap(Path(out) / "mask.u8", dtype=np.uint8, mode="r+", shape=(n, f))
    _W["settings"] = settings


def _worker_task(task):
    i, path, (start, end) = task
    st = _W["settings"]
    try:
        frames, mask = sample_frames(path, framerate=st["framerate"], max_frames=st["max_frames"], start=start,
                                     end=end, decoder=st["decoder"], size=st["size"])
    except VideoDecodeError as e:
        return i, (e.kind, e.reason)
    except Exception as e:  # a decoder crash must not stop the build: record it
        return i, ("undecodable", f"{type(e).__name__}: {e}")
    _W["frames"][i] = frames  # shared file mapping: visible to every process once written
    _W["mask"][i] = mask
    return i, None


def _run_tasks(tasks: list, out: str, n: int, settings: dict, workers: int) -> Iterable:
    if workers <= 1 or len(tasks) < 2:
        _worker_init(out, n, settings, pool_worker=False)
        try:
            for t in tasks:
                yield _worker_task(t)
        finally:
            _W.clear()
        return
    ctx = worker_pool_context()
    with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init, initargs=(out, n, settings)) as pool:
        yield from pool.imap_unordered(_worker_task, tasks, chunksize=4)
