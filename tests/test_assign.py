"""Contracts of mechperm.assign: optimal objective cross-checked against scipy, valid
assignments, dual certificates, the exact-from-candidates loop, bad input, determinism, GIL."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mechperm import _auction
from mechperm.assign import (
    Assignment,
    CandidateGraph,
    InfeasibleError,
    assign,
    assign_exact,
    assign_sparse,
)

torch = pytest.importorskip("torch")

REL = 1e-9
RUN_SLOW = os.environ.get("MECHPERM_RUN_SLOW") == "1"


def slow(test):
    """Large cases: marked `slow` and skipped unless MECHPERM_RUN_SLOW=1 (CI stays < 1 min)."""
    return pytest.mark.slow(pytest.mark.skipif(not RUN_SLOW, reason="set MECHPERM_RUN_SLOW=1")(test))


# ---- helpers ------------------------------------------------------------------------------------


def scipy_objective(C: np.ndarray, maximize: bool = False) -> float:
    C = np.asarray(C, dtype=np.float64)
    r, c = linear_sum_assignment(C, maximize=maximize)
    return float(C[r, c].sum())


def padded(C: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """[C | diag(lam)] with +inf off the diagonal: the partial problem as a full one."""
    n = C.shape[0]
    D = np.full((n, n), np.inf)
    np.fill_diagonal(D, lam)
    return np.hstack([np.asarray(C, np.float64), D])


def close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def check_valid(res: Assignment, C: np.ndarray, lam=None, maximize: bool = False) -> None:
    """Permutation structure, objective recomputed, dual feasibility and slackness."""
    C = np.asarray(C, dtype=np.float64)
    n, m = C.shape
    r2c, c2r = res.row_to_col, res.col_to_row
    assert r2c.shape == (n,) and c2r.shape == (m,)
    assert r2c.dtype == np.int64 and c2r.dtype == np.int64
    matched = np.flatnonzero(r2c >= 0)
    assert len(np.unique(r2c[matched])) == len(matched)
    assert np.all(c2r[r2c[matched]] == matched)
    assert np.count_nonzero(c2r >= 0) == len(matched)
    if lam is None:
        assert len(matched) == min(n, m)
    obj = C[matched, r2c[matched]].sum()
    if lam is not None:
        obj += np.broadcast_to(np.asarray(lam, np.float64), (n,))[r2c < 0].sum()
    assert close(res.objective, obj, 1e-12)
    # duals of the minimisation actually solved
    W = -C if maximize else C
    scale = max(1.0, np.abs(W).max(initial=0.0), np.abs(res.u).max(initial=0.0),
                np.abs(res.v).max(initial=0.0))
    red = W - res.u[:, None] - res.v[None, :]
    assert red.min(initial=0.0) >= -1e-9 * scale
    assert np.all(np.abs(red[matched, r2c[matched]]) <= 1e-9 * scale)
    assert res.gap <= 1e-8 * max(1.0, abs(res.objective)) + 1e-9 * scale * (n + m)


def run(C, method="auto", **kw) -> Assignment:
    return assign(C, method=method, **kw)


def sae_like(n: int, d: int = 32, seed: int = 0, sigma: float = 1.5, shared: float = 0.8):
    """Squared distances of vectors with lognormal row norms (the DESIGN.md pitfall)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    B = shared * A[rng.permutation(n)] + np.sqrt(1 - shared**2) * rng.standard_normal((n, d)) / np.sqrt(d)
    A *= rng.lognormal(0, sigma, n)[:, None]
    B *= rng.lognormal(0, sigma, n)[:, None]
    C = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T
    return np.maximum(C, 0).astype(np.float32), A, B


DISTRIBUTIONS = {
    "uniform": lambda rng, n, m: rng.random((n, m)),
    "ties012": lambda rng, n, m: rng.integers(0, 3, (n, m)).astype(np.float64),
    "all_equal": lambda rng, n, m: np.full((n, m), 3.5),
    "log_uniform": lambda rng, n, m: np.exp(rng.uniform(np.log(1e-8), np.log(1e8), (n, m))),
    "negative": lambda rng, n, m: rng.normal(size=(n, m)) * 100 - 50,
    "i_times_j": lambda rng, n, m: np.outer(np.arange(n), np.arange(m)).astype(np.float64),
    "i_minus_j_sq": lambda rng, n, m: (np.subtract.outer(np.arange(n), np.arange(m)) ** 2).astype(np.float64),
    "i_plus_j": lambda rng, n, m: np.add.outer(np.arange(n), np.arange(m)).astype(np.float64),
    "int_large": lambda rng, n, m: rng.integers(-10**6, 10**6, (n, m)).astype(np.float64),
}


# ---- dense: optimality against scipy -----------------------------------------------------------


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("shape", [(600, 600), (560, 700), (700, 560)])
def test_dense_warm_start_matches_scipy(dist, shape):
    """Above 512 x 512 the dense auction starts from the optimum on the 16-nearest graph."""
    rng = np.random.default_rng(shape[0] + shape[1])
    C = DISTRIBUTIONS[dist](rng, *shape)
    res = run(C, "dense")
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))
    lam = np.quantile(C, 0.01, axis=1)  # partial: many rows better off unmatched
    res = run(C[: min(shape)], "dense", unmatched_cost=lam[: min(shape)])
    check_valid(res, C[: min(shape)], lam=lam[: min(shape)])
    assert close(res.objective, scipy_objective(padded(C[: min(shape)], lam[: min(shape)])))


def test_dense_warm_start_sae_like():
    C, _, _ = sae_like(1024, seed=4)
    res = run(C, "dense")
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 65, 200])
@pytest.mark.parametrize("method", ["dense", "candidates"])
def test_dense_square_matches_scipy(dist, n, method):
    rng = np.random.default_rng(n)
    C = DISTRIBUTIONS[dist](rng, n, n)
    res = run(C, method)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))
    assert res.certified


@pytest.mark.parametrize("dist", ["uniform", "ties012", "log_uniform", "negative", "i_times_j"])
@pytest.mark.parametrize("shape", [(1, 5), (5, 1), (3, 8), (8, 3), (40, 97), (97, 40), (300, 301)])
@pytest.mark.parametrize("method", ["dense", "candidates"])
def test_dense_rectangular_matches_scipy(dist, shape, method):
    rng = np.random.default_rng(sum(shape))
    C = DISTRIBUTIONS[dist](rng, *shape)
    res = run(C, method)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))


@pytest.mark.parametrize("n", [1000, 2048])
@pytest.mark.parametrize("dist", ["uniform", "ties012", "log_uniform", "negative"])
def test_dense_medium_matches_scipy(n, dist):
    rng = np.random.default_rng(7)
    C = DISTRIBUTIONS[dist](rng, n, n)
    res = run(C)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))


@pytest.mark.parametrize("method", ["dense", "candidates"])
@pytest.mark.parametrize("n", [50, 500, 1500])
def test_sae_like_heavy_tailed(method, n):
    C, _, _ = sae_like(n, seed=n)
    res = run(C, method)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))
    assert res.certified and res.gap <= 1e-9 * abs(res.objective)


def test_sae_like_4096_certificate():
    # scipy needs ~a minute here; the dual certificate, checked on all 16M pairs, proves
    # optimality on its own, and both solver paths must agree.
    C, _, _ = sae_like(4096, seed=1)
    res = run(C, "candidates", k=16)
    check_valid(res, C)
    assert res.certified
    assert close(res.objective, run(C, "dense").objective)


def test_uniform_4096():
    C = np.random.default_rng(3).random((4096, 4096)).astype(np.float32)
    res = run(C)
    assert close(res.objective, scipy_objective(C))
    assert res.certified


def test_synthetic_pitfall_costs():
    synthetic = pytest.importorskip("mechperm.synthetic")
    if not hasattr(synthetic, "sae_like_costs"):
        pytest.skip("mechperm.synthetic.sae_like_costs not available yet")
    C = synthetic.sae_like_costs(512, heavy_tail=2.5).astype(np.float32)
    for method in ("dense", "candidates"):
        res = run(C, method)
        check_valid(res, C)
        assert close(res.objective, scipy_objective(C))


def test_synthetic_stack_decoders():
    synthetic = pytest.importorskip("mechperm.synthetic")
    if not hasattr(synthetic, "make_stack"):
        pytest.skip("mechperm.synthetic.make_stack not available yet")
    stack = synthetic.make_stack(2, 32, 400, seed=3, dead_rate=0.0)
    a, b = (s.W_dec.double() for s in stack.saes[:2])
    C = torch.cdist(a, b).pow(2).numpy()
    res = run(C, "candidates", k=2)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))


def test_maximize_matches_scipy():
    rng = np.random.default_rng(0)
    for shape in [(30, 30), (20, 35), (35, 20)]:
        C = rng.normal(size=shape)
        for method in ("dense", "candidates"):
            res = run(C, method, maximize=True)
            check_valid(res, C, maximize=True)
            assert close(res.objective, scipy_objective(C, maximize=True))
            assert res.dual_bound >= res.objective - 1e-9


def test_torch_tensor_and_float32_inputs():
    rng = np.random.default_rng(1)
    C = rng.random((50, 60)).astype(np.float32)
    a = assign(torch.from_numpy(C))
    b = assign(C)
    assert np.array_equal(a.row_to_col, b.row_to_col)
    assert close(a.objective, scipy_objective(C))
    assert close(assign(C.T.copy()).objective, scipy_objective(C.T))
    assert close(assign(C.T).objective, scipy_objective(C.T))  # non-contiguous view: copied
    assert close(assign(C.astype(np.float16)).objective, scipy_objective(C.astype(np.float16)))
    assert close(assign(np.arange(12).reshape(3, 4)).objective, scipy_objective(np.arange(12).reshape(3, 4)))


@pytest.mark.parametrize("shape", [(0, 0), (2, 0), (0, 3)])
def test_trivial_shapes(shape):
    res = assign(np.zeros(shape))
    assert res.row_to_col.shape == (shape[0],) and res.col_to_row.shape == (shape[1],)
    assert np.all(res.row_to_col == -1) and res.objective == 0.0 and res.certified


# ---- partial assignment -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (20, 13), (13, 20), (60, 60), (200, 150)])
@pytest.mark.parametrize("lam_kind", ["scalar", "per_row", "negative"])
def test_partial_matches_padded_scipy(shape, lam_kind):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    C = rng.random(shape) * 10
    n = shape[0]
    lam = {"scalar": 2.0, "per_row": rng.random(n) * 6, "negative": -rng.random(n)}[lam_kind]
    lam_arr = np.broadcast_to(np.asarray(lam, np.float64), (n,)).copy()
    res = assign(C, unmatched_cost=lam)
    check_valid(res, C, lam=lam_arr)
    assert close(res.objective, scipy_objective(padded(C, lam_arr)))
    assert res.v_unmatched is not None and res.v_unmatched.shape == (n,)


def test_partial_empty_columns():
    res = assign(np.zeros((3, 0)), unmatched_cost=1.5)
    assert np.all(res.row_to_col == -1) and res.objective == 4.5


def test_partial_sparse_matches_padded_scipy():
    rng = np.random.default_rng(5)
    n, m = 40, 30
    mask = rng.random((n, m)) < 0.1
    C = rng.random((n, m)) * 5
    lam = rng.random(n) * 3
    indptr, indices, costs = csr_of(C, mask)
    res = assign_sparse(indptr, indices, costs, (n, m), unmatched_cost=lam)
    full = np.where(mask, C, np.inf)
    assert close(res.objective, scipy_objective(padded(full, lam)))


# ---- sparse graphs ------------------------------------------------------------------------------


def csr_of(C: np.ndarray, mask: np.ndarray):
    n = C.shape[0]
    rows, cols = np.nonzero(mask)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols.astype(np.int32), C[rows, cols]


@pytest.mark.parametrize("shape", [(50, 50), (40, 60), (60, 40), (300, 300)])
@pytest.mark.parametrize("density", [0.05, 0.3])
@pytest.mark.parametrize("idx_dtype,cost_dtype", [(np.int32, np.float64), (np.int64, np.float32)])
def test_sparse_matches_scipy_with_inf(shape, density, idx_dtype, cost_dtype):
    rng = np.random.default_rng(int(density * 100) + shape[0])
    n, m = shape
    mask = rng.random(shape) < density
    if n <= m:  # plant one full assignment so that most instances are feasible
        mask[np.arange(n), rng.permutation(m)[:n]] = True
    else:
        mask[rng.permutation(n)[:m], np.arange(m)] = True
    C = rng.random(shape).astype(cost_dtype)
    indptr, indices, costs = csr_of(C, mask)
    full = np.where(mask, C.astype(np.float64), np.inf)
    try:
        expected = scipy_objective(full)
    except ValueError:
        with pytest.raises(InfeasibleError):
            assign_sparse(indptr, indices.astype(idx_dtype), costs, shape)
        return
    res = assign_sparse(indptr, indices.astype(idx_dtype), costs, shape)
    assert close(res.objective, expected)
    matched = res.row_to_col >= 0
    assert np.all(mask[np.flatnonzero(matched), res.row_to_col[matched]])


def test_sparse_duplicate_arcs_use_the_cheaper():
    indptr = np.array([0, 3, 5], np.int64)
    indices = np.array([0, 0, 1, 1, 1], np.int64)
    costs = np.array([5.0, 1.0, 4.0, 2.0, 0.5])
    res = assign_sparse(indptr, indices, costs, (2, 2))
    assert res.row_to_col.tolist() == [0, 1] and close(res.objective, 1.5)


def test_sparse_infeasible_reports_clearly():
    # rows 0..2 can only use columns 0..1: no assignment of every row exists
    indptr = np.array([0, 2, 4, 6, 8], np.int64)
    indices = np.array([0, 1, 0, 1, 0, 1, 2, 3], np.int32)
    costs = np.ones(8)
    with pytest.raises(InfeasibleError, match="maximum matching covers 3 of 4 rows"):
        assign_sparse(indptr, indices, costs, (4, 4))
    with pytest.raises(ValueError, match="no assignment of every row"):
        assign_sparse(indptr, indices, costs, (4, 4))
    res = assign_sparse(indptr, indices, costs, (4, 4), unmatched_cost=10.0)
    assert res.n_matched == 3 and close(res.objective, 13.0)


def test_sparse_row_without_arcs_is_infeasible():
    with pytest.raises(InfeasibleError):
        assign_sparse(np.array([0, 1, 1]), np.array([0]), np.array([1.0]), (2, 2))


