"""The built-in exporters of per-view maps at photo resolution: the depth head's depth maps and the tracking
post-processor's instance masks with their COCO instances. Which plugin produced the maps does not matter here:
an exporter consumes output keys (``depth``) or what a plugin described (``scene.shared["instances"]``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iggt_lightning.fileio import write_json
from iggt_lightning.inference import export

from .base import Exporter, FilePlan, ViewerLayer, export_option, register_exporter

# the points.ply vertex property the tracking post-processor's describe adds: the same ids as masks/
INSTANCE_ATTRIBUTE = "instance"


@dataclass(frozen=True)
class DepthOptions:
    depth_png_scale: float = export_option(1000.0, "depth/<view>.png value per depth unit (1000: millimetres); 0 "
                                           "would make every pixel read as invalid", low=0, low_open=True)


@register_exporter("depth_maps")
class DepthMaps(Exporter):
    """``depth/<view>.png`` (16-bit, value = depth x ``depth_png_scale``, 0 = invalid) at photo resolution and
    ``depth/depth.npz`` (float depth, confidence, valid: one stack when the views share a size and all have a
    camera, else ``depth_<view>`` ... arrays)."""

    consumes = ("depth", "depth_conf")
    Options = DepthOptions

    @classmethod
    def files(cls, plan: FilePlan, options: DepthOptions) -> list[str]:
        return [f"depth/{s}.png" for s in plan.stems] + ["depth/depth.npz"]

    def write(self, scene, outputs: dict) -> None:
        scale = self.options.depth_png_scale
        depth, conf = outputs["depth"][scene.index], outputs["depth_conf"][scene.index]
        maps, clipped = export.NpzSpool(), 0          # one view in memory at a time
        for v, view in enumerate(scene.views):
            d, inside = scene.to_photo(v, scene.view(depth, v)[..., 0].float())
            c, _ = scene.to_photo(v, scene.view(conf, v).float())
            good = np.isfinite(d)
            d = np.where(good, d, 0.0).astype(np.float32)
            maps.add("depth", d)
            maps.add("confidence", np.where(np.isfinite(c), c, 0.0).astype(np.float32))
            maps.add("valid", inside & good)
            png = np.round(d * scale)
            clipped += int((png > 65535).sum())
            export.write_png16(scene.path(f"depth/{view.stem}.png"), np.clip(png, 0, 65535))
        all_cameras = scene.cameras is None or all(scene.cameras.valid)
        # one stack per map (indexed in the order of cameras.json), or with views of different sizes or without
        # cameras one array per view: depth_<view>, ...
        maps.save(scene.path("depth/depth.npz"), len({view.photo_size for view in scene.views}) == 1 and all_cameras,
                  [view.stem for view in scene.views])
        # beside the plugins' entries (not the scene summary), where it has always been
        scene.manifest["depth_png"] = {"scale": scale, "unit": "predicted (normalised) scene units x scale; "
                                       "0 = invalid/outside the model input or non-finite", "clipped_pixels": clipped}


@register_exporter("masks")
class InstanceMasks(Exporter):
    """``masks/<view>.png`` (16-bit ids at photo resolution, 0 = none) and ``masks/instances.json`` (COCO RLE,
    ``track_id`` shared across views; with labels, the vocabulary as categories; ``file_name``: the view's file
    under ``images/``), from ``scene.shared["instances"]`` (ids at the model input, scores, labels or None)."""

    consumes = ("instance_masks", "instance_scores")
    viewer_layers = (ViewerLayer("instances", "masks/instances.json", INSTANCE_ATTRIBUTE, "instances"),)

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["masks/instances.json"] + [f"masks/{s}.png" for s in plan.stems]

    def ready(self, scene, outputs: dict) -> bool:
        return super().ready(scene, outputs) and scene.shared.get("instances") is not None

    def write(self, scene, outputs: dict) -> None:
        found = scene.shared["instances"]

        def photo_ids():                # one view at a time: its PNG written, then its COCO annotations
            for v, view in enumerate(scene.views):
                ids, _ = scene.to_photo(v, scene.view(found["ids"], v), nearest=True, fill=0)
                export.write_png16(scene.path(f"masks/{view.stem}.png"), ids)
                yield ids

        saved = export.saved_image_names(scene)    # COCO tools join file_name to an image root: images/ when saved
        names = [v.name for v in scene.views]
        coco = export.coco_instances(photo_ids(), found["scores"].numpy(), saved or names, found["labels"],
                                     "images" if saved else None, names)
        write_json(scene.path("masks/instances.json"), coco, strict=True)   # a non-finite score: refused, not NaN
