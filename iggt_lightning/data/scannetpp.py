"""ScanNet++ (InsScene-15K's processed iPhone captures), one scene = one sequence::

    <root>/<scene_id>/images/frame_NNNNNN.jpg              RGB
    <root>/<scene_id>/depth/frame_NNNNNN.png               uint16 millimetres (``depth_scale`` = 1000)
    <root>/<scene_id>/refined_ins_ids/frame_NNNNNN.jpg.npy int16 instance ids, shared by the scene, 0 = none
    <root>/<scene_id>/scene_iphone_metadata.npz            images (N,) file names, trajectories (N,4,4)
                                                           camera-to-world, intrinsics (N,3,3)

The trajectories are camera-to-world (as the official loader reads them) and are inverted to our
world-to-camera extrinsics; the leading DSLR entries (``DSC*``) of the metadata are skipped, as the official
loader does. Depth at another resolution than the image is resampled (nearest) onto the image grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, check_intrinsics, pose_to_extrinsics, read_depth_png, read_npy, read_npz
from .frames import read_rgb
from .multiview import MultiViewScenes, SceneRecord
from .paths import in_dataset

METADATA = "scene_iphone_metadata.npz"


class ScanNetPPScenes(MultiViewScenes):
    """ScanNet++ processed scenes (see the module docstring); every ``MultiViewScenes`` option applies."""

    layout = "ScanNet++ (<scene>/images, depth, refined_ins_ids, scene_iphone_metadata.npz)"

    def __init__(self, root, depth_scale: float = 1000.0, ids_folder: str = "refined_ins_ids", **kwargs) -> None:
        self.depth_scale, self.ids_folder = depth_scale, ids_folder
        super().__init__(root, **kwargs)

    def scan(self) -> list[SceneRecord]:
        records = []
        for meta_path in sorted(self.root.glob(f"*/{METADATA}")):
            meta = read_npz(meta_path, "ScanNet++ metadata", ("images", "trajectories", "intrinsics"))
            names = [str(n) for n in meta["images"]]
            traj, K = meta["trajectories"], meta["intrinsics"]
            if not (len(names) == len(traj) == len(K)):
                raise DatasetError(f"{meta_path}: images ({len(names)}), trajectories ({len(traj)}) and intrinsics "
                                   f"({len(K)}) must have one entry per frame")
            keep = [i for i, n in enumerate(names) if not Path(n).name.startswith("DSC")]
            scene = meta_path.parent
            extr = np.stack([pose_to_extrinsics(traj[i], f"trajectories[{i}]", meta_path) for i in keep]) \
                if keep else np.zeros((0, 3, 4))
            files = {names[i]: self._frame_files(scene, meta_path, i, names[i]) for i in keep}
            records.append(SceneRecord(scene.name, [names[i] for i in keep],
                                       {"dir": scene, "K": {names[i]: K[i] for i in keep}, "files": files,
                                        "E": {names[i]: extr[j] for j, i in enumerate(keep)}}, poses=extr))
        return records

    def _frame_files(self, scene: Path, meta_path: Path, i: int, name: str) -> tuple[Path, Path]:
        """(image, instance ids) of a frame the metadata names: refused when the name leads out of the dataset."""
        return (in_dataset(self.root, name, meta_path, f"images[{i}]", base=scene / "images"),
                in_dataset(self.root, f"{name}.npy", meta_path, f"images[{i}]", base=scene / self.ids_folder))

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        d: Path = record.info["dir"]
        stem = Path(key).stem
        image_path, ids_path = record.info["files"][key]
        image = read_rgb(image_path)
        depth_path = d / "depth" / f"{stem}.png"
        depth = read_depth_png(depth_path, self.depth_scale)
        ids = read_npy(ids_path, "instance id map").astype(np.int64)
        if ids.ndim != 2:
            raise DatasetError(f"instance id map {ids_path} has shape {ids.shape}; expected [H,W]")
        return Frame(image=image, intrinsics=check_intrinsics(record.info["K"][key], d / METADATA),
                     extrinsics=record.info["E"][key], depth=depth, instance_ids=ids, name=key)

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        return record.info["E"][key]

    def companions(self, record: SceneRecord) -> dict[str, int]:
        return self.count_files(record.info["dir"], ["depth/*.png", f"{self.ids_folder}/*.npy"])
