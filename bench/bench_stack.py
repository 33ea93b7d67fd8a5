"""Whole-stack runs: peak memory and time of ``run_stack`` on a stack read eagerly vs lazily.

A stack of ``n`` synthetic JumpReLU SAEs (``make_stack(n, d, F)``) is written in the Gemma Scope
layout (``layer_{L}/params.npz``, float32); each provider matches its adjacent pairs into a fresh
run folder in a fresh process and reports wall time and the process's peak resident set
(``VmHWM``, Linux):

- ``eager``: ``run_stack(load_stack(path), ...)``: every SAE read first, all held;
- ``lazy``: ``run_stack(load_stack(path, lazy=True), ...)``, what ``mechperm match`` does: each
  SAE read when a pair needs it, two held.

The lazy peak should stay near one pair's SAEs plus the matcher's working memory whatever ``n``;
the eager one grows with ``n``.

    python bench/bench_stack.py --layers 6 --features 16384 --d 2304 --json out.json
    python -m pytest bench/bench_stack.py -q        # small: 4 layers of 1024 × 256

Benchmarks never assert speed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

_CHILD = r"""
import json, sys, time
from mechperm.formats import load_stack
from mechperm.run import run_stack

t = time.perf_counter()
saes = load_stack(sys.argv[1], lazy=sys.argv[3] == "lazy")
stack = run_stack(saes, sys.argv[2], progress=False, plots=False)
seconds = time.perf_counter() - t
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak, "pairs": len(stack.results),
                  "certified": all(r.certified for r in stack.results.values()),
                  "objectives": [r.objective for _, r in sorted(stack.results.items())]}))
"""


def write_stack(root: Path, n: int, F: int, d: int) -> int:
    """The stack's files; returns the bytes of one SAE's tensors."""
    from mechperm.synthetic import make_stack

    nbytes = 0
    for t, sae in enumerate(make_stack(n, d=d, F=F, seed=0).saes):
        arrays = {k: getattr(sae, k).numpy() for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
        (root / f"layer_{t}").mkdir(parents=True)
        np.savez(root / f"layer_{t}" / "params.npz", **arrays)
        nbytes = sum(a.nbytes for a in arrays.values())
    return nbytes


def run(stack: Path, out: Path, mode: str) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, str(stack), str(out), mode],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(n: int, F: int, d: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sae_bytes = write_stack(root / "stack", n, F, d)
        out = {"layers": n, "F": F, "d": d, "sae_bytes": sae_bytes, "stack_bytes": n * sae_bytes,
               "threads": os.environ.get("OMP_NUM_THREADS")}
        for mode in ("eager", "lazy"):
            out[mode] = run(root / "stack", root / f"run_{mode}", mode)
        assert out["eager"]["objectives"] == out["lazy"]["objectives"]
        return out


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc/self/status")
def test_stack_memory(benchmark) -> None:
    n, F, d = 4, 1024, 256
    result = benchmark.pedantic(measure, args=(n, F, d), rounds=1, iterations=1)
    benchmark.extra_info.update({k: result[k] for k in ("layers", "F", "d", "sae_bytes")})
    for mode in ("eager", "lazy"):
        benchmark.extra_info[f"{mode}_peak_rss_gb"] = result[mode]["peak_rss_bytes"] / 1e9
        benchmark.extra_info[f"{mode}_seconds"] = result[mode]["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--features", type=int, default=16384)
    p.add_argument("--d", type=int, default=2304)
    p.add_argument("--json", default=None, help="write the result here too")
    a = p.parse_args()
    t = time.perf_counter()
    r = measure(a.layers, a.features, a.d)
    gb = 1e9
    print(f"{a.layers} layers of {a.features} x {a.d} (one SAE {r['sae_bytes'] / gb:.2f} GB, stack "
          f"{r['stack_bytes'] / gb:.2f} GB):", file=sys.stderr)
    for mode in ("eager", "lazy"):
        print(f"  {mode:5s}: peak RSS {r[mode]['peak_rss_bytes'] / gb:.2f} GB, {r[mode]['seconds']:.1f} s, "
              f"{r[mode]['pairs']} pairs certified={r[mode]['certified']}", file=sys.stderr)
    print(f"  ({time.perf_counter() - t:.0f} s in all)", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1) + "\n")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
