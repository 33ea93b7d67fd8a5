"""Llama Scope folders (hyperparams.json + checkpoints/final.safetensors) read by ours, checked
against lm_saes's SparseAutoEncoder.encode / decode written out densely below."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mechperm import SAE
from mechperm.formats import detect_format, load_sae, load_stack
from mechperm.match import match

D, F, K = 8, 32, 5
# The float32 reconstruction against the float64 reference: its decoder sums cancel, and the
# summation order is the platform's (aarch64's torch gave 1.9e-5 at one entry of 1600, x86's
# below 1e-5). A format error (a missing scale, a transposed matrix) is off by far more.
RECON_TOL = {"rtol": 1e-5, "atol": 5e-5}
NORM_IN, NORM_OUT = 3.5, 0.75  # dataset_average_activation_norm: s_in = sqrt(8)/3.5, s_out = sqrt(8)/0.75


def llama_scope_tensors(d: int = D, F: int = F, seed: int = 0, dtype: torch.dtype = torch.float32,
                        dead: tuple[int, ...] = ()) -> dict:
    """Decoder columns of unequal norms (lm_saes keeps them; sparsity_include_decoder_norm)."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(d, F, generator=g) * (0.2 + 2 * torch.rand(F, generator=g))
    dec[:, list(dead)] = 0.0
    return {
        "encoder.weight": (dec.T * (1 + torch.rand(F, 1, generator=g))).to(dtype).contiguous(),
        "encoder.bias": (0.3 * torch.randn(F, generator=g)).to(dtype),
        "decoder.weight": dec.to(dtype),
        "decoder.bias": (0.1 * torch.randn(d, generator=g)).to(dtype),
    }


def llama_scope_cfg(d: int = D, F: int = F, layer: int = 7, **extra: object) -> dict:
    """hyperparams.json as the Llama Scope release writes it (its keys and their values' kinds)."""
    return {
        "sae_type": "sae",
        "hook_point_in": f"blocks.{layer}.hook_resid_post",
        "hook_point_out": f"blocks.{layer}.hook_resid_post",
        "d_model": d,
        "expansion_factor": F // d,
        "d_sae": F,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.52734375,
        "top_k": 50,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_OUT},
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "sparsity_include_decoder_norm": True,
        "use_glu_encoder": False,
        **extra,
    }


def write_llama_scope(folder: Path, tensors: dict | None = None, cfg: dict | None = None, **kw) -> dict:
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    tensors = llama_scope_tensors(**kw) if tensors is None else tensors
    save_file(tensors, str(folder / "checkpoints" / "final.safetensors"))
    (folder / "hyperparams.json").write_text(json.dumps(llama_scope_cfg() if cfg is None else cfg))
    return tensors


