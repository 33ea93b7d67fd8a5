"""Kernels of the matching pipeline: matching vectors, dense costs, candidate graph, pricing.

Each op has a torch reference and a Triton kernel; ``candidates._backend`` picks one (Triton for
CUDA tensors, torch otherwise; ``MECHPERM_KERNELS=torch|triton`` overrides). Triton is imported
only when chosen.
"""
from mechperm.kernels.candidates import (
    COL_COS,
    COL_COST,
    ROW_COS,
    ROW_COST,
    CandidateGraph,
    CandidateStats,
    PricedPairs,
    candidates,
    dense_costs,
    pair_pricer,
    price,
    row_pricer,
    row_sq_norms,
    solver_graph,
)
from mechperm.kernels.features import decoder_rows, fold_scale, matching_vectors
from mechperm.kernels.rows import ScaledRows, materialize

__all__ = [
    "CandidateGraph",
    "CandidateStats",
    "PricedPairs",
    "ROW_COST",
    "COL_COST",
    "ROW_COS",
    "COL_COS",
    "ScaledRows",
    "candidates",
    "decoder_rows",
    "dense_costs",
    "fold_scale",
    "matching_vectors",
    "materialize",
    "pair_pricer",
    "price",
    "row_pricer",
    "row_sq_norms",
    "solver_graph",
]
