"""Shared test fixtures: fixed seeds, the optional shared data folder, a small SAE factory."""
from __future__ import annotations

import contextlib
import importlib
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechperm import SAE, SAEInfo


def shared_data_dir() -> Path | None:
    """`../shared/data` next to the repo (or $MECHPERM_SHARED_DATA); None when absent."""
    env = os.environ.get("MECHPERM_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(autouse=True)
def _fixed_seeds() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent (set MECHPERM_SHARED_DATA to point at it)")
    return path


def random_sae(
    d: int = 16,
    F: int = 32,
    *,
    activation: str = "jumprelu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    k: int | None = None,
    theta_scale: float = 1.0,
    source: str | None = None,
) -> SAE:
    """A small random SAE whose features fire on random inputs about half of the time."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(F, d, generator=g, dtype=torch.float64)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone() * (1 + torch.rand(F, generator=g, dtype=torch.float64))
    b_enc = 0.1 * torch.randn(F, generator=g, dtype=torch.float64)
    b_dec = 0.1 * torch.randn(d, generator=g, dtype=torch.float64)
    threshold = None
    if activation == "jumprelu":
        threshold = theta_scale * torch.rand(F, generator=g, dtype=torch.float64).add(0.05)
    if activation == "topk" and k is None:
        k = max(1, F // 4)
    return SAE(
        W_enc=W_enc.to(dtype),
        b_enc=b_enc.to(dtype),
        W_dec=W_dec.to(dtype),
        b_dec=b_dec.to(dtype),
        activation=activation,  # type: ignore[arg-type]
        threshold=None if threshold is None else threshold.to(dtype),
        k=k,
        info=SAEInfo(source=source),
    )


# ---------------------------------------------------------------------------------- triton
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _interpreted() -> bool:
    import triton.language.standard as std

    return type(std.max).__name__ == "InterpretedFunction"


@contextlib.contextmanager
def _environ(name: str, value: str):
    """os.environ[name] = value inside the block, restored (or removed) after."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@pytest.fixture(scope="module")
def tc():
    """mechperm.kernels.triton_candidates: compiled on CUDA, else under the interpreter.

    TRITON_INTERPRET is read when ``@triton.jit`` decorates, triton's own library (tl.max,
    tl.cumsum, ...) included: if another test imported triton without it, the pure-Python
    ``triton.language`` modules are reloaded (never the C extension, which cannot be).
    """
    if TRITON_DEVICE == "cuda":
        pytest.importorskip("triton")
        # The fused kernels, which CUDA tensors skip by default for cuBLAS blocks
        # (triton_candidates.gemm_enabled): tests of the GEMM path set it to 1 themselves.
        with _environ("MECHPERM_GEMM_CANDIDATES", "0"):
            yield importlib.import_module("mechperm.kernels.triton_candidates")
        return
    with _environ("TRITON_INTERPRET", "1"):
        pytest.importorskip("triton")
        if not _interpreted():
            for name in ("triton.language.standard", "triton.language.random", "triton.language"):
                importlib.reload(sys.modules[name])
            if not _interpreted():
                pytest.skip("triton was imported without TRITON_INTERPRET=1; run this module alone")
        sys.modules.pop("mechperm.kernels.triton_candidates", None)
        yield importlib.import_module("mechperm.kernels.triton_candidates")
