"""Point-map head: DPT decoder, world points (sign * expm1) and confidence per pixel.

It also exposes its fused decoder maps as ``point_feat`` (out2 at 4h, out3 at 2h, out4 at h;
frames flattened), the geometry features the instance head cross-attends to.
"""
from __future__ import annotations

from iggt_lightning.head import HeadInput
from iggt_lightning.losses import point_loss
from iggt_lightning.metrics import PointMapMetrics
from iggt_lightning.registry import register_head

from .dense import DenseHead


@register_head("point")
class PointHead(DenseHead):
    outputs = ("world_points", "world_points_conf", "point_feat")
    intermediates = ("point_feat",)
    loss_terms = ("point",)
    loss_functions = {"point": point_loss}   # its options: conf_regression_loss's keyword parameters
    official_prefixes = (("point_head.", "dpt."),)

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 layers: tuple[int, ...] = (4, 11, 17, 23), pos_embed: bool = True) -> None:
        super().__init__(dim_in, patch_size, 4, activation, conf_activation, features, out_channels, layers, pos_embed)

    def forward(self, inp: HeadInput) -> dict:
        points, conf, fused = self.run(inp)
        return {"world_points": points, "world_points_conf": conf, "point_feat": fused}

    def describe(self, outputs: dict, scene) -> None:
        """A point source ``point``: the predicted point map itself (the official GLBs' points)."""
        if "world_points" in outputs:
            scene.add_points("point", outputs["world_points"][scene.index], outputs["world_points_conf"][scene.index])

    def loss(self, outputs: dict, batch: dict, active: dict[str, dict]) -> dict:
        """``point``: confidence-weighted regression + gradient term (:func:`~iggt_lightning.losses.point_loss`)."""
        if "point" not in active:
            return {}
        return point_loss(outputs["world_points"], outputs["world_points_conf"], batch["world_points"],
                          batch["valid_mask"], **active["point"])

    def build_metrics(self) -> dict:
        return {"point_map": PointMapMetrics()}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "world_points" in outputs:
            metrics["point_map"].update(outputs["world_points"], batch["world_points"], batch["valid_mask"])
