"""The generated moving-shapes dataset: determinism, structure, and captions checked against the pixels."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from data_fixtures import synth_dataset
from gare.data.datasets import load_split
from gare.data.synthetic import ACTIONS, COLOURS, MOTIONS, SHAPES, _plan, canonical_caption, generate
from gare.data.synthetic import DEFAULTS as SYNTH_DEFAULTS
from gare.data.video import sample_frames


@pytest.fixture(scope="module")
def synth20(tmp_path_factory):
    return synth_dataset(tmp_path_factory.getbasetemp(), n_videos=20, seed=0)


@pytest.fixture(scope="module")
def plan1000():
    return _plan(1000, 0, dict(SYNTH_DEFAULTS))


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


# ------------------------------------------------------------------------------------------- structure
def _full_frame_render(desc, render_seed, *, size=112, fps=8, duration=4.0, textured_fraction=0.5):
    """The plain form of ``render``'s pixels: every object blended over the whole frame."""
    from gare.data import synthetic as S

    rng = np.random.default_rng(render_seed)
    bg, _ = S._background(rng, size, bool(rng.random() < textured_fraction))
    n = int(round(fps * duration))
    tracks = S._trajectory(desc, rng, size, duration, np.arange(n) / fps)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for t in range(n):
        img = bg.copy()
        for (c_s, (x, y, r, vis)) in zip(desc[0], tracks):
            if vis[t] > 0:
                sdf = S._sdf(c_s[1], xx - x[t], yy - y[t], float(r[t]))
                alpha = (np.clip(0.5 - sdf, 0.0, 1.0) * vis[t])[..., None]
                img = img * (1 - alpha) + np.array(S.COLOURS[c_s[0]], dtype=np.float32) * alpha
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


def test_render_windows_equal_full_frame_blending(plan1000):
    """render blends each shape only in a window around it: the frames equal blending over the whole frame,
    bit for bit, for every shape and action (and both frame sizes the tests and the demo use)."""
    from gare.data.synthetic import render

    picked, seen = [], set()
    for v in plan1000:
        key = ({s for _c, s in v["desc"][0]}, {a for _o, a in v["desc"][1]}, len(v["desc"][0]))
        new = {("s", s) for s in key[0]} | {("a", a) for a in key[1]} | {("n", key[2])}
        if not new <= seen or len(picked) < 12:
            picked.append(v)
            seen |= new
    assert {x for k, x in seen if k == "s"} == set(SHAPES) and {x for k, x in seen if k == "a"} == set(ACTIONS)
    for v in picked:
        for size in (112, 64):
            frames, _ = render(v["desc"], v["render_seed"], size=size)
            np.testing.assert_array_equal(frames, _full_frame_render(v["desc"], v["render_seed"], size=size))


def test_split_sizes_and_loader_roundtrip(synth20):
    rows = _rows(synth20)
    assert Counter(r["split"] for r in rows) == {"train": 14, "val": 2, "test": 4}
    for split, n in (("train", 14), ("val", 2), ("test", 4)):
        sp = load_split("jsonl", split, annotations=synth20)
        assert len(sp) == n
        assert all(len(it.captions) >= 3 for it in sp.items)


def test_plan_properties_at_demo_scale(plan1000):
    counts = Counter(v["split"] for v in plan1000)
    assert counts == {"train": 700, "val": 100, "test": 200}
    descs = [v["desc"] for v in plan1000]
    colours = {c for objs, _ in descs for c, _s in objs}
    shapes = {s for objs, _ in descs for _c, s in objs}
    actions = {a for _, evs in descs for _o, a in evs}
    assert colours == set(COLOURS) and len(colours) >= 6
    assert shapes == set(SHAPES) and len(shapes) >= 4
    assert set(MOTIONS) <= actions and len(MOTIONS) >= 6 and "appear" in actions
    two = sum(1 for d in descs if len(d[1]) == 2)
    assert two >= len(descs) / 3
    assert any(len(d[0]) == 2 for d in descs) and any(len(d[0]) == 1 for d in descs)
    # every val/test description is unique (across both); duplicates exist, in train only
    eval_keys = [canonical_caption(v["desc"]) for v in plan1000 if v["split"] != "train"]
    assert len(eval_keys) == len(set(eval_keys)) == 300
    dups = [v for v in plan1000 if v["duplicate_of"]]
    assert len(dups) == 70 and all(v["split"] == "train" for v in dups)
    by_id = {v["id"]: v for v in plan1000}
    for v in dups:
        assert by_id[v["duplicate_of"]]["desc"] == v["desc"] and by_id[v["duplicate_of"]]["split"] == "train"
    # a small regular vocabulary
    words = {w.strip(",") for v in plan1000 for c in v["captions"] for w in c.split()}
    assert len(words) < 70, sorted(words)


