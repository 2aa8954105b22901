"""Writers for prediction files other tools open: PLY, GLB (glTF y-up), 16-bit PNG id/depth maps, COCO RLE
instances, cameras JSON, nerfstudio's transforms.json and the views downscaled for gsplat / nerfstudio (the COLMAP
model: :mod:`.colmap`). Every writer goes through ``fileio.atomic_write`` (temp file + rename); none needs a
package outside the core install.

Conventions where data leaves the program: cameras are OpenCV world-to-camera ``[R|t]`` (x right, y down,
z forward) in the predicted world frame (the first camera's), in the model's normalised scale; pixel
coordinates put pixel i's centre at i + 0.5 (COLMAP's convention too); instance id 0 = no instance.
"""
from __future__ import annotations

import colorsys
import json
import os
import struct

import numpy as np

from iggt_lightning.fileio import atomic_write

CONVENTION = "OpenCV world-to-camera; world = first camera; pixel centres at i + 0.5; id 0 = none"
CAMERAS_OMITTED = {"from": ["cameras.json", "sparse/0/", "transforms.json", "GLB camera frustums"],
                   "why": "non-finite or non-positive predicted camera"}


def instance_colours(n: int) -> np.ndarray:
    """uint8 [n+1, 3]: row 0 (no instance) grey, then well-spread hues (golden-ratio steps); never overflows."""
    out = np.full((n + 1, 3), 128, dtype=np.uint8)
    for k in range(1, n + 1):
        h = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
        out[k] = np.round(np.array([r, g, b]) * 255).astype(np.uint8)
    return out


def to_uint8(colours: np.ndarray) -> np.ndarray:
    """Float colours in [0,1] (or already uint8) -> uint8, clipped (the official GLB export wrapped around)."""
    if colours.dtype == np.uint8:
        return colours
    return np.clip(np.round(np.asarray(colours, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_ply(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray, confidence: np.ndarray,
              attributes: dict[str, np.ndarray] | None = None) -> None:
    """Binary little-endian PLY: float x,y,z; uchar red,green,blue; one int per ``attributes`` entry (e.g.
    ``instance``); float confidence."""
    n = len(xyz)
    attributes = dict(attributes or {})
    vertex = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                ("blue", "u1"), *((k, "<i4") for k in attributes), ("confidence", "<f4")])
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    c = to_uint8(rgb)
    vertex["red"], vertex["green"], vertex["blue"] = c[:, 0], c[:, 1], c[:, 2]
    for k, v in attributes.items():
        vertex[k] = v
    vertex["confidence"] = confidence
    header = ("ply\nformat binary_little_endian 1.0\ncomment iggt-lightning prediction (OpenCV world frame of "
              f"camera 0)\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              + "".join(f"property int {k}\n" for k in attributes) + "property float confidence\nend_header\n")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(vertex.tobytes())

    atomic_write(path, write)


def camera_frustum(extrinsic: np.ndarray, intrinsic: np.ndarray, size: tuple[int, int], depth: float):
    """Vertices [5,3] (apex + 4 image corners at ``depth``) and triangle faces of one camera, in world space."""
    W, H = size
    corners = np.array([[0, 0], [W, 0], [W, H], [0, H]], dtype=np.float64)
    rays = np.concatenate([corners, np.ones((4, 1))], 1) @ np.linalg.inv(intrinsic).T
    cam_pts = np.concatenate([np.zeros((1, 3)), rays * depth], 0)
    R, t = extrinsic[:3, :3], extrinsic[:3, 3]
    world = (cam_pts - t) @ R        # X_w = R^T (X_c - t)
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [1, 2, 3], [1, 3, 4]])
    return world, faces


# glTF is y-up, right-handed, cameras looking down -z; OpenCV is y-down, z forward: a turn of 180 degrees about x
OPENCV_TO_GLTF = np.diag([1.0, -1.0, -1.0, 1.0])
GLB_CONVENTION = ("glTF y-up, right-handed: the root node 'opencv_to_gltf' (matrix diag(1, -1, -1)) maps the "
                  "OpenCV world of points.ply and cameras.json (x right, y down, z forward) to glTF axes")


