"""MSVD: the official 1200 / 100 / 670 lists; every caption is a query (about 41 per video).

Files: ``{train,val,test}_list.txt`` and the captions ``captions_msvd.json`` or ``raw-captions.pkl`` (read with
an unpickler that refuses any class).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Reader,
    ReaderContext,
    RestrictedUnpickler,
    Split,
    first_existing,
    need,
    read_json,
    read_list,
)

NAME = "msvd"

#: Published split sizes (videos).
PUBLISHED_SIZES = {("train", None): 1200, ("val", None): 100, ("test", None): 670}


def _captions(cpath: Path) -> dict:
    if cpath.suffix == ".pkl":
        with open(cpath, "rb") as f:
            raw = RestrictedUnpickler(f, encoding="utf-8", errors="surrogateescape").load()
        return {k: [" ".join(t) if isinstance(t, list) else t for t in v] for k, v in raw.items()}
    return read_json(cpath)


def read(ann: Path, split: str, ctx: ReaderContext, *, captions=None, max_bad_fraction=0.01) -> Split:
    """One split of MSVD. Option: ``captions`` (path of the caption file)."""
    lpath = need(ann / f"{split}_list.txt", f"MSVD {split} list")
    ids = read_list(lpath)
    cpath = Path(captions) if captions is not None else first_existing(
        ann / "captions_msvd.json", ann / "raw-captions.pkl", ann / "raw-captions.reconstructed.pkl")
    if cpath is None or not cpath.exists():
        raise FileNotFoundError(f"MSVD captions not found in {ann}: expected captions_msvd.json or "
                                "raw-captions.pkl (or pass captions=PATH)")
    data = _captions(cpath)
    items = []
    for vid in ids:
        if vid not in data:
            ctx.bad("no_annotation", vid, f"no captions for {vid} in {cpath.name}")
            continue
        caps = [c for k, t in enumerate(data[vid])
                if (c := ctx.caption(t, vid, f"{cpath.name}[{vid!r}][{k}]")) is not None]
        it = ctx.video_item(vid, caps, [vid], f"{vid}.avi", kind="no_captions",
                            missing="every caption of the video is empty or invalid")
        if it is not None:
            items.append(it)
    meta = {"files": [str(lpath), str(cpath)], "annotated_total": sum(1 for v in ids if v in data)}
    return ctx.finish(items, len(ids), "all", meta, max_bad_fraction)


READER = Reader(NAME, read, PUBLISHED_SIZES)
