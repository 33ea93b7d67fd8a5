"""Matching vectors held as a base matrix and a per-row scale, never copied whole.

Folded decoder rows are ``θ_i · W_dec[i]`` rounded to float32: a copy of the decoder, 0.6 GB per
SAE at F = 65536, d = 2304. The CPU's sparse paths read the vectors only by row blocks (bf16
copies and statistics where they screen, float32 GEMM blocks where they do not) and by pairs
(exact dots), so they can take the SAE's own ``W_dec`` and the scale instead and round each row
the same way as it reads it: the same float32 values bit for bit (one IEEE multiply per
element, as :func:`~mechperm.kernels.matching_vectors` makes them), so the same costs, optimum
and certificate, in ~1.2 GB less memory for a 65536 pair.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 22  # rows per materialised block = this // D


@dataclasses.dataclass(frozen=True)
class ScaledRows:
    """Rows ``fl32(scale[i] · base[i])`` (``base[i]`` where ``scale`` is None), built on demand.

    Attributes
    ----------
    base : Tensor [F, D]
        float32, C-contiguous, on the CPU (e.g. an SAE's ``W_dec``; not copied, not modified).
    scale : Tensor [F] or None
        float32 per-row factor (the fold's θ); None for the rows as they are.
    """

    base: Tensor
    scale: Tensor | None = None

    def __post_init__(self) -> None:
        b, s = self.base, self.scale
        if not isinstance(b, Tensor) or b.ndim != 2 or b.dtype != torch.float32:
            raise ValueError(f"ScaledRows.base must be a 2-D float32 tensor; got "
                             f"{getattr(b, 'dtype', type(b).__name__)} {tuple(getattr(b, 'shape', ()))}")
        if b.device.type != "cpu" or not b.is_contiguous():
            raise ValueError(f"ScaledRows.base must be C-contiguous on the CPU; got {b.device}, "
                             f"contiguous={b.is_contiguous()}")
        if s is not None and (not isinstance(s, Tensor) or s.shape != (b.shape[0],) or s.dtype != torch.float32
                              or s.device != b.device):
            raise ValueError(f"ScaledRows.scale must be a float32 tensor [{b.shape[0]}] on {b.device}; got "
                             f"{getattr(s, 'dtype', type(s).__name__)} {tuple(getattr(s, 'shape', ()))}")

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def is_cuda(self) -> bool:
        return False  # the base is on the CPU (checked when made)

    def __getitem__(self, index: slice | Tensor | np.ndarray) -> Tensor:
        """The rows ``index`` (a slice or an integer index array) as a float32 tensor."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        rows = self.base[index]
        return rows if self.scale is None else rows * self.scale[index][:, None]

    def tensor(self) -> Tensor:
        """All rows as one float32 tensor [F, D] (the copy this class exists to avoid)."""
        F, D = self.base.shape
        if self.scale is None:
            return self.base.clone()
        out = torch.empty(F, D, dtype=torch.float32)
        step = max(1, _BLOCK_ELEMENTS // max(1, D))
        for r0 in range(0, F, step):
            out[r0 : r0 + step] = self[r0 : r0 + step]
        return out

    def numpy_parts(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(base, scale) as numpy arrays sharing the tensors' memory (for the native kernels)."""
        return self.base.numpy(), None if self.scale is None else self.scale.numpy()


def materialize(X: Tensor | ScaledRows) -> Tensor:
    """``X`` as a tensor (ScaledRows built whole; tensors returned as they are)."""
    return X.tensor() if isinstance(X, ScaledRows) else X
