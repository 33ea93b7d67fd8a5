"""What replaces the residual stream of layer u when layer t's SAE stands in for it.

Every method maps the clean states ``x_t [n, d]`` (SAE t's input) and ``x_u [n, d]`` (the state
it replaces, u = the next evaluated layer) of the n evaluated tokens to ``x̂ [n, d]``:

- match (one per permutation): ``x̂ = decode_u(P f_t)`` with ``f_t = encode_t(x_t)`` and
  ``(P f)[..., perm[i]] = f[..., i]``; features with ``perm[i] = −1`` are dropped; features of A
  sharing one ``j`` (a non-injective match) are summed.
- ``layer_drop``: ``x̂ = x_t`` (block u skipped; x_t fed on).
- ``encdec_current``: ``x̂ = decode_u(encode_u(x_u))``.
- ``encdec_previous``: ``x̂ = decode_t(encode_t(x_t))``.
- ``hybrid@q`` (MSE quantile hybrid): let M be A's features with a valid match (``perm ≥ 0``,
  neither feature invalid) and S ⊆ M the ``floor(q·|M|)`` of them with the smallest match MSE
  (:func:`mechperm.evaluation.pair_metrics`, folded decoder rows by default; ties by index).
  ``f̂ = encode_u(x_u)``; then ``f̂[..., perm[S]] = 0`` and ``f̂[..., perm[i]] += f_t[..., i]`` for
  i ∈ S; ``x̂ = decode_u(f̂)``. So q = 0 is ``encdec_current`` and q = 1 takes every validly
  matched feature from the previous layer (B's features without a valid counterpart still come
  from ``encode_u(x_u)``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mechperm.evaluation.metrics import PairMetrics
from mechperm.sae import SAE

BASELINES: tuple[str, ...] = ("layer_drop", "encdec_current", "encdec_previous")

CustomMethod = Callable[[Tensor, Tensor, int, int], Tensor]
"""``fn(x_t [n, d], x_u [n, d], t, u) -> x̂ [n, d]``: a user-defined replacement of layer u."""


def hybrid_name(q: float) -> str:
    return f"hybrid@{q:g}"


class Permuter:
    """Apply a matching to feature activations: ``f [n, F_a] → f̂ [n, F_b]`` (see module doc)."""

    def __init__(self, perm: np.ndarray, F_b: int, device: torch.device) -> None:
        src = np.nonzero(perm >= 0)[0]
        self.src = torch.from_numpy(src).to(device)  # [m] features of A that have a counterpart
        self.dst = torch.from_numpy(perm[src]).to(device)  # [m] their counterparts in B
        self.injective = bool(np.unique(perm[src]).size == src.size)
        self.F_b = F_b

    def __call__(self, f: Tensor) -> Tensor:
        out = f.new_zeros(f.shape[0], self.F_b)
        vals = f.index_select(1, self.src)
        # index_copy_ is deterministic on CUDA; index_add_ (atomics) only where j repeats.
        if self.injective:
            return out.index_copy_(1, self.dst, vals)
        return out.index_add_(1, self.dst, vals)


class Hybrid:
    """The ``hybrid@q`` mixture for one layer pair (see module doc)."""

    def __init__(self, metrics: PairMetrics, q: float, device: torch.device) -> None:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"hybrid quantile q={q} must lie in [0, 1]")
        valid = np.nonzero(metrics.valid)[0]
        order = valid[np.argsort(metrics.mse[valid], kind="stable")]
        chosen = np.sort(order[: int(np.floor(q * valid.size))])
        self.src = torch.from_numpy(chosen).to(device)  # [s] features of A taken from layer t
        self.dst = torch.from_numpy(metrics.perm[chosen]).to(device)  # [s] their slots in B
        self.q = q

    def __call__(self, f_t: Tensor, f_u: Tensor) -> Tensor:
        out = f_u.clone()
        out.index_fill_(1, self.dst, 0.0)
        return out.index_add_(1, self.dst, f_t.index_select(1, self.src))


class PairCounts:
    """Co-firing counts of matched features over the evaluated tokens (the matching score).

    For each feature i of A with ``j = perm[i] ≥ 0``, over tokens: ``a`` = #(i fires on x_t),
    ``both`` = #(i fires on x_t and j fires on x_u), ``b`` = #(j fires on x_u). "Fires" means a
    non-zero activation. A pair is live when ``a > 0``. Scores (means over live pairs):
    joint = both / (a + b − both) = P(both | either), conditional = both / a = P(j | i).
    """

    def __init__(self, perm: np.ndarray, device: torch.device) -> None:
        src = np.nonzero(perm >= 0)[0]
        self.src = torch.from_numpy(src).to(device)
        self.dst = torch.from_numpy(perm[src]).to(device)
        self.a = torch.zeros(src.size, dtype=torch.int64, device=device)
        self.b = torch.zeros_like(self.a)
        self.both = torch.zeros_like(self.a)

    def update(self, fire_t: Tensor, fire_u: Tensor) -> None:
        fa = fire_t.index_select(1, self.src)
        fb = fire_u.index_select(1, self.dst)
        self.a += fa.sum(0)
        self.b += fb.sum(0)
        self.both += (fa & fb).sum(0)

    def scores(self) -> tuple[float, float, int]:
        """``(joint, conditional, n_live)``; NaN scores when no pair is live."""
        a, b, both = (x.double().cpu() for x in (self.a, self.b, self.both))
        live = a > 0
        n = int(live.sum())
        if n == 0:
            return float("nan"), float("nan"), 0
        joint = (both[live] / (a[live] + b[live] - both[live])).mean()
        cond = (both[live] / a[live]).mean()
        return float(joint), float(cond), n


def baseline(name: str, x_t: Tensor, x_u: Tensor, sae_t: SAE, sae_u: SAE, f_t: Tensor, f_u: Tensor) -> Tensor:
    """``x̂`` of a baseline in :data:`BASELINES` (f_t, f_u: the SAEs' encodings of x_t, x_u)."""
    if name == "layer_drop":
        return x_t
    if name == "encdec_current":
        return sae_u.decode(f_u)
    if name == "encdec_previous":
        return sae_t.decode(f_t)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
