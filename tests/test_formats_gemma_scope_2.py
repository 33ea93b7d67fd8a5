"""Gemma Scope 2 folders (config.json + params.safetensors, lower-case tensors), read by ours."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_formats_fixtures import hf_cache_repo

from mechperm.formats import load_sae
from mechperm.formats.gemma_scope_2 import gemma_scope_2_folders

D, F = 8, 24
REPO = "gemma-scope-2-1b-pt"
NAMES = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}


def gs2_tensors(d: int = D, F: int = F, seed: int = 0) -> dict[str, torch.Tensor]:
    """As stored: ``w_enc [d, F]``, ``w_dec [F, d]`` (sae-lens' gemma_3 loader uses them untransposed)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(F, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    return {
        "w_enc": (w_dec.T * (1 + torch.rand(F, generator=g))).contiguous(),
        "w_dec": w_dec,
        "b_enc": 0.1 * torch.randn(F, generator=g),
        "b_dec": 0.1 * torch.randn(d, generator=g),
        "threshold": 0.05 + torch.rand(F, generator=g),
    }


def gs2_config(layer: int = 3, **extra: object) -> dict:
    return {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-1b-pt",
        "hf_hook_point_in": f"model.layers.{layer}.output",
        **extra,
    }


def write_gs2(folder: Path, tensors: dict | None = None, config: dict | None = None, *, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = gs2_tensors(seed=seed) if tensors is None else tensors
    save_file(tensors, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return tensors


def test_load_resid_post_medium(tmp_path: Path) -> None:
    folder = tmp_path / REPO / "resid_post" / "layer_3_width_16k_l0_medium"
    t = write_gs2(folder, config=gs2_config())
    sae = load_sae(folder)
    for ours, stored in NAMES.items():
        assert torch.equal(getattr(sae, ours), t[stored]), ours
    assert (sae.activation, sae.apply_b_dec_to_input) == ("jumprelu", False)
    info = sae.info
    assert (info.format, info.layer, info.hook_name) == ("gemma_scope_2", 3, "blocks.3.hook_resid_post")
    assert info.model_name == "gemma-v3-1b-pt"  # as written in config.json
    assert info.neuronpedia_id == "gemma-3-1b/3-gemmascope-2-res-16k"
    assert info.source == str(folder / "params.safetensors")
    x = torch.randn(40, D)
    pre = x @ t["w_enc"] + t["b_enc"]
    torch.testing.assert_close(sae.encode(x), torch.relu(pre) * (pre > t["threshold"]))


def test_sites_hooks_and_neuronpedia(tmp_path: Path) -> None:
    cases = {
        "resid_post/layer_5_width_65k_l0_small": ("blocks.5.hook_resid_post", None),
        "mlp_out/layer_5_width_16k_l0_medium": ("blocks.5.hook_mlp_out", None),
        "attn_out_all/layer_5_width_16k_l0_big": ("blocks.5.attn.hook_z", None),
        "transcoder/layer_5_width_16k_l0_medium": ("blocks.5.hook_mlp_in", None),
        "resid_post/layer_5_width_16k_l0_medium_seed_1": ("blocks.5.hook_resid_post", None),
    }
    for path, (hook, npid) in cases.items():
        write_gs2(tmp_path / "gemma-scope-2-4b-it" / path, config=gs2_config(5))
        info = load_sae(tmp_path / "gemma-scope-2-4b-it" / path).info
        assert (info.hook_name, info.neuronpedia_id, info.layer) == (hook, npid, 5), path
    it = tmp_path / "gemma-scope-2-4b-it" / "resid_post" / "layer_5_width_16k_l0_medium"
    write_gs2(it, config=gs2_config(5))
    assert load_sae(it).info.neuronpedia_id == "gemma-3-4b-it/5-gemmascope-2-res-16k"


def test_without_config_json_uses_path(tmp_path: Path) -> None:
    folder = tmp_path / REPO / "resid_post" / "layer_7_width_16k_l0_big"
    write_gs2(folder)
    info = load_sae(folder / "params.safetensors").info
    assert (info.layer, info.hook_name, info.model_name) == (7, "blocks.7.hook_resid_post", "google/gemma-3-1b-pt")


def test_unknown_folder_keeps_hf_hook(tmp_path: Path) -> None:
    write_gs2(tmp_path / "mine", config=gs2_config(9))
    info = load_sae(tmp_path / "mine").info
    assert (info.layer, info.hook_name, info.neuronpedia_id) == (9, "model.layers.9.output", None)


def test_hf_cache_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    t = write_gs2(src / "resid_post" / "layer_2_width_16k_l0_medium", config=gs2_config(2))
    repo = hf_cache_repo(tmp_path / "hub", f"google/{REPO}", src, "abc123")
    sae = load_sae(repo / "snapshots" / "abc123" / "resid_post" / "layer_2_width_16k_l0_medium")
    assert torch.equal(sae.W_dec, t["w_dec"])
    assert sae.info.neuronpedia_id == "gemma-3-1b/2-gemmascope-2-res-16k"


def test_skip_transcoder_refused(tmp_path: Path) -> None:
    write_gs2(tmp_path / "a", {**gs2_tensors(), "affine_skip_connection": torch.zeros(D, D)}, gs2_config())
    with pytest.raises(ValueError, match=r"a/params.safetensors holds affine_skip_connection: a skip transcoder, unsupported"):
        load_sae(tmp_path / "a")
    write_gs2(tmp_path / "b", config=gs2_config(affine_connection=True))
    with pytest.raises(ValueError, match=r"b/config.json says affine_connection=true: a skip transcoder, unsupported"):
        load_sae(tmp_path / "b")


def test_cross_layer_transcoder_refused(tmp_path: Path) -> None:
    t = gs2_tensors()
    t["w_dec"] = torch.randn(F, 3, D)
    write_gs2(tmp_path, t, gs2_config())
    with pytest.raises(ValueError, match=r"w_dec in .*params.safetensors has shape \(24, 3, 8\): a cross-layer transcoder"):
        load_sae(tmp_path)


def test_missing_tensor_named(tmp_path: Path) -> None:
    t = gs2_tensors()
    del t["w_dec"]
    write_gs2(tmp_path, t, gs2_config())
    with pytest.raises(ValueError, match=r"params.safetensors has no tensor 'W_dec'.*lower-case w_enc, w_dec"):
        load_sae(tmp_path)


@pytest.mark.parametrize("name", ["w_enc", "w_dec"])
def test_transposed_named_not_guessed(tmp_path: Path, name: str) -> None:
    t = gs2_tensors()
    t[name] = t[name].T.contiguous()
    write_gs2(tmp_path, t, gs2_config())
    with pytest.raises(ValueError, match=rf"{name} in .*params.safetensors has shape .* — is it transposed\?"):
        load_sae(tmp_path)


def test_bad_config_and_corrupt_file(tmp_path: Path) -> None:
    write_gs2(tmp_path / "a", config=gs2_config(architecture="topk"))
    with pytest.raises(ValueError, match=r"a/config.json says architecture 'topk'; Gemma Scope 2 SAEs are 'jump_relu'"):
        load_sae(tmp_path / "a")
    write_gs2(tmp_path / "b", config=gs2_config())
    file = tmp_path / "b" / "params.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"b/params.safetensors (is not a readable safetensors file|.* cannot be read)"):
        load_sae(tmp_path / "b")


def test_nonfinite_named(tmp_path: Path) -> None:
    t = gs2_tensors()
    t["b_enc"][4] = float("nan")
    write_gs2(tmp_path, t, gs2_config())
    with pytest.raises(ValueError, match=r"b_enc in .*params.safetensors holds non-finite values"):
        load_sae(tmp_path)


def test_folders_by_width_and_l0(tmp_path: Path) -> None:
    site = tmp_path / REPO / "resid_post"
    for L in (0, 4, 12):
        for width in ("16k", "65k"):
            for l0 in ("small", "medium", "big"):
                write_gs2(site / f"layer_{L}_width_{width}_l0_{l0}", config=gs2_config(L), seed=L)
    found = gemma_scope_2_folders(site, width="16k")
    assert list(found) == [0, 4, 12] and found[4].name == "layer_4_width_16k_l0_medium"
    saes = [load_sae(p) for p in found.values()]
    assert [s.info.layer for s in saes] == [0, 4, 12]
    with pytest.raises(ValueError, match=r"no layer_<L>_width_1m_l0_medium/ folders; it holds \['width 16k, l0 big'"):
        gemma_scope_2_folders(site, width="1m")


def test_load_stack_of_a_site(tmp_path: Path) -> None:
    """load_stack (and so `mechperm match`) on a site folder: width= and the L0 label choose."""
    from mechperm.formats import load_stack

    site = tmp_path / REPO / "resid_post"
    for L in (0, 4, 12):
        for width in ("16k", "65k"):
            for l0 in ("small", "medium"):
                write_gs2(site / f"layer_{L}_width_{width}_l0_{l0}", config=gs2_config(L), seed=L)
    saes = load_stack(site, width="16k")
    assert [s.info.layer for s in saes] == [0, 4, 12]
    assert all("layer_" in s.info.source and "_width_16k_l0_medium" in s.info.source for s in saes)
    small = load_stack(site, width=16384, l0="small", layers=[4, 12])
    assert [s.info.layer for s in small] == [4, 12] and "l0_small" in small[0].info.source
    with pytest.raises(ValueError, match=r"Gemma Scope 2 widths \['16k', '65k'\]; pass width="):
        load_stack(site)
    with pytest.raises(ValueError, match="L0 is a label: pass l0='small', 'medium' or 'big'"):
        load_stack(site, width="16k", l0=82)
    with pytest.raises(ValueError, match=r"no layer_<L>_width_16k_l0_big/ folders"):
        load_stack(site, width="16k", l0="big")


def test_cli_matches_a_site(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    site = tmp_path / "resid_post"
    for L in (3, 4):
        write_gs2(site / f"layer_{L}_width_16k_l0_medium", config=gs2_config(L), seed=L)
        write_gs2(site / f"layer_{L}_width_16k_l0_big", config=gs2_config(L), seed=10 + L)
    done = subprocess.run([sys.executable, "-m", "mechperm", "match", str(site), "--out", str(tmp_path / "run"),
                           "--l0", "big", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [(3, 4)] and summary["pairs"][0]["certified"]
    assert all("l0_big" in i["source"] for i in summary["inputs"]), summary["inputs"]


def test_label_l0_refused_for_numbered_l0_folders(tmp_path: Path) -> None:
    import numpy as np

    from mechperm.formats import load_stack
    from mechperm.synthetic import make_stack

    for t, sae in enumerate(make_stack(2, d=8, F=16, seed=0).saes):
        (tmp_path / f"layer_{t}").mkdir()
        np.savez(tmp_path / f"layer_{t}" / "params.npz", W_enc=sae.W_enc.numpy(), b_enc=sae.b_enc.numpy(),
                 W_dec=sae.W_dec.numpy(), b_dec=sae.b_dec.numpy(), threshold=sae.threshold.numpy())
    assert len(load_stack(tmp_path)) == 2
    with pytest.raises(ValueError, match="l0='medium' is a Gemma Scope 2 label"):
        load_stack(tmp_path, l0="medium")


def test_site_inside_a_hugging_face_cache(tmp_path: Path) -> None:
    """models--google--gemma-scope-2-1b-pt/resid_post: the site inside the repo's snapshot."""
    from mechperm.formats import load_stack

    repo = tmp_path / "hub" / "models--google--gemma-scope-2-1b-pt"
    site = repo / "snapshots" / "abc123" / "resid_post"
    for L in (1, 2):
        write_gs2(site / f"layer_{L}_width_16k_l0_medium", config=gs2_config(L), seed=L)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    assert [s.info.layer for s in load_stack(repo / "resid_post")] == [1, 2]
    assert load_sae(repo / "resid_post" / "layer_2_width_16k_l0_medium").info.layer == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_stack(repo / "mlp_out")
