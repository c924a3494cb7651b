"""Data CLI glue: synth, compress (resumable, parallel), cache; wiring into an argparse tree."""

from __future__ import annotations

import argparse
import json

import av
import numpy as np
import pytest

from data_fixtures import counter_video, need_real, real_videos, write_mp4
from gare.data.cache import FrameStore, StoreSettingsError
from gare.data.commands import add_data_commands, compress_folder, compress_video, main
from gare.data.report import TooManyBadInputs, read_report
from gare.data.video import sample_frames


def test_add_data_commands_wires_three_subcommands():
    parser = argparse.ArgumentParser(prog="gare")
    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(["data", "synth", "out", "--videos", "12", "--seed", "3"])
    assert (args.command, args.data_command, args.out, args.videos, args.seed) == ("data", "synth", "out", 12, 3)
    args = parser.parse_args(["data", "compress", "a", "b"])
    assert (args.src, args.dst, args.fps, args.short_side) == ("a", "b", 3.0, 224)
    args = parser.parse_args(["data", "cache", "--dataset", "jsonl", "--split", "test", "--annotations", "x.jsonl",
                              "--out", "s"])
    assert (args.framerate, args.max_frames, args.size, args.decoder) == (1.0, 12, 224, "pyav")
    for name in ("synth", "compress", "cache"):
        assert callable(parser.parse_args(["data", name, "x", "y"] if name == "compress" else
                                          ["data", name, "x"] if name == "synth" else
                                          ["data", name, "--dataset", "msvd", "--split", "val",
                                           "--annotations", "a", "--out", "o"]).func)


def test_gare_cli_has_the_data_commands():
    from gare.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["data", "synth", "out", "--videos", "12"])
    assert (args.data_command, args.out, args.videos, args.func.__name__) == ("synth", "out", 12, "cmd_synth")
    args = parser.parse_args(["data", "cache", "--dataset", "msvd", "--split", "val", "--annotations", "a",
                              "--out", "s", "--decoder", "opencv"])
    assert (args.data_command, args.dataset, args.decoder, args.func.__name__) == ("cache", "msvd", "opencv",
                                                                                  "cmd_cache")
    assert parser.parse_args(["data", "compress", "a", "b"]).func.__name__ == "cmd_compress"


def test_module_main_synth_and_cache(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--videos", "12", "--seed", "1", "--workers", "1"]) == 0
    ann = tmp_path / "d" / "annotations.jsonl"
    rows = [json.loads(x) for x in ann.read_text().splitlines()]
    assert len(rows) == 12
    assert main(["cache", "--dataset", "jsonl", "--split", "train", "--annotations", str(ann),
                 "--out", str(tmp_path / "store"), "--framerate", "2", "--max-frames", "8", "--size", "32",
                 "--workers", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["failed"] == 0 and out["videos"] == sum(r["split"] == "train" for r in rows)
    store = FrameStore.open(tmp_path / "store", framerate=2, max_frames=8, size=32)
    assert all(r["id"] in store for r in rows if r["split"] == "train")
    # a refusal names the command that rebuilds the store, with the settings asked for
    with pytest.raises(StoreSettingsError) as e:
        FrameStore.open(tmp_path / "store", framerate=2, max_frames=8, size=64)
    assert (f"gare data cache --dataset jsonl --split train --annotations {ann} --out {tmp_path / 'store'} "
            "--framerate 2 --max-frames 8 --size 64 --decoder pyav") in str(e.value)


def test_compress_fps_size_and_content(tmp_path_factory, tmp_path):
    real = real_videos(tmp_path_factory.getbasetemp())
    src = need_real(real, "bikes.mp4")  # 640 x 272, 25 fps, 10 s
    info = compress_video(src, tmp_path / "bikes.mp4", fps=3, short_side=224)
    assert info["height"] == 224 and info["width"] == 528
    with av.open(str(tmp_path / "bikes.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.width, s.height, float(s.average_rate)) == ("h264", 528, 224, 3.0)
        n = sum(1 for _ in c.decode(s))
    assert n == info["frames"] == 30
    # the frames are the source's frames at those times (allowing for re-encoding)
    a, _ = sample_frames(tmp_path / "bikes.mp4", framerate=1, max_frames=10, size=112)
    b, _ = sample_frames(src, framerate=1, max_frames=10, size=112)
    assert np.abs(a.astype(float) - b).mean() < 6


def test_compress_folder_is_resumable_and_reports_failures(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    frames = np.zeros((20, 64, 96, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(20)[:, None, None] * 10
    write_mp4(src / "a.mp4", frames, fps=10)
    write_mp4(src / "sub" / "b.avi.mp4", frames, fps=10)
    (src / "broken.mp4").write_bytes(b"junk" * 100)
    dst = tmp_path / "dst"
    with pytest.raises(TooManyBadInputs, match="1 of 3 videos"):
        compress_folder(src, dst, fps=3, short_side=32, workers=2, progress=False)
    assert (dst / "a.mp4").exists() and (dst / "sub" / "b.avi.mp4").exists()
    assert [e["kind"] for e in read_report(dst / "bad_inputs.jsonl")] == ["undecodable"]
    mtime = (dst / "a.mp4").stat().st_mtime_ns
    counts = compress_folder(src, dst, fps=3, short_side=32, workers=1, progress=False, max_bad_fraction=0.5)
    assert counts == {"total": 3, "skipped": 2, "done": 0, "failed": 1}
    assert (dst / "a.mp4").stat().st_mtime_ns == mtime
    with av.open(str(dst / "a.mp4")) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (48, 32) and float(s.average_rate) == 3.0
    assert not list(dst.rglob("*.part"))


def test_compress_never_upscales(tmp_path_factory, tmp_path):
    counter = counter_video(tmp_path_factory.getbasetemp() / "counter")  # 32 x 32
    info = compress_video(counter, tmp_path / "c.mp4", fps=2, short_side=224)
    assert (info["width"], info["height"]) == (32, 32) and info["frames"] == 10
