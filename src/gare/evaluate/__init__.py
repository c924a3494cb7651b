"""Evaluation: retrieval metrics and labelled test-time post-processing (DSL, QB-Norm)."""

from gare.evaluate.metrics import metrics_from_ranks, query_ranks, retrieval_metrics, t2v_v2t_metrics
from gare.evaluate.postprocess import dual_softmax, qb_norm

__all__ = [
    "dual_softmax",
    "metrics_from_ranks",
    "qb_norm",
    "query_ranks",
    "retrieval_metrics",
    "t2v_v2t_metrics",
]
