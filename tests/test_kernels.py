"""Kernels: matching vectors, dense costs, candidate graph, pricing — torch reference against
brute force, and the Triton kernels (TRITON_INTERPRET=1 on the CPU) against the torch reference."""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import numpy as np
import pytest
import torch
from conftest import random_sae
from hypothesis import given, settings
from hypothesis import strategies as st

from mechperm.kernels import (
    COL_COS,
    COL_COST,
    ROW_COS,
    ROW_COST,
    candidates,
    dense_costs,
    matching_vectors,
    price,
    row_sq_norms,
)

CAND = sys.modules["mechperm.kernels.candidates"]


# ---------------------------------------------------------------------------------- helpers
def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def heavy_tailed(F: int, D: int, *, sigma: float = 1.0, drift: float = 1.3, seed: int = 0):
    """A [F, D], B [F, D]: lognormal row norms, B's rows = A's rotated by ``drift`` radians,
    rescaled and shuffled (folded decoders of two layers, the DESIGN.md pitfall)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(F, D, generator=g)
    U /= U.norm(dim=1, keepdim=True)
    m = torch.exp(sigma * torch.randn(F, 1, generator=g))
    N = torch.randn(F, D, generator=g)
    N -= (N * U).sum(1, keepdim=True) * U
    N /= N.norm(dim=1, keepdim=True)
    V = np.cos(drift) * U + np.sin(drift) * N
    B = (V * m * torch.exp(0.2 * torch.randn(F, 1, generator=g)))[torch.randperm(F, generator=g)]
    return U * m, B


def brute(A: torch.Tensor, B: torch.Tensor):
    """float64 costs and cosines by definition."""
    a, b = A.double(), B.double()
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a @ b.T) / torch.where(na > 0, na, 1)[:, None] / torch.where(nb > 0, nb, 1)[None, :]
    return cost, cos


def edge_set(g) -> set[tuple[int, int]]:
    return set(zip(g.row_ids().tolist(), g.indices.tolist()))


def topk_pairs(M: torch.Tensor, k: int, dim: int, largest: bool) -> set[tuple[int, int]]:
    idx = torch.topk(M, min(k, M.shape[dim]), dim=dim, largest=largest).indices
    if dim == 1:
        return {(i, int(j)) for i in range(M.shape[0]) for j in idx[i]}
    return {(int(i), j) for j in range(M.shape[1]) for i in idx[:, j]}


def check_csr(g) -> None:
    Fa, Fb = g.shape
    assert g.indptr.shape == (Fa + 1,) and g.indptr.dtype == torch.int64 and int(g.indptr[0]) == 0
    assert bool((g.indptr[1:] >= g.indptr[:-1]).all()) and int(g.indptr[-1]) == g.num_edges
    assert g.indices.dtype == torch.int64 and g.costs.dtype == torch.float32 and g.sources.dtype == torch.uint8
    for i in range(Fa):
        cols = g.indices[g.indptr[i] : g.indptr[i + 1]]
        assert bool((cols[1:] > cols[:-1]).all()), f"row {i}: columns not strictly increasing (sorted, no duplicates)"
    assert g.num_edges == 0 or (int(g.indices.min()) >= 0 and int(g.indices.max()) < Fb)
    assert g.row_kth.shape == (Fa,) and g.col_kth.shape == (Fb,)


def check_bounds(g, C: torch.Tensor) -> None:
    """Every pair left out of the graph costs at least max(row_kth[i], col_kth[j])."""
    inside = torch.zeros_like(C, dtype=torch.bool)
    inside[g.row_ids(), g.indices] = True
    bound = torch.maximum(g.row_kth[:, None], g.col_kth[None, :])
    bad = (~inside) & (C < bound)
    assert not bool(bad.any()), f"{int(bad.sum())} left-out pairs cost less than their bound"


# ---------------------------------------------------------------------------------- features
def test_decoder_vectors_equal_folded_sae_rows() -> None:
    sae = random_sae(d=24, F=40, seed=3)
    assert torch.equal(matching_vectors(sae), sae.fold().W_dec)
    assert torch.equal(matching_vectors(sae, fold=False), sae.W_dec)


def test_encoder_and_both_vectors_equal_folded_sae() -> None:
    sae = random_sae(d=24, F=40, seed=4)
    f = sae.fold()
    assert torch.equal(matching_vectors(sae, on="encoder"), f.W_enc.T)
    both = matching_vectors(sae, on="both")
    assert both.shape == (40, 2 * 24 + 1)
    assert torch.equal(both, torch.cat([f.W_dec, f.W_enc.T, f.b_enc[:, None]], dim=1))
    raw = torch.cat([sae.W_dec, sae.W_enc.T, sae.b_enc[:, None]], 1)
    assert torch.equal(matching_vectors(sae, on="both", fold=False), raw)


def test_invalid_features_are_left_unscaled_like_fold() -> None:
    sae = random_sae(d=16, F=12, seed=5)
    th, W_dec = sae.threshold.clone(), sae.W_dec.clone()
    th[0], th[1], th[2] = 0.0, -1.0, float("inf")
    W_dec[3] = 0.0
    sae = dataclasses.replace(sae, threshold=th, W_dec=W_dec)
    v = matching_vectors(sae, on="both")
    f = sae.fold()
    assert torch.equal(v, torch.cat([f.W_dec, f.W_enc.T, f.b_enc[:, None]], 1))
    assert torch.equal(v[:3, :16], sae.W_dec[:3]) and torch.equal(v[:4, 16:32], sae.W_enc[:, :4].T)


def test_relu_float64_and_bf16_saes() -> None:
    relu = random_sae(d=16, F=20, activation="relu", seed=6)
    assert torch.equal(matching_vectors(relu), relu.fold().W_dec)
    s64 = random_sae(d=16, F=20, seed=7, dtype=torch.float64)
    assert torch.equal(matching_vectors(s64), s64.fold().W_dec.float())
    s16 = random_sae(d=16, F=20, seed=8, dtype=torch.bfloat16)
    # float32 product, rounded once to float32 (fold() rounds to bf16): equal to bf16 precision
    torch.testing.assert_close(matching_vectors(s16), s16.fold().W_dec.float(), atol=0, rtol=2**-8)
    assert matching_vectors(s16, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_topk_sae_with_unequal_norms_refuses_to_fold() -> None:
    sae = random_sae(d=16, F=20, activation="topk", seed=9)
    sae = dataclasses.replace(sae, W_dec=sae.W_dec * torch.linspace(1, 2, 20)[:, None])
    with pytest.raises(ValueError, match="TopK"):
        matching_vectors(sae)
    assert torch.equal(matching_vectors(sae, fold=False), sae.W_dec)


def test_normalize_and_norms() -> None:
    sae = random_sae(d=16, F=12, seed=10)
    W_dec = sae.W_dec.clone()
    W_dec[5] = 0.0
    sae = dataclasses.replace(sae, W_dec=W_dec)
    v, n = matching_vectors(sae, normalize=True, return_norms=True)
    live = torch.arange(12) != 5
    torch.testing.assert_close(v[live].norm(dim=1), torch.ones(11))
    assert not bool(v[5].any()) and float(n[5]) == 0.0
    assert torch.equal(n, row_sq_norms(v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_row_sq_norms_are_float64_sums_rounded_once(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The canonical norms do not depend on summation order (MKL's and CUDA's differ): each is
    the float64 sum of exact squares, rounded once, whatever block the row is summed in."""
    cand = sys.modules["mechperm.kernels.candidates"]  # the package's attribute is the function
    X = (torch.randn(300, 2304, generator=torch.Generator().manual_seed(3)) * torch.rand(300, 1) * 10).to(dtype)
    x = X.float().numpy().astype(np.float64)
    ref = np.array([np.float32(np.sum(r * r)) for r in x])  # numpy's pairwise sum, not torch's
    np.testing.assert_array_equal(row_sq_norms(X).numpy(), ref)
    monkeypatch.setattr(cand, "_NORM_BLOCK_ELEMENTS", 2304 * 7)  # blocks of 7 rows
    np.testing.assert_array_equal(row_sq_norms(X).numpy(), ref)
    assert row_sq_norms(X).dtype == torch.float32


def test_matching_vectors_rejects_bad_arguments() -> None:
    sae = random_sae(d=8, F=6)
    with pytest.raises(ValueError, match="choose 'decoder', 'encoder' or 'both'"):
        matching_vectors(sae, on="weights")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expects an SAE"):
        matching_vectors(torch.zeros(3, 3))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- dense costs
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-5)])
def test_dense_costs_match_definition(dtype: torch.dtype, rtol: float) -> None:
    A, B = randn(37, 50, seed=1, dtype=dtype), randn(29, 50, seed=2, dtype=dtype)
    C = dense_costs(A, B)
    assert C.dtype == torch.float32 and C.shape == (37, 29)
    ref, _ = brute(A, B)
    scale = (A.double().norm(dim=1)[:, None] + B.double().norm(dim=1)[None, :]) ** 2
    assert float(((C.double() - ref).abs() / scale).max()) < rtol


