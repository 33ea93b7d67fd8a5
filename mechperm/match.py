"""match(): turn two SAEs into an assignment problem on their (folded) parameters and solve it.

Small problems go through the dense cost matrix; large ones through the exact-from-sparse loop
(candidate graph → auction → certificate by pricing, DESIGN.md), which never holds more than a
tile of the F_a × F_b cost matrix. Both return the dense optimum with its certified gap.
"""
from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mechperm import _auction
from mechperm import assign as solver
from mechperm import kernels
from mechperm.formats._common import as_device
from mechperm.kernels import screen, screen_cuda
from mechperm.kernels.candidates import _check_vectors, check_kernel_device, norms_kept
from mechperm.kernels.features import On
from mechperm.kernels.rows import ScaledRows
from mechperm.result import MatchResult
from mechperm.sae import SAE

Metric = Literal["mse", "cosine"]
Mode = Literal["bijective", "partial", "topk", "identity"]

DENSE_LIMIT = 8192 * 8192
"""F_a · F_b up to which the dense cost matrix is built (256 MiB of float32). Measured on
``make_stack(2, d=2304, seed=0)``, CPU (AVX-512 BF16: both paths screened), 1 thread, dense vs
sparse end to end, two runs each (session 9): F = 8192 3.0 vs 3.45 s (heavy-tailed stack,
``heavy_tail=2.5``: 8.5 vs 5.4 s); F = 16384 11.4 vs 10.1-10.9 s (heavy-tailed: 44.1 vs 19.7 s;
unscreened, ``MECHPERM_SCREEN=0``: 19.2-20.5 vs 20.2-20.3 s), and the sparse path needs no
1 GiB matrix. (Session 1, before the screen: 16384 22.3 vs 38.4 s.) Beyond it the sparse path
holds O(F·k) plus a tile, whatever F."""
DENSE_LIMIT_CUDA = 1024 * 1024
"""The same on CUDA, where the GEMM is cheap and the CPU auction on the dense matrix (plus its
copy to the host) is what costs. Measured on an H200 (``bench/bench_match_gpu.py --crossover``,
d = 2304, dense vs sparse end to end): F = 1024 0.053 vs 0.046 s, 2048 0.137 vs 0.115 s,
4096 0.53 vs 0.27 s, 8192 1.93 vs 0.77 s. Dense is kept up to 1024² (within 15 %; it needs no
pricing rounds, and smaller F were not measured)."""
PRICE_PER_ROW = 128
"""Pairs of smallest reduced cost the sparse path's pricing returns per priced row (measured:
16 → 10 rounds, 64 → 6 at F = 4096; screened CPU path, ``make_stack`` d = 2304: F = 16384
64 → 128: 14 → 8 rounds, 12.1k → 8.5k priced rows, 18.3 → 16.8 s (256: 7 rounds, 18.0 s);
F = 65536: 13 → 11 rounds, 53.7k → 46.1k priced rows, 253.5 → 245.8 s)."""


def _check_options(sae_a: SAE, sae_b: SAE, on: str, metric: str, mode: str, k: int | None, threshold) -> None:
    if sae_a.d_in != sae_b.d_in:
        raise ValueError(
            f"cannot match SAEs of different widths: d={sae_a.d_in} ({sae_a.info.source or 'A'}) "
            f"vs d={sae_b.d_in} ({sae_b.info.source or 'B'})"
        )
    for name, value, choices in (("on", on, ("decoder", "encoder", "both")), ("metric", metric, ("mse", "cosine"))):
        if value not in choices:
            raise ValueError(f"{name}={value!r}: choose one of {choices}")
    _check_mode(mode, k, threshold)


def _check_mode(mode: str, k: int | None, threshold) -> None:
    if mode not in ("bijective", "partial", "topk", "identity"):
        raise ValueError(f"mode={mode!r}: choose one of ('bijective', 'partial', 'topk', 'identity')")
    if mode == "partial" and (threshold is None or not np.isfinite(threshold)):
        raise ValueError("mode='partial' needs a finite threshold: the cost of leaving a feature without counterpart")
    if mode == "topk" and (k is None or int(k) < 1):
        raise ValueError(f"mode='topk' needs k >= 1 (neighbours per feature); got k={k!r}")


