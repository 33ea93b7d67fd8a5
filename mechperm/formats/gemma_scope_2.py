"""Gemma Scope 2 (Gemma 3) ``params.safetensors``: JumpReLU SAEs, ``b_dec`` not subtracted first.

Layout of the repos ``google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}``::

    {site}/layer_{L}_width_{16k,65k,262k,1m}_l0_{small,medium,big}[_affine][_seed_N]/
        config.json          {"architecture": "jump_relu", "model_name": ..., "hf_hook_point_in": ...,
                              "hf_hook_point_out": ... (transcoders), "affine_connection": ...}
        params.safetensors   w_enc [d, F], w_dec [F, d], b_enc [F], b_dec [d], threshold [F]
                             (+ affine_skip_connection [d_in, d_out] for skip transcoders)

with ``site`` one of ``resid_post``, ``mlp_out``, ``attn_out``, ``transcoder`` (and ``*_all``
variants covering every layer). Facts from sae-lens 6.54 (``gemma_3`` loader in
``loading/pretrained_sae_loaders.py`` and ``pretrained_saes.yaml``): ``d_in, d_sae =
shape(w_enc)`` and ``w_enc``, ``w_dec`` are used untransposed, so they are stored in SAELens'
layout; ``config.json`` may be missing (sae-lens then infers it from the path); ``architecture``
must be ``"jump_relu"``; ``apply_b_dec_to_input`` is False; hooks by site: ``resid_post`` →
``blocks.{L}.hook_resid_post``, ``attn_out`` → ``blocks.{L}.attn.hook_z``, ``mlp_out`` →
``blocks.{L}.hook_mlp_out``, ``transcoder`` → ``blocks.{L}.hook_mlp_in``; Neuronpedia ids
``{model}/{L}-gemmascope-2-res-{W}`` exist for ``resid_post`` at ``l0_medium`` (model
``gemma-3-4b`` for ``-pt``, ``gemma-3-4b-it`` for ``-it``).

Shapes are checked, never guessed: ``w_enc`` stored as ``[F, d]`` is reported as transposed
rather than transposed for you, since no published file stores it that way (a silent transpose
would also hide a corrupt file). Refused: skip transcoders (``affine_skip_connection``, or
``affine_connection: true``), whose output adds ``x @ W_skip`` that mechperm's SAE cannot express,
and cross-layer transcoders (``w_dec`` of 3 dimensions). Plain transcoders load as SAEs whose
``decode`` is the transcoder's prediction of the MLP output.

[?] Unconfirmed against real files (no download here): the dtype of the stored tensors (sae-lens
casts to float32), the exact ``model_name`` spelling in ``config.json`` (sae-lens rewrites
``-v3`` to ``-3`` and prefixes ``google/``; we keep it as written), and Neuronpedia ids for sites
other than ``resid_post``.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mechperm.formats._common import read_json_object, check_shapes, read_safetensors, require
from mechperm.formats.layout import width_key
from mechperm.sae import SAE, SAEInfo

__all__ = ["GemmaScope2Loader", "GEMMA_SCOPE_2", "gemma_scope_2_info", "gemma_scope_2_folders",
           "gemma_scope_2_stack", "FOLDER"]

FILENAME = "params.safetensors"
CONFIG = "config.json"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_RENAME = {"w_enc": "W_enc", "w_dec": "W_dec"}  # the files use lower case; accept SAELens' too
_SKIP = "affine_skip_connection"

FOLDER = re.compile(r"^layer_(\d+)_width_(\d+[km]?)_l0_([a-z0-9]+)((?:_[a-z0-9]+)*)$")
"""``layer_{L}_width_{W}_l0_{small,medium,big}[_suffix...]``: groups L, W, L0 label, suffixes."""
_REPO = re.compile(r"^(?:models--[^/]+--)?gemma-scope-2-(\d+[bm])-(pt|it)$")
_HF_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")
_HOOKS = {
    "resid_post": "blocks.{L}.hook_resid_post",
    "attn_out": "blocks.{L}.attn.hook_z",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "transcoder": "blocks.{L}.hook_mlp_in",
}


def _read_config(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}  # sae-lens infers it from the path too
    cfg = read_json_object(file)
    arch = cfg.get("architecture")
    if arch != "jump_relu":
        raise ValueError(f"{file} says architecture {arch!r}; Gemma Scope 2 SAEs are 'jump_relu'")
    if cfg.get("affine_connection"):
        raise ValueError(
            f"{file} says affine_connection=true: a skip transcoder, unsupported (its output adds "
            f"x @ {_SKIP}, which mechperm's SAE cannot express); use a folder without '_affine'"
        )
    return cfg


def _site(folder: Path) -> str | None:
    site = folder.parent.name.removesuffix("_all")
    return site if site in _HOOKS else None


def gemma_scope_2_info(folder: Path, file: Path, cfg: dict[str, Any]) -> SAEInfo:
    """Metadata of a Gemma Scope 2 SAE from its ``config.json`` and, where that is silent, its path."""
    m = FOLDER.match(folder.name)
    hf_in = cfg.get("hf_hook_point_in")
    hf_layer = _HF_LAYER.search(hf_in) if isinstance(hf_in, str) else None
    layer = int(hf_layer.group(1)) if hf_layer else (int(m.group(1)) if m else None)
    site = _site(folder)
    hook = hf_in if isinstance(hf_in, str) else None  # an HF module name, e.g. "model.layers.3.output"
    if site is not None and layer is not None:
        hook = _HOOKS[site].format(L=layer)  # TransformerLens names, as sae-lens gives them
    model = cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None
    npid = None
    repo = next((_REPO.match(p) for p in reversed(folder.parts) if _REPO.match(p)), None)
    if repo is not None:
        size, tuning = repo.group(1), repo.group(2)
        model = model or f"google/gemma-3-{size}-{tuning}"
        canonical = m is not None and m.group(3) == "medium" and not m.group(4)
        if folder.parent.name == "resid_post" and canonical and layer is not None:
            npid = f"gemma-3-{size}{'-it' if tuning == 'it' else ''}/{layer}-gemmascope-2-res-{m.group(2)}"
    return SAEInfo(
        model_name=model,
        hook_name=hook,
        layer=layer,
        source=str(file),
        format="gemma_scope_2",
        neuronpedia_id=npid,
    )


def _select(file: Path, names: list[str]) -> dict[str, str]:
    """``{SAELens name: name in the file}`` for the five tensors; refuses skip transcoders up front."""
    if _SKIP in names:
        raise ValueError(
            f"{file} holds {_SKIP}: a skip transcoder, unsupported (its output adds "
            f"x @ {_SKIP}, which mechperm's SAE cannot express)"
        )
    keys = {_RENAME.get(n, n): n for n in names}
    require(keys, TENSORS, file, "Gemma Scope 2 params.safetensors", " (lower-case w_enc, w_dec)")
    extra = sorted(set(keys) - set(TENSORS))
    if extra:
        warnings.warn(f"{file}: ignoring tensors {extra}, not part of Gemma Scope 2 SAEs", stacklevel=5)
    return {name: keys[name] for name in TENSORS}


def _check(file: Path, name: str, t: torch.Tensor) -> torch.Tensor:
    """Refuse a cross-layer transcoder (a 3-D ``w_dec``)."""
    if name == "W_dec" and t.ndim == 3:
        raise ValueError(
            f"w_dec in {file} has shape {tuple(t.shape)}: a cross-layer transcoder (one decoder "
            f"per later layer), unsupported"
        )
    return t


class GemmaScope2Loader:
    """Loader for Gemma Scope 2 ``params.safetensors`` folders (see the module docstring)."""

    name = "gemma_scope_2"
    expects = f"{FILENAME} (+ {CONFIG}) holding w_enc, w_dec, b_enc, b_dec, threshold (Gemma Scope 2)"

    def sniff(self, path: Path) -> bool:
        if path.is_dir():
            return (path / FILENAME).is_file()
        return path.name == FILENAME and path.is_file()

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        folder = Path(os.path.abspath(path if path.is_dir() else path.parent))
        file = folder / FILENAME
        cfg = _read_config(folder / CONFIG)
        tensors, keys = read_safetensors(file, device, dtype, _select, _check)
        try:
            check_shapes(tensors, file)
        except ValueError as e:  # name the tensors as the file does (w_enc, w_dec)
            msg = str(e)
            for ours, stored in keys.items():
                msg = msg.replace(f"{ours} in {file}", f"{stored} in {file}")
            raise ValueError(msg) from None
        return SAE(
            activation="jumprelu",
            apply_b_dec_to_input=False,
            info=gemma_scope_2_info(folder, file, cfg),
            **tensors,
        )


def gemma_scope_2_folders(site: str | Path, *, width: str, l0: str = "medium") -> dict[int, Path]:
    """The SAE folder of each layer in a Gemma Scope 2 site folder, for one width and L0 label.

    Parameters
    ----------
    site : str or Path
        A site folder such as ``.../gemma-scope-2-1b-pt/resid_post``.
    width : str
        ``"16k"``, ``"65k"``, ``"262k"``, ``"1m"``.
    l0 : str
        ``"small"``, ``"medium"`` or ``"big"``, optionally with a suffix (``"medium_seed_1"``).

    Returns
    -------
    dict
        ``{layer: folder}`` in ascending layer order; load each with :func:`mechperm.load_sae`.
    """
    site = Path(site)
    found: dict[int, Path] = {}
    labels: set[str] = set()
    for child in sorted(site.iterdir()) if site.is_dir() else []:
        m = FOLDER.match(child.name)
        if m is None or not child.is_dir():
            continue
        labels.add(f"width {m.group(2)}, l0 {m.group(3)}{m.group(4)}")
        if m.group(2) == width and m.group(3) + m.group(4) == l0:
            found[int(m.group(1))] = child
    if not found:
        raise ValueError(
            f"{site} has no layer_<L>_width_{width}_l0_{l0}/ folders; it holds {sorted(labels) or 'none'}"
        )
    return dict(sorted(found.items()))


def gemma_scope_2_stack(site: Path, width: str | int | None, l0: float | str | None) -> dict[int, Path]:
    """:func:`gemma_scope_2_folders` for :func:`mechperm.load_stack`: ``{}`` when ``site`` holds no
    Gemma Scope 2 folders; the only width when ``width`` is None (else an error listing them); the
    L0 label ``l0`` (default ``"medium"``)."""
    names = [FOLDER.match(c.name) for c in sorted(site.iterdir()) if c.is_dir()] if site.is_dir() else []
    widths = sorted({m.group(2) for m in names if m is not None})
    if not widths:
        return {}
    if width is None and len(widths) > 1:
        raise ValueError(f"{site} holds Gemma Scope 2 widths {widths}; pass width= one of them")
    if l0 is not None and not isinstance(l0, str):
        raise ValueError(
            f"{site} holds Gemma Scope 2 folders, whose L0 is a label: pass l0='small', 'medium' or 'big' "
            f"(got l0={l0!r})"
        )
    return gemma_scope_2_folders(site, width=widths[0] if width is None else width_key(width), l0=l0 or "medium")


GEMMA_SCOPE_2 = GemmaScope2Loader()
