"""Run folders: a matched stack on disk, written atomically, resumable pair by pair.

Layout::

    RUN/summary.json              inputs (sources, content hashes), options, versions, per-pair rows
    RUN/pairs/{a}-{b}.safetensors perm, cost, cosine, margin (+ neighbours) of stack positions a→b,
                                  with objective, gap, options, stats and timings in the metadata
    RUN/plots/*.png               cost / cosine histograms, matched fraction, persistence

Every file is written to a temporary name in the same folder and renamed into place, so a run
killed at any moment leaves only whole files; running the same job again skips the pairs whose
file exists with the same inputs and options (the device aside: a run started on a CPU can be
finished on a GPU).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mechperm import __version__
from mechperm.formats.lazy import LazyStack
from mechperm.result import MatchResult
from mechperm.sae import SAE
from mechperm.stack import Pairs, StackMatch, check_stack, match_pairs, resolve_pairs, stack_layers

SUMMARY = "summary.json"
PAIRS = "pairs"
_ARRAYS = ("perm", "cost", "cosine", "margin", "neighbors", "neighbor_costs")


_LEAF_BYTES = 1 << 26  # 64 MiB leaves of the fingerprint's hash tree
FINGERPRINT_PREFIX = "b2tree:"


def _fingerprint_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def sae_fingerprint(sae: SAE) -> str:
    """Content hash of an SAE's tensors, activation and k: ``"b2tree:"`` + 32 hex digits.

    A blake2b tree: each tensor's bytes cut into 64 MiB leaves, the leaves hashed in parallel
    threads (hashlib releases the GIL), their digests hashed in order. Why: one blake2b stream
    runs at 0.7-0.9 GB/s on this project's 2-core CI machine, ~25 s for one 1M-wide Gemma Scope
    layer (19 GB), and a lazy run hashes every layer it reads (the tree: 1.5-1.6 GB/s there). The value does not depend on the thread
    count. Tensors on a GPU are copied to the host a leaf at a time (one leaf per thread in flight).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sae.activation}|{sae.k}|{sae.apply_b_dec_to_input}".encode())

    def leaf(block: torch.Tensor) -> bytes:
        data = block.cpu().contiguous().view(torch.uint8).numpy()  # a view for a CPU tensor: no copy
        return hashlib.blake2b(memoryview(data), digest_size=16).digest()

    with ThreadPoolExecutor(_fingerprint_threads()) as pool:
        for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold):
            if t is None:
                continue
            h.update(str((tuple(t.shape), t.dtype)).encode())
            flat = t.detach().reshape(-1)
            n = max(1, _LEAF_BYTES // flat.element_size())
            for digest in pool.map(leaf, (flat[i : i + n] for i in range(0, flat.numel(), n))):
                h.update(digest)
    return FINGERPRINT_PREFIX + h.hexdigest()


def legacy_fingerprint(sae: SAE) -> str:
    """The content hash of run folders written before the hash tree (a single blake2b stream, 32
    hex digits, no prefix): checked where such a folder is resumed or evaluated."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{sae.activation}|{sae.k}|{sae.apply_b_dec_to_input}".encode())
    for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold):
        if t is not None:
            h.update(str((tuple(t.shape), t.dtype)).encode())
            for block in t.detach().reshape(-1).split(1 << 22):
                h.update(memoryview(block.cpu().contiguous().view(torch.uint8).numpy()))
    return h.hexdigest()


def fingerprint_matches(sae: SAE, stored: str) -> bool:
    """Whether ``stored`` (a summary's hash, either kind) is this SAE's content hash."""
    if stored.startswith(FINGERPRINT_PREFIX):
        return sae_fingerprint(sae) == stored
    return legacy_fingerprint(sae) == stored


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def save_pair(run_dir: str | Path, pair: tuple[int, int], result: MatchResult, key: str) -> Path:
    """Write one pair's result atomically to ``RUN/pairs/{a}-{b}.safetensors``."""
    path = Path(run_dir) / PAIRS / f"{pair[0]}-{pair[1]}.safetensors"
    tensors = {n: getattr(result, n).contiguous().cpu() for n in _ARRAYS if getattr(result, n) is not None}
    meta = {
        "key": key,
        "objective": repr(result.objective),
        "gap": repr(result.gap),
        "certified": json.dumps(result.certified),
        "options": json.dumps(_jsonable(result.options)),
        "stats": json.dumps(_jsonable(result.stats)),
        "timings": json.dumps(_jsonable(result.timings)),
        # provenance, not part of the result: which process of which machine matched it
        "written_by": json.dumps({"host": platform.node(), "pid": os.getpid(), "rank": _distributed()[0]}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_pair(path: str | Path) -> tuple[MatchResult, str]:
    """Read a pair file back: the result and the key (inputs + options) it was computed for."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        result = MatchResult(
            **{n: tensors.get(n) for n in _ARRAYS},
            objective=float(meta["objective"]),
            gap=float(meta["gap"]),
            certified=json.loads(meta["certified"]),
            options=json.loads(meta["options"]),
            stats=json.loads(meta["stats"]),
            timings=json.loads(meta["timings"]),
        )
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a readable mechperm pair file ({exc}); delete it to recompute") from exc
    return result, meta["key"]


# Options that say where a pair is computed, not what: left out of its key, so a run resumes on
# another device (started on a laptop's CPU, finished on a GPU) without recomputing. Every device
# reaches the same certified optimum; where several matchings are optimal (tied costs) they may
# pick different ones, and each pair file's own options say which device made it.
_PLACEMENT = ("device",)


def _key(fingerprints: Sequence[str] | Mapping[int, str], pair: tuple[int, int], options: dict) -> str:
    """The key a pair file is stored under: both SAEs' content hashes and the options that
    shape the result."""
    return _raw_key(fingerprints, pair, {k: v for k, v in options.items() if k not in _PLACEMENT})


def _raw_key(fingerprints: Sequence[str] | Mapping[int, str], pair: tuple[int, int], options: dict) -> str:
    a, b = pair
    blob = json.dumps([fingerprints[a], fingerprints[b], _jsonable(options)], sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _keys_accepted(fingerprints: Sequence[str] | Mapping[int, str], pair: tuple[int, int], options: dict,
                   earlier: Sequence[dict] = ()) -> set[str]:
    """The pair's key, and the keys that folders written before the device left the key gave
    it: the options with the device they were run with (``earlier``: e.g. the folder's summary
    options), or none."""
    shaping = {k: v for k, v in options.items() if k not in _PLACEMENT}
    keys = {_raw_key(fingerprints, pair, shaping), _raw_key(fingerprints, pair, options)}
    for old in earlier:
        keys.update(_raw_key(fingerprints, pair, {**shaping, k: old[k]}) for k in _PLACEMENT if k in old)
    return keys


def _summary_options(run_dir: Path) -> dict:
    """The options of the run folder's summary (``{}`` where there is none or it is unreadable)."""
    try:
        options = json.loads((run_dir / SUMMARY).read_text()).get("options", {})
        return options if isinstance(options, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _versions() -> dict[str, str]:
    return {"mechperm": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _describe(sae: SAE, fingerprint: str) -> dict[str, Any]:
    """One SAE's entry of ``summary.json``'s ``inputs`` (position and layer added by the caller)."""
    return {"source": sae.info.source, "format": sae.info.format, "features": sae.d_sae, "d": sae.d_in,
            "hash": fingerprint}


def _inputs(saes: Sequence[SAE], layers: Sequence[int], described: dict[int, dict[str, Any]]) -> list[dict]:
    """``summary.json``'s ``inputs``: positions not read yet (a lazy stack's, while the run goes
    on) have their layer and source but no features, d or hash."""
    out = []
    for p, layer in enumerate(layers):
        entry = described.get(p)
        if entry is None:
            source = str(saes.entries[p].path) if isinstance(saes, LazyStack) else saes[p].info.source
            entry = {"source": source, "format": None, "features": None, "d": None, "hash": None}
        out.append({"position": p, "layer": layer, **entry})
    return out


def write_summary(run_dir: str | Path, stack: StackMatch, inputs: list[dict]) -> Path:
    """(Re)write ``summary.json`` atomically from the pairs done so far."""
    summary = {
        "mechperm_run": 1,
        "inputs": inputs,
        "options": _jsonable(stack.options),
        "versions": _versions(),
        "pairs": _jsonable(stack.summary()),
    }
    path = Path(run_dir) / SUMMARY
    _atomic_write_bytes(path, (json.dumps(summary, indent=2) + "\n").encode())
    return path


def _pair_files(run_dir: Path, n: int) -> dict[tuple[int, int], tuple[MatchResult, str]]:
    """The readable pair files of a run folder for a stack of n positions, with their keys."""
    found: dict[tuple[int, int], tuple[MatchResult, str]] = {}
    for path in sorted((run_dir / PAIRS).glob("*.safetensors")):
        try:
            pair = tuple(int(x) for x in path.stem.split("-"))
            result, key = load_pair(path)
        except ValueError:
            continue  # not ours or unreadable: recompute
        if len(pair) == 2 and max(pair) < n:
            found[pair] = (result, key)  # type: ignore[index]
    return found


def _has_legacy_hashes(run_dir: Path) -> bool:
    """Whether the run folder's summary holds content hashes of the kind before the hash tree."""
    try:
        inputs = json.loads((run_dir / SUMMARY).read_text())["inputs"]
        return any(isinstance(i.get("hash"), str) and not i["hash"].startswith(FINGERPRINT_PREFIX) for i in inputs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _distributed() -> tuple[int, int]:
    """(rank, world size) of torch.distributed's default group; (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(todo: Sequence[tuple[int, int]], rank: int, world: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s part of the pairs: a contiguous run, so that consecutive pairs share an SAE
    (a lazy stack reads it once) and the parts differ in length by at most one."""
    n = len(todo)
    return list(todo[rank * n // world : (rank + 1) * n // world])


def run_stack(
    saes: Sequence[SAE],
    run_dir: str | Path,
    pairs: Pairs = "adjacent",
    *,
    progress: bool = True,
    plots: bool = True,
    matcher: Callable[..., MatchResult] | None = None,
    **match_options: Any,
) -> StackMatch:
    """Match a stack into a run folder; pairs already there (same inputs and options, on any
    device) are kept.

    Each finished pair is saved atomically before the next starts, and ``summary.json`` is
    rewritten after it, so an interrupted run resumes where it stopped. ``saes`` may be a
    :class:`~mechperm.formats.lazy.LazyStack` (``load_stack(..., lazy=True)``): each SAE is then
    read when a pair first needs it (its content hash too), so a run over adjacent pairs reads
    every file once and holds two SAEs at a time.

    Under ``torch.distributed`` (``torchrun``; the default group initialised), each rank matches a
    contiguous share of the pairs (:func:`share`) into the same run folder, which must be on a
    file system every rank sees; the ranks then exchange what they read, every rank returns the
    whole :class:`StackMatch`, and rank 0 writes the summary and the plots.

    ``matcher``: called as ``matcher(sae_a, sae_b, **match_options)`` for each pair to match
    (default :func:`~mechperm.match`); ``match_options`` alone key the stored pairs.
    """
    check_stack(saes)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _distributed()
    n = len(saes)
    layers = stack_layers(saes)
    todo = resolve_pairs(n, pairs)
    described: dict[int, dict[str, Any]] = {}  # position -> its summary entry, hash included

    def fingerprint(p: int) -> str:
        if p not in described:  # hashed when first needed: for a lazy stack, when a pair reads it
            sae = saes[p]
            described[p] = _describe(sae, sae_fingerprint(sae))
        return described[p]["hash"]

    def key(pair: tuple[int, int]) -> str:
        return _key({p: fingerprint(p) for p in pair}, pair, match_options)

    found = _pair_files(run_dir, n)
    legacy: dict[int, str] = {}  # the old content hashes, only for a folder written before the hash tree
    old_folder = _has_legacy_hashes(run_dir)
    earlier = [_summary_options(run_dir)]  # the device an earlier run keyed its pairs with

    def older_keys(pair: tuple[int, int]) -> set[str]:
        keys = _keys_accepted({p: fingerprint(p) for p in pair}, pair, match_options, earlier)
        if old_folder:
            for p in pair:
                if p not in legacy:
                    legacy[p] = legacy_fingerprint(saes[p])
            keys |= _keys_accepted(legacy, pair, match_options, earlier)
        return keys
    partial = StackMatch(layers=layers, results={}, sizes=[], options=dict(match_options))  # for summary() only

    def stored(pair: tuple[int, int]) -> MatchResult | None:
        if pair not in found:
            return None
        result, pair_key = found[pair]
        if pair_key != key(pair):
            if pair_key not in older_keys(pair):
                return None
            save_pair(run_dir, pair, result, key(pair))  # the same result, under today's key
        partial.results[pair] = result
        return result

    def on_result(pair: tuple[int, int], result: MatchResult) -> None:
        save_pair(run_dir, pair, result, key(pair))
        partial.results[pair] = result
        if rank == 0:  # one writer: each rank knows only its own pairs until the end
            write_summary(run_dir, partial, _inputs(saes, layers, described))

    # Pairs without a file are shared out apart from those with one (most of which only need their
    # key checked), so that a run resumed with other ranks than it started with stays balanced.
    pending, present = [p for p in todo if p not in found], [p for p in todo if p in found]
    mine = set(share(pending, rank, world)) | set(share(present, rank, world))
    results = match_pairs(saes, [p for p in todo if p in mine], cached=stored, on_result=on_result,
                          progress=progress and rank == 0, matcher=matcher, **match_options)
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, described)  # also the barrier: every rank's pairs are on disk
        for part in gathered:
            described.update(part)
        found = _pair_files(run_dir, n)
    for p in range(n):  # positions no pair needed (explicit pairs): read for the summary
        fingerprint(p)
    fingerprints = [described[p]["hash"] for p in range(n)]
    for pair, (result, pair_key) in found.items():  # the other ranks' pairs; earlier runs' on the same inputs
        if pair not in results and pair_key in _keys_accepted(fingerprints, pair, match_options, earlier):
            results[pair] = result
    missing = [pair for pair in todo if pair not in results]
    if missing:
        raise ValueError(f"rank {rank} cannot read the pairs {missing} the other ranks wrote to {run_dir / PAIRS}; "
                           "a distributed run needs a run folder on a file system every rank sees")
    stack = StackMatch(layers=layers, results=results, sizes=[described[p]["features"] for p in range(n)],
                       options=dict(match_options))
    if rank == 0:
        write_summary(run_dir, stack, _inputs(saes, layers, described))
        if plots:
            from mechperm.plots import plot_run

            plot_run(stack, run_dir / "plots")
    if world > 1:
        dist.barrier()  # the summary is written before any rank returns
    return stack


def load_run(run_dir: str | Path) -> StackMatch:
    """Read a run folder back into a :class:`StackMatch`."""
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a mechperm run folder (no {SUMMARY})")
    try:
        summary = json.loads(path.read_text())
        inputs = summary["inputs"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{path} is not a valid mechperm summary ({exc})") from exc
    fingerprints = [i["hash"] for i in inputs]
    options = summary.get("options", {})
    results = {}
    for pair_path in sorted((run_dir / PAIRS).glob("*.safetensors")):
        a, b = (int(x) for x in pair_path.stem.split("-"))
        result, key = load_pair(pair_path)
        if key in _keys_accepted(fingerprints, (a, b), options):  # skip files left by a run with other inputs
            results[(a, b)] = result
    return StackMatch(layers=[i["layer"] for i in inputs], results=results,
                      sizes=[i["features"] for i in inputs], options=options)
