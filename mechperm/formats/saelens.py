"""SAELens folders: ``cfg.json`` + ``sae_weights.safetensors`` (what ``SAE.save_model`` writes).

Facts read from sae-lens 6.54 (``saes/sae.py``, ``loading/pretrained_sae_loaders.py``):

- ``save_model`` writes ``save_file(state_dict, "sae_weights.safetensors")`` and
  ``json.dump(cfg.to_dict(), "cfg.json")``; ``to_dict`` gives the dataclass fields (``d_in``,
  ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
  ``reshape_activations``; TopK adds ``k``, ``rescale_acts_by_decoder_norm``), ``architecture``,
  and ``metadata`` (``model_name``, ``hook_name``, ``neuronpedia_id``, ...).
- cfgs without a ``sae_lens_version`` ≥ 6 are flat (``handle_pre_6_0_config``): ``hook_point`` →
  ``hook_name``, ``activation_fn_str`` → ``activation_fn``; ``activation_fn == "topk"`` with
  ``activation_fn_kwargs.k`` means architecture ``topk``; ``apply_b_dec_to_input`` defaults to
  True; a boolean ``normalize_activations`` True means ``"expected_average_only_in"``.
- state dicts: ``W_enc [d, F]``, ``W_dec [F, d]``, ``b_enc [F]``, ``b_dec [d]``; JumpReLU adds
  ``threshold`` (older checkpoints ``log_threshold``, read as ``exp``); gated ``b_gate``,
  ``b_mag``, ``r_mag``; a ``scaling_factor [F]`` (pre-6 ``finetuning_scaling_factor``) multiplies
  feature activations before the decoder.
- TopK with ``rescale_acts_by_decoder_norm`` multiplies pre-activations by ``||W_dec[i]||`` and
  divides activations by it before decoding; folding the norms into ``W_enc``, ``b_enc`` and
  ``W_dec`` (SAELens' ``_fold_norm_topk``) gives the same activations and reconstructions.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mechperm.formats._common import read_json_object, check_shapes, holds_pair, read_safetensors, require
from mechperm.sae import SAE, SAEInfo

__all__ = ["saelens_layer_folders", "SAELensLoader", "SAELENS"]

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SUPPORTED = ("standard", "jumprelu", "topk")
_KNOWN = {"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "log_threshold", "scaling_factor"}


def _architecture(cfg: dict[str, Any], file: Path) -> str:
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if act == "topk" and arch == "standard":
        arch = "topk"  # pre-6.0 cfgs: architecture "standard" + activation_fn_str "topk"
    elif act not in (None, "relu", "topk"):
        raise ValueError(f"{file} says activation_fn {act!r}; supported: 'relu', 'topk'")
    if arch not in SUPPORTED:
        hint = {
            "gated": " (gated SAEs have a separate gate path, b_gate/b_mag/r_mag, that mechperm's "
            "SAE cannot express)",
            "batchtopk": " (a BatchTopK training checkpoint: save it with sae_lens' "
            "save_inference_model, which writes a jumprelu SAE)",
        }.get(arch, "")
        raise ValueError(
            f"{file} says architecture {arch!r}, which is unsupported{hint}; supported: {list(SUPPORTED)}"
        )
    return arch


def _normalization(cfg: dict[str, Any], file: Path) -> None:
    norm = cfg.get("normalize_activations")
    if norm in (None, False, "none"):
        return
    if norm is True:
        norm = "expected_average_only_in"
    raise ValueError(
        f"{file} says normalize_activations={norm!r}: the SAE expects rescaled or normalised inputs, "
        f"and the files do not hold what mechperm's SAE would need to reproduce that (a constant "
        f"norm factor is kept outside them; layer_norm/constant_norm_rescale depend on each input). "
        f"For 'expected_average_only_in', fold the factor in with sae_lens "
        f"(sae.fold_activation_norm_scaling_factor(factor)) and save the SAE again"
    )


def _info(cfg: dict[str, Any], file: Path) -> SAEInfo:
    meta = {**cfg, **(cfg.get("metadata") or {})}  # ≥ 6.0 keeps these under "metadata"
    hook = meta.get("hook_name") or meta.get("hook_point")
    layer = meta.get("hook_layer", meta.get("hook_point_layer"))
    if layer is None and isinstance(hook, str):
        m = re.search(r"(?:^|\.)blocks\.(\d+)\.", hook)
        layer = int(m.group(1)) if m else None
    return SAEInfo(
        model_name=meta.get("model_name"),
        hook_name=hook,
        layer=int(layer) if isinstance(layer, int) else None,
        source=str(file),
        format="saelens",
        neuronpedia_id=meta.get("neuronpedia_id"),
    )


def saelens_layer_folders(root: Path) -> dict[int, Path]:
    """``{L: folder}`` for a folder of SAELens folders named any way (``v5_32k_layer_11``,
    ``0-res-sm``, ...) whose cfg names its layer (``hook_layer``, or ``blocks.{L}.`` in its hook);
    ``{}`` when there are none. Two for one layer: ValueError naming both."""
    found: dict[int, Path] = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if not holds_pair(child, CFG, WEIGHTS):
            continue
        try:
            layer = _info(read_json_object(child / CFG), child / WEIGHTS).layer
        except ValueError:
            continue  # an unreadable cfg.json: not a stack member to order
        if layer is None:
            continue
        if layer in found:
            raise ValueError(
                f"{root} holds two SAELens SAEs for layer {layer}, {found[layer].name}/ and {child.name}/; "
                f"pass a folder holding one SAE per layer"
            )
        found[layer] = child
    return dict(sorted(found.items()))


def _select(file: Path, names: list[str]) -> dict[str, str]:
    """The tensors SAELens formats define, under their own names; a warning for each other one."""
    for name in names:
        if name not in _KNOWN:
            warnings.warn(
                f"{file}: ignoring tensor {name!r}, unknown to the SAELens formats mechperm reads",
                stacklevel=5,
            )
    return {name: name for name in names if name in _KNOWN}


class SAELensLoader:
    """Loader for SAELens ``cfg.json`` + ``sae_weights.safetensors`` folders."""

    name = "saelens"
    expects = f"{CFG} + {WEIGHTS} (sae_lens SAE.save_model), architecture {' / '.join(SUPPORTED)}"

    def sniff(self, path: Path) -> bool:
        return holds_pair(path, CFG, WEIGHTS)

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        folder = Path(os.path.abspath(path if path.is_dir() else path.parent))
        cfg_file, file = folder / CFG, folder / WEIGHTS
        cfg = read_json_object(cfg_file)
        arch = _architecture(cfg, cfg_file)
        _normalization(cfg, cfg_file)
        tensors, _ = read_safetensors(file, device, dtype, _select, open_on=str(device))
        if "threshold" not in tensors and "log_threshold" in tensors:
            tensors["threshold"] = tensors.pop("log_threshold").exp()
        tensors.pop("log_threshold", None)
        needed = ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if arch == "jumprelu" else ())
        require(tensors, needed, file, f"SAELens {arch}")
        if arch != "jumprelu":
            tensors.pop("threshold", None)
        d, F = check_shapes(tensors, file)
        for key, got in (("d_in", d), ("d_sae", F)):
            said = cfg.get(key)
            if said is not None and said != got:
                raise ValueError(
                    f"{cfg_file} says {key}={said}, but the tensors in {file} have {key}={got} "
                    f"(W_enc {tuple(tensors['W_enc'].shape)}); the cfg and weights do not belong together"
                )
        scale = tensors.pop("scaling_factor", None)
        if scale is not None and not bool((scale == 1).all()):
            # decode(f) = (f * s) @ W_dec + b_dec = f @ (s[:, None] * W_dec) + b_dec
            tensors["W_dec"].mul_(scale.reshape(-1, 1))
        k = None
        if arch == "topk":
            k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
            if isinstance(k, float) and k.is_integer():
                k = int(k)
            if not isinstance(k, int):
                raise ValueError(f"{cfg_file} says architecture 'topk' but gives no integer k (k={k!r})")
            if cfg.get("rescale_acts_by_decoder_norm"):
                norms = tensors["W_dec"].norm(dim=-1).clamp(min=1e-8)  # as sae_lens get_W_dec_norm
                # In place, so no second copy; writes to the private mapping never reach the file.
                tensors["W_dec"].div_(norms.unsqueeze(1))
                tensors["W_enc"].mul_(norms)
                tensors["b_enc"].mul_(norms)
        activation = {"standard": "relu", "jumprelu": "jumprelu", "topk": "topk"}[arch]
        return SAE(
            activation=activation,  # type: ignore[arg-type]
            k=k,
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            info=_info(cfg, file),
            **tensors,
        )


SAELENS = SAELensLoader()
