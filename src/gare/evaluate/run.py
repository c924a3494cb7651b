"""``gare eval``: a checkpoint on a split with the dataset's protocol, t2v and v2t, optional labelled rows."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from ..io import atomic_write
from ..model.checkpoint import resolve_checkpoint
from ..model.weights import weights_fingerprint
from ..pipeline import encode_split, load_data, load_run_model, run_recipe
from ..train.features import FeatureCache, encode_split_cached, features_fingerprint, load_features, rebuild_command
from .protocol import cache_gallery, encode_texts, evaluate_encoded, metrics_table, needs_words

log = logging.getLogger(__name__)


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", config: str | None = None,
                        overrides: list[str] | None = None, dsl: bool = False, qb_norm: bool = False,
                        two_stage_k: int | None = None, out: str | Path | None = None, device: str = "auto",
                        features: str | None = "auto") -> dict:
    """Evaluate a checkpoint file or run folder on ``split`` of the recipe ``config`` (default: the run
    config stored in the checkpoint), with ``overrides``. Writes results.json/md to ``out`` when given.

    ``features``: a feature cache (``gare data features``) to read the split's embeddings from instead of
    running the towers; ``"auto"`` (default) uses the recipe's ``train.features`` when that file exists,
    ``None`` or ``"none"`` always encodes with the towers. A cache whose key does not match the checkpoint's
    towers or the recipe's data and sampling is refused (:func:`gare.train.features.load_features`).
    QB-Norm's bank (training captions; their word embeddings too for a word-context model) comes from the
    same source; it is kept in ``qb_bank_<split>.pt`` and recomputed when its key (model weights, split,
    bank texts, source) differs.
    """
    ckpt = resolve_checkpoint(checkpoint)
    cfg = run_recipe(ckpt, config=config, overrides=overrides)
    model = load_run_model(ckpt, device=device)
    words = needs_words(model)
    feats = None
    if features == "auto":
        feats = cfg.train.features if cfg.train.features and Path(cfg.train.features).exists() else None
    elif features not in (None, "none"):
        feats = features
    splits = tuple(sorted({split, "train"})) if qb_norm else (split,)
    data = load_data(cfg, splits=splits, image_size=None if feats else model.image_size)
    sp = data.splits[split]
    cache = None
    if feats:
        rebuild = (f"{rebuild_command(feats)}` (or pass --features none to encode with the towers: "
                   f"`gare eval {ckpt} --features none")
        cache = load_features(feats, model, cfg, data, rebuild=rebuild)
        enc = encode_split_cached(model, cache, sp, words=words, batch_size=cfg.train.eval_batch_size)
        log.info("%s: %s embeddings read from the feature cache %s (towers not run)", ckpt, split, feats)
    else:
        enc = encode_split(model, cfg, split, data=data)
    bank = None
    if qb_norm:
        bank_texts = sorted({c for _, c in data.splits["train"].train_pairs()})[:5000]
        path = (Path(out) if out else ckpt.parent) / f"qb_bank_{split}.pt"
        key = {"weights_sha256": weights_fingerprint(model), "split": split,
               "videos": hashlib.sha256("\n".join(it.video_id for it in sp.items).encode()).hexdigest()[:16],
               "texts": hashlib.sha256("\n".join(bank_texts).encode()).hexdigest()[:16],
               "source": f"features:{features_fingerprint(feats)}" if feats else "towers"}
        bank = read_bank(path, key)
        if bank is None:
            bank = qb_bank(model, enc, bank_texts, cache)
            atomic_write(path, lambda tmp: torch.save({"key": key, "bank": bank}, tmp))
    res = evaluate_encoded(model, enc, dsl=dsl, qb_bank=bank, two_stage_k=two_stage_k)
    label = f"{ckpt.name} ({cfg.data.dataset} {split}" + (f", two-stage K={two_stage_k}" if two_stage_k else "") + ")"
    rows = {label: res}
    for k, r in res.get("extra", {}).items():
        rows[k] = r
    res["markdown"] = metrics_table(rows)
    res["protocol"] = sp.protocol
    res["features"] = str(feats) if feats else None
    if out:
        atomic_write(Path(out) / "results.json", json.dumps(res, indent=2, default=float))
        atomic_write(Path(out) / "results.md", res["markdown"] + "\n")
    return res


def qb_bank(model, enc, bank_texts: list[str], cache: FeatureCache | None = None) -> torch.Tensor:
    """``[N_bank, N_v]`` scores of the QB-Norm bank texts against the split's videos; the bank texts come
    from ``cache`` when given (with their word embeddings for a word-context model), else from the towers."""
    words = needs_words(model)
    wb = wmb = None
    if cache is not None:
        rows = cache.text_rows(bank_texts, "QB-Norm bank texts (training captions)")
        tb = cache.text[rows].to(model.device)
        if words:
            wb, wmb = cache.words[rows].to(model.device), cache.word_mask[rows].to(model.device)
    elif words:
        tb, wb, wmb = encode_texts(model, bank_texts, return_words=True)
    else:
        tb = encode_texts(model, bank_texts)
    cache_gallery(model, enc)  # the split's videos are scored twice: by the bank and by the queries
    return model.similarity(tb, *enc.videos(), words=wb, word_mask=wmb).float().cpu()


def read_bank(path: Path, key: dict) -> torch.Tensor | None:
    """The QB-Norm bank stored at ``path`` when it was made with ``key``, else None (logged)."""
    if not path.exists():
        return None
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or stored.get("key") != key:
        have = stored.get("key", {}) if isinstance(stored, dict) else {}
        diff = sorted(k for k in key if have.get(k) != key[k])
        log.info("QB-Norm bank %s was made for another %s: recomputed", path, ", ".join(diff) or "format")
        return None
    return stored["bank"]
