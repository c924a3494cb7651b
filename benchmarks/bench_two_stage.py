"""Two-stage retrieval benchmark: speed-up over exhaustive exact scoring and top-10 agreement.

    python benchmarks/bench_two_stage.py [--texts 1000] [--videos 1000] [--frames 12] [--dim 512] [--k 256]
                                         [--checkpoint RUN_OR_FILE] [--split test] [--threads 1] [--json FILE]

Random data: CLIP-scale features where text i is a noisy copy of video i's content (so rankings are
not arbitrary), scored by two psi settings: parameters at their initialization (small Delta, as at
the start of training) and non-initial random parameters (large Delta, a harder case for stage 1).
For each: time of the exhaustive fast exact matrix, time of two-stage (stage-1 cosine + exact rerank of
each text's top K), speed-up, and the mean fraction of the exhaustive top 10 that two-stage keeps.
The same with the reference scorer (``fast=False``) on the first ``--ref-texts`` texts.

With ``--checkpoint`` (a run folder or ``.safetensors`` of the demo trainer), the same figures on that
run's split: the texts and videos are encoded with the checkpoint, and K is also shown at 1/4 and 1/16
of the gallery when the gallery is smaller than the requested K.

Times are medians of wall and CPU seconds of this process; ``--json FILE`` writes every row with the
command, the machine and its load average (docs/results/bench_two_stage.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, finish_record, interleaved_clock, med, setup, start_record, table  # noqa: E402
from bench_scorer import features, trained_like  # noqa: E402
from gare.config import ScorerConfig  # noqa: E402
from gare.model.fast_scorer import fast_similarity  # noqa: E402
from gare.model.scorer import PairScorer  # noqa: E402
from gare.model.two_stage import topk_agreement, two_stage_similarity  # noqa: E402


class ScorerOnly(nn.Module):
    """What two-stage retrieval needs of a GareModel: ``scorer`` and exhaustive ``similarity``."""

    def __init__(self, scorer: PairScorer):
        super().__init__()
        self.scorer = scorer.eval()

    def similarity(self, t, v, video_mask=None, *, words=None, word_mask=None, fast=True, memory_budget=2**28):
        if not fast:
            return self.scorer.similarity(t, v, video_mask, words=words, word_mask=word_mask,
                                          memory_budget=memory_budget)
        return fast_similarity(self.scorer, t, v, video_mask, words=words, word_mask=word_mask,
                               memory_budget=memory_budget)


def measure(model, t, v, mask, k: int, repeats: int, fast: bool = True) -> dict:
    """Median wall and CPU seconds of exhaustive and two-stage scoring, speed-ups, and top-10 agreement."""
    fns = {"exhaustive": lambda: model.similarity(t, v, mask, fast=fast),
           "two_stage": lambda: two_stage_similarity(model, t, v, mask, k=k, fast=fast)}
    times = interleaved_clock(fns, repeats)
    S = model.similarity(t, v, mask, fast=fast)
    S2 = two_stage_similarity(model, t, v, mask, k=k, fast=fast)
    out = {"texts": int(t.shape[0]), "videos": int(v.shape[0]), "k": k, "scorer": "fast" if fast else "reference",
           "top10_agreement": topk_agreement(S, S2, 10)}
    for name in fns:
        out[f"{name}_s"] = {kind: med(times[name][kind]) for kind in ("wall", "cpu")}
    out["speedup"] = {kind: out["exhaustive_s"][kind] / out["two_stage_s"][kind] for kind in ("wall", "cpu")}
    return out


def _row(label: str, m: dict) -> tuple:
    return (label, m["k"], f"{m['exhaustive_s']['wall']:.2f} / {m['exhaustive_s']['cpu']:.2f}",
            f"{m['two_stage_s']['wall']:.2f} / {m['two_stage_s']['cpu']:.2f}",
            f"{m['speedup']['wall']:.2f}x / {m['speedup']['cpu']:.2f}x", f"{m['top10_agreement']:.3f}")


def encode_checkpoint_split(path: str, split: str):
    """Model, texts ``[N_q, D]``, videos ``[N_v, F, D]``, mask and the video of each text, of a run's split.

    Read-only on the data: a generated (synthetic) dataset is read from its folder as it is (never
    regenerated here: that folder may be shared), videos are decoded directly (no frame store is built).
    """
    from gare.config import merge_overrides
    from gare.data.datasets import load_split
    from gare.model.checkpoint import resolve_checkpoint, run_config
    from gare.pipeline import RunData, encode_split, load_data, load_run_model

    ckpt = resolve_checkpoint(path)
    d = run_config(ckpt)
    if d is None:
        raise SystemExit(f"{ckpt} carries no run config (train it with `gare train` / `gare demo`)")
    cfg = merge_overrides(d, ["data.workers=0"])
    model = load_run_model(ckpt)
    if cfg.data.dataset == "synthetic":
        root = Path(cfg.data.videos or "data/shapes")
        ann = root / "annotations.jsonl"
        if not ann.exists():
            raise FileNotFoundError(f"{ann} not found: generate the demo data first (gare demo / gare data synth)")
        data = RunData({split: load_split("jsonl", split, annotations=ann, videos=root)}, None, str(ann), str(root))
    else:
        data = load_data(cfg, splits=(split,), image_size=model.image_size)
    enc = encode_split(model, cfg, split, data=data)
    return model, enc.t, enc.v, enc.mask, enc.query_video


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="demo run folder or checkpoint (optional)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--ref-texts", type=int, default=250,
                    help="also time the reference scorer (fast=False) on this many texts (0: skip)")
    ap.add_argument("--json", default=None, help="write the figures (with command, machine, load) to this file")
    add_common_args(ap)
    args = ap.parse_args(argv)
    setup(args)
    res = start_record("bench_two_stage.py", argv)
    res["args"] = vars(args)
    res["random"] = {}
    print(f"two-stage benchmark: K={args.k}; random data {args.texts} texts x {args.videos} videos x "
          f"{args.frames} frames x D={args.dim}")
    print(f"machine: {res['machine']}")
    t, f = features(args.texts, args.videos, args.frames, args.dim, args.seed)
    rows = []
    for key, label, sc in (("init", "random data, psi at init", PairScorer(ScorerConfig(), args.dim)),
                           ("non_initial", "random data, psi non-initial",
                            trained_like(PairScorer(ScorerConfig(), args.dim)))):
        res["random"][key] = m_ = measure(ScorerOnly(sc), t, f, None, args.k, args.repeats)
        rows.append(_row(label, m_))
    if args.ref_texts:
        n = min(args.ref_texts, args.texts)
        res["random"]["non_initial_reference"] = m_ = measure(ScorerOnly(sc), t[:n], f, None, args.k, 1, fast=False)
        rows.append(_row(f"same, reference scorer, {n} texts", m_))
    header = ("data", "K", "exhaustive s (wall / CPU)", "two-stage s (wall / CPU)", "speed-up (wall / CPU)",
              "top-10 agreement")
    print(table(rows, header))
    print("exhaustive = exact scores of every pair (fast scorer unless marked reference); two-stage = cos(t, vbar) "
          "ranking + exact rerank of each text's top K (per-video psi work included in both)")
    if not args.checkpoint:
        print("(no --checkpoint given: demo test-set figures skipped)")
        finish_record(res, args.json)
        return 0
    try:
        model, tq, v, m, qv = encode_checkpoint_split(args.checkpoint, args.split)
    except Exception as exc:  # noqa: BLE001 - report and fail this optional part only
        print(f"checkpoint part FAILED ({args.checkpoint}, split {args.split}): {type(exc).__name__}: {exc}")
        return 1
    from gare.evaluate.metrics import t2v_v2t_metrics

    n_v = v.shape[0]
    ks = [args.k] if args.k < n_v else [max(1, n_v // 4), max(1, n_v // 16)]
    r1 = t2v_v2t_metrics(model.similarity(tq, v, m).float().cpu(), qv)["t2v"]["R1"]
    rows = []
    res["checkpoint"] = {"path": args.checkpoint, "split": args.split, "t2v_R1_exhaustive": r1, "rows": []}
    for k in ks:
        m_ = measure(model, tq, v, m, k, args.repeats)
        m_["t2v_R1_two_stage"] = t2v_v2t_metrics(model.similarity(tq, v, m, two_stage_k=k).float().cpu(),
                                                 qv)["t2v"]["R1"]
        res["checkpoint"]["rows"].append(m_)
        rows.append(_row(f"{Path(args.checkpoint).name} {args.split} ({tq.shape[0]} q x {n_v} v)", m_)
                    + (f"{r1:.1f} -> {m_['t2v_R1_two_stage']:.1f}",))
    print(table(rows, header + ("t2v R@1 exhaustive -> two-stage",)))
    finish_record(res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
