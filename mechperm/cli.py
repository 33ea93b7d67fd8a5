"""The ``mechperm`` command."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from mechperm import __version__



def _l0(text: str) -> float | str:
    """``--l0 82`` (Gemma Scope's average_l0_N) or ``--l0 medium`` (a Gemma Scope 2 label)."""
    try:
        return float(text)
    except ValueError:
        return text

def parse_layers(text: str) -> list[int]:
    """``"0-25"``, ``"3,5,7"`` or ``"0-3,8"`` → sorted layer numbers."""
    layers: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            layers.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers {text!r}: expected e.g. 0-25, 3,5,7 or 0-3,8") from None
    if not layers:
        raise argparse.ArgumentTypeError(f"--layers {text!r} names no layer")
    return sorted(layers)


def _match_options(args: argparse.Namespace) -> dict:
    opts = dict(on=args.on, fold=not args.no_fold, metric=args.metric, mode=args.mode,
                candidates_k=args.k, device=args.device)
    if args.mode == "partial":
        opts["threshold"] = args.threshold
    if args.mode == "topk":
        opts["k"] = args.neighbors
    return opts


def _auto_device() -> str:
    """``--device``'s default: the GPU where torch sees one (a 16k pair in ~0.1 s against ~10 s
    on a CPU), else the CPU. Apple's GPU (MPS) is not chosen: the cost kernels' Triton path is
    CUDA's."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _reason(exc: BaseException) -> str:
    """The first line of an out-of-memory error (torch's goes on with allocator advice)."""
    return str(exc).splitlines()[0] if str(exc) else "out of memory"


def _cpu_when_out_of_gpu_memory(progress: bool):
    """The matcher of a run whose device was chosen for the user (``--device`` not given): a
    pair that does not fit in the GPU's memory (wide SAEs on a small card) is matched on the CPU
    instead, with a note, and the run goes on. Asked for by name, the GPU's error stands."""
    import torch

    from mechperm.match import match

    def matcher(sae_a, sae_b, **options):
        try:
            return match(sae_a, sae_b, progress=progress, **options)
        except torch.cuda.OutOfMemoryError as exc:  # retried below, after the traceback's tensors are freed
            reason = _reason(exc)
        torch.cuda.empty_cache()
        print(f"\nmechperm: note: a pair of {sae_a.d_sae} × {sae_b.d_sae} features does not fit in the GPU's "
              f"memory ({reason}); matching it on the CPU (--device cpu runs every pair there)", file=sys.stderr)
        return match(sae_a, sae_b, progress=progress, **{**options, "device": "cpu"})

    return matcher


def _join_torchrun(device: str | None) -> tuple[int, bool]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): join the default process group and return
    (rank, joined). Gloo whatever the device: the ranks only exchange a few Python objects (the
    pairs themselves go to the shared run folder). ``--device cuda`` (the default where there
    are GPUs) means each rank's own GPU (``LOCAL_RANK``), so the options are the same on every
    rank and in a later single-process run."""
    import datetime
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return dist.get_rank(), False
    if device is not None and device.startswith("cuda"):
        if device != "cuda":
            raise ValueError(f"--device {device} under torchrun: pass --device cuda, and each rank uses "
                             "the GPU of its LOCAL_RANK")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # a long timeout: ranks wait at the end for the slowest share (a 1M-wide pair takes minutes)
    dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    return dist.get_rank(), True


def _match(args: argparse.Namespace) -> int:
    import warnings

    from mechperm.formats import load_stack
    from mechperm.run import run_stack

    chosen = args.device is None
    if chosen:
        args.device = _auto_device()
    else:  # before any SAE is read: a typo or a CPU-only machine says so at once
        from mechperm.formats._common import as_device

        as_device(args.device)
    rank, joined = _join_torchrun(args.device)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # lazy: each SAE is read when a pair needs it, two held at a time (a 1M-wide stack does
            # not fit in memory whole); under torchrun each rank reads only its share's
            saes = load_stack(args.path, layers=args.layers, width=args.width, l0=args.l0, hook=args.hook,
                              trainer=args.trainer, lazy=True)
        if len(saes) < 2:
            raise ValueError(f"{args.path} holds {len(saes)} SAE(s) for the chosen layers; matching needs at least 2")
        if rank == 0:
            for w in caught:
                print(f"mechperm: note: {w.message}", file=sys.stderr)
            ranks = f", {_world()} ranks" if _world() > 1 else ""
            print(f"{args.path}: {len(saes)} SAEs (layers {_layer_list(saes.layers)}), each read when a pair "
                  f"needs it{ranks}; matching on {_device_name(args.device)}")
        matcher = _cpu_when_out_of_gpu_memory(not args.quiet) if chosen and args.device != "cpu" else None
        stack = run_stack(saes, args.out, args.pairs, progress=not args.quiet, matcher=matcher,
                          **_match_options(args))
        if rank == 0:
            _print_table(stack.summary())
            print(f"run folder: {args.out}")
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _layer_list(layers: list[int]) -> str:
    """``0-25`` for a contiguous run of layers, else the list."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def _print_table(rows: list[dict]) -> None:
    print(f"{'pair':>9} {'matched':>9} {'mean cost':>11} {'med cos':>8} {'gap':>9} {'cert':>5} {'seconds':>8}")
    for r in rows:
        print(
            f"{r['a']:>4}→{r['b']:<4} {r['matched']:>9} {r['mean_cost']:>11.5g} {r['median_cosine']:>8.3f} "
            f"{r['gap']:>9.2g} {'yes' if r['certified'] else 'no':>5} {r['seconds']:>8.2f}"
        )


def _show(args: argparse.Namespace) -> int:
    from mechperm.run import load_run

    stack = load_run(args.run)
    print(f"run {args.run}: {len(stack.sizes)} SAEs, layers {stack.layers}, options {stack.options}")
    _print_table(stack.summary())
    agreement = stack.agreement_by_distance()
    if agreement:
        print("direct vs composed agreement by layer distance: "
              + ", ".join(f"{d}: {a:.1%}" for d, a in agreement.items()))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mechperm.match import match
    from mechperm.run import run_stack
    from mechperm.synthetic import make_stack

    t0 = time.perf_counter()
    stack = make_stack(args.layers, d=args.d, F=args.features, seed=args.seed)
    print(
        f"synthetic stack: {args.layers} JumpReLU SAEs, F={args.features}, d={args.d}, seed={args.seed} "
        f"(planted drift, births/deaths, split near-duplicates, heavy-tailed θ growing with depth)"
    )
    print(f"{'pair':>6} {'folded':>8} {'unfolded':>9} {'identity':>9} {'objective':>12} {'gap':>9} {'seconds':>8}")
    for t in range(args.layers - 1):
        a, b = stack.saes[t], stack.saes[t + 1]
        folded = match(a, b, fold=True)
        unfolded = match(a, b, fold=False)
        identity = match(a, b, mode="identity")
        rec = [stack.recovery(t, r.perm)["recovered"] for r in (folded, unfolded, identity)]
        print(
            f"{t}→{t + 1:<3} {rec[0]:>8.1%} {rec[1]:>9.1%} {rec[2]:>9.1%} "
            f"{folded.objective:>12.6g} {folded.gap:>9.2g} {folded.timings['total']:>8.2f}"
        )
    run_stack(stack.saes, args.out, progress=False)
    print(
        f"recovery = share of the planted persisting features matched to their true continuation; "
        f"gap = certified primal − dual ({time.perf_counter() - t0:.1f} s in all)"
    )
    print(f"run folder with summary.json and plots: {args.out}  (try: mechperm show {args.out})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only; never wait on the network
    from mechperm.eval_run import evaluate_run, format_table

    result = evaluate_run(
        args.run, args.model, tokens=args.tokens, text=args.text, max_sequences=args.max_sequences,
        seq_len=args.seq_len, batch_size=args.batch_size, device=args.device, encoder=args.encoder,
        hook=args.hook, progress=not args.quiet, layers=args.layers,
    )
    data = result["data"]
    print(f"{result['model_kind']} {args.model}: {data['n_sequences']} sequences × {data['seq_len']} "
          f"({result['n_tokens']} evaluated tokens) from {data['path']}"
          + ("" if result["clean_ce"] is None else f"; clean CE {result['clean_ce']:.4f} nats/token"))
    print(format_table(result))
    print("SAE EV per layer (own reconstruction): "
          + ", ".join(f"{L}: {v:.3f}" for L, v in result["sae_ev"].items() if v is not None))
    check = result["hook_check"]
    if check is not None:
        print(f"hook check (layer patched with its own clean state): max |ΔCE| {check['max_abs_delta_ce']:.2g}")
    low = [int(L) for L, v in result["sae_ev"].items() if v is not None and v < 0.5]
    if low:
        print(f"mechperm: note: the SAEs of layers {low} explain < 50% of their own layer here; "
              "is the hook point right (--hook, --encoder)?", file=sys.stderr)
    print(f"wrote {args.run}/eval/: metrics.json, " + ", ".join(result["files"])
          + f" ({result['seconds']:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechperm",
        description="Match SAE features across the layers of a language model from their weights alone.",
    )
    parser.add_argument("--version", action="version", version=f"mechperm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="match a synthetic SAE stack with planted ground truth and print recovery",
        description="Generate a synthetic stack of JumpReLU SAEs with a planted feature correspondence, "
        "match every adjacent pair (folded, unfolded, identity) and print how much of the truth each recovers.",
    )
    demo.add_argument("--layers", type=int, default=5, help="SAEs in the stack (default 5)")
    demo.add_argument("--features", type=int, default=2048, help="features per SAE (default 2048)")
    demo.add_argument("--d", type=int, default=128, help="residual width (default 128)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", "-o", default="runs/demo", help="run folder to write (default runs/demo)")
    demo.set_defaults(func=_demo)

    m = sub.add_parser(
        "match",
        help="match every layer pair of an SAE stack on disk into a run folder",
        description="Match the SAEs of a stack folder (Gemma Scope repo or HF cache, layer_L/ folders of "
        "params.npz or SAELens files, a sparsify run) layer pair by layer pair. Finished pairs are saved "
        "as they complete; running the same command again resumes.",
    )
    m.add_argument("path", help="stack folder (any layout load_stack accepts)")
    m.add_argument("--out", "-o", required=True, help="run folder to write (created; resumed if it exists)")
    m.add_argument("--layers", type=parse_layers, default=None, help="layers to match, e.g. 0-25 or 3,5,7 (default: all)")
    m.add_argument("--width", default=None, help="width folder where there are several, e.g. 16k")
    m.add_argument("--l0", type=_l0, default=None,
                   help="average L0 folder: exact, else the nearest (Gemma Scope 2: small, medium or big)")
    m.add_argument("--hook", default=None,
                   help="hook point where a SAELens repo holds several (blocks.{L}.hook_<HOOK>/), e.g. resid_pre")
    m.add_argument("--trainer", type=int, default=None,
                   help="trainer_N folder where a dictionary_learning sweep holds several")
    m.add_argument("--on", choices=("decoder", "encoder", "both"), default="decoder", help="parameters to match (default decoder)")
    m.add_argument("--metric", choices=("mse", "cosine"), default="mse", help="cost: squared distance or cosine (default mse)")
    m.add_argument("--mode", choices=("bijective", "partial", "topk", "identity"), default="bijective", help="default bijective")
    m.add_argument("--threshold", type=float, default=None, help="no-counterpart cost for --mode partial")
    m.add_argument("--neighbors", type=int, default=5, help="neighbours per feature for --mode topk (default 5)")
    m.add_argument("--no-fold", action="store_true", help="match unfolded weights (the baseline)")
    m.add_argument("--k", type=int, default=64, help="candidates per row and column for large F (default 64, as match())")
    m.add_argument("--pairs", choices=("adjacent", "all"), default="adjacent", help="default adjacent")
    m.add_argument("--device", default=None,
                   help="where the cost kernels run: cpu, cuda, cuda:1 (default: cuda where there is a GPU, "
                        "and a pair too large for its memory on the CPU; else cpu)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_match)

    ev = sub.add_parser(
        "eval",
        help="skip-layer evaluation (EV, ΔCE) of a run's matches on a model; writes RUN/eval/",
        description="Re-load the run's SAEs (content hashes checked), build the folded, unfolded and identity "
        "matches of every adjacent pair, replace layer u's state by decode_u(P·encode_t(x_t)) (and the "
        "baselines) and measure explained variance and the loss increase. Writes RUN/eval/metrics.json, "
        "ev_by_layer.png, delta_ce_by_layer.png and pairs_{a}-{b}.jsonl.",
    )
    ev.add_argument("run", help="run folder written by `mechperm match`")
    ev.add_argument("--model", required=True, help="local Hugging Face model folder")
    src = ev.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="int token ids [N, T] in a .npy file")
    src.add_argument("--text", help="text file, one sequence per line (needs the model folder's tokenizer)")
    ev.add_argument("--layers", type=parse_layers, default=None,
                    help="consecutive layers of the run to evaluate, e.g. 10-13 (default: all); only their SAEs are read")
    ev.add_argument("--max-sequences", type=int, default=None, help="use the first N sequences (default all)")
    ev.add_argument("--seq-len", type=int, default=None,
                    help="tokens per sequence (default: all columns of --tokens; 128 for --text)")
    ev.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    ev.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cuda when available")
    ev.add_argument("--encoder", action="store_true",
                    help="an encoder (AutoModel; SAE of layer L reads hidden_states[L]): EV only")
    ev.add_argument("--hook", default=None,
                    help="module of layer L, e.g. 'model.layers.{layer}' (default: auto-detected block list)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_eval)

    show = sub.add_parser("show", help="print the summary table of a run folder")
    show.add_argument("run", help="run folder written by `mechperm match` or `mechperm demo`")
    show.set_defaults(func=_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"mechperm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechperm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        print(f"mechperm: error: the GPU ran out of memory ({_reason(exc)}); --device cpu matches on the CPU, and "
              "without --device a pair too large for the GPU is matched on the CPU", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
