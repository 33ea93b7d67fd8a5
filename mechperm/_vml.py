"""Settle oneMKL VML's choice of kernels before torch calls them from several threads at once.

torch runs contiguous float32 / float64 unary ops on the CPU (``exp``, ``sqrt``, ``sin``, ...)
in oneMKL's VML, each intra-op thread on its own chunk. oneMKL 2024.2, which torch 2.13's wheels
bundle, picks each VML function's kernel on that function's first call; when that call runs on
several threads at once, one thread can run a low-accuracy kernel over its whole chunk
(pytorch/pytorch#188792). On the 2-core Intel Xeon VM of session 28, 2 threads: the first
``torch.exp`` of 16384 float32 values in a fresh process returned 8173 of them up to 1.5e-4
off (relative) in 1 process of 60, and ``make_stack`` drew a different stack from the same seed
in 5 of 138 processes (its feature magnitudes are ``exp`` of normals). One call per
function and dtype on one element, on the importing thread, settles the choice first.
"""
from __future__ import annotations

import torch

OPS: tuple[str, ...] = (
    "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "tanh", "erf", "erfc", "erfinv", "lgamma",
)
"""The unary ops warmed: those ATen hands to VML (``aten/src/ATen/cpu/vml.h``), by torch name."""

warmed: list[tuple[str, torch.dtype]] = []
"""(op, dtype) pairs called by :func:`warm_up` (what the tests check)."""


def warm_up() -> None:
    """Call every op of :data:`OPS` once on a one-element CPU tensor of float32 and of float64
    (microseconds; run by ``import mechperm``)."""
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in OPS:
            op = getattr(torch, name, None)
            if op is not None:
                op(x)
                warmed.append((name, dtype))
