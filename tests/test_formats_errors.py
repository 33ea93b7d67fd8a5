"""Bad input: every error names the file (and the tensor) and says what was expected."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_formats_fixtures import D, F, cfg_v6, sae_arrays, write_npz, write_saelens

from mechperm.formats import load_sae, load_stack


def _esc(path: Path) -> str:
    return re.escape(str(path))


def test_missing_threshold(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    del arrays["threshold"]
    file = write_npz(tmp_path, arrays)
    pattern = rf"{_esc(file)} has no tensor 'threshold'; it holds \['W_dec', 'W_enc', 'b_dec', 'b_enc'\]"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_transposed_decoder(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["W_dec"] = arrays["W_dec"].T
    file = write_npz(tmp_path, arrays)
    pattern = rf"W_dec in {_esc(file)} has shape \({D}, {F}\); expected \(F, d\) = \({F}, {D}\)"
    pattern += r".*is it transposed\?"
    with pytest.raises(ValueError, match=pattern):
        load_sae(file)


def test_transposed_encoder_is_blamed_not_the_decoder(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["W_enc"] = arrays["W_enc"].T
    file = write_npz(tmp_path, arrays)
    pattern = rf"W_enc in {_esc(file)} has shape \({F}, {D}\); expected \(d, F\).*transposed"
    with pytest.raises(ValueError, match=pattern):
        load_sae(file)


def test_wrong_threshold_length(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["threshold"] = arrays["threshold"][:-1]
    with pytest.raises(ValueError, match=rf"threshold in .* has shape \({F - 1},\); expected \(F,\) = \({F},\)"):
        load_sae(write_npz(tmp_path, arrays))


def test_d_mismatch_between_layers(tmp_path: Path) -> None:
    write_npz(tmp_path / "layer_0", d=D)
    write_npz(tmp_path / "layer_1", d=D)
    bad = write_npz(tmp_path / "layer_2", d=D + 4)
    with pytest.raises(ValueError, match=rf"layer 2 \({_esc(bad)}\) has d={D + 4}, but layer 0 .* has d={D}"):
        load_stack(tmp_path)
    assert len(load_stack(tmp_path, layers=[0, 1])) == 2


def test_truncated_npz(tmp_path: Path) -> None:
    file = write_npz(tmp_path)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{_esc(file)} is not a readable .npz archive .*truncated or corrupt"):
        load_sae(tmp_path)


def test_corrupt_npz_member_names_tensor(tmp_path: Path) -> None:
    file = write_npz(tmp_path, sae_arrays(D, F))
    data = bytearray(file.read_bytes())
    start = data.index(b"W_enc.npy") + 200  # inside W_enc's data: the CRC check fails on read
    data[start : start + 16] = b"\x7f" * 16
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"W_enc in {_esc(file)} cannot be read .*Bad CRC-32"):
        load_sae(tmp_path)


def test_npy_named_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "params.npy", np.ones(3))
    (tmp_path / "params.npy").rename(tmp_path / "params.npz")
    with pytest.raises(ValueError, match="holds a single array, not an .npz archive"):
        load_sae(tmp_path)


def test_integer_tensor(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["b_dec"] = np.zeros(D, np.int32)
    with pytest.raises(ValueError, match=r"b_dec in .*params.npz has dtype int32; expected a floating dtype"):
        load_sae(write_npz(tmp_path, arrays))


def test_truncated_safetensors(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6())
    file = tmp_path / "sae_weights.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-64])
    pattern = rf"{_esc(file)} is not a readable safetensors file .*truncated or corrupt"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


@pytest.mark.parametrize("writer", ["npz", "saelens"])
def test_nan_in_weights(tmp_path: Path, writer: str) -> None:
    arrays = sae_arrays(D, F)
    arrays["W_dec"][3, 5] = np.nan
    if writer == "npz":
        file = write_npz(tmp_path, arrays)
    else:
        write_saelens(tmp_path, cfg_v6(), arrays)
        file = tmp_path / "sae_weights.safetensors"
    pattern = rf"W_dec in {_esc(file)} holds non-finite values \(1 of {F * D}; first nan at index \(3, 5\)\)"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"no known SAE format recognises {_esc(tmp_path)}; the folder is empty"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match=rf"{_esc(tmp_path)} has no layer_<L>/ folders; load_stack reads"):
        load_stack(tmp_path)


def test_path_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{_esc(tmp_path / 'nope')} does not exist"):
        load_sae(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_stack(tmp_path / "nope")


def test_unknown_format_lists_formats_tried(tmp_path: Path) -> None:
    (tmp_path / "sae.safetensors").write_bytes(b"")
    (tmp_path / "cfg.json").write_text("{}")
    pattern = r"Formats tried — gemma_scope: .*; saelens: cfg.json \+ sae_weights.safetensors"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_width_folder_without_l0_folders(tmp_path: Path) -> None:
    (tmp_path / "layer_0" / "width_16k").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no known SAE format recognises .*width_16k; the folder is empty"):
        load_stack(tmp_path)


def test_duplicate_layer_folders(tmp_path: Path) -> None:
    write_npz(tmp_path / "layer_3")
    write_npz(tmp_path / "layer_03")
    with pytest.raises(ValueError, match=r"holds both layer_03/ and layer_3/; remove one"):
        load_stack(tmp_path)
