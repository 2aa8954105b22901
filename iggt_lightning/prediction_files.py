"""A prediction folder of ``iggt predict`` read as data: what the viewer shows and the instance editor
(:mod:`iggt_lightning.instance_edits`) changes.

What is read from a scene folder: ``points.ply`` (positions, RGB, one int per vertex attribute, confidence),
the other colour layers (every ``*.glb`` but ``scene.glb``: only their point colours, which follow the PLY's
point order), ``cameras.json`` with the photos it names, the files the exporters declare as viewer layers
(:func:`~iggt_lightning.exporters.viewer_layer_table`: the masks exporter's instances file, with the score,
label and views of each instance, and the vertex attribute holding their ids) and ``manifest.json`` (its
``labels``, and its ``exporters``: whose layers to read; every registered exporter's for a folder without it).

Files are data: every file read, and every path a file names (``image_path`` in ``cameras.json``), must lie
inside the scene folder once links are resolved, or the folder is refused; every JSON field read is checked
for its type and range (instance ids 0..:data:`MAX_INSTANCE_ID`, finite camera matrices with a rotation and
positive focal lengths, ...), and a bad one is one :class:`ViewerError` naming the file and the field. A photo
or a colour-layer GLB that cannot be decoded is a warning (the frustum is drawn without it, the layer skipped).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iggt_lightning.exporters import ViewerLayer, viewer_layer_table
from iggt_lightning.inference.export import instance_colours

DEFAULT_MAX_POINTS = 500_000
REQUIRED = ("points.ply", "cameras.json")
# OpenCV world -> viser world (+z up): rows are viser's x, y, z in OpenCV coordinates.
THUMBNAIL_SIDE = 256            # photos go to every browser over the websocket; a frustum is small on screen
# Instance ids index tables (palette, point counts, shown flags): an id bounds their size.
MAX_INSTANCE_ID = 1_000_000
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


class ViewerError(ValueError):
    """A folder or file the viewer cannot show; the message names the path and what was expected."""


@dataclass
class Camera:
    name: str
    width: int
    height: int
    extrinsic: np.ndarray          # [3,4] OpenCV world-to-camera
    intrinsic: np.ndarray          # [3,3] pixels
    image: Path | None = None      # inside the scene folder, links resolved
    thumbnail: np.ndarray | None = None   # uint8 [h,w,3], at most THUMBNAIL_SIDE a side


@dataclass
class Instance:
    id: int
    score: float | None
    label: str | None
    views: list[str]
    points: int = 0                # points of the (subsampled) cloud with this id


@dataclass
class Scene:
    folder: Path
    xyz: np.ndarray                # [N,3] float32, OpenCV world frame
    layers: dict[str, np.ndarray]  # colour layer name -> uint8 [N,3]; "rgb" first
    attributes: dict[str, np.ndarray]   # per-vertex ints of the PLY (e.g. "instance")
    total_points: int              # in the PLY, before subsampling
    cameras: list[Camera]
    instances: list[Instance]
    warnings: list[str] = field(default_factory=list)
    id_attribute: str | None = None     # the vertex attribute of instance ids (the instances layer's)
    boxes: dict[int, dict] = field(default_factory=dict)   # id -> oriented box of instances3d.json
    sample: np.ndarray | None = None    # the PLY rows shown (None: all of them)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def instance_ids(self) -> np.ndarray | None:
        return self.attributes.get(self.id_attribute) if self.id_attribute else None


# ---------------------------------------------------------------------------------------------- paths
def check_inside(folder: Path, path: Path, what: str) -> None:
    """Refuse ``path`` unless, every link resolved, it lies inside ``folder`` (resolved too). ``what`` names
    where the path came from (a file, or a file and field) for the error."""
    try:
        root, real = folder.resolve(), path.resolve()
    except (OSError, RuntimeError) as err:         # RuntimeError: a link loop (Python < 3.13)
        raise ViewerError(f"{what}: cannot resolve {path} ({err})") from err
    if real != root and root not in real.parents:
        raise ViewerError(f"{what}: leads outside the scene folder {folder} (to {real}); expected a file inside it")


# ---------------------------------------------------------------------------------------------- JSON fields
def _shown(value) -> str:
    """A found value for an error line: short, one line (repr escapes newlines)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(path: Path, where: str, expected: str, value) -> ViewerError:
    return ViewerError(f"{path}: {where}: expected {expected}, found {_shown(value)}")


