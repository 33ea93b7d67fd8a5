"""Benchmark of the candidate op: ``candidates()`` next to one bare GEMM of the same shape.

The candidate pass is one GEMM plus an on-the-fly top-k; the target is candidates ≤ ~1.3× the
bare ``torch.mm`` on the CPU (the selection must not dominate). On CUDA the Triton kernels are
reported in TFLOP/s (2·F_a·F_b·D flops per pass). On the CPU also: ``mm_bf16`` (the GEMM on
bfloat16 copies), ``mm_int8`` (PyTorch's int8 GEMM, ``torch._int_mm`` with int32 results, on
int8 copies), ``screened`` and ``screened_int8`` (the sparse path's screened graph,
``kernels.screen``: the bf16 or int8 kernel + the same selection + exact float64-dot costs for
every edge; the bf16 one where the CPU has AVX-512 BF16, the int8 one where it has VNNI: a
screen without its instructions runs scalar loops and is skipped).

    pytest bench/bench_candidates.py --benchmark-only [--benchmark-json out.json]
    pytest bench/bench_candidates.py -k exact_pair_dots   # the exact costs' pair dots alone
    python bench/bench_candidates.py            # quick table + ratio, JSON on stdout

Sizes: F ∈ {4096, 16384}, d = 2304 (Gemma-2-2B); ``MECHPERM_BENCH_MAX_N`` caps F (e.g. 4096);
``MECHPERM_BENCH_THREADS`` sets torch's intra-op threads (on a shared machine, 1 thread measures
the algorithm rather than OpenMP barriers waiting for a descheduled core). Benchmarks never
assert speed.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest
import torch

from mechperm import _auction
from mechperm.kernels import screen
from mechperm.kernels.candidates import candidates, price

D = 2304
K = 32
MAX_N = int(os.environ.get("MECHPERM_BENCH_MAX_N", "16384"))
SIZES = [n for n in (4096, 16384) if n <= MAX_N] or [MAX_N]
PEER_MAX_N = int(os.environ.get("MECHPERM_BENCH_PEER_MAX_N", "4096"))
if os.environ.get("MECHPERM_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["MECHPERM_BENCH_THREADS"]))
PROVIDERS = ["mm", "mm_bf16", "mm_int8", "candidates", "candidates_cost_only", "screened", "screened_int8",
             "price"]
CPU_ONLY = {"mm_bf16", "mm_int8", "screened", "screened_int8"}
SCREENS = {"screened": "bf16", "screened_int8": "int8"}


def _runs_here(provider: str, device: str) -> bool:
    """CPU-only providers off the CPU, and screens without their instructions, are not timed."""
    if provider in CPU_ONLY and device != "cpu":
        return False
    return provider not in SCREENS or _auction.screen_has_fast_kernel(SCREENS[provider])


def setup(n: int, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Two [n, D] matching-vector sets with heavy-tailed row norms (like folded decoders)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, D, generator=g) * torch.exp(0.5 * torch.randn(n, 1, generator=g))
    B = A[torch.randperm(n, generator=g)] + 0.3 * torch.randn(n, D, generator=g) / D**0.5
    return A.to(device, dtype), B.to(device, dtype)


def run(provider: str, A: torch.Tensor, B: torch.Tensor, out: torch.Tensor | None = None):
    if provider == "mm":
        return torch.mm(A, B.T, out=out)
    if provider == "mm_bf16":
        return torch.mm(A.bfloat16(), B.bfloat16().T)
    if provider == "mm_int8":  # rows scaled to [-127, 127] and rounded, as the int8 screen does
        qa, qb = ((X * (127 / X.abs().amax(1, keepdim=True))).round().to(torch.int8) for X in (A, B))
        return torch._int_mm(qa, qb.T)
    if provider in SCREENS:
        return screen.solver_graph(screen.prepare(A, B, kind=SCREENS[provider]), K)
    if provider == "candidates":
        return candidates(A, B, k=K)
    if provider == "candidates_cost_only":
        return candidates(A, B, k=K, k_cos=0)
    if provider == "price":  # duals from the diagonal-free bound: prices nothing, streams everything
        u = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
        v = torch.zeros(B.shape[0], dtype=torch.float64, device=B.device)
        return price(A, B, u, v)
    raise ValueError(provider)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_candidates(benchmark, provider: str, n: int, device: str) -> None:
    if not _runs_here(provider, device):
        pytest.skip("a CPU provider, or a screen without its instructions here")
    A, B = setup(n, device)
    out = torch.empty(n, n, device=device) if provider == "mm" else None

    def fn():
        res = run(provider, A, B, out)
        _sync(device)
        return res

    rounds = 3 if device == "cpu" and n <= 4096 else 1
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if device == "cuda" else 0)
    flops = 2.0 * n * n * D
    benchmark.extra_info.update(
        flops=flops, tflops=flops / benchmark.stats.stats.min / 1e12, threads=torch.get_num_threads()
    )


PAIRS_PER_ROW = 200  # about a make_stack graph's arcs a row at k = 64 (185 at F = 16384)
PAIR_PROVIDERS = ["pair_dots", "pair_dots_in_order", "numpy"]


def pair_setup(n: int, seed: int = 1):
    """A's and B's rows as the screened path keeps them (float32, [n, D]) and a candidate graph's
    pairs: rows in order, each with PAIRS_PER_ROW random columns (ascending within the row)."""
    A, B = (x.numpy() for x in setup(n, seed=seed))
    g = np.random.default_rng(seed)
    cols = np.sort(g.integers(0, n, (n, PAIRS_PER_ROW)), axis=1).ravel()
    return A, B, np.repeat(np.arange(n), PAIRS_PER_ROW), cols


def run_pairs(provider: str, A, B, rows, cols):
    """The float64 dots of every pair, as `screen.exact_costs` takes them: calls of 2^20 pairs.
    ``pair_dots_in_order``: the pairs in the order given, not grouped by B's rows (as before
    session 23); ``numpy``: gathered float64 rows."""
    step = 1 << 14 if provider == "numpy" else 1 << 20
    out = np.empty(len(rows))
    for s in range(0, len(rows), step):
        r, c = rows[s : s + step], cols[s : s + step]
        if provider == "numpy":
            out[s : s + step] = np.einsum("td,td->t", A[r].astype(np.float64), B[c].astype(np.float64))
        else:
            out[s : s + step] = _auction.pair_dots(A, B, r, c, threads=torch.get_num_threads(),
                                                   grouped=provider == "pair_dots")
    return out


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("provider", PAIR_PROVIDERS)
def test_exact_pair_dots(benchmark, provider: str, n: int) -> None:
    """The screened path's exact costs (a float64 dot per candidate arc): pair_dots against the
    same pairs in the given order (not grouped by B's rows) and numpy (the peer, up to
    MECHPERM_BENCH_PEER_MAX_N = 4096 rows by default: it gathers 37 KB a pair)."""
    if provider == "numpy" and n > PEER_MAX_N:
        pytest.skip(f"numpy peer above MECHPERM_BENCH_PEER_MAX_N={PEER_MAX_N}")
    A, B, rows, cols = pair_setup(n)
    res = benchmark.pedantic(lambda: run_pairs(provider, A, B, rows, cols), rounds=2, iterations=1)
    ref = run_pairs("pair_dots_in_order", A, B, rows[:50000], cols[:50000])
    if provider == "numpy":
        assert np.allclose(res[:50000], ref, rtol=1e-12, atol=1e-9)
    else:
        assert np.array_equal(res[:50000], ref)
    benchmark.extra_info.update(pairs=len(rows), threads=torch.get_num_threads())


def main() -> None:
    """Interleaved min-of-N timings (robust to a shared machine) and the candidates/mm ratio."""
    rows = []
    for device in _devices():
        for n in SIZES:
            A, B = setup(n, device)
            out = torch.empty(n, n, device=device)
            reps = 3 if n <= 4096 else 1
            provs = [p for p in PROVIDERS if _runs_here(p, device)]
            best = {p: float("inf") for p in provs}
            for _ in range(reps):
                for p in provs:  # interleaved, so background load hits every provider alike
                    _sync(device)
                    t = time.perf_counter()
                    run(p, A, B, out)
                    _sync(device)
                    best[p] = min(best[p], time.perf_counter() - t)
            flops = 2.0 * n * n * D
            for p, t in best.items():
                rows.append(dict(device=device, n=n, d=D, provider=p, seconds=t, tflops=flops / t / 1e12,
                                 ratio_to_mm=t / best["mm"], threads=torch.get_num_threads()))
                print(f"{device:4s} F={n:6d} {p:22s} {t:8.3f} s  {flops / t / 1e12:7.3f} TFLOP/s  "
                      f"{t / best['mm']:5.2f}x mm", file=sys.stderr)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
