"""Qwen-Scope (the Qwen team's SAEs, 2026): one ``layer{L}.sae.pt`` per layer in a repo
``Qwen/SAE-Res-{model}-W{width}K-L0_{k}``.

Facts from the repos' model cards (``Qwen/SAE-Res-Qwen3.5-2B-Base-W32K-L0_50`` and its siblings
for Qwen3 / Qwen3.5 1.7B to 35B-A3B): each file is a ``torch.save``-d dict of four tensors,
``W_enc [F, d]``, ``W_dec [d, F]``, ``b_enc [F]``, ``b_dec [d]``; a TopK SAE on the residual
stream of layer L (k = 50 or 100, the ``L0_{k}`` of the repo name; the files carry no config).
The cards name the tensors, their shapes and the TopK but their demo code was not readable
here; the encode below is what every published user of these files we found runs:
``top_k(relu(x @ W_enc.T + b_enc))`` with no ``b_dec`` taken from the input, decoded as
``f @ W_dec.T + b_dec``, on the output of decoder layer L (a forward hook on
``model.model.layers[L]``: ``blocks.{L}.hook_resid_post`` in our naming, as for Gemma Scope).
So a file is our ``SAE(activation="topk", apply_b_dec_to_input=False)`` with both matrices
transposed (into a copy a block at a time, :func:`~mechperm.formats._common.transposed_copy`).
Matching reads only the weights; the encode matters to ``mechperm eval``.

k comes from the repo's name in the path (``…/SAE-Res-Qwen3.5-2B-Base-W32K-L0_50/layer3.sae.pt``,
or ``models--Qwen--SAE-Res-…`` in a Hugging Face cache), else from the ``Top-K`` row of the repo's
``README.md`` beside the file; a file with neither is refused with the reason (k cannot be
guessed). The width in the name (``W32K`` = 32 × 1024 features) is checked against the tensors.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor

from mechperm.formats._common import check_shape, place, read_state_dict, require, transposed_copy
from mechperm.formats.layout import QWEN_SCOPE_LAYER
from mechperm.sae import SAE, SAEInfo

__all__ = ["QwenScopeLoader", "QWEN_SCOPE", "repo_name_facts"]

TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
# The repo's name: SAE-Res-Qwen3.5-2B-Base-W32K-L0_50 (models--Qwen--… in a Hugging Face cache).
REPO = re.compile(r"^(?:models--Qwen--)?SAE-Res-(?P<model>.+)-W(?P<width>\d+)K-L0_(?P<k>\d+)$")
_README_TOP_K = re.compile(r"^\|\s*Top-K\s*\|\s*(\d+)\s*\|", re.MULTILINE)


def repo_name_facts(file: Path) -> tuple[str, int, int] | None:
    """``(model, width, k)`` from the nearest folder above ``file`` named like a Qwen-Scope repo
    (``SAE-Res-Qwen3.5-2B-Base-W32K-L0_50`` → ``("Qwen3.5-2B-Base", 32768, 50)``), or None."""
    for folder in list(file.parents)[:3]:  # the repo folder, or snapshots/<rev>/ in a cache
        m = REPO.match(folder.name)
        if m is not None:
            return m.group("model"), int(m.group("width")) * 1024, int(m.group("k"))
    return None


def _readme_k(folder: Path) -> int | None:
    readme = folder / "README.md"
    try:
        m = _README_TOP_K.search(readme.read_text(errors="replace"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _k_and_model(file: Path, F: int) -> tuple[int, str | None]:
    named = repo_name_facts(file)
    readme_k = _readme_k(file.parent)
    if named is None and readme_k is None:
        raise ValueError(
            f"{file} is a Qwen-Scope file, which does not record its k (TopK): mechperm reads it from "
            f"the repo's name above the file (SAE-Res-<model>-W<width>K-L0_<k>) or the Top-K row of its "
            f"README.md, and {file.parent} has neither. Keep the files in a folder named as their repo, "
            f"e.g. SAE-Res-Qwen3.5-2B-Base-W32K-L0_50/"
        )
    if named is None:
        return readme_k, None  # type: ignore[return-value]
    model, width, k = named
    if readme_k is not None and readme_k != k:
        raise ValueError(
            f"{file}: the repo name says k={k} (L0_{k}) but {file.parent / 'README.md'} says Top-K {readme_k}; "
            f"the files do not belong together"
        )
    if width != F:
        raise ValueError(
            f"{file} holds {F} features, but the repo name above it says W{width // 1024}K ({width}); "
            f"the file is in the wrong repo folder, so the k of that name (L0_{k}) cannot be trusted"
        )
    return k, f"Qwen/{model}"


class QwenScopeLoader:
    """Loader for Qwen-Scope ``layer{L}.sae.pt`` files (see the module docstring)."""

    name = "qwen_scope"
    expects = "a layer{L}.sae.pt file holding W_enc [F, d], W_dec [d, F], b_enc, b_dec (Qwen-Scope)"

    def sniff(self, path: Path) -> bool:
        return QWEN_SCOPE_LAYER.match(path.name) is not None and (path.is_file() or path.is_symlink())

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        file = Path(os.path.abspath(path))  # absolute, but keep the cache's snapshot names (the repo's name)
        if file.is_symlink() and not file.exists():
            raise FileNotFoundError(
                f"{file} is a broken symlink (to {file.readlink()}); the Hugging Face download is incomplete"
            )
        layer = int(QWEN_SCOPE_LAYER.match(file.name).group(1))  # type: ignore[union-attr]
        state, mapped = read_state_dict(file, "Qwen-Scope's layer{L}.sae.pt")
        require(state, TENSORS, file, "Qwen-Scope")
        extra = sorted(set(state) - set(TENSORS))
        if extra:
            warnings.warn(f"{file}: ignoring tensors {extra}, not part of a Qwen-Scope SAE", stacklevel=4)
        t: dict[str, Tensor] = {name: state.pop(name) for name in TENSORS}
        del state
        for name, x in t.items():
            if not x.is_floating_point():
                raise ValueError(f"{name} in {file} has dtype {x.dtype}; expected a floating dtype")
        for name in ("b_enc", "b_dec"):
            if t[name].ndim != 1:
                raise ValueError(f"{name} in {file} has shape {tuple(t[name].shape)}; expected 1-D")
        F, d = int(t["b_enc"].shape[0]), int(t["b_dec"].shape[0])
        origin = f"F={F} from b_enc, d={d} from b_dec; Qwen-Scope stores W_enc as [F, d] and W_dec as [d, F]"
        check_shape("W_enc", file, tuple(t["W_enc"].shape), (F, d), origin, "(F, d)")
        check_shape("W_dec", file, tuple(t["W_dec"].shape), (d, F), origin, "(d, F)")
        k, model = _k_and_model(file, F)
        if not 1 <= k <= F:
            raise ValueError(f"{file}: k={k} (from its repo) is not in [1, {F}], its feature count")
        # Both matrices are the transpose of SAELens layout: copied a block at a time.
        W_enc = transposed_copy(t.pop("W_enc"), device, dtype, release=mapped)
        W_dec = transposed_copy(t.pop("W_dec"), device, dtype, release=mapped)
        return SAE(
            W_enc=W_enc,
            b_enc=place(t.pop("b_enc"), device, dtype),
            W_dec=W_dec,
            b_dec=place(t.pop("b_dec"), device, dtype),
            activation="topk",
            k=k,
            apply_b_dec_to_input=False,
            info=SAEInfo(
                model_name=model,
                hook_name=f"blocks.{layer}.hook_resid_post",
                layer=layer,
                source=str(file),
                format="qwen_scope",
            ),
        )


QWEN_SCOPE = QwenScopeLoader()
