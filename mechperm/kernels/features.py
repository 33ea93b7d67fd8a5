"""Matching vectors: the rows ``[F, D]`` whose squared distances are the matching costs.

Folding (METHOD.md) is fused into the construction: the decoder rows are scaled row block by
row block (``W_dec * θ[:, None]``) without building a folded SAE, with the same rule as
:meth:`SAE.fold` — features in :meth:`SAE.invalid_features` (θ ≤ 0 or non-finite, all-zero
decoder row) keep scale 1 — and the same arithmetic (float32, or float64 for float64 SAEs, cast
once to ``dtype``), so ``matching_vectors(sae)`` equals ``sae.fold().W_dec`` exactly when
``dtype`` is the SAE's dtype.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mechperm.kernels.candidates import row_sq_norms
from mechperm.kernels.rows import ScaledRows
from mechperm.sae import SAE

On = Literal["decoder", "encoder", "both"]
_BLOCK_ELEMENTS = 1 << 22  # rows per block = this // d


def fold_scale(sae: SAE) -> Tensor:
    """Per-feature scale ``[F]`` that folding multiplies decoder rows by (and divides encoder
    columns and ``b_enc`` by): θ for JumpReLU, 1/||W_dec[i]|| for ReLU/TopK, 1 for invalid
    features and for already-folded SAEs. Float32 (float64 for float64 SAEs).

    Raises ValueError where :meth:`SAE.fold` would (a TopK SAE with unequal decoder norms).
    """
    work = torch.float64 if sae.dtype == torch.float64 else torch.float32
    if sae.folded:
        return torch.ones(sae.d_sae, dtype=work, device=sae.device)
    invalid = sae.invalid_features()
    one = torch.ones((), dtype=work, device=sae.device)
    if sae.activation == "jumprelu":
        assert sae.threshold is not None
        return torch.where(invalid, one, sae.threshold.to(work))
    norms = torch.linalg.vector_norm(sae.W_dec.to(work), dim=1)
    if sae.activation == "topk":
        live = norms[~invalid]
        if live.numel() and float(live.max() - live.min()) > 1e-5 * float(live.max()):
            sae.fold()  # raises the SAE's own explanation (unequal norms change the top-k)
    return torch.where(invalid, one, 1.0 / torch.where(invalid, one, norms))


def matching_vectors(
    sae: SAE,
    *,
    on: On = "decoder",
    fold: bool = True,
    normalize: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    return_norms: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The vectors features are matched on, one row per feature.

    Parameters
    ----------
    sae : SAE
    on : {"decoder", "encoder", "both"}
        ``"decoder"``: folded decoder rows ``θ_i · W_dec[i]`` (D = d). ``"encoder"``: folded
        encoder columns ``W_enc[:, i] / θ_i`` (D = d). ``"both"``: decoder row, encoder column
        and folded ``b_enc[i] / θ_i`` concatenated (D = 2d + 1), the paper's "all weights".
    fold : bool
        False: the SAE's weights as they are (the unfolded baseline).
    normalize : bool
        Unit-normalise every row (the cosine baseline); all-zero rows stay zero.
    dtype : torch.dtype
        Output dtype (float32 default; bfloat16 halves the candidate GEMM's memory traffic).
    device : optional
        Where to build the vectors (default: the SAE's device).
    return_norms : bool
        Also return the squared row norms ``[F]`` float32, computed exactly as the cost kernels
        do (:func:`~mechperm.kernels.candidates.row_sq_norms`).

    Returns
    -------
    Tensor [F, D] (and Tensor [F] with ``return_norms``).
    """
    if on not in ("decoder", "encoder", "both"):
        raise ValueError(f"matching_vectors(on={on!r}): choose 'decoder', 'encoder' or 'both'")
    if not isinstance(sae, SAE):
        raise ValueError(f"matching_vectors expects an SAE; got {type(sae).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype; got {dtype}")
    device = torch.device(device) if device is not None else sae.device
    work = torch.float64 if sae.dtype == torch.float64 else torch.float32
    d, F = sae.d_in, sae.d_sae
    scale = fold_scale(sae).to(device) if fold else None
    width = {"decoder": d, "encoder": d, "both": 2 * d + 1}[on]
    out = torch.empty(F, width, dtype=dtype, device=device)
    step = max(1, _BLOCK_ELEMENTS // max(1, width))
    for r0 in range(0, F, step):
        r1 = min(r0 + step, F)
        s = scale[r0:r1, None] if scale is not None else None
        parts = []
        if on in ("decoder", "both"):
            dec = sae.W_dec[r0:r1].to(device=device, dtype=work)
            parts.append(dec * s if s is not None else dec)
        if on in ("encoder", "both"):
            enc = sae.W_enc[:, r0:r1].T.to(device=device, dtype=work)
            parts.append(enc / s if s is not None else enc)
        if on == "both":
            b = sae.b_enc[r0:r1, None].to(device=device, dtype=work)
            parts.append(b / s if s is not None else b)
        block = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if normalize:
            n = torch.linalg.vector_norm(block, dim=1, keepdim=True)
            block = block / torch.where(n > 0, n, torch.ones_like(n))
        out[r0:r1] = block
    if return_norms:  # float64 vectors: norms of their float32 rounding (what the kernels use)
        return out, row_sq_norms(out if dtype != torch.float64 else out.float())
    return out


def decoder_rows(sae: SAE, *, fold: bool = True, device: torch.device | str | None = None) -> ScaledRows | None:
    """The decoder's matching vectors (``matching_vectors(sae, on="decoder", fold=fold)``, bit for
    bit) as :class:`ScaledRows` over the SAE's own ``W_dec``: no copy of the decoder. None where
    the SAE's decoder cannot serve as the base (not float32, not C-contiguous, or not on the CPU
    ``device``); build the vectors with :func:`matching_vectors` there."""
    device = torch.device(device) if device is not None else sae.device
    W = sae.W_dec
    if device.type != "cpu" or W.device.type != "cpu" or W.dtype != torch.float32 or not W.is_contiguous():
        return None
    scale = fold_scale(sae) if fold and not sae.folded else None
    return ScaledRows(W, scale)
