"""Data-free metrics of one matched layer pair: per-feature MSE and cosine of matched parameters.

The paper's first evaluation (METHOD.md, "Evaluations in the paper"): the mean squared difference
between the folded parameter vectors of matched features, compared across folded matching,
unfolded matching and the identity. Here every feature keeps its own number, so histograms,
quantiles and "no counterpart" thresholds come for free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from mechperm.sae import SAE

Part = Literal["decoder", "encoder", "all"]
PARTS: tuple[str, ...] = get_args(Part)

DEFAULT_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
_ROW_CHUNK = 4096  # rows gathered per step, so a 1M-feature pair never holds two float64 copies


def feature_vectors(sae: SAE, on: Part = "decoder", fold: bool = True) -> Tensor:
    """Parameter vector of every feature, ``[F, k]``, as matching and :func:`pair_metrics` see it.

    Parameters
    ----------
    sae : SAE
    on : {"decoder", "encoder", "all"}
        ``"decoder"``: decoder rows ``W_dec[i]`` (k = d). ``"encoder"``: encoder columns
        ``W_enc[:, i]`` (k = d). ``"all"``: ``[W_enc[:, i], b_enc[i], W_dec[i]]`` (k = 2d + 1).
    fold : bool
        Use :meth:`SAE.fold` first (θ folded into the weights; decoder norms for ReLU SAEs).
    """
    if on not in PARTS:
        raise ValueError(f"on={on!r} is not a parameter set; choose one of {PARTS}")
    s = sae.fold() if fold else sae
    if on == "decoder":
        return s.W_dec
    if on == "encoder":
        return s.W_enc.T
    return torch.cat([s.W_enc.T, s.b_enc[:, None], s.W_dec], dim=1)


def check_perm(perm: Any, F_a: int, F_b: int, what: str = "perm") -> np.ndarray:
    """Validate a matching ``perm [F_a]`` (``perm[i] = j``, −1 = no counterpart); return int64 numpy."""
    p = perm.detach().cpu().numpy() if isinstance(perm, Tensor) else np.asarray(perm)
    if p.ndim != 1 or p.shape[0] != F_a:
        raise ValueError(f"{what} has shape {p.shape}; expected ({F_a},), one entry per feature of SAE A")
    if p.size and not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"{what} has dtype {p.dtype}; expected integers (feature indices of SAE B, −1 = none)")
    p = p.astype(np.int64)
    bad = (p < -1) | (p >= F_b)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(
            f"{what}[{i}] = {p[i]} is out of range; entries must lie in [-1, {F_b - 1}] "
            f"(SAE B has F={F_b}; −1 marks a feature without counterpart)"
        )
    return p


@dataclass(frozen=True)
class PairMetrics:
    """Per-feature evidence for one matched pair (SAE A → SAE B). Arrays are numpy, CPU.

    "Valid pair": ``perm[i] ≥ 0`` and neither feature is in its SAE's ``invalid_features()``
    (θ ≤ 0 or non-finite, zero decoder row: dead or malformed). Summaries, histograms and
    fractions use valid pairs only; the per-feature arrays hold every matched feature.
    """

    perm: np.ndarray
    """int64 [F_a]: ``perm[i] = j`` matches feature i of A to feature j of B; −1 = none."""
    mse: np.ndarray
    """float64 [F_a]: mean over the k vector entries of ``(a_i − b_perm[i])²``; NaN if unmatched."""
    cosine: np.ndarray
    """float64 [F_a]: cosine of ``a_i`` and ``b_perm[i]``; NaN if unmatched or a vector is zero."""
    invalid_a: np.ndarray
    """bool [F_a]: ``sae_a.invalid_features()``."""
    invalid_b: np.ndarray
    """bool [F_b]: ``sae_b.invalid_features()``."""
    on: str = "decoder"
    """Parameter set compared (see :func:`feature_vectors`)."""
    fold: bool = True
    """Whether the vectors were folded first."""

    # ------------------------------------------------------------------ masks and counts
    @property
    def matched(self) -> np.ndarray:
        """bool [F_a]: features of A with a counterpart (``perm ≥ 0``)."""
        return self.perm >= 0

    @property
    def valid(self) -> np.ndarray:
        """bool [F_a]: matched, and both features are live (not invalid)."""
        ok = self.matched & ~self.invalid_a
        ok[ok] &= ~self.invalid_b[self.perm[ok]]
        return ok

    @property
    def n_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def n_dead_a(self) -> int:
        """Invalid (dead or malformed) features of A."""
        return int(self.invalid_a.sum())

    @property
    def n_dead_b(self) -> int:
        """Invalid (dead or malformed) features of B."""
        return int(self.invalid_b.sum())

    @property
    def n_unclaimed_b(self) -> int:
        """Features of B that no feature of A is matched to."""
        hit = np.zeros(self.invalid_b.shape[0], dtype=bool)
        hit[self.perm[self.matched]] = True
        return int((~hit).sum())

    # ------------------------------------------------------------------ summaries
    def values(self, of: Literal["mse", "cosine"] = "mse") -> np.ndarray:
        """The per-feature ``mse`` or ``cosine`` of valid pairs (finite values only)."""
        if of not in ("mse", "cosine"):
            raise ValueError(f"of={of!r}: choose 'mse' or 'cosine'")
        v = getattr(self, of)[self.valid]
        return v[np.isfinite(v)]

    def summary(self, quantiles: tuple[float, ...] = DEFAULT_QUANTILES) -> dict[str, Any]:
        """Counts, and mean / std / quantiles of MSE and cosine over valid pairs (JSON-able)."""
        out: dict[str, Any] = {
            "on": self.on,
            "fold": self.fold,
            "F_a": int(self.perm.shape[0]),
            "F_b": int(self.invalid_b.shape[0]),
            "n_matched": int(self.matched.sum()),
            "n_valid": self.n_valid,
            "n_dead_a": self.n_dead_a,
            "n_dead_b": self.n_dead_b,
            "n_unclaimed_b": self.n_unclaimed_b,
        }
        for of in ("mse", "cosine"):
            v = self.values(of)  # type: ignore[arg-type]
            stats: dict[str, Any] = {"mean": None, "std": None, "quantiles": {}}
            if v.size:
                stats["mean"] = float(v.mean())
                stats["std"] = float(v.std())
                stats["quantiles"] = {str(q): float(np.quantile(v, q)) for q in quantiles}
            out[of] = stats
        return out

    def histogram(
        self,
        of: Literal["mse", "cosine"] = "mse",
        bins: int | np.ndarray = 50,
        *,
        log: bool = False,
        range: tuple[float, float] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``np.histogram`` of ``mse`` or ``cosine`` over valid pairs: ``(counts, edges)``.

        ``log=True`` bins ``log10`` of the values (zeros and negatives dropped); edges are then
        in log10 units. Cosine defaults to the range [−1, 1].
        """
        v = self.values(of)
        if log:
            v = np.log10(v[v > 0])
        if range is None and of == "cosine" and not log:
            range = (-1.0, 1.0)
        return np.histogram(v, bins=bins, range=range)

    def fraction_with_counterpart(
        self, max_mse: float | None = None, min_cosine: float | None = None
    ) -> float:
        """Share of A's live features whose valid counterpart has ``mse ≤ max_mse`` and
        ``cosine ≥ min_cosine`` (a None bound is not applied). Denominator: features of A not
        in ``invalid_a``; NaN when there are none."""
        live = int((~self.invalid_a).sum())
        if live == 0:
            return float("nan")
        ok = self.valid.copy()
        with np.errstate(invalid="ignore"):
            if max_mse is not None:
                ok &= self.mse <= max_mse
            if min_cosine is not None:
                ok &= self.cosine >= min_cosine
        return float(ok.sum()) / live

    def to_dict(self, *, per_feature: bool = False, bins: int = 50) -> dict[str, Any]:
        """JSON-able: :meth:`summary`, histograms (log10 MSE, cosine) and, optionally, the arrays."""
        out = self.summary()
        for name, (of, log) in {"hist_log10_mse": ("mse", True), "hist_cosine": ("cosine", False)}.items():
            counts, edges = self.histogram(of, bins, log=log)  # type: ignore[arg-type]
            out[name] = {"counts": counts.tolist(), "edges": edges.tolist()}
        if per_feature:
            out["perm"] = self.perm.tolist()
            out["mse"]["per_feature"] = [None if not np.isfinite(x) else float(x) for x in self.mse]
            out["cosine"]["per_feature"] = [None if not np.isfinite(x) else float(x) for x in self.cosine]
            out["invalid_a"] = np.nonzero(self.invalid_a)[0].tolist()
            out["invalid_b"] = np.nonzero(self.invalid_b)[0].tolist()
        return out


