"""A plain scene folder, the exchange format (and what ``iggt predict`` writes), one folder = one scene::

    <scene>/images/<name>.jpg|png                  RGB
    <scene>/cameras.json                           {"pixel_center": 0.5, "views": [{"file_name": "<name>.jpg",
                                                     "extrinsic": 3x4 or 4x4 world-to-camera, "intrinsic": 3x3,
                                                     "width": W, "height": H}, ...]}
      or <scene>/cam/<stem>.npz                    intrinsics (3x3) + extrinsics (world-to-camera) or pose
                                                   (camera-to-world); views in natural order of the stems
    <scene>/depth/<stem>.npy | <stem>.png          optional: float metres | uint16 (metres x ``depth_scale``)
      or <scene>/depth/depth.npz                   optional: "depth" [S,H,W] in view order, or "depth_<stem>"
                                                   per view, with optional "valid" / "valid_<stem>" masks
    <scene>/instances/<stem>.png|npy               optional: instance ids shared by the views, 0 = none;
      or <scene>/masks/<stem>.png                  the folder ``iggt predict`` writes

``root`` is one scene folder, or a folder of scene folders. The intrinsics are in pixels of the stored image;
``pixel_center`` in cameras.json (or the reader's ``pixel_center``; default 0.5, OpenCV/COLMAP) says where
pixel j's centre lies. A view's image is ``images/<file_name>``, else its ``image_path`` (absolute, or
relative to the scene folder); either must stay inside ``root`` (a path leading out of it is refused, naming
the file, the field and the value). Every field of cameras.json is checked for its kind, shape and finite
numbers (matrices as lists of rows; a 4x4 extrinsic ends in 0 0 0 1, an intrinsic's last row is 0 0 1): a wrong
one is refused in one line naming the file, the view and the field, and what was expected.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, as_extrinsics, check_depth, check_intrinsics, describe_json, json_matrix
from .frames import pose_to_extrinsics
from .frames import read_depth_png, read_npy, read_npz, read_png_array, read_rgb
from .multiview import MultiViewScenes, SceneRecord
from .paths import in_dataset
from .re10k import IMAGE_SUFFIXES, natural_key

INSTANCE_DIRS = ("instances", "masks")
CAMERAS_JSON = "an object {\"pixel_center\": 0.5, \"views\": [view, ...]}"
VIEW = "{file_name, extrinsic, intrinsic[, width, height, image_path]}"
VIEW_FIELDS = {"file_name": "the image's file name in images/ (a string)",
               "extrinsic": "a 4x4 or 3x4 world-to-camera matrix [R|t] (a list of rows of finite numbers)",
               "intrinsic": "a 3x3 matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] in pixels (rows of finite numbers)"}
PIXEL_CENTER = "a finite number (0.5: pixel j's centre at j + 0.5, OpenCV/COLMAP; 0: at j)"


def _pixel_center(path: Path, value) -> float:
    """cameras.json's pixel_center: a number. NaN/inf pass as read: ``iggt data check`` names them (and the reader's
    intrinsics would be non-finite, which the batch check refuses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{path}: pixel_center is {describe_json(value)}; expected {PIXEL_CENTER}")
    return float(value)


def _pixels(where: str, view: dict, key: str) -> int | None:
    """A view's optional width / height: a positive whole number (84.0 is read as 84), or absent / null."""
    value = view.get(key)
    if value is None:
        return None
    whole = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and value == int(value) and value > 0
    if not whole:
        raise DatasetError(f"{where}: {key} is {describe_json(value)}; expected a positive whole number of pixels "
                           f"(the image's {key})")
    return int(value)


def is_scene_folder(path: Path) -> bool:
    return (path / "cameras.json").is_file() or (path / "cam").is_dir()


