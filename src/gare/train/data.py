"""Training-loop data plumbing: seeded per-item randomness, the resumable epoch sampler and the loader.

The splits, frame store and datasets themselves come from :mod:`gare.pipeline`.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)


class SeededItems(Dataset):
    """Seeds every item's randomness from (seed, epoch, index): augmentation is the same whatever the
    number of workers, prefetching, or an interruption and resume. A dataset whose ``random`` attribute is
    False (no augmentation) draws nothing, so its items are not seeded (seeding three generators per item
    costs about a third of reading a stored clip)."""

    def __init__(self, ds: Dataset, seed: int):
        self.ds = ds
        self.seed = seed
        self.epoch = 0
        self.seeded = bool(getattr(ds, "random", True))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, idx: int):
        if not self.seeded:
            return self.ds[idx]
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