def match(
    sae_a: SAE,
    sae_b: SAE,
    *,
    on: On = "decoder",
    fold: bool = True,
    metric: Metric = "mse",
    mode: Mode = "bijective",
    k: int | None = None,
    threshold: float | None = None,
    device: torch.device | str | None = None,
    candidates_k: int = 64,
    dense_limit: int | None = None,
    progress: bool = False,
) -> MatchResult:
    """Match the features of ``sae_a`` to those of ``sae_b`` from their weights alone.

    Parameters
    ----------
    sae_a, sae_b : SAE
        Two SAEs on the same residual width d (F may differ).
    on : {"decoder", "encoder", "both"}
        Parameters compared: folded decoder rows, folded encoder columns, or both with b_enc
        (the paper's "all weights").
    fold : bool
        Fold θ (JumpReLU) / decoder norms into the weights first (the method); False gives the
        unfolded baseline.
    metric : {"mse", "cosine"}
        Squared Euclidean distance of the vectors, or of the unit-normalised vectors
        (= 2 − 2·cosine: the scale-free baseline).
    mode : {"bijective", "partial", "topk", "identity"}
        ``"bijective"``: the optimal one-to-one assignment (every feature of the smaller SAE
        matched). ``"partial"``: bijective, but a feature may stay without counterpart at cost
        ``threshold``. ``"topk"``: each feature's ``k`` nearest features of B (many-to-one,
        ``perm`` is the nearest; ``neighbors`` holds all k). ``"identity"``: ``perm = arange``
        (the "vanilla" baseline), costs reported.
    k : int, optional
        Neighbours per feature for ``mode="topk"``.
    threshold : float, optional
        Cost of "no counterpart" for ``mode="partial"`` (in the metric's units).
    device : optional
        Where the cost kernels run (default: ``sae_a``'s device); the solver runs on the CPU.
    candidates_k : int
        Cheapest (and most cosine-similar) partners per row and per column in the sparse path
        (64: fewer rows fail the certificate's bounds than with 32, 12 % faster end to end at
        F = 8192 and 16384, d = 2304; the result does not depend on it).
    dense_limit : int, optional
        F_a · F_b up to which the dense cost matrix is used (default: ``DENSE_LIMIT`` on the
        CPU, ``DENSE_LIMIT_CUDA`` on CUDA).
    progress : bool
        Show a tqdm bar over the certificate's pricing rounds (sparse path).

    Returns
    -------
    MatchResult
        ``perm`` (int64 [F_a], -1 = no counterpart), per-pair ``cost`` / ``cosine`` /
        ``margin``, ``objective``, certified ``gap``, statistics and timings.
    """
    _check_options(sae_a, sae_b, on, metric, mode, k, threshold)
    t_start = time.perf_counter()
    device = as_device(device) if device is not None else sae_a.device
    check_kernel_device(device, "the matching vectors would be" if device != sae_a.device else "sae_a is",
                        "pass device='cpu' (the solver runs on the CPU either way)")
    A = B = None
    if on == "decoder" and metric == "mse":  # the SAEs' own decoders, rounded as read (no copies)
        A = kernels.decoder_rows(sae_a, fold=fold, device=device)
        B = kernels.decoder_rows(sae_b, fold=fold, device=device)
    if A is None or B is None:
        A = kernels.matching_vectors(sae_a, on=on, fold=fold, normalize=metric == "cosine", device=device)
        B = kernels.matching_vectors(sae_b, on=on, fold=fold, normalize=metric == "cosine", device=device)
    t_features = time.perf_counter() - t_start
    res = match_vectors(A, B, mode=mode, k=k, threshold=threshold, candidates_k=candidates_k,
                        dense_limit=dense_limit, progress=progress)
    res.options = dict(on=on, fold=fold, metric=metric, mode=mode, k=k, threshold=threshold,
                       candidates_k=candidates_k, device=str(device))
    if fold:
        res.stats["invalid_a"] = int(sae_a.invalid_features().sum())
        res.stats["invalid_b"] = int(sae_b.invalid_features().sum())
    res.timings = {"features": t_features, **res.timings, "total": time.perf_counter() - t_start}
    return res


