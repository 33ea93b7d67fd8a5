"""The result of matching two SAEs, shared by match(), stack runs, and evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class MatchResult:
    """Feature correspondence between SAE A and SAE B, with its evidence.

    Convention: ``perm[i] = j`` means feature i of A is matched to feature j of B; ``-1`` means
    "no counterpart" (rectangular, partial, or dead). Per-feature arrays are indexed by A's
    features and hold NaN where ``perm`` is -1.
    """

    perm: Tensor
    """int64 [F_a]: matched feature of B, or -1."""
    cost: Tensor
    """float32 [F_a]: cost of the matched pair (squared distance of the matching vectors)."""
    cosine: Tensor
    """float32 [F_a]: cosine similarity of the matched pair's vectors."""
    margin: Tensor
    """float32 [F_a]: how much more the best alternative would cost, in reduced costs at the
    optimal duals (≥ 0). Sparse path (F_a · F_b above the dense limit): the minimum over the
    initial candidate graph's pairs, an upper bound where a pair outside it is closer. Dense
    path with screening (``kernels.screen``): pairs whose exact cost was never needed count at
    their lower bound, so the margin is a lower bound there."""
    objective: float
    """Sum of the matched costs (plus the no-counterpart cost per unmatched row in partial mode)."""
    gap: float
    """Primal objective minus the dual bound (≥ 0); zero up to float tolerance when certified."""
    certified: bool
    """True when the duals prove ``perm`` optimal for the dense problem."""
    options: dict[str, Any] = field(default_factory=dict)
    """The options the match ran with (on, fold, metric, mode, k, threshold, ...)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Candidate-graph and solver statistics (edges, rounds, phases, ...); ``screen``: the CPU
    screen the costs came from (``"bf16"``, ``"int8"``, or None: float32 costs throughout)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage: features, solve (all of the assignment), total; and, on the
    sparse path, within solve: candidates (the cost kernels), graph (their output made the
    solver's graph), assign (the native solver), bounds, pricing (the certificate's)."""
    neighbors: Tensor | None = None
    """int64 [F_a, k] for ``mode="topk"``: each feature's k nearest features of B, nearest first."""
    neighbor_costs: Tensor | None = None
    """float32 [F_a, k] for ``mode="topk"``: their costs."""

    @property
    def n_matched(self) -> int:
        """Number of A's features with a counterpart."""
        return int((self.perm >= 0).sum())

    def __repr__(self) -> str:
        return (
            f"MatchResult(F_a={self.perm.numel()}, matched={self.n_matched}, "
            f"objective={self.objective:.6g}, gap={self.gap:.3g}, certified={self.certified})"
        )


def compose(first: Tensor, second: Tensor) -> Tensor:
    """Compose correspondences A→B and B→C into A→C; -1 propagates.

    ``compose(p_ab, p_bc)[i] = p_bc[p_ab[i]]`` where ``p_ab[i] >= 0``, else -1.
    """
    if first.ndim != 1 or second.ndim != 1:
        raise ValueError(f"compose expects 1-D permutations; got shapes {tuple(first.shape)}, {tuple(second.shape)}")
    if first.numel() and int(first.max()) >= second.numel():
        raise ValueError(
            f"compose: first maps into {int(first.max()) + 1}+ features but second has only {second.numel()}"
        )
    out = torch.full_like(first, -1)
    ok = first >= 0
    out[ok] = second[first[ok]]
    return out
