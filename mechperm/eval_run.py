"""``mechperm eval``: the skip-layer evaluation of a run folder, written back into it.

Layout it adds::

    RUN/eval/metrics.json            the SkipLayerReport (to_dict) + options, model, data, perm sources
    RUN/eval/ev_by_layer.png         EV of layer u's state per pair, methods and baselines side by side
    RUN/eval/delta_ce_by_layer.png   ΔCE per pair (causal LMs only)
    RUN/eval/pairs_{a}-{b}.jsonl     the "folded" matches of layers a→b for a semantic review

The SAEs are re-read from the sources ``summary.json`` names and must hash as they did when the run
was matched, so the numbers always belong to the perms on disk.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mechperm import __version__
from mechperm.evaluation.methods import BASELINES
from mechperm.run import SUMMARY, _atomic_write_bytes, _jsonable, fingerprint_matches, load_run
from mechperm.sae import SAE
from mechperm.stack import StackMatch

METHODS = ("folded", "unfolded", "identity")
HOOK_CHECK = "hook_identity"
"""Custom method x̂_u = x_u: patching a layer with its own clean state must leave the loss unchanged."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "merges.txt")
TEXT_SEQ_LEN = 128
_PLOTS = ("ev_by_layer.png", "delta_ce_by_layer.png")


@dataclass
class EvalData:
    """Token ids to evaluate and where they came from."""

    ids: Tensor
    """int64 [N, T]."""
    attention_mask: Tensor | None
    """[N, T], 1 = real token (None: all real)."""
    token_mask: Tensor | None
    """bool [N, T] positions to evaluate (None: real tokens minus the first of each sequence)."""
    source: dict[str, Any]
    """What metrics.json records: kind ("tokens" / "text"), path, sequences, length."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------------- run and SAEs
def _sub_stack(stack: StackMatch, layers: Sequence[int], where: Path) -> tuple[StackMatch, list[int]]:
    """The part of a run over ``layers`` (consecutive layers of the run), re-indexed from 0, and
    the run positions it keeps."""
    wanted = sorted(set(layers))
    absent = [L for L in wanted if L not in stack.layers]
    if absent:
        raise ValueError(f"{where} matched layers {stack.layers}; it has no layers {absent}")
    pos = [stack.layers.index(L) for L in wanted]
    if len(pos) < 2 or pos != list(range(pos[0], pos[0] + len(pos))):
        raise ValueError(f"--layers {wanted}: pick two or more consecutive layers of the run {stack.layers}, "
                         "so that each evaluated pair is one the run matched")
    results = {(a - pos[0], b - pos[0]): r for (a, b), r in stack.results.items() if a in pos and b in pos}
    return StackMatch(layers=wanted, results=results, sizes=[stack.sizes[p] for p in pos],
                      options=stack.options), pos


def load_run_saes(run_dir: str | Path, layers: Sequence[int] | None = None) -> tuple[StackMatch, list[SAE]]:
    """The run (or its part over ``layers``) and its SAEs, re-read from ``summary.json``'s
    ``inputs[].source``, hashes checked; only the chosen layers' SAEs are read."""
    from mechperm.formats import load_sae

    run_dir = Path(run_dir)
    stack = load_run(run_dir)
    inputs = json.loads((run_dir / SUMMARY).read_text())["inputs"]
    if layers is not None:
        stack, kept = _sub_stack(stack, layers, run_dir)
        inputs = [inputs[p] for p in kept]
    saes = []
    for item in inputs:
        src, layer = item.get("source"), item["layer"]
        if not src:
            raise ValueError(f"{run_dir / SUMMARY}: layer {layer} has no source path (an in-memory stack?); "
                             "eval needs SAEs on disk — match them with `mechperm match STACK --out RUN`")
        if item.get("hash") is None:  # a lazy run stopped before a pair read this layer
            raise ValueError(f"the run stopped before it read layer {layer}; finish it with the same "
                             "`mechperm match ... --out RUN` command (it resumes), or pass --layers")
        try:
            sae = load_sae(src, format=item.get("format"))
        except FileNotFoundError:
            raise FileNotFoundError(f"the SAE of layer {layer} ({src}) is gone; restore it or rerun "
                                    "`mechperm match` on the SAEs you have") from None
        except ValueError as exc:
            raise ValueError(f"the SAE of layer {layer} ({src}) no longer loads: {_first_line(exc)}") from None
        if not fingerprint_matches(sae, item["hash"]):
            raise ValueError(f"the SAE of layer {layer} ({src}) changed since the run was matched (content hash "
                             f"differs); rerun `mechperm match` on the current files")
        sae.info = replace(sae.info, layer=layer)  # the run's layer numbering, whatever the path says
        saes.append(sae)
    return stack, saes


