"""Instance tracking across views (a post-processor): cluster the instance features of all views of a scene
jointly, so one object gets one id in every view, with a confidence per instance.

Outputs ``instance_masks`` int64 [B,S,H,W] (ids 1..K per scene, 0 = none) and ``instance_scores``, a list
over the batch of float [K] (index k-1 = instance k). Runs in validation, test and prediction by default
(``stages``: validation logs AP and T-mIoU too; post-processors never run in training), for every model with
an instance head (``default``). The clusterer is configurable (``iggt_lightning.inference``):
``clusterer: torch`` (default; ``{name: torch, granularity: 0.4}``) or ``{name: hdbscan, preset: large}``,
which smooths features over 3D neighbours when the point head's ``world_points`` are available.
Metrics: :class:`InstanceAP` (multi-view and per view) and :class:`TrackingMetrics` (T-mIoU, T-SR) against
the batch's ``instance_ids``.
"""
from __future__ import annotations

import torch

from iggt_lightning.inference.clustering import build_clusterer
from iggt_lightning.inference.export import instance_colours
from iggt_lightning.metrics import InstanceAP, TrackingMetrics
from iggt_lightning.postprocessor import PostProcessor
from iggt_lightning.registry import register_postprocessor


def ids_to_masks(ids: torch.Tensor) -> torch.Tensor:
    """int [S,H,W] ids (0 = none) -> bool [G,S,H,W], one mask per non-zero id, in increasing id order."""
    uniq = ids.unique()
    uniq = uniq[uniq != 0]
    return ids.unsqueeze(0) == uniq.view(-1, 1, 1, 1)


@register_postprocessor("tracking")
class InstanceTracking(PostProcessor):
    requires = ("instance",)
    outputs = ("instance_masks", "instance_scores")
    colour_layers = ("instances.glb",)
    default = True          # every model with an instance head gets multi-view instances unless it drops this

    def __init__(self, clusterer: str | dict = "torch", stages: tuple[str, ...] = ("validate", "test", "predict"),
                 use_points: bool = True, ap_protocol: str = "coco", ignore_ids: tuple[int, ...] = (),
                 ignore_classes: tuple[str, ...] = ()) -> None:
        super().__init__(stages)
        self.clusterer = build_clusterer(clusterer)
        self.use_points, self.ap_protocol = use_points, ap_protocol
        if isinstance(ignore_ids, (int, str)) or not all(isinstance(i, int) and i > 0 for i in ignore_ids):
            raise ValueError(f"tracking ignore_ids must be a list of positive instance ids; got {ignore_ids!r}")
        self.ignore_ids = tuple(ignore_ids)
        if isinstance(ignore_classes, str) or not all(isinstance(c, str) and c for c in ignore_classes):
            raise ValueError(f"tracking ignore_classes must be a list of class names; got {ignore_classes!r}")
        self.ignore_classes = {c.lower() for c in ignore_classes}

    def ignored_ids(self, batch: dict, b: int) -> list[int]:
        """Scene ``b``'s ids to leave out: ``ignore_ids`` and the ids whose ``class_names`` entry is one of
        ``ignore_classes`` (case-insensitive)."""
        ids = list(self.ignore_ids)
        if self.ignore_classes:
            if "class_names" not in batch:
                raise ValueError("tracking ignore_classes needs the batch's class_names (a dataset with "
                                 "labels_file, or the synthetic scenes)")
            ids += [i + 1 for i, n in enumerate(batch["class_names"][b]) if n.lower() in self.ignore_classes]
        return ids

    def process(self, outputs: dict, images: torch.Tensor) -> dict:
        feats = outputs["part_feat"]
        points = outputs.get("world_points") if self.use_points else None
        masks, scores = [], []
        for b in range(feats.shape[0]):
            c = self.clusterer(feats[b].float(), None if points is None else points[b].float())
            masks.append(c.ids)
            scores.append(c.scores)
        return {"instance_masks": torch.stack(masks), "instance_scores": scores}

    def build_metrics(self) -> dict:
        """AP (``ap``, ``ap50``, ...) and T-mIoU / T-SR over every ground-truth instance; with ``ignore_ids`` or
        ``ignore_classes`` also over objects only (``ap50_objects``, ``t_miou_objects``, ...): those ids' instances are left out of
        the ground truth and their pixels ignored (ScanNet's void; COCO's crowd region)."""
        metrics = {"instance_ap": InstanceAP(protocol=self.ap_protocol), "tracking": TrackingMetrics()}
        if self.ignore_ids or self.ignore_classes:
            metrics.update(instance_ap_objects=InstanceAP(protocol=self.ap_protocol, suffix="_objects"),
                           tracking_objects=TrackingMetrics(suffix="_objects"))
        return metrics

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        if "instance_masks" not in outputs or "instance_ids" not in batch:
            return
        preds, target, objects = [], [], []
        for b, (ids, scores, gt) in enumerate(zip(outputs["instance_masks"], outputs["instance_scores"],
                                                  batch["instance_ids"])):
            k = torch.arange(1, scores.numel() + 1, device=ids.device).view(-1, 1, 1, 1)
            preds.append({"masks": ids.unsqueeze(0) == k, "scores": scores})
            target.append({"masks": ids_to_masks(gt)})
            if self.ignore_ids or self.ignore_classes:
                ignored = torch.isin(gt, torch.tensor(self.ignored_ids(batch, b), dtype=gt.dtype, device=gt.device))
                objects.append({"masks": ids_to_masks(torch.where(ignored, torch.zeros_like(gt), gt)),
                                "ignore": ignored})
        for name, m in metrics.items():
            m.update(preds, objects if name.endswith("_objects") else target)

    def log_images(self, outputs: dict, batch: dict) -> dict:
        if "instance_masks" not in outputs:
            return {}
        ids = outputs["instance_masks"][0, 0].cpu()
        palette = torch.from_numpy(instance_colours(int(ids.max()))).float() / 255
        return {"ids": palette[ids].permute(2, 0, 1)}

    # ------------------------------------------------------------------ prediction
    def describe(self, outputs: dict, scene) -> None:
        """``scene.shared["instances"]`` (ids [S,H,W] at the model input, scores [K], labels None; a labeller
        fills ``labels``), the point attribute ``instance`` and the colour layer ``instances.glb``."""
        if "instance_masks" not in outputs:
            return
        ids = outputs["instance_masks"][scene.index]            # a stack [S,H,W], read per view
        scores = outputs["instance_scores"][scene.index].detach().float().cpu()
        scene.shared["instances"] = {"ids": ids, "scores": scores, "labels": None}
        scene.add_point_attribute("instance", ids)
        palette = torch.from_numpy(instance_colours(int(scores.numel())))
        scene.add_colour_layer("instances.glb", scene.per_view(
            lambda v: palette[scene.view(ids, v).clamp(0, scores.numel())], (*ids.shape[-2:], 3)))
        scene.manifest["instances"] = int(scores.numel())