def write_glb(path: str | os.PathLike, xyz: np.ndarray, rgb: np.ndarray, extrinsics: np.ndarray | None = None,
              intrinsics: np.ndarray | None = None, sizes: list[tuple[int, int]] | None = None,
              boxes: list[tuple[str, np.ndarray, np.ndarray]] | None = None) -> None:
    """A GLB with the coloured point cloud (mesh ``points``, glTF POINTS), when cameras are given one frustum
    mesh per camera (``camera_<i>``), and per entry of ``boxes`` ((name, edges [12,2,3], RGB)) a wireframe
    (glTF LINES); written with numpy and struct (glTF 2.0 binary, no extra package).

    The geometry keeps the OpenCV world coordinates; a root node ``opencv_to_gltf`` turns them into glTF's
    y-up frame (:data:`GLB_CONVENTION`), so every glTF viewer shows the scene upright and the first camera
    looks down glTF's -z."""
    glb = _GLB()
    if len(xyz):        # glTF forbids empty accessors: a cloud with no point is left out
        colours = np.concatenate([to_uint8(rgb), np.full((len(rgb), 1), 255, np.uint8)], 1)
        glb.mesh("points", 0, xyz, colours)
    if extrinsics is not None:
        extent = np.percentile(xyz, 95, axis=0) - np.percentile(xyz, 5, axis=0) if len(xyz) else np.ones(3)
        depth = max(float(np.linalg.norm(extent)) * 0.05, 1e-3)
        palette = instance_colours(len(extrinsics))[1:]
        for i, (E, K, size) in enumerate(zip(extrinsics, intrinsics, sizes)):
            if not camera_is_valid(E, K):   # a degenerate camera has no frustum (it would be inf/nan vertices)
                continue
            v, f = camera_frustum(E, K, size, depth)
            colour = np.tile(np.concatenate([palette[i], [200]]).astype(np.uint8), (len(v), 1))
            glb.mesh(f"camera_{i:03d}", 4, v, colour, f)
    for name, edges, colour in boxes or ():
        v = np.asarray(edges, dtype=np.float64).reshape(-1, 3)
        rgba = np.tile(np.concatenate([to_uint8(np.asarray(colour)[None])[0], [255]]).astype(np.uint8), (len(v), 1))
        glb.mesh(name, 1, v, rgba, np.arange(len(v)))
    root = {"name": "opencv_to_gltf", "matrix": OPENCV_TO_GLTF.T.reshape(-1).tolist()}   # glTF: column-major
    if glb.nodes:       # the meshes' nodes follow the root
        root["children"] = list(range(1, len(glb.nodes) + 1))
    glb.nodes = [root, *glb.nodes]
    atomic_write(path, glb.write)