def method_perms(
    stack: StackMatch, saes: list[SAE], device: str | None
) -> tuple[dict[str, dict[int, Tensor]], dict[str, str]]:
    """Per method, ``{layer t: perm [F_t]}`` of every adjacent pair, and where each came from.

    "folded" is the run's own match when the run was folded (and not ``mode="identity"``), else
    ``match(fold=True)``; "unfolded" is the run's when it was an unfolded bijective match, else
    ``match(fold=False)``; computed matches use the run's ``on`` / ``metric``, bijective.
    """
    from mechperm.match import match

    opts = stack.options
    run_fold, run_mode = bool(opts.get("fold", True)), opts.get("mode", "bijective")
    common = dict(on=opts.get("on", "decoder"), metric=opts.get("metric", "mse"),
                  candidates_k=int(opts.get("candidates_k", 32)), device=device)
    reuse = {"folded": run_fold and run_mode != "identity",
             "unfolded": not run_fold and run_mode == "bijective"}
    missing = [(a, a + 1) for a in range(len(saes) - 1) if (a, a + 1) not in stack.results]
    if missing and any(reuse.values()):
        raise ValueError(f"the run has no match for stack positions {missing}; finish it with the same "
                         "`mechperm match ... --out RUN` command (it resumes)")
    perms: dict[str, dict[int, Tensor]] = {m: {} for m in METHODS}
    sources = {"identity": "arange(F)"}
    desc = f"on={common['on']}, metric={common['metric']}, bijective"
    for name, fold in (("folded", True), ("unfolded", False)):
        if reuse[name]:
            sources[name] = f"run ({_jsonable(opts)})"
        else:
            sources[name] = f"match(fold={fold}, {desc})"
    for a in range(len(saes) - 1):
        t = stack.layers[a]
        for name, fold in (("folded", True), ("unfolded", False)):
            if reuse[name]:
                perms[name][t] = stack.results[(a, a + 1)].perm
            else:
                perms[name][t] = match(saes[a], saes[a + 1], fold=fold, **common).perm
        ident = torch.arange(saes[a].d_sae)
        ident[ident >= saes[a + 1].d_sae] = -1
        perms["identity"][t] = ident
    return perms, sources


# ---------------------------------------------------------------------- model and data
def check_model_folder(path: str | Path) -> Path:
    """The local model folder, or a one-line error (the hub is never asked)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {path}: no such folder (expected a local Hugging Face model folder "
                                "with config.json)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {path} has no config.json; expected a folder written by save_pretrained")
    return folder


def load_model(path: str | Path, encoder: bool, device: str, progress: bool = True) -> torch.nn.Module:
    """``AutoModelForCausalLM`` (or ``AutoModel`` for ``encoder``) from a local folder, float32, eval mode."""
    import transformers

    if not progress:
        transformers.utils.logging.disable_progress_bar()

    folder = check_model_folder(path)
    cls = transformers.AutoModel if encoder else transformers.AutoModelForCausalLM
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        hint = "" if encoder else " (an encoder? pass --encoder)"
        raise ValueError(f"--model {path}: cannot load a {cls.__name__}{hint}: {_first_line(exc)}") from None
    return model.to(device).eval()


def load_tokens(path: str | Path, max_sequences: int | None, seq_len: int | None) -> EvalData:
    """Int token ids ``[N, T]`` from a ``.npy`` file, first ``max_sequences`` rows, ``seq_len`` columns."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--tokens {path}: no such file")
    try:
        arr = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"--tokens {path} is not a readable .npy array ({_first_line(exc)})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        what = f"shape {arr.shape}, dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"--tokens {path} holds {what}; expected integer token ids [N, T]")
    arr = arr[:max_sequences, :seq_len]
    if arr.size == 0:
        raise ValueError(f"--tokens {path}: no tokens left (array {arr.shape} after --max-sequences/--seq-len)")
    if arr.min() < 0:
        raise ValueError(f"--tokens {path} holds negative ids (min {arr.min()}); expected token ids ≥ 0")
    src = {"kind": "tokens", "path": str(file.resolve()), "n_sequences": int(arr.shape[0]),
           "seq_len": int(arr.shape[1])}
    return EvalData(torch.from_numpy(arr.astype(np.int64)), None, None, src)


