"""ActivityNet Captions paragraph-to-video retrieval: ``train.json`` for training, ``val_1`` as test.

Validation is a seeded hold-out of ``val_size`` training videos (val_1 and val_2 cover the same videos, so
neither can serve as validation for a val_1 test). Video ids come from ``train_ids.json`` / ``val_ids.json``
(or ``ce_splits/*_list.txt``); without them, from the json's keys.
"""

from __future__ import annotations

from pathlib import Path

from .base import Reader, ReaderContext, Split, first_existing, need, read_json, read_list, train_or_val

NAME = "activitynet"

#: Published split sizes (videos); validation is a hold-out, so it has none.
PUBLISHED_SIZES = {("train", None): 10009, ("test", None): 4917}


def _ids(ann: Path, split: str, test_file: str, data: dict) -> tuple[list[str], Path | None]:
    if split == "test":
        id_file = first_existing(ann / "val_ids.json", ann / "ce_splits" / f"{test_file}_list.txt")
    else:
        id_file = first_existing(ann / "train_ids.json", ann / "ce_splits" / "train_list.txt")
    if id_file is None:
        return list(data.keys()), None
    if id_file.suffix == ".json":
        return list(read_json(id_file)), id_file
    return read_list(id_file), id_file


def read(ann: Path, split: str, ctx: ReaderContext, *, test_file="val_1", val_size=500, val_seed=0,
         order="json", max_bad_fraction=0.01) -> Split:
    """One split of ActivityNet Captions.

    Options: ``test_file`` ("val_1"), ``val_size`` / ``val_seed`` (the validation hold-out), ``order``
    ("json": sentences in file order; "time": by start time).
    """
    if order not in ("json", "time"):
        raise ValueError(f"order must be 'json' or 'time', got {order!r}")
    if split == "test":
        jpath = need(ann / f"{test_file}.json", f"ActivityNet {test_file}.json")
    else:
        jpath = need(ann / "train.json", "ActivityNet train.json")
    data = read_json(jpath)
    ids, id_file = _ids(ann, split, test_file, data)
    files = [str(jpath)] + ([str(id_file)] if id_file else [])
    listed = len(ids)
    annotated_total = sum(1 for i in ids if i in data)
    if split != "test":
        ids = train_or_val(ids, split, val_size, val_seed, dataset="ActivityNet", pool=[i for i in ids if i in data])
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
        yid = pid[2:] if pid.startswith("v_") else pid
        it = ctx.video_item(pid, caps, [pid, yid], f"{pid}.mp4", kind="no_captions",
                            missing="every sentence of the video is empty or invalid")
        if it is not None:
            items.append(it)
    meta = {"files": files, "test_file": test_file, "val_size": val_size, "val_seed": val_seed,
            "order": order, "annotated_total": annotated_total}
    return ctx.finish(items, listed, "paragraph", meta, max_bad_fraction)


READER = Reader(NAME, read, PUBLISHED_SIZES, holds_out_val=True)
