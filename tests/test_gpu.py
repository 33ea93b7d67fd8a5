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



@pytest.mark.parametrize("dtype, k_cos", [(torch.float32, 8), (torch.bfloat16, 32), (torch.float32, 0)])
def test_emission_selection_equals_the_running_top_k(monkeypatch: pytest.MonkeyPatch, dtype, k_cos: int) -> None:
    """MECHPERM_EMIT_TOPK=1 at a size with the 4k tile groups it needs (128 per row and
    column at k = 32, 64-wide tiles): the same graph as the running top-k of the same device,
    with few rows redone (the fused kernels: the emission is theirs, and CUDA's default reads
    cuBLAS blocks instead)."""
    from mechperm.kernels import triton_candidates as tc

    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "0")
    A, B = pair(9000, 256, seed=3, Fb=8500, dtype=dtype)
    A, B = A.to(DEV), B.to(DEV)
    monkeypatch.setenv("MECHPERM_EMIT_TOPK", "0")
    r = candidates(A, B, k=32, k_cos=k_cos).to("cpu")
    monkeypatch.setenv("MECHPERM_EMIT_TOPK", "1")
    tc.LAST_EMIT.clear()
    g = candidates(A, B, k=32, k_cos=k_cos).to("cpu")
    if DEV == "cuda":  # the emission path is Triton's
        assert tc.LAST_EMIT["slots"] == 128 and tc.LAST_EMIT["per_row"] < 64, tc.LAST_EMIT
        assert tc.LAST_EMIT["rows_redone"] < 90 and tc.LAST_EMIT["cols_redone"] < 90, tc.LAST_EMIT
    assert torch.equal(g.indptr, r.indptr) and torch.equal(g.indices, r.indices) and torch.equal(g.sources, r.sources)
    # rows' costs from the same tiles; columns' from the A·B tiles where the running top-k
    # computes B·A: float32 rounding apart
    scale = 1.0 + (A.float() ** 2).sum(1).cpu()[g.row_ids()] + (B.float() ** 2).sum(1).cpu()[g.indices]
    assert float(((g.costs - r.costs).abs() / scale).max()) <= 1e-5

@pytest.mark.parametrize("dtype, k_cos, block_rows", [(torch.float32, 32, None), (torch.bfloat16, 8, 1024)])
def test_gated_selection_equals_the_running_top_k(monkeypatch: pytest.MonkeyPatch, dtype, k_cos: int,
                                                  block_rows) -> None:
    """MECHPERM_GATED_SELECT=1 on the compiled kernels: the same graph bit for bit as the GEMM
    blocks' running top-k (the group minima's costs must be those the selection computes), at
    a size with column splits and, with ``block_rows``, several blocks (the columns' gates in
    the first only; later blocks' rows' gates from their columns' pass)."""
    from mechperm.kernels import triton_candidates as tc

    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    A, B = pair(6000, 2304, seed=4, Fb=7000, dtype=dtype)
    A, B = A.to(DEV), B.to(DEV)
    if block_rows is not None:
        monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * B.shape[0] * block_rows)
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "0")
    r = candidates(A, B, k=32, k_cos=k_cos).to("cpu")
    monkeypatch.setenv("MECHPERM_GATED_SELECT", "1")
    g = candidates(A, B, k=32, k_cos=k_cos).to("cpu")
    if DEV == "cuda":
        assert tc.LAST_GEMM["gated"] is True and tc.LAST_GEMM["blocks"] == (1 if block_rows is None else 6)
    for name in ("indptr", "indices", "sources", "costs", "row_kth", "col_kth"):
        assert torch.equal(getattr(g, name), getattr(r, name)), name


