"""``mechperm eval``: run folder → RUN/eval/ (metrics.json, plots, pair exports), and its errors.

A tiny random Llama (and BERT for --encoder) and random JumpReLU SAEs are written to tmp_path;
the main path goes through subprocesses, error contracts through ``cli.main`` in-process. The
stories260K test skips cleanly when ../shared/data is absent.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_sae, shared_data_dir

from mechperm.cli import main
from mechperm.run import load_run

transformers = pytest.importorskip("transformers")

D, F, LAYERS, VOCAB = 32, 64, 3, 64
METHODS = ["folded", "unfolded", "identity", "layer_drop", "encdec_current", "encdec_previous"]


def _cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mechperm", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def _write_saes(root: Path, n: int = LAYERS) -> None:
    """``layer_{L}/params.npz`` in the Gemma Scope layout (W_enc [d, F], W_dec [F, d], ...)."""
    for L in range(n):
        sae = random_sae(d=D, F=F, seed=L, theta_scale=0.2)
        (root / f"layer_{L}").mkdir(parents=True)
        np.savez(root / f"layer_{L}" / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())


def _llama(folder: Path) -> None:
    import torch

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model, SAE stack, tokens.npy and a matched run folder (by the real `mechperm match`)."""
    root = tmp_path_factory.mktemp("tiny")
    _llama(root / "model")
    _write_saes(root / "saes")
    ids = np.random.default_rng(0).integers(3, VOCAB, size=(6, 16))
    ids[:, 0] = 1  # BOS
    np.save(root / "tokens.npy", ids)
    out = _cli("match", root / "saes", "--out", root / "run", "--quiet")
    assert out.returncode == 0, out.stderr
    return {"root": root, "model": root / "model", "saes": root / "saes", "tokens": root / "tokens.npy",
            "run": root / "run"}


