"""Stacks of JumpReLU SAEs with planted ground truth, for tests, the demo and the benchmarks.

Generative model (per feature i of layer t): a unit direction ``u_i`` and a magnitude ``m_i``
(lognormal, σ = ``heavy_tail``). The *folded* decoder row is ``g_t · m_i · u_i`` with
``g_t = theta_scale · theta_growth**t`` (the residual norm growing with depth). Each SAE splits
that row between its threshold and its decoder its own way, as training does:
``θ_i = g_t · m_i · ε_i`` and ``W_dec[i] = u_i / ε_i`` with ``ε_i`` lognormal
(σ = ``dec_norm_sigma``), drawn afresh per layer. Decoder rows are therefore unit-norm-ish and
θ carries the scale (θ spans an order of magnitude across features, like Gemma Scope); folding
(``θ · W_dec``) cancels ``ε`` and exposes the persistent ``m_i · u_i``, while the unfolded rows
carry per-layer norm noise that matching on them cannot undo.

From layer t to t+1 a random subset of the live features persists: each direction is rotated by
a small random angle (``drift``, so the cosine to the original decays with layer distance) and
its magnitude jitters (``scale_drift``). The others die and are replaced by split-copies
(a near-copy of a persisting feature's continuation: a near-tie, not the planted match), births
(fresh directions, a ``close_rate`` share of them placed near an existing feature) and dead
slots. Layer t+1's features are then shuffled by a random permutation.

Encoder: column i is ``u_i`` rotated by ``atan(enc_noise)`` times ``ε_i`` (so ``x = f·W_dec[i]``
gives ``pre_i ≈ f``); ``b_enc`` cancels ``b_dec``'s projection, minus a small margin ``~0.1 θ``.

Layout and conventions: SAELens (``W_enc [d, F]``, ``W_dec [F, d]``); ``truth[t][i] = j`` means
feature i of layer t *is* feature j of layer t+1 (the ``perm[i] = j`` convention of matching).
Generation runs over row blocks, so besides the SAEs it holds at most two ``[F, d]`` direction
tensors; the same seed gives bit-identical tensors on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mechperm.sae import SAE, SAEInfo

PERSISTED, BORN, SPLIT, DEAD, SILENT = 0, 1, 2, 3, 4
KIND_NAMES: tuple[str, ...] = ("persisted", "born", "split", "dead", "silent")
"""``kind`` codes: PERSISTED continues a layer-(t-1) feature (the planted match); BORN is new
(every live feature of layer 0 is BORN); SPLIT is a near-copy of a persisting feature's
continuation; DEAD is malformed (θ = +inf, θ ≤ 0 or an all-zero decoder row: listed by
``SAE.invalid_features()``); SILENT has well-formed weights but never fires (b_enc ≪ 0)."""
DEAD_MODES: tuple[str, ...] = ("inf", "nonpositive", "zero_row", "silent")
_MODE_CODE = {"inf": 1, "nonpositive": 2, "zero_row": 3, "silent": 4}  # 0: alive

_BLOCK_ELEMENTS = 1 << 22  # rows per block = this // d: fixed, so draws do not depend on the host
_JITTER = 0.5  # lognormal σ of per-feature angles around drift / split_angle / close_angle


@dataclass
class SyntheticStack:
    """L synthetic SAEs and the truth planted between consecutive layers."""

    saes: list[SAE]
    """JumpReLU SAEs, ``info.format == "synthetic"``, ``info.layer == t``."""
    truth: list[Tensor]
    """``L-1`` int64 ``[F]``: ``truth[t][i] = j`` if feature i of layer t persists as feature j of
    layer t+1, else -1 (it died, or is dead). A partial injection."""
    kind: list[Tensor]
    """``L`` int8 ``[F]`` codes, see :data:`KIND_NAMES`."""
    parent: list[Tensor]
    """``L`` int64 ``[F]``: the layer-(t-1) feature a PERSISTED or SPLIT feature descends from,
    else -1 (all -1 at layer 0). Two-to-one where a feature split."""

    def truth_between(self, a: int, b: int) -> Tensor:
        """Composed planted correspondence from layer a to layer b (``a ≤ b``), int64 ``[F]``.

        -1 propagates; ``a == b`` gives the identity.
        """
        if not 0 <= a <= b < len(self.saes):
            raise ValueError(f"truth_between({a}, {b}): need 0 <= a <= b < {len(self.saes)}")
        cur = torch.arange(self.saes[a].d_sae, device=self.truth[0].device if self.truth else None)
        for t in range(a, b):
            cur = torch.where(cur >= 0, self.truth[t][cur.clamp(min=0)], cur)
        return cur

    def ancestor(self, a: int, b: int) -> Tensor:
        """For each feature of layer b, its ancestor in layer a through persist and split links, or -1."""
        if not 0 <= a <= b < len(self.saes):
            raise ValueError(f"ancestor({a}, {b}): need 0 <= a <= b < {len(self.saes)}")
        cur = torch.arange(self.saes[b].d_sae, device=self.parent[b].device)
        for t in range(b, a, -1):
            cur = torch.where(cur >= 0, self.parent[t][cur.clamp(min=0)], cur)
        return cur

    def recovery(self, a: int, perm: Tensor | np.ndarray, b: int | None = None) -> dict:
        """Score a matching of layer a to layer b (default a+1) against the planted truth.

        Parameters
        ----------
        perm : int [F_a], ``perm[i] = j`` (feature i of a ↔ feature j of b), -1 for unmatched.

        Returns
        -------
        dict with ``recovered`` (share of the identifiable true pairs found), ``n_true``,
        ``n_correct``, ``n_wrong`` (true pairs matched elsewhere), ``n_unmatched`` (true pairs
        left at -1), ``n_to_split_lineage`` (wrong matches that landed on a split-copy descended
        from the same feature: near-ties), ``precision`` (correct / matched features).
        """
        b = a + 1 if b is None else b
        truth = self.truth_between(a, b)
        perm = torch.as_tensor(perm).to(device=truth.device, dtype=torch.int64)
        if perm.shape != truth.shape:
            raise ValueError(f"perm has shape {tuple(perm.shape)}; expected {tuple(truth.shape)}")
        true = truth >= 0
        matched = perm >= 0
        correct = true & (perm == truth)
        wrong = true & matched & ~correct
        lineage = self.ancestor(a, b)[perm.clamp(min=0)] == torch.arange(len(perm), device=perm.device)
        n_true, n_correct, n_matched = int(true.sum()), int(correct.sum()), int(matched.sum())
        return {
            "recovered": n_correct / n_true if n_true else float("nan"),
            "n_true": n_true,
            "n_correct": n_correct,
            "n_wrong": int(wrong.sum()),
            "n_unmatched": int((true & ~matched).sum()),
            "n_to_split_lineage": int((wrong & lineage).sum()),
            "precision": n_correct / n_matched if n_matched else float("nan"),
        }


def _blocks(n: int, d: int):
    step = max(1, _BLOCK_ELEMENTS // max(d, 1))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _randn(shape, g: torch.Generator, work: torch.dtype) -> Tensor:
    # drawn in float32 whatever the dtype, so a float64 stack is the float32 one, more precisely
    return torch.randn(shape, generator=g, dtype=torch.float32, device=g.device).to(work)


def _rowdot(x: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """Row-wise dots ``[n]`` of ``x [n, d]`` and ``y`` (``[n, d]`` or one row ``[d]``) summed in
    float64 by torch's own reduction, then rounded to ``dtype``: the same bits on any thread
    count. (BLAS's float32 dots, einsum and ``@``, follow the threads MKL takes, and MKL may take
    fewer than it is given: 1 and 2 threads drew different stacks from one seed.) Operands
    already in float64 are used as they are."""
    return (x.double() * y.double()).sum(1).to(dtype)


def _rotate(u: Tensor, angle: Tensor, g: torch.Generator, scale: Tensor | None = None) -> Tensor:
    """Rotate unit rows ``u [n, d]`` by ``angle [n]`` radians towards random orthogonal directions
    (times ``scale [n]`` when given). Two passes over a fresh ``[n, d]`` block; the dots' float64
    copies (:func:`_rowdot`) are the only other temporaries."""
    z = _randn(u.shape, g, u.dtype)
    z64 = z.double()  # one float64 copy for both dots
    proj = _rowdot(z64, u, u.dtype)
    # |z - proj·u|² = |z|² - proj² for unit u; out = sin·(z - proj·u)/|z - proj·u| + cos·u
    perp2 = _rowdot(z64, z64, u.dtype) - proj * proj
    del z64
    ok = perp2 > 1e-6  # no orthogonal room (d = 1): leave the row as it is
    a = torch.where(ok, torch.sin(angle) / perp2.clamp_min(1e-6).sqrt(), 0.0)
    b = torch.where(ok, torch.cos(angle) - a * proj, 1.0)
    if scale is not None:
        a, b = a * scale, b * scale
    return z.mul_(a[:, None]).addcmul_(u, b[:, None])


def _angles(base: float, n: int, g: torch.Generator, work: torch.dtype) -> Tensor:
    return (base * torch.exp(_JITTER * _randn((n,), g, work))).clamp(max=math.pi / 2)


def _fill_rotated(out: Tensor, pos: Tensor, src: Tensor, source: Tensor, base: float, g) -> None:
    """``out[pos] = rotate(source[src], ~base)``, over row blocks."""
    for s, e in _blocks(len(pos), out.shape[1]):
        rows = _rotate(source[src[s:e]], _angles(base, e - s, g, out.dtype), g)
        out.index_copy_(0, pos[s:e], rows)


def _fill_born(out: Tensor, pos: Tensor, anchors: Tensor, close_rate: float, close_angle: float, g) -> None:
    """Fresh unit directions at ``pos``; a ``close_rate`` share is placed near a random anchor."""
    close = torch.rand(len(pos), generator=g, device=g.device) < close_rate
    free = pos[~close]
    for s, e in _blocks(len(free), out.shape[1]):
        rows = torch.nn.functional.normalize(_randn((e - s, out.shape[1]), g, out.dtype), dim=1)
        out.index_copy_(0, free[s:e], rows)
    anchors = torch.cat([anchors, free])
    near = pos[close]
    if len(near) and len(anchors):
        pick = anchors[torch.randint(len(anchors), (len(near),), generator=g, device=g.device)]
        _fill_rotated(out, near, pick, out, close_angle, g)
    elif len(near):  # nothing to sit next to (tiny F): plain random directions
        rows = torch.nn.functional.normalize(_randn((len(near), out.shape[1]), g, out.dtype), dim=1)
        out.index_copy_(0, near, rows)


def _build_sae(U, m, mode, t, g, k, dtype, b_dir, seed) -> SAE:
    """One JumpReLU SAE from directions ``U [F, d]``, magnitudes ``m [F]`` and dead modes."""
    F, d = U.shape
    dev, work = U.device, U.dtype
    scale = k["theta_scale"] * k["theta_growth"] ** t
    eps = torch.exp(k["dec_norm_sigma"] * _randn((F,), g, work))
    theta = scale * m * eps
    b_dec = 0.5 * scale * b_dir  # the residual stream's mean, drifting like the features
    b_enc = -0.1 * theta * torch.rand(F, generator=g, device=dev).to(work)
    W_dec = torch.empty(F, d, dtype=dtype, device=dev)
    W_enc = torch.empty(d, F, dtype=dtype, device=dev)
    enc_angle = torch.full((1,), math.atan(k["enc_noise"]), dtype=work, device=dev)
    for s, e in _blocks(F, d):
        W_dec[s:e] = U[s:e] / eps[s:e, None]
        # encoder column = decoder direction rotated by atan(enc_noise), times ε = 1/|W_dec[i]|:
        # for x = b_dec + f·W_dec[i], pre_i = f·cos(atan(enc_noise)) + b_enc[i] (b_enc cancels b_dec)
        enc = _rotate(U[s:e], enc_angle.expand(e - s), g, eps[s:e])
        b_enc[s:e] -= _rowdot(enc, b_dec, work)
        W_enc[:, s:e] = enc.T
    mode = mode.to(dev)
    theta = torch.where(mode == _MODE_CODE["inf"], torch.full_like(theta, float("inf")), theta)
    nonpos = -theta * torch.rand(F, generator=g, device=dev).to(work)
    theta = torch.where(mode == _MODE_CODE["nonpositive"], nonpos, theta)
    zero = (mode == _MODE_CODE["zero_row"]).nonzero().flatten()
    W_dec[zero] = 0
    W_enc[:, zero] = 0
    b_enc[zero] = 0
    b_enc = torch.where(mode == _MODE_CODE["silent"], -1e3 * scale, b_enc)  # never fires
    return SAE(
        W_enc=W_enc,
        b_enc=b_enc.to(dtype),
        W_dec=W_dec,
        b_dec=b_dec.to(dtype),
        activation="jumprelu",
        threshold=theta.to(dtype),
        info=SAEInfo(
            model_name="synthetic",
            hook_name=f"blocks.{t}.hook_resid_post",
            layer=t,
            source=f"synthetic(seed={seed})/layer_{t}",
            format="synthetic",
        ),
    )


def make_stack(
    n_layers: int = 4,
    d: int = 64,
    F: int = 256,
    *,
    seed: int = 0,
    drift: float = 0.3,
    scale_drift: float = 0.1,
    birth_rate: float = 0.05,
    split_rate: float = 0.05,
    split_angle: float = 0.25,
    close_rate: float = 0.25,
    close_angle: float = 0.35,
    dead_rate: float = 0.01,
    dead_modes: tuple[str, ...] = ("inf", "nonpositive", "zero_row"),
    heavy_tail: float = 1.0,
    theta_scale: float = 1.0,
    theta_growth: float = 1.15,
    dec_norm_sigma: float = 0.5,
    enc_noise: float = 0.2,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SyntheticStack:
    """A stack of ``n_layers`` JumpReLU SAEs (width ``d``, ``F`` features) with planted truth.

    Parameters
    ----------
    seed : same seed, same device → bit-identical tensors.
    drift : typical rotation (radians) of a persisting direction per layer (per-feature lognormal
        jitter σ 0.5 around it, so a few drift far: the truth is recoverable for most, not all).
    scale_drift : lognormal σ of a persisting feature's magnitude change per layer.
    birth_rate, split_rate : share of each layer's F slots filled by new directions / by
        split-copies. F is fixed, so as many layer-t features die (truth -1).
    split_angle : typical angle between a split-copy and the planted continuation (a near-tie).
    close_rate, close_angle : share of births placed ``~close_angle`` away from an existing feature.
    dead_rate : share of slots per layer that are dead, each by one of ``dead_modes``
        (:data:`DEAD_MODES`: θ = +inf, θ ≤ 0, all-zero decoder row, or "silent" b_enc ≪ 0).
    heavy_tail : lognormal σ of the feature magnitudes (folded row norms); 1 spans an order of
        magnitude across features (like Gemma Scope θ); it reproduces the
        DESIGN.md pitfall together with a weak directional signal, see :func:`pitfall_stack`.
    theta_scale, theta_growth : θ (and folded norms) scale as ``theta_scale · theta_growth**t``.
    dec_norm_sigma : lognormal σ of the per-layer split between θ and the decoder-row norm; the
        noise that folding removes and unfolded matching suffers from (0: unit-norm decoders).
    enc_noise : the encoder column is the decoder direction rotated by ``atan(enc_noise)``.
    dtype, device : of the returned tensors (arithmetic in float32, or float64 for float64).
    """
    _check_knobs(n_layers, d, F, birth_rate, split_rate, dead_rate, close_rate, dead_modes,
                 drift=drift, scale_drift=scale_drift, split_angle=split_angle, close_angle=close_angle,
                 heavy_tail=heavy_tail, dec_norm_sigma=dec_norm_sigma, enc_noise=enc_noise)
    if not (theta_scale > 0 and theta_growth > 0):
        raise ValueError(f"make_stack: theta_scale={theta_scale}, theta_growth={theta_growth} must be > 0")
    device = torch.device(device if device is not None else "cpu")
    g = torch.Generator(device=device).manual_seed(seed)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    k = {
        "drift": drift, "scale_drift": scale_drift, "split_angle": split_angle, "close_rate": close_rate,
        "close_angle": close_angle, "heavy_tail": heavy_tail, "theta_scale": theta_scale,
        "theta_growth": theta_growth, "dec_norm_sigma": dec_norm_sigma, "enc_noise": enc_noise,
        "n_dead": round(dead_rate * F), "n_split": math.floor(split_rate * F),
        "n_born": math.floor(birth_rate * F),
        "modes": torch.tensor([_MODE_CODE[m] for m in dead_modes] or [1], dtype=torch.int8, device=device),
    }
    # layer 0: births and dead slots at random positions
    pi = torch.randperm(F, generator=g, device=device)
    U = torch.empty(F, d, dtype=work, device=device)
    m = torch.exp(heavy_tail * _randn((F,), g, work))
    kind = torch.full((F,), BORN, dtype=torch.int8, device=device)
    mode = torch.zeros(F, dtype=torch.int8, device=device)
    _fill_born(U, pi[: F - k["n_dead"]], pi[:0], close_rate, close_angle, g)
    _place_dead(U, m, kind, mode, pi[F - k["n_dead"]:], g, k)
    b_dir = torch.nn.functional.normalize(_randn((1, d), g, work)).flatten()
    stack = SyntheticStack(saes=[], truth=[], kind=[kind], parent=[torch.full((F,), -1, device=device)])
    for t in range(n_layers):
        stack.saes.append(_build_sae(U, m, mode, t, g, k, dtype, b_dir, seed))
        if t < n_layers - 1:
            U, m, kind, mode, fwd, par = _next_layer(U, m, stack.kind[t], g, k)
            b_dir = _rotate(b_dir[None], torch.full((1,), drift, dtype=work, device=device), g).flatten()
            stack.truth.append(fwd)
            stack.kind.append(kind)
            stack.parent.append(par)
    return stack


def _check_knobs(n_layers, d, F, birth_rate, split_rate, dead_rate, close_rate, dead_modes, **nonneg) -> None:
    if n_layers < 1 or d < 1 or F < 1:
        raise ValueError(f"make_stack: need n_layers, d, F >= 1; got {n_layers}, {d}, {F}")
    rates = {"birth_rate": birth_rate, "split_rate": split_rate, "dead_rate": dead_rate,
             "close_rate": close_rate}
    for name, r in rates.items():
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"make_stack: {name}={r} must lie in [0, 1]")
    total = dead_rate + birth_rate + 2 * split_rate
    if total > 1.0:
        raise ValueError(
            f"make_stack: dead_rate + birth_rate + 2*split_rate = {total:.3g} > 1: not enough "
            f"persisting features to split; lower the rates"
        )
    if any(m not in DEAD_MODES for m in dead_modes) or (dead_rate > 0 and not dead_modes):
        raise ValueError(f"make_stack: dead_modes {tuple(dead_modes)!r}; choose from {DEAD_MODES}")
    for name, v in nonneg.items():
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"make_stack: {name}={v} must be finite and >= 0")
    for name in ("heavy_tail", "dec_norm_sigma"):  # lognormal σ: e^(8·6) still fits float32
        if nonneg[name] > 8:
            raise ValueError(f"make_stack: {name}={nonneg[name]} > 8 would overflow θ; use σ <= 8")


def _place_dead(U: Tensor, m: Tensor, kind: Tensor, mode: Tensor, pos: Tensor, g, k: dict) -> None:
    """Dead slots at ``pos``: a random mode each, a random direction (unused by zero rows)."""
    codes = k["modes"]
    mode[pos] = codes[torch.randint(len(codes), (len(pos),), generator=g, device=g.device)]
    kind[pos] = torch.where(mode[pos] == _MODE_CODE["silent"], SILENT, DEAD).to(torch.int8)
    _fill_born(U, pos, pos[:0], 0.0, 0.0, g)
    m[pos] = torch.exp(k["heavy_tail"] * _randn((len(pos),), g, m.dtype))


def _next_layer(U: Tensor, m: Tensor, kind: Tensor, g, k: dict):
    """Layer t → t+1: who persists, who splits, where everyone lands (canonical order → ``pi``).

    Returns ``U [F, d], m, kind, mode`` of layer t+1, ``truth [F]`` (t → t+1) and ``parent [F]``.
    """
    F, dev = len(m), m.device
    n_dead, n_split, n_born = k["n_dead"], k["n_split"], k["n_born"]
    n_keep = F - n_dead - n_split - n_born  # >= n_split by the rate check
    live = (kind <= SPLIT).nonzero().flatten()
    src_keep = live[torch.randperm(len(live), generator=g, device=dev)[:n_keep]]
    src_split = src_keep[torch.randperm(n_keep, generator=g, device=dev)[:n_split]]
    pi = torch.randperm(F, generator=g, device=dev)
    pos_keep, pos_split = pi[:n_keep], pi[n_keep:n_keep + n_split]
    pos_born, pos_dead = pi[n_keep + n_split:F - n_dead], pi[F - n_dead:]
    fwd = torch.full((F,), -1, dtype=torch.int64, device=dev)
    fwd[src_keep] = pos_keep
    par = torch.full((F,), -1, dtype=torch.int64, device=dev)
    par[pos_keep], par[pos_split] = src_keep, src_split
    kind = torch.empty(F, dtype=torch.int8, device=dev)
    kind[pos_keep], kind[pos_split], kind[pos_born] = PERSISTED, SPLIT, BORN
    mode = torch.zeros(F, dtype=torch.int8, device=dev)
    U_new, m_new = torch.empty_like(U), torch.empty_like(m)
    _fill_rotated(U_new, pos_keep, src_keep, U, k["drift"], g)
    m_new[pos_keep] = m[src_keep] * torch.exp(k["scale_drift"] * _randn((n_keep,), g, m.dtype))
    _fill_rotated(U_new, pos_split, fwd[src_split], U_new, k["split_angle"], g)
    m_new[pos_split] = m[src_split] * torch.exp(k["scale_drift"] * _randn((n_split,), g, m.dtype))
    _fill_born(U_new, pos_born, pos_keep, k["close_rate"], k["close_angle"], g)
    m_new[pos_born] = torch.exp(k["heavy_tail"] * _randn((len(pos_born),), g, m.dtype))
    _place_dead(U_new, m_new, kind, mode, pos_dead, g, k)
    return U_new, m_new, kind, mode, fwd, par


def pitfall_stack(
    F: int = 8192, d: int = 2304, *, seed: int = 0, n_layers: int = 2, **knobs
) -> SyntheticStack:
    """The DESIGN.md "measured pitfall": heavy-tailed folded scales and a weak directional signal
    (``drift=1.0``) in a wide residual stream, so that squared distances are dominated by row and
    column norms: the k cheapest candidates of many rows (and columns) pile onto the same extreme
    columns (rows), a k = 32 row ∪ column candidate graph has no perfect matching (7176 of 8192
    rows matchable at the defaults, seed 0), the same graph built from cosine similarity is
    perfectly matchable, and dense JV solvers slow down. ``knobs`` override the defaults
    (``heavy_tail=1.0, drift=1.0, dead_modes=("inf", "nonpositive")``: no zero rows, whose
    cosine is undefined) and any other :func:`make_stack` knob."""
    knobs = {"heavy_tail": 1.0, "drift": 1.0, "dead_modes": ("inf", "nonpositive"), **knobs}
    return make_stack(n_layers, d, F, seed=seed, **knobs)


def sae_like_costs(n: int, d: int = 64, *, seed: int = 0, heavy_tail: float = 1.0, **knobs) -> np.ndarray:
    """Dense squared distances, float64 ``[n, n]``, between the folded decoder rows of layers 0 (rows)
    and 1 (columns) of ``make_stack(2, d, n, seed=seed, heavy_tail=heavy_tail, **knobs)``, whose
    ``truth[0]`` is the planted assignment: ``cost[i, j] = ||θ_i W_dec0[i] - θ_j W_dec1[j]||²``.
    Entries are exact up to float64 rounding of ``|a|² + |b|² - 2 a·b`` (clamped at 0)."""
    stack = make_stack(2, d, n, seed=seed, heavy_tail=heavy_tail, **knobs)
    a, b = (s.fold().W_dec.to(torch.float64) for s in stack.saes)
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return cost.clamp_min_(0.0).cpu().numpy()
