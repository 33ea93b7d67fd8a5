"""Read SAEs from the files people have: Gemma Scope ``params.npz``, SAELens folders, HF caches.

``load_sae(path)`` and ``load_stack(path)`` recognise the format from the files; the registry
(:func:`register_format`, :func:`formats`) lets other formats plug in.
"""
from mechperm.formats.gemma_scope import GEMMA_SCOPE
from mechperm.formats.layout import L0ChoiceWarning
from mechperm.formats.load import load_sae, load_stack
from mechperm.formats.registry import (
    SAELoader,
    detect_format,
    formats,
    get_format,
    register_format,
    unregister_format,
)
from mechperm.formats.saelens import SAELENS

for _loader in (GEMMA_SCOPE, SAELENS):
    if _loader.name not in formats():  # importlib.reload must not trip the duplicate check
        register_format(_loader)
del _loader

__all__ = [
    "L0ChoiceWarning",
    "SAELoader",
    "detect_format",
    "formats",
    "get_format",
    "load_sae",
    "load_stack",
    "register_format",
    "unregister_format",
]