def _run_copy(tiny: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    return run


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---------------------------------------------------------------- the main path, as a user runs it
def test_eval_writes_metrics_plots_and_pairs(tiny: dict[str, Path]) -> None:
    run = tiny["run"]
    out = _cli("eval", run, "--model", tiny["model"], "--tokens", tiny["tokens"], "--batch-size", 4, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    for text in ("EV of the replaced layer", "ΔCE", "0→1", "1→2", "folded", "encdec_previous", "hook check"):
        assert text in out.stdout, out.stdout

    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["model"] == str(tiny["model"].resolve()) and m["model_kind"] == "causal_lm"
    assert m["data"] == {"kind": "tokens", "path": str(tiny["tokens"].resolve()), "n_sequences": 6, "seq_len": 16}
    assert m["options"]["batch_size"] == 4 and m["options"]["encoder"] is False
    assert m["n_tokens"] == 6 * 15  # BOS excluded
    assert m["perm_sources"]["folded"].startswith("run")
    assert m["perm_sources"]["unfolded"].startswith("match(fold=False")
    rows = {(r["layer_from"], r["layer_to"], r["method"]): r for r in m["rows"]}
    for pair in ((0, 1), (1, 2)):
        for method in METHODS:
            r = rows[(*pair, method)]
            assert _finite(r["ev"]) and _finite(r["delta_ce"]) and _finite(r["ce"]), r
        # sanity: patching a layer with its own clean state leaves the loss and the state unchanged
        check = rows[(*pair, "hook_identity")]
        assert abs(check["delta_ce"]) < 1e-5 and abs(check["ev"] - 1) < 1e-9
        # encdec_current is SAE_u(x_u), the same number as the layer's own SAE EV
        assert rows[(*pair, "encdec_current")]["ev"] == pytest.approx(m["sae_ev"][str(pair[1])], abs=1e-9)
    assert m["hook_check"]["max_abs_delta_ce"] < 1e-5
    assert _finite(m["clean_ce"])

    for png in ("ev_by_layer.png", "delta_ce_by_layer.png"):
        path = run / "eval" / png
        assert path.is_file() and path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stack = load_run(run)
    for a, b in ((0, 1), (1, 2)):
        lines = (run / "eval" / f"pairs_{a}-{b}.jsonl").read_text().splitlines()
        assert len(lines) == F
        recs = [json.loads(line) for line in lines]
        assert [r["feature_a"] for r in recs] == list(range(F))
        assert [r["feature_b"] for r in recs] == stack.results[(a, b)].perm.tolist()  # the run's own match
        assert all(r["layer_a"] == a and r["layer_b"] == b for r in recs)
    assert not [p for p in (run / "eval").iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_unfolded_run_reuses_its_perms_and_computes_folded(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["match", str(tiny["saes"]), "--out", str(tmp_path / "run"), "--no-fold", "--quiet"]) == 0
    assert main(["eval", str(tmp_path / "run"), "--model", str(tiny["model"]), "--tokens", str(tiny["tokens"]),
                 "--max-sequences", "3", "--seq-len", "10", "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert m["perm_sources"]["unfolded"].startswith("run")
    assert m["perm_sources"]["folded"].startswith("match(fold=True")
    assert m["data"]["n_sequences"] == 3 and m["data"]["seq_len"] == 10 and m["n_tokens"] == 3 * 9


def test_text_is_tokenised_with_the_model_tokenizer(tiny: dict[str, Path], tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = [f"w{i}" for i in range(VOCAB - 3)]
    vocab = {"[PAD]": 0, "<s>": 1, "[UNK]": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", pad_token="[PAD]",
                                         unk_token="[UNK]").save_pretrained(model)
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(words, size=n)) for n in (12, 5, 9)]
    (tmp_path / "text.txt").write_text("\n".join([lines[0], "", *lines[1:]]) + "\n")
    run = _run_copy(tiny, tmp_path)
    assert main(["eval", str(run), "--model", str(model), "--text", str(tmp_path / "text.txt"), "--quiet"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["data"]["kind"] == "text" and m["data"]["n_sequences"] == 3
    assert m["n_tokens"] == 12 + 5 + 9  # BOS and padding excluded
    assert all(_finite(r["delta_ce"]) for r in m["rows"])


def test_encoder_gives_ev_only(tiny: dict[str, Path], tmp_path: Path) -> None:
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS - 1,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    run = _run_copy(tiny, tmp_path)
    assert main(["eval", str(run), "--model", str(tmp_path / "bert"), "--tokens", str(tiny["tokens"]),
                 "--encoder", "--quiet"]) == 0
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["model_kind"] == "encoder" and m["clean_ce"] is None and m["hook_check"] is None
    assert {r["method"] for r in m["rows"]} >= set(METHODS)
    assert all(_finite(r["ev"]) and r["delta_ce"] is None for r in m["rows"])
    assert (run / "eval" / "ev_by_layer.png").stat().st_size > 5000
    assert not (run / "eval" / "delta_ce_by_layer.png").exists()


# ---------------------------------------------------------------- errors: one line, non-zero exit
def _error(capsys, args: list[object]) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mechperm: error: "), err
    return err


def test_changed_sae_file_is_refused(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    shutil.copytree(tiny["saes"], tmp_path / "saes")
    assert main(["match", str(tmp_path / "saes"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    file = tmp_path / "saes" / "layer_1" / "params.npz"
    z = dict(np.load(file))
    z["threshold"] = z["threshold"] * 1.5
    np.savez(file, **z)
    err = _error(capsys, ["eval", tmp_path / "run", "--model", tiny["model"], "--tokens", tiny["tokens"]])
    assert "layer 1" in err and "changed since the run was matched" in err
    assert not (tmp_path / "run" / "eval").exists()


def test_missing_model_is_one_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = _cli("eval", tiny["run"], "--model", tmp_path / "no_model", "--tokens", tiny["tokens"])
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"mechperm: error: --model {tmp_path / 'no_model'}: no such folder "
                                               "(expected a local Hugging Face model folder with config.json)"]


def test_gone_sae_file(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    shutil.copytree(tiny["saes"], tmp_path / "saes")
    assert main(["match", str(tmp_path / "saes"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "saes" / "layer_2" / "params.npz").unlink()
    err = _error(capsys, ["eval", tmp_path / "run", "--model", tiny["model"], "--tokens", tiny["tokens"]])
    assert "layer 2" in err and "is gone" in err


def test_layers_evaluates_part_of_the_run_reading_only_its_saes(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    shutil.copytree(tiny["saes"], tmp_path / "saes")
    assert main(["match", str(tmp_path / "saes"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (tmp_path / "saes" / "layer_0" / "params.npz").unlink()  # not needed for layers 1-2
    assert main(["eval", str(tmp_path / "run"), "--model", str(tiny["model"]), "--tokens", str(tiny["tokens"]),
                 "--layers", "1-2", "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert {(r["layer_from"], r["layer_to"]) for r in m["rows"]} == {(1, 2)}
    assert m["layers"] == [1, 2] and m["options"]["layers"] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "eval").glob("pairs_*.jsonl")) == ["pairs_1-2.jsonl"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "eval" / "pairs_1-2.jsonl").read_text().splitlines()]
    assert [r["feature_b"] for r in recs] == load_run(tmp_path / "run").results[(1, 2)].perm.tolist()
    capsys.readouterr()
    for layers, message in (("0,2", "pick two or more consecutive layers of the run [0, 1, 2]"),
                            ("1", "pick two or more consecutive layers"), ("2-5", "it has no layers [3, 4, 5]")):
        err = _error(capsys, ["eval", tmp_path / "run", "--model", tiny["model"], "--tokens", tiny["tokens"],
                              "--layers", layers])
        assert message in err, err


def test_a_run_stopped_before_it_read_a_layer(tiny: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    import importlib

    from mechperm.formats import load_stack
    from mechperm.run import run_stack

    module = importlib.import_module("mechperm.match")  # `mechperm.match` is also the function
    real, calls = module.match, []

    def stop_after_one(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # Ctrl-C during the second pair
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "match", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_stack(load_stack(tiny["saes"], lazy=True), tmp_path / "run", progress=False)
    monkeypatch.setattr(module, "match", real)
    inputs = json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"]
    assert [i["hash"] is not None for i in inputs] == [True, True, False]
    err = _error(capsys, ["eval", tmp_path / "run", "--model", tiny["model"], "--tokens", tiny["tokens"]])
    assert "the run stopped before it read layer 2" in err
    assert main(["eval", str(tmp_path / "run"), "--model", str(tiny["model"]), "--tokens", str(tiny["tokens"]),
                 "--layers", "0-1", "--quiet"]) == 0  # the part it finished


def test_a_run_of_the_old_content_hash_is_evaluated(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    import mechperm.run as run

    with monkeypatch.context() as m:  # the run folder as the code before the hash tree wrote it
        m.setattr(run, "sae_fingerprint", run.legacy_fingerprint)
        assert main(["match", str(tiny["saes"]), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert all(len(i["hash"]) == 32 for i in json.loads((tmp_path / "run" / "summary.json").read_text())["inputs"])
    assert main(["eval", str(tmp_path / "run"), "--model", str(tiny["model"]), "--tokens", str(tiny["tokens"]),
                 "--max-sequences", "2", "--quiet"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "TEXT"], "has no tokenizer"),
        (["--tokens", "FLOATS"], "expected integer token ids [N, T]"),
        (["--tokens", "BIG"], "out of range for the model's vocabulary of 64"),
        (["--tokens", "/no/such.npy"], "--tokens /no/such.npy: no such file"),
        (["--tokens", "TOKENS", "--encoder", "--hook", "model.layers.{layer}"], "--hook applies to causal LMs"),
        (["--tokens", "TOKENS", "--batch-size", "0"], "--batch-size 0: expected a positive integer"),
        (["--tokens", "TOKENS", "--hook", "model.nothing.{layer}"], "has no submodule 'model.nothing.0'"),
    ],
)
def test_bad_arguments(tiny: dict[str, Path], tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    (tmp_path / "text.txt").write_text("hello world\n")
    np.save(tmp_path / "floats.npy", np.zeros((2, 4), dtype=np.float32))
    np.save(tmp_path / "big.npy", np.full((2, 4), VOCAB))
    files = {"TEXT": tmp_path / "text.txt", "FLOATS": tmp_path / "floats.npy", "BIG": tmp_path / "big.npy",
             "TOKENS": tiny["tokens"]}
    run = _run_copy(tiny, tmp_path)
    err = _error(capsys, ["eval", run, "--model", tiny["model"], *[files.get(x, x) for x in extra]])
    assert message in err


def test_not_a_run_folder(tiny: dict[str, Path], tmp_path: Path, capsys) -> None:
    err = _error(capsys, ["eval", tmp_path, "--model", tiny["model"], "--tokens", tiny["tokens"]])
    assert "not a mechperm run folder" in err


# ---------------------------------------------------------------- the shared stories260K stack
def test_stories260k_match_and_eval(tmp_path: Path) -> None:
    data = shared_data_dir()
    if data is None or not (data / "stories260k").is_dir():
        pytest.skip("../shared/data/stories260k is absent (set MECHPERM_SHARED_DATA to point at it)")
    folder = data / "stories260k"
    run = tmp_path / "run"
    assert main(["match", str(folder / "saes"), "--out", str(run), "--quiet"]) == 0
    out = _cli("eval", run, "--model", folder / "model", "--tokens", folder / "tokens_eval.npy",
               "--max-sequences", 8, "--quiet")
    assert out.returncode == 0, out.stderr
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["n_tokens"] == 8 * 255
    # README: 1 − FVU of each layer's SAE is 0.94 / 0.905 / 0.903 / 0.897 / 0.898 on its training data
    for L, ev in zip(range(5), (0.940, 0.905, 0.903, 0.897, 0.898)):
        assert m["sae_ev"][str(L)] == pytest.approx(ev, abs=0.03)
    rows = {(r["layer_from"], r["layer_to"], r["method"]): r for r in m["rows"]}
    for t in range(4):
        for method in METHODS:
            assert _finite(rows[(t, t + 1, method)]["ev"]) and _finite(rows[(t, t + 1, method)]["delta_ce"])
        # a matched replacement keeps more of layer u than feeding features into the wrong slots
        assert rows[(t, t + 1, "folded")]["ev"] > rows[(t, t + 1, "identity")]["ev"]
        assert rows[(t, t + 1, "folded")]["delta_ce"] < rows[(t, t + 1, "identity")]["delta_ce"]
    assert m["hook_check"]["max_abs_delta_ce"] < 1e-5
    assert len((run / "eval" / "pairs_3-4.jsonl").read_text().splitlines()) == 512
