"""``iggt view OUT_DIR``: a prediction folder of ``iggt predict`` in the browser, on viser (extra ``[viewer]``).

What it reads from a scene folder (:mod:`iggt_lightning.prediction_files` reads it): ``points.ply`` (positions, RGB, one int per vertex attribute, confidence),
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
import math
import secrets
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from iggt_lightning.inference.export import rotation_to_quaternion
# the folder is read there; these names stay importable from here (iggt view and its users)
from iggt_lightning.prediction_files import (DEFAULT_MAX_POINTS, Camera, Instance, Scene, ViewerError,  # noqa: F401
                                             find_scenes, instance_layer, load_scene, pick_scene, read_cameras,
                                             read_ply, subsample)

OPENCV_TO_VISER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
FRUSTUM_COLOUR = (90, 90, 90)   # neutral: an instance colour on a frustum would read as an instance


def check_host(host: str) -> None:
    """Refuse an address this machine cannot listen on now (viser would retry ports on it forever)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind) as s:
            s.bind(address)
    except OSError as err:
        raise ViewerError(f"--host {host}: cannot listen on it ({err.strerror or err})") from err


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
        self.batching = self.rebuild = False
        self.show_boxes, self.box_lines = True, None
        self.lock = threading.RLock()   # viser runs callbacks on a thread pool; an edit redraws while holding it
        self.cloud = None
        self.keep = np.ones(len(self.points_viser), bool)
        self.frusta = self._add_frusta()
        self.steering = None
        if scene.instance_ids is not None:       # clicks select, merge, split (iggt_lightning.viewer_steering)
            from .viewer_steering import InstanceSteering

            try:
                self.steering = InstanceSteering(self)
            except ViewerError as err:          # e.g. ids in the cloud but no instances file: shown, not editable
                scene.warnings.append(f"instances cannot be edited here: {err}")
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
            if scene.boxes:
                boxes = gui.add_checkbox("Boxes", self.show_boxes, hint="the instances' oriented 3D boxes "
                                         "(instances3d.json)")
                boxes.on_update(lambda _: self._set_boxes(boxes.value))
                self.controls["boxes"] = boxes
            if scene.instances or scene.instance_ids is not None:
                self._add_instance_list()
            if self.steering is not None:
                self.steering.add_gui()
        return folder

    def rebuild_panel(self) -> None:
        """The scene's panel made again (the instance list changed with an edit)."""
        with self.lock:
            self.gui.remove()
            self.gui = self._add_gui()
            self.rebuild = False

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
                    "/points", self.points_viser[keep], self._colours(self.colour)[keep],
                    point_size=self.point_size, point_shape="square", precision="float32",
                    point_shading="flat")   # flat: a categorical colour stays that colour on screen
            self.keep = keep
            self._draw_boxes()

    def _draw_boxes(self) -> None:
        """The shown instances' boxes as one set of line segments in their instance colours."""
        if self.box_lines is not None:
            self.box_lines.remove()
            self.box_lines = None
        boxes = {k: b for k, b in self.scene.boxes.items() if self.shown.get(k, True)}
        if not (self.show_boxes and boxes):
            return
        from iggt_lightning.inference.export import instance_colours
        from iggt_lightning.inference.instances3d import box_edges

        palette = instance_colours(max(boxes))
        edges = np.concatenate([box_edges(b) for b in boxes.values()])
        colours = np.repeat(np.stack([palette[k] for k in boxes]), 12, axis=0)
        self.box_lines = self.server.scene.add_line_segments(
            "/boxes", to_viser(edges).astype(np.float32), np.repeat(colours[:, None], 2, axis=1),
            thickness=2.0, thickness_units="screen")

    def _set_boxes(self, on: bool) -> None:
        self.show_boxes = on
        with self.lock:
            self._draw_boxes()

    def _colours(self, name: str) -> np.ndarray:
        """A colour layer as shown: the selected instances stand out when something is selected."""
        colours = self.scene.layers[name]
        return colours if self.steering is None else self.steering.highlight(colours)

    def _set_colour(self, name: str) -> None:
        self.colour = name
        with self.lock:
            if self.cloud is not None:
                self.cloud.colors = self._colours(name)[self.keep]

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
            if self.steering is not None:
                self.steering.remove()
            for h in [*self.frusta, *([self.cloud] if self.cloud is not None else []),
                      *([self.box_lines] if self.box_lines is not None else [])]:
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
