"""csrc/topk.cpp: the CPU's running top-k selection of cost tiles, against numpy's lexsort."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechperm import _auction


def heaps(owners: int, k: int, extra: bool = False):
    vals = np.full((owners, k), np.inf, np.float32)
    idx = np.full((owners, k), -1, np.int64)
    return vals, idx, (np.full((owners, k), np.inf, np.float32) if extra else None)


def expected(scores: np.ndarray, k: int, axis: int):
    """Per owner (rows if axis == 1), the k least (score, other index) pairs, ascending."""
    s = scores if axis == 1 else scores.T
    out_v = np.full((s.shape[0], k), np.inf, np.float32)
    out_i = np.full((s.shape[0], k), -1, np.int64)
    for o in range(s.shape[0]):
        order = np.lexsort((np.arange(s.shape[1]), s[o]))[:k]
        out_v[o, : len(order)], out_i[o, : len(order)] = s[o, order], order
    return out_v, out_i


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 300), st.integers(1, 9), st.integers(1, 4), st.integers(0, 10**6),
       st.integers(1, 3))
def test_tiles_streamed_equal_one_lexsort(n: int, m: int, k: int, parts: int, seed: int, threads: int) -> None:
    """Any split of the columns into tiles, any threads: the k least by (value, index), ties
    (values drawn from a few levels) to the smaller index; costs clamped at 0."""
    rng = np.random.default_rng(seed)
    cost = rng.integers(-2, 6, (n, m)).astype(np.float32)  # many ties, some negative
    cos = rng.integers(-3, 3, (n, m)).astype(np.float32)
    rc, cc, rs, cs = heaps(n, k), heaps(m, k), heaps(n, k, True), heaps(m, k, True)
    cuts = np.unique(np.r_[0, np.sort(rng.integers(0, m, parts - 1)), m])
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        tile = np.ascontiguousarray(cost[:, c0:c1])
        _auction.topk_tile(tile, np.ascontiguousarray(cos[:, c0:c1]), 0, int(c0), rc, cc, rs, cs, threads=threads)
    for h in (rc, cc, rs, cs):
        _auction.topk_finish(h, threads=threads)
    clamped = np.maximum(cost, 0)
    for h, scores, axis in ((rc, clamped, 1), (cc, clamped, 0), (rs, cos, 1), (cs, cos, 0)):
        v, i = expected(scores, k, axis)
        np.testing.assert_array_equal(h[0], v)
        np.testing.assert_array_equal(h[1], i)
    for h, axis in ((rs, 1), (cs, 0)):  # the costs carried along belong to the pairs kept
        own = np.arange(h[1].shape[0])[:, None].repeat(k, 1)
        ok = h[1] >= 0
        r, c = (own[ok], h[1][ok]) if axis == 1 else (h[1][ok], own[ok])
        np.testing.assert_array_equal(h[2][ok], clamped[r, c])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 600), st.integers(1, 9), st.integers(1, 4), st.integers(0, 10**6),
       st.integers(1, 3))
def test_cosines_from_factors_equal_the_cosine_tile(n: int, m: int, k: int, parts: int, seed: int,
                                                    threads: int) -> None:
    """cos_factors (the screen's −cosines computed while scanning) select exactly as the tile
    of ((c − na) − nb) · half_inv_a · inv_b computed by numpy in float32, over any tiling
    (column ranges wider than the native scan's 256)."""
    rng = np.random.default_rng(seed)
    cost = (rng.random((n, m)) * 10 - 1).astype(np.float32)
    na, nb = rng.random(n).astype(np.float32) * 5, rng.random(m).astype(np.float32) * 5
    hiy, ix = rng.random(n).astype(np.float32), rng.random(m).astype(np.float32)
    cos = ((((cost - na[:, None]) - nb[None, :]) * hiy[:, None]) * ix[None, :]).astype(np.float32)
    got = heaps(n, k), heaps(m, k), heaps(n, k, True), heaps(m, k, True)
    want = heaps(n, k), heaps(m, k), heaps(n, k, True), heaps(m, k, True)
    cuts = np.unique(np.r_[0, np.sort(rng.integers(0, m, parts - 1)), m])
    for c0, c1 in zip(cuts[:-1], cuts[1:]):
        tile = np.ascontiguousarray(cost[:, c0:c1])
        _auction.topk_tile(tile, None, 0, int(c0), *got, threads=threads,
                           cos_factors=(na, np.ascontiguousarray(nb[c0:c1]), hiy, np.ascontiguousarray(ix[c0:c1])))
        _auction.topk_tile(tile, np.ascontiguousarray(cos[:, c0:c1]), 0, int(c0), *want, threads=threads)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            if a is not None:
                np.testing.assert_array_equal(a, b)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(0, 120), st.integers(0, 200), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 10**6), st.booleans())
