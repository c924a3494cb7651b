"""``gare eval``: a checkpoint on a split with the dataset's protocol, t2v and v2t, optional labelled rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..config import Config, ConfigError, load_config, merge_overrides
from ..model.checkpoint import resolve_checkpoint, run_config
from .protocol import (
    EncodedSplit,
    cache_gallery,
    encode_texts,
    encode_videos,
    evaluate_encoded,
    metrics_table,
    needs_words,
)

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", config: str | None = None,
                        overrides: list[str] | None = None, dsl: bool = False, qb_norm: bool = False,
                        two_stage_k: int | None = None, out: str | Path | None = None, device: str = "auto") -> dict:
    from ..data.loader import VideoDataset, collate
    from ..data.video import FrameTransform
    from ..model.factory import load_model
    from ..train.data import resolve_data
    from ..train.trainer import resolve_device

    ckpt = resolve_checkpoint(checkpoint)
    if config:
        cfg = load_config(config, overrides)
    else:
        d = run_config(ckpt)
        if d is None:
            raise ConfigError(f"{ckpt} carries no run config; pass --config RECIPE to say which data to evaluate on")
        cfg = merge_overrides(d, overrides, Config)
    dev = resolve_device(device)
    model = load_model(ckpt, device=dev)
    data = resolve_data(cfg, splits=tuple(sorted({split, "train"})) if qb_norm else (split,),
                        image_size=model.image_size)
    sp = data.splits[split]
    texts, qv = sp.queries()
    tf = FrameTransform(model.image_size, train=False)
    vds = VideoDataset(sp, framerate=cfg.data.framerate, max_frames=cfg.data.max_frames, transform=tf,
                       store=data.store)
    words = word_mask = None
    if needs_words(model):
        t, words, word_mask = encode_texts(model, texts, return_words=True)
    else:
        t = encode_texts(model, texts)
    v, m = encode_videos(model, vds, batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers, collate=collate)
    enc = EncodedSplit(texts, list(qv), t, v, m, words, word_mask)
    bank = None
    if qb_norm:
        out_dir = Path(out) if out else ckpt.parent
        cache = out_dir / f"qb_bank_{split}.pt"
        if cache.exists():
            bank = torch.load(cache, map_location="cpu")
        else:
            bank_texts = sorted({c for _, c in data.splits["train"].train_pairs()})[:5000]
            tb = encode_texts(model, bank_texts)
            cache_gallery(model, enc)  # the split's videos are scored twice: by the bank and by the queries
            bank = model.similarity(tb, *enc.videos()).float().cpu()
            out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(bank, cache)
    res = evaluate_encoded(model, enc, dsl=dsl, qb_bank=bank, two_stage_k=two_stage_k)
    label = f"{ckpt.name} ({cfg.data.dataset} {split}" + (f", two-stage K={two_stage_k}" if two_stage_k else "") + ")"
    rows = {label: res}
    for k, r in res.get("extra", {}).items():
        rows[k] = r
    res["markdown"] = metrics_table(rows)
    res["protocol"] = sp.protocol
    if out:
        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "results.json").write_text(json.dumps(res, indent=2, default=float))
        (o / "results.md").write_text(res["markdown"] + "\n")
    return res