def test_hard_negatives_differ_in_exactly_one_attribute(plan1000):
    by_id = {v["id"]: v for v in plan1000}
    kinds = Counter()
    for v in plan1000:
        if not v["hard_negative_of"]:
            continue
        base = by_id[v["hard_negative_of"]]
        assert base["split"] == v["split"]
        kinds[v["differs_in"]] += 1
        (o1, e1), (o2, e2) = base["desc"], v["desc"]
        if v["differs_in"] == "order":
            assert len(e1) == 2 and sorted(map(str, e1)) != [] and canonical_caption(base["desc"]) != \
                canonical_caption(v["desc"])
            # same objects and actions, events in the other order
            acts1 = sorted((o1[o], a) for o, a in e1)
            acts2 = sorted((o2[o], a) for o, a in e2)
            assert acts1 == acts2 and [a for _, a in e1] == [a for _, a in e2][::-1]
            continue
        assert len(o1) == len(o2) and len(e1) == len(e2)
        diffs = sum(a != b for a, b in zip(o1, o2) for a, b in zip(a, b))
        diffs += sum(a != b for a, b in zip(e1, e2) for a, b in zip(a, b))
        assert diffs == 1, (base["desc"], v["desc"])
    assert set(kinds) == {"colour", "shape", "motion", "order"}, kinds
    for split in ("train", "val", "test"):
        assert any(v["hard_negative_of"] for v in plan1000 if v["split"] == split)


def test_captions_are_paraphrases_and_canonical_first(plan1000):
    for v in plan1000[:200]:
        caps = v["captions"]
        assert caps[0] == canonical_caption(v["desc"]) and len(set(caps)) == len(caps) >= 3
        objs, evs = v["desc"]
        for c in caps:
            for colour, shape in objs:
                assert f"{colour} {shape}" in c
            if len(evs) == 2:
                assert "then" in c


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_annotations_and_frames(synth20, tmp_path):
    again = generate(tmp_path / "again", n_videos=20, seed=0, workers=1)
    assert again.read_bytes() == synth20.read_bytes()
    for r in _rows(synth20):
        assert (synth20.parent / r["video"]).read_bytes() == (again.parent / r["video"]).read_bytes()
    for r in _rows(synth20)[:6]:
        a, _ = sample_frames(synth20.parent / r["video"], framerate=8, max_frames=32)
        b, _ = sample_frames(again.parent / r["video"], framerate=8, max_frames=32)
        np.testing.assert_array_equal(a, b)
    other = generate(tmp_path / "other", n_videos=20, seed=1, workers=2)
    assert other.read_bytes() != synth20.read_bytes()


def test_idempotent_and_resumable(tmp_path):
    ann = generate(tmp_path / "d", n_videos=12, seed=3, workers=1)
    vids = sorted((tmp_path / "d" / "videos").glob("*.mp4"))
    assert len(vids) == 12
    mtimes = {p: p.stat().st_mtime_ns for p in vids + [ann, tmp_path / "d" / "manifest.json"]}
    assert generate(tmp_path / "d", n_videos=12, seed=3, workers=1) == ann
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())  # nothing rewritten
    # a lost file is redone alone, identically
    before, _ = sample_frames(vids[4], framerate=8, max_frames=32)
    vids[4].unlink()
    generate(tmp_path / "d", n_videos=12, seed=3, workers=1)
    after, _ = sample_frames(vids[4], framerate=8, max_frames=32)
    np.testing.assert_array_equal(before, after)
    assert vids[3].stat().st_mtime_ns == mtimes[vids[3]]
    # other options regenerate (and drop videos beyond the new count)
    generate(tmp_path / "d", n_videos=10, seed=4, workers=1)
    assert len(list((tmp_path / "d" / "videos").glob("*.mp4"))) == 10
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert man["seed"] == 4 and man["complete"] is True


def test_video_format(synth20):
    import av

    r = _rows(synth20)[0]
    with av.open(str(synth20.parent / r["video"])) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert (s.width, s.height) == (112, 112)
        assert float(s.average_rate) == 8
        assert abs(float(s.duration * s.time_base) - 4.0) < 0.01


