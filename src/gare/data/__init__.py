"""Data layer: decoding and sampling (video), frame store (cache), annotation readers (the datasets
package), the generated moving-shapes dataset (synthetic) and its H.264 writer (encode), fingerprints of
video folders for cache keys (fingerprint), noisy correspondence (noise), torch datasets (loader) and
bad-input reporting (report). It never imports the model. See docs/data.md.
"""

from .cache import FrameStore, StoreSettingsError
from .datasets import Split, VideoItem, load_split
from .fingerprint import dataset_fingerprint
from .noise import corrupt_captions, noisy_train_pairs
from .report import BadInputReport, TooManyBadInputs
from .video import FrameTransform, VideoDecodeError, resize_center_crop, sample_frames

__all__ = [
    "BadInputReport",
    "FrameStore",
    "FrameTransform",
    "Split",
    "StoreSettingsError",
    "TooManyBadInputs",
    "VideoDecodeError",
    "VideoItem",
    "corrupt_captions",
    "dataset_fingerprint",
    "load_split",
    "noisy_train_pairs",
    "resize_center_crop",
    "sample_frames",
]