def test_dense_costs_clamp_cancellation_to_zero() -> None:
    A = randn(20, 64, seed=3) * 100
    C = dense_costs(A, A)
    assert bool((C >= 0).all())  # cancellation leaves rounding noise, never a negative cost
    assert float((C.diagonal() / row_sq_norms(A)).max()) <= 1e-6
    assert dense_costs(A[:0], A).shape == (0, 20) and dense_costs(A, A[:0]).shape == (20, 0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dense_costs_with_given_norms(backend: str, tc) -> None:
    """norms= (the pricers' once-computed norms) gives the same costs; wrong shapes are refused."""
    A, B = randn(40, 24, seed=5).to(TRITON_DEVICE), randn(30, 24, seed=6).to(TRITON_DEVICE)
    norms = (row_sq_norms(A), row_sq_norms(B))
    same = dense_costs(A[5:17], B, backend=backend, norms=(norms[0][5:17], norms[1]))
    assert torch.equal(same, dense_costs(A[5:17], B, backend=backend))
    with pytest.raises(ValueError, match=r"norms must have shapes \(12,\) and \(30,\)"):
        dense_costs(A[5:17], B, backend=backend, norms=norms)


# ---------------------------------------------------------------------------------- candidates
@pytest.mark.parametrize("kind", ["random", "heavy"])
@pytest.mark.parametrize("k, k_cos", [(5, None), (3, 7), (4, 0)])
@pytest.mark.parametrize("pack", [True, False], ids=["packed-keys", "sort-with-index"])
def test_candidates_match_brute_force(monkeypatch, kind: str, k: int, k_cos: int | None, pack: bool) -> None:
    # the union's two sorts: keys with positions in place (CPU) and keys with an index (CUDA);
    # its passes over the sorted keys in chunks of 7 edges (pairs' copies straddle chunks)
    monkeypatch.setattr(importlib.import_module("mechperm.kernels.candidates"), "_PACK_KEYS", pack)
    monkeypatch.setattr(importlib.import_module("mechperm.kernels.candidates"), "_UNION_CHUNK", 7)
    if kind == "random":
        A, B = randn(90, 24, seed=11), randn(70, 24, seed=12)
    else:
        A, B = heavy_tailed(80, 48, sigma=1.5, seed=13)
    g = candidates(A, B, k=k, k_cos=k_cos, block_rows=32, block_cols=24)
    check_csr(g)
    C = dense_costs(A, B)
    _, cos = brute(A, B)
    assert torch.equal(g.costs, C[g.row_ids(), g.indices]), "edge costs must equal dense_costs bit for bit"
    assert torch.equal(g.row_kth, torch.topk(C, k, dim=1, largest=False).values[:, -1])
    assert torch.equal(g.col_kth, torch.topk(C, k, dim=0, largest=False).values[-1])
    kc = k if k_cos is None else k_cos
    want = topk_pairs(C, k, 1, False) | topk_pairs(C, k, 0, False)
    if kc:
        want |= topk_pairs(cos, kc, 1, True) | topk_pairs(cos, kc, 0, True)
    assert edge_set(g) == want
    assert g.stats.edges == len(want) and g.stats.row_cost == A.shape[0] * k
    rows = g.row_ids()

    def flagged(bit: int) -> set[tuple[int, int]]:
        on = (g.sources & bit) > 0
        return set(zip(rows[on].tolist(), g.indices[on].tolist()))

    assert flagged(ROW_COST) == topk_pairs(C, k, 1, False) and flagged(COL_COST) == topk_pairs(C, k, 0, False)
    if kc:
        assert flagged(ROW_COS) == topk_pairs(cos, kc, 1, True) and flagged(COL_COS) == topk_pairs(cos, kc, 0, True)
    else:
        assert not bool((g.sources & (ROW_COS | COL_COS)).any())
    check_bounds(g, C)


def test_cosine_candidates_make_heavy_tailed_graph_matchable() -> None:
    from scipy.sparse.csgraph import maximum_bipartite_matching

    A, B = heavy_tailed(256, 256, sigma=1.0, drift=1.3, seed=0)
    cost_only = candidates(A, B, k=4, k_cos=0)
    both = candidates(A, B, k=4)
    matched = [int((maximum_bipartite_matching(g.to_scipy(), perm_type="column") >= 0).sum())
               for g in (cost_only, both)]
    assert matched[0] < 256, "instance should defeat cost-only candidates (DESIGN.md pitfall)"
    assert matched[1] == 256
    assert both.stats.cos_only > 0


@pytest.mark.parametrize("seed", range(3))
def test_cosine_bounds_equal_a_numpy_reference(seed: int) -> None:
    """kernels.solver_graph's Euclidean-bound inputs against the plain numpy definition: the
    norms bit for bit, and per row and column the k_cos-th largest float64 cosine plus twice the
    selection's float32 error, to within that error (the selection's k-th value is float32)."""
    cand = sys.modules["mechperm.kernels.candidates"]
    g0 = torch.Generator().manual_seed(seed)
    A = torch.randn(700, 24, generator=g0) * torch.exp(torch.randn(700, 1, generator=g0))
    B = torch.randn(900, 24, generator=g0)
    A[5] = 0.0  # a zero vector: cosine 0 by convention
    g = candidates(A, B, k=6, k_cos=5)
    got = cand._cosine_bounds(g, A, B)
    na, nb = row_sq_norms(A).double().numpy(), row_sq_norms(B).double().numpy()
    y, x = np.sqrt(na), np.sqrt(nb)
    denom = y[:, None] * x[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, (A.double().numpy() @ B.double().numpy().T) / denom, 0.0)
    eps = 2.0 * (24 * 2.0**-24 / (1 - 24 * 2.0**-24)) + 16 * 2.0**-24
    assert got.keys() == {"row_norm", "col_norm", "row_cos", "col_cos"}
    for key, want in (("row_norm", y), ("col_norm", x)):
        assert np.array_equal(got[key], want), key
    for key, kth in (("row_cos", -np.sort(-cos, axis=1)[:, 4]), ("col_cos", -np.sort(-cos, axis=0)[4, :])):
        assert np.abs(got[key] - 2 * eps - kth).max() <= eps, key
    assert got["row_cos"][5] == 2 * eps  # the zero row: every cosine 0, exactly


def test_costs_agree_bit_for_bit_across_functions_and_blockings() -> None:
    A, B = heavy_tailed(61, 40, sigma=2.0, seed=21)
    C = dense_costs(A, B)
    for br, bc in ((1024, 2048), (7, 13), (16, 16), (30, 61)):
        g = candidates(A, B, k=6, block_rows=br, block_cols=bc)
        assert torch.equal(g.costs, C[g.row_ids(), g.indices]), (br, bc)
    u = torch.full((61,), 1e9, dtype=torch.float64)  # every pair priced negative: price returns all
    p = price(A, B, u, torch.zeros(61, dtype=torch.float64), block_rows=25, block_cols=7)
    assert p.rows.numel() == 61 * 61 and torch.equal(p.costs, C[p.rows, p.cols])
    p1 = price(A, B, u, torch.zeros(61, dtype=torch.float64), rows=[3])
    assert torch.equal(p1.costs, C[3])
    Ab, Bb = A.bfloat16(), B.bfloat16()
    gb = candidates(Ab, Bb, k=6)
    assert torch.equal(gb.costs, dense_costs(Ab, Bb)[gb.row_ids(), gb.indices])
    assert torch.equal(dense_costs(Ab, Bb), dense_costs(Ab.float(), Bb.float()))


def test_k_larger_than_the_other_side_is_clamped() -> None:
    A, B = randn(12, 8, seed=31), randn(5, 8, seed=32)
    g = candidates(A, B, k=50)
    C = dense_costs(A, B)
    assert g.num_edges == 12 * 5 and g.k == 50
    assert torch.equal(g.row_kth, C.max(dim=1).values)  # k >= F_b: every pair of the row is an edge
    assert torch.equal(g.col_kth, torch.topk(C, 12, dim=0, largest=False).values[-1])
    check_csr(g)


def test_empty_inputs() -> None:
    A = randn(6, 4)
    g = candidates(A[:0], A, k=3)
    assert g.shape == (0, 6) and g.num_edges == 0 and g.indptr.tolist() == [0]
    g = candidates(A, A[:0], k=3)
    assert g.num_edges == 0 and g.indptr.tolist() == [0] * 7 and bool(torch.isinf(g.row_kth).all())
    p = price(A, A[:0], torch.zeros(6), torch.zeros(0))
    assert p.rows.numel() == 0


@settings(max_examples=25, deadline=None)
@given(
    Fa=st.integers(1, 40),
    Fb=st.integers(1, 40),
    D=st.integers(1, 20),
    k=st.integers(1, 8),
    k_cos=st.integers(0, 8),
    br=st.integers(1, 50),
    bc=st.integers(1, 50),
    seed=st.integers(0, 2**16),
)
def test_candidate_graph_invariants(Fa, Fb, D, k, k_cos, br, bc, seed) -> None:
    A, B = randn(Fa, D, seed=seed), randn(Fb, D, seed=seed + 1) * 3
    A[: Fa // 3] = 0.0  # zero rows: ties everywhere, cosine 0
    g = candidates(A, B, k=k, k_cos=k_cos, block_rows=br, block_cols=bc)
    check_csr(g)
    C = dense_costs(A, B)
    assert torch.equal(g.costs, C[g.row_ids(), g.indices])
    assert torch.equal(g.row_kth, torch.topk(C, min(k, Fb), dim=1, largest=False).values[:, -1])
    assert torch.equal(g.col_kth, torch.topk(C, min(k, Fa), dim=0, largest=False).values[-1])
    check_bounds(g, C)
    deg = g.indptr[1:] - g.indptr[:-1]
    assert bool((deg >= min(k, Fb)).all())


# ---------------------------------------------------------------------------------- price
def test_price_returns_exactly_the_negative_reduced_cost_pairs() -> None:
    A, B = heavy_tailed(70, 32, sigma=1.0, seed=41)
    C = dense_costs(A, B)
    g = torch.Generator().manual_seed(0)
    u = C.min(dim=1).values.double() + torch.rand(70, generator=g, dtype=torch.float64) * 2
    v = -torch.rand(70, generator=g, dtype=torch.float64)
    red = (C.double() - u[:, None]) - v[None, :]
    for tol, rows in ((0.0, None), (0.3, None), (0.0, [0, 5, 5, 69, 17])):
        p = price(A, B, u, v, rows=rows, tol=tol, block_rows=16, block_cols=24)
        mask = red < -tol
        if rows is not None:
            keep = torch.zeros(70, dtype=torch.bool)
            keep[rows] = True
            mask &= keep[:, None]
        want = mask.nonzero()
        assert torch.equal(p.rows, want[:, 0]) and torch.equal(p.cols, want[:, 1])  # sorted by (row, col)
        assert torch.equal(p.costs, C[p.rows, p.cols])
    p = price(A, B, u, v, max_pairs=10)
    most = torch.topk(red.flatten(), 10, largest=False).indices
    assert sorted((p.rows * 70 + p.cols).tolist()) == sorted(most.tolist())


def test_price_with_duals_beyond_float32_range() -> None:
    A, B = randn(9, 4, seed=71), randn(8, 4, seed=72)
    C = dense_costs(A, B)
    u = torch.full((9,), -1e39, dtype=torch.float64)
    v = torch.full((8,), 1e39, dtype=torch.float64)
    v[::2] *= 1.0000001  # half the columns price negative by ~1e32
    p = price(A, B, u, v)
    want = (((C.double() - u[:, None]) - v[None, :]) < 0).nonzero()
    assert want.shape[0] == 9 * 4 and torch.equal(p.rows, want[:, 0]) and torch.equal(p.cols, want[:, 1])


def test_price_rejects_bad_duals_and_rows() -> None:
    A, B = randn(5, 4), randn(6, 4)
    with pytest.raises(ValueError, match=r"u has shape \(4,\); expected \(5,\)"):
        price(A, B, torch.zeros(4), torch.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        price(A, B, torch.zeros(5), torch.full((6,), float("nan")))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 5\)"):
        price(A, B, torch.zeros(5), torch.zeros(6), rows=[7])
    with pytest.raises(ValueError, match="tol"):
        price(A, B, torch.zeros(5), torch.zeros(6), tol=-1.0)


# ---------------------------------------------------------------------------------- input errors
def test_input_errors_are_value_errors_with_a_fix() -> None:
    A, B = randn(5, 4), randn(6, 3)
    with pytest.raises(ValueError, match="different vector widths D"):
        candidates(A, B)
    with pytest.raises(ValueError, match="expected 2-D"):
        dense_costs(A[0], A)
    with pytest.raises(ValueError, match="dtype torch.float64"):
        candidates(A.double(), A.double())
    with pytest.raises(ValueError, match="dtype torch.int64"):
        row_sq_norms(torch.zeros(3, 3, dtype=torch.int64))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            candidates(A, A, k=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k_cos must be an integer >= 0"):
        candidates(A, A, k_cos=-1)
    bad = A.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="A row 2 holds non-finite values"):
        candidates(bad, A)
    with pytest.raises(ValueError, match="overflows float32"):
        dense_costs(A, torch.full((2, 4), 1e20))


def test_backend_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    A = randn(4, 3)
    assert CAND._backend(A) == "torch"
    monkeypatch.setenv("MECHPERM_KERNELS", "cuda-please")
    with pytest.raises(ValueError, match="use 'torch' or 'triton'"):
        candidates(A, A)
    monkeypatch.setenv("MECHPERM_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        candidates(A, A)
    assert CAND._backend(A, backend="torch") == "torch"  # the argument wins over the environment


# ---------------------------------------------------------------------------------- triton
from conftest import TRITON_DEVICE, tc  # noqa: E402,F401  (the fixture, shared with test_screen_cuda)


def assert_same_graph(gt, g, rtol: float = 1e-5) -> None:
    check_csr(gt)
    assert torch.equal(gt.indptr, g.indptr) and torch.equal(gt.indices, g.indices)
    assert torch.equal(gt.sources, g.sources)
    for name in ("costs", "row_kth", "col_kth"):
        a, b = getattr(gt, name), getattr(g, name)
        err = ((a - b).abs() / b.abs().clamp_min(1.0)).max()
        assert float(err) <= rtol, f"{name}: max relative error {float(err):.3g}"
    for name in ("row_kth_cos", "col_kth_cos"):  # cosines: the same to float32 rounding, or both absent
        a, b = getattr(gt, name), getattr(g, name)
        assert (a is None) == (b is None) == (g.k_cos == 0), name
        if a is not None:
            assert a.shape == b.shape and float((a - b).abs().max()) <= 1e-5, name


# (F_a, F_b, D, dtype, k, k_cos, splits): tiles are 64 × 64 (dense: 128 × 128), D chunks 64:
# ragged tiles everywhere, D < chunk, D loops with a remainder, host merge over column splits.
TRITON_CASES = [
    (70, 45, 40, torch.float32, 4, 4, None),
    (150, 130, 100, torch.bfloat16, 5, 3, None),
    (100, 200, 100, torch.float32, 8, 0, 2),
    (40, 70, 20, torch.float16, 64, 2, None),
]


@pytest.mark.parametrize("Fa, Fb, D, dtype, k, k_cos, splits", TRITON_CASES)
def test_triton_candidates_match_torch(tc, Fa, Fb, D, dtype, k, k_cos, splits) -> None:
    A, B = randn(Fa, D, seed=Fa, dtype=dtype), randn(Fb, D, seed=Fb + 1, dtype=dtype)
    gt = tc.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=k, k_cos=k_cos, splits=splits)
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=k, k_cos=k_cos))



