"""Read SAEs from the files people have (Gemma Scope 1/2, SAELens, sparsify, Llama Scope,
dictionary_learning, Qwen-Scope, HF caches); write SAELens.

``load_sae(path)`` and ``load_stack(path)`` recognise the format from the files; the registry
(:func:`register_format`, :func:`formats`) lets other formats plug in.
"""
from mechperm.formats.dictionary_learning import DICTIONARY_LEARNING
from mechperm.formats.gemma_scope import GEMMA_SCOPE
from mechperm.formats.gemma_scope_2 import GEMMA_SCOPE_2
from mechperm.formats.layout import L0ChoiceWarning
from mechperm.formats.lazy import LazyStack
from mechperm.formats.llama_scope import LLAMA_SCOPE
from mechperm.formats.load import load_sae, load_stack
from mechperm.formats.qwen_scope import QWEN_SCOPE
from mechperm.formats.registry import (
    SAELoader,
    detect_format,
    formats,
    get_format,
    register_format,
    unregister_format,
)
from mechperm.formats.saelens import SAELENS
from mechperm.formats.saelens_save import save_saelens
from mechperm.formats.sparsify import SPARSIFY

for _loader in (GEMMA_SCOPE, SAELENS, SPARSIFY, GEMMA_SCOPE_2, LLAMA_SCOPE, DICTIONARY_LEARNING,
                QWEN_SCOPE):
    if _loader.name not in formats():  # importlib.reload must not trip the duplicate check
        register_format(_loader)
del _loader

__all__ = [
    "L0ChoiceWarning",
    "LazyStack",
    "SAELoader",
    "detect_format",
    "formats",
    "get_format",
    "load_sae",
    "load_stack",
    "register_format",
    "save_saelens",
    "unregister_format",
]
