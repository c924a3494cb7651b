"""Feature cache: float16 against float32 storage, and both against encoding with the towers.

    python benchmarks/bench_feature_cache.py RUN_DIR [RUN_DIR ...] --features CACHE.safetensors
                                             [--split test] [--json OUT.json]

For each run (a cached-feature run folder, e.g. of ``configs/experiments/table7.yaml``), on ``--split``:
the score matrix from the towers (frames decoded through the run's frame store, texts tokenized and encoded),
from a float32 cache (extracted here, next to ``--features``, if missing) and from the float16 cache
``--features`` (what the experiments use). Prints, per pair of sources: the largest absolute score difference,
the share of queries whose top-1 video is the same, and t2v R@1 of each source. Word-context models compare
their word embeddings too (they are in the cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, machine, setup  # noqa: E402
from gare.evaluate.metrics import t2v_v2t_metrics  # noqa: E402
from gare.evaluate.protocol import needs_words  # noqa: E402
from gare.model.checkpoint import resolve_checkpoint  # noqa: E402
from gare.pipeline import encode_split, load_data, load_run_model, run_recipe  # noqa: E402
from gare.train.features import FeatureCache, encode_split_cached, extract_features  # noqa: E402


def scores(model, enc) -> torch.Tensor:
    return model.similarity(enc.t, enc.v, enc.mask, words=enc.words, word_mask=enc.word_mask).float().cpu()


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    return {"max_abs_diff": float((a - b).abs().max()),
            "same_top1": float((a.argmax(1) == b.argmax(1)).float().mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders trained on cached features")
    ap.add_argument("--features", required=True, help="the float16 feature cache the runs were trained on")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    add_common_args(ap)
    args = ap.parse_args()
    setup(args)
    f16 = Path(args.features)
    f32 = f16.with_name(f16.stem + "_float32.safetensors")
    out = {"machine": machine(), "split": args.split, "float16": str(f16), "float32": str(f32), "runs": {}}
    for run in args.runs:
        ckpt = resolve_checkpoint(run)
        cfg = run_recipe(ckpt)
        model = load_run_model(ckpt)
        if not f32.exists():
            t0 = time.perf_counter()
            extract_features(run_recipe(ckpt, overrides=["train.features=null"]), f32, dtype="float32")
            out["float32_extract_seconds"] = time.perf_counter() - t0
        data = load_data(cfg, image_size=model.image_size)
        sp = data.splits[args.split]
        words = needs_words(model)
        enc = {"towers": encode_split(model, cfg, args.split, data=data),
               "float32": encode_split_cached(model, FeatureCache(f32), sp, words=words),
               "float16": encode_split_cached(model, FeatureCache(f16), sp, words=words)}
        S = {k: scores(model, e) for k, e in enc.items()}
        qv = enc["towers"].query_video
        rec = {"R1": {k: t2v_v2t_metrics(s, qv)["t2v"]["R1"] for k, s in S.items()},
               "float32_vs_towers": compare(S["float32"], S["towers"]),
               "float16_vs_float32": compare(S["float16"], S["float32"]),
               "float16_vs_towers": compare(S["float16"], S["towers"]),
               "queries": len(qv), "videos": int(S["towers"].shape[1]), "context": model.cfg.scorer.context}
        if words:
            w16, w = enc["float16"].words, enc["towers"].words
            rec["words_max_abs_diff_float16_vs_towers"] = float((w16 - w).abs().max())
        out["runs"][str(run)] = rec
        print(f"{run}: R@1 {rec['R1']}; float16 vs float32: {rec['float16_vs_float32']}; float32 vs towers: "
              f"{rec['float32_vs_towers']}; float16 vs towers: {rec['float16_vs_towers']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