# The GEMM-block path (MECHPERM_GEMM_CANDIDATES=1): dots from torch.mm, the selection kernel
# over them; (F_a, F_b, D, dtype, k, k_cos, splits, block rows, ordering of B's rows). Blocks of
# 64 rows (the selection's tile) make the columns' selections continue across blocks.
GEMM_CASES = [
    (70, 45, 40, torch.float32, 4, 4, None, None, "random"),
    (150, 130, 100, torch.bfloat16, 5, 3, None, 64, "random"),
    (100, 200, 100, torch.float32, 8, 0, 2, 64, "random"),
    (40, 70, 20, torch.float16, 64, 2, None, None, "random"),
    (200, 180, 24, torch.float32, 3, 2, 3, 64, "ties"),  # equal columns: ties broken by index
    (130, 150, 24, torch.float32, 2, 2, None, 64, "sorted"),
]


def test_triton_gemm_selection_profile(tc, monkeypatch: pytest.MonkeyPatch) -> None:
    """MECHPERM_PROFILE_GEMM=1: LAST_GEMM holds the seconds of each phase of the GEMM-block
    selection, summed over the blocks, and the graph is the same as without it."""
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * 90 * 64)  # two blocks of rows
    A, B = _emit_inputs(100, 90, 24, torch.float32, "random", seed=9)
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    plain = tc.candidates(A, B, k=3, k_cos=2).to("cpu")
    assert "seconds" not in tc.LAST_GEMM
    monkeypatch.setenv("MECHPERM_PROFILE_GEMM", "1")
    for gated, phases in (("1", ["cols", "gemm", "minima", "row_merge", "rows"]),
                          ("0", ["cols", "gemm", "row_merge", "rows"])):  # the default, then ungated
        if gated == "0":
            monkeypatch.setenv("MECHPERM_GATED_SELECT", "0")
        timed = tc.candidates(A, B, k=3, k_cos=2).to("cpu")
        assert tc.LAST_GEMM["blocks"] == 2 and tc.LAST_GEMM["gated"] == (gated == "1")
        assert sorted(tc.LAST_GEMM["seconds"]) == phases
        assert all(t >= 0 for t in tc.LAST_GEMM["seconds"].values())
        assert_same_graph(timed, plain, rtol=0.0)


