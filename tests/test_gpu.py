"""The compiled Triton kernels and match_vectors() on CUDA, against the CPU (skipped without CUDA).

At sizes the interpreted tests in test_kernels.py cannot reach: many tiles, column splits,
D = 2304 (Gemma-2-2B). fp32 dots on CUDA use 3xTF32 (float32-level accuracy), so costs agree
with the CPU's to ~1e-6 relative, not bit for bit: objectives are compared by scoring both
permutations on one float64 cost matrix.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from mechperm.kernels.candidates import candidates, dense_costs, price
from mechperm.match import match_vectors

# MECHPERM_TEST_GPU_ON_CPU=1 runs the module on the CPU (a dry run of the tests themselves)
DEV = "cuda" if torch.cuda.is_available() else ("cpu" if os.environ.get("MECHPERM_TEST_GPU_ON_CPU") == "1" else None)
pytestmark = pytest.mark.skipif(DEV is None, reason="needs CUDA")


def pair(F: int, D: int, *, seed: int, Fb: int | None = None, dtype=torch.float32, noise: float = 0.5 / 48):
    """A [F, D] with lognormal row norms; B a permuted, noisy copy (plus extra rows if Fb > F)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(F, D, generator=g) * torch.exp(0.5 * torch.randn(F, 1, generator=g))
    B = A[torch.randperm(F, generator=g)] + noise * torch.randn(F, D, generator=g)
    if Fb is not None and Fb > F:
        B = torch.cat([B, torch.randn(Fb - F, D, generator=g)])
    return A.to(dtype), B.to(dtype)


def float64_costs(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    A, B = A.double(), B.double()
    return ((A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T).clamp_min(0).numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("splits", [None, 3])
def test_candidates_on_cuda_equal_torch_on_cpu(dtype, splits) -> None:
    A, B = pair(2000, 2304, seed=1, Fb=3000, dtype=dtype)
    g = candidates(A.to(DEV), B.to(DEV), k=32, k_cos=8).to("cpu")
    r = candidates(A, B, k=32, k_cos=8, backend="torch")
    assert torch.equal(g.indptr, r.indptr)
    same = (g.indices == r.indices).float().mean()
    assert float(same) >= 0.999, f"{float(same):.4f} of the edges agree"  # near-ties may swap
    ok = g.indices == r.indices
    na, nb = (A.float() ** 2).sum(1), (B.float() ** 2).sum(1)
    scale = (na[g.row_ids()] + nb[g.indices])[ok]  # float32 rounding of |a|² + |b|² − 2ab
    err = ((g.costs[ok] - r.costs[ok]).abs() / scale).max()
    # 3xTF32 (fp32) and bf16 tensor-core accumulation round more than a sequential float32 loop:
    # measured on an H200, 1.8e-6 and 8.4e-6 of |a|² + |b|² (gamma_D alone allows 1.4e-4)
    assert float(err) <= (5e-6 if dtype == torch.float32 else 3e-5)
    for name in ("row_kth", "col_kth"):
        a, b = getattr(g, name), getattr(r, name)
        assert float(((a - b).abs() / b.abs().clamp_min(1.0)).max()) <= 1e-5, name


def test_dense_costs_and_price_on_cuda() -> None:
    A, B = pair(1500, 2304, seed=2, Fb=1700)
    C = dense_costs(A.to(DEV), B.to(DEV)).cpu().double().numpy()
    ref = float64_costs(A, B)
    assert np.isfinite(C).all()
    scale = (A.double() ** 2).sum(1).numpy()[:, None] + (B.double() ** 2).sum(1).numpy()[None, :]
    assert float(np.max(np.abs(C - ref) / scale)) <= 1e-6  # float32 rounding of |a|² + |b|² − 2ab
    u = torch.from_numpy(ref.min(axis=1) + 2.0)
    v = torch.zeros(B.shape[0], dtype=torch.float64)
    p = price(A.to(DEV), B.to(DEV), u.to(DEV), v.to(DEV), tol=0.0)
    want = set(zip(*np.nonzero(ref - u.numpy()[:, None] < -1e-3)))
    got = set(zip(p.rows.cpu().tolist(), p.cols.cpu().tolist()))
    assert want <= got  # pairs clearly negative are all found (rounding decides the borderline)
    assert all(ref[i, j] - u[i] < 1e-3 for i, j in got)


@pytest.mark.parametrize("F, dense_limit, fused, gpu_screen", [(1500, 1500 * 1500, "0", "0"), (3000, None, "0", "0"),
                                                          (3000, None, "1", "0"), (3000, None, "0", "1")])
def test_match_vectors_on_cuda_is_optimal(F: int, dense_limit, fused: str, gpu_screen: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense path, sparse path, sparse path with the fused Triton pricer (MECHPERM_FUSED_PRICING),
    with the bf16 screen on the GPU (MECHPERM_GPU_SCREEN)."""
    monkeypatch.setenv("MECHPERM_FUSED_PRICING", fused)
    monkeypatch.setenv("MECHPERM_GPU_SCREEN", gpu_screen)
    # Optimal costs ~ half the norms: float32 costs then agree with float64 ones to ~1e-6 of the
    # objective (tiny distances between long vectors would leave only cancellation to compare).
    A, B = pair(F, 2304, seed=F, noise=0.5)
    res = match_vectors(A.to(DEV), B.to(DEV), dense_limit=dense_limit)
    assert res.certified
    perm = res.perm.numpy()
    assert sorted(perm.tolist()) == list(range(F))
    C = float64_costs(A, B)
    r, c = linear_sum_assignment(C)
    best = float(C[r, c].sum())
    assert float(C[np.arange(F), perm].sum()) == pytest.approx(best, rel=1e-5)
    assert res.objective == pytest.approx(best, rel=1e-5)


def test_partial_match_on_cuda_agrees_with_cpu() -> None:
    A, B = pair(1200, 512, seed=5, Fb=1400, noise=0.5)
    thr = float(np.median(float64_costs(A, B).min(axis=1)))
    gpu = match_vectors(A.to(DEV), B.to(DEV), mode="partial", threshold=thr, dense_limit=0)
    cpu = match_vectors(A, B, mode="partial", threshold=thr)
    assert gpu.certified and cpu.certified
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-5)
    assert 0 < int((gpu.perm >= 0).sum()) < 1200
