"""Depth head: DPT decoder, exp-activated depth and 1+exp confidence per pixel."""
from __future__ import annotations

from iggt_lightning.head import HeadInput
from iggt_lightning.losses import depth_loss
from iggt_lightning.metrics import DepthMetrics
from iggt_lightning.registry import register_head

from .dense import DenseHead


@register_head("depth")
class DepthHead(DenseHead):
    outputs = ("depth", "depth_conf")
    loss_terms = ("depth",)

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, activation: str = "exp",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 layers: tuple[int, ...] = (4, 11, 17, 23), pos_embed: bool = True) -> None:
        super().__init__(dim_in, patch_size, 2, activation, conf_activation, features, out_channels, layers, pos_embed)

    def forward(self, inp: HeadInput) -> dict:
        depth, conf, _ = self.run(inp)
        return {"depth": depth, "depth_conf": conf}

    def loss(self, outputs: dict, batch: dict, active: dict[str, dict]) -> dict:
        """``depth``: confidence-weighted regression + gradient term (:func:`~iggt_lightning.losses.depth_loss`)."""
        if "depth" not in active:
            return {}
        return depth_loss(outputs["depth"], outputs["depth_conf"], batch["depth"], batch["valid_mask"],
                          **active["depth"])

    def build_metrics(self) -> dict:
        return {"depth": DepthMetrics()}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "depth" in outputs:
            metrics["depth"].update(outputs["depth"], batch["depth"], batch["valid_mask"])