def lm_saes_reference(t: dict, cfg: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lm_saes's encode and decode in float64, with the reconstruction brought back to model space:
    x·s_in (− b_D), h = x Eᵀ + b, gate on h·‖d_i‖, f = h·gate, (f Dᵀ + b_D) / s_out."""
    t = {k: v.double() for k, v in t.items()}
    d = cfg["d_model"]
    if cfg.get("norm_activation", "dataset-wise") == "dataset-wise":
        s_in = math.sqrt(d) / cfg["dataset_average_activation_norm"]["in"]
        s_out = math.sqrt(d) / cfg["dataset_average_activation_norm"]["out"]
    else:
        s_in = s_out = 1.0
    x = x.double() * s_in
    if cfg.get("apply_decoder_bias_to_pre_encoder", True):
        x = x - t["decoder.bias"]
    h = x @ t["encoder.weight"].T + t["encoder.bias"]
    true_acts = h * t["decoder.weight"].norm(dim=0) if cfg.get("sparsity_include_decoder_norm", True) else h
    act = cfg["act_fn"]
    if act == "jumprelu":
        gate = true_acts > cfg["jump_relu_threshold"]
    elif act == "relu":
        gate = true_acts > 0
    else:  # topk: the k largest of clamp(true_acts, 0)
        clamped = true_acts.clamp(min=0.0)
        kth = torch.kthvalue(clamped, clamped.shape[-1] - cfg["top_k"] + 1, dim=-1, keepdim=True).values
        gate = clamped >= kth
    f = h * gate
    return f, (f @ t["decoder.weight"].T + t["decoder.bias"]) / s_out


def _x(n: int = 200, seed: int = 1) -> torch.Tensor:
    return 2.0 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bias_to_input", [False, True])
@pytest.mark.parametrize("act", ["jumprelu", "relu", "topk"])
def test_load_matches_lm_saes(tmp_path: Path, act: str, bias_to_input: bool) -> None:
    cfg = llama_scope_cfg(act_fn=act, top_k=K, apply_decoder_bias_to_pre_encoder=bias_to_input,
                          jump_relu_threshold=0.4)
    folder = tmp_path / "Llama3_1-8B-Base-L7R-8x"
    t = write_llama_scope(folder, cfg=cfg)
    sae = load_sae(folder)
    assert (sae.activation, sae.apply_b_dec_to_input, sae.dtype) == (act, False, torch.float32)
    assert sae.k == (K if act == "topk" else None)
    assert (sae.info.layer, sae.info.hook_name, sae.info.model_name, sae.info.format) == (
        7, "blocks.7.hook_resid_post", "meta-llama/Llama-3.1-8B", "llama_scope")
    assert sae.info.source == str(folder / "checkpoints" / "final.safetensors")
    x = _x()
    f_ref, recon_ref = lm_saes_reference(t, cfg, x)
    recon = sae(x).double()
    torch.testing.assert_close(recon, recon_ref, **RECON_TOL)
    f = sae.encode(x).double()
    assert torch.equal(f != 0, f_ref != 0)  # the same features fire (no pre-activation near a gate here)
    if act == "topk":  # the decoder norms moved into the encoder: activations h·‖d_i‖, unit decoder rows
        norms = t["decoder.weight"].double().norm(dim=0)
        torch.testing.assert_close(f, f_ref * norms, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-6)
    assert int((f_ref != 0).sum()) > 0 and int((f_ref == 0).sum()) > 0  # the gates did something


def test_jumprelu_thresholds_per_feature(tmp_path: Path) -> None:
    """θ / ‖d_i‖ per feature; the encoder scaled by s_in, the decoder by 1 / s_out."""
    t = write_llama_scope(tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    s_in, s_out = math.sqrt(D) / NORM_IN, math.sqrt(D) / NORM_OUT
    norms = t["decoder.weight"].norm(dim=0)
    torch.testing.assert_close(sae.threshold, 0.52734375 / norms)
    torch.testing.assert_close(sae.W_enc, t["encoder.weight"].T * s_in)
    torch.testing.assert_close(sae.W_dec, t["decoder.weight"].T / s_out)
    torch.testing.assert_close(sae.b_dec, t["decoder.bias"] / s_out)
    assert torch.equal(sae.b_enc, t["encoder.bias"])


def test_zero_decoder_column_never_fires(tmp_path: Path) -> None:
    t = write_llama_scope(tmp_path / "sae", dead=(3, 9))
    cfg = llama_scope_cfg()
    sae = load_sae(tmp_path / "sae")
    assert math.isinf(float(sae.threshold[3])) and math.isinf(float(sae.threshold[9]))
    assert bool(torch.isfinite(sae.threshold[[0, 1, 2, 4]]).all())
    x = _x()
    f = sae.encode(x)
    assert not bool(f[:, [3, 9]].any())
    torch.testing.assert_close(sae(x).double(), lm_saes_reference(t, cfg, x)[1], **RECON_TOL)
    folded = sae.fold()
    assert bool(folded.invalid[3]) and bool(folded.invalid[9]) and bool(torch.isfinite(folded.W_dec).all())


@pytest.mark.parametrize("act", ["relu", "topk"])
def test_zero_decoder_column_other_activations(tmp_path: Path, act: str) -> None:
    cfg = llama_scope_cfg(act_fn=act, top_k=K)
    t = write_llama_scope(tmp_path / "sae", cfg=cfg, dead=(5,))
    sae = load_sae(tmp_path / "sae")
    assert bool(torch.isfinite(sae.W_dec).all()) and bool(torch.isfinite(sae.W_enc).all())
    x = _x()
    assert not bool(sae.encode(x)[:, 5].any())
    torch.testing.assert_close(sae(x).double(), lm_saes_reference(t, cfg, x)[1], **RECON_TOL)


def test_inference_mode_and_no_decoder_norm(tmp_path: Path) -> None:
    cfg = llama_scope_cfg(norm_activation="inference", sparsity_include_decoder_norm=False)
    del cfg["dataset_average_activation_norm"]
    t = write_llama_scope(tmp_path / "sae", cfg=cfg)
    sae = load_sae(tmp_path / "sae")
    assert torch.equal(sae.W_enc, t["encoder.weight"].T) and torch.equal(sae.W_dec, t["decoder.weight"].T)
    assert bool((sae.threshold == 0.52734375).all())
    x = _x()
    torch.testing.assert_close(sae(x).double(), lm_saes_reference(t, cfg, x)[1], **RECON_TOL)


def test_norms_keyed_by_hook_point_and_transcoder_sites(tmp_path: Path) -> None:
    """Newer lm_saes key the norms by hook point; an M (MLP-out) SAE reads one hook, writes another."""
    cfg = llama_scope_cfg(hook_point_out="blocks.7.hook_mlp_out",
                          dataset_average_activation_norm={"blocks.7.hook_resid_post": NORM_IN,
                                                           "blocks.7.hook_mlp_out": NORM_OUT})
    t = write_llama_scope(tmp_path / "Llama3_1-8B-Base-L7M-8x", cfg=cfg)
    sae = load_sae(tmp_path / "Llama3_1-8B-Base-L7M-8x")
    ref_cfg = {**cfg, "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_OUT}}
    x = _x()
    torch.testing.assert_close(sae(x).double(), lm_saes_reference(t, ref_cfg, x)[1], **RECON_TOL)


def test_bf16_rounded_once(tmp_path: Path) -> None:
    t = write_llama_scope(tmp_path / "sae", dtype=torch.bfloat16)
    sae = load_sae(tmp_path / "sae")
    assert sae.dtype == torch.bfloat16
    s_in = math.sqrt(D) / NORM_IN
    assert torch.equal(sae.W_enc, (t["encoder.weight"].float().T * s_in).to(torch.bfloat16))
    assert load_sae(tmp_path / "sae", dtype="float32").dtype == torch.float32


def test_sniff_and_entry_points(tmp_path: Path) -> None:
    folder = tmp_path / "Llama3_1-8B-Base-L3R-8x"
    write_llama_scope(folder)
    for p in (folder, folder / "hyperparams.json", folder / "checkpoints" / "final.safetensors"):
        assert detect_format(p).name == "llama_scope"
        assert isinstance(load_sae(p), SAE)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "hyperparams.json").write_text("{}")
    with pytest.raises(ValueError, match="no format recognises|not recognised|recogni"):
        load_sae(tmp_path / "other")


def test_stack_of_a_repo_folder(tmp_path: Path) -> None:
    """fnlp/Llama3_1-8B-Base-LXR-8x: one Llama3_1-8B-Base-L{L}R-8x folder per layer."""
    repo = tmp_path / "Llama3_1-8B-Base-LXR-8x"
    for L in (0, 1, 2, 10):
        write_llama_scope(repo / f"Llama3_1-8B-Base-L{L}R-8x", cfg=llama_scope_cfg(layer=L), seed=L)
    saes = load_stack(repo, layers=[0, 1, 2])
    assert [s.info.layer for s in saes] == [0, 1, 2]
    assert [s.info.layer for s in load_stack(repo, progress=True)] == [0, 1, 2, 10]
    with pytest.raises(ValueError, match="holds SAEs for layers"):
        load_sae(repo)
    res = match(saes[0], saes[1])
    assert res.certified and sorted(res.perm.tolist()) == list(range(F))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_activation": "token-wise"}, "token-wise.*no linear SAE"),
        ({"dataset_average_activation_norm": {"in": 3.0}}, r"dataset_average_activation_norm\['out'\]"),
        ({"dataset_average_activation_norm": None}, r"dataset_average_activation_norm\['in'\]"),
        ({"use_glu_encoder": True}, "GLU"),
        ({"sae_type": "crosscoder"}, "sae_type='crosscoder'"),
        ({"jump_relu_threshold": -0.1}, "< 0"),
        ({"jump_relu_threshold": "x"}, "jump_relu_threshold='x'"),
        ({"act_fn": "topk", "top_k": 0}, "top_k=0"),
        ({"act_fn": "batchtopk"}, "act_fn='batchtopk'"),
        ({"d_sae": 64}, "d_sae=64.*do not belong together"),
        ({"d_model": 0}, "d_model=0"),
    ],
)
def test_bad_config(tmp_path: Path, change: dict, message: str) -> None:
    write_llama_scope(tmp_path / "sae", cfg={**llama_scope_cfg(), **change})
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "sae")


def test_bad_tensors(tmp_path: Path) -> None:
    t = llama_scope_tensors()
    write_llama_scope(tmp_path / "transposed", tensors={**t, "decoder.weight": t["decoder.weight"].T.contiguous()})
    with pytest.raises(ValueError, match=r"decoder.weight in .*final.safetensors has shape \(32, 8\); "
                                         r"expected \(d, F\) = \(8, 32\).*is it transposed\?"):
        load_sae(tmp_path / "transposed")
    missing = {k: v for k, v in t.items() if k != "encoder.bias"}
    write_llama_scope(tmp_path / "missing", tensors=missing)
    with pytest.raises(ValueError, match="has no tensor 'encoder.bias'"):
        load_sae(tmp_path / "missing")
    bad = {**t, "encoder.bias": t["encoder.bias"].clone()}
    bad["encoder.bias"][4] = float("nan")
    write_llama_scope(tmp_path / "nan", tensors=bad)
    with pytest.raises(ValueError, match="b_enc.*non-finite"):
        load_sae(tmp_path / "nan")
    write_llama_scope(tmp_path / "cut", tensors=t)
    weights = tmp_path / "cut" / "checkpoints" / "final.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(ValueError, match="truncated"):
        load_sae(tmp_path / "cut")
    (tmp_path / "broken" / "checkpoints").mkdir(parents=True)
    (tmp_path / "broken" / "hyperparams.json").write_text("{not json")
    (tmp_path / "broken" / "checkpoints" / "final.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="hyperparams.json is not readable JSON"):
        load_sae(tmp_path / "broken")


def test_no_decoder_bias_and_unknown_tensors(tmp_path: Path) -> None:
    t = llama_scope_tensors()
    cfg = llama_scope_cfg(use_decoder_bias=False)
    kept = {k: v for k, v in t.items() if k != "decoder.bias"}
    write_llama_scope(tmp_path / "sae", tensors={**kept, "extra": torch.zeros(3)}, cfg=cfg)
    with pytest.warns(UserWarning, match="ignoring tensor 'extra'"):
        sae = load_sae(tmp_path / "sae")
    assert not bool(sae.b_dec.any())
    x = _x()
    ref = lm_saes_reference({**kept, "decoder.bias": torch.zeros(D)}, cfg, x)[1]
    torch.testing.assert_close(sae(x).double(), ref, **RECON_TOL)


def test_stack_inside_a_hugging_face_cache(tmp_path: Path) -> None:
    """models--fnlp--Llama3_1-8B-Base-LXR-8x/snapshots/<rev>/...: where hf_hub_download puts it."""
    repo = tmp_path / "hub" / "models--fnlp--Llama3_1-8B-Base-LXR-8x"
    snap = repo / "snapshots" / "0123abc"
    for L in (4, 5):
        write_llama_scope(snap / f"Llama3_1-8B-Base-L{L}R-8x", cfg=llama_scope_cfg(layer=L), seed=L)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    saes = load_stack(repo)
    assert [s.info.layer for s in saes] == [4, 5]
    assert load_sae(snap / "Llama3_1-8B-Base-L5R-8x").info.layer == 5


def test_cli_matches_a_llama_scope_repo(tmp_path: Path) -> None:
    """`mechperm match` on the repo folder as downloaded: every adjacent pair, certified."""
    import subprocess
    import sys

    repo = tmp_path / "Llama3_1-8B-Base-LXR-8x"
    for L in range(3):
        write_llama_scope(repo / f"Llama3_1-8B-Base-L{L}R-8x", cfg=llama_scope_cfg(layer=L), seed=L)
    done = subprocess.run([sys.executable, "-m", "mechperm", "match", str(repo), "--out", str(tmp_path / "run"),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [(0, 1), (1, 2)]
    assert all(p["certified"] for p in summary["pairs"])


def test_neuronpedia_ids_of_the_published_folders(tmp_path: Path) -> None:
    """As sae-lens 6.54's pretrained_saes.yaml lists them (llama_scope_lx{r,a,m}_{8,32}x)."""
    from mechperm.formats.llama_scope import llama_scope_info

    cfg = llama_scope_cfg(d=4096, F=32768)
    cases = {"Llama3_1-8B-Base-L0R-8x": "llama3.1-8b/0-llamascope-res-32k",
             "Llama3_1-8B-Base-L12A-32x": "llama3.1-8b/12-llamascope-att-131k",
             "Llama3_1-8B-Base-L31M-8x": "llama3.1-8b/31-llamascope-mlp-32k",
             "Llama3_1-8B-Base-L3TC-8x": None, "my-own-L3R-8x": None, "sae": None}
    for folder, expected in cases.items():
        assert llama_scope_info(tmp_path / folder, tmp_path / "x", cfg).neuronpedia_id == expected, folder


def test_zero_decoder_column_without_the_norm_gate(tmp_path: Path) -> None:
    """sparsity_include_decoder_norm false: the feature still fires in encode (adding nothing)."""
    cfg = llama_scope_cfg(sparsity_include_decoder_norm=False, jump_relu_threshold=0.1)
    t = write_llama_scope(tmp_path / "sae", cfg=cfg, dead=(2,))
    sae = load_sae(tmp_path / "sae")
    x = _x()
    f_ref, recon_ref = lm_saes_reference(t, cfg, x)
    assert bool(f_ref[:, 2].any())
    torch.testing.assert_close(sae.encode(x).double(), f_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae(x).double(), recon_ref, **RECON_TOL)
