"""Strict state-dict loading (every missing, unexpected or mis-shaped tensor is named) and weight fingerprints."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def load_state_dict_strict(module: nn.Module, sd: dict[str, Tensor], *, source: str,
                           allow_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = ()) -> None:
    """Load ``sd`` into ``module``; raise :class:`CheckpointError` naming every problem.

    ``allow_missing``/``ignore_unexpected`` are key prefixes that are tolerated (and logged).
    """
    own = module.state_dict()
    allow_missing = tuple(allow_missing)
    ignore_unexpected = tuple(ignore_unexpected)
    missing = [k for k in own if k not in sd and not k.startswith(allow_missing)]
    unexpected = [k for k in sd if k not in own and not k.startswith(ignore_unexpected)]
    ignored = [k for k in sd if k not in own and k.startswith(ignore_unexpected)]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}" +
                        (" ..." if len(missing) > 20 else ""))
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:20])}" +
                        (" ..." if len(unexpected) > 20 else ""))
    if shapes:
        problems.append(f"mis-shaped tensors ({len(shapes)}): {'; '.join(shapes[:20])}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + " | ".join(problems))
    if ignored:
        log.info("%s: ignored %d tensors the model does not use: %s", source, len(ignored),
                 ", ".join(sorted(ignored)[:10]) + (" ..." if len(ignored) > 10 else ""))
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    tolerated = [k for k in own if k not in sd]
    if tolerated:
        log.info("%s: kept the model's own initial values for %s", source, ", ".join(tolerated))


def weights_fingerprint(module: nn.Module | dict[str, Tensor], *, exclude: Iterable[str] = ()) -> str:
    """SHA-256 (hex) of a module's state dict: every tensor's name, dtype, shape and bytes, in name order.

    Two modules get the same fingerprint exactly when they hold the same tensors bit for bit, whatever
    file they came from; caches made from a model (extracted features, search indexes) record it to refuse
    being read with other weights. ``exclude``: names containing one of these strings are left out (e.g.
    ``logit_scale``, which changes no embedding).
    """
    sd = module.state_dict() if isinstance(module, nn.Module) else module
    exclude = tuple(exclude)
    h = hashlib.sha256()
    for name in sorted(sd):
        if any(e in name for e in exclude):
            continue
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
