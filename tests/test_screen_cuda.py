"""The bf16 screen on a GPU (mechperm.kernels.screen_cuda): statistics, bounds, pricing and the
screened sparse path against exact references. Runs the Triton kernels compiled on CUDA, else
under TRITON_INTERPRET=1 on the CPU (the ``tc`` fixture of conftest.py)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import TRITON_DEVICE
from scipy.optimize import linear_sum_assignment
from test_kernels import heavy_tailed

from mechperm import _auction
from mechperm.kernels import screen, screen_cuda
from mechperm.match import match_vectors


@pytest.fixture
def gpu_screen(tc, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MECHPERM_GPU_SCREEN", "1")
    monkeypatch.setenv("MECHPERM_KERNELS", "triton")
    monkeypatch.setenv("MECHPERM_SCREEN", "0")  # the CPU screen would take CPU tensors first
    if TRITON_DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return tc


def vectors(F: int, D: int, *, seed: int, sigma: float = 1.0, Fb: int | None = None):
    A, B = heavy_tailed(F, D, sigma=sigma, seed=seed)
    if Fb is not None:
        B = torch.cat([B, heavy_tailed(Fb - F, D, sigma=sigma, seed=seed + 1)[1]]) if Fb > F else B[:Fb]
    A[3, :5] = 1e-40  # subnormal entries: flushed by the screen, kept by the exact costs
    return A.to(TRITON_DEVICE), B.to(TRITON_DEVICE)


def test_available_only_when_asked(gpu_screen, monkeypatch: pytest.MonkeyPatch) -> None:
    A, B = vectors(20, 8, seed=1)
    assert screen_cuda.available(A, B)
    assert not screen_cuda.available(A.bfloat16(), B.bfloat16())  # already bf16: nothing to screen
    monkeypatch.setenv("MECHPERM_GPU_SCREEN", "0")
    assert not screen_cuda.available(A, B)
    # unset: on for CUDA tensors of at least AUTO_MIN_PAIRS pairs, never for CPU ones
    monkeypatch.delenv("MECHPERM_GPU_SCREEN")
    assert not screen_cuda.available(A, B)  # 20 x 20 pairs
    monkeypatch.setattr(screen_cuda, "AUTO_MIN_PAIRS", 400)
    assert screen_cuda.available(A, B) == A.is_cuda
    assert not screen_cuda.available(A[:19], B)


def test_statistics_equal_the_cpu_screen(gpu_screen) -> None:
    A, B = vectors(50, 37, seed=2, sigma=2.0)
    sv = screen_cuda.prepare(A, B)
    for X, stats in ((A, sv.a_stats), (B, sv.b_stats)):
        x32 = np.ascontiguousarray(X.cpu().numpy())
        sq = (X.cpu() ** 2).sum(1).numpy().astype(np.float32)
        _, ref, bad = _auction.screen_side(x32, sq, 1)
        assert bad < 0
        np.testing.assert_allclose(stats[:3], ref[:3], rtol=1e-11)
    assert torch.equal(sv.A16.float().cpu()[3, :5], torch.zeros(5))
    exact = screen.exact_dense_costs(A.cpu(), B.cpu())
    r, c = np.nonzero(np.ones((50, 50), bool))
    np.testing.assert_array_equal(sv.exact_np(r, c), exact.numpy()[r, c])


def test_screen_side_kernel_equals_torch(gpu_screen) -> None:
    """The one-pass statistics kernel against torch's float64 arithmetic: the flushed bf16
    rounding bit for bit, the sums of squares to float64 rounding, and its row flags (rows not
    a multiple of its 16-row programs, D not one of its 128-wide steps)."""
    from mechperm.kernels import triton_candidates as tc

    X = torch.randn(37, 200, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    X[2, :7] = 1e-39  # subnormal in bf16: flushed
    X[5, 9] = -3e-38  # a normal bf16 value: kept
    X[11, 150] = 3.4e38  # finite in float32, inf in bf16 (above the midpoint to 2^128)
    X[20, 3] = float("nan")
    X = X.to(TRITON_DEVICE)
    nx = (X.double() ** 2).sum(1).float()
    nx[11] = 1.0  # its real square overflows (flag 2); a finite one leaves the bf16 overflow (flag 1)
    x16, sums = tc.screen_side(X, nx, screen_cuda._TINY)
    ref16 = X.to(torch.bfloat16)
    ref16 = torch.where(ref16.float().abs() < screen_cuda._TINY, torch.zeros((), dtype=ref16.dtype,
                                                                              device=X.device), ref16)
    assert torch.equal(x16.cpu().view(torch.int16), ref16.cpu().view(torch.int16))
    b, x = ref16.double().cpu(), X.double().cpu()
    want = torch.stack([(b * b).sum(1), ((b - x) ** 2).sum(1), (x * x).sum(1)])
    ok = torch.ones(37, dtype=torch.bool)
    ok[[11, 20]] = False
    torch.testing.assert_close(sums[:3].cpu()[:, ok], want[:, ok], rtol=1e-14, atol=0)
    flags = sums[4].cpu()
    assert flags[20] == 2 and flags[11] == 1 and (flags[ok] == 0).all()
    assert (sums[3] == 0).all()


def test_unscreenable_rows_are_refused(gpu_screen) -> None:
    A, B = vectors(10, 8, seed=3)
    A[4, 2] = 3.395e38  # finite in float32, inf in bfloat16 (and its square overflows)
    with pytest.raises(ValueError, match="A row 4"):
        screen_cuda.prepare(A, B)
    A[4, 2] = float("nan")
    with pytest.raises(ValueError, match="A row 4"):
        screen_cuda.prepare(A, B)


@pytest.mark.parametrize("sigma, k", [(1.0, 3), (2.5, 2), (0.5, 8)])
def test_graph_bounds_hold_for_every_pair_left_out(gpu_screen, sigma: float, k: int) -> None:
    A, B = vectors(70, 40, seed=4, sigma=sigma, Fb=90)
    sv = screen_cuda.prepare(A, B)
    g, _ = screen_cuda.solver_graph(sv, k)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    rows = np.repeat(np.arange(70), np.diff(g.indptr))
    np.testing.assert_array_equal(g.costs, C[rows, g.indices].astype(np.float32))  # exact arcs
    out = np.ones(C.shape, bool)
    out[rows, g.indices] = False
    i, j = np.nonzero(out)
    assert (C[i, j] >= g.row_bound[i] + g.col_offset[j]).all() and (C[i, j] >= g.col_bound[j] + g.row_offset[i]).all()
    assert (C[i, j] >= g.col_base[j] - g.col_slope[j] * g.row_norm[i]).all()
    a, b = A.cpu().double().numpy(), B.cpu().double().numpy()
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a @ b.T) / np.maximum(na[:, None] * nb[None, :], 1e-300)
    assert (cos[i, j] <= g.row_cos[i] + 1e-12).all() and (cos[i, j] <= g.col_cos[j] + 1e-12).all()


@pytest.mark.parametrize("q", [1, 4, 200])
def test_pricer_bound_covers_every_pair_it_leaves_out(gpu_screen, q: int) -> None:
    A, B = vectors(60, 32, seed=5, sigma=1.5, Fb=75)
    sv = screen_cuda.prepare(A, B)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    rng = np.random.default_rng(6)
    u = C.min(axis=1) + rng.uniform(-1, 3, 60)
    v = rng.uniform(-1, 1, 75)
    rows = np.array([0, 3, 59, 17, 30, 31, 8])
    out = screen_cuda.row_pricer(sv, q)(rows, u, v)
    np.testing.assert_array_equal(out.costs, C[out.rows, out.cols].astype(np.float32))
    red = C - u[:, None] - v[None, :]
    for t, i in enumerate(rows):
        got = out.cols[out.rows == i]
        assert len(got) == len(set(got.tolist())) >= 1
        left = np.ones(75, bool)
        left[got] = False
        if left.any():
            assert red[i, left].min() >= out.bound[t], (i, red[i, left].min(), out.bound[t])


@pytest.mark.parametrize("sigma, Fb", [(1.0, 80), (2.5, 80), (1.0, 95), (1.0, 70)])
def test_screened_sparse_path_is_exact(gpu_screen, sigma: float, Fb: int) -> None:
    A, B = vectors(80, 24, seed=7, sigma=sigma, Fb=Fb)
    res = match_vectors(A, B, dense_limit=0, candidates_k=2)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    r, c = linear_sum_assignment(C)
    assert res.certified
    assert res.objective == pytest.approx(float(C[r, c].sum()), rel=1e-9, abs=1e-9)
    assert sorted(res.perm[res.perm >= 0].tolist()) == sorted(set(res.perm[res.perm >= 0].tolist()))



def test_screened_path_on_emitted_candidates(gpu_screen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen's bf16 candidates from the emission path (MECHPERM_EMIT_TOPK; 16-wide tiles,
    k = 1, so F = 80 has its tile groups): the graph's bounds hold for every pair left out, and
    the match is exact."""
    monkeypatch.setenv("MECHPERM_EMIT_TOPK", "1")
    monkeypatch.setattr(gpu_screen, "BM", 16)
    monkeypatch.setattr(gpu_screen, "BN", 16)
    gpu_screen.LAST_EMIT.clear()
    A, B = vectors(80, 24, seed=8, sigma=1.5, Fb=90)
    g, _ = screen_cuda.solver_graph(screen_cuda.prepare(A, B), 1)
    assert gpu_screen.LAST_EMIT.get("slots") == 4
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    rows = np.repeat(np.arange(80), np.diff(g.indptr))
    out = np.ones(C.shape, bool)
    out[rows, g.indices] = False
    i, j = np.nonzero(out)
    assert (C[i, j] >= g.row_bound[i] + g.col_offset[j]).all() and (C[i, j] >= g.col_bound[j] + g.row_offset[i]).all()
    assert (C[i, j] >= g.col_base[j] - g.col_slope[j] * g.row_norm[i]).all()
    res = match_vectors(A, B, dense_limit=0, candidates_k=1)
    r, c = linear_sum_assignment(C)
    assert res.certified
    assert res.objective == pytest.approx(float(C[r, c].sum()), rel=1e-9, abs=1e-9)

