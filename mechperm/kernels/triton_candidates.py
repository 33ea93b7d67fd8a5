"""Triton kernels of the candidate op (CUDA; on the CPU they run under ``TRITON_INTERPRET=1``).

Imported only by the dispatcher in ``candidates.py`` when the triton backend is chosen, so the
package works without triton. Same arithmetic as the torch reference (its docstring):
``c = max(0, (−2·⟨a, b⟩ + n_a) + n_b)`` from a ``tl.dot`` accumulated in float32 over D chunks.

Kernels
-------
_topk_kernel     per row of X, the K cheapest and the KS most cosine-similar rows of Y within a
                 column split: each cost tile is reduced on chip into a running best-K in
                 registers (int64 keys = order-preserving score bits << 32 | column, so one
                 integer carries the index and ties break by column; see ``_insert``). Columns
                 are a second launch with X and Y swapped (``SWAP`` keeps the norms' addition
                 order of the (A, B) formula): two GEMM passes in all.
_slot_min_kernel / _emit_kernel
                 the same selection, rows and columns in one launch each, without a running
                 top-k (opt-in, ``MECHPERM_EMIT_TOPK=1``; see ``_topk_emit``): the first pass
                 keeps, per row and per column, the minima of S = 4k interleaved groups of
                 tiles (atomic minima in global memory; from F = 32768 on it computes only
                 every P-th tile, P <= 4); the k-th of those is a threshold that k distinct
                 pairs meet; the second pass writes out every pair within it (~1.15 kP a row
                 where the columns come in no particular order): 1 + 1/P GEMMs in all
_select_dots_kernel
                 the running top-k's selection over float32 dots a cuBLAS GEMM wrote (the
                 default for CUDA tensors, ``MECHPERM_GEMM_CANDIDATES=0`` turns it off; see
                 ``_topk_gemm``): blocks of A's rows against
                 all of B, each read along its rows (their selections, complete) and down its
                 columns (continuing the columns' selections from block to block): one GEMM at
                 cuBLAS's pace where the fused kernels run two of their own
_group_min_kernel
                 in the first block, the minima of 64-wide groups along its rows and columns
                 (one more read; later blocks' columns' passes write the rows' minima as they
                 go): a k-th least group minimum bounds a row's / column's k-th score, and
                 ``_select_dots_kernel`` then inserts only pairs within it (GATED; the
                 default, ``MECHPERM_GATED_SELECT=0`` turns it off): far fewer insertion
                 rounds, the same keys
_pair_kernel     costs of listed pairs (the cosine edges' costs; row-wise dot, so they agree
                 with tile costs to float32 rounding, not bit for bit)
_dense_kernel    the full cost matrix
_price_kernel    pairs with (c − u) − v < −tol, float64; compacted through an atomic counter
_topq_kernel     per listed row, the q pairs of smallest reduced cost (c − u) − v (float64 from
                 the tile's float32 cost), ranked by its float32 rounding in the same running
                 top-k as ``_topk_kernel``: the certificate's row pricer without a cost matrix
                 (on CUDA it reads the rows' dots from cuBLAS: ``gemm_enabled``); gated like
                 ``_select_dots_kernel`` by a first launch that writes its tiles' row minima

Every selection tests a tile's float32 row minima against the rows' K-th first
(``_insert_scores``): past the first tiles most hold nothing to insert and build no int64 keys.

fp32 inputs use ``tl.dot(input_precision=$MECHPERM_DOT_PRECISION or "tf32x3")`` (3×TF32,
float32-level accuracy on tensor cores; "ieee" is exact FMA, slower); bf16/fp16 products are
exact in the float32 accumulator.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor

import mechperm.kernels.candidates  # noqa: F401

ref = sys.modules["mechperm.kernels.candidates"]  # the module (the package re-exports its function)

# Tile rows, tile columns, D chunk by input width, warps and pipeline stages per program.
# Module globals read at every launch, so ``bench/bench_triton_tiles.py`` can sweep them.
# Measured on an H200 (bench/bench_triton_tiles.py, F = 16384, d = 2304, k = 32): 64 x 64 tiles
# with 4 warps beat 32 x 64 (the first guess) by 1.36x in fp32 and 1.32x in bf16, and the larger
# tiles (64/128 x 128, 8 warps) by 1.1-1.4x: the running top-k in registers grows with the tile.
# D chunks of 64 gained 1.12x in fp32; bf16 gained 1.18x from 4 pipeline stages.
BM, BN, BD_FP32, BD_16 = 64, 64, 64, 64
NUM_WARPS, NUM_STAGES, NUM_STAGES_16 = 4, 3, 4
# The dense kernel (the CUDA pricer's rows, small dense problems) keeps no top-k in registers:
# it takes a plain GEMM's larger tiles.
DENSE_BM, DENSE_BN, DENSE_WARPS = 128, 128, 8
# The emission path (_topk_emit): groups per row / column S = EMIT_SLOTS_PER_K x the largest k;
# the thresholds' pass computes 1/P of the tiles, P <= EMIT_STRIDE_MAX while every row and
# column still sees 2S tiles; room per row / column = EMIT_ROOM_PER_K x k x P + EMIT_ROOM_EXTRA
# (overflowing rows are redone by _topk). Simulated on i.i.d. orderings, S = 4k leaves ~1.15 kP
# pairs within the threshold (F = 1M, P = 4: mean 141, max of 30 rows 192 at k = 32).
EMIT_SLOTS_PER_K, EMIT_STRIDE_MAX, EMIT_ROOM_PER_K, EMIT_ROOM_EXTRA = 4, 4, 2, 32
# The GEMM-block path (_topk_gemm, MECHPERM_GEMM_CANDIDATES=1): float32 dots of a block of A's
# rows against all of B (at most GEMM_BLOCK_BYTES), and the selection kernel's tiles.
GEMM_BLOCK_BYTES = 8 << 30
# Swept on an H100 (2026-11-27, bench_triton_tiles.py --wide 1048576 --sel-sweep: 8192 rows of
# bf16 vectors against 1M, gated, the graph the same bit for bit): small programs, many of them,
# read a block of dots faster than 64 x 64 tiles with 4 warps (the running top-k lives in
# registers; fewer rows a program leaves room for more programs an SM). Rows' pass 0.071 ->
# 0.036-0.038 s, columns' pass 0.161 -> 0.083-0.105 s; match_vectors at F = 1M 42.1 -> 32.1 s.
SEL_BM, SEL_BN, SEL_WARPS = 32, 64, 2  # the rows' pass and the group minima
SEL_COL_BM, SEL_COL_BN, SEL_COL_WARPS = 32, 32, 2  # the columns' pass (SWAP)
SEL_SPLITS_PER_SM = 16  # the rows' pass: column splits enough for this many programs per SM
# The fused row pricer reading cuBLAS blocks (price_rows_topq on the GEMM path): its own tile
# (rows, columns, warps), pipeline stages (None: the fused kernels' by dtype) and column splits
# (programs an SM). The fused kernels' tile until swept: at F = 1M (H100, 2026-11-27) it priced
# 2048-row chunks at ~0.2 s each, ~8x the candidates' rows pass per block
# (bench_triton_tiles.py --wide --topq-sweep sweeps it).
TOPQ_DOTS_BM, TOPQ_DOTS_BN, TOPQ_DOTS_WARPS, TOPQ_DOTS_STAGES, TOPQ_DOTS_SPLITS_PER_SM = 64, 64, 4, None, 4
EMIT_CHUNK = 1 << 16  # rows of the emitted lists selected at a time (bounds the temporaries)
_INT32_MAX = 2**31 - 1


def _precision(X: Tensor) -> str | None:
    if X.device.type != "cuda":
        return "upcast" if X.dtype != torch.float32 else "ieee"  # interpreter (see _dot_tile)
    if X.dtype != torch.float32:
        return None  # 16-bit products are exact in float32; the flag only concerns fp32 operands
    p = os.environ.get("MECHPERM_DOT_PRECISION", "tf32x3").strip().lower()
    if p not in ("ieee", "tf32x3", "tf32"):
        raise ValueError(f"MECHPERM_DOT_PRECISION={p!r}: use 'ieee', 'tf32x3' or 'tf32'")
    return p


@triton.jit
def _dot_tile(X, Y, xr, yr, xm, ym, D, sx, sy,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] = ⟨X[xr], Y[yr]⟩ in float32, D looped in BLOCK_D chunks (masked tail).

    PRECISION "upcast" converts 16-bit chunks to float32 first: the Triton 3.9 interpreter's
    bf16 ``tl.dot`` returns garbage, so interpreted runs (CPU tensors) use it.
    """
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    xp = X + xr.to(tl.int64)[:, None] * sx
    yp = Y + yr.to(tl.int64)[:, None] * sy
    for d0 in range(0, D, BLOCK_D):
        dm = (d0 + offs_d) < D
        x = tl.load(xp + (d0 + offs_d)[None, :], mask=xm[:, None] & dm[None, :], other=0.0)
        y = tl.load(yp + (d0 + offs_d)[None, :], mask=ym[:, None] & dm[None, :], other=0.0)
        if PRECISION == "upcast":
            acc = tl.dot(x.to(tl.float32), tl.trans(y.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(y), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _pack(score, col):
    """(float32 score, column) → int64 key with the order of (score, column)."""
    b = score.to(tl.int32, bitcast=True)
    b = b ^ ((b >> 31) & 0x7FFFFFFF)  # negatives mirrored: signed-int order = float order
    return (b.to(tl.int64) << 32) | col.to(tl.int64)


@triton.jit
def _insert(best, thr, cap, key, pos):
    """Move the keys of tile ``key [BM, BN]`` below ``min(thr, cap)`` into ``best [BM, KP]``,
    smallest first.

    ``best`` is unsorted; its used slots hold the row's current best keys (MAXKEY while empty),
    unused ones MINKEY; ``thr`` is its maximum (the K-th best). ``cap`` [BM] is a key no wanted
    key exceeds (MAXKEY where none is known; see ``_group_min_kernel``). Each round moves the
    tile's minimum of every row that still beats its gate into the slot of its K-th; after the
    first tiles a row rarely has more than a few such keys, so most tiles cost one min-reduction.
    """
    m = tl.min(key, axis=1)
    while tl.max((m < tl.minimum(thr, cap)).to(tl.int32), axis=0) > 0:
        ins = m < tl.minimum(thr, cap)
        slot = tl.min(tl.where(best == thr[:, None], pos[None, :], pos.shape[0]), axis=1)
        best = tl.where((pos[None, :] == slot[:, None]) & ins[:, None], m[:, None], best)
        thr = tl.max(best, axis=1)
        key = tl.where(key == m[:, None], 0x7FFFFFFFFFFFFFFF, key)  # keys are unique (column bits)
        m = tl.min(key, axis=1)
    return best, thr


@triton.jit
def _key_score(thr):
    """The float32 score of int64 keys (their high word); +inf for an empty slot's MAXKEY."""
    hi = (thr >> 32).to(tl.int32)
    f = (hi ^ ((hi >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
    return tl.where(hi == 0x7FFFFFFF, float("inf"), f)


@triton.jit
def _insert_scores(best, thr, cap, score, cols, valid, pos):
    """:func:`_insert` of a tile of float32 scores [BM, BN] with columns ``cols`` (entries
    outside ``valid`` ignored). A float minimum per row decides first: once the rows' K-th are
    set most tiles hold no score at or below them, and build no int64 keys."""
    m = tl.min(tl.where(valid, score, float("inf")), axis=1)
    if tl.max((m <= _key_score(tl.minimum(thr, cap))).to(tl.int32), axis=0) > 0:
        key = tl.where(valid, _pack(score, cols), 0x7FFFFFFFFFFFFFFF)
        best, thr = _insert(best, thr, cap, key, pos)
    return best, thr


@triton.jit
def _no_cap(BLOCK_M: tl.constexpr):
    """The ``cap`` of an ungated selection: MAXKEY per row."""
    return tl.full((BLOCK_M,), 0x7FFFFFFFFFFFFFFF, tl.int64)


@triton.jit
def _empty_best(K: tl.constexpr, KP: tl.constexpr, BLOCK_M: tl.constexpr):
    """[BLOCK_M, KP] keys of empty selections: K slots MAXKEY, the rest MINKEY (never replaced)."""
    pos = tl.arange(0, KP)
    best = tl.where(pos[None, :] < K, 0x7FFFFFFFFFFFFFFF, -0x7FFFFFFFFFFFFFFF - 1).to(tl.int64)
    return tl.broadcast_to(best, (BLOCK_M, KP))


@triton.jit
def _cost(acc, na, nb):
    """max(0, (−2⟨a,b⟩ + n_a) + n_b) of a tile of dots: the one formula of every selection and
    of the gates' group minima (which must be the selections' values bit for bit)."""
    return tl.maximum((acc * -2.0 + na) + nb, 0.0)


@triton.jit
def _select_tile(acc, nx, ix, ny, iy, keycols, valid, best_c, thr_c, cap_c, best_s, thr_s, cap_s, pos,
                 KS: tl.constexpr, SWAP: tl.constexpr):
    """One tile of dot products into the running selections: costs (the (A, B) formula's order
    also when SWAP puts B's rows first) and, with KS > 0, −cosines."""
    if SWAP:  # X holds B, Y holds A: c = (−2⟨a,b⟩ + n_a) + n_b as in the (A, B) launch
        cost = _cost(acc, ny[None, :], nx[:, None])
    else:
        cost = _cost(acc, nx[:, None], ny[None, :])
    best_c, thr_c = _insert_scores(best_c, thr_c, cap_c, cost, keycols, valid, pos)
    if KS > 0:
        neg_cos = -((acc * ix[:, None]) * iy[None, :])
        best_s, thr_s = _insert_scores(best_s, thr_s, cap_s, neg_cos, keycols, valid, pos)
    return best_c, thr_c, best_s, thr_s


@triton.jit
def _split_program(M, N, cols_per_split, BLOCK_M: tl.constexpr):
    """The rows of this program (grid axis 0), their mask, its column split (axis 1) as the
    range [n_lo, n_hi), and the number of splits: the layout of the per-row selection kernels."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_lo = tl.program_id(1) * cols_per_split
    return rows, rows < M, n_lo, tl.minimum(n_lo + cols_per_split, N), tl.program_id(1), tl.num_programs(1)


@triton.jit
def _col_tile(n0, n_hi, BLOCK_N: tl.constexpr):
    cols = n0 + tl.arange(0, BLOCK_N)
    return cols, cols < n_hi


@triton.jit
def _topk_kernel(
    X, Y,            # [M, D], [N, D] matching vectors (fp32 / bf16 / fp16), unit stride along D
    NX, NY,          # [M], [N] float32 squared norms
    IX, IY,          # [M], [N] float32 inverse norms (0 for zero rows); read when KS > 0
    OUT_C,           # [M, S, KC] int64 keys (cost, column): the KC cheapest per row and split
    OUT_S,           # [M, S, KS] int64 keys (−cos, column): the KS most similar per row and split
    M, N, D, cols_per_split, sx, sy,
    KC: tl.constexpr, KS: tl.constexpr, KP: tl.constexpr, SWAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, n_lo, n_hi, pid_s, n_split = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    ix = tl.load(IX + rows, mask=rmask, other=0.0)
    pos = tl.arange(0, KP)
    best_c, best_s = _empty_best(KC, KP, BLOCK_M), _empty_best(KS, KP, BLOCK_M)
    thr_c = tl.max(best_c, axis=1)
    thr_s = tl.max(best_s, axis=1)
    cap = _no_cap(BLOCK_M)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        acc = _dot_tile(X, Y, rows, cols, rmask, cmask, D, sx, sy, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        ny = tl.load(NY + cols, mask=cmask, other=0.0)
        iy = ny
        if KS > 0:
            iy = tl.load(IY + cols, mask=cmask, other=0.0)
        best_c, thr_c, best_s, thr_s = _select_tile(acc, nx, ix, ny, iy, cols, rmask[:, None] & cmask[None, :],
                                                    best_c, thr_c, cap, best_s, thr_s, cap, pos, KS, SWAP)
    base = rows.to(tl.int64)[:, None] * n_split + pid_s
    tl.store(OUT_C + base * KC + pos[None, :], best_c, mask=rmask[:, None] & (pos[None, :] < KC))
    if KS > 0:
        tl.store(OUT_S + base * KS + pos[None, :], best_s, mask=rmask[:, None] & (pos[None, :] < KS))


@triton.jit
def _select_dots_kernel(
    DOTS,            # float32 dot products of a block, row-major with ``ld`` columns
    NX, NY,          # [M], [N] float32 squared norms of the x and y items
    IX, IY,          # [M], [N] float32 inverse norms; read when KS > 0
    OUT_C, OUT_S,    # as _topk_kernel; with INIT (one split) they hold the running selections
    CAP_C, CAP_S,    # [M] int64 keys above every wanted one (``_group_min_kernel``); read when GATED
    YMIN_C, YMIN_S,  # [N, ceil(M / BLOCK_M)] float32: per y item, its least cost / −cos over each
                     # program's x items (written when Y_MINIMA >= 1 / 2)
    M, N, cols_per_split, ld, y_off,
    KC: tl.constexpr, KS: tl.constexpr, KP: tl.constexpr, SWAP: tl.constexpr, INIT: tl.constexpr,
    GATED: tl.constexpr, Y_MINIMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``_topk_kernel``'s selection over dot products a GEMM wrote (``_topk_gemm``): per x item,
    the KC cheapest and KS most similar y items, keyed by ``y + y_off``. Rows of A as x items
    read the block along its rows (⟨x, y⟩ at x · ld + y); B's columns as x items (SWAP) read it
    down its columns (at x + y · ld: consecutive x items are adjacent, so the loads coalesce
    across them) and, with INIT, continue the selections of earlier blocks of rows. GATED: only
    keys below the x item's cap are inserted (a bound on its K-th, so the result is the same).
    Y_MINIMA (one split): the y items' group minima as ``_group_min_kernel`` writes them, a
    group being this program's x items: the columns' pass gives the rows' gates for the rows'
    pass that follows, without a read of its own."""
    rows, rmask, n_lo, n_hi, pid_s, n_split = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    ix = nx
    if KS > 0:
        ix = tl.load(IX + rows, mask=rmask, other=0.0)
    pos = tl.arange(0, KP)
    base = rows.to(tl.int64)[:, None] * n_split + pid_s
    best_c, best_s = _empty_best(KC, KP, BLOCK_M), _empty_best(KS, KP, BLOCK_M)
    cap_c, cap_s = _no_cap(BLOCK_M), _no_cap(BLOCK_M)
    if GATED:
        cap_c = tl.load(CAP_C + rows, mask=rmask, other=0x7FFFFFFFFFFFFFFF)
        if KS > 0:
            cap_s = tl.load(CAP_S + rows, mask=rmask, other=0x7FFFFFFFFFFFFFFF)
    if INIT:
        kept = rmask[:, None] & (pos[None, :] < KC)
        best_c = tl.where(kept, tl.load(OUT_C + base * KC + pos[None, :], mask=kept, other=0), best_c)
        if KS > 0:
            kept = rmask[:, None] & (pos[None, :] < KS)
            best_s = tl.where(kept, tl.load(OUT_S + base * KS + pos[None, :], mask=kept, other=0), best_s)
    thr_c = tl.max(best_c, axis=1)
    thr_s = tl.max(best_s, axis=1)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        valid = rmask[:, None] & cmask[None, :]
        if SWAP:  # the strides as literals: the compiler sees which way the tile is contiguous
            acc = tl.load(DOTS + rows[:, None] + cols.to(tl.int64)[None, :] * ld, mask=valid, other=0.0)
        else:
            acc = tl.load(DOTS + rows.to(tl.int64)[:, None] * ld + cols[None, :], mask=valid, other=0.0)
        ny = tl.load(NY + cols, mask=cmask, other=0.0)
        iy = ny
        if KS > 0:
            iy = tl.load(IY + cols, mask=cmask, other=0.0)
        best_c, thr_c, best_s, thr_s = _select_tile(acc, nx, ix, ny, iy, cols + y_off, valid,
                                                    best_c, thr_c, cap_c, best_s, thr_s, cap_s, pos, KS, SWAP)
        if Y_MINIMA >= 1:  # the scores as _select_tile's (the costs bit for bit), least per y item
            at = cols.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
            if SWAP:
                cost = _cost(acc, ny[None, :], nx[:, None])
            else:
                cost = _cost(acc, nx[:, None], ny[None, :])
            tl.store(YMIN_C + at, tl.min(tl.where(valid, cost, float("inf")), axis=0), mask=cmask)
            if Y_MINIMA >= 2:
                ix_m, iy_m = ix, iy
                if KS == 0:
                    ix_m = tl.load(IX + rows, mask=rmask, other=0.0)
                    iy_m = tl.load(IY + cols, mask=cmask, other=0.0)
                neg_cos = -((acc * ix_m[:, None]) * iy_m[None, :])
                tl.store(YMIN_S + at, tl.min(tl.where(valid, neg_cos, float("inf")), axis=0), mask=cmask)
    tl.store(OUT_C + base * KC + pos[None, :], best_c, mask=rmask[:, None] & (pos[None, :] < KC))
    if KS > 0:
        tl.store(OUT_S + base * KS + pos[None, :], best_s, mask=rmask[:, None] & (pos[None, :] < KS))


@triton.jit
def _group_min_kernel(
    DOTS,            # [M, ld] float32 dot products of a block (rows: A's items, columns: B's)
    NX, NY,          # [M], [N] float32 squared norms of A's and B's items
    IX, IY,          # [M], [N] float32 inverse norms; read when COS
    RMIN_C, RMIN_S,  # [M, ceil(N / BLOCK_N)] float32: per row, the least cost / −cos of each tile
    CMIN_C, CMIN_S,  # [N, ceil(M / BLOCK_M)]: per column, the same over each tile of rows
    M, N, cols_per_split, ld,
    COS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Group minima of one block of dots, read once along its rows: a row's k-th least tile
    minimum is met by k distinct pairs, so it bounds the row's k-th least score from above (the
    gate of ``_select_dots_kernel``); the columns' minima do the same for the columns. Scores
    as ``_select_tile`` (the costs bit for bit; the −cosines' products in the rows' order).
    The first block's gates (``_topk_gemm``; later blocks take the rows' minima from the
    columns' pass, ``_select_dots_kernel``'s Y_MINIMA)."""
    rows, rmask, n_lo, n_hi, _, _ = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    ix = nx
    if COS:
        ix = tl.load(IX + rows, mask=rmask, other=0.0)
    n_row_tiles = tl.cdiv(M, BLOCK_M)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        valid = rmask[:, None] & cmask[None, :]
        acc = tl.load(DOTS + rows.to(tl.int64)[:, None] * ld + cols[None, :], mask=valid, other=0.0)
        ny = tl.load(NY + cols, mask=cmask, other=0.0)
        cost = tl.where(valid, _cost(acc, nx[:, None], ny[None, :]), float("inf"))
        tile = n0 // BLOCK_N
        tl.store(RMIN_C + rows.to(tl.int64) * n_col_tiles + tile, tl.min(cost, axis=1), mask=rmask)
        tl.store(CMIN_C + cols.to(tl.int64) * n_row_tiles + tl.program_id(0), tl.min(cost, axis=0), mask=cmask)
        if COS:
            iy = tl.load(IY + cols, mask=cmask, other=0.0)
            neg_cos = tl.where(valid, -((acc * ix[:, None]) * iy[None, :]), float("inf"))
            tl.store(RMIN_S + rows.to(tl.int64) * n_col_tiles + tile, tl.min(neg_cos, axis=1), mask=rmask)
            tl.store(CMIN_S + cols.to(tl.int64) * n_row_tiles + tl.program_id(0), tl.min(neg_cos, axis=0),
                     mask=cmask)


@triton.jit
def _key32(score):
    """float32 → int32 with the same order (atomic minima on ints, whatever the signs)."""
    b = score.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _tile_scores(X, Y, NX, NY, IX, IY, rows, rmask, cols, cmask, nx, ix, D, sx, sy,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                 COS: tl.constexpr):
    """Costs (as ``_topk_kernel`` with X = A) and −cosines of one tile; +inf outside the masks."""
    acc = _dot_tile(X, Y, rows, cols, rmask, cmask, D, sx, sy, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    ny = tl.load(NY + cols, mask=cmask, other=0.0)
    valid = rmask[:, None] & cmask[None, :]
    cost = tl.where(valid, tl.maximum((acc * -2.0 + nx[:, None]) + ny[None, :], 0.0), float("inf"))
    neg_cos = cost
    if COS:
        iy = tl.load(IY + cols, mask=cmask, other=0.0)
        neg_cos = tl.where(valid, -((acc * ix[:, None]) * iy[None, :]), float("inf"))
    return cost, neg_cos


@triton.jit
def _slot_min_kernel(
    X, Y,            # [M, D], [N, D] matching vectors (X = A, Y = B)
    NX, NY, IX, IY,  # [M], [N] float32 squared norms, inverse norms
    RC, RS,          # [M, S] int32 (_key32) per row: least cost, least −cos of each tile group
    CC, CS,          # [N, S] int32 per column: the same over row-block groups
    M, N, D, cols_per_split, sx, sy,
    P,               # stride: row block b visits the column tiles t with t = b mod P only
    S: tl.constexpr, COS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Group minima over the tiles (b, t) with t = b mod P (1/P of the GEMM): column tile t of
    a row goes to slot (t div P) mod S, row block b of a column to slot (b div P) mod S. Each
    slot's minimum is one pair's score and the slots' pairs are distinct, so the k-th least slot
    is met by k distinct pairs: at least the k-th least score overall."""
    rows, rmask, n_lo, n_hi, pid_s, n_split = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    ix = tl.load(IX + rows, mask=rmask, other=0.0)
    row_slots = rows.to(tl.int64) * S
    b = tl.program_id(0)
    col_slot = (b // P) % S
    t_lo = n_lo // BLOCK_N
    first = t_lo + ((b - t_lo) % P + P) % P  # the first tile of the split with t = b mod P
    for n0 in range(first * BLOCK_N, n_hi, BLOCK_N * P):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        cost, neg_cos = _tile_scores(X, Y, NX, NY, IX, IY, rows, rmask, cols, cmask, nx, ix, D, sx, sy,
                                     BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, COS)
        t_slot = (n0 // BLOCK_N // P) % S
        tl.atomic_min(RC + row_slots + t_slot, _key32(tl.min(cost, axis=1)), mask=rmask, sem="relaxed")
        tl.atomic_min(CC + cols.to(tl.int64) * S + col_slot, _key32(tl.min(cost, axis=0)), mask=cmask,
                      sem="relaxed")
        if COS:
            tl.atomic_min(RS + row_slots + t_slot, _key32(tl.min(neg_cos, axis=1)), mask=rmask, sem="relaxed")
            tl.atomic_min(CS + cols.to(tl.int64) * S + col_slot, _key32(tl.min(neg_cos, axis=0)), mask=cmask,
                          sem="relaxed")


@triton.jit
def _emit(score, hit, ids, other, CNT, OUT_I, OUT_V, ROOM, AXIS: tl.constexpr):
    """Append (other, score) of every entry of ``hit`` to the list of its owner: row ``ids[i]``
    of OUT_I / OUT_V [*, ROOM] for AXIS 1, column ``ids[j]`` for AXIS 0. One atomic per owner
    reserves its entries' places (CNT counts past ROOM, so overflow is seen).

    Why not one atomic per entry: Triton 3.9 fails to compile that for a tile from tl.dot
    (RemoveLayoutConversions) when the owners are its rows."""
    h = hit.to(tl.int32)
    n = tl.sum(h, axis=AXIS)
    base = tl.atomic_add(CNT + ids, n, mask=n > 0, sem="relaxed")
    if AXIS == 1:
        at = base[:, None] + tl.cumsum(h, axis=1) - 1
        dst = ids.to(tl.int64)[:, None] * ROOM + at
    else:
        at = base[None, :] + tl.cumsum(h, axis=0) - 1
        dst = ids.to(tl.int64)[None, :] * ROOM + at
    ok = hit & (at < ROOM)
    tl.store(OUT_I + dst, other, mask=ok)
    tl.store(OUT_V + dst, score, mask=ok)


@triton.jit
def _emit_kernel(
    X, Y, NX, NY, IX, IY,           # as _slot_min_kernel
    TRC, TRS, TCC, TCS,             # [M], [M], [N], [N] float32 thresholds (cost, −cos; rows, columns)
    NRC, NRS, NCC, NCS,             # the same shapes, int32 counts of pairs within them
    RCI, RCV, RSI, RSV,             # [M, ROOM] int32 columns and float32 scores per row (cost, −cos)
    CCI, CCV, CSI, CSV,             # [N, ROOM] int32 rows and float32 scores per column
    M, N, D, cols_per_split, sx, sy,
    ROOM, COS: tl.constexpr,        # ROOM a runtime value: one compile for every tile stride
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    rows, rmask, n_lo, n_hi, pid_s, n_split = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    ix = tl.load(IX + rows, mask=rmask, other=0.0)
    trc = tl.load(TRC + rows, mask=rmask, other=float("-inf"))
    trs = tl.load(TRS + rows, mask=rmask, other=float("-inf"))
    r2 = tl.broadcast_to(rows[:, None], (BLOCK_M, BLOCK_N))
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        cost, neg_cos = _tile_scores(X, Y, NX, NY, IX, IY, rows, rmask, cols, cmask, nx, ix, D, sx, sy,
                                     BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, COS)
        tcc = tl.load(TCC + cols, mask=cmask, other=float("-inf"))
        inside = cost < float("inf")  # +inf: outside the tile
        h_rc = (cost <= trc[:, None]) & inside
        h_cc = (cost <= tcc[None, :]) & inside
        hits = h_rc | h_cc
        if COS:
            tcs = tl.load(TCS + cols, mask=cmask, other=float("-inf"))
            h_rs = (neg_cos <= trs[:, None]) & inside
            h_cs = (neg_cos <= tcs[None, :]) & inside
            hits = hits | h_rs | h_cs
        # One test for all four lists: most tiles of a large problem hold no entry for any.
        if tl.max(tl.max(hits.to(tl.int32), axis=1), axis=0) > 0:
            c2 = tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N))
            _emit(cost, h_rc, rows, c2, NRC, RCI, RCV, ROOM, 1)
            _emit(cost, h_cc, cols, r2, NCC, CCI, CCV, ROOM, 0)
            if COS:
                _emit(neg_cos, h_rs, rows, c2, NRS, RSI, RSV, ROOM, 1)
                _emit(neg_cos, h_cs, cols, r2, NCS, CSI, CSV, ROOM, 0)


@triton.jit
def _pair_kernel(
    X, Y,            # [M, D], [N, D]
    NX, NY,          # [M], [N] float32 squared norms
    I, J,            # [P] int64 pair rows in X, rows in Y
    OUT,             # [P] float32 costs
    P, D, sx, sy,
    BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, FP64: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = offs < P
    i = tl.load(I + offs, mask=pm, other=0)
    j = tl.load(J + offs, mask=pm, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float64 if FP64 else tl.float32)
    for d0 in range(0, D, BLOCK_D):
        m = pm[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(X + i[:, None] * sx + (d0 + offs_d)[None, :], mask=m, other=0.0)
        y = tl.load(Y + j[:, None] * sy + (d0 + offs_d)[None, :], mask=m, other=0.0)
        if FP64:
            acc += tl.sum(x.to(tl.float64) * y.to(tl.float64), axis=1)
        else:
            acc += tl.sum(x.to(tl.float32) * y.to(tl.float32), axis=1)
    nx = tl.load(NX + i, mask=pm, other=0.0)
    ny = tl.load(NY + j, mask=pm, other=0.0)
    if FP64:  # the screen's exact costs: |a|² + |b|² − 2 a·b in float64, rounded once
        cost = tl.maximum(nx.to(tl.float64) + ny.to(tl.float64) - 2.0 * acc, 0.0).to(tl.float32)
    else:
        cost = tl.maximum((acc * -2.0 + nx) + ny, 0.0)
    tl.store(OUT + offs, cost, mask=pm)


@triton.jit
def _screen_side_kernel(
    X,               # [M, D] float32
    X16,             # [M, D] bf16, X's rounding: flushed to 0 in place below TINY
    NX,              # [M] float32 squared norms of X
    SUMS,            # [5, M] float64 out: Σ x~², Σ (x~ − x)², Σ x², unused, flag
    M, D, sx, s16,
    TINY: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One read of both roundings for the screen's per-row statistics (screen_cuda._side), in
    # place of ~15 torch ops, float64 copies of the block and two synchronisations a side.
    # flag: 2 where |x|² is not finite, else 1 where x~ holds a non-finite value (bf16 overflow).
    # int64 rows: at 1M rows of 2304 the offsets pass 2^31 (int32 wrapped on an H100: an illegal address)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = rows < M
    offs_d = tl.arange(0, BLOCK_D)
    s_b = tl.zeros((BLOCK_M,), dtype=tl.float64)
    s_e = tl.zeros((BLOCK_M,), dtype=tl.float64)
    s_x = tl.zeros((BLOCK_M,), dtype=tl.float64)
    bad = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        m = rm[:, None] & ((d0 + offs_d) < D)[None, :]
        x = tl.load(X + rows[:, None] * sx + (d0 + offs_d)[None, :], mask=m, other=0.0)
        at16 = X16 + rows[:, None] * s16 + (d0 + offs_d)[None, :]
        b = tl.load(at16, mask=m, other=0.0).to(tl.float32)
        b = tl.where(tl.abs(b) < TINY, 0.0, b)
        tl.store(at16, b.to(tl.bfloat16), mask=m)  # exact: b is a bf16 value
        bad = tl.maximum(bad, tl.max(tl.where(m & ~(tl.abs(b) < float("inf")), 1, 0), axis=1))
        bd, xd = b.to(tl.float64), x.to(tl.float64)
        s_b += tl.sum(bd * bd, axis=1)
        s_e += tl.sum((bd - xd) * (bd - xd), axis=1)
        s_x += tl.sum(xd * xd, axis=1)
    nx = tl.load(NX + rows, mask=rm, other=0.0)
    bad = tl.where(tl.abs(nx) < float("inf"), bad, 2)
    tl.store(SUMS + rows, s_b, mask=rm)
    tl.store(SUMS + M + rows, s_e, mask=rm)
    tl.store(SUMS + 2 * M + rows, s_x, mask=rm)
    tl.store(SUMS + 4 * M + rows, bad.to(tl.float64), mask=rm)


def screen_side(X: Tensor, nx: Tensor, tiny: float) -> tuple[Tensor, Tensor]:
    """(bf16 rounding of float32 ``X`` [M, D] with values below ``tiny`` flushed to 0,
    float64 [5, M]: per row Σ x~², Σ (x~ − x)², Σ x², 0, and a flag: 2 where ``nx`` (X's
    float32 squared norms) is not finite, else 1 where x~ holds a non-finite value). Exact
    sums of exact float64 squares in another order than torch's ``norm``: within its
    D·2⁻⁵³ relative error, which :mod:`screen_cuda` rounds up by."""
    X = X.contiguous()  # the kernel steps along D one element at a time
    M, D = X.shape
    x16 = X.to(torch.bfloat16)
    sums = torch.zeros(5, M, dtype=torch.float64, device=X.device)
    if M and D:
        _screen_side_kernel[(triton.cdiv(M, 16),)](X, x16, nx, sums, M, D, X.stride(0), x16.stride(0),
                                                   TINY=tiny, BLOCK_M=16, BLOCK_D=128, num_warps=4)
    return x16, sums


@triton.jit
def _dense_kernel(
    X, Y,            # [M, D], [N, D]
    NX, NY,          # [M], [N] float32 squared norms
    OUT,             # [M, N] float32 costs
    M, N, D, sx, sy,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm, cm = rows < M, cols < N
    acc = _dot_tile(X, Y, rows, cols, rm, cm, D, sx, sy, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    nx = tl.load(NX + rows, mask=rm, other=0.0)
    ny = tl.load(NY + cols, mask=cm, other=0.0)
    cost = tl.maximum((acc * -2.0 + nx[:, None]) + ny[None, :], 0.0)
    tl.store(OUT + rows.to(tl.int64)[:, None] * N + cols[None, :], cost, mask=rm[:, None] & cm[None, :])


@triton.jit
def _price_kernel(
    X, Y,            # [F_a, D], [N, D]
    NX, NY,          # [F_a], [N] float32 squared norms
    U, V,            # [F_a], [N] float64 duals
    ROWS,            # [M] int64 rows of X to price
    TOL,             # [1] float64
    OUT_R, OUT_C,    # [capacity] int64 pair rows / columns
    OUT_COST,        # [capacity] float32 costs
    COUNT,           # [1] int32 pairs found (may exceed capacity: the host relaunches)
    M, N, D, sx, sy, capacity,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    ri = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm, cm = ri < M, cols < N
    rows = tl.load(ROWS + ri, mask=rm, other=0)
    acc = _dot_tile(X, Y, rows, cols, rm, cm, D, sx, sy, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
    nx = tl.load(NX + rows, mask=rm, other=0.0)
    ny = tl.load(NY + cols, mask=cm, other=0.0)
    cost = tl.maximum((acc * -2.0 + nx[:, None]) + ny[None, :], 0.0)
    u = tl.load(U + rows, mask=rm, other=0.0)
    v = tl.load(V + cols, mask=cm, other=0.0)
    red = (cost.to(tl.float64) - u[:, None]) - v[None, :]
    hit = (red < -tl.load(TOL)) & rm[:, None] & cm[None, :]
    n = tl.sum(hit.to(tl.int32))
    if n > 0:
        base = tl.atomic_add(COUNT, n)
        flat = tl.reshape(hit.to(tl.int32), (BLOCK_M * BLOCK_N,))
        at = base + tl.cumsum(flat, 0) - 1
        ok = (flat > 0) & (at < capacity)
        r2 = tl.reshape(tl.broadcast_to(rows[:, None], (BLOCK_M, BLOCK_N)), (BLOCK_M * BLOCK_N,))
        c2 = tl.reshape(tl.broadcast_to(cols[None, :], (BLOCK_M, BLOCK_N)), (BLOCK_M * BLOCK_N,))
        tl.store(OUT_R + at, r2.to(tl.int64), mask=ok)
        tl.store(OUT_C + at, c2.to(tl.int64), mask=ok)
        tl.store(OUT_COST + at, tl.reshape(cost, (BLOCK_M * BLOCK_N,)), mask=ok)


@triton.jit
def _topq_kernel(
    X, Y,            # [M, D] the rows to price (gathered), [N, D]
    NX, NY,          # [M], [N] float32 squared norms
    U, V,            # [M] (gathered), [N] float64 duals
    SX, SY,          # [4, M] (gathered), [4, N] float64 screen statistics (read when SCREEN)
    GAMMA, ABS,      # float: the screen's accumulation bound and absolute slack
    OUT,             # [M, S, Q] int64 keys (float32 reduced cost, column): the Q least per row and split
    DOTS,            # [M, N] float32 dot products of X and Y (read instead of X, Y when FROM_DOTS)
    CAP,             # [M] int64 keys above every wanted one (from a MINIMA launch); read when GATED
    RMIN,            # [M, ceil(N / BLOCK_N)] float32 per row, the least score of each tile (MINIMA)
    M, N, D, cols_per_split, sx, sy,
    Q: tl.constexpr, KP: tl.constexpr, SCREEN: tl.constexpr, FROM_DOTS: tl.constexpr,
    GATED: tl.constexpr, MINIMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    """Per row, the Q least float32 scores (reduced costs; SCREEN: lower bounds on the exact
    ones) of its split. MINIMA: writes each tile's row minima of the same scores instead (the
    gate's pass, ``price_rows_topq``); GATED: inserts only keys below the row's CAP."""
    rows, rmask, n_lo, n_hi, pid_s, n_split = _split_program(M, N, cols_per_split, BLOCK_M)
    nx = tl.load(NX + rows, mask=rmask, other=0.0)
    u = tl.load(U + rows, mask=rmask, other=0.0)
    if SCREEN:  # |x~|, |x~ − x|, |x|, float32 |x|² (kernels/screen.py's statistics)
        an = tl.load(SX + rows, mask=rmask, other=0.0)
        ar = tl.load(SX + M + rows, mask=rmask, other=0.0)
        af = tl.load(SX + 2 * M + rows, mask=rmask, other=0.0)
        asq = tl.load(SX + 3 * M + rows, mask=rmask, other=0.0)
    pos = tl.arange(0, KP)
    best = _empty_best(Q, KP, BLOCK_M)
    thr = tl.max(best, axis=1)
    cap = _no_cap(BLOCK_M)
    if GATED:
        cap = tl.load(CAP + rows, mask=rmask, other=0x7FFFFFFFFFFFFFFF)
    n_col_tiles = tl.cdiv(N, BLOCK_N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols, cmask = _col_tile(n0, n_hi, BLOCK_N)
        if FROM_DOTS:
            acc = tl.load(DOTS + rows.to(tl.int64)[:, None] * N + cols[None, :],
                          mask=rmask[:, None] & cmask[None, :], other=0.0)
        else:
            acc = _dot_tile(X, Y, rows, cols, rmask, cmask, D, sx, sy, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)
        ny = tl.load(NY + cols, mask=cmask, other=0.0)
        v = tl.load(V + cols, mask=cmask, other=0.0)
        cost = tl.maximum((acc * -2.0 + nx[:, None]) + ny[None, :], 0.0)  # as _dense_kernel
        if SCREEN:  # a lower bound on the exact cost: the screened one less its error bound
            bn = tl.load(SY + cols, mask=cmask, other=0.0)
            br = tl.load(SY + N + cols, mask=cmask, other=0.0)
            bf = tl.load(SY + 2 * N + cols, mask=cmask, other=0.0)
            bsq = tl.load(SY + 3 * N + cols, mask=cmask, other=0.0)
            err = (2.0 * an[:, None] * br[None, :] + 2.0 * ar[:, None] * (bn + br)[None, :]
                   + (2.0 * GAMMA + 2e-6) * an[:, None] * bn[None, :] + 2e-6 * af[:, None] * bf[None, :]
                   + 1e-6 * (asq[:, None] + bsq[None, :]) + ABS)
            red = ((cost.to(tl.float64) - err) - u[:, None]) - v[None, :]
        else:
            red = (cost.to(tl.float64) - u[:, None]) - v[None, :]
        valid = rmask[:, None] & cmask[None, :]
        if MINIMA:
            least = tl.min(tl.where(valid, red.to(tl.float32), float("inf")), axis=1)
            tl.store(RMIN + rows.to(tl.int64) * n_col_tiles + n0 // BLOCK_N, least, mask=rmask)
        else:
            best, thr = _insert_scores(best, thr, cap, red.to(tl.float32), cols, valid, pos)
    if not MINIMA:
        base = rows.to(tl.int64)[:, None] * n_split + pid_s
        tl.store(OUT + base * Q + pos[None, :], best, mask=rmask[:, None] & (pos[None, :] < Q))


# ---------------------------------------------------------------------------------- host side
def _prep(A: Tensor, B: Tensor, norms: tuple[Tensor, Tensor] | None = None):
    """Contiguous A, B, their float32 squared norms (``norms`` if given: a pricer computes and
    checks them once, not per pass over B) and the tile depth."""
    A, B = A.contiguous(), B.contiguous()
    if norms is not None:  # the caller's, checked once there
        na, nb = norms
    else:
        na, nb = ref.row_sq_norms(A), ref.row_sq_norms(B)
        ref._check_norms("A", na)
        ref._check_norms("B", nb)
    return A, B, na, nb, (BD_FP32 if A.dtype == torch.float32 else BD_16)


def _stages(X: Tensor) -> int:
    return NUM_STAGES if X.dtype == torch.float32 else NUM_STAGES_16


def _unpack(keys: Tensor) -> tuple[Tensor, Tensor]:
    """int64 keys → (float32 scores, int64 columns); the inverse of ``_pack``."""
    hi = (keys >> 32).to(torch.int32)
    return (hi ^ ((hi >> 31) & 0x7FFFFFFF)).view(torch.float32), keys & 0xFFFFFFFF


def _n_splits(rows: int, col_tiles: int, device: torch.device, bm: int | None = None, per_sm: int = 4) -> int:
    """Column splits for ``per_sm`` programs an SM, programs of ``bm`` (default BM) rows."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    want = -(-per_sm * sms // max(1, -(-rows // (bm or BM))))
    return max(1, min(col_tiles, want))


def _topk(X, Y, nx, ny, ix, iy, kc: int, ks: int, swap: bool, bd: int, splits: int | None):
    """Per row of X: (costs [M, kc], cols [M, kc]) cheapest, and the keys [M, ks] (−cos, column)
    of the most similar, sorted."""
    M, N = X.shape[0], Y.shape[0]
    kp = max(2, triton.next_power_of_2(max(kc, ks)))
    bn = BN
    col_tiles = -(-N // bn)
    s = splits or _n_splits(M, col_tiles, X.device)
    cols_per_split = -(-col_tiles // s) * bn
    s = -(-N // cols_per_split)
    out_c = torch.empty(M, s, kc, dtype=torch.int64, device=X.device)
    out_s = torch.empty(M, s, max(ks, 1), dtype=torch.int64, device=X.device)
    _topk_kernel[(-(-M // BM), s)](
        X, Y, nx, ny, ix, iy, out_c, out_s, M, N, X.shape[1], cols_per_split, X.stride(0), Y.stride(0),
        KC=kc, KS=ks, KP=kp, SWAP=swap, BLOCK_M=BM, BLOCK_N=bn, BLOCK_D=bd, PRECISION=_precision(X),
        num_warps=NUM_WARPS, num_stages=_stages(X),
    )
    keys_c = torch.sort(out_c.view(M, s * kc), dim=1).values[:, :kc]
    cost, cols_c = _unpack(keys_c)
    keys_s = torch.sort(out_s.view(M, -1), dim=1).values[:, :ks] if ks else None
    return cost, cols_c, keys_s


def gemm_enabled(device: torch.device | None = None) -> bool:
    """Whether the candidates, the fused pricer and the dense costs read cuBLAS GEMM blocks
    (``_topk_gemm``): ``MECHPERM_GEMM_CANDIDATES=1`` / ``0`` forces it on / off; unset, it is on
    for CUDA tensors. Measured on an H100 (2026-11-26, ``bench/gpu_check.sh``): ``match_vectors``
    at F = 16384 0.14-0.16 s against 0.165 s with the fused kernels, 65536 1.13 against 1.59 s,
    262144 11.8 s (the fused kernels: 23.1 s in session 7). Under ``TRITON_INTERPRET=1`` (CPU
    tensors) the fused kernels stay the default: the tests check both."""
    flag = os.environ.get("MECHPERM_GEMM_CANDIDATES")
    if flag in ("0", "1"):
        return flag == "1"
    return device is not None and torch.device(device).type == "cuda"


# What the last _topk_gemm did (benchmarks print it).
LAST_GEMM: dict = {}
# What the last price_rows_topq did: gated or not, chunks selected again ungated.
LAST_TOPQ: dict = {}


@contextlib.contextmanager
def _gemm_flags(tf32: bool):
    """cuBLAS's switches for one GEMM, set only where they differ from what it needs and
    restored after: TF32 as asked (through the global float32 matmul precision, the switch
    every torch version honours; the per-backend ones of torch >= 2.9 refuse a mix of old and
    new), and no reduced-precision split-K sums of 16-bit products."""
    m = torch.backends.cuda.matmul
    want = "high" if tf32 else "highest"
    precision = torch.get_float32_matmul_precision()
    reduced = m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction
    if precision != want:
        torch.set_float32_matmul_precision(want)
    if any(reduced):
        m.allow_bf16_reduced_precision_reduction = m.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        if precision != want:
            torch.set_float32_matmul_precision(precision)
        if any(reduced):
            m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction = reduced


def _dots_against(Y: Tensor):
    """(f, how): ``f(X)`` is the float32 [len(X), len(Y)] matrix of dots ⟨x, y⟩ for rows X of
    Y's dtype by ``torch.mm``, float32 sums of exact products (what the tile kernels compute
    and the screen's bound assumes), whichever way ``how`` says:

    - "bf16->fp32" / "fp16->fp32": 16-bit operands with a float32 output (``out_dtype=``);
    - "tf32": 16-bit operands upcast (B once) where cuBLAS offers no such output: TF32 holds
      every bf16 and fp16 value exactly, so its products are exact too, at half the pace;
    - "fp32": float32 operands, TF32 off; and every case on the CPU (the tests' upcasts).
    """
    cuda = Y.device.type == "cuda"
    if cuda and Y.dtype != torch.float32 and _float32_out(Y):
        Yt = Y.t()

        def direct(X: Tensor) -> Tensor:
            with _gemm_flags(False):
                return torch.mm(X, Yt, out_dtype=torch.float32)

        return direct, ("bf16" if Y.dtype == torch.bfloat16 else "fp16") + "->fp32"
    tf32 = cuda and Y.dtype != torch.float32
    Yt = _upcast(Y).t()  # no copy for float32

    def upcast(X: Tensor) -> Tensor:
        with _gemm_flags(tf32):
            return torch.mm(X.float(), Yt)

    return upcast, ("tf32" if tf32 else "fp32")


_FLOAT32_OUT: dict = {}  # (device, dtype) -> whether torch.mm takes out_dtype=float32 there
_UPCAST: list = []  # [(key, float32 copy)]: the last 16-bit B upcast (the pricers call per block)


def _float32_out(Y: Tensor) -> bool:
    """Whether cuBLAS takes Y's 16-bit dtype with a float32 output here (asked once)."""
    key = (Y.device, Y.dtype)
    if key not in _FLOAT32_OUT:
        try:
            with _gemm_flags(False):
                torch.mm(Y[:1], Y[:1].t(), out_dtype=torch.float32)
            _FLOAT32_OUT[key] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _FLOAT32_OUT[key] = False
    return _FLOAT32_OUT[key]


def _upcast(Y: Tensor) -> Tensor:
    """Y as float32 (itself if it is), the last 16-bit one kept for the next call."""
    if Y.dtype == torch.float32:
        return Y
    key = (Y.data_ptr(), tuple(Y.shape), tuple(Y.stride()), Y.dtype, Y.device, Y._version)
    if not _UPCAST or _UPCAST[0][0] != key:
        _UPCAST[:] = [(key, Y.float())]
    return _UPCAST[0][1]


def _block_rows(M: int, N: int, dev: torch.device) -> int:
    """Rows of A per GEMM block: GEMM_BLOCK_BYTES of float32 dots (a third of the free device
    memory at most), whole tiles of rows."""
    budget = GEMM_BLOCK_BYTES
    if dev.type == "cuda":
        budget = min(budget, torch.cuda.mem_get_info(dev)[0] // 3)
    r = budget // (4 * max(N, 1)) // SEL_BM * SEL_BM
    return max(1, min(M, max(SEL_BM, r)))


def _topk_gemm(A, B, na, nb, ia, ib, kr: int, kc: int, kcr: int, kcc: int, splits: int | None,
               gated: bool | None = None):
    """:func:`_topk` for the rows and the columns from blocks of dot products that cuBLAS
    writes (``torch.mm``, see :func:`_dots_against`),
    each read twice by ``_select_dots_kernel``: along its rows (complete for those rows) and
    down its columns (merged on chip with the columns' selections of the blocks before).
    The GEMM runs at cuBLAS's pace; the selections read 8 bytes a pair (two passes) where the
    fused kernel's tiles are bound by their own GEMM loop. Same costs and keys as ``_topk``
    (the dots summed in another order). Gated (``gated_enabled``), both selections insert only
    pairs within bounds from group minima (the same keys): in the first block a third read
    finds them (``_block_caps``); in later blocks the columns' pass runs first and writes the
    rows' minima as it reads the block (their own gates stay open: what they carry from earlier
    blocks gates them), so those blocks are still read twice.

    Returns (row_cost, row_cols, row_sim, col_cost, col_rows, col_sim) as the two ``_topk``."""
    M, N, dev = A.shape[0], B.shape[0], A.device
    dots_of, how = _dots_against(B)
    R = _block_rows(M, N, dev)
    kp_r = max(2, triton.next_power_of_2(max(kr, kcr)))
    kp_c = max(2, triton.next_power_of_2(max(kc, kcc)))
    meta = dict(BLOCK_M=SEL_BM, BLOCK_N=SEL_BN, num_warps=SEL_WARPS)
    col_meta = dict(BLOCK_M=SEL_COL_BM, BLOCK_N=SEL_COL_BN, num_warps=SEL_COL_WARPS)
    big = torch.iinfo(torch.int64).max
    col_c = torch.full((N, kc), big, dtype=torch.int64, device=dev)
    col_s = torch.full((N, max(kcc, 1)), big, dtype=torch.int64, device=dev)
    row_cost = torch.empty(M, kr, dtype=torch.float32, device=dev)
    row_cols = torch.empty(M, kr, dtype=torch.int64, device=dev)
    row_sim = torch.empty(M, kcr, dtype=torch.int64, device=dev) if kcr else None
    col_tiles = -(-N // SEL_BN)
    gated = gated_enabled() if gated is None else gated
    lost = torch.zeros((), dtype=torch.bool, device=dev)  # gated: a list left short (never expected)
    cos = max(kcr, kcc) > 0
    clock = _PhaseClock(dev, os.environ.get("MECHPERM_PROFILE_GEMM") == "1")
    for r0 in range(0, M, R):
        r1 = min(M, r0 + R)
        m = r1 - r0
        clock.mark()
        dots = dots_of(A[r0:r1])
        clock.mark("gemm")
        s = splits or _n_splits(m, col_tiles, dev, SEL_BM, SEL_SPLITS_PER_SM)
        cps = -(-col_tiles // s) * SEL_BN
        s = -(-N // cps)
        caps = [col_c[:, 0]] * 4  # unread placeholders when ungated

        def columns(caps_c: Tensor, caps_s: Tensor, ymin: tuple[Tensor, Tensor], y_minima: int, gate: bool) -> None:
            _select_dots_kernel[(-(-N // SEL_COL_BM), 1)](
                dots, nb, na[r0:r1], ib, ia[r0:r1], col_c, col_s, caps_c, caps_s, ymin[0], ymin[1], N, m, m, N, r0,
                KC=kc, KS=kcc, KP=kp_c, SWAP=True, INIT=True, GATED=gate, Y_MINIMA=y_minima, **col_meta)

        cols_first = gated and r0 > 0
        if gated and r0 == 0:
            # the columns' gates in the first block only, where their selections start empty:
            # later, what they carry gates them nearly as well (simulated at F = 1M: 2% fewer
            # rounds for a minima pass and a merge per block; bench/sim_selection_rounds.py)
            caps = _block_caps(dots, na[r0:r1], nb, ia[r0:r1], ib, col_c, col_s, kr, kc, kcr, kcc, cos, s, cps)
            clock.mark("minima")
        elif cols_first:
            # later blocks: the columns' pass (ungated) writes the rows' group minima as it
            # reads the block, and the rows' pass follows: two reads of the block, not three
            ymin_c = torch.empty(m, -(-N // SEL_COL_BM), dtype=torch.float32, device=dev)
            ymin_s = torch.empty_like(ymin_c) if kcr else ymin_c
            columns(caps[2], caps[3], (ymin_c, ymin_s), 2 if kcr else 1, False)
            clock.mark("cols")
            caps = [_caps(ymin_c, kr), _caps(ymin_s, kcr)]
            del ymin_c, ymin_s
            clock.mark("minima")
        out_c = torch.empty(m, s, kr, dtype=torch.int64, device=dev)
        out_s = torch.empty(m, s, max(kcr, 1), dtype=torch.int64, device=dev)
        _select_dots_kernel[(-(-m // SEL_BM), s)](
            dots, na[r0:r1], nb, ia[r0:r1], ib, out_c, out_s, caps[0], caps[1], na, na, m, N, cps, N, 0,
            KC=kr, KS=kcr, KP=kp_r, SWAP=False, INIT=False, GATED=gated, Y_MINIMA=0, **meta)
        clock.mark("rows")
        keys = torch.sort(out_c.view(m, -1), dim=1).values[:, :kr]
        row_cost[r0:r1], row_cols[r0:r1] = _unpack(keys)
        if kcr:
            row_sim[r0:r1] = torch.sort(out_s.view(m, -1), dim=1).values[:, :kcr]
        if gated:
            lost |= (keys[:, -1] == big).any() | (kcr > 0 and (row_sim[r0:r1, -1] == big).any())
        clock.mark("row_merge")
        if not cols_first:
            columns(caps[2], caps[3], (na, na), 0, gated)
            clock.mark("cols")
        del dots, caps
    keys = torch.sort(col_c, dim=1).values
    col_cost, col_rows = _unpack(keys)
    col_sim = torch.sort(col_s, dim=1).values if kcc else None
    if gated:
        lost |= (keys[:, -1] == big).any() | (kcc > 0 and (col_sim[:, -1] == big).any())
        if bool(lost):  # every list holds k pairs by construction; if one does not, be exact anyway
            warnings.warn("the gated candidate selection left a list short; selecting again ungated "
                          "(please report: MECHPERM_GATED_SELECT)", RuntimeWarning, stacklevel=2)
            return _topk_gemm(A, B, na, nb, ia, ib, kr, kc, kcr, kcc, splits, gated=False)
    LAST_GEMM.clear()
    LAST_GEMM.update(block_rows=R, blocks=-(-M // R), gemm=how, gated=gated)
    if clock.on:
        LAST_GEMM["seconds"] = clock.totals()
    return row_cost, row_cols, row_sim, col_cost, col_rows, col_sim


def gated_enabled() -> bool:
    """Whether the GEMM-block selections insert only pairs within a bound on each row's and
    column's k-th (group minima: one more read of the first block, ``_block_caps``; later
    blocks' columns' passes write the rows' minima); the fused row pricer has its own switch,
    :func:`pricer_gated_enabled`. The same keys either way (tested bit for bit). On unless
    ``MECHPERM_GATED_SELECT=0``. Timed on an H100 (2026-11-27, ``bench/gpu_check.sh``, the
    64 x 64 tiles of then), ungated -> gated: the GEMM blocks' phases (GEMM and selections) at
    F = 16384 43.5 -> 41.3 ms, ``match_vectors`` at 262144 6.07 -> 5.31 s, 8192 rows against 1M
    0.437 -> 0.408 s (bf16) and 1.142 -> 1.115 s (fp32); the selection tiles now in use were
    swept gated."""
    return os.environ.get("MECHPERM_GATED_SELECT", "1") != "0"


def pricer_gated_enabled() -> bool:
    """Whether the fused row pricer on GEMM blocks (``price_rows_topq``) is gated by a first
    launch's tile minima: ``MECHPERM_GATED_PRICER=1``; off by default (the same pairs either
    way). Its gate costs more than the selections': the minima launch computes every pair's
    float64 reduced cost (and, screened, its error bound) before the gated launch computes them
    again. Timed on an H100 (2026-11-27, ``bench/gpu_sweep.sh``, one machine, one run each):
    the 1M match's pricing phase 6.23 s gated against 4.04 s ungated (41514 rows, 3 rounds)."""
    return os.environ.get("MECHPERM_GATED_PRICER") == "1"


_MAXKEY = 2**63 - 1
# _caps merges a row's groups (their minima) in runs until at most this many per k are left.
# At F = 1M the rows' gates came from 32768 group minima a row (k = 32), and the top-k over them
# was most of the "minima" phase (1.5 s at 32-wide groups, 2.3 s at 16-wide, H100); 512 merged
# groups of 2048 columns give nearly the same bound (the k least pairs of a row rarely share one).
CAP_GROUPS_PER_K = 16


def _caps(mins: Tensor, k: int) -> Tensor:
    """int64 [n]: per row of group minima ``mins`` [n, g] (+inf where a group is empty), a key
    above every key whose score is at most the row's k-th least minimum (k distinct pairs score
    at most that, so the row's k least keys lie below it); MAXKEY where there are fewer than k
    groups. Groups are merged first (the minimum of each run of consecutive ones) down to
    ``CAP_GROUPS_PER_K`` · k or more: still disjoint sets of pairs, so the bound holds, a little
    looser, for a fraction of the top-k's work. Widened by 2^-20 of its size and one step: the
    columns' pass multiplies a −cosine's factors in the other order (a rounding apart);
    ``+ 0.0`` makes a −0.0 bound +0.0."""
    n, g = mins.shape
    if g < k or k == 0:
        return torch.full((n,), _MAXKEY, dtype=torch.int64, device=mins.device)
    run = g // (CAP_GROUPS_PER_K * k)
    if run >= 2:
        mins = torch.nn.functional.pad(mins, (0, (-g) % run), value=float("inf")).view(n, -1, run).amin(2)
    t = torch.topk(mins, k, dim=1, largest=False, sorted=False).values.amax(1)
    t = t + t.abs() * 2.0**-20 + 0.0
    # full_like, not torch.tensor(inf, device=...), whose host-to-device copy waits for the
    # kernels queued before it (cProfile, H100, F = 16384: 4-6 calls a match, ~0.5 ms each)
    t = torch.nextafter(t, torch.full_like(t, float("inf")))
    b = t.view(torch.int32)
    key = ((b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 32) | 0xFFFFFFFF
    return torch.where(torch.isfinite(t), key, _MAXKEY)


def _key_scores(keys: Tensor) -> Tensor:
    """float32 scores of int64 keys, +inf for empty slots (MAXKEY)."""
    return torch.where(keys == _MAXKEY, float("inf"), _unpack(keys)[0])


def _block_caps(dots, na, nb, ia, ib, col_c, col_s, kr: int, kc: int, kcr: int, kcc: int, cos: bool,
                splits: int, cps: int) -> list[Tensor]:
    """The gates (rows' cost, rows' −cos, columns' cost, columns' −cos) of one block of dots:
    ``_group_min_kernel``'s minima of 64-wide groups; a column's k-th least also counts the
    selection it carries from earlier blocks (pairs of other rows)."""
    m, N = dots.shape[0], nb.shape[0]
    dev = dots.device
    col_tiles, row_tiles = -(-N // SEL_BN), -(-m // SEL_BM)
    rmin_c = torch.empty(m, col_tiles, dtype=torch.float32, device=dev)
    cmin_c = torch.empty(N, row_tiles, dtype=torch.float32, device=dev)
    rmin_s, cmin_s = (torch.empty_like(rmin_c), torch.empty_like(cmin_c)) if cos else (rmin_c, cmin_c)
    _group_min_kernel[(row_tiles, splits)](
        dots, na, nb, ia, ib, rmin_c, rmin_s, cmin_c, cmin_s, m, N, cps, N,
        COS=cos, BLOCK_M=SEL_BM, BLOCK_N=SEL_BN, num_warps=SEL_WARPS)
    caps = [_caps(rmin_c, kr), _caps(rmin_s, kcr)]
    return caps + [_caps(torch.cat([_key_scores(col_c), cmin_c], 1), kc),
                   _caps(torch.cat([_key_scores(col_s[:, :kcc]), cmin_s], 1), kcc)]


class _PhaseClock:
    """Seconds per named phase of a loop of GPU work (``MECHPERM_PROFILE_GEMM=1``): CUDA events
    between the phases, read once at the end (no synchronisation inside the loop); on the CPU,
    wall time. Off, every call is a no-op."""

    def __init__(self, dev: torch.device, on: bool):
        self.on, self.cuda = on, dev.type == "cuda"
        self.marks: list = []  # (phase ending here or None, event or time)

    def mark(self, phase: str | None = None) -> None:
        if not self.on:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((phase, event))
        else:
            self.marks.append((phase, time.perf_counter()))

    def totals(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict = {}
        for (_, t0), (phase, t1) in zip(self.marks, self.marks[1:]):
            if phase is not None:
                dt = t0.elapsed_time(t1) / 1e3 if self.cuda else t1 - t0
                out[phase] = out.get(phase, 0.0) + dt
        return {k: round(v, 4) for k, v in out.items()}


def emit_enabled() -> bool:
    """``MECHPERM_EMIT_TOPK=1``: the candidate selection by thresholds (opt-in until measured
    on a GPU; checked against the running top-k under TRITON_INTERPRET=1)."""
    return os.environ.get("MECHPERM_EMIT_TOPK", "0") == "1"


# What the last _topk_emit did (benchmarks print it): pairs within the thresholds per row and
# column, and how many rows / columns the running top-k had to redo.
LAST_EMIT: dict = {}


def _thresholds(slots: Tensor, k: int) -> Tensor:
    """float32 [n]: per row of int32 ``_key32`` slots [n, S], the k-th least (+inf if unset)."""
    key = torch.kthvalue(slots, k, dim=1).values
    out = (key ^ ((key >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return torch.where(key == _INT32_MAX, float("inf"), out)


def _emitted(count: Tensor, idx: Tensor, val: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The keys (score, index) of the k least per row of the emitted lists, sorted, and which
    rows must be redone.

    A row is exact when its list holds at least k pairs and did not overflow: every pair with a
    score within the threshold is in it, and k of them are, so the k least overall are too
    (ties broken by index, as the running top-k does)."""
    n, room = idx.shape
    keys = torch.empty(n, k, dtype=torch.int64, device=idx.device)
    big = torch.iinfo(torch.int64).max
    for r0 in range(0, n, EMIT_CHUNK):
        r1 = min(n, r0 + EMIT_CHUNK)
        used = torch.arange(room, device=idx.device)[None, :] < count[r0:r1].clamp(max=room)[:, None]
        b = val[r0:r1].view(torch.int32)
        key = ((b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 32) | idx[r0:r1].to(torch.int64)
        key.masked_fill_(~used, big)
        if room < k:  # lists shorter than k (only when configured so): every row is redone
            key = torch.cat([key, key.new_full((r1 - r0, k - room), big)], 1)
        keys[r0:r1] = torch.topk(key, k, dim=1, largest=False, sorted=True).values
    return keys, (count < k) | (count > room)


def _topk_emit(A, B, na, nb, ia, ib, kr: int, kc: int, kcr: int, kcc: int, bd: int, splits: int | None):
    """:func:`_topk` for the rows (A vs B) and the columns (B vs A) in two passes of the GEMM
    with no running top-k: thresholds from group minima, then every pair within them written
    out (``_slot_min_kernel``, ``_emit_kernel``). Rows or columns whose list overflows (or,
    never on exact arithmetic, holds fewer than k pairs) are redone by ``_topk``.

    Returns (row_cost, row_cols, row_sim, col_cost, col_rows, col_sim) as the two ``_topk``."""
    M, N, dev = A.shape[0], B.shape[0], A.device
    cos = max(kcr, kcc) > 0
    kmax = max(kr, kc, kcr, kcc)
    S = EMIT_SLOTS_PER_K * kmax
    col_tiles = -(-N // BN)
    P = max(1, min(EMIT_STRIDE_MAX, min(-(-M // BM), col_tiles) // (2 * S)))
    room = EMIT_ROOM_PER_K * kmax * P + EMIT_ROOM_EXTRA
    s = splits or _n_splits(M, col_tiles, dev)
    cols_per_split = -(-col_tiles // s) * BN
    s = -(-N // cols_per_split)
    grid = (-(-M // BM), s)
    geo = (M, N, A.shape[1], cols_per_split, A.stride(0), B.stride(0))
    meta = dict(BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=bd, PRECISION=_precision(A), num_warps=NUM_WARPS,
                num_stages=_stages(A))
    rc, cc = (torch.full((n, S), _INT32_MAX, dtype=torch.int32, device=dev) for n in (M, N))
    rs, cs = ((torch.full((n, S), _INT32_MAX, dtype=torch.int32, device=dev) for n in (M, N)) if cos
              else (rc, cc))
    _slot_min_kernel[grid](A, B, na, nb, ia, ib, rc, rs, cc, cs, *geo, P, S=S, COS=cos, **meta)
    none = torch.full((1,), float("-inf"), device=dev)
    thr = [_thresholds(rc, kr), _thresholds(rs, max(kcr, 1)) if kcr else none.expand(M).contiguous(),
           _thresholds(cc, kc), _thresholds(cs, max(kcc, 1)) if kcc else none.expand(N).contiguous()]
    del rc, rs, cc, cs
    sides = (M, M, N, N)
    counts = [torch.zeros(n, dtype=torch.int32, device=dev) for n in sides]
    idx = [torch.empty(n, room, dtype=torch.int32, device=dev) for n in sides]
    val = [torch.empty(n, room, dtype=torch.float32, device=dev) for n in sides]
    if not cos:  # the −cos lists are never written: no room needed
        idx[1], idx[3], val[1], val[3] = idx[0], idx[2], val[0], val[2]
    bufs = [x for pair in zip(idx, val) for x in pair]
    _emit_kernel[grid](A, B, na, nb, ia, ib, *thr, *counts, *bufs, *geo, ROOM=room, COS=cos, **meta)
    keys, redo_r = _emitted(counts[0], idx[0], val[0], kr)
    row_cost, row_cols = _unpack(keys)
    keys, redo_c = _emitted(counts[2], idx[2], val[2], kc)
    col_cost, col_rows = _unpack(keys)
    row_sim = col_sim = None
    if kcr:
        row_sim, bad = _emitted(counts[1], idx[1], val[1], kcr)
        redo_r |= bad
    if kcc:
        col_sim, bad = _emitted(counts[3], idx[3], val[3], kcc)
        redo_c |= bad
    LAST_EMIT.clear()
    LAST_EMIT.update(per_row=float(counts[0].float().mean()), per_col=float(counts[2].float().mean()),
                     rows_redone=int(redo_r.sum()), cols_redone=int(redo_c.sum()), slots=S, stride=P,
                     room=room)
    del idx, val, bufs
    for redo, X, Y, nx, ny, ix, iy, k1, k2, swap, outs in (
        (redo_r, A, B, na, nb, ia, ib, kr, kcr, False, (row_cost, row_cols, row_sim)),
        (redo_c, B, A, nb, na, ib, ia, kc, kcc, True, (col_cost, col_rows, col_sim)),
    ):
        ids = redo.nonzero().squeeze(1)
        if ids.numel() == 0:
            continue
        got = _topk(X[ids].contiguous(), Y, nx[ids].contiguous(), ny, ix[ids].contiguous(), iy, k1, k2, swap, bd,
                    None)
        for out, new in zip(outs, got):
            if out is not None:
                out[ids] = new.to(out.dtype)
    return row_cost, row_cols, row_sim, col_cost, col_rows, col_sim


def pair_costs(A: Tensor, B: Tensor, na: Tensor, nb: Tensor, i: Tensor, j: Tensor, bd: int, *,
               fp64: bool = False) -> Tensor:
    """float32 costs of the pairs (A[i], B[j]); ``fp64``: the dot in float64 and the cost rounded
    once (the arithmetic of :func:`mechperm.kernels.screen.exact_costs`)."""
    out = torch.empty(i.numel(), dtype=torch.float32, device=A.device)
    if i.numel():
        grid = (triton.cdiv(i.numel(), 64),)
        _pair_kernel[grid](A, B, na, nb, i.contiguous(), j.contiguous(), out, i.numel(), A.shape[1],
                           A.stride(0), B.stride(0), BLOCK_P=64, BLOCK_D=bd, FP64=fp64)
    return out


def candidates(A: Tensor, B: Tensor, *, k: int, k_cos: int, splits: int | None = None,
               norms: tuple[Tensor, Tensor] | None = None) -> ref.CandidateGraph:
    """Triton implementation of :func:`mechperm.kernels.candidates.candidates` (validated there).

    ``norms``: float32 squared norms to use in the costs and cosines instead of those of A and B
    (the GPU screen passes bf16 roundings as A, B with the norms of the float32 vectors)."""
    A, B, na, nb, bd = _prep(A, B)
    if norms is not None:
        na, nb = (x.to(A.device, torch.float32).contiguous() for x in norms)
    Fa, Fb = A.shape[0], B.shape[0]
    kr, kc, kcr, kcc = min(k, Fb), min(k, Fa), min(k_cos, Fb), min(k_cos, Fa)
    if max(kr, kc, kcr, kcc) > 128:
        raise ValueError(
            f"the triton backend keeps at most 128 partners per row (k={k}, k_cos={k_cos}); use backend='torch'"
        )
    ia, ib = ref._inv_norms(na), ref._inv_norms(nb)
    S = EMIT_SLOTS_PER_K * max(kr, kc, kcr, kcc)
    if gemm_enabled(A.device):
        row_cost, row_cols, row_sim, col_cost, col_rows, col_sim = _topk_gemm(
            A, B, na, nb, ia, ib, kr, kc, kcr, kcc, splits)
    # Every group needs a pair; 128-wide tiles abort Triton 3.9's compiler (LLVM) in _emit_kernel.
    elif emit_enabled() and -(-Fa // BM) >= S and -(-Fb // BN) >= S and BN <= 64:
        row_cost, row_cols, row_sim, col_cost, col_rows, col_sim = _topk_emit(
            A, B, na, nb, ia, ib, kr, kc, kcr, kcc, bd, splits)
    else:
        row_cost, row_cols, row_sim = _topk(A, B, na, nb, ia, ib, kr, kcr, False, bd, splits)
        col_cost, col_rows, col_sim = _topk(B, A, nb, na, ib, ia, kc, kcc, True, bd, splits)
    ids_a = torch.arange(Fa, device=A.device)[:, None]
    ids_b = torch.arange(Fb, device=A.device)[:, None]
    parts = [(ids_a.expand(Fa, kr), row_cols, row_cost), (col_rows, ids_b.expand(Fb, kc), col_cost)]
    kth_cos = []
    for ids, keys, by_row in ((ids_a, row_sim, True), (ids_b, col_sim, False)):
        if keys is None:
            parts.append(ref._no_edges(A.device))
            kth_cos.append(None)
            continue
        neg_cos, sim = _unpack(keys)
        kth_cos.append(-neg_cos[:, -1].contiguous())  # the lists' least cosine, as computed
        r, c = (ids.expand_as(sim), sim) if by_row else (sim, ids.expand_as(sim))
        parts.append((r, c, pair_costs(A, B, na, nb, r.reshape(-1), c.reshape(-1), bd).view(sim.shape)))
    return ref._assemble((Fa, Fb), parts, row_cost[:, -1].contiguous(), col_cost[:, -1].contiguous(), k, k_cos,
                         *kth_cos)


def dense_costs(A: Tensor, B: Tensor, norms: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Triton implementation of :func:`mechperm.kernels.candidates.dense_costs`."""
    A, B, na, nb, bd = _prep(A, B, norms)
    M, N = A.shape[0], B.shape[0]
    if gemm_enabled(A.device) and M and N:  # cuBLAS's GEMM, the same epilogue (−2·dot exact, two roundings)
        out = _dots_against(B)[0](A)
        return out.mul_(-2.0).add_(na[:, None]).add_(nb[None, :]).clamp_min_(0.0)
    out = torch.empty(M, N, dtype=torch.float32, device=A.device)
    if M and N:
        _dense_kernel[(triton.cdiv(M, DENSE_BM), triton.cdiv(N, DENSE_BN))](
            A, B, na, nb, out, M, N, A.shape[1], A.stride(0), B.stride(0),
            BLOCK_M=DENSE_BM, BLOCK_N=DENSE_BN, BLOCK_D=bd, PRECISION=_precision(A),
            num_warps=DENSE_WARPS, num_stages=_stages(A))
    return out


def price(A: Tensor, B: Tensor, u: Tensor, v: Tensor, rows: Tensor, tol: float, max_pairs: int | None):
    """Triton implementation of :func:`mechperm.kernels.candidates.price` (unsorted output)."""
    A, B, na, nb, bd = _prep(A, B)
    N = B.shape[0]
    dev = A.device
    tol_t = torch.tensor([float(tol)], dtype=torch.float64, device=dev)
    chunk = max(BM, min(1 << 16, (2**31 - 1) // max(N, 1) // BM * BM))  # the int32 counter cannot wrap
    parts = [(torch.empty(0, dtype=torch.int64, device=dev),) * 2 + (torch.empty(0, device=dev),) * 2]
    for s0 in range(0, rows.numel() if N else 0, chunk):
        ids = rows[s0 : s0 + chunk].contiguous()
        capacity = max(1024, 4 * ids.numel())
        while True:
            count = torch.zeros(1, dtype=torch.int32, device=dev)
            out_r = torch.empty(capacity, dtype=torch.int64, device=dev)
            out_c = torch.empty(capacity, dtype=torch.int64, device=dev)
            out_cost = torch.empty(capacity, dtype=torch.float32, device=dev)
            _price_kernel[(triton.cdiv(ids.numel(), BM), triton.cdiv(N, BN))](
                A, B, na, nb, u, v, ids, tol_t, out_r, out_c, out_cost, count,
                ids.numel(), N, A.shape[1], A.stride(0), B.stride(0), capacity,
                BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=bd, PRECISION=_precision(A),
                num_warps=NUM_WARPS, num_stages=_stages(A))
            found = int(count.item())
            if found <= capacity:
                break
            capacity = found  # rare: relaunch with room for every pair
        r, c, cost = out_r[:found], out_c[:found], out_cost[:found]
        parts.append((r, c, cost, (cost.double() - u[r]) - v[c]))
        if max_pairs is not None:
            parts = ref._keep_most_negative(parts, max_pairs)
    r, c, cost, _ = (torch.cat(x) for x in zip(*parts))
    return r, c, cost


def price_rows_topq(A: Tensor, B: Tensor, u: Tensor, v: Tensor, rows: Tensor, q: int, *,
                    chunk: int = 1 << 16, splits: int | None = None, screen=None,
                    norms: tuple[Tensor, Tensor] | None = None, gated: bool | None = None):
    """Per row of ``rows``, the columns of smallest reduced cost ``(c − u) − v`` (c the tile
    costs of :func:`dense_costs`), and a lower bound on the reduced cost of every column it
    leaves out. The backend of :func:`mechperm.kernels.candidates.row_pricer` on CUDA: one pass
    of the GEMM with the selection on chip, where the torch pricer writes [rows, F] float64
    tiles and sorts them.

    The kernel keeps the ``Q = max(q, 2)`` least per row and returns ``Q − 1`` of them (all if
    ``Q`` ≥ F_b): the bound comes from the Q-th, which is not returned. (From the last pair
    returned, a row whose arc in the graph has a reduced cost of ~0 with ``q = 1``, or which
    differs from the graph's cost of the same pair by float32 rounding, would never prove
    anything.) Ranking is by the float32 rounding of the float64 reduced cost, so the bound is
    the Q-th value r less its rounding: for every pair left out, fl(red) ≥ r, hence
    red ≥ r − 2⁻²⁴|r|; ``r − 2⁻²³|r|`` is returned. Costs of the returned pairs come from
    :func:`pair_costs` (float32 rounding of the tile's).

    ``norms``: the float32 squared norms of A and B (else computed here, a pass over both).
    ``screen``: a :class:`mechperm.kernels.screen_cuda.ScreenedVectorsGPU`, whose bf16 rows
    are ``A``, ``B``: ranks by lower bounds on the exact reduced costs (screened cost less its
    error bound, in the kernel), and the returned costs are its exact ones.
    ``gated`` (default ``pricer_gated_enabled()``; on the GEMM path only): a first launch writes the
    minima of each row's 64-wide column tiles (one more read of the dots), and the selection
    inserts only keys below the Q-th least of them (``_caps``): the same keys with far fewer
    insertion rounds, where each of a row's column splits would start from nothing. A row
    left short by its gate (never expected: Q distinct pairs meet it) has its chunk selected
    again ungated, with a warning.

    Returns (rows [P], cols [P], costs [P] float32, bound [len(rows)] float64).
    """
    if screen is None:
        A, B, na, nb, bd = _prep(A, B, norms)
        sa = sb = A.new_zeros(1, dtype=torch.float64)
        gamma = slack = 0.0
    else:
        na, nb, bd = screen.na, screen.nb, BD_16
        sa, sb, gamma, slack = screen.a_stats_t, screen.b_stats_t, screen.gamma, screen.abs_slack
    N, dev = B.shape[0], A.device
    kq = min(max(int(q), 2), N)  # kept in the kernel
    every = kq == N
    kr = kq if every else kq - 1  # returned
    n_rows = rows.numel()
    if kq == 0 or n_rows == 0:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        bound = torch.full((n_rows,), float("inf"), dtype=torch.float64, device=dev)
        return empty, empty, torch.empty(0, device=dev), bound
    if kq > 128:
        raise ValueError(f"the triton pricer keeps at most 128 pairs per row (q={q}); use MECHPERM_FUSED_PRICING=0")
    kp = max(2, triton.next_power_of_2(kq))
    gemm = gemm_enabled(dev)
    bm, bn, warps, stages, per_sm = ((TOPQ_DOTS_BM, TOPQ_DOTS_BN, TOPQ_DOTS_WARPS, TOPQ_DOTS_STAGES,
                                      TOPQ_DOTS_SPLITS_PER_SM) if gemm else (BM, BN, NUM_WARPS, None, 4))
    col_tiles = -(-N // bn)
    out_r, out_c, out_w, out_b = [], [], [], []
    if gemm:  # the chunk's dots from cuBLAS, read by the kernel (GEMM_BLOCK_BYTES at a time)
        dots_of, _ = _dots_against(B)
        chunk = min(chunk, _block_rows(n_rows, N, dev))
    # a gate needs at least Q tiles (else _caps leaves it open) and the dots in memory to read twice
    gated = (pricer_gated_enabled() if gated is None else gated) and gemm and not every and col_tiles >= kq
    LAST_TOPQ.clear()
    LAST_TOPQ.update(gated=gated, regated=0)
    for s0 in range(0, n_rows, chunk):
        ids = rows[s0 : s0 + chunk]
        X, nx, ux = A[ids].contiguous(), na[ids].contiguous(), u[ids].contiguous()
        sx = sa[:, ids].contiguous() if screen is not None else sa
        M = ids.numel()
        s = splits or _n_splits(M, col_tiles, dev, bm, per_sm)
        cols_per_split = -(-col_tiles // s) * bn
        s = -(-N // cols_per_split)
        keys = torch.empty(M, s, kq, dtype=torch.int64, device=dev)
        dots = nx
        if gemm:
            dots = dots_of(X)

        def launch(cap: Tensor, rmin: Tensor, gate: bool, minima: bool) -> None:
            _topq_kernel[(-(-M // bm), s)](
                X, B, nx, nb, ux, v, sx, sb, gamma, slack, keys, dots, cap, rmin, M, N, X.shape[1],
                cols_per_split, X.stride(0), B.stride(0), Q=kq, KP=kp, SCREEN=screen is not None,
                FROM_DOTS=gemm, GATED=gate, MINIMA=minima, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                PRECISION=_precision(X), num_warps=warps, num_stages=stages or _stages(X),
            )

        cap = keys  # read only when gated
        if gated:
            rmin = torch.empty(M, col_tiles, dtype=torch.float32, device=dev)
            launch(keys, rmin, False, True)
            cap = _caps(rmin, kq)
            del rmin
        launch(cap, nx, gated, False)
        merged = torch.sort(keys.view(M, s * kq), dim=1).values[:, :kq]
        if gated and bool((merged[:, -1] == _MAXKEY).any()):
            warnings.warn("the gated pricer left a row short; selecting its rows again ungated "
                          "(please report: MECHPERM_GATED_PRICER)", RuntimeWarning, stacklevel=2)
            LAST_TOPQ["regated"] += 1
            launch(keys, nx, False, False)
            merged = torch.sort(keys.view(M, s * kq), dim=1).values[:, :kq]
        del dots, cap
        red, cols = _unpack(merged)
        r = red[:, -1].double()
        out_b.append(r - r.abs() * 2.0**-23)
        pr = ids[:, None].expand(M, kr).reshape(-1)
        pc = cols[:, :kr].reshape(-1)
        out_r.append(pr)
        out_c.append(pc)
        if screen is None:
            out_w.append(pair_costs(A, B, na, nb, pr, pc, bd))
        else:
            out_w.append(screen.exact(pr, pc))
    bound = torch.full((n_rows,), float("inf"), dtype=torch.float64, device=dev) if every else torch.cat(out_b)
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_w), bound
