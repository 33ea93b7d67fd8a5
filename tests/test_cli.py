"""The mechperm command and run folders, through subprocesses on files the tests write."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mechperm.run import load_run, run_stack
from mechperm.synthetic import make_stack


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mechperm", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _write_stack(root: Path, n_layers: int, F: int, d: int = 32, seed: int = 0) -> None:
    """A flat Gemma-Scope-layout stack: layer_{L}/params.npz."""
    for t, sae in enumerate(make_stack(n_layers, d=d, F=F, seed=seed).saes):
        folder = root / f"layer_{t}"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())


def test_match_show_and_rerun_skips_finished_pairs(tmp_path: Path) -> None:
    _write_stack(tmp_path / "saes", 4, 128)
    run = tmp_path / "run"
    first = _cli("match", tmp_path / "saes", "--out", run, "--quiet")
    assert first.returncode == 0, first.stderr
    assert "4 SAEs (layers 0-3), each read when a pair needs it" in first.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert [p["a"] for p in summary["pairs"]] == [0, 1, 2]
    assert all(p["certified"] for p in summary["pairs"])
    assert len(summary["inputs"]) == 4 and all(re.fullmatch(r"b2tree:[0-9a-f]{32}", i["hash"]) for i in summary["inputs"])
    plots = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert plots == ["cosine_hist.png", "cost_hist.png", "matched_fraction.png", "persistence.png"]
    assert all((run / "plots" / p).stat().st_size > 5000 for p in plots)

    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "pairs").iterdir()}
    again = _cli("match", tmp_path / "saes", "--out", run, "--quiet")
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (run / "pairs").iterdir()} == stamps

    shown = _cli("show", run)
    assert shown.returncode == 0 and "0→1" in shown.stdout and "yes" in shown.stdout


def test_changed_options_recompute(tmp_path: Path) -> None:
    saes = make_stack(3, d=16, F=64).saes
    run_stack(saes, tmp_path, progress=False, plots=False)
    stack = run_stack(saes, tmp_path, progress=False, plots=False, fold=False)
    assert stack.results[(0, 1)].options["fold"] is False
    assert load_run(tmp_path).results[(0, 1)].options["fold"] is False


def test_resume_after_kill(tmp_path: Path) -> None:
    """Kill a run mid-way: finished pairs survive intact and the rerun only does the rest."""
    _write_stack(tmp_path / "saes", 6, 2048, d=64)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mechperm", "match", str(tmp_path / "saes"), "--out", str(run), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((run / "pairs").glob("*.safetensors"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (run / "pairs").glob("*.safetensors")}
    assert 1 <= len(done) <= 5, done
    assert not [p for p in (run / "pairs").iterdir() if p.suffix != ".safetensors" and not p.name.startswith(".")]
    again = _cli("match", tmp_path / "saes", "--out", run, "--quiet", timeout=300)
    assert again.returncode == 0, again.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (run / "pairs").glob("*.safetensors")}
    assert len(after) == 5
    assert all(after[name] == stamp for name, stamp in done.items()), "a finished pair was recomputed"
    assert all(r.certified for r in load_run(run).results.values())


def test_demo_runs(tmp_path: Path) -> None:
    out = _cli("demo", "--layers", "3", "--features", "256", "--d", "32", "--out", tmp_path / "demo")
    assert out.returncode == 0, out.stderr
    assert "0→1" in out.stdout and "%" in out.stdout
    assert (tmp_path / "demo" / "summary.json").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["match", "/no/such/stack", "--out", "x"], "does not exist"),
        (["match", ".", "--out", "x", "--layers", "a-b"], "--layers 'a-b'"),
        (["show", "/no/such/run"], "not a mechperm run folder"),
        (["match", ".", "--out", "x", "--device", "gpu"], "device='gpu' is not a torch device"),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(tmp_path: Path, args: list[str], message: str) -> None:
    out = _cli(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_empty_folder(tmp_path: Path) -> None:
    out = _cli("match", tmp_path, "--out", tmp_path / "run")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert str(tmp_path) in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path: Path) -> None:
    _write_stack(tmp_path / "saes", 2, 64)
    for env in ({}, {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}):  # alone, and as a torchrun rank would start
        out = subprocess.run([sys.executable, "-m", "mechperm", "match", str(tmp_path / "saes"), "--out",
                              str(tmp_path / "run"), "--device", "cuda"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, **env})
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "device='cuda': CUDA is not available here" in out.stderr
        assert not (tmp_path / "run").exists()


def test_the_device_defaults_to_the_gpu_where_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from mechperm import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli._auto_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli._auto_device() == "cuda"


def _gpu_that_fits(monkeypatch: pytest.MonkeyPatch, fits: int) -> list:
    """Pretend the machine has a GPU on which only pairs of at most ``fits`` features fit: match()
    on "cuda" raises torch's out-of-memory error for wider pairs and otherwise runs on the CPU.
    Returns the (features, device) of every call."""
    import importlib

    from mechperm import cli
    from mechperm.formats import _common

    match_module = importlib.import_module("mechperm.match")  # the module: the package's `match` is the function
    real, calls = match_module.match, []

    def fake(sae_a, sae_b, **options):
        calls.append((sae_a.d_sae, options.get("device")))
        if options.get("device") == "cuda":
            if sae_a.d_sae > fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            options = {**options, "device": "cpu"}
        return real(sae_a, sae_b, **options)

    monkeypatch.setattr(match_module, "match", fake)
    monkeypatch.setattr(cli, "_auto_device", lambda: "cuda")
    monkeypatch.setattr(cli, "_device_name", lambda device: f"{device} (a test GPU)")
    monkeypatch.setattr(_common, "as_device", lambda device: torch.device("cpu"))
    return calls


def test_a_pair_too_wide_for_the_chosen_gpu_is_matched_on_the_cpu(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --device on a GPU machine, every pair runs on the GPU; one that does not fit in
    its memory is matched on the CPU with a note, and the run goes on (and resumes, keyed
    without the device)."""
    from mechperm.cli import main

    _write_stack(tmp_path / "saes", 3, 96)
    calls = _gpu_that_fits(monkeypatch, fits=64)
    assert main(["match", str(tmp_path / "saes"), "-o", str(tmp_path / "run"), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "matching on cuda (a test GPU)" in out
    assert calls == [(96, "cuda"), (96, "cpu"), (96, "cuda"), (96, "cpu")]
    assert err.count("does not fit in the GPU's memory (CUDA out of memory. Tried to allocate 9.00 GiB); "
                     "matching it on the CPU") == 2
    stack = load_run(tmp_path / "run")
    assert sorted(stack.results) == [(0, 1), (1, 2)] and stack.options["device"] == "cuda"
    assert all(r.certified and r.options["device"] == "cpu" for r in stack.results.values())
    calls.clear()
    assert main(["match", str(tmp_path / "saes"), "-o", str(tmp_path / "run"), "--quiet", "--device", "cpu"]) == 0
    assert calls == []  # the same pairs, on another device: nothing matched again


def test_a_gpu_asked_for_by_name_fails_in_one_line_when_it_is_too_small(tmp_path: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mechperm.cli import main

    _write_stack(tmp_path / "saes", 2, 96)
    calls = _gpu_that_fits(monkeypatch, fits=64)
    assert main(["match", str(tmp_path / "saes"), "--out", str(tmp_path / "run"), "--quiet", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert calls == [(96, "cuda")]
    assert "mechperm: error: the GPU ran out of memory (CUDA out of memory. Tried to allocate 9.00 GiB); " \
           "--device cpu matches on the CPU" in err and "Traceback" not in err


def test_match_on_a_machine_without_a_gpu_says_cpu(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from mechperm.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _write_stack(tmp_path / "saes", 2, 64)
    assert main(["match", str(tmp_path / "saes"), "-o", str(tmp_path / "run"), "--quiet"]) == 0
    assert "matching on cpu" in capsys.readouterr().out
    assert load_run(tmp_path / "run").options["device"] == "cpu"
