"""End-to-end benchmark of ``match()``: two synthetic SAEs' weights → certified optimal matching.

Providers side by side on the same instance (``make_stack(2, d=2304, F=F, seed=0)``, folded
decoder rows, CPU):

- ``mm``: one bare GEMM of the same shape, ``torch.mm(A, B.T)`` (F×2304 · 2304×F) in float32,
  the goal's yardstick; beyond 16384 in row blocks of 2^28 outputs (the full 65536² output
  would be 16 GiB).
- ``mm_bf16``: the same GEMM on bfloat16 copies (oneDNN; 4x faster where the CPU has AVX-512
  BF16): the floor of what match() does where it screens in bf16 (kernels.screen); run where
  the CPU has AVX-512 BF16.
- ``mm_int8``: the same GEMM on int8 copies, ``torch._int_mm`` (oneDNN, int32 results): the
  floor where match() screens in int8 (a CPU with AVX-512 VNNI but not BF16); run there.
- ``match``: ``match(sae_a, sae_b)`` as a user calls it (dense path up to ``DENSE_LIMIT``).
- ``match_unscreened``: ``match()`` with ``MECHPERM_SCREEN=0``, where the default screens (a CPU
  with AVX-512 BF16 or VNNI): what the screen buys, in the same run.
- ``match_other``: ``match()`` forced onto the other path: sparse (``dense_limit=0``) where it
  would take the dense path, dense where it would take the sparse one and the matrix fits
  (F ≤ ``OTHER_DENSE_MAX_N`` = 16384: 1 GiB of float32 costs).
- ``naive``: numpy GEMM for the squared distances, then scipy's ``linear_sum_assignment``.

Goals (CPU): match ≤ 1.3× mm; ≥ 2× faster than naive at F = 16384 with the same objective (both
permutations scored in float64, Σ |a_i − b_perm(i)|²: each is optimal for its own float32
rounding of the costs, so they agree to float32 rounding, asserted 1e-6 relative and reported);
F = 65536 within 4 GB peak RSS, the two SAEs' own 2.4 GB included (``test_memory``: a fresh
process, VmHWM; "beyond the SAEs" is reported too).

    python -m pytest bench/bench_match.py -q                          # quick: F = 4096
    MECHPERM_BENCH_MAX_N=16384 MECHPERM_BENCH_THREADS=1 \\
        python -m pytest bench/bench_match.py -q --benchmark-json=runs/bench_match.json
    MECHPERM_BENCH_MAX_N=65536 MECHPERM_BENCH_PEER_MAX_N=16384 python -m pytest bench/bench_match.py
    python bench/bench_match.py      # interleaved min-of-N table on stderr, JSON on stdout

``MECHPERM_BENCH_MAX_N`` caps F (default 4096), ``MECHPERM_BENCH_PEER_MAX_N`` caps the naive
pipeline (scipy slows down by orders of magnitude on heavy-tailed instances, DESIGN.md),
``MECHPERM_BENCH_THREADS`` sets torch's and numpy's BLAS threads (on a shared machine, 1 thread
measures the algorithm rather than OpenMP barriers waiting for a descheduled core).
Benchmarks never assert speed.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import sys
import time
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import pytest
import torch

from conftest import PEER_MAX_N, record, sizes

from mechperm import _auction, kernels
from mechperm.kernels import screen
from mechperm.match import DENSE_LIMIT, match
from mechperm.synthetic import make_stack

D = 2304
SIZES = sizes(4096, 16384, 65536) or [int(os.environ.get("MECHPERM_BENCH_MAX_N", "4096"))]
PROVIDERS = ["mm", "mm_bf16", "mm_int8", "match", "match_unscreened", "match_other", "naive"]
FLOORS = {"mm_bf16": "bf16", "mm_int8": "int8"}
MATCHES = ("match", "match_unscreened", "match_other")
OTHER_DENSE_MAX_N = 16384
MEMORY_LIMIT = 4e9
"""Peak RSS in bytes of a process holding two F = 65536 SAEs and matching them (the goal)."""
THREADS = int(os.environ["MECHPERM_BENCH_THREADS"]) if os.environ.get("MECHPERM_BENCH_THREADS") else None
if THREADS:
    torch.set_num_threads(THREADS)
_MM_BLOCK = 1 << 28  # outputs per GEMM call: 1 GiB of float32

RESULTS: dict[tuple[int, str], dict] = {}
"""(F, provider) -> seconds, objective, perm, ...; ratios and cross-checks read it."""


# ---------------------------------------------------------------------------------- setup
def _blas_threads():
    """Limit numpy's BLAS (scipy's too) to MECHPERM_BENCH_THREADS, like torch's."""
    if not THREADS:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scipy's test deps
        return nullcontext()
    return threadpool_limits(THREADS)


