"""Training engine: one code path for one CPU, one GPU, or N processes under torchrun (DDP)."""
