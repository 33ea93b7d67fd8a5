"""A stack whose SAEs are read from disk when first needed, a few at a time.

Why: matching a stack touches two SAEs at a time, but reading the whole stack first holds all of
them: a Gemma Scope 2b stack of 26 layers is 7.8 GB at width 16k, 63 GB at 131k and ~490 GB at
1M (float32 W_enc + W_dec), more than any one machine's memory. ``load_stack(path, lazy=True)``
(what ``mechperm match`` uses) returns a :class:`LazyStack` instead: indexing it loads that
layer's SAE and keeps the ``keep`` most recently used ones, so a run over adjacent pairs reads
every file once and holds two SAEs at a time.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from mechperm.sae import SAE, SAEInfo

__all__ = ["LazyStack", "StackEntry", "SAEMeta"]


@dataclass(frozen=True)
class StackEntry:
    """One layer of a stack on disk: its layer number and the path its loader reads."""

    layer: int
    path: Path


@dataclass(frozen=True)
class SAEMeta:
    """What a stack remembers of an SAE it has read (the tensors may be gone since)."""

    info: SAEInfo
    d_in: int
    d_sae: int


class LazyStack(Sequence[SAE]):
    """A sequence of SAEs in layer order, each read when first indexed; at most ``keep`` held.

    ``stack[p]`` loads position p (or returns it from the cache); ``stack.layers`` and
    ``stack.entries`` need no loading; :meth:`meta` gives the shape and metadata of any position
    read before. Every SAE read must share the ``d`` of the first one read (a ValueError naming
    both files otherwise), as :func:`mechperm.formats.load_stack` checks up front for eager stacks.

    Parameters
    ----------
    entries : list of StackEntry, in layer order.
    load : callable ``(entry) -> SAE``.
    keep : int >= 1
        SAEs held at a time (2: one layer pair).
    """

    def __init__(self, entries: Sequence[StackEntry], load: Callable[[StackEntry], SAE], keep: int = 2) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r}: expected a positive integer (SAEs held at a time)")
        self.entries = list(entries)
        self.keep = keep
        self._load = load
        self._held: OrderedDict[int, SAE] = OrderedDict()
        self._meta: dict[int, SAEMeta] = {}
        self.loads = 0
        """SAEs read from disk so far (a position read twice counts twice)."""
        self.max_held = 0
        """Most SAEs this stack has held at once."""

    @property
    def layers(self) -> list[int]:
        """The model layer of every position, without loading anything."""
        return [e.layer for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, p: int) -> SAE: ...

    @overload
    def __getitem__(self, p: slice) -> list[SAE]: ...

    def __getitem__(self, p: int | slice) -> SAE | list[SAE]:
        if isinstance(p, slice):  # loads each in turn: only the last `keep` stay held
            return [self[i] for i in range(*p.indices(len(self)))]
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"stack positions are integers; got {type(p).__name__}")
        if not -len(self) <= p < len(self):
            raise IndexError(f"position {p} is outside a stack of {len(self)} SAEs")
        p %= len(self)
        if p in self._held:
            self._held.move_to_end(p)
            return self._held[p]
        while len(self._held) >= self.keep:  # drop ours before reading the next: memory is the point
            self._held.popitem(last=False)
        sae = self._load(self.entries[p])
        self.loads += 1
        first = next(iter(self._meta.items()), None)
        if first is not None and first[1].d_in != sae.d_in:
            q, m = first
            raise ValueError(
                f"layer {self.entries[p].layer} ({sae.info.source}) has d={sae.d_in}, but layer "
                f"{self.entries[q].layer} ({m.info.source}) has d={m.d_in}; a stack's SAEs must read the same stream"
            )
        self._meta[p] = SAEMeta(info=sae.info, d_in=sae.d_in, d_sae=sae.d_sae)
        self._held[p] = sae
        self.max_held = max(self.max_held, len(self._held))
        return sae

    def meta(self, p: int) -> SAEMeta | None:
        """Metadata of position p if it was ever read, else None (nothing is loaded)."""
        return self._meta.get(p % len(self))

    def release(self) -> None:
        """Drop every SAE held (their metadata stays)."""
        self._held.clear()

    def __repr__(self) -> str:
        return f"LazyStack({len(self)} layers {self.layers}, holding {list(self._held)}, keep={self.keep})"
