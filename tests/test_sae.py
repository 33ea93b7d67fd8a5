"""Contracts of the SAE model: validation, encode/decode, conversion, and folding."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_sae
from hypothesis import given, settings
from hypothesis import strategies as st

from mechperm import SAE, SAEInfo


# ---------------------------------------------------------------- validation
def test_validate_accepts_well_formed() -> None:
    sae = random_sae(8, 12)
    assert (sae.d_in, sae.d_sae) == (8, 12)
    assert "F=12" in repr(sae)


def test_validate_transposed_decoder_names_tensor_and_source() -> None:
    sae = random_sae(8, 12, source="layer_3/params.npz")
    with pytest.raises(ValueError, match=r"W_dec in layer_3/params.npz has shape \(8, 12\).*transposed"):
        dataclasses.replace(sae, W_dec=sae.W_dec.T.contiguous())


def test_validate_wrong_bias_shape() -> None:
    sae = random_sae(8, 12)
    with pytest.raises(ValueError, match=r"b_enc has shape \(11,\); expected \(12,\)"):
        dataclasses.replace(sae, b_enc=sae.b_enc[:11])


def test_validate_nan_names_tensor_and_index() -> None:
    sae = random_sae(8, 12, source="x.npz")
    W = sae.W_enc.clone()
    W[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"W_enc in x.npz holds non-finite values \(1 of 96; first nan at index \(2, 5\)"):
        dataclasses.replace(sae, W_enc=W)


def test_validate_inf_in_weights_rejected_but_inf_threshold_allowed() -> None:
    sae = random_sae(8, 12)
    b = sae.b_dec.clone()
    b[0] = float("inf")
    with pytest.raises(ValueError, match="b_dec holds non-finite"):
        dataclasses.replace(sae, b_dec=b)
    theta = sae.threshold.clone()
    theta[3] = float("inf")  # a disabled feature: legitimate
    dataclasses.replace(sae, threshold=theta)
    theta[4] = float("-inf")
    with pytest.raises(ValueError, match="threshold holds non-finite"):
        dataclasses.replace(sae, threshold=theta)


def test_validate_jumprelu_needs_threshold() -> None:
    sae = random_sae(8, 12)
    with pytest.raises(ValueError, match="has no threshold"):
        dataclasses.replace(sae, threshold=None)


def test_validate_integer_dtype_rejected() -> None:
    sae = random_sae(8, 12)
    with pytest.raises(ValueError, match="b_dec has dtype torch.int64; expected a floating dtype"):
        dataclasses.replace(sae, b_dec=torch.zeros(8, dtype=torch.int64))


def test_validate_topk_needs_k() -> None:
    sae = random_sae(8, 12, activation="topk")
    with pytest.raises(ValueError, match=r"needs an integer k in \[1, 12\]"):
        dataclasses.replace(sae, k=0)


def test_validate_unknown_activation() -> None:
    sae = random_sae(8, 12, activation="relu")
    with pytest.raises(ValueError, match="activation 'gelu'.*choose one of"):
        dataclasses.replace(sae, activation="gelu")


# ---------------------------------------------------------------- forward
def test_encode_jumprelu_matches_definition() -> None:
    sae = random_sae(8, 12)
    x = torch.randn(5, 8)
    pre = x @ sae.W_enc + sae.b_enc
    expected = torch.where(pre > sae.threshold, pre, torch.zeros_like(pre))
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae(x), expected @ sae.W_dec + sae.b_dec)


def test_encode_applies_b_dec_when_asked() -> None:
    sae = dataclasses.replace(random_sae(8, 12, activation="relu"), apply_b_dec_to_input=True)
    x = torch.randn(5, 8)
    torch.testing.assert_close(sae.encode(x), torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc))


def test_encode_topk_keeps_k() -> None:
    sae = random_sae(8, 16, activation="topk", k=3)
    f = sae.encode(torch.randn(7, 8))
    assert int((f != 0).sum(dim=1).max()) <= 3


def test_encode_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="expects d=8"):
        random_sae(8, 12).encode(torch.randn(3, 9))


def test_to_converts_dtype_and_keeps_info() -> None:
    sae = random_sae(8, 12, source="s")
    half = sae.to(dtype=torch.bfloat16)
    assert half.W_dec.dtype == torch.bfloat16 and half.threshold.dtype == torch.bfloat16
    assert half.info.source == "s"
    assert sae.W_dec.dtype == torch.float32  # the original is untouched


# ---------------------------------------------------------------- folding
def _jumprelu_sae(d: int, F: int, seed: int, theta_log_sigma: float) -> SAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(F, d, generator=g, dtype=torch.float64)
    theta = torch.exp(theta_log_sigma * torch.randn(F, generator=g, dtype=torch.float64))
    return SAE(
        W_enc=torch.randn(d, F, generator=g, dtype=torch.float64) * theta,
        b_enc=torch.randn(F, generator=g, dtype=torch.float64),
        W_dec=W_dec,
        b_dec=torch.randn(d, generator=g, dtype=torch.float64),
        threshold=theta,
    )


@settings(max_examples=200, deadline=None)
@given(
    d=st.integers(1, 12),
    F=st.integers(1, 24),
    seed=st.integers(0, 2**31 - 1),
    sigma=st.floats(0.0, 3.0),
    b_dec_to_input=st.booleans(),
)
def test_fold_jumprelu_preserves_output(d: int, F: int, seed: int, sigma: float, b_dec_to_input: bool) -> None:
    sae = dataclasses.replace(_jumprelu_sae(d, F, seed, sigma), apply_b_dec_to_input=b_dec_to_input)
    folded = sae.fold()
    x = torch.randn(32, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    f, f_folded = sae.encode(x), folded.encode(x)
    theta = sae.threshold
    # pre > θ and pre/θ > 1 can only disagree within rounding of the threshold itself.
    pre = x - sae.b_dec if b_dec_to_input else x
    pre = pre @ sae.W_enc + sae.b_enc
    boundary = (pre - theta).abs() <= 1e-12 * theta.abs()
    ok = ~boundary
    torch.testing.assert_close(f_folded[ok], (f / theta)[ok], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        (f_folded * ok) @ folded.W_dec + folded.b_dec, (f * ok) @ sae.W_dec + sae.b_dec, rtol=1e-10, atol=1e-10
    )
    assert torch.equal(folded.threshold, torch.ones_like(theta))
    assert folded.folded and not bool(folded.invalid.any())


@settings(max_examples=100, deadline=None)
@given(
    F=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
    bad=st.lists(st.sampled_from(["zero", "neg", "inf", "zero_row"]), min_size=1, max_size=4),
)
def test_fold_reports_invalid_features_and_never_divides_by_them(F: int, seed: int, bad: list[str]) -> None:
    d = 6
    sae = _jumprelu_sae(d, F, seed, 1.0)
    theta, W_dec = sae.threshold.clone(), sae.W_dec.clone()
    expected = torch.zeros(F, dtype=torch.bool)
    for n, kind in enumerate(bad):
        i = (seed + 7 * n) % F
        expected[i] = True
        if kind == "zero":
            theta[i] = 0.0
        elif kind == "neg":
            theta[i] = -0.5
        elif kind == "inf":
            theta[i] = float("inf")
        else:
            W_dec[i] = 0.0
    sae = dataclasses.replace(sae, threshold=theta, W_dec=W_dec)
    folded = sae.fold()
    assert torch.equal(folded.invalid, expected)
    assert torch.equal(sae.invalid_features(), expected)
    # Invalid features keep their parameters and θ unchanged; everything stays finite.
    assert torch.equal(folded.W_dec[expected], sae.W_dec[expected])
    assert torch.equal(folded.W_enc[:, expected], sae.W_enc[:, expected])
    assert torch.equal(folded.threshold[expected], sae.threshold[expected])
    assert bool(torch.isfinite(folded.W_enc).all()) and bool(torch.isfinite(folded.W_dec).all())
    x = torch.randn(16, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(folded(x), sae(x), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(d=st.integers(1, 10), F=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_fold_relu_by_decoder_norm_preserves_output(d: int, F: int, seed: int) -> None:
    sae = random_sae(d, F, activation="relu", seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    sae = dataclasses.replace(sae, W_dec=sae.W_dec * torch.exp(torch.randn(F, 1, generator=g, dtype=torch.float64)))
    folded = sae.fold()
    torch.testing.assert_close(
        torch.linalg.vector_norm(folded.W_dec, dim=1), torch.ones(F, dtype=torch.float64)
    )
    x = torch.randn(16, d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(folded(x), sae(x), rtol=1e-10, atol=1e-10)


def test_fold_topk_with_unit_decoder_preserves_output() -> None:
    sae = random_sae(8, 16, activation="topk", k=4, dtype=torch.float64)
    x = torch.randn(9, 8, dtype=torch.float64)
    torch.testing.assert_close(sae.fold()(x), sae(x))


def test_fold_topk_with_unequal_decoder_norms_refuses() -> None:
    sae = random_sae(8, 16, activation="topk", k=4, source="topk_sae")
    W_dec = sae.W_dec.clone()
    W_dec[0] *= 3
    with pytest.raises(ValueError, match="cannot fold TopK SAE in topk_sae"):
        dataclasses.replace(sae, W_dec=W_dec).fold()


def test_fold_threshold_on_sae_without_one() -> None:
    sae = random_sae(8, 12, activation="relu", source="relu_sae")
    with pytest.raises(ValueError, match="cannot fold θ of relu SAE in relu_sae: it has no threshold"):
        sae.fold(by="threshold")


def test_fold_twice_is_a_no_op() -> None:
    folded = random_sae(8, 12).fold()
    assert folded.fold() is folded


def test_fold_keeps_dtype_bf16() -> None:
    sae = random_sae(8, 12, dtype=torch.bfloat16)
    folded = sae.fold()
    assert folded.W_dec.dtype == torch.bfloat16
    x = torch.randn(4, 8)
    torch.testing.assert_close(folded(x).float(), sae(x).float(), rtol=0.05, atol=0.05)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.sampled_from([0.0, -0.0, 1.0, -2.5, 1e-40, float("nan"), float("inf"),
                                               float("-inf")]), min_size=1, max_size=5), min_size=1, max_size=6),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_zero_rows_are_rows_without_a_nonzero_entry(rows: list, dtype: torch.dtype) -> None:
    """The all-zero decoder rows (one min-max pass) are exactly those of ``~(W != 0).any(1)``:
    ±0 only; NaN, ±inf and subnormals count as non-zero (where the dtype holds them)."""
    from mechperm.sae import _zero_rows

    width = max(len(r) for r in rows)
    W = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64).to(dtype)
    assert torch.equal(_zero_rows(W), ~(W != 0).any(dim=1))
