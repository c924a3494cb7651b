"""``gare eval``: a checkpoint on a split with the dataset's protocol, t2v and v2t, optional labelled rows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..io import atomic_write
from ..model.checkpoint import resolve_checkpoint
from ..pipeline import encode_split, load_data, load_run_model, run_recipe
from .protocol import cache_gallery, encode_texts, evaluate_encoded, metrics_table

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", config: str | None = None,
                        overrides: list[str] | None = None, dsl: bool = False, qb_norm: bool = False,
                        two_stage_k: int | None = None, out: str | Path | None = None, device: str = "auto") -> dict:
    """Evaluate a checkpoint file or run folder on ``split`` of the recipe ``config`` (default: the run
    config stored in the checkpoint), with ``overrides``. Writes results.json/md to ``out`` when given."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = run_recipe(ckpt, config=config, overrides=overrides)
    model = load_run_model(ckpt, device=device)
    data = load_data(cfg, splits=tuple(sorted({split, "train"})) if qb_norm else (split,),
                     image_size=model.image_size)
    sp = data.splits[split]
    enc = encode_split(model, cfg, split, data=data)
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
            atomic_write(cache, lambda tmp: torch.save(bank, tmp))
    res = evaluate_encoded(model, enc, dsl=dsl, qb_bank=bank, two_stage_k=two_stage_k)
    label = f"{ckpt.name} ({cfg.data.dataset} {split}" + (f", two-stage K={two_stage_k}" if two_stage_k else "") + ")"
    rows = {label: res}
    for k, r in res.get("extra", {}).items():
        rows[k] = r
    res["markdown"] = metrics_table(rows)
    res["protocol"] = sp.protocol
    if out:
        atomic_write(Path(out) / "results.json", json.dumps(res, indent=2, default=float))
        atomic_write(Path(out) / "results.md", res["markdown"] + "\n")
    return res