def _integer(value, path: Path, where: str, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        raise _bad(path, where, f"an integer {lo}..{hi}" if hi is not None else f"an integer >= {lo}", value)
    return value


def _number(value, path: Path, where: str) -> float:
    try:
        x = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:          # an integer literal of hundreds of digits
        x = math.inf
    if not math.isfinite(x):
        raise _bad(path, where, "a finite number", value)
    return x


def _text(value, path: Path, where: str, optional: bool = False) -> str | None:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise _bad(path, where, "a string or null" if optional else "a string", value)


def _list(value, path: Path, where: str) -> list:
    if not isinstance(value, list):
        raise _bad(path, where, "a list", value)
    return value


def _object(value, path: Path, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(path, where, "an object", value)
    return value


def _matrix(value, rows: int, cols: int, path: Path, where: str) -> np.ndarray:
    if not (isinstance(value, list) and len(value) == rows
            and all(isinstance(r, list) and len(r) == cols for r in value)):
        raise _bad(path, where, f"a {rows}x{cols} list of numbers", value)
    return np.array([[_number(x, path, f"{where}[{i}][{j}]") for j, x in enumerate(r)] for i, r in enumerate(value)])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as err:  # the parser recurses once per nesting level
        raise ViewerError(f"{path}: nested too deeply to read as JSON; expected the flat layout iggt predict "
                          "writes") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:  # ValueError: JSONDecodeError, an over-long int
        raise ViewerError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ViewerError(f"{path}: expected a JSON object, found {_shown(data)}")
    return data


# ---------------------------------------------------------------------------------------------- reading
def read_ply(path: Path) -> np.ndarray:
    """The vertex element of a binary PLY as a numpy structured array, memory-mapped (a big cloud is read only
    where it is indexed). Scalar properties, the vertex element first, as our writer makes it. No PLY library:
    the header names the dtype."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        size = path.stat().st_size
    except OSError as err:
        raise ViewerError(f"{path}: cannot read ({err.strerror or err})") from err
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0 or head.find(b"\n", end) < 0:
        raise ViewerError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header)")
    body = head.index(b"\n", end) + 1
    try:
        dtype, count = _ply_vertex_dtype(head[:end].decode("ascii", "replace").splitlines()[1:], path)
    except ViewerError:
        raise
    except (ValueError, IndexError, TypeError) as err:
        raise ViewerError(f"{path}: malformed PLY header ({err})") from err
    if size - body < count * dtype.itemsize:
        raise ViewerError(f"{path}: element vertex {count}: truncated: the header announces {count} vertices of "
                          f"{dtype.itemsize} bytes, the file holds {size - body} bytes after it")
    missing = [k for k in ("x", "y", "z") if k not in dtype.names]
    if missing:
        raise ViewerError(f"{path}: vertices without {', '.join(missing)}")
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=body, shape=(count,))


def _ply_vertex_dtype(lines: list[str], path: Path) -> tuple[np.dtype, int]:
    order, count, fields, element = None, None, [], None
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(words[1])
            if order is None:
                raise ViewerError(f"{path}: PLY format {words[1]!r}; expected a binary PLY (as iggt predict writes)")
        elif words[0] == "element":
            if element == "vertex":
                break                  # later elements (faces, ...) are not needed
            element = words[1]
            if element != "vertex":
                raise ViewerError(f"{path}: PLY element {element!r} before the vertices; expected vertices first")
            count = int(words[2])
            if count < 0:
                raise ViewerError(f"{path}: element vertex {count}: expected a vertex count >= 0")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or words[1] not in PLY_TYPES:
                raise ViewerError(f"{path}: vertex property {' '.join(words[1:])!r}; expected scalar properties")
            if order is None:
                raise ViewerError(f"{path}: PLY header without a format line before the vertex properties")
            fields.append((words[2], order + PLY_TYPES[words[1]]))
    if order is None or count is None:
        raise ViewerError(f"{path}: PLY header without a format or a vertex element")
    return np.dtype(fields), count


def subsample(n: int, max_points: int) -> np.ndarray | None:
    """Indices of at most ``max_points`` of ``n`` points, the same on every run (None: keep all). Random rather
    than every k-th: the points are in per-view pixel order, and a stride would leave stripes."""
    if max_points <= 0 or n <= max_points:
        return None
    return np.sort(np.random.default_rng(0).choice(n, max_points, replace=False))


def read_cameras(folder: Path) -> list[Camera]:
    path = folder / "cameras.json"
    check_inside(folder, path, str(path))
    views = _list(_read_json(path).get("views"), path, "views")
    return [_read_camera(folder, path, i, v) for i, v in enumerate(views)]


def _read_camera(folder: Path, path: Path, i: int, view) -> Camera:
    where = f"views[{i}]"
    v = _object(view, path, where)
    width = _integer(v.get("width"), path, f"{where}.width", 1)
    height = _integer(v.get("height"), path, f"{where}.height", 1)
    E = _matrix(v.get("extrinsic"), 3, 4, path, f"{where}.extrinsic")
    K = _matrix(v.get("intrinsic"), 3, 3, path, f"{where}.intrinsic")
    R = E[:, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-3) and np.linalg.det(R) > 0):
        raise ViewerError(f"{path}: {where}.extrinsic: expected [R|t] with R a rotation (orthonormal, det +1)")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ViewerError(f"{path}: {where}.intrinsic: expected positive focal lengths, found fx {K[0, 0]:g}, "
                          f"fy {K[1, 1]:g}")
    name = _text(v.get("file_name", str(i)), path, f"{where}.file_name")
    image = v.get("image_path")
    if image is not None:
        if not isinstance(image, str) or not image or "\0" in image:
            raise _bad(path, f"{where}.image_path", "a path relative to the scene folder", image)
        check_inside(folder, folder / image, f"{path}: {where}.image_path {image!r}")
        image = folder / image
    return Camera(name, width, height, E, K, image)


def read_thumbnail(cam: Camera, warnings: list[str]) -> np.ndarray | None:
    """The camera's photo shrunk for its frustum; a missing or undecodable photo is a warning, not an error."""
    if cam.image is None:
        return None
    if not cam.image.is_file():
        warnings.append(f"{cam.image}: no such photo (camera {cam.name}); its frustum is drawn without it")
        return None
    from PIL import Image

    try:
        with Image.open(cam.image) as im:
            im.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))   # JPEG: decode at a reduced size
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return np.asarray(im)
    except Exception as err:  # noqa: BLE001  PIL raises many kinds (and DecompressionBombError) on bad data
        warnings.append(f"{cam.image}: not readable as a photo ({type(err).__name__}: {err}); camera {cam.name}'s "
                        "frustum is drawn without it")
        return None


