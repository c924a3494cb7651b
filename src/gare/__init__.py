"""gare: GARE (Gap-Aware Retrieval) text-video retrieval.

Public API::

    model = gare.load_model(path, device="cpu", **overrides)
    t = model.encode_text(["a man is cooking"])      # [N, D]
    v = model.encode_video(frames, mask=None)         # [N, F, D]
    S = model.similarity(t, v, video_mask=None)       # [N_t, N_v]
    m = gare.retrieval_metrics(S)                     # R1 R5 R10 R50 MdR MnR
"""

from .config import Config, ModelConfig, load_config
from .evaluate.metrics import retrieval_metrics
from .model import GareModel, load_model

__version__ = "0.1.0"

__all__ = ["Config", "ModelConfig", "load_config", "GareModel", "load_model", "retrieval_metrics", "__version__"]
