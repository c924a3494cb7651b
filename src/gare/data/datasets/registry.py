"""The readers by dataset name, and :func:`load_split`, which dispatches to them.

To add a dataset: write ``datasets/<name>.py`` with a ``read(annotations, split, ctx, *, max_bad_fraction,
**options) -> Split`` function and a ``READER = Reader(...)`` that declares its published split sizes, then
list its module in :data:`READERS` below (docs/data.md, "Annotations").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..report import BadInputReport
from . import activitynet, didemo, jsonl, msrvtt, msvd
from .base import SPLITS, Reader, ReaderContext, Split

log = logging.getLogger(__name__)

#: name -> reader, in documentation order.
READERS: dict[str, Reader] = {m.READER.name: m.READER for m in (msrvtt, msvd, didemo, activitynet, jsonl)}
DATASETS = tuple(READERS)

#: Published sizes (videos) of the standard splits, ``(dataset, split[, list])`` -> videos, gathered from
#: the readers' declarations; checked by the tests and logged by :func:`load_split`.
PUBLISHED_SIZES = {(name, split) + ((v,) if v is not None else ()): n
                   for name, r in READERS.items() for (split, v), n in r.published_sizes.items()}


def get_reader(dataset: str) -> Reader:
    """The reader of ``dataset``; ValueError naming the known datasets otherwise."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    return READERS[dataset]


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
    reader = get_reader(dataset)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    rep = BadInputReport.coerce(report)
    ann = Path(annotations)
    if reader.annotations == "file":
        vdir = Path(videos) if videos is not None else ann.parent
    else:
        if not ann.is_dir():
            raise FileNotFoundError(f"{dataset} annotation folder not found: {ann}")
        if videos is None and check_videos:
            raise ValueError(f"{dataset}: pass videos=<folder of the video files> (or check_videos=False)")
        vdir = videos
    ctx = ReaderContext(dataset, split, rep, vdir, check_videos)
    try:
        sp = reader.read(ann, split, ctx, max_bad_fraction=max_bad_fraction, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise TypeError(f"{dataset}: {e}") from e
        raise
    sp.meta.update({"dataset": dataset, "split": split, "annotations": str(ann),
                    "videos_dir": None if videos is None else str(videos), "options": dict(options)})
    published = reader.published_size(split, options)
    if published is not None:
        sp.meta["published_videos"] = published
        got = sp.meta.get("annotated_total")
        if got != published:
            log.warning("%s/%s: the annotations describe %s videos, the published split has %d%s", dataset,
                        split, got, published,
                        " (before the validation hold-out)" if split == "train" and reader.holds_out_val else "")
    return sp
