"""Reading the indexed files: frame sampling for the encoder, container duration, thumbnail strips.

:func:`decode_video` never raises for a damaged file: it returns a :class:`DecodedVideo` whose ``error``
says what is wrong, so one bad file cannot stop an indexing run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from ..data.video import VideoDecodeError, resize_center_crop, sample_frames


@dataclass
class DecodedVideo:
    """One file, sampled for the encoder (or the reason it could not be)."""

    path: Path
    rel: str  # path inside the indexed folder
    size: int
    mtime_ns: int
    frames: np.ndarray | None = None  # uint8 [F, S, S, 3]
    mask: np.ndarray | None = None  # bool [F]
    thumb: bytes | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    error: tuple[str, str] | None = None  # (kind, reason)


def probe_duration(path: Path) -> float | None:
    """Container duration in seconds (None when the file does not say)."""
    try:
        with av.open(str(path)) as c:
            if c.duration:
                return float(c.duration) / av.time_base
            for s in c.streams.video:
                if s.duration and s.time_base:
                    return float(s.duration * s.time_base)
    except Exception:  # noqa: BLE001 - duration is informative only
        return None
    return None


def thumbnail_strip(frames: np.ndarray, n: int = 6, height: int = 96, quality: int = 80) -> bytes:
    """uint8 frames ``[T, H, W, 3]`` -> JPEG bytes of up to ``n`` evenly spaced frames side by side,
    each ``height`` pixels high (aspect kept, at most 2:1 wide)."""
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"thumbnail_strip needs frames [T, H, W, 3] with T >= 1, got {frames.shape}")
    idx = np.unique(np.linspace(0, len(frames) - 1, num=min(n, len(frames))).round().astype(np.int64))
    h, w = frames.shape[1:3]
    tw = int(min(2 * height, max(1, round(w * height / max(1, h)))))
    strip = Image.new("RGB", (tw * len(idx), height))
    for j, i in enumerate(idx):
        im = Image.fromarray(np.ascontiguousarray(frames[i]))
        scale = max(tw / w, height / h)  # cover the tile, then center-crop
        sw, sh = max(tw, round(w * scale)), max(height, round(h * scale))
        im = im.resize((sw, sh), Image.BICUBIC)
        left, top = (sw - tw) // 2, (sh - height) // 2
        strip.paste(im.crop((left, top, left + tw, top + height)), (j * tw, 0))
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_video(job: tuple[Path, str], *, framerate: float, max_frames: int, decoder: str, image_size: int,
                 thumb_frames: int = 6, thumb_height: int = 96) -> DecodedVideo:
    """Sample ``max_frames`` frames at ``framerate`` from ``job = (path, rel)``, resized to ``image_size``,
    plus a thumbnail strip and the container duration. Errors go into ``.error``, never raised."""
    path, rel = job
    try:
        st = path.stat()
    except OSError as e:
        return DecodedVideo(path, rel, 0, 0, error=("missing_video", str(e)))
    item = DecodedVideo(path, rel, st.st_size, st.st_mtime_ns)
    try:
        frames, mask = sample_frames(path, framerate=framerate, max_frames=max_frames, decoder=decoder, threads=1)
        if not mask.any():
            raise VideoDecodeError(path, "no frame could be sampled", "undecodable")
        item.height, item.width = int(frames.shape[1]), int(frames.shape[2])
        item.thumb = thumbnail_strip(frames[mask], n=thumb_frames, height=thumb_height)
        item.frames = resize_center_crop(frames, image_size)
        item.mask = mask.astype(bool)
        item.duration = probe_duration(path)
    except VideoDecodeError as e:
        item.error = (e.kind, e.reason)
    except Exception as e:  # noqa: BLE001 - a damaged file must never stop indexing
        item.error = ("undecodable", f"{type(e).__name__}: {e}")
    return item
