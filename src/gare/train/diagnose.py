"""Optimization-tension diagnostics logged during training (``train.diagnostics=true``; cheap when off).

Per logged step, on the (global) training batch, all computed on detached copies after the update's
backward pass so training is unaffected:

- ``diag_anchor_pos/neg/sum``: norms of the InfoNCE (t->v rows) gradient on the text anchors coming from
  the positive pair and from the negatives, and of their sum; ``diag_cancellation`` = ||sum|| / (||pos|| +
  ||neg||) (small = the pull and the pushes cancel, the paper's Fig. 2). Computed on the plain anchors
  (t_i against vhat_ij) and, with Delta, on the corrected anchors t_i + Delta_ij (``diag_corr_*``).
- ``diag_delta_share``: with g_ij = dL/d(t_i + Delta_ij), the share of the per-pair gradient magnitude that
  reaches only the increments: 1 - ||sum_j g_ij|| / sum_j ||g_ij|| (each Delta_ij receives g_ij alone,
  the shared anchor only their sum).
- ``diag_cos_gap*``: cos(Delta_ij, vbar_j - t_i); ``diag_norm_pos/neg*``: ||Delta|| for positives / negatives.
- ``diag_cos_ideal*``: cos(Delta_ij, Delta*_ij) with Delta* = -eps g/||g|| the ideal increment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import diagnostics as dg
from ..objectives import info_nce, repeated_video_positives


def step_diagnostics(trainer, batch, out, vid) -> dict:
    pos = repeated_video_positives(vid.to(out.sim.device))
    scale = trainer.model.logit_scale.detach().float()
    rec: dict[str, float] = {}
    t = out.t.detach().float()
    vhat = out.vhat.detach().float()
    for k, v in dg.anchor_gradient_split(t, vhat, scale, positives=pos).items():
        rec[f"diag_anchor_{k}"] = v
    if out.delta is None:
        return rec
    delta = out.delta.detach().float()
    corrected = out.corrected.detach().float().requires_grad_(True)
    with torch.enable_grad():
        if trainer.cfg.model.scorer.side == "text":
            sim = (F.normalize(corrected, dim=-1) * F.normalize(vhat, dim=-1)).sum(-1)
        else:
            sim = (F.normalize(t, dim=-1)[:, None, :] * F.normalize(corrected, dim=-1)).sum(-1)
        nce = info_nce(sim, scale, pos)
        (g,) = torch.autograd.grad(nce, corrected)
    per_pair = g.norm(dim=-1).sum(dim=1)
    shared = g.sum(dim=1).norm(dim=-1)
    rec["diag_delta_share"] = float((1 - shared / per_pair.clamp_min(1e-12)).mean())
    if trainer.cfg.model.scorer.side == "text":
        for k, v in dg.anchor_gradient_split(corrected.detach(), vhat, scale, positives=pos).items():
            rec[f"diag_corr_{k}"] = v
    for k, v in dg.angle_stats(delta, t, out.vbar.detach().float(), positives=pos).items():
        rec[f"diag_{k}"] = v
    for k, v in dg.ideal_increment_cos(delta, g, positives=pos).items():
        rec[f"diag_{k}"] = v
    return rec
