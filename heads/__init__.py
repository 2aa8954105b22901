"""Built-in plugins; importing this package registers them with ``iggt_lightning.registry``: the heads (one file
each) and, under ``postprocessors/``, the post-processors."""
from .camera import CameraHead
from .depth import DepthHead
from .instance import InstanceHead
from .point import PointHead
from .postprocessors import InstanceTracking, OpenVocabLabels
from .track import TrackHead

__all__ = ["CameraHead", "DepthHead", "InstanceHead", "InstanceTracking", "OpenVocabLabels", "PointHead", "TrackHead"]
