"""Training losses: camera (pose encoding), depth / point regression, instance contrastive."""
from .camera import camera_loss
from .contrastive import contrastive_loss, instance_contrastive_loss, instance_mean_contrastive_loss
from .regression import conf_regression_loss, depth_loss, point_loss

__all__ = [
    "camera_loss",
    "contrastive_loss",
    "conf_regression_loss",
    "depth_loss",
    "point_loss",
    "instance_contrastive_loss",
    "instance_mean_contrastive_loss",
]
