"""Llama Scope (OpenMOSS): ``hyperparams.json`` + ``checkpoints/final.safetensors`` per SAE folder.

Published as ``fnlp/Llama3_1-8B-Base-LX{R,A,M,TC}-{8,32}x`` repos holding one folder per layer,
``Llama3_1-8B-Base-L{L}{R,A,M,TC}-{8,32}x/``. Facts read from the format's own library,
OpenMOSS ``lm_saes`` (``SparseAutoEncoder.encode`` / ``compute_norm_factor`` of the release that
wrote these files, and ``abstract_sae.py`` of lm-saes 2.0.0b20 on PyPI):

- Tensors: ``encoder.weight [F, d]``, ``encoder.bias [F]``, ``decoder.weight [d, F]``,
  ``decoder.bias [d]`` (absent when ``use_decoder_bias`` is false).
- ``hyperparams.json``: ``d_model``, ``d_sae`` (or ``expansion_factor``), ``act_fn``
  (``jumprelu``, ``topk``, ``relu``), a scalar ``jump_relu_threshold``, ``top_k``,
  ``norm_activation``, ``dataset_average_activation_norm`` (``{"in": .., "out": ..}``, or keyed by
  hook point), ``sparsity_include_decoder_norm`` (default true),
  ``apply_decoder_bias_to_pre_encoder`` (default true; the Llama Scope files say false),
  ``hook_point_in`` / ``hook_point_out``.
- ``encode(x)``: ``x ← x · s_in`` with ``s_in = sqrt(d) / norm_in`` ("dataset-wise"; 1 for
  "inference"), ``x ← x − decoder.bias`` if ``apply_decoder_bias_to_pre_encoder``,
  ``h = x @ encoder.weight.T + encoder.bias``; the gate looks at ``h · ‖decoder column‖`` when
  ``sparsity_include_decoder_norm`` (``h · ‖d_i‖ > θ`` for JumpReLU, the top ``k`` of it for
  TopK, ``> 0`` for ReLU) and passes ``h`` itself: ``f = h · gate``.
- ``decode(f) = f @ decoder.weight.T + decoder.bias`` approximates the target times
  ``s_out = sqrt(d) / norm_out``, so the model-space reconstruction is that divided by ``s_out``.

So a Llama Scope SAE is exactly our SAE with ``W_enc = s_in · encoder.weight.T``, ``b_enc =
encoder.bias`` (less ``encoder.weight @ decoder.bias`` when the bias is applied to the input),
``W_dec = decoder.weight.T / s_out``, ``b_dec = decoder.bias / s_out``, and for JumpReLU the
per-feature threshold ``θ / ‖d_i‖`` (``θ >= 0``: ``h > θ / ‖d_i‖`` implies ``h > 0``, so the
relu of our JumpReLU changes nothing; a zero decoder column never fires: θ_i = +inf). TopK gates
on the norm-weighted ``h``, so its decoder norms are moved into the encoder (``W_enc[:, i] ·
‖d_i‖``, ``W_dec[i] / ‖d_i‖``): the same top ``k`` and the same reconstruction. The arithmetic
runs in float32 and is rounded once to the stored dtype (or ``dtype=``). Activations come out on
lm_saes's own "dataset-wise" scale; folding (``SAE.fold``) is unaffected by that scale.

Refused with a clear error: ``norm_activation`` "token-wise" / "batch-wise" (a per-input factor
no linear SAE expresses), ``use_glu_encoder``, other ``sae_type`` (crosscoders, CLTs, Lorsa), a
negative JumpReLU threshold (lm_saes would pass negative ``h``; our JumpReLU is a relu).

Not followed from sae-lens 6.54's ``llama_scope_sae_huggingface_loader``: it gates every feature
at the one scalar ``θ · s_in`` and leaves out the decoder norms lm_saes multiplies in.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechperm.formats._common import SafetensorsRows, check_shape, read_json_object, read_safetensors, require
from mechperm.sae import SAE, SAEInfo

__all__ = ["LlamaScopeLoader", "LLAMA_SCOPE", "FOLDER"]

CONFIG = "hyperparams.json"
WEIGHTS = Path("checkpoints") / "final.safetensors"
TENSORS = ("encoder.weight", "encoder.bias", "decoder.weight")
_OPTIONAL = ("decoder.bias",)
FOLDER = re.compile(r"^(?P<prefix>.+)-L(?P<layer>\d+)(?P<site>R|A|M|TC)-(?P<factor>\d+)x$")
"""``Llama3_1-8B-Base-L{L}{R,A,M,TC}-{8,32}x``: one published SAE folder (layer, site, width)."""
_MODELS = {"Llama3_1-8B-Base": "meta-llama/Llama-3.1-8B"}
_NEURONPEDIA = {"Llama3_1-8B-Base": "llama3.1-8b"}
_HOOK_LAYER = re.compile(r"^blocks\.(\d+)\.")


def _positive_number(cfg: dict[str, Any], key: str, file: Path) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{file} gives {key}={value!r}; expected a positive number")
    return float(value)


def _norm_factors(cfg: dict[str, Any], file: Path) -> tuple[float, float]:
    """``(s_in, s_out)``: what lm_saes multiplies the input and its target by before the SAE."""
    mode = cfg.get("norm_activation", "dataset-wise")
    if mode == "inference":
        return 1.0, 1.0
    if mode != "dataset-wise":
        raise ValueError(
            f"{file} says norm_activation={mode!r}: unsupported: the input is rescaled by its own "
            f"norm ({mode}), which no linear SAE expresses; mechperm reads 'dataset-wise' and "
            f"'inference' Llama Scope SAEs"
        )
    norms = cfg.get("dataset_average_activation_norm")
    d = _positive_number(cfg, "d_model", file)
    hook_in, hook_out = cfg.get("hook_point_in"), cfg.get("hook_point_out", cfg.get("hook_point_in"))
    factors = []
    for side, hook in (("in", hook_in), ("out", hook_out)):
        value = norms.get(side, norms.get(hook)) if isinstance(norms, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{file} says norm_activation='dataset-wise' but gives no positive "
                f"dataset_average_activation_norm[{side!r}] (got {norms!r}); the SAE's input scale "
                f"is unknown without it"
            )
        factors.append(math.sqrt(d) / float(value))
    return factors[0], factors[1]


def _check_cfg(cfg: dict[str, Any], file: Path) -> tuple[str, float | None, int | None]:
    """``(activation, θ, k)`` from hyperparams.json; ValueError for what mechperm cannot express."""
    sae_type = cfg.get("sae_type", "sae")
    if sae_type != "sae":
        raise ValueError(f"{file} says sae_type={sae_type!r}; mechperm reads lm_saes 'sae' SAEs only")
    if cfg.get("use_glu_encoder", False):
        raise ValueError(f"{file} says use_glu_encoder=true: unsupported: a gated (GLU) encoder")
    act = cfg.get("act_fn", "relu")
    act = act.lower() if isinstance(act, str) else act
    if act == "jumprelu":
        theta = cfg.get("jump_relu_threshold")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta):
            raise ValueError(
                f"{file} says act_fn='jumprelu' but gives jump_relu_threshold={theta!r}; expected a number"
            )
        if theta < 0:
            raise ValueError(
                f"{file} gives jump_relu_threshold={theta} < 0: unsupported: lm_saes then passes "
                f"negative pre-activations, which mechperm's JumpReLU (a relu) does not"
            )
        return "jumprelu", float(theta), None
    if act == "topk":
        k = cfg.get("top_k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{file} says act_fn='topk' but gives top_k={k!r}; expected a positive integer")
        return "topk", None, k
    if act == "relu":
        return "relu", None, None
    raise ValueError(f"{file} says act_fn={act!r}; mechperm reads Llama Scope 'jumprelu', 'topk' and 'relu' SAEs")


def _select(file: Path, names: list[str]) -> dict[str, str]:
    for name in names:
        if name not in TENSORS + _OPTIONAL:
            warnings.warn(f"{file}: ignoring tensor {name!r}, not part of a Llama Scope SAE", stacklevel=5)
    return {name: name for name in TENSORS + _OPTIONAL if name in names}


def _check_shapes(t: dict[str, tuple[int, ...]], cfg: dict[str, Any], file: Path, cfg_file: Path) -> tuple[int, int]:
    """``(d, F)`` from the stored shapes; a transposed or misshapen tensor is named as stored."""
    if len(t["encoder.bias"]) != 1:
        raise ValueError(f"encoder.bias in {file} has shape {t['encoder.bias']}; expected 1-D (F,)")
    F = int(t["encoder.bias"][0])
    d = cfg.get("d_model")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"{cfg_file} gives d_model={d!r}; expected a positive integer")
    said_F = cfg.get("d_sae")
    if said_F is None and isinstance(cfg.get("expansion_factor"), int):
        said_F = d * cfg["expansion_factor"]
    if said_F is not None and said_F != F:
        raise ValueError(
            f"{cfg_file} implies d_sae={said_F}, but encoder.bias in {file} has {F} features; the "
            f"config and the weights do not belong together"
        )
    for name, shape, letters in (("encoder.weight", (F, d), "(F, d)"), ("decoder.weight", (d, F), "(d, F)"),
                                 ("decoder.bias", (d,), "(d,)")):
        if name in t:
            check_shape(name, file, t[name], shape, f"F={F} from encoder.bias, d={d} from {cfg_file.name}", letters)
    return d, F


def llama_scope_info(folder: Path, file: Path, cfg: dict[str, Any]) -> SAEInfo:
    """Layer and model from the folder name (``...-L{L}R-8x``), else the hook point's ``blocks.{L}``."""
    hook = cfg.get("hook_point_in") if isinstance(cfg.get("hook_point_in"), str) else None
    m = FOLDER.match(folder.name)
    layer: int | None = int(m.group("layer")) if m else None
    if layer is None and hook is not None and _HOOK_LAYER.match(hook):
        layer = int(_HOOK_LAYER.match(hook).group(1))  # type: ignore[union-attr]
    model = cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None
    if model is None and m:
        model = _MODELS.get(m.group("prefix"))
    return SAEInfo(model_name=model, hook_name=hook, layer=layer, source=str(file), format="llama_scope",
                   neuronpedia_id=_neuronpedia_id(m, cfg))


