"""Model components: CLIP backbone, temporal module, psi, pairwise scorer, GareModel."""

from .gare import GareModel, load_model
from .increment import IncrementModule
from .scorer import PairScorer, ScoreOutput

__all__ = ["GareModel", "load_model", "IncrementModule", "PairScorer", "ScoreOutput"]
