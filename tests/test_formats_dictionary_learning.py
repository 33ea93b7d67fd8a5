"""dictionary_learning folders (ae.pt + config.json) as its classes save them, read by ours and
checked against those classes' encode / decode written out densely below."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mechperm import SAE
from mechperm.formats import detect_format, load_sae, load_stack

D, F, K = 8, 32, 4
CLASSES = ["AutoEncoder", "AutoEncoderNew", "JumpReluAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
           "MatryoshkaBatchTopKSAE"]


def state_dict(dict_class: str, seed: int = 0, threshold: float = 0.3) -> dict:
    """What ``type(ae).state_dict()`` holds for each class (names, shapes, buffers)."""
    g = torch.Generator().manual_seed(seed)
    dec = torch.randn(F, D, generator=g)
    dec /= dec.norm(dim=1, keepdim=True)
    enc = dec * (1 + torch.rand(F, 1, generator=g))  # [F, d]
    b_enc, b_dec = 0.2 * torch.randn(F, generator=g), 0.1 * torch.randn(D, generator=g)
    if dict_class == "AutoEncoder":
        return {"bias": b_dec, "encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec.T.contiguous()}
    if dict_class == "AutoEncoderNew":
        return {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec.T.contiguous(),
                "decoder.bias": b_dec}
    if dict_class == "JumpReluAutoEncoder":
        return {"W_enc": enc.T.contiguous(), "b_enc": b_enc, "W_dec": dec, "b_dec": b_dec,
                "threshold": threshold * torch.rand(F, generator=g)}
    buffers = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold)}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**buffers, "decoder.weight": dec.T.contiguous(), "encoder.weight": enc, "encoder.bias": b_enc,
                "b_dec": b_dec}
    assert dict_class == "MatryoshkaBatchTopKSAE"
    return {**buffers, "group_sizes": torch.tensor([8, 24]), "W_enc": enc.T.contiguous(), "b_enc": b_enc,
            "W_dec": dec, "b_dec": b_dec}


def config(dict_class: str, layer: int = 3, **trainer: object) -> dict:
    return {"trainer": {"dict_class": dict_class, "trainer_class": "X", "activation_dim": D, "dict_size": F,
                        "k": K, "layer": layer, "lm_name": "EleutherAI/pythia-70m-deduped",
                        "submodule_name": f"resid_post_layer_{layer}", **trainer},
            "buffer": {"d_submodule": D, "ctx_len": 128}}


def write(folder: Path, dict_class: str, state: dict | None = None, cfg: dict | None = None, **kw) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    state = state_dict(dict_class, **kw) if state is None else state
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps(config(dict_class) if cfg is None else cfg))
    return state


def reference(dict_class: str, s: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The class's encode (inference defaults) and decode, from dictionary_learning 0.1.0."""
    relu = torch.relu
    if dict_class == "AutoEncoder":
        f = relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["bias"]
    if dict_class == "AutoEncoderNew":
        f = relu(x @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["decoder.bias"]
    if dict_class == "JumpReluAutoEncoder":  # apply_b_dec_to_input is False (not saved)
        pre = x @ s["W_enc"] + s["b_enc"]
        f = relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
        f = post * (post > s["threshold"])
        return f, f @ s["W_dec"] + s["b_dec"]
    post = relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    if dict_class == "AutoEncoderTopK":  # use_threshold=False by default: the top k
        top = post.topk(int(s["k"]), sorted=False, dim=-1)
        f = torch.zeros_like(post).scatter_(-1, top.indices, top.values)
    else:  # BatchTopKSAE: use_threshold=True by default
        f = post * (post > s["threshold"])
    return f, f @ s["decoder.weight"].T + s["b_dec"]


@pytest.mark.parametrize("threshold", [0.3, -1.0])  # -1: a BatchTopK threshold never set in training
@pytest.mark.parametrize("dict_class", CLASSES)
def test_load_matches_dictionary_learning(tmp_path: Path, dict_class: str, threshold: float) -> None:
    s = write(tmp_path / "trainer_0", dict_class, threshold=threshold)
    sae = load_sae(tmp_path / "trainer_0")
    assert sae.info.format == "dictionary_learning" and sae.info.layer == 3
    assert sae.info.model_name == "EleutherAI/pythia-70m-deduped"
    assert sae.info.source == str(tmp_path / "trainer_0" / "ae.pt")
    assert sae.W_enc.is_contiguous() and sae.W_dec.is_contiguous()
    x = torch.randn(100, D, generator=torch.Generator().manual_seed(1))
    f, recon = reference(dict_class, s, x)
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x), recon)
    assert int((f == 0).sum()) > 0 and int((f != 0).sum()) > 0
    if dict_class == "AutoEncoderTopK":
        assert sae.k == K


def test_entry_points_and_dtype(tmp_path: Path) -> None:
    write(tmp_path / "ae", "AutoEncoderTopK")
    for p in (tmp_path / "ae", tmp_path / "ae" / "ae.pt", tmp_path / "ae" / "config.json"):
        assert detect_format(p).name == "dictionary_learning"
        assert isinstance(load_sae(p), SAE)
    assert load_sae(tmp_path / "ae", dtype="bfloat16").dtype == torch.bfloat16


def test_stack_of_layer_folders(tmp_path: Path) -> None:
    for L in (0, 1):
        write(tmp_path / f"layer_{L}", "JumpReluAutoEncoder", cfg=config("JumpReluAutoEncoder", layer=L), seed=L)
    assert [s.info.layer for s in load_stack(tmp_path)] == [0, 1]


