"""Write a matched stack back as SAELens folders whose feature indices follow paths through layers.

The alignment rule (:func:`align_stack`), for stack positions t = 0 … n−1 with F_t features and
adjacent matches ``perm_t`` (``stack.results[(t, t+1)].perm``):

1. Position 0 keeps its order.
2. **Aligned.** For each exported index ``i < min(F_t, F_{t+1})`` whose feature at position t has
   a counterpart j at t+1, exported index i of t+1 is j. A chain of adjacent matches therefore
   keeps one index for as long as it lasts and its index exists in every layer it passes.
3. **Holes.** Every other index of t+1 — where the chain at i broke (no counterpart), or
   ``i ≥ F_t`` when layer t+1 is wider — is filled, in ascending index order, first by
   *displaced* features (matched from an index ``i ≥ F_{t+1}`` of position t, possible only when
   t+1 is narrower; in order of that index), then by the features of t+1 that nothing maps to,
   in their original order. So with every feature of t matched and F_{t+1} > F_t, the unmatched
   features follow after index F_t − 1; a broken chain's index is taken over by the first
   unmatched feature, which starts a new chain there.

Each exported SAE is a permutation of the original's features (all tensors together: ``W_enc``
columns, ``b_enc``, ``W_dec`` rows, ``threshold``), so it computes the same function up to the
order of its feature activations. ``permutation.json`` in each folder records the original index
of every exported feature and the exported index at the previous position it continues.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mechperm.formats.saelens_save import (
    check_replaceable,
    replace_folder,
    saelens_cfg,
    write_json,
    write_saelens_files,
)
from mechperm.sae import SAE
from mechperm.stack import StackMatch

__all__ = ["Alignment", "align_stack", "permute_features", "export_aligned", "read_permutation"]

PERMUTATION = "permutation.json"
ALIGNMENT = "alignment.json"


class Alignment(NamedTuple):
    """The feature order of each stack position after alignment."""

    order: list[Tensor]
    """int64 [F_t] per position: ``order[t][i]`` is the original index of exported feature i."""
    previous: list[Tensor]
    """int64 [F_t] per position: the exported index at position t−1 whose match exported feature
    i is, or −1 (no counterpart there; all −1 at position 0). ``previous[t][i] == i`` where the
    chain through index i continues."""


def _checked_perm(stack: StackMatch, t: int) -> Tensor:
    Fa, Fb = stack.sizes[t], stack.sizes[t + 1]
    perm = stack.adjacent(t).perm.detach().to(device="cpu", dtype=torch.int64)
    if tuple(perm.shape) != (Fa,):
        raise ValueError(
            f"match {t}→{t + 1} has perm of shape {tuple(perm.shape)}; expected ({Fa},) from stack.sizes"
        )
    matched = perm[perm >= 0]
    if bool(((perm < -1) | (perm >= Fb)).any()):
        bad = perm[(perm < -1) | (perm >= Fb)][0]
        raise ValueError(f"match {t}→{t + 1} maps to feature {int(bad)}; position {t + 1} has F={Fb}")
    if matched.unique().numel() != matched.numel():
        raise ValueError(
            f"match {t}→{t + 1} maps several features to one (perm holds duplicates); an aligned export "
            f"needs a one-to-one matching"
        )
    return perm


def align_stack(stack: StackMatch) -> Alignment:
    """The exported feature order of every stack position (the rule in the module docstring).

    Needs the adjacent matches ``(t, t+1)`` for every t; other pairs are ignored. O(Σ F_t).
    """
    sizes = stack.sizes
    order = [torch.arange(sizes[0], dtype=torch.int64)]
    previous = [torch.full((sizes[0],), -1, dtype=torch.int64)]
    for t in range(len(sizes) - 1):
        perm = _checked_perm(stack, t)
        Fa, Fb = sizes[t], sizes[t + 1]
        targets = perm[order[t]]  # [Fa]: original t+1 feature matched from exported index i, or -1
        new = torch.full((Fb,), -1, dtype=torch.int64)
        prev = torch.full((Fb,), -1, dtype=torch.int64)
        m = min(Fa, Fb)
        aligned = (targets[:m] >= 0).nonzero().squeeze(1)
        new[aligned], prev[aligned] = targets[aligned], aligned
        displaced = m + (targets[m:] >= 0).nonzero().squeeze(1)  # exported indices at t, ≥ Fb
        reached = torch.zeros(Fb, dtype=torch.bool)
        reached[targets[targets >= 0]] = True
        unreached = (~reached).nonzero().squeeze(1)
        holes = (new < 0).nonzero().squeeze(1)
        new[holes] = torch.cat([targets[displaced], unreached])
        prev[holes] = torch.cat([displaced, torch.full_like(unreached, -1)])
        order.append(new)
        previous.append(prev)
    return Alignment(order, previous)


def permute_features(sae: SAE, order: Tensor) -> SAE:
    """A copy of ``sae`` whose feature i is ``sae``'s feature ``order[i]``.

    ``W_enc`` columns, ``b_enc``, ``W_dec`` rows, ``threshold`` and the ``invalid`` mask move
    together, so ``permute_features(sae, order).encode(x) == sae.encode(x)[..., order]`` and the
    reconstruction is unchanged (up to float summation order). ``info.neuronpedia_id`` is
    dropped: Neuronpedia's feature indices refer to the original order.
    """
    order = torch.as_tensor(order, dtype=torch.int64).cpu()
    F = sae.d_sae
    if order.shape != (F,) or not torch.equal(order.sort().values, torch.arange(F)):
        raise ValueError(
            f"order must be a permutation of range({F}) (the SAE's features); got shape {tuple(order.shape)}"
        )
    idx = order.to(sae.device)

    def take(t: Tensor | None, dim: int = 0) -> Tensor | None:
        return None if t is None else t.index_select(dim, idx)

    return dataclasses.replace(
        sae,
        W_enc=take(sae.W_enc, 1),
        b_enc=take(sae.b_enc),
        W_dec=take(sae.W_dec),
        threshold=take(sae.threshold),
        invalid=take(sae.invalid),
        info=dataclasses.replace(sae.info, neuronpedia_id=None),
    )


def _record(sae: SAE, t: int, layer: int, alignment: Alignment) -> dict[str, Any]:
    prev = alignment.previous[t]
    return {
        "format": "mechperm.export_aligned/1",
        "position": t,
        "layer": layer,
        "source": sae.info.source,
        "neuronpedia_id": sae.info.neuronpedia_id,
        "n_features": sae.d_sae,
        "n_continued": int((prev == torch.arange(prev.numel())).sum()),
        "original_index": alignment.order[t].tolist(),
        "previous": prev.tolist(),
        "note": "exported feature i is original feature original_index[i] (use it for Neuronpedia "
        "links); previous[i] is the exported index at the previous stack position it is matched "
        "from, -1 if none",
    }


def export_aligned(
    saes: Sequence[SAE], stack: StackMatch, out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write each SAE of a matched stack, features reordered by :func:`align_stack`, as SAELens folders.

    Parameters
    ----------
    saes : sequence of SAE
        The stack that was matched, in stack order (``stack.sizes[t] == saes[t].d_sae``).
    stack : StackMatch
        Its matches; the adjacent pairs ``(t, t+1)`` must all be there and be one-to-one.
    out_dir : str or Path
        Gets ``layer_{L}/`` (L = ``stack.layers[t]``) per position, each with ``cfg.json``,
        ``sae_weights.safetensors`` (loadable by ``sae_lens.SAE.load_from_disk`` and
        :func:`mechperm.load_sae`) and ``permutation.json``; then ``alignment.json`` listing them,
        written last (its presence means the export finished).
    overwrite : bool
        Replace existing ``layer_{L}`` folders (only ones holding nothing but SAE files).

    Returns
    -------
    list of Path
        The ``layer_{L}`` folders, in stack order.

    Raises
    ------
    FileExistsError
        A ``layer_{L}`` folder exists and ``overwrite`` is False (checked before anything is written).
    ValueError
        The SAEs and the stack disagree, layers repeat, or a match is missing or not one-to-one.
    """
    if len(saes) != len(stack.sizes):
        raise ValueError(f"got {len(saes)} SAEs for a stack of {len(stack.sizes)} positions")
    for t, sae in enumerate(saes):
        if sae.d_sae != stack.sizes[t]:
            raise ValueError(
                f"SAE {t} ({sae.info.source or 'no source'}) has F={sae.d_sae}, but the stack's position "
                f"{t} has {stack.sizes[t]} features; pass the SAEs that were matched, in stack order"
            )
        saelens_cfg(sae)  # dtype check before any file is written
    layers = [int(L) for L in stack.layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"stack.layers {layers} repeats a layer; folders layer_{{L}} would collide")
    alignment = align_stack(stack)
    out = Path(os.path.abspath(out_dir))
    folders = [out / f"layer_{L}" for L in layers]
    for folder in folders:
        check_replaceable(folder, overwrite)
    for t, (sae, folder) in enumerate(zip(saes, folders)):
        exported = permute_features(sae, alignment.order[t])
        if exported.info.layer is None:
            exported.info = dataclasses.replace(exported.info, layer=layers[t])
        record = _record(sae, t, layers[t], alignment)
        replace_folder(
            folder,
            lambda tmp, s=exported, r=record: write_saelens_files(s, tmp, {PERMUTATION: r}),
            overwrite=overwrite,
        )
        del exported
    summary = {
        "format": "mechperm.export_aligned/1",
        "layers": layers,
        "folders": [f.name for f in folders],
        "sizes": list(stack.sizes),
        "rule": "see mechperm.export: aligned indices keep chains of adjacent matches; holes are "
        "filled by displaced, then unmatched features in original order",
    }
    tmp = out / f".{ALIGNMENT}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        write_json(tmp, summary)
        os.replace(tmp, out / ALIGNMENT)
    finally:
        tmp.unlink(missing_ok=True)
    return folders


def read_permutation(folder: str | Path) -> Tensor:
    """``original_index`` of an exported ``layer_{L}`` folder, as int64 [F]."""
    file = Path(folder) / PERMUTATION
    try:
        record = json.loads(file.read_text())
        return torch.tensor(record["original_index"], dtype=torch.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{file} is not a readable mechperm permutation record ({type(e).__name__}: {e})"
        ) from e
