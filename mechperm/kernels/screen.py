"""Screened costs: every squared distance from a bfloat16 or int8 GEMM, with a rigorous error bound.

A CPU with AVX-512 BF16 multiplies bfloat16 matrices four times as fast as float32 ones (one
core of the AMD EPYC the benchmarks ran on: 0.19 s vs 0.76 s for 4096 x 2304 x 4096). Exact
matching needs float32 costs only where they can change the answer: the pairs whose reduced
cost at the optimum is within the screen's error of zero, about one per row on SAE decoders.
So (``match._solve_screened``): solve on the screened matrix, replace it by lower bounds on the
exact costs, compute exact costs for the pairs whose bound is not already out of reach, and
re-solve on that matrix. Its duals are feasible for the exact costs (they are feasible for
values that are <= the exact costs everywhere), so an optimum that uses exact pairs only is the
exact optimum with the same certificate.

The bound (``csrc/screen.cpp``). With x~ the bf16 rounding of x (subnormals flushed to zero) and
r_x = x~ - x (exact in float32), a.b = a~.b~ - a~.r_b - r_a.b~ + r_a.r_b, so
    |a.b - a~.b~| <= |a~||r_b| + |r_a||b~| + |r_a||r_b|           (Cauchy-Schwarz),
and the kernel's float32 sum of the exact bf16 products is within gamma_D |a~||b~| of a~.b~
(gamma_D = D u / (1 - D u), u = 2^-24, any summation order). The cost c = |a|^2 + |b|^2 - 2 a.b
(the same float32 squared norms on both sides) is then within twice that of the screened value,
plus the few float32 roundings of either side (covered by 1e-6 relative terms) and an absolute
term for AVX-512 BF16's flush-to-zero of subnormal partial results.

The int8 screen (``csrc/screen_int8.cpp``) is the same method for CPUs with AVX-512 VNNI but
not BF16 (Intel Cascade Lake and Ice Lake servers), where int8 dots run four times as many
products per instruction as float32 ones: x~ = s_x q_x with s_x = max|x| / 127 (float32) and
integer codes q_x, so a~.b~ = s_a s_b (q_a.q_b) with the integer dot exact; the kernel's
fl(fl(fl(q_a.q_b) s_a) s_b) is within 4u |a~||b~| of it. The rounding is coarser (|r_x|/|x|
~0.9% on Gaussian-like rows against bf16's ~0.1%), the bound wider, so more pairs need exact
costs: on make_stack's folded decoders (F = 2048, d = 2304), 2.3 per row at the optimum's duals
against bf16's 1.3.

Exact costs (:func:`exact_costs`) are float32 roundings of |a|^2 + |b|^2 - 2 a.b with the dot in
float64: the cost of the pair up to one float32 rounding (the float32 GEMM of
:func:`~mechperm.kernels.dense_costs` is within gamma_D |a||b| of it).
"""
from __future__ import annotations

import dataclasses
import mmap
import os
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mechperm import _auction
from mechperm.kernels.candidates import (
    _check_norms,
    _check_vectors,
    _RunningTopK,
    _Scratch,
    _select,
    _selection_graph,
    _solver_columns,
    _violating_rows,
    row_sq_norms,
)
from mechperm.kernels.rows import ScaledRows



KINDS = ("bf16", "int8")
"""The roundings a screen can use: bfloat16 (AVX-512 BF16) or int8 with a per-row scale (VNNI)."""
INT8_MAX_D = 65536
"""Widest rows the int8 screen takes: its kernel's int32 sums of d products of up to 255 · 127
(unsigned A) overflow from d = 66312."""


