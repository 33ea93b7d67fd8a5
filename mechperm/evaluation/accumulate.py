"""Accumulators of the skip-layer evaluation: EV sums, co-firing counts, firing counts.

Fed one batch of clean states at a time by :mod:`mechperm.evaluation.skip_layer`; sums run in
float64, in batch order, so results do not depend on timing.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from mechperm.evaluation.methods import (
    BASELINES,
    CustomMethod,
    Hybrid,
    PairCounts,
    Permuter,
    baseline,
    hybrid_name,
)
from mechperm.evaluation.metrics import Part, check_perm, pair_metrics
from mechperm.evaluation.report import MatchingRow, SkipLayerReport, SkipLayerRow
from mechperm.sae import SAE

SAEStack = Union[Sequence[SAE], Mapping[int, SAE]]
PermStack = Mapping[str, Union[Sequence[Any], Mapping[Any, Any]]]


class Evaluator:
    """Accumulates EV sums, co-firing counts and firing counts over batches of clean states."""

    def __init__(
        self,
        saes: SAEStack,
        perms: PermStack | None,
        layers: Sequence[int] | None,
        baselines: Sequence[str],
        hybrid_qs: Sequence[float],
        hybrid_perm: str | None,
        hybrid_on: Part,
        custom: Mapping[str, CustomMethod] | None,
        device: torch.device,
    ) -> None:
        if layers is None:
            layers = sorted(saes.keys()) if isinstance(saes, Mapping) else range(len(saes))
        self.layers = [int(L) for L in layers]
        if len(self.layers) < 2:
            raise ValueError(f"layers={self.layers}: a skip-layer evaluation needs at least two layers")
        if any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"layers={self.layers} must increase strictly: each pair replaces a later layer")
        self.pairs = list(zip(self.layers[:-1], self.layers[1:]))
        self.saes: dict[int, SAE] = {}
        for L in self.layers:
            try:
                sae = saes[L]
            except (KeyError, IndexError):
                raise ValueError(f"no SAE for layer {L}; saes holds {_keys(saes)}") from None
            self.saes[L] = sae if sae.device == device else sae.to(device)
        for b in baselines:
            if b not in BASELINES:
                raise ValueError(f"unknown baseline {b!r}; choose from {BASELINES}")
        self.baselines = tuple(baselines)
        self.custom = dict(custom or {})
        perms = dict(perms or {})
        if hybrid_perm is None and hybrid_qs and perms:
            hybrid_perm = next(iter(perms))
        if hybrid_perm is not None and hybrid_perm not in perms:
            raise ValueError(f"hybrid_perm={hybrid_perm!r} is not among the perms {list(perms)}")
        self.hybrid_perm = hybrid_perm if hybrid_qs else None
        self.permuters: dict[tuple[int, int], dict[str, Permuter]] = {}
        self.counts: dict[tuple[int, int], dict[str, PairCounts]] = {}
        self.hybrids: dict[tuple[int, int], list[Hybrid]] = {}
        for t, u in self.pairs:
            A, B = self.saes[t], self.saes[u]
            if A.d_in != B.d_in:
                raise ValueError(f"SAEs of layers {t} and {u} read d={A.d_in} and d={B.d_in}; they must agree")
            ps = {
                n: check_perm(_perm_for(stack, n, t, u), A.d_sae, B.d_sae, f"perms[{n!r}][{t}]")
                for n, stack in perms.items()
            }
            self.permuters[(t, u)] = {n: Permuter(p, B.d_sae, device) for n, p in ps.items()}
            self.counts[(t, u)] = {n: PairCounts(p, device) for n, p in ps.items()}
            self.hybrids[(t, u)] = []
            if self.hybrid_perm is not None:
                m = pair_metrics(A, B, ps[self.hybrid_perm], on=hybrid_on, fold=True)
                self.hybrids[(t, u)] = [Hybrid(m, float(q), device) for q in hybrid_qs]
        hybrids = [hybrid_name(float(q)) for q in hybrid_qs] if self.hybrid_perm else []
        self.method_names = [*perms, *self.baselines, *hybrids, *self.custom]
        if len(set(self.method_names)) != len(self.method_names):
            raise ValueError(f"method names collide: {self.method_names}; rename perms or custom methods")
        z = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        self.x_sum = {L: z(self.saes[L].d_in) for L in self.layers}
        self.x_sq = {L: z(1) for L in self.layers}
        self.own_sum = {L: z(self.saes[L].d_in) for L in self.layers}  # SAE_L(x_L) − x_L
        self.own_sq = {L: z(1) for L in self.layers}
        self.r_sum = {(t, u, m): z(self.saes[u].d_in) for t, u in self.pairs for m in self.method_names}
        self.r_sq = {k: z(1) for k in self.r_sum}
        self.fires = {L: torch.zeros(self.saes[L].d_sae, dtype=torch.int64, device=device) for L in self.layers}
        self.n_tokens = 0

    def _reconstructions(
        self, t: int, u: int, x_t: Tensor, x_u: Tensor, f_t: Tensor, f_u: Tensor
    ) -> Iterator[tuple[str, Tensor]]:
        """``(method, x̂_u [n, d])`` for every method, in report order."""
        for name, permute in self.permuters[(t, u)].items():
            yield name, self.saes[u].decode(permute(f_t))
        for b in self.baselines:
            yield b, baseline(b, x_t, x_u, self.saes[t], self.saes[u], f_t, f_u)
        for h in self.hybrids[(t, u)]:
            yield hybrid_name(h.q), self.saes[u].decode(h(f_t, f_u))
        for name, fn in self.custom.items():
            xh = fn(x_t, x_u, t, u)
            if tuple(xh.shape) != tuple(x_u.shape):
                raise ValueError(
                    f"custom method {name!r} returned shape {tuple(xh.shape)}; expected {tuple(x_u.shape)}"
                )
            yield name, xh

    def _layer(self, L: int, x: Tensor) -> Tensor:
        """Encode layer L's states; add its state sums, firing counts and own-reconstruction error."""
        f = self.saes[L].encode(x)
        self.fires[L] += (f != 0).sum(0)
        xd = x.double()
        self.x_sum[L] += xd.sum(0)
        self.x_sq[L] += xd.square().sum()
        r = self.saes[L].decode(f).double() - xd
        self.own_sum[L] += r.sum(0)
        self.own_sq[L] += r.square().sum()
        return f

    def step(self, xs: dict[int, Tensor], patch: Callable[[int, int, str, Tensor], None] | None) -> None:
        """Add one batch of clean states ``xs[L] [n, d]``; ``patch`` runs each replacement."""
        for L, x in xs.items():
            if x.shape[-1] != self.saes[L].d_in:
                raise ValueError(
                    f"layer {L}'s hidden state has d={x.shape[-1]} but its SAE reads "
                    f"d={self.saes[L].d_in}; check hook= (which module is layer {L})"
                )
        self.n_tokens += int(xs[self.layers[0]].shape[0])
        f_prev = self._layer(self.layers[0], xs[self.layers[0]])
        for t, u in self.pairs:
            x_t, x_u = xs[t], xs[u]
            f_t, f_u = f_prev, self._layer(u, x_u)
            fire_t, fire_u = f_t != 0, f_u != 0
            for c in self.counts[(t, u)].values():
                c.update(fire_t, fire_u)
            xd = x_u.double()
            for name, xh in self._reconstructions(t, u, x_t, x_u, f_t, f_u):
                r = xh.double() - xd
                self.r_sum[(t, u, name)] += r.sum(0)
                self.r_sq[(t, u, name)] += r.square().sum()
                if patch is not None:
                    patch(t, u, name, xh)
            f_prev = f_u

    def report(self, ce: dict[tuple[int, int, str], float] | None, clean_ce: float | None) -> SkipLayerReport:
        n = max(self.n_tokens, 1)
        rows = []
        for t, u in self.pairs:
            sst = float(self.x_sq[u] - self.x_sum[u].square().sum() / n)
            for m in self.method_names:
                sse = float(self.r_sq[(t, u, m)])
                sve = sse - float(self.r_sum[(t, u, m)].square().sum() / n)
                c = None if ce is None else ce[(t, u, m)]
                rows.append(
                    SkipLayerRow(t, u, m, ev=_ratio(sve, sst), r2=_ratio(sse, sst), ce=c,
                                 delta_ce=None if c is None or clean_ce is None else c - clean_ce,
                                 clean_ce=clean_ce, n_tokens=self.n_tokens)
                )
        matching = [
            MatchingRow(t, u, name, *c.scores()) for (t, u), cs in self.counts.items() for name, c in cs.items()
        ]
        dead = {L: float((f == 0).double().mean()) for L, f in self.fires.items()}
        l0 = {L: float(f.sum()) / n for L, f in self.fires.items()}
        own = {}
        for L in self.layers:
            sst = float(self.x_sq[L] - self.x_sum[L].square().sum() / n)
            own[L] = _ratio(float(self.own_sq[L] - self.own_sum[L].square().sum() / n), sst)
        return SkipLayerReport(rows=rows, matching=matching, clean_ce=clean_ce, dead_fraction=dead, l0=l0,
                               sae_ev=own, n_tokens=self.n_tokens, hybrid_perm=self.hybrid_perm)


def _ratio(num: float, den: float) -> float:
    return 1.0 - num / den if den > 0 else float("nan")


def _keys(saes: SAEStack) -> str:
    return str(sorted(saes.keys())) if isinstance(saes, Mapping) else f"layers 0..{len(saes) - 1}"


def _perm_for(stack: Any, name: str, t: int, u: int) -> Any:
    if isinstance(stack, Mapping):
        for key in (t, (t, u)):
            if key in stack:
                return stack[key]
        raise ValueError(f"perms[{name!r}] has no entry for layer {t} (or pair {(t, u)}); keys: {list(stack)}")
    if not 0 <= t < len(stack):
        raise ValueError(
            f"perms[{name!r}] has {len(stack)} entries; pair {t}→{u} needs index {t} "
            f"(perms are indexed by the source layer)"
        )
    return stack[t]
