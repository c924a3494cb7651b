"""CLIP encoders through open_clip: projected end-of-text embeddings and per-frame embeddings.

Any open_clip ViT architecture by name (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ...) or the small
``tiny`` configuration used by the CPU demo and the tests. Weights come only from local files:
an OpenAI CLIP ``.pt`` (TorchScript archive or plain state dict) or an open_clip state dict.
Nothing here ever touches the network.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.transformer import LayerNormFp32
from torch import Tensor, nn

from .weights import load_state_dict_strict

log = logging.getLogger(__name__)

#: The small CLIP-architecture configuration trained from scratch on the CPU (demo and tests).
TINY_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 128, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
SOT_TOKEN = 49406
EOT_TOKEN = 49407
#: texts whose BPE ids :meth:`ClipBackbone.tokenize` keeps (the memo is emptied when full)
TOKEN_MEMO_SIZE = 1 << 18


def arch_config(arch: str, arch_cfg: dict | None = None) -> dict:
    """The open_clip model config dict for ``arch`` (or ``arch_cfg`` when given)."""
    if arch_cfg:
        return copy.deepcopy(arch_cfg)
    if arch == "tiny":
        return copy.deepcopy(TINY_CFG)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        names = [n for n in open_clip.list_models() if n.startswith("ViT")][:12]
        raise ValueError(f"unknown CLIP architecture '{arch}'; use 'tiny' or an open_clip name such as {names}")
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ValueError(f"architecture '{arch}' uses timm/HF towers, which gare does not support; use a ViT CLIP")
    return copy.deepcopy(cfg)


def infer_openai_arch(sd: dict[str, Tensor]) -> dict:
    """Infer an open_clip config from an OpenAI-layout CLIP state dict (ViT models only)."""
    if "visual.conv1.weight" not in sd:
        raise ValueError("only ViT CLIP checkpoints are supported (no 'visual.conv1.weight' tensor found)")
    vw = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    vlayers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = sd["ln_final.weight"].shape[0]
    tlayers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return {
        "embed_dim": sd["text_projection"].shape[1],
        "vision_cfg": {"image_size": patch * grid, "layers": vlayers, "width": vw, "patch_size": patch},
        "text_cfg": {
            "context_length": sd["positional_embedding"].shape[0],
            "vocab_size": sd["token_embedding.weight"].shape[0],
            "width": tw,
            "heads": tw // 64,
            "layers": tlayers,
        },
    }


def read_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read CLIP weights from a local file: OpenAI TorchScript archive, OpenAI or open_clip state dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"CLIP weights file not found: {path}. Download the checkpoint on a machine with internet access "
            "and pass its local path (backbone.weights=/path/to/ViT-B-32.pt)."
        )
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
        sd = archive.state_dict()
    except (RuntimeError, ValueError):
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"{path}: not a TorchScript archive nor a torch state dict ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(sd).__name__}")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    for k in OPENAI_EXTRA_KEYS:
        sd.pop(k, None)
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def build_clip(arch_cfg: dict, quick_gelu: bool = True) -> CLIP:
    cfg = copy.deepcopy(arch_cfg)
    return CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=open_clip.model.CLIPVisionCfg(**cfg["vision_cfg"]),
        text_cfg=open_clip.model.CLIPTextCfg(**cfg["text_cfg"]),
        quick_gelu=quick_gelu,
    )


class ClipBackbone(nn.Module):
    """The two CLIP towers.

    ``encode_text(ids [N, L]) -> [N, D]`` (projected end-of-text embedding, not normalized) and
    ``encode_frames(frames [N, F, 3, H, W], mask [N, F]) -> [N, F, D]`` (projected class token of every
    frame; padded frames are not encoded and come back as zeros).
    """

    def __init__(self, arch_cfg: dict, quick_gelu: bool = True, max_words: int = 32):
        super().__init__()
        self.arch_cfg = copy.deepcopy(arch_cfg)
        self.clip = build_clip(arch_cfg, quick_gelu)
        self.max_words = max_words
        self.embed_dim = arch_cfg["embed_dim"]
        self.image_size = arch_cfg["vision_cfg"]["image_size"]
        self.context_length = arch_cfg["text_cfg"]["context_length"]
        if max_words > self.context_length:
            raise ValueError(f"max_words={max_words} exceeds the text context length {self.context_length}")
        self._tokenizer = None
        self._token_memo: dict[str, list[int]] = {}

    # -- text -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer()
        return self._tokenizer

    def tokenize(self, texts: list[str], max_words: int | None = None) -> Tensor:
        """CLIP BPE ids ``[N, L]``: start token, ids, end-of-text token, zero padding (truncated to L, the
        last kept id then being the end-of-text token), as open_clip's tokenizer lays them out.

        The BPE ids of each text are memoized (up to :data:`TOKEN_MEMO_SIZE` texts): training tokenizes the
        same captions every epoch, and the BPE's text cleaning costs about as much as the text tower."""
        if isinstance(texts, str):
            texts = [texts]
        L = max_words or self.max_words
        tok = self.tokenizer
        memo = self._token_memo
        out = torch.zeros(len(texts), L, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = memo.get(text)
            if ids is None:
                if len(memo) >= TOKEN_MEMO_SIZE:
                    memo.clear()
                ids = memo[text] = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
            if len(ids) > L:
                ids = ids[:L - 1] + [tok.eot_token_id]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def encode_text(self, ids: Tensor, return_words: bool = False):
        """``ids [N, L]`` -> end-of-text embedding ``[N, D]`` (and word embeddings ``[N, L, D]`` + mask)."""
        c = self.clip
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"token length {L} exceeds the context length {self.context_length}")
        x = c.token_embedding(ids).to(self.weight_dtype)
        x = x + c.positional_embedding[:L].to(x.dtype)
        x = c.transformer(x, attn_mask=c.attn_mask[:L, :L].to(x.dtype))
        x = c.ln_final(x)
        eot = ids.argmax(dim=-1)
        proj = c.text_projection
        out = x[torch.arange(x.shape[0], device=x.device), eot]
        out = c.text_projection(out) if isinstance(proj, nn.Linear) else out @ proj
        if self.fp16:
            out = out.float()
        if not return_words:
            return out
        words = c.text_projection(x) if isinstance(proj, nn.Linear) else x @ proj
        word_mask = torch.arange(L, device=ids.device)[None, :] <= eot[:, None]
        return out, (words.float() if self.fp16 else words), word_mask

    # -- video ------------------------------------------------------------------------------
    def encode_frames(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        """``frames [N, F, 3, H, W]`` normalized -> per-frame embeddings ``[N, F, D]``."""
        if frames.dim() != 5:
            raise ValueError(f"frames must be [N, F, 3, H, W], got shape {tuple(frames.shape)}")
        size = self.image_size
        hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if tuple(frames.shape[-2:]) != hw:
            raise ValueError(f"frames must be {hw[0]}x{hw[1]} pixels (the CLIP input size), got "
                             f"{tuple(frames.shape[-2:])}: resize them when decoding")
        N, Fr = frames.shape[:2]
        if mask is not None:
            if tuple(mask.shape) != (N, Fr):
                raise ValueError(f"frame mask must be [N, F] = {(N, Fr)}, got {tuple(mask.shape)}")
            empty = (~mask.bool().any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"videos {empty[:10]} have no valid frame in their mask")
        flat = frames.reshape(N * Fr, *frames.shape[2:])
        if self.fp16:
            flat = flat.to(self.weight_dtype)
        if mask is None:
            emb = self._visual(flat)
            return emb.reshape(N, Fr, -1)
        keep = mask.reshape(-1).bool()
        if bool(keep.all()):  # every frame valid (the common case): no gather/scatter copies of the frames
            return self._visual(flat).reshape(N, Fr, -1)
        out = flat.new_zeros(N * Fr, self.embed_dim)
        if keep.any():
            emb = self._visual(flat[keep])
            out = out.to(emb.dtype)
            out[keep] = emb
        return out.reshape(N, Fr, -1)

    def _visual(self, x: Tensor) -> Tensor:
        emb = self.clip.visual(x)
        return emb.float() if self.fp16 else emb

    # -- the release's fp16 weights -----------------------------------------------------------------
    @property
    def fp16(self) -> bool:
        return self.clip.visual.conv1.weight.dtype == torch.float16

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.clip.visual.conv1.weight.dtype

    def to_release_fp16(self) -> None:
        """Store the towers as the official release does on CUDA: Linear/Conv weights and biases, attention
        in-projections and the text/visual projection matrices in fp16 (no fp32 master copy); LayerNorms
        compute in fp32; embeddings, class/positional embeddings and logit_scale stay fp32. Inputs are cast
        to fp16 on the way in and the embeddings come back as fp32."""
        def convert(m: nn.Module) -> None:
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                m.weight.data = m.weight.data.half()
                if m.bias is not None:
                    m.bias.data = m.bias.data.half()
            if isinstance(m, nn.MultiheadAttention):
                for attr in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias",
                             "bias_k", "bias_v"):
                    t = getattr(m, attr, None)
                    if t is not None:
                        t.data = t.data.half()
            for attr in ("text_projection", "proj"):
                t = getattr(m, attr, None)
                if isinstance(t, nn.Parameter):
                    t.data = t.data.half()
            if isinstance(m, nn.LayerNorm) and not isinstance(m, LayerNormFp32):
                m.__class__ = LayerNormFp32  # same parameters; computes in fp32 and casts back

        self.clip.apply(convert)

    def freeze_patch_embedding(self) -> None:
        """The release trains every CLIP weight except the patch-embedding convolution (visual.conv1)."""
        for p in self.clip.visual.conv1.parameters():
            p.requires_grad_(False)

    def load_clip_weights(self, sd: dict[str, Tensor], source: str) -> None:
        load_state_dict_strict(self.clip, sd, source=source, allow_missing=("logit_bias",))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)


