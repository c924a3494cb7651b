"""The ``gare index``, ``gare search`` and ``gare serve`` sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from .first_stage import DEFAULT_NPROBE, DEFAULT_REFINE, FIRST_STAGES, IVF_MIN_VIDEOS
from .index import build_index
from .search import DEFAULT_RERANK_K, MAX_K, SearchEngine, validate_k, validate_query


def _device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fail(msg: str) -> int:
    print(f"gare: error: {msg}", file=sys.stderr)
    return 2


def cmd_index(a) -> int:
    try:
        report = build_index(a.video_dir, a.model, a.out, update=a.update, framerate=a.framerate,
                             max_frames=a.max_frames, decoder=a.decoder, dtype=a.dtype, batch_size=a.batch_size,
                             workers=a.workers, device=_device(a.device), flush_every=a.flush_every,
                             follow_symlinks=a.follow_symlinks, first_stage=a.first_stage,
                             progress=not a.no_progress)
    except ValueError as e:  # SearchIndexError, IndexMismatchError, bad options
        return _fail(str(e))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun: rank 0 merged and reports for everyone
        return 0
    if a.json:
        print(json.dumps(vars(report), indent=2))
    else:
        print(report.summary())
    return 0


def _open(a):
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every CPU-feature probe at INFO

    return SearchEngine.open(a.index, model=a.model, device=_device(a.device), rerank_k=a.rerank_k,
                             first_stage=a.first_stage, nprobe=a.nprobe, refine=a.refine, root=a.root)


def cmd_search(a) -> int:
    try:
        validate_query(a.query)
        validate_k(a.k)
        engine = _open(a)
        hits = engine.search(a.query, a.k, exhaustive=a.exhaustive)
    except ValueError as e:  # QueryError, SearchIndexError, bad options
        return _fail(str(e))
    if a.json:
        print(json.dumps({"query": " ".join(a.query.split()), "k": a.k, "index": a.index,
                          "results": [h.to_dict() for h in hits]}, indent=2))
    else:
        if not hits:
            print("no videos in the index")
        w = max((len(str(h.rank)) for h in hits), default=1)
        for h in hits:
            print(f"{h.rank:>{w}}  {h.score:.4f}  {h.path}")
    return 0


def cmd_serve(a) -> int:
    from .app import serve  # lazy on purpose: fastapi and uvicorn load only for `gare serve`

    try:
        engine = _open(a)
    except ValueError as e:  # SearchIndexError, bad options
        return _fail(str(e))
    serve(engine, host=a.host, port=a.port, log_level="debug" if a.verbose else "info")
    return 0


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint (default: the one the index was built with)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--rerank-k", type=int, default=DEFAULT_RERANK_K,
                   help=f"first-stage candidates reranked with GARE (default {DEFAULT_RERANK_K})")
    p.add_argument("--first-stage", choices=list(FIRST_STAGES), default="auto",
                   help="FAISS first stage: exact flat, ivf (IVF-Flat) for large collections, ivfpq (IVF-PQ, "
                        f"compressed) for archives, or auto (ivf from {IVF_MIN_VIDEOS:,} videos); a trained one "
                        "stored in the index folder is loaded, else built and stored")
    p.add_argument("--nprobe", type=int, default=None, help=f"IVF lists visited per query (default {DEFAULT_NPROBE})")
    p.add_argument("--refine", type=int, default=None,
                   help=f"ivfpq: re-order its top REFINE x K by the exact cosine (default {DEFAULT_REFINE}; 0: off)")
    p.add_argument("--root", default=None, help="where the indexed folder is now, if it moved since indexing")


def add_search_commands(sub) -> None:
    """Add ``index``, ``search`` and ``serve`` to the ``gare`` sub-parsers."""
    i = sub.add_parser("index", help="encode every video of a folder into a search index (resumable; under "
                                     "torchrun, every process encodes a share)")
    i.add_argument("video_dir", help="folder searched recursively for video files")
    i.add_argument("--model", required=True, help="gare checkpoint (.safetensors) or run folder")
    i.add_argument("--out", required=True, help="index folder (an existing index there is resumed)")
    i.add_argument("--update", action="store_true", help="also drop deleted files and re-encode changed ones")
    i.add_argument("--framerate", type=float, default=None, help="frames per second sampled (default: the model's)")
    i.add_argument("--max-frames", type=int, default=None, help="frames per video (default: the model's)")
    i.add_argument("--decoder", choices=["pyav", "opencv", "decord"], default=None,
                   help="video decoder (default: the model's training setting, else pyav)")
    i.add_argument("--backend", dest="decoder", choices=["pyav", "opencv", "decord"], help=argparse.SUPPRESS)
    i.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="stored frame embeddings: float32 (exact) or float16 (half the size, slightly less exact)")
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--workers", type=int, default=2, help="decoding threads")
    i.add_argument("--flush-every", type=int, default=256,
                   help="videos encoded between two saves (what an interrupted run keeps)")
    i.add_argument("--device", default="auto", help="cpu, cuda or auto")
    i.add_argument("--follow-symlinks", action="store_true",
                   help="also index files that symbolic links lead to outside VIDEO_DIR (default: skip them)")
    i.add_argument("--first-stage", choices=["auto", "ivf", "ivfpq", "none"], default="auto",
                   help="trained FAISS first stage stored for search at the end (auto: ivf from "
                        f"{IVF_MIN_VIDEOS:,} videos, else none); search loads it instead of training it")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search an index by text")
    s.add_argument("index", help="index folder")
    s.add_argument("query", help="what the video shows")
    s.add_argument("-k", type=int, default=10, help=f"number of results (1 to {MAX_K})")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--exhaustive", action="store_true",
                   help="score every indexed video exactly with GARE (no first stage; slower on large indexes)")
    _engine_options(s)
    s.set_defaults(func=cmd_search)

    v = sub.add_parser("serve", help="serve a search page and JSON API for an index")
    v.add_argument("index", help="index folder")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    v.add_argument("--port", type=int, default=8000)
    _engine_options(v)
    v.set_defaults(func=cmd_serve)
