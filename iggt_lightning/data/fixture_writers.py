"""The fixture writers of the built-in layouts: one rendered scene stored exactly as each real dataset stores it.

Each is ``write_<layout>_scene(root, scene_name, arrays)``, named by its layout's record in :mod:`.registry`
and called by :func:`.fixtures.write_fixture`, which renders the scenes. ``arrays``: ``rgb`` uint8 [S,H,W,3],
``depth`` float32 [S,H,W] metres (0 = none), ``E`` [S,3,4] world-to-camera, ``K`` [S,3,3] with pixel centres at
integer coordinates, ``ids`` int [S,H,W] shared by the views (0 = none) and ``names`` (``names[i]`` names id
i + 1). Every file is written atomically. This module imports neither the registry nor any reader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_write, write_json


def _c2w(E: np.ndarray) -> np.ndarray:
    """world-to-camera [3,4] -> camera-to-world 4x4."""
    R, t = E[:3, :3].astype(np.float64), E[:3, 3].astype(np.float64)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R.T, -R.T @ t
    return pose


def _continuous(K: np.ndarray) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[:2, 2] += 0.5
    return K


def _save_image(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG"
                                                                                   else {})))


def _save_png(path: Path, values: np.ndarray, dtype=np.uint16) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(np.asarray(values).astype(dtype)).save(tmp, format="PNG"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def _save_npz(path: Path, **arrays) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    atomic_write(path, write)


def _save_txt(path: Path, matrix: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.savetxt(tmp, matrix))


def _mm(depth: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(depth) * 1000.0).clip(0, 65535)


def write_scannetpp_scene(root: Path, name: str, a: dict) -> None:
    d = root / name
    names = [f"frame_{10 * v:06d}.jpg" for v in range(len(a["rgb"]))]
    for v, n in enumerate(names):
        _save_image(d / "images" / n, a["rgb"][v])
        _save_png(d / "depth" / f"{Path(n).stem}.png", _mm(a["depth"][v]))
        _save_npy(d / "refined_ins_ids" / f"{n}.npy", a["ids"][v].astype(np.int16))
    # a leading DSLR entry, as in the real metadata: the reader must skip it
    _save_npz(d / "scene_iphone_metadata.npz", images=np.array(["DSC00001.JPG", *names]),
              trajectories=np.stack([np.eye(4), *[_c2w(E) for E in a["E"]]]),
              intrinsics=np.stack([np.eye(3), *[_continuous(K) for K in a["K"]]]))


def write_infinigen_scene(root: Path, name: str, a: dict) -> None:
    d = root / name / "0" / "frames"
    room_index = 999                  # the room gets an object index whose type is not MESH: mesh_only drops it
    for v in range(len(a["rgb"])):
        key = f"{v}_0_0001_0"
        cam = "camera_0"
        _save_image(d / "Image" / cam / f"Image_{key}.png", a["rgb"][v])
        depth = a["depth"][v].astype(np.float32).copy()
        _save_npy(d / "Depth" / cam / f"Depth_{key}.npy", depth)
        _save_npz(d / "camview" / cam / f"camview_{key}.npz", K=_continuous(a["K"][v]), T=_c2w(a["E"][v]))
        seg = np.where(a["ids"][v] == 0, room_index, a["ids"][v] + 10).astype(np.int64)   # ids need not be 1..K
        _save_npy(d / "ObjectSegmentation" / cam / f"ObjectSegmentation_{key}.npy", seg)
        objects = {f"object_{k}": {"type": "MESH", "object_index": int(k + 10)} for k in np.unique(a["ids"]) if k}
        objects["room_light"] = {"type": "LIGHT", "object_index": room_index}
        write_json(d / "Objects" / cam / f"Objects_{key}.json", objects)


def write_re10k_scene(root: Path, name: str, a: dict) -> None:
    from pycocotools import mask as mask_utils

    d = root / name
    num_objects = int(a["ids"].max())
    masklet = []
    for v in range(len(a["rgb"])):
        _save_image(d / "rgb" / f"{v:05d}.png", a["rgb"][v])
        _save_npz(d / "cam" / f"{v:05d}.npz", pose=_c2w(a["E"][v]), intrinsics=_continuous(a["K"][v]))
        row = []
        for k in range(1, num_objects + 1):
            m = a["ids"][v] == k
            if not m.any():
                row.append(None)
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            row.append({"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode()})
        masklet.append(row)
    write_json(d / "auto_masks.json", {"masklet": masklet, "frame_names": [f"{v:05d}.png" for v in range(len(masklet))]})


def write_scannet_scene(root: Path, name: str, a: dict) -> None:
    from PIL import Image

    d = root / name
    for v in range(len(a["rgb"])):
        h, w = a["rgb"][v].shape[:2]
        colour = np.asarray(Image.fromarray(a["rgb"][v]).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
        _save_image(d / "color" / f"{v}.jpg", colour)
        _save_png(d / "depth" / f"{v}.png", _mm(a["depth"][v]))
        _save_png(d / "instance-filt" / f"{v}.png", a["ids"][v], np.uint8)
        _save_txt(d / "pose" / f"{v}.txt", _c2w(a["E"][v]))
    # a lost-tracking frame (ScanNet writes -inf poses): the reader must drop it
    lost = len(a["rgb"])
    _save_image(d / "color" / f"{lost}.jpg", np.zeros((2 * a["rgb"].shape[1], 2 * a["rgb"].shape[2], 3), np.uint8))
    _save_png(d / "depth" / f"{lost}.png", np.zeros(a["depth"].shape[1:]))
    _save_png(d / "instance-filt" / f"{lost}.png", np.zeros(a["depth"].shape[1:]), np.uint8)
    _save_txt(d / "pose" / f"{lost}.txt", np.full((4, 4), -np.inf))
    K = np.eye(4)
    K[:3, :3] = _continuous(a["K"][0])                     # ScanNet has one K per scene: the views share it
    if not np.allclose(a["K"], a["K"][:1]):
        raise ValueError("the scannet fixture needs views with one shared intrinsics matrix (focal_range lo == hi)")
    Kc = K.copy()
    Kc[:2] *= 2.0                                          # the colour camera at twice the resolution
    # ScanNet's aggregation file: instance id v of the 2D exports is segGroups' objectId v - 1
    write_json(d / f"{name}.aggregation.json", {"sceneId": name, "segGroups": [
        {"id": i, "objectId": i, "label": n, "segments": []} for i, n in enumerate(a["names"])]})
    _save_txt(d / "intrinsic" / "intrinsic_depth.txt", K)
    _save_txt(d / "intrinsic" / "intrinsic_color.txt", Kc)


def _save_jgz(path: Path, data: dict) -> None:
    import gzip
    import json

    def write(tmp: str) -> None:
        with gzip.open(tmp, "wt") as f:
            json.dump(data, f)
    atomic_write(path, write)


def _merge_jgz(path: Path, key: str, value) -> None:
    import gzip
    import json

    data = json.loads(gzip.open(path, "rt").read()) if path.is_file() else {}
    data[key] = value
    _save_jgz(path, data)


def write_co3d_scene(root: Path, name: str, a: dict) -> None:
    """Images under root/<category>/<name>/images, cameras in root/annotations/<category>_test.jgz as VGGT's
    preprocessing writes them (PyTorch3D R, T; NDC focal length and principal point)."""
    category = "toycategory"
    F = np.diag([-1.0, -1.0, 1.0])
    frames = []
    for v in range(len(a["rgb"])):
        rel = f"{category}/{name}/images/frame{v + 1:06d}.jpg"
        _save_image(root / rel, a["rgb"][v])
        E = a["E"][v].astype(np.float64)
        R_pt3d, T_pt3d = E[:3, :3].T @ F, F @ E[:3, 3]          # the inverse of R_cv = (R F)^T, t_cv = F T
        H, W = a["rgb"][v].shape[:2]
        K = _continuous(a["K"][v])
        s = min(W, H) / 2.0
        frames.append({"filepath": rel, "R": R_pt3d.tolist(), "T": T_pt3d.tolist(),
                       "focal_length": [K[0, 0] / s, K[1, 1] / s],
                       "principal_point": [-(K[0, 2] - W / 2.0) / s, -(K[1, 2] - H / 2.0) / s]})
    _merge_jgz(root / "annotations" / f"{category}_test.jgz", name, frames)


def write_pose_list_scene(root: Path, name: str, a: dict) -> None:
    """Images under root/<name>/images, cameras in root/annotations.jgz (VGGT's prepared RealEstate10K)."""
    frames = []
    for v in range(len(a["rgb"])):
        rel = f"{name}/images/{v:04d}.png"
        _save_image(root / rel, a["rgb"][v])
        frames.append({"filepath": rel, "extri": a["E"][v].astype(np.float64).tolist(),
                       "intri": _continuous(a["K"][v]).tolist()})
    _merge_jgz(root / "annotations.jgz", name, [frames])


def write_scene_folder_scene(root: Path, name: str, a: dict) -> None:
    d = root / name
    views = []
    for v in range(len(a["rgb"])):
        file_name = f"view_{v:02d}.png"
        _save_image(d / "images" / file_name, a["rgb"][v])
        _save_png(d / "depth" / f"view_{v:02d}.png", _mm(a["depth"][v]))
        _save_png(d / "instances" / f"view_{v:02d}.png", a["ids"][v])
        h, w = a["rgb"][v].shape[:2]
        views.append({"file_name": file_name, "width": w, "height": h, "extrinsic": a["E"][v].tolist(),
                      "intrinsic": _continuous(a["K"][v]).tolist()})
    write_json(d / "cameras.json", {"pixel_center": 0.5, "views": views})

