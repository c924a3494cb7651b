"""Shared fixtures: a seeded tiny GARE model (CPU, eval mode) and its random inputs."""

import pytest
import torch

from gare.config import BackboneConfig, ModelConfig, TemporalConfig
from gare.model import GareModel


def make_tiny_model(seed: int = 0, **scorer_overrides) -> GareModel:
    """Tiny CLIP-architecture GARE model (3 text/vision layers, width 128, 64 px), seqTransf with 3 layers."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=BackboneConfig(arch="tiny"), temporal=TemporalConfig(layers=3))
    for k, v in scorer_overrides.items():
        setattr(cfg.scorer, k, v)
    return GareModel(cfg).eval()


@pytest.fixture
def tiny_model() -> GareModel:
    return make_tiny_model()


@pytest.fixture
def tiny_frames():
    """Normalized random frames ``[3, 4, 3, 64, 64]`` for the tiny model."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, 3, 64, 64, generator=g)
