"""save_saelens: our SAEs written as SAELens ≥ 6 folders, read back by ours and by the real sae-lens."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import random_sae

from mechperm import SAEInfo
from mechperm.formats import load_sae
from mechperm.formats import saelens_save
from mechperm.formats.saelens_save import save_saelens

D, F = 12, 40
INFO = SAEInfo(
    model_name="gpt2", hook_name="blocks.6.hook_resid_pre", layer=6, neuronpedia_id="gpt2/6-test", source="mem"
)
KINDS = [("jumprelu", True), ("jumprelu", False), ("relu", True), ("topk", False), ("topk", True)]


def _sae(activation: str, apply_b_dec: bool, dtype: torch.dtype = torch.float32):
    sae = random_sae(D, F, activation=activation, dtype=dtype, k=7 if activation == "topk" else None)
    sae.apply_b_dec_to_input = apply_b_dec
    sae.info = INFO
    return sae


def _assert_bit_exact(a, b) -> None:
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.parametrize("activation, apply_b_dec", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_ours(tmp_path: Path, activation: str, apply_b_dec: bool, dtype: torch.dtype) -> None:
    sae = _sae(activation, apply_b_dec, dtype)
    folder = save_saelens(sae, tmp_path / "sae")
    assert folder == tmp_path / "sae" and sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    back = load_sae(folder)
    _assert_bit_exact(sae, back)
    assert (back.activation, back.k, back.apply_b_dec_to_input) == (activation, sae.k, apply_b_dec)
    info = back.info
    assert (info.model_name, info.hook_name, info.layer, info.neuronpedia_id) == ("gpt2", "blocks.6.hook_resid_pre", 6, "gpt2/6-test")
    assert info.format == "saelens"


def test_cfg_keys_match_sae_lens_to_dict(tmp_path: Path) -> None:
    cfg = json.loads((save_saelens(_sae("topk", True), tmp_path / "s") / "cfg.json").read_text())
    assert list(cfg) == [
        "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
        "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm", "architecture",
    ]  # fmt: skip
    assert (cfg["architecture"], cfg["k"], cfg["normalize_activations"], cfg["dtype"]) == ("topk", 7, "none", "float32")
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6


def test_disabled_feature_threshold_kept(tmp_path: Path) -> None:
    sae = _sae("jumprelu", False)
    sae.threshold[3] = float("inf")
    back = load_sae(save_saelens(sae, tmp_path / "s"))
    assert back.threshold[3] == float("inf") and torch.equal(back.threshold, sae.threshold)


@pytest.mark.parametrize("activation, apply_b_dec", KINDS)
def test_sae_lens_loads_it(tmp_path: Path, activation: str, apply_b_dec: bool) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(activation, apply_b_dec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.SAE.load_from_disk(save_saelens(sae, tmp_path / "s"))
    expected = {"jumprelu": "JumpReLUSAE", "relu": "StandardSAE", "topk": "TopKSAE"}[activation]
    assert type(theirs).__name__ == expected
    assert theirs.cfg.apply_b_dec_to_input is apply_b_dec
    assert theirs.cfg.metadata.hook_name == "blocks.6.hook_resid_pre" and theirs.cfg.metadata.model_name == "gpt2"
    state = theirs.state_dict()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        if getattr(sae, name) is not None:
            assert torch.equal(state[name], getattr(sae, name)), name
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), sae.encode(x))
        torch.testing.assert_close(theirs(x), sae(x))


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    first, second = _sae("relu", True), random_sae(D, F, activation="jumprelu", seed=5)
    folder = save_saelens(first, tmp_path / "s")
    with pytest.raises(FileExistsError, match=r"s already exists; pass overwrite=True"):
        save_saelens(second, folder)
    _assert_bit_exact(load_sae(folder), first)
    save_saelens(second, folder, overwrite=True)
    _assert_bit_exact(load_sae(folder), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old folders left


def test_overwrite_refuses_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files an SAE folder does not \(\['notes.txt'\]\)"):
        save_saelens(_sae("relu", True), tmp_path / "s", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        save_saelens(_sae("relu", True), tmp_path / "f", overwrite=True)


def test_failure_while_writing_leaves_old_sae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _sae("relu", True)
    folder = save_saelens(old, tmp_path / "s")

    def crash(file: Path, obj: object) -> None:
        file.write_text('{"d_in": ')  # half a cfg, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(saelens_save, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_saelens(random_sae(D, F, seed=9), folder, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        save_saelens(random_sae(D, F, seed=9), tmp_path / "new")
    _assert_bit_exact(load_sae(folder), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no half-written "new", no temp folders
