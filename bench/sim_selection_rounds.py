"""Model of the GEMM-block selections' insertion rounds (``_select_dots_kernel``), gated or not.

    python bench/sim_selection_rounds.py 16384 [--sms 132] [--json out.json]

Runs no kernel: numpy replays, for one program of 64 x items, the loop the kernel runs over its
64 x 64 tiles, and counts the tiles that hold a score within the gate (they build int64 keys)
and the insertion rounds (``_insert``'s while loop: one per tile and rank of the row that
inserts most). A round is several int64 passes over the tile, a tile without hits a float
minimum: the counts say how much of the selection's work gating can remove, not its time (that
needs a GPU: ``bench_triton_tiles.py --gemm``, ``bench_match_gpu.py --gated``).

The geometry is ``_topk_gemm``'s at F x F, d = 2304: blocks of R = 8 GiB / (4 F) rows, the rows'
pass in ``_n_splits`` column splits (an H100's 132 SMs), the columns' pass continuing its
selections over the blocks. Scores are those of unrelated SAE-like vectors (bench_match_gpu's
pair less its planted matches): lognormal norms, cosines ~ N(0, 1/d), so costs
|a|² + |b|² − 2|a||b| cos and −cosines. Gated: the rows' bound is the k-th least minimum of
64-wide groups of the row; a column's, in the first block, the k-th least of the block's
group minima (later blocks run ungated: ``_topk_gemm``).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

K, TILE, D = 32, 64, 2304


def rounds(score: np.ndarray, spans: list[tuple[int, int]], cap: np.ndarray | None,
           carry: bool, k: int = K) -> tuple[int, int, int]:
    """(tiles, tiles with a score within the gate, insertion rounds) of one program's selection
    over ``score`` [64, n] in column ranges ``spans``: fresh selections per span unless
    ``carry``; ``cap`` per span (or None) bounds the rows' k-th from above."""
    tiles = hit = n_rounds = 0
    best = np.full((score.shape[0], k), np.inf)
    for s, (lo, hi) in enumerate(spans):
        if not carry:
            best = np.full((score.shape[0], k), np.inf)
        bound = np.full(score.shape[0], np.inf) if cap is None or cap[s] is None else cap[s]
        for c0 in range(lo, hi, TILE):
            tile = score[:, c0:min(hi, c0 + TILE)]
            tiles += 1
            if not (tile <= np.minimum(best.max(1), bound)[:, None]).any():
                continue
            hit += 1
            left = tile.copy()
            while True:
                m = left.min(1)
                ins = m <= np.minimum(best.max(1), bound)
                if not ins.any():
                    break
                n_rounds += 1
                r = np.flatnonzero(ins)
                best[r, best[r].argmax(1)] = m[r]
                left[r, left[r].argmin(1)] = np.inf
    return tiles, hit, n_rounds


def kth_group_min(score: np.ndarray, extra: np.ndarray | None = None, k: int = K) -> np.ndarray:
    """Per row, the k-th least minimum of 64-wide groups (and of ``extra`` columns)."""
    n = score.shape[1] // TILE * TILE
    mins = score[:, :n].reshape(score.shape[0], -1, TILE).min(2)
    if n < score.shape[1]:
        mins = np.concatenate([mins, score[:, n:].min(1, keepdims=True)], 1)
    if extra is not None:
        mins = np.concatenate([extra, mins], 1)
    return np.partition(mins, k - 1, axis=1)[:, k - 1] if mins.shape[1] >= k else np.full(len(mins), np.inf)


def scores(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """cost and −cos of 64 x items against n y items."""
    nx, ny = np.exp(rng.standard_normal(TILE)) ** 2, np.exp(rng.standard_normal(n)) ** 2
    cos = (rng.standard_normal((TILE, n)) / np.sqrt(D)).astype(np.float32)
    return {"cost": nx[:, None] + ny[None, :] - 2 * np.sqrt(nx)[:, None] * np.sqrt(ny)[None, :] * cos,
            "-cos": -cos}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("F", type=int)
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--json")
    ap.add_argument("--pricer", type=int, metavar="ROWS",
                    help="model the fused row pricer instead (price_rows_topq on GEMM blocks, Q = 64): "
                         "ROWS priced rows against F columns")
    args = ap.parse_args()
    F = args.F
    if args.pricer:
        pricer(F, args.pricer, args.sms, args.json)
        return
    R = max(TILE, min(F, (8 << 30) // (4 * F) // TILE * TILE))
    col_tiles = -(-F // TILE)
    splits = max(1, min(col_tiles, -(-4 * args.sms // max(1, -(-R // TILE)))))
    cps = -(-col_tiles // splits) * TILE
    rng = np.random.default_rng(0)
    out = []
    for name, sc in scores(F, rng).items():  # the rows' pass: one block's program, its splits
        spans = [(lo, min(F, lo + cps)) for lo in range(0, F, cps)]
        cap = kth_group_min(sc)
        for gated in (False, True):
            t, h, r = rounds(sc, spans, [cap] * len(spans) if gated else None, carry=False)
            out.append(dict(F=F, pass_="rows", score=name, gated=gated, splits=len(spans), tiles=t, hit_tiles=h,
                            rounds=r))
    for name, sc in scores(F, rng).items():  # the columns' pass: 64 columns over every block
        spans = [(lo, min(F, lo + R)) for lo in range(0, F, R)]
        cap = [kth_group_min(sc[:, spans[0][0]:spans[0][1]])] + [None] * (len(spans) - 1)
        for gated in (False, True):
            t, h, r = rounds(sc, spans, cap if gated else None, carry=True)
            out.append(dict(F=F, pass_="cols", score=name, gated=gated, blocks=len(spans), tiles=t, hit_tiles=h,
                            rounds=r))
    for row in out:
        print(" ".join(f"{k.rstrip('_')}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def pricer(F: int, n_rows: int, sms: int, json_path: str | None, q: int = 64) -> None:
    """The fused pricer's selection (``_topq_kernel`` on GEMM blocks): per priced row the Q
    least reduced costs, each of the chunk's column splits starting from nothing; gated, below
    the Q-th least 64-wide tile minimum (its minima launch). One program of 64 rows; scores
    with the costs' ranks (a reduced cost shifts each column by its dual, i.e. reorders columns
    the same way for every row)."""
    M = max(TILE, min(n_rows, (8 << 30) // (4 * F) // TILE * TILE))  # _block_rows
    col_tiles = -(-F // TILE)
    splits = max(1, min(col_tiles, -(-4 * sms // max(1, -(-M // TILE)))))
    cps = -(-col_tiles // splits) * TILE
    spans = [(lo, min(F, lo + cps)) for lo in range(0, F, cps)]
    sc = scores(F, np.random.default_rng(1))["cost"]
    cap = kth_group_min(sc, k=q)
    out = []
    for gated in (False, True):
        t, h, r = rounds(sc, spans, [cap] * len(spans) if gated else None, carry=False, k=q)
        out.append(dict(F=F, pass_="pricer", rows=n_rows, chunk=M, q=q, gated=gated, splits=len(spans), tiles=t,
                        hit_tiles=h, rounds=r))
        print(" ".join(f"{k.rstrip('_')}={v}" for k, v in out[-1].items()), file=sys.stderr, flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