@lru_cache(maxsize=1)
def instance(F: int):
    """(sae_a, sae_b, A, B): two consecutive layers and their folded decoder rows [F, D]."""
    stack = make_stack(2, d=D, F=F, seed=0)
    a, b = stack.saes
    return a, b, kernels.matching_vectors(a), kernels.matching_vectors(b)


def sae_bytes(*saes) -> int:
    return sum(t.numel() * t.element_size() for s in saes
               for t in (s.W_enc, s.b_enc, s.W_dec, s.b_dec, s.threshold) if t is not None)


def _status(key: str) -> int:
    """Bytes of a /proc/self/status field (VmHWM: peak RSS, VmRSS: current)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------- providers
def run_mm(A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    rows = max(1, _MM_BLOCK // B.shape[0])
    for r0 in range(0, A.shape[0], rows):
        blk = A[r0 : r0 + rows]
        torch.mm(blk, B.T, out=out[: blk.shape[0]])


def mm_buffer(F: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(min(F, max(1, _MM_BLOCK // F)), F, dtype=dtype)


@lru_cache(maxsize=1)
def bf16_copies(F: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, A, B = instance(F)
    return A.bfloat16(), B.bfloat16()


@lru_cache(maxsize=1)
def int8_copies(F: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows scaled to [-127, 127] and rounded (the int8 screen's codes, up to ties)."""
    _, _, A, B = instance(F)
    return tuple((X * (127 / X.abs().amax(1, keepdim=True).clamp_min(1e-30))).round().to(torch.int8) for X in (A, B))


def floor() -> str | None:
    """The low-precision GEMM match() screens with on this CPU (its floor), or None."""
    return next((p for p, kind in FLOORS.items() if _auction.screen_has_fast_kernel(kind)), None)


