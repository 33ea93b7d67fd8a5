"""Candidate graph for the sparse assignment: streamed squared distances, top-k, pricing.

Three ops over matching vectors ``A [F_a, D]``, ``B [F_b, D]`` (float32, bfloat16 or float16):
:func:`dense_costs` (the whole matrix, small F), :func:`candidates` (sparse graph with the k
cheapest and the k most cosine-similar partners of every row and every column, plus the bounds
the certificate needs) and :func:`price` (every pair of negative reduced cost under given duals).
The torch reference lives here; the Triton kernels in ``triton_candidates.py``; ``_backend`` is
the one dispatcher (Triton for CUDA tensors, torch otherwise; ``MECHPERM_KERNELS=torch|triton``).

Arithmetic, shared by all three so that the same pair gets the same float32 cost everywhere::

    n_i  = fl32(Σ_d a_id²)                             (row_sq_norms: float64 sum, rounded once)
    c_ij = max(0, fl(fl(−2·⟨a_i, b_j⟩ + n_i) + m_j))   (m_j: the same for B)

with ⟨a_i, b_j⟩ a float32 GEMM (float32 accumulation) and −2 applied to A first (exact). On the
CPU the costs agree bit for bit between the three functions: every GEMM operand block is padded
to at least ``_MIN_GEMM_ROWS`` rows, because BLAS switches to gemv / small-matrix kernels (other
summation orders) below about 12 rows; above that MKL's value for a pair does not depend on the
block it sits in (tests/test_kernels.py checks this). On CUDA the Triton kernels use the same
formula in the same order, but tensor-core reductions differ from MKL's: costs agree to float32
rounding, so call :func:`price` with ``tol > 0`` there.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from mechperm import _auction
from mechperm.kernels.rows import ScaledRows, materialize

Backend = Literal["torch", "triton"]
_MIN_GEMM_ROWS = 16
_NORM_BLOCK_ELEMENTS = 1 << 18
_PACK_KEYS = True  # _assemble's in-place sort of keys with positions (CPU); tests switch it off
_UNION_CHUNK = 1 << 20  # edges per step of _assemble's passes over the sorted keys (tests: small)
# Sources of an edge (bits of CandidateGraph.sources); cost sources come first so that a pair
# found by several keeps a cost-source value (they only differ on CUDA, by rounding).
ROW_COST, COL_COST, ROW_COS, COL_COS = 1, 2, 4, 8
_SOURCE_BITS = (ROW_COST, COL_COST, ROW_COS, COL_COS)


# ---------------------------------------------------------------------------------- dispatch
def _backend(*tensors: Tensor, backend: str | None = None) -> Backend:
    """The one place the implementation is chosen: argument > $MECHPERM_KERNELS > device."""
    choice = backend or os.environ.get("MECHPERM_KERNELS", "").strip().lower() or "auto"
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel backend {choice!r} (MECHPERM_KERNELS?) unknown; use 'torch' or 'triton'")
    on_cuda = all(t.is_cuda for t in tensors)
    if choice == "auto":
        if not on_cuda:
            return "torch"
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch"
        return "triton"
    if choice == "triton":
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 to run on the CPU)")
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise ValueError("the triton backend was requested but triton is not installed") from e
    return choice  # type: ignore[return-value]


# ---------------------------------------------------------------------------------- checks
KERNEL_DEVICES = ("cpu", "cuda")
"""Device types the cost kernels run on: torch on the CPU, Triton on CUDA. (MPS has no float64,
which the certificate's pricing and the exact pair costs need.)"""


def check_kernel_device(device: torch.device, what: str, fix: str = "move them to the CPU") -> None:
    """Refuse a device the cost kernels do not run on (``what`` is there; ``fix`` says what to
    do), before any work: elsewhere the first float64 tensor or ``.item()`` fails deep inside a
    kernel."""
    if device.type not in KERNEL_DEVICES:
        why = " (MPS has no float64, which the certificate needs)" if device.type == "mps" else ""
        raise ValueError(f"{what} on device {str(device)!r}: the cost kernels run on 'cpu' or 'cuda'{why}; {fix}")


def _check_vectors(A: Tensor, B: Tensor | None = None) -> None:
    for name, X in (("A", A), ("B", B)):
        if X is None:
            continue
        if isinstance(X, ScaledRows):  # float32 on the CPU, checked when made
            continue
        if not isinstance(X, Tensor):
            raise ValueError(f"{name} is a {type(X).__name__}; expected a torch.Tensor [F, D]")
        check_kernel_device(X.device, f"{name} is")
        if X.ndim != 2:
            raise ValueError(f"{name} has shape {tuple(X.shape)}; expected 2-D matching vectors [F, D]")
        if X.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"{name} has dtype {X.dtype}; expected float32, bfloat16 or float16 (costs are float32)")
    if B is not None:
        if A.shape[1] != B.shape[1]:
            raise ValueError(
                f"A {tuple(A.shape)} and B {tuple(B.shape)} have different vector widths D "
                f"({A.shape[1]} vs {B.shape[1]}); build both with the same matching_vectors(on=...)"
            )
        if A.device != B.device:
            raise ValueError(f"A is on {A.device} and B on {B.device}; move both to one device")


def _check_k(name: str, k: object, minimum: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {k!r}")
    return k


def _check_norms(name: str, n: Tensor) -> None:
    bad = ~torch.isfinite(n)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name} row {i} holds non-finite values or its squared norm overflows float32 "
            f"({int(bad.sum())} such rows); costs would be NaN/inf"
        )


