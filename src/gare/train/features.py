"""Cached-feature mode: frozen CLIP features extracted once (``gare data features``), then training,
validation and ``gare eval`` of the temporal module and psi only read them (no decoding, no CLIP forward).

The cache is one safetensors file:

- ``frames [N_v, F, D]``: per-frame CLIP embeddings (before the temporal module) of every video of
  train/val/test, ``mask [N_v, F]``;
- ``text [N_c, D]``: every training caption and every validation/test query;
- ``words [N_c, L, D]`` and ``word_mask [N_c, L]``: the projected per-token embeddings of the same texts
  (what a ``model.scorer.context=words`` psi attends to; left out with ``words=False``);
- metadata: the video ids and texts (row order), the storage dtype, and the *key*: everything the features
  depend on (format, tower architecture and a SHA-256 of the tower weights, the dataset's fingerprint,
  frame sampling and decoder, text settings). :func:`load_features` refuses a cache whose key differs
  from the run's, naming each difference and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ..config import Config, ConfigError
from ..data import dataset_fingerprint
from ..data.loader import collate
from ..evaluate.protocol import EncodedSplit
from ..io import atomic_write
from ..model.gare import GareModel
from ..model.weights import weights_fingerprint
from ..pipeline import load_data, resolve_device, video_dataset

log = logging.getLogger(__name__)

FEATURES_FORMAT = "gare-features-v2"  # v2: every split's texts, word embeddings, weights/data fingerprints
DTYPES = {"float16": torch.float16, "float32": torch.float32}


# ----------------------------------------------------------------------------------------- the key
def annotations_digest(path: str | Path) -> str:
    """Short SHA-256 of an annotation file's bytes (of each file's name and bytes for a folder)."""
    a = Path(path)
    files = sorted(p for p in a.rglob("*") if p.is_file()) if a.is_dir() else [a]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}|".encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def data_key(videos: str | Path | None, annotations: str | Path | None) -> dict:
    """The data part of a feature cache's key: :func:`gare.data.dataset_fingerprint` of the video folder
    (the generator's manifest for generated data, else a listing hash), flattened as ``videos.<field>``, and
    a digest of the annotations."""
    out: dict = {}
    if videos is not None and Path(videos).exists():
        out.update({f"videos.{k}": (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                    for k, v in dataset_fingerprint(videos).items()})
    if annotations is not None and Path(annotations).exists():
        out["annotations"] = annotations_digest(annotations)
    return out


def feature_key(cfg: Config, model, data=None) -> dict:
    """The settings a feature cache is made with and checked against (strings and numbers)."""
    b, d = cfg.model.backbone, cfg.data
    bb = model.backbone
    key = {"format": FEATURES_FORMAT,
           "arch": json.dumps(bb.arch_cfg, sort_keys=True),
           "weights_sha256": weights_fingerprint(bb, exclude=("logit_scale",)),
           "dataset": d.dataset, "dataset_options": json.dumps(d.options, sort_keys=True),
           "framerate": float(d.framerate), "max_frames": int(d.max_frames), "image_size": int(model.image_size),
           "decoder": d.decoder,
           "max_words": int(b.max_words), "context_length": int(bb.context_length),
           "tokenizer": "open_clip.SimpleTokenizer"}
    if data is not None:
        key.update(data_key(data.videos, data.annotations))
    return key


def key_differences(have: dict, want: dict) -> list[str]:
    """``"name: cache X, run Y"`` for every key whose values differ (missing counts as different)."""
    out = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if str(a) != str(b):
            short = (lambda x: x[:16] + "..." if isinstance(x, str) and len(x) > 40 else x)
            out.append(f"{k}: cache {short(a)!r}, run {short(b)!r}")
    return out


# ----------------------------------------------------------------------------------------- extraction
def _text_rows(data) -> list[str]:
    """Every text a run reads from the cache: training captions, then validation/test queries (unique)."""
    texts: dict[str, None] = {}
    for name, sp in data.splits.items():
        if name == "train":
            texts.update((c, None) for _, c in sp.train_pairs())
        texts.update((c, None) for c in sp.queries()[0])
    return sorted(texts)


@torch.no_grad()
def extract_features(cfg: Config, out: str | Path, batch_size: int = 32, *, dtype: str = "float16",
                     words: bool = True, command: str | None = None) -> Path:
    """Encode every video of train/val/test and every training caption and evaluation query with the
    frozen towers of ``cfg``; write the cache to ``out`` (see the module docstring)."""
    if dtype not in DTYPES:
        raise ConfigError(f"feature dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dt = DTYPES[dtype]
    device = resolve_device(cfg.train.device)
    model = GareModel(cfg.model).to(device).eval()
    data = load_data(cfg, image_size=model.image_size)
    vids, frames, masks, seen = [], [], [], set()
    for name, sp in data.splits.items():
        ds = video_dataset(cfg, name, image_size=model.image_size, data=data)
        for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=cfg.data.workers):
            f = model.encode_frames(batch["frames"].to(device), batch["mask"].to(device))
            for k, vi in enumerate(batch["video_index"].tolist()):
                vid = sp.items[vi].video_id
                if vid in seen:
                    continue
                seen.add(vid)
                vids.append(vid)
                frames.append(f[k].to(dt).cpu())
                masks.append(batch["mask"][k].cpu())
    texts = _text_rows(data)
    text, word_emb, word_mask = [], [], []
    for i in range(0, len(texts), 256):
        chunk = texts[i:i + 256]
        if words:
            t, w, m = model.encode_text(chunk, return_words=True)
            word_emb.append(w.to(dt).cpu())
            word_mask.append(m.to(torch.uint8).cpu())
        else:
            t = model.encode_text(chunk)
        text.append(t.to(dt).cpu())
    tensors = {"frames": torch.stack(frames), "mask": torch.stack(masks).to(torch.uint8), "text": torch.cat(text)}
    if words:
        tensors["words"] = torch.cat(word_emb)
        tensors["word_mask"] = torch.cat(word_mask)
    meta = {"video_ids": json.dumps(vids), "captions": json.dumps(texts), "dtype": dtype,
            "words": json.dumps(bool(words)), "key": json.dumps(feature_key(cfg, model, data)),
            "command": command or ""}
    out = Path(out)
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    log.info("wrote %d videos and %d texts (%s%s, %.1f MB) to %s", len(vids), len(texts), dtype,
             ", with word embeddings" if words else "", mb, out)
    return out


# ----------------------------------------------------------------------------------------- reading
class FeatureCache:
    """A feature cache in memory (float32): ``frames``, ``mask``, ``text``, ``words``/``word_mask`` or None."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            names = set(fh.keys())
            self.frames = fh.get_tensor("frames").float()
            self.mask = fh.get_tensor("mask").bool()
            self.text = fh.get_tensor("text").float()
            self.words = fh.get_tensor("words").float() if "words" in names else None
            self.word_mask = fh.get_tensor("word_mask").bool() if "word_mask" in names else None
        self.video_row = {v: i for i, v in enumerate(json.loads(meta.get("video_ids", "[]")))}
        self.caption_row = {c: i for i, c in enumerate(json.loads(meta.get("captions", "[]")))}
        self.dtype = meta.get("dtype", "float16")
        self.command = meta.get("command", "")
        # format v1 stored "settings" (no weights or data fingerprint): read as a key that differs
        self.key = json.loads(meta["key"]) if "key" in meta else {"format": "gare-features-v1"}

    def fingerprint(self) -> str:
        """Short hash of the key and storage dtype (what a finished sweep run records of its inputs)."""
        return features_fingerprint(self.path)

    def text_rows(self, texts: list[str], what: str) -> list[int]:
        return self._rows(self.caption_row, texts, what)

    def video_rows(self, video_ids: list[str], what: str) -> list[int]:
        return self._rows(self.video_row, video_ids, what)

    def _rows(self, row_of: dict[str, int], keys: list[str], what: str) -> list[int]:
        missing = [k for k in keys if k not in row_of]
        if missing:
            raise ConfigError(f"{len(missing)} {what} are not in the feature cache {self.path} (e.g. "
                              f"{missing[:3]}); it was made for other data: rebuild it with `gare data features`")
        return [row_of[k] for k in keys]


def features_fingerprint(path: str | Path) -> str:
    """Short hash of a cache's key, storage dtype and contents list, read from its metadata only (cheap)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        names = sorted(fh.keys())
    rec = {"key": meta.get("key", meta.get("settings")), "dtype": meta.get("dtype", "float16"), "tensors": names}
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def rebuild_command(path: str | Path, recipe: str | Path | None = None, overrides: list[str] | None = None) -> str:
    """The ``gare data features`` command that makes ``path`` for a recipe (placeholder when unknown)."""
    parts = ["gare", "data", "features", str(recipe) if recipe else "RECIPE.yaml",
             *(overrides or ([] if recipe else ["[key=value ...]"])), "--out", str(path)]
    return " ".join(shlex.quote(p) if not p.startswith("[") else p for p in parts)


def load_features(path: str | Path, model, cfg: Config, data=None, *, rebuild: str | None = None) -> FeatureCache:
    """Open a feature cache and check its key against ``cfg``/``model``/``data``; refuse a mismatch.

    ``rebuild``: the command named in the refusal (default: ``gare data features`` with a placeholder for
    the run's recipe and overrides). A word-context model needs a cache with word embeddings.
    """
    path = Path(path)
    cmd = rebuild or rebuild_command(path)
    if not path.exists():
        raise ConfigError(f"train.features file not found: {path} (make it with `{cmd}`)")
    cache = FeatureCache(path)
    want = feature_key(cfg, model, data)
    diff = key_differences(cache.key, want)
    if diff:
        raise ConfigError(f"the feature cache {path} does not match this run ({'; '.join(diff)}): its features "
                          f"would be stale. Rebuild it with `{cmd}`")
    sc = cfg.model.scorer
    if sc.use_delta and sc.context == "words" and cache.words is None:
        raise ConfigError(f"the feature cache {path} holds no word embeddings, which model.scorer.context=words "
                          f"needs; rebuild it with word embeddings (the default): `{cmd}`")
    return cache


def check_features(path: str | Path, cfg: Config, *, rebuild: str | None = None) -> FeatureCache:
    """:func:`load_features` for a config alone (builds its model on the CPU and resolves its data)."""
    model = GareModel(cfg.model).eval()
    data = load_data(cfg, image_size=model.image_size)
    return load_features(path, model, cfg, data, rebuild=rebuild)


# ----------------------------------------------------------------------------------------- training and evaluation
class FeaturePairDataset(Dataset):
    """Training pairs read from the cache; with ``words`` each item also carries its caption's word embeddings."""

    def __init__(self, cache: FeatureCache, split, pairs, *, words: bool = False):
        self.cache, self.split, self.pairs, self.words = cache, split, pairs, words
        self.rows = cache.video_rows([split.items[v].video_id for v, _ in pairs], "training videos")
        self.text = cache.text_rows([c for _, c in pairs], "training captions")
        if words and cache.words is None:
            raise ConfigError(f"the feature cache {cache.path} holds no word embeddings")

    random = False  # items are stored features: nothing is drawn

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        v, cap = self.pairs[i]
        row, trow = self.rows[i], self.text[i]
        item = {"frame_features": self.cache.frames[row], "mask": self.cache.mask[row],
                "text_features": self.cache.text[trow], "caption": cap, "video_index": v}
        if self.words:
            item["word_features"] = self.cache.words[trow]
            item["word_mask"] = self.cache.word_mask[trow]
        return item


def feature_collate(items: list[dict]) -> dict:
    out = {"frame_features": torch.stack([x["frame_features"] for x in items]),
           "mask": torch.stack([x["mask"] for x in items]),
           "text_features": torch.stack([x["text_features"] for x in items]),
           "caption": [x["caption"] for x in items],
           "video_index": torch.tensor([x["video_index"] for x in items])}
    if "word_features" in items[0]:
        out["word_features"] = torch.stack([x["word_features"] for x in items])
        out["word_mask"] = torch.stack([x["word_mask"] for x in items])
    return out


@torch.no_grad()
def encode_split_cached(model, cache: FeatureCache, split, *, words: bool = False, batch_size: int = 256):
    """The evaluation embeddings of a split from the cache (the towers are not run).

    Returns an :class:`gare.evaluate.protocol.EncodedSplit`: the split's queries ``t [N_q, D]`` (with
    ``words``: ``[N_q, L, D]`` and ``[N_q, L]``), and the temporal-module outputs ``v [N_v, F, D]`` of its
    videos in split order, with ``mask [N_v, F]``.
    """
    texts, qv = split.queries()
    trows = cache.text_rows(texts, f"{split.name} queries")
    vrows = cache.video_rows([it.video_id for it in split.items], f"{split.name} videos")
    dev = model.device
    was = model.training
    model.eval()
    try:
        vs = []
        for i in range(0, len(vrows), batch_size):
            r = vrows[i:i + batch_size]
            vs.append(model.temporal_forward(cache.frames[r].to(dev), cache.mask[r].to(dev)).float())
    finally:
        model.train(was)
    n_f = cache.frames.shape[1]
    v = torch.cat(vs) if vs else torch.zeros(0, n_f, model.embed_dim, device=dev)
    m = cache.mask[vrows].to(dev)
    t = cache.text[trows].to(dev)
    w = wm = None
    if words:
        if cache.words is None:
            raise ConfigError(f"the feature cache {cache.path} holds no word embeddings")
        w, wm = cache.words[trows].to(dev), cache.word_mask[trows].to(dev)
    return EncodedSplit(texts, list(qv), t, v, m, w, wm)
