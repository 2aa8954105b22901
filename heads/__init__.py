"""Built-in plugin heads; importing this package registers them with ``iggt_lightning.registry``."""
from .camera import CameraHead
from .depth import DepthHead
from .instance import InstanceHead
from .point import PointHead
from .track import TrackHead
from .tracking import TrackingHead

__all__ = ["CameraHead", "DepthHead", "InstanceHead", "PointHead", "TrackHead", "TrackingHead"]
