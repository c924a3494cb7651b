"""Builds the splits, frame store and loaders a run needs from its :class:`DataConfig`.

The only place the trainer touches the data layer, so the data layer stays independent of models.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import Config, ConfigError

log = logging.getLogger(__name__)

DEFAULT_SYNTH_DIR = "data/shapes"


@dataclass
class RunData:
    splits: dict  # name -> gare.data.datasets.Split
    store: object | None  # FrameStore or None
    annotations: str
    videos: str


def resolve_data(cfg: Config, *, splits=("train", "val", "test"), image_size: int) -> RunData:
    from ..data import datasets

    d = cfg.data
    if d.dataset == "synthetic":
        from ..data import synthetic

        root = Path(d.videos or DEFAULT_SYNTH_DIR)
        ann = synthetic.generate(root, n_videos=d.synthetic_videos, seed=d.synthetic_seed, **d.synthetic_options)
        kind, annotations, videos = "jsonl", str(ann), str(root)
    else:
        if not d.annotations:
            raise ConfigError(f"data.annotations is not set for dataset '{d.dataset}' (the annotation folder or file)")
        if not Path(d.annotations).exists():
            raise ConfigError(f"data.annotations path does not exist: {d.annotations}")
        if d.dataset != "jsonl" and not d.videos:
            raise ConfigError(f"data.videos is not set for dataset '{d.dataset}' (the folder of video files)")
        if d.videos and not Path(d.videos).exists():
            raise ConfigError(f"data.videos path does not exist: {d.videos}")
        kind, annotations, videos = d.dataset, d.annotations, d.videos or str(Path(d.annotations).parent)
    loaded = {s: datasets.load_split(kind, s, annotations=annotations, videos=videos, **d.options) for s in splits}
    store = None
    if d.frame_store:
        from ..data.cache import FrameStore

        path = Path(d.frame_store)
        if d.frame_store == "auto":
            path = Path(videos) / f"frames_fps{d.framerate:g}_f{d.max_frames}_s{image_size}.store"
        items = [it for s in loaded.values() for it in s.items]
        store = FrameStore.build(items, path, framerate=d.framerate, max_frames=d.max_frames, size=image_size,
                                 decoder=d.decoder)
    return RunData(loaded, store, annotations, videos)


def train_pairs(cfg: Config, split) -> tuple[list, list[int]]:
    pairs = list(split.train_pairs())
    corrupted: list[int] = []
    if cfg.data.noise_fraction > 0:
        from ..data.noise import corrupt_captions

        pairs, corrupted = corrupt_captions(pairs, cfg.data.noise_fraction, cfg.data.noise_seed)
        log.info("noisy correspondence: %d of %d training captions replaced", len(corrupted), len(pairs))
    return pairs, list(corrupted)


class SeededItems(Dataset):
    """Seeds every item's randomness from (seed, epoch, index): augmentation is the same whatever the
    number of workers, prefetching, or an interruption and resume."""

    def __init__(self, ds: Dataset, seed: int):
        self.ds = ds
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: int):
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + int(idx)) % (2**31 - 1)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s)
        return self.ds[idx]


class EpochSampler(Sampler):
    """Seeded permutation per epoch, sharded over ranks, starting at a given batch (for resume)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return self.n // self.batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        local = self.batch // self.world
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = perm[b * self.batch:(b + 1) * self.batch]
            yield from chunk[self.rank * local:(self.rank + 1) * local]

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * (self.batch // self.world)


def make_loader(ds: Dataset, *, batch_size: int, sampler=None, workers: int, collate) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      collate_fn=collate, drop_last=False, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())
