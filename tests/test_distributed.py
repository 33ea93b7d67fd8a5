"""`torchrun ... -m mechperm match`: ranks share the pairs of one run folder (gloo, on the CPU here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mechperm.formats import load_stack
from mechperm.run import load_run, run_stack, share
from mechperm.synthetic import make_stack

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


def write_stack(root: Path, n: int, F: int = 96, d: int = 24) -> None:
    for t, sae in enumerate(make_stack(n, d=d, F=F, seed=0).saes):
        (root / f"layer_{t}").mkdir(parents=True)
        np.savez(root / f"layer_{t}" / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())


def torchrun(ranks: int, *args: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "mechperm", "match", *map(str, args), "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_share_covers_every_pair_once_in_contiguous_runs() -> None:
    todo = [(a, a + 1) for a in range(11)]
    for world in (1, 2, 3, 4, 11, 13):
        parts = [share(todo, r, world) for r in range(world)]
        assert [p for part in parts for p in part] == todo
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_ranks_write_the_run_one_process_would(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", 6)
    out = torchrun(2, tmp_path / "s", "--out", tmp_path / "dist")
    assert out.stdout.count("run folder:") == 1 and "2 ranks" in out.stdout  # rank 0 speaks
    writers = {p.stem: json.loads(safe_open(str(p), "pt").metadata()["written_by"])
               for p in (tmp_path / "dist" / "pairs").iterdir()}
    todo = [(t, t + 1) for t in range(5)]
    assert {k: w["rank"] for k, w in writers.items()} == {f"{a}-{b}": r for r in (0, 1) for a, b in share(todo, r, 2)}
    assert len({w["pid"] for w in writers.values()}) == 2
    single = run_stack(load_stack(tmp_path / "s", lazy=True), tmp_path / "single", progress=False, plots=False)
    got = load_run(tmp_path / "dist")
    assert sorted(got.results) == sorted(single.results) == [(t, t + 1) for t in range(5)]
    for pair, want in single.results.items():
        assert torch.equal(got.results[pair].perm, want.perm) and got.results[pair].objective == want.objective
    inputs = json.loads((tmp_path / "dist" / "summary.json").read_text())["inputs"]
    assert inputs == json.loads((tmp_path / "single" / "summary.json").read_text())["inputs"]
    assert sorted(p.name for p in (tmp_path / "dist" / "plots").glob("*.png")) == [
        "cosine_hist.png", "cost_hist.png", "matched_fraction.png", "persistence.png"]

    # resumed by three ranks: only the missing pairs are matched again, one by each rank (the
    # missing ones are shared out apart), the others are kept as they are
    gone = ["0-1.safetensors", "1-2.safetensors", "3-4.safetensors"]
    for name in gone:
        (tmp_path / "dist" / "pairs" / name).unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dist" / "pairs").iterdir()}
    torchrun(3, tmp_path / "s", "--out", tmp_path / "dist")
    now = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dist" / "pairs").iterdir()}
    assert {k: v for k, v in now.items() if k not in gone} == stamps and all(name in now for name in gone)
    ranks = sorted(json.loads(safe_open(str(tmp_path / "dist" / "pairs" / name), "pt").metadata()["written_by"])["rank"]
                   for name in gone)
    assert ranks == [0, 1, 2]
    # and the same command without torchrun reuses every pair the ranks wrote (same keys: the
    # options are the same on every rank)
    plain = subprocess.run([sys.executable, "-m", "mechperm", "match", str(tmp_path / "s"), "--out",
                            str(tmp_path / "dist"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dist" / "pairs").iterdir()} == now


def test_more_ranks_than_pairs(tmp_path: Path) -> None:
    write_stack(tmp_path / "s", 2)
    torchrun(3, tmp_path / "s", "--out", tmp_path / "run")
    assert sorted(load_run(tmp_path / "run").results) == [(0, 1)]


def test_an_indexed_cuda_device_is_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from mechperm.cli import _join_torchrun

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="pass --device cuda, and each rank uses the GPU of its LOCAL_RANK"):
        _join_torchrun("cuda:1")


def _rank_main(rank: int, world: int, init: str, stack_dir: str, out: str, report: str) -> None:
    """A rank of the Python API's distributed path: its own gloo group, run_stack into ``out``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        run_stack(load_stack(stack_dir, lazy=True), out.format(rank=rank), progress=False, plots=False)
        Path(report.format(rank=rank)).write_text("ok")
    except ValueError as exc:
        Path(report.format(rank=rank)).write_text(f"ValueError: {exc}")
    finally:
        dist.destroy_process_group()


def test_python_api_under_a_process_group_and_a_folder_not_shared(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    write_stack(tmp_path / "s", 4)
    report = str(tmp_path / "report{rank}.txt")
    # one folder for both ranks: the run a single process writes
    mp.spawn(_rank_main, args=(2, f"file://{tmp_path / 'pg1'}", str(tmp_path / "s"), str(tmp_path / "run"), report),
             nprocs=2, join=True)
    assert [Path(report.format(rank=r)).read_text() for r in (0, 1)] == ["ok", "ok"]
    assert sorted(load_run(tmp_path / "run").results) == [(0, 1), (1, 2), (2, 3)]
    # a folder per rank (as on machines without a shared file system): each says what is missing
    mp.spawn(_rank_main, args=(2, f"file://{tmp_path / 'pg2'}", str(tmp_path / "s"), str(tmp_path / "own{rank}"),
                               report), nprocs=2, join=True)
    for r in (0, 1):
        text = Path(report.format(rank=r)).read_text()
        assert text.startswith(f"ValueError: rank {r} cannot read the pairs") and "every rank sees" in text, text
