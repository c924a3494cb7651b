"""Checkpoints: weights in safetensors (loadable by ``gare.load_model``) + training state, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import atomic_write


def save_training_checkpoint(run_dir: Path, model, optimizer, scheduler, *, step: int, epoch: int,
                             batch_in_epoch: int, best: dict, run_config: dict, scaler=None) -> None:
    """``last.safetensors`` (weights + config) then ``last_state.pt`` (optimizer, schedule, position)."""
    run_dir = Path(run_dir)
    model.save(run_dir / "last.safetensors", extra_metadata={"run_config": json.dumps(run_config), "step": str(step)})
    state = {"optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None, "step": step, "epoch": epoch,
             "batch_in_epoch": batch_in_epoch, "best": best, "scaler": scaler.state_dict() if scaler else None}
    atomic_write(run_dir / "last_state.pt", lambda tmp: torch.save(state, tmp))


def load_training_state(run_dir: Path) -> dict | None:
    p = Path(run_dir) / "last_state.pt"
    if not p.exists():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)
