"""Evaluate matchings: data-free pair metrics, model-based skip-layer EV / ΔCE, pair export.

Modules: :mod:`~mechperm.evaluation.metrics` (per-feature MSE / cosine of matched parameters),
:mod:`~mechperm.evaluation.hooks` (SAE layer → hook point), :mod:`~mechperm.evaluation.methods`
(what replaces a layer), :mod:`~mechperm.evaluation.skip_layer` (the evaluation loops),
:mod:`~mechperm.evaluation.report` (results), :mod:`~mechperm.evaluation.export` (JSON lines).
"""
from mechperm.evaluation.export import export_pairs_jsonl, neuronpedia_url
from mechperm.evaluation.hooks import hook_module, token_mask
from mechperm.evaluation.methods import BASELINES
from mechperm.evaluation.metrics import PairMetrics, feature_vectors, pair_metrics
from mechperm.evaluation.report import MatchingRow, SkipLayerReport, SkipLayerRow
from mechperm.evaluation.skip_layer import evaluate_skip_layers, evaluate_skip_layers_encoder

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
