"""Instance tracking across views (not trainable): cluster the instance features of all views of a scene
jointly, so one object gets one id in every view, with a confidence per instance.

Outputs ``instance_masks`` int64 [B,S,H,W] (ids 1..K per scene, 0 = none) and ``instance_scores``, a list
over the batch of float [K] (index k-1 = instance k). Runs only at test and predict time by default
(``stages``), and never in training mode. The clusterer is configurable (``iggt_lightning.inference``):
``clusterer: torch`` (default; ``{name: torch, granularity: 0.4}``) or ``{name: hdbscan, preset: large}``,
which smooths features over 3D neighbours when the point head's ``world_points`` are available.
Metrics: :class:`InstanceAP` (multi-view and per view) and :class:`TrackingMetrics` (T-mIoU, T-SR) against
the batch's ``instance_ids``.
"""
from __future__ import annotations

import torch

from iggt_lightning.head import Head, HeadInput
from iggt_lightning.inference.clustering import build_clusterer
from iggt_lightning.metrics import InstanceAP, TrackingMetrics
from iggt_lightning.registry import register_head


def ids_to_masks(ids: torch.Tensor) -> torch.Tensor:
    """int [S,H,W] ids (0 = none) -> bool [G,S,H,W], one mask per non-zero id, in increasing id order."""
    uniq = ids.unique()
    uniq = uniq[uniq != 0]
    return ids.unsqueeze(0) == uniq.view(-1, 1, 1, 1)


@register_head("tracking")
class TrackingHead(Head):
    requires = ("instance",)
    outputs = ("instance_masks", "instance_scores")
    trainable = False

    def __init__(self, clusterer: str | dict = "torch", stages: tuple[str, ...] = ("test", "predict"),
                 use_points: bool = True, ap_protocol: str = "coco") -> None:
        super().__init__()
        self.clusterer = build_clusterer(clusterer)
        allowed = {"validate", "test", "predict"}
        if not set(stages) <= allowed:
            raise ValueError(f"tracking stages must be among {sorted(allowed)}; got {list(stages)}")
        self.stages, self.use_points, self.ap_protocol = tuple(stages), use_points, ap_protocol

    def forward(self, inp: HeadInput) -> dict:
        if self.training or (inp.stage is not None and inp.stage not in self.stages):
            return {}
        feats = inp.outputs["part_feat"]
        points = inp.outputs.get("world_points") if self.use_points else None
        masks, scores = [], []
        for b in range(feats.shape[0]):
            c = self.clusterer(feats[b], None if points is None else points[b])
            masks.append(c.ids)
            scores.append(c.scores)
        return {"instance_masks": torch.stack(masks), "instance_scores": scores}

    def build_metrics(self) -> dict:
        return {"instance_ap": InstanceAP(protocol=self.ap_protocol), "tracking": TrackingMetrics()}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "instance_masks" not in outputs or "instance_ids" not in batch:
            return
        preds, target = [], []
        for ids, scores, gt in zip(outputs["instance_masks"], outputs["instance_scores"], batch["instance_ids"]):
            k = torch.arange(1, scores.numel() + 1, device=ids.device).view(-1, 1, 1, 1)
            preds.append({"masks": ids.unsqueeze(0) == k, "scores": scores})
            target.append({"masks": ids_to_masks(gt)})
        for m in metrics.values():
            m.update(preds, target)
