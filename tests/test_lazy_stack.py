"""Lazy stacks: each SAE read when a pair needs it, two held at a time, runs identical to eager ones."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mechperm import load_run, run_stack
from mechperm.formats import load_stack
from mechperm.formats.lazy import LazyStack, StackEntry
from mechperm.synthetic import make_stack


def write_stack(root: Path, n: int = 5, F: int = 96, d: int = 24, seed: int = 0) -> list:
    saes = make_stack(n, d=d, F=F, seed=seed).saes
    for t, sae in enumerate(saes):
        (root / f"layer_{t}").mkdir(parents=True)
        np.savez(root / f"layer_{t}" / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())
    return saes


def test_nothing_is_read_until_indexed(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", n=4)
    stack = load_stack(tmp_path / "s", lazy=True)
    assert isinstance(stack, LazyStack) and len(stack) == 4
    assert stack.layers == [0, 1, 2, 3] and stack.loads == 0 and stack.meta(2) is None
    sae = stack[2]
    assert sae.info.layer == 2 and stack.loads == 1 and stack.meta(2).d_sae == 96
    assert stack[-2] is sae and stack.loads == 1  # held: not read again
    stack[0], stack[1]
    assert stack.max_held == 2 and stack.loads == 3
    assert stack[2] is not sae and stack.loads == 4  # evicted, read again
    with pytest.raises(IndexError, match="outside a stack of 4"):
        stack[4]
    with pytest.raises(TypeError, match="integers"):
        stack["1"]  # type: ignore[index]
    assert [s.info.layer for s in stack] == [0, 1, 2, 3] and stack.max_held == 2


def test_lazy_run_reads_each_file_once_and_equals_the_eager_run(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", n=5)
    lazy = load_stack(tmp_path / "s", lazy=True)
    got = run_stack(lazy, tmp_path / "lazy", progress=False, plots=False)
    assert lazy.loads == 5 and lazy.max_held == 2  # hashed and matched from the same read
    want = run_stack(load_stack(tmp_path / "s"), tmp_path / "eager", progress=False, plots=False)
    assert got.layers == want.layers and got.sizes == want.sizes == [96] * 5
    for pair in want.results:
        assert torch.equal(got.results[pair].perm, want.results[pair].perm)
        assert got.results[pair].objective == want.results[pair].objective
    lazy_inputs = json.loads((tmp_path / "lazy" / "summary.json").read_text())["inputs"]
    eager_inputs = json.loads((tmp_path / "eager" / "summary.json").read_text())["inputs"]
    assert lazy_inputs == eager_inputs and all(i["hash"] and i["features"] == 96 for i in lazy_inputs)


def test_lazy_resume_rematches_only_what_is_missing(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", n=5)
    run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False)
    (tmp_path / "run" / "pairs" / "2-3.safetensors").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "pairs").iterdir()}
    again = load_stack(tmp_path / "s", lazy=True)
    stack = run_stack(again, tmp_path / "run", progress=False, plots=False)
    assert sorted(stack.results) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert again.loads == 5 and again.max_held == 2
    now = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "pairs").iterdir()}
    assert {k: v for k, v in now.items() if k != "2-3.safetensors"} == stamps and "2-3.safetensors" in now
    assert sorted(load_run(tmp_path / "run").results) == sorted(stack.results)


def test_a_layer_of_another_width_fails_when_read_after_earlier_pairs_are_saved(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", n=4)
    odd = make_stack(1, d=20, F=96, seed=3).saes[0]
    np.savez(tmp_path / "s" / "layer_3" / "params.npz", W_enc=odd.W_enc.numpy(), b_enc=odd.b_enc.numpy(),
             W_dec=odd.W_dec.numpy(), b_dec=odd.b_dec.numpy(), threshold=odd.threshold.numpy())
    with pytest.raises(ValueError, match=r"layer 3 \(.*layer_3.*\) has d=20, but layer 0 \(.*\) has d=24"):
        run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False)
    assert sorted(p.name for p in (tmp_path / "run" / "pairs").iterdir()) == ["0-1.safetensors", "1-2.safetensors"]
    with pytest.raises(ValueError, match=r"layer 3 .* has d=20, but layer 0"):
        load_stack(tmp_path / "s")  # the eager stack says the same up front


def test_explicit_pairs_and_all_pairs_on_a_lazy_stack(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", n=4)
    stack = run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", pairs=[(0, 2)],
                      progress=False, plots=False)
    assert list(stack.results) == [(0, 2)] and stack.sizes == [96] * 4
    lazy = load_stack(tmp_path / "s", lazy=True)
    every = run_stack(lazy, tmp_path / "run", pairs="all", progress=False, plots=False)
    assert len(every.results) == 6 and lazy.max_held == 2


def test_keep_is_validated_and_entries_are_kept() -> None:
    with pytest.raises(ValueError, match="keep=0"):
        LazyStack([], lambda e: None, keep=0)  # type: ignore[arg-type, return-value]
    stack = LazyStack([StackEntry(3, Path("a")), StackEntry(7, Path("b"))], lambda e: None)  # type: ignore[arg-type, return-value]
    assert stack.layers == [3, 7] and "keep=2" in repr(stack)


def test_nothing_else_keeps_the_sae_a_lazy_run_let_go(tmp_path: Path) -> None:
    """The run itself (results, hashes, summaries) must hold no reference to an evicted SAE:
    otherwise a 1M-wide stack would pile up in memory however few the stack holds."""
    import gc
    import weakref

    write_stack(tmp_path / "s", n=5)
    stack = load_stack(tmp_path / "s", lazy=True)
    read, alive_at_read = [], []
    inner = stack._load

    def load(entry):  # type: ignore[no-untyped-def]
        gc.collect()
        alive_at_read.append(sum(r() is not None for r in read))
        sae = inner(entry)
        read.append(weakref.ref(sae))
        return sae

    stack._load = load
    run_stack(stack, tmp_path / "run", progress=False, plots=False)
    assert len(read) == 5 and max(alive_at_read) <= 1  # one held (the pair's first) when the next is read


def test_any_access_order_gives_the_eager_stack_holding_at_most_keep() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    saes = make_stack(5, d=8, F=16, seed=0).saes

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(-5, 4), max_size=30), st.integers(1, 4))
    def check(order: list[int], keep: int) -> None:
        reads: list[int] = []

        def load(entry: StackEntry):  # type: ignore[no-untyped-def]
            reads.append(entry.layer)
            return saes[entry.layer]

        stack = LazyStack([StackEntry(L, Path(f"l{L}")) for L in range(5)], load, keep=keep)
        recent: list[int] = []  # an LRU of our own, to predict every read
        for p in order:
            p %= 5
            before = len(reads)
            assert stack[p] is saes[p]
            if p in recent:  # held: not read again
                assert len(reads) == before
                recent.remove(p)
            else:  # read once, the least recently used one dropped
                assert reads[before:] == [p]
                recent = recent[-(keep - 1):] if keep > 1 else []
            recent.append(p)
            assert stack.max_held <= keep and stack.meta(p).d_sae == 16
        assert stack.loads == len(reads)

    check()


def test_fingerprint_is_a_tree_of_leaves_whatever_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import mechperm.run as run

    sae = make_stack(1, d=8, F=40, seed=1).saes[0]
    monkeypatch.setattr(run, "_LEAF_BYTES", 64)  # many leaves: 16 float32 each

    def by_hand(s) -> str:  # type: ignore[no-untyped-def]
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{s.activation}|{s.k}|{s.apply_b_dec_to_input}".encode())
        for t in (s.W_enc, s.b_enc, s.W_dec, s.b_dec, s.threshold):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            raw = t.contiguous().view(torch.uint8).numpy().tobytes()
            for i in range(0, len(raw), 64):
                h.update(hashlib.blake2b(raw[i : i + 64], digest_size=16).digest())
        return "b2tree:" + h.hexdigest()

    want = by_hand(sae)
    for threads in (1, 3, 8):
        monkeypatch.setattr(run, "_fingerprint_threads", lambda: threads)
        assert run.sae_fingerprint(sae) == want
    other = make_stack(1, d=8, F=40, seed=2).saes[0]
    assert run.sae_fingerprint(other) != want
    assert run.fingerprint_matches(sae, want) and not run.fingerprint_matches(other, want)
    assert run.fingerprint_matches(sae, run.legacy_fingerprint(sae))  # folders of the old kind
    half = sae.to(dtype=torch.bfloat16)
    assert run.sae_fingerprint(half) == by_hand(half) != want


def test_a_folder_of_the_old_hash_resumes_without_matching_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import mechperm.run as run

    write_stack(tmp_path / "s", n=4)
    with monkeypatch.context() as m:  # a run folder as the code before the hash tree wrote it
        m.setattr(run, "sae_fingerprint", run.legacy_fingerprint)
        run_stack(load_stack(tmp_path / "s"), tmp_path / "run", progress=False, plots=False)
    old = json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"]
    assert all(len(i["hash"]) == 32 for i in old)
    module = importlib.import_module("mechperm.match")
    calls = []
    monkeypatch.setattr(module, "match", lambda *a, **k: calls.append(1))  # must not be called
    stack = run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False)
    assert not calls and sorted(stack.results) == [(0, 1), (1, 2), (2, 3)]
    new = json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"]
    assert all(i["hash"].startswith("b2tree:") for i in new)
    assert sorted(load_run(tmp_path / "run").results) == [(0, 1), (1, 2), (2, 3)]  # the files re-keyed


def _counting_match(monkeypatch: pytest.MonkeyPatch) -> list:
    """Replace match() by a counting wrapper; returns the list of (device) it was called with."""
    import importlib

    module = importlib.import_module("mechperm.match")
    real, calls = module.match, []
    monkeypatch.setattr(module, "match", lambda *a, **k: calls.append(k.get("device")) or real(*a, **k))
    return calls


def test_a_run_resumes_on_another_device_without_matching_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device says where a pair is computed, not what: a run started with one device and
    resumed with another (here "cpu" and None, both the CPU) keeps its pairs; an option that
    shapes the result (fold) still re-matches every pair."""
    write_stack(tmp_path / "s", n=4)
    run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False, device="cpu")
    calls = _counting_match(monkeypatch)
    stack = run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False)
    assert calls == [] and sorted(stack.results) == [(0, 1), (1, 2), (2, 3)]
    assert sorted(load_run(tmp_path / "run").results) == [(0, 1), (1, 2), (2, 3)]
    run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False, device="cpu",
              fold=False)
    assert calls == ["cpu"] * 3


def test_a_folder_keyed_with_its_device_is_read_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folders written while the device was part of each pair's key: load_run reads them, and a
    resumed run (on any device) keeps their pairs and re-keys the files."""
    import mechperm.run as run

    write_stack(tmp_path / "s", n=4)
    with monkeypatch.context() as m:  # the keys as the code before wrote them: every option, the device too
        m.setattr(run, "_key", run._raw_key)
        run_stack(load_stack(tmp_path / "s"), tmp_path / "run", progress=False, plots=False, device="cpu")
    pairs = [(0, 1), (1, 2), (2, 3)]
    assert sorted(load_run(tmp_path / "run").results) == pairs
    calls = _counting_match(monkeypatch)
    stack = run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "run", progress=False, plots=False)
    assert calls == [] and sorted(stack.results) == pairs
    fingerprints = [i["hash"] for i in json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"]]
    for a, b in pairs:  # re-keyed: today's key, without the device
        _, key = run.load_pair(tmp_path / "run" / "pairs" / f"{a}-{b}.safetensors")
        assert key == run._key(fingerprints, (a, b), {}) == run._key(fingerprints, (a, b), {"device": "cuda"})
    assert sorted(load_run(tmp_path / "run").results) == pairs
