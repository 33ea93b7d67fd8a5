"""Screened costs (kernels.screen): the bf16 and int8 kernels, their bound, and match() on top of them."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mechperm import _auction, kernels, match_vectors
from mechperm.kernels import screen
from mechperm.synthetic import make_stack


def _vectors(n: int, d: int, seed: int, *, heavy: float = 0.0, special: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    if heavy:  # heavy-tailed row scales, as folded SAE decoders have
        X *= torch.exp(heavy * torch.randn(n, 1, generator=g))
    if special and n >= 4:
        X[0] = 0.0  # a dead feature
        X[1, : d // 2] = 1e-39  # float32 subnormals: bf16 reads them as 0
        X[2] *= 1e-20
        X[3] = X[3].bfloat16().float()  # exactly representable: no rounding error
    return X


def _bf16_reference(X: torch.Tensor) -> torch.Tensor:
    h = X.bfloat16()
    return torch.where(h.abs() < torch.finfo(torch.bfloat16).tiny, torch.zeros((), dtype=h.dtype), h)


def test_screen_side_rounds_like_torch_and_bounds_the_norms() -> None:
    X = _vectors(50, 33, 0, heavy=2.0, special=True)
    X[5, 3] = 1.0 + 2.0**-8  # a tie: rounds to even
    bits, stats, bad = _auction.screen_side(X.numpy(), kernels.row_sq_norms(X).numpy())
    assert bad == -1 and bits.shape == (50, 34) and (bits[:, 33] == 0).all()
    ref = _bf16_reference(X)
    assert np.array_equal(bits[:, :33], ref.view(torch.int16).numpy().view(np.uint16))
    h, x = ref.double(), X.double()
    for got, want in ((stats[0], h.norm(dim=1)), (stats[1], (h - x).norm(dim=1)), (stats[2], x.norm(dim=1))):
        assert (got >= want.numpy()).all() and np.allclose(got, want.numpy(), rtol=1e-10, atol=0)
    assert np.array_equal(stats[3], kernels.row_sq_norms(X).double().numpy())
    assert stats[1, 3] == 0.0, "a bf16-representable row has no rounding error"


def test_screening_refuses_vectors_whose_costs_would_not_be_finite() -> None:
    A = torch.randn(5, 4)
    for bad, what in ((float("nan"), "non-finite"), (1e20, "overflows float32")):
        B = torch.randn(3, 4)
        B[1, 2] = bad
        with pytest.raises(ValueError, match=f"B row 1 .*{what}"):
            screen.screened_costs(A, B)
        with pytest.raises(ValueError, match=f"B row 1 .*{what}"):
            screen.prepare(A, B)


def test_screen_side_reports_the_first_row_that_cannot_be_screened() -> None:
    X = torch.randn(6, 8)
    X[4, 2] = 3.4e38  # rounds up to bf16 infinity
    _, _, bad = _auction.screen_side(X.numpy(), kernels.row_sq_norms(X).numpy())
    assert bad == 4
    with pytest.raises(ValueError, match="A row 4 "):  # its squared norm overflows first
        screen.screened_costs(X, torch.randn(3, 8))


KIND = pytest.mark.parametrize("kind", screen.KINDS)


def _rounded_reference(X: torch.Tensor, kind: str) -> torch.Tensor:
    """The rows the screen's kernel multiplies, in float64: bf16 as torch rounds (subnormals
    flushed), int8 as the codes times their scales."""
    if kind == "bf16":
        return _bf16_reference(X).double()
    codes, scales, _, _ = _auction.screen_side_int8(X.float().numpy(), kernels.row_sq_norms(X).numpy())
    return torch.from_numpy(scales).double()[:, None] * torch.from_numpy(codes[:, : X.shape[1]]).double()


def _check_kernel_bound(n: int, m: int, d: int, kind: str = "bf16") -> None:
    A, B = _vectors(n, d, 1, heavy=1.5, special=True), _vectors(m, d, 2, heavy=1.5)
    sc = screen.screened_costs(A, B, kind=kind)
    a16, b16 = _rounded_reference(A, kind), _rounded_reference(B, kind)
    na, nb = sc.a_stats[3], sc.b_stats[3]
    ref = torch.from_numpy(na)[:, None] + torch.from_numpy(nb)[None, :] - 2.0 * (a16 @ b16.T)
    err = (torch.from_numpy(sc.costs).double() - ref.clamp_min(0.0)).abs()
    bound = 2 * sc.gamma * torch.from_numpy(sc.a_stats[0])[:, None] * torch.from_numpy(sc.b_stats[0])[None, :]
    bound += 1e-6 * (torch.from_numpy(na)[:, None] + torch.from_numpy(nb)[None, :]) + 1e-30
    assert (err <= bound).all(), f"worst error / bound {(err / bound).max().item()}"
    if kind == "int8":  # the kernel's float32 arithmetic after the exact integer dot, bit for bit
        (qa, sa, _, _), (qb, sb, _, _) = (_auction.screen_side_int8(X.numpy(), kernels.row_sq_norms(X).numpy())
                                          for X in (A, B))
        dots = qa.astype(np.int64) @ qb.astype(np.int64).T
        s32 = (dots.astype(np.float32) * sa[:, None]) * sb[None, :]
        want = np.maximum((na.astype(np.float32)[:, None] + nb.astype(np.float32)[None, :]) - np.float32(2) * s32, 0)
        assert np.array_equal(sc.costs, want)


@KIND
@pytest.mark.parametrize("n,m,d", [(1, 1, 2), (7, 45, 33), (70, 65, 64), (130, 97, 257)])
def test_screen_costs_are_the_float32_sum_of_exact_products(n: int, m: int, d: int, kind: str) -> None:
    """Shapes off the kernels' tiles (bf16 8 x 32, int8 6 x 64) and row blocks, D off their 2 / 4 (padded)."""
    _check_kernel_bound(n, m, d, kind)


