"""H.264 mp4 writing, shared by the generator (:mod:`gare.data.synthetic`) and ``gare data compress``.

:func:`h264_writer` opens an mp4 with one libx264 stream (yuv420p, preset veryfast, single-threaded) and
takes frames two ways:

- ``write_rgb(img)``: a uint8 RGB numpy array, converted to YUV 4:2:0 with exact integer arithmetic
  (:func:`rgb_to_yuv420p`); with ``deterministic=True`` the bytes of the file are then the same in every
  run and process (the generator relies on it);
- ``write_frame(frame)``: a decoded PyAV frame, scaled to the stream's size by FFmpeg (bicubic).

Frame k is shown at time k / fps. Callers that replace a file use :func:`gare.io.atomic_write` around the
writer, as :func:`encode_mp4` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..io import atomic_write


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 [H * 3 // 2, W] planar YUV 4:2:0 (BT.601, limited range).

    Integer arithmetic in numpy rather than swscale, whose SIMD paths depend on buffer alignment (and
    rather than float, whose reductions may too), so the encoded bytes are the same in every run.
    """
    f = img.astype(np.int32)
    h, w = img.shape[:2]
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    q = f.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))  # 2x2 sums (exact), 4x the mean
    rs, gs, bs = q[..., 0], q[..., 1], q[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    planes = [np.clip(p, 0, 255).astype(np.uint8) for p in (y, u, v)]
    return np.concatenate([planes[0], planes[1].reshape(h // 4, w), planes[2].reshape(h // 4, w)], axis=0)


def yuv_frame(planar: np.ndarray, w: int, h: int) -> av.VideoFrame:
    """A yuv420p VideoFrame from [H * 3 // 2, W] planes, with the row padding zeroed (not left as
    uninitialized memory, which the encoder's SIMD code may read)."""
    frame = av.VideoFrame(w, h, "yuv420p")
    rows = (planar[:h], planar[h:h + h // 4].reshape(h // 2, w // 2), planar[h + h // 4:].reshape(h // 2, w // 2))
    for plane, data in zip(frame.planes, rows):
        buf = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        buf[:, :data.shape[1]] = data
        plane.update(buf.tobytes())
    return frame


class H264Stream:
    """The frames side of :func:`h264_writer`: ``write_rgb`` / ``write_frame`` append one frame each."""

    def __init__(self, container, stream, width: int, height: int, time_base: Fraction):
        self._container = container
        self._stream = stream
        self.width, self.height = width, height
        self._time_base = time_base
        self.frames = 0

    def _encode(self, frame) -> None:
        frame.pts = self.frames  # explicit timestamps: x264's rate control reads them
        frame.time_base = self._time_base
        for pkt in self._stream.encode(frame):
            self._container.mux(pkt)
        self.frames += 1

    def write_rgb(self, img: np.ndarray) -> None:
        """Append a uint8 RGB [height, width, 3] frame (exact integer YUV conversion)."""
        if img.shape != (self.height, self.width, 3) or img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [{self.height}, {self.width}, 3] frame, got {img.dtype} "
                             f"{list(img.shape)}")
        self._encode(yuv_frame(rgb_to_yuv420p(img), self.width, self.height))

    def write_frame(self, frame: av.VideoFrame) -> None:
        """Append a decoded frame, scaled to the stream's size (bicubic)."""
        self._encode(frame.reformat(width=self.width, height=self.height, format="yuv420p",
                                    interpolation="BICUBIC"))

    def flush(self) -> None:
        for pkt in self._stream.encode():
            self._container.mux(pkt)


@contextmanager
def h264_writer(path, *, width: int, height: int, fps: float, crf: int,
                deterministic: bool = False) -> Iterator[H264Stream]:
    """Write an H.264 mp4 at ``path`` (not atomically: wrap in :func:`gare.io.atomic_write`).

    Args:
        width, height: frame size in pixels (even: yuv420p).
        fps: frames per second (a fraction with denominator at most 1001 is kept exactly).
        crf: x264 constant rate factor (lower: better quality, larger files).
        deterministic: threads off everywhere (frame, slice and lookahead), no macroblock tree and a
            keyframe every 4 seconds, so the bytes are the same in every run and process; with FFmpeg's
            default threading, or with mbtree, the bytes (and decoded pixels) vary from run to run.
    """
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs an even frame size, got {width} x {height}")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format="mp4") as container:
        s = container.add_stream("libx264", rate=rate)
        s.width, s.height = int(width), int(height)
        s.pix_fmt = "yuv420p"
        s.codec_context.thread_count = 1
        options = {"crf": str(crf), "preset": "veryfast"}
        if deterministic:
            s.codec_context.thread_type = "NONE"
            options.update({"g": str(round(4 * rate)),
                            "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0"})
        s.options = options
        out = H264Stream(container, s, int(width), int(height), 1 / rate)
        yield out
        out.flush()


def encode_mp4(frames: Iterable[np.ndarray] | np.ndarray, path, *, fps: float = 8, crf: int = 20) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] as a deterministic H.264 mp4, atomically; returns ``path``."""
    frames = np.asarray(frames)
    h, w = int(frames.shape[1]), int(frames.shape[2])

    def write(tmp: Path) -> None:
        with h264_writer(tmp, width=w, height=h, fps=fps, crf=crf, deterministic=True) as out:
            for img in frames:
                out.write_rgb(img)

    return atomic_write(path, write)
