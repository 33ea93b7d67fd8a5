"""Whole-stack matching: every requested layer pair, composition, feature paths, persistence."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mechperm.formats.lazy import LazyStack
from mechperm.result import MatchResult, compose
from mechperm.sae import SAE

Pairs = Literal["adjacent", "all"] | Sequence[tuple[int, int]]


def resolve_pairs(n_layers: int, pairs: Pairs) -> list[tuple[int, int]]:
    """The (a, b) index pairs (positions in the stack, a < b) that ``pairs`` names."""
    if pairs == "adjacent":
        return [(t, t + 1) for t in range(n_layers - 1)]
    if pairs == "all":
        return [(a, b) for a in range(n_layers) for b in range(a + 1, n_layers)]
    if isinstance(pairs, str):
        raise ValueError(f"pairs={pairs!r}: choose 'adjacent', 'all' or a list of (a, b) tuples")
    out = []
    for pair in pairs:
        a, b = (int(x) for x in pair)
        if not (0 <= a < n_layers and 0 <= b < n_layers) or a == b:
            raise ValueError(f"pair {pair!r} is not two different positions in a stack of {n_layers} SAEs")
        out.append((a, b))
    return out


@dataclass
class StackMatch:
    """Matches between layer pairs of an SAE stack, keyed by stack positions ``(a, b)``.

    ``layers[p]`` is the model layer of stack position p (from the SAEs' metadata, else p).
    """

    layers: list[int]
    results: dict[tuple[int, int], MatchResult]
    sizes: list[int]
    """Number of features at each stack position."""
    options: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ permutations
    def perm(self, a: int, b: int) -> Tensor:
        """Direct correspondence a→b if it was matched, else the composition along a→a+1→…→b."""
        if (a, b) in self.results:
            return self.results[(a, b)].perm
        return self.composed(a, b)

    def composed(self, a: int, b: int) -> Tensor:
        """Composition of the adjacent matches a→a+1→…→b (forward only, a < b)."""
        if not a < b:
            raise ValueError(f"composed({a}, {b}) needs a < b")
        missing = [(t, t + 1) for t in range(a, b) if (t, t + 1) not in self.results]
        if missing:
            raise ValueError(f"cannot compose {a}→{b}: adjacent pairs {missing} were not matched")
        out = self.results[(a, a + 1)].perm
        for t in range(a + 1, b):
            out = compose(out, self.results[(t, t + 1)].perm)
        return out

    def agreement_by_distance(self) -> dict[int, float]:
        """Fraction of A's features where the direct match equals the composed one, per distance.

        Needs direct matches for pairs at distance ≥ 2 (``pairs="all"``); the paper's
        Hypothesis 3 is that agreement decays with layer distance. Features that either path
        leaves without a counterpart count as disagreement unless both do.
        """
        by_distance: dict[int, list[float]] = {}
        for (a, b), result in self.results.items():
            if b - a < 2:
                continue
            try:
                composed = self.composed(a, b)
            except ValueError:
                continue
            agree = (result.perm == composed).double().mean().item()
            by_distance.setdefault(b - a, []).append(agree)
        return {dist: sum(v) / len(v) for dist, v in sorted(by_distance.items())}

    # ------------------------------------------------------------------ feature paths
    def path(self, position: int, feature: int, direction: Literal["forward", "backward"] = "forward") -> list[int]:
        """Feature indices along adjacent matches from ``(position, feature)``; -1 where it ends.

        The list has one entry per stack position from ``position`` to the last (forward) or
        the first (backward); after a -1 every entry is -1.
        """
        if not 0 <= feature < self.sizes[position]:
            raise ValueError(f"feature {feature} is out of range for stack position {position} (F={self.sizes[position]})")
        out = [feature]
        if direction == "forward":
            for t in range(position, len(self.sizes) - 1):
                j = out[-1]
                out.append(-1 if j < 0 else int(self.adjacent(t).perm[j]))
        elif direction == "backward":
            for t in range(position, 0, -1):
                j = out[-1]
                out.append(-1 if j < 0 else int(self.inverse(t - 1)[j]))
        else:
            raise ValueError(f"direction={direction!r}: choose 'forward' or 'backward'")
        return out

    def adjacent(self, t: int) -> MatchResult:
        """The match between stack positions t and t+1."""
        if (t, t + 1) not in self.results:
            raise ValueError(f"positions {t}→{t + 1} were not matched")
        return self.results[(t, t + 1)]

    def inverse(self, t: int) -> Tensor:
        """Backward correspondence (t+1)→t of the adjacent match t→t+1; -1 where unmatched."""
        perm = self.adjacent(t).perm
        inv = torch.full((self.sizes[t + 1],), -1, dtype=torch.int64)
        ok = perm >= 0
        inv[perm[ok]] = torch.arange(perm.numel())[ok]
        return inv

    def persistence(self, *, max_cost: float | None = None, min_cosine: float | None = None) -> list[Tensor]:
        """Per stack position, int64 [F]: how many further layers each feature survives.

        A step t→t+1 counts only when the feature has a counterpart whose cost is ≤ ``max_cost``
        and cosine ≥ ``min_cosine`` (when given). Computed backwards, so it is O(L·F).
        """
        n = len(self.sizes)
        out: list[Tensor] = [torch.zeros(self.sizes[-1], dtype=torch.int64)]
        for t in range(n - 2, -1, -1):
            result = self.adjacent(t)
            keep = result.perm >= 0
            if max_cost is not None:
                keep &= result.cost <= max_cost
            if min_cosine is not None:
                keep &= result.cosine >= min_cosine
            nxt = out[0]
            survive = torch.zeros(self.sizes[t], dtype=torch.int64)
            survive[keep] = 1 + nxt[result.perm[keep]]
            out.insert(0, survive)
        return out

    def summary(self) -> list[dict[str, Any]]:
        """One row per matched pair: layers, matched count, mean/median cost and cosine, gap, time."""
        rows = []
        for (a, b), r in sorted(self.results.items()):
            ok = r.perm >= 0
            cost, cos = r.cost[ok].double(), r.cosine[ok].double()
            rows.append(
                {
                    "a": self.layers[a],
                    "b": self.layers[b],
                    "matched": int(ok.sum()),
                    "features": int(r.perm.numel()),
                    "mean_cost": float(cost.mean()) if ok.any() else float("nan"),
                    "median_cosine": float(cos.median()) if ok.any() else float("nan"),
                    "mean_cosine": float(cos.mean()) if ok.any() else float("nan"),
                    "objective": r.objective,
                    "gap": r.gap,
                    "certified": r.certified,
                    "seconds": r.timings.get("total", float("nan")),
                }
            )
        return rows


def match_stack(
    saes: Sequence[SAE],
    pairs: Pairs = "adjacent",
    *,
    matcher: Callable[..., MatchResult] | None = None,
    done: dict[tuple[int, int], MatchResult] | None = None,
    on_result: Callable[[tuple[int, int], MatchResult], None] | None = None,
    progress: bool = False,
    **match_options: Any,
) -> StackMatch:
    """Match the requested layer pairs of a stack of SAEs.

    Parameters
    ----------
    saes : sequence of SAE (or a lazy stack, ``load_stack(..., lazy=True)``), in layer order; all
        with the same d.
    pairs : "adjacent" (t→t+1), "all" (every a<b), or explicit stack positions [(a, b), ...].
    matcher : the pair matcher; :func:`mechperm.match` by default.
    done : results already computed (resumed runs): those pairs are not matched again.
    on_result : called after each new pair (e.g. to save it atomically).
    progress : show a tqdm bar over pairs.
    **match_options : passed to the matcher (on=, fold=, metric=, mode=, k=, device=, ...).
    """
    check_stack(saes)
    results = dict(done or {})
    todo = [p for p in resolve_pairs(len(saes), pairs) if p not in results]
    results.update(match_pairs(saes, todo, matcher=matcher, on_result=on_result, progress=progress, **match_options))
    return StackMatch(layers=stack_layers(saes), results=results, sizes=stack_sizes(saes), options=dict(match_options))


def check_stack(saes: Sequence[SAE]) -> None:
    """ValueError unless there are two SAEs or more sharing d (a lazy stack checks d as it reads)."""
    if len(saes) < 2:
        raise ValueError(f"match_stack needs at least 2 SAEs; got {len(saes)}")
    d = set() if isinstance(saes, LazyStack) else {sae.d_in for sae in saes}
    if len(d) > 1:
        detail = ", ".join(f"{sae.info.source or i}: d={sae.d_in}" for i, sae in enumerate(saes))
        raise ValueError(f"SAEs of one stack must share d; got {detail}")


def match_pairs(
    saes: Sequence[SAE],
    todo: Sequence[tuple[int, int]],
    *,
    matcher: Callable[..., MatchResult] | None = None,
    cached: Callable[[tuple[int, int]], MatchResult | None] | None = None,
    on_result: Callable[[tuple[int, int], MatchResult], None] | None = None,
    progress: bool = False,
    **match_options: Any,
) -> dict[tuple[int, int], MatchResult]:
    """The results of the pairs ``todo`` (stack positions), in that order.

    ``cached(pair)`` is called in turn before each pair; a result it returns is taken instead of
    matching (a resumed run checks its stored pairs as they come up, so a lazy stack reads each SAE
    once). ``on_result`` is called after each pair matched. Other arguments as in
    :func:`match_stack`.
    """
    if matcher is None:
        from functools import partial

        from mechperm.match import match

        matcher = partial(match, progress=progress)  # a bar over certificate pricing passes, too
    from tqdm.auto import tqdm

    results: dict[tuple[int, int], MatchResult] = {}
    layers = stack_layers(saes)
    with tqdm(total=len(todo), desc="layer pairs", unit="pair", disable=not progress) as bar:
        for a, b in todo:
            bar.set_postfix_str(f"{layers[a]}→{layers[b]}")  # a lazy stack's reading of a layer is part of it
            stored = cached((a, b)) if cached is not None else None
            if stored is not None:
                results[(a, b)] = stored
            else:
                results[(a, b)] = matcher(saes[a], saes[b], **match_options)
                if on_result is not None:
                    on_result((a, b), results[(a, b)])
            bar.update(1)
    return results


def stack_layers(saes: Sequence[SAE]) -> list[int]:
    """The model layer of each position (``info.layer``, else the position); a lazy stack's
    without reading any SAE."""
    if isinstance(saes, LazyStack):
        return saes.layers
    return [sae.info.layer if sae.info.layer is not None else p for p, sae in enumerate(saes)]


def stack_sizes(saes: Sequence[SAE]) -> list[int]:
    """Features per position; a lazy stack reads only the SAEs it has not read before."""
    if isinstance(saes, LazyStack):
        return [m.d_sae if (m := saes.meta(p)) is not None else saes[p].d_sae for p in range(len(saes))]
    return [s.d_sae for s in saes]