def _gemm_path(tc, monkeypatch: pytest.MonkeyPatch, Fb: int, block, inputs):
    """The GEMM-block path on (blocks of ``block`` rows where given): returns ``inputs``."""
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    if block is not None:
        monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * Fb * block)
    return inputs


@pytest.mark.parametrize("Fa, Fb, D, dtype, k, k_cos, splits, block, ordering", GEMM_CASES)
def test_triton_gemm_selection_matches_torch(tc, monkeypatch: pytest.MonkeyPatch, Fa, Fb, D, dtype, k, k_cos,
                                             splits, block, ordering) -> None:
    A, B = _gemm_path(tc, monkeypatch, Fb, block, _emit_inputs(Fa, Fb, D, dtype, ordering, seed=Fa + 3 * Fb))
    tc.LAST_GEMM.clear()
    gt = tc.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=k, k_cos=k_cos, splits=splits)
    assert tc.LAST_GEMM["blocks"] == (1 if block is None else -(-Fa // block))  # the GEMM path ran
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=k, k_cos=k_cos))


# The gated selection (MECHPERM_GATED_SELECT=1): the same keys as the running top-k alone, and
# gates that bound each row's and column's k-th from above without being open everywhere.
GATED_CASES = [
    (200, 180, 24, torch.float32, 3, 2, None, 64, "random"),  # 3 blocks, columns' caps carried
    (150, 260, 40, torch.bfloat16, 5, 3, 2, None, "random"),  # one block, two column splits
    (200, 180, 24, torch.float32, 3, 2, 3, 64, "ties"),
    (130, 150, 24, torch.float32, 2, 2, None, 64, "sorted"),
    (100, 140, 24, torch.float32, 4, 0, None, None, "zero"),  # zero rows: −0.0 scores, no cosines
    (70, 45, 40, torch.float32, 4, 4, None, None, "random"),  # fewer groups than k: no gate
    (90, 200, 16, torch.float16, 1, 1, 3, 64, "random"),  # k = 1, fp16, splits of one tile
]


@pytest.mark.parametrize("Fa, Fb, D, dtype, k, k_cos, splits, block, ordering", GATED_CASES)
def test_triton_gated_selection_equals_ungated(tc, monkeypatch: pytest.MonkeyPatch, Fa, Fb, D, dtype, k, k_cos,
                                               splits, block, ordering) -> None:
    A, B = _gemm_path(tc, monkeypatch, Fb, block,
                      _emit_inputs(Fa, Fb, D, dtype, "random" if ordering == "zero" else ordering, seed=Fa + 5 * Fb))
    if ordering == "zero":
        A[::7] = 0
        B[::5] = 0
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "0")
    plain = tc.candidates(A, B, k=k, k_cos=k_cos, splits=splits).to("cpu")
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "1")
    gated = tc.candidates(A, B, k=k, k_cos=k_cos, splits=splits).to("cpu")
    assert tc.LAST_GEMM["gated"] is True
    assert_same_graph(gated, plain, rtol=0.0)
    assert_same_graph(gated, candidates(A.cpu(), B.cpu(), k=k, k_cos=k_cos))


def test_gated_selection_falls_back_when_a_list_comes_short(tc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caps below every score (never from _caps itself) leave the lists short: the selection
    warns and runs again ungated, so the graph is still the running top-k's."""
    A, B = _gemm_path(tc, monkeypatch, 180, 64, _emit_inputs(200, 180, 24, torch.float32, "random", seed=8))
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    plain = tc.candidates(A, B, k=3, k_cos=2).to("cpu")
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "1")
    monkeypatch.setattr(tc, "_caps", lambda mins, k: torch.full((mins.shape[0],), -2**63, dtype=torch.int64,
                                                                device=mins.device))
    with pytest.warns(RuntimeWarning, match="left a list short"):
        again = tc.candidates(A, B, k=3, k_cos=2).to("cpu")
    assert tc.LAST_GEMM["gated"] is False
    assert_same_graph(again, plain, rtol=0.0)


