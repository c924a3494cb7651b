"""Annotation readers for MSR-VTT, MSVD, DiDeMo, ActivityNet Captions and a generic JSONL format.

``load_split(dataset, split, annotations=..., videos=...)`` returns a :class:`Split`: the videos of one
split with their captions, and the evaluation protocol that turns them into queries:

- ``"single"``: one query per video (MSR-VTT 1k-A: the caption of the JSFusion test csv);
- ``"all"``: every caption is a query for its video (MSVD, MSR-VTT full split, generic data);
- ``"paragraph"``: one query per video, its captions joined (DiDeMo, ActivityNet Captions).

Each dataset has a validation split distinct from its test split so that model selection never sees the
test set: DiDeMo and MSVD have official validation lists; MSR-VTT and ActivityNet hold out a seeded set
of training videos (``val_size`` option, default 500; ``val_seed`` default 0); JSONL files use their
``"split": "val"`` rows, or hold out training videos the same way when there are none.

Rows that name absent videos, empty or non-UTF-8 captions and list entries without annotations are
counted and recorded in a :class:`~gare.data.report.BadInputReport`; loading fails with a clear message
when they exceed ``max_bad_fraction`` (default 1%) of the split.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import pickle
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .report import CAPTION_KINDS, VIDEO_KINDS, BadInputReport

log = logging.getLogger(__name__)

DATASETS = ("msrvtt", "msvd", "didemo", "activitynet", "jsonl")
SPLITS = ("train", "val", "test")
PROTOCOLS = ("single", "all", "paragraph")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
              ".3g2", ".mts", ".m2ts", ".ogv")

#: Published sizes (videos) of the standard splits, checked by the tests and logged by the readers.
PUBLISHED_SIZES = {
    ("msrvtt", "train", "9k"): 9000,
    ("msrvtt", "train", "7k"): 7010,
    ("msrvtt", "test", "1k-A"): 1000,
    ("msrvtt", "test", "full"): 2990,
    ("msvd", "train"): 1200,
    ("msvd", "val"): 100,
    ("msvd", "test"): 670,
    ("didemo", "train"): 8392,
    ("didemo", "val"): 1065,
    ("didemo", "test"): 1004,
    ("activitynet", "train"): 10009,
    ("activitynet", "test"): 4917,
}


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


# ------------------------------------------------------------------------------------------- helpers
class _Ctx:
    """State shared by one reader call: the report, the split name, the video index."""

    def __init__(self, dataset, split, report: BadInputReport, videos, check_videos: bool):
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
        if _has_surrogates(text):
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
        """Path of the video, or None (recorded as missing or empty) when it cannot be used."""
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

    def new_entries(self) -> list[dict]:
        """Entries this reader call recorded (those of its split after the ones present at the start)."""
        return [e for e in self.report.all_entries() if e.get("split") == self.tag][self.n_bad_before:]

    def finish(self, items: list[VideoItem], listed: int, protocol: str, meta: dict,
               max_bad_fraction: float) -> Split:
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


def _has_surrogates(s: str) -> bool:
    """True when ``s`` holds bytes that were not valid UTF-8 (decoded with surrogateescape)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_text(path: Path) -> str:
    """File contents as text; invalid UTF-8 bytes become lone surrogates (caught by ``_Ctx.caption``)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", "surrogateescape")


def _read_list(path: Path) -> list[str]:
    """Non-empty stripped lines of a split list (handles a missing trailing newline)."""
    return [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()]


_JSON_CACHE: dict[tuple, object] = {}


def _read_json(path: Path):
    """Parsed JSON; the last few large files are kept (train and val read the same caption file).

    Callers must not modify the result.
    """
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _JSON_CACHE:
        if len(_JSON_CACHE) >= 3:
            _JSON_CACHE.pop(next(iter(_JSON_CACHE)))
        _JSON_CACHE[key] = json.loads(_read_text(path))
    return _JSON_CACHE[key]


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _holdout(ids: list[str], val_size: int, seed: int) -> set[str]:
    """A seeded set of ``val_size`` ids, drawn from the sorted list (independent of video availability)."""
    if val_size <= 0:
        return set()
    if val_size >= len(ids):
        raise ValueError(f"val_size={val_size} must be smaller than the {len(ids)} training videos")
    order = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(order))[:val_size]
    return {order[i] for i in perm}


def _first_existing(*paths: Path) -> Path | None:
    for p in paths:
        if p is not None and p.exists():
            return p
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers only (dict/list/str), never code: caption pickles come from downloads."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a caption pickle")


# ------------------------------------------------------------------------------------------- MSR-VTT
def _msrvtt_sentences(ann: Path, data_json, ctx: _Ctx) -> tuple[dict[str, list[str]], Path]:
    path = Path(data_json) if data_json is not None else _first_existing(
        ann / "MSRVTT_data.json", ann / "MSRVTT_data.json.gz")
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"MSR-VTT captions not found: expected MSRVTT_data.json in {ann} (or pass data_json=PATH). "
            "It is in CLIP4Clip's msrvtt_data.zip release asset.")
    data = _read_json(path)
    caps: dict[str, list[str]] = {}
    for k, s in enumerate(data["sentences"]):
        vid = s.get("video_id")
        c = ctx.caption(s.get("caption"), str(vid), f"{path.name} sentence {s.get('sen_id', k)}")
        if c is not None:
            caps.setdefault(vid, []).append(c)
    return caps, path


def _msrvtt_list(ann: Path, which: str, kind: str) -> tuple[list[str], Path]:
    names = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv", "full": "MSRVTT_test.full.csv"}
    path = Path(which) if which not in names else ann / names[which]
    _need(path, f"MSR-VTT {kind} list")
    rows = list(csv.DictReader(io.StringIO(_read_text(path))))
    return [r["video_id"].strip() for r in rows if r.get("video_id", "").strip()], path


def _load_msrvtt(ann: Path, split: str, ctx: _Ctx, *, train_list="9k", test_list="1k-A", val_size=500,
                 val_seed=0, data_json=None, max_bad_fraction=0.01) -> Split:
    meta = {"train_list": train_list, "test_list": test_list, "val_size": val_size, "val_seed": val_seed}
    if split == "test" and test_list == "1k-A":
        path = _need(ann / "MSRVTT_JSFUSION_test.csv", "MSR-VTT 1k-A test csv")
        items = []
        rows = list(csv.DictReader(io.StringIO(_read_text(path))))
        for k, r in enumerate(rows):
            vid = (r.get("video_id") or "").strip()
            if not vid:
                ctx.bad("malformed_row", f"{path.name}:{k + 2}", "row without video_id")
                continue
            c = ctx.caption(r.get("sentence"), vid, f"{path.name} line {k + 2}")
            if c is None:
                ctx.bad("no_captions", vid, "the test csv row has no usable sentence")
                continue
            p = ctx.resolve(vid, [vid], f"{vid}.mp4")
            if p is not None:
                items.append(VideoItem(vid, p, [c]))
        meta["files"] = [str(path)]
        meta["annotated_total"] = len(rows)
        return ctx.finish(items, len(rows), "single", meta, max_bad_fraction)
    if split == "test":
        if test_list != "full":
            raise ValueError(f"test_list must be '1k-A' or 'full', got {test_list!r}")
        ids, lpath = _msrvtt_list(ann, "full", "test")
        full = ids
        protocol = "all"
    else:
        ids, lpath = _msrvtt_list(ann, train_list, "train")
        full = ids
        held = _holdout(ids, val_size, val_seed)
        if split == "val":
            if not held:
                raise ValueError("MSR-VTT has no validation split with val_size=0; set val_size > 0")
            ids = [v for v in ids if v in held]
        else:
            ids = [v for v in ids if v not in held]
        protocol = "all" if (split == "train" or test_list == "full") else "single"
    caps, jpath = _msrvtt_sentences(ann, data_json, ctx)
    items = []
    for vid in ids:
        c = caps.get(vid)
        if not c:
            ctx.bad("no_annotation", vid, f"no caption for {vid} in {jpath.name}")
            continue
        p = ctx.resolve(vid, [vid], f"{vid}.mp4")
        if p is not None:
            items.append(VideoItem(vid, p, list(c)))
    meta["files"] = [str(lpath), str(jpath)]
    meta["annotated_total"] = sum(1 for v in full if caps.get(v))
    return ctx.finish(items, len(ids), protocol, meta, max_bad_fraction)


# ---------------------------------------------------------------------------------------------- MSVD
def _load_msvd(ann: Path, split: str, ctx: _Ctx, *, captions=None, max_bad_fraction=0.01) -> Split:
    lpath = _need(ann / f"{split}_list.txt", f"MSVD {split} list")
    ids = _read_list(lpath)
    cpath = Path(captions) if captions is not None else _first_existing(
        ann / "captions_msvd.json", ann / "raw-captions.pkl", ann / "raw-captions.reconstructed.pkl")
    if cpath is None or not cpath.exists():
        raise FileNotFoundError(f"MSVD captions not found in {ann}: expected captions_msvd.json or "
                                "raw-captions.pkl (or pass captions=PATH)")
    if cpath.suffix == ".pkl":
        with open(cpath, "rb") as f:
            raw = _RestrictedUnpickler(f, encoding="utf-8", errors="surrogateescape").load()
        data = {k: [" ".join(t) if isinstance(t, list) else t for t in v] for k, v in raw.items()}
    else:
        data = _read_json(cpath)
    items = []
    for vid in ids:
        if vid not in data:
            ctx.bad("no_annotation", vid, f"no captions for {vid} in {cpath.name}")
            continue
        caps = [c for k, t in enumerate(data[vid])
                if (c := ctx.caption(t, vid, f"{cpath.name}[{vid!r}][{k}]")) is not None]
        if not caps:
            ctx.bad("no_captions", vid, "every caption of the video is empty or invalid")
            continue
        p = ctx.resolve(vid, [vid], f"{vid}.avi")
        if p is not None:
            items.append(VideoItem(vid, p, caps))
    meta = {"files": [str(lpath), str(cpath)], "annotated_total": sum(1 for v in ids if v in data)}
    return ctx.finish(items, len(ids), "all", meta, max_bad_fraction)


# -------------------------------------------------------------------------------------------- DiDeMo
def _load_didemo(ann: Path, split: str, ctx: _Ctx, *, order="json", max_bad_fraction=0.01) -> Split:
    """DiDeMo paragraph-to-video retrieval (CLIP4Clip protocol: whole video, descriptions joined).

    ``order="json"`` (default) joins a video's descriptions in annotation-file order, as CLIP4Clip and
    the published numbers do; ``order="time"`` sorts them by their mean start time first.
    """
    if order not in ("json", "time"):
        raise ValueError(f"order must be 'json' or 'time', got {order!r}")
    lpath = _need(ann / f"{split}_list.txt", f"DiDeMo {split} list")
    names = _read_list(lpath)
    jpath = ann / f"{split}_data.json"
    by_video: dict[str, list[tuple[float, str]]] = {}
    files = [str(lpath)]
    if jpath.exists():
        for k, a in enumerate(_read_json(jpath)):
            vname = a.get("video")
            c = ctx.caption(a.get("description"), str(vname), f"{jpath.name}[{k}]")
            if c is None:
                continue
            times = a.get("times") or [[0, 0]]
            st = float(np.mean([t[0] for t in times])) * 5.0
            by_video.setdefault(vname, []).append((st, c))
        files.append(str(jpath))
    else:
        dump = ann / "tmass_clip4clip_dump" / f"didemo_{split}_label.csv"
        if not dump.exists():
            raise FileNotFoundError(f"DiDeMo {split} annotations not found: expected {jpath} "
                                    f"(LisaAnne/LocalizingMoments data/{split}_data.json) or {dump}")
        log.info("DiDeMo %s: %s missing, using the paragraph dump %s", split, jpath.name, dump.name)
        for r in csv.DictReader(io.StringIO(_read_text(dump))):
            vname = os.path.basename(r["video_path"])
            c = ctx.caption(r.get("text"), vname, f"{dump.name} row {vname}")
            if c is not None:
                by_video.setdefault(vname, []).append((0.0, c))
        files.append(str(dump))
    items = []
    for name in names:
        descs = by_video.get(name)
        if not descs:
            ctx.bad("no_annotation", name, f"no description for {name} in {Path(files[-1]).name}")
            continue
        if order == "time":
            descs = sorted(descs, key=lambda d: d[0])  # stable: ties keep file order
        stem = os.path.splitext(name)[0]
        p = ctx.resolve(name, [name, stem], name)
        if p is not None:
            items.append(VideoItem(name, p, [d[1] for d in descs]))
    meta = {"files": files, "order": order, "annotated_total": sum(1 for n in names if by_video.get(n))}
    return ctx.finish(items, len(names), "paragraph", meta, max_bad_fraction)


# --------------------------------------------------------------------------------------- ActivityNet
def _load_activitynet(ann: Path, split: str, ctx: _Ctx, *, test_file="val_1", val_size=500, val_seed=0,
                      order="json", max_bad_fraction=0.01) -> Split:
    """ActivityNet Captions paragraph-to-video retrieval: train.json for training, ``val_1`` as test.

    Validation is a seeded hold-out of ``val_size`` training videos (val_1 and val_2 cover the same
    videos, so neither can serve as validation for a val_1 test).
    """
    if order not in ("json", "time"):
        raise ValueError(f"order must be 'json' or 'time', got {order!r}")
    if split == "test":
        jpath = _need(ann / f"{test_file}.json", f"ActivityNet {test_file}.json")
        id_file = _first_existing(ann / "val_ids.json", ann / "ce_splits" / f"{test_file}_list.txt")
    else:
        jpath = _need(ann / "train.json", "ActivityNet train.json")
        id_file = _first_existing(ann / "train_ids.json", ann / "ce_splits" / "train_list.txt")
    data = _read_json(jpath)
    if id_file is None:
        ids = list(data.keys())
    elif id_file.suffix == ".json":
        ids = list(_read_json(id_file))
    else:
        ids = _read_list(id_file)
    files = [str(jpath)] + ([str(id_file)] if id_file else [])
    listed = len(ids)
    annotated_total = sum(1 for i in ids if i in data)
    if split != "test":
        held = _holdout([i for i in ids if i in data], val_size, val_seed)
        if split == "val":
            if not held:
                raise ValueError("ActivityNet has no validation split with val_size=0; set val_size > 0")
            ids = [i for i in ids if i in held]
            listed = len(ids)
        else:
            ids = [i for i in ids if i not in held]
            listed = len(ids)
    items = []
    for pid in ids:
        v = data.get(pid)
        if v is None:
            ctx.bad("no_annotation", pid, f"{pid} is listed in {Path(files[-1]).name} but has no entry in "
                    f"{jpath.name} (the CLIP4Clip loader skips it too)")
            continue
        sents = list(zip(v.get("timestamps") or [[0, 0]] * len(v["sentences"]), v["sentences"]))
        if order == "time":
            sents = sorted(sents, key=lambda x: x[0][0])
        caps = [c for k, (_t, s) in enumerate(sents)
                if (c := ctx.caption(s, pid, f"{jpath.name}[{pid!r}] sentence {k}")) is not None]
        if not caps:
            ctx.bad("no_captions", pid, "every sentence of the video is empty or invalid")
            continue
        yid = pid[2:] if pid.startswith("v_") else pid
        p = ctx.resolve(pid, [pid, yid], f"{pid}.mp4")
        if p is not None:
            items.append(VideoItem(pid, p, caps, start=None, end=None))
    meta = {"files": files, "test_file": test_file, "val_size": val_size, "val_seed": val_seed,
            "order": order, "annotated_total": annotated_total}
    return ctx.finish(items, listed, "paragraph", meta, max_bad_fraction)


# --------------------------------------------------------------------------------------------- JSONL
def _load_jsonl(path: Path, split: str, ctx: _Ctx, *, protocol=None, val_size=None, val_seed=0,
                max_bad_fraction=0.01) -> Split:
    """Generic format: one JSON object per line, ``{"video": path, "captions": [...], "split": "train"}``.

    Optional keys: ``"id"`` (default: the video path without extension), ``"start"``/``"end"`` (seconds).
    A row without ``"split"`` belongs to "train". Video paths are relative to ``videos`` (default: the
    JSONL file's folder). ``protocol`` defaults to "all". When no row is marked "val", a seeded hold-out
    of ``val_size`` training videos (default 5%, at least 1) serves as validation.
    """
    _need(path, "JSONL annotation file")
    protocol = protocol or "all"
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows_by_split: dict[str, list[tuple[int, dict]]] = {s: [] for s in SPLITS}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", "surrogateescape")
            try:
                row = json.loads(text)
                if not isinstance(row, dict) or "video" not in row:
                    raise ValueError("expected an object with a 'video' key")
            except ValueError as e:
                ctx.report.add("malformed_row", f"{path.name}:{lineno}", f"cannot parse row: {e}",
                               split=f"jsonl/{split}")
                continue
            s = row.get("split", "train")
            if s not in SPLITS:
                ctx.report.add("malformed_row", f"{path.name}:{lineno}",
                               f"unknown split {s!r} (expected one of {SPLITS})", split=f"jsonl/{split}")
                continue
            rows_by_split[s].append((lineno, row))
    src = split
    held: set[str] | None = None
    if split in ("train", "val") and not rows_by_split["val"]:
        ids = [_jsonl_id(r) for _, r in rows_by_split["train"]]
        n = val_size if val_size is not None else max(1, round(0.05 * len(set(ids))))
        held = _holdout(sorted(set(ids)), n, val_seed) if ids else set()
        src = "train"
    rows = rows_by_split[src]
    if held is not None:
        rows = [(ln, r) for ln, r in rows if (_jsonl_id(r) in held) == (split == "val")]
    items: dict[str, VideoItem] = {}
    for lineno, row in rows:
        vid = _jsonl_id(row)
        where = f"{path.name} line {lineno}"
        if _has_surrogates(json.dumps(row["video"])):
            ctx.bad("non_utf8", vid, f"video path is not valid UTF-8 at {where}")
            continue
        caps_in = row.get("captions", row.get("caption"))
        if isinstance(caps_in, str):
            caps_in = [caps_in]
        caps = [c for k, t in enumerate(caps_in or [])
                if (c := ctx.caption(t, vid, f"{where} caption {k}")) is not None]
        if not caps:
            ctx.bad("no_captions", vid, f"no usable caption at {where}")
            continue
        if vid in items:  # the same video on several rows: merge captions
            items[vid].captions.extend(caps)
            continue
        rel = str(row["video"])
        p = ctx.resolve_path(vid, rel)
        if p is not None:
            items[vid] = VideoItem(vid, p, caps, _opt_float(row.get("start")), _opt_float(row.get("end")))
    listed = len({_jsonl_id(r) for _, r in rows})
    meta = {"files": [str(path)], "val_from_train": held is not None, "val_seed": val_seed}
    return ctx.finish(list(items.values()), listed, protocol, meta, max_bad_fraction)


def _jsonl_id(row: dict) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    return os.path.splitext(str(row["video"]))[0]


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def _resolve_path(self: _Ctx, video_id: str, rel: str) -> str | None:
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


_Ctx.resolve_path = _resolve_path


# ------------------------------------------------------------------------------------------ dispatch
def load_split(dataset: str, split: str, *, annotations: str | os.PathLike, videos: str | os.PathLike | None = None,
               report: BadInputReport | str | os.PathLike | None = None, max_bad_fraction: float = 0.01,
               check_videos: bool = True, **options) -> Split:
    """Read one split of a dataset.

    Args:
        dataset: "msrvtt", "msvd", "didemo", "activitynet" or "jsonl".
        split: "train", "val" or "test".
        annotations: the dataset's annotation folder (the layout of ``shared/data/annotations/<dataset>``);
            for "jsonl" the .jsonl file.
        videos: folder of the video files (searched recursively; ``<id>.<any video ext>``); for "jsonl"
            the folder the rows' paths are relative to (default: the JSONL file's folder).
        report: where bad inputs are recorded (a :class:`BadInputReport`, a file, or a run directory).
        max_bad_fraction: loading fails when bad videos exceed this fraction of the split's videos (or
            bad captions of its captions).
        check_videos: False builds the split without looking at the video folder (paths are then the
            expected ones, unchecked).
        **options: per dataset. msrvtt: ``train_list`` ("9k" | "7k" | path), ``test_list`` ("1k-A" |
            "full"), ``val_size`` (500), ``val_seed`` (0), ``data_json`` (path of MSRVTT_data.json).
            msvd: ``captions`` (path). didemo: ``order`` ("json" | "time"). activitynet: ``test_file``
            ("val_1"), ``val_size`` (500), ``val_seed``, ``order``. jsonl: ``protocol`` ("all"),
            ``val_size``, ``val_seed``.

    Returns:
        The :class:`Split`; ``split.meta`` records the files, options and bad-input counts.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    rep = BadInputReport.coerce(report)
    ann = Path(annotations)
    if dataset == "jsonl":
        vdir = Path(videos) if videos is not None else ann.parent
        ctx = _Ctx(dataset, split, rep, vdir, check_videos)
        sp = _load_jsonl(ann, split, ctx, max_bad_fraction=max_bad_fraction, **options)
    else:
        if not ann.is_dir():
            raise FileNotFoundError(f"{dataset} annotation folder not found: {ann}")
        if videos is None and check_videos:
            raise ValueError(f"{dataset}: pass videos=<folder of the video files> (or check_videos=False)")
        ctx = _Ctx(dataset, split, rep, videos, check_videos)
        reader = {"msrvtt": _load_msrvtt, "msvd": _load_msvd, "didemo": _load_didemo,
                  "activitynet": _load_activitynet}[dataset]
        try:
            sp = reader(ann, split, ctx, max_bad_fraction=max_bad_fraction, **options)
        except TypeError as e:
            if "unexpected keyword" in str(e):
                raise TypeError(f"{dataset}: {e}") from e
            raise
    sp.meta.update({"dataset": dataset, "split": split, "annotations": str(ann),
                    "videos_dir": None if videos is None else str(videos), "options": dict(options)})
    key: tuple = (dataset, split)
    if dataset == "msrvtt":
        key += (options.get("test_list", "1k-A") if split == "test" else options.get("train_list", "9k"),)
    published = PUBLISHED_SIZES.get(key) if not (dataset == "msrvtt" and split == "val") \
        and not (dataset == "activitynet" and split == "val") else None
    if published is not None:
        sp.meta["published_videos"] = published
        got = sp.meta.get("annotated_total")
        if got != published:
            log.warning("%s/%s: the annotations describe %s videos, the published split has %d%s", dataset,
                        split, got, published, " (before the validation hold-out)" if split == "train"
                        and dataset in ("msrvtt", "activitynet") else "")
    return sp
