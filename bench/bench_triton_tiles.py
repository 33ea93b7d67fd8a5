"""Tile sweep of the Triton candidate kernel on CUDA, next to the card's GEMMs of the same shape.

    python bench/bench_triton_tiles.py [F] [--json out.json] [--budget SECONDS]
    python bench/bench_triton_tiles.py 8192 --wide 1048576   # the 1M match's selection regime

For each tile configuration (BM, BN, BD_fp32, BD_16, warps, stages) of
``mechperm.kernels.triton_candidates`` and each input type (fp32 through 3xTF32, bf16): the time of
``candidates(A, B, k=32)`` (two passes: rows, then columns; with ``--emit`` also the
threshold-and-emission selection, two passes too), its TFLOP/s counting 2·2·F²·D useful flops,
its ratio to one ``torch.mm`` of the same shape, and its agreement with the torch
backend on the same device (share of equal edges, largest cost error over |a|² + |b|²). Median
of 3 timed runs after a warm-up (which compiles). Benchmarks never assert speed; a
configuration that fails to compile is reported and skipped. ``--gemm`` first times the
cuBLAS-block path (``MECHPERM_GEMM_CANDIDATES=1``: one GEMM, TFLOP/s counting 2·F²·D) for each
selection tile of SEL_CONFIGS, with the running top-k alone and gated (``MECHPERM_GATED_SELECT=1``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from mechperm.kernels import triton_candidates as tc
from mechperm.kernels.candidates import candidates

D, K = 2304, 32
# Dry run of this script on a CPU: TRITON_INTERPRET=1 python bench/bench_triton_tiles.py 200
DEV = "cuda" if torch.cuda.is_available() else "cpu"

SEL_CONFIGS = [(32, 64, 2), (64, 64, 4), (64, 128, 4), (32, 128, 4)]  # the rows' pass: BM, BN, warps


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()
CONFIGS = [  # (BM, BN, BD_FP32, BD_16, warps, stages)
    (64, 64, 64, 64, 4, 3),   # the default (fp32; 16-bit inputs take 4 stages)
    (128, 64, 64, 64, 8, 3),  # larger tiles: the emission path keeps no top-k in registers
    (32, 64, 32, 64, 4, 3),   # the first, untuned guess
    (64, 128, 32, 64, 8, 3),
    (128, 64, 32, 64, 8, 3),
    (128, 128, 32, 64, 8, 3),
    (64, 64, 64, 64, 4, 4),
    (64, 64, 32, 64, 4, 4),
    (64, 64, 64, 128, 4, 3),
]


def setup(F: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    A = torch.randn(F, D, device=DEV, generator=g) * torch.exp(0.5 * torch.randn(F, 1, device=DEV, generator=g))
    B = A[torch.randperm(F, device=DEV, generator=g)] + 0.3 * torch.randn(F, D, device=DEV, generator=g) / D**0.5
    return A.to(dtype), B.to(dtype)


def timed(fn, reps: int = 3) -> float:
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


DENSE_CONFIGS = [  # (DENSE_BM, DENSE_BN, BD_FP32, warps): the pricer's [rows, F] cost tiles
    (128, 128, 64, 8),  # the default
    (64, 64, 64, 4),
    (128, 64, 64, 4),
    (128, 128, 32, 8),
    (128, 256, 32, 8),
    (256, 128, 32, 8),
]


def dense_sweep(A: torch.Tensor, B: torch.Tensor, emit, t_end: float, rows: int = 1024) -> None:
    """``dense_costs(A[:rows], B)``: the CUDA row pricer's tile (rows x F costs), fp32 (3xTF32)."""
    a = A[:rows]
    na, nb = (a.double() ** 2).sum(1), (B.double() ** 2).sum(1)
    ref = na[:, None] + nb[None, :] - 2 * (a.double() @ B.double().T)
    keep = (tc.DENSE_BM, tc.DENSE_BN, tc.BD_FP32, tc.DENSE_WARPS)
    flops = 2.0 * rows * B.shape[0] * B.shape[1]
    for cfg in DENSE_CONFIGS:
        if time.perf_counter() > t_end:
            emit(what="budget spent", kernel="dense")
            break
        tc.DENSE_BM, tc.DENSE_BN, tc.BD_FP32, tc.DENSE_WARPS = cfg
        try:
            t = timed(lambda: tc.dense_costs(a, B))
            err = float(((tc.dense_costs(a, B).double() - ref.clamp_min(0)).abs() / (na[:, None] + nb[None, :])).max())
        except Exception as e:  # noqa: BLE001
            emit(what="dense", cfg=str(cfg), error=f"{type(e).__name__}: {str(e)[:200]}")
            continue
        emit(what="dense", cfg=str(cfg), rows=a.shape[0], F=B.shape[0], seconds=t, tflops=flops / t / 1e12, cost_err=err)
    tc.DENSE_BM, tc.DENSE_BN, tc.BD_FP32, tc.DENSE_WARPS = keep