def test_tile_bounds_keep_the_k_least(k: int, extra_n: int, extra_m: int, row_parts: int, col_parts: int,
                                      seed: int, factors: bool) -> None:
    """Tiles at least 8k rows tall and 8k columns wide, where the scan bounds the k-th least of
    heaps still filling by the tile's group minima: the selections stay the k least by (value,
    index) over ties and row and column splits, for costs and for -cosines (a tile or factors)."""
    n, m = 8 * k + extra_n, 8 * k + extra_m
    rng = np.random.default_rng(seed)
    cost = rng.integers(-2, 12, (n, m)).astype(np.float32)  # ties, some negative
    na, nb = rng.integers(0, 4, n).astype(np.float32), rng.integers(0, 4, m).astype(np.float32)
    hiy, ix = np.full(n, 0.5, np.float32), rng.integers(1, 3, m).astype(np.float32)
    cos = ((((cost - na[:, None]) - nb[None, :]) * hiy[:, None]) * ix[None, :]).astype(np.float32)
    rc, cc, rs, cs = heaps(n, k), heaps(m, k), heaps(n, k, True), heaps(m, k, True)
    rcuts = np.unique(np.r_[0, np.sort(rng.integers(0, n, row_parts - 1)), n])
    ccuts = np.unique(np.r_[0, np.sort(rng.integers(0, m, col_parts - 1)), m])
    for r0, r1 in zip(rcuts[:-1], rcuts[1:]):
        for c0, c1 in zip(ccuts[:-1], ccuts[1:]):
            tile = np.ascontiguousarray(cost[r0:r1, c0:c1])
            if factors:
                f = tuple(np.ascontiguousarray(x) for x in (na[r0:r1], nb[c0:c1], hiy[r0:r1], ix[c0:c1]))
                _auction.topk_tile(tile, None, int(r0), int(c0), rc, cc, rs, cs, threads=2, cos_factors=f)
            else:
                _auction.topk_tile(tile, np.ascontiguousarray(cos[r0:r1, c0:c1]), int(r0), int(c0), rc, cc, rs, cs,
                                   threads=2)
    for h in (rc, cc, rs, cs):
        _auction.topk_finish(h, threads=2)
    clamped = np.maximum(cost, 0)
    for h, scores, axis in ((rc, clamped, 1), (cc, clamped, 0), (rs, cos, 1), (cs, cos, 0)):
        v, i = expected(scores, k, axis)
        np.testing.assert_array_equal(h[0], v)
        np.testing.assert_array_equal(h[1], i)


def test_cos_factors_checked() -> None:
    tile = np.zeros((3, 4), np.float32)
    f = (np.zeros(3, np.float32), np.zeros(4, np.float32), np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="cos or cos_factors"):
        _auction.topk_tile(tile, np.zeros((3, 4), np.float32), 0, 0, heaps(3, 2), heaps(4, 2), heaps(3, 2, True),
                           heaps(4, 2, True), cos_factors=f)
    with pytest.raises(ValueError, match="cos_factors nb"):
        _auction.topk_tile(tile, None, 0, 0, heaps(3, 2), heaps(4, 2), heaps(3, 2, True), heaps(4, 2, True),
                           cos_factors=(f[0], f[0], f[2], f[3]))


def test_row_offsets_and_strided_tiles() -> None:
    rng = np.random.default_rng(1)
    full = rng.random((10, 12)).astype(np.float32)
    rc, cc = heaps(25, 3), heaps(12, 3)
    _auction.topk_tile(full[:, :12], None, 15, 0, rc, cc, None, None)  # rows 15..24 of a larger problem
    _auction.topk_finish(rc)
    _auction.topk_finish(cc)
    v, i = expected(full, 3, 1)
    np.testing.assert_array_equal(rc[1][15:], i)
    assert (rc[1][:15] == -1).all()
    wide = rng.random((4, 20)).astype(np.float32)
    rc2, cc2 = heaps(4, 2), heaps(8, 2)
    _auction.topk_tile(wide[:, 4:12], None, 0, 0, rc2, cc2, None, None)  # a strided view
    _auction.topk_finish(rc2)
    np.testing.assert_array_equal(rc2[1], expected(np.ascontiguousarray(wide[:, 4:12]), 2, 1)[1])


def test_bad_input_is_refused() -> None:
    tile = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="tile must be a 2-D float32"):
        _auction.topk_tile(tile.astype(np.float64), None, 0, 0, heaps(3, 2), heaps(4, 2), None, None)
    with pytest.raises(ValueError, match="does not cover the tile"):
        _auction.topk_tile(tile, None, 2, 0, heaps(3, 2), heaps(4, 2), None, None)
    with pytest.raises(ValueError, match="cos must have the tile's shape"):
        _auction.topk_tile(tile, np.zeros((3, 5), np.float32), 0, 0, heaps(3, 2), heaps(4, 2), None, None)
    with pytest.raises(ValueError, match="unit-stride rows"):
        _auction.topk_tile(np.zeros((4, 3), np.float32).T, None, 0, 0, heaps(3, 2), heaps(4, 2), None, None)
