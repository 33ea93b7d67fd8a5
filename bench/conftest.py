"""Benchmark fixtures: size limits from the environment, cached problem instances, and a summary
of the objectives every provider reached (printed at the end of the session)."""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pytest

MAX_N = int(os.environ.get("MECHPERM_BENCH_MAX_N", "4096"))
"""Largest problem size to run (quick run: 1024; full run: 65536)."""
PEER_MAX_N = int(os.environ.get("MECHPERM_BENCH_PEER_MAX_N", str(MAX_N)))
"""Largest size for the peers (scipy, lap, OR-Tools), which take minutes to hours beyond 8192."""

OBJECTIVES: dict[tuple, dict[str, float]] = {}


def sizes(*ns: int) -> list[int]:
    return [n for n in ns if n <= MAX_N]


@lru_cache(maxsize=2)
def dense_problem(kind: str, n: int) -> np.ndarray:
    """float32 [n, n] costs. "sae": squared distances of folded decoder rows with the heavy
    tails of DESIGN.md's pitfall (mechperm.synthetic, heavy_tail=2.5); "uniform": U(0, 1);
    "planted": squared distances of d = 256 vectors where each row has one clear partner (unit
    directions × lognormal(0, 1) norms; the partner drifted by ~37°, its norm × lognormal(0,
    0.2): ``bench_match_gpu.sae_like_pair``'s recipe, where shortest paths alone solve it)."""
    if kind == "uniform":
        return np.random.default_rng(n).random((n, n), dtype=np.float32)
    if kind == "planted":
        rng = np.random.default_rng(n)
        d = 256
        a = rng.standard_normal((n, d))
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b = 0.8 * a + 0.6 * rng.standard_normal((n, d)) / np.sqrt(d)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        norm = np.exp(rng.standard_normal((n, 1)))
        a *= norm
        b = (b * norm * np.exp(0.2 * rng.standard_normal((n, 1))))[rng.permutation(n)]
        c = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.maximum(c, 0).astype(np.float32)
    try:
        from mechperm.synthetic import sae_like_costs
    except ImportError:  # pragma: no cover - synthetic is another module of the project
        rng = np.random.default_rng(n)
        a = rng.standard_normal((n, 64)) * np.exp(2.5 * rng.standard_normal((n, 1)))
        b = a[rng.permutation(n)] + 0.3 * rng.standard_normal((n, 64))
        c = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
        return np.maximum(c, 0).astype(np.float32)
    return sae_like_costs(n, heavy_tail=2.5).astype(np.float32)


def record(key: tuple, provider: str, objective: float) -> None:
    OBJECTIVES.setdefault(key, {})[provider] = objective


def pytest_terminal_summary(terminalreporter) -> None:  # pragma: no cover - reporting only
    if not OBJECTIVES:
        return
    tr = terminalreporter
    tr.section("assignment objectives (float64 sums over the float32 instance)")
    for key, objs in sorted(OBJECTIVES.items()):
        ref = objs.get("mechperm")
        parts = []
        for name, val in sorted(objs.items()):
            rel = "" if ref is None or name == "mechperm" else f" (rel {abs(val - ref) / max(1.0, abs(ref)):.1e})"
            parts.append(f"{name}={val:.12g}{rel}")
        tr.write_line(f"{key}: " + ", ".join(parts))


@pytest.fixture
def peer_max_n() -> int:
    return PEER_MAX_N


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py when the folder is given (`pytest bench/`): the project's
    python_files pattern only matches test_*.py. Files named on the command line are collected
    by pytest itself."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if not parent.session.isinitpath(file_path):
            return pytest.Module.from_parent(parent, path=file_path)
    return None