def _two_rows_on_one_column(n: int = 60, seed: int = 0) -> tuple:
    """A CSR graph of n rows with 8 random arcs each, except the last two: column 0 only."""
    rng = np.random.default_rng(seed)
    lists = [np.sort(rng.choice(n, 8, replace=False)) for _ in range(n - 2)] + [np.array([0]), np.array([0])]
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    indices = np.concatenate(lists).astype(np.int32)
    return indptr, indices, rng.random(len(indices))


@pytest.mark.parametrize("budget,why", [(1.0, "no augmenting path for row"),  # the paths find it
                                        (1e-12, "maximum matching covers 59 of 60 rows")])  # the check before the auction
def test_lazy_feasibility_reports_an_infeasible_graph(budget, why):
    """check_feasible='lazy' skips the maximum matching up front; an infeasible graph is still
    reported, never a price war: by the shortest paths, or (paths over budget) by the matching
    the auction waits for."""
    indptr, indices, costs = _two_rows_on_one_column()
    with pytest.raises(InfeasibleError, match=why):
        _auction.solve_sparse(indptr, indices, costs, 60, 60, check_feasible="lazy", sap_budget=budget)
    with pytest.raises(ValueError, match="check_feasible must be True, False or 'lazy'"):
        _auction.solve_sparse(indptr, indices, costs, 60, 60, check_feasible="later")


@pytest.mark.parametrize("budget", [1.0, 1e-12, 0.0])  # paths alone; paths then the auction; the auction alone
@pytest.mark.parametrize("seed", range(4))
def test_lazy_feasibility_solves_as_the_eager_check(budget, seed):
    rng = np.random.default_rng(seed)
    n, m = 200, 230
    mask = rng.random((n, m)) < 0.04
    mask[np.arange(n), rng.permutation(m)[:n]] = True
    C = rng.random((n, m))
    indptr, indices, costs = csr_of(C, mask)
    eager = _auction.solve_sparse(indptr, indices, costs, n, m, check_feasible=True, sap_budget=budget)
    lazy = _auction.solve_sparse(indptr, indices, costs, n, m, check_feasible="lazy", sap_budget=budget)
    assert close(lazy["objective"], eager["objective"])
    assert close(lazy["objective"], scipy_objective(np.where(mask, C, np.inf)))


# ---- the exact-from-candidates loop -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dist", ["uniform", "ties012", "log_uniform", "negative"])
def test_dense_candidates_tiny_k_certified(k, dist):
    rng = np.random.default_rng(k)
    C = DISTRIBUTIONS[dist](rng, 300, 300)
    res = assign(C, method="candidates", k=k)
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C))
    assert res.certified and res.gap <= 1e-9 * max(1.0, abs(res.objective))
    assert res.n_edges < C.size


@pytest.mark.parametrize("force_shift", [False, True])
@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("shape", [(300, 300), (250, 320)])
def test_assign_exact_from_streamed_kernels(k, shape, force_shift, monkeypatch: pytest.MonkeyPatch):
    """The loop fed by mechperm.kernels (candidate graph with its bounds, row pricing by GEMM)
    on heavy-tailed vectors: the optimum of the same float32 dense matrix, certified; also with
    the dual shift on whenever a row fails (rectangular: free columns keep their prices)."""
    from mechperm import kernels

    if force_shift:
        monkeypatch.setattr(sys.modules["mechperm.assign"], "_SHIFT_FAILING", 0)

    rng = np.random.default_rng(k)
    n, m = shape
    X = rng.standard_normal((n, 16)) * np.exp(2.0 * rng.standard_normal((n, 1)))
    Y = rng.standard_normal((m, 16)) * np.exp(2.0 * rng.standard_normal((m, 1)))
    A, B = torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    g = kernels.solver_graph(kernels.candidates(A, B, k=k, block_rows=64), A, B)
    res = assign_exact(n, m, g, kernels.row_pricer(A, B, 16))
    C = kernels.dense_costs(A, B).double().numpy()
    assert close(res.objective, scipy_objective(C), 1e-9)
    assert res.certified and res.gap <= 1e-8 * res.objective


def _reduced_cost_graph(C: np.ndarray, k: int, v: np.ndarray, u: np.ndarray) -> CandidateGraph:
    """Per row the k cheapest by c_ij - v_j, per column by c_ij - u_i (the native builder)."""
    n, m = C.shape
    b = _auction.CandidateBuilder(n, m, k, k, np.ascontiguousarray(v, np.float64), np.ascontiguousarray(u, np.float64))
    for r0 in range(0, n, 128):
        b.add(np.ascontiguousarray(C[r0:r0 + 128]), r0)
    d = b.finish(False)
    return CandidateGraph(d["indptr"], d["indices"], d["costs"], d["row_bound"], d["col_bound"],
                          d["row_offset"], d["col_offset"])


def _noisy_match(seed: int, n: int, spread: float, k: int):
    """(C, g): squared distances of lognormal-norm points and a noisy shuffled copy, and their
    dense candidate graph with k per row and column (bounds and offsets)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)) * np.exp(spread * rng.standard_normal((n, 1)))
    Y = X[rng.permutation(n)] + 0.5 * rng.standard_normal((n, 8))
    C = ((X * X).sum(1)[:, None] + (Y * Y).sum(1)[None, :] - 2 * X @ Y.T).clip(0)
    d = _auction.dense_candidates(C, k, k)
    return C, CandidateGraph(d["indptr"], d["indices"], d["costs"], d["row_bound"], d["col_bound"],
                             d["row_offset"], d["col_offset"])


def test_assign_exact_with_rebuild():
    n = 600
    C, g = _noisy_match(3, n, 2.0, 2)

    def price(rows, u, v):
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 4)

    res = assign_exact(n, n, g, price, max_new_per_row=4,
                       rebuild=lambda u, v: _reduced_cost_graph(C, 4, v, u))
    assert close(res.objective, scipy_objective(C), 1e-9) and res.certified
    assert res.stats["rebuilds"] >= 1


def test_assign_exact_with_the_parallel_merge(monkeypatch: pytest.MonkeyPatch):
    """With 4+ solver threads the loop's merges take turns between two arc buffers: the same
    optimum, certified, as scipy's (a pricer with few pairs a row forces many rounds)."""
    import mechperm.assign as A

    monkeypatch.setattr(A, "_threads", lambda: 4)
    merges = []
    real = _auction.csr_insert_into
    monkeypatch.setattr(_auction, "csr_insert_into", lambda *a, **k: merges.append(k["threads"]) or real(*a, **k))
    n = 600
    C, g = _noisy_match(5, n, 1.5, 1)

    def price(rows, u, v):
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 2)

    res = assign_exact(n, n, g, price, max_new_per_row=2)
    assert close(res.objective, scipy_objective(C), 1e-9) and res.certified
    assert res.rounds >= 3 and res.stats["added_edges"] > 0 and merges and set(merges) == {4}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(0, 12), st.integers(0, 2**31 - 1))
def test_moved_columns_against_brute_force(m: int, limit: int, seed: int):
    """Per row, the columns with delta_j < -slack_i (exactly those, where at most ``limit``),
    and the least delta among the others: ties, infinities and NaN slacks included."""
    import mechperm.assign as A

    rng = np.random.default_rng(seed)
    delta = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0], m) if seed % 2 else rng.standard_normal(m)
    slack = np.concatenate([rng.choice([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0, np.inf, -np.inf, np.nan], 20),
                            rng.standard_normal(20)])
    ok, cnt, order, rest = A._moved_columns(slack, delta, limit)
    assert sorted(order.tolist()) == sorted(set(order.tolist())) and len(order) <= limit + 1
    for i, s in enumerate(slack):
        moved = np.flatnonzero(delta < -s)
        if np.isnan(s):  # no column counts as safe: every column is listed, if that is allowed
            assert ok[i] == (m <= limit) and (not ok[i] or (cnt[i] == m and rest[i] == np.inf))
            continue
        assert ok[i] == (len(moved) <= limit)
        if not ok[i]:
            continue
        assert sorted(order[: cnt[i]].tolist()) == moved.tolist()
        others = np.setdiff1d(np.arange(m), moved)
        want = s + delta[others].min() if len(others) else np.inf
        assert rest[i] == want or (np.isnan(want) and rest[i] == np.inf)


def _brute_suspects(indptr, indices, rows, m, families, limit, mult, min_cols):
    """suspect_pairs in numpy: per row, every non-arc column's largest family bound (NaN: none),
    the failing count, the want least by (bound, column), the least of the rest."""
    out = []
    for i in rows:
        arcs = set(indices[indptr[i]:indptr[i + 1]].tolist())
        left = np.array([j for j in range(m) if j not in arcs], np.int64)
        pb = np.full(len(left), -np.inf)
        for a, b, p, q in families:
            with np.errstate(invalid="ignore"):  # inf - inf: NaN, which bounds nothing
                x = a[i] + b[left] - (p[i] * q[left] if p is not None else 0.0)
            pb = np.where(x > pb, x, pb)  # NaN never wins
        failing = int((pb < 0).sum())
        if failing > limit:
            out.append(None)
            continue
        want = min(len(left), limit, max(mult * failing, min_cols))
        order = np.lexsort((left, pb))
        bound = pb[order[want]] if want < len(left) else np.inf
        out.append((sorted(left[order[:want]].tolist()), bound))
    return out


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30), st.integers(0, 6), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_suspect_pairs_against_brute_force(m: int, limit: int, min_cols: int, seed: int):
    """_auction.suspect_pairs: which rows settle, their columns and the least bound of the
    rest, as numpy computes them: arcs skipped, NaN and infinite family values, product terms,
    int32 and int64 columns."""
    rng = np.random.default_rng(seed)
    n = 12
    deg = rng.integers(0, min(m, 5) + 1, n)
    indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
    indices = np.concatenate([rng.choice(m, d, replace=False) for d in deg]).astype(
        np.int32 if seed % 2 else np.int64)

    def values(size):
        x = rng.standard_normal(size)
        if seed % 3 == 0:
            x[rng.random(size) < 0.1] = rng.choice([np.nan, np.inf, -np.inf])
        return x

    families = [(values(n), values(m), None, None), (values(n), values(m), np.abs(values(n)), values(m))]
    families = families[: 1 + seed % 2]
    rows = rng.choice(n, rng.integers(0, n + 1), replace=False).astype(np.int64)
    ok, pr, pc, bound = _auction.suspect_pairs(indptr, indices, rows, m, families, limit, 2, min_cols, 2)
    want = _brute_suspects(indptr, indices, rows, m, families, limit, 2, min_cols)
    assert ok.tolist() == [w is not None for w in want]
    settled = [w for w in want if w is not None]
    assert pr.tolist() == np.repeat(rows[ok], [len(w[0]) for w in settled]).tolist()  # in the rows' order
    assert [pc[pr == i].tolist() for i in rows[ok]] == [w[0] for w in settled]
    exp = np.array([w[1] for w in settled])
    assert np.array_equal(bound, exp) or np.allclose(bound, exp, rtol=1e-12, atol=0)


def test_suspect_pairs_rejects_bad_input():
    indptr, indices = np.array([0, 1, 2], np.int64), np.array([0, 3], np.int64)
    fam = [(np.zeros(2), np.zeros(3), None, None)]
    with pytest.raises(ValueError, match=r"column index at position 1 is out of range \[0, 3\)"):
        _auction.suspect_pairs(indptr, indices, np.array([0], np.int64), 3, fam, 1, 2, 1)
    indices = np.array([0, 2], np.int64)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 2\)"):
        _auction.suspect_pairs(indptr, indices, np.array([2], np.int64), 3, fam, 1, 2, 1)
    with pytest.raises(ValueError, match="b must have length 3"):
        _auction.suspect_pairs(indptr, indices, np.array([0], np.int64), 3, [(np.zeros(2), np.zeros(4), None, None)],
                               1, 2, 1)
    with pytest.raises(ValueError, match="both arrays or both None"):
        _auction.suspect_pairs(indptr, indices, np.array([0], np.int64), 3,
                               [(np.zeros(2), np.zeros(3), np.zeros(2), None)], 1, 2, 1)


@pytest.mark.parametrize("seed, k", [(1, 4), (2, 2)])
def test_bound_suspects_bound_every_pair_left_out(seed: int, k: int):
    """_bound_suspects at a solve's duals: a settled row's every pair left out of the graph and
    not returned has a reduced cost >= its bound (dense check), its pairs include every one that
    violates, and the rows not settled fail on more than ``limit`` columns."""
    from mechperm.assign import _bound_suspects

    n = 400
    C, g = _noisy_match(seed, n, 1.5, k)
    raw = _auction.solve_sparse(g.indptr, g.indices, g.costs, n, n)
    u, v = raw["u"], raw["v"]
    rows = np.arange(n, dtype=np.int64)
    ok, pr, pc, bound = _bound_suspects(g, rows, u, v, 40)
    assert ok.any() and not ok.all()
    red = C - u[:, None] - v[None, :]
    inside = np.zeros((n, n), bool)
    inside[np.repeat(np.arange(n), np.diff(g.indptr)), g.indices] = True
    returned = np.zeros((n, n), bool)
    returned[pr, pc] = True
    assert not (returned & inside).any()
    scale = float(np.abs(C).max())
    for t, i in enumerate(rows[ok]):
        others = ~inside[i] & ~returned[i]
        assert np.all(red[i, others] >= bound[t] - 1e-12 * scale)
        assert np.all(returned[i][~inside[i] & (red[i] < -1e-12 * scale)])
    assert len(pr) <= int(ok.sum()) * max(256, n)


def _counting_pricer(C: np.ndarray, q: int, calls: list):
    """A ``price_rows`` on the dense matrix C (the q least reduced costs a row) that appends to
    ``calls`` how many rows each call prices."""

    def price(rows, u, v):
        calls.append(len(rows))
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, q)

    return price


