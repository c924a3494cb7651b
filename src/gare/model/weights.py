"""Strict state-dict loading: every missing, unexpected or mis-shaped tensor is named."""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
