"""``match_vectors()`` at scale on a GPU: F = 16384, 262144, 1048576 matching vectors, d = 2304.

The issue's GPU goals: F = 16384 under 50 ms, F = 262144 and F = 1048576 with their certified
gap and time (1M: under 30 s on one H100). The vectors are made on the device (two layers'
worth of SAE-like folded decoder rows: unit directions with lognormal norms, the second a
permuted, drifted copy of the first), so no host RAM or disk holds them; the cost kernels run
there (Triton), the assignment solver on the CPU.

    python -m pytest bench/bench_match_gpu.py -q                    # CUDA only; skipped otherwise
    MECHPERM_BENCH_MAX_N=1048576 python bench/bench_match_gpu.py    # table on stderr, JSON on stdout
    MECHPERM_BENCH_GPU_ON_CPU=1 MECHPERM_BENCH_MAX_N=4096 python bench/bench_match_gpu.py  # dry run
    MECHPERM_SCREEN=0 MECHPERM_BENCH_GPU_ON_CPU=1 python bench/bench_match_gpu.py --sizes 65536 --d 128
                                                     # the GPU path's solver side, on the CPU
    python bench/bench_match_gpu.py --crossover      # dense vs sparse path at F = 2048 .. 8192
                                                     # (what DENSE_LIMIT_CUDA is set from)

``--pair stack`` matches make_stack's two layers instead (the CPU bench's pair: heavy-tailed θ,
births, splits and deaths; more rounds of the exact loop), up to 262144.

``recovered`` is the share of rows matched to the row they were drawn from (the planted truth;
drift makes some of them ambiguous, so it is below 1 by design; for the stack pair, among the
features with a planted partner). Benchmarks never assert speed.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest
import torch

from conftest import sizes

from mechperm.match import match_vectors

match_module = sys.modules["mechperm.match"]  # mechperm.match the attribute is the function

D = 2304
ON_CPU = os.environ.get("MECHPERM_BENCH_GPU_ON_CPU") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if ON_CPU else None)
SIZES = sizes(16384, 65536, 262144, 1048576) or [int(os.environ.get("MECHPERM_BENCH_MAX_N", "16384"))]


def sae_like_pair(F: int, d: int = D, *, seed: int = 0, device: str = "cuda", chunk: int = 65536):
    """(A, B, truth): A's rows are unit directions times lognormal(0, 1) norms; B[truth[i]] is
    A[i]'s direction drifted by ~37° (0.8 · a + 0.6 · noise) with its norm × lognormal(0, 0.2)."""
    g = torch.Generator(device=device).manual_seed(seed)
    truth = torch.randperm(F, generator=g, device=device)
    A = torch.empty(F, d, device=device)
    B = torch.empty(F, d, device=device)
    for r0 in range(0, F, chunk):
        r1 = min(F, r0 + chunk)
        a = torch.randn(r1 - r0, d, generator=g, device=device)
        a /= a.norm(dim=1, keepdim=True)
        b = 0.8 * a + 0.6 * torch.randn(r1 - r0, d, generator=g, device=device) / math.sqrt(d)
        b /= b.norm(dim=1, keepdim=True)
        norm = torch.exp(torch.randn(r1 - r0, 1, generator=g, device=device))
        A[r0:r1] = a * norm
        B[truth[r0:r1]] = b * norm * torch.exp(0.2 * torch.randn(r1 - r0, 1, generator=g, device=device))
    return A, B, truth


def stack_pair(F: int, d: int = D, *, seed: int = 0, device: str = "cuda"):
    """(A, B, truth): the folded decoder rows of ``make_stack``'s first two layers, made on the
    device: heavy-tailed θ, births, splits, deaths and near-ties (the CPU bench's pair; truth -1
    where a feature died). Harder than :func:`sae_like_pair`: at F = 16384 on the CPU the exact
    loop takes 5 rounds at candidates_k = 64 and 7 at 16, against 2 for the SAE-like pair.
    Two SAEs are made first (4 F x d float32 matrices: 9.7 GB at 262144; not for 1M)."""
    from mechperm.kernels.features import matching_vectors
    from mechperm.synthetic import make_stack

    stack = make_stack(2, d=d, F=F, seed=seed, device=device)
    A, B = (matching_vectors(sae, device=device) for sae in stack.saes)
    truth = stack.truth[0]
    del stack
    return A, B, truth


