"""The model file formats, read and written without building a model.

- A project checkpoint: one ``.safetensors`` file, the weights plus, in its metadata, ``format`` (
  :data:`CHECKPOINT_FORMAT`), ``model_config`` (the JSON model configuration that built them, so it loads
  without the original CLIP file) and, when a run wrote it, ``run_config`` (the whole recipe) and ``step``.
- A state dict saved by the official GARE release (``clip.*``, ``agent.psi.*`` keys; mapped by
  :mod:`gare.model.convert`).
- An OpenAI CLIP ``.pt`` (TorchScript archive or state dict; read by :mod:`gare.model.backbone`).

A run folder holds ``best.safetensors`` (and ``last.safetensors``): :func:`resolve_checkpoint` turns a
folder or a file into the file. Building a model from any of these is :mod:`gare.model.factory`'s job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..io import atomic_write

CHECKPOINT_FORMAT = "gare-checkpoint-v1"
RUN_FOLDER_FILES = ("best.safetensors", "model.safetensors", "last.safetensors")  # looked for in this order


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding best/model/last.safetensors -> the (absolute) file."""
    p = Path(path)
    if p.is_dir():
        for name in RUN_FOLDER_FILES:
            if (p / name).is_file():
                return (p / name).resolve()
        raise FileNotFoundError(f"{p} is a folder without best/model/last.safetensors")
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    return p.resolve()


def write_checkpoint(path: str | Path, tensors: dict[str, Tensor], model_config: dict,
                     extra_metadata: dict[str, str] | None = None) -> Path:
    """Write a project checkpoint atomically: ``tensors`` + ``model_config`` (+ string metadata)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": CHECKPOINT_FORMAT, "model_config": json.dumps(model_config)}
    meta.update(extra_metadata or {})
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (no tensor is read)."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a ``.safetensors`` file."""
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
        for k in fh.keys():
            tensors[k] = fh.get_tensor(k)
    return tensors, meta


def is_project_checkpoint(meta: dict[str, str]) -> bool:
    return meta.get("format") == CHECKPOINT_FORMAT


def run_config(path: str | Path) -> dict | None:
    """The recipe (as a dict) a run stored in the checkpoint, or None when it carries none (a converted
    or hand-saved model, or a file that is not a ``.safetensors``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return None
    meta = read_metadata(path)
    if "run_config" not in meta:
        return None
    d = json.loads(meta["run_config"])
    d.pop("_run", None)
    return d


def read_torch_state(path: str | Path) -> dict[str, Tensor] | None:
    """The tensors of a pickled state dict (``state_dict``/``model`` wrappers and DDP's ``module.``
    prefix removed), or None when the file is not one (e.g. a TorchScript archive)."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a pickled state dict; the caller tries other formats
        return None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        return None
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items() if isinstance(v, Tensor)}