@pytest.mark.parametrize("partial", [False, True])
def test_assign_exact_prices_failing_rows_pair_by_pair(partial: bool):
    """Rows priced before that fail again on few pairs get those pairs' costs (price_pairs)
    instead of a whole row: scipy's optimum and the loop's without it, certified, fewer
    rows priced whole."""
    n = 600
    C, g = _noisy_match(6, n, 1.5, 1)
    lam = float(np.median(C)) if partial else None
    whole: list = []
    price = _counting_pricer(C, 2, whole)
    res = assign_exact(n, n, g, price, max_new_per_row=2, unmatched_cost=lam, price_pairs=lambda r, c: C[r, c],
                       pair_pricing=True)
    with_pairs = sum(whole)
    whole.clear()
    plain = assign_exact(n, n, g, price, max_new_per_row=2, unmatched_cost=lam, price_pairs=lambda r, c: C[r, c])
    assert res.certified and plain.certified and close(res.objective, plain.objective, 1e-9)
    if not partial:
        assert close(res.objective, scipy_objective(C), 1e-9)
    assert res.gap <= 1e-9 * max(1.0, abs(res.objective))
    assert res.stats["pair_priced_rows"] > 0 and res.stats["pair_priced_pairs"] > 0
    assert plain.stats["pair_priced_rows"] == 0
    assert with_pairs < sum(whole)


@pytest.mark.parametrize("partial", [False, True])
def test_assign_exact_rechecks_the_columns_that_moved(partial: bool):
    """With ``price_pairs``, priced rows whose bound breaks on a few columns are settled by those
    pairs' costs: the same optimum as scipy's and as the loop without them, certified, fewer
    rows priced."""
    n = 600
    C, g = _noisy_match(5, n, 1.5, 1)
    lam = float(np.median(C)) if partial else None
    priced: list = []
    price = _counting_pricer(C, 2, priced)
    pairs = []

    def price_pairs(rows, cols):
        pairs.append(len(rows))
        return C[rows, cols]

    res = assign_exact(n, n, g, price, max_new_per_row=2, unmatched_cost=lam, price_pairs=price_pairs)
    rows_with = sum(priced)
    priced.clear()
    plain = assign_exact(n, n, g, price, max_new_per_row=2, unmatched_cost=lam)
    assert res.certified and plain.certified
    assert close(res.objective, plain.objective, 1e-9)
    if not partial:
        assert close(res.objective, scipy_objective(C), 1e-9)
    assert res.gap <= 1e-9 * max(1.0, abs(res.objective))
    assert res.stats["rechecked_rows"] > 0 and res.stats["rechecked_pairs"] > 0
    assert sum(pairs) == res.stats["rechecked_pairs"] + res.stats["pair_priced_pairs"]
    assert rows_with < sum(priced)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_assign_exact_prices_the_partners_of_violating_pairs(monkeypatch: pytest.MonkeyPatch, seed: int):
    """Rows matched to the columns of violating pairs are priced in the same round: the same
    optimum as scipy's and as without, certified; each partner pass follows a pass of the same
    duals and prices other rows."""
    import mechperm.assign as A

    n = 600
    C, g = _noisy_match(seed, n, 1.5, 1)
    calls = []

    def price(rows, u, v):
        calls.append((rows.copy(), u.copy()))
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 2)

    res = assign_exact(n, n, g, price, max_new_per_row=2)
    assert res.certified and close(res.objective, scipy_objective(C), 1e-9)
    assert res.stats["partner_rows"] > 0
    same_duals = [k for k in range(1, len(calls)) if np.array_equal(calls[k][1], calls[k - 1][1])]
    assert same_duals and all(not np.intersect1d(calls[k][0], calls[k - 1][0]).size for k in same_duals)
    monkeypatch.setattr(A, "_partners", lambda *a: np.empty(0, np.int64))
    plain = assign_exact(n, n, g, price, max_new_per_row=2)
    assert plain.certified and close(plain.objective, res.objective, 1e-9) and plain.stats["partner_rows"] == 0


@pytest.mark.parametrize("seed, k, spread", [(1, 16, 0.5), (2, 8, 1.0), (1, 4, 0.5)])
def test_shift_duals_keeps_the_duals_optimal_and_the_bounds_valid(seed: int, k: int, spread: float):
    """_shift_duals moves weight from columns to their rows: every arc's reduced cost stays
    >= 0, matched arcs at 0, sum(u) + sum(v) unchanged; rows whose bound held still hold, no
    more rows fail, and the new bounds still lie under every pair left out (dense check)."""
    from mechperm.assign import _lower_bounds, _shift_duals

    n = 600
    C, g = _noisy_match(seed, n, spread, k)
    raw = _auction.solve_sparse(g.indptr, g.indices, g.costs, n, n)
    u0, v0, r2c = raw["u"].copy(), raw["v"].copy(), raw["row_to_col"]
    lb0 = _lower_bounds(g, u0, v0)
    u, v = _shift_duals(g, raw, lb0)
    assert raw["u"] is u and raw["v"] is v and np.array_equal(raw["u"], u)
    rows = np.repeat(np.arange(n), np.diff(g.indptr))
    red = g.costs - u[rows] - v[g.indices]
    scale = float(np.abs(C).max())
    assert red.min() >= -1e-12 * scale
    assert np.all(np.abs(C[np.arange(n), r2c] - u - v[r2c]) <= 1e-12 * scale)
    assert np.isclose(u.sum() + v.sum(), u0.sum() + v0.sum(), rtol=1e-12)
    assert np.any(u > u0) and np.all(u >= u0) and np.all(v <= v0)
    lb = _lower_bounds(g, u, v)
    assert np.all(lb[lb0 >= 0] >= 0)
    assert np.count_nonzero(~(lb >= 0)) < np.count_nonzero(~(lb0 >= 0))  # these cases gain rows
    inside = np.zeros((n, n), bool)
    inside[rows, g.indices] = True
    left = np.where(inside, np.inf, C - u[:, None] - v[None, :]).min(1)
    assert np.all(lb <= left + 1e-9 * scale)


@pytest.mark.parametrize("seed, k, spread", [(1, 16, 0.5), (2, 8, 1.0), (3, 2, 2.0)])
def test_assign_exact_with_shifted_duals_matches_scipy(monkeypatch: pytest.MonkeyPatch, seed: int, k: int,
                                                      spread: float):
    """The loop with the dual shift forced on (any failing row triggers it): scipy's optimum,
    certified, and no more rows priced than without it."""
    import mechperm.assign as A

    n = 600
    C, g = _noisy_match(seed, n, spread, k)

    def price(rows, u, v):
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 4)

    monkeypatch.setattr(A, "_SHIFT_FAILING", 0)
    res = assign_exact(n, n, g, price, max_new_per_row=4)
    assert res.certified and close(res.objective, scipy_objective(C), 1e-9)
    assert res.gap <= 1e-9 * max(1.0, abs(res.objective))
    assert res.stats["shifted_rows"] > 0
    monkeypatch.setattr(A, "_SHIFT_FAILING", 10**9)
    plain = assign_exact(n, n, g, price, max_new_per_row=4)
    assert plain.stats["shifted_rows"] == 0 and close(plain.objective, res.objective, 1e-9)
    assert res.stats["priced_rows"] <= plain.stats["priced_rows"]


def test_assign_exact_checks_what_price_pairs_returns():
    n = 600
    C, g = _noisy_match(5, n, 1.5, 1)

    def price(rows, u, v):
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 2)

    with pytest.raises(ValueError, match="price_pairs returned 1 costs for"):
        assign_exact(n, n, g, price, max_new_per_row=2, price_pairs=lambda r, c: C[r[:1], c[:1]])
    with pytest.raises(ValueError, match="non-finite cost nan"):
        assign_exact(n, n, g, price, max_new_per_row=2, price_pairs=lambda r, c: C[r, c] * np.nan)


@pytest.mark.parametrize("corrupt, message", [
    (lambda r, c, w: (r, np.where(c == c[0], 700, c), w), r"cols index 700, out of range \[0, 600\)"),
    (lambda r, c, w: (r - 1, c, w), r"rows index -1, out of range \[0, 600\)"),
    (lambda r, c, w: (r, c, np.where(np.arange(len(w)) == 0, np.nan, w)), "non-finite cost nan for the pair"),
    (lambda r, c, w: (r, c[:-1], w), "returned .* rows, .* cols and .* costs"),
])
def test_assign_exact_checks_what_price_rows_returns(corrupt, message):
    """The warm solves no longer check every arc: the pairs a callback returns are checked
    as they come (a clear error, not NaN costs in the graph)."""
    n = 600
    C, g = _noisy_match(4, n, 1.0, 1)

    def price(rows, u, v):
        r, c, w, _ = _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 4)
        return corrupt(r, c, w)

    with pytest.raises(ValueError, match=message):
        assign_exact(n, n, g, price, max_new_per_row=4)


