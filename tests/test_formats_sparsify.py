"""EleutherAI sparsify folders written as SparseCoder.save_to_disk writes them, read by ours."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mechperm.formats import load_sae, load_stack
from mechperm.formats.layout import LAYER

D, F, K = 8, 32, 5


def sparsify_tensors(d: int = D, F: int = F, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(F, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return {
        "encoder.weight": (W_dec * (1 + torch.rand(F, 1, generator=g))).to(dtype),
        "encoder.bias": (0.1 * torch.randn(F, generator=g)).to(dtype),
        "W_dec": W_dec.to(dtype),
        "b_dec": (0.1 * torch.randn(d, generator=g)).to(dtype),
    }


def sparsify_cfg(d: int = D, F: int = F, **extra: object) -> dict:
    """``SparseCoderConfig.to_dict()`` plus ``d_in``, as eai-sparsify 1.3.3 writes cfg.json."""
    return {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": F,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": d,
        **extra,
    }


def write_sparsify(folder: Path, tensors: dict | None = None, cfg: dict | None = None, **kw: object) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = sparsify_tensors(**kw) if tensors is None else tensors  # type: ignore[arg-type]
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(sparsify_cfg() if cfg is None else cfg))
    return tensors


def sparsify_reference(
    t: dict, x: torch.Tensor, k: int = K, transcode: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsify's SparseCoder.encode/decode (fused_encoder + decoder_impl), densely."""
    sae_in = x if transcode else x - t["b_dec"]
    pre = torch.relu(torch.nn.functional.linear(sae_in, t["encoder.weight"], t["encoder.bias"]))
    values, indices = pre.topk(k, sorted=False)
    acts = torch.zeros_like(pre).scatter_(-1, indices, values)
    return acts, acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("transcode", [False, True])
def test_load_matches_sparsify(tmp_path: Path, transcode: bool) -> None:
    t = write_sparsify(tmp_path / "layers.7", cfg=sparsify_cfg(transcode=transcode), dtype=torch.float32)
    sae = load_sae(tmp_path / "layers.7")
    assert (sae.activation, sae.k, sae.apply_b_dec_to_input) == ("topk", K, not transcode)
    assert torch.equal(sae.W_enc, t["encoder.weight"].T) and sae.W_enc.is_contiguous()
    for ours, theirs in (("b_enc", "encoder.bias"), ("W_dec", "W_dec"), ("b_dec", "b_dec")):
        assert torch.equal(getattr(sae, ours), t[theirs]), ours
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(1))
    acts, recon = sparsify_reference(t, x, transcode=transcode)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), recon)


def test_bf16_kept_or_converted(tmp_path: Path) -> None:
    t = write_sparsify(tmp_path / "layers.2")
    assert load_sae(tmp_path / "layers.2").dtype == torch.bfloat16
    sae = load_sae(tmp_path / "layers.2" / "sae.safetensors", dtype="float32")
    assert sae.dtype == torch.float32 and torch.equal(sae.W_dec, t["W_dec"].float())


def test_info_from_hookpoint_and_run_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m", "hookpoints": []}))
    write_sparsify(tmp_path / "layers.11")
    write_sparsify(tmp_path / "embed_tokens")
    write_sparsify(tmp_path / "layers.3.mlp")
    info = load_sae(tmp_path / "layers.11").info
    assert (info.format, info.layer, info.hook_name, info.model_name) == (
        "sparsify", 11, "blocks.11.hook_resid_post", "EleutherAI/pythia-70m"
    )
    assert info.source == str(tmp_path / "layers.11" / "sae.safetensors")
    embed = load_sae(tmp_path / "embed_tokens").info
    assert (embed.hook_name, embed.layer) == ("hook_embed", None)
    mlp = load_sae(tmp_path / "layers.3.mlp").info
    assert (mlp.hook_name, mlp.layer) == ("layers.3.mlp", 3)


