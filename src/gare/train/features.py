"""Cached-feature mode: frozen CLIP features extracted once (``gare data features``), then training of
the temporal module and psi only reads them (fast research loops; no decoding, no CLIP forward).

The cache is one safetensors file: ``frames [N_v, F, D]`` (per-frame CLIP embeddings before the
temporal module), ``mask [N_v, F]``, ``text [N_c, D]``; metadata lists the video ids and captions and
the settings it was made with (refused when they differ from the run's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ..config import Config, ConfigError

log = logging.getLogger(__name__)


def _settings(cfg: Config, model) -> dict:
    b = cfg.model.backbone
    return {"arch": json.dumps(model.backbone.arch_cfg, sort_keys=True), "weights": str(b.weights),
            "framerate": cfg.data.framerate, "max_frames": cfg.data.max_frames, "max_words": b.max_words,
            "dataset": cfg.data.dataset}


@torch.no_grad()
def extract_features(cfg: Config, out: str | Path, batch_size: int = 32) -> Path:
    """Encode every video of train/val/test and every training caption with the frozen backbone."""
    from ..data.loader import VideoDataset, collate
    from ..data.video import FrameTransform
    from ..model.gare import GareModel
    from .data import resolve_data
    from .trainer import resolve_device

    device = resolve_device(cfg.train.device)
    model = GareModel(cfg.model).to(device).eval()
    data = resolve_data(cfg, image_size=model.image_size)
    vids, frames, masks, seen = [], [], [], set()
    tf = FrameTransform(model.image_size, train=False)
    for sp in data.splits.values():
        ds = VideoDataset(sp, framerate=cfg.data.framerate, max_frames=cfg.data.max_frames, transform=tf,
                          store=data.store)
        for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate, num_workers=cfg.data.workers):
            f = model.encode_frames(batch["frames"].to(device), batch["mask"].to(device))
            for k, vi in enumerate(batch["video_index"].tolist()):
                vid = sp.items[vi].video_id
                if vid in seen:
                    continue
                seen.add(vid)
                vids.append(vid)
                frames.append(f[k].half().cpu())
                masks.append(batch["mask"][k].cpu())
    captions = sorted({c for _, c in data.splits["train"].train_pairs()})
    text = torch.cat([model.encode_text(captions[i:i + 256]).half().cpu() for i in range(0, len(captions), 256)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"video_ids": json.dumps(vids), "captions": json.dumps(captions),
            "settings": json.dumps(_settings(cfg, model))}
    save_file({"frames": torch.stack(frames), "mask": torch.stack(masks).to(torch.uint8), "text": text},
              str(out), metadata=meta)
    log.info("wrote %d videos and %d captions to %s", len(vids), len(captions), out)
    return out


class FeatureCache:
    def __init__(self, path: Path):
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            self.frames = fh.get_tensor("frames").float()
            self.mask = fh.get_tensor("mask").bool()
            self.text = fh.get_tensor("text").float()
        self.video_row = {v: i for i, v in enumerate(json.loads(meta["video_ids"]))}
        self.caption_row = {c: i for i, c in enumerate(json.loads(meta["captions"]))}
        self.settings = json.loads(meta["settings"])


def load_features(path: str | Path, model, cfg: Config) -> FeatureCache:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"train.features file not found: {path} (make it with `gare data features CONFIG --out "
                          f"{path}`)")
    cache = FeatureCache(path)
    want = _settings(cfg, model)
    diff = [k for k in want if str(cache.settings.get(k)) != str(want[k])]
    if diff:
        raise ConfigError(f"{path} was extracted with other settings ({', '.join(diff)}: "
                          f"{[cache.settings.get(k) for k in diff]} vs {[want[k] for k in diff]}); re-extract it")
    return cache


class FeaturePairDataset(Dataset):
    def __init__(self, cache: FeatureCache, split, pairs):
        self.cache, self.split, self.pairs = cache, split, pairs
        missing = [split.items[v].video_id for v, _ in pairs if split.items[v].video_id not in cache.video_row]
        if missing:
            raise ConfigError(f"{len(missing)} training videos are not in the feature cache (e.g. {missing[:3]})")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        v, cap = self.pairs[i]
        row = self.cache.video_row[self.split.items[v].video_id]
        return {"frame_features": self.cache.frames[row], "mask": self.cache.mask[row],
                "text_features": self.cache.text[self.cache.caption_row[cap]], "caption": cap, "video_index": v}


def feature_collate(items: list[dict]) -> dict:
    return {"frame_features": torch.stack([x["frame_features"] for x in items]),
            "mask": torch.stack([x["mask"] for x in items]),
            "text_features": torch.stack([x["text_features"] for x in items]),
            "caption": [x["caption"] for x in items],
            "video_index": torch.tensor([x["video_index"] for x in items])}
