"""``iggt view OUT_DIR``: a prediction folder of ``iggt predict`` in the browser, on viser (extra ``[viewer]``).

What it reads from a scene folder: ``points.ply`` (positions, RGB, one int per vertex attribute such as
``instance``, confidence), the other colour layers (every ``*.glb`` but ``scene.glb``: only their point colours,
which follow the PLY's point order), ``cameras.json`` with the photos it names, ``masks/instances.json`` (score,
label and views of each instance) and ``manifest.json``. A folder of scene folders (``iggt predict --config ...
--data ...``) gets a scene selector.

Frames: the files are in the OpenCV world frame of camera 0 (x right, y down, z forward); viser's world is
+z up. At this boundary, and only here, every position and camera pose is rotated by :data:`OPENCV_TO_VISER`
(x -> x, z -> y, y -> -z): camera 0 looks along viser's +y with viser's +z up. It is a rotation (nothing is
mirrored), and camera frusta keep OpenCV's camera axes, which is what viser's frustum expects.

The server listens on 127.0.0.1 unless ``--host`` says otherwise: viser has no authentication, so anyone who
can reach the port sees the scene.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iggt_lightning.inference.export import camera_is_valid, instance_colours, rotation_to_quaternion

DEFAULT_MAX_POINTS = 500_000
REQUIRED = ("points.ply", "cameras.json")
# OpenCV world -> viser world (+z up): rows are viser's x, y, z in OpenCV coordinates.
OPENCV_TO_VISER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FRUSTUM_COLOUR = (90, 90, 90)   # neutral: an instance colour on a frustum would read as an instance
THUMBNAIL_SIDE = 256            # photos go to every browser over the websocket; a frustum is small on screen
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
    image: Path | None = None


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

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def instance_ids(self) -> np.ndarray | None:
        return self.attributes.get("instance")


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
    except (ValueError, IndexError, TypeError) as err:
        raise ViewerError(f"{path}: malformed PLY header ({err})") from err
    if size - body < count * dtype.itemsize:
        raise ViewerError(f"{path}: truncated: the header announces {count} vertices of {dtype.itemsize} bytes, "
                          f"the file holds {size - body} bytes after it")
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
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list" or words[1] not in PLY_TYPES:
                raise ViewerError(f"{path}: vertex property {' '.join(words[1:])!r}; expected scalar properties")
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ViewerError(f"{path}: not readable as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ViewerError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_cameras(folder: Path) -> list[Camera]:
    path = folder / "cameras.json"
    cams = []
    for i, v in enumerate(_read_json(path).get("views", [])):
        try:
            E, K = np.asarray(v["extrinsic"], dtype=np.float64), np.asarray(v["intrinsic"], dtype=np.float64)
            if E.shape != (3, 4) or K.shape != (3, 3):
                raise ValueError(f"extrinsic {E.shape}, intrinsic {K.shape}")
            if int(v["width"]) <= 0 or int(v["height"]) <= 0:
                raise ValueError(f"size {v['width']}x{v['height']}")
            image = folder / v["image_path"] if v.get("image_path") else None
            cams.append(Camera(str(v.get("file_name", i)), int(v["width"]), int(v["height"]), E, K, image))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ViewerError(f"{path}: view {i}: expected a positive width and height, a 3x4 extrinsic and a "
                              f"3x3 intrinsic ({err})") from err
    return cams


def read_instances(folder: Path, manifest: dict, ids: np.ndarray | None) -> list[Instance]:
    """One entry per instance: from ``masks/instances.json`` (score, label, the views it appears in), plus the
    ids only the cloud has (an instance whose mask vanished at photo resolution)."""
    found: dict[int, Instance] = {}
    coco_path = folder / "masks" / "instances.json"
    if coco_path.is_file():
        coco = _read_json(coco_path)
        try:
            names = {im["id"]: im.get("file_name", str(im["id"])) for im in coco.get("images", [])}
            for ann in sorted(coco.get("annotations", []), key=lambda a: a.get("image_id", 0)):
                k = int(ann.get("track_id", 0))
                if k <= 0:
                    continue
                score = ann.get("score")
                inst = found.setdefault(k, Instance(k, None if score is None else float(score), ann.get("label"), []))
                view = names.get(ann.get("image_id"), str(ann.get("image_id")))
                if view not in inst.views:
                    inst.views.append(view)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ViewerError(f"{coco_path}: expected COCO images and annotations with track_id ({err})") from err
    labels = manifest.get("labels") or []
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


def load_scene(folder: Path, max_points: int = DEFAULT_MAX_POINTS) -> Scene:
    """Everything the viewer shows of one scene folder, subsampled to ``max_points`` (0: all)."""
    folder = Path(folder)
    check_scene_folder(folder)
    vertex = read_ply(folder / "points.ply")
    keep = subsample(len(vertex), max_points)
    v = vertex if keep is None else vertex[keep]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    finite = np.isfinite(xyz).all(1)
    if not finite.all():              # our writer never keeps such points; a hand-edited file might
        raise ViewerError(f"{folder / 'points.ply'}: {int((~finite).sum())} non-finite vertices")
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
    layers.update(read_colour_layers(folder, len(vertex), keep, warnings))
    ids = attributes.get("instance")
    if ids is not None and "instances" not in layers:   # the writer's palette, so no GLB (or trimesh) is needed
        layers["instances"] = instance_colours(int(max(ids.max(initial=0), 0)))[np.clip(ids, 0, None)]
    manifest = _read_json(folder / "manifest.json") if (folder / "manifest.json").is_file() else {}
    return Scene(folder, xyz, layers, attributes, len(vertex), read_cameras(folder),
                 read_instances(folder, manifest, ids), warnings)


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


def thumbnail(path: Path | None) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            return np.asarray(im)
    except OSError:
        return None


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
        for i, cam in enumerate(self.scene.cameras):
            if not camera_is_valid(cam.extrinsic, cam.intrinsic):
                continue
            wxyz, position = camera_pose(cam)
            handles.append(self.server.scene.add_camera_frustum(
                f"/cameras/{i:03d}", fov=frustum_fov(cam), aspect=cam.width / cam.height, scale=0.05 * size,
                thickness=0.002 * size, color=FRUSTUM_COLOUR, image=thumbnail(cam.image), wxyz=wxyz,
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


class Viewer:
    """The viser server with one scene shown (``view``) and, for several scenes, a selector switching them."""

    def __init__(self, scenes: list[Path], first: Scene, host: str = "127.0.0.1", port: int = 8080,
                 colour: str = "rgb", max_points: int = DEFAULT_MAX_POINTS) -> None:
        import viser

        with contextlib.redirect_stdout(io.StringIO()):   # viser's banner; `iggt view` prints the URL itself
            self.server = viser.ViserServer(host=host, port=port, label="iggt view", verbose=False)
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