def test_num_latents_zero_means_expansion_factor(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "a", cfg=sparsify_cfg(num_latents=0, expansion_factor=F // D))
    assert load_sae(tmp_path / "a").d_sae == F
    write_sparsify(tmp_path / "b", cfg=sparsify_cfg(num_latents=0, expansion_factor=2))
    with pytest.raises(ValueError, match=r"cfg.json implies num_latents=16, but the tensors in .*sae.safetensors have 32"):
        load_sae(tmp_path / "b")


def test_zero_skip_ignored_nonzero_refused(tmp_path: Path) -> None:
    t, cfg = sparsify_tensors(), sparsify_cfg(skip_connection=True)
    write_sparsify(tmp_path / "zero", {**t, "W_skip": torch.zeros(D, D, dtype=torch.bfloat16)}, cfg)
    assert torch.equal(load_sae(tmp_path / "zero").W_dec, t["W_dec"])
    write_sparsify(tmp_path / "skip", {**t, "W_skip": torch.eye(D, dtype=torch.bfloat16)}, cfg)
    with pytest.raises(ValueError, match=r"skip/sae.safetensors holds a non-zero W_skip \(8, 8\): unsupported: skip connection"):
        load_sae(tmp_path / "skip")


@pytest.mark.parametrize(
    "cfg, pattern",
    [
        (sparsify_cfg(activation="groupmax"), r"cfg.json says activation 'groupmax'; mechperm reads sparsify's 'topk'"),
        (sparsify_cfg(signed=True), r"cfg.json says signed=true"),
        (sparsify_cfg(k=None), r"cfg.json gives no positive integer k \(k=None\)"),
        (sparsify_cfg(k=F + 1), r"cfg.json says k=33, more than the F=32 latents"),
        (sparsify_cfg(d_in=D + 1), r"cfg.json implies d_in=9, but the tensors in .*sae.safetensors have 8"),
    ],
)
def test_cfg_refused(tmp_path: Path, cfg: dict, pattern: str) -> None:
    write_sparsify(tmp_path, cfg=cfg)
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_missing_tensor_named(tmp_path: Path) -> None:
    t = sparsify_tensors()
    del t["b_dec"]
    write_sparsify(tmp_path, t)
    with pytest.raises(ValueError, match=r"sae.safetensors has no tensor 'b_dec'; it holds \['W_dec', 'encoder.bias', 'encoder.weight'\]"):
        load_sae(tmp_path)


@pytest.mark.parametrize("name", ["W_dec", "encoder.weight"])
def test_transposed_named(tmp_path: Path, name: str) -> None:
    t = sparsify_tensors()
    t[name] = t[name].T.contiguous()
    write_sparsify(tmp_path, t)
    with pytest.raises(ValueError, match=rf"{name} in .*sae.safetensors has shape \(8, 32\); expected \(F, d\) = \(32, 8\) .*is it transposed\?"):
        load_sae(tmp_path)


def test_corrupt_files_named(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "a")
    data = (tmp_path / "a" / "sae.safetensors").read_bytes()
    (tmp_path / "a" / "sae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"a/sae.safetensors (is not a readable safetensors file|.* cannot be read)"):
        load_sae(tmp_path / "a")
    write_sparsify(tmp_path / "b")
    (tmp_path / "b" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"b/cfg.json is not readable JSON"):
        load_sae(tmp_path / "b")


def test_integer_tensor_refused(tmp_path: Path) -> None:
    t = sparsify_tensors()
    t["encoder.bias"] = torch.zeros(F, dtype=torch.int32)
    write_sparsify(tmp_path, t)
    with pytest.raises(ValueError, match=r"encoder.bias in .*sae.safetensors has dtype torch.int32"):
        load_sae(tmp_path)


@pytest.mark.skipif(
    LAYER.match("layers.3") is None,
    reason="load_stack reads layers.{L} folders once the layout.py LAYER change (export report) lands",
)
def test_load_stack_of_a_sparsify_run(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    written = {L: write_sparsify(tmp_path / f"layers.{L}", seed=L) for L in (0, 2, 10)}
    write_sparsify(tmp_path / "embed_tokens")
    write_sparsify(tmp_path / "layers.4.mlp")
    saes = load_stack(tmp_path)
    assert [s.info.layer for s in saes] == [0, 2, 10]
    for sae, L in zip(saes, (0, 2, 10)):
        assert torch.equal(sae.W_dec, written[L]["W_dec"])
    assert [s.info.layer for s in load_stack(tmp_path, layers=[2, 10])] == [2, 10]
