"""Built-in post-processors (run after the network; see ``iggt_lightning.postprocessor``)."""
from .open_vocab import OpenVocabLabels
from .prompts import PromptedInstances
from .tracking import InstanceTracking, ids_to_masks

__all__ = ["InstanceTracking", "OpenVocabLabels", "PromptedInstances", "ids_to_masks"]
