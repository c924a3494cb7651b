"""Bad-input reporting: count, list and bound the inputs a run could not use.

Every video or caption the data layer cannot use (missing, empty, truncated or undecodable file, unknown
codec, an annotation row naming an absent video, an empty or non-UTF-8 caption) is recorded here with its
reason. A run continues while the bad inputs stay under a threshold (default 1% of the split) and stops
otherwise with :class:`TooManyBadInputs`, whose message says how many there were and where the list is.

A report with a ``path`` appends one JSON line per entry to that file as soon as it is recorded, so
several processes (DataLoader workers, a process pool) can share one report: :meth:`BadInputReport.count`
reads the file and so sees the entries of every process.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: Reasons the data layer records, by kind.
KINDS = {
    "missing_video": "the annotation names a video file that does not exist",
    "empty_file": "the video file has 0 bytes",
    "truncated": "the file ends before the duration its header declares",
    "undecodable": "the decoder could not read the file",
    "unknown_codec": "no decoder is available for the video stream's codec",
    "no_video_stream": "the file has no video stream",
    "bad_segment": "the requested start/end segment lies outside the video",
    "empty_caption": "a caption is empty or only whitespace",
    "non_utf8": "a caption or row is not valid UTF-8",
    "no_captions": "a video has no usable caption left",
    "no_annotation": "a split list names a video that the annotation file does not describe",
    "malformed_row": "an annotation row could not be parsed",
}

#: Kinds that concern a whole video (threshold relative to the number of videos).
VIDEO_KINDS = frozenset(
    {"missing_video", "empty_file", "truncated", "undecodable", "unknown_codec", "no_video_stream",
     "bad_segment", "no_captions", "no_annotation", "malformed_row"}
)
#: Kinds that concern one caption (threshold relative to the number of captions).
CAPTION_KINDS = frozenset({"empty_caption", "non_utf8"})

DEFAULT_THRESHOLD = 0.01


class TooManyBadInputs(RuntimeError):
    """More bad inputs than the threshold allows; the message names the count and the report file."""


class BadInputReport:
    """A list of bad inputs, optionally mirrored to a JSONL file.

    Args:
        path: file to append entries to (one JSON object per line); ``None`` keeps them in memory only.
        threshold: largest allowed fraction of bad inputs (0.01 = 1% of the split).
    """

    def __init__(self, path: str | os.PathLike | None = None, *, threshold: float = DEFAULT_THRESHOLD):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a fraction in [0, 1], got {threshold}")
        self.path = Path(path) if path is not None else None
        self.threshold = float(threshold)
        self.entries: list[dict] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def coerce(cls, report: BadInputReport | str | os.PathLike | None, *,
               threshold: float = DEFAULT_THRESHOLD) -> BadInputReport:
        """A report from a report, a path (a file, or a run directory to hold ``bad_inputs.jsonl``) or None."""
        if isinstance(report, BadInputReport):
            return report
        if report is None:
            return cls(None, threshold=threshold)
        p = Path(report)
        if p.is_dir():
            p = p / "bad_inputs.jsonl"
        return cls(p, threshold=threshold)

    def add(self, kind: str, item: str, reason: str, **extra) -> dict:
        """Record one bad input. ``kind`` is one of :data:`KINDS`; ``item`` names it (video id, row)."""
        if kind not in KINDS:
            raise ValueError(f"unknown bad-input kind {kind!r}; expected one of {sorted(KINDS)}")
        entry = {"kind": kind, "item": str(item), "reason": str(reason)}
        entry.update({k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in extra.items()})
        self.entries.append(entry)
        log.debug("bad input (%s) %s: %s", kind, item, reason)
        if self.path is not None:
            line = json.dumps(entry, ensure_ascii=True) + "\n"
            # One short write with O_APPEND: lines from several processes do not interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        return entry

    def all_entries(self) -> list[dict]:
        """Every entry: from the file when there is one (all processes), else this process's."""
        if self.path is None:
            return list(self.entries)
        return read_report(self.path)

    def count(self, kinds: Iterable[str] | None = None, *, split: str | None = None) -> int:
        """Number of entries (of the given kinds / split), across processes when the report has a file."""
        kinds = set(kinds) if kinds is not None else None
        return sum(
            1 for e in self.all_entries()
            if (kinds is None or e["kind"] in kinds) and (split is None or e.get("split") == split)
        )

    def by_kind(self) -> Counter:
        return Counter(e["kind"] for e in self.all_entries())

    def __len__(self) -> int:
        return self.count()

    def check(self, total: int, *, what: str, kinds: Iterable[str] | None = None,
              split: str | None = None, entries: list[dict] | None = None,
              threshold: float | None = None) -> None:
        """Raise :class:`TooManyBadInputs` if the bad entries exceed ``threshold * total``.

        Args:
            total: size of the population the entries come from (videos of the split, captions, ...).
                Identical entries (same kind, split, item and reason) count once.
            what: words for that population, used in the message ("videos of msrvtt/test").
            kinds: only count these kinds (default: all).
            split: only count entries recorded for this split.
            entries: count these entries instead of the report's (still filtered by kinds/split).
            threshold: use this fraction instead of the report's own.
        """
        threshold = self.threshold if threshold is None else float(threshold)
        kinds = set(kinds) if kinds is not None else None
        pool = self.all_entries() if entries is None else entries
        sel, seen = [], set()
        for e in pool:
            if (kinds is None or e["kind"] in kinds) and (split is None or e.get("split") == split):
                key = (e["kind"], e.get("split"), e["item"], e["reason"])
                if key not in seen:  # several workers may record the same failure
                    seen.add(key)
                    sel.append(e)
        n = len(sel)
        if n == 0 or n <= threshold * total:
            return
        raise TooManyBadInputs(self.summary(sel, total, what, threshold=threshold))

    def summary(self, entries: list[dict], total: int, what: str, *, threshold: float | None = None) -> str:
        threshold = self.threshold if threshold is None else threshold
        n = len(entries)
        counts = Counter(e["kind"] for e in entries)
        frac = n / max(total, 1)
        msg = (f"{n} of {total} {what} ({100 * frac:.2f}%) are bad inputs, over the "
               f"{100 * threshold:g}% threshold; by kind: "
               + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if self.path is not None:
            msg += f". The full list with reasons is in {self.path}"
        else:
            first = "; ".join(f"{e['item']}: {e['reason']}" for e in entries[:5])
            msg += f". First entries: {first}. Pass a report path (run directory) to keep the full list"
        msg += (". Fix or remove these inputs, or raise the threshold (max_bad_fraction) if losing "
                "them is acceptable.")
        return msg


def read_report(path: str | os.PathLike) -> list[dict]:
    """Entries of a ``bad_inputs.jsonl`` file ([] if it does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, encoding="ascii") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
