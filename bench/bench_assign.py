"""Assignment solvers side by side on the same inputs: mechperm, scipy, lap.lapjv, OR-Tools.

    python -m pytest bench/bench_assign.py -q                       # quick: n <= 4096
    MECHPERM_BENCH_MAX_N=65536 MECHPERM_BENCH_PEER_MAX_N=8192 \\
        python -m pytest bench/bench_assign.py -q --benchmark-json=runs/bench_assign.json

Benchmarks never assert speed; they check that every provider reaches mechperm's objective
(OR-Tools solves integer-rounded costs, so it may land a hair above) and record objectives, gaps
and peak memory in ``extra_info``. Each solve runs once (rounds=1): the large ones take minutes.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import time

import numpy as np
import pytest

from conftest import PEER_MAX_N, dense_problem, record, sizes
from mechperm.assign import assign, assign_exact

PROVIDERS = ["mechperm", "scipy", "lapjv", "ortools"]


def solve_mechperm(c: np.ndarray) -> np.ndarray:
    return assign(c).row_to_col


def solve_scipy(c: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(c)[1]


def solve_lapjv(c: np.ndarray) -> np.ndarray:
    lap = pytest.importorskip("lap")
    return lap.lapjv(c)[1]


def solve_ortools(c: np.ndarray) -> np.ndarray:
    """Integer costs, as the public SAE-Match re-implementation feeds OR-Tools: round(c * scale)
    with scale 1000 for squared distances, reduced if the sum could overflow int64."""
    lsa = pytest.importorskip("ortools.graph.python.linear_sum_assignment")
    n = c.shape[0]
    tails = np.repeat(np.arange(n, dtype=np.int32), n)
    heads = np.tile(np.arange(n, dtype=np.int32), n)
    scale = 1000.0
    while True:  # OR-Tools refuses costs whose scaled sums could overflow: shrink the scale
        a = lsa.SimpleLinearSumAssignment()
        a.add_arcs_with_cost(tails, heads, np.round(c.ravel() * scale).astype(np.int64))
        status = a.solve()
        if status == a.OPTIMAL:
            return np.array([a.right_mate(i) for i in range(n)])
        if status != a.POSSIBLE_OVERFLOW or scale < 1e-6:
            raise RuntimeError(f"OR-Tools status {status}")
        scale /= 10.0


SOLVERS = {"mechperm": solve_mechperm, "scipy": solve_scipy, "lapjv": solve_lapjv,
           "ortools": solve_ortools}


def prepared(provider: str, c32: np.ndarray) -> np.ndarray:
    # Same values for everyone; the peers get the float64 copy they would make anyway.
    return c32 if provider == "mechperm" else c32.astype(np.float64)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("kind", ["sae", "uniform", "planted"])
@pytest.mark.parametrize("n", sizes(1024, 4096, 8192, 16384))
def test_dense(benchmark, provider, kind, n):
    if provider != "mechperm" and n > PEER_MAX_N:
        pytest.skip(f"{provider} beyond MECHPERM_BENCH_PEER_MAX_N={PEER_MAX_N}")
    if provider == "ortools" and n > 4096:
        pytest.skip("OR-Tools needs the n^2 arcs as Python-side arrays (GBs beyond 4096)")
    c32 = dense_problem(kind, n)
    c = prepared(provider, c32)
    perm = benchmark.pedantic(SOLVERS[provider], args=(c,), rounds=1, iterations=1)
    objective = float(c32.astype(np.float64)[np.arange(n), perm].sum())
    benchmark.extra_info["objective"] = objective
    record((kind, n), provider, objective)
    ref = OBJ_REF.setdefault((kind, n), objective if provider == "mechperm" else None)
    if ref is not None and provider != "ortools":
        assert abs(objective - ref) <= 1e-9 * max(1.0, abs(ref))


OBJ_REF: dict = {}


def _peak_rss_gib() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sparse_child(F: int, d: int, k: int, queue) -> None:
    """Runs in a fresh process so that its peak RSS is the sparse pipeline's alone."""
    import torch

    from mechperm.synthetic import make_stack

    from mechperm import kernels

    stack = make_stack(2, d, F, seed=0, heavy_tail=2.5, dead_rate=0.0)
    a, b = (s.fold().W_dec.float().contiguous() for s in stack.saes)
    del stack
    t0 = time.perf_counter()
    g = kernels.solver_graph(kernels.candidates(a, b, k=k), a, b)
    res = assign_exact(F, F, g, kernels.row_pricer(a, b, 16))
    seconds = time.perf_counter() - t0
    rss = _peak_rss_gib()
    queue.put({"seconds": seconds, "objective": res.objective, "gap": res.gap,
               "certified": res.certified, "rounds": res.rounds, "n_edges": res.n_edges,
               "peak_rss_gib": rss, "timings": res.timings, "stats": res.stats,
               "torch_threads": torch.get_num_threads()})


@pytest.mark.parametrize("F", sizes(16384, 65536))
def test_sparse_exact_streamed(benchmark, F):
    """F x F exact assignment from a GEMM-streamed candidate graph (no dense matrix), d = 64,
    float32 costs from mechperm.kernels, k = 16, the pitfall's heavy tails: candidates, auction, bounds, pricing,
    warm restarts, certificate. Peak RSS of the child process is in extra_info."""
    pytest.importorskip("mechperm.synthetic")
    ctx = mp.get_context("spawn")

    def run() -> dict:
        q = ctx.Queue()
        p = ctx.Process(target=_sparse_child, args=(F, 64, 16, q))
        p.start()
        out = q.get()
        p.join()
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in out.items() if k not in ("timings", "stats")})
    benchmark.extra_info["timings"] = {k: round(v, 3) for k, v in out["timings"].items()}
    record(("sparse", F), "mechperm", out["objective"])
    assert out["certified"]
