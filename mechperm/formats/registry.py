"""The registry of SAE file formats: a typed loader protocol, registration, and detection.

A format is an object with a ``name``, a one-line ``expects`` (what files it reads), a cheap
``sniff(path)`` that looks only at the files under ``path`` (never at folder names), and
``load(path, device, dtype)``. Built-in formats register themselves when
:mod:`mechperm.formats` is imported; third parties call :func:`register_format`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from mechperm.sae import SAE

__all__ = ["SAELoader", "register_format", "unregister_format", "get_format", "formats", "detect_format"]


@runtime_checkable
class SAELoader(Protocol):
    """What every format provides."""

    name: str
    """Registry key, also written to ``SAEInfo.format`` (e.g. ``"gemma_scope"``)."""
    expects: str
    """One line naming the files the format reads, shown when no format recognises a path."""

    def sniff(self, path: Path) -> bool:
        """True when ``path`` (a file or a folder) holds this format's files. Must be cheap."""
        ...

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        """Read the SAE at ``path`` (which :meth:`sniff` accepted) onto ``device``.

        ``dtype=None`` keeps the dtype stored in the file.
        """
        ...


_REGISTRY: dict[str, SAELoader] = {}


def register_format(loader: SAELoader) -> SAELoader:
    """Add ``loader`` to the registry; a name already taken is refused (ValueError)."""
    if not isinstance(loader, SAELoader):
        raise TypeError(
            f"{loader!r} is not an SAELoader: it needs name, expects, sniff(path) and "
            f"load(path, device, dtype)"
        )
    if loader.name in _REGISTRY:
        raise ValueError(
            f"format {loader.name!r} is already registered ({_REGISTRY[loader.name]!r}); "
            f"registered formats: {formats()}. Call unregister_format({loader.name!r}) first "
            f"to replace it"
        )
    _REGISTRY[loader.name] = loader
    return loader


def unregister_format(name: str) -> SAELoader:
    """Remove and return the format registered as ``name``."""
    loader = get_format(name)
    del _REGISTRY[name]
    return loader


def get_format(name: str) -> SAELoader:
    """The loader registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; choose one of {formats()}") from None


def formats() -> list[str]:
    """Names of the registered formats, in registration order."""
    return list(_REGISTRY)


def _listing(path: Path, limit: int = 12) -> str:
    if not path.is_dir():
        return ""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"; it holds {names[:limit]}{more}" if names else "; the folder is empty"


def detect_format(path: Path, format: str | None = None) -> SAELoader:
    """The one registered format whose ``sniff`` accepts ``path`` (or the one named ``format``).

    Raises
    ------
    ValueError
        No format (or several) recognise ``path``; the message lists every format tried and
        what it expects, and what ``path`` holds.
    """
    if format is not None:
        loader = get_format(format)
        if not loader.sniff(path):
            raise ValueError(
                f"{path} is not in format {format!r}: it expects {loader.expects}{_listing(path)}"
            )
        return loader
    hits = [loader for loader in _REGISTRY.values() if loader.sniff(path)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(
            f"{path} matches several formats {[h.name for h in hits]}; pass format= one of them"
        )
    tried = "; ".join(f"{loader.name}: {loader.expects}" for loader in _REGISTRY.values())
    raise ValueError(f"no known SAE format recognises {path}{_listing(path)}. Formats tried — {tried}")