def kind(A: Tensor | ScaledRows, B: Tensor | ScaledRows, *, dense: bool = False) -> str | None:
    """The screen ``match()`` uses for these rows, or None: CPU rows, the bf16 screen where the CPU
    has AVX-512 BF16, else the int8 screen where it has AVX-512 VNNI, the latter on the sparse
    path only (``dense=True`` asks for the dense path: there the int8 screen's second solve and
    exact rows cost more than its GEMM saves; Intel Xeon, 2 threads, F = 8192: 4.4-4.8 s against
    3.1 s unscreened). ``MECHPERM_SCREEN=0`` switches screening off, ``=1`` forces it (that kind,
    else bf16: the scalar kernels, for tests on other CPUs), ``=bf16`` / ``=int8`` force a kind."""
    flag = os.environ.get("MECHPERM_SCREEN", "")
    if A.device.type != "cpu" or B.device.type != "cpu" or flag == "0":
        return None
    if flag in KINDS:
        return flag
    if flag not in ("", "1"):
        raise ValueError(f"MECHPERM_SCREEN must be 0, 1, bf16 or int8, got {flag!r}")
    fast = next((k for k in KINDS if _auction.screen_has_fast_kernel(k)
                 and (k != "int8" or A.shape[1] <= INT8_MAX_D)), None)
    if flag == "1":
        return fast or "bf16"
    return None if dense and fast == "int8" else fast


def available(A: Tensor | ScaledRows, B: Tensor | ScaledRows) -> bool:
    """Whether ``match()`` screens these rows (see :func:`kind`)."""
    return kind(A, B) is not None


@dataclasses.dataclass
class ScreenedCosts:
    """The screened matrix and what its bound needs.

    Attributes
    ----------
    costs : np.ndarray [n, m] float32
        Screened costs; lower bounds on the exact costs after :func:`lower_bounds`.
    a_stats, b_stats : np.ndarray [4, n], [4, m] float64
        Per row: |x~|, |x~ - x|, |x|, and the float32 squared norm |x|^2 of the cost formula.
    gamma : float
        Bound on the float32 accumulation error relative to |a~||b~|.
    abs_slack : float
        Absolute slack for flushed subnormal partial results.
    """

    costs: np.ndarray
    a_stats: np.ndarray
    b_stats: np.ndarray
    gamma: float
    abs_slack: float