class SceneFolderScenes(MultiViewScenes):
    """Plain scene folders (see the module docstring); every ``MultiViewScenes`` option applies.

    Args:
        depth_scale: PNG depth value per metre (1000 = millimetres, what ``iggt predict`` writes).
        use_instances: read instance maps when present (False: ids all 0).
    """

    layout = "scene folder (<scene>/images, cameras.json or cam/*.npz, optional depth/, instances/ or masks/)"

    def __init__(self, root, depth_scale: float = 1000.0, use_instances: bool = True, **kwargs) -> None:
        self.depth_scale, self.use_instances = depth_scale, use_instances
        super().__init__(root, **kwargs)

    # -- discovery -----------------------------------------------------------------------------------------
    def scan(self) -> list[SceneRecord]:
        if is_scene_folder(self.root):
            dirs = [self.root]
        else:
            dirs = sorted(p for p in self.root.iterdir() if p.is_dir() and is_scene_folder(p))
        return [self._scan_scene(d) for d in dirs]

    def _scan_scene(self, d: Path) -> SceneRecord:
        info: dict = {"dir": d, "views": {}}
        if (d / "cameras.json").is_file():
            keys = self._read_cameras_json(d, info)
        else:
            stems = sorted((p.stem for p in (d / "cam").glob("*.npz")), key=natural_key)
            images = {p.stem: p.name for p in (d / "images").iterdir()
                      if p.suffix.lower() in IMAGE_SUFFIXES} if (d / "images").is_dir() else {}
            keys = []
            for s in stems:
                if s not in images:
                    raise DatasetError(f"{d / 'cam' / (s + '.npz')} has no image images/{s}.<jpg|png|...>")
                keys.append(images[s])
        info["ids"] = next((d / n for n in INSTANCE_DIRS if (d / n).is_dir()), None) if self.use_instances else None
        depth_npz = d / "depth" / "depth.npz"
        info["depth_npz"] = depth_npz if depth_npz.is_file() else None
        return SceneRecord(d.name, keys, info)

    def pose_source(self, record) -> tuple[str, str]:
        """A scene keeps its poses in cameras.json or in cam/*.npz, the latter as world-to-camera ``extrinsics``
        or camera-to-world ``pose`` (decided by the first file's keys, as the messages need only the form)."""
        d = self.scene_dir(record)
        if record.info.get("views"):
            return f"{d / 'cameras.json'} ('extrinsic')", "world-to-camera"
        first = next(iter(sorted((d / "cam").glob("*.npz"))), None)
        keys: set = set()
        try:
            if first is not None:
                with np.load(first) as z:
                    keys = set(z.files)
        except (OSError, ValueError):
            pass
        return ((f"{d / 'cam'}/*.npz ('extrinsics')", "world-to-camera") if "extrinsics" in keys
                else (f"{d / 'cam'}/*.npz ('pose')", "camera-to-world"))

    def _read_cameras_json(self, d: Path, info: dict) -> list[str]:
        """cameras.json's views into ``info`` (every field checked for type, shape and finiteness, one
        :class:`DatasetError` naming the file, the view and the field otherwise); -> the views' file names."""
        path = d / "cameras.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as err:     # invalid JSON, not UTF-8, nested too deep
            raise DatasetError(f"cannot read {path}: {err} (expected {CAMERAS_JSON})") from err
        if not isinstance(data, dict):
            raise DatasetError(f"{path} holds {describe_json(data)}; expected {CAMERAS_JSON}")
        if "views" not in data:
            raise DatasetError(f"{path} lacks 'views'; expected {CAMERAS_JSON}")
        if not isinstance(data["views"], list):
            raise DatasetError(f"{path}: views is {describe_json(data['views'])}; expected a list of views {VIEW}")
        if "pixel_center" in data:
            info["pixel_center"] = _pixel_center(path, data["pixel_center"])
        keys = []
        for i, v in enumerate(data["views"]):
            name, view = self._read_view(d, path, i, v)
            if name in info["views"]:
                raise DatasetError(f"{path}: views[{i}].file_name {name!r} is also the file_name of an earlier view; "
                                   "expected one view per image")
            info["views"][name] = view
            keys.append(name)
        return keys

    def _read_view(self, d: Path, path: Path, i: int, v) -> tuple[str, dict]:
        if not isinstance(v, dict):
            raise DatasetError(f"{path}: views[{i}] is {describe_json(v)}; expected a view {VIEW}")
        name = v.get("file_name")
        where = f"{path} (views[{i}], {name})" if isinstance(name, str) else f"{path} (views[{i}])"
        missing = [k for k in VIEW_FIELDS if k not in v]
        if missing:
            raise DatasetError(f"{where} lacks {', '.join(missing)}; expected "
                               + "; ".join(f"{k}: {VIEW_FIELDS[k]}" for k in missing))
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: file_name is {describe_json(name)}; expected {VIEW_FIELDS['file_name']}")
        E = json_matrix(v["extrinsic"], "extrinsic", where, ((4, 4), (3, 4)), VIEW_FIELDS["extrinsic"])
        K = json_matrix(v["intrinsic"], "intrinsic", where, ((3, 3),), VIEW_FIELDS["intrinsic"])
        size = tuple(_pixels(where, v, key) for key in ("height", "width"))
        return name, {"E": as_extrinsics(E, "extrinsic (world-to-camera)", where),
                      "K": check_intrinsics(K, where, "intrinsic"), "size": size, **self._view_paths(d, path, i, v)}

    def _view_paths(self, d: Path, path: Path, i: int, v: dict) -> dict:
        """A view's image files named by cameras.json, refused when they lead outside the dataset folder:
        ``images/<file_name>`` and ``image_path`` (absolute, or relative to the scene folder)."""
        local = in_dataset(self.root, v["file_name"], path, f"views[{i}].file_name", base=d / "images")
        other = v.get("image_path")
        if other is not None:
            other = in_dataset(self.root, other, path, f"views[{i}].image_path", base=d)
        return {"image": local, "image_path": other}

    # -- one view ------------------------------------------------------------------------------------------
    def _camera(self, record: SceneRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key in record.info["views"]:
            v = record.info["views"][key]
            return v["E"], v["K"]
        path = record.info["dir"] / "cam" / f"{Path(key).stem}.npz"
        cam = read_npz(path, "camera", ("intrinsics",))
        if "extrinsics" in cam:
            E = as_extrinsics(cam["extrinsics"], "extrinsics (world-to-camera)", path)
        elif "pose" in cam:
            E = pose_to_extrinsics(cam["pose"], "pose (camera-to-world)", path)
        else:
            raise DatasetError(f"camera {path} needs 'extrinsics' (world-to-camera) or 'pose' (camera-to-world); "
                               f"it has {sorted(cam)}")
        return E, check_intrinsics(cam["intrinsics"], path)

    def companions(self, record: SceneRecord) -> dict[str, int]:
        d = record.info["dir"]
        patterns = [] if record.info["depth_npz"] is not None else ["depth/*.png", "depth/*.npy"]
        patterns += [f"{record.info['ids'].name}/*.png", f"{record.info['ids'].name}/*.npy"] if record.info["ids"] else []
        return {p: n for p, n in self.count_files(d, patterns).items() if n}

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        return self._camera(record, key)[0]

    def _image_path(self, record: SceneRecord, key: str) -> Path:
        view = record.info["views"].get(key)
        if view is None:                        # cam/*.npz scenes: keys come from the images/ listing
            return record.info["dir"] / "images" / key
        local, other = view["image"], view["image_path"]
        return local if local.is_file() or other is None else other

    def _depth(self, record: SceneRecord, key: str) -> np.ndarray | None:
        d, stem = record.info["dir"] / "depth", Path(key).stem
        if record.info["depth_npz"] is not None:
            path = record.info["depth_npz"]
            if getattr(self, "_npz", (None,))[0] != path:      # one archive cached: views of a sample share it
                self._npz = (path, read_npz(path, "depth archive"))
            cache = self._npz[1]
            if f"depth_{stem}" in cache:
                depth, valid = cache[f"depth_{stem}"], cache.get(f"valid_{stem}")
            elif "depth" in cache:
                i = record.frames.index(key) if key in record.frames else -1
                if not 0 <= i < len(cache["depth"]):
                    raise DatasetError(f"{path}: 'depth' has {len(cache['depth'])} views; view {key} is not among them")
                depth, valid = cache["depth"][i], cache["valid"][i] if "valid" in cache else None
            else:
                raise DatasetError(f"{path} has neither 'depth' nor 'depth_{stem}'; it has {sorted(cache)}")
            depth = np.where(valid, depth, 0) if valid is not None else depth
            return check_depth(depth, path)
        if (d / f"{stem}.npy").is_file():
            return check_depth(read_npy(d / f"{stem}.npy", "depth"), d / f"{stem}.npy")
        if (d / f"{stem}.png").is_file():
            path = d / f"{stem}.png"
            return read_depth_png(path, self.depth_scale)
        return None

    def _ids(self, record: SceneRecord, key: str) -> np.ndarray | None:
        folder, stem = record.info["ids"], Path(key).stem
        if folder is None:
            return None
        if (folder / f"{stem}.npy").is_file():
            ids = read_npy(folder / f"{stem}.npy", "instance map")
            if ids.ndim != 2 or ids.dtype.kind not in "iub":
                raise DatasetError(f"instance map {folder / (stem + '.npy')} has shape {ids.shape}, dtype {ids.dtype}; "
                                   "expected an integer [H,W] array")
            return ids.astype(np.int64)
        return read_png_array(folder / f"{stem}.png", "instance map").astype(np.int64)

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        image = read_rgb(self._image_path(record, key))
        E, K = self._camera(record, key)
        size = record.info["views"].get(key, {}).get("size", (None, None))
        if any(n is not None and n != m for n, m in zip(size, image.shape[:2])):     # width or height may be absent
            swapped = tuple(size) == image.shape[:2][::-1]
            h, w = ("?" if n is None else n for n in size)
            raise DatasetError(f"{record.info['dir'] / 'cameras.json'}: view {key} says {w}x{h} but the "
                               f"image is {image.shape[1]}x{image.shape[0]}" + (
                                   " (width and height swapped: images are read with their EXIF orientation applied, "
                                   "as viewers show them; the camera must describe the upright image)" if swapped
                                   else ""))
        return Frame(image=image, intrinsics=K, extrinsics=E, depth=self._depth(record, key),
                     instance_ids=self._ids(record, key), name=key)