def test_gated_pricer_equals_the_running_top_q(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gated fused pricer (MECHPERM_GATED_PRICER=1) compiled: the same pairs, costs and
    bounds bit for bit as ungated, at Q = 64 with column splits and several chunks."""
    if DEV != "cuda":
        pytest.skip("the compiled kernels (the interpreter's run is tests/test_kernels.py's)")
    from mechperm.kernels import triton_candidates as tc

    monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", "1")
    A, B = pair(6000, 2304, seed=6, Fb=7000)
    A, B = A.to(DEV), B.to(DEV)
    monkeypatch.setattr(tc, "GEMM_BLOCK_BYTES", 4 * B.shape[0] * 512)
    C = dense_costs(A, B)
    g = torch.Generator(device="cpu").manual_seed(7)
    u = (C.min(dim=1).values.double() + torch.rand(6000, generator=g, dtype=torch.float64).to(DEV)).contiguous()
    v = (torch.rand(7000, generator=g, dtype=torch.float64) - 0.5).to(DEV)
    rows = torch.randperm(6000, generator=g)[:1500].to(DEV)
    plain = tc.price_rows_topq(A, B, u, v, rows, 64, gated=False)
    gated = tc.price_rows_topq(A, B, u, v, rows, 64, gated=True)
    assert tc.LAST_TOPQ == {"gated": True, "regated": 0}
    for a, b in zip(gated, plain):
        assert torch.equal(a, b)


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


@pytest.mark.parametrize("F, dense_limit, fused, gpu_screen, emit, gemm", [
    (1500, 1500 * 1500, "0", "0", "0", None), (1500, 1500 * 1500, "0", "0", "0", "0"),
    (3000, None, "0", "0", "0", None), (3000, None, "0", "0", "0", "0"), (3000, None, "1", "0", "0", None),
    (3000, None, "1", "0", "0", "0"), (3000, None, "0", "1", "0", None), (3000, None, "1", "1", "1", "0")])
def test_match_vectors_on_cuda_is_optimal(F: int, dense_limit, fused: str, gpu_screen: str, emit: str, gemm,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Dense path, sparse path, sparse path with the fused Triton pricer (MECHPERM_FUSED_PRICING),
    with the bf16 screen on the GPU (MECHPERM_GPU_SCREEN), with all opt-ins and the candidates
    by emission (MECHPERM_EMIT_TOPK; 16-wide tiles give F = 3000 the tile groups it needs); each
    with the default GEMM (cuBLAS blocks on CUDA) and, where ``gemm`` is "0", the fused kernels'."""
    if gemm is None:
        monkeypatch.delenv("MECHPERM_GEMM_CANDIDATES", raising=False)
    else:
        monkeypatch.setenv("MECHPERM_GEMM_CANDIDATES", gemm)
    monkeypatch.setenv("MECHPERM_FUSED_PRICING", fused)
    monkeypatch.setenv("MECHPERM_GPU_SCREEN", gpu_screen)
    monkeypatch.setenv("MECHPERM_EMIT_TOPK", emit)
    if emit == "1" and DEV == "cuda":
        from mechperm.kernels import triton_candidates as tc

        monkeypatch.setattr(tc, "BM", 16)
        monkeypatch.setattr(tc, "BN", 16)
        tc.LAST_EMIT.clear()
    # Optimal costs ~ half the norms: float32 costs then agree with float64 ones to ~1e-6 of the
    # objective (tiny distances between long vectors would leave only cancellation to compare).
    A, B = pair(F, 2304, seed=F, noise=0.5)
    res = match_vectors(A.to(DEV), B.to(DEV), dense_limit=dense_limit, candidates_k=32 if emit == "1" else 64)
    assert res.certified
    perm = res.perm.numpy()
    assert sorted(perm.tolist()) == list(range(F))
    C = float64_costs(A, B)
    r, c = linear_sum_assignment(C)
    best = float(C[r, c].sum())
    assert float(C[np.arange(F), perm].sum()) == pytest.approx(best, rel=1e-5)
    assert res.objective == pytest.approx(best, rel=1e-5)
    if emit == "1" and DEV == "cuda":
        assert tc.LAST_EMIT.get("slots") == 128  # the candidates came from the emission path (k = 32)


def test_partial_match_on_cuda_agrees_with_cpu() -> None:
    A, B = pair(1200, 512, seed=5, Fb=1400, noise=0.5)
    thr = float(np.median(float64_costs(A, B).min(axis=1)))
    gpu = match_vectors(A.to(DEV), B.to(DEV), mode="partial", threshold=thr, dense_limit=0)
    cpu = match_vectors(A, B, mode="partial", threshold=thr)
    assert gpu.certified and cpu.certified
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-5)
    assert 0 < int((gpu.perm >= 0).sum()) < 1200


