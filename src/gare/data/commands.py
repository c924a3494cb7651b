"""Command-line glue for the data layer: ``data synth``, ``data compress`` and ``data cache``.

``add_data_commands(subparsers)`` adds a ``data`` command with these three sub-commands to an argparse
sub-parser collection (``gare data ...``). ``python -m gare.data.commands synth OUT --videos N --seed S``
runs them directly. Each handler takes the parsed namespace and returns an exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import av
from tqdm import tqdm

from ..io import atomic_write, worker_pool_context
from .cache import FrameStore
from .datasets import DATASETS, SPLITS, load_split
from .encode import h264_writer
from .report import VIDEO_KINDS, BadInputReport
from .synthetic import generate
from .video import DECODERS, VideoDecodeError, check_file, iter_video_files, pyav_duration

log = logging.getLogger(__name__)


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data {synth,compress,cache}`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser("data", help="generate, compress or cache video data",
                              description="Data preparation: synth, compress, cache.")
    sub = p.add_subparsers(dest="data_command", metavar="{synth,compress,cache}")
    sub.required = True
    add_data_subcommands(sub)
    return p


def add_data_subcommands(sub) -> None:
    """Add ``synth``, ``compress`` and ``cache`` to the sub-parsers of an existing ``data`` command."""
    s = sub.add_parser("synth", help="generate the moving-shapes dataset (mp4 + annotations.jsonl)")
    s.add_argument("out", help="output folder")
    s.add_argument("--videos", type=int, default=1000, help="number of videos (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=None, help="frame size in pixels (default 112)")
    s.add_argument("--fps", type=int, default=None, help="frames per second (default 8)")
    s.add_argument("--duration", type=float, default=None, help="seconds per video (default 4)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    s.set_defaults(func=cmd_synth)

    c = sub.add_parser("compress", help="re-encode videos to a low frame rate and short side (resumable)")
    c.add_argument("src", help="folder of videos (searched recursively) or one video file")
    c.add_argument("dst", help="output folder (the folder structure of SRC is kept)")
    c.add_argument("--fps", type=float, default=3.0, help="output frame rate (default 3)")
    c.add_argument("--short-side", type=int, default=224, help="output short side in pixels (default 224)")
    c.add_argument("--crf", type=int, default=23)
    c.add_argument("--keep-ext", action="store_true",
                   help="name outputs <name>.<ext>.mp4 instead of <name>.mp4 (DiDeMo-style names)")
    c.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    c.add_argument("--max-bad-fraction", type=float, default=0.01)
    c.set_defaults(func=cmd_compress)

    k = sub.add_parser("cache", help="decode sampled frames once into a frame store")
    k.add_argument("--dataset", required=True, choices=DATASETS)
    k.add_argument("--split", required=True, choices=SPLITS)
    k.add_argument("--annotations", required=True, help="annotation folder (jsonl: the .jsonl file)")
    k.add_argument("--videos", default=None, help="video folder")
    k.add_argument("--out", required=True, help="store folder")
    k.add_argument("--framerate", type=float, default=1.0)
    k.add_argument("--max-frames", type=int, default=12)
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--decoder", "--backend", dest="decoder", default="pyav", choices=DECODERS,
                   help="video decoder (the recipe key data.decoder; --backend is the old name)")
    k.add_argument("--workers", type=int, default=None)
    k.add_argument("--max-bad-fraction", type=float, default=0.01)
    k.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option passed to load_split (repeatable), e.g. train_list=7k")
    k.set_defaults(func=cmd_cache)


# ------------------------------------------------------------------------------------------- synth
def cmd_synth(args) -> int:
    opts = {k: getattr(args, k) for k in ("size", "fps", "duration") if getattr(args, k) is not None}
    t0 = time.time()
    path = generate(args.out, n_videos=args.videos, seed=args.seed, workers=args.workers,
                    overwrite=args.overwrite, **opts)
    print(f"{path} ({args.videos} videos, {time.time() - t0:.1f} s)")
    return 0


# ---------------------------------------------------------------------------------------- compress
def compress_video(src, dst, *, fps: float = 3.0, short_side: int = 224, crf: int = 23) -> dict:
    """Re-encode one video to H.264 at ``fps`` with its short side at most ``short_side`` (no upscaling).

    The frame shown at output time k / fps is the last source frame at or before it. Audio is dropped.
    The output appears atomically (:func:`gare.io.atomic_write`), so a finished file is complete.

    Returns: {"frames": n, "width": w, "height": h, "seconds": duration}.
    """
    check_file(src)
    try:
        inp = av.open(str(src), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoDecodeError(src, f"cannot open: {e}", "undecodable") from e
    try:
        if not inp.streams.video:
            raise VideoDecodeError(src, "the file has no video stream", "no_video_stream")
        vs = inp.streams.video[0]
        if vs.codec_context is None:
            raise VideoDecodeError(src, "no decoder for the video codec", "unknown_codec")
        w, h = vs.codec_context.width, vs.codec_context.height
        scale = min(1.0, short_side / max(1, min(w, h)))
        ow, oh = max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)
        done: dict = {}

        def write(tmp: Path) -> None:
            done["frames"] = _transcode(inp, vs, src, tmp, fps=fps, width=ow, height=oh, crf=crf)

        atomic_write(dst, write)
    finally:
        inp.close()
    return {"frames": done["frames"], "width": ow, "height": oh, "seconds": done["frames"] / fps}


def _transcode(inp, vs, src, out_path: Path, *, fps: float, width: int, height: int, crf: int) -> int:
    """Decode stream ``vs`` of ``inp`` and write it at ``fps`` into ``out_path``; returns the frames written."""
    st0 = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
    with h264_writer(out_path, width=width, height=height, fps=fps, crf=crf) as out:
        prev = None
        next_t = 0.0
        last_t = 0.0
        try:
            for frame in inp.decode(vs):
                t = (float(frame.time) - st0) if frame.time is not None else last_t
                last_t = t
                # Write the previous frame for every output time it covers (before this frame's time).
                while prev is not None and next_t < t - 1e-6:
                    out.write_frame(prev)
                    next_t = out.frames / fps
                prev = frame
        except av.error.FFmpegError as e:
            if prev is None:
                raise VideoDecodeError(src, f"decoding failed: {e}", "undecodable") from e
        if prev is None:
            raise VideoDecodeError(src, "no frame could be decoded", "undecodable")
        declared = pyav_duration(inp, vs)
        rate = vs.average_rate or vs.base_rate
        covered = last_t + (1.0 / float(rate) if rate else 0.04)
        if declared is not None and covered < declared - max(1.0, 0.1 * declared):
            raise VideoDecodeError(src, f"truncated: frames stop at {covered:.2f} s but the header "
                                   f"declares {declared:.2f} s", "truncated")
        if out.frames == 0 or next_t <= last_t + 1e-6:  # output times the last frame still covers
            out.write_frame(prev)
        return out.frames


def _compress_task(args):
    src, dst, fps, short_side, crf = args
    try:
        info = compress_video(src, dst, fps=fps, short_side=short_side, crf=crf)
        return src, None, info
    except VideoDecodeError as e:
        return src, (e.kind, e.reason), None
    except Exception as e:  # keep going; the failure is reported
        return src, ("undecodable", f"{type(e).__name__}: {e}"), None


def compress_folder(src, dst, *, fps: float = 3.0, short_side: int = 224, crf: int = 23, keep_ext: bool = False,
                    workers: int | None = None, max_bad_fraction: float = 0.01, progress: bool = True) -> dict:
    """Compress every video under ``src`` into ``dst`` (same sub-folders), skipping finished outputs.

    Failures are listed in ``dst/bad_inputs.jsonl``; raises TooManyBadInputs above ``max_bad_fraction``.
    Returns counts: {"total", "skipped", "done", "failed"}.
    """
    src, dst = Path(src), Path(dst)
    files = [src] if src.is_file() else list(iter_video_files(src))
    if not files:
        raise FileNotFoundError(f"no video files under {src}")
    tasks, skipped = [], 0
    for f in files:
        rel = f.relative_to(src.parent if src.is_file() else src)
        name = (rel.name + ".mp4") if keep_ext else (rel.stem + ".mp4")
        out = dst / rel.parent / name
        if out.exists() and out.stat().st_size > 0:
            skipped += 1
            continue
        tasks.append((str(f), str(out), fps, short_side, crf))
    dst.mkdir(parents=True, exist_ok=True)
    report = BadInputReport(dst / "bad_inputs.jsonl", threshold=max_bad_fraction)
    bar = None
    if progress:
        bar = tqdm(total=len(files), initial=skipped, desc="compress", unit="video")
    done = failed = 0
    workers = workers or os.cpu_count() or 1
    try:
        if workers > 1 and len(tasks) > 1:
            ctx = worker_pool_context()
            with ctx.Pool(min(workers, len(tasks))) as pool:
                results = list(_iter_with_bar(pool.imap_unordered(_compress_task, tasks), bar))
        else:
            results = list(_iter_with_bar(map(_compress_task, tasks), bar))
    finally:
        if bar is not None:
            bar.close()
    for s, err, _info in results:
        if err is None:
            done += 1
        else:
            failed += 1
            report.add(err[0], s, err[1], path=s, stage="compress")
    report.check(len(files), what=f"videos under {src}", kinds=None)
    return {"total": len(files), "skipped": skipped, "done": done, "failed": failed}


def _iter_with_bar(it, bar):
    for x in it:
        if bar is not None:
            bar.update(1)
        yield x


def cmd_compress(args) -> int:
    counts = compress_folder(args.src, args.dst, fps=args.fps, short_side=args.short_side, crf=args.crf,
                             keep_ext=args.keep_ext, workers=args.workers, max_bad_fraction=args.max_bad_fraction)
    print(json.dumps(counts))
    return 0


# ------------------------------------------------------------------------------------------- cache
def _parse_options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"--option expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_cache(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = BadInputReport(out / "bad_inputs.jsonl", threshold=args.max_bad_fraction)
    split = load_split(args.dataset, args.split, annotations=args.annotations, videos=args.videos, report=report,
                       max_bad_fraction=args.max_bad_fraction, **_parse_options(args.option))
    command = ["gare", "data", "cache", "--dataset", args.dataset, "--split", args.split, "--annotations",
               str(args.annotations)] + (["--videos", str(args.videos)] if args.videos else []) + ["--out", str(out)]
    for opt in args.option:
        command += ["--option", opt]
    t0 = time.time()
    store = FrameStore.build(split, out, framerate=args.framerate, max_frames=args.max_frames, size=args.size,
                             decoder=args.decoder, workers=args.workers, report=report, progress=True,
                             command=shlex.join(command))
    failed = sum(1 for it in split.items if it.video_id not in store)
    report.check(split.meta["listed_videos"], what=f"videos of {args.dataset}/{args.split}", kinds=VIDEO_KINDS)
    print(json.dumps({"store": str(out), "videos": len(split.items), "failed": failed,
                      "seconds": round(time.time() - t0, 1)}))
    return 0


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gare.data.commands", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="data_command", metavar="{synth,compress,cache}")
    sub.required = True
    add_data_subcommands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
