"""Model components: CLIP backbone, temporal module, psi, pairwise scorer, GareModel, and its files."""

from .factory import load_model
from .gare import GareModel
from .increment import IncrementModule
from .scorer import PairScorer, ScoreOutput

__all__ = ["GareModel", "load_model", "IncrementModule", "PairScorer", "ScoreOutput"]
