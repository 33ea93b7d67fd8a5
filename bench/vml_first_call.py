"""How often a fresh process's first multi-threaded VML op (``torch.exp``, ``torch.sqrt``) comes
back inexact, with and without ``import mechperm`` first (its warm-up: mechperm/_vml.py).

    python bench/vml_first_call.py [--rounds 40] [--threads 2] [--json out.json]

Each round starts two processes at once (the race needs the threads to meet in the first call;
a second process on a 2-core machine makes that likelier): each computes ``exp`` and ``sqrt`` of
16384 float32 values on ``--threads`` threads, twice, and counts the values whose first result
differs from the second (the second call runs the settled kernel). A process is corrupted if any
value differs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "mechperm":
    import mechperm  # noqa: F401  (its import warms VML up)
x = torch.randn(16384, generator=torch.Generator().manual_seed(0))
first = (torch.exp(x), torch.sqrt(x.abs()))
second = (torch.exp(x), torch.sqrt(x.abs()))
print(sum(int((a != b).sum()) for a, b in zip(first, second)))
"""


def run(mode: str, rounds: int, threads: int) -> dict:
    corrupted, values = 0, 0
    for _ in range(rounds):
        procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), mode], stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"child ({mode}) failed with status {p.returncode}")
            bad = int(out.strip())
            corrupted += bad > 0
            values += bad
    return {"mode": mode, "processes": 2 * rounds, "corrupted_processes": corrupted, "inexact_values": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = [run(mode, args.rounds, args.threads) for mode in ("plain", "mechperm")]
    for r in results:
        print(f"{r['mode']:>9}: {r['corrupted_processes']} of {r['processes']} processes inexact "
              f"({r['inexact_values']} values)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