def run_floor(provider: str, A: torch.Tensor, B: torch.Tensor, out: torch.Tensor) -> None:
    if provider == "mm_bf16":
        run_mm(A, B, out)
        return
    rows = max(1, _MM_BLOCK // B.shape[0])
    for r0 in range(0, A.shape[0], rows):
        blk = A[r0 : r0 + rows]
        torch._int_mm(blk, B.T, out=out[: blk.shape[0]])


def floor_operands(provider: str, F: int):
    """(A, B, out) of a floor provider."""
    X, Y = bf16_copies(F) if provider == "mm_bf16" else int8_copies(F)
    return X, Y, mm_buffer(F, torch.bfloat16 if provider == "mm_bf16" else torch.int32)


def run_match(sae_a, sae_b, provider: str = "match"):
    """match() as a user calls it, without the screen, or forced onto the path it would not take."""
    if provider == "match_unscreened":
        old = os.environ.get("MECHPERM_SCREEN")
        os.environ["MECHPERM_SCREEN"] = "0"
        try:
            return match(sae_a, sae_b)
        finally:
            if old is None:
                del os.environ["MECHPERM_SCREEN"]
            else:
                os.environ["MECHPERM_SCREEN"] = old
    if provider == "match":
        return match(sae_a, sae_b)
    n = sae_a.d_sae * sae_b.d_sae
    return match(sae_a, sae_b, dense_limit=0 if n <= DENSE_LIMIT else n)


def screens(F: int) -> bool:
    """Whether ``match`` screens this instance (else ``match_unscreened`` is not run)."""
    _, _, A, B = instance(F)
    return screen.kind(A, B, dense=F * F <= DENSE_LIMIT) is not None


def skipped(provider: str, F: int) -> str | None:
    """Why a provider is not run at F, or None."""
    if provider == "match_other" and other_path(F) is None:
        return f"the dense path beyond F = {OTHER_DENSE_MAX_N}"
    if provider == "match_unscreened" and not screens(F):
        return "match() does not screen here: match_unscreened is match"
    if provider == "naive" and F > PEER_MAX_N:
        return f"naive beyond MECHPERM_BENCH_PEER_MAX_N={PEER_MAX_N}"
    if provider in FLOORS and provider != floor():
        return f"{provider} is not the floor of match() on this CPU"
    return None


def other_path(F: int) -> str | None:
    """The path ``match_other`` takes at F (None: not run)."""
    if F * F <= DENSE_LIMIT:
        return "sparse"
    return "dense" if F <= OTHER_DENSE_MAX_N else None


def naive_costs(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """What one writes with numpy: |a|² + |b|² − 2 a·b (float32, in place, clamped at 0)."""
    C = A @ B.T
    C *= -2.0
    C += np.einsum("ij,ij->i", A, A)[:, None]
    C += np.einsum("ij,ij->i", B, B)[None, :]
    return np.maximum(C, 0.0, out=C)


def run_naive(A: np.ndarray, B: np.ndarray) -> dict:
    from scipy.optimize import linear_sum_assignment

    with _blas_threads():
        t0 = time.perf_counter()
        C = naive_costs(A, B)
        t1 = time.perf_counter()
        rows, cols = linear_sum_assignment(C)
        t2 = time.perf_counter()
    perm = np.full(A.shape[0], -1, np.int64)
    perm[rows] = cols
    return {"C": C, "perm": perm, "gemm_s": t1 - t0, "lsa_s": t2 - t1}


def scored(C: np.ndarray, perm: np.ndarray) -> float:
    """float64 sum of C over the matched pairs of perm."""
    ok = perm >= 0
    return float(C[np.flatnonzero(ok), perm[ok]].astype(np.float64).sum())


def exact_objective(A: torch.Tensor, B: torch.Tensor, perm: np.ndarray) -> float:
    """Σ |a_i − b_perm(i)|² in float64: the objective of a permutation, free of any GEMM's rounding."""
    ok = np.flatnonzero(perm >= 0)
    diff = A[ok].double() - B[perm[ok]].double()
    return float((diff * diff).sum())


OBJECTIVE_RTOL = 1e-6
"""Permutations optimal for two float32 roundings of the same costs: their exact objectives
agree to float32 rounding (worst case ~1e-7 per pair, relative)."""


def match_info(res) -> dict:
    return {
        "objective": res.objective, "gap": res.gap, "certified": res.certified,
        "rounds": res.stats.get("rounds"), "edges": res.stats.get("edges"), "screen": res.stats.get("screen"),
        "candidate_edges": res.stats.get("candidate_edges"),
        "timings": {k: round(v, 3) for k, v in res.timings.items()},
    }


# ---------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("F", SIZES)
def test_match(benchmark, F: int, provider: str) -> None:
    if (why := skipped(provider, F)) is not None:
        pytest.skip(why)
    sae_a, sae_b, A, B = instance(F)
    info: dict = {"F": F, "d": D, "threads": torch.get_num_threads()}
    times: list[float] = []

    def timed(fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t0)
        return out

    if provider == "mm" or provider in FLOORS:
        X, Y, out = (A, B, mm_buffer(F)) if provider == "mm" else floor_operands(provider, F)
        run = run_mm if provider == "mm" else (lambda x, y, o: run_floor(provider, x, y, o))
        benchmark.pedantic(timed, args=(run, X, Y, out), rounds=3 if F <= 4096 else 1, iterations=1)
        del out
    elif provider in MATCHES:
        reset = _reset_peak()
        rss0 = _status("VmRSS")
        res = benchmark.pedantic(timed, args=(run_match, sae_a, sae_b, provider), rounds=1, iterations=1)
        default = "dense" if F * F <= DENSE_LIMIT else "sparse"
        info.update(match_info(res), path=other_path(F) if provider == "match_other" else default)
        if reset:  # in-process: what match() added on top of what the benchmark holds
            info["peak_added_gb"] = (_status("VmHWM") - rss0) / 1e9
        info["perm"] = res.perm.numpy()
        record(("match", F), provider, res.objective)
        assert res.certified
    else:
        out = benchmark.pedantic(timed, args=(run_naive, A.numpy(), B.numpy()), rounds=1, iterations=1)
        info.update(gemm_s=out["gemm_s"], lsa_s=out["lsa_s"], objective=scored(out["C"], out["perm"]))
        ref = RESULTS.get((F, "match")) or RESULTS.get((F, "match_other"))
        perm = ref["perm"] if ref else match(sae_a, sae_b).perm.numpy()
        info["match_objective_on_naive_costs"] = scored(out["C"], perm)
        info["exact_objective_naive"] = theirs = exact_objective(A, B, out["perm"])
        info["exact_objective_match"] = ours = exact_objective(A, B, perm)
        info["objective_rel_diff"] = rel = (ours - theirs) / abs(theirs)
        if ref:
            info["match_speedup"] = min(times) / ref["seconds"]
        record(("match", F), "naive", info["objective"])
        assert abs(rel) <= OBJECTIVE_RTOL, (ours, theirs)
    info["seconds"] = min(times)
    RESULTS[(F, provider)] = info
    mm = RESULTS.get((F, "mm"))
    if mm is not None and provider != "mm":
        info["ratio_to_mm"] = info["seconds"] / mm["seconds"]
    naive = RESULTS.get((F, "naive"))
    for p in MATCHES:
        if naive is not None and (F, p) in RESULTS:
            RESULTS[(F, p)]["speedup_vs_naive"] = naive["seconds"] / RESULTS[(F, p)]["seconds"]
    benchmark.extra_info.update({k: v for k, v in info.items() if k != "perm"})


def _memory_child(F: int, threads: int | None, queue) -> None:
    """In a fresh process: build the SAEs, reset the peak, match, report VmHWM."""
    if threads:
        torch.set_num_threads(threads)
    a, b = make_stack(2, d=D, F=F, seed=0).saes
    reset = _reset_peak()
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    res = match(a, b)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "peak_rss": _status("VmHWM"), "rss_before": rss0, "peak_reset": reset,
               "sae_bytes": sae_bytes(a, b), **match_info(res)})