PAIRS = {"sae_like": sae_like_pair, "stack": stack_pair}


def _gpu_screen(A: torch.Tensor, B: torch.Tensor) -> bool:
    """Whether match_vectors screened these vectors on the GPU (the default from F = 262144)."""
    from mechperm.kernels import screen_cuda

    return DEVICE == "cuda" and screen_cuda.available(A, B)


def _gemm_candidates() -> bool:
    """Whether this run's kernels read cuBLAS GEMM blocks (the CUDA default)."""
    if DEVICE != "cuda":
        return False
    from mechperm.kernels import triton_candidates

    return triton_candidates.gemm_enabled(torch.device(DEVICE))


def run(F: int, dtype: torch.dtype = torch.float32, d: int = D, profile: str | None = None,
        cprofile: str | None = None, pair: str = "sae_like", **options) -> dict:
    A, B, truth = PAIRS[pair](F, d, device=DEVICE)
    if dtype != torch.float32:
        A, B = A.to(dtype), B.to(dtype)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if profile:  # match_vectors under torch.profiler: its time is its own total (timings["total"],
        # the profiler's overhead in it), not the wall time, which holds the profiler's stop (seconds)
        res, write_tables = _profiled(profile, lambda: match_vectors(A, B, **options))
        seconds = res.timings["total"]
        write_tables()
    elif cprofile:  # the host's side: Python functions and the native calls they make
        res = _cprofiled(cprofile, lambda: match_vectors(A, B, **options))
        seconds = res.timings["total"]
    else:
        res = match_vectors(A, B, **options)
        seconds = time.perf_counter() - t0
    out = {"F": F, "d": d, "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", **options,
           "seconds": seconds, "certified": res.certified, "gap": res.gap, "objective": res.objective,
           "pair": pair,  # recovered: the share of the features with a planted partner matched to it
           "recovered": float((res.perm.to(truth.device) == truth)[truth >= 0].float().mean()),
           "timings": res.timings, "rounds": res.stats.get("rounds"), "edges": res.stats.get("edges"),
           "dtype": str(dtype).removeprefix("torch."), "price_per_row": match_module.PRICE_PER_ROW,
           "solver": res.stats.get("solver"), "fused_pricing": os.environ.get("MECHPERM_FUSED_PRICING") == "1",
           "gpu_screen": _gpu_screen(A, B),
           "emit_topk": os.environ.get("MECHPERM_EMIT_TOPK") == "1",
           "gemm_candidates": _gemm_candidates()}
    if out["emit_topk"] and DEVICE == "cuda":
        from mechperm.kernels import triton_candidates

        out["emit"] = dict(triton_candidates.LAST_EMIT)  # pairs within the thresholds, rows redone
    if out["gemm_candidates"] and DEVICE == "cuda":
        from mechperm.kernels import triton_candidates

        out["gemm"] = dict(triton_candidates.LAST_GEMM)  # block rows, blocks, float32 output from cuBLAS
        out["topq"] = dict(triton_candidates.LAST_TOPQ)  # the fused pricer's last call: gated, chunks redone
    del A, B
    if DEVICE == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.empty_cache()
    return out


