"""match(): objectives against scipy, planted-truth recovery, every mode, bad input."""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os

import numpy as np
import pytest
import torch
from conftest import random_sae
from scipy.optimize import linear_sum_assignment

from mechperm import kernels
from mechperm.kernels import screen
from mechperm.match import DENSE_LIMIT, match, match_vectors
from mechperm.synthetic import make_stack


def _valid_partial_perm(perm: torch.Tensor, Fb: int) -> None:
    assert perm.dtype == torch.int64
    used = perm[perm >= 0]
    assert int(perm.min()) >= -1 and (used.numel() == 0 or int(used.max()) < Fb)
    assert used.unique().numel() == used.numel(), "a feature of B is used twice"


def _reference_costs(A: torch.Tensor, B: torch.Tensor, dense_limit: int | None = None) -> torch.Tensor:
    """The costs match() is exact for: float64-dot costs where it screens (kernels.screen: bf16
    on CPUs with AVX-512 BF16, int8 on the sparse path of those with VNNI alone), the float32
    GEMM's otherwise (they differ by float32 rounding: ~1e-7 relative, more where large norms
    cancel). ``dense_limit`` as given to match(): which path it takes."""
    dense = A.shape[0] * B.shape[0] <= (DENSE_LIMIT if dense_limit is None else dense_limit)
    screened = screen.kind(A, B, dense=dense) is not None
    return screen.exact_dense_costs(A, B) if screened else kernels.dense_costs(A, B)


def _scipy_objective(sae_a, sae_b, *, fold=True, metric="mse", on="decoder", pad=None,
                     dense_limit: int | None = None) -> float:
    A = kernels.matching_vectors(sae_a, on=on, fold=fold, normalize=metric == "cosine")
    B = kernels.matching_vectors(sae_b, on=on, fold=fold, normalize=metric == "cosine")
    c = _reference_costs(A, B, dense_limit).double().numpy()
    if pad is not None:  # partial: dummy column i usable by row i only, at cost `pad`
        n = c.shape[0]
        dummy = np.full((n, n), 1e18)
        np.fill_diagonal(dummy, pad)
        c = np.hstack([c, dummy])
    r, col = linear_sum_assignment(c)
    return float(c[r, col].sum())


@pytest.fixture(scope="module")
def stack():
    return make_stack(3, d=32, F=384, seed=3)


@pytest.mark.parametrize("on", ["decoder", "encoder", "both"])
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_objective_equals_scipy(stack, on: str, fold: bool, metric: str) -> None:
    a, b = stack.saes[0], stack.saes[1]
    r = match(a, b, on=on, fold=fold, metric=metric)
    _valid_partial_perm(r.perm, b.d_sae)
    assert r.n_matched == a.d_sae
    expected = _scipy_objective(a, b, on=on, fold=fold, metric=metric)
    assert r.objective == pytest.approx(expected, rel=1e-9)
    assert r.certified and 0 <= r.gap <= 1e-9 * abs(expected) + 1e-9
    # Per-pair costs are the matched entries of the same cost matrix.
    assert float(r.cost.double().sum()) == pytest.approx(expected, rel=1e-5)


def test_sparse_path_reaches_the_dense_optimum(stack) -> None:
    a, b = stack.saes[1], stack.saes[2]
    dense = match(a, b)
    sparse = match(a, b, dense_limit=0, candidates_k=2)  # tiny k: pricing must do the work
    assert sparse.certified and sparse.gap <= 1e-9 * dense.objective
    # the dense optimum of the costs the sparse path computes (the two paths' costs differ by
    # float32 rounding where only the sparse one screens: int8 on CPUs with VNNI alone)
    assert sparse.objective == pytest.approx(_scipy_objective(a, b, dense_limit=0), rel=1e-9)
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-6)
    assert sparse.stats["candidate_edges"] < a.d_sae * b.d_sae
    _valid_partial_perm(sparse.perm, b.d_sae)


@pytest.mark.parametrize("Fa,Fb", [(40, 64), (64, 40)])
@pytest.mark.parametrize("dense_limit", [None, 0])
def test_rectangular(Fa: int, Fb: int, dense_limit) -> None:
    a, b = random_sae(16, Fa, seed=1), random_sae(16, Fb, seed=2)
    opts = {} if dense_limit is None else {"dense_limit": dense_limit, "candidates_k": 3}
    r = match(a, b, **opts)
    _valid_partial_perm(r.perm, Fb)
    assert r.n_matched == min(Fa, Fb)
    # The sparse path solves F_a > F_b transposed, on float32 costs computed as c(b, a): equal
    # to c(a, b) up to the last bit, so the objective agrees to float32 rounding there.
    rel = 1e-6 if (dense_limit == 0 and Fa > Fb) else 1e-9
    assert r.objective == pytest.approx(_scipy_objective(a, b, dense_limit=dense_limit), rel=rel)