def test_gated_later_blocks_take_rows_minima_from_the_columns_pass(tc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gated, blocks after the first get their rows' gates from the columns' pass (no minima
    pass of their own): the minima it writes are those of 64-wide groups of the block's dense
    scores (costs bit for bit, −cosines in the columns' product order), so the gates are real
    and bound each row's k-th; the graph is the ungated one."""
    Fa, Fb, k = 192, 200, 3
    A, B = _gemm_path(tc, monkeypatch, Fb, 64, _emit_inputs(Fa, Fb, 24, torch.float32, "random", seed=21))
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    plain = tc.candidates(A, B, k=k, k_cos=k).to("cpu")
    seen = []
    real_caps = tc._caps
    monkeypatch.setattr(tc, "_caps", lambda mins, kk: seen.append(mins.cpu().clone()) or real_caps(mins, kk))
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "1")
    gated = tc.candidates(A, B, k=k, k_cos=k).to("cpu")
    assert_same_graph(gated, plain, rtol=0.0)
    assert len(seen) == 4 + 2 * 2  # block 0: rows' and columns' minima pass; blocks 1, 2: rows' from the columns'
    # norms, inverse norms and dots as the path computes them, on its device (a GPU's 1/sqrt
    # and cuBLAS's sums need not be the CPU's bit for bit), compared on the CPU
    na, nb = (CAND.row_sq_norms(x) for x in (A, B))
    ia, ib = (CAND._inv_norms(n).cpu() for n in (na, nb))
    na, nb = na.cpu(), nb.cpu()
    dots_of = tc._dots_against(B)[0]
    for b, (got_c, got_s) in enumerate(zip(seen[4::2], seen[5::2]), start=1):
        dots = dots_of(A[64 * b : 64 * (b + 1)]).cpu()
        cost = torch.clamp((dots * -2.0 + na[64 * b : 64 * (b + 1), None]) + nb[None, :], min=0.0)
        neg_cos = -((dots * ib[None, :]) * ia[64 * b : 64 * (b + 1), None])
        pad = -(-Fb // tc.SEL_COL_BM) * tc.SEL_COL_BM - Fb
        for got, full in ((got_c, cost), (got_s, neg_cos)):
            want = torch.nn.functional.pad(full, (0, pad), value=float("inf")).view(64, -1, tc.SEL_COL_BM).amin(2)
            assert torch.equal(got, want)
            assert (tc._key_scores(real_caps(got, k)) >= full.kthvalue(k, dim=1).values).all()
            assert (real_caps(got, k) != 2**63 - 1).all()


def test_block_caps_bound_each_kth(tc) -> None:
    """_block_caps on one block: every cap's score is at least the row's / column's k-th least
    cost and −cosine (dense reference), and where a row sees >= k groups it is finite and within
    the 2k-th (the gate is real, not MAXKEY); carried selections tighten the columns' caps."""
    Fa, Fb, k = 256, 320, 3
    A, B = _emit_inputs(Fa, Fb, 32, torch.float32, "random", seed=4)
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    na, nb = (x.double().pow(2).sum(1).float() for x in (A, B))
    ia, ib = CAND._inv_norms(na), CAND._inv_norms(nb)
    dots = A @ B.T
    cost = torch.clamp((dots * -2.0 + na[:, None]) + nb[None, :], min=0.0)
    neg_cos = -((dots * ia[:, None]) * ib[None, :])
    big = torch.iinfo(torch.int64).max
    empty = torch.full((Fb, k), big, dtype=torch.int64, device=TRITON_DEVICE)
    cps = -(-Fb // tc.SEL_BN) * tc.SEL_BN
    caps = tc._block_caps(dots, na, nb, ia, ib, empty, empty.clone(), k, k, k, k, True, 1, cps)
    for cap, scores in zip(caps, (cost, neg_cos, cost.T, neg_cos.T)):
        assert (cap != big).all()
        bound = tc._key_scores(cap)
        kth = scores.kthvalue(k, dim=1).values
        assert (bound >= kth).all()
        assert (bound <= scores.kthvalue(k * tc.SEL_BN, dim=1).values).all()
    # a column whose carried selection holds k pairs at score -1: its cap is at -1 (widened)
    carried = empty.clone()
    carried[0] = (tc._caps(torch.full((1, 1), -1.0), 1) & ~0xFFFFFFFF).to(TRITON_DEVICE) \
        | torch.arange(k, device=TRITON_DEVICE)
    caps = tc._block_caps(dots, na, nb, ia, ib, carried, empty.clone(), k, k, k, k, True, 1, cps)
    assert -1.0 < float(tc._key_scores(caps[2][:1])) < -0.999
    # fewer groups than k: no gate
    assert (tc._caps(torch.zeros(5, 2), 3) == big).all()


def test_caps_keys_admit_their_scores(tc) -> None:
    """A cap admits every key of score <= its bound, −0.0 and +0.0 alike, and no larger score.
    (Torch code, but in the module that needs triton: the fixture skips where it is absent.)"""
    mins = torch.tensor([[-0.0, 5.0], [0.0, 1.0], [-2.5, 7.0], [float("inf"), float("inf")]])
    caps = tc._caps(mins, 1)
    col = torch.tensor(123456)
    for row, score in ((0, 0.0), (0, -0.0), (1, 0.0), (2, -2.5)):
        b = torch.tensor([score]).view(torch.int32)
        key = ((b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 32) | col
        assert int(key) < int(caps[row]), (row, score)
    b = torch.tensor([-2.49]).view(torch.int32)
    assert int(((b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 32)) > int(caps[2])
    assert int(caps[3]) == torch.iinfo(torch.int64).max


@pytest.mark.parametrize("n, g, k", [(7, 5000, 3), (4, 1000, 32), (3, 511, 16), (5, 40, 1)])
def test_caps_merge_groups_and_stay_bounds(tc, n: int, g: int, k: int) -> None:
    """_caps merges runs of groups where a row has more than CAP_GROUPS_PER_K · k: the cap then
    equals the one of the merged minima (run minima, the last run padded), lies at or above the
    k-th least group minimum (a valid gate) and, merged or not, at or below the k-th least of
    the run minima; with no merge it is the plain k-th least."""
    g_ = torch.Generator().manual_seed(g + k)
    mins = torch.randn(n, g, generator=g_)
    mins[0, : g // 2] = float("inf")  # empty groups
    caps = tc._caps(mins, k)
    bound = tc._key_scores(caps)
    kth = mins.kthvalue(k, dim=1).values
    assert (bound >= kth).all()
    run = g // (tc.CAP_GROUPS_PER_K * k)
    if run >= 2:
        merged = torch.nn.functional.pad(mins, (0, (-g) % run), value=float("inf")).view(n, -1, run).amin(2)
        assert torch.equal(caps, tc._caps(merged, k))  # as if the kernel's groups were run-wide
        assert merged.shape[1] >= tc.CAP_GROUPS_PER_K * k
        want = merged.kthvalue(k, dim=1).values
    else:
        want = kth
    widened = torch.nextafter(want + want.abs() * 2.0**-20 + 0.0, torch.tensor(float("inf")))
    assert torch.equal(bound, widened)


def test_gemm_dots_are_float32_sums_of_exact_products(tc) -> None:
    """_dots_against: on the CPU, float32 dots of the upcast rows for every dtype; the CUDA
    fallback's claim that TF32 (10 mantissa bits) holds every bf16 and fp16 value exactly,
    subnormal fp16 ones included, so its products are those of the 16-bit operands."""
    A, B = randn(20, 30, seed=1), randn(25, 30, seed=2)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        f, how = tc._dots_against(B.to(dtype))
        assert how == "fp32"
        assert torch.equal(f(A.to(dtype)), A.to(dtype).float() @ B.to(dtype).float().T)
    vals = torch.cat([randn(10000, seed=3) * 10.0 ** torch.randint(-8, 5, (10000,)).float(),
                      torch.tensor([6e-8, 1e-5, 65504.0])])
    for dtype in (torch.bfloat16, torch.float16):
        bits = vals.to(dtype).float().view(torch.int32)
        assert ((bits & 0x1FFF) == 0).all()  # the 13 mantissa bits TF32 drops are zero
    saved = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    with tc._gemm_flags(True):
        assert torch.get_float32_matmul_precision() == "high"
        assert not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    with tc._gemm_flags(False):
        assert torch.get_float32_matmul_precision() == "highest"
    assert (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction) == saved


# The threshold-and-emit selection (MECHPERM_EMIT_TOPK=1) with 16 x 16 tiles, so that these
# sizes have the 4k tile groups per row and column it needs: (F_a, F_b, D, dtype, k, k_cos,
# splits, ordering of B's rows).
EMIT_CASES = [
    (200, 237, 24, torch.float32, 2, 2, None, "random"),
    (200, 210, 40, torch.bfloat16, 3, 1, 3, "random"),
    (140, 260, 24, torch.float32, 2, 0, None, "random"),
    (200, 220, 40, torch.float16, 2, 2, 2, "random"),
    (150, 180, 24, torch.float32, 2, 2, None, "sorted"),  # cheap columns first: many within
    (150, 180, 24, torch.float32, 2, 2, None, "ties"),  # blocks of equal columns
]


@pytest.fixture
def emit(tc, monkeypatch: pytest.MonkeyPatch):
    """triton_candidates with the emission path on and 16 x 16 tiles."""
    monkeypatch.setenv("MECHPERM_EMIT_TOPK", "1")
    monkeypatch.setattr(tc, "BM", 16)
    monkeypatch.setattr(tc, "BN", 16)
    tc.LAST_EMIT.clear()
    return tc


def _emit_inputs(Fa, Fb, D, dtype, ordering, seed):
    A, B = heavy_tailed(max(Fa, Fb), D, sigma=1.0, seed=seed)
    A, B = A[:Fa], B[:Fb]
    if ordering == "sorted":  # B by norm: the cheapest columns of most rows in the first tiles
        B = B[torch.argsort((B.double() ** 2).sum(1))]
    elif ordering == "ties":
        B = B[torch.arange(Fb) // 6 * 6]  # six copies of each column: ties at every threshold
    return A.to(dtype).contiguous(), B.to(dtype).contiguous()


@pytest.mark.parametrize("Fa, Fb, D, dtype, k, k_cos, splits, ordering", EMIT_CASES)
def test_triton_emit_selection_matches_torch(emit, Fa, Fb, D, dtype, k, k_cos, splits, ordering) -> None:
    A, B = _emit_inputs(Fa, Fb, D, dtype, ordering, seed=Fa + Fb)
    gt = emit.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=k, k_cos=k_cos, splits=splits)
    assert emit.LAST_EMIT.get("slots") == 4 * max(k, k_cos)  # the emission path ran
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=k, k_cos=k_cos))
    if ordering == "random":  # ~1.2k pairs within the thresholds, no row redone
        assert emit.LAST_EMIT["rows_redone"] == emit.LAST_EMIT["cols_redone"] == 0
        assert emit.LAST_EMIT["per_row"] < 2.5 * max(k, k_cos)



@pytest.mark.parametrize("splits", [None, 2])
def test_triton_emit_thresholds_from_every_pth_tile(emit, monkeypatch: pytest.MonkeyPatch, splits) -> None:
    """S = k groups, so F = 200 (13 tiles) has room for a stride P = 3: the thresholds' pass
    computes a third of the tiles (every row and column still sees k of them, from distinct
    pairs); lists selected in chunks of 7 rows."""
    monkeypatch.setattr(emit, "EMIT_SLOTS_PER_K", 1)
    monkeypatch.setattr(emit, "EMIT_CHUNK", 7)
    A, B = _emit_inputs(200, 210, 24, torch.float32, "random", seed=84)
    gt = emit.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=2, k_cos=2, splits=splits)
    assert emit.LAST_EMIT["stride"] == 3 and emit.LAST_EMIT["slots"] == 2
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=2, k_cos=2))

@pytest.mark.parametrize("room_per_k, extra, ordering", [(0, 1, "random"), (2, 6, "ties")])
def test_triton_emit_redoes_overflowing_rows(emit, monkeypatch: pytest.MonkeyPatch, room_per_k, extra, ordering) -> None:
    """Lists too short: the rows and columns that overflow (every one where the room is below k;
    some where blocks of equal columns tie) are redone by the running top-k, and the graph is
    the same."""
    monkeypatch.setattr(emit, "EMIT_ROOM_PER_K", room_per_k)
    monkeypatch.setattr(emit, "EMIT_ROOM_EXTRA", extra)
    A, B = _emit_inputs(160, 140, 24, torch.float32, ordering, seed=81)
    gt = emit.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=2, k_cos=2)
    redone = emit.LAST_EMIT["rows_redone"], emit.LAST_EMIT["cols_redone"]
    if room_per_k * 2 + extra < 2:
        assert redone == (160, 140)
    else:
        assert 0 < redone[0] < 160
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=2, k_cos=2))


def test_triton_emit_needs_every_group(emit) -> None:
    """Fewer tile groups than 4k: the running top-k (the emission path would keep no pair)."""
    A, B = _emit_inputs(100, 60, 24, torch.float32, "random", seed=82)  # 4 column tiles < 8
    gt = emit.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=2, k_cos=2)
    assert emit.LAST_EMIT == {}
    assert_same_graph(gt.to("cpu"), candidates(A, B, k=2, k_cos=2))


