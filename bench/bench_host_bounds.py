"""The exact loop's host passes at scale: the bounds' sorts, its lower bounds, a native pass.

    python bench/bench_host_bounds.py 1048576 [--json out.json]     # table on stderr
    python -m pytest bench/bench_host_bounds.py -q                    # MECHPERM_BENCH_MAX_N caps F

On a GPU run these passes are the host's share of the time (F = 1M on an H100 host: bounds
2.3-3.2 s of a 41-46 s match in session 11). Inputs are synthetic, shaped like a screened
candidate graph's bound arrays (lognormal norms, k-th costs near |a|² + median |b|²), so the
numbers are the passes' cost, not a real graph's round count. Peers: numpy's stable argsort and
searchsorted (what the bounds used before), the loop's bounds with those sorts (``numpy
sorts``), scipy's maximum_bipartite_matching for ``max_matching`` (and, on a planted graph in
column order, its greedy start from the cheapest column against the first free one); a cold
``solve_sparse`` of a planted graph at 1 thread and at every core, and of a heavy-tailed one
where the auction runs (up to 65536: against scipy's ``min_weight_full_bipartite_matching``,
objectives reported), and the exact loop's first
solve with a maximum matching up front (before session 17) against the solve alone
(``check_feasible="lazy"``); a pricing round's merge into the graph, in place, against scipy
adding the two as CSR matrices, and the loop's first merge into fresh arrays against arrays
made ahead (``_ArcBuffer.reserve``), and the parallel path's second merge likewise; one lower
envelope (``envelope_min``; up to 2^17 also with its queries' order given), and a pricing
round's ``csr_find``, at 1 thread and at every core; the rows given arcs by marks
(``assign._distinct``) against ``np.unique``; the thread pool's effect as the time of one
small native pass (``csr_margins``, 16384 rows x 16 arcs) at 1 thread and at every core.
Benchmarks never assert speed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pytest

from conftest import sizes

from mechperm import _auction, assign

THREADS = os.cpu_count() or 1


def bound_graph(n: int, seed: int = 0) -> tuple[assign.CandidateGraph, np.ndarray, np.ndarray]:
    """(graph with every bound family, u, v) at n = m rows and columns, four arcs a row."""
    rng = np.random.default_rng(seed)
    y, x = np.exp(rng.standard_normal(n)), np.exp(rng.standard_normal(n))
    kth_r, kth_c = y**2 + np.median(x) ** 2 - 0.1, x**2 + np.median(y) ** 2 - 0.1
    g = assign.CandidateGraph(
        indptr=np.arange(n + 1, dtype=np.int64) * 4, indices=rng.integers(0, n, 4 * n).astype(np.int32),
        costs=rng.random(4 * n).astype(np.float32), row_bound=kth_r, col_bound=kth_c,
        row_offset=-0.01 * np.maximum(y - 1, 0), col_offset=-0.01 * np.maximum(x - 1, 0), row_norm=y, col_norm=x,
        row_cos=0.08 + 0.01 * rng.random(n), col_cos=0.08 + 0.01 * rng.random(n), col_base=kth_c - 0.01,
        col_slope=0.004 * x)
    u = 0.5 * y**2 + 0.01 * rng.standard_normal(n)
    v = 0.5 * x**2 + 0.01 * rng.standard_normal(n)
    return g, u, v


def _numpy_sorts(monkeypatch_like) -> None:
    monkeypatch_like(assign, "_argsort", lambda x: np.argsort(x, kind="stable"))
    monkeypatch_like(assign, "_searchsorted", lambda s, q: np.searchsorted(s, q, side="left"))


def _timed(f, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(F: int, emit) -> None:
    rng = np.random.default_rng(1)
    x, q = rng.random(F), rng.random(F)
    s = np.sort(x)
    for name, threads, ours, peer in (
        ("argsort", THREADS, lambda: _auction.argsort(x, threads=THREADS), lambda: np.argsort(x, kind="stable")),
        # a small graph's bound sorts take one thread each, side by side (assign._bound_sorts)
        ("argsort", 1, lambda: _auction.argsort(x, threads=1), lambda: np.argsort(x, kind="stable")),
        ("searchsorted", THREADS, lambda: _auction.searchsorted(s, q, threads=THREADS),
         lambda: np.searchsorted(s, q, side="left")),
    ):
        t, tp = _timed(ours), _timed(peer)
        emit(what=name, F=F, threads=threads, seconds=t, numpy_seconds=tp, ratio=t / tp)
    g, u, v = bound_graph(F)
    saved = assign._argsort, assign._searchsorted
    for label in ("native sorts", "numpy sorts"):
        if label == "numpy sorts":
            _numpy_sorts(setattr)
        try:
            cache: dict = {}
            first = _timed(lambda: assign._lower_bounds(g, u, v, cache.clear() or cache), repeat=2)
            assign._lower_bounds(g, u, v, cache)
            later = _timed(lambda: assign._lower_bounds(g, u, v, cache))
        finally:
            assign._argsort, assign._searchsorted = saved
        emit(what="lower_bounds " + label, F=F, threads=assign._threads(), first_call=first, later_call=later)
    # one lower envelope (F lines, F queries: the Euclidean bound's), its lines' hulls built in
    # blocks on the threads since session 18
    keep = 1.0 - assign._EUCLID_SLACK
    env_w, env_s, by_x = keep * g.col_norm**2 - v, 2.0 * g.row_norm * g.row_cos, np.argsort(g.col_norm, kind="stable")
    env = {t: _timed(lambda: _auction.envelope_min(env_w, g.col_norm, env_s, by_slope=by_x, threads=t))
           for t in sorted({1, THREADS})}
    emit(what="envelope_min", F=F, threads=THREADS, one_thread_seconds=env[1], seconds=env[THREADS],
         ratio=env[THREADS] / env[1])
    # as the exact loop asks it since session 22 (1024 to 2^17 rows): the queries' order given
    # (cached per graph), walked along the hull; peer: the same call without it (a binary
    # search each, the same answers bit for bit)
    if F <= _auction.ENVELOPE_WALK_MAX_QUERIES:
        by_s = np.argsort(env_s, kind="stable")
        walked = _timed(lambda: _auction.envelope_min(env_w, g.col_norm, env_s, by_slope=by_x, by_query=by_s,
                                                      threads=THREADS))
        emit(what="envelope_min, the queries' order given", F=F, threads=THREADS, seconds=walked,
             searched_seconds=env[THREADS], ratio=walked / env[THREADS])
    del env_w, env_s, by_x
    # the feasibility check (a maximum matching: the exact loop's before an auction phase, and
    # match._complete's) on a random graph, 32 arcs a row (harder than a candidate graph, whose
    # greedy start leaves few rows free)
    deg = 32
    ip = np.arange(F + 1, dtype=np.int64) * deg
    ix = np.sort(rng.integers(0, F, (F, deg)).astype(np.int32), axis=1).reshape(-1)
    t = _timed(lambda: _auction.max_matching(ip, ix, F, F), repeat=2)
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    M = csr_matrix((np.ones(len(ix), dtype=bool), ix, ip), shape=(F, F))
    tp = _timed(lambda: maximum_bipartite_matching(M, perm_type="column"), repeat=1)
    emit(what="max_matching random x32", F=F, seconds=t, scipy_seconds=tp, ratio=t / tp)
    del ip, ix, M
    # a candidate-like graph: each row's partner (its cheapest arc) among 64, listed in column
    # order as the kernels list them; the greedy start from the first free column, or from the
    # cheapest (costs=, what the exact loop and match._complete pass)
    deg = 64
    perm = rng.permutation(F).astype(np.int32)
    cols = np.concatenate([perm[:, None], rng.integers(0, F, (F, deg - 1)).astype(np.int32)], axis=1)
    costs = np.concatenate([np.zeros((F, 1), np.float32), 1.0 + rng.random((F, deg - 1), dtype=np.float32)], axis=1)
    order = np.argsort(cols, axis=1, kind="stable")
    ip = np.arange(F + 1, dtype=np.int64) * deg
    ix = np.take_along_axis(cols, order, 1).reshape(-1)
    cx = np.take_along_axis(costs, order, 1).reshape(-1)
    del cols, costs, order
    t_first = _timed(lambda: _auction.max_matching(ip, ix, F, F), repeat=2)
    t_cheap = _timed(lambda: _auction.max_matching(ip, ix, F, F, costs=cx), repeat=2)
    emit(what="max_matching planted x64", F=F, first_free_seconds=t_first, cheapest_seconds=t_cheap,
         ratio=t_cheap / t_first)
    del ip, ix, cx
    # a cold solve of a planted graph (each row's partner, the cheapest of its arcs, among 31
    # random columns): the solver's first passes over every arc, then a few shortest paths (the
    # bench pair's real graph at 65536: 508 paths for 65536 rows)
    deg = 32
    ip = np.arange(F + 1, dtype=np.int64) * deg
    cols = np.concatenate([rng.permutation(F)[:, None], rng.integers(0, F, (F, deg - 1))], 1)
    w = np.concatenate([0.5 * rng.random((F, 1)), 1.0 + rng.random((F, deg - 1))], 1)
    order = np.argsort(cols, axis=1, kind="stable")
    ix = np.take_along_axis(cols, order, 1).reshape(-1).astype(np.int32)
    w = np.take_along_axis(w, order, 1).reshape(-1).astype(np.float32)
    for t in sorted({1, THREADS}):
        sec = _timed(lambda: _auction.solve_sparse(ip, ix, w, F, F, threads=t, check_feasible=False), repeat=2)
        emit(what="solve_sparse cold planted x32", F=F, threads=t, seconds=sec)
    # the exact loop's first solve with its feasibility: a maximum matching up front, then the
    # solve (before session 17), against the solve alone, whose shortest paths prove it (lazy)
    eager = _timed(lambda: (_auction.max_matching(ip, ix, F, F, costs=w),
                            _auction.solve_sparse(ip, ix, w, F, F, threads=THREADS, check_feasible=False)), repeat=2)
    lazy = _timed(lambda: _auction.solve_sparse(ip, ix, w, F, F, threads=THREADS, check_feasible="lazy"), repeat=2)
    emit(what="first solve planted x32, feasibility", F=F, threads=THREADS, matching_then_solve=eager,
         lazy_seconds=lazy, ratio=lazy / eager)
    del ip, ix, w, cols, order
    # a cold solve where the auction runs (shortest paths alone give up): heavy-tailed costs
    # without a clear partner per row, 64 arcs a row (the make_stack pair's graph at 16384:
    # 11 auction phases, 650k bids, each a scan of a row). Peer: scipy's sparse LAPJV
    # (min_weight_full_bipartite_matching), the same graph, objective checked; up to 65536
    if F <= 65536:
        from scipy.sparse.csgraph import min_weight_full_bipartite_matching

        deg = 64
        ip = np.arange(F + 1, dtype=np.int64) * deg
        cols = np.concatenate([rng.permutation(F)[:, None], rng.integers(0, F, (F, deg - 1))], 1)
        cols.sort(axis=1)
        keep = np.concatenate([np.ones((F, 1), bool), cols[:, 1:] != cols[:, :-1]], 1)  # no parallel arcs
        ip = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int64)
        ix = cols[keep].astype(np.int32)
        w = np.exp(1.5 * rng.standard_normal(len(ix))).astype(np.float32)
        for t in sorted({1, THREADS}):
            sec = _timed(lambda: _auction.solve_sparse(ip, ix, w, F, F, threads=t, check_feasible="lazy"), repeat=2)
            raw = _auction.solve_sparse(ip, ix, w, F, F, threads=t, check_feasible="lazy")
            emit(what="solve_sparse cold heavy-tailed x64 (auction)", F=F, threads=t, seconds=sec,
                 bids=int(raw["bids"]), phases=int(raw["phases"]))
        M = csr_matrix((w.astype(np.float64), ix, ip), shape=(F, F))
        t0 = time.perf_counter()
        c = min_weight_full_bipartite_matching(M)[1]
        tp = time.perf_counter() - t0
        got = np.asarray(raw["row_to_col"])
        obj = lambda perm: float(np.asarray(M[np.arange(F), perm]).sum())  # noqa: E731
        emit(what="solve_sparse cold heavy-tailed x64 vs scipy LAPJVsp", F=F, threads=THREADS, seconds=sec,
             scipy_seconds=tp, ratio=sec / tp, objective=obj(got), scipy_objective=obj(c))
        del ip, ix, w, cols, keep, M
    # a pricing round's merge: 64 new arcs a row for 1/32 of the rows (priced rows 1M: 41514 in 3
    # rounds), in column-random order, into 64 arcs a row, in place with room left (the exact
    # loop's _ArcBuffer); peer: scipy adding the two as CSR matrices (it sums duplicates where
    # the merge keeps the graph's arc, but merges the same sorted structures)
    deg = 64
    ip = np.arange(F + 1, dtype=np.int64) * deg
    ix = np.sort(rng.integers(0, F, (F, deg)).astype(np.int32), axis=1).reshape(-1)
    w = rng.random(F * deg, dtype=np.float32)
    pr = np.repeat(np.sort(rng.choice(F, F // 32, replace=False)), 64)
    pc, pw = rng.integers(0, F, len(pr)), rng.random(len(pr), dtype=np.float32)
    room_i, room_w = np.zeros(len(ix) + len(pr), np.int32), np.zeros(len(ix) + len(pr), np.float32)

    def merge() -> None:
        room_i[:len(ix)], room_w[:len(ix)] = ix, w
        _auction.csr_insert_inplace(ip.copy(), room_i, room_w, pr, pc, pw, threads=THREADS)

    # the pricing round's other host passes over its pairs: which are arcs already (csr_find, on
    # the threads since session 18), and the rows given arcs (marks against numpy's unique)
    find = {t: _timed(lambda: _auction.csr_find(ip, ix, pr, pc, threads=t)) for t in sorted({1, THREADS})}
    emit(what="csr_find x64, 1/32 of the rows x64", F=F, threads=THREADS, one_thread_seconds=find[1],
         seconds=find[THREADS], ratio=find[THREADS] / find[1])
    t, tp = _timed(lambda: assign._distinct(pr, F)), _timed(lambda: np.unique(pr))
    emit(what="distinct rows of the priced pairs", F=F, pairs=len(pr), seconds=t, numpy_seconds=tp, ratio=t / tp)
    copy = _timed(lambda: (room_i.__setitem__(slice(len(ix)), ix), room_w.__setitem__(slice(len(ix)), w)))
    t = _timed(merge) - copy
    G, N = csr_matrix((w, ix, ip), shape=(F, F)), csr_matrix((pw, (pr, pc)), shape=(F, F))
    tp = _timed(lambda: G + N, repeat=2)
    emit(what="merge x64 + 1/32 of the rows x64", F=F, new_arcs=len(pr), seconds=t, scipy_seconds=tp, ratio=t / tp)
    del room_i, room_w, G, N
    # the exact loop's first merge (_ArcBuffer): into arrays it allocates then (their first-touch
    # page faults inside the merge), or into arrays its reserve made during the first solve
    g = assign.CandidateGraph(ip, ix, w)
    first = {}
    for label in ("fresh", "reserved", "fresh", "reserved"):
        buf = assign._ArcBuffer(THREADS)
        if label == "reserved":
            buf.reserve(g)
            if buf._reserving is not None:
                buf._reserving.join()
        t0 = time.perf_counter()
        buf.merge(g, pr, pc, pw, F)
        first[label] = min(first.get(label, np.inf), time.perf_counter() - t0)
        del buf
    emit(what="first merge x64 + 1/32 x64", F=F, threads=THREADS, fresh_seconds=first["fresh"],
         reserved_seconds=first["reserved"], ratio=first["reserved"] / first["fresh"])
    # the parallel merges (4+ threads, a GPU host's path): the second writes the other set of
    # arrays, allocated then, or prepared on a thread after the first merge
    second = {}
    for label in ("fresh", "prepared", "fresh", "prepared"):
        buf = assign._ArcBuffer(max(4, THREADS))
        if label == "fresh":
            buf._prepare_spare = lambda *a: None
        h = buf.merge(g, pr, pc, pw, F)
        buf._join()
        t0 = time.perf_counter()
        buf.merge(h, pr[::2], (pc[::2] + 1) % F, pw[::2], F)
        second[label] = min(second.get(label, np.inf), time.perf_counter() - t0)
        del buf, h
    emit(what="second parallel merge", F=F, threads=max(4, THREADS), fresh_seconds=second["fresh"],
         prepared_seconds=second["prepared"], ratio=second["prepared"] / second["fresh"])
    del ip, ix, w, pr, pc, pw, g
    n, deg = 16384, 16
    indptr = np.arange(n + 1, dtype=np.int64) * deg
    indices = np.sort(rng.integers(0, n, (n, deg)).astype(np.int32), axis=1).reshape(-1)
    costs, r2c = rng.random(n * deg).astype(np.float32), rng.permutation(n).astype(np.int64)
    un, vn = rng.random(n), rng.random(n)
    for t in sorted({1, 2, THREADS}):
        f = lambda: [_auction.csr_margins(indptr, indices, costs, r2c, un, vn, threads=t) for _ in range(100)]  # noqa: E731
        emit(what="csr_margins 16384x16", threads=t, us_per_call=_timed(f) / 100 * 1e6)


@pytest.mark.parametrize("F", sizes(16384, 262144, 1048576) or [16384])
def test_host_bounds(benchmark, F: int) -> None:
    rows: list = []
    benchmark.pedantic(lambda: measure(F, lambda **kw: rows.append(kw)), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("F", type=int, nargs="?", default=1 << 20)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows: list = []

    def emit(**kw) -> None:
        rows.append(kw)
        print(" ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in kw.items()), file=sys.stderr,
              flush=True)

    measure(args.F, emit)
    if args.json:
        model = ""
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
        with open(args.json, "w") as f:
            json.dump({"machine": f"{model} ({os.cpu_count()} cores)", "date": time.strftime("%Y-%m-%d"), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