@pytest.mark.parametrize("threshold", [0.05, 0.3, 1.0, 10.0])
def test_partial_equals_scipy_on_padded_matrix(stack, threshold: float) -> None:
    a, b = stack.saes[0], stack.saes[1]
    r = match(a, b, mode="partial", threshold=threshold, metric="cosine")
    _valid_partial_perm(r.perm, b.d_sae)
    expected = _scipy_objective(a, b, metric="cosine", pad=threshold)
    assert r.objective == pytest.approx(expected, rel=1e-9)
    matched = r.perm >= 0
    assert bool((r.cost[matched] <= threshold + 1e-5).all()), "a pair costlier than no counterpart"
    assert torch.isnan(r.cost[~matched]).all()


def test_topk_neighbours_are_the_nearest(stack) -> None:
    a, b = stack.saes[0], stack.saes[1]
    r = match(a, b, mode="topk", k=4)
    c = kernels.dense_costs(kernels.matching_vectors(a), kernels.matching_vectors(b))
    expected = torch.topk(c, 4, dim=1, largest=False).values
    torch.testing.assert_close(r.neighbor_costs, expected)
    assert torch.equal(r.perm, r.neighbors[:, 0])
    assert bool((r.margin >= 0).all())


def test_identity_baseline(stack) -> None:
    a, b = stack.saes[0], stack.saes[1]
    r = match(a, b, mode="identity")
    assert torch.equal(r.perm, torch.arange(a.d_sae))
    A, B = kernels.matching_vectors(a), kernels.matching_vectors(b)
    torch.testing.assert_close(r.cost, ((A - B) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_margins_dense_and_sparse(stack) -> None:
    a, b = stack.saes[0], stack.saes[1]
    dense, sparse = match(a, b), match(a, b, dense_limit=0)
    for r in (dense, sparse):
        assert bool((r.margin >= 0).all()) and float(r.margin.median()) > 0
    assert torch.equal(dense.perm, sparse.perm)  # no ties in this instance: the same optimum


def test_sparse_margins_against_numpy() -> None:
    """The sparse path's margins (one C++ pass over the CSR rows) = min over each row's other
    arcs of c - u - v, inf for a row without other arcs, NaN where unassigned; int32 and int64
    columns, float32 and float64 costs; a column outside v is refused."""
    import sys

    M = sys.modules["mechperm.match"]
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        mask = rng.random((n, m)) < rng.random()
        r, c = np.nonzero(mask)
        indptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int64)
        costs = rng.random(len(c)).astype([np.float32, np.float64][_ % 2])
        c = c.astype([np.int64, np.int32][_ % 3 == 0])
        u, v = rng.random(n), rng.random(m)
        r2c = np.where(rng.random(n) < 0.8, rng.integers(0, m, n), -1)
        red = costs.astype(np.float64) - u[r] - v[c]
        red[r2c[r] == c] = np.inf
        want = np.full(n, np.inf)
        np.minimum.at(want, r, red)
        want[r2c < 0] = np.nan
        got = M._margins(r2c, indptr, c, costs, u, v, n).numpy()
        assert np.array_equal(got, np.maximum(want, 0.0).astype(np.float32), equal_nan=True)
    with pytest.raises(ValueError, match="column index at position 1 is out of range"):
        M._margins(np.array([0]), np.array([0, 2]), np.array([0, 5]), np.ones(2, np.float32), np.zeros(1),
                   np.zeros(3), 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_margins_against_numpy(dtype) -> None:
    """The C++ margin pass = min over the other columns of c - u - v, NaN where unassigned."""
    from mechperm import _auction

    rng = np.random.default_rng(0)
    c = rng.normal(size=(7, 9)).astype(dtype)
    r2c = np.array([3, -1, 0, 8, 1, 2, 5], np.int64)
    u, v = rng.normal(size=7), rng.normal(size=9)
    red = c.astype(np.float64) - u[:, None] - v[None, :]
    expect = np.array([np.delete(red[i], r2c[i]).min() if r2c[i] >= 0 else np.nan for i in range(7)])
    got = _auction.dense_margins(c, r2c, u, v)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)
    assert np.isinf(_auction.dense_margins(np.zeros((2, 1), dtype), np.array([0, -1]), u[:2], v[:1])[0])
    with pytest.raises(ValueError, match="row_to_col"):
        _auction.dense_margins(c, np.full(7, 9, np.int64), u, v)


def test_planted_truth_recovered_and_folding_helps() -> None:
    st = make_stack(3, d=64, F=1024, seed=0)
    for t in range(2):
        folded = st.recovery(t, match(st.saes[t], st.saes[t + 1]).perm)["recovered"]
        unfolded = st.recovery(t, match(st.saes[t], st.saes[t + 1], fold=False).perm)["recovered"]
        assert folded >= 0.9
        assert folded >= unfolded + 0.05, (folded, unfolded)


def test_bad_input() -> None:
    a, b = random_sae(16, 8), random_sae(12, 8, source="b.npz")
    with pytest.raises(ValueError, match=r"different widths: d=16 .* d=12 \(b.npz\)"):
        match(a, b)
    with pytest.raises(ValueError, match="needs a finite threshold"):
        match(a, a, mode="partial")
    with pytest.raises(ValueError, match="needs k >= 1"):
        match(a, a, mode="topk")
    with pytest.raises(ValueError, match="on='weights'"):
        match(a, a, on="weights")


def test_invalid_features_counted(stack) -> None:
    a = stack.saes[0]
    theta = a.threshold.clone()
    theta[:3] = 0.0
    r = match(dataclasses.replace(a, threshold=theta), stack.saes[1])
    assert r.stats["invalid_a"] >= 3


def test_solver_graph_bounds_hold_for_every_pair_left_out(stack) -> None:
    """kernels.solver_graph: row_cos / col_cos are each row's / column's k-th largest cosine, so
    every pair left out has a cosine at most that, and the k-th costs bound its cost."""
    A, B = kernels.matching_vectors(stack.saes[0]), kernels.matching_vectors(stack.saes[1])
    g = kernels.candidates(A, B, k=5)
    sg = kernels.solver_graph(g, A, B)
    C = kernels.dense_costs(A, B).double().numpy()
    na, nb = kernels.row_sq_norms(A).double().numpy(), kernels.row_sq_norms(B).double().numpy()
    y, x = np.sqrt(na), np.sqrt(nb)
    cos = (A.double() @ B.double().T).numpy() / np.maximum(y[:, None] * x[None, :], 1e-300)
    out = np.ones_like(C, bool)
    out[np.repeat(np.arange(len(y)), np.diff(sg.indptr)), sg.indices] = False
    slack = 1e-5 * (na[:, None] + nb[None, :])
    assert np.all(cos[out] <= np.broadcast_to(sg.row_cos[:, None], C.shape)[out] + 1e-5)
    assert np.all(cos[out] <= np.broadcast_to(sg.col_cos[None, :], C.shape)[out] + 1e-5)
    bound = np.maximum(sg.row_bound[:, None], sg.col_bound[None, :])
    assert np.all(C[out] >= bound[out] - slack[out])
    # tight: the k-th cosine plus three times the selection's float32 error (1.4e-5 at D = 32)
    np.testing.assert_allclose(np.sort(sg.row_cos), np.sort(np.sort(cos, axis=1)[:, -5]), atol=2e-5)


def test_row_pricer_returns_each_rows_smallest_reduced_costs(stack) -> None:
    """The sparse path's pricing callback: per requested row the q pairs of smallest reduced
    cost (c - u) - v, whatever their sign (selected in float32: up to its rounding), with the
    candidate graph's float32 costs, and a bound under every pair it leaves out."""
    A, B = kernels.matching_vectors(stack.saes[0]), kernels.matching_vectors(stack.saes[1])
    C = kernels.dense_costs(A, B)
    rng = np.random.default_rng(0)
    u = C.min(dim=1).values.double().numpy() + rng.normal(scale=0.05, size=A.shape[0])
    v = rng.normal(scale=0.05, size=B.shape[0])
    rows = np.sort(rng.choice(A.shape[0], size=40, replace=False))
    q = 7
    # max_tile of 16 rows: three blocks, the last one of 8 rows (padded for the GEMM)
    r, c, w, bound = kernels.row_pricer(A, B, q, max_tile=16 * B.shape[0])(rows, u, v)
    red = (C.double().numpy() - u[:, None]) - v[None, :]
    assert np.array_equal(np.unique(r), rows) and np.bincount(r, minlength=A.shape[0])[rows].tolist() == [q] * 40
    for t, i in enumerate(rows):
        left = np.ones(B.shape[0], bool)
        left[c[r == i]] = False
        ulp = 2.0**-22 * (np.abs(C[i].double().numpy()).max() + abs(u[i]) + np.abs(v).max())
        assert red[i, ~left].max() <= red[i, left].min() + ulp, f"row {i}: not the q smallest"
        na, nb = kernels.row_sq_norms(A).double().numpy(), kernels.row_sq_norms(B).double().numpy()
        margin = 2.0**-20 * (2 * (na[i] + nb.max()) + abs(u[i]) + np.abs(v).max())  # the documented one
        assert np.sort(red[i])[q] - 2 * margin <= bound[t] <= red[i, left].min(), f"row {i}"
    assert np.array_equal(w, C.numpy()[r, c]), "pricing costs differ from the dense costs"
    assert (red[r, c] < 0).any() and (red[r, c] >= 0).any()  # both signs are returned
    g = kernels.candidates(A, B, k=4)
    graph = {(int(i), int(j)): float(x) for i, j, x in zip(g.row_ids(), g.indices, g.costs)}
    shared = [(i, j, x) for i, j, x in zip(r.tolist(), c.tolist(), w.tolist()) if (i, j) in graph]
    assert shared and all(graph[(i, j)] == x for i, j, x in shared), "pricing costs differ from the graph's"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_pricer_reuses_its_buffers_without_changing_results(stack, dtype) -> None:
    """The CPU pricer keeps its blocks' cost buffers (and B's float32 copy) across blocks and
    calls: a pricer called again, on other rows and duals, returns what a fresh one does."""
    A, B = (kernels.matching_vectors(s).to(dtype) for s in stack.saes[:2])
    m = B.shape[0]
    rng = np.random.default_rng(1)
    C = kernels.dense_costs(A, B).double().numpy()
    duals = [(C.min(axis=1) + rng.normal(scale=0.05, size=A.shape[0]), rng.normal(scale=0.05, size=m))
             for _ in range(2)]
    rows = [np.sort(rng.choice(A.shape[0], size=n, replace=False)) for n in (40, 23)]
    shared = kernels.row_pricer(A, B, 5, max_tile=16 * m)  # blocks of 16 rows, the last ones partial
    got = [shared(rows[0], *duals[0]), shared(rows[1], *duals[1]), shared(rows[0], *duals[0])]
    fresh = [kernels.row_pricer(A, B, 5, max_tile=16 * m)(rows[t], *duals[t]) for t in (0, 1)]
    for out, ref in zip(got, fresh + fresh[:1]):
        for x, y in zip(out, ref):
            assert np.array_equal(x, y)
    r, c, w, _ = got[1]
    assert np.array_equal(w, C[r, c].astype(np.float32))  # the dense costs' values


def test_row_pricer_edge_cases() -> None:
    A, B = torch.randn(5, 8), torch.randn(3, 8)
    price = kernels.row_pricer(A, B, q=64)  # q > F_b: every column of the row
    r, c, w, bound = price(np.array([1, 4]), np.zeros(5), np.zeros(3))
    assert sorted(zip(r.tolist(), c.tolist())) == [(i, j) for i in (1, 4) for j in range(3)]
    assert np.isposinf(bound).all()  # nothing left out
    r, c, w, bound = price(np.array([], dtype=np.int64), np.zeros(5), np.zeros(3))
    assert r.dtype == np.int64 and c.dtype == np.int64 and w.dtype == np.float32 and r.size == c.size == w.size == 0
    assert bound.size == 0


def test_row_pricer_settles_ties_at_zero_exactly() -> None:
    """More than q pairs at reduced cost ~0 (within the float32 margin) and none violating:
    the float32 bound would be below 0, so the row is selected again in float64 (exact bound)."""
    A = torch.zeros(3, 8)
    A[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    B = A[[0, 0, 0, 0, 1, 2]].clone()  # row 0 has four columns at cost 0
    price = kernels.row_pricer(A, B, q=2)
    C = kernels.dense_costs(A, B).double().numpy()
    u, v = np.zeros(3), np.zeros(6)
    r, c, w, bound = price(np.array([0]), u, v)
    assert len(r) == 2 and (C[0, c] == 0).all() and bound[0] == 0.0


def test_sparse_path_heavy_tails_and_partial() -> None:
    """Heavy-tailed scales (DESIGN.md's pitfall) and a tiny k: bounds fail for many rows, the
    pricing rounds carry exactness; partial mode through the sparse path too."""
    st = make_stack(2, d=32, F=384, seed=5, heavy_tail=2.5)
    a, b = st.saes
    r = match(a, b, dense_limit=0, candidates_k=3)
    expected = _scipy_objective(a, b, dense_limit=0)
    assert r.certified and r.objective == pytest.approx(expected, rel=1e-9)
    assert r.stats["rounds"] > 1 and r.stats["solver"]["priced_rows"] > 0
    _valid_partial_perm(r.perm, b.d_sae)
    for threshold in (0.5, 5.0):
        p = match(a, b, mode="partial", threshold=threshold, dense_limit=0, candidates_k=3)
        assert p.certified
        assert p.objective == pytest.approx(_scipy_objective(a, b, pad=threshold, dense_limit=0), rel=1e-9)
        _valid_partial_perm(p.perm, b.d_sae)


def test_sparse_path_completes_an_infeasible_candidate_graph() -> None:
    """k = 1 on heavy tails: the candidate graph has no assignment of every row; match() adds
    arcs between the rows and columns a maximum matching leaves free instead of letting the
    loop fall back to slack columns, and still reaches the dense optimum."""
    st = make_stack(2, d=32, F=384, seed=5, heavy_tail=2.5)
    a, b = st.saes
    r = match(a, b, dense_limit=0, candidates_k=1)
    assert r.stats["completion_edges"] > 0 and r.stats["solver"]["slack"] == 0
    assert r.certified and r.objective == pytest.approx(_scipy_objective(a, b, dense_limit=0), rel=1e-9)
    _valid_partial_perm(r.perm, b.d_sae)
    wide = make_stack(2, d=32, F=512, seed=6, heavy_tail=2.5).saes[1]  # rectangular: 384 x 512
    r = match(a, wide, dense_limit=0, candidates_k=1)
    assert r.certified and r.objective == pytest.approx(_scipy_objective(a, wide, dense_limit=0), rel=1e-9)
    assert r.n_matched == a.d_sae


@pytest.mark.parametrize("screened", ["1", "0"])
def test_sparse_path_gives_tied_zero_vectors_their_own_arcs(monkeypatch, screened: str) -> None:
    """Many dead features with all-zero decoder rows: their pairs all tie, and without a
    staircase of their own they would crowd onto the same few columns (an infeasible graph
    that the completion patches with forced arcs). With it: no completion, same optimum."""
    monkeypatch.setenv("MECHPERM_SCREEN", screened)
    st = make_stack(2, d=32, F=1024, seed=7, dead_rate=0.5, dead_modes=("zero_row",))  # without: 254k completion arcs
    a, b = st.saes
    assert int((kernels.row_sq_norms(kernels.matching_vectors(a)) == 0).sum()) > 200
    r = match(a, b, dense_limit=0, candidates_k=4)
    assert r.stats["zero_vector_edges"] > 0 and r.stats["completion_edges"] == 0
    assert r.certified and r.objective == pytest.approx(_scipy_objective(a, b, dense_limit=0), rel=1e-9)
    _valid_partial_perm(r.perm, b.d_sae)


def test_zero_vector_arcs_from_the_graphs_norms() -> None:
    """_zero_vector_arcs reads the graph's norms where it has them: the same arcs and costs, bit
    for bit, as from the vectors' own squared norms."""
    match_module = importlib.import_module("mechperm.match")  # the module (the package exports match())
    st = make_stack(2, d=32, F=600, seed=3, dead_rate=0.3, dead_modes=("zero_row",))
    A, B = (kernels.matching_vectors(s) for s in st.saes)
    g = kernels.solver_graph(kernels.candidates(A, B, k=4), A, B)
    assert g.row_norm is not None and g.col_norm is not None
    with_norms, n1 = match_module._zero_vector_arcs(g, A, B, 4)
    without, n2 = match_module._zero_vector_arcs(dataclasses.replace(g, row_norm=None, col_norm=None), A, B, 4)
    assert n1 == n2 > 0
    for name in ("indptr", "indices", "costs"):
        assert np.array_equal(getattr(with_norms, name), getattr(without, name)), name


def test_match_vectors_is_matchs_engine(stack) -> None:
    """match_vectors on the matching vectors = match on the SAEs; bad vectors are refused."""
    from mechperm import match_vectors

    a, b = stack.saes[0], stack.saes[1]
    A, B = kernels.matching_vectors(a), kernels.matching_vectors(b)
    for kw in ({}, {"dense_limit": 0}, {"mode": "topk", "k": 3}, {"mode": "partial", "threshold": 0.5}):
        r, v = match(a, b, **kw), match_vectors(A, B, **kw)
        assert torch.equal(r.perm, v.perm) and r.objective == v.objective
        assert v.options["mode"] == kw.get("mode", "bijective")
    with pytest.raises(ValueError, match="expected 2-D"):
        match_vectors(A[0], B)
    with pytest.raises(ValueError, match="mode="):
        match_vectors(A, B, mode="greedy")


@pytest.mark.parametrize("activation", ["jumprelu", "relu", "topk"])
@pytest.mark.parametrize("fold", [True, False])
def test_decoder_rows_are_the_matching_vectors_bit_for_bit(activation: str, fold: bool) -> None:
    """ScaledRows over W_dec read as the materialised vectors: whole, by slices, by index arrays."""
    sae = random_sae(d=37, F=300, activation=activation, seed=5, theta_scale=3.0)
    if activation == "topk":  # TopK folds only with equal decoder norms
        sae = dataclasses.replace(sae, W_dec=sae.W_dec * 1.7)
    rows = kernels.decoder_rows(sae, fold=fold)
    ref = kernels.matching_vectors(sae, fold=fold)
    assert rows is not None and rows.shape == ref.shape and rows.dtype == torch.float32
    assert torch.equal(rows.tensor(), ref)
    assert torch.equal(rows[17:123], ref[17:123])
    idx = np.array([299, 0, 5, 5, 150])
    assert torch.equal(rows[idx], ref[torch.from_numpy(idx)])
    assert torch.equal(kernels.row_sq_norms(rows), kernels.row_sq_norms(ref))
    assert torch.equal(kernels.decoder_rows(sae.fold()).tensor(), kernels.matching_vectors(sae.fold()))
    # decoders that cannot serve as the base: the vectors are built as before
    assert kernels.decoder_rows(random_sae(d=8, F=16, dtype=torch.bfloat16)) is None
    assert kernels.decoder_rows(dataclasses.replace(sae, W_dec=sae.W_dec.T.contiguous().T)) is None
    with pytest.raises(ValueError, match="float32"):
        kernels.ScaledRows(sae.W_dec, torch.ones(300, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[300\]"):
        kernels.ScaledRows(sae.W_dec, torch.ones(299))


def _in_place_case(monkeypatch, Fa: int, Fb: int, mode: str) -> tuple:
    """(sae_a, sae_b, match options, match_vectors' result on the materialised vectors) of the
    in-place tests; from then on matching_vectors fails (match() must not copy the decoders)."""
    from mechperm import match_vectors

    a = make_stack(2, d=96, F=Fa, seed=4).saes[0]
    b = make_stack(2, d=96, F=Fb, seed=4).saes[1]
    kw = dict(dense_limit=0, mode=mode, threshold=0.3 if mode == "partial" else None)
    ref = match_vectors(kernels.matching_vectors(a), kernels.matching_vectors(b), **kw)

    def no_copies(*args, **kwargs):
        raise AssertionError("matching_vectors called: the decoders were copied")

    monkeypatch.setattr(kernels, "matching_vectors", no_copies)
    return a, b, kw, ref


@pytest.mark.parametrize("Fa, Fb, mode", [(700, 700, "bijective"), (700, 520, "bijective"), (640, 700, "partial")])
def test_screened_sparse_path_reads_the_decoders_in_place(monkeypatch, Fa: int, Fb: int, mode: str) -> None:
    """match() on the CPU's screened sparse path never builds the folded decoders (no 2 x F x d
    copy) and returns what the materialised vectors give, bit for bit: the same rounding of
    every row, so the same costs, optimum, duals and certificate."""
    monkeypatch.setenv("MECHPERM_SCREEN", "1")
    a, b, kw, ref = _in_place_case(monkeypatch, Fa, Fb, mode)
    r = match(a, b, **kw)
    assert r.certified and ref.certified
    assert torch.equal(r.perm, ref.perm) and r.objective == ref.objective and r.gap == ref.gap
    assert torch.allclose(r.cost, ref.cost, rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(r.cosine, ref.cosine, rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(r.margin, ref.margin, rtol=0, atol=0, equal_nan=True)
    if mode == "partial":
        assert int((r.perm < 0).sum()) > 0  # the threshold leaves some features unmatched
    # Other paths need whole matrices: ScaledRows builds them (the same optimum).
    dense = match(a, b, **{**kw, "dense_limit": None})
    assert dense.certified and dense.objective == pytest.approx(ref.objective, rel=1e-12)
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    unscreened = match(a, b, **kw)
    assert unscreened.certified and unscreened.objective == pytest.approx(ref.objective, rel=1e-6)


@pytest.mark.parametrize("Fa, Fb, mode", [(700, 700, "bijective"), (700, 520, "bijective"), (640, 700, "partial")])
def test_unscreened_sparse_path_reads_large_decoders_in_place(monkeypatch, Fa: int, Fb: int, mode: str) -> None:
    """Where the folded copies would be large (``match._COPY_LIMIT``, lowered here) the CPU's
    unscreened sparse path reads the SAEs' own decoders as well (the candidate pass and the
    pricer's GEMMs by blocks of rows and columns, pairs by their rows): neither side is copied
    whole, and the result is what the materialised vectors give, bit for bit."""
    match_module = importlib.import_module("mechperm.match")
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    a, b, kw, ref = _in_place_case(monkeypatch, Fa, Fb, mode)
    built = []
    whole = kernels.ScaledRows.tensor

    def tensor(self):
        built.append(self.shape[0])
        return whole(self)

    monkeypatch.setattr(kernels.ScaledRows, "tensor", tensor)
    default = match_module._COPY_LIMIT
    monkeypatch.setattr(match_module, "_COPY_LIMIT", 0)
    r = match(a, b, **kw)
    assert not built  # neither side copied whole
    assert r.certified and ref.certified and r.stats["solver"]["priced_rows"] > 0
    assert torch.equal(r.perm, ref.perm) and r.objective == ref.objective and r.gap == ref.gap
    for x, y in ((r.cost, ref.cost), (r.cosine, ref.cosine), (r.margin, ref.margin)):
        assert torch.allclose(x, y, rtol=0, atol=0, equal_nan=True)
    monkeypatch.setattr(match_module, "_COPY_LIMIT", default)  # these copies are small: made
    built.clear()
    assert torch.equal(match(a, b, **kw).perm, ref.perm) and len(built) == 2


@pytest.mark.parametrize("screened", ["1", "0"])
def test_progress_bars_cover_candidates_and_pricing(monkeypatch, capsys, screened: str) -> None:
    """progress=True: a bar over the candidate pass's rows (CPU; every row counted once) and one
    over the certificate's pricing passes, on stderr; the result is the same as without."""
    monkeypatch.setenv("MECHPERM_SCREEN", screened)
    a, b = make_stack(2, d=48, F=1500, seed=6).saes
    quiet = match(a, b, dense_limit=0)
    seen = []
    real = kernels.candidates if screened == "0" else screen.solver_graph

    def counting(*args, on_rows=None, **kwargs):
        def count(n: int) -> None:
            seen.append(n)
            on_rows(n)
        return real(*args, on_rows=count, **kwargs)

    monkeypatch.setattr(kernels if screened == "0" else screen,
                        "candidates" if screened == "0" else "solver_graph", counting)
    loud = match(a, b, dense_limit=0, progress=True)
    err = capsys.readouterr().err
    assert "candidates (1500×1500)" in err and "certificate pricing" in err
    assert sum(seen) == 1500 and len(seen) > 1
    assert torch.equal(loud.perm, quiet.perm) and loud.objective == quiet.objective


@pytest.mark.parametrize("screened", ["0", "1"])
def test_sparse_path_exact_where_norms_span_many_decades(monkeypatch, screened: str) -> None:
    """The sparse path's optimum equals scipy's where some vectors are 10^4 times shorter than
    others (their cosines cannot be read back from float32 costs; the bounds' own test is
    kernels' test_cosine_bounds_hold_where_norms_span_many_decades, the slow test below the
    case where it went wrong)."""
    from mechperm import match_vectors

    monkeypatch.setenv("MECHPERM_SCREEN", screened)
    g = torch.Generator().manual_seed(7)
    A = torch.randn(400, 48, generator=g) * torch.exp(2.0 * torch.randn(400, 1, generator=g))
    B = A[torch.randperm(400, generator=g)] + 0.3 * torch.randn(400, 48, generator=g) * A.norm(dim=1).mean()
    B[::3] *= 1e-4
    A[1::5] *= 1e-4
    r = match_vectors(A, B, dense_limit=0, candidates_k=4)
    c = _reference_costs(A, B, 0).double().numpy()
    rows, cols = linear_sum_assignment(c)
    assert r.certified and r.objective == pytest.approx(float(c[rows, cols].sum()), rel=1e-9)


@pytest.mark.parametrize("screened", ["0", "1"])
def test_sparse_path_on_drifted_lognormal_vectors(monkeypatch, screened: str) -> None:
    """bench_match_gpu's vectors (lognormal norms, a permuted copy drifted by ~37°): the loop
    prices the partners of violating pairs and re-checks moved columns, and still reaches
    scipy's optimum of the same costs, certified."""
    from mechperm import match_vectors

    monkeypatch.setenv("MECHPERM_SCREEN", screened)
    g = torch.Generator().manual_seed(3)
    F, d = 1200, 32
    a = torch.randn(F, d, generator=g)
    a /= a.norm(dim=1, keepdim=True)
    b = 0.8 * a + 0.6 * torch.randn(F, d, generator=g) / d**0.5
    b /= b.norm(dim=1, keepdim=True)
    norm = torch.exp(torch.randn(F, 1, generator=g))
    A = a * norm
    B = (b * norm * torch.exp(0.2 * torch.randn(F, 1, generator=g)))[torch.randperm(F, generator=g)]
    r = match_vectors(A, B, dense_limit=0, candidates_k=2)
    c = _reference_costs(A, B, 0).double().numpy()
    rows, cols = linear_sum_assignment(c)
    assert r.certified and r.objective == pytest.approx(float(c[rows, cols].sum()), rel=1e-9)
    solver = r.stats["solver"]
    assert solver["partner_rows"] > 0 and solver["priced_rows"] > 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MECHPERM_RUN_SLOW") != "1", reason="set MECHPERM_RUN_SLOW=1")
def test_unscreened_sparse_path_on_the_heavy_tailed_stack_8192(monkeypatch) -> None:
    """The case that found the cosine bounds read from float32 costs wrong: the unscreened
    sparse path matched 7.6e-6 above the dense optimum, certified (F = 8192, d = 2304)."""
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    a, b = make_stack(2, d=2304, F=8192, seed=0, heavy_tail=2.5).saes
    sparse, dense = match(a, b, dense_limit=0), match(a, b, dense_limit=8192 * 8192)
    assert sparse.certified and sparse.objective == pytest.approx(dense.objective, rel=1e-9)


def test_unscreened_cpu_path_prices_refailing_rows_pair_by_pair(monkeypatch) -> None:
    """Unscreened on the CPU, rows priced before that fail again on few pairs are costed pair by
    pair (assign_exact's pair_pricing): scipy's optimum of the same costs, certified, and the
    same as with whole rows; the screened path keeps whole rows (its bf16 rows are cheap)."""
    from mechperm import assign as solver

    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    a, b = make_stack(2, d=128, F=2048, seed=0).saes
    r = match(a, b, dense_limit=0)
    assert r.certified and r.stats["solver"]["pair_priced_rows"] > 0
    c = _reference_costs(kernels.matching_vectors(a), kernels.matching_vectors(b), 0).double().numpy()
    rows, cols = linear_sum_assignment(c)
    assert r.objective == pytest.approx(float(c[rows, cols].sum()), rel=1e-9)
    real = solver.assign_exact
    monkeypatch.setattr(solver, "assign_exact", lambda *args, **kw: real(*args, **{**kw, "pair_pricing": False}))
    whole = match(a, b, dense_limit=0)
    assert whole.stats["solver"]["pair_priced_rows"] == 0 and whole.objective == pytest.approx(r.objective, rel=1e-12)
    monkeypatch.setattr(solver, "assign_exact", real)
    monkeypatch.setenv("MECHPERM_SCREEN", "1")
    if screen.available(kernels.matching_vectors(a), kernels.matching_vectors(b)):
        assert match(a, b, dense_limit=0).stats["solver"]["pair_priced_rows"] == 0


def test_device_that_is_not_here_is_refused_up_front() -> None:
    a, b = make_stack(2, d=16, F=32, seed=0).saes
    with pytest.raises(ValueError, match="device='gpu' is not a torch device"):
        match(a, b, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda': CUDA is not available here"):
            match(a, b, device="cuda")


def test_device_the_kernels_do_not_run_on_is_refused_up_front() -> None:
    """A device torch has but the kernels do not support (here 'meta', which every torch has;
    on a Mac, 'mps') is refused naming it, not failed inside a kernel."""
    a, b = make_stack(2, d=16, F=32, seed=0).saes
    with pytest.raises(ValueError, match=r"matching vectors would be on device 'meta': the cost kernels run on 'cpu' or 'cuda'.*device='cpu'"):
        match(a, b, device="meta")
    A = torch.zeros(8, 16, device="meta")
    with pytest.raises(ValueError, match=r"A is on device 'meta'.*move them to the CPU"):
        match_vectors(A, torch.zeros(8, 16))
    with pytest.raises(ValueError, match=r"B is on device 'meta'"):
        kernels.candidates(torch.zeros(8, 16), torch.zeros(8, 16, device="meta"), k=2)


def test_match_vectors_computes_each_tensors_norms_once(monkeypatch) -> None:
    """One match asks for A's and B's squared norms in several places (candidates, bounds,
    pricers, pair values): each is computed once (kernels.candidates.norms_kept), and the
    result is the one computed without keeping them."""
    monkeypatch.setenv("MECHPERM_SCREEN", "0")  # the unscreened path's kernels take plain tensors
    M = importlib.import_module("mechperm.match")
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3000, 24, generator=g)
    B = A[torch.randperm(3000, generator=g)] + 0.1 * torch.randn(3000, 24, generator=g)
    calls = []
    real_sum = torch.sum

    def counting_sum(x, *args, **kw):
        if x.dtype == torch.float64 and x.dim() == 2 and x.shape[1] == 24:  # row_sq_norms' blocks
            calls.append(x.shape[0])
        return real_sum(x, *args, **kw)

    monkeypatch.setattr(torch, "sum", counting_sum)
    got = M.match_vectors(A, B, candidates_k=8, dense_limit=0)
    assert calls == [3000, 3000]
    monkeypatch.setattr(M, "norms_kept", contextlib.nullcontext)
    want = M.match_vectors(A, B, candidates_k=8, dense_limit=0)
    assert len(calls) > 4  # without: computed again where asked
    assert got.certified and torch.equal(got.perm, want.perm) and got.objective == want.objective
    np.testing.assert_array_equal(got.cost.numpy(), want.cost.numpy())
    np.testing.assert_array_equal(got.margin.numpy(), want.margin.numpy())


def test_norms_are_kept_only_within_the_block() -> None:
    """Within norms_kept a tensor's norms are computed once and each caller gets its own copy;
    outside, a change torch does not see (the numpy array a tensor shares) is read again."""
    C = importlib.import_module("mechperm.kernels.candidates")
    arr = np.ones((4, 3), np.float32)
    X = torch.from_numpy(arr)
    with C.norms_kept():
        first = C.row_sq_norms(X)
        first += 100.0  # the caller's copy
        with C.norms_kept():  # nested: the outer block's
            arr[:] = 2.0  # unseen by torch: within the block the tensors must not change
            assert torch.equal(C.row_sq_norms(X), torch.full((4,), 3.0))
    assert torch.equal(C.row_sq_norms(X), torch.full((4,), 12.0))