def test_triton_emit_through_match(emit, monkeypatch: pytest.MonkeyPatch) -> None:
    """match_vectors' sparse path on emitted candidates (k = 1: few arcs, many priced rows)
    reaches the optimum of the dense matrix of the same kernel costs."""
    from scipy.optimize import linear_sum_assignment

    from mechperm.match import match_vectors

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MECHPERM_KERNELS", "triton")
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    A, B = heavy_tailed(100, 24, sigma=1.5, seed=83)
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    res = match_vectors(A, B, dense_limit=0, candidates_k=1)
    assert emit.LAST_EMIT.get("slots") == 4
    C = dense_costs(A, B).cpu().double().numpy()
    i, j = linear_sum_assignment(C)
    assert res.certified
    assert res.objective == pytest.approx(float(C[i, j].sum()), rel=1e-6)


@pytest.mark.parametrize("D", [64, 4608])  # Pythia-70M's residual stream .. Gemma-2-27B's
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_candidates_at_the_widths_of_real_saes(tc, D: int, dtype: torch.dtype) -> None:
    """The torch kernels' graph holds the k cheapest and most similar of the dense costs, and
    the Triton kernels' (interpreted, 72 D chunks at 4608) equals it."""
    A, B = heavy_tailed(70, D, sigma=1.0, seed=D)
    A, B = A.to(dtype), B[:50].to(dtype)
    g = candidates(A, B, k=4)
    C = dense_costs(A, B)
    _, cos = brute(A, B)
    want = topk_pairs(C, 4, 1, False) | topk_pairs(C, 4, 0, False)
    want |= topk_pairs(cos, 4, 1, True) | topk_pairs(cos, 4, 0, True)
    assert edge_set(g) == want
    check_bounds(g, C)
    assert_same_graph(tc.candidates(A.to(TRITON_DEVICE), B.to(TRITON_DEVICE), k=4, k_cos=4).to("cpu"), g)

