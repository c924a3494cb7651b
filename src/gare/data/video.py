"""Video decoding, frame sampling and frame transforms.

Sampling follows the field's convention (CLIP4Clip and descendants): take frames at ``framerate`` frames
per second inside the window ``[start, end)`` (the whole video by default), i.e. at times
``start + k / framerate``; if that gives more than ``max_frames`` frames keep ``max_frames`` of them chosen
uniformly (``linspace(0, n - 1, max_frames)`` rounded down); if it gives fewer, pad with black frames and
mark them False in the mask. The frame shown at time ``t`` is the last decoded frame whose timestamp is
``<= t``.

Backends: ``"pyav"`` (default; FFmpeg through PyAV), ``"opencv"`` (cv2.VideoCapture) and ``"decord"``
(optional, imported only when asked for). The decoder and the frame rate change what the model sees, so
callers record them in run metadata (:func:`sampling_settings`).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

log = logging.getLogger(__name__)

DECODERS = ("pyav", "decord", "opencv")  # the values of data.decoder
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A file shorter than its declared duration by more than this (seconds, and fraction of the window)
# is reported as truncated.
_TRUNCATION_TOLERANCE_S = 1.0
_TRUNCATION_TOLERANCE_FRAC = 0.1
_EPS = 1e-6


class VideoDecodeError(RuntimeError):
    """A video file could not be read.

    Attributes:
        path: the file.
        reason: human-readable cause.
        kind: one of the bad-input kinds of :mod:`gare.data.report` (``missing_video``, ``empty_file``,
            ``truncated``, ``undecodable``, ``unknown_codec``, ``no_video_stream``, ``bad_segment``).
    """

    def __init__(self, path, reason: str, kind: str = "undecodable"):
        self.path = str(path)
        self.reason = str(reason)
        self.kind = kind
        super().__init__(f"cannot decode video {self.path}: {self.reason}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.reason, self.kind))


def sampling_settings(*, framerate: float, max_frames: int, decoder: str, size: int | None = None) -> dict:
    """The settings that determine sampled frames, for run metadata and frame stores."""
    return {"framerate": float(framerate), "max_frames": int(max_frames), "decoder": str(decoder),
            "size": None if size is None else int(size)}


def sample_times(duration: float, *, framerate: float = 1.0, max_frames: int = 12,
                 start: float | None = None, end: float | None = None) -> np.ndarray:
    """Sampling times in seconds (float64 [n], n <= max_frames) for a video of ``duration`` seconds.

    Times are ``start + k / framerate`` for every k with time < end (end clipped to the duration), then
    ``max_frames`` of them chosen uniformly when there are more. Empty when the window is empty.
    """
    if framerate <= 0:
        raise ValueError(f"framerate must be > 0, got {framerate}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    s = 0.0 if start is None else max(0.0, float(start))
    e = float(duration) if end is None else min(float(end), float(duration))
    if e <= s:
        return np.zeros(0)
    n = int(math.ceil((e - s) * framerate - 1e-9))
    t = s + np.arange(n, dtype=np.float64) / framerate
    if n > max_frames:
        t = t[np.linspace(0, n - 1, num=max_frames).astype(np.int64)]
    return t


def sample_frames(path, *, framerate: float = 1.0, max_frames: int = 12, start: float | None = None,
                  end: float | None = None, decoder: str = "pyav", size: int | None = None,
                  threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Decode and sample frames of one video.

    Args:
        path: video file.
        framerate: frames per second to sample at before the uniform subsampling to ``max_frames``.
        max_frames: F, the number of frames returned (padded when the video gives fewer).
        start, end: optional segment in seconds (ActivityNet / DiDeMo moments); end is clipped to the video.
        decoder: "pyav" (default), "opencv" or "decord" (the recipe key ``data.decoder``).
        size: if given, frames are resized (bicubic, short side = size) and center-cropped to size x size.
        threads: decoder threads (pyav); 1 suits process pools, 0 lets FFmpeg choose.

    Returns:
        frames: uint8 [F, H, W, 3] RGB (H = W = size when size is given); padding frames are 0.
        mask: bool [F], True for real frames. F == max_frames always.

    Raises:
        VideoDecodeError: missing, empty, truncated or undecodable file, unknown codec, no video stream,
            or a segment outside the video.
    """
    if decoder not in SAMPLERS:
        raise ValueError(f"unknown video decoder {decoder!r}; choose one of {DECODERS}")
    if framerate <= 0:
        raise ValueError(f"framerate must be > 0, got {framerate}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if start is not None and end is not None and end <= start:
        raise VideoDecodeError(path, f"empty segment: end {end} s <= start {start} s", "bad_segment")
    check_file(path)
    if decoder == "pyav":
        frames = SAMPLERS[decoder](path, framerate, max_frames, start, end, threads)
    else:
        frames = SAMPLERS[decoder](path, framerate, max_frames, start, end)
    return _finish(frames, max_frames, size)


def check_file(path) -> None:
    """Raise :class:`VideoDecodeError` (missing_video / empty_file) unless ``path`` is a non-empty file."""
    p = Path(path)
    if not p.exists():
        raise VideoDecodeError(path, "file does not exist", "missing_video")
    if not p.is_file():
        raise VideoDecodeError(path, "not a regular file", "missing_video")
    if p.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)", "empty_file")