@pytest.mark.skipif(DEVICE is None, reason="needs CUDA (or MECHPERM_BENCH_GPU_ON_CPU=1 for a dry run)")
@pytest.mark.parametrize("F", SIZES)
def test_match_vectors_at_scale(benchmark, F: int) -> None:
    out = benchmark.pedantic(run, args=(F,), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["certified"]


def _trace_phases() -> None:
    """Print each phase of ``match_vectors`` as it starts and ends, and every pricing pass, on
    stderr (a run cut off at its limit still says where its time went); a SIGTERM (``timeout``)
    dumps the stacks."""
    import faulthandler
    import signal

    from mechperm import assign as solver
    from mechperm import kernels
    from mechperm.kernels import screen, screen_cuda

    faulthandler.register(signal.SIGTERM, all_threads=True)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"  [{time.perf_counter() - t_start:8.2f} s] {msg}", file=sys.stderr, flush=True)

    def wrap(owner, name: str, inner=None, indent: str = "", detail=None):
        f = getattr(owner, name)

        def traced(*a, **kw):
            t0 = time.perf_counter()
            if not indent:
                say(f"{name} ...")
            out = f(*a, **kw)
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            say(f"{indent}{name} done in {time.perf_counter() - t0:.3f} s" + (detail(*a, **kw) if detail else ""))
            return inner(out) if inner else out

        setattr(owner, name, traced)

    def traced_pricer(pricer):
        def priced(rows, u, v):
            t0 = time.perf_counter()
            out = pricer(rows, u, v)
            say(f"  pricing pass: {len(rows)} rows in {time.perf_counter() - t0:.3f} s")
            return out

        return priced

    for mod in (screen, screen_cuda):
        wrap(mod, "prepare")
        wrap(mod, "solver_graph")
        wrap(mod, "row_pricer", traced_pricer)
    wrap(kernels, "candidates")
    wrap(kernels, "solver_graph")
    wrap(kernels, "row_pricer", traced_pricer)
    wrap(match_module, "_complete")
    wrap(solver, "assign_exact")
    # Inside the phases (indented): the candidate kernels' parts, the graph's bounds, and each
    # round of the exact loop (solve, bounds, dual shift), so a GPU run says where its time went.
    from mechperm.kernels import triton_candidates as tc

    for owner, name in ((tc, "_topk_gemm"), (tc, "_topk"), (tc, "pair_costs"), (screen_cuda, "_cosine_kappas"),
                        (screen, "_capped_bounds"), (sys.modules["mechperm.kernels.candidates"], "_cosine_bounds"),
                        (solver, "_lower_bounds"), (solver, "_shift_duals"), (solver._auction, "solve_sparse"),
                        (solver._auction, "max_matching"), (match_module, "_zero_vector_arcs"),
                        (screen_cuda, "_exact_rows_topq"), (solver._ArcBuffer, "merge"),
                        (solver, "_bound_sorts")):  # a thread during the first solve: joined before the bounds
        wrap(owner, name, indent="    ")
    # the fused pricer's calls: how many rows at which q (a pass's weak rows: again at 4q, or exactly when few)
    wrap(tc, "price_rows_topq", indent="    ", detail=lambda A, B, u, v, rows, q, **kw: f" ({rows.numel()} rows, q = {q})")


def _profiled(path: str, fn):
    """(fn() under torch.profiler, a function that writes the ops' tables by device time and
    by host time to ``path``): where a small problem's time goes (kernels, launches,
    synchronisations)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        out = fn()

    def write_tables() -> None:
        avg = prof.key_averages()
        with open(path, "w") as f:
            for key in (["self_cuda_time_total"] if DEVICE == "cuda" else []) + ["cpu_time_total", "self_cpu_time_total"]:
                f.write(f"== by {key}\n{avg.table(sort_by=key, row_limit=45, max_name_column_width=70)}\n")

    return out, write_tables


def _cprofiled(path: str, fn):
    """fn() under cProfile, its 45 costliest functions by cumulative and by own time written to
    ``path``: where a small problem's host time goes (the solver, the bounds, numpy, the waits
    in torch's copies to the host)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        out = fn()
    finally:
        prof.disable()
    with open(path, "w") as f:
        for key in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats(key).print_stats(45)
            f.write(f"== by {key}\n{text.getvalue()}\n")
    return out