def load_text(path: str | Path, model_path: str | Path, max_sequences: int | None, seq_len: int | None) -> EvalData:
    """Non-empty lines of ``path`` tokenised with the model folder's tokenizer (padded, truncated).

    Evaluated positions: real tokens without the first of each sequence and without special
    tokens ([CLS], [SEP], BOS, EOS).
    """
    import transformers

    from mechperm.evaluation.hooks import token_mask

    file, folder = Path(path).expanduser(), Path(model_path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--text {path}: no such file")
    if not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        raise ValueError(f"--model {model_path} has no tokenizer ({', '.join(_TOKENIZER_FILES)} all absent); "
                         "tokenise the text yourself and pass --tokens FILE.npy")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ValueError(f"--model {model_path}: its tokenizer does not load ({_first_line(exc)}); "
                         "pass --tokens FILE.npy instead") from None
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    lines = lines[:max_sequences]
    if not lines:
        raise ValueError(f"--text {path} has no non-empty lines")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
        if tok.pad_token is None:
            raise ValueError(f"--model {model_path}: the tokenizer has no pad, EOS or UNK token to pad with")
    tok.padding_side = "right"
    length = seq_len or TEXT_SEQ_LEN
    enc = tok(lines, padding=True, truncation=True, max_length=length, return_tensors="pt",
              return_special_tokens_mask=True)
    am = enc["attention_mask"]
    mask = token_mask(am, exclude_first=True) & ~enc["special_tokens_mask"].bool()
    src = {"kind": "text", "path": str(file.resolve()), "n_sequences": len(lines),
           "seq_len": int(enc["input_ids"].shape[1]), "max_length": length, "tokenizer": type(tok).__name__}
    return EvalData(enc["input_ids"].long(), am, mask, src)


# ---------------------------------------------------------------------- the evaluation
def evaluate_run(
    run_dir: str | Path,
    model_path: str | Path,
    *,
    tokens: str | Path | None = None,
    text: str | Path | None = None,
    max_sequences: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 16,
    device: str | None = None,
    encoder: bool = False,
    hook: str | None = None,
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder's matches on a model; write ``RUN/eval/`` and return metrics.json's dict.

    ``layers``: consecutive layers of the run to evaluate (default all); only their SAEs are read
    and moved to the device (a run of wide SAEs may not fit there whole)."""
    from mechperm.evaluate import evaluate_skip_layers, evaluate_skip_layers_encoder, export_pairs_jsonl, pair_metrics
    from mechperm.plots import plot_eval

    if (tokens is None) == (text is None):
        raise ValueError("pass exactly one of --tokens FILE.npy and --text FILE")
    for name, v in (("--max-sequences", max_sequences), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise ValueError(f"{name} {v}: expected a positive integer")
    if encoder and hook:
        raise ValueError("--hook applies to causal LMs; with --encoder the SAE of layer L reads hidden_states[L]")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    # cheap checks first: a typo in a path must not wait for the matches of a large stack
    stack, saes = load_run_saes(run_dir, layers)
    check_model_folder(model_path)
    data = load_tokens(tokens, max_sequences, seq_len) if tokens is not None else \
        load_text(text, model_path, max_sequences, seq_len)
    model = load_model(model_path, encoder, device, progress)
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and int(data.ids.max()) >= vocab:
        raise ValueError(f"token id {int(data.ids.max())} is out of range for the model's vocabulary of {vocab}; "
                         "were these tokens made with another tokenizer?")
    perms, sources = method_perms(stack, saes, device)
    layer_saes = {s.info.layer: s for s in saes}
    kw = dict(layers=stack.layers, batch_size=batch_size, attention_mask=data.attention_mask,
              token_mask=data.token_mask, device=device, progress=progress)
    if encoder:
        report = evaluate_skip_layers_encoder(model, layer_saes, perms, data.ids, **kw)
    else:
        report = evaluate_skip_layers(model, layer_saes, perms, data.ids, hook=hook,
                                      custom={HOOK_CHECK: lambda x_t, x_u, t, u: x_u}, **kw)
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for a in range(len(saes) - 1):
        t, u = stack.layers[a], stack.layers[a + 1]
        p = perms["folded"][t]
        path = out / f"pairs_{t}-{u}.jsonl"
        export_pairs_jsonl(path, saes[a], saes[a + 1], p, pair_metrics(saes[a], saes[a + 1], p))
        written.append(path.name)
    result: dict[str, Any] = report.to_dict()
    check = [r for r in report.rows if r.method == HOOK_CHECK]
    result.update(
        run=str(run_dir.resolve()),
        model=str(Path(model_path).expanduser().resolve()),
        model_kind="encoder" if encoder else "causal_lm",
        data=data.source,
        options=dict(max_sequences=max_sequences, seq_len=seq_len, batch_size=batch_size, device=device,
                     encoder=encoder, hook=hook, layers=None if layers is None else list(stack.layers)),
        layers=list(stack.layers),
        methods=list(METHODS),
        baselines=list(BASELINES),
        perm_sources=sources,
        hook_check=None if not check else {
            "method": HOOK_CHECK, "what": "layer u patched with its own clean state; ΔCE must be ~0",
            "max_abs_delta_ce": max(abs(r.delta_ce) for r in check if r.delta_ce is not None),
            "min_ev": min(r.ev for r in check)},
        match_options=_jsonable(stack.options),
        versions={"mechperm": __version__, "torch": torch.__version__},
        seconds=time.perf_counter() - t0,
    )
    written += [p.name for p in plot_eval(result, out)]
    result["files"] = written
    for stale in [*out.glob("pairs_*.jsonl"), *(out / n for n in _PLOTS)]:
        if stale.name not in written:  # left by an earlier eval of this run (other layers, an LM)
            stale.unlink(missing_ok=True)
    _atomic_write_bytes(out / "metrics.json", (json.dumps(_jsonable(result), indent=1) + "\n").encode())
    return result


def format_table(result: dict[str, Any]) -> str:
    """Per pair, EV (and ΔCE for causal LMs) of each method and baseline."""
    names = [*result["methods"], *result["baselines"]]
    by = {(r["layer_from"], r["layer_to"], r["method"]): r for r in result["rows"]}
    pairs = list(dict.fromkeys((r["layer_from"], r["layer_to"]) for r in result["rows"]))
    metrics = ["ev"] if result["model_kind"] == "encoder" else ["ev", "delta_ce"]

    def cell(v: float | None) -> str:
        return f"{'–' if v is None else f'{v:.3f}':>16}"

    lines = []
    hybrids = list(dict.fromkeys(r["method"] for r in result["rows"] if r["method"].startswith("hybrid@")))
    for key, title in (("ev", "EV of the replaced layer (1 = perfect)"), ("delta_ce", "ΔCE, nats/token (0 = perfect)")):
        if key not in metrics:
            continue
        lines += [title, f"{'pair':>6} " + "".join(f"{n:>16}" for n in names)]
        for t, u in pairs:
            lines.append(f"{t:>2}→{u:<3} " + "".join(cell(by[(t, u, n)][key]) for n in names))
    if hybrids:
        what = " / ".join("EV" if k == "ev" else "ΔCE" for k in metrics)
        lines += [f"hybrids by {result['hybrid_perm']} match MSE quantile q ({what}; q = 0 is encdec_current)",
                  f"{'pair':>6} " + "".join(f"{n:>16}" for n in hybrids)]
        for t, u in pairs:
            cells = [" / ".join("–" if by[(t, u, n)][k] is None else f"{by[(t, u, n)][k]:.3f}" for k in metrics)
                     for n in hybrids]
            lines.append(f"{t:>2}→{u:<3} " + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)
