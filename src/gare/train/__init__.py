"""Training engine: one code path for one CPU, one GPU, or N processes under torchrun (DDP)."""

from .optim import build_optimizer

__all__ = ["build_optimizer"]
