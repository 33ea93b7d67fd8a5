"""Composition algebra, paths and persistence of StackMatch on hand-made and random matches."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechperm.result import MatchResult, compose
from mechperm.stack import StackMatch, resolve_pairs


def _result(perm: list[int] | torch.Tensor, cost: float = 0.1, cosine: float = 0.9) -> MatchResult:
    perm = torch.as_tensor(perm, dtype=torch.int64)
    ok = perm >= 0
    nan = torch.full(perm.shape, float("nan"))
    return MatchResult(
        perm=perm,
        cost=torch.where(ok, torch.full(perm.shape, cost), nan),
        cosine=torch.where(ok, torch.full(perm.shape, cosine), nan),
        margin=torch.zeros(perm.shape),
        objective=float(cost * int(ok.sum())),
        gap=0.0,
        certified=True,
    )


def _partial_perm(n: int, m: int, drop: float, g: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(m, generator=g)[:n] if m >= n else torch.cat([torch.randperm(m, generator=g), torch.full((n - m,), -1)])
    perm = perm[torch.randperm(n, generator=g)]
    perm[torch.rand(n, generator=g) < drop] = -1
    return perm


def test_compose_by_hand() -> None:
    p_ab = torch.tensor([2, -1, 0])
    p_bc = torch.tensor([1, -1, 0])
    assert compose(p_ab, p_bc).tolist() == [0, -1, 1]


def test_compose_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="second has only 2"):
        compose(torch.tensor([0, 3]), torch.tensor([1, 0]))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**31 - 1), drop=st.floats(0, 0.5))
def test_compose_is_associative_and_identity_neutral(n: int, seed: int, drop: float) -> None:
    g = torch.Generator().manual_seed(seed)
    p, q, r = (_partial_perm(n, n, drop, g) for _ in range(3))
    ident = torch.arange(n)
    assert torch.equal(compose(compose(p, q), r), compose(p, compose(q, r)))
    assert torch.equal(compose(ident, p), p) and torch.equal(compose(p, ident), p)
    # Full permutations: composing with the inverse gives the identity.
    full = torch.randperm(n, generator=g)
    inv = torch.empty_like(full)
    inv[full] = torch.arange(n)
    assert torch.equal(compose(full, inv), ident)


def test_resolve_pairs() -> None:
    assert resolve_pairs(3, "adjacent") == [(0, 1), (1, 2)]
    assert resolve_pairs(3, "all") == [(0, 1), (0, 2), (1, 2)]
    assert resolve_pairs(3, [(0, 2)]) == [(0, 2)]
    with pytest.raises(ValueError, match="choose 'adjacent', 'all'"):
        resolve_pairs(3, "every")
    with pytest.raises(ValueError, match="not two different positions"):
        resolve_pairs(3, [(0, 3)])


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 20), L=st.integers(2, 5), seed=st.integers(0, 2**31 - 1), drop=st.floats(0, 0.4))
def test_paths_follow_composed_perms_and_invert(n: int, L: int, seed: int, drop: float) -> None:
    g = torch.Generator().manual_seed(seed)
    results = {(t, t + 1): _result(_partial_perm(n, n, drop, g)) for t in range(L - 1)}
    stack = StackMatch(layers=list(range(L)), results=results, sizes=[n] * L)
    for i in range(n):
        path = stack.path(0, i)
        assert len(path) == L
        for b in range(1, L):
            assert path[b] == int(stack.composed(0, b)[i])
        # Walking back from the end of a complete path returns to the start.
        if path[-1] >= 0:
            assert stack.path(L - 1, path[-1], "backward")[::-1] == path


def test_persistence_counts_surviving_steps_under_thresholds() -> None:
    results = {
        (0, 1): _result([1, 0, -1], cosine=0.9),
        (1, 2): _result([2, -1, 0], cosine=0.5),
    }
    stack = StackMatch(layers=[0, 1, 2], results=results, sizes=[3, 3, 3])
    pers = stack.persistence()
    assert pers[0].tolist() == [1, 2, 0]  # 0→1→-1, 1→0→2, 2→-1
    assert pers[1].tolist() == [1, 0, 1]
    assert pers[2].tolist() == [0, 0, 0]
    assert stack.persistence(min_cosine=0.8)[0].tolist() == [1, 1, 0]


def test_agreement_by_distance() -> None:
    results = {
        (0, 1): _result([1, 0]),
        (1, 2): _result([1, 0]),
        (0, 2): _result([0, -1]),  # composed 0→2 is [0, 1]: agrees on feature 0 only
    }
    stack = StackMatch(layers=[0, 1, 2], results=results, sizes=[2, 2, 2])
    assert stack.agreement_by_distance() == {2: 0.5}
    assert stack.perm(0, 2).tolist() == [0, -1]  # direct wins over composed
    assert stack.composed(0, 2).tolist() == [0, 1]


def test_composed_names_missing_pairs() -> None:
    stack = StackMatch(layers=[0, 1, 2], results={(0, 1): _result([0])}, sizes=[1, 1, 1])
    with pytest.raises(ValueError, match=r"adjacent pairs \[\(1, 2\)\] were not matched"):
        stack.composed(0, 2)
