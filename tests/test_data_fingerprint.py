"""dataset_fingerprint: the generator's manifest for generated data, a listing hash for other folders."""

from __future__ import annotations

import json
import os

import pytest

from gare.data import dataset_fingerprint
from gare.data.fingerprint import describe_difference
from gare.data.synthetic import DEFAULTS, FORMAT_VERSION, generate

OPTS = {"size": 32, "fps": 4, "duration": 1.0}


def test_generated_data_is_keyed_by_its_manifest(tmp_path):
    ann = generate(tmp_path / "d", n_videos=10, seed=0, workers=1, **OPTS)
    fp = dataset_fingerprint(tmp_path / "d")
    assert fp == {"kind": "generated", "format_version": FORMAT_VERSION, "n_videos": 10, "seed": 0,
                  "options": dict(DEFAULTS, **OPTS), "complete": True}
    # the root, its videos/ folder and its annotation file name the same dataset
    assert dataset_fingerprint(tmp_path / "d" / "videos") == fp == dataset_fingerprint(ann)
    json.dumps(fp)  # JSON-ready, for other caches' keys
    # regenerated with the same options: byte-identical files, new mtimes, same fingerprint
    video = tmp_path / "d" / "videos" / "synth_00000.mp4"
    before = (video.read_bytes(), video.stat().st_mtime_ns)
    generate(tmp_path / "d", n_videos=10, seed=0, workers=1, overwrite=True, **OPTS)
    assert video.read_bytes() == before[0] and video.stat().st_mtime_ns != before[1]
    assert dataset_fingerprint(tmp_path / "d") == fp
    # another seed, count or option changes it, and the difference is named
    generate(tmp_path / "d", n_videos=12, seed=1, workers=1, **OPTS)
    fp2 = dataset_fingerprint(tmp_path / "d")
    assert describe_difference(fp, fp2) == "n_videos: 10 -> 12, seed: 0 -> 1"
    generate(tmp_path / "d", n_videos=12, seed=1, workers=1, **dict(OPTS, crf=30))
    assert describe_difference(fp2, dataset_fingerprint(tmp_path / "d")) == "options.crf: 20 -> 30"


def test_real_folders_get_a_listing_hash(tmp_path):
    v = tmp_path / "videos"
    (v / "sub").mkdir(parents=True)
    (v / "a.mp4").write_bytes(b"x" * 10)
    (v / "sub" / "b.AVI").write_bytes(b"y" * 5)
    (v / "notes.txt").write_text("not a video")
    fp = dataset_fingerprint(v)
    assert fp["kind"] == "listing" and fp["files"] == 2 and fp["bytes"] == 15 and len(fp["listing_sha256"]) == 64
    assert dataset_fingerprint(v) == fp
    (v / "notes.txt").write_text("other text")  # not a video: ignored
    assert dataset_fingerprint(v) == fp
    st = os.stat(v / "a.mp4")
    os.utime(v / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched
    touched = dataset_fingerprint(v)
    assert touched["listing_sha256"] != fp["listing_sha256"] and touched["bytes"] == 15
    (v / "c.webm").write_bytes(b"z")  # added
    assert dataset_fingerprint(v)["files"] == 3
    (v / "c.webm").unlink()
    (v / "sub" / "b.AVI").rename(v / "sub" / "b2.AVI")  # renamed
    assert dataset_fingerprint(v)["listing_sha256"] not in (fp["listing_sha256"], touched["listing_sha256"])
    # a manifest.json that is not the generator's does not make a folder generated
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    assert dataset_fingerprint(v)["kind"] == "listing"
    with pytest.raises(FileNotFoundError, match="video folder .*nowhere does not exist"):
        dataset_fingerprint(tmp_path / "nowhere")
