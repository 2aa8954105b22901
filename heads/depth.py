"""Depth head: DPT decoder, exp-activated depth and 1+exp confidence per pixel."""
from __future__ import annotations

import torch

from iggt_lightning.head import HeadInput
from iggt_lightning.losses import depth_loss
from iggt_lightning.metrics import DepthMetrics
from iggt_lightning.registry import register_head

from .dense import DenseHead


@register_head("depth")
class DepthHead(DenseHead):
    outputs = ("depth", "depth_conf")
    loss_terms = ("depth",)
    loss_functions = {"depth": depth_loss}   # its options: conf_regression_loss's keyword parameters
    official_prefixes = (("depth_head.", "dpt."),)

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

    def log_images(self, outputs: dict, batch: dict) -> dict:
        from iggt_lightning.visualize import normalised

        return {"depth": normalised(outputs["depth"][0, 0, ..., 0])} if "depth" in outputs else {}

    def describe(self, outputs: dict, scene) -> None:
        """A point source ``depth``: the depth maps unprojected with the scene's cameras."""
        if "depth" not in outputs:
            return
        depth, conf = outputs["depth"][scene.index], outputs["depth_conf"][scene.index]
        scene.report_non_finite(depth, "depth")
        scene.report_non_finite(conf, "confidence")

        def unprojected():
            if scene.cameras is None:
                return None
            from iggt_lightning.geometry import unproject_depth

            E, K = torch.from_numpy(scene.cameras.extrinsics), torch.from_numpy(scene.cameras.model_intrinsics)
            H, W = depth.shape[-3:-1]
            # view by view: a windowed run's depth is read from disk one view at a time
            return scene.per_view(lambda v: unproject_depth(scene.view(depth, v)[..., 0].double(), E[v], K[v]).float(),
                                  (H, W, 3))

        scene.add_points("depth", unprojected, conf, priority=1, from_cameras=True)

    def build_metrics(self, clip_range: tuple[float, float] | None = None) -> dict:
        """``clip_range``: clamp the median-aligned depth before scoring (``model.metric_options.depth``)."""
        return {"depth": DepthMetrics(clip_range=clip_range)}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "depth" in outputs:
            metrics["depth"].update(outputs["depth"], batch["depth"], batch["valid_mask"])
