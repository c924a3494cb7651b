"""torch datasets: store and decoding give the same items; decoding failures during a run are bounded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data_fixtures import synth_dataset
from gare.data.cache import FrameStore
from gare.data.datasets import Split, VideoItem, load_split
from gare.data.loader import TrainPairDataset, VideoDataset, collate
from gare.data.noise import noisy_train_pairs
from gare.data.report import TooManyBadInputs, read_report
from gare.data.video import FrameTransform


@pytest.fixture(scope="module")
def ann(tmp_path_factory):
    return synth_dataset(tmp_path_factory.getbasetemp(), n_videos=20, seed=0)


@pytest.fixture(scope="module")
def train(ann):
    return load_split("jsonl", "train", annotations=ann)


def test_train_pairs_from_store_equal_decoding(train, tmp_path):
    tf = FrameTransform(32)
    store = FrameStore.build(train, tmp_path / "s", framerate=2, max_frames=8, size=32, workers=1)
    a = TrainPairDataset(train, framerate=2, max_frames=8, transform=tf, store=store)
    b = TrainPairDataset(train, framerate=2, max_frames=8, transform=tf)
    assert len(a) == len(train.train_pairs()) == train.num_captions()
    for k in (0, 5, len(a) - 1):
        x, y = a[k], b[k]
        assert set(x) == {"frames", "mask", "caption", "video_index"}
        assert x["frames"].shape == (8, 3, 32, 32) and x["frames"].dtype == torch.float32
        assert x["mask"].dtype == torch.bool and x["mask"].shape == (8,)
        torch.testing.assert_close(x["frames"], y["frames"], rtol=0, atol=0)
        assert x["caption"] == y["caption"] == train.train_pairs()[k][1]
        assert x["video_index"] == y["video_index"] == train.train_pairs()[k][0]


def test_collate_and_dataloader_workers(train, tmp_path):
    store = FrameStore.build(train, tmp_path / "s", framerate=2, max_frames=8, size=32, workers=1)
    ds = TrainPairDataset(train, framerate=2, max_frames=8, transform=FrameTransform(32), store=store)
    dl = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    batch = next(iter(dl))
    assert batch["frames"].shape == (4, 8, 3, 32, 32) and batch["mask"].shape == (4, 8)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 4
    assert batch["video_index"].dtype == torch.long
    gallery = VideoDataset(train, framerate=2, max_frames=8, transform=FrameTransform(32), store=store)
    g = collate([gallery[i] for i in range(3)])
    assert g["video_index"].tolist() == [0, 1, 2] and g["valid"].tolist() == [True] * 3


def test_store_with_other_sampling_settings_is_refused(train, tmp_path):
    store = FrameStore.build(train.items[:2], tmp_path / "s", framerate=1, max_frames=8, size=32, workers=1)
    with pytest.raises(ValueError, match="framerate"):
        TrainPairDataset(train, framerate=2, max_frames=8, transform=FrameTransform(32), store=store)


def test_noisy_pairs_feed_the_dataset(train):
    pairs, record = noisy_train_pairs(train, 0.25, seed=0)
    ds = TrainPairDataset(train, framerate=2, max_frames=4, transform=FrameTransform(32), pairs=pairs)
    k = record["corrupted_indices"][0]
    assert ds[k]["caption"] == pairs[k][1] != train.train_pairs()[k][1]


def _split_with_bad(ann: Path, n_good: int, n_bad: int, tmp_path: Path) -> Split:
    """n_good items that reuse one real video, then n_bad items whose file is garbage."""
    good = load_split("jsonl", "train", annotations=ann).items[0]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00garbage" * 64)
    items = [VideoItem(f"g{k}", good.path, [f"good {k}"]) for k in range(n_good)]
    items += [VideoItem(f"b{k}", str(bad), [f"bad {k}"]) for k in range(n_bad)]
    return Split("train", "jsonl", items, "all")


def test_decoding_failures_under_threshold_continue_and_are_listed(ann, tmp_path):
    split = _split_with_bad(ann, 199, 1, tmp_path)  # 0.5% bad
    run = tmp_path / "run"
    run.mkdir()
    ds = TrainPairDataset(split, framerate=2, max_frames=4, transform=FrameTransform(32), report=run)
    item = ds[199]  # the bad video's pair is replaced by the next one that decodes
    assert item["video_index"] == 0 and item["caption"] == "good 0"
    entries = read_report(run / "bad_inputs.jsonl")
    assert [(e["kind"], e["item"], e["split"]) for e in entries] == [("undecodable", "b0", "jsonl/train")]
    gallery = VideoDataset(split, framerate=2, max_frames=4, transform=FrameTransform(32), report=run)
    g = gallery[199]
    assert g["valid"] is False and g["mask"].tolist() == [True, False, False, False]
    assert g["frames"].shape == (4, 3, 32, 32)


def test_decoding_failures_over_threshold_stop_the_run(ann, tmp_path):
    split = _split_with_bad(ann, 97, 3, tmp_path)  # 3% bad
    run = tmp_path / "run"
    run.mkdir()
    ds = TrainPairDataset(split, framerate=2, max_frames=4, transform=FrameTransform(32), report=run)
    assert ds[96]["caption"] == "good 96"
    with pytest.raises(TooManyBadInputs) as e:
        ds[97]  # b0 fails (1 of 100: within 1%); its replacement b1 fails too: 2 of 100 is over
    msg = str(e.value)
    assert "2 of 100 videos of jsonl/train" in msg and str(run / "bad_inputs.jsonl") in msg
    assert len(read_report(run / "bad_inputs.jsonl")) == 2
    # with a higher threshold the run continues
    ok = TrainPairDataset(split, framerate=2, max_frames=4, transform=FrameTransform(32), max_bad_fraction=0.05)
    assert all(ok[k]["caption"].startswith("good") for k in range(95, 100))


def test_data_layer_never_imports_the_model():
    src = Path(__file__).resolve().parents[1] / "src" / "gare" / "data"
    for f in src.glob("*.py"):
        text = f.read_text()
        assert not re.search(r"gare\.model|from \.\.model|from \.\. import .*model", text), f.name