def _finish(frames: list[np.ndarray], max_frames: int, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(frames)
    shapes = {f.shape for f in frames}
    if size is not None:
        arr = np.concatenate([resize_center_crop(f[None], size) for f in frames]) if len(shapes) > 1 \
            else resize_center_crop(np.stack(frames), size)
    else:
        if len(shapes) > 1:  # resolution changes mid-stream: bring every frame to the first one's size
            h, w = frames[0].shape[:2]
            frames = [f if f.shape[:2] == (h, w) else _resize_to(f, h, w) for f in frames]
        arr = np.stack(frames)
    out = np.zeros((max_frames,) + arr.shape[1:], dtype=np.uint8)
    out[:n] = arr
    mask = np.zeros(max_frames, dtype=bool)
    mask[:n] = True
    return out, mask


class _Selector:
    """Streams (time, handle) pairs and keeps, for each target time, the last frame at or before it."""

    def __init__(self, targets: np.ndarray):
        self.targets = targets
        self.k = 0
        self.chosen: list = [None] * len(targets)
        self.prev = None
        self.prev_t = None
        self.last_t = None

    @property
    def done(self) -> bool:
        return self.k >= len(self.targets)

    def push(self, t: float, handle) -> None:
        while self.k < len(self.targets) and t > self.targets[self.k] + _EPS:
            # This frame is after the target: the previous one is shown at the target time; a target
            # before the very first frame gets the first frame.
            self.chosen[self.k] = self.prev if self.prev is not None else handle
            self.k += 1
        self.prev, self.prev_t, self.last_t = handle, t, t

    def finish(self) -> None:
        while self.k < len(self.targets) and self.prev is not None:
            self.chosen[self.k] = self.prev
            self.k += 1


def _window_and_targets(path, duration: float | None, framerate, max_frames, start, end):
    if duration is None or duration <= 0:
        raise VideoDecodeError(path, "the container declares no duration and no frames were found",
                               "undecodable")
    if start is not None and start >= duration:
        raise VideoDecodeError(path, f"segment starts at {start:.2f} s, at or after the end of the "
                               f"{duration:.2f} s video", "bad_segment")
    targets = sample_times(duration, framerate=framerate, max_frames=max_frames, start=start, end=end)
    if len(targets) == 0:
        raise VideoDecodeError(path, f"segment [{start}, {end}] s selects no frame of the {duration:.2f} s "
                               "video", "bad_segment")
    e = duration if end is None else min(float(end), duration)
    s = 0.0 if start is None else max(0.0, float(start))
    return targets, s, e


def _check_truncation(path, sel: _Selector, s: float, e: float, frame_dur: float) -> None:
    if sel.last_t is None:
        raise VideoDecodeError(path, "no frame could be decoded", "undecodable")
    covered = sel.last_t + frame_dur
    tol = max(_TRUNCATION_TOLERANCE_S, _TRUNCATION_TOLERANCE_FRAC * (e - s))
    if covered < e - tol:
        raise VideoDecodeError(
            path, f"truncated: frames stop at {covered:.2f} s but the header declares {e:.2f} s", "truncated")


# ----------------------------------------------------------------------------------------------- PyAV
def _sample_pyav(path, framerate, max_frames, start, end, threads) -> list[np.ndarray]:
    for allow_seek in (True, False):
        container = _pyav_open(path)
        try:
            frames = _sample_pyav_open(container, path, framerate, max_frames, start, end, threads, allow_seek)
        finally:
            container.close()
        if frames is not None:
            return frames
    raise AssertionError("unreachable")  # pragma: no cover


def _pyav_open(path):
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as e:
        raise VideoDecodeError(path, "not a readable video container (invalid data); the file may be "
                               "truncated, damaged or not a video", "undecodable") from e
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(path, f"cannot open: {e}", "undecodable") from e


def pyav_duration(container, stream) -> float | None:
    """Duration in seconds a PyAV video stream (or else its container) declares, or None."""
    cands = []
    tb = stream.time_base
    if stream.duration is not None and tb is not None:
        cands.append(float(stream.duration * tb))
    rate = stream.average_rate or stream.base_rate
    if stream.frames and rate:
        cands.append(stream.frames / float(rate))
    if cands:
        return max(cands)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _sample_pyav_open(container, path, framerate, max_frames, start, end, threads, allow_seek):
    """Sampled RGB frames, or None if a seek overshot the window start (caller retries without seeking)."""
    if not container.streams.video:
        raise VideoDecodeError(path, "the file has no video stream", "no_video_stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        tag = _avi_fourcc(path)
        raise VideoDecodeError(path, "no decoder for the video codec"
                               + (f" (fourcc {tag!r})" if tag else ""), "unknown_codec")
    stream.codec_context.thread_count = int(threads)
    if threads != 1:
        stream.thread_type = "AUTO"
    tb = float(stream.time_base) if stream.time_base is not None else None
    st0 = float(stream.start_time * stream.time_base) if stream.start_time is not None and tb else 0.0
    duration = pyav_duration(container, stream)
    if duration is None:
        duration = _pyav_demux_duration(path)
    targets, s, e = _window_and_targets(path, duration, framerate, max_frames, start, end)
    rate = stream.average_rate or stream.base_rate
    frame_dur = 1.0 / float(rate) if rate else 0.04

    seeked = False
    if allow_seek and s > 2.0 and tb:
        try:
            container.seek(int((s + st0) / tb), stream=stream, backward=True, any_frame=False)
            seeked = True
        except av.error.FFmpegError:
            return None

    sel = _Selector(targets)
    n_dec = 0
    prev_time = None
    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                t = float(frame.time) - st0
            else:
                t = (prev_time + frame_dur) if prev_time is not None else 0.0
            if seeked and n_dec == 0 and t > s + _EPS:
                return None  # the seek landed after the window start (no usable index)
            prev_time = t
            n_dec += 1
            sel.push(t, frame)
            if sel.done:
                break
    except av.error.FFmpegError as err:
        if n_dec == 0:
            raise VideoDecodeError(path, f"decoding failed: {err}", "undecodable") from err
        log.debug("decoding of %s stopped after %d frames: %s", path, n_dec, err)
    if not sel.done:
        _check_truncation(path, sel, s, e, frame_dur)
        sel.finish()
    return _to_rgb(path, sel.chosen)


def _pyav_demux_duration(path) -> float | None:
    last = None
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for pkt in c.demux(stream):
            if pkt.pts is not None and pkt.size:
                t = float(pkt.pts * stream.time_base)
                last = t if last is None else max(last, t)
    return None if last is None else last + 1e-3


def _to_rgb(path, chosen: list) -> list[np.ndarray]:
    cache: dict[int, np.ndarray] = {}
    out = []
    for fr in chosen:
        key = id(fr)
        if key not in cache:
            try:
                cache[key] = fr.to_ndarray(format="rgb24")
            except Exception as e:  # pixel formats swscale cannot convert
                raise VideoDecodeError(path, f"cannot convert frame to RGB: {e}", "undecodable") from e
        out.append(cache[key])
    return out


def _avi_fourcc(path) -> str | None:
    """The video fourcc of an AVI file's first stream header, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        i = head.find(b"vids")
        if i >= 0:
            return head[i + 4:i + 8].decode("latin-1")
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------- OpenCV
def _sample_opencv(path, framerate, max_frames, start, end) -> list[np.ndarray]:
    import cv2  # lazy on purpose: OpenCV is optional (only decoder="opencv" needs it)

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            tag = _avi_fourcc(path)
            raise VideoDecodeError(path, "OpenCV cannot open the file (unknown codec, not a video, or "
                                   "truncated)" + (f"; fourcc {tag!r}" if tag else ""), "undecodable")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
        if fps <= 0 or count <= 0:
            raise VideoDecodeError(path, "OpenCV reports no frame rate or frame count", "undecodable")
        duration = count / fps
        targets, s, e = _window_and_targets(path, duration, framerate, max_frames, start, end)
        frame_dur = 1.0 / fps
        if s > 2.0:
            cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, s - 1.0) * 1000.0)
        sel = _Selector(targets)
        # OpenCV gives a frame's pixels only right after grabbing it, so decide at grab time whether the
        # frame can be the last one at or before the next target (exact for constant frame rates; after a
        # variable-rate gap the first frame past the target is used).
        stale = False
        first = True
        while not sel.done:
            if not cap.grab():
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if first and s > 2.0 and t > s + _EPS:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # the seek overshot: decode from the beginning
                first = False
                continue
            first = False
            if t + frame_dur <= sel.targets[sel.k] + _EPS:
                stale, sel.last_t = True, t
                continue
            ok, img = cap.retrieve()
            if not ok:
                break
            if stale:
                sel.prev = None
            stale = False
            sel.push(t, cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        if not sel.done:
            _check_truncation(path, sel, s, e, frame_dur)
            sel.finish()
        if any(c is None for c in sel.chosen):
            raise VideoDecodeError(path, "OpenCV returned no frame for a sampling time", "undecodable")
        return list(sel.chosen)
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------- decord
def _sample_decord(path, framerate, max_frames, start, end) -> list[np.ndarray]:
    try:
        import decord  # lazy on purpose: decord is optional (only decoder="decord" needs it)
    except ImportError as e:
        raise ImportError(
            "decoder='decord' needs the optional package decord (pip install decord); "
            "use decoder='pyav' (default) or 'opencv' otherwise") from e
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises its own DECORDError
        raise VideoDecodeError(path, f"decord cannot open the file: {e}", "undecodable") from e
    n = len(vr)
    if n == 0:
        raise VideoDecodeError(path, "decord found no frames", "undecodable")
    stamps = np.asarray(vr.get_frame_timestamp(range(n)))[:, 0]
    fps = vr.get_avg_fps() or (n / max(stamps[-1], 1e-3))
    duration = max(n / fps, float(stamps[-1]) + 1.0 / fps)
    targets, s, e = _window_and_targets(path, duration, framerate, max_frames, start, end)
    idx = np.clip(np.searchsorted(stamps, targets + _EPS, side="right") - 1, 0, n - 1)
    try:
        batch = vr.get_batch(idx.tolist()).asnumpy()
    except Exception as err:
        raise VideoDecodeError(path, f"decord failed to decode: {err}", "undecodable") from err
    return list(batch)


# ----------------------------------------------------------------------------------------- transforms
def _resize_to(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return t.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()


def _resize_short_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [F, 3, H, W] -> uint8 [F, 3, H', W'] with min(H', W') == size (bicubic, antialiased)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    if h <= w:
        nh, nw = size, max(size, int(round(w * size / h)))
    else:
        nh, nw = max(size, int(round(h * size / w))), size
    y = F.interpolate(x.float(), size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [F, H, W, 3] -> uint8 [F, size, size, 3]: bicubic resize of the short side, center crop.

    The frame store and :class:`FrameTransform` share this function, so frames read from a store equal
    frames decoded and transformed directly.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    x = _center_crop(_resize_short_uint8(x, size), size)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


AUGMENTATIONS = ("crop", "flip", "randaugment")


class FrameTransform:
    """uint8 frames [F, H, W, 3] (numpy or torch) -> normalized float32 torch [F, 3, size, size].

    Evaluation (``train=False``): bicubic resize of the short side to ``size``, center crop, scale to
    [0, 1], CLIP mean/std normalization. Deterministic.

    Training (``train=True``) applies the ``augment`` steps, each with one random draw shared by all
    frames of the clip (so motion stays coherent):

    - ``"crop"``: random resized crop (area 50-100%, aspect 3/4-4/3) instead of the center crop;
    - ``"flip"``: horizontal flip with probability 0.5 (off by default: it turns "moves left" into
      "moves right", which breaks captions that name directions);
    - ``"randaugment"``: two ops drawn from brightness, contrast, sharpness, rotation, translation and
      shear at a random magnitude (colour-changing ops such as solarize or hue are left out: captions
      name colours).

    Random draws use torch's global generator (seeded per DataLoader worker).
    """

    def __init__(self, size: int, train: bool = False, augment: str | Iterable[str] | None = ("crop", "randaugment"),
                 mean=CLIP_MEAN, std=CLIP_STD, magnitude: float = 0.5):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if isinstance(augment, str):
            augment = [a.strip() for a in augment.split(",") if a.strip()]
        augment = tuple(augment or ())
        bad = [a for a in augment if a not in AUGMENTATIONS]
        if bad:
            raise ValueError(f"unknown augmentation(s) {bad}; choose from {AUGMENTATIONS}")
        self.size = int(size)
        self.train = bool(train)
        self.augment = augment
        self.magnitude = float(magnitude)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"FrameTransform(size={self.size}, train={self.train}, augment={self.augment})"

    @property
    def random(self) -> bool:
        """Whether the transform draws random numbers (training with an augmentation)."""
        return self.train and bool(self.augment)

    def _normalize_table(self, x: np.ndarray) -> torch.Tensor:
        """Frames already ``size`` x ``size`` (a frame store's): the normalization of every uint8 value,
        computed once with the same float32 operations as the general path (so bit-identical), then looked
        up per channel."""
        table = getattr(self, "_table", None)
        if table is None:
            v = torch.arange(256, dtype=torch.float32).div_(255.0)[None, :]
            table = self._table = ((v - self.mean.view(3, 1)) / self.std.view(3, 1)).numpy()
        out = np.empty((x.shape[0], 3, x.shape[1], x.shape[2]), dtype=np.float32)
        for c in range(3):
            np.take(table[c], x[..., c], out=out[:, c])
        return torch.from_numpy(out)

    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {tuple(x.shape)} {x.dtype}")
        if not self.random and tuple(x.shape[1:3]) == (self.size, self.size):
            return self._normalize_table(x.numpy())
        x = x.permute(0, 3, 1, 2)  # [F, 3, H, W]
        if self.train and "crop" in self.augment:
            x = self._random_resized_crop(x)
        else:
            x = _center_crop(_resize_short_uint8(x, self.size), self.size)
        if self.train and "flip" in self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.train and "randaugment" in self.augment:
            x = self._randaugment(x)
        y = x.float().div_(255.0)
        return ((y - self.mean) / self.std).contiguous()

    def _random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        area = h * w
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(0.5, 1.0))
            logr = torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))
            ar = math.exp(float(logr))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, ()))
                left = int(torch.randint(0, w - cw + 1, ()))
                break
        else:
            ch = cw = min(h, w)
            top, left = (h - ch) // 2, (w - cw) // 2
        crop = x[..., top:top + ch, left:left + cw]
        y = F.interpolate(crop.float(), size=(self.size, self.size), mode="bicubic", align_corners=False,
                          antialias=True)
        return y.round_().clamp_(0, 255).to(torch.uint8)

    def _randaugment(self, x: torch.Tensor) -> torch.Tensor:
        ops = ("identity", "brightness", "contrast", "sharpness", "rotate", "translate_x", "translate_y",
               "shear_x", "shear_y")
        m = self.magnitude
        for _ in range(2):
            op = ops[int(torch.randint(len(ops), ()))]
            level = float(torch.rand(())) * m * (1 if torch.rand(()) < 0.5 else -1)
            s = x.shape[-1]
            if op == "brightness":
                x = TF.adjust_brightness(x, 1.0 + 0.6 * level)
            elif op == "contrast":
                x = TF.adjust_contrast(x, 1.0 + 0.6 * level)
            elif op == "sharpness":
                x = TF.adjust_sharpness(x, 1.0 + 0.9 * level)
            elif op == "rotate":
                x = TF.rotate(x, 20.0 * level)
            elif op == "translate_x":
                x = TF.affine(x, angle=0.0, translate=[int(0.2 * s * level), 0], scale=1.0, shear=[0.0, 0.0])
            elif op == "translate_y":
                x = TF.affine(x, angle=0.0, translate=[0, int(0.2 * s * level)], scale=1.0, shear=[0.0, 0.0])
            elif op == "shear_x":
                x = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[20.0 * level, 0.0])
            elif op == "shear_y":
                x = TF.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 20.0 * level])
        return x


#: The release's training augmentation (timm RandAugment grammar): 4 ops at magnitude 7 (std 0.5), increasing set.
RELEASE_RANDAUGMENT = "rand-m7-n4-mstd0.5-inc1"


class ReleaseFrameTransform:
    """The official release's frame pipeline (docs/method-notes.md, "release vs default").

    Training: timm's RandAugment ``rand-m7-n4-mstd0.5-inc1`` (bicubic, translate constant 0.45 x size, grey
    fill) on the PIL frames, with ONE draw per clip (the same ops, magnitudes and signs on every frame), then
    bicubic Resize(size) + CenterCrop(size) + CLIP normalization (torchvision, on PIL images). Evaluation: the
    latter only. uint8 frames ``[F, H, W, 3]`` -> float32 ``[F, 3, size, size]``.

    The per-clip draw is a seed taken from torch's global generator (seeded per item by the loader), so the
    same seed gives the same frames; Python's and NumPy's global random states are restored afterwards.
    """

    def __init__(self, size: int, train: bool = True, config: str = RELEASE_RANDAUGMENT):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self.train = bool(train)
        self.config = config
        self._post = T.Compose([T.Resize(self.size, interpolation=T.InterpolationMode.BICUBIC),
                                T.CenterCrop(self.size), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        self._augment = None
        if self.train:
            # timm (a dependency of open_clip) is imported only for training transforms of release mode
            from timm.data.auto_augment import rand_augment_transform

            self._augment = rand_augment_transform(
                config, {"translate_const": int(self.size * 0.45), "interpolation": Image.BICUBIC})

    def __repr__(self) -> str:
        return f"ReleaseFrameTransform(size={self.size}, train={self.train}, randaugment={self.config!r})"

    def augment_clip(self, images: list, seed: int) -> list:
        """Apply one RandAugment draw (``seed``) to every PIL image of a clip."""
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for img in images:
                random.seed(seed)
                np.random.seed(seed)
                out.append(self._augment(img))
            return out
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __call__(self, frames) -> torch.Tensor:
        x = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [F, H, W, 3], got {tuple(x.shape)} {x.dtype}")
        images = [Image.fromarray(f) for f in x]
        if self._augment is not None:
            images = self.augment_clip(images, int(torch.randint(0, 2**31 - 1, ())))
        return torch.stack([self._post(img) for img in images]).contiguous()


def iter_video_files(root, exts: Iterable[str] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg",
                                                  ".mpeg", ".wmv", ".flv", ".3gp", ".3g2", ".mts",
                                                  ".m2ts", ".ogv"), *, followlinks: bool = False) -> Iterator[Path]:
    """Video files under ``root`` (recursive), sorted. Symbolic links to files are listed; links to folders
    are entered only with ``followlinks`` (each real folder once, so a link cycle ends)."""
    exts = {e.lower() for e in exts}
    out = []
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(root, followlinks=followlinks):
        if followlinks:
            real = os.path.realpath(dirpath)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
        for name in files:
            if os.path.splitext(name)[1].lower() in exts:
                out.append(Path(dirpath) / name)
    yield from sorted(out)


# decoder name (data.decoder) -> sampler(path, framerate, max_frames, start, end[, threads]) -> RGB frames;
# sample_frames looks the decoder up here at each call (tests wrap an entry to see which decoder ran)
SAMPLERS = {"pyav": _sample_pyav, "opencv": _sample_opencv, "decord": _sample_decord}
