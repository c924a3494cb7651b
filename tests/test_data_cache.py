"""Frame store: round trip equals direct decoding, refusal of other settings, resume, failures."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import counter_video, need_real, real_videos, synth_dataset
from gare.data.cache import DONE, PENDING, FrameStore, StoreSettingsError
from gare.data.datasets import VideoItem, load_split
from gare.data.report import BadInputReport
from gare.data.video import VideoDecodeError, sample_frames

SETTINGS = {"framerate": 2.0, "max_frames": 6, "size": 48}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    ann = synth_dataset(tmp_path_factory.getbasetemp(), n_videos=20, seed=0)
    return load_split("jsonl", "train", annotations=ann)


def test_round_trip_equals_direct_decoding(split, tmp_path):
    store = FrameStore.build(split, tmp_path / "store", workers=2, **SETTINGS)
    assert len(store) == len(split)
    for it in split.items:
        assert it.video_id in store
        a, ma = store.get(it.video_id)
        b, mb = sample_frames(it.path, size=48, framerate=2.0, max_frames=6)
        assert a.shape == (6, 48, 48, 3) and a.dtype == np.uint8 and ma.dtype == bool
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ma, mb)
    # one process or several: the same bytes
    single = FrameStore.build(split, tmp_path / "single", workers=1, **SETTINGS)
    assert (tmp_path / "store" / "frames.u8").read_bytes() == (tmp_path / "single" / "frames.u8").read_bytes()
    assert single.ids == store.ids


def test_round_trip_real_video_with_segment_and_padding(tmp_path_factory, tmp_path):
    real = real_videos(tmp_path_factory.getbasetemp())
    path = need_real(real, "bikes.mp4")  # 640 x 272, 10 s
    counter = counter_video(tmp_path_factory.getbasetemp() / "counter")  # 5 s
    items = [VideoItem("bikes", str(path), ["x"], start=2.0, end=6.0), VideoItem("counter", str(counter), ["y"])]
    store = FrameStore.build(items, tmp_path / "s", framerate=1.0, max_frames=8, size=64, workers=1)
    a, ma = store.get("bikes")
    b, mb = sample_frames(path, framerate=1.0, max_frames=8, start=2.0, end=6.0, size=64)
    np.testing.assert_array_equal(a, b)
    assert ma.tolist() == [True] * 4 + [False] * 4 and (a[4:] == 0).all()
    c, mc = store.get("counter")
    assert mc.sum() == 5


def test_open_refuses_other_settings(split, tmp_path):
    FrameStore.build(split.items[:3], tmp_path / "s", workers=1, **SETTINGS)
    FrameStore.open(tmp_path / "s", **SETTINGS)  # same settings: fine
    for key, value in (("framerate", 1.0), ("max_frames", 12), ("size", 224)):
        bad = dict(SETTINGS, **{key: value})
        with pytest.raises(StoreSettingsError) as e:
            FrameStore.open(tmp_path / "s", **bad)
        assert f"{key}={SETTINGS[key]!r}" in str(e.value) and f"{key}={value!r}" in str(e.value)
    with pytest.raises(StoreSettingsError, match="decoder='pyav'"):
        FrameStore.open(tmp_path / "s", decoder="opencv", **SETTINGS)
    with pytest.raises(StoreSettingsError, match="size=48"):  # building into it with other settings, too
        FrameStore.build(split.items[:3], tmp_path / "s", framerate=2.0, max_frames=6, size=32, workers=1)
    with pytest.raises(FileNotFoundError, match="no frame store"):
        FrameStore.open(tmp_path / "nothing", **SETTINGS)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["settings"] == {"framerate": 2.0, "max_frames": 6, "size": 48, "decoder": "pyav"}
    # a store written when the setting was called "backend" still opens, and is still checked
    meta["settings"]["backend"] = meta["settings"].pop("decoder")
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    assert FrameStore.open(tmp_path / "s", decoder="pyav", **SETTINGS).decoder == "pyav"
    with pytest.raises(StoreSettingsError, match="decoder='pyav'"):
        FrameStore.open(tmp_path / "s", decoder="opencv", **SETTINGS)


def test_resume_and_extend(split, tmp_path):
    items = split.items
    FrameStore.build(items[:5], tmp_path / "s", workers=1, **SETTINGS)
    # simulate an interrupted build: video 2 never finished
    status = np.memmap(tmp_path / "s" / "status.u8", dtype=np.uint8, mode="r+")
    status[2] = PENDING
    status.flush()
    del status
    frames = np.memmap(tmp_path / "s" / "frames.u8", dtype=np.uint8, mode="r+", shape=(5, 6, 48, 48, 3))
    frames[2] = 0
    frames[3] = 7  # a finished video is not decoded again (its bytes stay as they are)
    frames.flush()
    del frames
    store = FrameStore.open(tmp_path / "s", **SETTINGS)
    assert items[2].video_id not in store
    with pytest.raises(KeyError, match="interrupted"):
        store.get(items[2].video_id)
    store = FrameStore.build(items[:8], tmp_path / "s", workers=1, **SETTINGS)  # resume + extend to 8
    assert len(store) == 8 and all(it.video_id in store for it in items[:8])
    np.testing.assert_array_equal(store.get(items[2].video_id)[0], sample_frames(items[2].path, size=48,
                                                                                framerate=2.0, max_frames=6)[0])
    assert (store.get(items[3].video_id)[0] == 7).all()
    assert store.status(7) == DONE


def test_failed_videos_are_recorded(split, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"nope" * 100)
    items = list(split.items[:4]) + [VideoItem("missing", str(tmp_path / "missing.mp4"), ["x"]),
                                     VideoItem("empty", str(empty), ["x"]),
                                     VideoItem("garbage", str(garbage), ["x"])]
    rep = BadInputReport(tmp_path / "run" / "bad_inputs.jsonl")
    store = FrameStore.build(items, tmp_path / "s", workers=2, report=rep, **SETTINGS)
    assert [it.video_id in store for it in items] == [True] * 4 + [False] * 3
    with pytest.raises(VideoDecodeError) as e:
        store.get("empty")
    assert e.value.kind == "empty_file"
    kinds = {e["item"]: e["kind"] for e in rep.all_entries()}
    assert kinds == {"missing": "missing_video", "empty": "empty_file", "garbage": "undecodable"}
    failures = [json.loads(x) for x in (tmp_path / "s" / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["video_id"] for f in failures) == ["empty", "garbage", "missing"]
    with pytest.raises(KeyError, match="not in the frame store"):
        store.get("never-added")


def test_store_pickles_without_its_arrays(split, tmp_path):
    store = FrameStore.build(split.items[:6], tmp_path / "s", workers=1, **SETTINGS)
    store.get(split.items[0].video_id)  # maps the arrays
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # DataLoader workers re-map the file instead of copying 6 x 41 kB of frames
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.get(split.items[1].video_id)[0], store.get(split.items[1].video_id)[0])


def test_same_id_with_two_segments_is_refused(tmp_path, split):
    it = split.items[0]
    items = [VideoItem(it.video_id, it.path, ["a"], 0.0, 1.0), VideoItem(it.video_id, it.path, ["b"], 1.0, 2.0)]
    with pytest.raises(ValueError, match="different segments"):
        FrameStore.build(items, tmp_path / "s", workers=1, **SETTINGS)


def test_changed_video_files_are_decoded_again(split, tmp_path):
    import shutil

    a, b = split.items[0], split.items[1]
    work = tmp_path / "v.mp4"
    shutil.copy(a.path, work)
    items = [VideoItem("x", str(work), ["c"])]
    store = FrameStore.build(items, tmp_path / "s", workers=1, **SETTINGS)
    first = store.get("x")[0]
    shutil.copy(b.path, work)  # the file is replaced (e.g. a regenerated dataset)
    store = FrameStore.build(items, tmp_path / "s", workers=1, **SETTINGS)
    again = store.get("x")[0]
    np.testing.assert_array_equal(again, sample_frames(b.path, size=48, framerate=2.0, max_frames=6)[0])
    assert not np.array_equal(first, again)


# ------------------------------------------------------------------------ keys: videos, generator, version
def test_open_refuses_changed_video_files(split, tmp_path):
    import os
    import shutil

    a, b = split.items[0], split.items[1]
    work = tmp_path / "v.mp4"
    shutil.copy(a.path, work)
    items = [VideoItem("x", str(work), ["c"]), split.items[2]]
    FrameStore.build(items, tmp_path / "s", workers=1, **SETTINGS)
    FrameStore.open(tmp_path / "s", **SETTINGS)
    shutil.copy(b.path, work)  # replaced: another size
    with pytest.raises(StoreSettingsError) as e:
        FrameStore.open(tmp_path / "s", **SETTINGS)
    msg = str(e.value)
    assert f"1 video file(s) changed since they were decoded, e.g. {work}" in msg
    assert "FrameStore.build" in msg and f"rm -r {tmp_path / 's'}" in msg and "gare data cache" in msg
    # touched only (same size, new mtime): also refused
    shutil.copy(a.path, work)
    FrameStore.build(items, tmp_path / "s", workers=1, **SETTINGS)  # decodes it again
    FrameStore.open(tmp_path / "s", **SETTINGS)
    st = os.stat(work)
    os.utime(work, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(StoreSettingsError, match="changed since they were decoded"):
        FrameStore.open(tmp_path / "s", **SETTINGS)
    assert FrameStore.open(tmp_path / "s", check_videos=False, **SETTINGS).get("x")[0].shape == (6, 48, 48, 3)
    # a store outlives its files: a video whose file is gone is not refused
    work.unlink()
    store = FrameStore.open(tmp_path / "s", **SETTINGS)
    np.testing.assert_array_equal(store.get("x")[0], sample_frames(a.path, size=48, framerate=2.0, max_frames=6)[0])


def test_refuses_regenerated_data_naming_the_manifest_difference(tmp_path):
    from gare.data.synthetic import generate

    opts = {"size": 32, "fps": 4, "duration": 1.0}
    ann = generate(tmp_path / "d", n_videos=10, seed=0, workers=1, **opts)
    sp = load_split("jsonl", "train", annotations=ann)
    store = FrameStore.build(sp, tmp_path / "s", workers=1, **SETTINGS)
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["version"] == 2
    assert meta["sources"] == {str(tmp_path / "d" / "videos"): {
        "kind": "generated", "format_version": 2, "n_videos": 10, "seed": 0,
        "options": json.loads((tmp_path / "d" / "manifest.json").read_text())["options"], "complete": True}}
    first = store.get(sp.items[0].video_id)[0]
    generate(tmp_path / "d", n_videos=10, seed=1, workers=1, **opts)  # same folder, another seed
    sp1 = load_split("jsonl", "train", annotations=ann)
    for call in (lambda: FrameStore.open(tmp_path / "s", **SETTINGS),
                 lambda: FrameStore.build(sp1, tmp_path / "s", workers=1, **SETTINGS)):
        with pytest.raises(StoreSettingsError) as e:
            call()
        assert "generated again with other settings (seed: 0 -> 1)" in str(e.value)
        assert f"rm -r {tmp_path / 's'}" in str(e.value)
    # a format change alone (the generator's FORMAT_VERSION) is named the same way
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    store = FrameStore.build(sp1, tmp_path / "s2", workers=1, **SETTINGS)
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(dict(man, format_version=3)))
    with pytest.raises(StoreSettingsError, match=r"format_version: 2 -> 3"):
        FrameStore.open(tmp_path / "s2", check_videos=False, **SETTINGS)
    assert not np.array_equal(first, store.get(sp1.items[0].video_id)[0])


def test_store_format_versions(split, tmp_path):
    FrameStore.build(split.items[:2], tmp_path / "s", workers=1, **SETTINGS)
    mpath = tmp_path / "s" / "meta.json"
    meta = json.loads(mpath.read_text())
    assert meta["version"] == 2 and list(meta["sources"]) == [str(Path(split.items[0].path).parent)]
    # a store of version 1 (no generator manifests recorded) opens; building into it records them
    old = {k: v for k, v in meta.items() if k != "sources"}
    mpath.write_text(json.dumps(dict(old, version=1)))
    FrameStore.open(tmp_path / "s", **SETTINGS)
    FrameStore.build(split.items[:3], tmp_path / "s", workers=1, **SETTINGS)
    again = json.loads(mpath.read_text())
    assert again["version"] == 2 and again["sources"] == meta["sources"]
    # a store from a newer gare is refused
    mpath.write_text(json.dumps(dict(again, version=99)))
    with pytest.raises(StoreSettingsError, match="format version 99, newer than this gare reads"):
        FrameStore.open(tmp_path / "s", **SETTINGS)