def measure_memory(F: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(F, THREADS, q))
    p.start()
    out = q.get()
    p.join()
    return out


@pytest.mark.parametrize("F", SIZES)
def test_memory(benchmark, F: int) -> None:
    """Peak RSS of a process that builds two SAEs and matches them (VmHWM, reset after the
    SAEs are built where the kernel allows it, so make_stack's temporaries do not count).
    The benchmark's time includes the process start and make_stack; the match alone is
    ``seconds`` in extra_info."""
    out = benchmark.pedantic(measure_memory, args=(F,), rounds=1, iterations=1)
    out["beyond_saes"] = out["peak_rss"] - out["sae_bytes"]
    benchmark.extra_info.update(out, threads=THREADS or torch.get_num_threads())
    assert out["certified"]
    if F >= 65536:
        assert out["peak_rss"] <= MEMORY_LIMIT, out


# ---------------------------------------------------------------------------------- table
def main() -> None:
    """Interleaved min-of-N timings (robust to a shared machine), ratios, objectives, memory."""
    rows = []
    for F in SIZES:
        sae_a, sae_b, A, B = instance(F)
        provs = [p for p in PROVIDERS if skipped(p, F) is None]
        reps = 3 if F <= 4096 else 1
        best = {p: float("inf") for p in provs}
        out = {}
        low = floor() if floor() in provs else None
        buf = mm_buffer(F)
        low_ops = floor_operands(low, F) if low else None
        for _ in range(reps):
            for p in provs:  # interleaved, so background load hits every provider alike
                t = time.perf_counter()
                if p == "mm":
                    run_mm(A, B, buf)
                elif p == low:
                    run_floor(p, *low_ops)
                elif p == "naive":
                    out[p] = run_naive(A.numpy(), B.numpy())
                else:
                    out[p] = run_match(sae_a, sae_b, p)
                best[p] = min(best[p], time.perf_counter() - t)
        del buf, low_ops
        bf16_copies.cache_clear()
        int8_copies.cache_clear()
        mem = measure_memory(F)
        row = {"F": F, "d": D, "threads": torch.get_num_threads(), "seconds": best,
               "peak_rss_gb": mem["peak_rss"] / 1e9, "sae_gb": mem["sae_bytes"] / 1e9,
               "beyond_saes_gb": (mem["peak_rss"] - mem["sae_bytes"]) / 1e9}
        for p in MATCHES:
            if p in out:
                row[p] = match_info(out[p])
                row[p]["path"] = other_path(F) if p == "match_other" else ("dense" if F * F <= DENSE_LIMIT else "sparse")
                row[p]["ratio_to_mm"] = best[p] / best["mm"]
                if low:
                    row[p][f"ratio_to_{low}"] = best[p] / best[low]
        if "naive" in out:
            theirs = exact_objective(A, B, out["naive"]["perm"])
            ours = exact_objective(A, B, out["match"].perm.numpy())
            row["naive"] = {"objective": scored(out["naive"]["C"], out["naive"]["perm"]),
                            "gemm_s": out["naive"]["gemm_s"], "lsa_s": out["naive"]["lsa_s"],
                            "exact_objective_naive": theirs, "exact_objective_match": ours,
                            "rel_diff": (ours - theirs) / abs(theirs),
                            "speedup_of_match": best["naive"] / best["match"]}
        rows.append(row)
        print(f"F={F:6d} threads={row['threads']}  mm {best['mm']:8.2f} s"
              + (f"  {low} {best[low]:8.2f} s" if low else ""), file=sys.stderr)
        for p in MATCHES:
            if p in row:
                r = row[p]
                to_low = f"{r[f'ratio_to_{low}']:5.2f}x {low}  " if low else ""
                print(f"   {p:16s} {r['path']:6s} {best[p]:8.2f} s  {r['ratio_to_mm']:5.2f}x mm  {to_low}"
                      f"gap {r['gap']:.1e}  certified {r['certified']}  rounds {r['rounds']}  edges {r['edges']}  "
                      f"screen {r['screen']}", file=sys.stderr)
        if "naive" in row:
            n = row["naive"]
            print(f"   naive         {best['naive']:8.2f} s  (gemm {n['gemm_s']:.2f} + lsa {n['lsa_s']:.2f})  "
                  f"match {n['speedup_of_match']:.2f}x faster  exact objectives rel diff {n['rel_diff']:.1e}",
                  file=sys.stderr)
        print(f"   peak RSS {row['peak_rss_gb']:.2f} GB (SAEs {row['sae_gb']:.2f} GB, beyond "
              f"{row['beyond_saes_gb']:.2f} GB)", file=sys.stderr)
        instance.cache_clear()
    json.dump(rows, sys.stdout, indent=1, default=float)


if __name__ == "__main__":
    main()
