"""Annotation readers on the real benchmark files: published split sizes, protocols, bad rows."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from data_fixtures import ANNOTATIONS, need_annotations
from gare.data.datasets import Split, VideoItem, load_split
from gare.data.report import BadInputReport, TooManyBadInputs, read_report

STANDIN = "schema_standin/videodatainfoITALIANO_2017_6513_497_100_TestValidati.json.gz"


def _load(dataset, split, **kw):
    kw.setdefault("check_videos", False)
    return load_split(dataset, split, annotations=ANNOTATIONS / dataset, **kw)


# -------------------------------------------------------------------------------------------- MSR-VTT
def test_msrvtt_1ka_test():
    need_annotations("msrvtt")
    sp = _load("msrvtt", "test")
    assert len(sp) == 1000 and sp.protocol == "single"
    texts, qv = sp.queries()
    assert len(texts) == 1000 and qv == list(range(1000))  # text i <-> video i: diagonal ground truth
    assert sp.items[0].video_id == "video9770" and texts[0] == "a person is connecting something to system"
    assert sp.meta["published_videos"] == 1000


def test_msrvtt_train_lists_and_holdout():
    d = need_annotations("msrvtt")
    data_json = d / STANDIN
    # The Italian stand-in has captions for 7,097 of the 9,000 "9k" videos: over the 1% threshold
    with pytest.raises(TooManyBadInputs, match=r"1903 of 9000 videos of msrvtt/train"):
        _load("msrvtt", "train", data_json=data_json, val_size=0)
    rep = BadInputReport()
    sp = _load("msrvtt", "train", data_json=data_json, val_size=0, max_bad_fraction=1.0, report=rep)
    assert sp.meta["listed_videos"] == 9000 and len(sp) == 7097 and sp.num_captions() == 141940
    assert rep.count(["no_annotation"]) == 1903 and len(sp) + 1903 == 9000
    assert len(sp.train_pairs()) == 141940
    sp7 = _load("msrvtt", "train", data_json=data_json, val_size=0, train_list="7k")
    assert len(sp7) == 7010 and sp7.num_captions() == 140200 and sp7.meta["published_videos"] == 7010
    # seeded hold-out of training videos: disjoint from train and from test, deterministic
    tr = _load("msrvtt", "train", data_json=data_json, train_list="7k", val_size=300)
    va = _load("msrvtt", "val", data_json=data_json, train_list="7k", val_size=300)
    va2 = _load("msrvtt", "val", data_json=data_json, train_list="7k", val_size=300)
    va3 = _load("msrvtt", "val", data_json=data_json, train_list="7k", val_size=300, val_seed=1)
    te = _load("msrvtt", "test")
    assert len(va) == 300 and len(tr) == 7010 - 300
    assert not set(va.video_ids) & set(tr.video_ids)
    assert not set(va.video_ids) & set(te.video_ids)
    assert va.video_ids == va2.video_ids and set(va.video_ids) != set(va3.video_ids)
    assert va.protocol == "single"
    with pytest.raises(ValueError, match="val_size"):
        _load("msrvtt", "val", data_json=data_json, val_size=0)


def test_msrvtt_full_split_uses_all_captions():
    d = need_annotations("msrvtt")
    rep = BadInputReport()
    sp = _load("msrvtt", "test", test_list="full", data_json=d / STANDIN, max_bad_fraction=1.0, report=rep)
    assert sp.meta["listed_videos"] == 2990 and sp.protocol == "all"
    # the stand-in has 20 captions for 100 of the test videos
    assert len(sp) == 100 and sp.num_captions() == 2000 and rep.count() == 2890
    texts, qv = sp.queries()
    assert len(texts) == 2000 and qv[:21] == [0] * 20 + [1]


def test_msrvtt_missing_captions_file_is_explained(tmp_path):
    d = need_annotations("msrvtt")
    shutil.copy(d / "MSRVTT_train.9k.csv", tmp_path / "MSRVTT_train.9k.csv")
    with pytest.raises(FileNotFoundError, match="MSRVTT_data.json"):
        load_split("msrvtt", "train", annotations=tmp_path, check_videos=False)


# ----------------------------------------------------------------------------------------------- MSVD
@pytest.mark.parametrize("split,videos,captions", [("train", 1200, 48774), ("val", 100, 4290),
                                                    ("test", 670, 27763)])
def test_msvd_published_sizes(split, videos, captions):
    need_annotations("msvd")
    sp = _load("msvd", split)
    assert len(sp) == videos and sp.num_captions() == captions and sp.protocol == "all"
    texts, qv = sp.queries()
    assert len(texts) == captions and max(qv) == videos - 1


def test_msvd_pickle_captions_match_json(tmp_path):
    d = need_annotations("msvd")
    sp_json = _load("msvd", "val")
    sp_pkl = _load("msvd", "val", captions=d / "raw-captions.reconstructed.pkl")
    assert [it.captions for it in sp_json.items] == [it.captions for it in sp_pkl.items]
    # a pickle that names a class is refused (captions come from downloads)
    import pickle

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"x": [os.getcwd]}))
    shutil.copy(d / "val_list.txt", tmp_path / "val_list.txt")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_split("msvd", "val", annotations=tmp_path, captions=bad, check_videos=False)


# --------------------------------------------------------------------------------------------- DiDeMo
def test_didemo_sizes_and_golden_paragraphs():
    d = need_annotations("didemo")
    for split, n in (("val", 1065), ("test", 1004)):
        sp = _load("didemo", split)
        assert len(sp) == n and sp.protocol == "paragraph"
        texts, qv = sp.queries()
        assert len(texts) == n and qv == list(range(n))
        # the T-MASS dump of the CLIP4Clip loader's output is the golden expectation
        gold = {os.path.basename(r["video_path"]): r["text"]
                for r in csv.DictReader(open(d / f"tmass_clip4clip_dump/didemo_{split}_label.csv"))}
        by_id = dict(zip(sp.video_ids, texts))
        assert len(gold) in (1062, 1004)
        assert all(by_id[k] == v for k, v in gold.items())
        assert sp.train_pairs() == list(enumerate(texts))


def test_didemo_train_from_paragraph_dump_reports_missing():
    need_annotations("didemo")
    rep = BadInputReport()
    sp = _load("didemo", "train", report=rep)
    # train_data.json is not available: the dump has 8,362 of the 8,392 listed videos; the 30 others
    # are reported, not silently dropped
    assert sp.meta["listed_videos"] == 8392 and len(sp) == 8362
    assert rep.count(["no_annotation"]) == 30


def test_didemo_time_order_option():
    need_annotations("didemo")
    js = _load("didemo", "val")
    tm = _load("didemo", "val", order="time")
    assert [sorted(a.captions) for a in js.items] == [sorted(b.captions) for b in tm.items]
    changed = sum(a.captions != b.captions for a, b in zip(js.items, tm.items))
    assert changed > 500  # DiDeMo's file order is not time order for most videos
    with pytest.raises(ValueError, match="order"):
        _load("didemo", "val", order="alphabetical")


def test_didemo_video_name_matching(tmp_path):
    """Names keep their original extension (or end in a bare dot); compressed copies are <name>.mp4."""
    need_annotations("didemo")
    sp = _load("didemo", "test")
    names = sp.video_ids
    vdir = tmp_path / "videos"
    vdir.mkdir()
    dotted = [n for n in names if n.endswith(".")][:2]
    plain = [n for n in names if not n.endswith(".")]
    for n in plain[:500]:
        (vdir / n).write_bytes(b"x")                      # original file name
    for n in plain[500:]:
        (vdir / (os.path.splitext(n)[0] + ".mp4")).write_bytes(b"x")  # re-encoded to <stem>.mp4
    for n in dotted:
        (vdir / (n + "mp4")).write_bytes(b"x")              # "<name>." -> "<name>.mp4"
    rep = BadInputReport(tmp_path / "bad.jsonl")
    sp2 = load_split("didemo", "test", annotations=ANNOTATIONS / "didemo", videos=vdir, report=rep,
                     max_bad_fraction=0.05)
    missing = len(names) - len(plain) - len(dotted)
    assert len(sp2) == len(names) - missing and rep.count(["missing_video"]) == missing
    assert all(os.path.exists(it.path) for it in sp2.items)


# ---------------------------------------------------------------------------------------- ActivityNet
def test_activitynet_sizes_and_paragraphs():
    d = need_annotations("activitynet")
    rep = BadInputReport()
    tr = _load("activitynet", "train", val_size=0, report=rep)
    assert len(tr) == 10009 and tr.meta["published_videos"] == 10009
    assert rep.count(["no_annotation"]) == 15  # ids without captions, reported
    te = _load("activitynet", "test", report=rep)
    assert len(te) == 4917 and rep.count(["no_annotation"]) == 15 + 9
    raw = json.load(open(d / "val_1.json"))
    texts, qv = te.queries()
    assert len(texts) == 4917 and qv == list(range(4917))
    assert texts[0] == " ".join(raw[te.video_ids[0]]["sentences"])  # CLIP4Clip paragraph
    assert sum(len(it.captions) for it in te.items) == 17505


def test_activitynet_validation_is_a_training_holdout():
    need_annotations("activitynet")
    tr = _load("activitynet", "train")
    va = _load("activitynet", "val")
    te = _load("activitynet", "test")
    assert len(va) == 500 and len(tr) == 10009 - 500
    assert not set(va.video_ids) & set(tr.video_ids)
    assert not set(va.video_ids) & set(te.video_ids)


def test_activitynet_youtube_id_file_names(tmp_path):
    need_annotations("activitynet")
    sp = _load("activitynet", "test")
    vdir = tmp_path / "v"
    vdir.mkdir()
    for k, vid in enumerate(sp.video_ids):
        name = f"{vid[2:]}.mkv" if k % 2 else f"{vid}.mp4"  # CLIP4Clip naming, or with the v_ prefix
        (vdir / name).write_bytes(b"x")
    sp2 = load_split("activitynet", "test", annotations=ANNOTATIONS / "activitynet", videos=vdir)
    assert len(sp2) == 4917
    assert sp2.items[1].path.endswith(".mkv") and sp2.items[0].path.endswith(".mp4")


# ---------------------------------------------------------------------------------- missing videos
def _msrvtt_test_videos(tmp_path, n_present, n_empty=0):
    sp = _load("msrvtt", "test")
    vdir = tmp_path / "videos"
    vdir.mkdir()
    for k, vid in enumerate(sp.video_ids[:n_present]):
        (vdir / f"{vid}.mp4").write_bytes(b"" if k < n_empty else b"data")
    return vdir


def test_absent_videos_under_threshold_are_reported(tmp_path):
    need_annotations("msrvtt")
    vdir = _msrvtt_test_videos(tmp_path, 995, n_empty=2)
    run = tmp_path / "run"
    run.mkdir()
    sp = load_split("msrvtt", "test", annotations=ANNOTATIONS / "msrvtt", videos=vdir, report=run)
    assert len(sp) == 993
    entries = read_report(run / "bad_inputs.jsonl")
    kinds = sorted(e["kind"] for e in entries)
    assert kinds == ["empty_file"] * 2 + ["missing_video"] * 5
    assert all(e["split"] == "msrvtt/test" and e["reason"] for e in entries)
    assert sp.meta["bad_videos"] == 7


def test_absent_videos_over_threshold_stop_with_count_and_path(tmp_path):
    need_annotations("msrvtt")
    vdir = _msrvtt_test_videos(tmp_path, 980)
    report_path = tmp_path / "run" / "bad_inputs.jsonl"
    with pytest.raises(TooManyBadInputs) as e:
        load_split("msrvtt", "test", annotations=ANNOTATIONS / "msrvtt", videos=vdir, report=report_path)
    msg = str(e.value)
    assert "20 of 1000 videos of msrvtt/test" in msg and str(report_path) in msg and "missing_video=20" in msg
    assert len(read_report(report_path)) == 20
    # a higher threshold accepts the loss
    sp = load_split("msrvtt", "test", annotations=ANNOTATIONS / "msrvtt", videos=vdir, max_bad_fraction=0.05)
    assert len(sp) == 980


def test_missing_video_folder_is_explained(tmp_path):
    need_annotations("msrvtt")
    with pytest.raises(FileNotFoundError, match="video directory"):
        load_split("msrvtt", "test", annotations=ANNOTATIONS / "msrvtt", videos=tmp_path / "nope")


# --------------------------------------------------------------------------------------------- JSONL
def _write_jsonl(path, rows, extra_lines=()):
    with open(path, "wb") as f:
        for r in rows:
            f.write((json.dumps(r) + "\n").encode())
        for line in extra_lines:
            f.write(line)
    return path


def test_jsonl_generic_format(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").write_bytes(b"x")
    ann = _write_jsonl(tmp_path / "ann.jsonl", [
        {"video": "a.mp4", "captions": ["a cat", "a small cat"], "split": "test"},
        {"video": "sub/b.mp4", "captions": "a dog", "split": "test", "start": 1.5, "end": 4},
        {"video": "a.mp4", "captions": ["a cat sleeps"], "split": "train"},
    ])
    te = load_split("jsonl", "test", annotations=ann)
    assert [it.video_id for it in te.items] == ["a", "sub/b"]
    assert te.items[1].captions == ["a dog"] and (te.items[1].start, te.items[1].end) == (1.5, 4.0)
    assert te.queries() == (["a cat", "a small cat", "a dog"], [0, 0, 1])
    te1 = load_split("jsonl", "test", annotations=ann, protocol="single")
    assert te1.queries() == (["a cat", "a dog"], [0, 1])
    tep = load_split("jsonl", "test", annotations=ann, protocol="paragraph")
    assert tep.queries()[0] == ["a cat a small cat", "a dog"]


def test_jsonl_bad_rows_are_counted(tmp_path):
    rows = []
    for k in range(200):
        (tmp_path / f"v{k}.mp4").write_bytes(b"x")
        rows.append({"video": f"v{k}.mp4", "captions": [f"caption {k}", f"other {k}"], "split": "train"})
    rows[3]["captions"] = ["", "   "]          # no usable caption -> video dropped
    rows[4]["captions"] = ["fine", ""]         # one empty caption
    rows[5]["video"] = "absent.mp4"            # names an absent video
    (tmp_path / "v6.mp4").write_bytes(b"")     # empty file
    bad_utf8 = b'{"video": "v7.mp4", "captions": ["caf\xe9 au lait", "ok"], "split": "train"}\n'
    rows = [r for k, r in enumerate(rows) if k != 7]
    ann = _write_jsonl(tmp_path / "ann.jsonl", rows, [bad_utf8, b"{not json\n"])
    run = tmp_path / "run"
    run.mkdir()
    sp = load_split("jsonl", "train", annotations=ann, report=run, val_size=0, max_bad_fraction=0.05)
    entries = read_report(run / "bad_inputs.jsonl")
    kinds = sorted(e["kind"] for e in entries)
    assert kinds == sorted(["empty_caption", "empty_caption", "no_captions", "empty_caption", "missing_video",
                            "empty_file", "non_utf8", "malformed_row"])
    assert any("caf" in e["reason"] and "UTF-8" in e["reason"] for e in entries)
    assert len(sp) == 200 - 3  # v3 (no caption), v5 (absent), v6 (empty file)
    v7 = sp.items[sp.index_of("v7")]
    assert v7.captions == ["ok"]
    with pytest.raises(TooManyBadInputs, match="4 of 200 videos of jsonl/train"):
        load_split("jsonl", "train", annotations=ann, val_size=0)


def test_jsonl_validation_holdout_when_no_val_rows(tmp_path):
    rows = [{"video": f"v{k}.mp4", "captions": [f"c{k}"], "split": "train"} for k in range(40)]
    rows += [{"video": f"t{k}.mp4", "captions": [f"t{k}"], "split": "test"} for k in range(5)]
    ann = _write_jsonl(tmp_path / "ann.jsonl", rows)
    tr = load_split("jsonl", "train", annotations=ann, check_videos=False)
    va = load_split("jsonl", "val", annotations=ann, check_videos=False)
    assert len(va) == 2 and len(tr) == 38 and not set(va.video_ids) & set(tr.video_ids)


# ------------------------------------------------------------------------------------------ the Split
def test_split_protocols_and_pairs():
    items = [VideoItem("a", "a.mp4", ["x1", "x2"]), VideoItem("b", "b.mp4", ["y1"])]
    assert Split("test", "t", items, "single").queries() == (["x1", "y1"], [0, 1])
    assert Split("test", "t", items, "all").queries() == (["x1", "x2", "y1"], [0, 0, 1])
    assert Split("test", "t", items, "paragraph").queries() == (["x1 x2", "y1"], [0, 1])
    assert Split("train", "t", items, "all").train_pairs() == [(0, "x1"), (0, "x2"), (1, "y1")]
    assert Split("train", "t", items, "paragraph").train_pairs() == [(0, "x1 x2"), (1, "y1")]
    with pytest.raises(ValueError):
        Split("test", "t", items, "multi")


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("kinetics", "test", annotations=".")
    with pytest.raises(ValueError, match="unknown split"):
        load_split("msvd", "dev", annotations=".")


# ------------------------------------------------------------------------------------------- registry
def test_registry_lists_every_reader_with_its_published_sizes(tmp_path, caplog):
    from gare.data.datasets import DATASETS, PUBLISHED_SIZES, READERS, Reader, get_reader

    assert DATASETS == ("msrvtt", "msvd", "didemo", "activitynet", "jsonl")
    assert all(isinstance(READERS[d], Reader) and READERS[d].name == d for d in DATASETS)
    # each reader declares its sizes; the flat table is gathered from them
    assert get_reader("msrvtt").published_size("train", {"train_list": "7k"}) == 7010
    assert get_reader("msrvtt").published_size("test", {"test_list": "full"}) == 2990
    assert get_reader("msrvtt").published_size("val", {}) is None  # a hold-out has no published size
    assert get_reader("activitynet").published_size("val", {}) is None
    assert get_reader("didemo").published_size("val", {}) == 1065
    assert get_reader("jsonl").published_size("train", {}) is None
    assert PUBLISHED_SIZES[("msrvtt", "train", "9k")] == 9000 and PUBLISHED_SIZES[("msvd", "test")] == 670
    assert len(PUBLISHED_SIZES) == 4 + 3 + 3 + 2
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'.*msrvtt"):
        get_reader("kinetics")
    # a reader's own options are checked: an unknown one names the dataset
    with pytest.raises(TypeError, match="msvd: .*unexpected keyword.*'val_size'"):
        load_split("msvd", "test", annotations=tmp_path, check_videos=False, val_size=3)


def test_published_size_mismatch_is_logged(tmp_path, caplog):
    d = need_annotations("msvd")
    for f in ("test_list.txt", "captions_msvd.json"):
        shutil.copy(d / f, tmp_path / f)
    ids = (tmp_path / "test_list.txt").read_text().split()
    (tmp_path / "test_list.txt").write_text("\n".join(ids[:10]) + "\n")
    with caplog.at_level("WARNING"):
        sp = load_split("msvd", "test", annotations=tmp_path, check_videos=False)
    assert len(sp) == 10 and sp.meta["published_videos"] == 670
    assert "annotations describe 10 videos, the published split has 670" in caplog.text