def match_vectors(
    A: Tensor | ScaledRows,
    B: Tensor | ScaledRows,
    *,
    mode: Mode = "bijective",
    k: int | None = None,
    threshold: float | None = None,
    candidates_k: int = 64,
    dense_limit: int | None = None,
    progress: bool = False,
) -> MatchResult:
    """Match the rows of ``A`` to the rows of ``B`` by squared Euclidean distance: the engine
    behind :func:`match`, for callers that build their own vectors (another folding, another
    model's features; see :func:`kernels.matching_vectors`).

    Parameters
    ----------
    A, B : Tensor [F_a, D], [F_b, D], or :class:`~mechperm.kernels.ScaledRows`
        float32 / bfloat16 / float16 on one device (the cost kernels run there; Triton on CUDA).
        ``ScaledRows`` (a base matrix and a per-row scale, e.g. ``kernels.decoder_rows``) are
        read without a whole copy by the CPU's screened sparse path and built whole elsewhere.
    mode, k, threshold, candidates_k, dense_limit, progress
        As in :func:`match` (``mode="identity"`` pairs row i with row i).

    Returns
    -------
    MatchResult
        As :func:`match`; ``options`` holds the options given here.
    """
    _check_vectors(A, B)
    _check_mode(mode, k, threshold)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    Fa, Fb = A.shape[0], B.shape[0]
    options = dict(mode=mode, k=k, threshold=threshold, candidates_k=candidates_k, device=str(A.device))
    stats: dict = {"F_a": Fa, "F_b": Fb, "D": int(A.shape[1])}

    if dense_limit is None:
        dense_limit = DENSE_LIMIT_CUDA if A.device.type == "cuda" else DENSE_LIMIT
    sparse = mode in ("bijective", "partial") and Fa * Fb > dense_limit
    if not (sparse and (screen.available(A, B) or _reads_rows(A, B))):
        A, B = kernels.materialize(A), kernels.materialize(B)  # only the CPU's sparse paths read rows as needed

    # each tensor's squared norms computed once in this call (candidates, bounds, pricers and
    # pair values each asked for them)
    with norms_kept():
        neighbors = neighbor_costs = None
        margin = torch.full((Fa,), float("nan"))
        if mode == "identity":
            perm = torch.arange(Fa)
            perm[perm >= Fb] = -1
            objective, gap, certified = float("nan"), float("nan"), False
        elif mode == "topk":
            neighbor_costs, neighbors = _nearest(A, B, int(k))
            perm = neighbors[:, 0].clone()
            objective, gap, certified = float(neighbor_costs[:, 0].double().sum()), 0.0, True
            if neighbors.shape[1] > 1:
                margin = (neighbor_costs[:, 1] - neighbor_costs[:, 0]).float()
        else:
            lam = float(threshold) if mode == "partial" else None
            t0 = time.perf_counter()
            if Fa * Fb <= dense_limit:
                res, margin = _solve_dense(A, B, lam)
            else:
                res, margin, graph_stats = _solve_sparse(A, B, lam, candidates_k, progress)
                stats.update(graph_stats)
            timings["solve"] = time.perf_counter() - t0
            # The sparse path's parts (only the exact loop times pricing); "assign" is the loop's
            # time in the native solver, its "solve".
            parts = (("candidates", "candidates"), ("graph", "graph"), ("solve", "assign"), ("bounds", "bounds"),
                     ("pricing", "pricing")) if "pricing" in res.timings else (("candidates", "candidates"),)
            timings.update({name: res.timings[key] for key, name in parts if key in res.timings})
            perm = torch.from_numpy(res.row_to_col.astype(np.int64))
            objective, gap, certified = float(res.objective), float(res.gap), bool(res.certified)
            stats.update(rounds=res.rounds, edges=res.n_edges, solver=dict(res.stats),
                         screen=screen.kind(A, B, dense=Fa * Fb <= dense_limit))

        cost, cosine = _pair_values(A, B, perm)
    timings["total"] = time.perf_counter() - t_start
    return MatchResult(
        perm=perm, cost=cost, cosine=cosine, margin=margin, objective=objective, gap=gap,
        certified=certified, options=options, stats=stats, timings=timings,
        neighbors=neighbors, neighbor_costs=neighbor_costs,
    )


