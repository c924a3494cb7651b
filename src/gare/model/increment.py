"""psi: the gap-conditioned increment module (docs/architecture.md, "psi, the increment module").

For every (text i, video j) pair, psi maps the gap query ``q_ij`` and a context (the frames of video
j, or the words of text i) to an increment ``Delta_ij``::

    a   = CrossAttn(LN1(q), LN1(C))          q, k, v, out: D x D linear maps; softmax over valid context
    x   = LN2(a)
    x   = LN3(x + Dropout(W1 x + b1))
    Delta     = W_mu x + b_mu                (mean head)
    log_sigma = W_s x + b_s                  (optional variance head)

Several layers chain: each layer's ``x`` is the next layer's query. All linear layers start at
N(0, 0.02) with zero bias, LayerNorms at (1, 0). Module names follow the official release
(``layers.0.cross_attn.q_proj``, ``linear1``, ``layer_norm{1,2,3}``, ``mean_proj``, ``log_std_proj``)
so its checkpoints map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"psi heads={heads} must divide the embedding width {dim}")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, ctx: Tensor, ctx_mask: Tensor | None, ctx_axis: int) -> Tensor:
        """``q [Bt, Bv, D]``; ``ctx [Bc, F, D]`` shared by all pairs of a video (``ctx_axis=1``, Bc=Bv)
        or of a text (``ctx_axis=0``, Bc=Bt); ``ctx_mask [Bc, F]`` -> ``[Bt, Bv, D]``."""
        Bt, Bv, D = q.shape
        H, dh = self.heads, D // self.heads
        qh = self.q_proj(q).reshape(Bt, Bv, H, dh)
        kh = self.k_proj(ctx).reshape(ctx.shape[0], ctx.shape[1], H, dh)
        vh = self.v_proj(ctx).reshape(ctx.shape[0], ctx.shape[1], H, dh)
        if ctx_axis == 1:
            logits = torch.einsum("tvhd,vfhd->tvhf", qh, kh)
        else:
            logits = torch.einsum("tvhd,tfhd->tvhf", qh, kh)
        logits = logits / math.sqrt(dh)
        if ctx_mask is not None:
            m = ctx_mask.bool()
            m = m[None, :, None, :] if ctx_axis == 1 else m[:, None, None, :]
            logits = logits.masked_fill(~m, float("-inf"))
        attn = logits.softmax(dim=-1)
        if ctx_axis == 1:
            out = torch.einsum("tvhf,vfhd->tvhd", attn, vh)
        else:
            out = torch.einsum("tvhf,tfhd->tvhd", attn, vh)
        return self.out_proj(out.reshape(Bt, Bv, D))


class PsiLayer(nn.Module):
    def __init__(self, dim: int, heads: int = 1, dropout: float = 0.3):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm3 = nn.LayerNorm(dim)

    def forward(self, q: Tensor, ctx: Tensor, ctx_mask: Tensor | None, ctx_axis: int) -> Tensor:
        a = self.cross_attn(self.layer_norm1(q), self.layer_norm1(ctx), ctx_mask, ctx_axis)
        x = self.layer_norm2(a)
        return self.layer_norm3(x + self.dropout(self.linear1(x)))


class IncrementModule(nn.Module):
    """psi. ``forward(query [Bt, Bv, D], ctx [Bc, F, D], ctx_mask [Bc, F], ctx_axis)`` ->
    ``(delta [Bt, Bv, D], log_sigma [Bt, Bv, D] or None)``."""

    def __init__(self, dim: int, heads: int = 1, layers: int = 1, dropout: float = 0.3,
                 log_sigma_head: bool = False, stochastic: bool = False):
        super().__init__()
        if layers < 1:
            raise ValueError("psi needs at least one layer")
        self.layers = nn.ModuleList(PsiLayer(dim, heads, dropout) for _ in range(layers))
        self.mean_proj = nn.Linear(dim, dim)
        self.log_std_proj = nn.Linear(dim, dim) if log_sigma_head else None
        self.stochastic = stochastic
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, query: Tensor, ctx: Tensor, ctx_mask: Tensor | None = None, ctx_axis: int = 1):
        x = query
        for layer in self.layers:
            x = layer(x, ctx, ctx_mask, ctx_axis)
        delta = self.mean_proj(x)
        log_sigma = self.log_std_proj(x) if self.log_std_proj is not None else None
        if self.stochastic and self.training and log_sigma is not None:
            delta = delta + torch.randn_like(delta) * log_sigma.exp()
        return delta, log_sigma