class _GLB:
    """The parts of a glTF 2.0 binary: meshes with float32 positions, normalised uint8 RGBA vertex colours and
    uint32 triangle indices, every piece 4-byte aligned in one buffer (the spec's alignment rules)."""

    ARRAY, ELEMENTS = 34962, 34963              # bufferView targets: vertex attributes, indices
    FLOAT, UBYTE, UINT = 5126, 5121, 5125       # accessor component types

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.size = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []
        self.meshes: list[dict] = []
        self.nodes: list[dict] = []

    def _accessor(self, data: np.ndarray, component: int, kind: str, target: int, **extra) -> int:
        raw = np.ascontiguousarray(data).tobytes()
        self.views.append({"buffer": 0, "byteOffset": self.size, "byteLength": len(raw), "target": target})
        pad = -len(raw) % 4
        self.blobs += [raw, b"\0" * pad]
        self.size += len(raw) + pad
        self.accessors.append({"bufferView": len(self.views) - 1, "componentType": component,
                               "count": int(len(data)), "type": kind, **extra})
        return len(self.accessors) - 1

    def mesh(self, name: str, mode: int, vertices: np.ndarray, rgba: np.ndarray,
             faces: np.ndarray | None = None) -> None:
        """A mesh and its node; ``mode`` 0 = points, 1 = lines, 4 = triangles."""
        v = np.asarray(vertices, dtype="<f4")
        if not np.isfinite(v).all():
            raise ValueError(f"GLB mesh {name!r}: non-finite vertex coordinates")
        # POSITION must carry its bounds (glTF 2.0, 5.1.1 accessor min/max): of the float32 values written
        attributes = {"POSITION": self._accessor(v, self.FLOAT, "VEC3", self.ARRAY,
                                                 min=v.min(0).tolist(), max=v.max(0).tolist()),
                      "COLOR_0": self._accessor(np.asarray(rgba, dtype=np.uint8), self.UBYTE, "VEC4", self.ARRAY,
                                                normalized=True)}
        primitive = {"attributes": attributes, "mode": mode}
        if faces is not None:
            primitive["indices"] = self._accessor(np.asarray(faces, dtype="<u4").reshape(-1), self.UINT, "SCALAR",
                                                  self.ELEMENTS)
        self.meshes.append({"name": name, "primitives": [primitive]})
        self.nodes.append({"name": name, "mesh": len(self.meshes) - 1})

    def write(self, tmp: str) -> None:
        gltf = {"asset": {"version": "2.0", "generator": "iggt-lightning"}, "scene": 0,
                "scenes": [{"nodes": [0]}], "nodes": self.nodes}
        if self.meshes:
            gltf.update(meshes=self.meshes, accessors=self.accessors, bufferViews=self.views,
                        buffers=[{"byteLength": self.size}])
        text = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
        text += b" " * (-len(text) % 4)         # the JSON chunk is padded with spaces, the BIN chunk with zeros
        total = 12 + 8 + len(text) + (8 + self.size if self.size else 0)
        with open(tmp, "wb") as f:
            f.write(struct.pack("<4sII", b"glTF", 2, total))
            f.write(struct.pack("<I4s", len(text), b"JSON"))
            f.write(text)
            if self.size:
                f.write(struct.pack("<I4s", self.size, b"BIN\0"))
                for blob in self.blobs:
                    f.write(blob)


def write_png16(path: str | os.PathLike, values: np.ndarray) -> None:
    """A single-channel 16-bit PNG (uint16 values; errors if a value does not fit)."""
    from PIL import Image

    v = np.asarray(values)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise ValueError(f"{path}: values {v.min()}..{v.max()} do not fit a 16-bit PNG")
    img = Image.fromarray(v.astype(np.uint16))

    def write(tmp: str) -> None:
        img.save(tmp, format="PNG")

    atomic_write(path, write)