def test_solve_sparse_check_arcs_flag():
    """check_arcs=False skips the arcs' checks (the exact loop's warm solves); True, the default,
    refuses a NaN cost or a column out of range."""
    indptr, idx, cst = np.array([0, 2, 4]), np.array([0, 1, 0, 1], np.int32), np.array([1.0, 2.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="NaN or infinity"):
        _auction.solve_sparse(indptr, idx, cst, 2, 2)
    with pytest.raises(ValueError, match="out of range"):
        _auction.solve_sparse(indptr, np.array([0, 1, 0, 5], np.int32), np.ones(4), 2, 2)
    ok = _auction.solve_sparse(indptr, idx, np.array([1.0, 2.0, 3.0, 1.0]), 2, 2, check_arcs=False)
    assert list(ok["row_to_col"]) == [0, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_candidate_bounds_hold_for_every_pair_left_out(dtype):
    rng = np.random.default_rng(0)
    n, m, k = 60, 90, 3
    C = (rng.random((n, m)) * np.exp(3 * rng.standard_normal((n, 1)))).astype(dtype)
    d = _auction.dense_candidates(C, k, k)
    inside = np.zeros((n, m), bool)
    inside[np.repeat(np.arange(n), np.diff(d["indptr"])), d["indices"]] = True
    assert np.all(inside[np.arange(n), np.arange(n)])  # the feasibility arcs (i, i)
    W = C.astype(np.float64)
    bound = np.maximum(d["row_bound"][:, None] + d["col_offset"][None, :],
                       d["col_bound"][None, :] + d["row_offset"][:, None])
    assert np.all(W[~inside] >= bound[~inside])
    assert np.all(np.diff(d["indices"])[np.diff(np.repeat(np.arange(n), np.diff(d["indptr"]))) == 0] > 0)
    # streamed in tiles with arbitrary offsets: same guarantee
    a, b = rng.normal(size=m), rng.normal(size=n)
    builder = _auction.CandidateBuilder(n, m, k, k, a, b)
    for r0 in range(0, n, 7):
        builder.add(np.ascontiguousarray(C[r0:r0 + 7]), r0)
    e = builder.finish(False)
    inside = np.zeros((n, m), bool)
    inside[np.repeat(np.arange(n), np.diff(e["indptr"])), e["indices"]] = True
    bound = np.maximum(e["row_bound"][:, None] + a[None, :], e["col_bound"][None, :] + b[:, None])
    assert np.all(W[~inside] >= bound[~inside])
    # the loop's per-row bound over those pairs, at random duals, its sorts cached across rounds
    from mechperm.assign import _lower_bounds

    g = CandidateGraph(e["indptr"], e["indices"], e["costs"], e["row_bound"], e["col_bound"], b, a)
    cache: dict = {}
    for _ in range(6):
        u, v = rng.normal(size=n) * 3, rng.normal(size=m) * 3
        red = np.where(inside, np.inf, W - u[:, None] - v[None, :]).min(1)
        lb = _lower_bounds(g, u, v, cache)
        assert np.all(lb <= red + 1e-9 * np.abs(W).max())
        assert np.allclose(lb, _lower_bounds(g, u, v), rtol=0, atol=1e-9 * np.abs(W).max())
    assert "rank" in cache


@pytest.mark.parametrize("seed", range(4))
def test_envelope_min_with_and_without_a_given_slope_order(seed):
    """min_j (w_j - x_j s_q) against brute force, slopes with ties, the order by x passed in or
    not; a by_slope that does not sort x is refused."""
    rng = np.random.default_rng(seed)
    m, nq = 300, 200
    x = np.round(rng.normal(size=m), 1)  # many equal slopes
    w = rng.normal(size=m) * 5
    s = rng.normal(size=nq) * 3
    want = (w[None, :] - x[None, :] * s[:, None]).min(1)
    order = np.argsort(x, kind="stable")
    for got in (_auction.envelope_min(w, x, s), _auction.envelope_min(w, x, s, by_slope=order),
                _auction.envelope_min(w, x, np.tile(s, 100), threads=3)[:nq]):  # query blocks on threads
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="by_slope"):
        _auction.envelope_min(w, x, s, by_slope=order[::-1].copy())


def test_envelope_min_on_many_lines_all_on_the_hull() -> None:
    """Lines whose (x, w) lie on a parabola (every one is minimal somewhere: the hull holds
    nearly all of them), in blocks gathered on threads, with runs of equal slopes: brute force
    on a sample of queries; by_slope repeating an entry or out of range is refused."""
    rng = np.random.default_rng(5)
    m = 150_000
    x = np.round(np.exp(rng.standard_normal(m)), 5)  # ties among the slopes
    w = 0.5 * x * x + 1e-3 * rng.standard_normal(m)
    s = np.concatenate([rng.uniform(0, 20, 300), [x.min(), x.max(), 0.0, -3.0, 1e6]])
    order = np.argsort(x, kind="stable")
    got = _auction.envelope_min(w, x, s, by_slope=order, threads=3)
    want = np.array([np.min(w - x * q) for q in s])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    np.testing.assert_array_equal(_auction.envelope_min(w, x, s), got)
    bad = order.copy()
    bad[1] = bad[0]
    with pytest.raises(ValueError, match="by_slope"):
        _auction.envelope_min(w, x, s, by_slope=bad)
    bad[1] = m
    with pytest.raises(ValueError, match="by_slope"):
        _auction.envelope_min(w, x, s, by_slope=bad)


def test_envelope_min_blocks_on_threads_equal_one_pass() -> None:
    """The hull built from per-block hulls on threads (blocks of 2^15 lines) equals one
    thread's, with runs of equal slopes across block edges, lines through one common point
    (concurrent: the double test cannot decide, long double does), tiny and huge slopes; and
    equals brute force. A by_slope that misses one column (an entry out of range replaced by
    a repeat) is refused on threads too."""
    rng = np.random.default_rng(7)
    m = 200_003
    x = np.round(rng.lognormal(0.0, 2.0, m), 2)  # long runs of equal slopes, over block edges
    x[:500] = 1e-300 * rng.random(500)
    x[-500:] = 1e150 * (1.0 + rng.random(500))
    w = 0.25 * x * x + rng.standard_normal(m)
    w[1000:60000] = 3.0 + x[1000:60000] * 2.5  # concurrent at s = 2.5
    s = np.concatenate([rng.uniform(0.0, 50.0, 400), [2.5, 2.5 + 1e-15, 2.5 - 1e-15, 0.0, -1.0, 1e-10, 1e10]])
    order = np.argsort(x, kind="stable")
    one = _auction.envelope_min(w, x, s, by_slope=order, threads=1)
    for threads in (2, 4, 7):
        np.testing.assert_array_equal(_auction.envelope_min(w, x, s, by_slope=order, threads=threads), one)
    np.testing.assert_array_equal(_auction.envelope_min(w, x, s, threads=4), one)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.array([np.min(w - x * q) for q in s])
    finite = np.isfinite(want)
    np.testing.assert_allclose(one[finite], want[finite], rtol=1e-12, atol=1e-12)
    xs = x[order]
    t = int(np.flatnonzero(xs[100_001:] == xs[100_000:-1])[0]) + 100_000  # inside a run of equal slopes
    bad = order.copy()
    bad[t + 1] = bad[t]  # still sorts x: only the missing column gives it away
    with pytest.raises(ValueError, match="by_slope"):
        _auction.envelope_min(w, x, s, by_slope=bad, threads=4)
    bad_w = w.copy()
    bad_w[150_000] = np.nan
    with pytest.raises(ValueError, match="entry 150000"):
        _auction.envelope_min(bad_w, x, s, by_slope=order, threads=4)
    with pytest.raises(ValueError, match="s must be finite .entry 3."):
        _auction.envelope_min(w, x, np.array([0.0, 1.0, 2.0, np.inf]), by_slope=order, threads=4)


def test_envelope_min_walk_of_sorted_queries_equals_binary_searches() -> None:
    """Given their order (by_query), the queries are walked along the breakpoints: the same
    answers bit for bit as a binary search each, on threads, with queries on the breakpoints
    and tied; a by_query that is not a permutation sorting s is refused, and beyond
    ENVELOPE_WALK_MAX_QUERIES it is not used."""
    rng = np.random.default_rng(3)
    m = 70_000
    x = np.round(np.exp(rng.standard_normal(m)), 4)
    w = 0.5 * x * x + 1e-3 * rng.standard_normal(m)
    w[100:20000] = 3.0 + x[100:20000] * 2.5  # concurrent at s = 2.5
    order = np.argsort(x, kind="stable")
    s = np.concatenate([rng.uniform(0.0, 10.0, 60000), np.repeat([2.5, 0.0, x.max(), -1.0], 50), rng.choice(x, 1000)])
    rng.shuffle(s)
    searched = _auction.envelope_min(w, x, s, by_slope=order)
    by_s = np.argsort(s, kind="stable")
    for threads in (1, 3):
        np.testing.assert_array_equal(_auction.envelope_min(w, x, s, by_slope=order, threads=threads), searched)
        np.testing.assert_array_equal(_auction.envelope_min(w, x, s, by_slope=order, by_query=by_s, threads=threads),
                                      searched)
    small = s[:10]
    np.testing.assert_array_equal(_auction.envelope_min(w, x, small, by_query=np.argsort(small)), searched[:10])
    want = np.array([np.min(w - x * q) for q in s[:300]])
    np.testing.assert_allclose(searched[:300], want, rtol=1e-12, atol=1e-12)
    for bad in (by_s[::-1].copy(), np.where(by_s == by_s[5], by_s[6], by_s), np.where(by_s == by_s[7], len(s), by_s)):
        with pytest.raises(ValueError, match="by_query must be a permutation sorting s"):
            _auction.envelope_min(w, x, s, by_slope=order, by_query=bad, threads=3)
    with pytest.raises(ValueError, match="by_query"):
        _auction.envelope_min(w, x, s, by_query=by_s[:-1])
    np.testing.assert_array_equal(_auction.envelope_min(w[:0], x[:0], s, by_query=by_s), np.full(len(s), np.inf))
    many = np.resize(s, _auction.ENVELOPE_WALK_MAX_QUERIES + 1)
    unused = np.zeros(len(many), np.int64)  # not a permutation: beyond the walk's range, not read
    np.testing.assert_array_equal(_auction.envelope_min(w, x, many, by_slope=order, by_query=unused),
                                  np.resize(searched, len(many)))


@pytest.mark.parametrize("n", [0, 1, 2, 1000, 70_001, 200_003])
def test_argsort_and_searchsorted_equal_numpy(n: int) -> None:
    """_auction.argsort / searchsorted (the bounds' sorts, on threads) give numpy's stable
    order and left insertion points: NaN last, ±0 and ties by index, ±inf, runs merged."""
    rng = np.random.default_rng(n)
    x = rng.integers(-50, 50, n).astype(np.float64) / 7  # many ties
    for step, value in ((97, np.nan), (89, np.inf), (83, -np.inf), (79, -0.0), (73, 0.0)):
        x[::step] = value
    order = np.argsort(x, kind="stable")
    q = np.concatenate([rng.uniform(-8, 8, 500), [np.nan, np.inf, -np.inf, 0.0, -0.0, 1 / 7]])
    for threads in (1, 2, 3, 8):
        np.testing.assert_array_equal(_auction.argsort(x, threads=threads), order)
        np.testing.assert_array_equal(_auction.searchsorted(x[order], q, threads=threads),
                                      np.searchsorted(x[order], q, side="left"))
    if n > 2:
        with pytest.raises(ValueError, match="ascending"):
            _auction.searchsorted(x, q)  # not sorted


def test_argsort_radix_and_searchsorted_walk_equal_numpy() -> None:
    """The radix sort's bytes (every float class: both zeros, subnormals, NaN of either sign and
    any payload, ±inf, keys differing only in their lowest byte or their sign) and the walk of
    sorted queries (from 1024 queries, ties with the entries) give numpy's answers."""
    rng = np.random.default_rng(11)
    n = 5000
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 2.2e-308, np.inf, -np.inf, np.nan, -np.nan,
                        np.frombuffer(np.uint64(0x7FF0000000000123).tobytes(), np.float64)[0],
                        np.frombuffer(np.uint64(0xFFF8000000000001).tobytes(), np.float64)[0],
                        1.0, np.nextafter(1.0, 2.0), np.nextafter(1.0, 0.0), -1.0, 1e308, -1e308])
    wide = rng.standard_normal(n // 4) * 10.0 ** rng.integers(-300, 300, n // 4)
    x = np.concatenate([rng.choice(special, n // 2), wide, np.round(rng.standard_normal(n - n // 2 - n // 4), 1)])
    rng.shuffle(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    q = np.concatenate([rng.choice(xs, 3000), rng.standard_normal(1000), special])
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(_auction.argsort(x, threads=threads), order)
        np.testing.assert_array_equal(_auction.searchsorted(xs, q, threads=threads),
                                      np.searchsorted(xs, q, side="left"))
    big = np.repeat(x, 30)  # runs of a thread each, merged (2^15 entries a run)
    np.testing.assert_array_equal(_auction.argsort(big, threads=4), np.argsort(big, kind="stable"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=64, max_size=300),
       st.integers(1, 3))
def test_argsort_radix_hypothesis(xs, threads) -> None:
    x = np.array(xs, np.float64)
    q = np.tile(x, 1 + 1024 // len(x))  # the walk's path
    order = np.argsort(x, kind="stable")
    np.testing.assert_array_equal(_auction.argsort(x, threads=threads), order)
    np.testing.assert_array_equal(_auction.searchsorted(x[order], q, threads=threads),
                                  np.searchsorted(x[order], q, side="left"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=40),
       st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=10), st.integers(1, 4))
def test_argsort_and_searchsorted_hypothesis(xs, qs, threads) -> None:
    x, q = np.array(xs, np.float64), np.array(qs, np.float64)
    order = np.argsort(x, kind="stable")
    np.testing.assert_array_equal(_auction.argsort(x, threads=threads), order)
    np.testing.assert_array_equal(_auction.searchsorted(x[order], q, threads=threads),
                                  np.searchsorted(x[order], q, side="left"))


def test_thread_pool_under_concurrent_callers_and_fork() -> None:
    """The native kernels' thread pool (csrc/parallel.hpp): calls from several Python threads
    at once (the GIL released: one takes the pool, the others start threads of their own) give
    the same results as one thread, and a child made by fork() gets a pool of its own (its
    parent's parked workers do not exist there)."""
    rng = np.random.default_rng(11)
    x = rng.random(300_000)
    want = np.argsort(x, kind="stable")
    results, errors = [], []

    def call() -> None:
        try:
            for _ in range(20):
                results.append(np.array_equal(_auction.argsort(x, threads=4), want))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 80 and all(results)
    if not hasattr(os, "fork"):
        return
    import warnings

    with warnings.catch_warnings():  # Python >= 3.12 warns of fork() in a process with threads: the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if the pool works there
        ok = np.array_equal(_auction.argsort(x, threads=4), want)
        os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("argsort on threads hung in a forked child")


def _with_and_without_simd(code: str) -> list:
    """The JSON that ``code`` prints, run in a fresh process as is and with MECHPERM_NO_SIMD=1
    (read once per process: the scalar kernels)."""
    import json
    import subprocess
    import sys

    runs = []
    for env in ({}, {"MECHPERM_NO_SIMD": "1"}):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, **env}, check=True)
        runs.append(json.loads(proc.stdout))
    return runs


def test_scalar_and_simd_kernels_agree():
    code = (
        "import json, numpy as np\n"
        "from mechperm.assign import assign\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for n, m, meth in [(37, 37, 'dense'), (200, 230, 'dense'), (700, 700, 'candidates')]:\n"
        "    C = rng.random((n, m)).astype(np.float32)\n"
        "    a = assign(C, method=meth)\n"
        "    out.append([a.row_to_col.tolist(), a.objective])\n"
        "print(json.dumps(out))\n"
    )
    runs = _with_and_without_simd(code)
    assert runs[0] == runs[1]


def test_scalar_and_simd_sparse_scans_agree():
    """A sparse row's bid (best and second best of c + p over its arcs, first on ties) in AVX2
    with the prices gathered, against the scalar loop (MECHPERM_NO_SIMD=1): the same solves bit
    for bit (duals, assignment) on auction-heavy graphs: heavy-tailed and tied costs, rows of
    1 to 300 arcs, float32 and float64 costs, int32 and int64 columns, partial mode."""
    code = (
        "import json, numpy as np\n"
        "from mechperm import _auction\n"
        "rng = np.random.default_rng(1)\n"
        "out = []\n"
        "for case in range(8):\n"
        "    n = m = 600\n"
        "    deg = rng.integers(1, 300, n)\n"
        "    deg[::7] = rng.integers(1, 16, len(deg[::7]))\n"
        "    cols = [np.sort(np.concatenate([[i], rng.choice(m, d - 1, replace=False)])) if d > 1 else np.array([i])\n"
        "            for i, d in enumerate(deg)]\n"
        "    ix = np.concatenate([np.unique(c) for c in cols])\n"
        "    ip = np.concatenate([[0], np.cumsum([len(np.unique(c)) for c in cols])]).astype(np.int64)\n"
        "    w = np.exp(2.0 * rng.standard_normal(len(ix)))\n"
        "    if case % 2: w = np.round(w, 1)  # ties\n"
        "    w = w.astype(np.float32 if case % 4 < 2 else np.float64)\n"
        "    ix = ix.astype(np.int32 if case % 3 else np.int64)\n"
        "    kw = {'unmatched_cost': np.full(n, 5.0)} if case >= 6 else {'check_feasible': 'lazy'}\n"
        "    r = _auction.solve_sparse(ip, ix, w, n, m, sap_budget=0.0, **kw)\n"
        "    out.append([[float(x).hex() for x in r['u']], [float(x).hex() for x in r['v']],\n"
        "                np.asarray(r['row_to_col']).tolist(), int(r['bids'])])\n"
        "print(json.dumps(out))\n"
    )
    runs = _with_and_without_simd(code)
    assert all(case[3] > 0 for case in runs[0])  # auction bids: the scans ran
    assert runs[0] == runs[1]


def _auction_heavy_graph(rng, n: int, case: int):
    """A CSR graph that keeps the auction busy: heavy-tailed costs (tied where case is odd), rows
    of 1 to n/2 arcs, each with its own column; float32 / float64 costs, int32 / int64 columns."""
    deg = rng.integers(1, n // 2, n)
    deg[::7] = rng.integers(1, 16, len(deg[::7]))
    cols = [np.unique(np.concatenate([[i], rng.choice(n, d - 1, replace=False)])) for i, d in enumerate(deg)]
    ix = np.concatenate(cols)
    ip = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int64)
    w = np.exp(2.0 * rng.standard_normal(len(ix)))
    if case % 2:
        w = np.round(w, 1)
    return ip, ix.astype(np.int32 if case % 3 else np.int64), w.astype(np.float32 if case % 4 < 2 else np.float64)


def _same_solve(r, ref) -> bool:
    return all(np.array_equal(r[k], ref[k]) for k in ("u", "v", "row_to_col")) and r["bids"] == ref["bids"]


@pytest.mark.parametrize("case", range(8))
def test_scans_ahead_give_the_same_solve(case):
    """scan_ahead: the auction's next rows scanned on the threads ahead of their bids, each scan
    used only while the prices of its best and second best columns are where it saw them. The
    same bids in the same order as one thread: duals, assignment and bid count bit for bit, on
    2 and 3 threads, cold and warm, partial mode, and on dense costs; scans go stale (rescans)."""
    rng = np.random.default_rng(10 + case)
    n = 600
    ip, ix, w = _auction_heavy_graph(rng, n, case)
    kw = {"unmatched_cost": np.full(n, 5.0)} if case >= 6 else {"check_feasible": "lazy"}
    ref = _auction.solve_sparse(ip, ix, w, n, n, sap_budget=0.0, threads=1, scan_ahead=False, **kw)
    assert ref["bids"] > 0 and ref["rescans"] == 0
    rescans = 0
    for threads in (2, 3):
        r = _auction.solve_sparse(ip, ix, w, n, n, sap_budget=0.0, threads=threads, scan_ahead=True, **kw)
        assert _same_solve(r, ref)
        rescans += r["rescans"]
    assert rescans > 0  # bids between a scan and its use moved its columns' prices
    # a warm start from duals a little off: its auction phases, ahead and not
    v0 = ref["v"] + (0.0 if case >= 6 else rng.uniform(0, 0.5, n))
    init = dict(init_v=np.concatenate([v0, ref["v_dummy"]]) if case >= 6 else v0,
                init_row_to_col=np.asarray(ref["row_to_col"], np.int64))
    warm1 = _auction.solve_sparse(ip, ix, w, n, n, threads=1, scan_ahead=False, **init, **kw)
    warm2 = _auction.solve_sparse(ip, ix, w, n, n, threads=2, scan_ahead=True, **init, **kw)
    assert _same_solve(warm2, warm1)
    if case < 2:  # dense rows: the same
        C = np.exp(2.0 * rng.standard_normal((300, 300))).astype(np.float32)
        d1 = _auction.solve_dense(C, sap_budget=0.0, threads=1, scan_ahead=False)
        d2 = _auction.solve_dense(C, sap_budget=0.0, threads=2, scan_ahead=True)
        assert d1["bids"] > 0 and _same_solve(d2, d1)


def test_scan_ahead_is_opt_in_by_environment():
    """scan_ahead=None reads MECHPERM_SCAN_AHEAD (off unless "1")."""
    code = (
        "import json, numpy as np\n"
        "from mechperm import _auction\n"
        "rng = np.random.default_rng(3)\n"
        "C = np.exp(2.0 * rng.standard_normal((400, 400))).astype(np.float32)\n"
        "r = _auction.solve_dense(C, sap_budget=0.0, threads=2)\n"
        "print(json.dumps(int(r['rescans'])))\n"
    )
    seen = {}
    for value in ("1", "0"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "MECHPERM_SCAN_AHEAD": value})
        seen[value] = int(proc.stdout)
    assert seen["1"] > 0 and seen["0"] == 0


@pytest.mark.parametrize("seed", range(40))
def test_max_matching_size_equals_scipys(seed):
    """Hopcroft-Karp against scipy's maximum_bipartite_matching: sizes, and a valid matching on
    arcs of the graph (sparse, dense, unbalanced, with empty rows; int32 and int64 columns)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    deg = rng.integers(0, int(rng.integers(1, 6)) + 1, n)
    rows = np.repeat(np.arange(n), deg)
    cols = rng.integers(0, m, len(rows)) if seed % 2 else (rows * 7 + rng.integers(-3, 4, len(rows))) % m
    M = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, m))
    M.sum_duplicates()
    M.sort_indices()
    ref = int((maximum_bipartite_matching(M, perm_type="column") >= 0).sum())
    idx = M.indices.astype(np.int32 if seed % 3 else np.int64)
    # costs (float32 / float64, ties included) only steer the greedy start: the same size
    costs = rng.integers(0, 4, len(idx)).astype(np.float32 if seed % 4 < 2 else np.float64)
    for kw in ({}, {"costs": costs}):
        size, r2c = _auction.max_matching(M.indptr.astype(np.int64), idx, n, m, **kw)
        assert size == ref == int((r2c >= 0).sum())
        matched = np.flatnonzero(r2c >= 0)
        assert len(set(r2c[matched].tolist())) == len(matched)
        assert all(r2c[i] in M.indices[M.indptr[i] : M.indptr[i + 1]] for i in matched)


def test_max_matching_starts_from_each_rows_cheapest_column() -> None:
    """With costs, the greedy start takes each row's cheapest free column: on a planted graph
    listed in column order (each row's partner cheapest among 8 arcs) it is the partner for
    every row, where the first free column is not; a taken cheapest column falls back to the
    cheapest free one. Bad costs are refused with the reason."""
    rng = np.random.default_rng(5)
    n, deg = 3000, 8
    perm = rng.permutation(n)
    cols = np.concatenate([perm[:, None], rng.integers(0, n, (n, deg - 1))], axis=1)
    costs = np.concatenate([np.zeros((n, 1)), 1.0 + rng.random((n, deg - 1))], axis=1)
    order = np.argsort(cols, axis=1, kind="stable")
    ip = np.arange(n + 1, dtype=np.int64) * deg
    idx = np.take_along_axis(cols, order, 1).reshape(-1).astype(np.int32)
    cost = np.take_along_axis(costs, order, 1).reshape(-1)
    size, plain = _auction.max_matching(ip, idx, n, n)
    assert size == n and (plain != perm).any()
    for dtype in (np.float32, np.float64):
        size, r2c = _auction.max_matching(ip, idx, n, n, costs=cost.astype(dtype))
        assert size == n and np.array_equal(r2c, perm)
    # two rows whose cheapest column is the same: the second takes its next cheapest
    size, r2c = _auction.max_matching(np.array([0, 3, 6], np.int64), np.array([0, 1, 2, 0, 1, 2], np.int32), 2, 3,
                                      costs=np.array([0.0, 5.0, 9.0, 0.0, 7.0, 1.0]))
    assert size == 2 and r2c.tolist() == [0, 2]
    for bad, why in ((cost[:-1], "indptr"), (cost.astype(np.int64), "float32 or float64"), (cost[::2], "entries")):
        with pytest.raises(ValueError, match=why):
            _auction.max_matching(ip, idx, n, n, costs=bad)


@pytest.mark.parametrize("case", ["crowded", "sparse", "hubs"])
def test_max_matching_searches_then_phases(case: str) -> None:
    """max_matching's row-by-row searches (and Hopcroft-Karp's phases once they pass their arc
    budget) against scipy: "crowded", 2000 rows on 12 columns (each failing search rescans the
    matched rows: the budget runs out, the phases finish); "sparse", 5000 x 5200 at ~2 arcs a
    row (many searches, some failing); "hubs", a candidate-like graph whose rows mostly list the
    same few columns besides their own."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    rng = np.random.default_rng(len(case))
    if case == "crowded":
        n, m = 2000, 12
        rows, cols = np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
    elif case == "sparse":
        n, m = 5000, 5200
        deg = rng.integers(0, 5, n)
        rows = np.repeat(np.arange(n), deg)
        cols = rng.integers(0, m, len(rows))
    else:
        n = m = 4000
        hubs = rng.integers(0, 40, (n, 6))
        own = rng.permutation(m)[:, None]
        lost = rng.random(n) < 0.1  # these rows lose their own column: only hubs are left to them
        own[lost] = hubs[lost, :1]
        rows = np.repeat(np.arange(n), 7)
        cols = np.concatenate([hubs, own], axis=1).reshape(-1)
    M = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, m))
    M.sum_duplicates()
    M.sort_indices()
    ref = int((maximum_bipartite_matching(M, perm_type="column") >= 0).sum())
    arcs = set(zip(*M.nonzero()))
    costs = rng.random(len(M.indices)).astype(np.float32)
    for kw in ({}, {"costs": costs}):  # the first free column, or the cheapest, to start from
        size, r2c = _auction.max_matching(M.indptr.astype(np.int64), M.indices.astype(np.int32), n, m, **kw)
        assert size == ref == int((r2c >= 0).sum())
        matched = np.flatnonzero(r2c >= 0)
        assert len(np.unique(r2c[matched])) == len(matched)
        assert all((i, r2c[i]) in arcs for i in matched)


