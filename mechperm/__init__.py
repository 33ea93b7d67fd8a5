"""mechperm: match SAE features across layers from their weights alone (SAE Match)."""
from mechperm.formats import load_sae, load_stack
from mechperm.sae import SAE, SAEInfo

__version__ = "0.1.0"

__all__ = ["SAE", "SAEInfo", "load_sae", "load_stack", "__version__"]
