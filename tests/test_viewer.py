"""`iggt view`: reading a prediction folder and refusing bad ones (no browser), then the viewer served on a free
port and screenshotted in headless Chromium (WebGL on SwiftShader), driven over the DevTools protocol."""
import base64
import importlib.util
import inspect
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

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
