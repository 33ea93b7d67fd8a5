"""Gemma Scope (Gemma 2) ``params.npz``: JumpReLU SAEs, ``b_dec`` not subtracted from the input.

Layout of the published repos ``google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}``::

    layer_{L}/width_{16k,65k,131k,262k,524k,1m}/average_l0_{N}/params.npz
    embedding/width_4k/average_l0_{N}/params.npz          (res repos only)

``params.npz`` holds ``W_enc [d, F]``, ``W_dec [F, d]``, ``b_enc [F]``, ``b_dec [d]`` and
``threshold [F]`` (SAELens' loader also accepts lower-case ``w_enc`` / ``w_dec``; so do we).
Tensors are taken as stored: no transposes, no copies unless a dtype or device is asked for.

Metadata comes from the path (the files carry none): ``layer_L`` → layer, ``average_l0_N`` →
average L0, and a repo folder named ``gemma-scope-2b-pt-res`` (a clone, ``--local-dir`` download,
or the HF cache's ``models--google--gemma-scope-2b-pt-res``) → model, hook and Neuronpedia id.
The hook names follow SAELens' ``gemma_2`` loader: res ``blocks.{L}.hook_resid_post``
(``hook_embed`` for ``embedding/``), mlp ``blocks.{L}.hook_mlp_out``, att
``blocks.{L}.attn.hook_z``. The Neuronpedia id ``{model}/{L}-gemmascope-{site}-{width}`` is set
only for the canonical L0 (:mod:`._gemma_scope_canonical`), the one Neuronpedia shows under it.
"""
from __future__ import annotations

import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mechperm.formats._common import as_dtype, check_shapes, place, require
from mechperm.formats._gemma_scope_canonical import CANONICAL_L0
from mechperm.sae import SAE, SAEInfo

__all__ = ["GemmaScopeLoader", "GEMMA_SCOPE", "gemma_scope_info", "canonical_l0"]

FILENAME = "params.npz"
TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
_RENAME = {"w_enc": "W_enc", "w_dec": "W_dec"}

_REPO = re.compile(r"^(?:models--[^/]+--)?(gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders))$")
_LAYER = re.compile(r"^layer_(\d+)$")
_WIDTH = re.compile(r"^width_(\w+)$")
_L0 = re.compile(r"^average_l0_(\d+)$")
_NP_SITE = {"res": "res", "mlp": "mlp", "att": "att", "transcoders": "transcoder"}


def _repo_of(path: Path) -> tuple[str, str, str, str] | None:
    """``(repo, size, pt|it, site)`` of the nearest ancestor named like a Gemma Scope repo."""
    for part in reversed(path.parts):
        m = _REPO.match(part)
        if m:
            return m.group(1), m.group(2), m.group(3), m.group(4)
    return None


def _near(path: Path, pattern: re.Pattern[str], depth: int) -> re.Match[str] | None:
    """Match ``pattern`` against ``path`` and its first ``depth`` parents, nearest first."""
    for p in (path, *list(path.parents)[:depth]):
        m = pattern.match(p.name)
        if m:
            return m
    return None


def canonical_l0(width_folder: Path) -> int | None:
    """Published canonical L0 for a ``layer_L/width_W`` folder of a known repo, else None."""
    repo = _repo_of(width_folder)
    layer, width = _LAYER.match(width_folder.parent.name), _WIDTH.match(width_folder.name)
    if repo is None or layer is None or width is None:
        return None
    return CANONICAL_L0.get((repo[0], width.group(1)), {}).get(int(layer.group(1)))


def gemma_scope_info(file: Path) -> SAEInfo:
    """What the path of a Gemma Scope ``params.npz`` says about it (unknowns stay None)."""
    folder = file.parent
    layer_m, l0_m, width_m = _near(folder, _LAYER, 3), _near(folder, _L0, 0), _near(folder, _WIDTH, 1)
    layer = int(layer_m.group(1)) if layer_m else None
    l0 = int(l0_m.group(1)) if l0_m else None
    embedding = _near(folder, re.compile(r"^embedding$"), 3) is not None and layer is None
    model = hook = npid = None
    repo = _repo_of(folder)
    if repo is not None:
        name, size, tuning, site = repo
        model = f"gemma-2-{size}" + ("-it" if tuning == "it" else "")
        if embedding and site == "res":
            hook = "hook_embed"
        elif layer is not None:
            hook = {
                "res": f"blocks.{layer}.hook_resid_post",
                "mlp": f"blocks.{layer}.hook_mlp_out",
                "att": f"blocks.{layer}.attn.hook_z",
            }.get(site)
        if layer is not None and width_m is not None and l0 is not None:
            width = width_m.group(1)
            if CANONICAL_L0.get((name, width), {}).get(layer) == l0:
                npid = f"{model}/{layer}-gemmascope-{_NP_SITE[site]}-{width}"
    return SAEInfo(
        model_name=model,
        hook_name=hook,
        layer=layer,
        source=str(file),
        format="gemma_scope",
        neuronpedia_id=npid,
        average_l0=None if l0 is None else float(l0),
    )


def _open(file: Path) -> np.lib.npyio.NpzFile:
    try:
        z = np.load(file, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(
            f"{file} is not a readable .npz archive ({type(e).__name__}: {e}); the file is "
            f"truncated or corrupt — download it again"
        ) from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} holds a single array, not an .npz archive of named tensors {list(TENSORS)}")
    return z


def _read(z: np.lib.npyio.NpzFile, key: str, name: str, file: Path) -> np.ndarray:
    try:
        arr = z[key]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise ValueError(
            f"{name} in {file} cannot be read ({type(e).__name__}: {e}); the file is truncated "
            f"or corrupt — download it again"
        ) from e
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} in {file} has dtype {arr.dtype}; expected a floating dtype")
    if not arr.dtype.isnative:  # torch.from_numpy takes native byte order only
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


class GemmaScopeLoader:
    """Loader for Gemma Scope ``params.npz`` files (see the module docstring)."""

    name = "gemma_scope"
    expects = f"{FILENAME} (or any .npz) holding {', '.join(TENSORS)} in the Gemma Scope layout"

    def sniff(self, path: Path) -> bool:
        if path.is_dir():
            return (path / FILENAME).is_file()
        return path.suffix == ".npz" and path.is_file()

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        file = path / FILENAME if path.is_dir() else path
        file = Path(os.path.abspath(file))  # absolute, but keep HF-cache snapshot names
        dtype = as_dtype(dtype)
        tensors: dict[str, torch.Tensor] = {}
        with _open(file) as z:
            keys = {_RENAME.get(k, k): k for k in z.files}
            require(keys, TENSORS, file, "Gemma Scope params.npz")
            extra = sorted(set(keys) - set(TENSORS))
            if extra:
                warnings.warn(f"{file}: ignoring arrays {extra}, not part of Gemma Scope files", stacklevel=3)
            for name in TENSORS:
                # One tensor at a time: a cast frees the read buffer before the next read.
                tensors[name] = place(torch.from_numpy(_read(z, keys[name], name, file)), device, dtype)
        check_shapes(tensors, file)
        return SAE(activation="jumprelu", apply_b_dec_to_input=False, info=gemma_scope_info(file), **tensors)


GEMMA_SCOPE = GemmaScopeLoader()
