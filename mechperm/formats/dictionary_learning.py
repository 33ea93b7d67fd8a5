"""dictionary_learning (Marks et al.): ``ae.pt`` (a state dict) + ``config.json`` per SAE folder.

Facts read from the library itself (PyPI ``dictionary-learning`` 0.1.0: ``dictionary.py``,
``trainers/top_k.py``, ``batch_top_k.py``, ``matryoshka_batch_top_k.py``, ``utils.load_dictionary``):
``config.json`` holds ``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer",
"lm_name", "submodule_name", ...}, "buffer": {...}}`` and ``ae.pt`` the class's ``state_dict()``:

=========================  =========================================================  ====================================
``dict_class``             tensors (shapes as stored)                                  encode
=========================  =========================================================  ====================================
AutoEncoder                ``encoder.weight [F, d]``, ``encoder.bias``,                relu(enc(x − bias))
                           ``decoder.weight [d, F]``, ``bias [d]``
AutoEncoderNew             ``encoder.*``, ``decoder.weight [d, F]``, ``decoder.bias``  relu(enc(x))
JumpReluAutoEncoder        ``W_enc [d, F]``, ``b_enc``, ``W_dec [F, d]``, ``b_dec``,   relu(pre · (pre > θ))
                           ``threshold [F]``
AutoEncoderTopK            ``encoder.*``, ``decoder.weight``, ``b_dec``, buffers       top k of relu(enc(x − b_dec))
                           ``k``, ``threshold``
BatchTopKSAE               as AutoEncoderTopK                                          r · (r > θ), r = relu(enc(x − b_dec))
MatryoshkaBatchTopKSAE     ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``k``,          r · (r > θ), r = relu((x − b_dec) W_enc + b_enc)
                           ``threshold``, ``group_sizes``
=========================  =========================================================  ====================================

``decode``: ``decoder(f)`` (``f @ decoder.weight.T``, plus ``decoder.bias`` for AutoEncoderNew)
plus ``bias`` / ``b_dec`` where the class has one; ``f @ W_dec + b_dec`` for the ``W_*`` classes. The
BatchTopK classes encode at inference with their scalar ``threshold`` (``use_threshold=True`` by
default; the batch top-k is training only), which is our JumpReLU with that θ for every feature
(for θ < 0, both are a plain relu). So every class but the gated one is exactly our SAE in
SAELens layout. ``ae.pt`` is read with ``torch.load(weights_only=True, mmap=True)`` (no pickled
code runs); the ``nn.Linear`` weights (``[out, in]``) are transposed into a copy a block at a time
(:func:`~mechperm.formats._common.transposed_copy`), the rest stay views of the file until a dtype
or device change asks for a copy.
Refused: GatedAutoEncoder (no SAELens-layout equivalent), unknown classes.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mechperm.formats._common import (
    check_shape,
    claims_pair,
    place,
    read_json_object,
    read_state_dict,
    require,
    transposed_copy,
)
from mechperm.sae import SAE, SAEInfo

__all__ = ["DictionaryLearningLoader", "DICTIONARY_LEARNING"]

CONFIG = "config.json"
WEIGHTS = "ae.pt"
# dict_class -> (activation, {our name: stored name}, apply_b_dec_to_input)
_CLASSES: dict[str, tuple[str, dict[str, str], bool]] = {
    "AutoEncoder": ("relu", {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight",
                             "b_dec": "bias"}, True),
    "AutoEncoderNew": ("relu", {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight",
                                "b_dec": "decoder.bias"}, False),
    "JumpReluAutoEncoder": ("jumprelu", {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec",
                                         "threshold": "threshold"}, False),
    "AutoEncoderTopK": ("topk", {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight",
                                 "b_dec": "b_dec"}, True),
    "BatchTopKSAE": ("jumprelu", {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight",
                                  "b_dec": "b_dec", "threshold": "threshold"}, True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec",
                                            "threshold": "threshold"}, True),
}
_TRANSPOSED = ("encoder.weight", "decoder.weight")  # nn.Linear weights: [out, in], the transpose of ours
_BUFFERS = ("k", "group_sizes")


def _trainer(cfg: dict[str, Any], file: Path) -> dict[str, Any]:
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("dict_class"), str):
        raise ValueError(f"{file} has no trainer.dict_class; a dictionary_learning config.json names its class there")
    return trainer


def dictionary_learning_info(folder: Path, file: Path, trainer: dict[str, Any]) -> SAEInfo:
    layer = trainer.get("layer")
    lm = trainer.get("lm_name")
    hook = trainer.get("submodule_name")
    return SAEInfo(
        model_name=lm if isinstance(lm, str) else None,
        hook_name=hook if isinstance(hook, str) else None,
        layer=layer if isinstance(layer, int) and not isinstance(layer, bool) else None,
        source=str(file),
        format="dictionary_learning",
    )


def _k(state: dict[str, Tensor], trainer: dict[str, Any], file: Path, cfg_file: Path, F: int) -> int:
    said = trainer.get("k")
    stored = int(state["k"].item()) if "k" in state and state["k"].numel() == 1 else None
    k = stored if stored is not None else said
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{file} and {cfg_file} give no positive integer k (buffer k={stored!r}, trainer.k={said!r})")
    if stored is not None and isinstance(said, int) and said != stored:
        raise ValueError(
            f"{cfg_file} says k={said}, but the buffer k in {file} is {stored}; they do not belong together"
        )
    if k > F:
        raise ValueError(f"k={k} in {file} is more than its {F} features")
    return k


def _check_shapes(t: dict[str, Tensor], names: dict[str, str], file: Path) -> tuple[int, int]:
    """``(d, F)`` from the biases; each matrix checked in the shape the file stores it in."""
    for ours in ("b_enc", "b_dec"):
        if t[ours].ndim != 1:
            raise ValueError(f"{names[ours]} in {file} has shape {tuple(t[ours].shape)}; expected 1-D")
    F, d = int(t["b_enc"].shape[0]), int(t["b_dec"].shape[0])
    for ours, ours_shape in (("W_enc", (d, F)), ("W_dec", (F, d)), ("threshold", (F,))):
        if ours not in t or (ours == "threshold" and t[ours].ndim == 0):
            continue
        stored = names[ours]
        shape = ours_shape[::-1] if stored in _TRANSPOSED else ours_shape
        origin = f"F={F} from {names['b_enc']}, d={d} from {names['b_dec']}"
        check_shape(stored, file, tuple(t[ours].shape), shape, origin)
    return d, F


class DictionaryLearningLoader:
    """Loader for dictionary_learning ``ae.pt`` + ``config.json`` folders (see the module docstring)."""

    name = "dictionary_learning"
    expects = f"{WEIGHTS} + {CONFIG} with trainer.dict_class (dictionary_learning, Marks et al.)"

    def sniff(self, path: Path) -> bool:
        return claims_pair(path, CONFIG, WEIGHTS, lambda cfg: isinstance(cfg.get("trainer"), dict))

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        folder = Path(os.path.abspath(path if path.is_dir() else path.parent))
        cfg_file, file = folder / CONFIG, folder / WEIGHTS
        trainer = _trainer(read_json_object(cfg_file), cfg_file)
        dict_class = trainer["dict_class"]
        if dict_class not in _CLASSES:
            extra = " (a gated SAE: unsupported, no SAELens-layout equivalent)" if "Gated" in dict_class else ""
            raise ValueError(
                f"{cfg_file} says dict_class={dict_class!r}{extra}; mechperm reads {sorted(_CLASSES)}"
            )
        activation, names, b_dec_to_input = _CLASSES[dict_class]
        state, mapped = read_state_dict(file, "dictionary_learning's ae.pt")
        require(state, tuple(names.values()), file, f"dictionary_learning {dict_class}")
        known = set(names.values()) | set(_BUFFERS)
        unknown = sorted(set(state) - known - ({"threshold"} if activation == "topk" else set()))
        if unknown:
            warnings.warn(f"{file}: ignoring tensors {unknown}, not part of a {dict_class}", stacklevel=4)
        stored_t = {ours: state.pop(stored) for ours, stored in names.items()}
        for ours, t in stored_t.items():
            if not t.is_floating_point():
                raise ValueError(f"{names[ours]} in {file} has dtype {t.dtype}; expected a floating dtype")
        d, F = _check_shapes(stored_t, names, file)
        # nn.Linear keeps [out, in]: the transpose of ours, copied a block at a time.
        tensors = {ours: transposed_copy(stored_t.pop(ours), device, dtype, release=mapped)
                   if names[ours] in _TRANSPOSED else t
                   for ours, t in list(stored_t.items())}
        if activation == "jumprelu" and tensors["threshold"].ndim == 0:
            # The BatchTopK classes keep one scalar θ for every feature.
            tensors["threshold"] = tensors["threshold"].expand(F)
        for key, got in (("activation_dim", d), ("dict_size", F)):
            said = trainer.get(key)
            if isinstance(said, int) and said != got:
                raise ValueError(f"{cfg_file} says {key}={said}, but the tensors in {file} have {got}")
        k = _k(state, trainer, file, cfg_file, F) if activation == "topk" else None
        return SAE(
            **{name: place(t, device, dtype) for name, t in tensors.items()},
            activation=activation,  # type: ignore[arg-type]
            k=k,
            apply_b_dec_to_input=b_dec_to_input,
            info=dictionary_learning_info(folder, file, trainer),
        )


DICTIONARY_LEARNING = DictionaryLearningLoader()
