"""GareModel: CLIP towers + temporal module + pairwise GARE scorer (the nn.Module only).

Files: :mod:`gare.model.checkpoint` reads and writes them, :func:`gare.model.factory.load_model` builds a
model from one.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import Config, ModelConfig, validate
from .backbone import ClipBackbone, make_backbone
from .checkpoint import write_checkpoint
from .fast_scorer import build_gallery, fast_similarity, gallery_similarity, supports
from .gallery import VideoGallery
from .scorer import PairScorer, ScoreOutput, check_inputs
from .temporal import CLIP_LN_EPS, RELEASE_LN_EPS, build_temporal
from .two_stage import two_stage_similarity

log = logging.getLogger(__name__)


class GareModel(nn.Module):
    """The GARE retrieval model.

    ``encode_text(texts | ids [N, L]) -> [N, D]``, ``encode_video(frames [N, F, 3, H, W], mask) -> [N, F, D]``,
    ``similarity(t, v, video_mask) -> [N_t, N_v]`` (cosine, no logit scale, memory-bounded),
    ``gallery(v, video_mask)`` -> cached per-video score bases that ``similarity(t, gallery)`` scores.
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
        # release mode: the release's temporal LayerNorms have epsilon 1e-12 (gare.model.temporal)
        self.temporal = build_temporal(cfg.temporal.kind, D, cfg.temporal.layers, text_heads,
                                       backbone.context_length, b.quick_gelu,
                                       RELEASE_LN_EPS if cfg.compat == "release" else CLIP_LN_EPS)
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
                word_features: Tensor | None = None, word_mask: Tensor | None = None,
                gather=None, gather_nograd=None) -> ScoreOutput:
        """One training forward: encode the local batch, optionally all-gather features across ranks
        (``gather`` keeps gradients), and score every (text, video) pair of the global batch.

        ``ids [B, L]`` or cached ``text_features [B, D]`` (a word-context model also needs the cached
        ``word_features [B, L, D]`` and ``word_mask [B, L]``); ``frames [B, F, 3, H, W]`` or cached per-frame
        CLIP ``frame_features [B, F, D]``; ``mask [B, F]``. Returns the reference :class:`ScoreOutput`.
        """
        words = None
        need_words = self.cfg.scorer.use_delta and self.cfg.scorer.context == "words"
        if text_features is not None:
            t = text_features
            if need_words:
                if word_features is None or word_mask is None:
                    raise ValueError("model.scorer.context=words with cached text features needs word_features "
                                     "[B, L, D] and word_mask [B, L] (a feature cache with word embeddings)")
                words, word_mask = word_features, word_mask.bool()
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
    def gallery(self, v: Tensor, video_mask: Tensor | None = None, *, dtype: torch.dtype | None = None,
                memory_budget: int = 256 * 2**20) -> VideoGallery:
        """The cached per-video score bases of encoded videos ``v [N, F, D]`` (``video_mask [N, F]``).

        ``similarity(t, g)`` then returns the same matrix as ``similarity(t, v, video_mask)`` while each
        text pays only its own ``(3F + 1) D`` products per video plus small contractions
        (docs/performance.md). Stored float32 by default (``dtype=torch.float16`` halves the bytes; its
        ranking agreement is measured in docs/performance.md). Raises ``ValueError`` for scorer options
        the fast scorer does not cover.
        """
        was_training = self.training
        self.eval()
        try:
            v = v.to(self.device)
            if video_mask is not None:
                video_mask = video_mask.to(self.device).bool()
            return build_gallery(self.scorer, v, video_mask, dtype=dtype, memory_budget=memory_budget)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def similarity(self, t: Tensor, v: Tensor | VideoGallery, video_mask: Tensor | None = None, *,
                   words: Tensor | None = None, word_mask: Tensor | None = None,
                   fast: bool = True, memory_budget: int = 256 * 2**20, two_stage_k: int | None = None) -> Tensor:
        """Cosine scores ``[N_t, N_v]`` (no logit scale) for embeddings computed earlier.

        ``v``: temporal outputs ``[N_v, F, D]`` (with ``video_mask``) or a gallery from :meth:`gallery`
        (it holds its mask). ``fast`` uses the exact fast scorer where it covers the configuration (falls
        back to the blockwise reference otherwise); each video's bases are then computed once per call,
        or never when ``v`` is a gallery. ``two_stage_k`` ranks by cos(t, vbar) and rescores only each
        text's top K videos with GARE (the others keep a score below every reranked one).
        """
        was_training = self.training
        if was_training:  # eval() walks every submodule: skip it when already in eval mode (one search query)
            self.eval()
        try:
            t = t.to(self.device)
            if isinstance(v, VideoGallery):  # it may stay where it is (e.g. memory-mapped): blocks move as scored
                if video_mask is not None:
                    raise ValueError("a gallery holds its own frame mask; call similarity(t, gallery) without "
                                     "video_mask")
            else:
                v = v.to(self.device)
                if video_mask is not None:
                    video_mask = video_mask.to(self.device).bool()
                check_inputs(t, v, video_mask)
            if two_stage_k is not None:
                return two_stage_similarity(self, t, v, video_mask, k=two_stage_k, words=words,
                                            word_mask=word_mask, fast=fast, memory_budget=memory_budget)
            if isinstance(v, VideoGallery):
                if fast:
                    return gallery_similarity(self.scorer, t, v, words=words, word_mask=word_mask,
                                              memory_budget=memory_budget)
                v, video_mask = v.frames_and_mask()
            if fast and supports(self.scorer):
                return fast_similarity(self.scorer, t, v, video_mask, words=words, word_mask=word_mask,
                                       memory_budget=memory_budget)
            return self.scorer.similarity(t, v, video_mask, words=words, word_mask=word_mask,
                                          memory_budget=memory_budget)
        finally:
            if was_training:
                self.train()

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
        return write_checkpoint(path, self.state_dict(), self.config_dict(), extra_metadata)