_COPY_LIMIT = 1 << 29
"""Bytes of folded copies of both sides above which the CPU's unscreened sparse path reads
:class:`~mechperm.kernels.ScaledRows` as it goes (F = 65536, d = 2304: 1.2 GB of copies, a
peak RSS of 4.98 GB with the SAEs against the 4 GB goal). Below, the copies are small and
spare the candidate pass scaling B's column blocks again for every row block (at 65536 that
cost no time measurable on a noisy 2-core VM: 234-254 s in place, 257-264 s with the copies,
one run each)."""


def _reads_rows(A: Tensor | ScaledRows, B: Tensor | ScaledRows) -> bool:
    """Whether the unscreened sparse path keeps ScaledRows (on the CPU, large copies)."""
    if not (isinstance(A, ScaledRows) or isinstance(B, ScaledRows)) or A.device.type != "cpu":
        return False
    return 4 * (A.shape[0] + B.shape[0]) * A.shape[1] > _COPY_LIMIT


def identity_match(sae_a: SAE, sae_b: SAE, **options) -> MatchResult:
    """The "vanilla" baseline: feature i ↔ feature i, with its costs (see :func:`match`)."""
    return match(sae_a, sae_b, mode="identity", **options)


# ---------------------------------------------------------------------- solvers
def _margins(row_to_col: np.ndarray, indptr: np.ndarray, cols, costs, u: np.ndarray, v: np.ndarray, n: int) -> Tensor:
    """Per row, the smallest reduced cost c_ij − u_i − v_j over its other arcs (inf if none;
    NaN where unassigned), at least 0: one threaded pass over the CSR graph in C++ (numpy's
    float64 temporaries over every arc took 74 ms at F = 65536, 10M arcs)."""
    out = _auction.csr_margins(np.ascontiguousarray(indptr, np.int64), np.ascontiguousarray(cols),
                               np.ascontiguousarray(costs), np.ascontiguousarray(row_to_col, np.int64),
                               np.ascontiguousarray(u, np.float64), np.ascontiguousarray(v, np.float64),
                               threads=torch.get_num_threads())
    return torch.from_numpy(out[:n]).float()


def _solve_dense(A: Tensor, B: Tensor, lam: float | None):
    kind = screen.kind(A, B, dense=True)
    if kind is not None:
        return _solve_screened(A, B, lam, kind)
    c = kernels.dense_costs(A, B).cpu().numpy()
    res = solver.assign(c, unmatched_cost=lam, method="dense")
    # One pass over c in C++ (a float64 copy of c here took 30 % of a GEMM's time at F = 4096).
    margin = _auction.dense_margins(c, res.row_to_col.astype(np.int64), res.u, res.v)
    return res, torch.from_numpy(np.maximum(margin, 0.0)).float()


