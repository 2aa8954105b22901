"""Infinigen renders (InsScene-15K's synthetic part), one sequence = (scene, sub-scene, camera_0)::

    <root>/<scene>/<sub_id>/frames/Image/camera_0/Image_<key>.png
    <root>/<scene>/<sub_id>/frames/Depth/camera_0/Depth_<key>.npy                float metres (inf = sky)
    <root>/<scene>/<sub_id>/frames/camview/camera_0/camview_<key>.npz           K (3x3), T (4x4)
    <root>/<scene>/<sub_id>/frames/ObjectSegmentation/camera_0/ObjectSegmentation_<key>.npy   object index
    <root>/<scene>/<sub_id>/frames/Objects/camera_0/Objects_<key>.json          {name: {type, object_index}}

``T`` is the camera pose, camera-to-world with OpenCV axes: it is inverted into our world-to-camera
extrinsics, as the official loader does. With ``mesh_only`` (default) only objects whose ``type`` is
``"MESH"`` keep their id; the rest (lights, cameras, volumes) become 0. Non-finite depth becomes invalid.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, check_depth, check_intrinsics, pose_to_extrinsics, read_npy, read_npz
from .frames import read_rgb
from .multiview import MultiViewScenes, SceneRecord

_KEY = re.compile(r"^Image_(.+)\.png$")


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


class InfinigenScenes(MultiViewScenes):
    """Infinigen scenes (see the module docstring); every ``MultiViewScenes`` option applies."""

    layout = "Infinigen (<scene>/<sub>/frames/{Image,Depth,camview,ObjectSegmentation,Objects}/camera_0)"

    def __init__(self, root, mesh_only: bool = True, camera: str = "camera_0", **kwargs) -> None:
        self.mesh_only, self.camera = mesh_only, camera
        super().__init__(root, **kwargs)

    def scan(self) -> list[SceneRecord]:
        records = []
        for image_dir in sorted(self.root.glob(f"*/*/frames/Image/{self.camera}")):
            keys = sorted((m.group(1) for p in image_dir.iterdir() if (m := _KEY.match(p.name))), key=_natural)
            frames_dir = image_dir.parent.parent
            name = f"{frames_dir.parent.parent.name}/{frames_dir.parent.name}"
            records.append(SceneRecord(name, keys, {"dir": frames_dir}))
        return records

    def _path(self, record: SceneRecord, kind: str, key: str, ext: str) -> Path:
        return record.info["dir"] / kind / self.camera / f"{kind}_{key}.{ext}"

    def companions(self, record: SceneRecord) -> dict[str, int]:
        kinds = [("Depth", "npy"), ("camview", "npz"), ("ObjectSegmentation", "npy")]
        kinds += [("Objects", "json")] if self.mesh_only else []
        return self.count_files(record.info["dir"], [f"{k}/{self.camera}/{k}_*.{e}" for k, e in kinds])

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        path = self._path(record, "camview", key, "npz")
        cam = read_npz(path, "Infinigen camview", ("K", "T"))
        return pose_to_extrinsics(cam["T"], "T (camera pose)", path)

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        cam_path = self._path(record, "camview", key, "npz")
        cam = read_npz(cam_path, "Infinigen camview", ("K", "T"))
        depth_path = self._path(record, "Depth", key, "npy")
        seg_path = self._path(record, "ObjectSegmentation", key, "npy")
        ids = read_npy(seg_path, "object segmentation").astype(np.int64)
        if ids.ndim != 2:
            raise DatasetError(f"object segmentation {seg_path} has shape {ids.shape}; expected [H,W]")
        if self.mesh_only:
            obj_path = self._path(record, "Objects", key, "json")
            try:
                objects = json.loads(obj_path.read_text())
            except FileNotFoundError:
                raise DatasetError(f"missing object list {obj_path} (needed by mesh_only)") from None
            except (OSError, ValueError) as err:
                raise DatasetError(f"cannot read object list {obj_path}: {err}") from err
            meshes = [int(o["object_index"]) for o in objects.values()
                      if isinstance(o, dict) and o.get("type") == "MESH" and "object_index" in o]
            ids = np.where(np.isin(ids, meshes), ids, 0)
        return Frame(image=read_rgb(self._path(record, "Image", key, "png")),
                     intrinsics=check_intrinsics(cam["K"], cam_path),
                     extrinsics=pose_to_extrinsics(cam["T"], "T (camera pose)", cam_path),
                     depth=check_depth(read_npy(depth_path, "depth"), depth_path), instance_ids=ids, name=key)