def read_labels(folder: Path) -> list[str | None]:
    """``labels`` of ``manifest.json`` (open-vocabulary names, instance k -> labels[k-1]); [] without one."""
    path = folder / "manifest.json"
    if not path.is_file():
        return []
    check_inside(folder, path, str(path))
    labels = _read_json(path).get("labels")
    if labels is None:
        return []
    return [_text(x, path, f"labels[{i}]", optional=True) for i, x in enumerate(_list(labels, path, "labels"))]


def instance_layer(folder: Path) -> ViewerLayer | None:
    """The instances layer of the exporters that wrote ``folder`` (its manifest's ``exporters``, looked up among
    the registered ones only: a name is never imported), or of every registered exporter without that field."""
    path = folder / "manifest.json"
    names = None
    if path.is_file():
        check_inside(folder, path, str(path))
        given = _read_json(path).get("exporters")
        if given is not None:
            names = [_text(x, path, f"exporters[{i}]") for i, x in enumerate(_list(given, path, "exporters"))]
    return next((layer for _, layer in viewer_layer_table(names) if layer.kind == "instances"), None)


def read_coco(folder: Path, layer: ViewerLayer | None) -> dict[int, Instance]:
    """Instances of the layer's file (a COCO ``instances.json``): score, label and the views each appears in ({}
    without one)."""
    if layer is None:
        return {}
    path = folder / layer.file
    if not path.is_file():
        return {}
    check_inside(folder, path, str(path))
    coco = _read_json(path)
    names: dict[int, str] = {}
    for i, im in enumerate(_list(coco.get("images", []), path, "images")):
        im = _object(im, path, f"images[{i}]")
        k = _integer(im.get("id"), path, f"images[{i}].id", 0)
        names[k] = _text(im.get("file_name", str(k)), path, f"images[{i}].file_name")
    rows = []
    for i, ann in enumerate(_list(coco.get("annotations", []), path, "annotations")):
        where = f"annotations[{i}]"
        ann = _object(ann, path, where)
        k = _integer(ann.get("track_id"), path, f"{where}.track_id", 1, MAX_INSTANCE_ID)
        image = _integer(ann.get("image_id"), path, f"{where}.image_id", 0)
        if image not in names:
            raise _bad(path, f"{where}.image_id", "the id of one of images", image)
        score = ann.get("score")
        score = None if score is None else _number(score, path, f"{where}.score")
        rows.append((image, k, score, _text(ann.get("label"), path, f"{where}.label", optional=True)))
    found: dict[int, Instance] = {}
    for image, k, score, label in sorted(rows, key=lambda r: r[0]):
        inst = found.setdefault(k, Instance(k, score, label, []))
        if names[image] not in inst.views:
            inst.views.append(names[image])
    return found