def test_unknown_option_rejected(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        generate(tmp_path, n_videos=10, colour_count=3)


# --------------------------------------------------------------- captions checked against the pixels
NAMES = list(COLOURS)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of float RGB [..., 3]; blending with a grey background keeps it."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


PALETTE_HUE = _hue(np.array(list(COLOURS.values()), dtype=float))


def _objects(frame: np.ndarray) -> dict[str, tuple[float, float, int]]:
    """colour name -> (centroid x, centroid y, area) of the saturated pixels of each palette hue."""
    f = frame.astype(float)
    sat = f.max(-1) - f.min(-1)
    fg = sat > 90  # backgrounds are grey-ish (spread <= 30 plus texture), shapes are saturated
    out = {}
    if fg.sum() == 0:
        return out
    d = np.abs(_hue(f[fg])[:, None] - PALETTE_HUE[None])
    lab = np.minimum(d, 360 - d).argmin(1)
    ys, xs = np.nonzero(fg)
    for k in np.unique(lab):
        sel = lab == k
        if sel.sum() >= 25:  # ignore stray pixels blended by the codec
            out[NAMES[k]] = (float(xs[sel].mean()), float(ys[sel].mean()), int(sel.sum()))
    return out


def _check_motion(action, a, b):
    (x0, y0, s0), (x1, y1, s1) = a, b
    if action == "left":
        return x1 < x0 - 15
    if action == "right":
        return x1 > x0 + 15
    if action == "up":
        return y1 < y0 - 15
    if action == "down":
        return y1 > y0 + 15
    if action == "grow":
        return s1 > 1.4 * s0
    if action == "shrink":
        return s1 < 0.6 * s0
    raise AssertionError(action)


def test_captions_match_the_decoded_video(tmp_path_factory):
    """Decode every mp4 at 2 fps (8 frames) and check colours, motions and the order of the events."""
    ann = synth_dataset(tmp_path_factory.getbasetemp(), n_videos=40, seed=7)
    rows = _rows(ann)
    checked_two = 0
    for r in rows:
        meta = r["meta"]
        frames, mask = sample_frames(ann.parent / r["video"], framerate=2, max_frames=8)
        assert mask.all()
        objs = [o["colour"] for o in meta["objects"]]
        events = [(e["object"], e["action"]) for e in meta["events"]]
        found = [_objects(f) for f in frames]
        # the caption's colours are what is on screen (an appearing object is absent at the start)
        appear = {o for o, a in events if a == "appear"}
        for oi, col in enumerate(objs):
            assert col in found[-1], (r["captions"][0], found[-1].keys())
            if oi in appear:
                # absent before its event (frame 0 at t = 0 s, or frame 3 at 1.5 s), present after
                before = 0 if events[0] == (oi, "appear") else 3
                assert col not in found[before], (r["captions"][0], before, found[before].keys())
        assert set(found[-1]) <= set(objs), (r["captions"][0], found[-1].keys())
        # each motion happens in its event's time window: the whole clip, or one half each
        windows = [(0, 7)] if len(events) == 1 else [(0, 3), (4, 7)]
        for (oi, action), (t0, t1) in zip(events, windows):
            if action == "appear":
                continue
            col = objs[oi]
            a, b = found[t0].get(col), found[t1].get(col)
            assert a is not None and b is not None
            assert _check_motion(action, a, b), (r["captions"][0], action, a, b)
        if len(events) == 2 and events[0][0] != events[1][0]:
            # order: the object of event 2 is still during event 1, and vice versa
            (o1, a1), (o2, a2) = events
            for oi, (t0, t1) in ((o2, (0, 3)), (o1, (4, 7))):
                a, b = found[t0].get(objs[oi]), found[t1].get(objs[oi])
                if a is not None and b is not None and "appear" not in (a1, a2):
                    assert abs(a[0] - b[0]) < 3 and abs(a[1] - b[1]) < 3 and abs(a[2] - b[2]) < 0.2 * a[2] + 10
            checked_two += 1
    assert checked_two >= 3


def _cpu_seconds(who) -> float:
    import resource

    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@pytest.mark.slow
def test_generate_1000_videos_under_a_minute(tmp_path):
    """1,000 videos in under a minute on 2 cores: the work (CPU-seconds of all processes) must fit in
    2 x 60 s with room to spare, and the wall time is checked when the machine is not shared."""
    import os
    import resource

    load = os.getloadavg()[0]
    cpu0 = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
    child0 = _cpu_seconds(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    ann = generate(tmp_path / "big", n_videos=1000, seed=0, workers=2)
    elapsed = time.time() - t0
    cpu = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0
    assert len(_rows(ann)) == 1000
    assert _cpu_seconds(resource.RUSAGE_CHILDREN) - child0 > 0.5 * cpu  # the work ran in the pool
    assert cpu < 100, cpu
    if load < 2.5:
        assert elapsed < 60, elapsed