def write_png_rgb(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """An RGB uint8 [H,W,3] image as PNG."""
    from PIL import Image

    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


# gsplat's trainer (data_factor, default 4) and nerfstudio (auto-downscale of photos over 1600 px) read a view's
# copy downscaled N times from images_N/<the same name>, with the intrinsics divided by N
DOWNSCALE_FACTORS = (2, 4, 8)
DOWNSCALE_RULE = ("images_N/<name>: the view's top-left (W//N*N) x (H//N*N) pixels averaged over N x N blocks, so "
                  "the image is (W//N) x (H//N) and its intrinsics are exactly the photo's divided by N")


def downscale_factors(sizes: list[tuple[int, int]]) -> list[int]:
    """The factors of :data:`DOWNSCALE_FACTORS` that leave every view (W, H) at least one pixel on each side."""
    return [n for n in DOWNSCALE_FACTORS if all(w // n >= 1 and h // n >= 1 for w, h in sizes)]


def write_png_downscaled(path: str | os.PathLike, rgb: np.ndarray, factor: int) -> None:
    """An RGB uint8 [H,W,3] image reduced ``factor`` times by :data:`DOWNSCALE_RULE` (a box average over whole
    blocks: the pixel grid scales exactly, which a resize to a rounded size would not)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    w, h = (img.width // factor) * factor, (img.height // factor) * factor
    small = img.reduce(factor, box=(0, 0, w, h))
    atomic_write(path, lambda tmp: small.save(tmp, format="PNG"))


def saved_image_names(scene) -> list[str] | None:
    """Per view of ``scene`` (a :class:`~.scene.SceneExport`) its file under ``images/``, or None when the views are
    not saved (``save_images`` off, or views without their photo): what COLMAP, COCO and transforms.json name."""
    if scene.option("save_images") and all(v.photo is not None for v in scene.views):
        return [v.image_name for v in scene.views]
    return None


class NpzSpool:
    """A compressed ``.npz`` whose arrays arrive a slice at a time (a view's depth map, ...): each array is
    spooled to a raw file in a private temporary folder and written into the archive at :meth:`save`, so the
    whole stack is never in memory. ``add(name, part)`` appends ``part`` (all parts of a name share shape and
    dtype); ``stacked=False`` in :meth:`save` keeps each part as its own array ``<name>_<suffix>``."""

    def __init__(self) -> None:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="iggt-npz-")
        self.parts: dict[str, list[tuple[tuple, np.dtype]]] = {}

    def add(self, name: str, part: np.ndarray) -> None:
        part = np.ascontiguousarray(part)
        with open(os.path.join(self._dir.name, name), "ab") as f:
            f.write(part.tobytes())
        self.parts.setdefault(name, []).append((part.shape, part.dtype))

    def save(self, path: str | os.PathLike, stacked: bool = True, suffixes: list[str] | None = None) -> None:
        import zipfile

        def entry(zf, key: str, raw, shape: tuple, dtype: np.dtype) -> None:
            with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array_header_2_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                           "fortran_order": False, "shape": shape})
                remaining = int(np.prod(shape)) * dtype.itemsize
                while remaining:
                    chunk = raw.read(min(remaining, 1 << 24))
                    if not chunk:
                        raise OSError(f"{key}: the spooled data ended early")
                    out.write(chunk)
                    remaining -= len(chunk)

        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                for name, parts in self.parts.items():
                    with open(os.path.join(self._dir.name, name), "rb") as raw:
                        if stacked:
                            shape, dtype = parts[0]
                            if any(p != parts[0] for p in parts):
                                raise ValueError(f"{name}: slices of different shapes cannot be stacked")
                            entry(zf, name, raw, (len(parts), *shape), dtype)
                        else:
                            for (shape, dtype), suffix in zip(parts, suffixes):
                                entry(zf, f"{name}_{suffix}", raw, shape, dtype)

        try:
            atomic_write(path, write)
        finally:
            self._dir.cleanup()


def write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def coco_instances(ids: np.ndarray, scores: np.ndarray, file_names: list[str], labels: dict | None = None,
                   image_root: str | None = None, input_names: list[str] | None = None) -> dict:
    """COCO results + dataset in one dict: ``images`` (one per view; ``file_name`` relative to ``image_root``, a
    folder of the prediction that ``info`` names, as COCO tools join them; ``input_name``: the photo it came
    from), ``annotations`` (one per instance per view where its mask is non-empty; RLE mask, bbox, area,
    ``score``, ``track_id`` = the multi-view instance id), ``categories`` (a single class-agnostic ``object``,
    or with open-vocabulary ``labels`` = {"names", "labels", "scores"} the vocabulary, each annotation carrying
    ``label`` and ``label_score``). ``ids`` [S,H,W] at photo resolution; views of different sizes are given as
    a list of [H,W] arrays."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for v, (view_ids, name) in enumerate(zip(ids, file_names), start=1):
        view_ids = np.asarray(view_ids)
        images.append({"id": v, "file_name": name, "height": int(view_ids.shape[0]), "width": int(view_ids.shape[1])})
        if input_names is not None:
            images[-1]["input_name"] = input_names[v - 1]
        for k in np.unique(view_ids):
            if k == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray((view_ids == k).astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": v, "category_id": 1, "iscrowd": 0,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_utils.area(rle)), "bbox": [float(b) for b in mask_utils.toBbox(rle)],
                "score": float(scores[int(k) - 1]) if int(k) - 1 < len(scores) else 0.0, "track_id": int(k)})
            if labels is not None:
                lab = labels["labels"][int(k) - 1]
                annotations[-1].update(category_id=lab + 2 if lab >= 0 else 1,
                                       label=labels["names"][lab] if lab >= 0 else None,
                                       label_score=float(labels["scores"][int(k) - 1]))
    categories = [{"id": 1, "name": "object", "supercategory": "object"}]
    if labels is not None:  # category 1 = unlabelled object, 2.. = the vocabulary in order
        categories += [{"id": i + 2, "name": n, "supercategory": "object"} for i, n in enumerate(labels["names"])]
    where = (f"file_name is relative to image_root, {image_root}/ of the prediction folder" if image_root else
             "file_name is the input photo's name (the views were not saved)")
    info = {"description": f"iggt-lightning instance masks; track_id is shared across views; {where}",
            "image_root": image_root}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """[3,3] rotation -> unit quaternion (w, x, y, z) with w >= 0 (COLMAP's order)."""
    m = np.asarray(R, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def camera_is_valid(extrinsic: np.ndarray, intrinsic: np.ndarray) -> bool:
    """Finite world-to-camera ``[R|t]`` and finite pinhole intrinsics with positive focal lengths."""
    E, K = np.asarray(extrinsic, dtype=np.float64), np.asarray(intrinsic, dtype=np.float64)
    return bool(np.isfinite(E).all() and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0)


def colmap_names(names: list[str]) -> list[str]:
    """Image names COLMAP's text format holds: ``images.txt`` ends a line with the name and its reader splits
    on spaces, so whitespace, control / non-printable characters and path separators become ``_``; names
    made equal by that get ``_1``, ``_2``, ... before the suffix. The result is unique and in input order."""
    out: list[str] = []
    taken: set[str] = set()
    for name in names:
        safe = "".join(c if c.isprintable() and not c.isspace() and c not in "/\\" else "_" for c in name) or "_"
        stem, suffix = os.path.splitext(safe)
        k, cand = 0, safe
        while cand in taken:
            k += 1
            cand = f"{stem}_{k}{suffix}"
        taken.add(cand)
        out.append(cand)
    return out


def write_transforms_json(path: str | os.PathLike, extrinsics: np.ndarray, intrinsics: np.ndarray,
                          sizes: list[tuple[int, int]], image_paths: list[str], ply_file: str | None) -> None:
    """nerfstudio / gsplat ``transforms.json``: per frame the camera-to-world matrix in the OpenGL camera convention
    (x right, y up, z backward; our OpenCV camera axes flipped in y and z), its intrinsics (pixel centres at
    i + 0.5) and image; ``ply_file_path`` names the cloud that initialises Gaussian splats (same world frame)."""
    frames = []
    for E, K, (W, H), image in zip(extrinsics, intrinsics, sizes, image_paths):
        if not camera_is_valid(E, K):
            raise ValueError(f"transforms.json: view {image!r} has a non-finite or non-positive camera")
        c2w = np.eye(4)
        R, t = np.asarray(E[:3, :3], np.float64), np.asarray(E[:3, 3], np.float64)
        c2w[:3, :3], c2w[:3, 3] = R.T, -R.T @ t
        frames.append({"file_path": image, "transform_matrix": (c2w @ np.diag([1.0, -1.0, -1.0, 1.0])).tolist(),
                       "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                       "w": int(W), "h": int(H)})
    payload = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
               "convention": "transform_matrix: camera-to-world, OpenGL camera axes (x right, y up, z back); world "
                             "= the OpenCV world of cameras.json; intrinsics in pixels, pixel i's centre at i + 0.5",
               "frames": frames}
    if ply_file:
        payload["ply_file_path"] = ply_file
    write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")


def write_cameras_json(path: str | os.PathLike, extrinsics: np.ndarray, intrinsics: np.ndarray,
                       sizes: list[tuple[int, int]], names: list[str], image_paths: list[str] | None = None) -> None:
    """cameras.json, readable back by ``iggt_lightning.data.SceneFolderScenes`` (``image_path``: where each
    view's image was saved, relative to the folder). Strict JSON: a non-finite or non-positive camera is
    refused (``ValueError``); leave such views out."""
    for E, K, n in zip(extrinsics, intrinsics, names):
        if not camera_is_valid(E, K):
            raise ValueError(f"cameras.json: view {n!r} has a non-finite or non-positive camera")
    views = [{"file_name": n, "width": int(W), "height": int(H), "extrinsic": np.asarray(E)[:3].tolist(),
              "intrinsic": np.asarray(K).tolist()} for E, K, (W, H), n in zip(extrinsics, intrinsics, sizes, names)]
    for v, p in zip(views, image_paths or []):
        v["image_path"] = p
    payload = {
        "convention": "OpenCV world-to-camera [R|t] (x right, y down, z forward); world = camera 0's frame; "
                      "model's normalised scale; intrinsics in pixels of each original photo, pixel i's "
                      "centre at i + 0.5",
        "pixel_center": 0.5,
        "views": views}
    write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
