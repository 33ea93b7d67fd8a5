"""The GPU benchmark's tracing names functions of the package by string: a rename there must
fail here, on a CPU, not on a lent GPU's limited time (session 18: a renamed helper would have
stopped ``bench_match_gpu.py --trace``)."""
from __future__ import annotations

import faulthandler
import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


def _load(name: str, monkeypatch):
    """bench/NAME.py as a module, with bench/conftest.py as its ``conftest`` (tests' own is
    another module of that name)."""
    spec = importlib.util.spec_from_file_location("bench_conftest", BENCH / "conftest.py")
    bench_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_conftest)
    monkeypatch.setitem(sys.modules, "conftest", bench_conftest)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_match_gpu_trace_finds_every_function_it_wraps(monkeypatch) -> None:
    pytest.importorskip("triton")  # the traced GPU modules import it (absent on macOS)
    mod = _load("bench_match_gpu", monkeypatch)
    wrapped = []

    def recording_setattr(owner, name, value):  # restored after the test
        wrapped.append(name)
        monkeypatch.setattr(owner, name, value)

    mod.setattr = recording_setattr  # the module's setattr: found before the builtin
    monkeypatch.setattr(faulthandler, "register", lambda *a, **kw: None)  # keep SIGTERM's default here
    mod._trace_phases()  # getattr of each name: AttributeError if one is gone
    for name in ("assign_exact", "solve_sparse", "_lower_bounds", "merge", "price_rows_topq", "_cosine_kappas",
                 "_exact_rows_topq"):
        assert name in wrapped


@pytest.mark.parametrize("pair", ["sae_like", "stack"])
def test_bench_match_gpu_pairs_dry_run_on_cpu(monkeypatch, pair: str) -> None:
    """bench_match_gpu's run() on the CPU (its dry run) with either pair: certified, the planted
    partners mostly recovered; the stack pair's vectors are match()'s own (folded decoder
    rows of make_stack's two layers) and its truth the stack's."""
    pytest.importorskip("triton")
    monkeypatch.setenv("MECHPERM_BENCH_GPU_ON_CPU", "1")
    mod = _load("bench_match_gpu", monkeypatch)
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    out = mod.run(600, d=48, pair=pair, dense_limit=0)
    assert out["certified"] and out["pair"] == pair and out["F"] == 600
    assert out["recovered"] > 0.5
    if pair == "stack":
        import torch

        from mechperm import match
        from mechperm.synthetic import make_stack

        stack = make_stack(2, d=48, F=600, seed=0)
        A, B, truth = mod.stack_pair(600, 48, device="cpu")
        res = match(*stack.saes, dense_limit=0)
        assert torch.equal(truth, stack.truth[0])
        assert out["objective"] == pytest.approx(res.objective, rel=1e-9)