def read_instances(folder: Path, ids: np.ndarray | None, layer: ViewerLayer | None = None) -> list[Instance]:
    """One entry per instance: from the instances layer's file (score, label, the views it appears in), plus the
    ids only the cloud has (an instance whose mask vanished at photo resolution)."""
    found = read_coco(folder, layer)
    labels = read_labels(folder)
    counts = np.bincount(ids[ids > 0]) if ids is not None and (ids > 0).any() else np.zeros(0, int)
    for k in np.flatnonzero(counts):
        found.setdefault(int(k), Instance(int(k), None, None, []))
    for inst in found.values():
        if inst.label is None and 0 < inst.id <= len(labels):
            inst.label = labels[inst.id - 1]
        inst.points = int(counts[inst.id]) if inst.id < len(counts) else 0
    return [found[k] for k in sorted(found)]


def read_colour_layers(folder: Path, n: int, keep: np.ndarray | None, warnings: list[str]) -> dict[str, np.ndarray]:
    """Point colours of every ``*.glb`` but ``scene.glb`` (the RGB the PLY has), by file stem. Positions come
    from the PLY: only the vertex order and colours of a GLB's point geometry are relied on."""
    files = sorted(p for p in folder.glob("*.glb") if p.name != "scene.glb")
    if not files:
        return {}
    try:
        import trimesh
    except ImportError:
        warnings.append(f"colour layers {', '.join(p.name for p in files)} skipped: they need trimesh "
                        "(pip install 'iggt-lightning[viewer]')")
        return {}
    layers = {}
    for path in files:
        check_inside(folder, path, str(path))
        try:
            geoms = trimesh.load(path, force="scene").geometry
        except Exception as err:  # noqa: BLE001  trimesh raises many kinds; one bad layer must not stop the viewer
            warnings.append(f"{path.name}: not readable as GLB ({err}); layer skipped")
            continue
        clouds = [g for name, g in sorted(geoms.items(), key=lambda kv: kv[0] != "points")
                  if isinstance(g, trimesh.PointCloud)]
        colours = next((np.asarray(g.colors)[:, :3] for g in clouds if len(g.vertices) == n), None)
        if colours is None:
            warnings.append(f"{path.name}: no point cloud of the PLY's {n} points; layer skipped")
            continue
        layers[path.stem] = np.ascontiguousarray(colours if keep is None else colours[keep], dtype=np.uint8)
    return layers


def read_boxes(folder: Path) -> dict[int, dict]:
    """id -> {centre, axes, half_extents} of ``instances3d.json`` ({} without one); every field checked."""
    path = folder / "instances3d.json"
    if not path.is_file():
        return {}
    check_inside(folder, path, str(path))
    boxes = {}
    for i, r in enumerate(_list(_read_json(path).get("instances", []), path, "instances")):
        r = _object(r, path, f"instances[{i}]")
        k = _integer(r.get("id"), path, f"instances[{i}].id", 1, MAX_INSTANCE_ID)
        box = r.get("box")
        if box is None:
            continue
        box = _object(box, path, f"instances[{i}].box")
        centre = _matrix([box.get("centre")], 1, 3, path, f"instances[{i}].box.centre")[0]
        axes = _matrix(box.get("axes"), 3, 3, path, f"instances[{i}].box.axes")
        half = _matrix([box.get("half_extents")], 1, 3, path, f"instances[{i}].box.half_extents")[0]
        if (half < 0).any():
            raise _bad(path, f"instances[{i}].box.half_extents", "3 numbers >= 0", box.get("half_extents"))
        boxes[k] = {"centre": centre, "axes": axes, "half_extents": half}
    return boxes


