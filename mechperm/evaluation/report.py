"""Results of a skip-layer evaluation: one row per (layer pair, method), JSON and Markdown out."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SkipLayerRow:
    """One method on one layer pair (t → u): layer u's state replaced by x̂."""

    layer_from: int
    """t: the SAE (and state) the replacement starts from."""
    layer_to: int
    """u: the layer whose state is replaced."""
    method: str
    """A permutation name, a baseline, ``hybrid@q`` or a custom method."""
    ev: float
    """``1 − Σ_k Var_s(x̂_sk − x_sk) / Σ_k Var_s(x_sk)``: variances over the evaluated tokens s
    (BOS, padding excluded; population variance, mean over tokens subtracted), summed over the
    d dims k, of layer u's clean state x and its replacement x̂."""
    r2: float
    """``1 − Σ_sk (x̂_sk − x_sk)² / Σ_sk (x_sk − x̄_k)²`` (no mean subtracted from the error; the
    usual SAE-training 1 − FVU). Equals ``ev`` when the error has zero mean."""
    ce: float | None
    """Mean next-token cross-entropy (nats/token) with layer u replaced; None for encoders."""
    delta_ce: float | None
    """``ce − clean_ce``."""
    clean_ce: float | None
    """Mean cross-entropy of the unmodified model on the same predictions."""
    n_tokens: int
    """Tokens in the EV sums."""


@dataclass(frozen=True)
class MatchingRow:
    """Matching score of one permutation on one layer pair (see ``methods.PairCounts``)."""

    layer_from: int
    layer_to: int
    method: str
    joint: float
    """Mean over live pairs of P(both fire | either fires)."""
    conditional: float
    """Mean over live pairs of P(j fires on x_u | i fires on x_t)."""
    n_live: int
    """Matched features of A that fire at least once on the evaluated tokens."""


@dataclass
class SkipLayerReport:
    """Everything :func:`evaluate_skip_layers` measured."""

    rows: list[SkipLayerRow] = field(default_factory=list)
    matching: list[MatchingRow] = field(default_factory=list)
    clean_ce: float | None = None
    """Clean mean cross-entropy over every evaluated prediction (None for encoders)."""
    dead_fraction: dict[int, float] = field(default_factory=dict)
    """Per layer: share of the SAE's features that never fired on the evaluated tokens."""
    l0: dict[int, float] = field(default_factory=dict)
    """Per layer: mean number of the SAE's features firing per evaluated token."""
    sae_ev: dict[int, float] = field(default_factory=dict)
    """Per layer: EV (same formula as :attr:`SkipLayerRow.ev`) of ``SAE_L(x_L)`` against ``x_L``."""
    n_tokens: int = 0
    n_predictions: int = 0
    """Next-token predictions in the cross-entropy means."""
    n_sequences: int = 0
    hybrid_perm: str | None = None
    """The permutation (and its folded decoder MSE) the ``hybrid@q`` rows used."""

    @property
    def methods(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.rows:
            seen.setdefault(r.method, None)
        return list(seen)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        seen: dict[tuple[int, int], None] = {}
        for r in self.rows:
            seen.setdefault((r.layer_from, r.layer_to), None)
        return list(seen)

    def get(self, layer_from: int, layer_to: int, method: str) -> SkipLayerRow:
        for r in self.rows:
            if (r.layer_from, r.layer_to, r.method) == (layer_from, layer_to, method):
                return r
        raise KeyError(f"no row for {layer_from}→{layer_to} {method!r}; methods: {self.methods}")

    def table(self, metric: str = "ev") -> dict[str, dict[str, float | None]]:
        """``{method: {"t->u": value}}`` of one :class:`SkipLayerRow` field."""
        out: dict[str, dict[str, float | None]] = {}
        for r in self.rows:
            out.setdefault(r.method, {})[f"{r.layer_from}->{r.layer_to}"] = getattr(r, metric)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (NaN becomes None)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "rows": [asdict(r) for r in self.rows],
                "matching": [asdict(r) for r in self.matching],
                "clean_ce": self.clean_ce,
                "dead_fraction": self.dead_fraction,
                "l0": self.l0,
                "sae_ev": self.sae_ev,
                "n_tokens": self.n_tokens,
                "n_predictions": self.n_predictions,
                "n_sequences": self.n_sequences,
                "hybrid_perm": self.hybrid_perm,
            }
        )

    def to_markdown(self, metrics: tuple[str, ...] = ("ev", "delta_ce"), digits: int = 3) -> str:
        """A method × layer-pair table; each cell lists ``metrics`` separated by " / "."""
        pairs = self.pairs
        head = "| method | " + " | ".join(f"{t}→{u}" for t, u in pairs) + " |"
        lines = [f"cells: {' / '.join(metrics)}", "", head, "|---" * (len(pairs) + 1) + "|"]
        for m in self.methods:
            cells = []
            for t, u in pairs:
                r = self.get(t, u, m)
                vals = [getattr(r, k) for k in metrics]
                cells.append(" / ".join("–" if v is None else f"{v:.{digits}f}" for v in vals))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        if self.matching:
            lines += ["", "matching score (joint / conditional):", "", head, "|---" * (len(pairs) + 1) + "|"]
            names = list(dict.fromkeys(r.method for r in self.matching))
            for m in names:
                by = {(r.layer_from, r.layer_to): r for r in self.matching if r.method == m}
                cells = [
                    f"{by[p].joint:.{digits}f} / {by[p].conditional:.{digits}f}" if p in by else "–" for p in pairs
                ]
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
