"""MSR-VTT: train 9k (or 7k) with a seeded validation hold-out; test 1k-A (JSFusion csv) or the full split.

Files (the layout of ``shared/data/annotations/msrvtt``): ``MSRVTT_train.9k.csv``, ``MSRVTT_train.7k.csv``,
``MSRVTT_JSFUSION_test.csv``, ``MSRVTT_test.full.csv`` and the captions ``MSRVTT_data.json`` (or ``.json.gz``;
CLIP4Clip's msrvtt_data.zip release asset).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .base import Reader, ReaderContext, Split, VideoItem, first_existing, need, read_json, read_text, train_or_val

NAME = "msrvtt"

#: Published split sizes (videos), keyed by (split, list): train 9k/7k, test 1k-A/full.
PUBLISHED_SIZES = {
    ("train", "9k"): 9000,
    ("train", "7k"): 7010,
    ("test", "1k-A"): 1000,
    ("test", "full"): 2990,
}


def variant(split: str, options: dict) -> str:
    """Which list a split reads: the test list for "test", the training list otherwise."""
    return options.get("test_list", "1k-A") if split == "test" else options.get("train_list", "9k")


def _sentences(ann: Path, data_json, ctx: ReaderContext) -> tuple[dict[str, list[str]], Path]:
    path = Path(data_json) if data_json is not None else first_existing(
        ann / "MSRVTT_data.json", ann / "MSRVTT_data.json.gz")
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"MSR-VTT captions not found: expected MSRVTT_data.json in {ann} (or pass data_json=PATH). "
            "It is in CLIP4Clip's msrvtt_data.zip release asset.")
    data = read_json(path)
    caps: dict[str, list[str]] = {}
    for k, s in enumerate(data["sentences"]):
        vid = s.get("video_id")
        c = ctx.caption(s.get("caption"), str(vid), f"{path.name} sentence {s.get('sen_id', k)}")
        if c is not None:
            caps.setdefault(vid, []).append(c)
    return caps, path


def _video_list(ann: Path, which: str, kind: str) -> tuple[list[str], Path]:
    names = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv", "full": "MSRVTT_test.full.csv"}
    path = Path(which) if which not in names else ann / names[which]
    need(path, f"MSR-VTT {kind} list")
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    return [r["video_id"].strip() for r in rows if r.get("video_id", "").strip()], path


def _read_1ka_test(ann: Path, ctx: ReaderContext, meta: dict, max_bad_fraction: float) -> Split:
    path = need(ann / "MSRVTT_JSFUSION_test.csv", "MSR-VTT 1k-A test csv")
    items = []
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
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


def read(ann: Path, split: str, ctx: ReaderContext, *, train_list="9k", test_list="1k-A", val_size=500,
         val_seed=0, data_json=None, max_bad_fraction=0.01) -> Split:
    """One split of MSR-VTT.

    Options: ``train_list`` ("9k" | "7k" | path of a csv), ``test_list`` ("1k-A": one query per video, the
    csv's sentence; "full": every caption), ``val_size`` / ``val_seed`` (validation: a seeded hold-out of
    training videos), ``data_json`` (path of MSRVTT_data.json).
    """
    meta = {"train_list": train_list, "test_list": test_list, "val_size": val_size, "val_seed": val_seed}
    if split == "test" and test_list == "1k-A":
        return _read_1ka_test(ann, ctx, meta, max_bad_fraction)
    if split == "test":
        if test_list != "full":
            raise ValueError(f"test_list must be '1k-A' or 'full', got {test_list!r}")
        ids, lpath = _video_list(ann, "full", "test")
        full = ids
        protocol = "all"
    else:
        ids, lpath = _video_list(ann, train_list, "train")
        full = ids
        ids = train_or_val(ids, split, val_size, val_seed, dataset="MSR-VTT")
        protocol = "all" if (split == "train" or test_list == "full") else "single"
    caps, jpath = _sentences(ann, data_json, ctx)
    items = [it for vid in ids if (it := ctx.video_item(vid, caps.get(vid, []), [vid], f"{vid}.mp4",
                                                        missing=f"no caption for {vid} in {jpath.name}"))]
    meta["files"] = [str(lpath), str(jpath)]
    meta["annotated_total"] = sum(1 for v in full if caps.get(v))
    return ctx.finish(items, len(ids), protocol, meta, max_bad_fraction)


READER = Reader(NAME, read, PUBLISHED_SIZES, variant=variant, holds_out_val=True)
