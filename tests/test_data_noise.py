"""Noisy correspondence: exact fraction, captions from other videos, never validation or test."""

from __future__ import annotations

import pytest

from gare.data.datasets import Split, VideoItem
from gare.data.noise import corrupt_captions, noisy_train_pairs


def _pairs(n_videos=30, per=3):
    return [(v, f"video {v} caption {c}") for v in range(n_videos) for c in range(per)]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.25, 0.5, 1.0])
def test_exact_fraction(fraction):
    pairs = _pairs()  # 90 pairs
    new, idx = corrupt_captions(pairs, fraction, seed=0)
    assert len(idx) == round(fraction * 90) and idx == sorted(set(idx))
    assert len(new) == len(pairs)
    changed = [i for i, (a, b) in enumerate(zip(pairs, new)) if a != b]
    assert changed == idx
    for i in idx:
        v, cap = new[i]
        assert v == pairs[i][0]                                # the video stays
        assert not cap.startswith(f"video {v} ")               # the caption belongs to another video
        assert cap in {c for _, c in pairs}                    # ... and is a real caption of the set


def test_rounding_and_determinism():
    pairs = _pairs(7, 1)
    assert len(corrupt_captions(pairs, 0.3, seed=1)[1]) == round(0.3 * 7) == 2
    a = corrupt_captions(_pairs(), 0.2, seed=5)
    b = corrupt_captions(_pairs(), 0.2, seed=5)
    c = corrupt_captions(_pairs(), 0.2, seed=6)
    assert a == b and a[1] != c[1]


def test_duplicate_captions_are_not_used_as_noise():
    # videos 0 and 1 share a caption: replacing one by the other would not be noise
    pairs = [(0, "same"), (1, "same"), (2, "other")]
    for seed in range(10):
        new, idx = corrupt_captions(pairs, 1.0, seed=seed)
        assert all(new[i][1] != pairs[i][1] for i in idx)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="fraction"):
        corrupt_captions(_pairs(), 1.5, seed=0)
    with pytest.raises(ValueError, match="two different videos"):
        corrupt_captions([(0, "a"), (0, "b")], 0.5, seed=0)


def test_never_applied_to_validation_or_test():
    items = [VideoItem(str(k), f"{k}.mp4", [f"c{k}a", f"c{k}b"]) for k in range(10)]
    pairs, record = noisy_train_pairs(Split("train", "x", items, "all"), 0.3, seed=0)
    assert record["corrupted_pairs"] == 6 and record["total_pairs"] == 20 and record["noise_seed"] == 0
    for name in ("val", "test"):
        with pytest.raises(ValueError, match="training split only"):
            noisy_train_pairs(Split(name, "x", items, "all"), 0.3, seed=0)
