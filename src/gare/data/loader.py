"""torch Datasets over a :class:`~gare.data.datasets.Split`, reading a frame store when given.

- :class:`TrainPairDataset`: one item per training pair (video, caption);
- :class:`VideoDataset`: one item per video (to encode a gallery);
- :func:`collate`: stacks tensors, keeps captions as a list of str.

Videos that fail to decode during a run are recorded in a bad-input report (``bad_inputs.jsonl`` in the
run directory when ``report`` names one) and replaced: a training pair by the next decodable pair, a
gallery video by one black frame (mask ``[True, False, ...]``, ``valid`` False) so it stays in the
gallery and its queries count as misses. The run stops with :class:`~gare.data.report.TooManyBadInputs`
once the failures exceed ``max_bad_fraction`` (default 1%) of the split's videos.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import FrameStore
from .datasets import Split
from .report import VIDEO_KINDS, BadInputReport
from .video import VideoDecodeError, sample_frames

log = logging.getLogger(__name__)


class _FrameSource:
    """Frames of a split's videos, from a store when it has them, else by decoding."""

    def __init__(self, split: Split, *, framerate: float, max_frames: int, transform, store: FrameStore | None,
                 decoder: str, report, max_bad_fraction: float):
        self.split = split
        self.framerate = float(framerate)
        self.max_frames = int(max_frames)
        self.transform = transform
        self.decoder = decoder
        if store is not None and (abs(store.framerate - self.framerate) > 1e-9 or store.max_frames != self.max_frames):
            raise ValueError(
                f"frame store {store.path} has framerate={store.framerate}, max_frames={store.max_frames} but "
                f"the dataset asks for framerate={self.framerate}, max_frames={self.max_frames}")
        self.store = store
        self.report = BadInputReport.coerce(report, threshold=max_bad_fraction)
        self.max_bad_fraction = float(max_bad_fraction)
        self._failed: dict[int, VideoDecodeError] = {}
        self._tag = f"{split.dataset}/{split.name}"

    def frames(self, vi: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [F, H, W, 3] and bool [F] of video ``vi``; raises VideoDecodeError (already recorded)."""
        if vi in self._failed:
            raise self._failed[vi]
        it = self.split.items[vi]
        try:
            if self.store is not None and it.video_id in self.store:
                return self.store.get(it.video_id)
            if self.store is not None and self.store.failure(it.video_id) is not None:
                self.store.get(it.video_id)  # raises the recorded VideoDecodeError
            return sample_frames(it.path, framerate=self.framerate, max_frames=self.max_frames, start=it.start,
                                 end=it.end, decoder=self.decoder)
        except VideoDecodeError as e:
            self._failed[vi] = e
            self.report.add(e.kind, it.video_id, e.reason, path=e.path, split=self._tag, stage="loader",
                            pid=os.getpid())
            # bad videos found when the annotations were read (same report) count too, against the listed total
            total = max(len(self.split.items), int(self.split.meta.get("listed_videos", 0)))
            self.report.check(total, what=f"videos of {self._tag}", kinds=VIDEO_KINDS,
                              split=self._tag, threshold=self.max_bad_fraction)
            raise

    def to_tensor(self, frames: np.ndarray) -> torch.Tensor:
        if self.transform is None:
            return torch.from_numpy(frames)
        return self.transform(frames)


class TrainPairDataset(Dataset):
    """Training pairs: item k = ``{"frames", "mask", "caption", "video_index"}``.

    Args:
        split: the split whose videos are read.
        framerate, max_frames: sampling settings (must match ``store`` when one is given).
        transform: uint8 [F, H, W, 3] -> float32 [F, 3, S, S] (e.g. :class:`~gare.data.video.FrameTransform`);
            None returns the uint8 frames as a tensor.
        store: a :class:`~gare.data.cache.FrameStore` to read instead of decoding (videos it lacks are decoded).
        pairs: ``(video_index, caption)`` pairs (default ``split.train_pairs()``; e.g. noisy pairs).
        decoder: decoder for videos not in the store (``data.decoder``: pyav, opencv, decord).
        report: bad-input report (a :class:`BadInputReport`, a file, or a run directory).
        max_bad_fraction: failures allowed, as a fraction of the split's videos.

    Items: frames float32 [F, 3, S, S], mask bool [F], caption str, video_index int (the video actually
    used: a failed video's pair is replaced by the next pair whose video decodes).
    """

    def __init__(self, split: Split, *, framerate: float, max_frames: int, transform=None,
                 store: FrameStore | None = None, pairs: list[tuple[int, str]] | None = None,
                 decoder: str = "pyav", report=None, max_bad_fraction: float = 0.01):
        self.split = split
        self.pairs = list(pairs) if pairs is not None else split.train_pairs()
        if not self.pairs:
            raise ValueError(f"{split.dataset}/{split.name}: no training pairs")
        self.src = _FrameSource(split, framerate=framerate, max_frames=max_frames, transform=transform,
                                store=store, decoder=decoder, report=report, max_bad_fraction=max_bad_fraction)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def random(self) -> bool:
        """Whether reading an item draws random numbers (its transform augments)."""
        return bool(getattr(self.src.transform, "random", True))

    def __getitem__(self, k: int) -> dict:
        n = len(self.pairs)
        for step in range(n):
            vi, caption = self.pairs[(k + step) % n]
            try:
                frames, mask = self.src.frames(vi)
            except VideoDecodeError:
                continue
            return {"frames": self.src.to_tensor(frames), "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
                    "caption": caption, "video_index": int(vi)}
        raise RuntimeError(f"no video of {self.split.dataset}/{self.split.name} could be decoded")


class VideoDataset(Dataset):
    """One item per video (gallery encoding): ``{"frames", "mask", "video_index", "valid"}``.

    Same arguments as :class:`TrainPairDataset` (without ``pairs``). A video that fails to decode gives
    one black frame (mask ``[True, False, ...]``) and ``valid`` False, after being recorded.
    """

    def __init__(self, split: Split, *, framerate: float, max_frames: int, transform=None,
                 store: FrameStore | None = None, decoder: str = "pyav", report=None,
                 max_bad_fraction: float = 0.01, size: int | None = None):
        self.split = split
        self.size = size if size is not None else getattr(transform, "size", None) or (store.size if store else 224)
        self.src = _FrameSource(split, framerate=framerate, max_frames=max_frames, transform=transform,
                                store=store, decoder=decoder, report=report, max_bad_fraction=max_bad_fraction)

    def __len__(self) -> int:
        return len(self.split.items)

    def __getitem__(self, vi: int) -> dict:
        valid = True
        try:
            frames, mask = self.src.frames(vi)
        except VideoDecodeError:
            frames = np.zeros((self.src.max_frames, self.size, self.size, 3), dtype=np.uint8)
            mask = np.zeros(self.src.max_frames, dtype=bool)
            mask[0] = True
            valid = False
        return {"frames": self.src.to_tensor(frames), "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
                "video_index": int(vi), "valid": valid}


def collate(batch: list[dict]) -> dict:
    """Stack a list of items: tensors -> [B, ...], ints/bools -> tensors [B], str -> list[str]."""
    out: dict = {}
    for key in batch[0]:
        vals = [b[key] for b in batch]
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(v0, bool):
            out[key] = torch.tensor(vals, dtype=torch.bool)
        elif isinstance(v0, int):
            out[key] = torch.tensor(vals, dtype=torch.long)
        else:
            out[key] = list(vals)
    return out