def test_assign_exact_infeasible_candidates_are_repaired():
    # the k = 1 row picks of a heavy-tailed instance pile onto a few columns
    C, A, B = sae_like(200, sigma=3.0, seed=4)
    C = C.astype(np.float64)
    order = np.argsort(C, axis=1)[:, :1]
    rows = np.repeat(np.arange(200), 1)
    indptr = np.arange(201, dtype=np.int64)
    g = CandidateGraph(indptr, order.ravel().astype(np.int32), C[rows, order.ravel()])
    size, _ = _auction.max_matching(g.indptr, g.indices, 200, 200)
    assert size < 200

    def price(rows, u, v):
        red = C[rows] - u[rows, None] - v[None, :]
        r, c = np.nonzero(red < 0)
        return rows[r], c, C[rows[r], c]

    res = assign_exact(200, 200, g, price)
    assert res.stats["slack"] > 0
    check_valid(res, C)
    assert close(res.objective, scipy_objective(C)) and res.certified


def test_assign_exact_partial_and_plain_tuple():
    rng = np.random.default_rng(9)
    C = rng.random((30, 40))
    lam = np.full(30, 0.2)
    indptr = np.arange(0, 31, dtype=np.int64)
    g = (indptr, np.zeros(30, np.int64), C[:, 0].copy())

    def price(rows, u, v):
        red = C[rows] - u[rows, None] - v[None, :]
        r, c = np.nonzero(red < 0)
        return rows[r], c, C[rows[r], c]

    res = assign_exact(30, 40, g, price, unmatched_cost=lam)
    assert close(res.objective, scipy_objective(padded(C, lam)))
    assert res.certified


def test_assign_exact_rejects_more_rows_than_columns():
    with pytest.raises(ValueError, match="n_rows <= n_cols"):
        assign_exact(3, 2, (np.zeros(4, np.int64), np.zeros(0, np.int32), np.zeros(0)),
                     lambda r, u, v: (r, r, u))


# ---- determinism, threads, interruption ---------------------------------------------------------


def test_deterministic():
    C, _, _ = sae_like(700, seed=2)
    for method in ("dense", "candidates"):
        a, b = run(C, method), run(C, method)
        assert np.array_equal(a.row_to_col, b.row_to_col)
        assert np.array_equal(a.u, b.u) and np.array_equal(a.v, b.v)
        assert a.stats == b.stats


def test_gil_released():
    C = np.random.default_rng(0).random((3000, 3000))
    ticks = 0
    started, done = threading.Event(), threading.Event()
    seconds = [0.0]

    def solve():
        started.set()
        t0 = time.perf_counter()
        _auction.solve_dense(C)
        seconds[0] = time.perf_counter() - t0
        done.set()

    t = threading.Thread(target=solve)
    t.start()
    started.wait()
    while not done.is_set():
        ticks += 1
    t.join()
    # Without the GIL released the main thread could not count at all during the solve.
    assert seconds[0] > 0.02 and ticks > 100_000 * min(seconds[0], 1.0)


@pytest.mark.skipif(os.name != "posix", reason="sends a real SIGINT to this process")
def test_keyboard_interrupt_is_honoured():
    # A real SIGINT from another process, as Ctrl-C sends it: CPython's C handler only marks it
    # pending, and the solver's poll (PyErr_CheckSignals on this thread, about once a millisecond
    # of work) must raise it mid-solve, not when the ~1 s solve returns. (A Python timer thread
    # calling _thread.interrupt_main() needs the GIL, which the poll takes every millisecond: on a
    # loaded machine that thread was once starved for the test's whole 10 s loop.)
    import signal

    C = np.random.default_rng(0).integers(0, 10**6, (4000, 4000)).astype(np.float64)
    # Python raises KeyboardInterrupt only where SIGINT was not ignored when it started (a job
    # started in the background by a shell without job control inherits SIG_IGN).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sender = (
        "import os, signal, sys, time\n"
        "print('ready', flush=True); time.sleep(0.2)\n"
        f"print(time.time(), flush=True); os.kill({os.getpid()}, signal.SIGINT)\n"
    )
    killer = subprocess.Popen([sys.executable, "-c", sender], stdout=subprocess.PIPE, text=True)
    try:
        assert killer.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            while time.perf_counter() - start < 30.0:  # the signal comes 0.2 s into the first
                _auction.solve_dense(C, eps_start=-1.0)
        raised = time.time()
    finally:
        killer.wait()
        signal.signal(signal.SIGINT, previous)
    sent = float(killer.stdout.readline())
    assert 0.0 <= raised - sent < 0.25, f"raised {raised - sent:.3f} s after the signal"


# ---- bad input: one test per contract -----------------------------------------------------------


