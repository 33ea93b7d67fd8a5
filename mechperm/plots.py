"""PNG plots of a matched stack (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mechperm.stack import StackMatch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)  # atomic, like every run-folder file
    return path


def plot_run(stack: StackMatch, out_dir: str | Path, *, min_cosine: float = 0.5) -> list[Path]:
    """Cost and cosine histograms per pair, matched fraction by pair, persistence histogram.

    Persistence counts a step only where the matched pair's cosine is at least ``min_cosine``.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = sorted(stack.results)
    written = []
    if not pairs:
        return written
    label = [f"{stack.layers[a]}→{stack.layers[b]}" for a, b in pairs]
    colors = plt.cm.viridis(np.linspace(0, 1, len(pairs)))

    for field, name, xlabel in (("cost", "cost_hist.png", "matched cost (squared distance)"),
                                ("cosine", "cosine_hist.png", "matched cosine")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for (a, b), lab, col in zip(pairs, label, colors):
            r = stack.results[(a, b)]
            values = getattr(r, field)[r.perm >= 0].double().numpy()
            values = values[np.isfinite(values)]
            if values.size:
                ax.hist(values, bins=60, histtype="step", color=col, label=lab)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("features")
        ax.legend(fontsize=7, ncol=2)
        written.append(_save(fig, out / name))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    frac = [stack.results[p].n_matched / max(1, stack.results[p].perm.numel()) for p in pairs]
    ax.bar(range(len(pairs)), frac, color=colors)
    ax.set_xticks(range(len(pairs)), label, rotation=60, fontsize=7)
    ax.set_ylabel("matched fraction")
    ax.set_ylim(0, 1.05)
    written.append(_save(fig, out / "matched_fraction.png"))
    plt.close(fig)

    adjacent = all((t, t + 1) in stack.results for t in range(len(stack.sizes) - 1))
    if adjacent and len(stack.sizes) > 1:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        pers = stack.persistence(min_cosine=min_cosine)[0].numpy()
        ax.hist(pers, bins=np.arange(len(stack.sizes) + 1) - 0.5, color="tab:blue")
        ax.set_xlabel(f"layers a feature of layer {stack.layers[0]} survives (adjacent matches, cosine ≥ {min_cosine})")
        ax.set_ylabel("features")
        written.append(_save(fig, out / "persistence.png"))
        plt.close(fig)
    return written


# ---------------------------------------------------------------------- evaluation (mechperm eval)
_EVAL_STYLE = {  # matching methods in strong colours, baselines in muted, hatched ones
    "folded": dict(color="#1f77b4"),
    "unfolded": dict(color="#ff7f0e"),
    "identity": dict(color="#d62728"),
    "layer_drop": dict(color="#7f7f7f", hatch="//"),
    "encdec_current": dict(color="#2ca02c", hatch=".."),
    "encdec_previous": dict(color="#9467bd", hatch=".."),
}
_EVAL_LABEL = {
    "folded": "folded match (SAE Match)",
    "unfolded": "unfolded match",
    "identity": "identity (no match)",
    "layer_drop": "layer drop (x_t fed on)",
    "encdec_current": "enc-dec current layer",
    "encdec_previous": "enc-dec previous layer",
}


def _grouped_bars(ax, pairs: list[tuple[int, int]], names: list[str], values: dict, *, floor: float | None) -> None:
    """Bars per pair, one per method; values below ``floor`` are clipped there and labelled."""
    width = 0.8 / len(names)
    x = np.arange(len(pairs))
    for k, name in enumerate(names):
        v = np.array([np.nan if values[(p, name)] is None else values[(p, name)] for p in pairs], dtype=float)
        shown = v if floor is None else np.maximum(v, floor)
        style = _EVAL_STYLE.get(name, {})
        pos = x + (k - (len(names) - 1) / 2) * width
        ax.bar(pos, shown, width, label=_EVAL_LABEL.get(name, name), edgecolor="white", linewidth=0.5,
               color=style.get("color"), hatch=style.get("hatch"))
        if floor is not None:
            for xi, vi in zip(pos, v):
                if np.isfinite(vi) and vi < floor:  # off the axis: say where it went
                    ax.annotate(f"{vi:.3g}", (xi, floor), xytext=(0, 3), textcoords="offset points", rotation=90,
                                ha="center", va="bottom", fontsize=7,
                                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    ax.set_xticks(x, [f"{t}→{u}" for t, u in pairs])
    ax.set_xlabel("layer pair t→u (layer u's state replaced by a reconstruction from layer t)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_eval(metrics: dict, out_dir: str | Path) -> list[Path]:
    """EV and ΔCE by layer pair, methods and baselines side by side (the paper's Figures 10–11).

    ``metrics`` is ``mechperm eval``'s metrics.json dict (``rows`` of the SkipLayerReport,
    ``methods``, ``baselines``, ``model_kind``, ``n_tokens``, ``model``). Writes
    ``ev_by_layer.png`` and, when the rows hold a loss (causal LMs), ``delta_ce_by_layer.png``.
    EV below −1 is clipped at −1 and its value written on the bar.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (*metrics["methods"], *metrics["baselines"])
             if any(r["method"] == n for r in metrics["rows"])]
    pairs = list(dict.fromkeys((r["layer_from"], r["layer_to"]) for r in metrics["rows"]))
    model = Path(str(metrics.get("model", ""))).name
    if model in ("model", ""):  # e.g. .../stories260k/model: the parent says more
        model = "/".join(Path(str(metrics.get("model", ""))).parts[-2:])
    subtitle = f"{model}, {metrics.get('n_tokens', 0):,} tokens"
    written = []
    for key, name, ylabel, title in (
        ("ev", "ev_by_layer.png", "explained variance of layer u (1 = perfect)", "Explained variance"),
        ("delta_ce", "delta_ce_by_layer.png", "ΔCE, nats/token (0 = perfect)", "Loss increase ΔCE"),
    ):
        values = {((r["layer_from"], r["layer_to"]), r["method"]): r[key]
                  for r in metrics["rows"] if r["method"] in names}
        finite = [v for v in values.values() if v is not None and np.isfinite(v)]
        if not finite:
            continue  # encoders: no loss
        fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(pairs) + 4.5), 4.2))
        if key == "ev":
            # EV of a poor replacement can be far below 0; keep the useful range readable
            floor = -1.0 if min(finite) < -1.0 else None
            _grouped_bars(ax, pairs, names, values, floor=floor)
            ax.set_ylim(floor if floor is not None else min(0.0, min(finite)) - 0.05, 1.05)
        else:
            _grouped_bars(ax, pairs, names, values, floor=None)
        ax.set_ylabel(ylabel)
        clean = metrics.get("clean_ce")
        extra = f", clean CE {clean:.3f}" if key == "delta_ce" and clean is not None else ""
        ax.set_title(f"{title} when layer u is rebuilt from layer t ({subtitle}{extra})", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        written.append(_save(fig, out / name))
        plt.close(fig)
    return written