@pytest.mark.parametrize("on, metric, mode, fold", [
    ("decoder", "mse", "bijective", True), ("encoder", "mse", "bijective", True), ("both", "cosine", "bijective", True),
    ("decoder", "mse", "bijective", False), ("decoder", "cosine", "partial", True), ("both", "mse", "topk", True),
])
@pytest.mark.parametrize("dense_limit", [None, 0])
def test_match_variants_on_the_device_agree_with_the_cpu(on: str, metric: str, mode: str, fold: bool,
                                                         dense_limit) -> None:
    """What `mechperm match` now runs on a GPU by default: match() on SAEs, in each variant and on
    both paths (dense_limit 0: the sparse path), reaches the CPU's certified objective; top-k
    neighbours have the CPU's costs."""
    from mechperm import match
    from mechperm.synthetic import make_stack

    a, b = make_stack(2, d=64, F=700, seed=3).saes
    opts = dict(on=on, metric=metric, mode=mode, fold=fold, dense_limit=dense_limit)
    if mode == "partial":
        bij = match(a, b, on=on, metric=metric, fold=fold)
        opts["threshold"] = float(bij.cost.double().median())
    if mode == "topk":
        opts["k"] = 3
    got, want = match(a, b, device=DEV, **opts), match(a, b, device="cpu", **opts)
    assert got.options["device"].startswith(DEV)
    if mode == "topk":
        assert torch.allclose(got.neighbor_costs.double(), want.neighbor_costs.double(), rtol=1e-5, atol=1e-6)
        return
    assert got.certified and want.certified
    assert got.objective == pytest.approx(want.objective, rel=1e-5)
    perm = got.perm[got.perm >= 0]
    assert perm.unique().numel() == perm.numel()
    if mode == "partial":
        assert 0 < perm.numel() < 700  # (how many: ties at the threshold may differ)


@pytest.mark.skipif(DEV != "cuda", reason="torchrun with --device cuda needs a GPU")
def test_torchrun_one_rank_matches_on_its_local_gpu(tmp_path) -> None:
    """The scale-out path on a GPU: a rank joins gloo, takes its LOCAL_RANK's GPU for "cuda", and
    writes the same run as a single process (tests/test_distributed.py covers several CPU ranks)."""
    import subprocess
    import sys

    from mechperm.run import load_run
    from mechperm.synthetic import make_stack

    for t, sae in enumerate(make_stack(3, d=64, F=512, seed=0).saes):
        (tmp_path / "s" / f"layer_{t}").mkdir(parents=True)
        np.savez(tmp_path / "s" / f"layer_{t}" / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())
    for name, launcher in (("rank", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc-per-node=1"]), ("plain", [sys.executable])):
        out = subprocess.run([*launcher, "-m", "mechperm", "match", str(tmp_path / "s"), "--out",
                              str(tmp_path / name), "--device", "cuda", "--quiet"],
                             capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
    got, want = load_run(tmp_path / "rank"), load_run(tmp_path / "plain")
    assert sorted(got.results) == sorted(want.results) == [(0, 1), (1, 2)]
    for pair_ in want.results:
        assert got.results[pair_].certified and got.results[pair_].options["device"] == "cuda"
        assert got.results[pair_].objective == pytest.approx(want.results[pair_].objective, rel=1e-9)