def test_input_nan():
    C = np.ones((3, 3))
    C[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        assign(C)


def test_input_inf():
    C = np.ones((3, 3))
    C[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        assign(C)


def test_input_neg_inf_candidates():
    C = np.ones((3000, 3000), np.float32)
    C[5, 7] = -np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        assign(C, method="candidates")


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_input_wrong_ndim(shape):
    with pytest.raises(ValueError, match="must be 2-D"):
        assign(np.zeros(shape))


@pytest.mark.parametrize("dtype", [bool, complex, object, "U3"])
def test_input_wrong_dtype(dtype):
    with pytest.raises(ValueError, match="dtype"):
        assign(np.zeros((2, 2), dtype=dtype))


def test_input_bad_method():
    with pytest.raises(ValueError, match="method must be"):
        assign(np.zeros((2, 2)), method="magic")  # type: ignore[arg-type]


def test_input_bad_unmatched_cost():
    with pytest.raises(ValueError, match="unmatched_cost must be finite"):
        assign(np.zeros((2, 2)), unmatched_cost=np.nan)
    with pytest.raises(ValueError, match="unmatched_cost must be a scalar or have shape"):
        assign(np.zeros((2, 2)), unmatched_cost=np.zeros(3))


def test_sparse_indptr_not_monotone():
    with pytest.raises(ValueError, match="non-decreasing"):
        assign_sparse(np.array([0, 2, 1, 3]), np.array([0, 1, 2]), np.ones(3), (3, 3))


def test_sparse_indptr_not_starting_at_zero():
    with pytest.raises(ValueError, match="start at 0"):
        assign_sparse(np.array([1, 2, 3]), np.array([0, 1, 1]), np.ones(3), (2, 2))


def test_sparse_index_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        assign_sparse(np.array([0, 1, 2]), np.array([0, 5]), np.ones(2), (2, 2))
    with pytest.raises(ValueError, match="out of range"):
        assign_sparse(np.array([0, 1, 2]), np.array([0, -1]), np.ones(2), (2, 2))


def test_sparse_wrong_lengths():
    with pytest.raises(ValueError, match="indptr must be 1-D with n_rows"):
        assign_sparse(np.array([0, 1]), np.array([0]), np.ones(1), (2, 2))
    with pytest.raises(ValueError, match="indices and costs must be 1-D"):
        assign_sparse(np.array([0, 1, 2]), np.array([0, 1]), np.ones(3), (2, 2))


def test_sparse_costs_nan():
    with pytest.raises(ValueError, match="NaN or infinity"):
        assign_sparse(np.array([0, 1, 2]), np.array([0, 1]), np.array([1.0, np.nan]), (2, 2))


def test_sparse_wrong_index_dtype():
    with pytest.raises(ValueError, match="integer arrays"):
        assign_sparse(np.array([0, 1, 2]), np.array([0.0, 1.0]), np.ones(2), (2, 2))


def test_sparse_bad_shape():
    with pytest.raises(ValueError, match="shape must be"):
        assign_sparse(np.array([0]), np.array([], np.int64), np.ones(0), (-1, 2))


def test_native_rejects_silent_copies():
    with pytest.raises(ValueError, match="C-contiguous"):
        _auction.solve_dense(np.ones((4, 6))[:, ::2])
    with pytest.raises(ValueError, match="float32 or float64"):
        _auction.solve_dense(np.ones((3, 3), np.int64))
    with pytest.raises(ValueError, match="more rows"):
        _auction.solve_dense(np.ones((3, 2)))
    with pytest.raises(ValueError, match="indptr must have dtype int64"):
        _auction.solve_sparse(np.array([0, 1], np.int32), np.array([0], np.int32), np.ones(1), 1, 1)


# ---- hypothesis: many small problems against scipy ----------------------------------------------


@st.composite
def small_problem(draw, max_n: int = 12):
    n = draw(st.integers(1, max_n))
    m = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["uniform", "ties", "binary", "log", "negative", "huge_range", "int"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    C = {
        "uniform": lambda: rng.random((n, m)),
        "ties": lambda: rng.integers(0, 3, (n, m)).astype(float),
        "binary": lambda: rng.integers(0, 2, (n, m)).astype(float) * 1e-3,
        "log": lambda: np.exp(rng.uniform(np.log(1e-8), np.log(1e8), (n, m))),
        "negative": lambda: rng.normal(size=(n, m)) * 1e3,
        "huge_range": lambda: rng.choice([1e-8, 1.0, 1e8], size=(n, m)) * rng.random((n, m)),
        "int": lambda: rng.integers(-20, 20, (n, m)).astype(float),
    }[kind]()
    if draw(st.booleans()):
        C = C.astype(np.float32)
    partial = draw(st.sampled_from([None, None, "scalar", "rows"]))
    lam = None
    if partial == "scalar":
        lam = float(np.median(C)) if draw(st.booleans()) else float(rng.normal())
    elif partial == "rows":
        lam = rng.random(n) * float(np.abs(C).max() + 1)
    method = draw(st.sampled_from(["dense", "candidates"]))
    maximize = draw(st.booleans())
    return C, lam, method, maximize


def check_against_scipy(C, lam, method, maximize):
    res = assign(C, unmatched_cost=lam, method=method, k=1 + C.shape[0] % 3, maximize=maximize)
    W = np.asarray(C, np.float64)
    if lam is not None:
        lam_arr = np.broadcast_to(np.asarray(lam, np.float64), (C.shape[0],)).copy()
        if maximize:
            expected = -scipy_objective(padded(-W, -lam_arr))
        else:
            expected = scipy_objective(padded(W, lam_arr))
        check_valid(res, W, lam=lam_arr, maximize=maximize)
    else:
        expected = scipy_objective(W, maximize=maximize)
        check_valid(res, W, maximize=maximize)
    assert close(res.objective, expected), (res.objective, expected)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problem())
def test_hypothesis_small_problems(problem):
    check_against_scipy(*problem)


@slow
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problem(max_n=40))
def test_hypothesis_larger_problems(problem):
    check_against_scipy(*problem)


# ---- shortest paths first (SolveOptions::sap_budget) -------------------------------------------


def _native(C: np.ndarray, lam, sparse: bool, **kw) -> dict:
    """The native solvers directly (dense array or its complete CSR graph)."""
    n, m = C.shape
    lam_arr = None if lam is None else np.broadcast_to(np.asarray(lam, np.float64), (n,)).copy()
    if not sparse:
        return _auction.solve_dense(C, unmatched_cost=lam_arr, **kw)
    indptr = np.arange(n + 1, dtype=np.int64) * m
    return _auction.solve_sparse(indptr, np.tile(np.arange(m, dtype=np.int32), n), C.reshape(-1), n, m,
                                 unmatched_cost=lam_arr, **kw)


def _check_native(raw: dict, C: np.ndarray, lam) -> None:
    """Optimal against scipy, with duals that certify it (reduced costs >= 0, 0 on the assignment)."""
    W = np.asarray(C, np.float64)
    n, m = W.shape
    r2c = raw["row_to_col"]
    on = np.flatnonzero(r2c >= 0)
    scale = max(1.0, np.abs(W).max(initial=0.0), np.abs(raw["v"]).max(initial=0.0))
    red = W - raw["u"][:, None] - raw["v"][None, :]
    assert red.min(initial=0.0) >= -1e-9 * scale
    assert np.all(np.abs(red[on, r2c[on]]) <= 1e-9 * scale)
    if lam is None:
        assert len(on) == n and len(np.unique(r2c)) == n
        expected = scipy_objective(W)
    else:
        lam_arr = np.broadcast_to(np.asarray(lam, np.float64), (n,))
        expected = scipy_objective(padded(W, lam_arr))
    assert close(raw["objective"], expected), (raw["objective"], expected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problem(max_n=30), st.sampled_from([0.0, 1e-12, 1.0, 1e12]), st.booleans())
def test_every_sap_budget_is_optimal(problem, budget, sparse):
    """0: the auction alone; 1e-12: the attempt gives up after its first path and the auction
    restarts from scratch; 1 (the default) and 1e12: shortest paths finish whatever they start."""
    C, lam, _, _ = problem
    if C.shape[0] > C.shape[1] and lam is None:
        C = C.T
    raw = _native(np.ascontiguousarray(C), lam, sparse, sap_budget=budget)
    _check_native(raw, C, lam)
    if budget == 0.0:
        assert raw["sap_trial"] == 0
    if budget == 1e12 and raw["phases"] == 0 and raw["bids"] == 0:
        assert raw["sap_trial"] in (0, 1)  # 0: nothing to solve (no auction phase planned)


@pytest.mark.parametrize("sparse", [False, True])
def test_sap_first_solves_planted_matchings_alone(sparse):
    """Costs with one clear best column per row (a planted match): shortest paths finish alone,
    with no auction phase, and agree with the auction and scipy."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((400, 64))
    B = A[rng.permutation(400)] + 0.2 * rng.standard_normal((400, 64))
    C = np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0)
    first = _native(C, None, sparse)
    assert first["sap_trial"] == 1 and first["phases"] == 0 and first["bids"] == 0
    _check_native(first, C, None)
    auction = _native(C, None, sparse, sap_budget=0.0)
    assert auction["phases"] > 0
    assert close(first["objective"], auction["objective"])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("lam", [None, 0.05])
def test_sap_first_gives_up_on_long_paths(sparse, lam):
    """Uniform costs leave many rows free after the row reduction, with long paths: the attempt
    stops at its budget and the auction, restarted from scratch, solves it optimally."""
    C = np.random.default_rng(5).random((500, 500))
    raw = _native(C, lam, sparse)
    assert raw["sap_trial"] == 2 and raw["phases"] > 0
    _check_native(raw, C, lam)


@pytest.mark.parametrize("sparse", [False, True])
def test_warm_start_at_the_optimum_runs_no_phase(sparse):
    """A complete warm start with every row at its best column skips the auction; one that is
    only close is repaired by shortest paths from it (the first try of the automatic schedule)
    or, with the paths ruled out, starts the epsilon schedule at its largest violation. All
    stay optimal."""
    C = np.random.default_rng(7).random((300, 300))
    opt = _native(C, None, sparse, sap_budget=0.0)
    again = _native(C, None, sparse, init_v=opt["v"], init_row_to_col=opt["row_to_col"])
    assert again["phases"] == 0 and again["bids"] == 0
    _check_native(again, C, None)
    r2c = opt["row_to_col"].copy()
    r2c[[0, 1]] = r2c[[1, 0]]  # two rows swapped: no longer optimal, still complete
    near = _native(C, None, sparse, init_v=opt["v"], init_row_to_col=r2c)
    assert near["sap_trial"] == 1 and near["phases"] == 0 and near["augmentations"] >= 1
    _check_native(near, C, None)
    near = _native(C, None, sparse, init_v=opt["v"], init_row_to_col=r2c, sap_budget=0.0)
    assert near["sap_trial"] == 0 and near["phases"] > 0
    _check_native(near, C, None)


@pytest.mark.parametrize("sparse", [False, True])
def test_warm_start_far_off_gives_up_the_paths(sparse):
    """A warm start far from the optimum (the assignment of other costs) makes long paths: the
    warm trial stops at its budget and the auction finishes from the warm start; optimal."""
    rng = np.random.default_rng(9)
    C = np.exp(2 * rng.normal(size=(400, 400)))
    other = _native(np.exp(2 * rng.normal(size=(400, 400))), None, sparse)
    far = _native(C, None, sparse, init_v=other["v"], init_row_to_col=other["row_to_col"], sap_budget=0.05)
    assert far["sap_trial"] == 2 and far["phases"] > 0
    _check_native(far, C, None)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("budget", [0.0, 1.0])
def test_threads_give_identical_results(sparse, budget):
    """The parallel passes (checks, releases, duals) change no bit of the result."""
    rng = np.random.default_rng(8)
    C = np.exp(rng.normal(size=(700, 900)) * 2).astype(np.float32)
    one = _native(C, None, sparse, sap_budget=budget, threads=1)
    for threads in (2, 5):
        par = _native(C, None, sparse, sap_budget=budget, threads=threads)
        for key in ("row_to_col", "col_to_row", "u", "v"):
            assert np.array_equal(one[key], par[key]), key
        assert one["objective"] == par["objective"] and one["dual_objective"] == par["dual_objective"]
        warm = _native(C, None, sparse, init_v=one["v"], init_row_to_col=one["row_to_col"], threads=threads)
        assert np.array_equal(warm["row_to_col"], one["row_to_col"])
    bad = C.copy()
    bad[650, 3], bad[651, 0] = np.nan, np.inf  # the first bad entry is reported, whatever the threads
    for threads in (1, 3):
        with pytest.raises(ValueError, match=str(650 * 900 + 3) if sparse else r"\(650, 3\)"):
            _native(bad, None, sparse, threads=threads)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("integral", [False, True])
def test_threads_give_identical_results_in_groups_of_rows(sparse: bool, integral: bool) -> None:
    """Square problems past 4096 rows: the first pass (range, integrality, column minima) runs
    in groups of rows merged in order, the free rows' first scans on the threads; nothing
    changes by a bit, ±0 costs included."""
    rng = np.random.default_rng(12)
    n = 4500
    if sparse:
        deg = 12
        cols = np.sort(np.stack([rng.permutation(n)] + [rng.integers(0, n, n) for _ in range(deg - 1)], 1), 1)
        keep = np.concatenate([np.ones((n, 1), bool), cols[:, 1:] != cols[:, :-1]], 1)
        indptr = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
        indices = cols[keep].astype(np.int32)
        costs = rng.random(len(indices)) * 100
        costs = np.round(costs) if integral else costs
        costs[::97] = -0.0
        costs = costs.astype(np.float32)
        runs = [_auction.solve_sparse(indptr, indices, costs, n, n, threads=t) for t in (1, 3)]
    else:
        C = (np.abs(np.arange(n)[:, None] - rng.permutation(n)[None, :]) % 50).astype(np.float32)
        C += 0 if integral else rng.random((n, n), dtype=np.float32)
        C[::7, ::11] = -0.0
        runs = [_auction.solve_dense(C, threads=t) for t in (1, 3)]
    for key in ("row_to_col", "u", "v"):
        assert np.array_equal(runs[0][key], runs[1][key]), key


def test_warm_start_skips_the_attempt():
    """Warm starts (the exact loop's restarts) go straight to their own schedule."""
    C = np.random.default_rng(6).random((50, 60))
    cold = _native(C, None, False)
    warm = _native(C, None, False, init_v=cold["v"], init_row_to_col=cold["row_to_col"], eps_start=-1.0)
    assert warm["sap_trial"] == 0
    assert close(warm["objective"], cold["objective"])



@pytest.mark.parametrize("seed", range(6))
def test_warm_restart_checks_only_the_changed_rows(seed):
    """The exact loop's restart: solve on a graph, add arcs to some rows (some of them better
    than the rows' columns), warm-restart telling the solver which rows changed: optimal on the
    new graph (scipy on its dense form), the same objective as checking every row. Bad rows
    and options are refused."""
    rng = np.random.default_rng(seed)
    n, m = 120, 120 + 15 * (seed % 2)
    C = np.exp(rng.normal(size=(n, m))).astype(np.float32)
    keep = rng.random((n, m)) < 0.08
    keep[np.arange(n), rng.permutation(m)[:n]] = True  # a perfect matching exists
    more = keep | ((rng.random((n, m)) < 0.1) & (np.arange(n)[:, None] % 4 == 0))  # new arcs: every 4th row

    def csr(mask):
        r, c = np.nonzero(mask)
        return np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64), c.astype(np.int32), C[r, c]

    first = _auction.solve_sparse(*csr(keep), n, m)
    changed = np.flatnonzero((more & ~keep).any(1)).astype(np.int64)
    warm = dict(init_v=first["v"], init_row_to_col=first["row_to_col"], eps_start=-1.0)
    some = _auction.solve_sparse(*csr(more), n, m, changed_rows=changed, **warm)
    every = _auction.solve_sparse(*csr(more), n, m, **warm)
    dense = np.where(more, C.astype(np.float64), 1e9)
    i, j = linear_sum_assignment(dense)
    assert close(some["objective"], float(dense[i, j].sum())) and close(some["objective"], every["objective"])
    red = dense - some["u"][:, None] - some["v"][None, :]
    assert float(red[more].min()) >= -1e-9  # the duals stay feasible on every arc
    # The option is used: told that no row changed, the solver keeps the old assignment, which
    # the new arcs beat, and its duals (row minima over every arc) prove it no better than that.
    stale = _auction.solve_sparse(*csr(more), n, m, changed_rows=np.empty(0, np.int64), **warm)
    assert np.array_equal(stale["row_to_col"], first["row_to_col"])
    assert stale["objective"] > some["objective"] + 1e-6 and stale["dual_objective"] <= some["objective"] + 1e-9
    with pytest.raises(ValueError, match=r"changed_rows\[0\] = 120 is out of range"):
        _auction.solve_sparse(*csr(more), n, m, changed_rows=np.array([n]), **warm)
    with pytest.raises(ValueError, match="needs a warm start"):
        _auction.solve_sparse(*csr(more), n, m, changed_rows=changed)

# ---- slow: large instances ----------------------------------------------------------------------


@slow
@pytest.mark.parametrize("dist", ["uniform", "log_uniform", "ties012"])
def test_large_8192(dist):
    rng = np.random.default_rng(11)
    C = DISTRIBUTIONS[dist](rng, 8192, 8192).astype(np.float32)
    res = assign(C)
    assert close(res.objective, scipy_objective(C))
    assert res.certified


@slow
def test_large_sae_like_8192():
    C, _, _ = sae_like(8192, seed=5)
    res = assign(C)
    assert close(res.objective, scipy_objective(C))


# ---- Euclidean bounds (norms and cosine caps of the pairs left out) ------------------------------


def _mask_graph(C, in_graph, **bounds):
    """The CandidateGraph of the True entries of a boolean mask over C, with these bounds."""
    rows, cols = np.nonzero(in_graph)
    indptr = np.zeros(in_graph.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=in_graph.shape[0]), out=indptr[1:])
    return CandidateGraph(indptr, cols.astype(np.int64), C[rows, cols], **bounds)


