"""Contracts of the format registry: protocol, registration, detection, error wording."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_formats_fixtures import sae_arrays, write_npz

from mechperm.formats import (
    SAELoader,
    detect_format,
    formats,
    get_format,
    load_sae,
    register_format,
    unregister_format,
)
from mechperm.sae import SAE, SAEInfo


class _TorchPt:
    """A toy format: ``weights.pt`` holding a dict of the five tensors."""

    name = "toy_pt"
    expects = "weights.pt (a dict of tensors)"

    def sniff(self, path: Path) -> bool:
        return (path / "weights.pt").is_file() if path.is_dir() else path.name == "weights.pt"

    def load(self, path: Path, device: torch.device, dtype: torch.dtype | None) -> SAE:
        file = path / "weights.pt" if path.is_dir() else path
        tensors = torch.load(file, weights_only=True)
        tensors = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in tensors.items()}
        return SAE(**tensors, info=SAEInfo(source=str(file), format=self.name))


@pytest.fixture
def toy_format():
    loader = register_format(_TorchPt())
    yield loader
    unregister_format(loader.name)


def test_builtin_formats_registered() -> None:
    assert formats()[:2] == ["gemma_scope", "saelens"]
    assert all(isinstance(get_format(n), SAELoader) for n in formats())


def test_duplicate_registration_refused() -> None:
    pattern = r"format 'gemma_scope' is already registered.*\['gemma_scope', 'saelens'"
    with pytest.raises(ValueError, match=pattern):
        register_format(get_format("gemma_scope"))


def test_register_rejects_non_loader() -> None:
    with pytest.raises(TypeError, match="not an SAELoader"):
        register_format(object())  # type: ignore[arg-type]


def test_unknown_format_name_lists_choices(tmp_path: Path) -> None:
    write_npz(tmp_path)
    with pytest.raises(ValueError, match=r"unknown format 'npz'; choose one of \['gemma_scope', 'saelens'"):
        load_sae(tmp_path, format="npz")
    with pytest.raises(ValueError, match="unknown format"):
        unregister_format("npz")


def test_forced_format_that_does_not_fit(tmp_path: Path) -> None:
    write_npz(tmp_path)
    with pytest.raises(ValueError, match=r"is not in format 'saelens': it expects cfg.json"):
        load_sae(tmp_path, format="saelens")


def test_plugged_in_format_is_sniffed(tmp_path: Path, toy_format: SAELoader) -> None:
    arrays = sae_arrays()
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "weights.pt")
    sae = load_sae(tmp_path, dtype="float64")
    assert sae.info.format == "toy_pt" and sae.dtype == torch.float64
    assert detect_format(tmp_path) is toy_format
    assert "toy_pt" in formats()


def test_ambiguous_folder_names_both_formats(tmp_path: Path, toy_format: SAELoader) -> None:
    arrays = sae_arrays()
    write_npz(tmp_path, arrays)
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"matches several formats \['gemma_scope', 'toy_pt'\]; pass format="):
        load_sae(tmp_path)
    assert load_sae(tmp_path, format="toy_pt").info.format == "toy_pt"


def test_unknown_files_list_formats_tried(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError) as err:
        load_sae(tmp_path)
    msg = str(err.value)
    assert "no known SAE format recognises" in msg and "model.bin" in msg
    assert "gemma_scope: params.npz" in msg and "saelens: cfg.json + sae_weights.safetensors" in msg


def test_bad_dtype_and_device_arguments(tmp_path: Path) -> None:
    write_npz(tmp_path)
    with pytest.raises(ValueError, match=r"dtype='int8' is not understood; choose one of"):
        load_sae(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="not a floating dtype"):
        load_sae(tmp_path, dtype=torch.int32)
    assert load_sae(tmp_path, dtype="torch.bfloat16", device="cpu").dtype == torch.bfloat16
