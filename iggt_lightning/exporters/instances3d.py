"""``instances3d.json``: every instance as a 3D object (:mod:`iggt_lightning.inference.instances3d`): centroid,
oriented box, point count, the views that see it with their share, and the best view's rectangle in that photo's
pixels (a crop of ``images/<name>``), in the prediction's world frame (OpenCV, camera 0's frame, model units)."""
from __future__ import annotations

import numpy as np

from iggt_lightning.fileio import write_json
from iggt_lightning.inference.instances3d import instance_records

from .base import Exporter, FilePlan, register_exporter


@register_exporter("instances3d")
class Instances3D(Exporter):
    consumes = ("instance_masks", "instance_scores", "cloud")

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["instances3d.json"]

    def ready(self, scene, outputs: dict) -> bool:
        return super().ready(scene, outputs) and scene.shared.get("instances") is not None

    def write(self, scene, outputs: dict) -> dict:
        found, cloud = scene.shared["instances"], scene.cloud
        S, H, W = found["ids"].shape
        ids = found["ids"].numpy()
        keep = cloud.keep.reshape(S, H, W)
        records = instance_records(ids, cloud.points.reshape(S, H, W, 3).numpy(), keep, found["scores"].numpy())
        labels = found.get("labels")
        for r in records:
            v = r["best_view"]
            view = scene.views[v]
            (sx, sy), (ox, oy) = view.transform.scale, view.transform.offset
            x0, y0, x1, y1 = r["best_view_box"]                 # model-input pixels -> the photo's
            Wp, Hp = view.photo_size
            r["best_view"] = view.image_name or view.name
            r["best_view_box"] = [int(np.clip(np.floor((x0 - ox) / sx), 0, Wp)),
                                  int(np.clip(np.floor((y0 - oy) / sy), 0, Hp)),
                                  int(np.clip(np.ceil((x1 - ox) / sx), 0, Wp)),
                                  int(np.clip(np.ceil((y1 - oy) / sy), 0, Hp))]
            for entry in r["views"]:
                entry["view"] = scene.views[entry["view"]].image_name or scene.views[entry["view"]].name
            if labels is not None and r["id"] - 1 < len(labels["labels"]):      # open_vocab's names
                lab = int(labels["labels"][r["id"] - 1])
                r["label"] = labels["names"][lab] if lab >= 0 else None
        write_json(scene.path("instances3d.json"), {
            "convention": "the prediction's world frame (OpenCV axes, camera 0's frame, model units); box axes are "
                          "rows (unit vectors), half extents along them; best_view_box: [x0, y0, x1, y1) in that "
                          "photo's pixels",
            "points_from": cloud.name, "instances": records}, strict=True)
        return {"instances3d": len(records)}
