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

Layout: :mod:`.base` (``Split``, ``VideoItem``, ``Reader``, ``ReaderContext``, file helpers), one module per
dataset (:mod:`.msrvtt`, :mod:`.msvd`, :mod:`.didemo`, :mod:`.activitynet`, :mod:`.jsonl`), each declaring
its published split sizes, and :mod:`.registry` (the readers by name, ``load_split``).
"""

from .base import PROTOCOLS, SPLITS, VIDEO_EXTS, Reader, ReaderContext, Split, VideoItem
from .registry import DATASETS, PUBLISHED_SIZES, READERS, get_reader, load_split

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "PUBLISHED_SIZES",
    "READERS",
    "SPLITS",
    "VIDEO_EXTS",
    "Reader",
    "ReaderContext",
    "Split",
    "VideoItem",
    "get_reader",
    "load_split",
]
