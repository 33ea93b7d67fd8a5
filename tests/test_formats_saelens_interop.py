"""Files written by the real sae-lens package, read by ours: same tensors, same encode/decode."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

from mechperm.formats import load_sae  # noqa: E402

D, F = 12, 40
META = {"model_name": "gpt2", "hook_name": "blocks.6.hook_resid_pre", "neuronpedia_id": "gpt2/6-test"}


def _randomise(sae: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.05)  # trained θ are positive
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)


def _saved(sae: torch.nn.Module, path: Path, inference: bool = False) -> Path:
    _randomise(sae)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (sae.save_inference_model if inference else sae.save_model)(path)
    return path


def _compare_forward(theirs: torch.nn.Module, path: Path, *, exact_tensors: bool = True) -> None:
    ours = load_sae(path)
    state = theirs.state_dict()
    if exact_tensors:
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            if name in state and getattr(ours, name) is not None:
                assert torch.equal(getattr(ours, name), state[name]), name
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), f_theirs)
        torch.testing.assert_close(ours.decode(f_theirs), theirs.decode(f_theirs))
        torch.testing.assert_close(ours(x), theirs(x))
    assert (ours.info.model_name, ours.info.hook_name, ours.info.layer) == ("gpt2", "blocks.6.hook_resid_pre", 6)
    assert ours.info.neuronpedia_id == "gpt2/6-test"


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_standard(tmp_path: Path, apply_b_dec: bool) -> None:
    cfg = sae_lens.StandardSAEConfig(
        d_in=D, d_sae=F, apply_b_dec_to_input=apply_b_dec, metadata=SAEMetadata(**META)
    )
    sae = sae_lens.StandardSAE(cfg)
    _compare_forward(sae, _saved(sae, tmp_path))
    assert load_sae(tmp_path).apply_b_dec_to_input is apply_b_dec


def test_jumprelu(tmp_path: Path) -> None:
    sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F, metadata=SAEMetadata(**META)))
    _compare_forward(sae, _saved(sae, tmp_path))


def test_from_dict(tmp_path: Path) -> None:
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F, "apply_b_dec_to_input": False, "metadata": META}
    sae = sae_lens.SAE.from_dict(cfg)
    _compare_forward(sae, _saved(sae, tmp_path))


@pytest.mark.parametrize("rescale", [False, True])
def test_topk(tmp_path: Path, rescale: bool) -> None:
    cfg = sae_lens.TopKSAEConfig(
        d_in=D, d_sae=F, k=6, rescale_acts_by_decoder_norm=rescale, metadata=SAEMetadata(**META)
    )
    sae = sae_lens.TopKSAE(cfg)
    _compare_forward(sae, _saved(sae, tmp_path), exact_tensors=not rescale)
    assert load_sae(tmp_path).k == 6


@pytest.mark.parametrize("inference", [False, True])
def test_topk_training_sae(tmp_path: Path, inference: bool) -> None:
    """TopKTrainingSAEConfig defaults to rescale_acts_by_decoder_norm=True; either save works."""
    cfg = sae_lens.TopKTrainingSAEConfig(d_in=D, d_sae=F, k=6, metadata=SAEMetadata(**META))
    sae = sae_lens.TopKTrainingSAE(cfg)
    _compare_forward(sae, _saved(sae, tmp_path, inference), exact_tensors=False)


def test_jumprelu_training_sae(tmp_path: Path) -> None:
    cfg = sae_lens.JumpReLUTrainingSAEConfig(d_in=D, d_sae=F, metadata=SAEMetadata(**META))
    sae = sae_lens.JumpReLUTrainingSAE(cfg)
    _compare_forward(sae, _saved(sae, tmp_path))


def test_batchtopk_inference_save_is_jumprelu(tmp_path: Path) -> None:
    cfg = sae_lens.BatchTopKTrainingSAEConfig(
        d_in=D, d_sae=F, k=6, rescale_acts_by_decoder_norm=False, metadata=SAEMetadata(**META)
    )
    sae = sae_lens.BatchTopKTrainingSAE(cfg)
    sae.topk_threshold = torch.tensor(0.3)
    _saved(sae, tmp_path, inference=True)
    ours = load_sae(tmp_path)
    assert ours.activation == "jumprelu" and torch.allclose(ours.threshold, torch.full((F,), 0.3))
    reference = sae_lens.SAE.load_from_disk(tmp_path)
    x = torch.randn(32, D)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), reference.encode(x))


def test_batchtopk_training_save_refused(tmp_path: Path) -> None:
    cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=6, metadata=SAEMetadata(**META))
    _saved(sae_lens.BatchTopKTrainingSAE(cfg), tmp_path)
    pattern = "architecture 'batchtopk', which is unsupported .a BatchTopK training checkpoint: save it with"
    pattern += " sae_lens' save_inference_model"
    with pytest.raises(ValueError, match=pattern):
        load_sae(tmp_path)


def test_gated_refused(tmp_path: Path) -> None:
    _saved(sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D, d_sae=F)), tmp_path)
    with pytest.raises(ValueError, match="architecture 'gated', which is unsupported"):
        load_sae(tmp_path)


def test_jumprelu_negative_threshold(tmp_path: Path) -> None:
    sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F, metadata=SAEMetadata(**META)))
    _saved(sae, tmp_path)
    with torch.no_grad():
        sae.threshold.fill_(-0.5)
        sae.save_model(tmp_path)
    _compare_forward(sae, tmp_path)