def main() -> None:
    """Table on stderr, one line per run as it finishes; JSON on stdout (and, rewritten after
    every run, in the file named by ``--json``, so a run cut short keeps what it finished)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--crossover", action="store_true", help="dense vs sparse path, F = 1024 .. 8192")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="of the vectors")
    ap.add_argument("--price-per-row", type=int, help="override match.PRICE_PER_ROW (pairs per priced row)")
    ap.add_argument("--sizes", help="comma-separated F values (default: from MECHPERM_BENCH_MAX_N)")
    ap.add_argument("--pair", choices=sorted(PAIRS), default="sae_like",
                    help="the vectors: SAE-like unit directions x lognormal norms (default), or make_stack's "
                         "two layers' folded decoder rows (the CPU bench's pair, harder; up to 262144)")
    ap.add_argument("--fused-pricing", action="store_true", help="MECHPERM_FUSED_PRICING=1 (Triton row pricer)")
    ap.add_argument("--gpu-screen", action="store_true",
                    help="MECHPERM_GPU_SCREEN=1 (bf16 screen, float32 vectors; the default from F = 262144)")
    ap.add_argument("--no-gpu-screen", action="store_true", help="MECHPERM_GPU_SCREEN=0")
    ap.add_argument("--emit-topk", action="store_true", help="MECHPERM_EMIT_TOPK=1 (candidates by thresholds and emission)")
    ap.add_argument("--scan-ahead", action="store_true",
                    help="MECHPERM_SCAN_AHEAD=1 (the auction's scans on the host's threads ahead of their bids)")
    ap.add_argument("--gemm", action="store_true",
                    help="MECHPERM_GEMM_CANDIDATES=1 (cuBLAS GEMM blocks read by the selection and pricing "
                         "kernels; the default on CUDA)")
    ap.add_argument("--no-gemm", action="store_true",
                    help="MECHPERM_GEMM_CANDIDATES=0 (the fused Triton kernels: their own GEMM loops)")
    ap.add_argument("--gated", action="store_true",
                    help="MECHPERM_GATED_SELECT=1 (the GEMM blocks' selections gated by group minima; the default)")
    ap.add_argument("--no-gated", action="store_true", help="MECHPERM_GATED_SELECT=0 (the running top-k alone)")
    ap.add_argument("--gated-pricer", action="store_true",
                    help="MECHPERM_GATED_PRICER=1 (the fused pricer gated by tile minima; the default is ungated)")
    ap.add_argument("--no-gated-pricer", action="store_true",
                    help="MECHPERM_GATED_PRICER=0 (the fused pricer's running top-q alone; the default)")
    ap.add_argument("--d", type=int, default=D, help="vector width (CPU dry runs of the solver side: a small d)")
    ap.add_argument("--candidates-k", type=int, help="match_vectors(candidates_k=...) (default: match's, 64)")
    ap.add_argument("--trace", action="store_true", help="print each phase and pricing pass as it happens")
    ap.add_argument("--sel", help="the GEMM blocks' selection tiles 'BM,BN,warps,splits_per_sm;BM,BN,warps' (rows' "
                                  "pass; columns' pass), as bench_triton_tiles.py --sel-sweep prints them")
    ap.add_argument("--topq", help="the fused pricer's tile on cuBLAS blocks 'BM,BN,warps,stages,splits_per_sm' "
                                   "(stages 0: the dtype's default), as bench_triton_tiles.py --topq-sweep prints it")
    ap.add_argument("--profile", metavar="PATH",
                    help="run the last size under torch.profiler and write its op tables (CUDA and CPU time) to PATH")
    ap.add_argument("--cprofile", metavar="PATH",
                    help="run a size under cProfile and write its costliest functions to PATH (the last size; "
                         "with --profile, the one before it)")
    args = ap.parse_args()
    if args.trace:
        _trace_phases()
    dtype = getattr(torch, args.dtype)
    if args.fused_pricing:
        os.environ["MECHPERM_FUSED_PRICING"] = "1"
    if args.gpu_screen or args.no_gpu_screen:
        os.environ["MECHPERM_GPU_SCREEN"] = "1" if args.gpu_screen else "0"
    if args.emit_topk:
        os.environ["MECHPERM_EMIT_TOPK"] = "1"
    if args.scan_ahead:
        os.environ["MECHPERM_SCAN_AHEAD"] = "1"
    if args.gemm or args.no_gemm:
        os.environ["MECHPERM_GEMM_CANDIDATES"] = "1" if args.gemm else "0"
    if args.gated or args.no_gated:
        os.environ["MECHPERM_GATED_SELECT"] = "0" if args.no_gated else "1"
    if args.gated_pricer or args.no_gated_pricer:
        os.environ["MECHPERM_GATED_PRICER"] = "0" if args.no_gated_pricer else "1"
    if args.price_per_row:
        match_module.PRICE_PER_ROW = args.price_per_row
    if args.sel:
        from mechperm.kernels import triton_candidates

        rows_tile, cols_tile = (tuple(map(int, part.split(","))) for part in args.sel.split(";"))
        (triton_candidates.SEL_BM, triton_candidates.SEL_BN, triton_candidates.SEL_WARPS,
         triton_candidates.SEL_SPLITS_PER_SM) = rows_tile
        triton_candidates.SEL_COL_BM, triton_candidates.SEL_COL_BN, triton_candidates.SEL_COL_WARPS = cols_tile
    if args.topq:
        from mechperm.kernels import triton_candidates

        bm, bn, warps, stages, per_sm = map(int, args.topq.split(","))
        triton_candidates.TOPQ_DOTS_BM, triton_candidates.TOPQ_DOTS_BN = bm, bn
        triton_candidates.TOPQ_DOTS_WARPS, triton_candidates.TOPQ_DOTS_STAGES = warps, stages or None
        triton_candidates.TOPQ_DOTS_SPLITS_PER_SM = per_sm
    if DEVICE is None:
        sys.exit("needs CUDA (or MECHPERM_BENCH_GPU_ON_CPU=1 for a dry run)")
    if DEVICE == "cuda":
        run(2048, dense_limit=0)  # warm-up: Triton compiles its kernels on first use
        run(2048, dense_limit=2048 * 2048)
        if args.emit_topk:  # the emission kernels start at F = 64 · 4k (the H100's first timed
            run(16384, dense_limit=0)  # emission run held ~3 s of compiling)
    plan = ([(F, {"dense_limit": lim}) for F in (1024, 2048, 4096, 8192) for lim in (F * F, 0)]
            if args.crossover else [(F, {}) for F in (map(int, args.sizes.split(",")) if args.sizes else SIZES)])
    if args.candidates_k:
        plan = [(F, {**options, "candidates_k": args.candidates_k}) for F, options in plan]
    rows = []
    at_cprofile = len(plan) - (2 if args.profile and len(plan) > 1 else 1)
    for i, (F, options) in enumerate(plan):
        out = run(F, dtype, args.d, profile=args.profile if i == len(plan) - 1 else None,
                  cprofile=args.cprofile if i == at_cprofile else None, pair=args.pair, **options)
        rows.append(out)
        t = out["timings"]
        print(f"F={F:8d} {args.pair} {args.dtype} q={match_module.PRICE_PER_ROW}{' fused' if args.fused_pricing else ''}{' screen' if out['gpu_screen'] else ''}{' emit' if args.emit_topk else ''}{' gemm' if out['gemm_candidates'] else ''}{' gated' if out.get('gemm', {}).get('gated') else ''} {options or ''} {out['device']}: {out['seconds']:8.3f} s  certified {out['certified']}  "
              f"gap {out['gap']:.1e}  rounds {out['rounds']}  recovered {out['recovered']:.3f}  "
              f"candidates {t.get('candidates', 0):.3f} s  graph {t.get('graph', 0):.3f} s  "
              f"assign {t.get('assign', 0):.3f} s  bounds {t.get('bounds', 0):.3f} s  pricing {t.get('pricing', 0):.3f} s  "
              f"solve {t.get('solve', 0):.3f} s  priced rows {(out['solver'] or {}).get('priced_rows')}"
              f" (partners {(out['solver'] or {}).get('partner_rows')}, re-checked {(out['solver'] or {}).get('rechecked_rows')}, shifted {(out['solver'] or {}).get('shifted_rows')})"
              f"{'  emit ' + str(out['emit']) if out.get('emit') else ''}"
              f"{'  gemm ' + str(out['gemm']) if out.get('gemm') else ''}",
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(rows, f, indent=1, default=float)
            os.replace(args.json + ".tmp", args.json)
    json.dump(rows, sys.stdout, indent=1, default=float)


if __name__ == "__main__":
    main()
