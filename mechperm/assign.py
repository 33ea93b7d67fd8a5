"""Exact linear assignment: the typed front of the native solver ``mechperm._auction``.

The solver (csrc/auction.cpp): a cold solve first tries shortest augmenting paths from column
and augmenting row reduction (Jonker & Volgenant), under a budget of about one pass over the
arcs, and otherwise runs the epsilon-scaling auction (Bertsekas), whose prices it then lowers
as far as the assignment allows; an exact shortest-path finish makes either optimal for real
costs. Warm restarts are shortest paths only.

Three entry points, all returning an :class:`Assignment` with primal, duals and certificate:

- :func:`assign` — a dense cost matrix (numpy array or CPU torch tensor). Small problems go to
  the dense auction; large ones run the exact-from-candidates loop on the matrix itself.
- :func:`assign_sparse` — a CSR graph; the optimum over the given arcs only.
- :func:`assign_exact` — the exact-from-sparse loop of DESIGN.md: auction on a candidate graph,
  cheap bounds on every pair left out, exact pricing of the rows that fail them, warm restarts
  until no pair of negative reduced cost is left. The result is the optimum of the *dense*
  problem with a dual certificate, in memory proportional to the graph.

Candidate graphs and pricing callbacks for squared distances of vectors come from
``mechperm.kernels`` (``candidates`` + ``solver_graph``, ``row_pricer``), which never hold the
dense matrix.

Conventions: minimisation unless ``maximize=True``; ``row_to_col[i] = j`` (``-1``: unmatched);
for ``n > m`` every column is matched and rows may be left over. Duals ``(u, v)`` always refer to
the minimisation actually solved (of ``-C`` when maximising): ``u_i + v_j <= c_ij`` on every pair,
equality on matched pairs, and the side with spare capacity has duals ``<= 0`` that are ``0`` on
its unmatched members.

Partial assignment (``unmatched_cost=lam``): every row may stay unmatched at cost ``lam_i``. The
problem solved is the padded ``[C | D]`` with one dummy column per row, ``D = diag(lam)`` and
``+inf`` off the diagonal; the dummy duals are returned as ``v_unmatched``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, NamedTuple, Optional, Union

import numpy as np

from mechperm import _auction

__all__ = [
    "Assignment",
    "CandidateGraph",
    "InfeasibleError",
    "assign",
    "assign_exact",
    "assign_sparse",
    "sqdist_candidates",
    "sqdist_pricer",
]

InfeasibleError = _auction.InfeasibleError
"""Raised (a ``ValueError``) when a sparse graph admits no assignment of every row."""

ArrayLike = Any  # numpy array or torch tensor
PriceRows = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple]

_REL_TOL = 2e-14  # pricing tolerance relative to |c_ij| + |u_i| + |v_j|: ~100 float64 ulps
_DENSE_LIMIT = 1 << 18  # n*m up to which `assign` uses the dense auction by default (measured)


@dataclass
class Assignment:
    """Result of an assignment solve.

    Attributes
    ----------
    row_to_col : np.ndarray, int64 [n]
        Column of each row, ``-1`` where the row is unmatched.
    col_to_row : np.ndarray, int64 [m]
        Row of each column, ``-1`` where the column is unmatched.
    u, v : np.ndarray, float64 [n], [m]
        Dual prices of the minimisation solved (see the module docstring).
    objective : float
        Sum of the costs of the matched pairs (float64), plus ``unmatched_cost`` per unmatched
        row in partial mode; in the caller's sign (a maximum when ``maximize=True``).
    dual_bound : float
        A bound the optimum cannot beat, from the duals (same sign convention as objective).
    gap : float
        ``|objective - dual_bound|``: 0 up to rounding when the result is certified optimal.
    certified : bool
        True when the duals prove optimality for the whole problem (dense problem for
        :func:`assign` / :func:`assign_exact`, the given arcs for :func:`assign_sparse`).
    rounds : int
        Solve-and-price rounds (1 for a direct solve).
    n_edges : int
        Arcs in the final graph the auction saw.
    stats : dict
        Solver counters summed over rounds: ``phases``, ``bids``, ``reverse_bids``,
        ``augmentations`` and, for the loops, ``priced_rows``, ``deferred_rows`` (failing rows
        left for a later round while other rows still violate) and ``added_edges``.
    timings : dict
        Seconds spent in ``candidates``, ``solve``, ``pricing`` and ``total``.
    v_unmatched : np.ndarray or None, float64 [n]
        Duals of the dummy columns in partial mode.
    """

    row_to_col: np.ndarray
    col_to_row: np.ndarray
    u: np.ndarray
    v: np.ndarray
    objective: float
    dual_bound: float
    gap: float
    certified: bool
    rounds: int = 1
    n_edges: int = 0
    stats: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    v_unmatched: Optional[np.ndarray] = None

    @property
    def n_matched(self) -> int:
        """Number of matched pairs."""
        return int(np.count_nonzero(self.row_to_col >= 0))


class PricedRows(NamedTuple):
    """What a ``price_rows`` callback of :func:`assign_exact` may return with its own bound."""

    rows: np.ndarray
    """int64 [P]"""
    cols: np.ndarray
    """int64 [P]"""
    costs: np.ndarray
    """[P] exact costs c_ij"""
    bound: np.ndarray
    """float64 [len(requested rows)]: every pair of that row not returned has
    c_ij − u_i − v_j >= bound (in the order the rows were requested)."""


@dataclass
class CandidateGraph:
    """A sparse candidate graph in CSR form, with optional bounds on the pairs left out.

    Every pair ``(i, j)`` *not* in the graph must satisfy
    ``c_ij >= max(row_bound[i] + col_offset[j], col_bound[j] + row_offset[i])``
    (a missing array contributes no bound; offsets default to 0). Typical use: the graph holds
    the ``k`` cheapest columns of each row by ``c_ij - col_offset[j]`` and ``row_bound[i]`` is
    the ``k``-th of those values (and likewise per column).

    Squared Euclidean costs ``c_ij = |a_i|² + |b_j|² − 2 |a_i| |b_j| cos_ij`` may also give
    ``row_norm`` (|a_i|), ``col_norm`` (|b_j|) and upper bounds on the cosine of the pairs left
    out: ``cos_ij <= row_cos[i]`` (the graph holds each row's most cosine-similar columns and
    ``row_cos`` is the k-th of their cosines, plus its rounding error) and ``cos_ij <= col_cos[j]``
    (likewise per column).
    The loop then also bounds ``c_ij >= (1 − 1e-5)(|a_i|² + |b_j|²) − 2 |a_i| |b_j| cos``, the
    1e-5 covering float32 rounding of the costs; far tighter than the k-th cost where norms are
    heavy-tailed (F = 4096, d = 2304 folded decoders: 2955 priced rows → 1283).

    ``col_base`` and ``col_slope`` (with ``row_norm``): the pairs left out also satisfy
    ``c_ij >= col_base[j] − col_slope[j] · row_norm[i]``: a column's k-th cost less an error
    that grows with the row's norm (the screens' bf16 error, ~2^-8 |a_i| |b_j|), which a single
    ``col_bound`` must take at the largest row norm.

    Attributes
    ----------
    indptr : np.ndarray, int64 [n + 1]
    indices : np.ndarray, int32 or int64 [nnz]
    costs : np.ndarray, float32 or float64 [nnz]
    row_bound, row_offset, row_norm, row_cos : np.ndarray or None, float64 [n]
    col_bound, col_offset, col_norm, col_cos, col_base, col_slope : np.ndarray or None, float64 [m]
    """

    indptr: np.ndarray
    indices: np.ndarray
    costs: np.ndarray
    row_bound: Optional[np.ndarray] = None
    col_bound: Optional[np.ndarray] = None
    row_offset: Optional[np.ndarray] = None
    col_offset: Optional[np.ndarray] = None
    row_norm: Optional[np.ndarray] = None
    col_norm: Optional[np.ndarray] = None
    row_cos: Optional[np.ndarray] = None
    col_cos: Optional[np.ndarray] = None
    col_base: Optional[np.ndarray] = None
    col_slope: Optional[np.ndarray] = None

    def with_arcs(self, rows: np.ndarray, cols: np.ndarray, costs: np.ndarray) -> "CandidateGraph":
        """The graph plus the arcs not in it yet (CSR sorted by row, then column; bounds kept)."""
        return _merge(self, np.asarray(rows, np.int64), np.asarray(cols, np.int64), costs,
                      len(self.indptr) - 1)


# ---- validation -------------------------------------------------------------------------------


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        if getattr(x, "is_complex", lambda: False)():
            raise ValueError(f"{name} must be real, got {x.dtype}")
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return x


def _float_array(x: np.ndarray, name: str) -> np.ndarray:
    """float32/float64 kept as they are; other real numeric dtypes converted (explicit copy)."""
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype == np.float16:
        return x.astype(np.float32)
    if x.dtype.kind in "iu":
        return x.astype(np.float64)
    raise ValueError(
        f"{name} must be a real float or integer array, got dtype {x.dtype} "
        f"(convert with .astype(np.float64))"
    )


def _unmatched(lam: Any, n: int, maximize: bool) -> Optional[np.ndarray]:
    if lam is None:
        return None
    arr = np.asarray(lam, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"unmatched_cost must be a scalar or have shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("unmatched_cost must be finite")
    return np.ascontiguousarray(-arr if maximize else arr)


def _dense_cost(cost: ArrayLike) -> np.ndarray:
    c = _as_numpy(cost, "cost")
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got {c.ndim}-D with shape {c.shape}")
    return _float_array(c, "cost")


def _check_csr(indptr: Any, indices: Any, costs: Any, shape: tuple) -> tuple:
    if len(shape) != 2 or min(int(shape[0]), int(shape[1])) < 0:
        raise ValueError(f"shape must be (n_rows, n_cols) with non-negative sizes, got {shape}")
    n, m = int(shape[0]), int(shape[1])
    indptr = _as_numpy(indptr, "indptr")
    indices = _as_numpy(indices, "indices")
    costs = _float_array(_as_numpy(costs, "costs"), "costs")
    if indptr.ndim != 1 or indptr.shape[0] != n + 1:
        raise ValueError(f"indptr must be 1-D with n_rows + 1 = {n + 1} entries, got {indptr.shape}")
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ValueError(
            f"indptr and indices must be integer arrays, got {indptr.dtype} and {indices.dtype}"
        )
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    if indptr[0] != 0 or (n > 0 and np.any(np.diff(indptr) < 0)):
        raise ValueError("indptr must start at 0 and be non-decreasing (monotone)")
    nnz = int(indptr[-1])
    if indices.ndim != 1 or costs.ndim != 1 or indices.shape[0] != nnz or costs.shape[0] != nnz:
        raise ValueError(
            f"indices and costs must be 1-D with indptr[-1] = {nnz} entries, got "
            f"{indices.shape} and {costs.shape}"
        )
    if nnz and (int(indices.min()) < 0 or int(indices.max()) >= m):
        raise ValueError(f"column index out of range [0, {m}) in indices")
    if not np.isfinite(costs).all():
        raise ValueError("costs contain NaN or infinity")
    if indices.dtype not in (np.int32, np.int64):
        indices = indices.astype(np.int64)
    return indptr, np.ascontiguousarray(indices), np.ascontiguousarray(costs), n, m


# ---- result assembly --------------------------------------------------------------------------


def _result(raw: dict, *, sign: float, transposed: bool, certified: bool, rounds: int = 1,
            n_edges: int = 0, stats: Optional[dict] = None, timings: Optional[dict] = None,
            dual: Optional[float] = None) -> Assignment:
    r2c, c2r, u, v = raw["row_to_col"], raw["col_to_row"], raw["u"], raw["v"]
    if transposed:
        r2c, c2r, u, v = c2r, r2c, v, u
    obj = float(raw["objective"])
    dual = float(raw["dual_objective"]) if dual is None else dual
    base = {k: int(raw[k]) for k in ("phases", "bids", "reverse_bids", "augmentations", "sap_trial")}
    return Assignment(
        row_to_col=r2c, col_to_row=c2r, u=u, v=v,
        objective=sign * obj, dual_bound=sign * dual, gap=abs(obj - dual),
        certified=certified, rounds=rounds, n_edges=n_edges,
        stats=stats if stats is not None else base, timings=timings or {},
        v_unmatched=raw.get("v_dummy"),
    )


def _empty(n: int, m: int, lam: Optional[np.ndarray], sign: float) -> Assignment:
    obj = float(lam.sum()) if lam is not None else 0.0
    u = lam.copy() if lam is not None else np.zeros(n)
    return Assignment(
        row_to_col=np.full(n, -1, np.int64), col_to_row=np.full(m, -1, np.int64),
        u=u, v=np.zeros(m), objective=sign * obj, dual_bound=sign * obj, gap=0.0,
        certified=True, stats={"phases": 0, "bids": 0, "reverse_bids": 0, "augmentations": 0, "sap_trial": 0},
        v_unmatched=np.zeros(n) if lam is not None else None,
    )


# ---- public API ---------------------------------------------------------------------------------


def assign(
    cost: ArrayLike,
    *,
    maximize: bool = False,
    unmatched_cost: Union[None, float, np.ndarray] = None,
    method: Literal["auto", "dense", "candidates"] = "auto",
    k: Optional[int] = None,
) -> Assignment:
    """Optimal assignment of a dense cost matrix.

    Parameters
    ----------
    cost : np.ndarray or torch.Tensor, [n, m]
        Finite costs (float32/float64 used without a copy when C-contiguous; integers and
        float16 are converted). A transposed view is copied to C order.
    maximize : bool
        Maximise the sum instead of minimising it.
    unmatched_cost : float or array [n], optional
        Partial assignment: row i may stay unmatched at this cost (value when maximising).
    method : {"auto", "dense", "candidates"}
        ``"dense"``: auction on the full matrix. ``"candidates"``: the exact-from-candidates
        loop (k cheapest per row and per column, the arcs (i, i), pricing by the matrix).
        ``"auto"``: dense up to n*m = 262144 entries (512 x 512), candidates beyond; partial
        assignment (``unmatched_cost``) always uses the dense auction.
    k : int, optional
        Candidates per row and per column for ``method="candidates"`` (default 8, or 16 from
        8192 rows or columns on: measured on uniform and heavy-tailed SAE-like costs).

    Returns
    -------
    Assignment
        The optimum; ``objective`` equals scipy's ``linear_sum_assignment`` optimum.

    Raises
    ------
    ValueError
        Wrong ndim or dtype, NaN or infinite costs, a bad ``unmatched_cost``.
    """
    c = _dense_cost(cost)
    if method not in ("auto", "dense", "candidates"):
        raise ValueError(f"method must be 'auto', 'dense' or 'candidates', got {method!r}")
    n, m = c.shape
    lam = _unmatched(unmatched_cost, n, maximize)
    sign = -1.0 if maximize else 1.0
    if maximize:
        c = np.negative(c)
    if n == 0 or m == 0:
        return _empty(n, m, lam, sign)
    transposed = lam is None and n > m
    if transposed:
        c = c.T
    c = np.ascontiguousarray(c)
    if method == "dense" or (method == "auto" and c.size <= _DENSE_LIMIT) or lam is not None:
        t0 = time.perf_counter()
        raw = _dense_auction(c, lam)
        res = _result(raw, sign=sign, transposed=transposed, certified=True)
        res.timings = {"solve": time.perf_counter() - t0, "total": time.perf_counter() - t0}
        res.n_edges = c.size
        return res
    if k is None:
        k = 8 if max(n, m) < 8192 else 16
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    res = _dense_exact(c, k=k)
    if transposed:
        res.row_to_col, res.col_to_row = res.col_to_row, res.row_to_col
        res.u, res.v = res.v, res.u
    res.objective *= sign
    res.dual_bound *= sign
    return res


def assign_sparse(
    indptr: ArrayLike,
    indices: ArrayLike,
    costs: ArrayLike,
    shape: tuple,
    *,
    maximize: bool = False,
    unmatched_cost: Union[None, float, np.ndarray] = None,
) -> Assignment:
    """Optimal assignment over the arcs of a CSR graph.

    Parameters
    ----------
    indptr : array, int [n + 1]
        Row pointers: row i has arcs ``indptr[i]:indptr[i+1]``; starts at 0, non-decreasing.
    indices : array, int32/int64 [nnz]
        Column of each arc, in ``[0, m)``.
    costs : array, float32/float64 [nnz]
        Finite cost of each arc.
    shape : (n, m)
    maximize, unmatched_cost
        As in :func:`assign`.

    Returns
    -------
    Assignment
        Optimal over the given arcs (``certified`` refers to the graph, not to pairs absent
        from it). With ``n > m`` every column is matched.

    Raises
    ------
    InfeasibleError
        (a ``ValueError``) no assignment of every row (every column when n > m) exists.
    ValueError
        Malformed CSR arrays, NaN or infinite costs.
    """
    indptr, indices, costs, n, m = _check_csr(indptr, indices, costs, shape)
    lam = _unmatched(unmatched_cost, n, maximize)
    sign = -1.0 if maximize else 1.0
    if maximize:
        costs = np.negative(costs)
    transposed = lam is None and n > m
    if transposed:
        indptr, indices, costs = _transpose_csr(indptr, indices, costs, n, m)
        n, m = m, n
    if n == 0 or (m == 0 and lam is not None):
        res = _empty(n, m, lam, sign)
        if transposed:
            res.row_to_col, res.col_to_row, res.u, res.v = res.col_to_row, res.row_to_col, res.v, res.u
        return res
    t0 = time.perf_counter()
    try:  # feasibility proven by the solve itself (its shortest paths, or a matching before an auction)
        raw = _auction.solve_sparse(indptr, indices, costs, n, m, unmatched_cost=lam, threads=_threads(),
                                    check_feasible="lazy")
    except InfeasibleError:
        size, _ = _auction.max_matching(indptr, indices, n, m)
        what = "column" if transposed else "row"
        raise InfeasibleError(f"the graph has no assignment of every {what}: a maximum matching covers {size} of "
                              f"{n} {what}s (of the problem as given); add arcs or pass unmatched_cost for a "
                              f"partial assignment") from None
    res = _result(raw, sign=sign, transposed=transposed, certified=True, n_edges=len(indices))
    res.timings = {"solve": time.perf_counter() - t0, "total": time.perf_counter() - t0}
    return res


def _transpose_csr(indptr, indices, costs, n, m):
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    t_indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(indices, minlength=m), out=t_indptr[1:])
    t_idx = rows[order].astype(indices.dtype if n < 2**31 else np.int64)
    return t_indptr, np.ascontiguousarray(t_idx), np.ascontiguousarray(costs[order])



# ---- the exact-from-candidates loop ------------------------------------------------------------


def assign_exact(
    n_rows: int,
    n_cols: int,
    candidates: Union[CandidateGraph, tuple],
    price_rows: PriceRows,
    *,
    unmatched_cost: Union[None, float, np.ndarray] = None,
    max_rounds: int = 100,
    max_new_per_row: int = 16,
    rebuild: Optional[Callable[[np.ndarray, np.ndarray], CandidateGraph]] = None,
    price_pairs: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    pair_pricing: bool = False,
    _complete: Optional[Callable[[CandidateGraph], CandidateGraph]] = None,
) -> Assignment:
    """Dense-optimal assignment from a sparse candidate graph and a pricing callback.

    Loop (DESIGN.md, "Exact assignment from a sparse candidate graph"): solve on the graph with
    the auction; bound every pair left out with the candidate bounds; call ``price_rows`` for
    the rows whose bound does not prove ``c_ij - u_i - v_j >= 0``; add the pairs of negative
    reduced cost; warm-restart from the previous prices; stop when none is left. Feasibility
    is not assumed: if the graph has no assignment of every row, rows get a slack column at a
    large cost and pricing brings in the arcs they need.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape of the dense problem, ``n_rows <= n_cols`` (swap roles otherwise).
    candidates : CandidateGraph or (indptr, indices, costs)
        The initial graph, costs exact; bounds optional (without them every row is priced).
    price_rows : callable ``(rows, u, v) -> (rows, cols, costs[, ...])``
        Streams the full cost rows ``rows`` (int64) and returns, per row, either every pair with
        ``c_ij - u_i - v_j < 0`` or the q pairs of smallest reduced cost (recommended: they also
        anticipate the next rounds and give the row a bound of its own). Other outputs are
        ignored, except from a :class:`PricedRows`, whose ``bound`` [len(rows)] is a lower bound
        on the reduced cost of every pair of that row not returned (for callbacks whose
        selection is approximate, e.g. screened costs; it must be >= 0 where the row returned
        no violating pair). Pairs already in the graph are skipped.
    unmatched_cost : float or array [n_rows], optional
        Partial assignment as in :func:`assign`.
    max_rounds : int
        Safety cap; ``certified`` is False if it is reached.
    max_new_per_row : int
        Pairs of smallest reduced cost kept per priced row and round (bounds memory; >= 1).
    rebuild : callable ``(u, v) -> CandidateGraph``, optional
        A full pass that selects fresh candidates by reduced cost (offsets ``col_offset = v``,
        ``row_offset = u``) with bounds. When many rows fail the bounds (early rounds, poor
        initial candidates) one such pass replaces pricing them one by one; its bounds are
        tight at the final duals, so later rounds price few rows.
    price_pairs : callable ``(rows, cols) -> costs``, optional
        The costs of single pairs, as ``price_rows`` computes them. A row priced in an earlier
        round whose bound the new duals break only on a few columns (at most
        ``max(256, n_cols // 64)`` moved against it) then has those pairs costed instead of
        being priced whole.
    pair_pricing : bool
        With ``price_pairs``: a row priced in an earlier round that fails again is costed pair
        by pair where the candidate bounds (and what its last pricing proved) fail on at most
        ``max(256, n_cols // 64)`` of its pairs: those pairs and the next least-bounded ones,
        ``max(256, 2 ×)`` in all, instead of the whole row (a row's first pricing stays whole:
        its best pairs anticipate the next rounds). For pricers whose rows cost a float32 GEMM
        row each: ``match``'s unscreened CPU path, make_stack F = 16384, pricing 2.7 -> 1.9 s;
        screened rows (bf16) gained nothing (16384: 1.33 -> 1.25 s; 65536: 20.0 -> 21.1 s).
    _complete : callable ``graph -> graph``, optional
        Internal: called once if the graph turns out to have no assignment of every row, to
        return one that has (``match`` adds arcs between the rows and columns a maximum
        matching leaves free), in place of slack columns.

    Returns
    -------
    Assignment
        ``certified=True`` and ``gap ~ 0`` when the duals prove dense optimality.
    """
    n, m = int(n_rows), int(n_cols)
    if n > m and unmatched_cost is None:
        raise ValueError(f"assign_exact needs n_rows <= n_cols, got ({n}, {m}); swap the roles "
                         "of rows and columns (and transpose the candidates)")
    if max_new_per_row < 1 or max_rounds < 1:
        raise ValueError("max_new_per_row and max_rounds must be >= 1")
    g = candidates if isinstance(candidates, CandidateGraph) else CandidateGraph(*candidates)
    indptr, indices, costs, _, _ = _check_csr(g.indptr, g.indices, g.costs, (n, m))
    extra = ("row_bound", "col_bound", "row_offset", "col_offset", "row_norm", "col_norm", "row_cos", "col_cos",
             "col_base", "col_slope")
    # float32 costs stay float32: every pass of the solver and every merge reads a third less.
    g = CandidateGraph(indptr, indices, costs,
                       **{f: None if getattr(g, f) is None else np.asarray(getattr(g, f), np.float64)
                          for f in extra})
    for f, size in (("row_norm", n), ("row_cos", n), ("col_norm", m), ("col_cos", m), ("col_base", m),
                    ("col_slope", m)):
        x = getattr(g, f)
        if x is not None and x.shape != (size,):
            raise ValueError(f"candidates.{f} must have shape ({size},), got {x.shape}")
    if (g.col_slope is None) != (g.col_base is None) or (g.col_slope is not None and g.row_norm is None):
        raise ValueError("candidates.col_base and col_slope go together, with row_norm")
    lam = _unmatched(unmatched_cost, n, False)
    return _exact_loop(n, m, g, price_rows, lam, max_rounds, max_new_per_row, timings={},
                       rebuild=rebuild, complete=_complete, price_pairs=price_pairs,
                       pair_pricing=pair_pricing and price_pairs is not None)


def _dense_auction(c: np.ndarray, lam: Optional[np.ndarray]) -> dict:
    """The dense auction; above ``_DENSE_LIMIT`` entries warm-started from the optimum on the
    matrix's 16-nearest graph (the arcs (i, i) keep it feasible), whose prices are close for
    most rows. Measured, warm vs cold: folded decoders of ``make_stack(2, d=2304)`` F = 4096
    0.30 s vs 0.50 s, F = 8192 1.69 s vs 2.26 s, F = 16384 end to end in match() 22.3 s vs
    25.4 s; the ``sae_like_costs(heavy_tail=2.5)`` stress instance 2.1 s vs 1.2 s at 4096 but
    4.9 s vs 14.3 s at 8192 (the sparse solve is ~5 % of the warm time)."""
    n, m = c.shape
    init_v = init_r2c = None
    if c.size > _DENSE_LIMIT and min(n, m) > 16:
        d = _auction.dense_candidates(c, 16, 16)
        warm = _auction.solve_sparse(d["indptr"], d["indices"], d["costs"], n, m, unmatched_cost=lam,
                                     threads=_threads())
        init_v, init_r2c, _ = _warm(warm, lam, m)
    return _auction.solve_dense(c, unmatched_cost=lam, init_v=init_v, init_row_to_col=init_r2c, threads=_threads())


def _dense_exact(c: np.ndarray, k: int) -> Assignment:
    """The exact loop on a dense matrix: candidates and pricing from the matrix itself."""
    t0 = time.perf_counter()
    d = _auction.dense_candidates(c, k, k)
    g = CandidateGraph(d["indptr"], d["indices"], d["costs"], d["row_bound"], d["col_bound"],
                       d["row_offset"], d["col_offset"])

    def price(rows: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple:
        # the 16 pairs of smallest reduced cost per row, whatever their sign
        return _auction.dense_price(c, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 16)

    # No `rebuild` here: with the matrix in memory, pricing every row costs one cheap pass.
    n, m = c.shape
    return _exact_loop(n, m, g, price, None, 100, 16,
                       timings={"candidates": time.perf_counter() - t0}, warm_budget=_WARM_SAP_BUDGET["dense"])


def _threads() -> int:
    """Threads for the solver's passes over every row: torch's setting where torch is loaded
    (``MECHPERM_BENCH_THREADS`` and ``torch.set_num_threads`` then pin it), else every core."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else (os.cpu_count() or 1)


def _graph(d: dict) -> CandidateGraph:
    return CandidateGraph(d["indptr"], d["indices"], d["costs"], d["row_bound"], d["col_bound"],
                          d["row_offset"], d["col_offset"])


def _lower_bounds(g: CandidateGraph, u: np.ndarray, v: np.ndarray, cache: Optional[dict] = None) -> np.ndarray:
    """Per row, a lower bound on c_ij - u_i - v_j over the pairs left out of the graph.

    ``cache`` (a dict the caller keeps across rounds): the sorts that depend only on g's bound
    arrays, not on the duals (m = n = 262144: 0.145 -> 0.03 s a round)."""
    lb = _rank_bounds(g, u, v, cache)
    if g.row_norm is not None and g.col_norm is not None:
        lb = np.maximum(lb, _euclidean_bounds(g, u, v, cache))
    if g.col_slope is not None:
        open_rows = np.flatnonzero(~(lb >= 0.0))  # the envelope's queries only where they can help
        if len(open_rows):
            lb[open_rows] = np.maximum(lb[open_rows], _column_line_bounds(g, u, v, cache, open_rows))
    return lb


_SHIFT_FAILING = 64  # rows failing their bounds (and n / 1024) above which _shift_duals runs


def _shift_duals(g: CandidateGraph, raw: dict, lb: np.ndarray, share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Other optimal duals on g: u_i + t_i and v_σ(i) − t_i for each matched row i, with t_i =
    ``share`` × min(row i's bound lb_i, its least reduced cost over its other arcs), 0 where
    either is < 0 or not finite. Written into ``raw`` (the warm restart's start) and returned.

    Why: a solve leaves each column's price as high as its graph allows, i.e. at the reduced
    cost 0 of its last listed partner; the bound on the rows left out of its list is then ~0,
    and any slack charged to it (the screen's error) fails it for every row at once (bench
    pair, F = 65536, k = 32, screened: 9668 rows failed round 1 against 188 unscreened, nearly
    all from a handful of large-norm columns). Moving weight to rows whose own bound holds with
    room keeps every arc's reduced cost >= 0 (t_i <= red_il, t >= 0: red_il − t_i + t_l >= 0),
    the matched arcs at 0 and sum(u) + sum(v); a row's bound drops by at most t_i < lb_i, and
    every other bound can only rise."""
    u, v = raw["u"].copy(), raw["v"].copy()
    r2c = np.ascontiguousarray(raw["row_to_col"], np.int64)
    arcs = _auction.csr_margins(np.ascontiguousarray(g.indptr, np.int64), g.indices, g.costs, r2c, u, v,
                                threads=_threads())
    with np.errstate(invalid="ignore"):
        room = np.minimum(arcs, lb)
        t = np.where((r2c >= 0) & np.isfinite(room) & (room > 0.0), share * room, 0.0)
    rows = np.flatnonzero(t > 0.0)
    u[rows] += t[rows]
    v[r2c[rows]] -= t[rows]
    raw["u"], raw["v"] = u, v
    return u, v


def _column_line_bounds(g: CandidateGraph, u: np.ndarray, v: np.ndarray, cache: Optional[dict] = None,
                        rows: Optional[np.ndarray] = None) -> np.ndarray:
    """Per row (of ``rows``, default all), min_j (col_base_j − col_slope_j · y_i − v_j) − u_i
    over every column: one lower envelope of lines in y_i (the row norm), with each column's
    own dual."""
    rows = np.arange(len(u)) if rows is None else rows
    w = g.col_base - v
    if not (np.isfinite(w).all() and np.isfinite(g.col_slope).all() and np.isfinite(g.row_norm).all()):
        return np.full(len(rows), -np.inf)
    by = _col_slope_order(g, cache)
    # the rows' order by norm: a sort _bound_sorts takes (from 1024 to 2^17 rows)
    by_y = _row_norm_order(g, cache) if _walks(len(rows)) and _walks(len(u)) else None
    return _auction.envelope_min(w, g.col_slope, np.ascontiguousarray(g.row_norm[rows]), by_slope=by,
                                 by_query=None if by_y is None else _subset_order(by_y, rows, len(u)),
                                 threads=_threads()) - u[rows]


_WALK_MIN_ROWS = 1024  # below, the envelopes' binary searches cost what the walk does (F = 4096)


def _walks(queries: int) -> bool:
    """Whether the envelopes get this many queries' order (a walk along the hull, envelope.cpp):
    only then do the bounds sort the rows' queries (above 2^17 the binary searches win)."""
    return _WALK_MIN_ROWS <= queries <= _auction.ENVELOPE_WALK_MAX_QUERIES


def _subset_order(order: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """The order of x[rows] from x's (``order``), for ``rows`` distinct: positions in rows,
    taken in x's order (one pass, no sort)."""
    if len(rows) == n:
        return order
    at = np.full(n, -1, np.int64)
    at[rows] = np.arange(len(rows))
    sub = at[order]
    return sub[sub >= 0]


def _row_norm_order(g: CandidateGraph, cache: Optional[dict]) -> np.ndarray:
    """The rows by norm: the order of the queries of two envelopes (their walk, envelope.cpp)."""
    return _cached(cache, "query_y", (g.row_norm,), lambda: _argsort(g.row_norm))


def _row_cos_queries(g: CandidateGraph, cache: Optional[dict]) -> tuple:
    """(2 y_i κ_i per row, their order): the row-cosine envelope's queries."""
    s = _cached(cache, "query_ycos", (g.row_norm, g.row_cos), lambda: 2.0 * g.row_norm * g.row_cos)
    return s, _cached(cache, "order_ycos", (g.row_norm, g.row_cos), lambda: _argsort(s))


def _col_slope_order(g: CandidateGraph, cache: Optional[dict]) -> np.ndarray:
    return _cached(cache, "col_slope", (g.col_slope,), lambda: _argsort(g.col_slope))


def _rank_split(g: CandidateGraph, cache: Optional[dict]) -> tuple:
    """The rank bound's columns in the order of D = col_offset − col_bound, and each row's
    place t = row_offset − row_bound among them (neither depends on the duals)."""
    def split():
        a = g.col_offset if g.col_offset is not None else np.zeros(len(g.col_bound))
        b = g.row_offset if g.row_offset is not None else np.zeros(len(g.row_bound))
        D = a - g.col_bound
        order = _argsort(D)
        return order, _searchsorted(D[order], b - g.row_bound)

    return _cached(cache, "rank", (g.col_bound, g.col_offset, g.row_bound, g.row_offset), split)


def _norm_order(g: CandidateGraph, cache: Optional[dict]) -> np.ndarray:
    return _cached(cache, "slope_x", (g.col_norm,), lambda: _argsort(g.col_norm))


def _cos_slopes(g: CandidateGraph, cache: Optional[dict]) -> tuple:
    """(2 κ_j x_j per column, their order)."""
    slope = _cached(cache, "slope_cx", (g.col_cos, g.col_norm), lambda: 2.0 * g.col_cos * g.col_norm)
    return slope, _cached(cache, "order_cx", (g.col_cos, g.col_norm), lambda: _argsort(slope))


def _bound_sorts(g: CandidateGraph, cache: dict) -> None:
    """Fill ``cache`` with every sort :func:`_lower_bounds` takes of g's bound arrays (none
    depends on the duals): run on a thread during the first solve, whose shortest paths leave
    the other cores idle (F = 16384 on a 2-core VM: the first bounds 8.5 -> 1.7 ms). Arrays a
    bound would not sort (not finite) are skipped; a failure leaves the entry to the bounds.

    Below 2^19 rows each sort takes one thread: they are milliseconds, and on the solver's pool
    (which the solve's passes use meanwhile) they would make each of those passes start threads
    of its own (parallel.hpp). There the sorts (up to six) run side by side on up to
    ``_SORT_WORKERS`` threads instead: on an H100's 16-core host at F = 16384 the loop waited
    8-11 ms for them in sequence after a first solve of 2-8 ms (session 21)."""
    small = len(g.indptr) - 1 < 1 << 19
    tasks: list = []
    with np.errstate(invalid="ignore"):
        if g.row_bound is not None and g.col_bound is not None:
            tasks.append(lambda: _rank_split(g, cache))
        finite_x = g.col_norm is not None and g.row_norm is not None and bool(np.isfinite(g.col_norm).all())
        walk_y = g.row_norm is not None and _walks(len(g.row_norm)) and bool(np.isfinite(g.row_norm).all())
        if finite_x and g.row_cos is not None:
            tasks.append(lambda: _norm_order(g, cache))
            if walk_y and bool(np.isfinite(g.row_cos).all()):  # the rows' queries, sorted
                tasks.append(lambda: _row_cos_queries(g, cache))
        if finite_x and g.col_cos is not None and bool(np.isfinite(g.col_cos).all()):
            tasks.append(lambda: _cos_slopes(g, cache))
        finite_slope = g.col_slope is not None and bool(np.isfinite(g.col_slope).all())
        if finite_slope:
            tasks.append(lambda: _col_slope_order(g, cache))
        if walk_y and ((finite_x and g.col_cos is not None) or finite_slope):
            tasks.append(lambda: _row_norm_order(g, cache))

    def run(batch: list) -> None:
        before, _sort_threads.n = getattr(_sort_threads, "n", None), 1 if small else None
        try:
            with np.errstate(invalid="ignore"):  # as in _rank_bounds (an infinite k-th less another)
                for task in batch:
                    task()
        except Exception:  # noqa: BLE001  (the bounds sort again, and raise there)
            pass
        finally:
            _sort_threads.n = before

    workers = min(len(tasks), _SORT_WORKERS) if small else 1
    # the rank split (a sort and a search of every row) alone, the other sorts shared out
    batches = [tasks[:1]] + [tasks[1:][w::workers - 1] for w in range(workers - 1)] if workers > 1 else [tasks]
    helpers = [threading.Thread(target=run, args=(b,), name="mechperm-bound-sort", daemon=True) for b in batches[1:]]
    for t in helpers:
        t.start()
    run(batches[0])
    for t in helpers:
        t.join()


# Threads for a small graph's bound sorts side by side: a core is left to the first solve.
_SORT_WORKERS = max(1, min(4, (os.cpu_count() or 1) - 1))

_sort_threads = threading.local()  # .n: threads for this thread's sorts (None: _threads())


def _argsort(x: np.ndarray) -> np.ndarray:
    """``np.argsort(x, kind="stable")`` on the solver's threads: the bounds sort per-column
    arrays once per graph (F = 1M: four sorts and a search of every row, ~1 s a match in
    numpy on one thread), and since session 22 the rows' envelope queries (up to 2^17 rows),
    which the envelopes then walk in order (a radix sort: F = 16384 on one thread ~0.2 ms
    against numpy's 1.2 ms)."""
    return _auction.argsort(np.ascontiguousarray(x, np.float64),
                            threads=getattr(_sort_threads, "n", None) or _threads())


def _searchsorted(sorted_: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_, queries, side="left")`` on the solver's threads."""
    return _auction.searchsorted(np.ascontiguousarray(sorted_, np.float64), np.ascontiguousarray(queries, np.float64),
                                 threads=getattr(_sort_threads, "n", None) or _threads())


def _cached(cache: Optional[dict], key: str, arrays: tuple, make: Callable[[], Any]) -> Any:
    """make(), kept in cache[key] while the same array objects are the inputs."""
    if cache is None:
        return make()
    hit = cache.get(key)
    if hit is not None and len(hit[0]) == len(arrays) and all(a is b for a, b in zip(hit[0], arrays)):
        return hit[1]
    value = make()
    cache[key] = (arrays, value)
    return value


def _rank_bounds(g: CandidateGraph, u: np.ndarray, v: np.ndarray, cache: Optional[dict] = None) -> np.ndarray:
    """The bound from row_bound / col_bound (k-th costs) and their offsets."""
    n, m = len(u), len(v)
    if g.row_bound is None and g.col_bound is None:
        return np.full(n, -np.inf)
    with np.errstate(invalid="ignore"):
        if g.col_bound is None:
            a = g.col_offset if g.col_offset is not None else np.zeros(m)
            lb = g.row_bound - u + (a - v).min(initial=np.inf)
        elif g.row_bound is None:
            b = g.row_offset if g.row_offset is not None else np.zeros(n)
            lb = (b - u) + (g.col_bound - v).min(initial=np.inf)
        else:
            # min_j max(X_i + A_j, Y_i + S_j) = X_i + h(Y_i - X_i), h(t) = min_j max(A_j, S_j + t):
            # with columns sorted by D_j = A_j - S_j, columns with D_j >= t contribute A_j (a
            # suffix minimum) and the others S_j + t (a prefix minimum): O(log m) per row.
            # X = row_bound - u, Y = b - u, S = col_bound - v. D = A - S = a - col_bound and t =
            # Y - X = b - row_bound do not depend on the duals: their sort and search are cached.
            # (With the duals' rounding a column may land on the other side of t: either term
            # of its max still bounds it from below.) The prefix and suffix minima and the rows'
            # gathers run natively, on the threads (1M, 2 threads: 18 ms a call, numpy's 45 ms).
            order, idx = _rank_split(g, cache)
            f64 = lambda x: None if x is None else np.ascontiguousarray(x, np.float64)  # noqa: E731
            lb = _auction.rank_bounds(order, idx, f64(g.row_bound), f64(g.col_bound), f64(g.row_offset),
                                      f64(g.col_offset), f64(u), f64(v), threads=_threads())
    lb[np.isnan(lb)] = -np.inf
    return lb


_EUCLID_SLACK = 1e-5  # relative to |a|² + |b|²: float32 rounding of the GEMM costs


def _euclidean_bounds(g: CandidateGraph, u: np.ndarray, v: np.ndarray, cache: Optional[dict] = None) -> np.ndarray:
    """Per row, a lower bound on c_ij − u_i − v_j over the pairs left out, from
    c_ij >= (1 − slack)(y_i² + x_j²) − 2 y_i x_j cos with cos <= row_cos[i] and <= col_cos[j]
    (y, x the norms): min over j of lines in y_i (or in y_i·row_cos[i]), one lower envelope."""
    y, x = g.row_norm, g.col_norm
    keep = 1.0 - _EUCLID_SLACK
    base = keep * y * y - u
    w = keep * x * x - v
    lb = np.full(len(u), -np.inf)
    if not (np.isfinite(base).all() and np.isfinite(w).all()):
        return lb
    if g.row_cos is not None:  # min_j (w_j − x_j · 2 y_i κ_i)
        by_x = _norm_order(g, cache)
        s, by_s = _row_cos_queries(g, cache) if _walks(len(y)) else (2.0 * y * g.row_cos, None)
        lb = np.maximum(lb, base + _auction.envelope_min(w, x, s, by_slope=by_x, by_query=by_s, threads=_threads()))
    if g.col_cos is not None:  # min_j (w_j − (2 κ_j x_j) · y_i)
        slope, by_cx = _cos_slopes(g, cache)
        by_y = _row_norm_order(g, cache) if _walks(len(y)) else None
        lb = np.maximum(lb, base + _auction.envelope_min(w, slope, y, by_slope=by_cx, by_query=by_y,
                                                         threads=_threads()))
    return lb


def _merge(g: CandidateGraph, rows, cols, costs, n: int) -> CandidateGraph:
    """Add arcs (the first of duplicates; none already in the graph, whose cost stays) to g's
    CSR, sorted by (row, column) like it.

    New arrays, then the native insert (``_auction.csr_insert_inplace``, :class:`_ArcBuffer`'s):
    only the new arcs are sorted (F = 262144 on a GPU host: ~50M arcs, where re-sorting
    everything took seconds a round, and numpy's masked inserts ~60 ms a merge at 12.5M arcs).
    """
    rows = np.ascontiguousarray(rows, np.int64)
    cols = np.ascontiguousarray(cols, np.int64)
    costs = np.asarray(costs)
    idx_dtype, out_dtype = _merged_dtypes(g, cols, costs)
    if len(rows) == 0:
        return dataclasses.replace(g, costs=g.costs.astype(out_dtype, copy=False))
    nnz = len(g.indices)
    indices, w = np.empty(nnz + len(rows), idx_dtype), np.empty(nnz + len(rows), out_dtype)
    indices[:nnz], w[:nnz] = g.indices, g.costs
    indptr = np.array(g.indptr, np.int64)
    added = _auction.csr_insert_inplace(indptr, indices, w, rows, cols, np.ascontiguousarray(costs, out_dtype),
                                        threads=_threads())
    return dataclasses.replace(g, indptr=indptr, indices=indices[: nnz + added], costs=w[: nnz + added])


def _merged_dtypes(g: CandidateGraph, cols: np.ndarray, costs: np.ndarray) -> tuple:
    """(indices dtype, costs dtype) of g plus arcs to ``cols`` at ``costs``: int32 indices stay
    while the columns fit; costs take the wider of the two."""
    wide = g.indices.dtype == np.int64 or int(cols.max(initial=0)) >= 2**31
    return (np.int64 if wide else np.int32), np.result_type(g.costs, costs)


def _touched(cap: int, idx_dtype, out_dtype) -> tuple:
    """(indices, costs) arrays of ``cap`` arcs, written once: their pages are faulted in now."""
    idx, cst = np.empty(cap, idx_dtype), np.empty(cap, out_dtype)
    idx.fill(0)
    cst.fill(0)
    return idx, cst


class _ArcBuffer:
    """The exact loop's graph arrays with room to grow: each round's new arcs go in place
    (``_auction.csr_insert_inplace``), and new arrays (25 % larger) only when the room is used
    up. A fresh 150 MB array per merge (F = 65536, 12.5M arcs) cost ~0.1 s of first-touch page
    faults on a VM, more than the copy itself. The graphs it returns share its buffers: only
    the last one is valid (the loop keeps no other).

    With ``threads`` >= PARALLEL_MERGE_THREADS, two sets of arrays take turns instead: each merge
    writes the other one, its rows merged on the threads (``_auction.csr_insert_into``), where
    the in-place edit moves every arc on one thread (F = 1M, 94M arcs: 0.23 s a merge on this
    2-core VM). Twice the memory for the arcs; the 2-core machines keep the in-place edit."""

    PARALLEL_MERGE_THREADS = 4
    RESERVE_ARCS = 1 << 22  # graphs from which the first merge's arrays are made ahead (reserve)

    def __init__(self, threads: int = 1) -> None:
        self.idx: Optional[np.ndarray] = None
        self.cst: Optional[np.ndarray] = None
        self.threads = threads
        self.spare: Optional[tuple] = None  # the other (idx, cst) of the parallel merges
        self.reserved: Optional[tuple] = None  # (g.indices, g.costs, idx, cst): see reserve
        self._reserving: Optional[threading.Thread] = None

    def reserve(self, g: CandidateGraph) -> None:
        """Make the first merge's arrays now, on a thread (the exact loop's first solve leaves
        cores idle): 25 % more than g's arcs, touched (the in-place edit's holding a copy of
        them), so that the merge neither allocates nor takes the first-touch page faults. 1M
        rows, 94M arcs + 3.8M, this 2-core VM, a fresh process: first merge 1.57-1.69 ->
        0.38-0.63 s in place, 0.86-0.97 -> 0.38-0.40 s on 4 threads; in a process that freed
        such arrays before (bench_host_bounds.py, 6 runs) 0.24-0.27 -> 0.16-0.19 s."""
        if len(g.indices) < self.RESERVE_ARCS:
            return

        def make() -> None:
            nnz, cap = len(g.indices), int(1.25 * len(g.indices)) + 1024
            if self.threads >= self.PARALLEL_MERGE_THREADS:  # written whole by the merge
                idx, cst = _touched(cap, g.indices.dtype, g.costs.dtype)
            else:
                idx, cst = np.empty(cap, g.indices.dtype), np.empty(cap, g.costs.dtype)
                idx[:nnz], cst[:nnz] = g.indices, g.costs
                idx[nnz:], cst[nnz:] = 0, 0
            self.reserved = (g.indices, g.costs, idx, cst)

        self._in_background(make)

    def _in_background(self, make: Callable[[], None]) -> None:
        self._reserving = threading.Thread(target=make, name="mechperm-arc-buffer", daemon=True)
        self._reserving.start()

    def _join(self) -> None:
        if self._reserving is not None:
            self._reserving.join()
            self._reserving = None

    def _prepare_spare(self, cap: int, idx_dtype, out_dtype) -> None:
        """The parallel merges' other set, made and touched on a thread after the first merge
        (the next merge writes it, a round of solving and pricing later)."""
        self._in_background(lambda: setattr(self, "spare", _touched(cap, idx_dtype, out_dtype)))

    def _take_reserved(self, g: CandidateGraph, need: int, idx_dtype, out_dtype) -> Optional[tuple]:
        """The reserved arrays if they were made for g (the in-place edit: from g's very arcs)
        and fit this merge."""
        self._join()
        held, self.reserved = self.reserved, None
        if (held is None or held[0] is not g.indices or held[1] is not g.costs or len(held[2]) < need
                or held[2].dtype != idx_dtype or held[3].dtype != out_dtype):
            return None
        return held[2], held[3]

    def _holds(self, g: CandidateGraph, arrays: Optional[tuple]) -> bool:
        return (arrays is not None and g.indices.dtype == arrays[0].dtype and g.costs.dtype == arrays[1].dtype
                and g.indices.ctypes.data == arrays[0].ctypes.data and g.costs.ctypes.data == arrays[1].ctypes.data)

    def merge(self, g: CandidateGraph, rows, cols, costs, n: int) -> CandidateGraph:
        rows = np.ascontiguousarray(rows, np.int64)
        cols = np.ascontiguousarray(cols, np.int64)
        if len(rows) == 0:
            return g
        idx_dtype, out_dtype = _merged_dtypes(g, cols, np.asarray(costs))
        costs = np.ascontiguousarray(costs, out_dtype)
        nnz = len(g.indices)
        need = nnz + len(rows)
        if self.threads >= self.PARALLEL_MERGE_THREADS and g.indices.dtype == idx_dtype and g.costs.dtype == out_dtype:
            # g lives in one set (or in the caller's arrays): write the other
            self._join()
            mine = (self.idx, self.cst) if self.idx is not None else None
            dst = self.spare if self._holds(g, mine) else mine
            if dst is None:
                dst = self._take_reserved(g, need, idx_dtype, out_dtype)
            if dst is None or len(dst[0]) < need or dst[0].dtype != idx_dtype or dst[1].dtype != out_dtype:
                cap = int(1.25 * need) + 1024
                dst = (np.empty(cap, idx_dtype), np.empty(cap, out_dtype))
            indptr = np.empty(n + 1, np.int64)
            added = _auction.csr_insert_into(np.ascontiguousarray(g.indptr, np.int64), g.indices, g.costs, rows, cols,
                                             costs, indptr, dst[0], dst[1], threads=self.threads)
            if self._holds(g, mine):
                self.spare = mine
            self.idx, self.cst = dst
            if self.spare is None and len(dst[0]) >= self.RESERVE_ARCS:  # the first merge: the other set
                self._prepare_spare(len(dst[0]), idx_dtype, out_dtype)
            return dataclasses.replace(g, indptr=indptr, indices=dst[0][:nnz + added], costs=dst[1][:nnz + added])
        ours = self._holds(g, (self.idx, self.cst) if self.idx is not None else None)
        if not ours and self.idx is None:  # the first merge: g's arcs copied ahead (reserve)?
            held = self._take_reserved(g, need, idx_dtype, out_dtype)
            if held is not None:
                self.idx, self.cst = held
                ours = True
        if not ours or len(self.idx) < need or g.indices.dtype != idx_dtype or g.costs.dtype != out_dtype:
            cap = int(1.25 * need) + 1024
            idx, cst = np.empty(cap, idx_dtype), np.empty(cap, out_dtype)
            idx[:nnz], cst[:nnz] = g.indices, g.costs
            self.idx, self.cst = idx, cst
        indptr = np.array(g.indptr, np.int64)
        added = _auction.csr_insert_inplace(indptr, self.idx, self.cst, rows, cols, costs, threads=self.threads)
        return dataclasses.replace(g, indptr=indptr, indices=self.idx[: nnz + added], costs=self.cst[: nnz + added])


def _union(g: CandidateGraph, h: CandidateGraph, n: int) -> CandidateGraph:
    """Arcs of both graphs (g's cost where both have an arc), h's bounds."""
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(h.indptr))
    merged = _merge(g, rows, h.indices.astype(np.int64), h.costs.astype(np.float64), n)
    return dataclasses.replace(h, indptr=merged.indptr, indices=merged.indices, costs=merged.costs)


def _in_graph(g: CandidateGraph, rows: np.ndarray, cols: np.ndarray, m: int) -> np.ndarray:
    """Which pairs are arcs of g (its CSR is sorted by row, then column)."""
    if len(rows) == 0 or len(g.indices) == 0:
        return np.zeros(len(rows), bool)
    return _arc_positions(g, rows, cols) >= 0


def _arc_positions(g: CandidateGraph, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Where each pair sits among g's arcs (-1: not an arc)."""
    if len(rows) == 0 or len(g.indices) == 0:
        return np.full(len(rows), -1, np.int64)
    return _auction.csr_find(np.ascontiguousarray(g.indptr, np.int64), np.ascontiguousarray(g.indices),
                             np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cols, np.int64),
                             threads=_threads())


def _check_priced(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, n: int, m: int) -> None:
    """What a ``price_rows`` callback returned: rows and columns in range, finite costs."""
    if not (len(rows) == len(cols) == len(costs)):
        raise ValueError(f"price_rows returned {len(rows)} rows, {len(cols)} cols and {len(costs)} costs")
    for name, x, size in (("rows", rows, n), ("cols", cols, m)):
        if len(x) and (x.min() < 0 or x.max() >= size):
            bad = x[(x < 0) | (x >= size)][0]
            raise ValueError(f"price_rows returned {name} index {int(bad)}, out of range [0, {size})")
    if len(costs) and not np.isfinite(costs).all():
        at = int(np.flatnonzero(~np.isfinite(costs))[0])
        raise ValueError(f"price_rows returned a non-finite cost {costs[at]} for the pair ({int(rows[at])}, {int(cols[at])})")


def _distinct(rows: np.ndarray, n: int) -> np.ndarray:
    """``np.unique(rows)`` for rows in [0, n), by marks instead of a sort (F = 1M, a pricing
    round's 3.8M pairs: 76 ms in np.unique on a 2-core VM)."""
    mark = np.zeros(n, bool)
    mark[rows] = True
    return np.flatnonzero(mark)


def _keep_most_negative(rows, cols, costs, red, per_row: int):
    """Per row, the ``per_row`` pairs of least reduced cost ``red`` (in no particular order)."""
    if len(rows) == 0 or np.bincount(rows).max() <= per_row:
        # The pricers return at most that many a row: no sort (a 2M-pair pass, 128 pairs a
        # row, spent 0.5 s in the lexsort on this VM; a 1M-row round-1 pass ~67M pairs).
        return rows, cols, costs, red
    order = np.lexsort((red, rows))
    rows, cols, costs, red = rows[order], cols[order], costs[order], red[order]
    start = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - start) < per_row
    return rows[keep], cols[keep], costs[keep], red[keep]


# A settled row's pairs: max(_SUSPECT_MULT x its failing ones, _SUSPECT_MIN), the least bounds
# first; the rest's least bound is the row's bound from then on (pricing only the failing ones
# left it at ~0, and the row failing again a round later).
_SUSPECT_MULT, _SUSPECT_MIN = 2, 256


def _suspect_columns(m: int) -> int:
    """Failing columns per row up to which a row is priced pair by pair, not whole."""
    return max(256, m // 64)


def _bound_suspects(g: CandidateGraph, rows: np.ndarray, u: np.ndarray, v: np.ndarray, limit: int,
                    since: Optional[tuple] = None) -> tuple:
    """The pairs of ``rows`` left out of g whose own bound is < 0 at these duals: per pair the
    largest of the families :func:`_lower_bounds` takes row minima of (and ``since`` = (a [n],
    b [m]): a_i + b_j, the bound a row's earlier pricing left). A row with at most ``limit``
    such pairs is settled by the costs of its max(2 × that, 256) pairs of least bound: every
    other pair left out is >= the least bound among them. Returns (mask of the settled rows,
    their pairs' rows and columns, per settled row that bound) (``_auction.suspect_pairs``)."""
    n, m = len(u), len(v)
    zero_m, zero_n = np.zeros(m), np.zeros(n)
    families = []
    if g.row_bound is not None:
        families.append((g.row_bound - u, (g.col_offset if g.col_offset is not None else zero_m) - v, None, None))
    if g.col_bound is not None:
        families.append(((g.row_offset if g.row_offset is not None else zero_n) - u, g.col_bound - v, None, None))
    if g.row_norm is not None and g.col_norm is not None:
        keep = 1.0 - _EUCLID_SLACK
        y, x = g.row_norm, g.col_norm
        base, w = keep * y * y - u, keep * x * x - v
        if np.isfinite(base).all() and np.isfinite(w).all():
            if g.row_cos is not None:
                families.append((base, w, 2.0 * y * g.row_cos, x))
            if g.col_cos is not None:
                families.append((base, w, y, 2.0 * g.col_cos * x))
    if g.col_slope is not None:
        w = g.col_base - v
        if np.isfinite(w).all() and np.isfinite(g.col_slope).all() and np.isfinite(g.row_norm).all():
            families.append((-u, w, g.row_norm, g.col_slope))
    if since is not None:
        families.append((since[0], since[1], None, None))
    families = [tuple(None if x is None else np.ascontiguousarray(x, np.float64) for x in f) for f in families]
    return _auction.suspect_pairs(np.ascontiguousarray(g.indptr, np.int64), g.indices,
                                  np.ascontiguousarray(rows, np.int64), m, families, limit, _SUSPECT_MULT,
                                  _SUSPECT_MIN, _threads())


def _recheck_columns(m: int) -> int:
    """Columns per row up to which a priced row whose bound broke is re-checked pair by pair
    rather than priced whole. Measured on the CPU's screened path (make_stack, d = 2304): F =
    16384, 256: 10 -> 6 rounds, priced rows 5212 -> 3886, exact loop 2.7-3.3 -> 2.0 s (1024: 3526
    rows); F = 65536, 256: priced rows 25.8k -> 22.8k, pricing 15.2 -> 14.4 s; 1024: 19.8k,
    13.3 s (7.4M pairs costed)."""
    return max(256, m // 64)


def _moved_columns(slack: np.ndarray, delta: np.ndarray, limit: int) -> tuple:
    """For rows priced in one earlier round: every pair (i, j) not returned then has now a
    reduced cost >= slack_i + delta_j (slack_i = ref_m_i + u_then_i - u_now_i, delta_j = v_then_j
    - v_now_j). Per row, the columns with delta_j < -slack_i can break that, if at most
    ``limit`` do: (ok [rows], counts [rows], columns by delta [<= limit + 1]: row i's are the
    first counts[i], rest [rows]: the bound on the row's other columns)."""
    m = len(delta)
    L = min(limit, m)
    part = np.argpartition(delta, L)[: L + 1] if L < m else np.arange(m)
    order = part[np.argsort(delta[part], kind="stable")]
    ds = delta[order]
    with np.errstate(invalid="ignore"):
        cnt = np.searchsorted(ds, -slack, side="left")
        rest = np.full(len(slack), np.inf)
        inner = cnt < len(ds)
        rest[inner] = slack[inner] + ds[cnt[inner]]
    return cnt <= L, cnt, order, rest


def _recheck_moved_columns(need, g, u, v, m, ref_round, ref_m, ref_u, ref_v, price_pairs, lb, clean,
                           stats) -> tuple:
    """Rows of ``need`` priced in earlier rounds whose bound broke on at most
    :func:`_recheck_columns` columns (:func:`_moved_columns`): those pairs get their costs from
    ``price_pairs``, which settles the row (its lb set here: the least reduced cost of those
    left out of the graph, or the other columns' bound). Returns (need without those rows,
    (rows, cols, costs) of their violating pairs, how many rows have one)."""
    old = need[ref_round[need] >= 0]
    settled, pair_rows, pair_cols, rests = [], [], [], []
    for r in np.unique(ref_round[old]):
        rows = old[ref_round[old] == r]
        slack = ref_m[rows] + (ref_u[rows] - u[rows])
        ok, cnt, order, rest = _moved_columns(slack, ref_v[int(r)] - v, _recheck_columns(m))
        rows, cnt = rows[ok], cnt[ok]
        settled.append(rows)
        rests.append(rest[ok])
        start = np.repeat(np.cumsum(cnt) - cnt, cnt)
        pair_rows.append(np.repeat(rows, cnt))
        pair_cols.append(order[np.arange(int(cnt.sum())) - start])
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if not settled:
        return need, empty, 0
    rows, rest = np.concatenate(settled), np.concatenate(rests)
    if len(rows) == 0:
        return need, empty, 0
    pr, pc = np.concatenate(pair_rows), np.concatenate(pair_cols)
    out = ~_in_graph(g, pr, pc, m)  # the solve left the graph's arcs at red >= 0
    pr, pc = pr[out], pc[out]
    pw = np.asarray(price_pairs(pr, pc))
    if pw.shape != pr.shape:
        raise ValueError(f"price_pairs returned {pw.shape[0] if pw.ndim else pw} costs for {len(pr)} pairs")
    if pw.dtype != np.float32:
        pw = pw.astype(np.float64, copy=False)
    _check_priced(pr, pc, pw, len(u), m)
    red = pw.astype(np.float64) - u[pr] - v[pc]
    low = np.full(len(u), np.inf)
    low[rows] = rest
    np.minimum.at(low, pr, red)
    lb[rows] = low[rows]
    bad = red < -_REL_TOL * (np.abs(pw) + np.abs(u[pr]) + np.abs(v[pc]))
    clean[pr[bad]] = False
    stats["rechecked_rows"] += len(rows)
    stats["rechecked_pairs"] += len(pr)
    return np.setdiff1d(need, rows, assume_unique=True), (pr[bad], pc[bad], pw[bad]), len(np.unique(pr[bad]))


def _partners(row_to_col: np.ndarray, cols: list, priced: list, m: int) -> np.ndarray:
    """The rows matched now to any of ``cols`` (arrays), less those in ``priced`` (arrays)."""
    if not cols:
        return np.empty(0, np.int64)
    col_to_row = np.full(m, -1, np.int64)
    matched = np.flatnonzero(row_to_col >= 0)
    col_to_row[row_to_col[matched]] = matched
    rows = np.unique(col_to_row[np.concatenate(cols)])
    rows = rows[rows >= 0]
    return np.setdiff1d(rows, np.concatenate(priced), assume_unique=True) if priced else rows


def _ill_conditioned(raw: dict) -> bool:
    """Prices far larger than the assigned costs: float64 lost their resolution."""
    return raw["price_scale"] > 1e6 * raw["cost_scale"] + 1e-300


# Work budget (x the arcs) of a warm restart's shortest paths before the auction takes over,
# by caller. The auction's restarts change the rounds that follow, so each was measured end to
# end: match's loop (assign_exact) on make_stack F = 65536, 1x: 158 s, 8 rounds; 16x: 178 s,
# 17 rounds (F = 16384: native solver 1.35 vs 1.09 s). assign()'s loop on a dense matrix
# (_dense_exact), SAE-like 4096 / 8192: 1x 0.37 / 0.86 s, 16x 0.29 / 0.56 s (paths alone:
# 0.28 / 0.65 s).
_WARM_SAP_BUDGET = {"assign_exact": 1.0, "dense": 16.0}


def _warm(raw: dict, dummies: Optional[np.ndarray], m: int) -> tuple:
    """Warm start (init_v, init_row_to_col, eps_start) from a solve, unless ill-conditioned
    (see _exact_loop): then a cold start."""
    if _ill_conditioned(raw):
        return None, None, 0.0
    init_v = raw["v"] if dummies is None else np.concatenate([raw["v"], raw["v_dummy"]])
    r2c = raw["row_to_col"].copy()
    if dummies is not None:
        un = r2c < 0
        r2c[un] = m + np.flatnonzero(un)
    # 0: the automatic schedule, which for a warm start tries shortest augmenting paths from it
    # first and runs the auction from the worst violation if they grow long (auction.hpp)
    return init_v, r2c, 0.0


def _exact_loop(n, m, g, price_rows, lam, max_rounds, max_new, timings,
                rebuild=None, complete=None, warm_budget=_WARM_SAP_BUDGET["assign_exact"],
                price_pairs=None, pair_pricing: bool = False) -> Assignment:
    """Solve on g; bound the pairs left out (candidate bounds, and per-row bounds from earlier
    pricing); price the rows whose bound is < 0; add the pairs returned; warm-restart
    (shortest augmenting paths from the previous prices and assignment, the auction where they
    grow long; only the rows given arcs are checked for a better column) until pricing finds
    no pair of negative reduced cost left out. Slack columns cover infeasible graphs; a cold
    re-solve covers duals that lost float64 resolution (see `_ill_conditioned`)."""
    t_start = time.perf_counter() - timings.get("candidates", 0.0)
    timings = {"candidates": timings.get("candidates", 0.0), "solve": 0.0, "bounds": 0.0,
               "pricing": 0.0}
    stats = {"phases": 0, "bids": 0, "reverse_bids": 0, "augmentations": 0, "sap_trial": 0,
             "priced_rows": 0, "deferred_rows": 0, "rechecked_rows": 0, "rechecked_pairs": 0, "partner_rows": 0,
             "pair_priced_rows": 0, "pair_priced_pairs": 0, "shifted_rows": 0, "added_edges": 0, "rebuilds": 0,
             "slack": 0}
    slack = None
    # Whether the graph has an assignment of every row is left to the first solve (its shortest
    # paths prove it where they finish, a maximum matching decides before any auction phase):
    # a separate maximum matching up front repeated the paths' work (0.81 s of the H100's 1M
    # match, session 16). Arcs are only ever added, so a graph once feasible stays so.
    unproven = lam is None

    def solve(**kw) -> dict:
        nonlocal g, slack, unproven
        try:
            raw = _auction.solve_sparse(g.indptr, g.indices, g.costs, n, m, unmatched_cost=lam if lam is not None
                                        else slack, check_feasible="lazy" if unproven else False, **kw)
        except InfeasibleError:
            if not unproven:
                raise
            if complete is not None:  # the caller's arcs make it feasible
                g = complete(g)
            else:  # slack columns at a large cost, one per row
                size, _ = _auction.max_matching(g.indptr, g.indices, n, m, costs=np.ascontiguousarray(g.costs))
                span = float(g.costs.max(initial=0.0) - min(0.0, g.costs.min(initial=0.0)))
                slack = np.full(n, (span + 1.0) * (n + 1))
                stats["slack"] = n - size
            unproven = False
            kw.update(init_v=None, init_row_to_col=None, eps_start=0.0, changed_rows=None, sap_budget=1.0,
                      check_arcs=True)
            raw = _auction.solve_sparse(g.indptr, g.indices, g.costs, n, m, unmatched_cost=slack,
                                        check_feasible=False, **kw)
        unproven = False
        return raw

    init_v = init_r2c = None
    eps_start = 0.0
    certified = polished = False
    rounds = rebuilds = 0
    ref_m, ref_u = np.zeros(n), np.zeros(n)
    ref_round = np.full(n, -1, np.int64)
    clean = np.zeros(n, bool)  # the row's last pricing found no violating pair
    arcs = _ArcBuffer(_threads())
    arcs.reserve(g)  # large graphs: the first merge's arrays made during the first solve
    changed_rows = np.empty(0, np.int64)  # rows given arcs since the last solve
    bounds_cache: dict = {}  # the bounds' sorts, fixed while g's bound arrays are
    # ... taken on a thread while the first solve runs (its paths are sequential)
    sorter: Optional[threading.Thread] = threading.Thread(target=_bound_sorts, args=(g, bounds_cache),
                                                          name="mechperm-bound-sorts", daemon=True)
    sorter.start()
    checked, g_checked = None, object()  # g_checked: a token, renewed when g's arcs come unchecked
    ref_v: dict = {}
    for rounds in range(1, max_rounds + 1):
        t0 = time.perf_counter()
        # The first solve settles feasibility (solve() above), and arcs are only ever added.
        # A warm restart checks only the rows given new arcs for a better column (the others
        # were tight at these prices): at F = 65536, 10M arcs, a third of each restart.
        changed = changed_rows if init_v is not None and eps_start <= 0 else None
        # Every arc is checked (column range, finite cost) in the first solve on a graph; the
        # arcs added later were checked as priced (F = 131072, 22M arcs: 2 of a warm solve's
        # ~5 passes over every arc).
        raw = solve(init_v=init_v, init_row_to_col=init_r2c, eps_start=eps_start, threads=_threads(),
                    changed_rows=changed, sap_budget=warm_budget if init_v is not None else 1.0,
                    check_arcs=checked is not g_checked)
        dummies = lam if lam is not None else slack  # slack: set by the solve if the graph is infeasible
        checked = g_checked
        timings["solve"] += time.perf_counter() - t0
        for key in ("phases", "bids", "reverse_bids", "augmentations"):
            stats[key] += int(raw[key])
        if raw["sap_trial"]:  # the last cold solve's shortest-paths-first outcome (auction.hpp)
            stats["sap_trial"] = int(raw["sap_trial"])
        u, v = raw["u"], raw["v"]
        u_solved = u  # _shift_duals returns new arrays
        t0 = time.perf_counter()
        if sorter is not None:
            sorter.join()
            sorter = None
        lb = _lower_bounds(g, u, v, bounds_cache)
        need = np.flatnonzero(~(lb >= 0.0))
        if dummies is None and len(need) > max(_SHIFT_FAILING, n // 1024):
            # Many rows fail: move each matched pair's dual weight from its column to its row
            # where the row's own bound and arcs leave room (see _shift_duals), then bound again.
            u, v = _shift_duals(g, raw, lb)
            stats["shifted_rows"] += int(np.count_nonzero(u != u_solved))
            lb = _lower_bounds(g, u, v, bounds_cache)
            need = np.flatnonzero(~(lb >= 0.0))
        timings["bounds"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if rebuild is not None and rebuilds < 2 and len(need) > max(256, n // 8):
            # Many rows fail the bounds: one full pass selecting candidates by reduced cost
            # beats pricing them row by row, and leaves bounds that hold at these duals.
            rebuilds += 1
            before = len(g.indices)
            g = _union(g, rebuild(u, v), n)
            g_checked = object()  # the rebuilt graph's arcs: checked by the next solve
            stats["added_edges"] += len(g.indices) - before
            stats["rebuilds"] = rebuilds
            timings["pricing"] += time.perf_counter() - t0
            lb = _lower_bounds(g, u, v, bounds_cache)
            need = np.flatnonzero(~(lb >= 0.0))
            if len(g.indices) > before:
                # Many rows change: a cold auction beats one augmenting path per row (and a
                # warm auction from prices this far off starts a price war).
                init_v = init_r2c = None
                eps_start = 0.0
                continue
            t0 = time.perf_counter()
        # Rows priced in earlier rounds keep a bound of their own: red_now = red_then
        # + (u_then - u_now) + (v_then - v_now), and shortest-path warm restarts only move
        # the duals of the few columns on augmenting paths.
        if ref_v:
            dv = {r: float(np.min(vr - v, initial=np.inf)) for r, vr in ref_v.items()}
            known = ref_round >= 0
            shift = np.array([dv[r] for r in ref_round[known]])
            lb[known] = np.maximum(lb[known], ref_m[known] + (ref_u[known] - u[known]) + shift)
            need = np.flatnonzero(~(lb >= 0.0))
        found: list = []  # pairs priced this round and left out of the graph
        violating_cols: list = []  # the columns of the violating pairs among them
        priced_now: list = []
        violations = 0
        if price_pairs is not None and ref_v and len(need):
            # A few columns moving against a priced row's bound (a warm restart's augmenting
            # paths) break it: their pairs are costed instead of the whole row priced again.
            need, rechecked, violations = _recheck_moved_columns(
                need, g, u, v, m, ref_round, ref_m, ref_u, ref_v, price_pairs, lb, clean, stats)
            if len(rechecked[0]):
                found.append(rechecked)
                violating_cols.append(rechecked[1])
        low = lb.copy()

        def price(rows: np.ndarray) -> int:
            """Price these rows (their bounds from now on), keep the pairs left out; the
            number of violations. Rows priced in earlier rounds whose pair bounds fail on few
            columns get those pairs' costs instead of a whole row (:func:`_bound_suspects`);
            a row's first pricing takes the whole row, whose best pairs anticipate the next
            rounds (pairs alone there: make_stack F = 16384, 4 -> 7 rounds)."""
            violations = 0
            if pair_pricing:
                violations, rows = price_pairs_of(rows)
            if len(rows):
                violations += absorb(rows, price_rows(rows, u, v))
            return violations

        def price_pairs_of(rows: np.ndarray) -> tuple:
            """Pair pricing of the rows priced before whose bounds fail on few columns: the
            violations, and the rows left to price whole."""
            violations = 0
            again = rows[ref_round[rows] >= 0]
            settled = np.zeros(n, bool)
            # by the round that priced them last (read before any is absorbed: that moves it)
            groups = [(r, again[ref_round[again] == r]) for r in np.unique(ref_round[again])]
            for r, group in groups:
                since = (ref_m + (ref_u - u), ref_v[int(r)] - v)  # what the row's pricing then proved
                ok, pr, pc, bound = _bound_suspects(g, group, u, v, _suspect_columns(m), since)
                if not ok.any():
                    continue
                pw = np.asarray(price_pairs(pr, pc))
                if pw.shape != pr.shape:
                    raise ValueError(f"price_pairs returned {pw.shape[0] if pw.ndim else pw} costs for {len(pr)} pairs")
                stats["pair_priced_rows"] += int(ok.sum())
                stats["pair_priced_pairs"] += len(pr)
                violations += absorb(group[ok], PricedRows(pr, pc, pw, bound))
                settled[group[ok]] = True
            return violations, rows[~settled[rows]]

        def absorb(rows: np.ndarray, out) -> int:
            """What pricing ``rows`` returned: the rows' bounds, the pairs left out; the
            number of violations."""
            nonlocal ref_v
            pr, pc, pw = (np.asarray(x) for x in out[:3])
            pr, pc = pr.astype(np.int64, copy=False), pc.astype(np.int64, copy=False)
            if pw.dtype != np.float32:  # float32 costs stay float32 (so does the graph, below)
                pw = pw.astype(np.float64, copy=False)
            _check_priced(pr, pc, pw, n, m)  # the warm solves do not check the arcs again
            # PricedRows.bound: per priced row, a lower bound on the reduced cost of every pair
            # it did not return (screened pricing, whose selection is approximate).
            explicit = np.asarray(out.bound, np.float64) if isinstance(out, PricedRows) else None
            trimmed = np.bincount(pr, minlength=n)[rows] > max_new if explicit is not None else None
            pr, pc, pw, red = _keep_most_negative(pr, pc, pw, pw.astype(np.float64) - u[pr] - v[pc], max_new)
            outside = np.flatnonzero(~_in_graph(g, pr, pc, m))
            low[rows] = 0.0 if explicit is None else np.minimum(explicit, 0.0)
            if len(outside):
                np.minimum.at(low, pr[outside], red[outside])
            # violations: below the tolerance, so negative (a few of the pairs: their own gathers)
            neg = outside[red[outside] < 0.0]
            bad = neg[red[neg] < -_REL_TOL * (np.abs(pw[neg]) + np.abs(u[pr[neg]]) + np.abs(v[pc[neg]]))]
            clean[rows] = True
            clean[pr[bad]] = False
            # What the pricing proved about the pairs left out of each priced row: the pairs it
            # returned are added below; the others have red >= the largest red it returned (it
            # returns the smallest ones, or all negative ones), or >= 0 if it returned none.
            m_i = np.zeros(len(rows))
            if len(pr):
                top = np.full(n, -np.inf)
                np.maximum.at(top, pr, red)
                m_i = np.where(np.isfinite(top[rows]), top[rows], 0.0)
            if explicit is not None:  # pairs trimmed above still have red >= the largest kept
                m_i = np.where(trimmed, np.minimum(explicit, m_i), explicit)
            ref_m[rows], ref_u[rows], ref_round[rows] = m_i, u[rows], rounds
            ref_v[rounds] = v.copy()
            ref_v = {r: ref_v[r] for r in np.flatnonzero(np.bincount(ref_round[ref_round >= 0]))}  # rounds still referred to
            stats["priced_rows"] += len(rows)
            found.append((pr[outside], pc[outside], pw[outside]))
            violating_cols.append(pc[bad])
            priced_now.append(rows)
            # A bound below 0 (beyond the tolerance that decides a violation) proves nothing
            # about the pairs it did not return: count the row as violating and price it again.
            # The tolerance matters where the q-th pair is the row's own arc at ~0 (q = 1).
            weak = (explicit < -_REL_TOL * np.abs(u[rows])) if explicit is not None else np.zeros(len(rows), bool)
            clean[rows[weak]] = False
            return len(bad) + int(weak.sum())

        if len(need):
            # Rows whose last pricing found nothing, failing again only because the duals moved
            # (warm restarts shift the prices of whole regions of columns), rarely violate:
            # while other rows still do, they wait for a round that would otherwise be final
            # (F = 65536: ~6000 such rows re-priced every other round, ~1 % violating).
            waits = (ref_round[need] >= 0) & clean[need]
            first, later = need[~waits], need[waits]
            violations += price(first) if len(first) else 0
            if violations == 0 and len(later):
                violations = price(later)
            elif len(later):
                stats["deferred_rows"] += len(later)
        if violations:
            # A violating pair (i, j) will take column j from the row matched to it now, which
            # then needs arcs to move to: found by its bound failing next round, its partner's
            # the round after (a Hungarian tree grown one layer a round). Priced now, its best
            # pairs are in the next solve's graph (GPU-like stand-in, F = 16384, d = 2304: 7 ->
            # 2 rounds; F = 65536, d = 128: 8 -> 3). Not where many rows violate (make_stack F
            # = 16384, round 1: 5109 partners for 2145 violating rows, pricing twice as long).
            partners = _partners(raw["row_to_col"], violating_cols, priced_now, m)
            if 0 < len(partners) <= n // 64:
                stats["partner_rows"] += len(partners)
                violations += price(partners)
        slack_used = slack is not None and bool(np.any(raw["row_to_col"] < 0))
        if found and (violations or slack_used or (not polished and _ill_conditioned(raw))):
            # Another round follows: add every pair returned, the non-negative ones too. They
            # cost the warm restart nothing, anticipate the next duals, and the priced rows'
            # bounds (ref_m: "every pair not returned") assume them in the graph.
            before = len(g.indices)
            new_rows, new_cols, new_costs = (np.concatenate(x) for x in zip(*found))
            g = arcs.merge(g, new_rows, new_cols, new_costs, n)
            changed_rows = _distinct(new_rows, n)
            stats["added_edges"] += len(g.indices) - before
        timings["pricing"] += time.perf_counter() - t0
        # No violating pair left out (pairs the callback reports that are already in the graph
        # only differ by its own rounding, e.g. another GEMM blocking): optimal for the problem.
        if violations == 0:
            if slack_used:  # the slack is cheaper than any completion found: make it dearer
                slack = slack * 1e3
                init_v = init_r2c = None
                eps_start = 0.0
                continue
            if not polished and _ill_conditioned(raw):
                # Warm restarts only ever raise prices: arcs that were forced in early rounds
                # can leave duals far larger than the costs of the final assignment, and
                # float64 then cannot resolve cost differences at the scale of those costs.
                # One cold solve on the final graph gives well-scaled duals; price again.
                polished = True
                init_v = init_r2c = None
                eps_start = 0.0
                continue
            certified = True
            break
        init_v, init_r2c, eps_start = _warm(raw, dummies, m)
    # Weak duality with u_i lowered by the most negative reduced cost left in row i.
    dual = float(u.sum() + np.minimum(low, 0.0).sum() + v.sum())
    if lam is not None:
        dual += float(raw["v_dummy"].sum())
    timings["total"] = time.perf_counter() - t_start
    return _result(raw, sign=1.0, transposed=False, certified=certified and not slack_used,
                   rounds=rounds, n_edges=len(g.indices), stats=stats, timings=timings, dual=dual)
