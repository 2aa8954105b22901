"""`iggt view`: reading a prediction folder and refusing bad and hostile ones (no browser); the server answering
only the tokenised URL it prints, to its own origin (raw HTTP and WebSocket clients); then the viewer served on a
free port and screenshotted in headless Chromium (WebGL on SwiftShader), driven over the DevTools protocol."""
import base64
import contextlib
import http.client
import importlib.util
import inspect
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from iggt_lightning import viewer
from iggt_lightning.cli import main
from iggt_lightning.inference.export import instance_colours, write_ply
from tests.test_predict import assets, predict  # noqa: F401  (the tiny checkpoint + synthetic photos fixture)

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)
HAS_VISER = importlib.util.find_spec("viser") is not None


@pytest.fixture(scope="module")
def prediction(assets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("view") / "scene_a"
    assert predict(assets, out) == 0
    return out


# ---------------------------------------------------------------------------------------------- no browser
def test_ply_reads_back_what_the_writer_wrote(tmp_path):
    rng = np.random.default_rng(0)
    xyz, rgb = rng.normal(size=(50, 3)).astype(np.float32), rng.integers(0, 256, (50, 3)).astype(np.uint8)
    ids, conf = rng.integers(0, 4, 50), rng.random(50).astype(np.float32)
    write_ply(tmp_path / "p.ply", xyz, rgb, conf, {"instance": ids})
    v = viewer.read_ply(tmp_path / "p.ply")
    assert v.dtype.names == ("x", "y", "z", "red", "green", "blue", "instance", "confidence")
    assert np.array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz) and np.array_equal(v["instance"], ids)
    assert np.array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)
    (tmp_path / "cut.ply").write_bytes((tmp_path / "p.ply").read_bytes()[:-7])
    with pytest.raises(viewer.ViewerError, match="truncated"):
        viewer.read_ply(tmp_path / "cut.ply")
    (tmp_path / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(viewer.ViewerError, match="binary PLY"):
        viewer.read_ply(tmp_path / "a.ply")
    (tmp_path / "m.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex many\nend_header\n")
    with pytest.raises(viewer.ViewerError, match="malformed PLY header"):
        viewer.read_ply(tmp_path / "m.ply")


def test_load_scene_reads_every_layer_camera_and_instance(prediction):
    manifest = json.loads((prediction / "manifest.json").read_text())
    coco = json.loads((prediction / "masks" / "instances.json").read_text())
    scene = viewer.load_scene(prediction)
    n, k = manifest["points"], manifest["instances"]
    assert scene.xyz.shape == (n, 3) and scene.total_points == n and not scene.warnings
    assert list(scene.layers)[0] == "rgb" and {"instances", "features"} <= set(scene.layers)
    ids = scene.instance_ids
    assert ids.shape == (n,) and ids.max() == k
    assert np.array_equal(scene.layers["instances"], instance_colours(k)[ids])   # GLB colours in PLY order
    assert [c.name for c in scene.cameras] == ["view_0.png", "view_1.png", "view_2.png"]
    assert all(c.image.is_file() for c in scene.cameras)
    assert [i.id for i in scene.instances] == list(range(1, k + 1))
    for inst in scene.instances:
        anns = [a for a in coco["annotations"] if a["track_id"] == inst.id]
        assert inst.views == [coco["images"][a["image_id"] - 1]["file_name"] for a in anns]
        assert inst.score == anns[0]["score"] and inst.points == int((ids == inst.id).sum())
    # subsampling: deterministic, and every layer stays aligned with the positions
    a, b = viewer.load_scene(prediction, max_points=1000), viewer.load_scene(prediction, max_points=1000)
    keep = viewer.subsample(n, 1000)
    assert len(a.xyz) == 1000 and a.total_points == n and np.array_equal(a.xyz, b.xyz)
    assert np.array_equal(a.xyz, scene.xyz[keep])
    for name, colours in scene.layers.items():
        assert np.array_equal(a.layers[name], colours[keep]), name


def test_opencv_world_to_viser_frame():
    trimesh = pytest.importorskip("trimesh")
    cam = viewer.Camera("c", 40, 30, np.eye(3, 4), np.array([[50.0, 0, 20], [0, 50, 15], [0, 0, 1]]))
    wxyz, position = viewer.camera_pose(cam)
    R = trimesh.transformations.quaternion_matrix(wxyz)[:3, :3]
    assert np.allclose(position, 0)
    assert np.allclose(R @ [0, 0, 1], [0, 1, 0]) and np.allclose(R @ [0, -1, 0], [0, 0, 1])  # forward +y, up +z
    rot = trimesh.transformations.random_rotation_matrix(np.random.default_rng(1).random(3))[:3, :3]
    t = np.array([0.3, -1.0, 2.0])
    cam.extrinsic = np.concatenate([rot, t[:, None]], 1)
    wxyz, position = viewer.camera_pose(cam)
    assert np.allclose(position, viewer.OPENCV_TO_VISER @ (-rot.T @ t))
    assert np.allclose(trimesh.transformations.quaternion_matrix(wxyz)[:3, :3], viewer.OPENCV_TO_VISER @ rot.T)
    assert np.isclose(np.linalg.det(viewer.OPENCV_TO_VISER), 1.0)                             # no mirror


def test_visible_mask_hides_unchecked_instances():
    ids = np.array([0, 1, 2, 2, 3])
    assert viewer.visible_mask(ids, {1: False, 3: False}, 5).tolist() == [True, False, True, True, False]
    assert viewer.visible_mask(ids, {0: False}, 5).tolist() == [False, True, True, True, True]
    assert viewer.visible_mask(None, {1: False}, 3).all()


def test_scene_folders_under_a_parent(prediction, tmp_path):
    for name in ("b", "a", ".b.partial-1-x"):
        shutil.copytree(prediction, tmp_path / name)
    (tmp_path / "notes").mkdir()
    assert viewer.find_scenes(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert viewer.pick_scene(viewer.find_scenes(tmp_path), "b") == tmp_path / "b"
    assert viewer.find_scenes(prediction) == [prediction]


def test_bad_folders_are_refused_in_one_line(prediction, tmp_path, capsys):
    def refused(*args) -> str:
        assert main(["view", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("iggt view: ") and err.count("\n") == 1, err
        return err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = refused(empty)
    assert str(empty) in err and "points.ply" in err and "cameras.json" in err
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(prediction / "points.ply", half)
    err = refused(half)
    assert str(half) in err and "no cameras.json" in err
    assert "no such folder" in refused(tmp_path / "missing")
    assert "not a folder" in refused(prediction / "points.ply")
    bad = tmp_path / "bad"
    shutil.copytree(prediction, bad)
    (bad / "points.ply").write_bytes(b"not a ply")
    assert f"{bad / 'points.ply'}: not a PLY" in refused(bad)
    err = refused(prediction, "--colour", "depth")
    assert "rgb" in err and "instances" in err and "features" in err
    parent = tmp_path / "parent"
    shutil.copytree(prediction, parent / "s1")
    assert "scenes: s1" in refused(parent, "--scene", "s2")


# ---------------------------------------------------------------------------------------------- hostile folders
def edit_json(rel: str, change):
    def apply(folder: Path) -> None:
        path = folder / rel
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))          # NaN / Infinity become the tokens a hand-edited file may hold
    return apply


def nested(rel: str, depth: int = 100_000):
    return lambda folder: (folder / rel).write_text("[" * depth + "]" * depth)


def ply_instance(value: int):
    """Point 0's instance id set to ``value`` (the PLY's int property)."""
    def apply(folder: Path) -> None:
        path = folder / "points.ply"
        raw = path.read_bytes()
        body = raw.index(b"end_header\n") + len(b"end_header\n")
        vertex = np.frombuffer(raw[body:], viewer.read_ply(path).dtype).copy()
        vertex["instance"][0] = value
        path.write_bytes(raw[:body] + vertex.tobytes())
    return apply


def ply_count(count):
    """The header's vertex count replaced by ``count(true count)``."""
    def apply(folder: Path) -> None:
        path = folder / "points.ply"
        n = len(viewer.read_ply(path))
        raw = path.read_bytes()
        path.write_bytes(raw.replace(f"element vertex {n}\n".encode(), f"element vertex {count(n)}\n".encode(), 1))
    return apply


def linked_outside(rel: str):
    """``rel`` replaced by a link to a copy of it beside the scene folder (a file that exists, outside)."""
    def apply(folder: Path) -> None:
        outside = folder.parent / f"outside-{Path(rel).name}"
        shutil.copy(folder / rel, outside)
        (folder / rel).unlink()
        (folder / rel).symlink_to(outside)
    return apply


def photo_outside(absolute: bool):
    """views[0].image_path naming a real photo beside the scene folder, by ``../`` or by absolute path."""
    def apply(folder: Path) -> None:
        outside = folder.parent / "outside.png"
        shutil.copy(folder / "images" / "view_0.png", outside)
        value = str(outside) if absolute else f"../{outside.name}"
        edit_json("cameras.json", lambda d: d["views"][0].update(image_path=value))(folder)
    return apply


def set_view(key, value):
    return edit_json("cameras.json", lambda d: d["views"][0].update({key: value}))


def set_annotation(key, value):
    return edit_json("masks/instances.json", lambda d: d["annotations"][0].update({key: value}))


def set_matrix(key, row, col, value):
    return edit_json("cameras.json", lambda d: d["views"][0][key][row].__setitem__(col, value))


# id: (how the real prediction folder is made hostile, the file named, the field named)
HOSTILE = {
    "image_path ../": (photo_outside(False), "cameras.json", "views[0].image_path"),
    "image_path absolute": (photo_outside(True), "cameras.json", "views[0].image_path"),
    "photo linked outside": (linked_outside("images/view_0.png"), "cameras.json", "views[0].image_path"),
    "points.ply linked outside": (linked_outside("points.ply"), "points.ply", "leads outside"),
    "instances.json linked outside": (linked_outside("masks/instances.json"), "masks/instances.json",
                                      "leads outside"),
    "image_path a number": (set_view("image_path", 5), "cameras.json", "views[0].image_path"),
    "ply instance 2e9": (ply_instance(2_000_000_000), "points.ply", "property instance"),
    "ply instance negative": (ply_instance(-3), "points.ply", "property instance"),
    "track_id 2e9": (set_annotation("track_id", 2_000_000_000), "masks/instances.json", "annotations[0].track_id"),
    "track_id negative": (set_annotation("track_id", -1), "masks/instances.json", "annotations[0].track_id"),
    "track_id a string": (set_annotation("track_id", "1"), "masks/instances.json", "annotations[0].track_id"),
    "element vertex -5": (ply_count(lambda n: -5), "points.ply", "element vertex -5"),
    "vertex count past the file": (ply_count(lambda n: n + 1), "points.ply", "element vertex"),
    "vertex count 1e15": (ply_count(lambda n: 10 ** 15), "points.ply", "element vertex"),
    "cameras.json nested 1e5 deep": (nested("cameras.json"), "cameras.json", "nested too deeply"),
    "instances.json nested 1e5 deep": (nested("masks/instances.json"), "masks/instances.json", "nested too deeply"),
    "manifest.json nested 1e5 deep": (nested("manifest.json"), "manifest.json", "nested too deeply"),
    "width a string": (set_view("width", "wide"), "cameras.json", "views[0].width"),
    "height a float": (set_view("height", 98.5), "cameras.json", "views[0].height"),
    "views an object": (edit_json("cameras.json", lambda d: d.update(views={"0": {}})), "cameras.json", "views"),
    "a view a list": (edit_json("cameras.json", lambda d: d["views"].__setitem__(0, [1, 2])), "cameras.json",
                      "views[0]"),
    "extrinsic NaN": (set_matrix("extrinsic", 0, 0, float("nan")), "cameras.json", "views[0].extrinsic[0][0]"),
    "intrinsic Infinity": (set_matrix("intrinsic", 1, 1, float("inf")), "cameras.json",
                           "views[0].intrinsic[1][1]"),
    "intrinsic a string": (set_matrix("intrinsic", 0, 0, "50"), "cameras.json", "views[0].intrinsic[0][0]"),
    "extrinsic 2x4": (set_view("extrinsic", [[1, 0, 0, 0], [0, 1, 0, 0]]), "cameras.json", "views[0].extrinsic"),
    "extrinsic not a rotation": (set_view("extrinsic", [[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0]]), "cameras.json",
                                 "views[0].extrinsic"),
    "focal length negative": (set_matrix("intrinsic", 0, 0, -50.0), "cameras.json", "views[0].intrinsic"),
    "score a string": (set_annotation("score", "high"), "masks/instances.json", "annotations[0].score"),
    "label a list": (set_annotation("label", ["chair"]), "masks/instances.json", "annotations[0].label"),
    "image_id unknown": (set_annotation("image_id", 99), "masks/instances.json", "annotations[0].image_id"),
    "annotations an object": (edit_json("masks/instances.json", lambda d: d.update(annotations={"a": 1})),
                              "masks/instances.json", "annotations"),
    "an image a list": (edit_json("masks/instances.json", lambda d: d["images"].__setitem__(0, [1])),
                        "masks/instances.json", "images[0]"),
    "labels a number": (edit_json("manifest.json", lambda d: d.update(labels=5)), "manifest.json", "labels"),
    "a label an object": (edit_json("manifest.json", lambda d: d.update(labels=[{"a": 1}])), "manifest.json",
                          "labels[0]"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_folders_are_refused_in_one_line(case, prediction, tmp_path, capsys, monkeypatch):
    make_hostile, file, field = HOSTILE[case]
    folder = tmp_path / "scene"
    shutil.copytree(prediction, folder, symlinks=True)
    make_hostile(folder)

    def served(*args, **kwargs):
        raise AssertionError(f"{case}: the viewer started on a hostile folder")

    monkeypatch.setattr(viewer, "Viewer", served)      # `iggt view` imports it when it gets that far
    rc = main(["view", str(folder), "--port", "0"])
    out, err = capsys.readouterr()
    assert rc == 2 and not out, (rc, out, err)
    assert err.startswith("iggt view: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{folder / file}:" in err and field in err, err


@pytest.mark.skipif(not HAS_VISER, reason="viser is not installed (pip install 'iggt-lightning[viewer]')")
def test_controls_change_what_is_sent(prediction, tmp_path):
    for name in ("a", "b"):
        shutil.copytree(prediction, tmp_path / name)
    (tmp_path / "b" / "points.ply").write_bytes(b"broken")
    scenes = viewer.find_scenes(tmp_path)
    v = viewer.Viewer(scenes, viewer.load_scene(scenes[0]), port=0, colour="instances")
    try:
        view, layers = v.view, v.view.scene.layers
        assert v.port > 0 and np.array_equal(view.cloud.colors, layers["instances"])
        view.controls["colour"].value = "rgb"
        assert np.array_equal(view.cloud.colors, layers["rgb"])
        ids = view.scene.instance_ids
        view.controls["instances"][1].value = False                   # instance 1 hidden
        kept = ids != 1
        assert view.cloud is None if not kept.any() else np.array_equal(view.cloud.colors, layers["rgb"][kept])
        view.controls["show_all"].value = True                        # a click
        assert len(view.cloud.points) == len(ids) and view.controls["instances"][1].value
        view.controls["point_size"].value = view.point_size * 2
        assert view.cloud.point_size == view.point_size
        view.controls["cameras"].value = False
        assert len(view.frusta) == 3 and not any(f.visible for f in view.frusta)
        v.selector.value = "b"                                         # broken: said in the panel, a stays
        assert v.view is view and "not a PLY" in v.notice.content
        shutil.copy(tmp_path / "a" / "points.ply", tmp_path / "b" / "points.ply")
        v.selector.value = "a"
        v.selector.value = "b"
        assert v.view.scene.name == "b" and v.view.colour == "rgb" and v.notice.content == ""
    finally:
        v.stop()


# ---------------------------------------------------------------------------------------------- the browser
class Chromium:
    """Headless Chromium driven over the DevTools protocol. WebGL in headless needs SwiftShader (a CPU GL)
    named explicitly: recent Chromium no longer falls back to it on its own."""

    FLAGS = ("--headless=new", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-first-run",
             "--no-default-browser-check", "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1200,800")

    def __init__(self, profile: Path) -> None:
        sandbox = ("--no-sandbox",) if os.geteuid() == 0 else ()      # Chromium refuses root with a sandbox
        self.log = open(profile.parent / "chromium.log", "w")
        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, *sandbox, "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            assert self.proc.poll() is None and time.monotonic() < deadline, "Chromium did not start: " + \
                (profile.parent / "chromium.log").read_text()[-2000:]
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        local = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never through a proxy
        pages = json.load(local.open(f"http://127.0.0.1:{port}/json/list", timeout=10))
        from websockets.sync.client import connect

        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        no_proxy = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}  # websockets >= 15
        self.ws = connect(url, max_size=None, open_timeout=10, **no_proxy)
        self.calls, self.events = 0, []

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.calls:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply.get("method"))

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (a screenshot during the navigation has no page to shoot)."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        while "Page.loadEventFired" not in self.events:
            self.events.append(json.loads(self.ws.recv(timeout=60)).get("method"))

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def start_viewer(folder: Path, *args: str) -> tuple[subprocess.Popen, str, "queue.Queue[str]"]:
    proc = subprocess.Popen([sys.executable, "-m", "iggt_lightning", "view", str(folder), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, f"iggt view exited with {proc.returncode}: {''.join(seen)}"
            continue
        seen.append(line)
        if line.startswith("iggt view: ") and "http://" in line:
            return proc, line.split(" at ", 1)[1].split()[0], lines
    proc.kill()
    raise AssertionError(f"iggt view printed no URL in 60 s: {''.join(seen)}")


def stop_viewer(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)                   # handled like Ctrl-C: a clean stop
    return proc.wait(30)


def ws_attempt(url: str, origin: str | None, listen: float = 2.0) -> tuple[int, int, bytes]:
    """Open the WebSocket at ``url`` as viser's page does (its subprotocol), with ``origin`` as the Origin header,
    and keep every byte the server sends for ``listen`` seconds or until it closes: (HTTP status, WebSocket
    messages, the bytes). websockets' own protocol (sans I/O) over a plain socket, so nothing is hidden."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    import viser

    protocol = ClientProtocol(parse_uri(url), origin=origin, subprotocols=[f"viser-v{viser.__version__}"],
                              max_size=None)
    protocol.send_request(protocol.connect())
    received = bytearray()
    split = urlsplit(url)
    with socket.create_connection((split.hostname, split.port), timeout=10) as sock:
        for chunk in protocol.data_to_send():
            sock.sendall(chunk)
        end = time.monotonic() + listen
        with contextlib.suppress(TimeoutError):
            while (left := end - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
                if not chunk:                              # the server closed the connection
                    break
                received += chunk
    protocol.receive_data(bytes(received))
    events = protocol.events_received()
    assert events and isinstance(events[0], Response), bytes(received[:200])
    messages = sum(isinstance(e, Frame) and e.opcode.name in ("BINARY", "TEXT") for e in events[1:])
    return events[0].status_code, messages, bytes(received)


def http_get(port: int, path: str, origin: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)     # no proxy, whatever the environment
    try:
        conn.request("GET", path, headers={"Origin": origin} if origin else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def refused(got: bytes) -> bool:
    """The bytes are one HTTP 403 with the gate's text, and nothing else (no upgrade, no scene message)."""
    return got.startswith(b"HTTP/1.1 403 ") and got.endswith(viewer.FORBIDDEN.encode()) and len(got) < 1000


@pytest.mark.skipif(not HAS_VISER, reason="viser is not installed (pip install 'iggt-lightning[viewer]')")
def test_only_the_printed_url_from_its_own_origin_gets_the_scene(prediction):
    server, url, output = start_viewer(prediction)
    try:
        split = urlsplit(url)
        port, token = split.port, split.path.strip("/")
        assert url == f"http://127.0.0.1:{port}/{token}/" and len(token) >= 43       # 256 bits, base64
        own, page_ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/{token}"  # the page's own socket
        wrong = "A" * len(token)
        # the page and the socket it opens: the scene comes (so the refusals below are not a dead server)
        status, page = http_get(port, split.path)
        assert status == 200 and b"<html" in page
        for origin in (own, f"http://localhost:{port}", None):
            status, messages, got = ws_attempt(page_ws, origin, listen=1.0)
            assert status == 101 and messages > 0 and len(got) > 100_000, (origin, status, messages, len(got))
        # everything else: one 403 and the connection closed, before any scene byte
        for ws, origin in ((page_ws, "https://evil.example"),                  # another site, with the token
                           (page_ws, f"http://127.0.0.1:{port + 1}"),           # another local server's page
                           (page_ws, f"https://127.0.0.1:{port}"),
                           (page_ws, "null"),
                           (f"ws://127.0.0.1:{port}/", own),                     # no token
                           (f"ws://127.0.0.1:{port}/{wrong}", own),              # a wrong token
                           (f"ws://127.0.0.1:{port}/{token[:-1]}", own)):
            status, messages, got = ws_attempt(ws, origin, listen=5.0)
            assert status == 403 and messages == 0 and refused(got), (ws, origin, got[:300])
        for path, origin in (("/", None), (f"/{wrong}/", None), ("/index.html", None),
                             (split.path, "https://evil.example")):
            status, body = http_get(port, path, origin)
            assert status == 403 and body == viewer.FORBIDDEN.encode(), (path, origin, status, body[:200])
    finally:
        rc = stop_viewer(server)
    assert rc == 0, "".join(iter_queue(output))


def test_origin_is_the_servers_own():
    gate = viewer.AccessGate("127.0.0.1")
    here = ("127.0.0.1", 8080)
    for origin in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "http://LOCALHOST:8080"):
        assert gate.own_origin(origin, here), origin
    for origin in ("http://127.0.0.1:8081", "https://127.0.0.1:8080", "http://evil.example:8080", "null", "",
                   "http://127.0.0.1", "http://127.0.0.1:8080/x", "http://user@127.0.0.1:8080",
                   "http://127.0.0.1:99999"):
        assert not gate.own_origin(origin, here), origin
    assert gate.own_origin("http://localhost:8080", ("::ffff:127.0.0.1", 8080))       # IPv4 on a dual-stack socket
    lan = viewer.AccessGate("0.0.0.0")                   # --host 0.0.0.0, reached at the machine's LAN address
    assert lan.own_origin("http://192.168.1.5:8080", ("192.168.1.5", 8080))
    assert not lan.own_origin("http://localhost:8080", ("192.168.1.5", 8080))
    assert not lan.own_origin("http://192.168.1.6:8080", ("192.168.1.5", 8080))
    token = gate.token
    assert gate.has_token(f"/{token}") and gate.has_token(f"/{token}/") and gate.has_token(f"/{token}/?x=1")
    for path in ("/", f"/{token}x/", f"/x/{token}/", f"/?token={token}", "/é/", f"//{token}/"):
        assert not gate.has_token(path), path
    assert viewer.AccessGate("127.0.0.1").token != token


@pytest.mark.skipif(not HAS_VISER, reason="viser is not installed (pip install 'iggt-lightning[viewer]')")
@pytest.mark.parametrize("break_it", ["no hook", "hook without effect"])
def test_a_viser_the_gate_cannot_hold_is_refused(break_it, prediction, monkeypatch):
    """A future viser that starts its server otherwise: the viewer stops with one error and serves nothing."""
    import viser

    if break_it == "no hook":
        monkeypatch.setattr(viewer.AccessGate, "hook", lambda self: contextlib.nullcontext())
    else:
        monkeypatch.setattr(viewer.AccessGate, "wrap", lambda self, inner: inner)
    stopped = []
    real_stop = viser.ViserServer.stop

    def stop(self):
        stopped.append(self.get_port())
        real_stop(self)

    monkeypatch.setattr(viser.ViserServer, "stop", stop)
    with pytest.raises(viewer.ViewerError, match="not serving without them"):
        viewer.Viewer([prediction], viewer.load_scene(prediction, max_points=1000), port=0)
    assert len(stopped) == 1                           # the server it started is gone
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", stopped[0]), timeout=2).close()


def measure(shot: np.ndarray, colours: np.ndarray) -> tuple[float, float]:
    """(share of non-background pixels, share of pixels of one of ``colours``) in the 3D view: left of viser's
    control panel and below its notification corner."""
    h, w, _ = shot.shape
    view = shot[h // 4:, : int(w * 0.65)].reshape(-1, 3).astype(int)
    background = np.array([255, 255, 255])
    drawn = np.abs(view - background).max(1) > 12
    matches = (np.abs(view[:, None, :] - colours[None].astype(int)).max(2) <= 4).any(1)
    return float(drawn.mean()), float(matches.mean())


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.skipif(not HAS_VISER, reason="viser is not installed (pip install 'iggt-lightning[viewer]')")
def test_viewer_shows_the_cloud_in_instance_colours(prediction, tmp_path):
    k = json.loads((prediction / "manifest.json").read_text())["instances"]
    palette = instance_colours(k)[1:]
    server, url, output = start_viewer(prediction, "--colour", "instances")
    (tmp_path / "profile").mkdir()
    browser = None
    try:
        assert url.startswith("http://127.0.0.1:")            # local by default
        browser = Chromium(tmp_path / "profile")
        browser.open(url)
        deadline = time.monotonic() + 60                       # the client loads, connects, then draws
        while True:
            shot = browser.screenshot()
            drawn, instance = measure(shot, palette)
            if (drawn > 0.02 and instance > 0.005) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        Image.fromarray(shot).save(tmp_path / "viewer.png")
        assert drawn > 0.02, f"only {drawn:.1%} of the view is drawn; see {tmp_path / 'viewer.png'}"
        assert instance > 0.005, f"only {instance:.2%} of the view in instance colours; see {tmp_path / 'viewer.png'}"
    finally:
        if browser is not None:
            browser.close()
        server.send_signal(signal.SIGTERM)                     # handled like Ctrl-C: a clean stop
        rc = server.wait(30)
    assert rc == 0, "".join(iter_queue(output))


def iter_queue(q: "queue.Queue[str]"):
    while not q.empty():
        yield q.get()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.skipif(not HAS_VISER, reason="viser is not installed (pip install 'iggt-lightning[viewer]')")
def test_clicks_in_the_browser_select_merge_and_save_a_version(tmp_path):
    """Through the page, as a user does it: click a point, shift-click another instance's, press Merge, press
    Save; the new version holds the merge and the folder shown is unchanged."""
    from iggt_lightning.viewer_steering import pick_point
    from tests.test_instance_edits import _digest, write_edit_prediction

    folder = write_edit_prediction(tmp_path / "made")
    scene = viewer.load_scene(folder)
    v = viewer.Viewer([folder], scene, port=0)
    (tmp_path / "profile").mkdir()
    browser = None
    try:
        browser = Chromium(tmp_path / "profile")
        browser.open(v.url)
        deadline = time.monotonic() + 60
        while not v.server.get_clients() and time.monotonic() < deadline:
            time.sleep(0.2)
        client = next(iter(v.server.get_clients().values()))
        view, steer = v.view, v.view.steering
        cam_pos = viewer.camera_pose(scene.cameras[0])[1]
        scene_ids_before = scene.instance_ids.copy()
        counts = np.bincount(scene.instance_ids)
        a, b = sorted(int(k) for k in np.argsort(-counts) if k and counts[k] >= 100)[:2]   # two sizeable ones

        def canvas_centre() -> tuple[float, float]:
            got = browser.call("Runtime.evaluate", returnByValue=True, expression=(
                "(() => { const r = document.querySelector('canvas').getBoundingClientRect();"
                " return [r.left + r.width / 2, r.top + r.height / 2]; })()"))
            return tuple(got["result"]["value"])

        def click_instance(k: int, modifiers: int = 0, among: np.ndarray | None = None) -> None:
            # a point of k that the ray from camera 0 reaches first (others may stand in front of most of it)
            pts = np.flatnonzero((view.scene.instance_ids == k) & (True if among is None else among))
            pts = pts[np.argsort(np.linalg.norm(view.points_viser[pts] - cam_pos, axis=1))]
            target = next(view.points_viser[i] for i in pts[:400] if view.scene.instance_ids[pick_point(
                cam_pos, view.points_viser[i] - cam_pos, view.points_viser, view.keep, view.point_size)] == k)
            client.camera.position, client.camera.look_at = cam_pos, target     # the point at the centre
            time.sleep(1.0)
            x, y = canvas_centre()
            for kind in ("mousePressed", "mouseReleased"):
                browser.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1,
                             modifiers=modifiers)

        def press(label: str) -> None:
            got = browser.call("Runtime.evaluate", returnByValue=True, expression=(
                f"(() => {{ const b = [...document.querySelectorAll('button')].find(e => e.textContent.trim() === "
                f"{json.dumps(label)}); if (b) b.click(); return !!b; }})()"))
            assert got["result"]["value"], f"no button {label!r} on the page"

        def wait_for(check, what: str) -> None:
            end = time.monotonic() + 30
            while not check():
                assert time.monotonic() < end, (f"{what}: selected {steer.selected}, edits {steer.operations}; "
                                                f"panel: {steer.gui['log'].content}")
                time.sleep(0.2)

        click_instance(a)
        wait_for(lambda: steer.selected == [a], "a click selects the instance under it")
        click_instance(b, modifiers=8)                           # shift
        wait_for(lambda: steer.selected == [a, b], "a shift-click adds an instance")
        press("Merge selected")
        wait_for(lambda: steer.operations == [("merge", [a, b])], "Merge merges the selection")
        # the panel is made again after an edit: press Save on the new one, once the page shows it
        wait_for(lambda: "1 edit(s): merge" in browser.call("Runtime.evaluate", returnByValue=True,
                                                             expression="document.body.innerText")["result"]["value"],
                 "the page shows the edit")
        before = _digest(folder)
        press("Save as new version")
        wait_for(lambda: steer.saved, "Save writes a version")
        out = steer.saved[0]
        assert json.loads((out / "edit.json").read_text())["operations"] == [{"merge": [a, b]}]
        assert _digest(folder) == before
        masks = [np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))]
        assert masks and not any((m == b).any() for m in masks)
        # split the merged instance again: select it where a was, press Split, click where b was
        was_b = scene_ids_before == b
        click_instance(a, among=~was_b)
        wait_for(lambda: steer.selected == [a], "a click selects the merged instance")
        press("Split selected")
        wait_for(lambda: steer.splitting, "Split waits for the second click")
        click_instance(a, among=was_b)
        # (the callback runs on viser's thread: wait until it has finished, the new part selected)
        wait_for(lambda: len(steer.operations) == 2 and steer.operations[1][0] == "split"
                 and steer.selected == [steer.first_new], "the click splits and selects the new part")
        assert steer.operations[1][1] == a
        moved = view.scene.instance_ids == steer.first_new
        assert moved.any() and (moved & was_b).sum() > 0.5 * moved.sum()       # what was b, mostly
    finally:
        if browser is not None:
            browser.close()
        v.stop()