@pytest.mark.parametrize(
    ("dict_class", "change", "message"),
    [
        ("GatedAutoEncoder", {}, "GatedAutoEncoder.*gated SAE: unsupported"),
        ("Nope", {}, "dict_class='Nope'; mechperm reads"),
        ("AutoEncoderTopK", {"k": 7}, "says k=7, but the buffer k .* is 4"),
        ("AutoEncoder", {"dict_size": 64}, "dict_size=64, but the tensors"),
    ],
)
def test_bad_config(tmp_path: Path, dict_class: str, change: dict, message: str) -> None:
    write(tmp_path / "ae", "AutoEncoderTopK" if dict_class == "AutoEncoderTopK" else "AutoEncoder",
          cfg=config(dict_class, **change))
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path / "ae")


def test_bad_files(tmp_path: Path) -> None:
    s = state_dict("AutoEncoder")
    write(tmp_path / "transposed", "AutoEncoder", state={**s, "decoder.weight": s["decoder.weight"].T.contiguous()})
    with pytest.raises(ValueError, match=r"decoder.weight in .*ae.pt has shape \(32, 8\); expected \(8, 32\)"
                                         r".*is it transposed\?"):
        load_sae(tmp_path / "transposed")
    write(tmp_path / "missing", "AutoEncoder", state={k: v for k, v in s.items() if k != "bias"})
    with pytest.raises(ValueError, match="has no tensor 'bias'"):
        load_sae(tmp_path / "missing")
    write(tmp_path / "nan", "AutoEncoder", state={**s, "encoder.bias": torch.full((F,), float("nan"))})
    with pytest.raises(ValueError, match="b_enc.*non-finite"):
        load_sae(tmp_path / "nan")
    (tmp_path / "pickle").mkdir()
    torch.save({"weights": [1, 2]}, tmp_path / "pickle" / "ae.pt")
    (tmp_path / "pickle" / "config.json").write_text(json.dumps(config("AutoEncoder")))
    with pytest.raises(ValueError, match="not a dict of tensors"):
        load_sae(tmp_path / "pickle")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ae.pt").write_bytes(b"not a zip file")
    (tmp_path / "broken" / "config.json").write_text(json.dumps(config("AutoEncoder")))
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        load_sae(tmp_path / "broken")


def test_unknown_tensors_warned(tmp_path: Path) -> None:
    write(tmp_path / "ae", "AutoEncoder", state={**state_dict("AutoEncoder"), "extra": torch.zeros(2)})
    with pytest.warns(UserWarning, match=r"ignoring tensors \['extra'\]"):
        load_sae(tmp_path / "ae")


def test_sweep_stack_of_trainers(tmp_path: Path) -> None:
    """SAE Bench's dictionary_learning sweeps: {sweep}/resid_post_layer_{L}/trainer_{N}/."""
    sweep = tmp_path / "gemma-2-2b_topk_width-2pow14_date-1109"
    for L in (3, 7):
        for N in (0, 1):
            write(sweep / f"resid_post_layer_{L}" / f"trainer_{N}", "AutoEncoderTopK",
                  cfg=config("AutoEncoderTopK", layer=L), seed=10 * L + N)
    saes = load_stack(sweep, trainer=1)
    assert [s.info.layer for s in saes] == [3, 7] and all("trainer_1" in s.info.source for s in saes)
    assert "trainer_0" in load_sae(sweep / "resid_post_layer_3", trainer=0).info.source
    with pytest.raises(ValueError, match=r"holds several trainers \[0, 1\]; pass trainer="):
        load_stack(sweep)
    with pytest.raises(ValueError, match=r"has no trainer_5/; it holds trainers \[0, 1\]"):
        load_stack(sweep, trainer=5)


def test_legacy_torch_save_format(tmp_path: Path) -> None:
    """ae.pt written without the zip format (torch < 1.6, or _use_new_zipfile_serialization=False)."""
    s = state_dict("AutoEncoder")
    (tmp_path / "ae").mkdir()
    torch.save(s, tmp_path / "ae" / "ae.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "ae" / "config.json").write_text(json.dumps(config("AutoEncoder")))
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(load_sae(tmp_path / "ae")(x), reference("AutoEncoder", s, x)[1])


@pytest.mark.parametrize("zip_format", [True, False])
def test_tied_weights_survive_the_transposes(tmp_path: Path, zip_format: bool) -> None:
    """decoder.weight a view of encoder.weight's storage (tied): copying one must not spoil the
    other (pages released after a copy are re-read from a mapped file, and kept otherwise)."""
    n = 4096  # features: 128 KiB of encoder, many whole pages to release
    g = torch.Generator().manual_seed(5)
    enc = torch.randn(n, D, generator=g)
    s = {"bias": torch.zeros(D), "encoder.weight": enc, "encoder.bias": torch.zeros(n), "decoder.weight": enc.T}
    expected = enc.clone()
    (tmp_path / "ae").mkdir()
    torch.save(s, tmp_path / "ae" / "ae.pt", _use_new_zipfile_serialization=zip_format)
    cfg = config("AutoEncoder")
    cfg["trainer"]["dict_size"] = n
    (tmp_path / "ae" / "config.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path / "ae")
    assert torch.equal(sae.W_enc, expected.T) and torch.equal(sae.W_dec, expected)
