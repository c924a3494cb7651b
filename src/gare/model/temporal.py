"""Temporal module over frame embeddings: ``meanP`` (none) or ``seqTransf``.

seqTransf (docs/architecture.md, "Encoders and the temporal module"): ``f'_jk = f_jk + T(f_jk + P_k)`` where
``T`` is a stack of CLIP text-transformer blocks (pre-norm, QuickGELU for OpenAI weights) initialized from the
first blocks of the CLIP text transformer and ``P`` from the first rows of its positional table. Padded frames
are masked out of the attention (as keys).

LayerNorm epsilon: 1e-5 (CLIP's, the blocks it is initialized from) by default; the official release's temporal
module uses a TF-style LayerNorm with epsilon 1e-12 (same formula, epsilon inside the square root), so release
mode (``compat: release``) builds it with ``ln_eps=RELEASE_LN_EPS`` (found by the float64 comparison with the
release's code, docs/reproduce.md).
"""

from __future__ import annotations

import torch
from open_clip.transformer import QuickGELU, Transformer
from torch import Tensor, nn

#: epsilon of the release's temporal-module LayerNorms (its TF-style LayerNorm default)
RELEASE_LN_EPS = 1e-12
CLIP_LN_EPS = 1e-5


class SeqTransf(nn.Module):
    """``f [N, F, D], mask [N, F] -> [N, F, D]``."""

    def __init__(self, width: int, layers: int = 4, heads: int = 8, positions: int = 77, quick_gelu: bool = True,
                 ln_eps: float = CLIP_LN_EPS):
        super().__init__()
        self.heads = heads
        self.frame_position_embeddings = nn.Embedding(positions, width)
        act = QuickGELU if quick_gelu else nn.GELU
        self.transformer = Transformer(width, layers, heads, act_layer=act)
        for m in self.transformer.modules():
            if isinstance(m, nn.LayerNorm):
                m.eps = float(ln_eps)
        nn.init.normal_(self.frame_position_embeddings.weight, std=0.01)

    def init_from_text(self, clip: nn.Module) -> None:
        """Copy the first blocks of the CLIP text transformer and its positional table (the paper's init)."""
        src = clip.transformer.resblocks
        if src[0].ln_1.weight.shape != self.transformer.resblocks[0].ln_1.weight.shape:
            raise ValueError("the text transformer has another width than the temporal module")
        n = min(len(src), len(self.transformer.resblocks))  # blocks beyond the text depth keep their init
        for i in range(n):
            self.transformer.resblocks[i].load_state_dict(src[i].state_dict())
        pos = clip.positional_embedding.detach()
        rows = min(pos.shape[0], self.frame_position_embeddings.weight.shape[0])
        with torch.no_grad():
            self.frame_position_embeddings.weight[:rows].copy_(pos[:rows])

    def forward(self, f: Tensor, mask: Tensor | None = None) -> Tensor:
        N, Fr, _ = f.shape
        if Fr > self.frame_position_embeddings.num_embeddings:
            raise ValueError(f"{Fr} frames exceed the {self.frame_position_embeddings.num_embeddings} positions")
        pos = self.frame_position_embeddings.weight[:Fr].to(f.dtype)
        attn_mask = None
        if mask is not None:
            # additive key mask [N*heads, F, F]: -1e6 on padded keys (CLIP4Clip's convention)
            neg = (1.0 - mask.to(f.dtype))[:, None, :] * -1e6
            attn_mask = neg.expand(N, Fr, Fr).repeat_interleave(self.heads, dim=0)
        out = self.transformer(f + pos, attn_mask=attn_mask)
        return f + out


def build_temporal(kind: str, width: int, layers: int, heads: int, positions: int,
                   quick_gelu: bool, ln_eps: float = CLIP_LN_EPS) -> nn.Module | None:
    if kind == "meanP":
        return None
    if kind == "seqTransf":
        return SeqTransf(width, layers, heads, positions, quick_gelu, ln_eps)
    raise ValueError(f"unknown temporal module '{kind}' (use 'seqTransf' or 'meanP')")
