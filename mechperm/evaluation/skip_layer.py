"""Skip-layer evaluation ("layer pruning", METHOD.md): replace layer u's residual stream by a
reconstruction from layer t (the previous evaluated layer) and measure EV and ΔCE.

For every batch: one clean forward captures the states ``x_L`` of all evaluated layers (forward
hooks, :mod:`mechperm.evaluation.hooks`) and the clean logits; each method of each pair (t, u)
then builds ``x̂_u`` from the clean ``x_t`` and ``x_u`` (:mod:`mechperm.evaluation.methods`) and,
for ΔCE, one more forward replaces block u's output at the evaluated positions by ``x̂_u``.
Evaluated positions: real tokens (``attention_mask``) without the first real token of each
sequence (BOS); the replacement leaves the other positions as the model computes them.
Cross-entropy: the loss of predicting token p + 1 at position p, over positions p that are
evaluated and whose next position is a real token. Sums run in float64, in batch order, so the
result does not depend on timing; batch composition only changes float rounding of the model.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechperm.evaluation.accumulate import Evaluator, PermStack, SAEStack
from mechperm.evaluation.hooks import (
    HookSpec,
    capture,
    frozen,
    hidden_of,
    hook_module,
    prefix_blocks,
    replace_output,
)
from mechperm.evaluation.hooks import token_mask as default_mask
from mechperm.evaluation.methods import BASELINES, CustomMethod
from mechperm.evaluation.metrics import Part
from mechperm.evaluation.report import SkipLayerReport
DEFAULT_QS = (0.0, 0.25, 0.5, 0.75, 1.0)
_CE_CHUNK = 4096  # logit rows upcast to float32 at a time (a 256k vocabulary is 1 GiB per 1024)


def _prepare_tokens(
    tokens: Any, attention_mask: Any, mask: Any, exclude_first: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, attention_mask, evaluated-position mask)``, each ``[N, T]``, validated."""
    ids = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, Tensor) else tokens)
    if ids.ndim != 2 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"tokens has shape {tuple(ids.shape)} and dtype {ids.dtype}; expected integer ids [N, T]")
    ids = ids.long()
    am = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).long()
    if am.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(am.shape)}; expected {tuple(ids.shape)} like tokens")
    m = default_mask(am, exclude_first) if mask is None else torch.as_tensor(mask).bool() & am.bool()
    if m.shape != ids.shape:
        raise ValueError(f"token_mask has shape {tuple(m.shape)}; expected {tuple(ids.shape)} like tokens")
    return ids, am, m


def _device_of(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, leave=False)
        except ImportError:  # tqdm is optional
            pass

    class _Quiet:
        def update(self, n: int = 1) -> None: ...
        def close(self) -> None: ...

    return _Quiet()


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


def _ce_sum(logits: Tensor, ids: Tensor, pred: Tensor) -> float:
    """Σ over ``pred [B, T−1]`` positions p of −log softmax(logits[p])[ids[p + 1]] (float64)."""
    where = pred.nonzero()  # [n, 2]
    total = 0.0
    for s in range(0, where.shape[0], _CE_CHUNK):
        b, p = where[s : s + _CE_CHUNK].unbind(1)
        total += float(F.cross_entropy(logits[b, p].float(), ids[b, p + 1], reduction="sum").double())
    return total


