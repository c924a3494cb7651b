"""Import of official GARE release state dicts (and OpenAI CLIP key layout).

Official layout: ``clip.*`` (OpenAI CLIP keys), ``frame_position_embeddings.weight``,
``transformerClip.resblocks.N.*`` (temporal blocks), ``agent.psi.layers.N.{cross_attn.*, linear1.*,
layer_norm{1,2,3}.*}``, ``agent.psi.mean_proj.*``, ``agent.psi.log_std_proj.*``; the same psi again under
``psi.*``; unused ``agent.psi.layers.N.linear2.*``, ``agent.psi.layers.N.mlp.*``, ``weight_fc.*``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from ..config import ModelConfig, merge_overrides
from .backbone import OPENAI_EXTRA_KEYS, arch_config, infer_openai_arch, merge_heads

_UNUSED = (re.compile(r"^agent\.psi\.layers\.\d+\.linear2\."), re.compile(r"^agent\.psi\.layers\.\d+\.mlp\."),
           re.compile(r"^weight_fc\."), re.compile(r"^psi\."))


def is_official_gare(sd: dict[str, Any]) -> bool:
    return any(k.startswith("clip.") for k in sd) and any(k.startswith("agent.psi.") for k in sd)


#: Datasets the release was trained on; MSVD skips the temporal module (its weights are stored, never used).
OFFICIAL_DATASETS = ("msrvtt", "didemo", "activitynet", "msvd")
#: The pooling temperature cannot be read off the weights: the release's MSR-VTT script (train_msrvtt.sh) uses 3.
OFFICIAL_POOL_TEMPERATURE = 3.0


def check_dataset(dataset: str | None) -> str | None:
    if dataset is not None and dataset not in OFFICIAL_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r} for an official GARE checkpoint; use one of "
                         f"{', '.join(OFFICIAL_DATASETS)}")
    return dataset


def official_to_project(sd: dict[str, Tensor], *, log_sigma_head: bool,
                        temporal: bool = True) -> tuple[dict[str, Tensor], list[str]]:
    """Rename official keys to this project's; returns (state dict, ignored keys). ``temporal=False``
    (MSVD): the temporal-module weights are ignored, as the release never uses them for MSVD."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for k, v in sd.items():
        if not temporal and (k == "frame_position_embeddings.weight" or k.startswith("transformerClip.")):
            ignored.append(k)
            continue
        if k.startswith("clip."):
            name = k[5:]
            if name in OPENAI_EXTRA_KEYS:
                ignored.append(k)
                continue
            out["backbone.clip." + name] = v.float() if v.is_floating_point() else v
        elif k == "frame_position_embeddings.weight":
            out["temporal.frame_position_embeddings.weight"] = v.float()
        elif k.startswith("transformerClip."):
            out["temporal.transformer." + k[len("transformerClip."):]] = v.float()
        elif any(p.match(k) for p in _UNUSED):
            ignored.append(k)
        elif k.startswith("agent.psi.log_std_proj."):
            if log_sigma_head:
                out["scorer.psi." + k[len("agent.psi."):]] = v.float()
            else:
                ignored.append(k)
        elif k.startswith("agent.psi."):
            out["scorer.psi." + k[len("agent.psi."):]] = v.float()
        else:
            out[k] = v  # unknown: reported as unexpected by the strict loader
    return out, ignored


def official_model_config(sd: dict[str, Tensor], overrides: dict[str, Any] | None = None, *,
                          dataset: str | None = None, compat: str = "release") -> ModelConfig:
    """The model configuration of an official checkpoint. ``dataset="msvd"``: no temporal module (the release
    skips it for MSVD); other datasets (or None): the temporal module its weights describe. ``compat``: the mode
    the model scores in ("release" by default: the checkpoint was trained that way)."""
    clip_sd = {k[5:]: v for k, v in sd.items() if k.startswith("clip.")}
    arch_cfg = infer_openai_arch(clip_sd)
    named = (overrides or {}).get("backbone.arch")
    if named:  # head counts cannot be read off the weights: take them from the named architecture
        arch_cfg = merge_heads(arch_config(named), arch_cfg)
    tlayers = len({k.split(".")[2] for k in sd if k.startswith("transformerClip.resblocks.")})
    if check_dataset(dataset) == "msvd":
        tlayers = 0
    players = len({k.split(".")[3] for k in sd if re.match(r"^agent\.psi\.layers\.\d+\.cross_attn\.", k)})
    d = {
        "backbone": {"arch": "ViT-B-32", "arch_cfg": arch_cfg, "quick_gelu": True},
        "temporal": {"kind": "seqTransf" if tlayers else "meanP", "layers": max(tlayers, 1), "init_from_text": False},
        "scorer": {"use_delta": True, "pooling": "text", "pool_temperature": OFFICIAL_POOL_TEMPERATURE,
                   "psi": {"layers": max(players, 1)}},
        "compat": compat,
    }
    return merge_overrides(d, overrides, ModelConfig, prefix="model")


_TO_OFFICIAL = (("backbone.clip.", "clip."), ("temporal.frame_position_embeddings.", "frame_position_embeddings."),
                ("temporal.transformer.", "transformerClip."), ("scorer.psi.", "agent.psi."))


def official_name(name: str) -> str:
    """The official release's name of one of this project's parameters (unchanged when it has none)."""
    for ours, theirs in _TO_OFFICIAL:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def official_names(text: str) -> str:
    """``text`` (e.g. a loader error) with this project's tensor names written as the official file's."""
    for ours, theirs in _TO_OFFICIAL:
        text = text.replace(ours, theirs)
    return text


def project_to_official(model: nn.Module) -> dict[str, Tensor]:
    """The inverse mapping (used by the tests and to export): project model -> official key layout."""
    out: dict[str, Tensor] = {}
    for k, v in model.state_dict().items():
        off = official_name(k)
        if off == k:
            continue
        out[off] = v
        if k.startswith("scorer.psi."):
            out["psi." + k[len("scorer.psi."):]] = v
    return out