def accumulation_error(A: torch.Tensor, B: torch.Tensor, emit) -> None:
    """How far bf16 tensor-core costs are from the exact costs of the same bf16 inputs, in units
    of the bound a screen would use: gamma_D·|a||b| for the dot (float32 accumulation, exact
    products) plus 2u·(|a|² + |b|² + 2|a·b|) for the two float32 additions of the epilogue."""
    C = tc.dense_costs(A, B).double()
    A64, B64 = A.double(), B.double()
    na, nb = (A64 * A64).sum(1), (B64 * B64).sum(1)
    dot = A64 @ B64.T
    exact = (na[:, None] + nb[None, :] - 2 * dot).clamp_min(0)
    u = 2.0**-24
    gamma = A.shape[1] * u / (1 - A.shape[1] * u)
    bound = 2 * gamma * (na.sqrt()[:, None] * nb.sqrt()[None, :]) + 2 * u * (na[:, None] + nb[None, :] + 2 * dot.abs())
    ratio = ((C - exact).abs() / bound).max()
    emit(what="bf16 tile costs vs exact", F=A.shape[0], max_err_over_bound=float(ratio),
         max_rel_err=float(((C - exact).abs() / (na[:, None] + nb[None, :])).max()))


def timed_graph(A, B, ref, on_error):
    """(seconds, graph, share of its edges equal to ref's) of the triton candidates as the
    environment configures them, or None after ``on_error(message)`` where they fail (a
    configuration the compiler refuses is a result)."""
    try:
        t = timed(lambda: candidates(A, B, k=K, backend="triton"))
        g = candidates(A, B, k=K, backend="triton")
    except Exception as e:  # noqa: BLE001
        on_error(f"{type(e).__name__}: {str(e)[:200]}")
        return None
    same = float((g.indices == ref.indices).float().mean()) if torch.equal(g.indptr, ref.indptr) else 0.0
    return t, g, same


def wide(F: int, FB: int, emit) -> None:
    """The 1M match's regime at 1/(FB/F) of its cost: F rows of A against FB of B through the
    GEMM blocks (at FB = 1M: blocks of 2048 rows, ~17 column splits a block, the columns'
    selections carried over the blocks), with the running top-k alone and gated
    (MECHPERM_GATED_SELECT), each phase timed (MECHPERM_PROFILE_GEMM); the two graphs must be
    equal bit for bit."""
    os.environ["MECHPERM_GEMM_CANDIDATES"] = os.environ["MECHPERM_PROFILE_GEMM"] = "1"
    B32 = setup(FB, torch.float32, seed=1)[0]  # (its noisy copy freed at once: 9.4 GB at 1M)
    A32 = B32[:F] + 0.3 * torch.randn(F, D, device=DEV) / D**0.5
    flops = 2.0 * F * FB * D
    for name, (A, B) in (("fp32", (A32, B32)), ("bf16", (A32.bfloat16(), B32.bfloat16()))):
        graphs = {}
        merge = tc.CAP_GROUPS_PER_K
        # ungated; gated; gated with each row's gate from all its group minima (no merged runs)
        for label, gated, per_k in (("", "0", merge), (" gated", "1", merge), (" gated unmerged", "1", 1 << 40)):
            os.environ["MECHPERM_GATED_SELECT"] = gated
            tc.CAP_GROUPS_PER_K = per_k
            t = timed(lambda: candidates(A, B, k=K, backend="triton"), reps=2)
            graphs[label] = candidates(A, B, k=K, backend="triton")
            info = {("phases" if key == "seconds" else key): val for key, val in tc.LAST_GEMM.items()}
            emit(what="wide gemm" + label, dtype=name, F=F, FB=FB, seconds=t, tflops=flops / t / 1e12, **info)
        tc.CAP_GROUPS_PER_K = merge
        a = graphs[""]
        emit(what="wide same graph", dtype=name,
             same=all(torch.equal(getattr(a, x), getattr(b, x)) for b in graphs.values()
                      for x in ("indptr", "indices", "costs")))
        del graphs, a
        if DEV == "cuda":
            torch.cuda.empty_cache()
    for var in ("MECHPERM_GEMM_CANDIDATES", "MECHPERM_PROFILE_GEMM", "MECHPERM_GATED_SELECT"):
        os.environ.pop(var, None)


