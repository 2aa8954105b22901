"""iggt-lightning: instance-grounded geometry transformers (IGGT) in PyTorch Lightning."""
from .model import IGGTModel, PRESETS
from .registry import available_heads, get_head, register_head

__version__ = "0.1.0"
__all__ = ["IGGTModel", "PRESETS", "available_heads", "get_head", "register_head", "__version__"]
