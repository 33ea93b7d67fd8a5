"""export_aligned: a matched stack written back as SAELens folders whose indices follow the paths."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import random_sae
from hypothesis import given, settings
from hypothesis import strategies as st

from mechperm import SAEInfo
from mechperm.export import align_stack, export_aligned, permute_features, read_permutation
from mechperm.formats import load_sae, load_stack
from mechperm.result import MatchResult
from mechperm.stack import StackMatch

D = 10


def _result(perm: list[int] | torch.Tensor) -> MatchResult:
    perm = torch.as_tensor(perm, dtype=torch.int64)
    nan = torch.full(perm.shape, float("nan"))
    return MatchResult(perm=perm, cost=nan, cosine=nan, margin=nan, objective=0.0, gap=0.0, certified=True)


def _stack(perms: list[list[int]], sizes: list[int], layers: list[int] | None = None) -> StackMatch:
    results = {(t, t + 1): _result(p) for t, p in enumerate(perms)}
    return StackMatch(layers=layers or list(range(len(sizes))), results=results, sizes=sizes)


# Hand-made: 5 → 6 → 4 features. Layer-0 feature 1 has no counterpart (its chain breaks);
# layer 1 is wider (two features nothing maps to); layer 2 is narrower (one match is displaced).
PERMS = [[2, -1, 0, 5, 1], [3, -1, 0, -1, 2, 1]]
SIZES = [5, 6, 4]


def test_hand_made_orders() -> None:
    order, previous = align_stack(_stack(PERMS, SIZES))
    assert [o.tolist() for o in order] == [[0, 1, 2, 3, 4], [2, 3, 0, 5, 1, 4], [0, 2, 3, 1]]
    assert [p.tolist() for p in previous] == [[-1] * 5, [0, -1, 2, 3, 4, -1], [0, 5, 2, 3]]


def test_hand_made_paths_become_index_aligned() -> None:
    stack = _stack(PERMS, SIZES)
    order = align_stack(stack).order
    for i in range(SIZES[0]):
        path = stack.path(0, i)
        for t, j in enumerate(path):
            if j < 0 or i >= SIZES[t]:
                break
            assert int(order[t][i]) == j, (i, t)
    assert stack.path(0, 0) == [0, 2, 0] and [int(o[0]) for o in order] == [0, 2, 0]


def _random_matching(g: torch.Generator, Fa: int, Fb: int, p_unmatched: float) -> torch.Tensor:
    perm = torch.full((Fa,), -1, dtype=torch.int64)
    n = min(Fa, Fb)
    rows, cols = torch.randperm(Fa, generator=g)[:n], torch.randperm(Fb, generator=g)[:n]
    keep = torch.rand(n, generator=g) >= p_unmatched
    perm[rows[keep]] = cols[keep]
    return perm


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    p_unmatched=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_alignment_contract(sizes: list[int], seed: int, p_unmatched: float) -> None:
    g = torch.Generator().manual_seed(seed)
    perms = [_random_matching(g, sizes[t], sizes[t + 1], p_unmatched) for t in range(len(sizes) - 1)]
    stack = _stack(perms, sizes)  # type: ignore[arg-type]
    order, previous = align_stack(stack)
    for t, F in enumerate(sizes):
        assert torch.equal(order[t].sort().values, torch.arange(F)), "not a permutation"
    for t in range(1, len(sizes)):
        targets = perms[t - 1][order[t - 1]]  # original t-feature matched from exported index at t-1
        for i in range(sizes[t]):
            p = int(previous[t][i])
            if p >= 0:
                assert int(targets[p]) == int(order[t][i])
            else:
                assert int(order[t][i]) not in targets.tolist()
            if i < sizes[t - 1] and int(targets[i]) >= 0:
                assert p == i, "an aligned chain must keep its index"
        # holes: displaced first (in index order), then unmatched ones in original order
        holes = (previous[t] != torch.arange(sizes[t])).nonzero().squeeze(1)
        unmatched = [int(j) for j in order[t][holes] if int(j) not in targets.tolist()]
        assert unmatched == sorted(unmatched)
        ranks = [0 if int(previous[t][h]) >= 0 else 1 for h in holes]
        assert ranks == sorted(ranks)


def _saes(sizes: list[int], activation: str = "jumprelu") -> list:
    out = []
    for t, F in enumerate(sizes):
        sae = random_sae(D, F, activation=activation, seed=t, k=3 if activation == "topk" else None)
        sae.info = SAEInfo(
            model_name="gpt2", hook_name=f"blocks.{t + 2}.hook_resid_post", layer=t + 2,
            neuronpedia_id=f"gpt2/{t + 2}-res", source=f"mem-{t}",
        )  # fmt: skip
        out.append(sae)
    return out


@pytest.mark.parametrize("activation", ["jumprelu", "relu", "topk"])
def test_export_same_function_up_to_order(tmp_path: Path, activation: str) -> None:
    saes = _saes(SIZES, activation)
    stack = _stack(PERMS, SIZES, layers=[2, 3, 4])
    folders = export_aligned(saes, stack, tmp_path / "out")
    assert [f.name for f in folders] == ["layer_2", "layer_3", "layer_4"]
    order = align_stack(stack).order
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
    for t, (sae, folder) in enumerate(zip(saes, folders)):
        assert torch.equal(read_permutation(folder), order[t])
        back = load_sae(folder)
        expected = permute_features(sae, order[t])
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            a, b = getattr(back, name), getattr(expected, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        assert torch.equal(back.W_dec, sae.W_dec[order[t]])
        torch.testing.assert_close(back.encode(x), sae.encode(x)[:, order[t]])
        torch.testing.assert_close(back(x), sae(x))
        assert (back.activation, back.k, back.info.layer) == (sae.activation, sae.k, t + 2)
        assert back.info.neuronpedia_id is None  # Neuronpedia indices refer to the original order
        record = json.loads((folder / "permutation.json").read_text())
        assert record["neuronpedia_id"] == f"gpt2/{t + 2}-res" and record["layer"] == t + 2
    summary = json.loads((tmp_path / "out" / "alignment.json").read_text())
    assert summary["folders"] == ["layer_2", "layer_3", "layer_4"] and summary["sizes"] == SIZES
    assert [s.info.layer for s in load_stack(tmp_path / "out")] == [2, 3, 4]


def test_exported_matches_are_identity_along_chains(tmp_path: Path) -> None:
    stack = _stack(PERMS, SIZES)
    order, previous = align_stack(stack)
    for t in range(len(SIZES) - 1):
        position = torch.empty_like(order[t + 1])
        position[order[t + 1]] = torch.arange(SIZES[t + 1])
        perm = stack.adjacent(t).perm[order[t]]  # exported t → original t+1
        new_perm = torch.where(perm >= 0, position[perm.clamp(min=0)], -1)
        for i in range(SIZES[t]):
            if i < SIZES[t + 1] and int(previous[t + 1][i]) == i:
                assert int(new_perm[i]) == i


def test_sae_lens_loads_exported(tmp_path: Path) -> None:
    sae_lens = pytest.importorskip("sae_lens")
    saes = _saes(SIZES)
    stack = _stack(PERMS, SIZES)
    folders = export_aligned(saes, stack, tmp_path)
    order = align_stack(stack).order
    x = torch.randn(32, D)
    for sae, folder, o in zip(saes, folders, order):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = sae_lens.SAE.load_from_disk(folder)
        with torch.no_grad():
            torch.testing.assert_close(theirs.encode(x), sae.encode(x)[:, o])
            torch.testing.assert_close(theirs(x), sae(x))


def test_overwrite(tmp_path: Path) -> None:
    saes, stack = _saes(SIZES), _stack(PERMS, SIZES)
    export_aligned(saes, stack, tmp_path)
    (tmp_path / "layer_0" / "cfg.json").write_text("{}")  # marks the old export
    (tmp_path / "layer_2").rename(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError, match=r"layer_0 already exists; pass overwrite=True"):
        export_aligned(saes, stack, tmp_path)
    assert not (tmp_path / "layer_2").exists()  # checked before anything was written
    export_aligned(saes, stack, tmp_path, overwrite=True)
    assert load_sae(tmp_path / "layer_0").d_sae == SIZES[0]


@pytest.mark.parametrize(
    "perms, sizes, layers, pattern",
    [
        ([[2, -1, 0, 5, 1]], SIZES, None, r"positions 1→2 were not matched"),
        ([[2, 2, 0, 5, 1], PERMS[1]], SIZES, None, r"match 0→1 maps several features to one"),
        ([[2, -1, 0, 6, 1], PERMS[1]], SIZES, None, r"match 0→1 maps to feature 6; position 1 has F=6"),
        (PERMS, [5, 6, 5], None, r"SAE 2 \(mem-2\) has F=4, but the stack's position 2 has 5 features"),
        (PERMS, SIZES, [1, 1, 2], r"stack.layers \[1, 1, 2\] repeats a layer"),
    ],
)
def test_bad_stacks_refused(tmp_path: Path, perms: list, sizes: list[int], layers: list | None, pattern: str) -> None:
    stack = StackMatch(
        layers=layers or [0, 1, 2], results={(t, t + 1): _result(p) for t, p in enumerate(perms)}, sizes=sizes
    )
    with pytest.raises(ValueError, match=pattern):
        export_aligned(_saes(SIZES), stack, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_permute_features_refuses_non_permutation() -> None:
    sae = random_sae(D, 6)
    with pytest.raises(ValueError, match=r"order must be a permutation of range\(6\)"):
        permute_features(sae, torch.tensor([0, 1, 2, 3, 4, 4]))


def test_real_stack_round_trip(tmp_path: Path, shared_data: Path) -> None:
    """The shared MiniLM SAEs (Gemma Scope layout), random partial matchings, exported and re-read."""
    saes = load_stack(shared_data / "minilm" / "saes", layers=[0, 1, 2])
    g = torch.Generator().manual_seed(0)
    sizes = [s.d_sae for s in saes]
    perms = [_random_matching(g, sizes[t], sizes[t + 1], 0.2) for t in range(2)]
    stack = _stack(perms, sizes, layers=[0, 1, 2])  # type: ignore[arg-type]
    folders = export_aligned(saes, stack, tmp_path)
    x = torch.randn(16, saes[0].d_in, generator=g)
    for sae, folder in zip(saes, folders):
        back = load_sae(folder)
        order = read_permutation(folder)
        assert torch.equal(back.threshold, sae.threshold[order]) and torch.equal(back.W_enc, sae.W_enc[:, order])
        torch.testing.assert_close(back(x), sae(x))
