"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``, one folder per hookpoint.

Facts read from the real library (PyPI ``eai-sparsify`` 1.3.3; the PyPI name ``sparsify`` is an
unrelated, deprecated Neural Magic package), ``sparsify/sparse_coder.py`` and ``config.py``:

- ``SparseCoder.save_to_disk(path)`` writes ``safetensors.torch.save_model(self,
  "sae.safetensors")`` and ``cfg.json`` = ``SparseCoderConfig.to_dict()`` plus ``d_in``. The cfg
  keys are ``activation`` (``"topk"`` or ``"groupmax"``), ``expansion_factor``,
  ``normalize_decoder``, ``num_latents`` (0: ``d_in * expansion_factor``), ``k``, ``multi_topk``
  (a training loss only), ``skip_connection``, ``transcode``. Older files may carry ``signed``
  (sae-lens' converter reads it).
- The module's tensors: ``encoder.weight [F, d]`` and ``encoder.bias [F]`` (an ``nn.Linear``),
  ``W_dec [F, d]``, ``b_dec [d]``, and ``W_skip [d, d]`` when ``skip_connection``; all in one dtype
  (``load_from_disk`` takes the dtype of the first tensor; usually bfloat16).
- ``encode``: ``x - b_dec`` (skipped when ``transcode``), ``relu(x @ encoder.weight.T +
  encoder.bias)``, then the top ``k``; ``decode``: ``acts @ W_dec + b_dec``; ``forward`` adds
  ``x @ W_skip.T`` when there is a skip connection.
- A training run saves ``{run}/{hookpoint}/`` for each hookpoint and ``{run}/config.json`` (the
  ``RunConfig``, whose ``model`` names the model). Hookpoints are module names of the base model:
  ``layers.{L}`` (the residual stream after block L) and ``embed_tokens``.

So a sparsify SAE is our ``SAE(activation="topk", apply_b_dec_to_input=not transcode)`` with
``W_enc = encoder.weight.T``. Refused: ``activation="groupmax"``, ``signed`` TopK, and a non-zero
``W_skip`` (a skip connection adds ``x @ W_skip.T`` to every reconstruction, which mechperm's SAE
cannot express); an all-zero ``W_skip`` adds nothing and is dropped. Transcoders
(``transcode: true``) load as SAEs whose ``decode`` is the transcoder's prediction.

Metadata: the hookpoint is the folder name (sparsify names folders by hookpoint; the files
carry no other record of it). ``layers.{L}`` gives layer L and hook ``blocks.{L}.hook_resid_post``,
``embed_tokens`` gives ``hook_embed`` (the names sae-lens' sparsify converter uses); other
hookpoints are kept as written. The model comes from ``../config.json`` (``model``) when present.

Not followed from sae-lens 6.54's own ``sparsify_disk_loader``: it transposes ``W_dec`` and sets
``apply_b_dec_to_input = not normalize_decoder``; sparsify's source above subtracts ``b_dec``
whenever ``transcode`` is false, whatever ``normalize_decoder`` says.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mechperm.formats._common import (
    check_shape,
    claims_pair,
    read_json_object,
    read_safetensors,
    require,
    transposed_copy,
)
from mechperm.sae import SAE, SAEInfo

__all__ = ["SparsifyLoader", "SPARSIFY", "HOOKPOINT_LAYER"]

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
_READ = (*TENSORS, "W_skip")  # W_skip is read to check that it is zero
HOOKPOINT_LAYER = re.compile(r"^layers\.(\d+)$")
"""Folder name of a residual-stream hookpoint: ``layers.{L}``."""
_CFG_KEYS = frozenset(
    {"k", "expansion_factor", "num_latents", "normalize_decoder", "transcode", "skip_connection"}
)
_ANY_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)(?:\.|$)")


def _model_name(folder: Path) -> str | None:
    """``model`` of the run's ``config.json`` one folder up (sparsify's ``RunConfig``), if readable."""
    file = folder.parent / "config.json"
    if not file.is_file():
        return None
    try:
        model = json.loads(file.read_text()).get("model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # optional metadata: a foreign or broken config.json is not the SAE's problem
    return model if isinstance(model, str) else None


def sparsify_info(folder: Path, file: Path) -> SAEInfo:
    """What the hookpoint folder name and the run's ``config.json`` say about a sparsify SAE."""
    hookpoint = folder.name
    m = HOOKPOINT_LAYER.match(hookpoint)
    if m:
        layer: int | None = int(m.group(1))
        hook: str | None = f"blocks.{layer}.hook_resid_post"
    elif hookpoint == "embed_tokens":
        layer, hook = None, "hook_embed"
    else:
        any_layer = _ANY_LAYER.search(hookpoint)
        layer, hook = (int(any_layer.group(1)) if any_layer else None), hookpoint
    return SAEInfo(
        model_name=_model_name(folder), hook_name=hook, layer=layer, source=str(file), format="sparsify"
    )


def _check_cfg(cfg: dict[str, Any], file: Path) -> tuple[int, bool]:
    """``(k, transcode)`` from a sparsify cfg; ValueError for what mechperm cannot express."""
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise ValueError(
            f"{file} says activation {activation!r}; mechperm reads sparsify's 'topk' SAEs only "
            f"('groupmax' takes one latent per group, which mechperm's SAE cannot express)"
        )
    if cfg.get("signed"):
        raise ValueError(f"{file} says signed=true (signed TopK); mechperm reads unsigned TopK SAEs only")
    k = cfg.get("k")
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{file} gives no positive integer k (k={k!r}); a sparsify TopK cfg needs one")
    return k, bool(cfg.get("transcode", False))


def _select(file: Path, names: list[str]) -> dict[str, str]:
    """SparseCoder's tensors and ``W_skip``, under their own names; a warning for each other one."""
    for name in names:
        if name not in _READ:
            warnings.warn(f"{file}: ignoring tensor {name!r}, unknown to sparsify's SparseCoder", stacklevel=5)
    return {name: name for name in names if name in _READ}


def _check(file: Path, name: str, t: torch.Tensor) -> torch.Tensor | None:
    """Drop an all-zero ``W_skip`` and refuse any other; ``encoder.weight`` [F, d] → ``W_enc`` [d, F]."""
    if name == "W_skip":
        if bool((t != 0).any()):
            raise ValueError(
                f"{file} holds a non-zero W_skip {tuple(t.shape)}: unsupported: skip connection "
                f"(the SAE adds x @ W_skip.T to its reconstruction, which mechperm's SAE cannot "
                f"express)"
            )
        return None  # an all-zero skip connection adds nothing
    if name == "encoder.weight":
        if t.ndim != 2:
            raise ValueError(f"encoder.weight in {file} has shape {tuple(t.shape)}; expected 2-D (F, d)")
        return transposed_copy(t, t.device, None)  # [F, d] → W_enc [d, F], the source's pages released
    return t


def _check_shapes(tensors: dict[str, torch.Tensor], file: Path) -> tuple[int, int]:
    for name in ("encoder.bias", "b_dec"):
        if tensors[name].ndim != 1:
            raise ValueError(f"{name} in {file} has shape {tuple(tensors[name].shape)}; expected 1-D")
    F, d = int(tensors["encoder.bias"].shape[0]), int(tensors["b_dec"].shape[0])
    # encoder.weight was transposed on reading; report it as stored.
    stored = {
        "encoder.weight": tuple(tensors["encoder.weight"].shape)[::-1],
        "W_dec": tuple(tensors["W_dec"].shape),
    }
    for name, got in stored.items():
        check_shape(name, file, got, (F, d), f"F={F} from encoder.bias, d={d} from b_dec", "(F, d)")
    return d, F


class SparsifyLoader:
    """Loader for EleutherAI sparsify ``cfg.json`` + ``sae.safetensors`` folders (module docstring)."""

    name = "sparsify"
    expects = f"{CFG} + {WEIGHTS} (EleutherAI sparsify SparseCoder.save_to_disk), TopK"

    def sniff(self, path: Path) -> bool:
        # A cfg.json naming none of SparseCoderConfig's keys is someone else's.
        return claims_pair(path, CFG, WEIGHTS, lambda cfg: not _CFG_KEYS.isdisjoint(cfg))

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        folder = Path(os.path.abspath(path if path.is_dir() else path.parent))
        cfg_file, file = folder / CFG, folder / WEIGHTS
        cfg = read_json_object(cfg_file)
        k, transcode = _check_cfg(cfg, cfg_file)
        tensors, _ = read_safetensors(file, device, dtype, _select, _check)
        require(tensors, TENSORS, file, "sparsify SparseCoder")
        d, F = _check_shapes(tensors, file)
        said_d, factor = cfg.get("d_in"), cfg.get("expansion_factor")
        said_F = cfg.get("num_latents") or (  # num_latents 0 means d_in * expansion_factor
            said_d * factor if isinstance(said_d, int) and isinstance(factor, int) else None
        )
        for key, said, got in (("d_in", said_d, d), ("num_latents", said_F, F)):
            if said is not None and said != got:
                raise ValueError(
                    f"{cfg_file} implies {key}={said}, but the tensors in {file} have {got} "
                    f"(encoder.weight {tuple(tensors['encoder.weight'].shape)[::-1]}); the cfg and "
                    f"weights do not belong together"
                )
        if k > F:
            raise ValueError(f"{cfg_file} says k={k}, more than the F={F} latents in {file}")
        return SAE(
            W_enc=tensors["encoder.weight"],
            b_enc=tensors["encoder.bias"],
            W_dec=tensors["W_dec"],
            b_dec=tensors["b_dec"],
            activation="topk",
            k=k,
            apply_b_dec_to_input=not transcode,
            info=sparsify_info(folder, file),
        )


SPARSIFY = SparsifyLoader()
