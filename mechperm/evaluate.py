"""Evaluation of SAE matchings (METHOD.md, "Evaluations in the paper").

A short front for :mod:`mechperm.evaluation`, where the code lives, one concern per module.
"""
from mechperm.evaluation import (
    BASELINES,
    MatchingRow,
    PairMetrics,
    SkipLayerReport,
    SkipLayerRow,
    evaluate_skip_layers,
    evaluate_skip_layers_encoder,
    export_pairs_jsonl,
    feature_vectors,
    hook_module,
    neuronpedia_url,
    pair_metrics,
    token_mask,
)

__all__ = [
    "BASELINES",
    "MatchingRow",
    "PairMetrics",
    "SkipLayerReport",
    "SkipLayerRow",
    "evaluate_skip_layers",
    "evaluate_skip_layers_encoder",
    "export_pairs_jsonl",
    "feature_vectors",
    "hook_module",
    "neuronpedia_url",
    "pair_metrics",
    "token_mask",
]
