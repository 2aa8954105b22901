"""iggt-lightning: instance-grounded geometry transformers (IGGT) in PyTorch Lightning."""
from .model import IGGTModel, PRESETS
from .registry import (available_heads, available_postprocessors, get_head, get_postprocessor, register_head,
                       register_postprocessor)

__version__ = "0.1.0"
__all__ = ["IGGTModel", "PRESETS", "available_heads", "available_postprocessors", "get_head", "get_postprocessor",
           "register_head", "register_postprocessor", "__version__"]
