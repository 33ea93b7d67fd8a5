"""The two entry points: :func:`load_sae` (one SAE) and :func:`load_stack` (one SAE per layer)."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from mechperm.formats._common import DeviceLike, DTypeLike, as_device, as_dtype
from mechperm.formats.gemma_scope_2 import gemma_scope_2_stack
from mechperm.formats.hf_cache import resolve_hf_cache, resolve_repo_subpath
from mechperm.formats.lazy import LazyStack, StackEntry
from mechperm.formats.layout import (
    WIDTH,
    L0Choice,
    L0ChoiceWarning,
    _sort_widths,
    describe,
    descend,
    layer_folders,
    numbered,
    stack_layers,
)
from mechperm.formats.registry import _REGISTRY, detect_format
from mechperm.formats.saelens import saelens_layer_folders
from mechperm.sae import SAE

__all__ = ["load_sae", "load_stack"]

_LAYOUTS = (
    "layer_{L}/params.npz (flat stack), layer_{L}/width_{W}/average_l0_{N}/params.npz (Gemma Scope "
    "repo), layer_{L}/cfg.json + sae_weights.safetensors, layers.{L}/cfg.json + sae.safetensors "
    "(sparsify run), {prefix}-L{L}R-8x/hyperparams.json + checkpoints/final.safetensors (Llama Scope "
    "repo), {site}/layer_{L}_width_{W}_l0_{label}/params.safetensors (Gemma Scope 2), layer{L}.sae.pt "
    "files (Qwen-Scope repo), or a Hugging Face cache of such a repo"
)


def _start(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        inside = resolve_repo_subpath(p)
        if inside is not None:
            return inside
        if p.is_symlink():
            raise FileNotFoundError(
                f"{p} is a broken symlink (to {p.readlink()}); the Hugging Face download is incomplete"
            )
        raise FileNotFoundError(f"{p} does not exist")
    return resolve_hf_cache(p)


def _is_sae(path: Path) -> bool:
    return any(loader.sniff(path) for loader in _REGISTRY.values())


def _warn(choices: list[tuple[str, L0Choice]]) -> None:
    notes = [f"{where}{describe(c)}" for where, c in choices if c.reason is not None]
    if notes:
        warnings.warn("chose an L0 folder: " + "; ".join(notes), L0ChoiceWarning, stacklevel=3)


def load_sae(
    path: str | Path,
    *,
    format: str | None = None,
    width: str | int | None = None,
    l0: float | None = None,
    trainer: int | None = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
) -> SAE:
    """Load one SAE, recognising its format from the files.

    Parameters
    ----------
    path : str or Path
        An SAE folder or its tensor file (``params.npz``, ``sae_weights.safetensors``, a Qwen-Scope
        ``layer{L}.sae.pt``), a Gemma
        Scope ``width_W`` or ``layer_L`` folder (then ``l0`` / ``width`` choose), or the same
        inside a Hugging Face cache (``models--ORG--NAME`` or the hub cache root).
    format : str, optional
        Force a registered format (:func:`formats` lists them) instead of sniffing.
    width : str or int, optional
        ``"16k"`` / ``16384``: picks ``width_16k`` where ``path`` holds several widths.
    l0 : float, optional
        Picks ``average_l0_{l0}``; if absent, the nearest. None: the only one, else the canonical
        one (published choice, else L0 nearest 100). Any choice made for you is reported with an
        :class:`L0ChoiceWarning`.
    trainer : int, optional
        Picks ``trainer_{trainer}`` in a dictionary_learning sweep folder holding several.
    device : torch.device or str, optional
        Where the tensors go (default CPU).
    dtype : torch.dtype or str, optional
        Floating dtype of the tensors (default: as stored).

    Returns
    -------
    SAE
        Tensors ``W_enc [d, F]``, ``b_enc [F]``, ``W_dec [F, d]``, ``b_dec [d]`` (+ ``threshold [F]``),
        and ``info`` filled from the files and the path.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        No format (or several) recognises the files, the folder holds a whole stack, a tensor is
        missing, misshapen, non-finite or unreadable; the message names the file and tensor.
    """
    root = _start(path)
    layers = {} if _is_sae(root) else stack_layers(root) or saelens_layer_folders(root)
    if layers:
        raise ValueError(
            f"{root} holds SAEs for layers {sorted(layers)}; use load_stack({str(root)!r}) or pass "
            f"one layer, e.g. {layers[min(layers)]}"
        )
    target, choices = descend(root, _is_sae, width=width, l0=l0, trainer=trainer)
    _warn([("", c) for c in choices])
    loader = detect_format(target, format)
    return loader.load(target, as_device(device), as_dtype(dtype))


def _select_layers(root: Path, found: dict[int, Path], layers: Iterable[int] | None) -> list[int]:
    if layers is None:
        return sorted(found)
    wanted = list(layers)
    bad = [x for x in wanted if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        raise ValueError(f"layers= must be integers (a list or range); got {bad}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"layers={wanted} repeats a layer")
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{root} has no folders for layers {missing}; it holds layers {sorted(found)}")
    return sorted(wanted)


def load_stack(
    path: str | Path,
    *,
    layers: Iterable[int] | None = None,
    width: str | int | None = None,
    l0: float | str | None = None,
    hook: str | None = None,
    trainer: int | None = None,
    format: str | None = None,
    device: DeviceLike = None,
    dtype: DTypeLike = None,
    progress: bool = False,
    lazy: bool = False,
) -> list[SAE] | LazyStack:
    """Load one SAE per layer from a folder of per-layer folders, in ascending layer order.

    Parameters
    ----------
    path : str or Path
        A folder of ``layer_{L}/`` folders: a flat stack (``layer_{L}/params.npz`` or a SAELens
        folder), a Gemma Scope repo (``layer_{L}/width_{W}/average_l0_{N}/params.npz``); a
        sparsify run (``layers.{L}/``); a SAELens repo (``blocks.{L}.hook_resid_pre/``); a Llama
        Scope repo (``...-L{L}R-8x/``); a Gemma Scope 2
        site (``resid_post/layer_{L}_width_{W}_l0_{label}/``); a Qwen-Scope repo (``layer{L}.sae.pt``
        files); or any of them inside a Hugging Face cache. ``embedding/`` and other folders are skipped.
    layers : iterable of int, optional
        Layers to load (a list or ``range``); default all.
    width : str or int, optional
        ``"16k"`` / ``16384``; required when the layers hold several widths.
    l0 : float or str, optional
        Gemma Scope: per layer, ``average_l0_{l0}`` or the nearest; None: the canonical one (see
        :func:`load_sae`). One :class:`L0ChoiceWarning` lists every choice made for you.
        Gemma Scope 2: the label, ``"small"``, ``"medium"`` (None) or ``"big"``.
    hook : str, optional
        SAELens repos of ``blocks.{L}.hook_*`` folders: the hook point (``"resid_pre"``), where
        there are several.
    trainer : int, optional
        dictionary_learning sweeps (``resid_post_layer_{L}/trainer_{N}/``): N, where there are
        several.
    format, device, dtype
        As in :func:`load_sae`.
    progress : bool
        A tqdm bar over the layers (eager loading only).
    lazy : bool
        Return a :class:`~mechperm.formats.lazy.LazyStack` that reads each SAE when first indexed
        and holds two at a time, instead of reading them all now (for stacks larger than memory:
        26 Gemma Scope layers of width 1M are ~490 GB). Folders are resolved and L0 choices made
        now; file errors surface when a layer is read.

    Returns
    -------
    list of SAE, or LazyStack
        ``saes[i].info.layer`` ascending; all share ``d``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        No ``layer_{L}`` folders, unknown layers or widths, several widths and ``width=None``,
        ``d`` differing between layers, or any :func:`load_sae` error.
    """
    root = _start(path)
    found = layer_folders(root, hook)
    labelled = False  # Gemma Scope 2 sites: their L0 is a label
    if not found:
        found = gemma_scope_2_stack(root, width, l0)
        labelled = bool(found)
    if not found:
        found = saelens_layer_folders(root)
    if not found:
        what = "holds a single SAE (use load_sae)" if _is_sae(root) else "has no layer_<L>/ folders"
        raise ValueError(f"{root} {what}; load_stack reads {_LAYOUTS}")
    if isinstance(l0, str) and not labelled:
        raise ValueError(
            f"l0={l0!r} is a Gemma Scope 2 label; the folders under {root} take a number (average_l0_N)"
        )
    selected = _select_layers(root, found, layers)
    if width is None:
        widths = {w for L in selected for w in numbered(found[L], WIDTH, as_int=False)}
        if len(widths) > 1:
            raise ValueError(f"{root} holds several widths {_sort_widths(widths)}; pass width= one of them")
    device_, dtype_ = as_device(device), as_dtype(dtype)
    entries: list[StackEntry] = []
    choices: list[tuple[str, L0Choice]] = []
    for L in selected:
        target, picked = descend(found[L], _is_sae, width=width, l0=l0, trainer=trainer)
        choices += [(f"layer {L}: ", c) for c in picked]
        entries.append(StackEntry(L, target))
    _warn(choices)

    def load_entry(entry: StackEntry) -> SAE:
        sae = detect_format(entry.path, format).load(entry.path, device_, dtype_)
        if sae.info.layer is None:
            sae.info = replace(sae.info, layer=entry.layer)
        elif sae.info.layer != entry.layer:
            warnings.warn(
                f"{found[entry.layer]} holds an SAE whose files say layer {sae.info.layer}; "
                f"ordering the stack by the folder name (layer {entry.layer})",
                stacklevel=4,
            )
        return sae

    stack = LazyStack(entries, load_entry, keep=2 if lazy else len(entries))
    if lazy:
        return stack
    from tqdm.auto import tqdm

    saes: list[SAE] = []
    # a bar: a 1M-feature layer takes seconds to read, so say which one
    with tqdm(total=len(entries), desc="loading SAEs", unit="layer", leave=False, disable=not progress) as bar:
        for p, entry in enumerate(entries):
            bar.set_postfix(layer=entry.layer)
            saes.append(stack[p])  # d checked against the first, as the lazy stack does
            bar.update(1)
    return saes
