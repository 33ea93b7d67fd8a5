"""The bf16 screen on a GPU: candidates and pricing from bfloat16 tensor-core tiles, exact costs
where they decide (the CUDA counterpart of :mod:`mechperm.kernels.screen`, same bound).

Why: on an H200 the candidate kernel ran at 46 TFLOP/s on float32 vectors (3×TF32 dots) and at
94 TFLOP/s on bf16 ones (``bench/bench_triton_tiles.py``, F = 16384), and ``match_vectors`` at
F = 262144 took 65-73 s on float32 vectors against 60 s on bf16 ones. Float32 SAEs (Gemma Scope)
get the bf16 speed here without giving up exactness:

- the candidate graph is selected on screened costs (the Triton top-k kernel on bf16 roundings
  of the vectors, with the float32 vectors' norms), every arc gets its exact cost, and the
  bounds absorb the screen's error exactly as on the CPU (:func:`screen.solver_graph`);
- pricing ranks each row by lower bounds on the exact reduced costs (the screened cost less its
  error bound, computed in the kernel from per-row statistics), returns exact costs, and proves
  a bound for every pair it leaves out;
- exact costs are those of :func:`screen.exact_costs` (|a|² + |b|² − 2 a·b with the dot in
  float64, rounded once to float32): the same values on a CPU and a GPU.

The bound is :mod:`screen`'s with the accumulation term doubled: NVIDIA does not document how
tensor cores add float32 partial sums; published measurements (Fasi et al., "Numerical behavior
of NVIDIA tensor cores", 2021) find exact products and sums truncated to float32, an error per
addition of at most 2u, i.e. within ``2 gamma_D |a~||b~|``. Measured on an H200 (2026-11-26,
4096 x 4096 bf16 tiles, d = 2304): at most 0.06 of that bound's dot and epilogue terms.

On by default for float32 CUDA vectors from F_a · F_b >= ``AUTO_MIN_PAIRS`` (16384²), where it
was measured faster; ``MECHPERM_GPU_SCREEN=1`` / ``0`` forces it on / off. Checked under
``TRITON_INTERPRET=1`` (tests/test_screen_cuda.py), where the Triton dots are exact float32,
and on an H100 (tests and ``bench/gpu_check.sh``).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from torch import Tensor

from mechperm.kernels import screen
from mechperm.kernels.candidates import (
    _backend,
    _check_norms,
    _check_vectors,
    _cosine_kappas,
    _reprice_weak,
    _solver_columns,
    row_sq_norms,
)

_TINY = 2.0**-126  # below it a bf16 value is subnormal: flushed, as on the CPU (csrc/screen.cpp)


# Pairs from which CUDA vectors are screened by default. Measured on an H100 (d = 2304,
# bench_match_gpu, candidates_k = 64, warm runs): 2026-11-26, F = 262144 6.3 s screened against
# 10.5 s with float32 GEMM blocks, 1M 41-46 s screened (float32 GEMMs at 52 TFLOP/s alone would
# take ~90 s); then slower at 65536 (2.5 against 1.1 s: 4 pricing rounds against 3). 2026-11-27,
# one machine, after the dual shift: 65536 0.465 s screened against 0.774-0.788 s, 16384
# 0.091-0.093 s against 0.098-0.103 s (2 rounds each way).
AUTO_MIN_PAIRS = 16384 * 16384


def available(A: Tensor, B: Tensor) -> bool:
    """Whether the GPU screen runs: float32 vectors (bf16 ones need no screen) on the Triton
    backend (CUDA tensors, or TRITON_INTERPRET=1 with ``MECHPERM_KERNELS=triton`` on the CPU,
    as the tests run it), when ``MECHPERM_GPU_SCREEN=1`` or, unset, for CUDA tensors of at
    least ``AUTO_MIN_PAIRS`` pairs; ``MECHPERM_GPU_SCREEN=0`` turns it off."""
    flag = os.environ.get("MECHPERM_GPU_SCREEN")
    if flag == "0":
        return False
    if A.dtype != torch.float32 or B.dtype != torch.float32:
        return False
    if flag != "1" and not (A.is_cuda and A.shape[0] * B.shape[0] >= AUTO_MIN_PAIRS):
        return False
    try:
        return _backend(A, B) == "triton"
    except ValueError:
        return False


@dataclasses.dataclass
class ScreenedVectorsGPU:
    """Both sides on the device: float32 rows (exact costs), bf16 roundings (the screen), the
    float32 squared norms of the cost formula, and the statistics of :mod:`screen`'s bound
    ([4, F] float64: |x~|, |x~ − x|, |x|, float32 |x|²) on the device and as numpy."""

    A32: Tensor
    B32: Tensor
    A16: Tensor
    B16: Tensor
    na: Tensor
    nb: Tensor
    a_stats_t: Tensor
    b_stats_t: Tensor
    a_stats: np.ndarray
    b_stats: np.ndarray
    gamma: float
    abs_slack: float

    def exact(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Exact costs (float32, on the device) of the pairs (rows[t], cols[t])."""
        from mechperm.kernels import triton_candidates as tc

        return tc.pair_costs(self.A32, self.B32, self.na, self.nb, rows, cols, tc.BD_FP32, fp64=True)

    def exact_np(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        dev = self.A32.device
        return self.exact(torch.from_numpy(np.ascontiguousarray(rows, np.int64)).to(dev),
                          torch.from_numpy(np.ascontiguousarray(cols, np.int64)).to(dev)).cpu().numpy()


def _side(name: str, X: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(float32 rows, bf16 rows, float32 squared norms, stats [5, F] float64 on the device: the
    four of :class:`ScreenedVectorsGPU`, then a flag per row that :func:`_check_side` reads)
    of one side, in one pass of ``triton_candidates.screen_side`` and no synchronisation."""
    from mechperm.kernels import triton_candidates as tc

    x32 = X.detach().float().contiguous()
    if x32.shape[1] >= 1 << 17:
        raise ValueError(f"{name} has D = {x32.shape[1]}; the screen's bound assumes D < 131072")
    # X's own norms where they are x32's: the match keeps them for its pair values (norms_kept)
    sq = row_sq_norms(X if X.dtype == torch.float32 and not X.requires_grad else x32)
    x16, stats = tc.screen_side(x32, sq, _TINY)
    # float64 norms of float32 data: relative error < D 2^-53 < 2^-36 (D < 2^17); rounded up by
    # that (as csrc/screen.cpp does), so the bound never rests on a norm that came out low
    stats[:3].sqrt_().mul_(1.0 + 2.0**-36)  # in place: a view of stats
    stats[3] = sq.double()
    return x32, x16, sq, stats


def _check_side(name: str, stats: np.ndarray, sq: Tensor) -> None:
    """Refuse a side whose rows cannot be screened (``stats``: :func:`_side`'s, on the host;
    ``sq``: its squared norms, read again only to say which rows are not finite)."""
    flag = stats[4]
    if (flag == 2).any():
        _check_norms(name, sq)
    if (flag == 1).any():
        raise ValueError(f"{name} row {int(np.flatnonzero(flag == 1)[0])} overflows bfloat16; cannot screen it")


def prepare(A: Tensor, B: Tensor) -> ScreenedVectorsGPU:
    """bf16 roundings and statistics of both sides, on their device."""
    _check_vectors(A, B)
    (A32, A16, na, sa), (B32, B16, nb, sb) = _side("A", A), _side("B", B)
    host_a, host_b = sa.cpu().numpy(), sb.cpu().numpy()  # prepare's only waits for the device
    _check_side("A", host_a, na)
    _check_side("B", host_b, nb)
    gamma, abs_slack = screen._accumulation_bounds(A.shape[1])
    return ScreenedVectorsGPU(A32, B32, A16, B16, na, nb, sa[:4], sb[:4], host_a[:4], host_b[:4],
                              gamma=2.0 * gamma, abs_slack=abs_slack)


def solver_graph(sv: ScreenedVectorsGPU, k: int, k_cos: int | None = None):
    """The sparse path's candidate graph, screened on the GPU (see the module docstring and
    :func:`screen.solver_graph`, whose bounds these are). Returns (graph, CandidateStats)."""
    from mechperm import assign
    from mechperm.kernels import triton_candidates as tc

    k_cos = k if k_cos is None else k_cos
    g = tc.candidates(sv.A16, sv.B16, k=k, k_cos=k_cos, norms=(sv.na, sv.nb))
    costs = sv.exact(g.row_ids(), g.indices).cpu().numpy()
    y, x = np.sqrt(sv.a_stats[3]), np.sqrt(sv.b_stats[3])
    mu_a, _ = screen._error_terms(sv.a_stats, sv.b_stats, sv.gamma, sv.abs_slack)  # for the cosine bounds
    mu_b, _ = screen._error_terms(sv.b_stats, sv.a_stats, sv.gamma, sv.abs_slack)
    # Bounds on what the selection compared for the pairs left out (bf16 dots over the float32
    # vectors' norms: its k-th value plus its error), then mu / 2|a| per unit |b| for the step
    # to the float32 vectors' dots, as in screen.solver_graph.
    cos = _cosine_kappas(g, sv.A16.shape[1])  # the norms are the float32 vectors' (y, x)
    bounds = screen._capped_bounds(g.row_kth.cpu().double().numpy(), g.col_kth.cpu().double().numpy(),
                                   sv.a_stats, sv.b_stats, sv.gamma, sv.abs_slack)
    bounds.update(row_norm=y, col_norm=x)
    for name, mu, norm in (("row_cos", mu_a, y), ("col_cos", mu_b, x)):
        if name in cos:
            bounds[name] = cos[name] + np.where(norm > 0, mu / (2.0 * np.where(norm > 0, norm, 1.0)), 0.0)
    graph = assign.CandidateGraph(indptr=g.indptr.cpu().numpy(), indices=_solver_columns(g), costs=costs, **bounds)
    return graph, g.stats


def row_pricer(sv: ScreenedVectorsGPU, q: int):
    """``price_rows`` of :func:`mechperm.assign.assign_exact` on the screen: per requested row
    the pairs of least lower-bound reduced cost with their exact costs, and a bound on every
    pair left out (:class:`assign.PricedRows`). A row whose bound is below 0 is priced again
    keeping 4× as many (up to 128), then, if still below, exactly over all columns."""
    from mechperm import assign
    from mechperm.kernels import triton_candidates as tc

    q = min(q, 64)  # registers: see kernels.candidates._fused_row_pricer
    m = sv.B32.shape[0]

    def price_rows(rows: np.ndarray, u: np.ndarray, v: np.ndarray):
        dev = sv.A32.device
        rows_t = torch.from_numpy(np.ascontiguousarray(rows, np.int64)).to(dev)
        u_t, v_t = torch.from_numpy(u).to(dev), torch.from_numpy(v).to(dev)
        out = _reprice_weak(lambda ids, qq: tc.price_rows_topq(sv.A16, sv.B16, u_t, v_t, ids, qq, screen=sv),
                            rows_t, u_t, q, m, exact=lambda ids: _exact_rows_topq(sv, ids, u_t, v_t, q), v=v_t)
        return assign.PricedRows(*(x.cpu().numpy() for x in out))

    return price_rows


def _exact_rows_topq(sv: ScreenedVectorsGPU, rows: Tensor, u: Tensor, v: Tensor, q: int,
                     max_pairs: int = 1 << 24):
    """Per row, all exact costs (float64 dots), the q least reduced costs and, as the bound, the
    (q+1)-th (exact: nothing left out has less)."""
    m, dev = sv.B32.shape[0], sv.A32.device
    kq = min(q, m)
    block = max(1, max_pairs // max(m, 1))
    out = [], [], [], []
    cols_all = torch.arange(m, device=dev)
    for s0 in range(0, rows.numel(), block):
        ids = rows[s0 : s0 + block]
        pr, pc = ids.repeat_interleave(m), cols_all.repeat(ids.numel())
        w = sv.exact(pr, pc).view(ids.numel(), m)
        red = (w.double() - u[ids][:, None]) - v[None, :]
        k1 = min(kq + 1, m)
        vals, cols = torch.topk(red, k1, dim=1, largest=False, sorted=True)
        bound = vals[:, kq] if k1 > kq else torch.full((ids.numel(),), float("inf"), dtype=torch.float64, device=dev)
        out[0].append(ids.repeat_interleave(kq))
        out[1].append(cols[:, :kq].reshape(-1))
        out[2].append(torch.gather(w, 1, cols[:, :kq]).reshape(-1))
        out[3].append(bound)
    return tuple(torch.cat(x) for x in out)
