"""ScanNet frames as exported by its SensReader (plus the 2D instance maps), one scene = one sequence::

    <root>/<scene>/color/<n>.jpg                   RGB, 1296x968
    <root>/<scene>/depth/<n>.png                   uint16 millimetres, 640x480 (``depth_scale`` = 1000)
    <root>/<scene>/pose/<n>.txt                    4x4 camera-to-world (rows of 4 numbers); -inf = lost tracking
    <root>/<scene>/intrinsic/intrinsic_color.txt   4x4 (its 3x3 block is K of the colour camera)
    <root>/<scene>/intrinsic/intrinsic_depth.txt   4x4, K of the depth camera
    <root>/<scene>/instance-filt/<n>.png           instance ids (0 = unannotated); or ``instance/``

Frames are numbered ``<n>`` (natural order). Poses are camera-to-world and are inverted into our
world-to-camera extrinsics; frames whose pose is not finite (ScanNet's -inf for lost tracking) are dropped
when a scene is first used. ``resolution="depth"`` (default) works at the depth camera's grid: the colour
image is resized onto it and K is ``intrinsic_depth`` (depth is measured there, so geometry is exact);
``"color"`` keeps the colour image and K ``intrinsic_color`` and resamples depth and ids onto it.
ScanNet intrinsics follow the continuous pixel convention (``pixel_center`` 0.5).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, check_intrinsics, pose_to_extrinsics, read_depth_png, read_png_array, read_rgb
from .frames import resize_nearest
from .multiview import MultiViewScenes, SceneRecord

_NUM = re.compile(r"^(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def read_matrix_txt(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing {what} {path}")
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err
    if m.shape != (4, 4) and m.shape != (3, 3):
        raise DatasetError(f"{what} {path} has shape {m.shape}; expected 4x4 (or 3x3) numbers")
    return m


class ScanNetScenes(MultiViewScenes):
    """ScanNet SensReader exports (see the module docstring); every ``MultiViewScenes`` option applies."""

    layout = "ScanNet (<scene>/color, depth, pose, intrinsic/intrinsic_{color,depth}.txt, instance-filt)"

    def __init__(self, root, resolution: str = "depth", depth_scale: float = 1000.0,
                 instance_dirs: tuple[str, ...] = ("instance-filt", "instance"), require_instances: bool = False,
                 **kwargs) -> None:
        if resolution not in ("depth", "color"):
            raise ValueError(f"ScanNetScenes resolution must be 'depth' or 'color'; got {resolution!r}")
        self.resolution, self.depth_scale = resolution, depth_scale
        self.instance_dirs, self.require_instances = tuple(instance_dirs), require_instances
        super().__init__(root, **kwargs)

    def scan(self) -> list[SceneRecord]:
        records = []
        for color in sorted(p for p in self.root.glob("*/color") if p.is_dir()):
            scene = color.parent
            keys = sorted((m.group(1), p.name) for p in color.iterdir() if (m := _NUM.match(p.name)))
            keys = [name for _, name in sorted(keys, key=lambda kv: int(kv[0]))]
            which = "depth" if self.resolution == "depth" else "color"
            K = check_intrinsics(read_matrix_txt(scene / "intrinsic" / f"intrinsic_{which}.txt", "intrinsics"),
                                 scene / "intrinsic" / f"intrinsic_{which}.txt")
            ids_dir = next((scene / d for d in self.instance_dirs if (scene / d).is_dir()), None)
            if ids_dir is None and self.require_instances:
                raise DatasetError(f"{scene}: no instance map folder (looked for {list(self.instance_dirs)})")
            records.append(SceneRecord(scene.name, keys, {"dir": scene, "K": K, "ids": ids_dir, "checked": False}))
        return records

    def _pose(self, record: SceneRecord, key: str) -> np.ndarray:
        return read_matrix_txt(record.info["dir"] / "pose" / f"{Path(key).stem}.txt", "pose")

    def prepare(self, record: SceneRecord) -> None:
        if record.info["checked"]:
            return
        poses = {k: self._pose(record, k) for k in record.frames}
        record.frames = [k for k in record.frames if np.isfinite(poses[k]).all()]
        record.info["checked"] = True

    def companions(self, record: SceneRecord) -> dict[str, int]:
        d, ids = record.info["dir"], record.info["ids"]
        return self.count_files(d, ["depth/*.png", "pose/*.txt"] + ([f"{ids.name}/*.png"] if ids is not None else []))

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        path = record.info["dir"] / "pose" / f"{Path(key).stem}.txt"
        return pose_to_extrinsics(self._pose(record, key), "pose (camera-to-world)", path)

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        from PIL import Image

        d: Path = record.info["dir"]
        stem = Path(key).stem
        image = read_rgb(d / "color" / key)
        depth_path = d / "depth" / f"{stem}.png"
        depth = read_depth_png(depth_path, self.depth_scale)
        ids = None
        if record.info["ids"] is not None:
            ids = read_png_array(record.info["ids"] / f"{stem}.png", "instance map").astype(np.int64)
        if self.resolution == "depth":
            h, w = depth.shape
            if image.shape[:2] != (h, w):
                image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))
            if ids is not None and ids.shape != (h, w) and abs(ids.shape[1] / ids.shape[0] - w / h) < 0.01 * w / h:
                ids = resize_nearest(ids, (h, w))   # another aspect ratio is left for the base class to refuse
        return Frame(image=image, intrinsics=record.info["K"], extrinsics=self.read_pose(record, key), depth=depth,
                     instance_ids=ids, name=key)