def _solve_screened(A: Tensor, B: Tensor, lam: float | None, kind: str = "bf16"):
    """The dense path on screened costs (:mod:`mechperm.kernels.screen`, rounded to ``kind``):
    solve on the screened matrix, replace it by lower bounds on the exact costs, compute exact
    costs for the pairs those duals cannot rule out, re-solve; repeat while the optimum uses a
    pair that is not exact. Exact for the float64-dot costs of :func:`screen.exact_costs`."""
    transposed = A.shape[0] > B.shape[0] and lam is None
    if transposed:
        A, B = B, A
    n, m = A.shape[0], B.shape[0]
    t0 = time.perf_counter()
    sc = screen.screened_costs(A, B, kind=kind)
    t_cand = time.perf_counter() - t0
    lam_arr = None if lam is None else np.full(n, float(lam))
    raw = solver._dense_auction(sc.costs, lam_arr)
    # Exact costs move the duals by about the screen's error: a band of twice the typical error
    # at the optimum anticipates that (F = 4096: 22 re-solves with a band at 0, 1 with this).
    r2c = raw["row_to_col"]
    on = np.flatnonzero((r2c >= 0) & (r2c < m))
    tau = 2.0 * float(np.median(screen.error_bounds(sc, on, r2c[on]))) if len(on) else 0.0
    rows, cols = screen.lower_bounds(sc, raw["u"], raw["v"], tau)
    na, nb = sc.a_stats[3], sc.b_stats[3]
    A32, B32 = screen._float_rows(A), screen._float_rows(B)
    known = np.empty(0, np.int64)  # sorted linear indices of single pairs that hold exact costs
    whole = np.zeros(n, bool)  # rows made exact entirely
    # A row that needs many pairs (heavy-tailed norms widen its bound) is cheaper as a float64
    # GEMM row than as gathered pairs (make_stack heavy_tail=2.5, F = 4096: 222 pairs a row).
    many = max(64, m // 8)  # measured break-even: a pair costs ~1 us (a gather), a row ~m/8 of them

    def refine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        counts = np.bincount(r, minlength=n)
        full = np.flatnonzero((counts >= many) & ~whole)
        if len(full):
            sc.costs[full] = screen.exact_rows(A32, B32, full, na, nb)
            whole[full] = True
        keep = ~whole[r]
        r, c = r[keep], c[keep]
        sc.costs[r, c] = screen.exact_costs(A32, B32, r, c, na, nb)
        return np.union1d(known, r * m + c)

    known = refine(rows, cols)
    rounds = 1
    stats = {k: int(raw[k]) for k in ("phases", "bids", "reverse_bids", "augmentations")}
    while True:
        init_v, init_r2c, eps_start = solver._warm(raw, lam_arr, m)
        if init_v is not None:  # shortest paths alone: dense rows make the auction's passes dear
            eps_start = -1.0  # (F = 16384: 9.8 s; tried first under a budget, then the auction: 11.6 s)
        raw = _auction.solve_dense(sc.costs, unmatched_cost=lam_arr, init_v=init_v,
                                   init_row_to_col=init_r2c, eps_start=eps_start, threads=torch.get_num_threads())
        rounds += 1
        for k in stats:
            stats[k] += int(raw[k])
        r2c = raw["row_to_col"]
        matched = np.flatnonzero((r2c >= 0) & ~whole)
        lin = matched * m + r2c[matched]
        missing = lin[~np.isin(lin, known, assume_unique=True)]
        if len(missing) == 0:
            break
        known = refine(missing // m, missing % m)
    res = solver._result(raw, sign=1.0, transposed=False, certified=True, rounds=rounds,
                         n_edges=n * m, stats={**stats, "exact_pairs": len(known) + int(whole.sum()) * m,
                                               "exact_rows": int(whole.sum())})
    res.timings = {"candidates": t_cand}
    # Margins over the lower bounds: never larger than the margins over the exact costs.
    margin = _auction.dense_margins(sc.costs, res.row_to_col.astype(np.int64), res.u, res.v)
    margin = torch.from_numpy(np.maximum(margin, 0.0)).float()
    if transposed:
        res.row_to_col, res.col_to_row = res.col_to_row, res.row_to_col
        res.u, res.v = res.v, res.u
        margin = torch.full((m,), float("nan"))
    return res, margin


def _solve_sparse(A: Tensor, B: Tensor, lam: float | None, k: int, progress: bool = False):
    transposed = A.shape[0] > B.shape[0] and lam is None
    if transposed:  # the solver assigns every row of the smaller side (costs then come from
        # c(b, a), equal to c(a, b) up to float32 rounding of the GEMM)
        A, B = B, A
    n, m = A.shape[0], B.shape[0]
    cand_bar = None
    if progress and A.device.type == "cpu":  # a CPU's candidate pass is most of the time (F = 65536: ~75 s)
        from tqdm.auto import tqdm

        cand_bar = tqdm(total=n, desc=f"candidates ({n}×{m})", unit="row", leave=False)
    on_rows = cand_bar.update if cand_bar is not None else None
    t0 = time.perf_counter()
    try:
        graph, cand_stats, pricer, pair_costs, block_costs, t_kernels, pair_pricing = _candidate_graph(
            A, B, k, on_rows)
    finally:
        if cand_bar is not None:
            cand_bar.close()
    t_cand = time.perf_counter() - t0
    graph, zero_arcs = _zero_vector_arcs(graph, A, B, k)
    completion = []

    def complete(g: solver.CandidateGraph) -> solver.CandidateGraph:  # if the graph proves infeasible
        g, added = _complete(g, A, B, block_costs)
        completion.append(added)
        return g

    # "graph": from the kernels' output to the exact loop's input (host copy, bounds)
    t_kernels = t_cand if t_kernels is None else t_kernels  # the screens time theirs as one
    t_graph = time.perf_counter() - t0 - t_kernels

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=f"certificate pricing ({n}×{m})", unit="pass", leave=False)
        inner = pricer

        def pricer(rows: np.ndarray, u: np.ndarray, v: np.ndarray):
            bar.update(1)
            bar.set_postfix(priced_rows=len(rows))
            return inner(rows, u, v)

    try:
        res = solver.assign_exact(n, m, graph, pricer, unmatched_cost=lam, max_new_per_row=PRICE_PER_ROW,
                                  price_pairs=pair_costs, pair_pricing=pair_pricing, _complete=complete)
    finally:
        if bar is not None:
            bar.close()
    res.timings["candidates"], res.timings["graph"] = t_kernels, t_graph
    margin = _margins(res.row_to_col, graph.indptr, graph.indices, graph.costs, res.u, res.v, n)
    graph_stats = {"candidate_edges": cand_stats.edges, "cos_only_edges": cand_stats.cos_only, "candidates_k": k,
                   "zero_vector_edges": zero_arcs, "completion_edges": sum(completion)}
    if transposed:
        res.row_to_col, res.col_to_row = res.col_to_row, res.row_to_col
        res.u, res.v = res.v, res.u
        margin = torch.full((m,), float("nan"))  # margins were computed for B's features
    return res, margin, graph_stats


def _candidate_graph(A: Tensor | ScaledRows, B: Tensor | ScaledRows, k: int, on_rows):
    """(graph, stats, pricer, pair_costs, block_costs, kernel seconds or None, pair_pricing) of the
    sparse path on this device: screened on CPUs with AVX-512 BF16 or VNNI (and CUDA, opt-in), the
    cost kernels elsewhere. pair_pricing: whether the exact loop prices re-failing rows pair by pair
    (``assign_exact``), where a priced row is a float32 GEMM row on the CPU (the screens' bf16
    rows are cheap; measured no gain there)."""
    t_kernels = None
    pair_pricing = False
    t0 = time.perf_counter()
    block_costs = None
    kind = screen.kind(A, B)
    if kind is not None:  # screened candidates and pricing, exact costs where they matter
        sv = screen.prepare(A, B, kind=kind)
        graph, cand_stats = screen.solver_graph(sv, k, on_rows=on_rows)
        pricer = screen.row_pricer(sv, PRICE_PER_ROW)
        pair_costs = sv.exact
    elif screen_cuda.available(A, B):  # the same on a GPU: bf16 tensor-core tiles (opt-in)
        svg = screen_cuda.prepare(A, B)
        graph, cand_stats = screen_cuda.solver_graph(svg, k)
        pricer = screen_cuda.row_pricer(svg, PRICE_PER_ROW)
        pair_costs = svg.exact_np
    else:
        g = kernels.candidates(A, B, k=k, on_rows=on_rows)
        if g.indices.is_cuda:  # the kernels' time apart from the graph's trip to the host
            torch.cuda.synchronize(g.indices.device)
        t_kernels = time.perf_counter() - t0
        graph, cand_stats = kernels.solver_graph(g, A, B), g.stats
        pricer = kernels.row_pricer(A, B, PRICE_PER_ROW)
        pair_costs = kernels.pair_pricer(A, B)
        pair_pricing = A.device.type == "cpu"

        def block_costs(r: np.ndarray, c: np.ndarray) -> np.ndarray:  # a GEMM, as the graph's costs
            dev = A.device
            return kernels.dense_costs(A[torch.from_numpy(r).to(dev)], B[torch.from_numpy(c).to(dev)]).cpu().numpy()
    if block_costs is None:  # the screens' exact costs are per pair whatever the blocking

        def block_costs(r: np.ndarray, c: np.ndarray) -> np.ndarray:
            return pair_costs(np.repeat(r, len(c)), np.tile(c, len(r))).reshape(len(r), len(c))
    return graph, cand_stats, pricer, pair_costs, block_costs, t_kernels, pair_pricing


def _complete(graph: solver.CandidateGraph, A: Tensor, B: Tensor, block_costs) -> tuple[solver.CandidateGraph, int]:
    """The graph plus, if it has no assignment of every row, the arcs between the rows and the
    columns a maximum matching leaves free (then it has one), with their exact costs.

    Why: on such a graph the exact loop falls back to slack columns at a huge cost, whose duals
    defeat the bounds and slow the auction down (F = 8192, d = 2304, candidates_k = 2: 33 rows
    short, 496 s with slack, 137 s completed). The forced arcs still distort the first duals
    (many rows then fail their bounds), so the common cause, tied zero vectors, gets its own
    arcs first (:func:`_zero_vector_arcs`). The arcs are pairs like any other: the loop prices
    the pairs left out as before, so the optimum does not change.
    """
    n, m = A.shape[0], B.shape[0]
    # costs: the greedy start takes each row's cheapest column, mostly its partner (the lists
    # are in column order; their first free column made the searches redo most of the start)
    _, r2c = _auction.max_matching(graph.indptr, graph.indices, n, m, costs=np.ascontiguousarray(graph.costs))
    free_rows = np.flatnonzero(r2c < 0)
    if len(free_rows) == 0:
        return graph, 0
    used = np.zeros(m, bool)
    used[r2c[r2c >= 0]] = True
    free_cols = np.flatnonzero(~used)  # >= len(free_rows) of them (n <= m); none has an arc to a free row
    # Blocks of w free rows × w free columns, each complete: at most ~2^20 new arcs.
    w = max(1, min(len(free_rows), (1 << 20) // len(free_rows)))
    new_r, new_c, new_w = [], [], []
    for s0 in range(0, len(free_rows), w):
        r, c = free_rows[s0 : s0 + w], free_cols[s0 : s0 + w]
        new_r.append(np.repeat(r, len(c)))
        new_c.append(np.tile(c, len(r)))
        new_w.append(block_costs(r, c).reshape(-1).astype(graph.costs.dtype))
    done = graph.with_arcs(np.concatenate(new_r), np.concatenate(new_c), np.concatenate(new_w))
    return done, len(done.indices) - len(graph.indices)


def _zero_vector_arcs(graph: solver.CandidateGraph, A: Tensor, B: Tensor, k: int) -> tuple[solver.CandidateGraph, int]:
    """Arcs for zero matching vectors (dead features with an all-zero decoder row).

    A zero row costs |b_j|² against every column: all its pairs tie with those of every other
    zero row, the kernels keep the same k columns for each, and hundreds of them then share a
    few columns. The graph has no assignment of every row, and the completion's forced arcs
    wreck the duals (F = 65536, d = 2304, 655 dead features: 30 rows short, 55k of 65k rows
    priced in round 1). Zero row t (in index order) gets instead the columns t .. t + k − 1
    in order of |b_j|² (cheapest first): a staircase, so the zero rows can be matched apart;
    zero columns likewise.
    """
    if graph.row_norm is not None and graph.col_norm is not None:
        # The graph's norms (square roots of the float32 squared norms, which squaring and
        # rounding to float32 gives back exactly): no pass over A and B again (F = 16384 on
        # the CPU: 40 of the graph phase's 85 ms).
        na, nb = (torch.from_numpy(np.square(x).astype(np.float32)) for x in (graph.row_norm, graph.col_norm))
    else:
        na, nb = kernels.row_sq_norms(A).cpu(), kernels.row_sq_norms(B).cpu()
    add_r, add_c = [], []
    for zero, other, by_row in ((na == 0, nb, True), (nb == 0, na, False)):
        z = zero.nonzero().squeeze(1).cpu().numpy()
        if len(z) == 0:
            continue
        order = torch.argsort(other, stable=True).cpu().numpy()
        width = min(k, len(order))
        start = np.minimum(np.arange(len(z)), len(order) - width)
        partner = order[start[:, None] + np.arange(width)[None, :]]
        own = np.repeat(z, width)
        r, c = (own, partner.reshape(-1)) if by_row else (partner.reshape(-1), own)
        add_r.append(r)
        add_c.append(c)
    if not add_r:
        return graph, 0
    rows, cols = np.concatenate(add_r), np.concatenate(add_c)
    # Same arithmetic as the kernels: |a|² + |b|² − 2⟨a, b⟩ with ⟨a, b⟩ = 0, clamped at 0.
    costs = (na[torch.from_numpy(rows)] + nb[torch.from_numpy(cols)]).clamp_min(0).numpy()
    done = graph.with_arcs(rows, cols, costs)
    return done, len(done.indices) - len(graph.indices)


def _nearest(A: Tensor, B: Tensor, k: int, block_rows: int = 1024) -> tuple[Tensor, Tensor]:
    """Costs and indices [F_a, k] of each row's k cheapest columns, streamed by row blocks."""
    k = min(k, B.shape[0])
    costs, idx = [], []
    na, nb = kernels.row_sq_norms(A), kernels.row_sq_norms(B)  # once, not per block
    for r0 in range(0, A.shape[0], block_rows):
        tile = kernels.dense_costs(A[r0 : r0 + block_rows], B, norms=(na[r0 : r0 + block_rows], nb))
        c, i = torch.topk(tile, k, dim=1, largest=False, sorted=True)
        costs.append(c.cpu())
        idx.append(i.cpu())
    return torch.cat(costs).float(), torch.cat(idx).long()


def _pair_values(A: Tensor, B: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """Cost and cosine of each matched pair, with the dot in float64 (the arithmetic of the
    screened path's exact costs; within float32 rounding of the GEMM's); NaN where -1."""
    Fa = perm.numel()
    cost = torch.full((Fa,), float("nan"))
    cosine = torch.full((Fa,), float("nan"))
    rows = torch.nonzero(perm >= 0).squeeze(1)
    if rows.numel() == 0:
        return cost, cosine
    cols = perm[rows]
    if A.device.type == "cpu":
        dot = torch.from_numpy(screen.pair_dots(A, B, rows.numpy(), cols.numpy()))
    else:
        dev = A.device
        dot = torch.cat([
            (A[r.to(dev)].double() * B[c.to(dev)].double()).sum(dim=1).cpu()
            for r, c in zip(rows.split(1 << 14), cols.split(1 << 14))
        ])
    na = kernels.row_sq_norms(A).cpu().double()[rows]
    nb = kernels.row_sq_norms(B).cpu().double()[cols]
    cost[rows] = (na + nb - 2.0 * dot).clamp_min(0.0).float()
    cosine[rows] = (dot / (na * nb).sqrt().clamp_min(1e-30)).float()
    return cost, cosine
