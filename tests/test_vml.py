"""``import mechperm`` settles oneMKL VML's kernel choice before torch's threads call it
(mechperm/_vml.py): without it, a process's first multi-threaded ``torch.exp`` sometimes ran a
low-accuracy kernel on one thread's chunk, and ``make_stack`` drew another stack from the same
seed. The race itself cannot be triggered on demand (``bench/vml_first_call.py`` measures it);
this test checks that the warm-up runs at import and covers the ops the package uses."""
from __future__ import annotations

import json
import subprocess
import sys


def test_import_warms_every_vml_op_in_both_float_dtypes() -> None:
    code = (
        "import json, torch, mechperm\n"
        "from mechperm import _vml\n"
        "print(json.dumps({'warmed': [[n, str(d)] for n, d in _vml.warmed],\n"
        "                  'ops': [n for n in _vml.OPS if hasattr(torch, n)]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    got = json.loads(out)
    warmed, ops = {tuple(w) for w in got["warmed"]}, got["ops"]
    assert {(n, d) for n in ops for d in ("torch.float32", "torch.float64")} == warmed
    for name in ("exp", "sqrt", "sin", "cos", "log"):  # make_stack's, the kernels' norms, the evaluations'
        assert name in ops

