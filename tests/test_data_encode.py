"""The one H.264 writer (data/encode.py): exact colour conversion, round trip, determinism, atomic output."""

from __future__ import annotations

import av
import numpy as np
import pytest

from gare.data.encode import encode_mp4, h264_writer, rgb_to_yuv420p


def _decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_rgb_to_yuv420p_bt601_limited_range():
    # BT.601 limited range: black (16, 128, 128), white (235, 128, 128), red (82, 90, 240), green (144.6, 54,
    # 34), blue (41, 240, 110); the 8-bit integer approximation rounds green's luma down to 144
    for rgb, yuv in (((0, 0, 0), (16, 128, 128)), ((255, 255, 255), (235, 128, 128)), ((255, 0, 0), (82, 90, 240)),
                     ((0, 255, 0), (144, 54, 34)), ((0, 0, 255), (41, 240, 110))):
        img = np.broadcast_to(np.array(rgb, dtype=np.uint8), (4, 6, 3))
        planes = rgb_to_yuv420p(img)
        assert planes.shape == (6, 6) and planes.dtype == np.uint8
        assert (planes[:4] == yuv[0]).all()
        assert (planes[4:5] == yuv[1]).all() and (planes[5:6] == yuv[2]).all()
    # random colours: within one level of the floating-point BT.601 formula
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y_ref = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    assert np.abs(rgb_to_yuv420p(rgb)[:8].astype(float) - y_ref).max() <= 1.0
    # chroma is the mean of each 2x2 block: a block half red, half blue gets the average
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    img[:, 0::2] = (255, 0, 0)
    img[:, 1::2] = (0, 0, 255)
    planes = rgb_to_yuv420p(img)
    assert planes[:4].tolist() == [[82, 41, 82, 41]] * 4
    assert (planes[4] == 165).all() and (planes[5] == 175).all()


def test_round_trip_and_deterministic_bytes(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((6, 32, 48, 3), dtype=np.uint8)
    for k in range(6):
        frames[k, :, :] = rng.integers(40, 220, size=3)  # one flat colour per frame
    a = encode_mp4(frames, tmp_path / "a.mp4", fps=4, crf=0)
    b = encode_mp4(frames, tmp_path / "b.mp4", fps=4, crf=0)
    assert a.read_bytes() == b.read_bytes()
    got = _decode(a)
    assert len(got) == 6 and got[0].shape == (32, 48, 3)
    for k in range(6):  # flat frames survive 4:2:0 and limited range within a few levels
        assert np.abs(got[k].astype(int) - frames[k].astype(int)).max() <= 3
    with av.open(str(a)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and float(s.average_rate) == 4.0 and s.frames == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no temporary files left


def test_write_frame_scales_decoded_frames(tmp_path):
    src = encode_mp4(np.full((3, 64, 96, 3), 200, dtype=np.uint8), tmp_path / "src.mp4", fps=2, crf=0)
    with av.open(str(src)) as c, h264_writer(tmp_path / "half.mp4", width=48, height=32, fps=2, crf=0) as out:
        for f in c.decode(video=0):
            out.write_frame(f)
        assert out.frames == 3
    got = _decode(tmp_path / "half.mp4")
    assert len(got) == 3 and got[0].shape == (32, 48, 3) and abs(int(got[0].mean()) - 200) <= 2


def test_bad_frames_are_refused_and_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="even frame size"):
        with h264_writer(tmp_path / "odd.mp4", width=33, height=32, fps=2, crf=20):
            pass
    frames = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"expected a uint8 \[32, 32, 3\] frame"):
        with h264_writer(tmp_path / "x.mp4", width=32, height=32, fps=2, crf=20) as out:
            for f in frames:
                out.write_rgb(f)
    (tmp_path / "x.mp4").unlink(missing_ok=True)  # not atomic on its own: the caller wraps it
    with pytest.raises(ValueError):
        encode_mp4(np.zeros((2, 32, 33, 3), np.uint8), tmp_path / "y.mp4")
    assert list(tmp_path.iterdir()) == []  # encode_mp4 is atomic: nothing half-written stays