# ---------------------------------------------------------------------------------- arithmetic
def row_sq_norms(X: Tensor | ScaledRows) -> Tensor:
    """Squared row norms ``[F]`` float32: ``Σ_d x_d²`` summed in float64, rounded once.

    The canonical norms of the cost formula (the module docstring). Why float64: a float32 sum
    depends on its order, which differs between MKL and CUDA (the H100 gave norms 1 ulp apart
    from the CPU's for most rows, so the GPU screen's "exact" costs were not the CPU's). Squares
    of float32 values are exact in float64 and the sum's error (< D·2^-53 relative) almost never
    reaches a float32 rounding boundary: the same value on every device and in every block.

    Within :func:`norms_kept` (what ``match_vectors`` runs in) a tensor's norms are computed
    once; each call returns its own copy.
    """
    _check_vectors(X)
    cache = _SQ_NORMS.get()
    cacheable = cache is not None and isinstance(X, Tensor) and not X.requires_grad
    if cacheable:
        hit = cache.get(id(X))
        if hit is not None and hit[0] is X:
            return hit[1].clone()  # callers may write theirs
    out = torch.empty(X.shape[0], dtype=torch.float32, device=X.device)
    # blocks of 2 MiB of float64 on a CPU (cache); 128 MiB on a GPU, where each block is a
    # few kernel launches (F = 1M, d = 2304: 9280 blocks of 2^18 took ~0.15 s)
    per = _NORM_BLOCK_ELEMENTS if X.device.type == "cpu" else _NORM_BLOCK_ELEMENTS << 6
    step = max(1, per // max(1, X.shape[1]))
    for r0 in range(0, X.shape[0], step):
        blk = X[r0 : r0 + step].double()
        out[r0 : r0 + step] = torch.sum(blk * blk, dim=1)
    if cacheable:
        cache[id(X)] = (X, out.clone())  # X held: its id is not reused while the cache lives
    return out


# Squared norms kept during one match (:func:`norms_kept`): a match asks for the same two
# tensors' norms up to 8 times (candidates, bounds, pricers, pair values), each a float64 pass
# over F x d (F = 16384, d = 2304: ~15 ms on a CPU). Only within a call: between calls a
# tensor may change without torch knowing (a numpy array it shares memory with).
_SQ_NORMS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mechperm_sq_norms", default=None)


@contextlib.contextmanager
def norms_kept():
    """Within the block, :func:`row_sq_norms` computes each tensor's norms once (the caller
    does not change the tensors meanwhile); nested blocks share the outer one's."""
    if _SQ_NORMS.get() is not None:
        yield
        return
    token = _SQ_NORMS.set({})
    try:
        yield
    finally:
        _SQ_NORMS.reset(token)


def _inv_norms(n: Tensor) -> Tensor:
    """1/||x|| (0 for zero rows, whose cosine is 0 with everything)."""
    return torch.where(n > 0, torch.rsqrt(n), torch.zeros_like(n))


def _gemm_rows(X: Tensor, scale: float = 1.0) -> Tensor:
    """float32 copy of a row block (times an exact power of two), padded to _MIN_GEMM_ROWS rows."""
    n = X.shape[0]
    if n >= _MIN_GEMM_ROWS:
        return X.float() if scale == 1.0 else torch.mul(X.float(), scale)
    out = torch.zeros(_MIN_GEMM_ROWS, X.shape[1], dtype=torch.float32, device=X.device)
    torch.mul(X, scale, out=out[:n])
    return out


def _add_norms(tile: Tensor, na: Tensor, nb: Tensor) -> Tensor:
    """In place: tile holds −2⟨a, b⟩; make it (tile + n_a) + n_b (clamp at 0 still to apply)."""
    return tile.add_(na[:, None]).add_(nb[None, :])


def _col_blocks(B: Tensor, block_cols: int):
    """(c0, c1, float32 block padded to _MIN_GEMM_ROWS rows) over B; views where B is float32."""
    for c0 in range(0, B.shape[0], block_cols):
        c1 = min(c0 + block_cols, B.shape[0])
        blk = B[c0:c1]
        if blk.dtype != torch.float32 or not blk.is_contiguous() or c1 - c0 < _MIN_GEMM_ROWS:
            blk = _gemm_rows(blk)
        yield c0, c1, blk


def dense_costs(A: Tensor, B: Tensor, *, block_rows: int = 1024, backend: str | None = None,
                norms: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """All squared distances ``[F_a, F_b]`` float32 (for small F; clamped at 0).

    Parameters
    ----------
    A : Tensor [F_a, D], B : Tensor [F_b, D]
        float32, bfloat16 or float16 matching vectors.
    block_rows : int
        Rows per GEMM (memory only; the values do not depend on it).
    backend : {"torch", "triton"} or None
        None: Triton for CUDA tensors, torch otherwise (``$MECHPERM_KERNELS`` overrides).
    norms : (Tensor [F_a], Tensor [F_b]), optional
        :func:`row_sq_norms` of A and B, where the caller has them: a caller taking row blocks
        of A against the same B (the pricers) would otherwise pass over all of B each call
        (F = 1M on an H100: ~0.18 s a call, most of a pricing pass). B's are not checked again
        (the caller checked them once); A's are.
    """
    _check_vectors(A, B)
    _check_k("block_rows", block_rows, 1)
    if norms is not None:
        norms = tuple(x.to(A.device, torch.float32) for x in norms)
        if norms[0].shape != (A.shape[0],) or norms[1].shape != (B.shape[0],):
            raise ValueError(f"norms must have shapes ({A.shape[0]},) and ({B.shape[0]},), got "
                             f"{tuple(norms[0].shape)} and {tuple(norms[1].shape)}")
        _check_norms("A", norms[0])  # B's: the caller's, once
    if _backend(A, B, backend=backend) == "triton":
        from mechperm.kernels import triton_candidates

        return triton_candidates.dense_costs(A, B, norms)
    if norms is not None:
        na, nb = norms
    else:
        na, nb = row_sq_norms(A), row_sq_norms(B)
        _check_norms("A", na)
        _check_norms("B", nb)
    out = torch.empty(A.shape[0], B.shape[0], dtype=torch.float32, device=A.device)
    return _dense_costs_into(out, A, _gemm_cols(B), na, nb, block_rows)


def _gemm_cols(B: Tensor) -> Tensor:
    """B as the right-hand side of dense_costs' GEMMs: float32, contiguous, >= _MIN_GEMM_ROWS rows."""
    return _gemm_rows(B) if B.dtype != torch.float32 or B.shape[0] < _MIN_GEMM_ROWS else B.contiguous()


def _dense_costs_into(out: Tensor, A: Tensor, Bf: Tensor | ScaledRows, na: Tensor, nb: Tensor, block_rows: int,
                      scratch: _Scratch | None = None) -> Tensor:
    """dense_costs' torch loop, written into ``out`` [F_a, F_b]; ``Bf`` from :func:`_gemm_cols`,
    or :class:`ScaledRows` read by blocks of columns as the candidate pass reads them (no copy
    of B: 0.6 GB at F = 65536, d = 2304). ``scratch``: the GEMM's output tile in a reused buffer
    (callers looping over row blocks: a fresh 64 MiB tile per block is fresh pages to fault in)."""
    Fa, Fb = out.shape
    for r0 in range(0, Fa if Fb else 0, block_rows):
        r1 = min(r0 + block_rows, Fa)
        A2 = _gemm_rows(A[r0:r1], -2.0)
        blocks = _col_blocks(Bf, _SCALED_COLS) if isinstance(Bf, ScaledRows) else ((0, Fb, Bf),)
        for c0, c1, blk in blocks:
            buf = None if scratch is None else scratch.get("gemm", (A2.shape[0], blk.shape[0]))
            tile = torch.mm(A2, blk.T, out=buf)[: r1 - r0, : c1 - c0]
            out[r0:r1, c0:c1] = _add_norms(tile, na[r0:r1], nb[c0:c1]).clamp_min_(0.0)
    return out


_SCALED_COLS = 2048  # columns of ScaledRows scaled per GEMM in _dense_costs_into (the candidate pass's tiles)


# ---------------------------------------------------------------------------------- running top-k
class _Scratch:
    """Reused tile-sized buffers: fresh multi-MB tensors per tile cost page faults on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.bufs = device, {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
        n = shape[0] * shape[1]
        buf = self.bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.bufs[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


class _RunningTopK:
    """The k smallest scores per owner (a row or a column), merged tile by tile.

    ``thr`` is the current k-th smallest; a tile entry is admitted only below it, so after the
    first tiles few entries reach the (small) merge. For an owner with no k entries yet, the
    tile itself gives a bound: the k-th smallest of its group minima (k distinct groups, so at
    least k entries lie at or below it).
    """

    def __init__(self, n: int, k: int, device: torch.device, criterion: Literal["cost", "cos"]) -> None:
        # "cost": scores are the (unclamped) costs; "cos": scores are −cos, costs carried along.
        self.k, self.nonneg, with_cost = k, criterion == "cost", criterion == "cos"
        self.vals = torch.full((n, k), float("inf"), device=device)
        self.idx = torch.full((n, k), -1, dtype=torch.int64, device=device)
        self.cost = torch.full((n, k), float("inf"), device=device) if with_cost else None
        self.thr = torch.full((n,), float("inf"), device=device)
        # On the CPU the selection runs in C++ (csrc/topk.cpp: per-owner heaps in these same
        # tensors, sorted by finish()): the torch merges below sort every admitted entry with
        # its owner's k (32768 x 32768, d = 128: 6 of the candidate pass's 9 s).
        self.native = device.type == "cpu" and os.environ.get("MECHPERM_NATIVE_TOPK", "1") != "0"

    def state(self) -> tuple:
        """The tensors as numpy views, for csrc/topk.cpp."""
        return self.vals.numpy(), self.idx.numpy(), None if self.cost is None else self.cost.numpy()

    def finish(self) -> "_RunningTopK":
        """Sort each owner's entries (native selection; the torch merges keep them sorted)."""
        if self.native:
            _auction.topk_finish(self.state(), threads=torch.get_num_threads())
        return self

    def admit(self, scores: Tensor, dim: int, own0: int) -> Tensor:
        """Admission threshold per owner of tile ``scores`` (owners along ``dim``: 1 rows, 0 columns)."""
        n_own = scores.shape[0] if dim == 1 else scores.shape[1]
        thr = self.thr[own0 : own0 + n_own]
        if bool(torch.isinf(thr).any()):
            bound = _tile_bound(scores, self.k, dim)
            if self.nonneg:  # costs: the tile is clamped at 0 only where entries are taken
                bound.clamp_min_(0.0)
            bound = torch.nextafter(bound, thr.new_tensor(float("inf")))
            thr = torch.minimum(thr, bound)
        return thr

    def push(self, owner: Tensor, other: Tensor, v: Tensor, extra: Tensor | None, thr: Tensor, own0: int) -> None:
        """Merge the entries below ``thr[owner]`` (``owner`` local to the tile, in any order).

        One int64 sort of (owner, order-preserving bits of the score) over the touched owners'
        current entries and the new ones; the first k of each owner's run are its new state.
        """
        keep = (v < thr[owner]).nonzero().squeeze(1)
        if keep.numel() == 0:
            return
        owner, other, v = owner[keep], other[keep], v[keep]
        k, dev, n_own = self.k, owner.device, thr.numel()
        counts = torch.bincount(owner, minlength=n_own)
        touched = counts.nonzero().squeeze(1)
        if touched.numel() < n_own:
            rank = torch.empty_like(counts)
            rank[touched] = torch.arange(touched.numel(), device=dev)
            owner, counts = rank[owner], counts[touched]
        if touched.numel() == n_own:  # the usual case: views instead of gathers
            g: slice | Tensor = slice(own0, own0 + n_own)
        else:
            g = own0 + touched
        old_idx = self.idx[g]
        held = old_idx >= 0
        n_held = int(held.sum())
        old_vals = self.vals[g]
        if n_held == old_idx.numel():  # every owner holds k entries already
            old_owner = torch.arange(counts.numel(), device=dev).repeat_interleave(k)
            old_vals, old_idx, total = old_vals.reshape(-1), old_idx.reshape(-1), counts + k
            old_cost = self.cost[g].reshape(-1) if self.cost is not None else None
        else:  # first merges: only the entries held so far
            old = held.view(-1).nonzero().squeeze(1)
            old_owner, old_vals, old_idx = old // k, old_vals.reshape(-1)[old], old_idx.reshape(-1)[old]
            old_cost = self.cost[g].reshape(-1)[old] if self.cost is not None else None
            total = counts + held.sum(1)
        vals = torch.cat([old_vals, v])
        keys = torch.cat([old_owner, owner]).bitwise_left_shift_(32).bitwise_or_(_order_bits(vals))
        perm = torch.sort(keys).indices
        j = torch.arange(k, device=dev)
        pos = (torch.cumsum(total, 0).sub_(total)[:, None] + j).clamp_max_(perm.numel() - 1)
        take, valid = perm[pos], j < total[:, None]
        nv = torch.where(valid, vals[take], float("inf"))
        self.idx[g] = torch.where(valid, torch.cat([old_idx, other])[take], -1)
        if self.cost is not None:
            self.cost[g] = torch.where(valid, torch.cat([old_cost, extra[keep]])[take], float("inf"))
        self.vals[g] = nv
        self.thr[g] = nv[:, -1]


def _order_bits(x: Tensor) -> Tensor:
    """float32 → int64 in [0, 2^32) with the same order (IEEE bits, negatives mirrored)."""
    b = x.view(torch.int32).to(torch.int64)
    return torch.where(b >= 0, b + (1 << 31), ~b)


def _select(tile: Tensor, cos: Tensor | None, r0: int, c0: int, rows_c, cols_c, rows_s, cols_s, scratch,
            cos_of=None) -> None:
    """Offer one tile to the four running top-k's: one mask (entries below any threshold), one
    nonzero, then each criterion takes its own entries from that short list.

    ``cos_of`` (instead of ``cos``): the float32 factors (na, nb, half_inv_a, inv_b) of the tile's
    rows and columns whose −cosines are ((c − na) − nb) · half_inv_a · inv_b; the native
    selection computes them as it scans (no −cosine tile: four passes over it, in memory)."""
    n, m = tile.shape
    if rows_c.native:
        _auction.topk_tile(tile.numpy(), None if cos is None else cos.numpy(), r0, c0, rows_c.state(),
                           cols_c.state(), None if rows_s is None else rows_s.state(),
                           None if cols_s is None else cols_s.state(), threads=torch.get_num_threads(),
                           cos_factors=None if cos_of is None else tuple(x.numpy() for x in cos_of))
        return
    if cos_of is not None:  # the same arithmetic as the native scan, as a tile
        na, nb, hiy, ix = cos_of
        cos = scratch.get("cos", tile.shape)
        torch.sub(tile, na[:, None], out=cos).sub_(nb[None, :]).mul_(hiy[:, None]).mul_(ix[None, :])
    tr, tc = rows_c.admit(tile, 1, r0), cols_c.admit(tile, 0, c0)
    mask, tmp = scratch.get("mask", (n, m), torch.bool), scratch.get("tmp", (n, m), torch.bool)
    torch.lt(tile, tr[:, None], out=mask)
    mask.logical_or_(torch.lt(tile, tc[None, :], out=tmp))
    if cos is not None:
        sr, sc = rows_s.admit(cos, 1, r0), cols_s.admit(cos, 0, c0)
        mask.logical_or_(torch.lt(cos, sr[:, None], out=tmp))
        mask.logical_or_(torch.lt(cos, sc[None, :], out=tmp))
    flat = mask.view(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return
    r = flat // m
    c = flat - r * m
    v = _take(tile, flat, r, c).clamp_min_(0.0)
    rows_c.push(r, c + c0, v, None, tr, r0)
    cols_c.push(c, r + r0, v, None, tc, c0)
    if cos is not None:
        s = _take(cos, flat, r, c)
        rows_s.push(r, c + c0, s, v, sr, r0)
        cols_s.push(c, r + r0, s, v, sc, c0)


def _take(t: Tensor, flat: Tensor, r: Tensor, c: Tensor) -> Tensor:
    return t.reshape(-1)[flat] if t.is_contiguous() else t[r, c]


def _tile_bound(scores: Tensor, k: int, dim: int) -> Tensor:
    """Per-owner value with at least k tile entries at or below it (+inf if the tile has < k)."""
    n, m = scores.shape
    length = m if dim == 1 else n
    if length < k:
        return scores.new_full((n if dim == 1 else m,), float("inf"))
    g = max(1, length // (2 * k))
    groups = length // g
    if dim == 1:
        mins = scores[:, : groups * g].reshape(n, groups, g).amin(2)
    else:  # kthvalue along the last dimension is twice as fast
        mins = scores[: groups * g].reshape(groups, g, m).amin(1).T.contiguous()
    return torch.kthvalue(mins, k, dim=1).values


# ---------------------------------------------------------------------------------- graph
@dataclass
class CandidateStats:
    """How the candidate graph was assembled (edge counts before the union, per source)."""

    edges: int
    """Edges in the graph (distinct pairs)."""
    row_cost: int
    """Pairs among the k cheapest of their row."""
    col_cost: int
    """Pairs among the k cheapest of their column."""
    row_cos: int
    """Pairs among the k_cos most cosine-similar of their row."""
    col_cos: int
    """Pairs among the k_cos most cosine-similar of their column."""
    cos_only: int
    """Edges that only the cosine criterion found (what makes heavy-tailed graphs matchable)."""


@dataclass
class CandidateGraph:
    """Sparse candidate pairs (CSR over rows) and the bounds that certify the pairs left out.

    A pair (i, j) not in the graph ranks below the k-th cheapest of row i and of column j,
    so ``c_ij >= max(row_kth[i], col_kth[j])``.
    """

    indptr: Tensor
    """int64 [F_a + 1]: edges of row i are ``indptr[i]:indptr[i + 1]``."""
    indices: Tensor
    """int64 [E]: column of each edge; sorted within a row, no duplicate pairs."""
    costs: Tensor
    """float32 [E]: squared distance of each edge (the module's arithmetic)."""
    sources: Tensor
    """uint8 [E]: bit mask of the criteria that chose the edge (ROW_COST | COL_COST | ROW_COS | COL_COS)."""
    row_kth: Tensor
    """float32 [F_a]: k-th cheapest cost of row i (its largest cost when k >= F_b; +inf if F_b = 0)."""
    col_kth: Tensor
    """float32 [F_b]: k-th cheapest cost of column j (same conventions)."""
    shape: tuple[int, int]
    """(F_a, F_b)."""
    k: int
    """Cheapest partners kept per row and per column (before clamping to F_b / F_a)."""
    k_cos: int
    """Most cosine-similar partners kept per row and per column (0: none)."""
    stats: CandidateStats
    """Edge counts per source."""
    row_kth_cos: Tensor | None = None
    """float32 [F_a]: the k_cos-th largest cosine of row i as the selection computed it (every pair
    left out of its list has a computed cosine at most this); None without cosine lists."""
    col_kth_cos: Tensor | None = None
    """float32 [F_b]: the same per column."""

    @property
    def num_edges(self) -> int:
        return int(self.indices.numel())

    def row_ids(self) -> Tensor:
        """int64 [E]: the row of each edge (COO rows)."""
        counts = self.indptr[1:] - self.indptr[:-1]
        return torch.repeat_interleave(torch.arange(self.shape[0], device=counts.device), counts)

    def to(self, device: torch.device | str) -> CandidateGraph:
        move = {f: None if getattr(self, f) is None else getattr(self, f).to(device)
                for f in ("indptr", "indices", "costs", "sources", "row_kth", "col_kth", "row_kth_cos", "col_kth_cos")}
        return CandidateGraph(**move, shape=self.shape, k=self.k, k_cos=self.k_cos, stats=self.stats)

    def to_scipy(self):
        """scipy.sparse.csr_matrix of the costs (explicit zeros kept)."""
        import scipy.sparse

        return scipy.sparse.csr_matrix(
            (self.costs.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()), shape=self.shape
        )


def _assemble(
    shape: tuple[int, int],
    parts: Sequence[tuple[Tensor, Tensor, Tensor]],
    row_kth: Tensor,
    col_kth: Tensor,
    k: int,
    k_cos: int,
    row_kth_cos: Tensor | None = None,
    col_kth_cos: Tensor | None = None,
) -> CandidateGraph:
    """Union of the four sources ``(rows [E_s], cols [E_s], costs [E_s])`` into a CSR graph.

    ``parts`` are in the order ROW_COST, COL_COST, ROW_COS, COL_COS (empty where unused); the
    k-th values are the graph's fields of the same names.
    """
    Fa, Fb = shape
    device = row_kth.device
    # One int64 key per edge, (row · F_b + col) · 4 + part: sorted, a pair's copies are adjacent
    # with the cost sources first (the first copy's cost wins), and no rows / cols / bits arrays
    # of every edge are needed beside it. On the CPU the edge's position fits in the key's low
    # bits too (F_a · F_b · 4 · E < 2^63), so one array is sorted in place, without an index
    # array (F = 65536, k = 64: 16.8M edges; this step's peak fell from ~0.65 GB to ~0.3 GB
    # beyond the selections, which is where match() peaked at that size).
    sizes = [p[0].numel() for p in parts]
    E = sum(sizes)
    pos_bits = max(1, (E - 1).bit_length())
    packed = _PACK_KEYS and device.type == "cpu" and (Fa * Fb * 4 - 1).bit_length() + pos_bits <= 63
    key = torch.empty(E, dtype=torch.int64, device=device)
    s0 = 0
    for part, (p, n) in enumerate(zip(parts, sizes)):
        blk = (p[0].reshape(-1).long() * Fb + p[1].reshape(-1)) * 4 + part  # int64 (Triton's ids may be int32)
        if packed:
            blk = blk.bitwise_left_shift_(pos_bits).bitwise_or_(torch.arange(s0, s0 + n))
        key[s0 : s0 + n] = blk
        s0 += n
    del blk
    if packed:
        key.numpy().sort()  # in place
        if all(p[2].dtype == torch.float32 for p in parts):  # one native pass over the sorted keys
            costs = torch.cat([p[2].reshape(-1) for p in parts]).numpy()
            indptr, cols, costs, sources = (torch.from_numpy(x) for x in _auction.union_sorted_keys(
                key.numpy(), pos_bits, Fa, Fb, costs))
            del key
            cos_only = int(((sources & (ROW_COST | COL_COST)) == 0).sum())
            stats = CandidateStats(cols.numel(), *sizes, cos_only=cos_only)
            return CandidateGraph(indptr, cols, costs, sources, row_kth, col_kth, shape, k, k_cos, stats,
                                  row_kth_cos, col_kth_cos)
        order, low = None, pos_bits
    else:
        key, order = torch.sort(key)
        low = 0
    # Chunks of _UNION_CHUNK edges: no int64 temporary of every edge beside the keys.
    step = _UNION_CHUNK if device.type == "cpu" else _UNION_CHUNK << 4

    def pair_at(lo: int, hi: int) -> Tensor:
        return key[lo:hi] >> (low + 2)

    bit = torch.empty(E, dtype=torch.uint8, device=device)  # the part of each copy, as a bit
    one = torch.ones((), dtype=torch.uint8, device=device)
    for c0 in range(0, E, step):
        bit[c0 : c0 + step] = torch.bitwise_left_shift(one, ((key[c0 : c0 + step] >> low) & 3).to(torch.uint8))
    first = torch.ones(E, dtype=torch.bool, device=device)  # the first copy of each pair
    for c0 in range(1, E, step):
        c1 = min(c0 + step, E)
        torch.ne(pair_at(c0, c1), pair_at(c0 - 1, c1 - 1), out=first[c0:c1])
    sources = bit.clone()
    for shift in range(1, len(parts)):  # a pair has at most one copy per part: OR the next ones in
        for c0 in range(0, E - shift, step):
            c1 = min(c0 + step, E - shift)
            same = pair_at(c0 + shift, c1 + shift) == pair_at(c0, c1)
            sources[c0:c1] |= torch.where(same, bit[c0 + shift : c1 + shift], 0)
    del bit
    sources = sources[first]
    pair = key[first]
    del key
    if packed:
        keep = pair & ((1 << pos_bits) - 1)
    else:
        keep = order[first]
        del order
    del first
    pair >>= low + 2
    costs = torch.cat([p[2].reshape(-1) for p in parts])[keep]
    del keep
    # pairs are sorted: row i's edges start at the first pair >= i · F_b
    indptr = torch.searchsorted(pair, torch.arange(Fa + 1, device=device) * Fb)
    cols = pair.remainder_(Fb)
    cos_only = int(((sources & (ROW_COST | COL_COST)) == 0).sum())
    stats = CandidateStats(cols.numel(), *sizes, cos_only=cos_only)
    return CandidateGraph(indptr, cols, costs, sources, row_kth, col_kth, shape, k, k_cos, stats,
                          row_kth_cos, col_kth_cos)


def _no_edges(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    none = torch.empty(0, dtype=torch.int64, device=device)
    return none, none, torch.empty(0, device=device)


def _owner_parts(own: _RunningTopK, by_row: bool, cost: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n, k = own.idx.shape
    ids = torch.arange(n, device=own.idx.device)[:, None].expand(n, k)
    return (ids, own.idx, cost) if by_row else (own.idx, ids, cost)


def candidates(
    A: Tensor,
    B: Tensor,
    *,
    k: int = 32,
    k_cos: int | None = None,
    block_rows: int = 1024,
    block_cols: int = 2048,
    backend: str | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> CandidateGraph:
    """Sparse candidate graph: per row and per column, the k cheapest and the k_cos most similar.

    Streams the squared-distance matrix tile by tile (one ``block_rows × block_cols`` tile in
    memory) with running top-k per row and per column. The cosine part is scale-free, so the
    union admits a perfect matching even where heavy-tailed norms pile every row's cheapest
    partners onto a few columns (DESIGN.md, "Measured pitfall"); the cost part gives the bounds.

    Parameters
    ----------
    A : Tensor [F_a, D], B : Tensor [F_b, D]
        float32 / bfloat16 / float16 matching vectors on one device.
    k : int >= 1
        Cheapest partners per row and per column; clamped to F_b for rows and F_a for columns.
    k_cos : int >= 0 or None
        Most cosine-similar partners per row and per column (None: k; 0: none); clamped alike.
    block_rows, block_cols : int
        Tile shape of the torch path (the values do not depend on it).
    backend : {"torch", "triton"} or None
        None: Triton for CUDA tensors, torch otherwise (``$MECHPERM_KERNELS`` overrides).

    on_rows : callable, optional
        Called with the number of rows of A done after each row block (a progress bar's
        ``update``; the torch backend's loop; the Triton kernels run as one launch).

    Returns
    -------
    CandidateGraph
    """
    _check_vectors(A, B)
    _check_k("k", k, 1)
    k_cos = k if k_cos is None else _check_k("k_cos", k_cos, 0)
    _check_k("block_rows", block_rows, 1)
    _check_k("block_cols", block_cols, 1)
    Fa, Fb = A.shape[0], B.shape[0]
    if _backend(A, B, backend=backend) == "triton" and Fa and Fb:
        from mechperm.kernels import triton_candidates

        return triton_candidates.candidates(A, B, k=k, k_cos=k_cos)
    na, nb = row_sq_norms(A), row_sq_norms(B)
    _check_norms("A", na)
    _check_norms("B", nb)
    kr, kc = min(k, Fb), min(k, Fa)
    kcr, kcc = min(k_cos, Fb), min(k_cos, Fa)
    dev = A.device
    rows_c = _RunningTopK(Fa, kr, dev, "cost")
    cols_c = _RunningTopK(Fb, kc, dev, "cost")
    rows_s = _RunningTopK(Fa, kcr, dev, "cos") if kcr else None
    cols_s = _RunningTopK(Fb, kcc, dev, "cos") if kcc else None
    half_ia, ib = 0.5 * _inv_norms(na), _inv_norms(nb)
    scratch = _Scratch(dev)
    for r0 in range(0, Fa if Fb else 0, block_rows):
        r1 = min(r0 + block_rows, Fa)
        A2 = _gemm_rows(A[r0:r1], -2.0)
        for c0, c1, Bblk in _col_blocks(B, block_cols):
            full = torch.mm(A2, Bblk.T, out=scratch.get("tile", (A2.shape[0], Bblk.shape[0])))
            tile = full[: r1 - r0, : c1 - c0]
            cos = None
            if rows_s is not None:  # −cos = (−2⟨a,b⟩ · ½/||a||) / ||b||, before the norms are added
                cos = torch.mul(tile, half_ia[r0:r1, None], out=scratch.get("cos", tile.shape))
                cos.mul_(ib[None, c0:c1])
            _add_norms(tile, na[r0:r1], nb[c0:c1])  # clamped at 0 where entries are taken
            _select(tile, cos, r0, c0, rows_c, cols_c, rows_s, cols_s, scratch)
        if on_rows is not None:
            on_rows(r1 - r0)
    return _selection_graph((Fa, Fb), rows_c, cols_c, rows_s, cols_s, k, k_cos)


def _selection_graph(shape: tuple[int, int], rows_c: _RunningTopK, cols_c: _RunningTopK,
                     rows_s: _RunningTopK | None, cols_s: _RunningTopK | None, k: int, k_cos: int) -> "CandidateGraph":
    """The graph of four finished selections (the union of their edges; the k-th costs as
    bounds): the end of :func:`candidates` and of the screened ``screen.solver_graph``."""
    dev = rows_c.vals.device
    for own in (rows_c, cols_c, rows_s, cols_s):
        if own is not None:
            own.finish()
    parts = [_owner_parts(rows_c, True, rows_c.vals), _owner_parts(cols_c, False, cols_c.vals)]
    for own, by_row in ((rows_s, True), (cols_s, False)):
        parts.append(_owner_parts(own, by_row, own.cost) if own is not None else _no_edges(dev))
    inf = float("inf")
    row_kth = rows_c.vals[:, -1].clone() if rows_c.k else torch.full((shape[0],), inf, device=dev)
    col_kth = cols_c.vals[:, -1].clone() if cols_c.k else torch.full((shape[1],), inf, device=dev)
    # the cosine lists' scores are -cos: their k-th largest cosine is minus the last score
    kth_cos = [None if own is None else -own.vals[:, -1] for own in (rows_s, cols_s)]
    return _assemble(shape, parts, row_kth, col_kth, k, k_cos, *kth_cos)


# ---------------------------------------------------------------------------------- pricing
class PricedPairs(NamedTuple):
    """Pairs of negative reduced cost, sorted by (row, col)."""

    rows: Tensor
    """int64 [P]"""
    cols: Tensor
    """int64 [P]"""
    costs: Tensor
    """float32 [P]: c_ij (not the reduced cost)."""


def _check_duals(u: Tensor, v: Tensor, Fa: int, Fb: int, device: torch.device) -> tuple[Tensor, Tensor]:
    out = []
    for name, x, n in (("u", u, Fa), ("v", v, Fb)):
        x = torch.as_tensor(x)
        if x.shape != (n,):
            side = "row of A" if name == "u" else "row of B"
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected ({n},), one dual per {side}")
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must hold finite floating-point duals")
        out.append(x.to(device=device, dtype=torch.float64))
    return out[0], out[1]


def _check_rows(rows: Tensor | Sequence[int] | None, Fa: int, device: torch.device) -> Tensor:
    if rows is None:
        return torch.arange(Fa, device=device)
    r = torch.as_tensor(rows, device=device)
    if r.ndim != 1 or (r.numel() and r.is_floating_point()):
        raise ValueError(f"rows must be a 1-D integer index tensor; got shape {tuple(r.shape)}, {r.dtype}")
    r = torch.unique(r.long())
    if r.numel() and (int(r[0]) < 0 or int(r[-1]) >= Fa):
        raise ValueError(f"rows must lie in [0, {Fa}); got {int(r[0])}..{int(r[-1])}")
    return r


def _keep_most_negative(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]], max_pairs: int) -> list:
    r, c, cost, red = (torch.cat(x) for x in zip(*parts))
    if red.numel() > max_pairs:
        keep = torch.topk(red, max_pairs, largest=False).indices
        r, c, cost, red = r[keep], c[keep], cost[keep], red[keep]
    return [(r, c, cost, red)]


def price(
    A: Tensor,
    B: Tensor,
    u: Tensor,
    v: Tensor,
    *,
    rows: Tensor | Sequence[int] | None = None,
    tol: float = 0.0,
    max_pairs: int | None = None,
    block_rows: int = 1024,
    block_cols: int = 2048,
    backend: str | None = None,
) -> PricedPairs:
    """Every pair with reduced cost ``(c_ij − u_i) − v_j < −tol`` (float64), the certificate's pass.

    Streams the cost tiles (only ``rows`` of A if given) and keeps what the duals price below
    zero; a float32 prefilter with a proven rounding margin avoids float64 work on the rest.

    Parameters
    ----------
    A : Tensor [F_a, D], B : Tensor [F_b, D]
    u : Tensor [F_a], v : Tensor [F_b]
        Duals (any float dtype; used as float64; must be finite).
    rows : int tensor or sequence, optional
        Rows of A to price (deduplicated); default all.
    tol : float >= 0
    max_pairs : int, optional
        Keep only the ``max_pairs`` most negative reduced costs.

    Returns
    -------
    PricedPairs(rows int64 [P], cols int64 [P], costs float32 [P]), sorted by (row, col).
    """
    _check_vectors(A, B)
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0; got {tol!r}")
    if max_pairs is not None:
        _check_k("max_pairs", max_pairs, 0)
    Fa, Fb = A.shape[0], B.shape[0]
    u, v = _check_duals(u, v, Fa, Fb, A.device)
    rows_t = _check_rows(rows, Fa, A.device)
    if _backend(A, B, backend=backend) == "triton":
        from mechperm.kernels import triton_candidates

        res = triton_candidates.price(A, B, u, v, rows_t, tol, max_pairs)
    else:
        res = _price_torch(A, B, u, v, rows_t, float(tol), max_pairs, block_rows, block_cols)
    r, c, cost = res
    order = torch.argsort(r * max(Fb, 1) + c)
    return PricedPairs(r[order], c[order], cost[order])


def _price_torch(A, B, u, v, rows_t, tol, max_pairs, block_rows, block_cols):
    dev = A.device
    nb = row_sq_norms(B)
    _check_norms("B", nb)
    empty = (torch.empty(0, dtype=torch.int64, device=dev),) * 2 + (torch.empty(0, device=dev),) * 2
    parts: list = [empty]
    if rows_t.numel() == 0 or B.shape[0] == 0:
        return empty[:3]
    v32 = v.float()
    # Conservative float32 prefilter: (c − v32_j) < w_i must hold whenever (c − u_i) − v_j < −tol.
    # The float32 rounding of v and of c − v32 is ≤ 2^-23 (|c| + |v_j|) and c ≤ 2 (n_i + max m);
    # a 2^-20 margin on those magnitudes covers it (and the float64 rounding) with room to spare.
    base = 2.0 * float(nb.max()) + float(v.abs().max()) + tol
    # duals beyond float32's range would defeat the prefilter: let every entry through instead
    huge = max(float(u.abs().max()) if u.numel() else 0.0, float(v.abs().max())) > 1e30
    for s0 in range(0, rows_t.numel(), block_rows):
        ids = rows_t[s0 : s0 + block_rows]
        Ablk = A[ids]
        na = row_sq_norms(Ablk)
        _check_norms("A", na)
        uu = u[ids]
        w = ((uu - tol) + 2.0**-20 * (2.0 * na.double() + uu.abs() + base)).float()
        if huge:
            w.fill_(float("inf"))
        A2 = _gemm_rows(Ablk, -2.0)
        for c0, c1, Bblk in _col_blocks(B, block_cols):
            tile = _add_norms(torch.mm(A2, Bblk.T)[: ids.numel(), : c1 - c0], na, nb[c0:c1]).clamp_min_(0.0)
            r, c = (torch.sub(tile, v32[None, c0:c1]) < w[:, None]).nonzero(as_tuple=True)
            if r.numel() == 0:
                continue
            cost = tile[r, c]
            red = (cost.double() - uu[r]) - v[c0 + c]
            hit = red < -tol
            parts.append((ids[r[hit]], c0 + c[hit], cost[hit], red[hit]))
        if max_pairs is not None and sum(p[0].numel() for p in parts) > 2 * max_pairs:
            parts = _keep_most_negative(parts, max_pairs)
    if max_pairs is not None:
        parts = _keep_most_negative(parts, max_pairs)
    r, c, cost, _ = (torch.cat(x) for x in zip(*parts))
    return r, c, cost


# ---------------------------------------------------------------------------------- solver glue
def solver_graph(g: CandidateGraph, A: Tensor, B: Tensor):
    """The graph as :class:`mechperm.assign.CandidateGraph` (numpy, CPU) with every bound it
    certifies: the k-th costs per row and column, and the norms and the cosine lists' k-th
    cosines of the Euclidean bound (:func:`_cosine_bounds`)."""
    from mechperm import assign

    return assign.CandidateGraph(
        indptr=g.indptr.cpu().numpy(), indices=_solver_columns(g), costs=g.costs.cpu().numpy(),
        row_bound=g.row_kth.cpu().double().numpy(), col_bound=g.col_kth.cpu().double().numpy(),
        **_cosine_bounds(g, A, B),
    )


def _solver_columns(g: CandidateGraph) -> np.ndarray:
    """The graph's columns for the solver, on the host: int32 where they fit (its passes and
    merges then read a third less, and a CUDA graph's copy to the host is smaller)."""
    return (g.indices.to(torch.int32) if g.shape[1] < 2**31 else g.indices).cpu().numpy()


def _cosine_bounds(g: CandidateGraph, A: Tensor, B: Tensor) -> dict:
    """Norms and, per row and per column, a bound on the cosine of every pair left out of its
    cosine list: the k_cos-th largest cosine the selection computed (``row_kth_cos``), plus the
    float32 error of those cosines twice (the Euclidean bound of :class:`assign.CandidateGraph`).

    Why that: the selection compared float32 cosines, each within ``eps`` of the true one
    (:func:`_cosine_error`), so a pair left out has cos <= its float32 cosine + eps <= the k-th
    float32 cosine + eps; a second eps covers the float32 rounding of the costs the bound is
    compared with (any D, worst case). Not from the edges' costs: (|a|² + |b|² − c) / (2|a||b|)
    loses all precision where |b| is tiny next to |a| (heavy-tailed folded decoders: an F =
    8192 pair matched 7.6e-6 above the optimum, certified, with bounds from costs). And not
    from the held partners' cosines computed again (session 9: ~2 k_cos F pair dots, 0.22 s of
    0.3 s here at F = 16384, d = 2304): the selection's own values need none, and where it
    scaled by other norms than the vectors' (the GPU screen: bf16 vectors, float32 norms) they
    are what its order guarantees."""
    na_np, nb_np = row_sq_norms(A).double().cpu().numpy(), row_sq_norms(B).double().cpu().numpy()
    out = {"row_norm": np.sqrt(na_np), "col_norm": np.sqrt(nb_np)}  # numpy's sqrt: correctly rounded
    out.update(_cosine_kappas(g, A.shape[1]))
    return out


def _cosine_kappas(g: CandidateGraph, D: int) -> dict:
    """The cosine bounds of :func:`_cosine_bounds` alone (``row_cos``, ``col_cos``): for a
    caller with norms of its own (the GPU screen's), which need no pass over the vectors."""
    out = {}
    eps = 2.0 * _cosine_error(D)
    for name, kth in (("row_cos", g.row_kth_cos), ("col_cos", g.col_kth_cos)):
        if kth is None or kth.numel() == 0:
            continue
        kappa = kth.double().cpu().numpy() + eps
        if np.isfinite(kappa).all():  # a list short of k_cos (never when k_cos <= F) bounds nothing
            out[name] = kappa
    return out


def _cosine_error(D: int) -> float:
    """A bound on |float32 cosine − cosine| of the kernels' selections: a float32 dot of D
    terms is within gamma_D |a||b| of the true one (any order; products of bf16 / fp16 values
    exact), and scaling by 1/|a| and 1/|b| (float32 norms) adds a few roundings. Doubled for
    tensor cores' truncating accumulation."""
    u = 2.0**-24
    return 2.0 * (D * u / (1.0 - D * u)) + 16.0 * u


def row_pricer(A: Tensor, B: Tensor, q: int, *, max_tile: int | None = None):
    """``price_rows`` callback of :func:`assign.assign_exact`: the ``q`` pairs of smallest reduced
    cost of every requested row, whatever their sign, and per row a lower bound on the reduced
    cost of every pair not returned (:class:`assign.PricedRows`).

    Why not :func:`kernels.price` (the pairs of negative reduced cost only): a priced row then
    keeps a bound of its own in the loop, and the non-negative pairs anticipate the next duals,
    so fewer rounds re-price the same rows (F = 16384, d = 2304: 17 rounds and 40k priced rows
    before, 10 and 24k with q = 64 at candidates_k = 32). The costs are :func:`dense_costs`
    rows, the same float32 values as the candidate graph and the dense path.

    The selection runs on float32 reduced costs ``c − fl32(v)`` (torch's top-k on float64 tiles
    set the pace on an H200: ~2.8 TFLOP/s at F = 262144): each differs from ``c − v`` by at most
    2^-23 (|c| + |v|), so the (q+1)-th less ``u_i`` and a 2^-20 margin on those magnitudes
    bounds every pair not returned. Rows where that bound is below 0 while none of their pairs
    violates (ties at ~0) are selected again in float64, exactly.
    """
    if _backend(A, B) == "triton" and os.environ.get("MECHPERM_FUSED_PRICING", "0") == "1":
        return _fused_row_pricer(A, B, q)
    if max_tile is None:  # tile ≤ 64 MiB on the CPU; 512 MiB on a GPU, where 16-row launches
        max_tile = 1 << (27 if A.device.type == "cuda" else 24)  # would idle it
    block = max(16, min(1024, max_tile // max(B.shape[0], 1)))
    m = B.shape[0]
    nb = row_sq_norms(B)  # once: not per block (see dense_costs)
    _check_norms("B", nb)
    nb_max = float(nb.max()) if m else 0.0
    # On the CPU's torch path the blocks' GEMM tile, costs and reduced costs live in buffers
    # reused across blocks and calls (3 × max_tile floats held while the pricer lives): fresh
    # ones were fresh pages each block (2048 rows against F_b = 65536: ~400k page faults and
    # 1.5-2.4 s of system time a call; ~3k faults once reused). A tensor B is converted once,
    # not per block; ScaledRows are scaled by blocks of columns as the GEMMs read them.
    reuse = _backend(A, B) == "torch"
    scratch = _Scratch(A.device) if reuse else None
    gemm_b = B if isinstance(B, ScaledRows) else None  # B for the GEMMs (tensors: made on the first call)

    def price_rows(rows: np.ndarray, u: np.ndarray, v: np.ndarray):
        from mechperm import assign

        nonlocal gemm_b
        rows_t = torch.from_numpy(np.ascontiguousarray(rows, np.int64)).to(A.device)
        u_t, v_t = torch.from_numpy(u).to(A.device), torch.from_numpy(v).to(A.device)
        v32, v_max = v_t.float(), float(v_t.abs().max()) if m else 0.0
        kq = min(q, m)
        out_r, out_c, out_w, out_b = [], [], [], []
        for s0 in range(0, rows_t.numel() if kq else 0, block):
            ids = rows_t[s0 : s0 + block]
            Ablk = A[ids]
            na = row_sq_norms(Ablk)
            if reuse:  # dense_costs' values (its checks of A's norms too)
                _check_norms("A", na)
                if gemm_b is None:
                    gemm_b = _gemm_cols(B)
                tile = _dense_costs_into(scratch.get("costs", (ids.numel(), m)), Ablk, gemm_b, na, nb, 1024, scratch)
                red = torch.sub(tile, v32[None, :], out=scratch.get("red", tile.shape))
            else:
                tile = dense_costs(Ablk, materialize(B), norms=(na, nb))  # [b, F_b] float32
                red = tile - v32[None, :]
            k1 = min(kq + 1, m)
            vals, cols = torch.topk(red, k1, dim=1, largest=False, sorted=True)
            uu = u_t[ids]
            if k1 > kq:
                margin = 2.0**-20 * (2.0 * (na.double() + nb_max) + uu.abs() + v_max)
                bound = (vals[:, kq].double() - uu) - margin
            else:
                bound = torch.full((ids.numel(),), float("inf"), dtype=torch.float64, device=A.device)
            cols = cols[:, :kq]
            w = torch.gather(tile, 1, cols)
            r = ids[:, None].expand_as(cols)
            open_rows = bound < 0
            if bool(open_rows.any()):  # the margin leaves these open: exact unless they violate
                viol = _violating_rows(ids, r.reshape(-1), cols.reshape(-1), w.reshape(-1), u_t, v_t)
                redo = open_rows & ~viol
                if bool(redo.any()):
                    t = tile[redo]
                    red64 = t.double().sub_(uu[redo][:, None]).sub_(v_t[None, :])
                    vals64, cols64 = torch.topk(red64, k1, dim=1, largest=False, sorted=True)
                    cols[redo] = cols64[:, :kq]
                    w[redo] = torch.gather(t, 1, cols64[:, :kq])
                    bound[redo] = vals64[:, kq] if k1 > kq else float("inf")
            out_r.append(r.reshape(-1))
            out_c.append(cols.reshape(-1))
            out_w.append(w.reshape(-1))
            out_b.append(bound)
        if not out_r:
            return assign.PricedRows(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32),
                                     np.full(len(rows), np.inf))
        return assign.PricedRows(*(torch.cat(x).cpu().numpy() for x in (out_r, out_c, out_w, out_b)))

    return price_rows


def pair_pricer(A: Tensor, B: Tensor):
    """``price_pairs`` callback of :func:`assign.assign_exact`: ``(rows, cols) -> costs``, the
    float32 costs of the pairs (A[rows[t]], B[cols[t]]) by the cost formula of :func:`dense_costs`
    (the dot rounded once, not by a GEMM's blocking: within that GEMM's float32 rounding of the
    graph's and the pricers' values). The norms on the first call (many matches never make
    one), once."""
    state: dict = {}

    def prepare() -> dict:
        norms = row_sq_norms(A), row_sq_norms(B)
        _check_norms("A", norms[0])
        _check_norms("B", norms[1])
        state["norms"] = norms
        if _backend(A, B) == "triton":
            from mechperm.kernels import triton_candidates as tc

            state["triton"] = tc, tc._prep(A, B, norms)
        return state

    def price_pairs(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, np.int64)
        cols = np.ascontiguousarray(cols, np.int64)
        if len(rows) == 0:
            return np.empty(0, np.float32)
        st = state or prepare()
        na, nb = st["norms"]
        r, c = (torch.from_numpy(x).to(A.device) for x in (rows, cols))
        if "triton" in st:
            tc, (Ac, Bc, _, _, bd) = st["triton"]
            return tc.pair_costs(Ac, Bc, na, nb, r, c, bd).cpu().numpy()
        if A.device.type == "cpu" and A.dtype == B.dtype == torch.float32:  # float64 sums in C++
            from mechperm.kernels import screen

            dot = torch.from_numpy(screen.pair_dots(A, B, rows, cols)).float()
        else:  # row gathers, ~0.5 GiB of float32 per operand and step
            step = max(1, (1 << 27) // max(1, A.shape[1]))
            dot = torch.cat([(A[r[s0 : s0 + step]].float() * B[c[s0 : s0 + step]].float()).sum(dim=1)
                             for s0 in range(0, len(rows), step)])
        # (−2⟨a, b⟩ + n_a) + n_b in float32, as _add_norms orders it
        cost = (dot * -2.0).add_(na[r]).add_(nb[c]).clamp_min_(0.0)
        return cost.cpu().numpy()

    return price_pairs


def _fused_row_pricer(A: Tensor, B: Tensor, q: int):
    """:func:`row_pricer` with the selection in the Triton kernel
    (:func:`triton_candidates.price_rows_topq`): no [rows, F] tile in memory, the bound of each
    priced row explicit (:class:`assign.PricedRows`).

    Opt-in (``MECHPERM_FUSED_PRICING=1``) until it is measured on a GPU: on an H200 the torch
    pricer above spent 26 s of a 73 s match at F = 262144 (60k priced rows: ~2.8 TFLOP/s, its
    float64 tiles and sorts, not the GEMM, set the pace). Checked against the torch pricer
    under TRITON_INTERPRET=1 and compiled for sm_90 ahead of time, not yet run on a GPU.
    """
    from mechperm import assign
    from mechperm.kernels import triton_candidates

    q = min(q, 64)  # a row's best live in registers: 128 slots would double them (64 as on the GPU runs)
    norms = (row_sq_norms(A), row_sq_norms(B))  # once, not per pass
    _check_norms("A", norms[0])
    _check_norms("B", norms[1])

    def price_rows(rows: np.ndarray, u: np.ndarray, v: np.ndarray):
        dev = A.device
        rows_t = torch.from_numpy(np.ascontiguousarray(rows, np.int64)).to(dev)
        u_t, v_t = torch.from_numpy(u).to(dev), torch.from_numpy(v).to(dev)
        out = _reprice_weak(lambda ids, qq: triton_candidates.price_rows_topq(A, B, u_t, v_t, ids, qq, norms=norms),
                            rows_t, u_t, q, B.shape[0], v=v_t)
        return assign.PricedRows(*(x.cpu().numpy() for x in out))

    return price_rows


# Weak rows up to this many go straight to ``exact`` where there is one (the GPU screen's
# float64 rows: 2^24 pairs a block, 16 rows at F = 1M). The H100's 1M match left 6 rows weak at
# q = 64; pricing them again at q = 128 took 1.58 s (most likely compiling the q = 128 kernel)
# and still left rows for the exact pass, which took 0.02 s (bench/results, session 21).
EXACT_WEAK_ROWS = 16


def _reprice_weak(price, rows: Tensor, u: Tensor, q: int, m: int, exact=None, v: Tensor | None = None):
    """Price ``rows`` with ``price(rows, q) -> (rows, cols, costs, bound)``; rows whose bound is
    below the exact loop's tolerance are priced again keeping 4× as many (up to 128), then, if
    ``exact(rows)`` is given and they are still below, by it; ``EXACT_WEAK_ROWS`` or fewer weak
    rows go to ``exact`` at once. Returns the merged answer.

    Why: a bound below 0 proves nothing (the loop would price the row again with the same q):
    it happens where the Q-th pair ties with the row's own arc at ~0, where the graph's cost of a
    pair differs from the tile's by float32 rounding, or where more than Q pairs lie within a
    screen's error. With ``v``, a row whose returned pairs already hold a violation (reduced
    cost below −1e-6 of its terms, far beyond rounding) is not priced again: the loop adds its
    pairs, solves again and prices it again anyway (the H100's F = 1M run priced whole rows
    exactly for such rows)."""
    from mechperm import assign

    r, c, w, bound = price(rows, q)
    qq = max(q, 2)
    while True:
        weak = bound < -assign._REL_TOL * u[rows].abs()
        if v is not None and bool(weak.any()):
            weak &= ~_violating_rows(rows, r, c, w, u, v)
        if not bool(weak.any()):
            break
        again = rows[weak]
        final = False
        if qq < min(128, m) and not (exact is not None and again.numel() <= EXACT_WEAK_ROWS):
            qq = min(128, 4 * qq)
            r2, c2, w2, b2 = price(again, qq)
        elif exact is not None:
            r2, c2, w2, b2 = exact(again)
            final = True  # exact bounds are final: below 0, the pairs returned violate
        else:
            break
        keep = ~torch.isin(r, again)
        r, c, w = torch.cat([r[keep], r2]), torch.cat([c[keep], c2]), torch.cat([w[keep], w2])
        bound[weak] = b2
        if final:
            break
    return r, c, w, bound


VIOLATION_REL = 1e-6  # a returned pair violates beyond any float32 rounding of its cost


def _violating_rows(rows, r, c, w, u, v):
    """Per entry of ``rows``: whether one of its returned pairs (r, c, w) has a reduced cost
    below −VIOLATION_REL (|w| + |u_r| + |v_c|). torch tensors or numpy arrays alike."""
    if isinstance(rows, np.ndarray):
        red = (w.astype(np.float64) - u[r]) - v[c]
        bad = red < -VIOLATION_REL * (np.abs(w) + np.abs(u[r]) + np.abs(v[c]))
        return np.isin(rows, r[bad])
    red = (w.double() - u[r]) - v[c]
    bad = red < -VIOLATION_REL * (w.double().abs() + u[r].abs() + v[c].abs())
    return torch.isin(rows, r[bad])
