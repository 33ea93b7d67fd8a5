"""Folder trees that hold many SAEs: ``layer_{L}/``, ``width_{W}/``, ``average_l0_{N}/``.

These names select among SAEs (which layer, which width, which L0); the format of each SAE is
still recognised from its files by the registry.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from mechperm.formats.gemma_scope import canonical_l0

__all__ = [
    "L0ChoiceWarning", "L0Choice", "LAYER", "LLAMA_SCOPE_LAYER", "HOOK_LAYER", "WIDTH", "L0", "TRAINER",
    "numbered", "layer_folders", "QWEN_SCOPE_LAYER", "hook_folders", "stack_layers", "width_key", "pick_width", "pick_l0",
    "pick_trainer", "describe", "descend",
]

# layer_{L}: Gemma Scope and flat stacks; layers.{L}: EleutherAI sparsify hookpoint folders.
# {site}_layer_{L}: SAE Bench's dictionary_learning sweeps (resid_post_layer_{L}/trainer_{N}/).
LAYER = re.compile(r"^(?:layer_|layers\.|(?:resid_post|resid_pre|mlp_out|attn_out)_layer_)(\d+)$")
# A Llama Scope repo's layer folders: Llama3_1-8B-Base-L{L}{R,A,M,TC}-{8,32}x.
LLAMA_SCOPE_LAYER = re.compile(r"^.+-L(\d+)(?:R|A|M|TC)-\d+x$")
# A Qwen-Scope repo's layer files: layer{L}.sae.pt, side by side in one folder.
QWEN_SCOPE_LAYER = re.compile(r"^layer(\d+)\.sae\.pt$")
# SAELens repos name folders by hook point: blocks.{L}.hook_resid_pre (several kinds side by side).
HOOK_LAYER = re.compile(r"^blocks\.(\d+)\.(hook_[A-Za-z0-9_]+)$")
WIDTH = re.compile(r"^width_(\w+)$")
L0 = re.compile(r"^average_l0_(\d+)$")
TRAINER = re.compile(r"^trainer_(\d+)$")


class L0ChoiceWarning(UserWarning):
    """An L0 folder was chosen for the caller (no ``l0=`` given, or no exact match)."""


class L0Choice(NamedTuple):
    """The ``average_l0_N`` folder picked in one width folder."""

    path: Path
    """The chosen ``average_l0_N`` folder."""
    l0: int
    """Its N."""
    reason: str | None
    """Why it was chosen; None for an exact match or a single candidate (nothing to report)."""
    available: tuple[int, ...]
    """Every N in the width folder, ascending."""


def numbered(folder: Path, pattern: re.Pattern[str], *, as_int: bool = True, files: bool = False) -> dict:
    """Child folders (``files``: files, a link to a missing file included, for its loader to
    report) whose names match ``pattern``, keyed by the first group (an int by default).

    Raises
    ------
    ValueError
        Two folders map to the same key (``layer_3`` and ``layer_03``).
    """
    found: dict = {}
    if not folder.is_dir():
        return found
    for child in sorted(folder.iterdir()):
        m = pattern.match(child.name)
        if m is None or (not (child.is_file() or child.is_symlink()) if files else not child.is_dir()):
            continue
        key = int(m.group(1)) if as_int else m.group(1)
        if key in found:
            slash = "" if files else "/"
            raise ValueError(f"{folder} holds both {found[key].name}{slash} and {child.name}{slash}; remove one")
        found[key] = child
    return found


def layer_folders(folder: Path, hook: str | None = None) -> dict[int, Path]:
    """The per-layer folders of a stack: ``layer_{L}`` / ``layers.{L}``, else Llama Scope's
    ``...-L{L}R-8x``, else Qwen-Scope's ``layer{L}.sae.pt`` files, else SAELens repos'
    ``blocks.{L}.hook_*`` of one hook point (``hook``, or the only one). See :func:`numbered`
    for the errors."""
    return (numbered(folder, LAYER) or numbered(folder, LLAMA_SCOPE_LAYER)
            or numbered(folder, QWEN_SCOPE_LAYER, files=True) or hook_folders(folder, hook))


def hook_folders(folder: Path, hook: str | None) -> dict[int, Path]:
    """``{L: blocks.{L}.{hook}/}`` (``"resid_pre"`` or ``"hook_resid_pre"``); ``{}`` when there are
    no such folders; ValueError naming the hook points when ``hook`` is missing or absent."""
    by_hook: dict[str, dict[int, Path]] = {}
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = HOOK_LAYER.match(child.name)
        if m is not None and child.is_dir():
            by_hook.setdefault(m.group(2), {})[int(m.group(1))] = child
    if not by_hook:
        return {}
    if hook is None:
        if len(by_hook) > 1:
            raise ValueError(f"{folder} holds SAEs at several hook points {sorted(by_hook)}; pass hook= one of them")
        return next(iter(by_hook.values()))
    key = hook if hook.startswith("hook_") else f"hook_{hook}"
    if key not in by_hook:
        raise ValueError(f"{folder} has no blocks.<L>.{key}/ folders; it holds hook points {sorted(by_hook)}")
    return by_hook[key]


def stack_layers(folder: Path) -> dict[int, Path]:
    """:func:`layer_folders` without a choice to make: for telling a stack from one SAE (with
    several hook points, those of the first)."""
    try:
        return layer_folders(folder)
    except ValueError:
        hooks = sorted(m.group(2) for c in folder.iterdir() if (m := HOOK_LAYER.match(c.name)) and c.is_dir())
        if not hooks:
            raise  # not the several-hook-points case: the error is the user's to see
        return hook_folders(folder, hooks[0])


def width_key(width: str | int) -> str:
    """``"16k"``, ``"width_16k"``, ``16384`` → ``"16k"``; ``2**20`` → ``"1m"`` (Gemma Scope names)."""
    if isinstance(width, bool) or not isinstance(width, (str, int)):
        raise ValueError(f"width={width!r}: pass a folder name like '16k' or a feature count like 16384")
    if isinstance(width, int):
        return f"{width // 1_000_000}m" if width >= 1_000_000 else f"{width // 1000}k"
    width = width.strip().lower().removeprefix("width_")
    return width_key(int(width)) if width.isdigit() else width


def _sort_widths(names: set[str] | list[str]) -> list[str]:
    def size(name: str) -> tuple[float, str]:
        m = re.fullmatch(r"(\d+)([km]?)", name)
        return (int(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2)] if m else float("inf"), name)

    return sorted(names, key=size)


def pick_width(folder: Path, width: str | int | None) -> Path:
    """The ``width_W`` child of ``folder``: the one asked for, or the only one."""
    widths = numbered(folder, WIDTH, as_int=False)
    if width is None:
        if len(widths) == 1:
            return next(iter(widths.values()))
        raise ValueError(f"{folder} holds several widths {_sort_widths(widths)}; pass width= one of them")
    key = width_key(width)
    if key not in widths:
        raise ValueError(f"{folder} has no width_{key}/; it holds widths {_sort_widths(widths)}")
    return widths[key]


def pick_l0(folder: Path, l0: float | None) -> L0Choice:
    """The ``average_l0_N`` child of ``folder``.

    ``l0`` given: the exact N, else the nearest. ``l0=None``: the only one, else the canonical
    one — the published choice where known (:mod:`._gemma_scope_canonical`), else the N nearest
    100 (Gemma Scope's rule). Ties go to the larger N.
    """
    l0s = numbered(folder, L0)
    if not l0s:
        raise ValueError(f"{folder} holds no average_l0_<N>/ folders")
    available = tuple(sorted(l0s))
    if l0 is not None and l0 in l0s:
        return L0Choice(l0s[int(l0)], int(l0), None, available)
    if l0 is None and len(l0s) == 1:
        return L0Choice(l0s[available[0]], available[0], None, available)
    if l0 is None:
        canon = canonical_l0(folder)
        if canon in l0s:
            chosen, reason = canon, "no l0= given: the published canonical L0"
        else:
            chosen = min(available, key=lambda n: (abs(n - 100), -n))
            reason = "no l0= given: the L0 nearest 100 (Gemma Scope's canonical rule)"
    else:
        chosen = min(available, key=lambda n: (abs(n - l0), -n))
        reason = f"no average_l0_{l0:g}: the nearest L0"
    return L0Choice(l0s[chosen], chosen, reason, available)


def describe(choice: L0Choice) -> str:
    """One line for a warning: which folder, why, and what else there was."""
    return f"{choice.path} ({choice.reason}; available: {list(choice.available)})"


def pick_trainer(folder: Path, trainer: int | None) -> Path:
    """The ``trainer_N`` child of ``folder`` (a dictionary_learning sweep): the one asked for, or
    the only one."""
    trainers = numbered(folder, TRAINER)
    if trainer is None:
        if len(trainers) == 1:
            return next(iter(trainers.values()))
        raise ValueError(f"{folder} holds several trainers {sorted(trainers)}; pass trainer= one of them")
    if trainer not in trainers:
        raise ValueError(f"{folder} has no trainer_{trainer}/; it holds trainers {sorted(trainers)}")
    return trainers[trainer]


def descend(
    path: Path, is_sae: Callable[[Path], bool], *, width: str | int | None, l0: float | None,
    trainer: int | None = None,
) -> tuple[Path, list[L0Choice]]:
    """Walk from ``path`` through ``width_*`` and ``average_l0_*`` (or ``trainer_*``) folders to
    one SAE folder.

    Stops at the first folder ``is_sae`` accepts (or that holds none of these folders, for the
    registry to report). ``width``, ``l0`` and ``trainer`` are selectors: unused when there is
    nothing to choose.
    """
    choices: list[L0Choice] = []
    for _ in range(3):
        if is_sae(path) or not path.is_dir():
            break
        if numbered(path, WIDTH, as_int=False):
            path = pick_width(path, width)
        elif numbered(path, L0):
            choice = pick_l0(path, l0)
            choices.append(choice)
            path = choice.path
        elif numbered(path, TRAINER):
            path = pick_trainer(path, trainer)
        else:
            break
    return path, choices
