"""The generated "moving shapes" dataset: real H.264 mp4 files and a JSONL annotation file.

Each video shows one or two large, clearly coloured shapes on a plain or textured muted background and
one or two events in temporal order ("a red circle moves left, then a blue square appears"). Captions
come from a small regular vocabulary, several paraphrases per video, the first one canonical.

Properties the demo and the tests rely on:

- 6 colours x 4 shapes x 6 motions (left, right, up, down, grow, shrink) plus "appears";
- about half of the videos (``two_event_fraction``) have two events, so frame order matters;
- hard negatives: groups of videos whose descriptions differ in one attribute only (colour, shape,
  motion, or the order of the two events), in every split;
- exact semantic duplicates (same description, another rendering) in the training split only, so
  training batches contain false negatives as real benchmarks do;
- every validation and test description is unique (across val and test), so R@1 can reach 100%;
- deterministic for a seed (same annotations and same decoded frames), and fast: videos are rendered and
  encoded in a process pool.

Layout written by :func:`generate`::

    out_dir/videos/synth_00000.mp4 ...
    out_dir/annotations.jsonl     {"id", "video", "captions", "split", "meta": {...}} per line
    out_dir/manifest.json         format version, seed, count and options: what the files are a function
                                  of (idempotence here; caches key on it through
                                  :func:`gare.data.fingerprint.dataset_fingerprint`)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from ..io import atomic_write, worker_pool_context
from .encode import encode_mp4

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: deterministic encoder settings (single-threaded x264, no mbtree, numpy YUV)
MANIFEST = "manifest.json"
GENERATOR = "gare.data.synthetic"  # the manifest's "generator" value
#: The keys of a manifest that determine the files (the rest is bookkeeping: complete, counts, seconds).
MANIFEST_KEYS = ("format_version", "n_videos", "seed", "options")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 245),
    "yellow": (245, 225, 40),
    "purple": (170, 70, 225),
    "orange": (250, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("left", "right", "up", "down", "grow", "shrink")
ACTIONS = MOTIONS + ("appear",)

PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves left", "moves to the left", "slides left", "goes left"),
    "right": ("moves right", "moves to the right", "slides right", "goes right"),
    "up": ("moves up", "rises", "goes up", "moves upward"),
    "down": ("moves down", "falls", "goes down", "moves downward"),
    "grow": ("grows", "gets bigger", "expands", "grows larger"),
    "shrink": ("shrinks", "gets smaller", "contracts", "shrinks down"),
    "appear": ("appears", "shows up", "pops up", "comes into view"),
}

# Muted, low-saturation backgrounds (channel spread <= 30) so the coloured shapes stand out.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (40, 40, 40), (70, 70, 70), (100, 100, 100), (55, 60, 75), (75, 65, 55), (50, 70, 60), (90, 85, 95),
)
TEXTURES = ("stripes", "checker", "noise")

DEFAULTS = {
    "size": 112,            # frame width = height, pixels
    "fps": 8,
    "duration": 4.0,        # seconds; two-event videos: event 1 in the first half, event 2 in the second
    "test_fraction": 0.2,
    "val_fraction": 0.1,
    "two_event_fraction": 0.5,
    "hard_negative_fraction": 0.5,   # share of descriptions that get 1-2 one-attribute siblings
    "duplicate_fraction": 0.1,       # share of training videos that repeat a training description
    "captions_per_video": 4,
    "textured_fraction": 0.5,
    "crf": 20,
}


# ---------------------------------------------------------------------------------------- descriptions
# A description is (objects, events): objects = ((colour, shape), ...) in order of first mention,
# events = ((object_index, action), ...) in temporal order.


def _normalize(objects, events):
    """Renumber objects by first mention, so equal descriptions have equal tuples."""
    order = []
    for o, _a in events:
        if o not in order:
            order.append(o)
    objs = tuple(objects[o] for o in order)
    evs = tuple((order.index(o), a) for o, a in events)
    return objs, evs


def _valid(objects, events) -> bool:
    if len(set(objects)) != len(objects):
        return False
    if len(events) == 2:
        (o1, a1), (o2, a2) = events
        if o1 == o2 and (a1 == a2 or "appear" in (a1, a2)):
            return False
        if a1 == "appear" and a2 == "appear":
            return False
    elif events[0][1] == "appear":
        return False
    return True


def canonical_caption(desc) -> str:
    """The first (canonical) caption of a description; distinct descriptions give distinct captions."""
    return _caption(desc, [0] * 8)


def _obj_phrase(obj, article="a"):
    if article == "a" and obj[0][0] in "aeiou":
        article = "an"
    return f"{article} {obj[0]} {obj[1]}"


def _caption(desc, choice: list[int]) -> str:
    """A caption of ``desc``; ``choice`` picks paraphrases (frame, then the phrase of each event)."""
    objects, events = desc
    frame = choice[0]
    if len(events) == 1:
        (o, a), = events
        act = PHRASES[a][choice[1] % len(PHRASES[a])]
        obj = objects[o]
        if frame % 3 == 0:
            return f"{_obj_phrase(obj)} {act}"
        if frame % 3 == 1:
            return f"{_obj_phrase(obj, 'the')} {act}"
        return f"there is {_obj_phrase(obj)} that {act}"
    (o1, a1), (o2, a2) = events
    act1 = PHRASES[a1][choice[1] % len(PHRASES[a1])]
    act2 = PHRASES[a2][choice[2] % len(PHRASES[a2])]
    e1 = f"{_obj_phrase(objects[o1])} {act1}"
    if o2 == o1:
        e2 = f"it {act2}" if choice[3] % 2 == 0 else f"{_obj_phrase(objects[o2], 'the')} {act2}"
    else:
        e2 = f"{_obj_phrase(objects[o2])} {act2}"
    if frame % 3 == 0:
        return f"{e1}, then {e2}"
    if frame % 3 == 1:
        return f"first {e1}, then {e2}"
    return f"{e1} and then {e2}"


def _captions(desc, n: int, rng: np.random.Generator) -> list[str]:
    out = [canonical_caption(desc)]
    tries = 0
    while len(out) < n and tries < 50:
        tries += 1
        c = _caption(desc, [int(x) for x in rng.integers(0, 12, size=4)])
        if c not in out:
            out.append(c)
    return out


def _random_desc(rng: np.random.Generator, two_event_fraction: float):
    colours, shapes = list(COLOURS), list(SHAPES)
    while True:
        obj_a = (colours[rng.integers(6)], shapes[rng.integers(4)])
        if rng.random() >= two_event_fraction:
            desc = ((obj_a,), ((0, MOTIONS[rng.integers(6)]),))
        elif rng.random() < 0.4:  # one object, two motions
            m1, m2 = rng.choice(len(MOTIONS), size=2, replace=False)
            desc = ((obj_a,), ((0, MOTIONS[m1]), (0, MOTIONS[m2])))
        else:  # two objects, one event each (one of them may be an appearance)
            obj_b = (colours[rng.integers(6)], shapes[rng.integers(4)])
            a1 = ACTIONS[rng.integers(7)] if rng.random() < 0.25 else MOTIONS[rng.integers(6)]
            a2 = "appear" if (a1 != "appear" and rng.random() < 0.4) else MOTIONS[rng.integers(6)]
            desc = ((obj_a, obj_b), ((0, a1), (1, a2)))
        if _valid(*desc):
            return _normalize(*desc)


def _variants(desc, rng: np.random.Generator) -> list[tuple[str, tuple]]:
    """Descriptions that differ from ``desc`` in exactly one attribute, with the attribute's name."""
    objects, events = desc
    out = []
    for oi, (c, s) in enumerate(objects):
        for c2 in COLOURS:
            if c2 != c:
                objs = list(objects)
                objs[oi] = (c2, s)
                out.append(("colour", (tuple(objs), events)))
        for s2 in SHAPES:
            if s2 != s:
                objs = list(objects)
                objs[oi] = (c, s2)
                out.append(("shape", (tuple(objs), events)))
    for ei, (o, a) in enumerate(events):
        for a2 in (MOTIONS if a != "appear" else ()):
            if a2 != a:
                evs = list(events)
                evs[ei] = (o, a2)
                out.append(("motion", (objects, tuple(evs))))
    if len(events) == 2:
        out.append(("order", (objects, (events[1], events[0]))))
    good = []
    for kind, (objs, evs) in out:
        if _valid(objs, evs):
            good.append((kind, _normalize(objs, evs)))
    order = [good[i] for i in rng.permutation(len(good))]
    swap = [g for g in order if g[0] == "order"]
    if swap and rng.random() < 0.5:  # order swaps are one of ~20 variants: give them a fair share
        order = swap + [g for g in order if g[0] != "order"]
    return order


