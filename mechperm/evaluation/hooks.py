"""Where an SAE of layer L reads the residual stream of a Hugging Face model, and hooks there.

Convention (Gemma Scope ``layer_L`` = ``blocks.L.hook_resid_post``; the shared stories260K SAEs):
the SAE of layer L reads the **forward output of decoder block L**, i.e. the residual stream after
block L — for a Llama/Gemma ``*ForCausalLM`` the output of ``model.model.layers[L]`` (its hidden
state is ``output[0]`` when a block returns a tuple). This equals ``hidden_states[L + 1]`` of
``output_hidden_states=True`` except for the last block, whose ``hidden_states`` entry comes after
the final norm; a forward hook is exact for every block.

Encoders whose SAEs follow the ``hidden_states[L]`` convention (the shared MiniLM SAEs: L = 0 is
the embedding output, L ≥ 1 the output of encoder layer L − 1) are read through
``output_hidden_states`` instead (:func:`mechperm.evaluation.evaluate_skip_layers_encoder`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Union

import torch
from torch import Tensor, nn

# Block containers of the layouts we know, tried in order (dotted attribute paths from the model
# the user holds, with or without its task head).
BLOCK_CONTAINERS: tuple[str, ...] = (
    "model.layers",  # Llama, Gemma 1-3, Mistral, Qwen2/3, Phi-3 (*ForCausalLM)
    "model.language_model.layers",  # Gemma 3 / multimodal wrappers
    "layers",  # LlamaModel, GemmaModel, GPTNeoXModel (base models)
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM (*LMHeadModel)
    "h",  # GPT2Model
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "encoder.layer",  # BertModel, RobertaModel
    "bert.encoder.layer",  # BertFor*
    "roberta.encoder.layer",  # RobertaFor*
)

HookSpec = Union[None, str, Callable[[nn.Module, int], nn.Module]]
"""How to find the module whose forward output is layer L: None (auto), a dotted path (``"{layer}"``
is filled in; without it, the path names the block list), or ``fn(model, layer) -> module``."""


def block_container(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks and its dotted path (first of ``BLOCK_CONTAINERS``)."""
    for path in BLOCK_CONTAINERS:
        try:
            mod = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}: none of {list(BLOCK_CONTAINERS)} "
        f"is a ModuleList; pass hook='path.to.blocks.{{layer}}' or hook=lambda model, layer: module"
    )


def hook_module(model: nn.Module, layer: int, hook: HookSpec = None) -> nn.Module:
    """The module whose forward output is the residual stream the SAE of ``layer`` reads.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (any of ``BLOCK_CONTAINERS``' layouts) or anything ``hook`` resolves.
    layer : int
        SAE layer L; by default block L (``model.model.layers[L]`` for Llama/Gemma).
    hook : None, str or callable
        None: auto-detect the block list. ``"model.layers.{layer}"``-style template, or a block
        list path such as ``"transformer.h"``. A callable ``hook(model, layer) -> nn.Module``.
    """
    if callable(hook):
        mod = hook(model, layer)
        if not isinstance(mod, nn.Module):
            raise ValueError(f"hook(model, {layer}) returned {type(mod).__name__}; expected an nn.Module")
        return mod
    if isinstance(hook, str):
        path = hook.format(layer=layer) if "{layer}" in hook else hook
        try:
            mod = model.get_submodule(path)
        except AttributeError as e:
            raise ValueError(f"hook={hook!r}: {type(model).__name__} has no submodule {path!r} ({e})") from None
        if "{layer}" in hook:
            return mod
        blocks = mod
    elif hook is None:
        path, blocks = block_container(model)
    else:
        raise ValueError(f"hook must be None, a str or a callable; got {type(hook).__name__}")
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"hook={path!r} names a {type(blocks).__name__}, not a block list; pass a template such as "
            f"'{path}.{{layer}}' or a callable"
        )
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer {layer} is out of range: {path} holds {len(blocks)} blocks (0..{len(blocks) - 1})")
    return blocks[layer]


def hidden_of(output: object) -> Tensor:
    """The hidden state of a block's forward output (``output[0]`` when it is a tuple)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(f"cannot read a hidden state from a block output of type {type(output).__name__}")


def _with_hidden(output: object, hidden: Tensor) -> object:
    if isinstance(output, Tensor):
        return hidden
    return type(output)((hidden, *output[1:]))  # type: ignore[index]


def prefix_blocks(model: nn.Module, hook: HookSpec) -> nn.ModuleList | None:
    """The block list when ``hook`` names blocks by index (None or a block-list path), else None."""
    if hook is None:
        return block_container(model)[1]
    if isinstance(hook, str) and "{layer}" not in hook:
        blocks = model.get_submodule(hook)
        return blocks if isinstance(blocks, nn.ModuleList) else None
    return None


@contextmanager
def capture(modules: Mapping[int, nn.Module], store: dict[int, object]) -> Iterator[dict[int, object]]:
    """While active, ``store[L]`` receives what each forward of ``modules[L]`` outputs (as is;
    :func:`hidden_of` reads the hidden state)."""

    def make(layer: int) -> Callable:
        def hook(_mod: nn.Module, _inp: object, out: object) -> None:
            store[layer] = out

        return hook

    handles = [m.register_forward_hook(make(L)) for L, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def replace_output(module: nn.Module, mask: Tensor, values: Tensor) -> Iterator[None]:
    """While active, the hidden state ``module`` outputs gets ``h[mask] = values``.

    ``mask [B, T]`` bool; ``values [n, d]`` with ``n = mask.sum()`` in ``h[mask]``'s (row-major)
    order, cast to the hidden state's dtype. Positions outside ``mask`` (BOS, padding) keep the
    model's own value.
    """

    def hook(_mod: nn.Module, _inp: object, out: object) -> object:
        h = hidden_of(out)
        if h.shape[:2] != mask.shape:
            raise ValueError(
                f"hooked output has shape {tuple(h.shape)}; expected [B, T, d] with [B, T] = {tuple(mask.shape)}"
            )
        new = h.clone()
        new[mask] = values.to(device=h.device, dtype=h.dtype)
        return _with_hidden(out, new)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


_NO_FORWARD = object()


@contextmanager
def frozen(outputs: Sequence[tuple[nn.Module, object]]) -> Iterator[None]:
    """While active, each module returns its given output without computing (hooks still run).

    Used to re-run a model from a replaced block on: the blocks before it (and the block itself)
    hand back what they output in the clean pass, so only the blocks after it compute. Valid for
    models that call each block once per forward and have no side effects in blocks (no cache).
    The instance attribute ``forward`` (where e.g. accelerate keeps its wrapper) is restored.
    """
    saved = []
    for mod, out in outputs:
        saved.append((mod, mod.__dict__.get("forward", _NO_FORWARD)))
        mod.forward = (lambda o: lambda *args, **kwargs: o)(out)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for mod, old in reversed(saved):
            if old is _NO_FORWARD:
                del mod.__dict__["forward"]
            else:
                mod.forward = old  # type: ignore[method-assign]


def token_mask(attention_mask: Tensor, exclude_first: bool = True) -> Tensor:
    """Positions to evaluate, bool ``[B, T]``: real tokens (``attention_mask``), without the first
    real token of each sequence (BOS / [CLS]) when ``exclude_first`` — with either padding side."""
    m = attention_mask.bool().clone()
    if exclude_first and m.numel():
        rows = torch.nonzero(m.any(dim=1)).squeeze(1)
        first = m.int().argmax(dim=1)[rows]
        m[rows, first] = False
    return m