def test_triton_through_the_dispatcher(tc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MECHPERM_KERNELS", "triton")
    A, B = heavy_tailed(50, 36, sigma=1.5, seed=51)
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    assert CAND._backend(A, B) == "triton"
    assert_same_graph(candidates(A, B, k=3).to("cpu"), candidates(A.cpu(), B.cpu(), k=3, backend="torch"))
    C, Ct = dense_costs(A, B, backend="torch"), dense_costs(A, B)
    assert float(((Ct - C).abs() / C.clamp_min(1.0)).max()) <= 1e-5
    # duals with every reduced cost at least 1e-3 away from −tol, so rounding cannot flip a pair
    u = C.min(dim=1).values.double() + 0.5
    v = torch.zeros(50, dtype=torch.float64, device=A.device)
    red = (C.double() - u[:, None]) - v[None, :]
    tol = next(t for t in np.linspace(0.1, 0.3, 41) if float((red + t).abs().min()) > 1e-3)
    for rows in (None, [1, 7, 49]):
        p, pr = price(A, B, u, v, rows=rows, tol=tol), price(A, B, u, v, rows=rows, tol=tol, backend="torch")
        assert p.rows.numel() > 0 and torch.equal(p.rows, pr.rows) and torch.equal(p.cols, pr.cols), rows
        torch.testing.assert_close(p.costs, pr.costs, rtol=1e-5, atol=1e-5)
    p = price(A, B, u, v, tol=tol, max_pairs=5)
    assert p.rows.numel() == 5


def test_triton_price_relaunches_when_the_buffer_overflows(tc) -> None:
    A, B = randn(40, 16, seed=61), randn(70, 16, seed=62)
    u = torch.full((40,), 1e6, dtype=torch.float64)  # all 2800 pairs negative > first capacity 1024
    dev = TRITON_DEVICE
    r, c, cost = tc.price(A.to(dev), B.to(dev), u.to(dev), torch.zeros(70, dtype=torch.float64, device=dev),
                          torch.arange(40, device=dev), 0.0, None)
    r, c, cost = r.cpu(), c.cpu(), cost.cpu()
    assert r.numel() == 40 * 70 and len(set(zip(r.tolist(), c.tolist()))) == 2800
    torch.testing.assert_close(cost, dense_costs(A, B)[r, c], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("q, splits, chunk, dtype, gemm", [
    (5, None, 1 << 16, torch.float32, False), (8, 2, 16, torch.float32, False),
    (3, 3, 7, torch.bfloat16, False), (1, None, 1 << 16, torch.float32, False),
    (200, None, 1 << 16, torch.float32, False),
    (5, 2, 1 << 16, torch.float32, True), (3, None, 7, torch.bfloat16, True), (200, None, 1 << 16, torch.float32, True),
])
def test_triton_topq_pricer(tc, monkeypatch: pytest.MonkeyPatch, q: int, splits, chunk: int, dtype, gemm: bool) -> None:
    """The fused pricer returns, per row, the least reduced costs of the kernel's own tile
    costs (max(q, 2) − 1 of them), and its bound lies under every reduced cost it left out
    (checked on all pairs). ``gemm``: the kernel reads dots from torch.mm (MECHPERM_GEMM_CANDIDATES,
    in blocks of 8 rows) and the tile arithmetic is dense_costs' GEMM path."""
    if gemm:
        monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
        monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * 75 * 8)
        monkeypatch.setattr(tc, "SEL_BM", 8)
    A, B = heavy_tailed(90, 40, sigma=1.0, seed=71)
    A, B = A.to(dtype), B[:75].to(dtype)  # F_b = 75: q = 200 returns every column
    g = np.random.default_rng(72)
    C = dense_costs(A, B, backend="torch")
    u = (C.min(dim=1).values.double() + torch.from_numpy(g.uniform(-1, 2, 90))).contiguous()
    v = torch.from_numpy(g.uniform(-1, 1, 75))
    rows = torch.tensor([3, 0, 89, 41, 42, 7, 12, 66, 51, 20, 33, 88, 5, 60, 74, 1, 2, 9, 10, 11])
    dev = TRITON_DEVICE
    r, c, w, bound = (x.cpu() for x in tc.price_rows_topq(A.to(dev), B.to(dev), u.to(dev), v.to(dev), rows.to(dev),
                                                          q, chunk=chunk, splits=splits))
    Ct = tc.dense_costs(A.to(dev), B.to(dev)).cpu()  # the tile arithmetic the kernel ranks by
    red = (Ct.double() - u[:, None]) - v[None, :]
    kq = min(max(q, 2), 75)
    kq = kq if kq == 75 else kq - 1  # the Q-th least gives the bound and is not returned
    assert r.numel() == c.numel() == w.numel() == len(rows) * kq and bound.shape == (len(rows),)
    assert torch.equal(r, rows.repeat_interleave(kq))
    na, nb = (A.double() ** 2).sum(1), (B.double() ** 2).sum(1)
    torch.testing.assert_close(w.double(), Ct[r, c].double(), rtol=0, atol=float(1e-6 * (na.max() + nb.max())))
    for t, i in enumerate(rows.tolist()):
        got = c[t * kq : (t + 1) * kq]
        assert got.unique().numel() == kq
        left = torch.ones(75, dtype=torch.bool)
        left[got] = False
        if kq == 75:
            assert bound[t] == float("inf")
            continue
        assert float(red[i, left].min()) >= float(bound[t])  # the certificate's promise
        assert float(red[i, got].max()) <= float(red[i, left].min()) + 1e-6 * float(red[i].abs().max())


def _gated_pricer_inputs(tc, monkeypatch: pytest.MonkeyPatch, Fb: int, ties: bool, dtype, seed: int):
    """The fused pricer on GEMM blocks of 8 rows, and (A, B, u, v, rows) with F_b columns (ties:
    each column of B twice, so equal scores straddle the gates)."""
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * Fb * 8)
    monkeypatch.setattr(tc, "SEL_BM", 8)
    A, B = heavy_tailed(max(90, Fb), 24, sigma=1.0, seed=seed)
    A, B = A[:90].to(dtype), B[:Fb].to(dtype)
    if ties:
        B[1::2] = B[0::2][: Fb // 2]
    g = np.random.default_rng(seed)
    C = dense_costs(A, B, backend="torch")
    u = (C.min(dim=1).values.double() + torch.from_numpy(g.uniform(-1, 2, 90))).contiguous()
    v = torch.from_numpy(g.uniform(-1, 1, Fb))
    rows = torch.from_numpy(g.permutation(90)[:23])
    return tuple(x.to(TRITON_DEVICE) for x in (A, B, u, v, rows))


@pytest.mark.parametrize("q, splits, chunk, dtype, ties", [
    (5, 2, 1 << 16, torch.float32, False), (3, None, 7, torch.bfloat16, False), (1, 3, 1 << 16, torch.float32, False),
    (4, 2, 16, torch.float32, True), (6, None, 1 << 16, torch.float16, True),
])
def test_triton_gated_topq_pricer_equals_ungated(tc, monkeypatch: pytest.MonkeyPatch, q: int, splits, chunk: int,
                                                 dtype, ties: bool) -> None:
    """MECHPERM_GATED_PRICER's pricer (a minima launch, then the selection gated by the Q-th
    least tile minimum of each row) returns the ungated pricer's pairs, costs and bounds bit for
    bit; its gates are real (finite) and lie at or above each row's Q-th least reduced cost."""
    Fb = 400  # 7 tiles of 64 columns: a gate for Q <= 7
    A, B, u, v, rows = _gated_pricer_inputs(tc, monkeypatch, Fb, ties, dtype, seed=80 + q)
    plain = tc.price_rows_topq(A, B, u, v, rows, q, chunk=chunk, splits=splits, gated=False)
    assert tc.LAST_TOPQ["gated"] is False
    caps = []
    real_caps = tc._caps
    monkeypatch.setattr(tc, "_caps", lambda mins, k: caps.append((real_caps(mins, k), k)) or caps[-1][0])
    monkeypatch.setenv("MECHPERM_GATED_PRICER", "1")
    gated = tc.price_rows_topq(A, B, u, v, rows, q, chunk=chunk, splits=splits)
    assert tc.LAST_TOPQ == {"gated": True, "regated": 0}
    for a, b in zip(gated, plain):
        assert torch.equal(a.cpu(), b.cpu())
    Ct = tc.dense_costs(A, B).cpu()  # the tile arithmetic the kernel ranks by
    red = ((Ct.double() - u.cpu()[:, None]) - v.cpu()[None, :]).float()
    cap = torch.cat([c for c, _ in caps]).cpu()
    kq = caps[0][1]
    assert kq == max(q, 2) and (cap != 2**63 - 1).all()
    assert (tc._key_scores(cap) >= red[rows.cpu()].kthvalue(kq, dim=1).values).all()


@pytest.mark.parametrize("tile", [(32, 64, 2, None, 16), (16, 32, 1, 2, 32), (64, 128, 8, None, 1)])
@pytest.mark.parametrize("gated", [True, False])
def test_topq_pricer_tile_on_gemm_blocks_changes_nothing(tc, monkeypatch: pytest.MonkeyPatch, tile, gated: bool) -> None:
    """The pricer's own tile on cuBLAS blocks (TOPQ_DOTS_*: rows, columns, warps, stages,
    splits an SM; what bench_triton_tiles.py --topq-sweep varies) gives the default tile's
    pairs, costs and bounds bit for bit, gated or not (BN = 128 leaves 4 tiles: no gate at Q = 5)."""
    A, B, u, v, rows = _gated_pricer_inputs(tc, monkeypatch, 400, False, torch.float32, seed=91)
    monkeypatch.setenv("MECHPERM_GATED_PRICER", "1" if gated else "0")
    ref = tc.price_rows_topq(A, B, u, v, rows, 5)
    for name, value in zip(("BM", "BN", "WARPS", "STAGES", "SPLITS_PER_SM"), tile):
        monkeypatch.setattr(tc, "TOPQ_DOTS_" + name, value)
    got = tc.price_rows_topq(A, B, u, v, rows, 5)
    assert tc.LAST_TOPQ["gated"] == (gated and tile[1] < 128)
    for a, b in zip(got, ref):
        assert torch.equal(a.cpu(), b.cpu())


def test_gated_topq_pricer_falls_back_when_a_row_comes_short(tc, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gates below every score (never from _caps itself) leave rows short: the chunk is
    selected again ungated, with a warning, and the result is the ungated pricer's."""
    A, B, u, v, rows = _gated_pricer_inputs(tc, monkeypatch, 400, False, torch.float32, seed=90)
    plain = tc.price_rows_topq(A, B, u, v, rows, 4, gated=False)
    monkeypatch.setattr(tc, "_caps", lambda mins, k: torch.full((mins.shape[0],), -2**63, dtype=torch.int64,
                                                                device=mins.device))
    with pytest.warns(RuntimeWarning, match="left a row short"):
        again = tc.price_rows_topq(A, B, u, v, rows, 4, gated=True)
    assert tc.LAST_TOPQ == {"gated": True, "regated": 3}  # each chunk: 23 rows in GEMM blocks of 8
    for a, b in zip(again, plain):
        assert torch.equal(a.cpu(), b.cpu())
    # off the GEMM path (no dots to read twice) and where a row sees fewer tiles than Q: no gate
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "0")
    tc.price_rows_topq(A, B, u, v, rows, 4, gated=True)
    assert tc.LAST_TOPQ["gated"] is False
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    tc.price_rows_topq(A, B, u, v, rows, 8, gated=True)
    assert tc.LAST_TOPQ["gated"] is False


@pytest.mark.parametrize("select, pricer, want", [
    (None, None, False), ("0", None, False), ("1", None, False), ("1", "0", False), ("0", "1", True),
    (None, "1", True),
])
def test_pricer_gate_has_its_own_switch(tc, monkeypatch: pytest.MonkeyPatch, select, pricer, want: bool) -> None:
    """MECHPERM_GATED_PRICER=1 gates the fused pricer alone (the selections keep
    MECHPERM_GATED_SELECT); unset, the pricer is ungated (timed faster at 1M on an H100),
    whatever MECHPERM_GATED_SELECT says. Either way the pairs are the same bit for bit."""
    A, B, u, v, rows = _gated_pricer_inputs(tc, monkeypatch, 400, False, torch.float32, seed=92)
    plain = tc.price_rows_topq(A, B, u, v, rows, 5, gated=False)
    for name, value in (("MECHPERM_GATED_SELECT", select), ("MECHPERM_GATED_PRICER", pricer)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert tc.gated_enabled() == (select != "0")
    assert tc.pricer_gated_enabled() is want
    got = tc.price_rows_topq(A, B, u, v, rows, 5)
    assert tc.LAST_TOPQ["gated"] is want
    for a, b in zip(got, plain):
        assert torch.equal(a.cpu(), b.cpu())


@pytest.mark.parametrize("gemm", ["0", "1"])
def test_fused_pricer_through_match(tc, monkeypatch: pytest.MonkeyPatch, gemm: str) -> None:
    """match_vectors' sparse path with the fused pricer (q = 1 forces many priced rows) reaches
    the optimum of the dense matrix of the same kernel costs; also with every GEMM from
    torch.mm (MECHPERM_GEMM_CANDIDATES: candidates, pricer and dense costs)."""
    from scipy.optimize import linear_sum_assignment

    from mechperm import assign
    from mechperm.match import match_vectors

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("MECHPERM_KERNELS", "triton")
    monkeypatch.setenv("MECHPERM_FUSED_PRICING", "1")
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", gemm)
    monkeypatch.setattr(sys.modules["mechperm.match"], "PRICE_PER_ROW", 1)
    A, B = heavy_tailed(60, 24, sigma=1.5, seed=73)
    A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    assert isinstance(CAND.row_pricer(A, B, 1)(np.array([0]), np.zeros(60), np.zeros(60)), assign.PricedRows)
    res = match_vectors(A, B, dense_limit=0, candidates_k=1)
    C = dense_costs(A, B).cpu().double().numpy()
    i, j = linear_sum_assignment(C)
    assert res.certified and res.stats["solver"]["priced_rows"] > 0
    assert res.objective == pytest.approx(float(C[i, j].sum()), rel=1e-6)


@pytest.mark.parametrize("pack", [True, False], ids=["packed-keys", "sort-with-index"])
def test_union_of_int32_ids_on_a_large_shape(monkeypatch, pack: bool) -> None:
    """_assemble with int32 row / column ids (the Triton kernels' lists) where row · F_b
    overflows int32: the same graph as from int64 ids, every pair once, costs of the first copy."""
    cand = importlib.import_module("mechperm.kernels.candidates")
    monkeypatch.setattr(cand, "_PACK_KEYS", pack)
    Fa = Fb = 70000
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, Fa, (4, 300), generator=g)
    cols = torch.randint(0, Fb, (4, 300), generator=g)
    cols[1, :100], rows[1, :100] = cols[0, :100], rows[0, :100]  # shared by two sources
    costs = torch.rand(4, 300, generator=g)
    kth = torch.zeros(Fa)

    def graph(dtype):
        parts = [(rows[p].to(dtype), cols[p].to(dtype), costs[p]) for p in range(4)]
        return cand._assemble((Fa, Fb), parts, kth, kth, 1, 1)

    g64, g32 = graph(torch.int64), graph(torch.int32)
    for f in ("indptr", "indices", "costs", "sources"):
        assert torch.equal(getattr(g64, f), getattr(g32, f)), f
    keys = {(int(r), int(c)) for r, c in zip(rows.reshape(-1), cols.reshape(-1))}
    got = list(zip(g64.row_ids().tolist(), g64.indices.tolist()))
    assert len(got) == len(keys) and set(got) == keys and got == sorted(got)
    first = {}
    for p in range(4):
        for r, c, w in zip(rows[p].tolist(), cols[p].tolist(), costs[p].tolist()):
            first.setdefault((r, c), (w, 0))
            first[(r, c)] = (first[(r, c)][0], first[(r, c)][1] | (1 << p))
    want_w = torch.tensor([first[e][0] for e in got])
    want_s = torch.tensor([first[e][1] for e in got], dtype=torch.uint8)
    assert torch.equal(g64.costs, want_w) and torch.equal(g64.sources, want_s)


def test_native_union_refuses_bad_keys() -> None:
    """union_sorted_keys (the CPU union of _assemble) checks what it reads: sorted keys, pairs
    inside the shape, positions inside the costs."""
    from mechperm import _auction

    costs = np.zeros(4, np.float32)
    ok = np.array([(0 * 4 + 0) << 3 | 1, (1 * 4 + 2) << 3 | 0], np.int64)  # pairs (0, 0) and (0, 1)
    indptr, cols, w, src = _auction.union_sorted_keys(ok, 3, 2, 3, costs)
    assert indptr.tolist() == [0, 2, 2] and cols.tolist() == [0, 1] and src.tolist() == [1, 4]
    for keys, what in ((ok[::-1].copy(), "sorted"), (np.array([(6 * 4) << 3], np.int64), "pair lies outside"),
                       (np.array([7], np.int64), "position lies outside")):
        with pytest.raises(ValueError, match=what):
            _auction.union_sorted_keys(keys, 3, 2, 3, costs)


@pytest.mark.parametrize("tiny", ["columns", "rows"])
def test_cosine_bounds_hold_where_norms_span_many_decades(tiny: str) -> None:
    """row_cos / col_cos bound the cosine of every pair left out, also where a row's most
    cosine-similar partners include vectors 10^7 times shorter than it (heavy-tailed folded
    decoders; a cosine recovered from a float32 cost, (|a|² + |b|² − c) / 2|a||b|, is noise
    there: F = 8192 matched 7.6e-6 above the optimum, certified, before)."""
    from mechperm.kernels.candidates import _cosine_bounds

    A, B = randn(160, 32, seed=1) * 1e3, randn(200, 32, seed=2)
    if tiny == "columns":
        B[::2] *= 1e-4
    else:
        A, B = A * 1e-3, B * 1e3
        A[::2] *= 1e-4
    g = candidates(A, B, k=4, k_cos=6, block_rows=64, block_cols=64)
    b = _cosine_bounds(g, A, B)
    inside = torch.zeros(A.shape[0], B.shape[0], dtype=torch.bool)
    inside[g.row_ids(), g.indices] = True
    Ad, Bd = A.double(), B.double()
    cos = (Ad @ Bd.T) / (Ad.norm(dim=1)[:, None] * Bd.norm(dim=1)[None, :])
    out = cos[~inside]
    rows = torch.arange(A.shape[0])[:, None].expand_as(cos)[~inside]
    cols = torch.arange(B.shape[0])[None, :].expand_as(cos)[~inside]
    assert bool((out <= torch.from_numpy(b["row_cos"])[rows]).all())
    assert bool((out <= torch.from_numpy(b["col_cos"])[cols]).all())
    # and not loose: within a few float32 roundings of the held partners' least cosine
    held = (g.sources & ROW_COS) != 0
    least = torch.full((A.shape[0],), float("inf"), dtype=torch.float64)
    least.scatter_reduce_(0, g.row_ids()[held], cos[g.row_ids()[held], g.indices[held]], reduce="amin")
    assert bool((torch.from_numpy(b["row_cos"]) - least).abs().max() < 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pair_pricer_matches_dense_costs(request, monkeypatch: pytest.MonkeyPatch, backend: str, dtype) -> None:
    """The loop's single-pair costs (kernels.pair_pricer) equal the dense costs of the same
    pairs to float32 rounding, on scattered pairs with repeats, and to the last bit where the
    dot is exact (integer vectors)."""
    from mechperm.kernels import pair_pricer

    A, B = heavy_tailed(90, 40, sigma=1.5, seed=7)
    A, B = A.to(dtype), B[:70].to(dtype)
    if backend == "triton":
        request.getfixturevalue("tc")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("MECHPERM_KERNELS", "triton")
        A, B = A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 90, 500), rng.integers(0, 70, 500)
    got = pair_pricer(A, B)(rows, cols)
    C = dense_costs(A, B, backend="torch").cpu().numpy()
    assert got.dtype == np.float32 and got.shape == (500,)
    scale = (row_sq_norms(A).cpu().numpy()[rows] + row_sq_norms(B).cpu().numpy()[cols])
    np.testing.assert_array_less(np.abs(got - C[rows, cols]), 1e-5 * scale + 1e-30)
    assert pair_pricer(A, B)(np.empty(0, np.int64), np.empty(0, np.int64)).shape == (0,)
    I, J = torch.randint(-4, 5, (30, 24)).float(), torch.randint(-4, 5, (20, 24)).float()
    if backend == "triton":
        I, J = I.to(TRITON_DEVICE), J.to(TRITON_DEVICE)
    r, c = np.repeat(np.arange(30), 20), np.tile(np.arange(20), 30)
    assert np.array_equal(pair_pricer(I, J)(r, c), dense_costs(I, J, backend="torch").cpu().numpy().reshape(-1))


# ------------------------------------------------------------------ weak rows of the GPU pricers
def _weak_row_pricer(weak_at: dict[int, set[int]], calls: list):
    """A fake ``price(rows, q)``: one pair (row, row) of cost 1 a row; the bound is −1 for the
    rows in ``weak_at[q]``, else 2."""
    def price(ids: torch.Tensor, q: int):
        calls.append(("price", q, ids.tolist()))
        bound = torch.tensor([-1.0 if int(i) in weak_at.get(q, set()) else 2.0 for i in ids], dtype=torch.float64)
        return ids.clone(), ids.clone(), torch.ones(ids.numel()), bound
    return price


def _exact_rows(calls: list):
    def exact(ids: torch.Tensor):
        calls.append(("exact", None, ids.tolist()))
        return ids.clone(), ids + 100, torch.full((ids.numel(),), 5.0), torch.full((ids.numel(),), -0.5,
                                                                                dtype=torch.float64)
    return exact


@pytest.mark.parametrize("n_weak, limit, want", [
    (2, 16, [("price", 8, None), ("exact", None, [3, 7])]),  # few: straight to the exact rows
    (2, 1, [("price", 8, None), ("price", 32, [3, 7]), ("price", 128, [3, 7]), ("exact", None, [3, 7])]),
])
def test_few_weak_rows_go_to_the_exact_pricer(monkeypatch: pytest.MonkeyPatch, n_weak: int, limit: int, want) -> None:
    """Rows whose bound proves nothing are priced again at 4q up to 128, then exactly; up to
    EXACT_WEAK_ROWS of them go to the exact pricer at once (on the H100's 1M match the q = 128
    pass over 6 rows cost 1.58 s and still left them to the exact one). The exact pricer's
    answer is final: its pairs replace the row's, its bound stays even if below 0."""
    monkeypatch.setattr(CAND, "EXACT_WEAK_ROWS", limit)
    rows = torch.arange(10)
    weak = {3, 7}
    calls: list = []
    price = _weak_row_pricer({8: weak, 32: weak, 128: weak}, calls)
    r, c, w, bound = CAND._reprice_weak(price, rows, torch.zeros(10, dtype=torch.float64), 8, 1000,
                                        exact=_exact_rows(calls))
    assert [(k, q, ids if i else None) for i, (k, q, ids) in enumerate(calls)] == want
    assert sorted(zip(r.tolist(), c.tolist())) == sorted([(i, i) for i in range(10) if i not in weak]
                                                         + [(3, 103), (7, 107)])
    assert bound.tolist() == [-0.5 if i in weak else 2.0 for i in range(10)]


def test_weak_rows_without_an_exact_pricer_stop_at_q_128() -> None:
    """Without an exact pricer (the unscreened fused pricer) weak rows are priced at 4q up to
    128 and left with their bounds; rows that a wider pass proves are not priced again."""
    calls: list = []
    price = _weak_row_pricer({8: {1, 4}, 32: {4}, 128: {4}}, calls)
    r, c, w, bound = CAND._reprice_weak(price, torch.arange(6), torch.zeros(6, dtype=torch.float64), 8, 1000)
    assert [(q, ids) for _, q, ids in calls] == [(8, list(range(6))), (32, [1, 4]), (128, [4])]
    assert bound.tolist() == [2.0, 2.0, 2.0, 2.0, -1.0, 2.0]
    assert sorted(r.tolist()) == list(range(6))