def check_scene_folder(folder: Path) -> None:
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise ViewerError(f"{folder}: no {' or '.join(missing)}; expected a prediction folder of iggt predict "
                          f"({' and '.join(REQUIRED)}), or a folder of such scene folders")


def find_scenes(path: Path) -> list[Path]:
    """``path`` itself if it is a scene folder, else its scene subfolders (sorted by name)."""
    if not path.is_dir():
        raise ViewerError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}; expected a prediction "
                          f"folder of iggt predict ({' and '.join(REQUIRED)}) or a folder of them")
    if any((path / f).exists() for f in (*REQUIRED, "manifest.json")):
        check_scene_folder(path)
        return [path]
    scenes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and all((p / f).is_file() for f in REQUIRED))
    if not scenes:
        check_scene_folder(path)   # raises, naming what a scene folder holds
    return scenes


def pick_scene(scenes: list[Path], name: str | None) -> Path:
    if name is None:
        return scenes[0]
    for s in scenes:
        if s.name == name:
            return s
    raise ViewerError(f"--scene {name}: no such scene under {scenes[0].parent}; scenes: "
                      f"{', '.join(s.name for s in scenes)}")


def check_instance_ids(ids: np.ndarray, path: Path, attribute: str) -> None:
    """Ids index tables (palette, counts): 0 (no instance) .. MAX_INSTANCE_ID, nothing negative."""
    if len(ids) and (ids.min() < 0 or ids.max() > MAX_INSTANCE_ID):
        raise ViewerError(f"{path}: property {attribute}: ids {int(ids.min())}..{int(ids.max())}; expected "
                          f"0 (no instance) to {MAX_INSTANCE_ID}")


def load_scene(folder: Path, max_points: int = DEFAULT_MAX_POINTS) -> Scene:
    """Everything the viewer shows of one scene folder, subsampled to ``max_points`` (0: all)."""
    folder = Path(folder)
    check_scene_folder(folder)
    ply = folder / "points.ply"
    check_inside(folder, ply, str(ply))
    vertex = read_ply(ply)
    keep = subsample(len(vertex), max_points)
    v = vertex if keep is None else vertex[keep]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    finite = np.isfinite(xyz).all(1)
    if not finite.all():              # our writer never keeps such points; a hand-edited file might
        raise ViewerError(f"{ply}: {int((~finite).sum())} non-finite vertices")
    names = vertex.dtype.names
    warnings: list[str] = []
    layers = {}
    if all(c in names for c in ("red", "green", "blue")):
        layers["rgb"] = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.uint8)
    else:
        layers["rgb"] = np.full((len(v), 3), 160, np.uint8)
        warnings.append("points.ply has no red/green/blue: drawn grey")
    attributes = {k: np.asarray(v[k]).astype(np.int64) for k in names
                  if k not in ("x", "y", "z", "red", "green", "blue") and v.dtype[k].kind in "iu"}
    layer = instance_layer(folder)
    id_attribute = layer.attribute if layer is not None else None
    ids = attributes.get(id_attribute) if id_attribute else None
    if ids is not None:
        check_instance_ids(ids, ply, id_attribute)
    cameras = read_cameras(folder)
    instances = read_instances(folder, ids, layer)
    layers.update(read_colour_layers(folder, len(vertex), keep, warnings))
    if ids is not None and layer.colour_layer and layer.colour_layer not in layers:
        # the writer's palette, so no GLB (or trimesh) is needed
        layers[layer.colour_layer] = instance_colours(int(ids.max(initial=0)))[ids]
    for cam in cameras:
        cam.thumbnail = read_thumbnail(cam, warnings)
    return Scene(folder, xyz, layers, attributes, len(vertex), cameras, instances, warnings, id_attribute,
                 read_boxes(folder) if ids is not None else {}, keep)
