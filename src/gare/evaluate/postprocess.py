"""Test-time post-processing of score matrices: dual softmax (DSL) and querybank normalisation (QB-Norm).

Neither is part of the paper's numbers. Both are off by default and every result that uses one must be
reported as a separately labelled row. DSL uses the *other test queries* (it normalizes over the query
axis of the test matrix); QB-Norm uses a bank of queries that must not come from the test set (e.g.
training captions).

Queries are on the rows, gallery items on the columns; for video-to-text pass the transpose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["dual_softmax", "qb_norm"]


def _to_tensor(x: Any, name: str) -> tuple[Tensor, bool]:
    is_np = not isinstance(x, Tensor)
    t = torch.as_tensor(np.asarray(x)) if is_np else x.detach()
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    return t, is_np


def dual_softmax(sim: Any, temperature: float = 0.01) -> Any:
    """Dual softmax (DSL, as CAMoE applies it at test time).

    Each score is multiplied by the softmax over the *query* axis (the other axis than the one ranked)::

        sim'_qg = sim_qg * exp(sim_qg / T) / sum_{q'} exp(sim_q'g / T)

    so a gallery item that scores high for many queries is damped for all of them. ``T = 0.01`` matches
    CLIP's logit scale of 100. The ranking of a query depends on the other test queries: this is
    transductive post-processing; label it.

    Args:
        sim: ``[N_q, N_g]`` scores (torch tensor or numpy array; the same type is returned).
        temperature: softmax temperature T > 0.

    Returns:
        ``[N_q, N_g]`` rescaled scores.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, is_np = _to_tensor(sim, "sim")
    out = s * torch.softmax(s / temperature, dim=0)
    return out.cpu().numpy() if is_np else out


def qb_norm(sim: Any, query_bank_sim: Any, k: int = 1, beta: float = 20.0) -> Any:
    """Querybank normalisation with the dynamic inverted softmax (Bogolin et al., CVPR 2022).

    With a bank of B queries that are *not* test queries (e.g. training captions) and their scores
    against the same gallery, ``bank[b, g]``:

    - normaliser of gallery item g (inverted softmax): ``Z_g = sum_b exp(beta * bank[b, g])``;
    - activation set ``A = {g : g is among the top-k items of some bank query}``;
    - a test query q whose current top-1 item is in ``A`` is normalised:
      ``sim'_qg = exp(beta * sim_qg) / Z_g`` for every g; any other query keeps its scores unchanged
      (the "dynamic" rule: only queries that land on hub-like items are touched).

    The normalised rows are returned in log space, ``beta * sim_qg - log Z_g`` (a monotone transform of
    the formula above, so each row ranks identically, without underflow). Scores are only comparable
    within a row.

    Args:
        sim: ``[N_q, N_g]`` test scores (torch tensor or numpy array; the same type is returned).
        query_bank_sim: ``[B, N_g]`` bank scores on the same gallery.
        k: size of the per-bank-query top list that defines the activation set.
        beta: inverse temperature.

    Returns:
        ``[N_q, N_g]`` scores.
    """
    s, is_np = _to_tensor(sim, "sim")
    bank, _ = _to_tensor(query_bank_sim, "query_bank_sim")
    bank = bank.to(device=s.device, dtype=s.dtype)
    n_q, n_g = s.shape
    if bank.shape[1] != n_g:
        raise ValueError(f"query_bank_sim has {bank.shape[1]} gallery columns, sim has {n_g}")
    if bank.shape[0] == 0:
        raise ValueError("query_bank_sim is empty")
    if not 1 <= k <= n_g:
        raise ValueError(f"k must be in [1, {n_g}], got {k}")
    log_z = torch.logsumexp(beta * bank, dim=0)  # [N_g]
    active = torch.zeros(n_g, dtype=torch.bool, device=s.device)
    active[bank.topk(k, dim=1).indices.reshape(-1)] = True
    normalize = active[s.argmax(dim=1)]  # [N_q]
    out = torch.where(normalize[:, None], beta * s - log_z[None, :], s)
    return out.cpu().numpy() if is_np else out
