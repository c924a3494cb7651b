"""Data layer: decoding and sampling (video), frame store (cache), annotation readers (datasets), the
generated moving-shapes dataset (synthetic), noisy correspondence (noise), torch datasets (loader) and
bad-input reporting (report). It never imports the model.
"""

from .datasets import Split, VideoItem, load_split
from .report import BadInputReport, TooManyBadInputs
from .video import FrameTransform, VideoDecodeError, sample_frames

__all__ = [
    "BadInputReport",
    "FrameTransform",
    "Split",
    "TooManyBadInputs",
    "VideoDecodeError",
    "VideoItem",
    "load_split",
    "sample_frames",
]