# ----------------------------------------------------------------------------------------------- plan
def _plan(n_videos: int, seed: int, opts: dict) -> list[dict]:
    """Every video's description, split, captions and hard-negative / duplicate links. Cheap, serial."""
    rng = np.random.default_rng([seed, 0])
    n_test = int(round(opts["test_fraction"] * n_videos))
    n_val = int(round(opts["val_fraction"] * n_videos))
    n_train = n_videos - n_test - n_val
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"n_videos={n_videos} is too small for train/val/test splits "
                         f"({n_train}/{n_val}/{n_test}); use at least 10 videos")
    eval_seen: set[str] = set()
    videos: list[dict] = []

    def fill(split: str, n: int, unique: set[str] | None):
        local: set[str] = set()
        rows: list[dict] = []
        guard = 0
        while len(rows) < n:
            guard += 1
            if guard > 100 * n + 1000:
                raise RuntimeError("could not plan enough distinct descriptions")
            base = _random_desc(rng, opts["two_event_fraction"])
            key = canonical_caption(base)
            seen = unique if unique is not None else local
            if key in seen:
                continue
            seen.add(key)
            group = [{"desc": base, "split": split, "hard_negative_of": None, "differs_in": None}]
            if rng.random() < opts["hard_negative_fraction"]:
                want = 1 + int(rng.random() < 0.5)
                for kind, var in _variants(base, rng):
                    if len(group) > want:
                        break
                    vkey = canonical_caption(var)
                    if vkey in seen:
                        continue
                    seen.add(vkey)
                    group.append({"desc": var, "split": split, "hard_negative_of": len(rows),
                                  "differs_in": kind})
            for g in group:
                if len(rows) >= n:
                    break
                rows.append(g)
        return rows

    test_rows = fill("test", n_test, eval_seen)
    val_rows = fill("val", n_val, eval_seen)
    n_dup = int(round(opts["duplicate_fraction"] * n_train))
    train_rows = fill("train", n_train - n_dup, None)
    for _ in range(n_dup):
        src = int(rng.integers(len(train_rows)))
        while train_rows[src].get("duplicate_of") is not None:
            src = int(rng.integers(len(train_rows)))
        train_rows.append({"desc": train_rows[src]["desc"], "split": "train", "hard_negative_of": None,
                           "differs_in": None, "duplicate_of": src})

    # Global order: a seeded shuffle, so ids say nothing about splits. Links become video ids.
    blocks = [test_rows, val_rows, train_rows]
    flat = [(b, i) for b, rows in enumerate(blocks) for i in range(len(rows))]
    perm = rng.permutation(len(flat))
    new_id = {}
    for pos, k in enumerate(perm):
        new_id[flat[k]] = f"synth_{pos:05d}"
    for pos, k in enumerate(perm):
        b, i = flat[k]
        row = blocks[b][i]
        vid = new_id[(b, i)]
        cap_rng = np.random.default_rng([seed, 2, pos])
        hn = row.get("hard_negative_of")
        dup = row.get("duplicate_of")
        videos.append({
            "id": vid,
            "split": row["split"],
            "desc": row["desc"],
            "captions": _captions(row["desc"], opts["captions_per_video"], cap_rng),
            "hard_negative_of": None if hn is None else new_id[(b, hn)],
            "differs_in": row.get("differs_in"),
            "duplicate_of": None if dup is None else new_id[(b, dup)],
            "render_seed": [seed, 1, pos],
        })
    return videos


