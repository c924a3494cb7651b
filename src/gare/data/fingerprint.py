"""What a cache built from a folder of videos depends on: :func:`dataset_fingerprint`.

Caches of anything computed from videos (the frame store, the feature cache, an index) record the
fingerprint of the videos they read and refuse to be used when it has changed. Two kinds:

- generated data (a folder written by :func:`gare.data.synthetic.generate`): the generator's manifest,
  i.e. format version, seed, number of videos and options. The files are a pure function of these (same
  values give byte-identical files), so a regenerated copy with the same manifest keeps its caches valid
  while a new format version or other options invalidate them.
- any other folder: a cheap listing hash over the video files under it (relative names, sizes and
  modification times, no content read), so adding, removing, replacing or touching a video changes it.

See docs/data.md ("Fingerprints of video folders").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .datasets import VIDEO_EXTS
from .synthetic import MANIFEST_KEYS, read_manifest


def generated_root(path) -> Path | None:
    """The generated dataset ``path`` belongs to (its root, its ``videos/`` folder or a file in either),
    or None when it is not generated data."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    for root in (p, p.parent):
        if read_manifest(root) is not None:
            return root
    return None


def generated_fingerprint(path) -> dict | None:
    """The generator fingerprint of the generated dataset ``path`` belongs to, or None."""
    root = generated_root(path)
    if root is None:
        return None
    man = read_manifest(root)
    fp = {"kind": "generated", **{k: man[k] for k in MANIFEST_KEYS}}
    fp["complete"] = bool(man.get("complete", False))
    return fp


def listing_fingerprint(folder) -> dict:
    """Hash of the video files under ``folder`` (recursive): relative names, sizes, modification times."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder {folder} does not exist; pass the folder of the video files")
    exts = set(VIDEO_EXTS)
    rows = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if os.path.splitext(name)[1].lower() not in exts:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            rows.append((os.path.relpath(full, folder).replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    rows.sort()
    h = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    return {"kind": "listing", "files": len(rows), "bytes": sum(r[1] for r in rows), "listing_sha256": h}


def dataset_fingerprint(path) -> dict:
    """What caches built from the videos at ``path`` should key on.

    Args:
        path: a folder of videos (searched recursively), a generated dataset's root or ``videos/`` folder,
            or an annotation file inside one of those.

    Returns:
        generated data: ``{"kind": "generated", "format_version", "n_videos", "seed", "options",
        "complete"}`` (the generator's manifest); otherwise ``{"kind": "listing", "files", "bytes",
        "listing_sha256"}`` over the video files' relative names, sizes and modification times. Two calls
        give equal dicts exactly when the videos are (by these measures) the same; the dict is JSON-ready.
        The folder's own path is not part of it: key on the path separately where it matters.
    """
    fp = generated_fingerprint(path)
    if fp is not None:
        return fp
    p = Path(path)
    return listing_fingerprint(p.parent if p.is_file() else p)


def describe_difference(have: dict, want: dict) -> str:
    """The first differing entries of two fingerprints, e.g. ``format_version: 1 -> 2``."""
    diffs = []
    for k in sorted(set(have) | set(want), key=lambda k: (k != "kind", k)):
        a, b = have.get(k), want.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}.{kk}: {a.get(kk)!r} -> {b.get(kk)!r}" for kk in sorted(set(a) | set(b))
                      if a.get(kk) != b.get(kk)]
        else:
            diffs.append(f"{k}: {a!r} -> {b!r}")
    return ", ".join(diffs[:4]) + (f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else "")
