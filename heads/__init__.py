"""Built-in plugin heads; importing this package registers them with ``iggt_lightning.registry``."""
from .camera import CameraHead
from .depth import DepthHead
from .instance import InstanceHead
from .open_vocab import OpenVocabHead
from .point import PointHead
from .track import TrackHead
from .tracking import TrackingHead

__all__ = ["CameraHead", "DepthHead", "InstanceHead", "OpenVocabHead", "PointHead", "TrackHead", "TrackingHead"]
