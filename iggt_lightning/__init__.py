"""iggt-lightning: instance-grounded geometry transformers (IGGT) in PyTorch Lightning."""
from . import builtin_plugins  # noqa: F401 (hands the registry the loader of the built-in plugins)
from .model import IGGTModel, PRESETS
from .registry import (available_heads, available_postprocessors, get_head, get_postprocessor, register_head,
                       register_postprocessor)

__version__ = "0.1.0"
__all__ = ["IGGTModel", "PRESETS", "available_heads", "available_postprocessors", "get_head", "get_postprocessor",
           "register_head", "register_postprocessor", "__version__"]
