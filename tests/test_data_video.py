"""Decoding and sampling: real files in several codecs, exact frame choice, masks, segments, bad files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from data_fixtures import counter_video, frame_index, need_real, real_videos, write_mp4
from gare.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    FrameTransform,
    VideoDecodeError,
    resize_center_crop,
    sample_frames,
    sample_times,
)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    return real_videos(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    # 50 frames at 10 fps (5 s); frame k is grey level 5k
    return counter_video(tmp_path_factory.getbasetemp() / "counter")


# ------------------------------------------------------------------------------------------ sampling math
def test_sample_times_grid_and_uniform_subsampling():
    np.testing.assert_allclose(sample_times(5.0, framerate=2, max_frames=12), np.arange(10) / 2)
    # 10 candidates, 4 kept: linspace(0, 9, 4) floored -> 0, 3, 6, 9
    np.testing.assert_allclose(sample_times(5.0, framerate=2, max_frames=4), [0.0, 1.5, 3.0, 4.5])
    np.testing.assert_allclose(sample_times(5.0, framerate=1, max_frames=12, start=1.2, end=3.0), [1.2, 2.2])
    assert len(sample_times(5.0, framerate=1, start=6.0)) == 0
    # end beyond the video is clipped to the duration
    np.testing.assert_allclose(sample_times(3.0, framerate=1, end=31), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError):
        sample_times(5.0, framerate=0)


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_exact_frames_counts_order_and_mask(counter, decoder):
    frames, mask = sample_frames(counter, framerate=2, max_frames=12, decoder=decoder)
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    assert mask.dtype == bool and mask.tolist() == [True] * 10 + [False] * 2
    assert [frame_index(f) for f in frames[:10]] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert (frames[10:] == 0).all()

    frames, mask = sample_frames(counter, framerate=2, max_frames=4, decoder=decoder)
    assert mask.all()
    assert [frame_index(f) for f in frames] == [0, 15, 30, 45]


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_segments(counter, decoder):
    frames, mask = sample_frames(counter, framerate=2, max_frames=6, start=1.0, end=3.0, decoder=decoder)
    assert mask.tolist() == [True] * 4 + [False] * 2
    assert [frame_index(f) for f in frames[:4]] == [10, 15, 20, 25]
    # a start after 2 s takes the seeking path
    frames, mask = sample_frames(counter, framerate=2, max_frames=8, start=3.0, decoder=decoder)
    assert [frame_index(f) for f, m in zip(frames, mask) if m] == [30, 35, 40, 45]
    # a time between two frames shows the earlier one: 0.25 s at 10 fps -> frame 2
    frames, mask = sample_frames(counter, framerate=1, max_frames=3, start=0.25, end=2.5, decoder=decoder)
    assert [frame_index(f) for f, m in zip(frames, mask) if m] == [2, 12, 22]


def test_segment_outside_video_is_a_bad_segment(counter):
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(counter, start=7.0, end=9.0)
    assert e.value.kind == "bad_segment" and "after the end" in e.value.reason
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(counter, start=3.0, end=2.0)
    assert e.value.kind == "bad_segment"


def test_resize_option_equals_resize_center_crop(counter):
    raw, m1 = sample_frames(counter, framerate=1, max_frames=5)
    small, m2 = sample_frames(counter, framerate=1, max_frames=5, size=16)
    assert small.shape == (5, 16, 16, 3) and (m1 == m2).all()
    np.testing.assert_array_equal(small, resize_center_crop(raw, 16))


# ------------------------------------------------------------------------------------- real codecs
CODECS = {  # file -> (codec, expected real frames at 1 fps with max_frames 12)
    "bigbuckbunny.mp4": ("h264", 6),     # 5.28 s, 1280x720
    "bikes.mp4": ("h264", 10),           # 10 s
    "cup.mp4": ("h264", 9),              # 8.1 s (opencv-doc, gzipped in the package)
    "vtest.avi": ("msmpeg4", 12),        # 79.5 s: 80 candidates -> 12
    "tree.avi": ("cinepak", 12),         # 29.6 s with sparse (variable-rate) frames
    "Megamind.avi": ("mpeg4", 12),       # 11.26 s xvid
    "carphone_pristine.mp4": ("h264", 5),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_real_files_decode_in_several_codecs(real, name):
    import av

    path = need_real(real, name)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == CODECS[name][0]
    frames, mask = sample_frames(path, framerate=1, max_frames=12)
    assert frames.shape[0] == 12 and int(mask.sum()) == CODECS[name][1]
    real_frames = frames[mask]
    assert real_frames.std() > 5  # actual picture content, not a blank
    # consecutive samples are different pictures (the clip moves), except for static stretches
    diffs = [np.abs(real_frames[i].astype(int) - real_frames[i + 1]).mean() for i in range(len(real_frames) - 1)]
    assert max(diffs) > 1.0


@pytest.mark.parametrize("name", ["bikes.mp4", "vtest.avi", "Megamind.avi"])
def test_pyav_and_opencv_agree_on_constant_rate_files(real, name):
    path = need_real(real, name)
    a, ma = sample_frames(path, framerate=1, max_frames=8, decoder="pyav")
    b, mb = sample_frames(path, framerate=1, max_frames=8, decoder="opencv")
    assert (ma == mb).all()
    # same frames; only the YUV->RGB conversion differs slightly between the two libraries
    per_frame = np.abs(a.astype(int) - b.astype(int)).reshape(8, -1).mean(1)
    assert per_frame.max() < 3.0, per_frame


def test_decord_decoder_is_optional(counter):
    try:
        import decord  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install decord"):
            sample_frames(counter, decoder="decord")
    else:
        frames, mask = sample_frames(counter, framerate=2, max_frames=12, decoder="decord")
        assert [frame_index(f) for f in frames[:10]] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]


def test_unknown_decoder():
    with pytest.raises(ValueError, match="unknown video decoder"):
        sample_frames("x.mp4", decoder="ffmpeg-cli")


# ------------------------------------------------------------------------------------------ bad input
def test_real_damaged_files(real):
    """carphone_distorted (heavily compressed twin) and Megamind_bugy (packed xvid bitstream) decode."""
    dist = need_real(real, "carphone_distorted.mp4")
    prist = need_real(real, "carphone_pristine.mp4")
    a, ma = sample_frames(dist, framerate=2, max_frames=8)
    b, mb = sample_frames(prist, framerate=2, max_frames=8)
    assert ma.sum() == mb.sum() == 8
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    psnr = 10 * np.log10(255 ** 2 / mse)
    assert 15 < psnr < 40, psnr  # same scene, visibly degraded
    bugy = need_real(real, "Megamind_bugy.avi")
    good = need_real(real, "Megamind.avi")
    f1, m1 = sample_frames(bugy, framerate=1, max_frames=12)
    f2, m2 = sample_frames(good, framerate=1, max_frames=12)
    assert m1.sum() == 9 and m2.sum() == 12  # 9.0 s vs 11.26 s declared


def test_missing_and_empty(tmp_path):
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(tmp_path / "nope.mp4")
    assert e.value.kind == "missing_video" and "does not exist" in str(e.value)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(empty)
    assert e.value.kind == "empty_file" and str(empty) in str(e.value)


@pytest.mark.parametrize("content", [b"this is not a video\n" * 50, bytes(range(256)) * 40])
@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_undecodable(tmp_path, content, decoder):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(content)
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(p, decoder=decoder)
    assert e.value.kind == "undecodable"


def test_truncated_avi_is_detected(real, tmp_path):
    data = need_real(real, "vtest.avi").read_bytes()
    p = tmp_path / "vtest_third.avi"
    p.write_bytes(data[: len(data) // 3])
    for decoder in ("pyav", "opencv"):
        with pytest.raises(VideoDecodeError) as e:
            sample_frames(p, decoder=decoder)
        assert e.value.kind == "truncated" and "79.50 s" in e.value.reason


def test_truncated_mp4(tmp_path, counter):
    data = counter.read_bytes()  # moov atom at the end: a cut file cannot be opened
    p = tmp_path / "cut.mp4"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(p)
    assert e.value.kind == "undecodable" and "truncated" in e.value.reason
    # moov atom first (faststart): the index survives, the frames stop early
    frames = np.random.default_rng(0).integers(0, 255, size=(100, 32, 32, 3), dtype=np.uint8)
    fs = write_mp4(tmp_path / "faststart.mp4", frames, fps=10, crf=10, faststart=True)
    data = fs.read_bytes()
    cut = tmp_path / "faststart_cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(cut)
    assert e.value.kind == "truncated"


def test_unknown_codec(real, tmp_path):
    data = bytearray(need_real(real, "tree.avi").read_bytes())
    i = data.find(b"vidscvid")
    data[i + 4:i + 8] = b"QZQZ"  # stream header handler
    j = data.find(b"cvid", i + 8)
    data[j:j + 4] = b"QZQZ"      # bitmap header compression
    p = tmp_path / "unknown.avi"
    p.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(p)
    assert e.value.kind == "unknown_codec" and "QZQZ" in e.value.reason
    with pytest.raises(VideoDecodeError):
        sample_frames(p, decoder="opencv")


def test_no_video_stream(tmp_path):
    import av

    p = tmp_path / "audio_only.wav"
    with av.open(str(p), mode="w", format="wav") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    with pytest.raises(VideoDecodeError) as e:
        sample_frames(p)
    assert e.value.kind == "no_video_stream"


def test_error_pickles_across_processes():
    e = VideoDecodeError("/x/y.mp4", "broken", "truncated")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, e2.kind, str(e2)) == (e.path, e.reason, e.kind, str(e))


# ------------------------------------------------------------------------------------------- transform
def test_transform_normalization_known_values():
    frames = np.full((2, 20, 30, 3), 128, dtype=np.uint8)
    out = FrameTransform(16)(frames)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    expect = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 5, 5], expect)


def test_transform_resize_short_side_and_center_crop():
    # 40 x 80 image: left quarter red, middle half green, right quarter blue.
    img = np.zeros((1, 40, 80, 3), dtype=np.uint8)
    img[..., :20, 0] = 255
    img[..., 20:60, 1] = 255
    img[..., 60:, 2] = 255
    out = resize_center_crop(img, 20)  # 20 x 40 after resize; the crop keeps columns 10..30 = the green half
    assert out.shape == (1, 20, 20, 3)
    assert (out[0, :, 2:-2, 1] > 240).all() and (out[0, :, 2:-2, 0] < 15).all() and (out[0, :, 2:-2, 2] < 15).all()
    t = FrameTransform(20)(img)
    torch.testing.assert_close(t, FrameTransform(20)(out))  # already-sized frames pass through unchanged


def test_transform_eval_deterministic_and_train_random():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(4, 48, 64, 3), dtype=np.uint8)
    ev = FrameTransform(32, train=False)
    torch.testing.assert_close(ev(frames), ev(frames))
    tr = FrameTransform(32, train=True, augment=("crop", "randaugment"))
    torch.manual_seed(0)
    a = tr(frames)
    torch.manual_seed(1)
    b = tr(frames)
    torch.manual_seed(0)
    c = tr(frames)
    assert a.shape == (4, 3, 32, 32)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(a, c)


def test_transform_train_draws_once_per_clip():
    frame = np.random.default_rng(1).integers(0, 255, size=(1, 48, 64, 3), dtype=np.uint8)
    frames = np.repeat(frame, 5, axis=0)
    tr = FrameTransform(32, train=True, augment=("crop", "flip", "randaugment"))
    for seed in range(5):
        torch.manual_seed(seed)
        out = tr(frames)
        for k in range(1, 5):
            torch.testing.assert_close(out[k], out[0])


def test_flip_is_opt_in():
    img = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    img[..., :16, :] = 255  # bright left half
    left_bright = []
    tr = FrameTransform(32, train=True, augment=("flip",))
    torch.manual_seed(0)
    for _ in range(40):
        out = tr(img)
        left_bright.append(bool(out[0, 0, :, :8].mean() > out[0, 0, :, -8:].mean()))
    assert 5 < sum(left_bright) < 35  # both orientations occur
    default = FrameTransform(32, train=True)
    assert "flip" not in default.augment
    with pytest.raises(ValueError, match="unknown augmentation"):
        FrameTransform(32, train=True, augment=("solarize",))


def test_frame_transform_table_path_equals_the_formula():
    """Frames already at the output size take the per-value table: bit-identical to (x / 255 - mean) / std
    computed on the tensor, for every uint8 value and channel; augmenting transforms keep the general path."""
    from gare.data.video import CLIP_MEAN, CLIP_STD, FrameTransform

    x = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    x[1] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)  # every value in every channel
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    ref = (torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0) - mean) / std
    for tf in (FrameTransform(16), FrameTransform(16, train=True, augment=())):
        assert not tf.random
        y = tf(x)
        assert y.dtype == torch.float32 and y.shape == (3, 3, 16, 16) and y.is_contiguous()
        assert torch.equal(y, ref)
        assert torch.equal(tf(torch.from_numpy(x)), ref)
    assert FrameTransform(16, train=True, augment=("crop",)).random