def _euclid_graph(A, B, k_cos):
    """Graph of each row's and column's k_cos most cosine-similar partners, with the norms and
    the least cosine held per row/column: the setting of CandidateGraph's Euclidean bound."""
    C = np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0)
    y, x = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    cos = (A @ B.T) / np.maximum(y[:, None] * x[None, :], 1e-300)
    n, m = C.shape
    by_row, by_col = np.zeros((n, m), bool), np.zeros((n, m), bool)
    by_row[np.arange(n)[:, None], np.argsort(-cos, axis=1)[:, :k_cos]] = True
    by_col[np.argsort(-cos, axis=0)[:k_cos, :], np.arange(m)[None, :]] = True
    in_graph = by_row | by_col
    row_cos = np.where(by_row, cos, np.inf).min(1)  # each row's k_cos-th largest cosine
    col_cos = np.where(by_col, cos, np.inf).min(0)
    return C, in_graph, _mask_graph(C, in_graph, row_norm=y, col_norm=x, row_cos=row_cos, col_cos=col_cos)


@pytest.mark.parametrize("seed", range(5))
def test_euclidean_bound_is_a_lower_bound(seed):
    from mechperm.assign import _lower_bounds

    rng = np.random.default_rng(seed)
    _, A, B = sae_like(120, d=16, seed=seed, sigma=2.0)
    C, in_graph, g = _euclid_graph(A, B, k_cos=3)
    cache: dict = {}  # the loop's cache of the bounds' sorts, across duals
    for _ in range(5):
        u, v = rng.normal(size=120) * C.mean(), rng.normal(size=120) * C.mean()
        red = np.where(in_graph, np.inf, C - u[:, None] - v[None, :]).min(1)
        for lb in (_lower_bounds(g, u, v), _lower_bounds(g, u, v, cache)):
            assert np.all(lb <= red + 1e-9 * np.abs(C).max())


def test_column_line_bounds_on_a_subset_of_rows_walk_their_order(monkeypatch):
    """The column-line bound asks the envelope for the rows still open only: their order by
    norm comes from every row's (assign._subset_order, no sort) and the walk gives the binary
    searches' bounds bit for bit, ties among the norms included."""
    from mechperm import assign as assign_module
    from mechperm.assign import _column_line_bounds, _subset_order

    rng = np.random.default_rng(4)
    n = m = 3000
    y = np.round(np.exp(rng.standard_normal(n)), 2)  # tied norms
    x = np.exp(rng.standard_normal(m))
    g = CandidateGraph(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                       row_norm=y, col_norm=x, col_slope=0.01 * x, col_base=x * x + 0.5)
    u, v = rng.normal(size=n), rng.normal(size=m)
    rows = np.sort(rng.choice(n, 1500, replace=False))
    order = np.argsort(y, kind="stable")
    np.testing.assert_array_equal(_subset_order(order, rows, n), np.argsort(y[rows], kind="stable"))
    assert _subset_order(order, np.arange(n), n) is order
    cache: dict = {}
    walked = _column_line_bounds(g, u, v, cache, rows)
    assert "query_y" in cache  # 1500 rows of 3000: in the walk's range
    monkeypatch.setattr(assign_module, "_WALK_MIN_ROWS", n + 1)  # binary searches
    np.testing.assert_array_equal(_column_line_bounds(g, u, v, {}, rows), walked)
    want = ((g.col_base - v)[None, :] - g.col_slope[None, :] * y[rows, None]).min(1) - u[rows]
    np.testing.assert_allclose(walked, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("walk", [False, True])
def test_bound_sorts_take_every_sort_the_bounds_need(monkeypatch, walk):
    """_bound_sorts (the exact loop's thread during its first solve) caches every sort of the
    bound arrays that _lower_bounds takes, every bound family present: the bounds then sort
    nothing and equal those computed from scratch. Non-finite arrays are left to the bounds.
    walk: the envelopes' queries walked in order (from 1024 rows; here from 1), their sorts
    taken too."""
    from mechperm import assign as assign_module
    from mechperm.assign import _bound_sorts, _lower_bounds

    walk_from = 1 if walk else assign_module._WALK_MIN_ROWS
    monkeypatch.setattr(assign_module, "_WALK_MIN_ROWS", walk_from)

    rng = np.random.default_rng(0)
    _, A, B = sae_like(120, d=16, seed=0, sigma=2.0)
    C, in_graph, g = _euclid_graph(A, B, k_cos=3)
    left = np.where(in_graph, np.inf, C)
    slope = 0.01 * g.col_norm
    g = dataclasses.replace(g, row_bound=left.min(1), col_bound=left.min(0), row_offset=-0.01 * g.row_norm,
                            col_offset=-0.02 * g.col_norm, col_slope=slope,
                            col_base=(left + slope[None, :] * g.row_norm[:, None]).min(0))
    u = rng.normal(size=120) * C.mean() + 3 * C.mean()  # high: every row open, the column lines used
    v = rng.normal(size=120) * C.mean()
    expected = _lower_bounds(g, u, v)
    assert np.all(expected <= (left - u[:, None] - v[None, :]).min(1) + 1e-9 * C.max())
    caches = []
    for workers in (1, 2, 4):  # in sequence, and side by side on threads of their own
        cache: dict = {}
        threads_seen, names = [], set()
        real_argsort = _auction.argsort

        def argsort(x, threads):
            threads_seen.append(threads)
            names.add(threading.current_thread())  # the objects: idents are reused
            return real_argsort(x, threads=threads)

        monkeypatch.setattr(_auction, "argsort", argsort)
        monkeypatch.setattr(assign_module, "_WALK_MIN_ROWS", walk_from)
        monkeypatch.setattr(assign_module, "_SORT_WORKERS", workers)
        _bound_sorts(g, cache)
        queries = {"query_y", "query_ycos", "order_ycos"} if walk else set()
        assert set(cache) == {"rank", "slope_x", "slope_cx", "order_cx", "col_slope"} | queries
        assert threads_seen and set(threads_seen) == {1}  # a small graph: one thread a sort, off the solver's pool
        assert len(names) == workers
        assert getattr(assign_module._sort_threads, "n", None) is None  # this thread's own sorts as before
        monkeypatch.undo()
        caches.append(cache)
    for other in caches[1:]:
        for key, (_, value) in caches[0].items():
            for a, b in zip(*((v,) if isinstance(v, np.ndarray) else v for v in (value, other[key][1]))):
                np.testing.assert_array_equal(a, b)

    def no_sort(*args, **kwargs):
        raise AssertionError("a sort the thread should have taken")

    monkeypatch.setattr(assign_module, "_argsort", no_sort)
    monkeypatch.setattr(assign_module, "_searchsorted", no_sort)
    monkeypatch.setattr(assign_module, "_WALK_MIN_ROWS", walk_from)
    np.testing.assert_array_equal(_lower_bounds(g, u, v, cache), expected)
    monkeypatch.undo()
    bad = dataclasses.replace(g, col_norm=np.where(np.arange(120) == 5, np.nan, g.col_norm),
                              col_slope=np.where(np.arange(120) == 7, np.inf, g.col_slope))
    cache = {}
    _bound_sorts(bad, cache)
    assert set(cache) == {"rank"}


@pytest.mark.parametrize("seed", range(3))
def test_exact_loop_with_euclidean_bounds_matches_scipy(seed):
    """The bound only decides which rows get priced: the optimum stays scipy's either way, and at
    the optimal duals it proves rows on heavy-tailed norms where the bare graph proves none.
    (Totals of priced rows over all rounds are no measure: they move with the solver's duals;
    seed 3 had more with the bound than without before any solver change.)"""
    from mechperm.assign import _lower_bounds

    _, A, B = sae_like(300, d=24, seed=seed, sigma=2.0)
    C, _, g = _euclid_graph(A, B, k_cos=4)

    def price(rows, u, v):
        return _auction.dense_price(C, np.ascontiguousarray(rows, np.int64), u, v, -np.inf, 8)

    with_bound = assign_exact(300, 300, g, price)
    plain = CandidateGraph(g.indptr, g.indices, g.costs)
    without = assign_exact(300, 300, plain, price)
    for res in (with_bound, without):
        assert res.certified and close(res.objective, scipy_objective(C))
    u, v = with_bound.u, with_bound.v
    assert np.all(_lower_bounds(plain, u, v) == -np.inf)
    assert (_lower_bounds(g, u, v) >= 0).sum() >= 10  # 19-41 rows over seeds 0-4


def test_deferred_rows_never_certify_a_violation():
    """Rows whose last pricing was clean wait while others violate; the certificate must still
    hold on the whole matrix (a regression: pairs priced but not added broke the rows' bounds)."""
    deferred = 0
    for seed in range(6):
        stack = pytest.importorskip("mechperm.synthetic").make_stack(2, 32, 400, seed=seed, dead_rate=0.0)
        a, b = (s.W_dec.double() for s in stack.saes[:2])
        C = torch.cdist(a, b).pow(2).numpy()
        res = run(C, "candidates", k=1 + seed % 2)
        check_valid(res, C)
        assert res.certified and close(res.objective, scipy_objective(C))
        deferred += res.stats["deferred_rows"]
    assert deferred > 0, "no round deferred any row: the case is not exercised"


def _merge_reference(g, rows, cols, costs, n):
    """Concatenate, keep the first of each (row, column), sort: what _merge must equal."""
    old = np.repeat(np.arange(n), np.diff(g.indptr))
    r = np.concatenate([old, rows]).astype(np.int64)
    c = np.concatenate([g.indices, cols]).astype(np.int64)
    w = np.concatenate([g.costs, costs])
    key, first = np.unique(r * (int(c.max(initial=0)) + 1) + c, return_index=True)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(r[first], minlength=n), out=indptr[1:])
    return indptr, c[first], w[first]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 10**6), st.floats(0.0, 1.0), st.integers(0, 60),
       st.sampled_from([np.int32, np.int64]), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([np.float32, np.float64]))
def test_merge_adds_new_arcs_in_order(n: int, m: int, seed: int, density: float, extra: int, idx_dtype,
                                      cost_dtype, new_dtype) -> None:
    """The native CSR edits (_auction.csr_insert_inplace / csr_find) against numpy references."""
    import mechperm.assign as A

    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < density
    r, c = np.nonzero(mask)
    g = A.CandidateGraph(indptr=np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64),
                         indices=c.astype(idx_dtype), costs=rng.random(len(c)).astype(cost_dtype))
    rows, cols = rng.integers(0, n, extra), rng.integers(0, m, extra)  # duplicates and old arcs too
    costs = rng.random(extra).astype(new_dtype)
    inside = A._in_graph(g, rows, cols, m)
    assert np.array_equal(inside, mask[rows, cols])
    pos = A._arc_positions(g, rows, cols)
    assert np.array_equal(pos >= 0, inside) and np.array_equal(g.indices[pos[inside]], cols[inside])
    assert np.all((g.indptr[rows[inside]] <= pos[inside]) & (pos[inside] < g.indptr[rows[inside] + 1]))
    got = A._merge(g, rows, cols, costs, n)
    indptr, indices, w = _merge_reference(g, rows, cols, costs, n)
    assert np.array_equal(got.indptr, indptr) and np.array_equal(got.indices, indices)
    assert np.array_equal(got.costs, w) and got.costs.dtype == w.dtype
    assert got.indices.dtype == idx_dtype
    # In place (the exact loop's buffer), over three rounds: the first allocates, later ones
    # insert into the room left or grow it; with 4 threads the two sets of arrays take turns.
    for threads in (1, 4):
        buf, h, ref = A._ArcBuffer(threads), g, g
        for t in range(4):
            r2, c2 = rng.integers(0, n, extra * t), rng.integers(0, m, extra * t)
            w2 = rng.random(extra * t).astype(new_dtype)
            h = buf.merge(h, r2, c2, w2, n)
            ref_ptr, ref_idx, ref_w = _merge_reference(ref, r2, c2, w2, n)
            ref = A.CandidateGraph(ref_ptr, ref_idx, ref_w)
            assert np.array_equal(h.indptr, ref_ptr) and np.array_equal(h.indices, ref_idx)
            assert np.array_equal(h.costs, ref_w.astype(h.costs.dtype)) and h.indices.dtype == idx_dtype
    assert np.array_equal(g.indices, c) and np.array_equal(A._in_graph(g, r, c, m), np.ones(len(r), bool))


def test_csr_find_on_threads_equals_a_dense_lookup() -> None:
    """csr_find's blocks of pairs (2^14 a block) on threads: every pair's position as one
    thread finds it, and as a dense mask of the arcs says."""
    rng = np.random.default_rng(11)
    n, m = 3000, 500
    mask = rng.random((n, m)) < 0.05
    r, c = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
    rows, cols = rng.integers(0, n, 100_000), rng.integers(0, m, 100_000)
    one = _auction.csr_find(indptr, c.astype(np.int32), rows, cols)
    assert np.array_equal(one >= 0, mask[rows, cols])
    assert np.array_equal(c[one[one >= 0]], cols[one >= 0])
    for threads in (2, 5):
        assert np.array_equal(_auction.csr_find(indptr, c.astype(np.int32), rows, cols, threads=threads), one)
        assert np.array_equal(_auction.csr_find(indptr, np.ascontiguousarray(c, np.int64), rows, cols, threads=threads), one)


