"""torchmetrics ``Metric`` subclasses (DDP-correct states)."""
from .camera import CameraMetrics
from .depth import DepthMetrics
from .instance_ap import InstanceAP
from .open_vocab import OpenVocabMetrics
from .pointmap import PointMapMetrics
from .tracking import TrackingMetrics

__all__ = ["CameraMetrics", "DepthMetrics", "InstanceAP", "OpenVocabMetrics", "PointMapMetrics", "TrackingMetrics"]
