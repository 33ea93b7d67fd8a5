"""Screened costs: every squared distance from a bfloat16 GEMM, with a rigorous error bound.

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

Exact costs (:func:`exact_costs`) are float32 roundings of |a|^2 + |b|^2 - 2 a.b with the dot in
float64: the cost of the pair up to one float32 rounding (the float32 GEMM of
:func:`~mechperm.kernels.dense_costs` is within gamma_D |a||b| of it).
"""
from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np
import torch
from torch import Tensor

from mechperm import _auction
from mechperm.kernels.candidates import _check_vectors, row_sq_norms



def available(A: Tensor, B: Tensor) -> bool:
    """Whether screening pays here: CPU tensors, a CPU with AVX-512 BF16, not switched off with
    ``MECHPERM_SCREEN=0`` (``MECHPERM_SCREEN=1`` forces it, e.g. for tests on other CPUs)."""
    flag = os.environ.get("MECHPERM_SCREEN", "")
    if A.device.type != "cpu" or B.device.type != "cpu" or flag == "0":
        return False
    return flag == "1" or _auction.screen_has_fast_kernel()


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


def screened_costs(A: Tensor, B: Tensor, *, threads: int | None = None) -> ScreenedCosts:
    """Screened squared distances of the rows of ``A`` [n, D] and ``B`` [m, D] (CPU tensors).

    Raises
    ------
    ValueError
        Non-finite vectors (their bound would be meaningless), or bad shapes and dtypes.
    """
    _check_vectors(A, B)
    if A.device.type != "cpu" or B.device.type != "cpu":
        raise ValueError(f"screened_costs runs on the CPU; got tensors on {A.device} and {B.device}")
    threads = threads or torch.get_num_threads()
    sides = []
    for name, X in (("A", A), ("B", B)):
        bits, stats, bad = _auction.screen_side(_float_rows(X), row_sq_norms(X).numpy(), threads)
        if bad >= 0:
            raise ValueError(f"{name} row {bad} is not finite (or overflows bfloat16); cannot screen it")
        sides.append((bits, stats))
    (a_bits, a_stats), (b_bits, b_stats) = sides
    na, nb = a_stats[3].astype(np.float32), b_stats[3].astype(np.float32)
    costs = _auction.screen_costs(a_bits, b_bits, na, nb, threads=threads,
                                  out=_large_empty((a_bits.shape[0], b_bits.shape[0])))
    d = a_bits.shape[1]
    u = 2.0**-24
    gamma = d * u / (1.0 - d * u)
    abs_slack = 8.0 * d * 2.0**-126
    return ScreenedCosts(costs, a_stats, b_stats, gamma, abs_slack)


def lower_bounds(sc: ScreenedCosts, u: np.ndarray, v: np.ndarray, tau: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Turn ``sc.costs`` into lower bounds on the exact costs, in place; return the pairs
    ``(rows, cols)`` whose bound minus ``u_i + v_j`` is below ``tau``."""
    return _auction.screen_lower_bounds(
        sc.costs, sc.a_stats, sc.b_stats, sc.gamma, sc.abs_slack,
        np.ascontiguousarray(u, np.float64), np.ascontiguousarray(v, np.float64), float(tau),
    )


def exact_costs(A: np.ndarray, B: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """float32 costs of the pairs (rows[t], cols[t]) of float32 rows ``A``, ``B``:
    |a|^2 + |b|^2 - 2 a.b with the dot in float64 and the squared norms ``na``, ``nb`` of the
    screened matrix; clamped at 0."""
    rows = np.ascontiguousarray(rows, np.int64)
    cols = np.ascontiguousarray(cols, np.int64)
    dot = _auction.pair_dots(A, B, rows, cols)
    return np.maximum(na[rows] + nb[cols] - 2.0 * dot, 0.0).astype(np.float32)


def exact_dense_costs(A: Tensor, B: Tensor) -> Tensor:
    """All exact costs ``[F_a, F_b]`` float32 in the arithmetic of :func:`exact_costs` (a
    float64 GEMM; for small F: the reference the screened path is exact for)."""
    _check_vectors(A, B)
    na, nb = row_sq_norms(A).double(), row_sq_norms(B).double()
    dot = A.double() @ B.double().T
    return (na[:, None] + nb[None, :] - 2.0 * dot).clamp_min_(0.0).float()