def make_backbone(arch: str = "ViT-B-32", weights: str | None = None, quick_gelu: bool = True,
                  max_words: int = 32, arch_cfg: dict | None = None) -> ClipBackbone:
    """Build the towers; with ``weights`` the architecture is read off the file when ``arch`` disagrees."""
    sd = None
    if weights:
        sd = read_clip_state_dict(weights)
        if arch_cfg is None:
            inferred = infer_openai_arch(sd)
            named = arch_config(arch) if arch else None
            if named is None or named["vision_cfg"].get("width") != inferred["vision_cfg"]["width"] or \
                    named["vision_cfg"].get("patch_size") != inferred["vision_cfg"]["patch_size"]:
                log.info("architecture read off %s: %s", weights, inferred)
            arch_cfg = inferred if named is None else merge_heads(named, inferred)
    backbone = ClipBackbone(arch_config(arch, arch_cfg), quick_gelu=quick_gelu, max_words=max_words)
    if sd is not None:
        backbone.load_clip_weights(sd, source=str(weights))
    return backbone


def merge_heads(named: dict, inferred: dict) -> dict:
    """Use the inferred shapes, keeping head settings of the named config when the widths agree."""
    out = copy.deepcopy(inferred)
    if named["vision_cfg"].get("width") == inferred["vision_cfg"]["width"]:
        for k in ("head_width",):
            if k in named["vision_cfg"]:
                out["vision_cfg"][k] = named["vision_cfg"][k]
    if named["text_cfg"].get("width") == inferred["text_cfg"]["width"]:
        out["text_cfg"]["heads"] = named["text_cfg"].get("heads", out["text_cfg"]["heads"])
    return out