@KIND
def test_scalar_screen_kernel_agrees(kind: str) -> None:
    """MECHPERM_NO_SIMD=1 (read once per process) runs the scalar loops: the same bound, and for
    int8 the same bits as the AVX-512 VNNI kernel."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); from test_screen import _check_kernel_bound; "
        f"from mechperm import _auction; assert not _auction.screen_has_fast_kernel({kind!r}); "
        f"_check_kernel_bound(70, 65, 33, {kind!r}); _check_kernel_bound(9, 40, 8, {kind!r}); print('ok')"
    )
    env = {**os.environ, "MECHPERM_NO_SIMD": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_int8_side_rounds_to_the_nearest_code_and_bounds_the_norms() -> None:
    X = _vectors(50, 33, 0, heavy=2.0, special=True)
    X[4] = 1e-40  # every entry subnormal: the scale underflows, codes 0
    X[6, 5] = -X[6].abs().max() * 2  # the extreme code is -127
    codes, scales, stats, bad = _auction.screen_side_int8(X.numpy(), kernels.row_sq_norms(X).numpy())
    assert bad == -1 and codes.shape == (50, 36) and (codes[:, 33:] == 0).all()
    assert codes.dtype == np.int8 and np.abs(codes.astype(np.int32)).max() <= 127 and codes[6].min() == -127
    x, s = X.double().numpy(), scales.astype(np.float64)
    want = np.abs(X.numpy()).max(axis=1) / np.float32(127)
    np.testing.assert_array_equal(s, np.where(want >= np.finfo(np.float32).tiny, want, 0).astype(np.float64))
    h = s[:, None] * codes[:, :33]
    assert (np.abs(h - x) <= 0.5001 * s[:, None] + (s[:, None] == 0) * np.abs(x)).all()
    assert (codes[0] == 0).all() and (codes[4] == 0).all() and stats[1, 4] == pytest.approx(np.linalg.norm(x[4]))
    for got, want in ((stats[0], np.linalg.norm(h, axis=1)), (stats[1], np.linalg.norm(h - x, axis=1)),
                      (stats[2], np.linalg.norm(x, axis=1))):
        assert (got >= want).all() and np.allclose(got, want, rtol=1e-10, atol=0)
    Y = X.clone()
    Y[3, 7], Y[9, 0] = float("inf"), float("nan")
    assert _auction.screen_side_int8(Y.numpy(), kernels.row_sq_norms(X).numpy())[3] == 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), d=st.integers(1, 80), seed=st.integers(0, 10**6),
       heavy=st.sampled_from([0.0, 1.0, 3.0]), tau=st.sampled_from([0.0, 0.5, 10.0]),
       bf16_inputs=st.booleans(), kind=st.sampled_from(screen.KINDS))
def test_lower_bounds_hold_and_the_band_is_exactly_the_pairs_below_tau(n, m, d, seed, heavy, tau, bf16_inputs,
                                                                      kind) -> None:
    A, B = _vectors(n, d, seed, heavy=heavy, special=True), _vectors(m, d, seed + 1, heavy=heavy)
    if bf16_inputs:
        A, B = A.bfloat16(), B.bfloat16()
    exact = screen.exact_dense_costs(A, B).double().numpy()
    sc = screen.screened_costs(A, B, kind=kind)
    rng = np.random.default_rng(seed)
    u = rng.normal(size=n) * exact.mean()
    v = rng.normal(size=m) * exact.mean()
    rows, cols = screen.lower_bounds(sc, u, v, tau)
    L = sc.costs.astype(np.float64)
    assert (L <= exact).all(), "a lower bound above the exact cost"
    want = np.argwhere(L - u[:, None] - v[None, :] < tau)
    assert np.array_equal(np.stack([rows, cols], 1).reshape(-1, 2), want)


def test_exact_costs_match_the_dense_reference() -> None:
    A, B = _vectors(30, 17, 3, heavy=1.0), _vectors(20, 17, 4)
    full = screen.exact_dense_costs(A, B).numpy()
    sc = screen.screened_costs(A, B)
    r, c = np.nonzero(np.ones((30, 20), bool))
    got = screen.exact_costs(A.numpy(), B.numpy(), r, c, sc.a_stats[3], sc.b_stats[3])
    np.testing.assert_allclose(got, full[r, c], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        screen.exact_costs(A.numpy(), B.numpy(), np.array([30]), np.array([0]), sc.a_stats[3], sc.b_stats[3])


def _scipy(C: np.ndarray, pad: float | None = None) -> float:
    if pad is not None:
        dummy = np.full((C.shape[0], C.shape[0]), 1e18)
        np.fill_diagonal(dummy, pad)
        C = np.hstack([C, dummy])
    r, c = linear_sum_assignment(C)
    return float(C[r, c].sum())


@KIND
@pytest.mark.parametrize("heavy", [0.0, 2.5])
@pytest.mark.parametrize("shape", [(300, 300), (200, 260), (260, 200)])
def test_screened_dense_path_is_exact(monkeypatch, heavy: float, shape, kind: str) -> None:
    """Forced on (any CPU): the optimum of the exact costs, certified; partial mode too."""
    monkeypatch.setenv("MECHPERM_SCREEN", kind)
    st = make_stack(2, d=48, F=max(shape), seed=11, heavy_tail=heavy)
    A = kernels.matching_vectors(st.saes[0])[: shape[0]]
    B = kernels.matching_vectors(st.saes[1])[: shape[1]]
    C = screen.exact_dense_costs(A, B).double().numpy()
    r = match_vectors(A, B)
    assert r.stats["screen"] == kind
    assert r.certified and r.gap <= 1e-9 * abs(r.objective) + 1e-9
    assert r.objective == pytest.approx(_scipy(C), rel=1e-12)
    # int8's coarser rounding needs more exact pairs (heavy tails, d = 48: 29% of all pairs)
    assert r.stats["solver"]["exact_pairs"] < A.shape[0] * B.shape[0] // (4 if kind == "bf16" else 3)
    if heavy and shape == (300, 300):  # wide bounds: some rows are made exact whole (float64 GEMM)
        assert r.stats["solver"]["exact_rows"] > 0
    perm = r.perm.numpy()
    assert np.unique(perm[perm >= 0]).size == min(shape)
    np.testing.assert_allclose(r.cost[perm >= 0].double().numpy(), C[np.flatnonzero(perm >= 0), perm[perm >= 0]],
                               rtol=1e-6)
    thr = float(np.median(C.min(axis=1)))
    p = match_vectors(A, B, mode="partial", threshold=thr)
    assert p.certified and p.objective == pytest.approx(_scipy(C, pad=thr), rel=1e-12)


def test_screening_switch(monkeypatch) -> None:
    A, B = torch.randn(40, 16), torch.randn(40, 16)
    monkeypatch.setenv("MECHPERM_SCREEN", "0")
    assert not screen.available(A, B)
    off = match_vectors(A, B)
    assert "exact_pairs" not in off.stats["solver"]
    monkeypatch.setenv("MECHPERM_SCREEN", "1")
    assert screen.available(A, B)
    on = match_vectors(A, B)
    assert on.stats["solver"]["exact_pairs"] > 0
    assert on.objective == pytest.approx(off.objective, rel=1e-6)
    # "1" takes the kind this CPU runs fast (bf16 before int8), else bf16 (the scalar kernels)
    fast = [k for k in screen.KINDS if _auction.screen_has_fast_kernel(k)]
    assert on.stats["screen"] == screen.kind(A, B) == (fast[0] if fast else "bf16")
    monkeypatch.setenv("MECHPERM_SCREEN", "")
    assert screen.kind(A, B) == (fast[0] if fast else None)
    # by default the int8 screen serves the sparse path only (it costs the dense path time)
    assert screen.kind(A, B, dense=True) == ("bf16" if fast[:1] == ["bf16"] else None)
    assert match_vectors(A, B).stats["screen"] == screen.kind(A, B, dense=True)
    for kind in screen.KINDS:
        monkeypatch.setenv("MECHPERM_SCREEN", kind)
        assert screen.kind(A, B) == kind and match_vectors(A, B).stats["screen"] == kind
    monkeypatch.setenv("MECHPERM_SCREEN", "fp8")
    with pytest.raises(ValueError, match="MECHPERM_SCREEN must be 0, 1, bf16 or int8, got 'fp8'"):
        match_vectors(A, B)
    with pytest.raises(ValueError, match="kind must be one of"):
        screen.prepare(A, B, kind="fp8")
    wide = torch.randn(2, screen.INT8_MAX_D + 4)  # the int8 kernel's int32 sums would overflow
    with pytest.raises(ValueError, match="int8 screen takes rows of width up to 65536"):
        screen.prepare(wide, wide, kind="int8")
    with pytest.raises(ValueError, match="multiple of 4 and at most 65536"):
        _auction.ScreenB(np.zeros((2, 65540), np.int8), np.zeros(2, np.float32), scale=np.ones(2, np.float32))
    monkeypatch.setenv("MECHPERM_SCREEN", "")
    assert screen.kind(wide, wide) in ("bf16", None)
    with pytest.raises(ValueError, match="the cost kernels run on 'cpu' or 'cuda'"):
        screen.screened_costs(A.to("meta"), B.to("meta"))
    if torch.cuda.is_available():  # a device the kernels run on, but not this screen
        with pytest.raises(ValueError, match="runs on the CPU"):
            screen.screened_costs(A.cuda(), B.cuda())


@KIND
@pytest.mark.parametrize("heavy", [0.0, 2.5])
@pytest.mark.parametrize("shape", [(300, 300), (200, 260), (260, 200)])
def test_screened_sparse_path_is_exact(monkeypatch, heavy: float, shape, kind: str) -> None:
    """The sparse path on screened candidates and pricing (tiny k: pricing carries it)."""
    monkeypatch.setenv("MECHPERM_SCREEN", kind)
    st = make_stack(2, d=48, F=max(shape), seed=12, heavy_tail=heavy, dead_rate=0.05)
    A = kernels.matching_vectors(st.saes[0])[: shape[0]]
    B = kernels.matching_vectors(st.saes[1])[: shape[1]]
    C = screen.exact_dense_costs(A, B).double().numpy()
    for k in (1, 3, 16):
        r = match_vectors(A, B, dense_limit=0, candidates_k=k)
        assert r.stats["screen"] == kind
        assert r.certified and r.objective == pytest.approx(_scipy(C), rel=1e-12), k
        perm = r.perm.numpy()
        assert np.unique(perm[perm >= 0]).size == min(shape)
    thr = float(np.median(C.min(axis=1)))
    p = match_vectors(A, B, mode="partial", threshold=thr, dense_limit=0, candidates_k=3)
    assert p.certified and p.objective == pytest.approx(_scipy(C, pad=thr), rel=1e-12)


@KIND
def test_screened_graph_bounds_hold_for_every_pair_left_out(kind: str) -> None:
    """Rank and Euclidean bounds of the screened graph against the exact costs (heavy tails)."""
    st = make_stack(2, d=40, F=200, seed=13, heavy_tail=2.5)
    A, B = (kernels.matching_vectors(s) for s in st.saes)
    sv = screen.prepare(A, B, kind=kind)
    g, _ = screen.solver_graph(sv, 4)
    C = screen.exact_dense_costs(A, B).double().numpy()
    inside = np.zeros(C.shape, bool)
    inside[np.repeat(np.arange(200), np.diff(g.indptr)), g.indices] = True
    rows = np.repeat(np.arange(200), np.diff(g.indptr))
    np.testing.assert_allclose(g.costs, C[rows, g.indices], rtol=1e-6, atol=1e-6)
    out = ~inside
    assert (C[out] >= (g.row_bound[:, None] + g.col_offset[None, :])[out]).all()
    assert (C[out] >= (g.row_offset[:, None] + g.col_bound[None, :])[out]).all()
    assert (C[out] >= (g.col_base[None, :] - g.col_slope[None, :] * g.row_norm[:, None])[out]).all()
    y, x = g.row_norm[:, None], g.col_norm[None, :]
    for kappa in (g.row_cos[:, None], g.col_cos[None, :]):
        euclid = (1 - 1e-5) * (y**2 + x**2) - 2 * y * x * kappa
        assert (C[out] >= euclid[out]).all()


def test_screened_graph_same_with_the_torch_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    """MECHPERM_NATIVE_TOPK=0 (torch's selection, the −cosine tile made from the same factors)
    selects as the native one (which computes the −cosines as it scans): the same k-th costs
    and least cosines, bit for bit. (The two selections keep different sets of tied edges:
    they did before the −cosines moved into the scan as well.)"""
    st = make_stack(2, d=40, F=300, seed=14, heavy_tail=1.5)
    A, B = (kernels.matching_vectors(s) for s in st.saes)
    sv = screen.prepare(A, B)
    native, _ = screen.solver_graph(sv, 4, block_rows=128, block_cols=96)
    monkeypatch.setenv("MECHPERM_NATIVE_TOPK", "0")
    plain, _ = screen.solver_graph(sv, 4, block_rows=128, block_cols=96)
    for name in ("row_bound", "col_bound", "row_offset", "col_offset", "row_cos", "col_cos"):
        assert np.array_equal(getattr(native, name), getattr(plain, name)), name


@KIND
def test_screened_pricer_bound_covers_every_pair_not_returned(kind: str) -> None:
    """q = 1 and duals that leave many pairs negative: rows are re-priced with 4q until the
    bound is >= 0 or their pairs hold a violation (the loop prices those again after adding
    them), and every pair not returned has an exact reduced cost >= the bound."""
    A, B = _vectors(60, 24, 5, heavy=1.0), _vectors(90, 24, 6, heavy=1.0)
    sv = screen.prepare(A, B, kind=kind)
    C = screen.exact_dense_costs(A, B).double().numpy()
    rng = np.random.default_rng(0)
    u = C.min(axis=1) + rng.uniform(-0.5, 0.5, 60) * C.std()  # about half the rows violate
    v = np.zeros(90)
    rows = np.arange(0, 60, 2)
    r, c, w, bound = screen.row_pricer(sv, 1)(rows, u, v)
    assert (np.bincount(r, minlength=60)[rows] >= 1).all()
    np.testing.assert_allclose(w, C[r, c], rtol=1e-6, atol=1e-6)
    red = C - u[:, None] - v[None, :]
    violating = np.isin(rows, r[red[r, c] < -1e-6 * (np.abs(C[r, c]) + np.abs(u[r]))])
    assert (bound[~violating] >= 0).all() and violating.any() and (~violating).any()
    assert (bound[violating] < 0).any()  # not priced on to a bound >= 0
    returned = np.zeros(C.shape, bool)
    returned[r, c] = True
    for t, i in enumerate(rows):
        assert (red[i, ~returned[i]] >= bound[t] - 1e-9).all()


@KIND
@pytest.mark.parametrize("q", [1, 3, 8, 40])
def test_screened_price_returns_the_q_least_lower_bound_reduced_costs(kind: str, q: int) -> None:
    """The native pricer's columns are the q least lower-bound reduced costs of each row and its
    bound the (q+1)-th least (by value: ties may go either way), against the screen's own lower
    bounds (``lower_bounds``) in numpy, with duals that spread the rows' admissions over many
    columns (700, against heaps of q + 1)."""
    A, B = _vectors(70, 48, 11, heavy=1.0), _vectors(700, 48, 12, heavy=1.0)
    sv = screen.prepare(A, B, kind=kind)
    sc = screen.screened_costs(A, B, kind=kind)
    screen.lower_bounds(sc, np.zeros(70), np.zeros(700), 0.0)  # sc.costs: the lower bounds, float32
    rng = np.random.default_rng(q)
    u, v = rng.normal(0, 1, 70) * sc.costs.std(), rng.normal(0, 1, 700) * sc.costs.std()
    codes, scales = sv.a_rows(np.arange(70))
    cols, bound = sv.packed.price(codes, sv.na, np.ascontiguousarray(sv.a_stats), sv.b_stats, sv.gamma,
                                  sv.abs_slack, u, v, q, threads=2, a_scale=scales)
    red = (sc.costs.astype(np.float64) - u[:, None]) - v[None, :]
    want = np.sort(red, axis=1)
    got = np.sort(np.take_along_axis(red, cols, axis=1), axis=1)
    np.testing.assert_array_equal(got, want[:, :q])
    np.testing.assert_array_equal(bound, want[:, q])


@KIND
def test_screen_is_the_same_on_any_number_of_threads(kind: str) -> None:
    """Each tile is one thread's: results do not depend on the thread count (nor on D = 4608)."""
    A, B = _vectors(150, 4608, 7, heavy=1.0), _vectors(70, 4608, 8)
    one = screen.screened_costs(A, B, threads=1, kind=kind).costs
    assert np.array_equal(one, screen.screened_costs(A, B, threads=3, kind=kind).costs)
    sv1, sv3 = screen.prepare(A, B, threads=1, kind=kind), screen.prepare(A, B, threads=3, kind=kind)
    u, v = np.zeros(150), np.zeros(70)
    r1, r3 = screen.row_pricer(sv1, 5)(np.arange(150), u, v), screen.row_pricer(sv3, 5)(np.arange(150), u, v)
    for x, y in zip(r1, r3):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("order, per_row", [("rows", 400), ("shuffled", 400), ("rows", 66000)])
def test_pair_dots_in_groups_of_b_rows_are_those_of_each_pair(order, per_row) -> None:
    """A long list of pairs over a B larger than a cache group (16 MiB; pair_dots then takes
    them grouped by B's rows and writes each dot back in place; above 2^22 pairs in slices)
    gives the dots of the pairs in the given order (grouped=False) and of short calls, bit for
    bit; scaled rows too."""
    rng = np.random.default_rng(5)
    n, m, d = 64, 8192, 512
    a = rng.standard_normal((n, d), dtype=np.float32)
    b = rng.standard_normal((m, d), dtype=np.float32)
    s, t = rng.uniform(0.5, 2, n).astype(np.float32), rng.uniform(0.5, 2, m).astype(np.float32)
    rows = np.repeat(np.arange(n), per_row)
    cols = rng.integers(0, m, len(rows))
    if order == "shuffled":
        perm = rng.permutation(len(rows))
        rows, cols = rows[perm], cols[perm]
    for kw in ({}, {"a_scale": s, "b_scale": t}):
        whole = _auction.pair_dots(a, b, rows, cols, threads=2, **kw)
        assert np.array_equal(whole, _auction.pair_dots(a, b, rows, cols, threads=2, grouped=False, **kw))
        if len(rows) > 100000:
            continue
        parts = np.concatenate([_auction.pair_dots(a, b, rows[q : q + 4000], cols[q : q + 4000], **kw)
                                for q in range(0, len(rows), 4000)])
        assert np.array_equal(whole, parts)
    q = slice(0, 100000)  # numpy's gathered float64 rows: 4.2M pairs would take 36 GB
    ref = np.einsum("td,td->t", a.astype(np.float64)[rows[q]], b.astype(np.float64)[cols[q]])
    assert np.allclose(_auction.pair_dots(a, b, rows, cols)[q], ref, rtol=0, atol=1e-9 * np.abs(ref).max())


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 70), n=st.integers(1, 9), m=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       spread=st.sampled_from([0.0, 1.0, 3.0]))
def test_pair_dots_of_scaled_rows_are_those_of_the_scaled_copies(d, n, m, seed, spread) -> None:
    """pair_dots(a, b, a_scale=s, b_scale=t) = pair_dots(fl32(s·a), fl32(t·b)) bit for bit (the
    screened path's exact costs of ScaledRows), with every instruction set, and within float64
    rounding of numpy's dots; unit scales change nothing."""
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((n, d)) * np.exp(spread * rng.standard_normal((n, 1)))).astype(np.float32)
    b = (rng.standard_normal((m, d)) * np.exp(spread * rng.standard_normal((m, 1)))).astype(np.float32)
    a[rng.random((n, d)) < 0.1] = np.float32(1e-41)  # subnormal entries
    s = np.exp(rng.uniform(-10, 10, n)).astype(np.float32)
    t = np.exp(rng.uniform(-10, 10, m)).astype(np.float32)
    rows, cols = rng.integers(0, n, 40), rng.integers(0, m, 40)
    scaled = _auction.pair_dots(a, b, rows, cols, a_scale=s, b_scale=t, threads=2)
    copies = _auction.pair_dots(a * s[:, None], b * t[:, None], rows, cols)
    assert np.array_equal(scaled, copies)
    ref = np.einsum("td,td->t", (a * s[:, None]).astype(np.float64)[rows], (b * t[:, None]).astype(np.float64)[cols])
    mag = np.einsum("td,td->t", np.abs(a * s[:, None]).astype(np.float64)[rows],
                    np.abs(b * t[:, None]).astype(np.float64)[cols])
    assert np.all(np.abs(scaled - ref) <= 4 * d * 2.0**-53 * mag)
    ones = _auction.pair_dots(a, b, rows, cols, a_scale=np.ones(n, np.float32), b_scale=np.ones(m, np.float32))
    assert np.array_equal(ones, _auction.pair_dots(a, b, rows, cols))
    one_side = _auction.pair_dots(a, b * t[:, None], rows, cols, a_scale=s)
    assert np.array_equal(one_side, copies)
    # the same bits from the scalar, AVX2 and AVX-512 versions (those this CPU has)
    for isa in (0, 1, 2):
        assert np.array_equal(_auction.pair_dots(a, b, rows, cols, a_scale=s, b_scale=t, isa=isa), copies)
        assert np.array_equal(_auction.pair_dots(a * s[:, None], b * t[:, None], rows, cols, isa=isa), copies)
    with pytest.raises(ValueError, match="a_scale"):
        _auction.pair_dots(a, b, rows, cols, a_scale=np.ones(n + 1, np.float32))
    with pytest.raises(ValueError, match="b_scale"):
        _auction.pair_dots(a, b, rows, cols, b_scale=np.ones(m, np.float64))


@KIND
def test_screen_costs_of_a_column_range_are_that_slice_of_all_costs(kind: str) -> None:
    """Column ranges start at any multiple of 32, also half-way into the int8 kernel's 64-column
    panels; rows off its 6-row tiles and 60-row tasks. Bit for bit the full matrix's columns."""
    A, B = _vectors(67, 36, 5, heavy=1.0), _vectors(200, 36, 6, heavy=1.0)
    sv = screen.prepare(A, B, kind=kind, threads=2)
    rows, na = sv.a_rows(slice(0, 67)), sv.na[:67]
    full = sv.costs(rows, na, out=np.empty((67, 200), np.float32), c0=0, c1=200)
    for c0, c1 in [(32, 200), (32, 64), (32, 33), (64, 128), (96, 97), (96, 200), (160, 200), (192, 200), (0, 31)]:
        got = sv.costs(rows, na, out=np.full((67, c1 - c0), np.nan, np.float32), c0=c0, c1=c1)
        assert np.array_equal(got, full[:, c0:c1]), (c0, c1)
