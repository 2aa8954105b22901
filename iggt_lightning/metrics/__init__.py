"""torchmetrics ``Metric`` subclasses (DDP-correct states)."""
from .camera import CameraMetrics
from .depth import DepthMetrics
from .instance_ap import InstanceAP
from .pointmap import PointMapMetrics
from .tracking import TrackingMetrics

__all__ = ["CameraMetrics", "DepthMetrics", "InstanceAP", "PointMapMetrics", "TrackingMetrics"]