# --sel-sweep: the GEMM blocks' selection tiles, gated, in the 1M regime (--wide). Each entry
# pairs a rows' pass (BM, BN, warps, SEL_SPLITS_PER_SM) with a columns' pass (BM, BN, warps):
# the two passes are timed apart (MECHPERM_PROFILE_GEMM), so one run measures both; the first
# is the reference. H100, 2026-11-27: the 64 x 64 tiles (then the default, second here) read a
# 2048 x 1M block of dots in 22 ms (rows) and 16 ms (columns) in the 1M match, ~0.4-0.5 TB/s of
# the card's ~3 TB/s; the first entry, the default since, in 10 and 8 ms
# (bench/results/gpu_h100_s16_sweep.json).
SEL_SWEEP = [
    ((32, 64, 2, 16), (32, 32, 2)),
    ((64, 64, 4, 4), (64, 64, 4)),
    ((64, 64, 4, 16), (64, 64, 8)),
    ((64, 64, 8, 4), (32, 64, 4)),
    ((64, 128, 8, 8), (64, 128, 8)),
    ((32, 64, 4, 8), (128, 64, 8)),
    ((32, 128, 4, 16), (32, 128, 4)),
    ((64, 128, 4, 16), (64, 32, 4)),
    ((128, 64, 8, 8), (32, 32, 2)),
    ((32, 64, 2, 16), (128, 32, 4)),
    ((64, 64, 8, 16), (64, 128, 4)),
]


SEL_DEFAULT = ((tc.SEL_BM, tc.SEL_BN, tc.SEL_WARPS, tc.SEL_SPLITS_PER_SM), (tc.SEL_COL_BM, tc.SEL_COL_BN, tc.SEL_COL_WARPS))


def set_sel(rows: tuple, cols: tuple) -> None:
    """The selection tiles of ``_topk_gemm``: rows' pass (BM, BN, warps, splits per SM) and
    columns' pass (BM, BN, warps)."""
    tc.SEL_BM, tc.SEL_BN, tc.SEL_WARPS, tc.SEL_SPLITS_PER_SM = rows
    tc.SEL_COL_BM, tc.SEL_COL_BN, tc.SEL_COL_WARPS = cols


