"""torchmetrics ``Metric`` subclasses (DDP-correct states)."""
from .camera import CameraMetrics
from .depth import DepthMetrics

__all__ = ["CameraMetrics", "DepthMetrics"]