# ------------------------------------------------------------------------------------------- rendering
def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, < 0 inside) of a shape of nominal radius r centred at the origin."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * r
    if shape == "triangle":  # equilateral, apex up (image y grows downwards)
        rho = 0.675 * r     # inradius; circumradius 1.35 r
        return np.maximum.reduce([dy, -0.866 * dx - 0.5 * dy, 0.866 * dx - 0.5 * dy]) - rho
    if shape == "cross":
        L, w = 1.1 * r, 0.4 * r
        a = np.maximum(np.abs(dx) - L, np.abs(dy) - w)
        b = np.maximum(np.abs(dx) - w, np.abs(dy) - L)
        return np.minimum(a, b)
    raise ValueError(f"unknown shape {shape!r}")


# Largest distance from the centre along an axis / in any direction, in units of the nominal radius.
_AXIS_EXTENT = {"circle": 1.0, "square": 0.886, "triangle": 1.35, "cross": 1.1}
_OUTER_RADIUS = {"circle": 1.0, "square": 1.253, "triangle": 1.35, "cross": 1.171}


def _background(rng: np.random.Generator, size: int, textured: bool) -> tuple[np.ndarray, dict]:
    base = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    info = {"background": "plain", "bg_colour": base.astype(int).tolist()}
    if textured:
        kind = TEXTURES[rng.integers(len(TEXTURES))]
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        amp = float(rng.uniform(12, 22))
        if kind == "stripes":
            period = float(rng.uniform(8, 16))
            ang = float(rng.uniform(0, math.pi))
            pat = np.sign(np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period))
        elif kind == "checker":
            cell = int(rng.integers(8, 16))
            pat = (((xx // cell) + (yy // cell)) % 2) * 2 - 1
        else:
            coarse = rng.uniform(-1, 1, size=(size // 8 + 2, size // 8 + 2)).astype(np.float32)
            pat = np.kron(coarse, np.ones((8, 8), dtype=np.float32))[:size, :size]
        img = img + amp * pat[..., None]
        info = {"background": kind, "bg_colour": base.astype(int).tolist()}
    return np.clip(img, 0, 255), info


def _event_windows(n_events: int, duration: float) -> list[tuple[float, float]]:
    """Time span of each event's movement: the whole clip for one event, a half each for two."""
    if n_events == 1:
        return [(0.05 * duration, 0.95 * duration)]
    h = duration / 2
    return [(0.05 * h, 0.9 * h), (h + 0.05 * h, h + 0.9 * h)]


def _trajectory(desc, rng: np.random.Generator, size: int, duration: float, times: np.ndarray):
    """Per object: centre x, y, radius and visibility at each time ([T] arrays each).

    Each object's start position is drawn from the positions that keep the whole shape inside the frame
    during its motion; two objects are redrawn until they never touch.
    """
    objects, events = desc
    n_obj = len(objects)
    r_base = (0.15 if len(events) == 1 else 0.125 if n_obj == 1 else 0.11) * size
    shift = (0.40 if len(events) == 1 else 0.32) * size
    windows = _event_windows(len(events), duration)
    margin = 2.0
    moves = []
    for o in range(n_obj):
        r0 = r_base * float(rng.uniform(0.9, 1.1))
        dx = np.zeros(len(times))
        dy = np.zeros(len(times))
        r = np.full(len(times), r0)
        vis = np.ones(len(times))
        for (eo, a), (t0, t1) in zip(events, windows):
            if eo != o:
                continue
            p = np.clip((times - t0) / (t1 - t0), 0, 1)
            if a == "left":
                dx = dx - shift * p
            elif a == "right":
                dx = dx + shift * p
            elif a == "up":
                dy = dy - shift * p
            elif a == "down":
                dy = dy + shift * p
            elif a == "grow":
                r = r * (1 + 0.7 * p)
            elif a == "shrink":
                r = r * (1 - 0.5 * p)
            elif a == "appear":
                fade = np.clip((times - t0) / (0.3 * (t1 - t0)), 0, 1)
                vis = np.where(times < t0, 0.0, fade)
        ext = _AXIS_EXTENT[objects[o][1]] * r
        lo_x, hi_x = float(np.max(margin + ext - dx)), float(np.min(size - margin - ext - dx))
        lo_y, hi_y = float(np.max(margin + ext - dy)), float(np.min(size - margin - ext - dy))
        if lo_x > hi_x or lo_y > hi_y:
            raise RuntimeError(f"frame size {size} too small for {canonical_caption(desc)!r}")
        moves.append((dx, dy, r, vis, (lo_x, hi_x, lo_y, hi_y)))
    radius = [_OUTER_RADIUS[s] for _c, s in objects]
    for _attempt in range(500):
        tracks = []
        for dx, dy, r, vis, (lo_x, hi_x, lo_y, hi_y) in moves:
            x0, y0 = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            tracks.append((x0 + dx, y0 + dy, r, vis))
        if n_obj == 1:
            return tracks
        (x1, y1, r1, _), (x2, y2, r2, _) = tracks
        gap = np.sqrt((x1 - x2) ** 2 + (y1 - y2) ** 2) - (radius[0] * r1 + radius[1] * r2)
        if (gap > 3.0).all():
            return tracks
    raise RuntimeError(f"could not place the objects of {canonical_caption(desc)!r}")


def render(desc, render_seed, *, size: int = 112, fps: int = 8, duration: float = 4.0,
           textured: bool | None = None, textured_fraction: float = 0.5) -> tuple[np.ndarray, dict]:
    """Frames of one video: uint8 [T, size, size, 3] with T = round(fps * duration), and render info."""
    rng = np.random.default_rng(render_seed)
    if textured is None:
        textured = bool(rng.random() < textured_fraction)
    bg, info = _background(rng, size, textured)
    n = int(round(fps * duration))
    times = np.arange(n) / fps
    tracks = _trajectory(desc, rng, size, duration, times)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    objects, _events = desc
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    cols = [np.array(COLOURS[c], dtype=np.float32) for c, _s in objects]
    for t in range(n):
        img = bg.copy()
        for (c_s, (x, y, r, vis)), col in zip(zip(objects, tracks), cols):
            if vis[t] <= 0:
                continue
            # Only the window around the shape is blended: beyond its outer radius + 2 px the signed distance
            # is >= 0.5, so alpha is exactly 0 and the blend would give every other pixel back unchanged.
            rt = float(r[t])
            reach = _OUTER_RADIUS[c_s[1]] * rt + 2.0
            c0, c1 = max(0, math.floor(x[t] - reach - 1)), min(size, math.ceil(x[t] + reach) + 1)
            r0, r1 = max(0, math.floor(y[t] - reach - 1)), min(size, math.ceil(y[t] + reach) + 1)
            if c0 >= c1 or r0 >= r1:
                continue
            sdf = _sdf(c_s[1], xx[r0:r1, c0:c1] - x[t], yy[r0:r1, c0:c1] - y[t], rt)
            alpha = (np.clip(0.5 - sdf, 0.0, 1.0) * vis[t])[..., None]
            img = img.astype(np.result_type(img, alpha, col), copy=False)  # the dtype the full blend had
            img[r0:r1, c0:c1] = img[r0:r1, c0:c1] * (1 - alpha) + col * alpha
        frames[t] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    info["tracks"] = [{"x": [round(float(v), 1) for v in x[[0, -1]]], "y": [round(float(v), 1) for v in y[[0, -1]]],
                       "r": [round(float(v), 1) for v in r[[0, -1]]]} for x, y, r, _ in tracks]
    return frames, info


def _render_task(args) -> tuple[str, dict]:
    vid, desc, render_seed, path, opts = args
    frames, info = render(desc, render_seed, size=opts["size"], fps=opts["fps"], duration=opts["duration"],
                          textured_fraction=opts["textured_fraction"])
    encode_mp4(frames, path, fps=opts["fps"], crf=opts["crf"])
    return vid, info


def _desc_meta(desc) -> dict:
    objects, events = desc
    return {"objects": [{"colour": c, "shape": s} for c, s in objects],
            "events": [{"object": o, "action": a} for o, a in events]}


def generate(out_dir, n_videos: int = 1000, seed: int = 0, *, workers: int | None = None,
             overwrite: bool = False, **options) -> Path:
    """Generate the moving-shapes dataset; returns the path of ``annotations.jsonl``.

    Args:
        out_dir: output folder (created).
        n_videos: total number of videos (split by ``test_fraction`` / ``val_fraction``).
        seed: everything (descriptions, splits, renderings) is a function of the seed and the options.
        workers: processes for rendering/encoding (default: all cores).
        overwrite: regenerate even if a complete dataset with the same options exists.
        **options: see :data:`DEFAULTS` (size, fps, duration, test_fraction, val_fraction,
            two_event_fraction, hard_negative_fraction, duplicate_fraction, captions_per_video,
            textured_fraction, crf).

    Idempotent: when ``out_dir/manifest.json`` records the same options and every file exists, nothing
    is redone. An interrupted run resumes (finished videos are kept).
    """
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = dict(DEFAULTS)
    opts.update(options)
    if opts["size"] % 2:
        raise ValueError("size must be even (H.264 yuv420p)")
    out = Path(out_dir)
    vdir = out / "videos"
    ann = out / "annotations.jsonl"
    man = out / MANIFEST
    record = {"format_version": FORMAT_VERSION, "n_videos": int(n_videos), "seed": int(seed), "options": opts}
    old = read_manifest(out)
    same = old is not None and {k: old.get(k) for k in record} == record
    if same and old.get("complete") and ann.exists() and not overwrite:
        if all((vdir / f"synth_{i:05d}.mp4").exists() for i in range(n_videos)):
            log.info("synthetic dataset in %s is up to date", out)
            return ann
    t0 = time.time()
    plan = _plan(int(n_videos), int(seed), opts)
    vdir.mkdir(parents=True, exist_ok=True)
    resume = same and not overwrite
    atomic_write(man, json.dumps({**record, "generator": GENERATOR, "complete": False}, indent=1))
    if ann.exists():
        ann.unlink()
    for stale in vdir.glob("synth_*.mp4*"):  # left over from other options or a larger dataset
        idx = stale.name[6:11]
        if not resume or not idx.isdigit() or int(idx) >= n_videos or stale.name.endswith(".part"):
            stale.unlink()
    for stale in vdir.glob(".synth_*.tmp.mp4"):  # temporary files of a killed run (see gare.io.atomic_write)
        stale.unlink()
    tasks = []
    for v in plan:
        path = vdir / f"{v['id']}.mp4"
        if resume and path.exists():
            continue
        tasks.append((v["id"], v["desc"], v["render_seed"], str(path), opts))
    infos: dict[str, dict] = {}
    workers = workers or os.cpu_count() or 1
    if tasks:
        if workers > 1 and len(tasks) > 4:
            ctx = worker_pool_context()
            with ctx.Pool(min(workers, len(tasks))) as pool:
                for vid, info in pool.imap_unordered(_render_task, tasks, chunksize=8):
                    infos[vid] = info
        else:
            for t in tasks:
                vid, info = _render_task(t)
                infos[vid] = info
    # Render infos of resumed videos are recomputed (rendering without encoding is cheap).
    for v in plan:
        if v["id"] not in infos:
            _, infos[v["id"]] = render(v["desc"], v["render_seed"], size=opts["size"], fps=opts["fps"],
                                       duration=opts["duration"], textured_fraction=opts["textured_fraction"])
    lines = []
    for v in plan:
        info = infos[v["id"]]
        meta = _desc_meta(v["desc"])
        meta.update({"background": info["background"], "tracks": info["tracks"],
                     "hard_negative_of": v["hard_negative_of"],
                     "differs_in": v["differs_in"], "duplicate_of": v["duplicate_of"]})
        row = {"id": v["id"], "video": f"videos/{v['id']}.mp4", "captions": v["captions"],
               "split": v["split"], "meta": meta}
        lines.append(json.dumps(row) + "\n")
    atomic_write(ann, "".join(lines))
    counts = {s: sum(1 for v in plan if v["split"] == s) for s in ("train", "val", "test")}
    atomic_write(man, json.dumps({**record, "generator": GENERATOR, "complete": True, "counts": counts,
                                  "seconds": round(time.time() - t0, 2)}, indent=1))
    log.info("generated %d videos (%s) in %s in %.1f s", len(plan), counts, out, time.time() - t0)
    return ann


def read_manifest(root) -> dict | None:
    """The generator's manifest of a dataset folder (``root/manifest.json``), or None when ``root`` holds
    no generated dataset. Manifests written before the ``generator`` key existed are recognised by their
    keys."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} is not a readable manifest ({e}); regenerate the dataset with "
                         f"`gare data synth {Path(root)} --overwrite`") from e
    if not isinstance(man, dict) or man.get("generator", GENERATOR) != GENERATOR \
            or any(k not in man for k in MANIFEST_KEYS):
        return None
    return man
