"""``iggt view OUT_DIR``: a prediction folder of ``iggt predict`` in the browser, on viser (extra ``[viewer]``).

What it reads from a scene folder: ``points.ply`` (positions, RGB, one int per vertex attribute, confidence),
the other colour layers (every ``*.glb`` but ``scene.glb``: only their point colours, which follow the PLY's
point order), ``cameras.json`` with the photos it names, the files the exporters declare as viewer layers
(:func:`~iggt_lightning.exporters.viewer_layer_table`: the masks exporter's instances file, with the score,
label and views of each instance, and the vertex attribute holding their ids) and ``manifest.json`` (its
``labels``, and its ``exporters``: whose layers to read; every registered exporter's for a folder without it).
A folder of scene folders (``iggt predict --config ... --data ...``) gets a scene selector.

Files are data: every file read, and every path a file names (``image_path`` in ``cameras.json``), must lie
inside the scene folder once links are resolved, or the folder is refused; every JSON field read is checked
for its type and range (instance ids 0..:data:`MAX_INSTANCE_ID`, finite camera matrices with a rotation and
positive focal lengths, ...), and a bad one is one :class:`ViewerError` naming the file and the field. A photo
or a colour-layer GLB that cannot be decoded is a warning (the frustum is drawn without it, the layer skipped).

Frames: the files are in the OpenCV world frame of camera 0 (x right, y down, z forward); viser's world is
+z up. At this boundary, and only here, every position and camera pose is rotated by :data:`OPENCV_TO_VISER`
(x -> x, z -> y, y -> -z): camera 0 looks along viser's +y with viser's +z up. It is a rotation (nothing is
mirrored), and camera frusta keep OpenCV's camera axes, which is what viser's frustum expects.

Access: viser itself checks no one, and browsers let any page open a WebSocket to 127.0.0.1 (the same-origin
rule does not cover WebSockets), so listening on 127.0.0.1 alone would give the scene to every page open in
the user's browser. Each run therefore draws a secret token (``secrets.token_urlsafe``, 256 bits) that is only
printed, in the URL to open: ``http://127.0.0.1:PORT/TOKEN/`` (viser's page opens its WebSocket at the page's
own path, ``ws://127.0.0.1:PORT/TOKEN``, so the token needs no cookie; the page then notes that address in its
URL as ``?websocket=...``). :class:`AccessGate` sits in front of
viser's request handling and answers HTTP 403, before any page byte or scene message, to every HTTP request
and WebSocket upgrade whose path does not start with the token, or which carries an ``Origin`` header other
than the server's own: ``http://HOST:PORT`` for the address and port the request came in on, plus
``localhost``, ``127.0.0.1`` and ``[::1]`` when that address is a loopback one, plus ``--host`` itself. So a page
of another origin in the user's browser (another site, another server on 127.0.0.1, a DNS-rebound name) gets
nothing: no page, no WebSocket, no scene, no photo; at most it can tell that something answers 403 on the port.
That holds even with the token. A request without ``Origin`` (a typed URL, curl) needs only the token.
What the gate does not cover: anyone who sees the URL (the terminal, browser history, a screen share) has
the token; a program running as the user can read it from the terminal; the server speaks plain HTTP, so on
``--host 0.0.0.0`` anyone on the network path can read the token and the scene. Mechanism: while viser starts
its server, ``websockets.asyncio.server.serve`` is wrapped so that the ``process_request`` viser passes (its page
server) runs behind the gate; tested with viser 1.1.1 and websockets 16. Before printing the URL the viewer
checks that the hook was taken and that a request without the token gets 403, and stops with an error if not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import inspect
import io
import ipaddress
import json
import math
import secrets
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from iggt_lightning.exporters import ViewerLayer, viewer_layer_table
from iggt_lightning.inference.export import instance_colours, rotation_to_quaternion

DEFAULT_MAX_POINTS = 500_000
REQUIRED = ("points.ply", "cameras.json")
# OpenCV world -> viser world (+z up): rows are viser's x, y, z in OpenCV coordinates.
OPENCV_TO_VISER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FRUSTUM_COLOUR = (90, 90, 90)   # neutral: an instance colour on a frustum would read as an instance
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


def check_host(host: str) -> None:
    """Refuse an address this machine cannot listen on now (viser would retry ports on it forever)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind) as s:
            s.bind(address)
    except OSError as err:
        raise ViewerError(f"--host {host}: cannot listen on it ({err.strerror or err})") from err


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
    return Scene(folder, xyz, layers, attributes, len(vertex), cameras, instances, warnings, id_attribute)


