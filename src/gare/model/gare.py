"""GareModel: CLIP towers + temporal module + pairwise GARE scorer, and the checkpoint format.

A project checkpoint is one ``.safetensors`` file: the weights plus, in its metadata, the model
configuration that built them (so it loads without the original CLIP file).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..config import Config, ModelConfig, merge_overrides, validate
from .backbone import ClipBackbone, make_backbone
from .scorer import PairScorer, ScoreOutput, check_inputs
from .temporal import build_temporal
from .weights import CheckpointError, load_state_dict_strict

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gare-checkpoint-v1"


class GareModel(nn.Module):
    """The GARE retrieval model.

    ``encode_text(texts | ids [N, L]) -> [N, D]``, ``encode_video(frames [N, F, 3, H, W], mask) -> [N, F, D]``,
    ``similarity(t, v, video_mask) -> [N_t, N_v]`` (cosine, no logit scale, memory-bounded).
    """

    def __init__(self, cfg: ModelConfig | None = None, backbone: ClipBackbone | None = None):
        super().__init__()
        cfg = cfg or ModelConfig()
        validate(Config(model=cfg))  # choices and ranges, also for configs built in code or by load_model overrides
        self.cfg = cfg
        b = cfg.backbone
        if backbone is None:
            backbone = make_backbone(b.arch, b.weights, b.quick_gelu, b.max_words, b.arch_cfg)
        self.backbone = backbone
        # record the resolved architecture so checkpoints rebuild without the CLIP file
        cfg.backbone.arch_cfg = backbone.arch_cfg
        D = backbone.embed_dim
        text_heads = backbone.arch_cfg["text_cfg"].get("heads", max(1, D // 64))
        self.temporal = build_temporal(cfg.temporal.kind, D, cfg.temporal.layers, text_heads,
                                       backbone.context_length, b.quick_gelu)
        if self.temporal is not None and cfg.temporal.init_from_text:
            try:
                self.temporal.init_from_text(backbone.clip)
            except ValueError as e:
                log.warning("temporal module left randomly initialized: %s", e)
        self.scorer = PairScorer(cfg.scorer, D, release_padding=cfg.compat == "release")
        if b.grad_checkpointing:
            backbone.set_grad_checkpointing(True)

    # -- properties ---------------------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.clip.logit_scale

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    # -- encoders -----------------------------------------------------------------------------
    def tokenize(self, texts: list[str] | str) -> Tensor:
        return self.backbone.tokenize(texts).to(self.device)

    def encode_text(self, texts: list[str] | str | Tensor, return_words: bool = False):
        """Strings or CLIP token ids ``[N, L]`` (start, ids, end-of-text, zero padding) ->
        unnormalized projected end-of-text embeddings ``[N, D]`` (with ``return_words``: also the
        projected word embeddings ``[N, L, D]`` and their mask ``[N, L]``)."""
        if isinstance(texts, Tensor):
            if texts.dtype not in (torch.int64, torch.int32) or texts.dim() != 2:
                raise ValueError(f"token ids must be an integer tensor [N, L], got {texts.dtype} {tuple(texts.shape)}")
            ids = texts.long().to(self.device)
        else:
            if isinstance(texts, str):
                texts = [texts]
            if len(texts) == 0:
                raise ValueError("encode_text needs at least one text")
            ids = self.tokenize(list(texts))
        return self.backbone.encode_text(ids, return_words=return_words)

    @property
    def release_padding(self) -> bool:
        """``compat: release``: padded slots are encoded as zero images, attended to and averaged into vbar."""
        return self.cfg.compat == "release"

    def encode_frames(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-frame CLIP embeddings before the temporal module ``[N, F, D]``.

        Default: padded frames are not encoded (zeros). Release mode: padded slots are zero tensors (after
        normalization, as the release's loader pads) and are encoded like any frame.
        """
        frames = frames.to(self.device)
        mask = None if mask is None else mask.to(self.device)
        if self.release_padding:
            if mask is not None:
                frames = frames * mask.to(frames.dtype)[:, :, None, None, None]
            return self.backbone.encode_frames(frames, None)
        return self.backbone.encode_frames(frames, mask)

    def temporal_forward(self, f: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.temporal is None:
            return f
        return self.temporal(f, mask)

    def encode_video(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalized float frames ``[N, F, 3, H, W]`` (+ mask ``[N, F]``) -> temporal outputs ``[N, F, D]``."""
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be float [N, F, 3, H, W], got {tuple(frames.shape)}")
        if mask is not None:
            mask = mask.to(self.device).bool()
        f = self.encode_frames(frames, mask)
        return self.temporal_forward(f, mask)

    # -- training forward ----------------------------------------------------------------------------
    def forward(self, ids: Tensor | None = None, frames: Tensor | None = None, mask: Tensor | None = None, *,
                text_features: Tensor | None = None, frame_features: Tensor | None = None,
                gather=None, gather_nograd=None) -> ScoreOutput:
        """One training forward: encode the local batch, optionally all-gather features across ranks
        (``gather`` keeps gradients), and score every (text, video) pair of the global batch.

        ``ids [B, L]`` or cached ``text_features [B, D]``; ``frames [B, F, 3, H, W]`` or cached per-frame
        CLIP ``frame_features [B, F, D]``; ``mask [B, F]``. Returns the reference :class:`ScoreOutput`.
        """
        words = word_mask = None
        need_words = self.cfg.scorer.use_delta and self.cfg.scorer.context == "words"
        if text_features is not None:
            t = text_features
        elif need_words:
            t, words, word_mask = self.backbone.encode_text(ids, return_words=True)
        else:
            t = self.backbone.encode_text(ids)
        f = frame_features if frame_features is not None else self.encode_frames(frames, mask)
        f = self.temporal_forward(f, mask)
        if gather is not None:
            t, f = gather(t), gather(f)
            if mask is not None:
                mask = gather_nograd(mask)
            if words is not None:
                words, word_mask = gather(words), gather_nograd(word_mask)
        return self.scorer(t, f, mask, words, word_mask)

    # -- scoring ------------------------------------------------------------------------------
    def score_pairs(self, t: Tensor, v: Tensor, video_mask: Tensor | None = None,
                    words: Tensor | None = None, word_mask: Tensor | None = None) -> ScoreOutput:
        """Training-time reference scoring (with Delta, corrected vectors and log sigma)."""
        return self.scorer(t, v, video_mask, words, word_mask)

    @torch.no_grad()
    def similarity(self, t: Tensor, v: Tensor, video_mask: Tensor | None = None, *,
                   words: Tensor | None = None, word_mask: Tensor | None = None,
                   fast: bool = True, memory_budget: int = 256 * 2**20, two_stage_k: int | None = None) -> Tensor:
        """Cosine scores ``[N_t, N_v]`` (no logit scale) for embeddings computed earlier.

        ``fast`` uses the exact fast scorer where it covers the configuration (falls back to the
        blockwise reference otherwise); ``two_stage_k`` ranks by cos(t, vbar) and rescores only each
        text's top K videos with GARE (the others keep a score below every reranked one).
        """
        was_training = self.training
        self.eval()
        try:
            t = t.to(self.device)
            v = v.to(self.device)
            if video_mask is not None:
                video_mask = video_mask.to(self.device).bool()
            check_inputs(t, v, video_mask)
            if two_stage_k is not None:
                from .two_stage import two_stage_similarity

                return two_stage_similarity(self, t, v, video_mask, k=two_stage_k, words=words,
                                            word_mask=word_mask, fast=fast, memory_budget=memory_budget)
            if fast:
                try:
                    from .fast_scorer import fast_similarity, supports
                except ImportError:  # fast path not available in this build
                    supports = None
                if supports is not None and supports(self.scorer):
                    return fast_similarity(self.scorer, t, v, video_mask, words=words, word_mask=word_mask,
                                           memory_budget=memory_budget)
            return self.scorer.similarity(t, v, video_mask, words=words, word_mask=word_mask,
                                          memory_budget=memory_budget)
        finally:
            self.train(was_training)

    def mean_video(self, v: Tensor, video_mask: Tensor | None = None) -> Tensor:
        """``vbar [N, D]``: mean of the temporal outputs over valid frames (the first-stage embedding; release
        mode: over every slot, as the release averages)."""
        return self.scorer.mean_frames(v, video_mask)

    # -- checkpoints ------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        d = asdict(self.cfg)
        d["backbone"]["weights"] = None
        return d

    def save(self, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
        """Write weights + config to one ``.safetensors`` file, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": CHECKPOINT_FORMAT, "model_config": json.dumps(self.config_dict())}
        meta.update(extra_metadata or {})
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def _flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``pool_temperature=3`` style keyword overrides -> dotted model-config keys."""
    short = {
        "arch": "backbone.arch", "max_words": "backbone.max_words", "quick_gelu": "backbone.quick_gelu",
        "temporal": "temporal.kind", "pool_temperature": "scorer.pool_temperature", "pooling": "scorer.pooling",
        "use_delta": "scorer.use_delta", "eta": "scorer.eta", "context": "scorer.context", "side": "scorer.side",
        "query": "scorer.query", "psi_heads": "scorer.psi.heads", "psi_layers": "scorer.psi.layers",
        "log_sigma_head": "scorer.psi.log_sigma_head", "dropout": "scorer.psi.dropout",
    }
    out = {}
    for k, v in overrides.items():
        key = k.replace("__", ".")
        out[short.get(key, key)] = v
    return out


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        for k in fh.keys():
            tensors[k] = fh.get_tensor(k)
    return tensors, meta


def _torch_state(path: Path) -> dict[str, Tensor] | None:
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a pickled state dict; the caller tries other formats
        return None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        return None
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items() if isinstance(v, Tensor)}


def load_model(path: str | Path, device: str | torch.device = "cpu", *, compat: str | None = None,
               dataset: str | None = None, **overrides: Any) -> GareModel:
    """Load a model from a local file.

    (a) a project checkpoint (``.safetensors`` with its config, or a run directory holding ``best.safetensors``),
    (b) an OpenAI CLIP ``.pt`` (TorchScript or state dict; GARE head freshly initialized),
    (c) a state dict saved by the official GARE release (detected by its ``clip.*``/``agent.psi.*`` keys).
    ``overrides`` change model options (``pool_temperature=3``, ``scorer__psi__heads=2``, ``arch="ViT-B-16"``).

    ``compat``: ``"release"`` scores as the official release (padded frame slots encoded, attended to and
    averaged into vbar), ``"none"`` masks padding; ``None`` keeps the checkpoint's recorded mode, which is
    ``"release"`` for official-layout state dicts (they were trained that way). ``dataset`` (official
    checkpoints only): ``"msvd"`` builds no temporal module, as the release does for MSVD.
    """
    if compat is not None and compat not in ("none", "release"):
        raise ValueError(f"compat must be 'none' or 'release', got {compat!r}")
    if compat is not None:
        overrides = {**overrides, "compat": compat}
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "model.safetensors", "last.safetensors"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path} is a folder without best/model/last.safetensors")
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    ov = _flatten_overrides(overrides)
    if path.suffix == ".safetensors":
        tensors, meta = read_checkpoint(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not a gare checkpoint (metadata format={meta.get('format')!r}); "
                                  "convert official weights with `gare convert SRC DST`")
        cfg = merge_overrides(json.loads(meta["model_config"]), ov, ModelConfig, prefix="model")
        model = GareModel(cfg)
        load_state_dict_strict(model, tensors, source=str(path))
        return model.to(device).eval()
    from .convert import is_official_gare, load_official_gare  # convert imports this module

    sd = _torch_state(path)
    if sd is not None and is_official_gare(sd):
        mode = ov.pop("compat", "release")
        return load_official_gare(sd, source=str(path), overrides=ov, dataset=dataset,
                                  compat=mode).to(device).eval()
    if dataset is not None:
        raise ValueError(f"dataset={dataset!r} applies to official GARE checkpoints only; {path} is not one")
    # OpenAI CLIP (TorchScript or state dict): fresh GARE head
    cfg = merge_overrides({"backbone": {"weights": str(path), "arch": ov.pop("backbone.arch", "ViT-B-32")}}, ov,
                          ModelConfig, prefix="model")
    model = GareModel(cfg)
    log.info("loaded CLIP weights from %s; temporal module and psi freshly initialized", path)
    return model.to(device).eval()

