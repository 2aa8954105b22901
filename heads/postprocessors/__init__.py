"""Built-in post-processors (run after the network; see ``iggt_lightning.postprocessor``)."""
from .open_vocab import OpenVocabLabels
from .tracking import InstanceTracking, ids_to_masks

__all__ = ["InstanceTracking", "OpenVocabLabels", "ids_to_masks"]