# ---------------------------------------------------------------------------------------------- geometry
def to_viser(points: np.ndarray) -> np.ndarray:
    """OpenCV-world points [...,3] -> viser world (+z up)."""
    return np.asarray(points) @ OPENCV_TO_VISER.T


def camera_pose(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """The camera-to-world pose in viser's world: (wxyz quaternion, position). The camera's own axes stay
    OpenCV's, as viser's frusta are drawn."""
    R, t = cam.extrinsic[:, :3], cam.extrinsic[:, 3]
    return rotation_to_quaternion(OPENCV_TO_VISER @ R.T), to_viser(-R.T @ t)


def frustum_fov(cam: Camera) -> float:
    """Vertical field of view (radians) from the focal length in pixels."""
    return 2.0 * math.atan(cam.height / (2.0 * cam.intrinsic[1, 1]))


def extent(xyz: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, size) of the bulk of the cloud (5-95 % per axis: a few stray points must not set the view)."""
    if not len(xyz):
        return np.zeros(3), 1.0
    lo, hi = np.percentile(xyz, [5, 95], axis=0)
    return np.median(xyz, axis=0), max(float(np.linalg.norm(hi - lo)), 1e-3)


def initial_view(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(camera position, look-at) in viser's world: behind and above camera 0, the whole cloud in view."""
    centre, size = extent(xyz)
    back_up = np.array([0.0, -0.5, -1.0]) / math.sqrt(1.25)        # OpenCV: -z is behind camera 0, -y up
    distance = 0.5 * size / math.tan(math.radians(75.0) / 2) * 1.3  # viser's default vertical fov is 75 degrees
    return to_viser(centre + back_up * distance), to_viser(centre)


def default_point_size(xyz: np.ndarray) -> float:
    """About the spacing of the points over the cloud's size (points cover a surface: size / sqrt(n))."""
    _, size = extent(xyz)
    return float(f"{size / math.sqrt(max(len(xyz), 1)) * 1.5:.3g}")


def visible_mask(ids: np.ndarray | None, shown: dict[int, bool], n: int) -> np.ndarray:
    """Points whose instance id is shown (id 0 = no instance); all points when the cloud has no ids."""
    if ids is None:
        return np.ones(n, bool)
    table = np.ones(int(ids.max(initial=0)) + 1, bool)
    for k, on in shown.items():
        if 0 <= k < len(table):
            table[k] = on
    return table[np.clip(ids, 0, None)]


def instance_caption(inst: Instance) -> str:
    views = ", ".join(Path(v).stem for v in inst.views[:4]) + (f", +{len(inst.views) - 4}" if len(inst.views) > 4
                                                                else "")
    parts = [f"#{inst.id}", inst.label or "", f"{inst.score:.2f}" if inst.score is not None else "",
             f"views {views}" if views else "no view"]
    return " · ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------- viser
class SceneView:
    """One scene in the viewer: its nodes (points, frusta) and its GUI folder; :meth:`remove` takes both away."""

    def __init__(self, server, scene: Scene, colour: str) -> None:
        self.server, self.scene = server, scene
        self.colour = colour if colour in scene.layers else "rgb"
        self.points_viser = to_viser(scene.xyz).astype(np.float32)
        self.point_size = default_point_size(scene.xyz)
        self.shown: dict[int, bool] = {}
        self.batching = False
        self.lock = threading.Lock()    # viser runs callbacks on a thread pool
        self.cloud = None
        self.frusta = self._add_frusta()
        self.gui = self._add_gui()
        self._redraw()

    def _add_frusta(self) -> list:
        _, size = extent(self.scene.xyz)
        handles = []
        for i, cam in enumerate(self.scene.cameras):     # read_cameras refused non-finite cameras
            wxyz, position = camera_pose(cam)
            handles.append(self.server.scene.add_camera_frustum(
                f"/cameras/{i:03d}", fov=frustum_fov(cam), aspect=cam.width / cam.height, scale=0.05 * size,
                thickness=0.002 * size, color=FRUSTUM_COLOUR, image=cam.thumbnail, wxyz=wxyz,
                position=position))
        return handles

    def _add_gui(self):
        gui, scene = self.server.gui, self.scene
        folder = gui.add_folder(f"Scene {scene.name}")
        with folder:
            gui.add_markdown(f"{len(scene.xyz):,} points" + (f" (of {scene.total_points:,})"
                                                              if scene.total_points > len(scene.xyz) else "")
                             + f", {len(scene.cameras)} cameras, {len(scene.instances)} instances")
            for w in scene.warnings:
                gui.add_markdown(f"*{w}*")
            colour = gui.add_dropdown("Colour", list(scene.layers), initial_value=self.colour)
            colour.on_update(lambda _: self._set_colour(colour.value))
            size = gui.add_slider("Point size", min=self.point_size / 10, max=self.point_size * 10,
                                  step=self.point_size / 20, initial_value=self.point_size)
            size.on_update(lambda _: self._set_point_size(size.value))
            cams = gui.add_checkbox("Cameras", True)
            cams.on_update(lambda _: self._set_cameras(cams.value))
            self.controls = {"colour": colour, "point_size": size, "cameras": cams}
            if scene.instances or scene.instance_ids is not None:
                self._add_instance_list()
        return folder

    def _add_instance_list(self) -> None:
        gui, scene = self.server.gui, self.scene
        boxes = {}
        with gui.add_folder(f"Instances ({len(scene.instances)})"):
            row_all, row_none = gui.add_button("Show all"), gui.add_button("Hide all")
            if scene.instance_ids is not None:
                boxes[0] = gui.add_checkbox("no instance (id 0)", True)
            for inst in scene.instances:
                hint = f"views: {', '.join(inst.views) or 'none'}; {inst.points:,} points shown"
                boxes[inst.id] = gui.add_checkbox(instance_caption(inst), True, hint=hint)
        for k, box in boxes.items():
            self.shown[k] = True
            box.on_update(lambda _, k=k, box=box: self._set_shown({k: box.value}))

        def set_all(on: bool) -> None:
            self.batching = True          # assigning a value runs its callback: one redraw, not one per box
            try:
                for box in boxes.values():
                    box.value = on
            finally:
                self.batching = False
            self._set_shown({k: on for k in boxes})

        row_all.on_click(lambda _: set_all(True))
        row_none.on_click(lambda _: set_all(False))
        self.controls.update(instances=boxes, show_all=row_all, hide_all=row_none)

    # -- callbacks
    def _redraw(self) -> None:
        """Re-send the cloud: the shown points changed (instances toggled), so its length did."""
        with self.lock:
            keep = visible_mask(self.scene.instance_ids, self.shown, len(self.points_viser))
            if self.cloud is not None:
                self.cloud.remove()
                self.cloud = None
            if keep.any():
                self.cloud = self.server.scene.add_point_cloud(
                    "/points", self.points_viser[keep], self.scene.layers[self.colour][keep],
                    point_size=self.point_size, point_shape="square", precision="float32",
                    point_shading="flat")   # flat: a categorical colour stays that colour on screen
            self.keep = keep

    def _set_colour(self, name: str) -> None:
        self.colour = name
        with self.lock:
            if self.cloud is not None:
                self.cloud.colors = self.scene.layers[name][self.keep]

    def _set_point_size(self, value: float) -> None:
        self.point_size = float(value)
        with self.lock:
            if self.cloud is not None:
                self.cloud.point_size = self.point_size

    def _set_cameras(self, on: bool) -> None:
        for h in self.frusta:
            h.visible = on

    def _set_shown(self, changes: dict[int, bool]) -> None:
        self.shown.update(changes)
        if not self.batching:
            self._redraw()

    def remove(self) -> None:
        with self.lock:
            for h in [*self.frusta, *([self.cloud] if self.cloud is not None else [])]:
                h.remove()
            self.gui.remove()


def frame_view(server, scene: Scene, clients: bool) -> None:
    """Point the initial camera (and, when switching scenes, every open browser's) at the cloud."""
    position, look_at = initial_view(scene.xyz)
    server.initial_camera.position, server.initial_camera.look_at = position, look_at
    if clients:
        for client in server.get_clients().values():
            client.camera.position, client.camera.look_at = position, look_at


# ---------------------------------------------------------------------------------------------- access
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
FORBIDDEN = ("Forbidden: iggt view serves only the URL it printed (with its token), and only to pages of its "
             "own origin.\n")


def _address(host: str) -> str:
    """An address as compared in Origin checks: an IP in its short form (IPv4-mapped IPv6 as IPv4), a name
    lower-cased."""
    bare = host.strip("[]").split("%")[0]
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return bare.lower()
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class AccessGate:
    """The token and Origin check in front of viser's request handling (module docstring, Access): wraps the
    ``process_request`` that viser gives the websockets server, which runs first for every HTTP request and
    every WebSocket upgrade, and answers 403 unless the request may have the scene."""

    def __init__(self, host: str) -> None:
        self.token = secrets.token_urlsafe(32)
        self.host = host
        self.hooked = 0                # websockets servers started through :meth:`hook`

    def allowed(self, path: str, origins: list[str], local) -> bool:
        return self.has_token(path) and len(origins) <= 1 and all(self.own_origin(o, local) for o in origins)

    def has_token(self, path: str) -> bool:
        """The path is ``/TOKEN`` or ``/TOKEN/...`` (a query after it is fine)."""
        parts = path.partition("?")[0].split("/", 2)
        return len(parts) > 1 and secrets.compare_digest(parts[1].encode("utf-8", "surrogateescape"),
                                                         self.token.encode("ascii"))

    def own_origin(self, origin: str, local) -> bool:
        """``origin`` is http://HOST:PORT for the address and port this request came in on (or --host; or a
        loopback name when that address is a loopback one)."""
        try:
            url = urlsplit(origin)
            port = url.port or 80
            here, here_port = _address(str(local[0])), int(local[1])
        except (ValueError, TypeError, IndexError):
            return False
        if url.scheme != "http" or not url.hostname or url.username or url.path or url.query or url.fragment:
            return False
        hosts = {here} | ({_address(self.host)} if self.host not in WILDCARD_HOSTS else set())
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(here).is_loopback:
                hosts |= LOOPBACK_NAMES
        return port == here_port and _address(url.hostname) in hosts

    def wrap(self, inner):
        """``inner`` (viser's page server, or None) behind the check; it sees the path without the token."""
        async def process_request(connection, request):
            if not self.allowed(request.path, request.headers.get_all("Origin"), connection.local_address):
                return connection.respond(http.HTTPStatus.FORBIDDEN, FORBIDDEN)
            if inner is None:
                return None
            head, sep, query = request.path.partition("?")
            parts = head.split("/", 2)
            response = inner(connection, dataclasses.replace(request, path="/" + (parts[2] if len(parts) > 2 else "")
                                                             + sep + query))
            if inspect.isawaitable(response):
                response = await response
            if response is not None:
                response.headers["Referrer-Policy"] = "no-referrer"   # the token is in the page's URL
            return response

        return process_request

    @contextlib.contextmanager
    def hook(self):
        """While inside: every ``websockets.asyncio.server.serve`` (viser starts its server so, from the thread
        it starts and waits for) gets :meth:`wrap` around its ``process_request``."""
        import websockets.asyncio.server as ws_server

        original = ws_server.serve

        def serve(*args, process_request=None, **kwargs):
            self.hooked += 1
            return original(*args, process_request=self.wrap(process_request), **kwargs)

        ws_server.serve = serve
        try:
            yield
        finally:
            ws_server.serve = original

    def refuses_strangers(self, host: str, port: int) -> bool:
        """Whether a GET of ``/`` without the token gets 403 from the server now listening: the hook is live."""
        target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        conn = http.client.HTTPConnection(target, port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status == http.HTTPStatus.FORBIDDEN and response.read() == FORBIDDEN.encode()
        except OSError:
            return False
        finally:
            conn.close()


class Viewer:
    """The viser server with one scene shown (``view``) and, for several scenes, a selector switching them."""

    def __init__(self, scenes: list[Path], first: Scene, host: str = "127.0.0.1", port: int = 8080,
                 colour: str = "rgb", max_points: int = DEFAULT_MAX_POINTS) -> None:
        import viser

        self.host, self.gate = host, AccessGate(host)
        try:
            hook = self.gate.hook()
        except ImportError as err:
            raise ViewerError(f"viser {viser.__version__}: no websockets.asyncio.server to hook the token and Origin "
                              f"check into ({err}); not serving without them") from err
        with hook, contextlib.redirect_stdout(io.StringIO()):   # viser's banner; `iggt view` prints the URL
            self.server = viser.ViserServer(host=host, port=port, label="iggt view", verbose=False)
        if not (self.gate.hooked and self.gate.refuses_strangers(host, self.port)):
            self.server.stop()          # a viser that serves otherwise than the gate expects: say so, serve nothing
            raise ViewerError(f"viser {viser.__version__}: its server no longer goes through the hook that checks "
                              "the token and Origin of every request (websockets.asyncio.server.serve's "
                              "process_request; tested with viser 1.1.1); not serving without them")
        # Fog fades far points towards white: the colours here are data (instance ids), so they stay as they are.
        self.server.scene.configure_fog(0.0, 1.0, enabled=False)
        # No share button: it publishes the scene through viser's relay; this viewer stays on the host given.
        self.server.gui.configure_theme(show_share_button=False)
        self.scenes, self.max_points = scenes, max_points
        self.selector = self.notice = None
        if len(scenes) > 1:
            self.selector = self.server.gui.add_dropdown("Scene", [s.name for s in scenes], initial_value=first.name)
            self.notice = self.server.gui.add_markdown("")
            self.selector.on_update(lambda _: self.switch(self.selector.value))
        self.view = SceneView(self.server, first, colour)
        frame_view(self.server, first, clients=False)

    @property
    def port(self) -> int:
        """The port bound: viser moves to the next free one if the one asked for is taken."""
        return self.server.get_port()

    @property
    def url(self) -> str:
        """The URL to open, with the token: the only one the server answers."""
        shown = "localhost" if self.host in WILDCARD_HOSTS else f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/{self.gate.token}/"

    def switch(self, name: str) -> None:
        """Show scene ``name`` instead (loaded now: only one scene's points are held at a time)."""
        folder = next(s for s in self.scenes if s.name == name)
        try:
            scene = load_scene(folder, self.max_points)
        except ViewerError as err:       # a broken scene among many: say so in the panel, keep the current one
            if self.notice is None:
                raise
            self.notice.content = f"**{err}**"
            return
        if self.notice is not None:
            self.notice.content = ""
        colour = self.view.colour
        self.view.remove()
        self.view = SceneView(self.server, scene, colour)
        frame_view(self.server, scene, clients=True)

    def stop(self) -> None:
        self.server.stop()
