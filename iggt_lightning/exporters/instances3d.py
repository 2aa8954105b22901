"""``instances3d.json``: every instance as a 3D object (:mod:`iggt_lightning.inference.instances3d`): centroid,
oriented box, point count, the views that see it with their share, and the best view's rectangle in that photo's
pixels (a crop of ``images/<name>``), in the prediction's world frame (OpenCV, camera 0's frame, model units);
and ``grounding/``: the same objects with their spatial relations, crops and a prompt for a language model."""
from __future__ import annotations

import numpy as np

from iggt_lightning.fileio import write_json
from iggt_lightning.inference.frame_stack import view_of
from iggt_lightning.inference.instances3d import InstanceTally

from .base import Exporter, FilePlan, register_exporter


def scene_records(scene) -> list[dict]:
    """The scene's instances as 3D records in the prediction's terms (views by name, boxes in photo pixels),
    made once per scene and shared by the exporters that write them (``instances3d``, ``grounding``)."""
    if "instances3d" in scene.shared:
        return scene.shared["instances3d"]
    found, cloud = scene.shared["instances"], scene.cloud
    tally = InstanceTally()
    point_ids = np.zeros(len(cloud.index), np.int64)
    pixels = cloud.pixels
    for v in range(len(scene.views)):          # one view's ids at a time
        ids = view_of(found["ids"], v).numpy()
        tally.add_view(v, ids)
        mine = cloud.of_view(v)
        point_ids[mine] = ids.reshape(-1)[pixels[mine]]
    records = tally.records(point_ids, cloud.points, found["scores"].numpy())
    labels = found.get("labels")
    for r in records:
        v = r["best_view"]
        view = scene.views[v]
        (sx, sy), (ox, oy) = view.transform.scale, view.transform.offset
        x0, y0, x1, y1 = r["best_view_box"]                 # model-input pixels -> the photo's
        Wp, Hp = view.photo_size
        r["best_view"] = view.image_name or view.name
        r["best_view_index"] = v
        r["best_view_box"] = [int(np.clip(np.floor((x0 - ox) / sx), 0, Wp)),
                              int(np.clip(np.floor((y0 - oy) / sy), 0, Hp)),
                              int(np.clip(np.ceil((x1 - ox) / sx), 0, Wp)),
                              int(np.clip(np.ceil((y1 - oy) / sy), 0, Hp))]
        for entry in r["views"]:
            entry["view"] = scene.views[entry["view"]].image_name or scene.views[entry["view"]].name
        if labels is not None and r["id"] - 1 < len(labels["labels"]):      # open_vocab's names
            lab = int(labels["labels"][r["id"] - 1])
            r["label"] = labels["names"][lab] if lab >= 0 else None
    scene.shared["instances3d"] = records
    return records


@register_exporter("instances3d")
class Instances3D(Exporter):
    consumes = ("instance_masks", "instance_scores", "cloud")

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return ["instances3d.json"]

    def ready(self, scene, outputs: dict) -> bool:
        return super().ready(scene, outputs) and scene.shared.get("instances") is not None

    def write(self, scene, outputs: dict) -> dict:
        records = [{k: v for k, v in r.items() if k != "best_view_index"} for r in scene_records(scene)]
        write_json(scene.path("instances3d.json"), {
            "convention": "the prediction's world frame (OpenCV axes, camera 0's frame, model units); box axes are "
                          "rows (unit vectors), half extents along them; best_view_box: [x0, y0, x1, y1) in that "
                          "photo's pixels",
            "points_from": scene.cloud.name, "instances": records}, strict=True)
        return {"instances3d": len(records)}


CROP_MARGIN = 0.1      # a crop shows this share of its box's size around it: an object cut at its edge is hard to name


@register_exporter("grounding")
class Grounding(Exporter):
    """``grounding/scene.json`` (the grounding record for a language model: objects with boxes and labels,
    spatial relations, :mod:`iggt_lightning.inference.grounding`), ``grounding/crops/<id>.png`` (each object's
    best view, cut around it) and ``grounding/prompt.txt`` (the prompt template filled with the scene, the
    question left as ``{question}``); docs/grounding.md."""

    consumes = ("instance_masks", "instance_scores", "cloud", "cameras")

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        # <id>: one file per instance found, which no plan can count before the prediction
        return ["grounding/scene.json", "grounding/prompt.txt", "grounding/crops/<id>.png"]

    def ready(self, scene, outputs: dict) -> bool:
        # up and left/right come from the cameras: without one valid camera there is no record to make
        return super().ready(scene, outputs) and scene.shared.get("instances") is not None \
            and any(scene.cameras.valid)

    def write(self, scene, outputs: dict) -> dict:
        from iggt_lightning.inference import export
        from iggt_lightning.inference.grounding import grounding_record, render_prompt

        records = scene_records(scene)
        crops = {}
        for r in records:
            view = scene.views[r["best_view_index"]]
            if view.photo is None:
                continue
            x0, y0, x1, y1 = r["best_view_box"]
            mx, my = int(round((x1 - x0) * CROP_MARGIN)), int(round((y1 - y0) * CROP_MARGIN))
            Wp, Hp = view.photo_size
            x0, y0, x1, y1 = max(x0 - mx, 0), max(y0 - my, 0), min(x1 + mx, Wp), min(y1 + my, Hp)
            if x1 <= x0 or y1 <= y0:
                continue
            export.write_png_rgb(scene.path(f"grounding/crops/{r['id']}.png"), np.asarray(view.photo)[y0:y1, x0:x1])
            crops[r["id"]] = f"crops/{r['id']}.png"          # relative to grounding/, where scene.json is
        ok = scene.camera_views()
        names = [scene.views[v].image_name or scene.views[v].name for v in ok]
        found = scene.shared["instances"]
        plain = [{k: v for k, v in r.items() if k != "best_view_index"} for r in records]
        record = grounding_record(plain, scene.cameras.extrinsics[ok], names, crops=crops,
                                  labels_available=found.get("labels") is not None)
        write_json(scene.path("grounding/scene.json"), record, strict=True)
        export.write_text(scene.path("grounding/prompt.txt"), render_prompt(record, "{question}"))
        return {"grounding": {"objects": record["counts"]["objects"], "relations": record["counts"]["relations"],
                              "crops": len(crops)}}
