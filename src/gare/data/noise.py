"""Noisy correspondence: replace a fraction of training captions with captions of other videos.

Only training pairs are ever corrupted (:func:`noisy_train_pairs` refuses validation and test splits).
The corrupted indices are returned so a run can record them with the fraction and the seed.
"""

from __future__ import annotations

import numpy as np


def corrupt_captions(pairs: list[tuple[int, str]], fraction: float,
                     seed: int) -> tuple[list[tuple[int, str]], list[int]]:
    """Replace exactly ``round(fraction * len(pairs))`` captions by captions of other videos.

    Args:
        pairs: training pairs ``(video_index, caption)``.
        fraction: share of pairs to corrupt, in [0, 1].
        seed: the chosen pairs and donor captions are a function of the seed.

    Returns:
        new_pairs: same length and video indices; at the corrupted positions the caption comes from a
            pair of another video and differs from the original caption text.
        corrupted_indices: sorted positions that were changed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(pairs)
    k = int(round(fraction * n))
    if k == 0:
        return list(pairs), []
    videos = np.array([v for v, _ in pairs])
    captions = [c for _, c in pairs]
    if len(np.unique(videos)) < 2:
        raise ValueError("noisy captions need pairs of at least two different videos")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    new = list(pairs)
    for i in chosen:
        donor = None
        for _ in range(100):
            j = int(rng.integers(n))
            if videos[j] != videos[i] and captions[j] != captions[i]:
                donor = j
                break
        if donor is None:  # rare: few distinct captions; search exhaustively from a random start
            start = int(rng.integers(n))
            for step in range(n):
                j = (start + step) % n
                if videos[j] != videos[i] and captions[j] != captions[i]:
                    donor = j
                    break
        if donor is None:
            raise ValueError(f"pair {i} has no caption of another video that differs from its own")
        new[i] = (int(videos[i]), captions[donor])
    return new, [int(i) for i in chosen]


def noisy_train_pairs(split, fraction: float, seed: int) -> tuple[list[tuple[int, str]], dict]:
    """Corrupted training pairs of a training split, and a record for the run config.

    Raises:
        ValueError: for a split other than "train" (validation and test are never corrupted).
    """
    if split.name != "train":
        raise ValueError(f"noisy captions apply to the training split only, not to {split.name!r}")
    pairs, idx = corrupt_captions(split.train_pairs(), fraction, seed)
    record = {"noise_fraction": float(fraction), "noise_seed": int(seed), "corrupted_pairs": len(idx),
              "total_pairs": len(pairs), "corrupted_indices": idx}
    return pairs, record
