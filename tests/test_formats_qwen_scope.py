"""Qwen-Scope repos (layer{L}.sae.pt files) as the model cards describe them, read by ours and
checked against the cards' encode / decode written out below."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mechperm.formats import detect_format, load_sae, load_stack

D, F, K = 8, 1024, 50  # F = 1024: the smallest width a repo name can say (W1K)
REPO = f"SAE-Res-Qwen3.5-2B-Base-W{F // 1024}K-L0_{K}"


def qwen_state(seed: int = 0, d: int = D, f: int = F, dtype: torch.dtype = torch.float32) -> dict:
    """A layer file's dict as the cards list it: W_enc [F, d], W_dec [d, F], b_enc [F], b_dec [d]."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(f, d, generator=g)
    dec /= dec.norm(dim=1, keepdim=True)
    enc = dec * (1 + torch.rand(f, 1, generator=g))
    return {"W_enc": enc.to(dtype), "W_dec": dec.T.contiguous().to(dtype),
            "b_enc": (0.2 * torch.randn(f, generator=g)).to(dtype), "b_dec": (0.1 * torch.randn(d, generator=g)).to(dtype)}


def write_repo(folder: Path, layers=(0, 1, 2), readme: str | None = None, **kw) -> dict[int, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    states = {}
    for L in layers:
        states[L] = qwen_state(seed=L, **kw)
        torch.save(states[L], folder / f"layer{L}.sae.pt")
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return states


def reference(s: dict, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cards' encode and decode: top k of relu(x W_enc^T + b_enc); f W_dec^T + b_dec."""
    pre = torch.relu(x @ s["W_enc"].T + s["b_enc"])
    top = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    return f, f @ s["W_dec"].T + s["b_dec"]


def test_layer_file_matches_the_cards_encode_and_decode(tmp_path: Path) -> None:
    states = write_repo(tmp_path / REPO, layers=(3,))
    sae = load_sae(tmp_path / REPO / "layer3.sae.pt")
    assert sae.activation == "topk" and sae.k == K and not sae.apply_b_dec_to_input
    assert (sae.d_in, sae.d_sae) == (D, F)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(7))
    f_ref, x_ref = reference(states[3], x, K)
    torch.testing.assert_close(sae.encode(x), f_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae(x), x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.W_dec, states[3]["W_dec"].T)
    assert sae.W_enc.is_contiguous() and sae.W_dec.is_contiguous()
    info = sae.info
    assert (info.format, info.layer, info.hook_name, info.model_name) == (
        "qwen_scope", 3, "blocks.3.hook_resid_post", "Qwen/Qwen3.5-2B-Base")
    assert detect_format(tmp_path / REPO / "layer3.sae.pt").name == "qwen_scope"


def test_repo_folder_is_a_stack(tmp_path: Path) -> None:
    write_repo(tmp_path / REPO, layers=(0, 2, 10, 1))
    saes = load_stack(tmp_path / REPO)
    assert [s.info.layer for s in saes] == [0, 1, 2, 10]
    assert load_stack(tmp_path / REPO, layers=[1, 10])[1].info.source.endswith("layer10.sae.pt")
    with pytest.raises(ValueError, match=r"holds SAEs for layers \[0, 1, 2, 10\]; use load_stack"):
        load_sae(tmp_path / REPO)


def test_hugging_face_cache_reads_k_from_the_repo_name(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / f"models--Qwen--SAE-Res-Qwen3-8B-Base-W{F // 1024}K-L0_100"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for L in (4, 5):
        torch.save(qwen_state(seed=L, dtype=torch.bfloat16), blobs / f"blob{L}")
        os.symlink(f"../../blobs/blob{L}", snap / f"layer{L}.sae.pt")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    saes = load_stack(repo)
    assert [s.k for s in saes] == [100, 100]
    assert [s.info.layer for s in saes] == [4, 5]
    assert saes[0].info.model_name == "Qwen/Qwen3-8B-Base"
    assert saes[0].dtype == torch.bfloat16
    assert load_stack(repo, dtype="float32")[1].dtype == torch.float32


def test_readme_gives_k_when_the_folder_is_renamed(tmp_path: Path) -> None:
    card = "| Property | Value |\n|---|---|\n| Base model | Qwen3.5-9B-Base |\n| Top-K | 100 |\n"
    write_repo(tmp_path / "qwen_saes", layers=(0,), readme=card)
    sae = load_sae(tmp_path / "qwen_saes" / "layer0.sae.pt")
    assert sae.k == 100 and sae.info.model_name is None


def test_no_k_anywhere_is_refused_with_the_reason(tmp_path: Path) -> None:
    write_repo(tmp_path / "qwen_saes", layers=(0,))
    with pytest.raises(ValueError, match=r"does not record its k .*SAE-Res-Qwen3.5-2B-Base-W32K-L0_50/"):
        load_sae(tmp_path / "qwen_saes" / "layer0.sae.pt")


def test_readme_and_name_disagreeing_is_refused(tmp_path: Path) -> None:
    write_repo(tmp_path / REPO, layers=(0,), readme="| Top-K | 100 |\n")
    with pytest.raises(ValueError, match=r"says k=50 \(L0_50\) but .*README.md says Top-K 100"):
        load_sae(tmp_path / REPO / "layer0.sae.pt")


def test_width_of_the_name_is_checked(tmp_path: Path) -> None:
    folder = tmp_path / "SAE-Res-Qwen3.5-2B-Base-W32K-L0_50"
    write_repo(folder, layers=(0,))
    with pytest.raises(ValueError, match=r"holds 1024 features, but the repo name above it says W32K \(32768\)"):
        load_sae(folder / "layer0.sae.pt")


def test_transposed_matrix_is_named(tmp_path: Path) -> None:
    s = qwen_state()
    s["W_enc"] = s["W_enc"].T.contiguous()  # SAELens layout instead of the card's [F, d]
    (tmp_path / REPO).mkdir()
    torch.save(s, tmp_path / REPO / "layer0.sae.pt")
    with pytest.raises(ValueError, match=r"W_enc in .*layer0.sae.pt has shape \(8, 1024\); expected \(F, d\) = "
                                         r"\(1024, 8\).*is it transposed\?"):
        load_sae(tmp_path / REPO / "layer0.sae.pt")


def test_missing_tensor_and_extra_tensor(tmp_path: Path) -> None:
    (tmp_path / REPO).mkdir()
    s = qwen_state()
    del s["b_dec"]
    torch.save(s, tmp_path / REPO / "layer0.sae.pt")
    with pytest.raises(ValueError, match=r"has no tensor 'b_dec'"):
        load_sae(tmp_path / REPO / "layer0.sae.pt")
    torch.save({**qwen_state(), "stats": torch.zeros(3)}, tmp_path / REPO / "layer0.sae.pt")
    with pytest.warns(UserWarning, match=r"ignoring tensors \['stats'\]"):
        load_sae(tmp_path / REPO / "layer0.sae.pt")


def test_not_a_dict_of_tensors_and_truncated_file(tmp_path: Path) -> None:
    (tmp_path / REPO).mkdir()
    file = tmp_path / REPO / "layer0.sae.pt"
    torch.save({"W_enc": torch.zeros(F, D), "note": "hello"}, file)
    with pytest.raises(ValueError, match="not a dict of tensors"):
        load_sae(file)
    torch.save(qwen_state(), file)
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_sae(file)


def test_nan_and_integer_tensors_are_named(tmp_path: Path) -> None:
    (tmp_path / REPO).mkdir()
    file = tmp_path / REPO / "layer0.sae.pt"
    s = qwen_state()
    s["W_dec"][2, 5] = float("nan")
    torch.save(s, file)
    with pytest.raises(ValueError, match=r"W_dec in .*layer0.sae.pt holds non-finite values"):
        load_sae(file)
    torch.save({**qwen_state(), "b_enc": torch.zeros(F, dtype=torch.int64)}, file)
    with pytest.raises(ValueError, match=r"b_enc in .*has dtype torch.int64"):
        load_sae(file)


def test_broken_symlink_says_the_download_is_incomplete(tmp_path: Path) -> None:
    (tmp_path / REPO).mkdir()
    write_repo(tmp_path / REPO, layers=(0,))
    os.symlink("../blobs/missing", tmp_path / REPO / "layer1.sae.pt")
    with pytest.raises(FileNotFoundError, match="broken symlink"):
        load_stack(tmp_path / REPO)


def test_two_files_for_one_layer_are_refused(tmp_path: Path) -> None:
    write_repo(tmp_path / REPO, layers=(3,))
    torch.save(qwen_state(), tmp_path / REPO / "layer03.sae.pt")
    with pytest.raises(ValueError, match=r"holds both layer03.sae.pt and layer3.sae.pt; remove one"):
        load_stack(tmp_path / REPO)


def test_cli_matches_a_qwen_scope_repo(tmp_path: Path) -> None:
    from mechperm.cli import main

    write_repo(tmp_path / REPO, layers=(0, 1, 2))
    assert main(["match", str(tmp_path / REPO), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "pairs").iterdir()) == ["0-1.safetensors", "1-2.safetensors"]
