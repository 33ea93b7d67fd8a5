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