# the native sort: comparisons (few arcs), by row counts (many; 40000 pairs: several blocks of
# fresh-arc checks on the threads)
@pytest.mark.parametrize("extra", [20, 5000, 20000])
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_merge_keeps_the_first_of_duplicates_either_sort(extra: int, threads: int) -> None:
    import mechperm.assign as A

    rng = np.random.default_rng(extra)
    n, m = 1000, 300
    mask = rng.random((n, m)) < 0.02
    r, c = np.nonzero(mask)
    g = A.CandidateGraph(np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64), c.astype(np.int32),
                         rng.random(len(c)))
    rows, cols = rng.integers(0, n, extra), rng.integers(0, m, extra)
    rows, cols = np.concatenate([rows, rows[::-1]]), np.concatenate([cols, cols[::-1]])  # each pair twice
    costs = rng.random(2 * extra)
    ref_ptr, ref_idx, ref_w = _merge_reference(g, rows, cols, costs, n)
    got = A._ArcBuffer(threads).merge(g, rows, cols, costs, n)
    assert np.array_equal(got.indptr, ref_ptr) and np.array_equal(got.indices, ref_idx)
    assert np.array_equal(got.costs, ref_w)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_merge_of_runs_of_one_pair_across_blocks(threads: int) -> None:
    """40000 new pairs over 60 distinct ones (runs of hundreds, so every block of the fresh-arc
    checks, 2^14 pairs, starts inside a run): each added once, at its first cost."""
    import mechperm.assign as A

    rng = np.random.default_rng(3)
    n, m = 6, 10
    g = A.CandidateGraph(np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int32), rng.random(n))  # arc (i, 0)
    rows, cols = rng.integers(0, n, 40000), rng.integers(0, m, 40000)
    costs = rng.random(40000)
    ref_ptr, ref_idx, ref_w = _merge_reference(g, rows, cols, costs, n)
    got = A._ArcBuffer(threads).merge(g, rows, cols, costs, n)
    assert np.array_equal(got.indptr, ref_ptr) and np.array_equal(got.indices, ref_idx)
    assert np.array_equal(got.costs, ref_w)


@pytest.mark.parametrize("threads", [1, 4])
def test_arc_buffer_reserved_arrays_give_the_same_merges(monkeypatch, threads: int) -> None:
    """The first merge's arrays made ahead (reserve, on a thread) give the merges made without
    them, and are not used for a graph they were not made from (a completed one); on the
    parallel path the first merge sets the other set of arrays going, which the second writes."""
    import mechperm.assign as A

    monkeypatch.setattr(A._ArcBuffer, "RESERVE_ARCS", 1)
    rng = np.random.default_rng(3)
    n, m = 200, 150
    mask = rng.random((n, m)) < 0.05
    r, c = np.nonzero(mask)
    g = A.CandidateGraph(np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64), c.astype(np.int32),
                         rng.random(len(c)).astype(np.float32))
    other = A.CandidateGraph(g.indptr.copy(), g.indices.copy(), g.costs.copy())
    rounds = [(rng.integers(0, n, 300), rng.integers(0, m, 300), rng.random(300).astype(np.float32)) for _ in range(3)]
    for start in (g, other):
        buf, plain, h, ref = A._ArcBuffer(threads), A._ArcBuffer(threads), start, start
        buf.reserve(g)
        buf._reserving.join()
        made = buf.reserved[2]
        for t, (rr, cc, ww) in enumerate(rounds):
            h, ref = buf.merge(h, rr, cc, ww, n), plain.merge(ref, rr, cc, ww, n)
            assert np.array_equal(h.indptr, ref.indptr) and np.array_equal(h.indices, ref.indices)
            assert np.array_equal(h.costs, ref.costs)
            if t == 0:  # the first merge wrote the arrays made for g, and only for g
                assert (buf.idx is made) == (start is g)
                if threads >= A._ArcBuffer.PARALLEL_MERGE_THREADS:  # ... and set the other one going
                    buf._join()
                    other_set = buf.spare[0]
            if t == 1 and threads >= A._ArcBuffer.PARALLEL_MERGE_THREADS:
                assert buf.idx is other_set
        assert buf.reserved is None and buf._reserving is None
    monkeypatch.setattr(A._ArcBuffer, "RESERVE_ARCS", 10**9)
    small = A._ArcBuffer(threads)
    small.reserve(g)
    assert small._reserving is None  # small graphs: nothing made ahead


@pytest.mark.parametrize("threads", [1, 4])
def test_arc_buffer_grows_when_its_room_is_used_up(threads: int) -> None:
    import mechperm.assign as A

    rng = np.random.default_rng(1)
    n, m = 50, 400
    g = A.CandidateGraph(np.zeros(n + 1, np.int64), np.empty(0, np.int32), np.empty(0))
    buf, ref, sizes = A._ArcBuffer(threads), g, set()
    for _ in range(8):
        r, c, w = rng.integers(0, n, 900), rng.integers(0, m, 900), rng.random(900)
        g = buf.merge(g, r, c, w, n)
        sizes.add(len(buf.idx))
        ptr, idx, cost = _merge_reference(ref, r, c, w, n)
        ref = A.CandidateGraph(ptr, idx, cost)
        assert np.array_equal(g.indptr, ptr) and np.array_equal(g.indices, idx) and np.array_equal(g.costs, cost)
    assert len(sizes) > 1  # it grew at least once


def test_csr_edits_reject_bad_pairs() -> None:
    indptr, indices, costs = np.array([0, 1, 2], np.int64), np.array([0, 1], np.int32), np.ones(2)
    with pytest.raises(ValueError, match="out of range for 2 rows"):
        _auction.csr_find(indptr, indices, np.array([2]), np.array([0]))
    with pytest.raises(ValueError, match="out of range"):
        _auction.csr_insert_inplace(indptr.copy(), np.resize(indices, 3), np.resize(costs, 3), np.array([0]),
                                    np.array([-1]), np.ones(1))
    with pytest.raises(ValueError, match="costs"):
        _auction.csr_insert_inplace(indptr.copy(), np.resize(indices, 3), np.resize(costs, 3), np.array([0]),
                                    np.array([1]), np.ones(2))
    ip, ix, w = indptr.copy(), np.resize(indices, 4), np.resize(costs, 4)
    assert _auction.csr_insert_inplace(ip, ix, w, np.array([1, 0]), np.array([0, 1]), np.array([5.0, 6.0])) == 2
    assert ip.tolist() == [0, 2, 4] and ix.tolist() == [0, 1, 0, 1] and w.tolist() == [1.0, 6.0, 5.0, 1.0]
    op, ox, ow = np.empty(3, np.int64), np.empty(5, np.int32), np.empty(5)
    assert _auction.csr_insert_into(indptr, indices, costs, np.array([1, 0, 1]), np.array([0, 1, 1]),
                                    np.array([5.0, 6.0, 7.0]), op, ox, ow, threads=2) == 2  # (1, 1) is an arc
    assert op.tolist() == [0, 2, 4] and ox[:4].tolist() == [0, 1, 0, 1] and ow[:4].tolist() == [1.0, 6.0, 5.0, 1.0]
    with pytest.raises(ValueError, match="room for"):
        _auction.csr_insert_into(indptr, indices, costs, np.array([0]), np.array([1]), np.ones(1), op, ox[:2], ow)
    with pytest.raises(ValueError, match="writes other arrays"):
        _auction.csr_insert_into(indptr, ix, w, np.array([0]), np.array([1]), np.ones(1), op, ix, ow)
    with pytest.raises(ValueError, match="out of range"):
        _auction.csr_insert_into(indptr, indices, costs, np.array([0]), np.array([-1]), np.ones(1), op, ox, ow)


# ---- column lines (a column's bound falls with the row's norm: the screens' error) ---------------


def _column_line_graph(A, B, k, slope_scale):
    """The k cheapest rows per column, and per column the highest line col_base − col_slope · y_i
    (slope given) under the costs of the pairs left out."""
    C = np.maximum((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * A @ B.T, 0)
    y, x = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    n, m = C.shape
    in_graph = np.zeros((n, m), bool)
    in_graph[np.argsort(C, axis=0)[:k, :], np.arange(m)[None, :]] = True
    slope = slope_scale * x
    base = np.where(in_graph, np.inf, C + slope[None, :] * y[:, None]).min(0)
    return C, in_graph, _mask_graph(C, in_graph, row_norm=y, col_norm=x, col_base=base, col_slope=slope)


@pytest.mark.parametrize("seed", range(4))
def test_column_line_bound_is_a_lower_bound(seed):
    """Against the reduced costs of every pair left out, under random duals (heavy-tailed norms,
    slopes from none to steep); and tighter than the same lines at the largest row norm."""
    from mechperm.assign import _column_line_bounds, _lower_bounds

    rng = np.random.default_rng(seed)
    _, A, B = sae_like(150, d=16, seed=seed, sigma=2.0)
    tighter = 0
    for slope_scale in (0.0, 0.01, 0.3, 3.0):
        C, in_graph, g = _column_line_graph(A, B, 3, slope_scale)
        cache: dict = {}
        for _ in range(4):
            u = C.min(1) + rng.normal(size=150) * C.mean() * 0.1
            v = rng.normal(size=150) * C.mean() * 0.1
            red = np.where(in_graph, np.inf, C - u[:, None] - v[None, :]).min(1)
            tol = 1e-9 * np.abs(C).max()
            for lb in (_column_line_bounds(g, u, v), _column_line_bounds(g, u, v, cache), _lower_bounds(g, u, v, cache)):
                assert np.all(lb <= red + tol)
            flat = (g.col_base - g.col_slope * g.row_norm.max() - v).min() - u
            tighter += int((_column_line_bounds(g, u, v) > flat + tol).sum())
    assert tighter > 0


def test_column_line_arguments_are_checked():
    _, A, B = sae_like(20, d=8, seed=1, sigma=1.0)
    _, _, g = _column_line_graph(A, B, 3, 0.1)
    price = lambda rows, u, v: (np.empty(0, np.int64),) * 2 + (np.empty(0),)  # noqa: E731
    with pytest.raises(ValueError, match="col_slope must have shape"):
        assign_exact(20, 20, dataclasses.replace(g, col_slope=g.col_slope[:5]), price)
    with pytest.raises(ValueError, match="col_base and col_slope go together"):
        assign_exact(20, 20, dataclasses.replace(g, col_base=None), price)
    with pytest.raises(ValueError, match="col_base and col_slope go together"):
        assign_exact(20, 20, dataclasses.replace(g, row_norm=None), price)


@pytest.mark.parametrize("per_row", [1, 3, 50])
def test_keep_most_negative_keeps_each_rows_least(per_row: int) -> None:
    """Per row, the per_row pairs of least reduced cost (rows that have no more are kept whole,
    without the sort)."""
    import mechperm.assign as A

    rng = np.random.default_rng(per_row)
    rows = rng.integers(0, 40, 600)
    cols, costs, red = rng.permutation(600), rng.random(600), rng.standard_normal(600)
    r, c, w, d = A._keep_most_negative(rows, cols, costs, red, per_row)
    got = {(int(a), int(b)) for a, b in zip(r, c)}
    want = set()
    for i in np.unique(rows):
        at = np.flatnonzero(rows == i)
        at = at[np.argsort(red[at], kind="stable")][:per_row]
        want |= {(int(i), int(cols[t])) for t in at}
    assert got == want and len(r) == len(want)
    pos = {(int(a), int(b), float(x)): float(y) for a, b, x, y in zip(rows, cols, red, costs)}
    assert all(pos[(int(a), int(b), float(x))] == float(y) for a, b, x, y in zip(r, c, d, w))  # pairs kept whole


def _rank_bounds_numpy(g, u, v, order, idx):
    """assign._rank_bounds' general case as numpy computed it before session 17 (the reference)."""
    a = g.col_offset if g.col_offset is not None else np.zeros(len(v))
    b = g.row_offset if g.row_offset is not None else np.zeros(len(u))
    with np.errstate(invalid="ignore"):
        A, X, Y, S = a - v, g.row_bound - u, b - u, g.col_bound - v
        pre = np.minimum.accumulate(S[order])
        suf = np.minimum.accumulate(A[order][::-1])[::-1]
        lb = X + np.minimum(np.append(suf, np.inf)[idx], (Y - X) + np.insert(pre, 0, np.inf)[idx])
        lb[np.isposinf(g.row_bound)] = np.inf
    lb[np.isnan(lb)] = -np.inf
    return lb


@pytest.mark.parametrize("offsets", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_native_rank_bounds_equal_numpys(seed: int, offsets: bool) -> None:
    """_auction.rank_bounds (the exact loop's rank bound) against the numpy formula it replaced,
    bit for bit: ties in D, infinite k-th costs, a NaN, 1 and 4 threads."""
    from mechperm import assign as A

    rng = np.random.default_rng(seed)
    n, m = 3000, 2500
    row_bound, col_bound = rng.normal(size=n).round(1), rng.normal(size=m).round(1)  # ties
    row_bound[rng.random(n) < 0.02], col_bound[rng.random(m) < 0.02] = np.inf, np.inf
    u, v = rng.normal(size=n), rng.normal(size=m)
    if seed == 3:
        v[7] = np.nan
    g = A.CandidateGraph(np.zeros(n + 1, np.int64), np.empty(0, np.int32), np.empty(0), row_bound, col_bound,
                         rng.normal(size=n) if offsets else None, rng.normal(size=m) if offsets else None)
    order, idx = A._rank_split(g, None)
    expected = _rank_bounds_numpy(g, u, v, order, idx)
    for threads in (1, 4):
        got = _auction.rank_bounds(order, idx, g.row_bound, g.col_bound, g.row_offset, g.col_offset, u, v,
                                   threads=threads)
        np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))
    np.testing.assert_array_equal(A._rank_bounds(g, u, v), expected)
    if seed != 3:  # (a NaN dual makes every brute-force minimum NaN)
        # against brute force, min_j max(X_i + A_j, Y_i + S_j): never above it (each column
        # gives one of its two terms), equal up to rounding where the sort put it on the same side
        a = g.col_offset if offsets else np.zeros(m)
        b = g.row_offset if offsets else np.zeros(n)
        with np.errstate(invalid="ignore"):
            brute = np.maximum((row_bound - u)[:, None] + (a - v)[None, :],
                               (b - u)[:, None] + (col_bound - v)[None, :]).min(1)
        brute[np.isposinf(row_bound)] = np.inf
        assert not np.isnan(brute).any()
        assert np.all(expected <= brute + 1e-12 * (1 + np.abs(brute)))
        assert np.mean(np.isclose(expected, brute, rtol=1e-12, atol=1e-12)) > 0.99
    with pytest.raises(ValueError, match="idx"):
        _auction.rank_bounds(order, idx + m + 1, g.row_bound, g.col_bound, None, None, u, v)