def _neuronpedia_id(m: re.Match[str] | None, cfg: dict[str, Any]) -> str | None:
    """``llama3.1-8b/{L}-llamascope-{res,att,mlp}-{32k,131k}`` for the published Llama-3.1-8B
    folders (the ids sae-lens 6.54's ``pretrained_saes.yaml`` lists for them); None otherwise."""
    site = {"R": "res", "A": "att", "M": "mlp"}.get(m.group("site")) if m else None
    d = cfg.get("d_model")
    if m is None or site is None or m.group("prefix") not in _NEURONPEDIA or not isinstance(d, int):
        return None
    width = d * int(m.group("factor")) // 1000  # 32768 -> 32k, 131072 -> 131k
    return f"{_NEURONPEDIA[m.group('prefix')]}/{int(m.group('layer'))}-llamascope-{site}-{width}k"


def _folder_of(path: Path) -> Path:
    if path.is_dir():
        return path
    return path.parent.parent if path.name == WEIGHTS.name else path.parent


class LlamaScopeLoader:
    """Loader for Llama Scope ``hyperparams.json`` + ``checkpoints/final.safetensors`` folders."""

    name = "llama_scope"
    expects = f"{CONFIG} + {WEIGHTS.as_posix()} (Llama Scope / OpenMOSS lm_saes)"

    def sniff(self, path: Path) -> bool:
        if path.is_file() and path.name not in (CONFIG, WEIGHTS.name):
            return False
        folder = _folder_of(path)
        return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        folder = Path(os.path.abspath(_folder_of(path)))
        cfg_file, file = folder / CONFIG, folder / WEIGHTS
        cfg = read_json_object(cfg_file)
        activation, theta, k = _check_cfg(cfg, cfg_file)
        s_in, s_out = _norm_factors(cfg, cfg_file)
        source = SafetensorsRows(file)
        _select(file, source.names())  # warns about tensors a Llama Scope SAE does not have
        require(source.entries, TENSORS, file, "Llama Scope")
        d, F = _check_shapes({n: source.shape(n) for n in TENSORS + _OPTIONAL if n in source.entries},
                             cfg, file, cfg_file)
        out = dtype if dtype is not None else source.dtype("encoder.weight")
        work = torch.float32 if out != torch.float64 else torch.float64
        # The biases through the mapping (small); the matrices a block of rows at a time (below).
        t, _ = read_safetensors(file, device, work, lambda f, names: {n: n for n in _OPTIONAL + ("encoder.bias",)
                                                                        if n in names})
        b_enc = t["encoder.bias"]
        b_D = t["decoder.bias"] if "decoder.bias" in t else torch.zeros(d, dtype=work, device=device)

        step = max(1, (1 << 22) // max(d, F))  # rows a block: ~16 MiB of float32, whatever F is
        cols = max(d, F)
        stored_buf = torch.empty(step * cols, dtype=source.dtype("decoder.weight"))
        work_buf = torch.empty(step * cols, dtype=work, device=device)
        tmp_buf = torch.empty(step * cols, dtype=work, device=device)

        def blocks(name: str):
            """(r0, rows r0:r1 of a stored [R, C] matrix in ``work`` on the device, a scratch of
            the same shape): the same three buffers every block (freed and re-allocated, glibc
            kept ~100 MiB more resident at F = 16384)."""
            R, C = source.shape(name)
            dtype_ = source.dtype(name)
            buf = stored_buf if dtype_ == stored_buf.dtype else torch.empty_like(stored_buf, dtype=dtype_)
            for r0 in range(0, R, step):
                n = min(R, r0 + step) - r0
                raw = source.rows(name, r0, r0 + n, out=buf[: n * C].view(n, C))
                rows = work_buf[: n * C].view(n, C)
                rows.copy_(raw)
                yield r0, rows, tmp_buf[: n * C].view(n, C)

        # Pass 1: the decoder's column norms (features are its columns) for the gate.
        sq = torch.zeros(F, dtype=work, device=device)
        for _, rows, tmp in blocks("decoder.weight"):
            sq += torch.mul(rows, rows, out=tmp).sum(dim=0)
        gate_on_norms = bool(cfg.get("sparsity_include_decoder_norm", True))
        norms = sq.sqrt() if gate_on_norms else torch.ones_like(sq)
        dead = (sq == 0) & gate_on_norms  # h · 0 never passes the gate; without the norms it may
        threshold = None
        if activation == "topk" and not bool((norms == norms[0]).all()):
            # lm_saes takes the top k of h · ‖d_i‖: move the norms into the encoder.
            enc_scale = torch.where(dead, torch.zeros_like(norms), norms)
            dec_scale = 1.0 / torch.where(dead, torch.ones_like(norms), norms)
        else:  # a feature whose decoder column is zero never fires in lm_saes: zero its encoder
            enc_scale = (~dead).to(work)
            dec_scale = torch.ones_like(norms)
            if activation == "jumprelu":
                assert theta is not None
                threshold = torch.where(dead, torch.full_like(norms, math.inf), theta / norms)
        # Pass 2: W_enc [d, F] = s_in · encoder.weight.T, column i scaled by enc_scale[i].
        bias_to_input = cfg.get("apply_decoder_bias_to_pre_encoder", True) and cfg.get("use_decoder_bias", True)
        W_enc = torch.empty((d, F), dtype=out, device=device)
        enc_scale_in = enc_scale * s_in
        for r0, rows, tmp in blocks("encoder.weight"):  # rows: features r0:r1
            r1 = r0 + rows.shape[0]
            if bias_to_input:  # (s_in x − b_D) @ Eᵀ + b = s_in x @ Eᵀ + (b − E b_D)
                b_enc[r0:r1] -= rows @ b_D
            W_enc[:, r0:r1].copy_(torch.mul(rows, enc_scale_in[r0:r1, None], out=tmp).T)
        b_enc = b_enc * enc_scale
        # Pass 3: W_dec [F, d] = decoder.weight.T / s_out, row i scaled by dec_scale[i].
        W_dec = torch.empty((F, d), dtype=out, device=device)
        dec_scale_out = dec_scale / s_out
        for r0, rows, tmp in blocks("decoder.weight"):  # rows: dimensions r0:r1 of every feature
            W_dec[:, r0 : r0 + rows.shape[0]].copy_(torch.mul(rows, dec_scale_out, out=tmp).T)
        del stored_buf, work_buf, tmp_buf
        return SAE(
            W_enc=W_enc,
            b_enc=b_enc.to(out),
            W_dec=W_dec,
            b_dec=(b_D / s_out).to(out),
            activation=activation,  # type: ignore[arg-type]
            threshold=None if threshold is None else threshold.to(out),
            k=k,
            apply_b_dec_to_input=False,
            info=llama_scope_info(folder, file, cfg),
        )


LLAMA_SCOPE = LlamaScopeLoader()
