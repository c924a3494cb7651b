"""The pipeline layer: turns a :class:`~gare.config.Config` (and a checkpoint) into what the apps use.

Every app (``gare train``, ``gare eval``, ``gare data features``, ``gare index``, the sweep) gets its
device, its split data, its datasets, its model and its encoded splits here, so a recipe setting such as
``data.decoder`` or ``data.frame_store`` means the same thing everywhere. The layers
(docs/architecture.md): core modules (config, model, data, objectives, evaluate helpers, distributed, io)
never import this module; this module never imports an app.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, ConfigError, load_config, merge_overrides
from .data.cache import FrameStore
from .data.datasets import Split, load_split
from .data.loader import TrainPairDataset, VideoDataset, collate
from .data.noise import corrupt_captions
from .data.synthetic import generate
from .data.video import FrameTransform, ReleaseFrameTransform
from .evaluate.protocol import EncodedSplit, encode_texts, encode_videos, needs_words
from .model.checkpoint import resolve_checkpoint, run_config
from .model.factory import load_model
from .model.gare import GareModel

log = logging.getLogger(__name__)

DEFAULT_SYNTH_DIR = "data/shapes"  # where the generated (synthetic) dataset lives when data.videos is not set


# ------------------------------------------------------------------------------------------------ device
def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` -> a device; a CUDA
    device on a machine without CUDA is a :class:`ConfigError` naming ``train.device``."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available on this machine; use train.device=cpu")
    return torch.device(name)


# -------------------------------------------------------------------------------------------------- data
@dataclass
class RunData:
    """The splits of a run's dataset and, when ``data.frame_store`` is set, the frame store they read."""

    splits: dict[str, Split]
    store: FrameStore | None
    annotations: str
    videos: str


def load_data(cfg: Config, *, splits: tuple[str, ...] = ("train", "val", "test"),
              image_size: int | None = None) -> RunData:
    """Read (or, for ``data.dataset=synthetic``, generate) the splits of ``cfg.data``. The frame store of
    ``data.frame_store`` is built (or resumed) for frames of ``image_size`` pixels; no store without it."""
    d = cfg.data
    if d.dataset == "synthetic":
        root = Path(d.videos or DEFAULT_SYNTH_DIR)
        ann = generate(root, n_videos=d.synthetic_videos, seed=d.synthetic_seed, **d.synthetic_options)
        kind, annotations, videos = "jsonl", str(ann), str(root)
    else:
        if not d.annotations:
            raise ConfigError(f"data.annotations is not set for dataset '{d.dataset}' (the annotation folder or file)")
        if not Path(d.annotations).exists():
            raise ConfigError(f"data.annotations path does not exist: {d.annotations}")
        if d.dataset != "jsonl" and not d.videos:
            raise ConfigError(f"data.videos is not set for dataset '{d.dataset}' (the folder of video files)")
        if d.videos and not Path(d.videos).exists():
            raise ConfigError(f"data.videos path does not exist: {d.videos}")
        kind, annotations, videos = d.dataset, d.annotations, d.videos or str(Path(d.annotations).parent)
    loaded = {s: load_split(kind, s, annotations=annotations, videos=videos, **d.options) for s in splits}
    store = None
    if d.frame_store and image_size is not None:
        path = Path(d.frame_store)
        if d.frame_store == "auto":
            path = Path(videos) / f"frames_fps{d.framerate:g}_f{d.max_frames}_s{image_size}.store"
        items = [it for s in loaded.values() for it in s.items]
        store = FrameStore.build(items, path, framerate=d.framerate, max_frames=d.max_frames, size=image_size,
                                 decoder=d.decoder)
    return RunData(loaded, store, annotations, videos)


def _data_for(cfg: Config, split: str, data: RunData | None, image_size: int | None) -> RunData:
    if data is None:
        return load_data(cfg, splits=(split,), image_size=image_size)
    if split not in data.splits:
        raise ValueError(f"split {split!r} was not loaded (loaded: {sorted(data.splits)})")
    return data


def _frame_settings(cfg: Config, data: RunData, report) -> dict:
    d = cfg.data
    return dict(framerate=d.framerate, max_frames=d.max_frames, store=data.store, decoder=d.decoder, report=report,
                max_bad_fraction=d.bad_input_threshold)