def pair_metrics(
    sae_a: SAE, sae_b: SAE, perm: Tensor | np.ndarray, *, on: Part = "decoder", fold: bool = True
) -> PairMetrics:
    """Per-feature MSE and cosine between matched parameter vectors of two SAEs.

    Parameters
    ----------
    sae_a, sae_b : SAE
        Same ``d``; ``F_a`` and ``F_b`` may differ.
    perm : int [F_a]
        ``perm[i] = j``: feature i of A ↔ feature j of B; −1 = no counterpart.
    on : {"decoder", "encoder", "all"}
        Parameter vector per feature (:func:`feature_vectors`).
    fold : bool
        Compare folded parameters (θ·W_dec rows for JumpReLU, METHOD.md "Folding").

    Returns
    -------
    PairMetrics
        ``mse[i] = mean_k (a_i[k] − b_perm[i][k])²`` and ``cosine[i]``, computed in float64.
    """
    if sae_a.d_in != sae_b.d_in:
        raise ValueError(f"SAE A reads d={sae_a.d_in} but SAE B reads d={sae_b.d_in}; a pair needs one d")
    p = check_perm(perm, sae_a.d_sae, sae_b.d_sae)
    A = feature_vectors(sae_a, on, fold)
    B = feature_vectors(sae_b, on, fold).to(A.device)
    mse = np.full(p.shape[0], np.nan)
    cos = np.full(p.shape[0], np.nan)
    rows = np.nonzero(p >= 0)[0]
    for s in range(0, rows.size, _ROW_CHUNK):
        i = torch.from_numpy(rows[s : s + _ROW_CHUNK]).to(A.device)
        j = torch.from_numpy(p[rows[s : s + _ROW_CHUNK]]).to(A.device)
        a = A.index_select(0, i).double()
        b = B.index_select(0, j).double()
        mse[rows[s : s + _ROW_CHUNK]] = (a - b).square().mean(dim=1).cpu().numpy()
        na, nb = a.norm(dim=1), b.norm(dim=1)
        c = (a * b).sum(dim=1) / (na * nb)
        c = torch.where((na > 0) & (nb > 0), c, torch.full_like(c, float("nan")))
        cos[rows[s : s + _ROW_CHUNK]] = c.cpu().numpy()
    return PairMetrics(
        perm=p,
        mse=mse,
        cosine=cos,
        invalid_a=sae_a.invalid_features().cpu().numpy(),
        invalid_b=sae_b.invalid_features().cpu().numpy(),
        on=on,
        fold=fold,
    )