def evaluate_skip_layers(
    model: nn.Module,
    saes: SAEStack,
    perms: PermStack | None,
    tokens: Tensor | np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    attention_mask: Tensor | np.ndarray | None = None,
    token_mask: Tensor | np.ndarray | None = None,
    exclude_first: bool = True,
    hook: HookSpec = None,
    baselines: Sequence[str] = BASELINES,
    hybrid_qs: Sequence[float] = DEFAULT_QS,
    hybrid_perm: str | None = None,
    hybrid_on: Part = "decoder",
    custom: Mapping[str, CustomMethod] | None = None,
    compute_ce: bool = True,
    reuse_prefix: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SkipLayerReport:
    """Skip-layer evaluation of a causal LM: EV and ΔCE for every adjacent pair of ``layers``.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM (called as ``model(input_ids=, attention_mask=, use_cache=False)``,
        returning ``.logits [B, T, V]``). Put it on ``device`` first; it is set to eval mode.
    saes : sequence or mapping of SAE
        ``saes[L]`` reads the output of block L (see :mod:`mechperm.evaluation.hooks`).
    perms : mapping ``name → perms`` or None
        ``perms[name][t]`` (a sequence indexed by layer, or a mapping keyed by t or (t, u)) is the
        int [F_t] matching of layer t's features into layer u's (u = the next entry of
        ``layers``): ``perm[i] = j``, −1 = dropped. Each name becomes a method (e.g. "folded",
        "unfolded", "identity" with ``torch.arange(F)``).
    tokens : int [N, T]
    layers : sequence of int, optional
        Layers to chain, in order; default every SAE. Pairs are consecutive entries.
    batch_size : int
    attention_mask : [N, T], optional
        1 = real token (default: all ones). Passed to the model.
    token_mask : bool [N, T], optional
        Positions to evaluate and replace (default: real tokens minus the first real token of
        each sequence, BOS; ``exclude_first=False`` keeps it).
    hook : None, str or callable
        Block resolver (:func:`~mechperm.evaluation.hooks.hook_module`).
    baselines : subset of ("layer_drop", "encdec_current", "encdec_previous")
    hybrid_qs : quantiles for ``hybrid@q`` rows (empty: none); they use ``perms[hybrid_perm]``
        (default: the first perms entry) ranked by its ``hybrid_on`` folded MSE.
    custom : mapping ``name → fn(x_t [n, d], x_u [n, d], t, u) -> x̂ [n, d]``, optional
    compute_ce : bool
        False skips the patched forwards (EV and matching scores only).
    reuse_prefix : bool
        In a patched forward, let blocks 0..u return their clean-pass outputs instead of
        recomputing them (:func:`~mechperm.evaluation.hooks.frozen`; same numbers, fewer FLOPs).
        Applies when ``hook`` indexes a block list (None or a list path); needs blocks that run
        once per forward without side effects, as in every HF decoder with ``use_cache=False``.
    device : torch device, optional
        Where SAEs and batches go (default: the model's device).
    progress : bool
        A tqdm bar over batches when tqdm is installed.

    Returns
    -------
    SkipLayerReport
        Rows per (pair, method), matching scores per (pair, perm), per-layer dead fractions.
    """
    dev = _device_of(model, device)
    ids, am, mask = _prepare_tokens(tokens, attention_mask, token_mask, exclude_first)
    ev = Evaluator(saes, perms, layers, baselines, hybrid_qs, hybrid_perm, hybrid_on, custom, dev)
    modules = {L: hook_module(model, L, hook) for L in ev.layers}
    blocks = prefix_blocks(model, hook) if reuse_prefix and compute_ce else None
    # Captured: the evaluated layers' outputs, plus every block up to the last one when reused.
    watch = dict(modules) if blocks is None else {i: blocks[i] for i in range(max(ev.layers) + 1)}
    ce_sum = {k: 0.0 for k in ev.r_sum} if compute_ce else None
    clean_sum, n_pred = 0.0, 0
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer")
    model.eval()
    bar = _progress(-(-ids.shape[0] // batch_size), progress, "skip-layer eval")

    def forward(b_ids: Tensor, b_am: Tensor) -> Tensor:
        return _logits(model(input_ids=b_ids, attention_mask=b_am, use_cache=False))

    with torch.inference_mode():
        for s in range(0, ids.shape[0], batch_size):
            b_ids, b_am, b_m = (x[s : s + batch_size].to(dev) for x in (ids, am, mask))
            store: dict[int, object] = {}
            with capture(watch, store):
                logits = forward(b_ids, b_am)
            pred = b_m[:, :-1] & b_am[:, 1:].bool()
            n_pred += int(pred.sum())
            clean_sum += _ce_sum(logits, b_ids, pred)
            del logits
            xs = {L: hidden_of(store[L])[b_m] for L in ev.layers}
            if blocks is None:
                store.clear()

            def patch(t: int, u: int, name: str, xh: Tensor) -> None:
                prefix = [] if blocks is None else [(blocks[i], store[i]) for i in range(u + 1)]
                with frozen(prefix), replace_output(modules[u], b_m, xh):
                    ce_sum[(t, u, name)] += _ce_sum(forward(b_ids, b_am), b_ids, pred)  # type: ignore[index]

            ev.step(xs, patch if compute_ce else None)
            bar.update(1)
    bar.close()
    clean = clean_sum / n_pred if n_pred else float("nan")
    ce = None if ce_sum is None else {k: (v / n_pred if n_pred else float("nan")) for k, v in ce_sum.items()}
    report = ev.report(ce, clean)
    report.n_predictions, report.n_sequences = n_pred, int(ids.shape[0])
    return report


def evaluate_skip_layers_encoder(
    model: nn.Module,
    saes: SAEStack,
    perms: PermStack | None,
    input_ids: Tensor | np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
    attention_mask: Tensor | np.ndarray | None = None,
    token_mask: Tensor | np.ndarray | None = None,
    exclude_first: bool = True,
    baselines: Sequence[str] = BASELINES,
    hybrid_qs: Sequence[float] = DEFAULT_QS,
    hybrid_perm: str | None = None,
    hybrid_on: Part = "decoder",
    custom: Mapping[str, CustomMethod] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SkipLayerReport:
    """Skip-layer EV (no ΔCE) for an encoder whose SAE of layer L reads ``hidden_states[L]``.

    ``hidden_states`` of ``model(input_ids=, attention_mask=, output_hidden_states=True)``:
    L = 0 is the embedding output, L ≥ 1 the output of encoder layer L − 1 (BERT/MiniLM), so the
    pair (t, u) replaces the output of encoder layer u − 1. There is no loss to measure, so
    nothing is patched: EV compares ``x̂_u`` to the clean ``hidden_states[u]``. ``token_mask``
    should drop special tokens ([CLS], [SEP]; the default drops only the first real token).
    Other parameters and the result: as :func:`evaluate_skip_layers` (every ``ce`` is None).
    """
    dev = _device_of(model, device)
    ids, am, mask = _prepare_tokens(input_ids, attention_mask, token_mask, exclude_first)
    ev = Evaluator(saes, perms, layers, baselines, hybrid_qs, hybrid_perm, hybrid_on, custom, dev)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer")
    model.eval()
    bar = _progress(-(-ids.shape[0] // batch_size), progress, "skip-layer eval")
    with torch.inference_mode():
        for s in range(0, ids.shape[0], batch_size):
            b_ids, b_am, b_m = (x[s : s + batch_size].to(dev) for x in (ids, am, mask))
            hs = model(input_ids=b_ids, attention_mask=b_am, output_hidden_states=True).hidden_states
            if max(ev.layers) >= len(hs):
                raise ValueError(
                    f"layers {ev.layers} exceed the model's {len(hs)} hidden_states entries (0..{len(hs) - 1})"
                )
            ev.step({L: hs[L][b_m] for L in ev.layers}, None)
            bar.update(1)
    bar.close()
    report = ev.report(None, None)
    report.n_sequences = int(ids.shape[0])
    return report