def video_dataset(cfg: Config, split: str, *, image_size: int, data: RunData | None = None,
                  report=None) -> VideoDataset:
    """One item per video of ``split`` (evaluation transform), decoded as ``cfg.data`` says (framerate,
    max_frames, decoder, frame store). ``report``: where failed videos are recorded (file or run folder)."""
    data = _data_for(cfg, split, data, image_size)
    return VideoDataset(data.splits[split], transform=FrameTransform(image_size, train=False),
                        **_frame_settings(cfg, data, report))


def training_pairs(cfg: Config, split: Split) -> tuple[list[tuple[int, str]], list[int]]:
    """The ``(video index, caption)`` training pairs of ``split`` and the indices of the captions replaced
    by ``data.noise_fraction`` (noisy correspondence; none by default)."""
    pairs = list(split.train_pairs())
    corrupted: list[int] = []
    if cfg.data.noise_fraction > 0:
        pairs, corrupted = corrupt_captions(pairs, cfg.data.noise_fraction, cfg.data.noise_seed)
        log.info("noisy correspondence: %d of %d training captions replaced", len(corrupted), len(pairs))
    return pairs, list(corrupted)


def train_dataset(cfg: Config, pairs: list[tuple[int, str]], *, image_size: int, data: RunData | None = None,
                  report=None) -> TrainPairDataset:
    """The training pairs as frames (training transform: ``data.augment``; the release's RandAugment per clip
    with ``release.augment``), decoded as ``cfg.data`` says."""
    data = _data_for(cfg, "train", data, image_size)
    if cfg.release.augment and cfg.data.augment:
        transform = ReleaseFrameTransform(image_size, train=True)
    else:
        transform = FrameTransform(image_size, train=cfg.data.augment)
    return TrainPairDataset(data.splits["train"], transform=transform, pairs=pairs,
                            **_frame_settings(cfg, data, report))


def text_items(cfg: Config, split: str, *, data: RunData | None = None) -> tuple[list[str], list[int]]:
    """The query texts of ``split`` and, for each, the index of its video in the split."""
    data = _data_for(cfg, split, data, None)
    texts, query_video = data.splits[split].queries()
    return list(texts), list(query_video)


# ------------------------------------------------------------------------------------------------- model
def load_run_model(path: str | Path, *, device: str | torch.device = "cpu", **overrides) -> GareModel:
    """The model of a checkpoint file or run folder (``best.safetensors`` first), on ``device`` ("auto"
    allowed), in eval mode. ``overrides``: as :func:`gare.load_model`."""
    return load_model(resolve_checkpoint(path), device=resolve_device(device), **overrides)


def run_recipe(checkpoint: str | Path, *, config: str | Path | None = None,
               overrides: list[str] | None = None) -> Config:
    """The recipe to evaluate a checkpoint with: ``config`` (a YAML file) when given, else the run config
    stored in the checkpoint; ``overrides`` (``key=value``) apply to either."""
    if config:
        return load_config(config, overrides)
    stored = run_config(resolve_checkpoint(checkpoint))
    if stored is None:
        raise ConfigError(f"{checkpoint} carries no run config; pass --config RECIPE to say which data to "
                          "evaluate on")
    return merge_overrides(stored, overrides)


# ---------------------------------------------------------------------------------------------- encoding
@torch.no_grad()
def encode_split(model: GareModel, cfg: Config, split: str, *, data: RunData | None = None,
                 videos: VideoDataset | None = None, rank: int = 0, world: int = 1, report=None) -> EncodedSplit:
    """Encode the queries and the gallery of ``split`` once (word embeddings too for ``context=words``
    models). ``videos``: a gallery dataset to reuse (default: :func:`video_dataset`); under torchrun every
    rank encodes its shard (``rank``, ``world``) and gets the whole split back."""
    data = _data_for(cfg, split, data, model.image_size)
    texts, query_video = text_items(cfg, split, data=data)
    if videos is None:
        videos = video_dataset(cfg, split, image_size=model.image_size, data=data, report=report)
    words = word_mask = None
    if needs_words(model):
        t, words, word_mask = encode_texts(model, texts, rank=rank, world=world, return_words=True)
    else:
        t = encode_texts(model, texts, rank=rank, world=world)
    v, m = encode_videos(model, videos, batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers, rank=rank,
                         world=world, collate=collate)
    return EncodedSplit(texts, query_video, t.float(), v.float(), m, words, word_mask)
