"""Generic annotations: one JSON object per line, ``{"video": path, "captions": [...], "split": "train"}``.

Optional keys: ``"id"`` (default: the video path without extension), ``"start"``/``"end"`` (seconds). A row
without ``"split"`` belongs to "train". The generated moving-shapes dataset (:mod:`gare.data.synthetic`)
is read with this reader.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import PROTOCOLS, SPLITS, Reader, ReaderContext, Split, VideoItem, has_surrogates, holdout, need

NAME = "jsonl"

#: A generic file has no published sizes.
PUBLISHED_SIZES: dict = {}


def row_id(row: dict) -> str:
    """A row's video id: its ``"id"``, or its video path without extension."""
    if row.get("id") is not None:
        return str(row["id"])
    return os.path.splitext(str(row["video"]))[0]


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def _rows_by_split(path: Path, split: str, ctx: ReaderContext) -> dict[str, list[tuple[int, dict]]]:
    """``split name -> [(line number, row)]``; unparsable rows and unknown splits are recorded."""
    rows: dict[str, list[tuple[int, dict]]] = {s: [] for s in SPLITS}
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
            rows[s].append((lineno, row))
    return rows


def read(path: Path, split: str, ctx: ReaderContext, *, protocol=None, val_size=None, val_seed=0,
         max_bad_fraction=0.01) -> Split:
    """One split of a JSONL file.

    Video paths are relative to the context's video folder (default: the file's folder). ``protocol``
    defaults to "all". When no row is marked "val", a seeded hold-out of ``val_size`` training videos
    (default 5%, at least 1) serves as validation.
    """
    need(path, "JSONL annotation file")
    protocol = protocol or "all"
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rows_by_split = _rows_by_split(path, split, ctx)
    src = split
    held: set[str] | None = None
    if split in ("train", "val") and not rows_by_split["val"]:
        ids = [row_id(r) for _, r in rows_by_split["train"]]
        n = val_size if val_size is not None else max(1, round(0.05 * len(set(ids))))
        held = holdout(sorted(set(ids)), n, val_seed) if ids else set()
        src = "train"
    rows = rows_by_split[src]
    if held is not None:
        rows = [(ln, r) for ln, r in rows if (row_id(r) in held) == (split == "val")]
    items: dict[str, VideoItem] = {}
    for lineno, row in rows:
        vid = row_id(row)
        where = f"{path.name} line {lineno}"
        if has_surrogates(json.dumps(row["video"])):
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
        p = ctx.resolve_path(vid, str(row["video"]))
        if p is not None:
            items[vid] = VideoItem(vid, p, caps, _opt_float(row.get("start")), _opt_float(row.get("end")))
    listed = len({row_id(r) for _, r in rows})
    meta = {"files": [str(path)], "val_from_train": held is not None, "val_seed": val_seed}
    return ctx.finish(list(items.values()), listed, protocol, meta, max_bad_fraction)


READER = Reader(NAME, read, PUBLISHED_SIZES, annotations="file")
