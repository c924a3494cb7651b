"""What every annotation reader shares: :class:`VideoItem`, :class:`Split`, :class:`ReaderContext` (bad-input
recording, video lookup, the final checks) and small file helpers.

A reader (one module per benchmark in this package) turns an annotation folder or file into a
:class:`Split`; :mod:`.registry` lists the readers and :func:`~gare.data.datasets.load_split` dispatches to
them. See docs/data.md ("Annotations").
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..report import CAPTION_KINDS, VIDEO_KINDS, BadInputReport

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PROTOCOLS = ("single", "all", "paragraph")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
              ".3g2", ".mts", ".m2ts", ".ogv")


@dataclass
class VideoItem:
    """One video of a split.

    Attributes:
        video_id: unique key within the split (file stem for the benchmarks).
        path: the video file.
        captions: the video's captions in annotation order (for paragraph datasets: one per moment).
        start, end: optional segment in seconds.
    """

    video_id: str
    path: str
    captions: list[str]
    start: float | None = None
    end: float | None = None


@dataclass
class Split:
    """The videos of one split of one dataset, and its evaluation protocol.

    Attributes:
        name: "train", "val" or "test".
        dataset: dataset name ("msrvtt", ..., "jsonl").
        items: the videos, in a fixed order (video index = position).
        protocol: "single", "all" or "paragraph".
        meta: how the split was built (files, options, counts of bad inputs): record it in run metadata.
    """

    name: str
    dataset: str
    items: list[VideoItem]
    protocol: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def video_ids(self) -> list[str]:
        return [it.video_id for it in self.items]

    def index_of(self, video_id: str) -> int:
        if not hasattr(self, "_index") or len(self._index) != len(self.items):
            self._index = {it.video_id: i for i, it in enumerate(self.items)}
        return self._index[video_id]

    def queries(self) -> tuple[list[str], list[int]]:
        """Evaluation queries: ``texts`` [Q] and ``query_video`` [Q] (index of each query's video).

        single: the first (official) caption of each video; all: every caption; paragraph: each video's
        captions joined with a space, in the order stored in the item (see the readers' ``order`` option).
        """
        texts: list[str] = []
        qv: list[int] = []
        for i, it in enumerate(self.items):
            if self.protocol == "single":
                texts.append(it.captions[0])
                qv.append(i)
            elif self.protocol == "all":
                texts.extend(it.captions)
                qv.extend([i] * len(it.captions))
            else:
                texts.append(" ".join(it.captions))
                qv.append(i)
        return texts, qv

    def train_pairs(self) -> list[tuple[int, str]]:
        """Training pairs ``(video_index, caption)``: one per caption; paragraph datasets: one per video."""
        if self.protocol == "paragraph":
            return [(i, " ".join(it.captions)) for i, it in enumerate(self.items)]
        return [(i, c) for i, it in enumerate(self.items) for c in it.captions]

    def num_captions(self) -> int:
        return sum(len(it.captions) for it in self.items)


@dataclass(frozen=True)
class Reader:
    """One dataset's reader, as the registry lists it.

    Attributes:
        name: the dataset name ``load_split`` takes ("msrvtt", ...).
        read: ``read(annotations: Path, split, ctx: ReaderContext, *, max_bad_fraction, **options) -> Split``.
        published_sizes: number of videos of each published split, keyed by ``(split, variant)``; the
            variant is None unless the dataset has several lists for a split (MSR-VTT: "9k", "1k-A", ...).
        variant: ``variant(split, options)``: which list the options select for a split (None: one list).
        annotations: "folder" (an annotation folder) or "file" (one annotation file).
        holds_out_val: validation is a seeded hold-out of training videos, so the training split is
            smaller than its published size by ``val_size``.
    """

    name: str
    read: Callable[..., Split]
    published_sizes: Mapping[tuple[str, str | None], int] = field(default_factory=dict)
    variant: Callable[[str, dict], str | None] | None = None
    annotations: str = "folder"
    holds_out_val: bool = False

    def published_size(self, split: str, options: dict) -> int | None:
        """Published number of videos of ``split`` under ``options``, or None when there is none."""
        v = self.variant(split, options) if self.variant is not None else None
        return self.published_sizes.get((split, v))


class ReaderContext:
    """State shared by one reader call: the bad-input report, the split name, the video folder's index.

    Readers record every unusable row, caption or video through it (:meth:`bad`, :meth:`caption`,
    :meth:`resolve`, :meth:`resolve_path`) and end with :meth:`finish`, which applies the thresholds.
    """

    def __init__(self, dataset: str, split: str, report: BadInputReport, videos, check_videos: bool):
        self.dataset = dataset
        self.split = split
        self.report = report
        self.videos = Path(videos) if videos is not None else None
        self.check_videos = check_videos
        self._index: dict[str, tuple[str, int]] | None = None
        self.n_bad_before = report.count(split=self.tag)

    @property
    def tag(self) -> str:
        return f"{self.dataset}/{self.split}"

    def bad(self, kind: str, item: str, reason: str, **extra) -> None:
        self.report.add(kind, item, reason, split=self.tag, **extra)

    def caption(self, text, item: str, where: str) -> str | None:
        """The caption, or None (recorded) when it is empty, not a string, or not valid UTF-8."""
        if not isinstance(text, str):
            self.bad("empty_caption", item, f"caption is not a string ({type(text).__name__}) at {where}")
            return None
        if has_surrogates(text):
            shown = text.encode("utf-8", "surrogateescape")[:60]
            self.bad("non_utf8", item, f"caption is not valid UTF-8 at {where}: {shown!r}")
            return None
        if not text.strip():
            self.bad("empty_caption", item, f"empty caption at {where}")
            return None
        return text

    def _build_index(self) -> dict[str, tuple[str, int]]:
        if self.videos is None:
            raise ValueError(f"{self.dataset}: pass videos=<directory of the video files>")
        if not self.videos.is_dir():
            raise FileNotFoundError(
                f"video directory {self.videos} does not exist; pass videos=<directory holding the "
                f"{self.dataset} video files> (or check_videos=False to build the split without them)")
        index: dict[str, tuple[str, int]] = {}
        for dirpath, _dirs, files in os.walk(self.videos):
            for name in sorted(files):
                full = os.path.join(dirpath, name)
                try:
                    size = os.stat(full).st_size
                except OSError:
                    continue
                base, ext = os.path.splitext(name)
                keys = [name]
                if ext.lower() in VIDEO_EXTS:
                    keys.append(base)  # "<id>.mp4" -> "<id>", "<name>.m4v.mp4" -> "<name>.m4v"
                for k in keys:
                    index.setdefault(k, (full, size))
        return index

    def resolve(self, video_id: str, candidates: Iterable[str], default_name: str) -> str | None:
        """Path of the video found by name in the video folder, or None (recorded as missing or empty).

        ``candidates`` are file names or stems (any video extension) looked up in that order.
        """
        if not self.check_videos:
            return str(self.videos / default_name) if self.videos is not None else default_name
        if self._index is None:
            self._index = self._build_index()
        for c in candidates:
            hit = self._index.get(c)
            if hit is not None:
                path, size = hit
                if size == 0:
                    self.bad("empty_file", video_id, f"video file is empty (0 bytes): {path}", path=path)
                    return None
                return path
        self.bad("missing_video", video_id, f"no video file for {video_id!r} in {self.videos} "
                 f"(looked for {', '.join(repr(c) for c in candidates)} with any video extension)")
        return None

    def resolve_path(self, video_id: str, rel: str) -> str | None:
        """Path of a video given by a path (relative to the video folder), or None (recorded) when it is
        missing or empty."""
        p = Path(rel)
        if not p.is_absolute():
            p = self.videos / p
        if not self.check_videos:
            return str(p)
        try:
            size = p.stat().st_size
        except OSError:
            self.bad("missing_video", video_id, f"video file does not exist: {p}", path=str(p))
            return None
        if size == 0:
            self.bad("empty_file", video_id, f"video file is empty (0 bytes): {p}", path=str(p))
            return None
        return str(p)

    def video_item(self, video_id: str, captions: list[str], candidates: Iterable[str], default_name: str, *,
                   missing: str, kind: str = "no_annotation") -> VideoItem | None:
        """The :class:`VideoItem` of a listed video, or None when it cannot be used: without captions (recorded
        as ``kind`` with the reason ``missing``) or without a usable file (recorded by :meth:`resolve`)."""
        if not captions:
            self.bad(kind, video_id, missing)
            return None
        p = self.resolve(video_id, candidates, default_name)
        return None if p is None else VideoItem(video_id, p, list(captions))

    def new_entries(self) -> list[dict]:
        """Entries this reader call recorded (those of its split after the ones present at the start)."""
        return [e for e in self.report.all_entries() if e.get("split") == self.tag][self.n_bad_before:]

    def finish(self, items: list[VideoItem], listed: int, protocol: str, meta: dict,
               max_bad_fraction: float) -> Split:
        """The :class:`Split`, after checking the bad videos and captions against ``max_bad_fraction``."""
        n_captions = sum(len(it.captions) for it in items)
        entries = self.new_entries()
        n_video_bad = sum(1 for e in entries if e["kind"] in VIDEO_KINDS)
        n_caption_bad = sum(1 for e in entries if e["kind"] in CAPTION_KINDS)
        report = self.report
        report.check(listed, what=f"videos of {self.tag}", kinds=VIDEO_KINDS, entries=entries,
                     threshold=max_bad_fraction)
        report.check(n_captions + n_caption_bad, what=f"captions of {self.tag}", kinds=CAPTION_KINDS,
                     entries=entries, threshold=max_bad_fraction)
        if n_video_bad or n_caption_bad:
            log.warning("%s: %d of %d videos and %d captions could not be used (listed in %s)",
                        self.tag, n_video_bad, listed, n_caption_bad, report.path or "the in-memory report")
        if not items:
            raise ValueError(f"{self.tag}: the split is empty")
        meta = dict(meta)
        meta.update({"listed_videos": listed, "videos": len(items), "captions": n_captions,
                     "bad_videos": n_video_bad, "bad_captions": n_caption_bad,
                     "bad_by_kind": dict(Counter(e["kind"] for e in entries))})
        return Split(self.split, self.dataset, items, protocol, meta)


# ------------------------------------------------------------------------------------------- helpers
def has_surrogates(s: str) -> bool:
    """True when ``s`` holds bytes that were not valid UTF-8 (decoded with surrogateescape)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_text(path: Path) -> str:
    """File contents as text (``.gz`` is decompressed); invalid UTF-8 bytes become lone surrogates, which
    :meth:`ReaderContext.caption` records as non-UTF-8."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", "surrogateescape")


def read_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list (handles a missing trailing newline)."""
    return [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]


_JSON_CACHE: dict[tuple, object] = {}


def read_json(path: Path):
    """Parsed JSON; the last few large files are kept (train and val read the same caption file).

    Callers must not modify the result.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _JSON_CACHE:
        if len(_JSON_CACHE) >= 3:
            _JSON_CACHE.pop(next(iter(_JSON_CACHE)))
        _JSON_CACHE[key] = json.loads(read_text(path))
    return _JSON_CACHE[key]


def need(path: Path, what: str) -> Path:
    """``path``, or FileNotFoundError naming ``what`` when it does not exist."""
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def first_existing(*paths: Path | None) -> Path | None:
    """The first of ``paths`` that exists, or None."""
    for p in paths:
        if p is not None and p.exists():
            return p
    return None


def train_or_val(ids: list[str], split: str, val_size: int, seed: int, *, dataset: str,
                 pool: list[str] | None = None) -> list[str]:
    """``ids`` of the training split ("train") or of its validation hold-out ("val"): a seeded set of
    ``val_size`` ids drawn from ``pool`` (default ``ids``), see :func:`holdout`."""
    held = holdout(ids if pool is None else pool, val_size, seed)
    if split == "val":
        if not held:
            raise ValueError(f"{dataset} has no validation split with val_size=0; set val_size > 0")
        return [i for i in ids if i in held]
    return [i for i in ids if i not in held]


def holdout(ids: list[str], val_size: int, seed: int) -> set[str]:
    """A seeded set of ``val_size`` ids, drawn from the sorted list (independent of video availability)."""
    if val_size <= 0:
        return set()
    if val_size >= len(ids):
        raise ValueError(f"val_size={val_size} must be smaller than the {len(ids)} training videos")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))[:val_size]
    return {order[i] for i in perm}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers only (dict/list/str), never code: caption pickles come from downloads."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a caption pickle")
