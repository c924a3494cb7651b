"""Building a :class:`GareModel` from a file: ``load_model`` (exported as ``gare.load_model``).

The file formats themselves (reading, writing, run folders) are in :mod:`gare.model.checkpoint`; the
official GARE key mapping is in :mod:`gare.model.convert`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig, merge_overrides
from .checkpoint import is_project_checkpoint, read_checkpoint, read_torch_state, resolve_checkpoint
from .convert import is_official_gare, official_model_config, official_names, official_to_project
from .gare import GareModel
from .weights import CheckpointError, load_state_dict_strict

log = logging.getLogger(__name__)

# short keyword overrides of load_model -> dotted model-config keys
SHORT_OVERRIDES = {
    "arch": "backbone.arch", "max_words": "backbone.max_words", "quick_gelu": "backbone.quick_gelu",
    "temporal": "temporal.kind", "pool_temperature": "scorer.pool_temperature", "pooling": "scorer.pooling",
    "use_delta": "scorer.use_delta", "eta": "scorer.eta", "context": "scorer.context", "side": "scorer.side",
    "query": "scorer.query", "psi_heads": "scorer.psi.heads", "psi_layers": "scorer.psi.layers",
    "log_sigma_head": "scorer.psi.log_sigma_head", "dropout": "scorer.psi.dropout",
}


def flatten_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides (``pool_temperature=3``, ``scorer__psi__heads=2``) -> dotted model-config keys."""
    out = {}
    for k, v in overrides.items():
        key = k.replace("__", ".")
        out[SHORT_OVERRIDES.get(key, key)] = v
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu", *, compat: str | None = None,
               dataset: str | None = None, **overrides: Any) -> GareModel:
    """Load a model from a local file, in eval mode on ``device``.

    (a) a project checkpoint (``.safetensors`` with its config, or a run folder holding ``best.safetensors``),
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
    path = resolve_checkpoint(path)
    ov = flatten_overrides(overrides)
    if path.suffix == ".safetensors":
        tensors, meta = read_checkpoint(path)
        if not is_project_checkpoint(meta):
            raise CheckpointError(f"{path}: not a gare checkpoint (metadata format={meta.get('format')!r}); "
                                  "convert official weights with `gare convert SRC DST`")
        cfg = merge_overrides(json.loads(meta["model_config"]), ov, ModelConfig, prefix="model")
        model = GareModel(cfg)
        load_state_dict_strict(model, drop_unused_psi(model, tensors, str(path)), source=str(path))
        return model.to(device).eval()
    sd = read_torch_state(path)
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


def drop_unused_psi(model: GareModel, tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The checkpoint's tensors without psi's when ``model`` has none (``use_delta=False`` on a GARE
    checkpoint: the no-Delta ablation of a trained model). Logs the dropped names and their parameter count;
    any other mismatch is left to the strict loader."""
    if model.scorer.psi is not None:
        return tensors
    dropped = sorted(k for k in tensors if k.startswith("scorer.psi."))
    if not dropped:
        return tensors
    n = sum(tensors[k].numel() for k in dropped)
    log.info("%s: use_delta=False drops psi: %d tensors, %d parameters (%s)", source, len(dropped), n,
             ", ".join(k[len("scorer.psi."):] for k in dropped))
    return {k: v for k, v in tensors.items() if k not in set(dropped)}


def load_official_gare(sd: dict[str, Tensor], *, source: str, overrides: dict[str, Any] | None = None,
                       dataset: str | None = None, compat: str = "release") -> GareModel:
    """Build a :class:`GareModel` from an official GARE state dict (strict: every problem is named, with
    the official file's tensor names)."""
    cfg = official_model_config(sd, overrides, dataset=dataset, compat=compat)
    model = GareModel(cfg)
    mapped, ignored = official_to_project(sd, log_sigma_head=cfg.scorer.psi.log_sigma_head,
                                          temporal=cfg.temporal.kind != "meanP")
    if ignored:
        names = sorted({re.sub(r"\.(weight|bias)$", ".*", k) for k in ignored if not k.startswith("psi.")})
        if any(k.startswith("psi.") for k in ignored):
            names.append("psi.* (a copy of agent.psi.*)")
        log.warning("%s: ignored %d tensors the official release stores but never uses: %s", source, len(ignored),
                    ", ".join(names[:12]))
    mapped = drop_unused_psi(model, mapped, source)
    try:
        load_state_dict_strict(model, mapped, source=source, allow_missing=("backbone.clip.logit_bias",))
    except CheckpointError as e:
        raise CheckpointError(f"{official_names(str(e))} (official GARE layout expected)") from None
    return model
