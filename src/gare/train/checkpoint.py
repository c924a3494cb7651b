"""Checkpoints: weights in safetensors (loadable by ``gare.load_model``) + training state, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


def atomic_torch_save(obj, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_training_checkpoint(run_dir: Path, model, optimizer, scheduler, *, step: int, epoch: int,
                             batch_in_epoch: int, best: dict, run_config: dict, scaler=None) -> None:
    """``last.safetensors`` (weights + config) then ``last_state.pt`` (optimizer, schedule, position)."""
    run_dir = Path(run_dir)
    model.save(run_dir / "last.safetensors", extra_metadata={"run_config": json.dumps(run_config), "step": str(step)})
    state = {"optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None, "step": step, "epoch": epoch,
             "batch_in_epoch": batch_in_epoch, "best": best, "scaler": scaler.state_dict() if scaler else None}
    atomic_torch_save(state, run_dir / "last_state.pt")


def load_training_state(run_dir: Path) -> dict | None:
    p = Path(run_dir) / "last_state.pt"
    if not p.exists():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)
