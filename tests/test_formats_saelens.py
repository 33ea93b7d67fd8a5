"""SAELens folders written by hand: both cfg flavours, each architecture, and what we refuse."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_formats_fixtures import D, F, assert_same, cfg_pre6, cfg_v6, sae_arrays, write_saelens

from mechperm.formats import load_sae, load_stack


def test_v6_jumprelu(tmp_path: Path) -> None:
    arrays = write_saelens(tmp_path, cfg_v6())
    sae = load_sae(tmp_path)
    assert_same(sae, arrays)
    assert sae.activation == "jumprelu" and sae.apply_b_dec_to_input
    info = sae.info
    assert (info.format, info.model_name, info.layer) == ("saelens", "gemma-2-2b", 5)
    assert info.hook_name == "blocks.5.hook_resid_post" and info.neuronpedia_id == "gemma-2-2b/5-my-sae"
    assert info.source == str(tmp_path / "sae_weights.safetensors")


def test_pre6_standard(tmp_path: Path) -> None:
    arrays = write_saelens(tmp_path, cfg_pre6(), drop=("threshold",))
    sae = load_sae(tmp_path / "cfg.json")
    assert_same(sae, arrays)
    assert sae.activation == "relu" and sae.threshold is None
    assert (sae.info.model_name, sae.info.hook_name) == ("gpt2-small", "blocks.8.hook_resid_pre")
    assert sae.info.layer == 8
    assert sae.info.neuronpedia_id == "gpt2-small/8-res-jb"


def test_pre6_hook_name_and_hook_layer(tmp_path: Path) -> None:
    cfg = cfg_pre6(hook_name="blocks.3.hook_mlp_out", hook_layer=3)
    del cfg["hook_point"], cfg["hook_point_layer"]
    write_saelens(tmp_path, cfg)
    assert (load_sae(tmp_path).info.hook_name, load_sae(tmp_path).info.layer) == ("blocks.3.hook_mlp_out", 3)


def test_apply_b_dec_to_input_honoured(tmp_path: Path) -> None:
    for flag in (True, False):
        arrays = write_saelens(tmp_path / str(flag), cfg_v6("standard", apply_b_dec_to_input=flag))
        sae = load_sae(tmp_path / str(flag))
        W_enc, b_enc, b_dec = (torch.from_numpy(arrays[n]) for n in ("W_enc", "b_enc", "b_dec"))
        x = torch.randn(16, D)
        expected = torch.relu((x - b_dec * flag) @ W_enc + b_enc)
        torch.testing.assert_close(sae.encode(x), expected)


@pytest.mark.parametrize(
    "cfg",
    [
        cfg_pre6(activation_fn_str="topk", activation_fn_kwargs={"k": 4}),
        {
            k: v
            for k, v in cfg_pre6(activation_fn_str="topk", activation_fn_kwargs={"k": 4}).items()
            if k != "architecture"
        },
        cfg_v6("topk", k=4, rescale_acts_by_decoder_norm=False),
        cfg_v6("topk", k=4.0),
    ],
    ids=["pre6", "pre6-no-architecture", "v6", "v6-float-k"],
)
def test_topk_k_from_either_cfg(tmp_path: Path, cfg: dict) -> None:
    arrays = write_saelens(tmp_path, cfg, drop=("threshold",))
    sae = load_sae(tmp_path)
    assert (sae.activation, sae.k) == ("topk", 4)
    assert_same(sae, arrays)


def test_topk_without_k_refused(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6("topk"), drop=("threshold",))
    with pytest.raises(ValueError, match=r"cfg.json says architecture 'topk' but gives no integer k"):
        load_sae(tmp_path)


def test_topk_rescale_by_decoder_norm_folded(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["W_dec"] *= np.linspace(0.5, 2, F, dtype=np.float32)[:, None]
    write_saelens(tmp_path, cfg_v6("topk", k=4, rescale_acts_by_decoder_norm=True), arrays, drop=("threshold",))
    before = (tmp_path / "sae_weights.safetensors").read_bytes()
    sae = load_sae(tmp_path)
    assert (tmp_path / "sae_weights.safetensors").read_bytes() == before  # folded in memory only
    W_enc, b_enc, W_dec, b_dec = (torch.from_numpy(arrays[n]) for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    n = W_dec.norm(dim=-1)
    x = torch.randn(32, D)
    pre = ((x - b_dec) @ W_enc + b_enc) * n  # sae_lens TopKSAE.encode with the rescale
    vals, idx = pre.topk(4, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae.decode(sae.encode(x)), (acts / n) @ W_dec + b_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(F))


def test_log_threshold(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    theta = arrays.pop("threshold")
    arrays["log_threshold"] = np.log(theta)
    write_saelens(tmp_path, cfg_v6(), arrays)
    torch.testing.assert_close(load_sae(tmp_path).threshold, torch.from_numpy(theta))


def test_scaling_factor_folded_into_decoder(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["scaling_factor"] = np.linspace(0.5, 1.5, F, dtype=np.float32)
    write_saelens(tmp_path, cfg_pre6(finetuning_scaling_factor=True), arrays)
    sae = load_sae(tmp_path)
    f = torch.rand(5, F)
    scale, W_dec, b_dec = (torch.from_numpy(arrays[n]) for n in ("scaling_factor", "W_dec", "b_dec"))
    expected = (f * scale) @ W_dec + b_dec
    torch.testing.assert_close(sae.decode(f), expected)
    arrays["scaling_factor"][:] = 1
    write_saelens(tmp_path / "ones", cfg_pre6(), arrays)
    assert torch.equal(load_sae(tmp_path / "ones").W_dec, torch.from_numpy(arrays["W_dec"]))


@pytest.mark.parametrize("arch", ["gated", "batchtopk", "matching_pursuit"])
def test_unsupported_architectures(tmp_path: Path, arch: str) -> None:
    write_saelens(tmp_path, cfg_v6(arch))
    pattern = rf"architecture '{arch}', which is unsupported.*supported: \['standard', 'jumprelu', 'topk'\]"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_gated_message_explains(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6("gated"))
    with pytest.raises(ValueError, match="unsupported .gated SAEs have a separate gate path"):
        load_sae(tmp_path)


@pytest.mark.parametrize("norm", [True, "expected_average_only_in", "layer_norm", "constant_norm_rescale"])
def test_normalize_activations_refused(tmp_path: Path, norm: object) -> None:
    write_saelens(tmp_path, cfg_pre6(normalize_activations=norm))
    with pytest.raises(ValueError, match=r"cfg.json says normalize_activations="):
        load_sae(tmp_path)


@pytest.mark.parametrize("norm", [None, False, "none"])
def test_normalize_activations_none_accepted(tmp_path: Path, norm: object) -> None:
    write_saelens(tmp_path, cfg_pre6(normalize_activations=norm))
    assert load_sae(tmp_path).d_sae == F


def test_cfg_d_sae_disagrees_with_tensors(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6(d_sae=F + 1), sae_arrays(D, F))
    pattern = rf"cfg.json says d_sae={F + 1}, but the tensors in .*sae_weights.safetensors have d_sae={F}"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_jumprelu_without_threshold(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6(), drop=("threshold",))
    pattern = r"sae_weights.safetensors has no tensor 'threshold'; it holds \['W_dec', 'W_enc', 'b_dec', 'b_enc'\]"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_bad_cfg_json(tmp_path: Path) -> None:
    write_saelens(tmp_path, cfg_v6())
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg.json is not readable JSON"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"cfg.json holds a JSON list"):
        load_sae(tmp_path)


def test_unknown_extra_tensor_warns(tmp_path: Path) -> None:
    arrays = sae_arrays(D, F)
    arrays["W_skip"] = np.zeros((D, D), np.float32)
    write_saelens(tmp_path, cfg_v6(), arrays)
    with pytest.warns(UserWarning, match="ignoring tensor 'W_skip'"):
        load_sae(tmp_path)


def test_saelens_stack(tmp_path: Path) -> None:
    for L in (4, 1):
        cfg = cfg_v6(metadata={"hook_name": f"blocks.{L}.hook_resid_post"})
        write_saelens(tmp_path / f"layer_{L}", cfg, sae_arrays(D, F, seed=L))
    saes = load_stack(tmp_path, dtype=torch.bfloat16)
    assert [s.info.layer for s in saes] == [1, 4] and all(s.dtype == torch.bfloat16 for s in saes)


def test_stack_of_hook_point_folders(tmp_path: Path) -> None:
    """SAELens repos (jbloom/GPT2-Small-SAEs-Reformatted, ...) name folders blocks.{L}.hook_*;
    several hook points side by side need hook=."""
    from mechperm.formats import load_sae, load_stack

    def cfg(L: int, hook: str) -> dict:
        c = cfg_v6()
        c["metadata"]["hook_name"] = f"blocks.{L}.{hook}"
        return c

    for L in (0, 1, 2):
        for hook in ("hook_resid_pre", "hook_mlp_out"):
            write_saelens(tmp_path / f"blocks.{L}.{hook}", cfg(L, hook), sae_arrays(D, F, seed=L))
    pre = load_stack(tmp_path, hook="resid_pre")
    assert [s.info.layer for s in pre] == [0, 1, 2] and all("hook_resid_pre" in s.info.source for s in pre)
    assert len(load_stack(tmp_path, hook="hook_mlp_out", layers=[1, 2])) == 2
    with pytest.raises(ValueError, match=r"several hook points \['hook_mlp_out', 'hook_resid_pre'\]; pass hook="):
        load_stack(tmp_path)
    with pytest.raises(ValueError, match=r"no blocks.<L>.hook_attn_out/ folders"):
        load_stack(tmp_path, hook="attn_out")
    with pytest.raises(ValueError, match=r"holds SAEs for layers \[0, 1, 2\]; use load_stack"):
        load_sae(tmp_path)
    single = tmp_path / "one_hook"
    for L in (5, 6):
        write_saelens(single / f"blocks.{L}.hook_resid_post", cfg(L, "hook_resid_post"), sae_arrays(D, F, seed=L))
    assert [s.info.layer for s in load_stack(single)] == [5, 6]


def test_stack_of_folders_named_any_way(tmp_path: Path) -> None:
    """SAELens repos name layer folders freely (v5_32k_layer_11, 0-res-sm): each cfg's hook says
    the layer; two SAEs for one layer are refused by name."""
    from mechperm.formats import load_sae, load_stack

    def cfg(L: int) -> dict:
        c = cfg_v6()
        c["metadata"]["hook_name"] = f"blocks.{L}.hook_resid_post"
        return c

    for L in (11, 2, 7):
        write_saelens(tmp_path / "repo" / f"v5_32k_layer_{L}", cfg(L), sae_arrays(D, F, seed=L))
    write_saelens(tmp_path / "repo" / "no_hook", {k: v for k, v in cfg_v6().items() if k != "metadata"}, sae_arrays(D, F))
    saes = load_stack(tmp_path / "repo")
    assert [s.info.layer for s in saes] == [2, 7, 11] and "v5_32k_layer_2" in saes[0].info.source
    with pytest.raises(ValueError, match=r"holds SAEs for layers \[2, 7, 11\]; use load_stack"):
        load_sae(tmp_path / "repo")
    write_saelens(tmp_path / "repo" / "v5_128k_layer_7", cfg(7), sae_arrays(D, F, seed=9))
    with pytest.raises(ValueError, match="two SAELens SAEs for layer 7, v5_128k_layer_7/ and v5_32k_layer_7/"):
        load_stack(tmp_path / "repo")


def test_duplicate_layer_folders_named_in_load_sae(tmp_path: Path) -> None:
    for name in ("layer_3", "layer_03"):
        write_saelens(tmp_path / name, cfg_v6(), sae_arrays(D, F))
    with pytest.raises(ValueError, match="holds both layer_03/ and layer_3/; remove one"):
        load_sae(tmp_path)
