"""mechperm: match SAE features across layers from their weights alone (SAE Match), exactly.

The public names below cover the usual path: load SAEs, match a pair or a stack, save and read
run folders, evaluate. Submodules hold the rest (``mechperm.kernels``, ``mechperm.assign``,
``mechperm.formats``, ``mechperm.evaluate``, ``mechperm.export``).
"""
__version__ = "0.1.0"  # before the imports: run.py and cli.py read it

from mechperm import _vml

_vml.warm_up()  # before any of torch's threads first calls a VML op (see mechperm/_vml.py)

from mechperm.evaluate import evaluate_skip_layers, pair_metrics
from mechperm.export import export_aligned
from mechperm.formats import load_sae, load_stack, save_saelens
from mechperm.match import identity_match, match, match_vectors
from mechperm.result import MatchResult, compose
from mechperm.run import load_run, run_stack
from mechperm.sae import SAE, SAEInfo
from mechperm.stack import StackMatch, match_stack
from mechperm.synthetic import SyntheticStack, make_stack

__all__ = [
    "SAE",
    "SAEInfo",
    "MatchResult",
    "StackMatch",
    "SyntheticStack",
    "compose",
    "evaluate_skip_layers",
    "export_aligned",
    "identity_match",
    "load_run",
    "load_sae",
    "load_stack",
    "make_stack",
    "match",
    "match_stack",
    "match_vectors",
    "pair_metrics",
    "run_stack",
    "save_saelens",
    "__version__",
]
