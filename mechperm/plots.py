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