def sel_sweep(F: int, FB: int, emit, t_end: float) -> None:
    """bf16 vectors (the screen's GEMM: bf16 operands, float32 dots), gated, each entry of
    SEL_SWEEP: the phases of the second of two timed calls after one that compiles, and whether
    its graph is the default's bit for bit. Ends with the fastest rows' and columns' passes
    among those with the default's graph ("sel best")."""
    os.environ["MECHPERM_GEMM_CANDIDATES"] = os.environ["MECHPERM_PROFILE_GEMM"] = "1"
    os.environ["MECHPERM_GATED_SELECT"] = "1"
    B = setup(FB, torch.float32, seed=1)[0]
    A = (B[:F] + 0.3 * torch.randn(F, D, device=DEV) / D**0.5).bfloat16()
    B = B.bfloat16()
    ref, best = None, {}
    for rows, cols in SEL_SWEEP:
        if time.perf_counter() > t_end:
            emit(what="budget spent", kernel="sel sweep")
            break
        set_sel(rows, cols)
        try:
            g = candidates(A, B, k=K, backend="triton")
            ts = []
            for _ in range(2):
                sync()
                t = time.perf_counter()
                candidates(A, B, k=K, backend="triton")
                sync()
                ts.append(time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001  (a tile the compiler refuses is a result)
            emit(what="sel", rows=str(rows), cols=str(cols), error=f"{type(e).__name__}: {str(e)[:200]}")
            continue
        ref = g if ref is None else ref
        same = all(torch.equal(getattr(g, x), getattr(ref, x)) for x in ("indptr", "indices", "costs"))
        phases = dict(tc.LAST_GEMM.get("seconds", {}))
        emit(what="sel", rows=str(rows), cols=str(cols), F=F, FB=FB, seconds=min(ts), same=same, phases=phases)
        if same:
            for phase, tile in (("rows", rows), ("cols", cols)):
                if phase in phases and phases[phase] < best.get(phase, (float("inf"),))[0]:
                    best[phase] = (phases[phase], tile)
        del g
    set_sel(*SEL_DEFAULT)
    if best:
        emit(what="sel best", rows=str(best["rows"][1]), cols=str(best["cols"][1]),
             rows_s=best["rows"][0], cols_s=best["cols"][0],
             sel=",".join(map(str, best["rows"][1])) + ";" + ",".join(map(str, best["cols"][1])))
    for var in ("MECHPERM_GEMM_CANDIDATES", "MECHPERM_PROFILE_GEMM", "MECHPERM_GATED_SELECT"):
        os.environ.pop(var, None)


# --topq-sweep: the fused row pricer's tile on cuBLAS blocks (price_rows_topq on the GEMM path,
# screened as at F = 1M): (BM, BN, warps, stages or 0 for the dtype's default, splits per SM);
# the first is the reference (the default then).
TOPQ_SWEEP = [
    (64, 64, 4, 0, 4),
    (32, 64, 2, 0, 16),
    (32, 64, 4, 0, 8),
    (16, 64, 2, 0, 16),
    (32, 32, 2, 0, 16),
    (32, 64, 2, 2, 16),
    (64, 64, 8, 0, 4),
    (16, 32, 1, 0, 32),
]


def topq_sweep(F: int, FB: int, emit, t_end: float, q: int = 64) -> None:
    """The screened pricer of the 1M match (``screen_cuda.row_pricer``'s first call: q = 64,
    gated) on F rows against FB columns, zero duals (the rows' q cheapest pairs), for each
    entry of TOPQ_SWEEP: the second of two timed calls after one that compiles, and whether its
    rows, columns, costs and bounds are the reference's bit for bit. Ends with the fastest
    ("topq best"), then the first entry's tile and the fastest ungated ("topq ungated": the gate's
    minima launch recomputes every reduced cost, so it can cost more than it saves)."""
    from mechperm.kernels import screen_cuda

    os.environ["MECHPERM_GEMM_CANDIDATES"] = "1"
    B = setup(FB, torch.float32, seed=1)[0]
    A = B[:F] + 0.3 * torch.randn(F, D, device=DEV) / D**0.5
    sv = screen_cuda.prepare(A, B)
    del A, B
    u = torch.zeros(F, dtype=torch.float64, device=DEV)
    v = torch.zeros(FB, dtype=torch.float64, device=DEV)
    rows = torch.arange(F, device=DEV)
    keep = (tc.TOPQ_DOTS_BM, tc.TOPQ_DOTS_BN, tc.TOPQ_DOTS_WARPS, tc.TOPQ_DOTS_STAGES, tc.TOPQ_DOTS_SPLITS_PER_SM)

    def run(cfg, gated: bool | None):
        """(outputs, seconds: the better of two calls after one that compiles) with the tile cfg."""
        bm, bn, warps, stages, per_sm = cfg
        tc.TOPQ_DOTS_BM, tc.TOPQ_DOTS_BN, tc.TOPQ_DOTS_WARPS, tc.TOPQ_DOTS_SPLITS_PER_SM = bm, bn, warps, per_sm
        tc.TOPQ_DOTS_STAGES = stages or None
        out = tc.price_rows_topq(sv.A16, sv.B16, u, v, rows, q, screen=sv, gated=gated)
        ts = []
        for _ in range(2):
            sync()
            t = time.perf_counter()
            tc.price_rows_topq(sv.A16, sv.B16, u, v, rows, q, screen=sv, gated=gated)
            sync()
            ts.append(time.perf_counter() - t)
        return out, min(ts)

    ref, best = None, None
    for cfg in TOPQ_SWEEP:
        if time.perf_counter() > t_end:
            emit(what="budget spent", kernel="topq sweep")
            break
        try:
            out, seconds = run(cfg, None)
        except Exception as e:  # noqa: BLE001  (a tile the compiler refuses is a result)
            emit(what="topq", cfg=str(cfg), error=f"{type(e).__name__}: {str(e)[:200]}")
            continue
        ref = out if ref is None else ref
        same = all(torch.equal(a, b) for a, b in zip(out, ref))
        emit(what="topq", cfg=str(cfg), F=F, FB=FB, q=q, seconds=seconds, same=same, gated=tc.LAST_TOPQ.get("gated"))
        if same and (best is None or seconds < best[0]):
            best = (seconds, cfg)
    if best:
        emit(what="topq best", cfg=str(best[1]), seconds=best[0], topq=",".join(map(str, best[1])))
        for cfg in dict.fromkeys((TOPQ_SWEEP[0], best[1])):
            if time.perf_counter() > t_end:
                emit(what="budget spent", kernel="topq ungated")
                break
            out, seconds = run(cfg, False)
            emit(what="topq ungated", cfg=str(cfg), F=F, FB=FB, q=q, seconds=seconds,
                 same=all(torch.equal(a, b) for a, b in zip(out, ref)), gated=tc.LAST_TOPQ.get("gated"))
    tc.TOPQ_DOTS_BM, tc.TOPQ_DOTS_BN, tc.TOPQ_DOTS_WARPS, tc.TOPQ_DOTS_STAGES, tc.TOPQ_DOTS_SPLITS_PER_SM = keep
    os.environ.pop("MECHPERM_GEMM_CANDIDATES", None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("F", type=int, nargs="?", default=16384)
    ap.add_argument("--json")
    ap.add_argument("--budget", type=float, default=150.0)
    ap.add_argument("--configs", type=int, default=len(CONFIGS), help="sweep only the first N configurations")
    ap.add_argument("--emit", action="store_true", help="also the threshold-and-emission selection (MECHPERM_EMIT_TOPK)")
    ap.add_argument("--gemm", action="store_true",
                    help="first the cuBLAS-block selection (MECHPERM_GEMM_CANDIDATES) by selection tile")
    ap.add_argument("--sel-configs", type=int, default=len(SEL_CONFIGS),
                    help="with --gemm, only the first N selection tiles (the first is the default)")
    ap.add_argument("--wide", type=int, metavar="FB",
                    help="only F rows against FB columns through the GEMM blocks, ungated and gated")
    ap.add_argument("--sel-sweep", action="store_true",
                    help="with --wide: the selection tiles of SEL_SWEEP instead (bf16, gated)")
    ap.add_argument("--topq-sweep", action="store_true",
                    help="with --wide: the fused pricer's tiles of TOPQ_SWEEP on cuBLAS blocks instead (screened)")
    ap.add_argument("--sel-list", help="with --sel-sweep: its entries instead of SEL_SWEEP, "
                                       "'BM,BN,warps,splits;BM,BN,warps|...' (the first is the reference)")
    args = ap.parse_args()
    F, t_end = args.F, time.perf_counter() + args.budget
    flops = 2.0 * F * F * D
    rows = []

    def emit(**row):
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              file=sys.stderr, flush=True)

    if args.wide:
        if args.topq_sweep:
            topq_sweep(F, args.wide, emit, t_end)
        elif args.sel_sweep:
            if args.sel_list:
                SEL_SWEEP[:] = [tuple(tuple(map(int, part.split(","))) for part in entry.split(";"))
                                for entry in args.sel_list.split("|")]
            sel_sweep(F, args.wide, emit, t_end)
        else:
            wide(F, args.wide, emit)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return

    A32, B32 = setup(F, torch.float32)
    out = torch.empty(F, F, device=DEV)
    torch.set_float32_matmul_precision("highest")  # the switch the GEMM path sets too (one API)
    t_mm = timed(lambda: torch.mm(A32, B32.T, out=out))
    emit(what="torch.mm fp32 (ieee)", F=F, seconds=t_mm, tflops=flops / t_mm / 1e12)
    torch.set_float32_matmul_precision("high")
    t = timed(lambda: torch.mm(A32, B32.T, out=out))
    emit(what="torch.mm fp32 (tf32)", F=F, seconds=t, tflops=flops / t / 1e12)
    torch.set_float32_matmul_precision("highest")
    A16, B16 = A32.bfloat16(), B32.bfloat16()
    t_bf = timed(lambda: torch.mm(A16, B16.T))
    emit(what="torch.mm bf16", F=F, seconds=t_bf, tflops=flops / t_bf / 1e12)
    del out
    if DEV == "cuda":
        torch.cuda.empty_cache()

    for name, (A, B) in (("fp32", (A32, B32)), ("bf16", (A16, B16))):
        ref = candidates(A, B, k=K, backend="torch")
        scale = None
        if args.gemm:  # cuBLAS blocks + the selection kernel, by selection tile (BM, BN, warps)
            os.environ["MECHPERM_GEMM_CANDIDATES"] = "1"
            for sel in SEL_CONFIGS[: args.sel_configs]:
                if time.perf_counter() > t_end:
                    break
                tc.SEL_BM, tc.SEL_BN, tc.SEL_WARPS = sel
                for what, gated in (("candidates gemm", "0"), ("candidates gemm gated", "1")):
                    os.environ["MECHPERM_GATED_SELECT"] = gated  # the running top-k / gated by group minima
                    got = timed_graph(A, B, ref, lambda e, w=what, c=str(sel): emit(what=w, dtype=name, cfg=c, error=e))
                    if got is None:
                        continue
                    t, g, same = got
                    # one GEMM here: TFLOP/s count 2·F²·D
                    emit(what=what, dtype=name, cfg=str(sel), F=F, seconds=t, tflops=flops / t / 1e12,
                         ratio_to_mm_fp32=t / t_mm, ratio_to_mm_bf16=t / t_bf, same_edges=same,
                         **{("phases" if key == "seconds" else key): val for key, val in tc.LAST_GEMM.items()})
            tc.SEL_BM, tc.SEL_BN, tc.SEL_WARPS = SEL_CONFIGS[0]
            os.environ.pop("MECHPERM_GEMM_CANDIDATES", None)
            os.environ.pop("MECHPERM_GATED_SELECT", None)
        for cfg in CONFIGS[: args.configs]:
            if time.perf_counter() > t_end:
                emit(what="budget spent", dtype=name)
                break
            tc.BM, tc.BN, tc.BD_FP32, tc.BD_16, tc.NUM_WARPS, tc.NUM_STAGES = cfg
            tc.NUM_STAGES_16 = cfg[5]
            for what, flag in (("candidates", "0"), ("candidates emit", "1")):
                if what.endswith("emit") and (not args.emit or cfg[1] > 64):
                    continue  # Triton 3.9 aborts (LLVM assertion) compiling _emit_kernel with BN = 128
                os.environ["MECHPERM_EMIT_TOPK"] = flag  # the running top-k / thresholds and emission
                got = timed_graph(A, B, ref, lambda e, w=what, c=str(cfg): emit(what=w, dtype=name, cfg=c, error=e))
                if got is None:
                    continue
                t, g, same = got
                if scale is None:
                    na, nb = (A.float() ** 2).sum(1), (B.float() ** 2).sum(1)
                    scale = na[g.row_ids()] + nb[g.indices]
                ok = g.indices == ref.indices
                err = float(((g.costs - ref.costs).abs() / scale)[ok].max()) if same else float("nan")
                extra = dict(tc.LAST_EMIT) if flag == "1" else {}
                emit(what=what, dtype=name, cfg=str(cfg), F=F, seconds=t, tflops=2 * flops / t / 1e12,
                     ratio_to_mm_fp32=t / t_mm, ratio_to_mm_bf16=t / t_bf, same_edges=same, cost_err=err, **extra)
            os.environ.pop("MECHPERM_EMIT_TOPK", None)
    tc.BM, tc.BN, tc.BD_FP32, tc.BD_16, tc.NUM_WARPS, tc.NUM_STAGES = CONFIGS[0]
    tc.NUM_STAGES_16 = 4
    dense_sweep(A32, B32, emit, t_end + 30)
    accumulation_error(A16[:4096], B16[:4096], emit)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