def test_pricer_falls_back_to_exact_rows(gpu_screen, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose screened bound stays below 0 up to 128 pairs are priced exactly, whole; up to
    EXACT_WEAK_ROWS such rows are priced exactly at once."""
    A, B = vectors(40, 16, seed=8, Fb=150)
    sv = screen_cuda.prepare(A, B)
    real = gpu_screen.price_rows_topq
    seen = []

    def useless_bounds(*args, **kwargs):  # valid (every reduced cost is above -1e30), proves nothing
        r, c, w, b = real(*args, **kwargs)
        seen.append(args[5])
        return r, c, w, torch.full_like(b, -1e30)

    monkeypatch.setattr(gpu_screen, "price_rows_topq", useless_bounds)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    u, v = C.min(axis=1) - 0.01, np.zeros(150)  # no violation: only the bound can settle the rows
    rows = np.array([5, 0, 39])
    red = C - u[:, None] - v[None, :]
    cand = importlib.import_module("mechperm.kernels.candidates")
    for limit, want in ((0, [3, 12, 48, 128]), (cand.EXACT_WEAK_ROWS, [3])):
        monkeypatch.setattr(cand, "EXACT_WEAK_ROWS", limit)
        seen.clear()
        out = screen_cuda.row_pricer(sv, 3)(rows, u, v)
        assert seen == want
        for t, i in enumerate(rows):
            got = out.cols[out.rows == i]
            order = np.sort(red[i])
            assert len(got) == 3 and np.allclose(np.sort(red[i, got]), order[:3])
            assert out.bound[t] == pytest.approx(order[3], rel=1e-12)
    seen.clear()  # rows whose pairs violate are left to the loop: no second pricing
    out = screen_cuda.row_pricer(sv, 3)(rows, C.min(axis=1) + 0.5, v)
    assert seen == [3] and (out.bound < 0).all()


def test_screened_sparse_path_partial_mode(gpu_screen) -> None:
    A, B = vectors(60, 24, seed=9, sigma=1.5, Fb=70)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    lam = float(np.median(C.min(axis=1)))
    res = match_vectors(A, B, mode="partial", threshold=lam, dense_limit=0, candidates_k=2)
    n = C.shape[0]
    dummy = np.full((n, n), 1e18)
    np.fill_diagonal(dummy, lam)
    P = np.hstack([C, dummy])
    r, c = linear_sum_assignment(P)
    assert res.certified and 0 < int((res.perm >= 0).sum()) < n
    assert res.objective == pytest.approx(float(P[r, c].sum()), rel=1e-9)


def test_screen_on_gemm_dots(gpu_screen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen with every bf16 GEMM from torch.mm (MECHPERM_GEMM_CANDIDATES; blocks of 16
    rows): the graph's bounds hold for every pair left out, the pricer's for every pair it
    leaves out, and the match is exact."""
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    monkeypatch.setattr(gpu_screen, "GEMM_BLOCK_BYTES", 4 * 90 * 16)
    monkeypatch.setattr(gpu_screen, "SEL_BM", 16)
    gpu_screen.LAST_GEMM.clear()
    A, B = vectors(70, 40, seed=9, sigma=1.5, Fb=90)
    sv = screen_cuda.prepare(A, B)
    g, _ = screen_cuda.solver_graph(sv, 2)
    assert gpu_screen.LAST_GEMM["blocks"] == 5
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    rows = np.repeat(np.arange(70), np.diff(g.indptr))
    np.testing.assert_array_equal(g.costs, C[rows, g.indices].astype(np.float32))
    out = np.ones(C.shape, bool)
    out[rows, g.indices] = False
    i, j = np.nonzero(out)
    assert (C[i, j] >= g.row_bound[i] + g.col_offset[j]).all() and (C[i, j] >= g.col_bound[j] + g.row_offset[i]).all()
    assert (C[i, j] >= g.col_base[j] - g.col_slope[j] * g.row_norm[i]).all()
    rng = np.random.default_rng(10)
    u = C.min(axis=1) + rng.uniform(-1, 3, 70)
    v = rng.uniform(-1, 1, 90)
    prows = np.array([0, 3, 69, 17, 30, 31, 8, 50, 51, 52])
    got = screen_cuda.row_pricer(sv, 4)(prows, u, v)
    np.testing.assert_array_equal(got.costs, C[got.rows, got.cols].astype(np.float32))
    red = C - u[:, None] - v[None, :]
    for t, r in enumerate(prows):
        left = np.ones(90, bool)
        left[got.cols[got.rows == r]] = False
        assert red[r, left].min() >= got.bound[t]
    res = match_vectors(A, B, dense_limit=0, candidates_k=2)
    r, c = linear_sum_assignment(C)
    assert res.certified
    assert res.objective == pytest.approx(float(C[r, c].sum()), rel=1e-9, abs=1e-9)


def test_gated_screened_pricer_equals_ungated(gpu_screen, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gated pricer (MECHPERM_GATED_PRICER=1) ranks by the screen's lower bounds exactly as
    the ungated one: the same pairs, exact costs and bounds, bit for bit (400 columns: 7 tiles,
    a gate for Q = 4), and every pair left out keeps its bound."""
    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    monkeypatch.setattr(gpu_screen, "GEMM_BLOCK_BYTES", 4 * 400 * 16)
    monkeypatch.setattr(gpu_screen, "SEL_BM", 16)
    A, B = vectors(60, 32, seed=11, sigma=1.5, Fb=400)
    sv = screen_cuda.prepare(A, B)
    C = screen.exact_dense_costs(A.cpu(), B.cpu()).double().numpy()
    rng = np.random.default_rng(12)
    u = torch.from_numpy(C.min(axis=1) + rng.uniform(-1, 3, 60)).to(A.device)
    v = torch.from_numpy(rng.uniform(-1, 1, 400)).to(A.device)
    rows = torch.tensor([0, 3, 59, 17, 30, 31, 8, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54], device=A.device)
    plain = gpu_screen.price_rows_topq(sv.A16, sv.B16, u, v, rows, 4, screen=sv, gated=False)
    gated = gpu_screen.price_rows_topq(sv.A16, sv.B16, u, v, rows, 4, screen=sv, gated=True)
    assert gpu_screen.LAST_TOPQ == {"gated": True, "regated": 0}
    for a, b in zip(gated, plain):
        assert torch.equal(a.cpu(), b.cpu())
    r, c, w, bound = (x.cpu().numpy() for x in gated)
    np.testing.assert_array_equal(w, C[r, c].astype(np.float32))
    red = C - u.cpu().numpy()[:, None] - v.cpu().numpy()[None, :]
    for t, i in enumerate(rows.tolist()):
        left = np.ones(400, bool)
        left[c[r == i]] = False
        assert red[i, left].min() >= bound[t]
