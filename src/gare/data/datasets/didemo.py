"""DiDeMo paragraph-to-video retrieval (CLIP4Clip protocol: the whole video, its descriptions joined).

Files: ``{train,val,test}_list.txt`` and ``{split}_data.json`` (LisaAnne/LocalizingMoments), or, without the
json, the T-MASS paragraph dump ``tmass_clip4clip_dump/didemo_{split}_label.csv``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import numpy as np

from .base import Reader, ReaderContext, Split, need, read_json, read_list, read_text

log = logging.getLogger(__name__)

NAME = "didemo"

#: Published split sizes (videos).
PUBLISHED_SIZES = {("train", None): 8392, ("val", None): 1065, ("test", None): 1004}


def _descriptions(ann: Path, split: str, ctx: ReaderContext) -> tuple[dict[str, list[tuple[float, str]]], list[str]]:
    """video name -> [(mean start time in seconds, description)] in file order, and the files read."""
    jpath = ann / f"{split}_data.json"
    by_video: dict[str, list[tuple[float, str]]] = {}
    if jpath.exists():
        for k, a in enumerate(read_json(jpath)):
            vname = a.get("video")
            c = ctx.caption(a.get("description"), str(vname), f"{jpath.name}[{k}]")
            if c is None:
                continue
            times = a.get("times") or [[0, 0]]
            st = float(np.mean([t[0] for t in times])) * 5.0
            by_video.setdefault(vname, []).append((st, c))
        return by_video, [str(jpath)]
    dump = ann / "tmass_clip4clip_dump" / f"didemo_{split}_label.csv"
    if not dump.exists():
        raise FileNotFoundError(f"DiDeMo {split} annotations not found: expected {jpath} "
                                f"(LisaAnne/LocalizingMoments data/{split}_data.json) or {dump}")
    log.info("DiDeMo %s: %s missing, using the paragraph dump %s", split, jpath.name, dump.name)
    for r in csv.DictReader(io.StringIO(read_text(dump))):
        vname = os.path.basename(r["video_path"])
        c = ctx.caption(r.get("text"), vname, f"{dump.name} row {vname}")
        if c is not None:
            by_video.setdefault(vname, []).append((0.0, c))
    return by_video, [str(dump)]


def read(ann: Path, split: str, ctx: ReaderContext, *, order="json", max_bad_fraction=0.01) -> Split:
    """One split of DiDeMo.

    ``order="json"`` (default) joins a video's descriptions in annotation-file order, as CLIP4Clip and
    the published numbers do; ``order="time"`` sorts them by their mean start time first.
    """
    if order not in ("json", "time"):
        raise ValueError(f"order must be 'json' or 'time', got {order!r}")
    lpath = need(ann / f"{split}_list.txt", f"DiDeMo {split} list")
    names = read_list(lpath)
    by_video, ann_files = _descriptions(ann, split, ctx)
    files = [str(lpath)] + ann_files
    items = []
    for name in names:
        descs = by_video.get(name, [])
        if order == "time":
            descs = sorted(descs, key=lambda d: d[0])  # stable: ties keep file order
        it = ctx.video_item(name, [d[1] for d in descs], [name, os.path.splitext(name)[0]], name,
                            missing=f"no description for {name} in {Path(files[-1]).name}")
        if it is not None:
            items.append(it)
    meta = {"files": files, "order": order, "annotated_total": sum(1 for n in names if by_video.get(n))}
    return ctx.finish(items, len(names), "paragraph", meta, max_bad_fraction)


READER = Reader(NAME, read, PUBLISHED_SIZES)