def _large_empty(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised float32 array; above 64 MiB in transparent huge pages where Linux
    offers them: first touch of a fresh 1 GiB array costs 1.7 s in 4 KiB page faults on the
    benchmark VM, 0.56 s in 2 MiB pages (a GEMM at F = 16384 takes 12 s)."""
    nbytes = 4 * shape[0] * shape[1]
    if nbytes < 1 << 26 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.empty(shape, np.float32)
    buf = mmap.mmap(-1, nbytes)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # pragma: no cover - kernels without THP
        pass
    return np.frombuffer(buf, np.float32).reshape(shape)


def _float_rows(X: Tensor) -> np.ndarray:
    """The rows as a C-contiguous float32 array (bf16 and fp16 upcast exactly)."""
    return np.ascontiguousarray(X.detach().float().numpy())


Rounded = tuple  # (codes, scales): bf16 bits and None, or int8 codes and their float32 scales


def _round_rows(x32: np.ndarray, sq: np.ndarray, threads: int, kind: str) -> tuple[Rounded, np.ndarray, int]:
    """((codes, scales), stats [4, F], first bad row or -1) of float32 rows in this kind."""
    if kind == "int8":
        codes, scales, stats, bad = _auction.screen_side_int8(x32, sq, threads)
        return (codes, scales), stats, bad
    bits, stats, bad = _auction.screen_side(x32, sq, threads)
    return (bits, None), stats, bad


def _sides(A: Tensor | ScaledRows, B: Tensor | ScaledRows, threads: int, *, keep_a_bits: bool,
           kind: str = "bf16") -> list[tuple]:
    """(float32 rows, their scale or None, rounded rows (codes, scales) or None, stats [4, F]) of
    A and of B; refuses what cannot be screened. :class:`ScaledRows` are rounded by row blocks
    as read."""
    sides = []
    for name, X in (("A", A), ("B", B)):
        x32, scale = X.numpy_parts() if isinstance(X, ScaledRows) else (_float_rows(X), None)
        sq = row_sq_norms(X)
        _check_norms(name, sq)  # the cost kernels' message for NaN, inf and overflowing norms
        keep = keep_a_bits or name == "B"
        if scale is None:
            rounded, stats, bad = _round_rows(x32, sq.numpy(), threads, kind)
        else:
            rounded, stats, bad = _scaled_side(x32, scale, sq.numpy(), threads, keep, kind)
        if bad >= 0:
            what = " (or overflows bfloat16)" if kind == "bf16" else ""
            raise ValueError(f"{name} row {bad} is not finite{what}; cannot screen it")
        sides.append((x32, scale, rounded if keep else None, stats))
        del rounded
    return sides


def _scaled_side(x32: np.ndarray, scale: np.ndarray, sq: np.ndarray, threads: int,
                 keep_bits: bool, kind: str = "bf16") -> tuple[Rounded | None, np.ndarray, int]:
    """``_round_rows`` of the rows fl32(scale[i] · x32[i]), made a block at a time."""
    F, D = x32.shape
    step = max(256 * threads, (1 << 22) // max(1, D))
    codes = scales = None
    stats, bad = np.empty((4, F)), -1
    for r0 in range(0, max(F, 1), step):
        r1 = min(r0 + step, F)
        blk = x32[r0:r1] * scale[r0:r1, None]
        (c, s), st, bad_blk = _round_rows(blk, np.ascontiguousarray(sq[r0:r1]), threads, kind)
        if bad < 0 <= bad_blk:
            bad = r0 + bad_blk
        stats[:, r0:r1] = st
        if keep_bits:
            if codes is None:
                codes = np.empty((F, c.shape[1]), c.dtype)
                scales = None if s is None else np.empty(F, np.float32)
            codes[r0:r1] = c
            if s is not None:
                scales[r0:r1] = s
    return ((codes, scales) if keep_bits else None), stats, bad


def _accumulation_bounds(d: int, kind: str = "bf16") -> tuple[float, float]:
    """(gamma, absolute slack) of the kernel's dot against the rounded rows' exact dot (module
    docstring). bf16: a float32 sum of d exact products, and flushed subnormal partial results;
    int8: an exact integer sum, then three float32 roundings ((1 + u)^3 - 1 < 4u; the slack
    covers results below float32's normal range)."""
    u = 2.0**-24
    if kind == "int8":
        return 4.0 * u, 2.0**-126
    return d * u / (1.0 - d * u), 8.0 * d * 2.0**-126


def _packed(rounded: Rounded, nb: np.ndarray, threads: int) -> _auction.ScreenB:
    codes, scales = rounded
    return _auction.ScreenB(codes, nb, threads=threads, scale=scales)


def screened_costs(A: Tensor, B: Tensor, *, threads: int | None = None, kind: str = "bf16") -> ScreenedCosts:
    """Screened squared distances of the rows of ``A`` [n, D] and ``B`` [m, D] (CPU tensors),
    rounded to ``kind`` (``"bf16"`` or ``"int8"``).

    Raises
    ------
    ValueError
        Non-finite vectors (their bound would be meaningless), or bad shapes and dtypes.
    """
    _check_vectors(A, B)
    if A.device.type != "cpu" or B.device.type != "cpu":
        raise ValueError(f"screened_costs runs on the CPU; got tensors on {A.device} and {B.device}")
    _check_kind(kind, A.shape[1])
    threads = threads or torch.get_num_threads()
    (_, _, a_rows, a_stats), (_, _, b_rows, b_stats) = _sides(A, B, threads, keep_a_bits=True, kind=kind)
    na = a_stats[3].astype(np.float32)
    packed = _packed(b_rows, b_stats[3].astype(np.float32), threads)
    n, m = a_rows[0].shape[0], b_rows[0].shape[0]
    costs = packed.costs(a_rows[0], na, threads=threads, out=_large_empty((n, m)), a_scale=a_rows[1])
    gamma, abs_slack = _accumulation_bounds(b_rows[0].shape[1], kind)
    return ScreenedCosts(costs, a_stats, b_stats, gamma, abs_slack)


def _check_kind(kind: str, d: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "int8" and d > INT8_MAX_D:
        raise ValueError(f"the int8 screen takes rows of width up to {INT8_MAX_D} (its int32 sums would "
                         f"overflow), got {d}; use kind='bf16' or MECHPERM_SCREEN=0")


def error_bounds(sc: ScreenedCosts, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The bound on |exact − screened| of the pairs (rows[t], cols[t]): the formula of
    ``screen_lower_bounds`` in csrc/screen.cpp, in numpy (without its final rounding margin)."""
    an, ar, af, sa = (x[rows] for x in sc.a_stats)
    bn, br, bf, sb = (x[cols] for x in sc.b_stats)
    return (2 * an * br + 2 * ar * (bn + br) + (2 * sc.gamma + 2e-6) * an * bn + 2e-6 * af * bf
            + 1e-6 * (sa + sb) + sc.abs_slack)


def lower_bounds(sc: ScreenedCosts, u: np.ndarray, v: np.ndarray, tau: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Turn ``sc.costs`` into lower bounds on the exact costs, in place; return the pairs
    ``(rows, cols)`` whose bound minus ``u_i + v_j`` is below ``tau``."""
    return _auction.screen_lower_bounds(
        sc.costs, sc.a_stats, sc.b_stats, sc.gamma, sc.abs_slack,
        np.ascontiguousarray(u, np.float64), np.ascontiguousarray(v, np.float64), float(tau),
    )


def exact_costs(A: np.ndarray, B: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                na: np.ndarray, nb: np.ndarray, a_scale: np.ndarray | None = None,
                b_scale: np.ndarray | None = None) -> np.ndarray:
    """float32 costs of the pairs (rows[t], cols[t]) of float32 rows ``A``, ``B`` (scaled as
    :class:`ScaledRows` where a scale is given): |a|^2 + |b|^2 - 2 a.b with the dot in float64
    and the squared norms ``na``, ``nb`` of the screened matrix; clamped at 0."""
    rows = np.ascontiguousarray(rows, np.int64)
    cols = np.ascontiguousarray(cols, np.int64)
    dot = _auction.pair_dots(A, B, rows, cols, threads=torch.get_num_threads(), a_scale=a_scale, b_scale=b_scale)
    return np.maximum(na[rows] + nb[cols] - 2.0 * dot, 0.0).astype(np.float32)


def pair_dots(A: Tensor | ScaledRows, B: Tensor | ScaledRows, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 dots of the pairs (A[rows[t]], B[cols[t]]) of CPU rows (exact products of float32
    values, as :func:`exact_costs` sums them)."""
    (a, sa), (b, sb) = (X.numpy_parts() if isinstance(X, ScaledRows) else (_float_rows(X), None) for X in (A, B))
    return _auction.pair_dots(a, b, np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(cols, np.int64),
                              threads=torch.get_num_threads(), a_scale=sa, b_scale=sb)


def exact_rows(A: np.ndarray, B: np.ndarray, rows: np.ndarray, na: np.ndarray, nb: np.ndarray,
               *, block: int = 256) -> np.ndarray:
    """Whole rows [len(rows), m] of exact costs (the arithmetic of :func:`exact_costs`) by float64
    GEMMs: for rows that need many exact pairs (heavy-tailed norms make a row's error bound wide)
    a GEMM beats gathering B's rows pair by pair."""
    Bd = torch.from_numpy(B).double()
    nbt = torch.from_numpy(np.asarray(nb, np.float64))
    out = np.empty((len(rows), B.shape[0]), np.float32)
    for s0 in range(0, len(rows), block):
        r = rows[s0 : s0 + block]
        dot = torch.from_numpy(A[r]).double() @ Bd.T
        val = torch.from_numpy(np.asarray(na, np.float64)[r])[:, None] + nbt[None, :] - 2.0 * dot
        out[s0 : s0 + block] = val.clamp_min_(0.0).float().numpy()
    return out


def exact_dense_costs(A: Tensor, B: Tensor) -> Tensor:
    """All exact costs ``[F_a, F_b]`` float32 in the arithmetic of :func:`exact_costs` (a
    float64 GEMM; for small F: the reference the screened path is exact for)."""
    _check_vectors(A, B)
    na, nb = row_sq_norms(A).double(), row_sq_norms(B).double()
    dot = A.double() @ B.double().T
    return (na[:, None] + nb[None, :] - 2.0 * dot).clamp_min_(0.0).float()


# ---------------------------------------------------------------------------------- sparse path
@dataclasses.dataclass
class ScreenedVectors:
    """Both sides prepared for screening: float32 rows (exact dots), statistics (as in
    :class:`ScreenedCosts`), and B packed once for every row block and pricing pass. A's rounded
    rows are made per block when needed (:meth:`a_rows`): kept whole they would add 0.3 GB
    (bf16) at F = 65536, d = 2304, against the 4 GB budget. Rows given as :class:`ScaledRows`
    keep their base and scale (``a_scale``, ``b_scale``) and are rounded as they are read."""

    A32: np.ndarray
    B32: np.ndarray
    a_stats: np.ndarray
    b_stats: np.ndarray
    packed: _auction.ScreenB
    gamma: float
    abs_slack: float
    threads: int
    a_scale: np.ndarray | None = None
    b_scale: np.ndarray | None = None
    kind: str = "bf16"
    na: np.ndarray = dataclasses.field(init=False)
    """float32 squared norms of A's rows (the cost formula's; made once, read per block)."""
    nb: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.na = self.a_stats[3].astype(np.float32)
        self.nb = self.b_stats[3].astype(np.float32)

    def a_rows(self, rows: slice | np.ndarray) -> Rounded:
        """These rows of A rounded as :func:`screened_costs` rounds them: (codes, scales)."""
        x = self.A32[rows]
        if self.a_scale is not None:
            x = x * self.a_scale[rows][:, None]
        return _round_rows(np.ascontiguousarray(x), self.na[rows], self.threads, self.kind)[0]

    def costs(self, rows: Rounded, na: np.ndarray, **kw) -> np.ndarray:
        """The packed B's screened costs of rounded rows (see ``ScreenB.costs``)."""
        return self.packed.costs(rows[0], na, threads=self.threads, a_scale=rows[1], **kw)

    def exact(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact costs of the pairs (see :func:`exact_costs`), 2^20 pairs at a time (a graph's
        ~10M arcs would otherwise take ~0.4 GB of float64 and int64 temporaries at once)."""
        out = np.empty(len(rows), np.float32)
        step = 1 << 20
        for s0 in range(0, len(rows), step):
            out[s0 : s0 + step] = exact_costs(self.A32, self.B32, rows[s0 : s0 + step], cols[s0 : s0 + step],
                                              self.a_stats[3], self.b_stats[3], self.a_scale, self.b_scale)
        return out


def prepare(A: Tensor | ScaledRows, B: Tensor | ScaledRows, *, threads: int | None = None,
            kind: str = "bf16") -> ScreenedVectors:
    """Rounded rows and statistics of both sides, B packed (CPU tensors or :class:`ScaledRows`;
    see :func:`screened_costs`)."""
    _check_vectors(A, B)
    if A.device.type != "cpu" or B.device.type != "cpu":
        raise ValueError(f"screening runs on the CPU; got tensors on {A.device} and {B.device}")
    _check_kind(kind, A.shape[1])
    threads = threads or torch.get_num_threads()
    (A32, a_scale, _, a_stats), (B32, b_scale, b_rows, b_stats) = _sides(A, B, threads, keep_a_bits=False, kind=kind)
    gamma, abs_slack = _accumulation_bounds(b_rows[0].shape[1], kind)
    packed = _packed(b_rows, b_stats[3].astype(np.float32), threads)
    del b_rows  # the packed copy is all the kernel reads
    return ScreenedVectors(A32, B32, a_stats, b_stats, packed, gamma=gamma, abs_slack=abs_slack,
                           threads=threads, a_scale=a_scale, b_scale=b_scale, kind=kind)


def _error_terms(own: np.ndarray, other: np.ndarray, gamma: float, abs_slack: float) -> tuple[np.ndarray, np.ndarray]:
    """(mu, K) per vector of one side: the bound E_ij (see ``csrc/screen.cpp``) is at most
    ``mu_i x_j + 1e-6 |b_j|^2 + K_i`` over every j, with x_j = sqrt(float32 |b_j|^2). The
    |b_j|-proportional terms are bounded through the largest ratios to x_j; columns with
    x_j = 0 (only subnormal entries) go into K."""
    an, ar, af, sq = own
    bn, br, bf, bsq = other
    x = np.sqrt(bsq)
    pos = x > 0
    up = 1.0 + 1e-12

    def ratio(t: np.ndarray) -> float:
        return float(np.max(t[pos] / x[pos], initial=0.0)) * up

    rho1, rho2, rho3, rho4 = ratio(br), ratio(bn + br), ratio(bn), ratio(bf)
    z = float(np.max((bn + br + bf)[~pos], initial=0.0))
    c3 = 2.0 * gamma + 2.0e-6
    mu = (2.0 * an * rho1 + 2.0 * ar * rho2 + c3 * an * rho3 + 2.0e-6 * af * rho4) * up
    K = (1e-6 * sq + abs_slack + (2.0 * an + 2.0 * ar + c3 * an + 2.0e-6 * af) * z) * up
    return mu, K


def _capped_bounds(row_kth: np.ndarray, col_kth: np.ndarray, a_stats: np.ndarray, b_stats: np.ndarray,
                   gamma: float, abs_slack: float, quantile: float = 0.5) -> dict:
    """The rank bounds of :class:`mechperm.assign.CandidateGraph` (``row_bound``, ``col_bound``
    and their offsets) from the k-th screened costs, for the exact costs of the pairs left out.

    A pair left out of row i's k cheapest has c_ij >= kth_i − (mu_i x_j + 1e-6 |b_j|² + K_i)
    (:func:`_error_terms`; x_j = |b_j|). The error grows with |b_j|, and charging every row the
    largest column norm's error (the bound before) left the small-norm rows nothing: at
    F = 65536, d = 256, 4232 of them failed round 1 against 197 unscreened. So the error is
    charged up to a cap X_c (the columns' median norm) in the row's bound and beyond it in the
    column's offset, with the largest mu: mu_i x_j <= mu_i X_c + max(mu) max(0, x_j − X_c), and
    |b_j|² <= X_c² + max(0, |b_j|² − X_c²). Likewise per column with the rows' norms; and per
    column the whole line in the row norm (``col_base``, ``col_slope``): at F = 65536, d = 256
    the small-norm rows' round-1 failures came from one column whose dual sat 2e-5 above its
    capped bound.
    """
    out = {}
    for side, kth, own, other in (("row", row_kth, a_stats, b_stats), ("col", col_kth, b_stats, a_stats)):
        mu, K = _error_terms(own, other, gamma, abs_slack)
        if side == "col":
            # the column's k-th cost less its exact error line in the row norm y_i:
            # mu_j y_i + 1e-6 |a_i|² + K_j <= (mu_j + 1e-6 Y) y_i + K_j, Y >= every y_i
            y_max = float(np.sqrt(other[3]).max(initial=0.0)) * (1.0 + 1e-9)
            out["col_base"], out["col_slope"] = kth - K, mu + 1e-6 * y_max
        osq = other[3]
        on = np.sqrt(osq)
        cap = float(np.quantile(on, quantile)) if len(on) else 0.0
        out[f"{side}_bound"] = kth - (mu * cap + 1e-6 * cap * cap + K)
        mu_max = float(mu.max(initial=0.0))
        other_side = "col" if side == "row" else "row"
        out[f"{other_side}_offset"] = -(mu_max * np.maximum(on - cap, 0.0) + 1e-6 * np.maximum(osq - cap * cap, 0.0))
    return out


def solver_graph(sv: ScreenedVectors, k: int, k_cos: int | None = None, *, block_rows: int = 1024,
                 block_cols: int = 8192, on_rows: Callable[[int], None] | None = None):
    """The candidate graph of the sparse path, screened: per row and per column the k cheapest
    and the k_cos most cosine-similar partners by screened cost, with exact costs, and bounds
    that hold for the exact costs of every pair left out (:class:`mechperm.assign.CandidateGraph`).

    Selection by screened values keeps the graph's purpose (an optimum close to the true one);
    the bounds absorb the screen's error: the k-th screened cost minus the largest error of the
    row, and the least screened cosine plus mu_i / (2 |a_i|) (the error per unit |b_j|; see
    :func:`_error_terms`). Returns the graph and the :class:`CandidateStats`. ``on_rows`` is
    called with the number of rows done after each row block (a progress bar's ``update``).
    """
    from mechperm import assign

    k_cos = k if k_cos is None else k_cos
    Fa, Fb = sv.A32.shape[0], sv.B32.shape[0]
    kr, kc = min(k, Fb), min(k, Fa)
    kcr, kcc = min(k_cos, Fb), min(k_cos, Fa)
    dev = torch.device("cpu")
    rows_c = _RunningTopK(Fa, kr, dev, "cost")
    cols_c = _RunningTopK(Fb, kc, dev, "cost")
    rows_s = _RunningTopK(Fa, kcr, dev, "cos") if kcr else None
    cols_s = _RunningTopK(Fb, kcc, dev, "cos") if kcc else None
    na, nb = torch.from_numpy(sv.na), torch.from_numpy(sv.nb)
    y, x = np.sqrt(sv.a_stats[3]), np.sqrt(sv.b_stats[3])
    half_iy = torch.from_numpy(np.where(y > 0, 0.5 / np.where(y > 0, y, 1.0), 0.0)).float()
    ix = torch.from_numpy(np.where(x > 0, 1.0 / np.where(x > 0, x, 1.0), 0.0)).float()
    scratch = _Scratch(dev)
    # Tall tiles: every tile merges the running top-k of its columns, so the merges cost
    # (row tiles) x F_b x k (F = 16384: 256-row tiles spent 5.9 s in them, 1024-row 1.6 s).
    block_cols = max(32, block_cols // 32 * 32)  # the kernel's column ranges start at multiples of 32
    for r0 in range(0, Fa if Fb else 0, block_rows):
        r1 = min(r0 + block_rows, Fa)
        rounded, na_blk = sv.a_rows(slice(r0, r1)), sv.na[r0:r1]
        for c0 in range(0, Fb, block_cols):
            c1 = min(c0 + block_cols, Fb)
            buf = scratch.get("tile", (r1 - r0, c1 - c0)).numpy()
            tile = torch.from_numpy(sv.costs(rounded, na_blk, out=buf, c0=c0, c1=c1))
            # −cos~ = (c~ − |a|² − |b|²) · ½/|a| / |b|, computed by the selection as it scans
            cos_of = (na[r0:r1], nb[c0:c1], half_iy[r0:r1], ix[c0:c1]) if rows_s is not None else None
            _select(tile, None, r0, c0, rows_c, cols_c, rows_s, cols_s, scratch, cos_of=cos_of)
        if on_rows is not None:
            on_rows(r1 - r0)
    g = _selection_graph((Fa, Fb), rows_c, cols_c, rows_s, cols_s, k, k_cos)
    # the least screened cosine each row and column holds; then the selections go (0.2 GB at
    # F = 65536, k = 64), before the exact costs' temporaries
    least_cos = [None if own is None else -own.vals[:, -1].double().numpy() for own in (rows_s, cols_s)]
    del rows_c, cols_c, rows_s, cols_s, scratch

    indptr, stats = g.indptr.numpy(), g.stats
    row_kth, col_kth = g.row_kth.double().numpy(), g.col_kth.double().numpy()
    cols = _solver_columns(g)
    del g  # its int64 columns
    rows = np.repeat(np.arange(Fa, dtype=np.int32), np.diff(indptr))  # int32: exact() widens by chunks
    costs = sv.exact(rows, cols)
    del rows
    mu_a, _ = _error_terms(sv.a_stats, sv.b_stats, sv.gamma, sv.abs_slack)  # for the cosine bounds
    mu_b, _ = _error_terms(sv.b_stats, sv.a_stats, sv.gamma, sv.abs_slack)
    bounds = _capped_bounds(row_kth, col_kth, sv.a_stats, sv.b_stats, sv.gamma, sv.abs_slack)
    bounds.update(row_norm=y, col_norm=x)
    for name, least, mu, norm in (("row_cos", least_cos[0], mu_a, y), ("col_cos", least_cos[1], mu_b, x)):
        if least is None:
            continue
        kappa = least + np.where(norm > 0, mu / (2.0 * np.where(norm > 0, norm, 1.0)), 0.0)
        if np.isfinite(kappa).all():
            bounds[name] = kappa
    graph = assign.CandidateGraph(indptr=indptr, indices=cols, costs=costs, **bounds)
    return graph, stats


def row_pricer(sv: ScreenedVectors, q: int, *, block: int = 1024):
    """``price_rows`` of :func:`mechperm.assign.assign_exact`, screened: per requested row the q
    pairs of least lower-bound reduced cost, with exact costs, and as 4th output a lower bound
    on the reduced cost of every pair not returned. A row whose bound is < 0 (more than q pairs
    the screen cannot rule out) and whose pairs hold no violation is priced again with 4q, until
    the bound is >= 0."""

    from mechperm import assign

    def price_rows(rows: np.ndarray, u: np.ndarray, v: np.ndarray):
        rows = np.ascontiguousarray(rows, np.int64)
        v = np.ascontiguousarray(v, np.float64)
        out_r, out_c, out_w, out_b = [], [], [], []
        todo, qq = rows, q
        while len(todo):
            bound = np.empty(len(todo))
            pass_r, pass_c = [], []
            for s0 in range(0, len(todo), block):
                ids = todo[s0 : s0 + block]
                codes, scales = sv.a_rows(ids)
                cols, b = sv.packed.price(
                    codes, sv.na[ids], np.ascontiguousarray(sv.a_stats[:, ids]),
                    sv.b_stats, sv.gamma, sv.abs_slack, np.ascontiguousarray(u[ids], np.float64), v, qq,
                    threads=sv.threads, a_scale=scales)
                bound[s0 : s0 + block] = b
                pass_r.append(np.repeat(ids, cols.shape[1]))
                pass_c.append(cols.reshape(-1))
            pr, pc = np.concatenate(pass_r), np.concatenate(pass_c)
            pw = sv.exact(pr, pc)
            # A row whose pairs already hold a violation is not priced again with 4q (at
            # F = 65536, 955 rows went on to 8192 and 32768 pairs, half the exact costs of all
            # pricing): the loop adds its pairs, solves again and prices it again anyway.
            retry = (bound < 0) & ~_violating_rows(todo, pr, pc, pw, u, v)
            out_b.append((todo[~retry], bound[~retry]))
            again = todo[retry]
            if len(again) and qq < sv.B32.shape[0]:  # their first, smaller answers are superseded
                keep = ~np.isin(pr, again)
                pr, pc, pw = pr[keep], pc[keep], pw[keep]
            else:
                out_b.append((again, bound[retry]))
                again = again[:0]
            out_r.append(pr)
            out_c.append(pc)
            out_w.append(pw)
            todo, qq = again, min(4 * qq, sv.B32.shape[0])
        r = np.concatenate(out_r) if out_r else np.empty(0, np.int64)
        c = np.concatenate(out_c) if out_c else np.empty(0, np.int64)
        w = np.concatenate(out_w) if out_w else np.empty(0, np.float32)
        row_bound = np.full(len(rows), np.inf)
        order = np.argsort(rows, kind="stable")
        for ids, b in out_b:
            row_bound[order[np.searchsorted(rows[order], ids)]] = b
        return assign.PricedRows(r, c, w, row_bound)

    return price_rows
