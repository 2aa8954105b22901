"""The scene files third-party tools read, on a synthetic scene with exact geometry: COLMAP with tracks (pycolmap
reads it; observations reproject under a pixel; the binary model equals the text one; bundle adjustment runs),
GLBs in glTF's y-up frame, nerfstudio's transforms.json."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from iggt_lightning.data import SyntheticScenes
from iggt_lightning.inference.images import ViewTransform
from iggt_lightning.inference.scene import SceneCameras, View
from iggt_lightning.inference.writer import export_scene
from iggt_lightning.plugin import Plugin

pycolmap = pytest.importorskip("pycolmap")

SCALE = 2          # photos at twice the model input: the export must map pixels back


class ExactGeometry(Plugin):
    """Describes the scene with the renderer's cameras and world points (what a perfect model would predict)."""

    def __init__(self, sample: dict) -> None:
        self.sample = sample

    def describe(self, outputs, scene) -> None:
        s = self.sample
        E = s["extrinsics"].double().numpy()
        K_model = s["intrinsics"].double().numpy()                      # integer pixel centres
        K_photo = []
        for v, K in enumerate(K_model):
            centred = K.copy()
            centred[:2, 2] += 0.5
            K_photo.append(scene.views[v].transform.intrinsics_to_photo(torch.from_numpy(centred)).numpy())
        scene.cameras = SceneCameras(E, np.stack(K_photo), K_model, [True] * len(E))
        scene.add_points("exact", s["world_points"], torch.where(s["valid_mask"], 1.0, 0.0), priority=1)
        scene.add_colour_layer("bgr.glb", s["images"].permute(0, 2, 3, 1).flip(-1))   # a layer: RGB reversed


@pytest.fixture(scope="module")
def sample():
    """A rendered scene re-expressed in its first camera's frame, as the model predicts it."""
    s = SyntheticScenes(length=1, num_views=3, image_size=(56, 84), seed=5)[0]
    E = s["extrinsics"].double()
    first = torch.eye(4, dtype=torch.float64)
    first[:3] = E[0]
    inv = torch.linalg.inv(first)
    s["extrinsics"] = (E @ inv).float()
    s["world_points"] = (s["world_points"].double() @ E[0, :, :3].T + E[0, :, 3]).float()
    return s


def write(folder, sample, **options) -> dict:
    S, _, H, W = sample["images"].shape
    views = []
    for v in range(S):
        photo = (sample["images"][v].permute(1, 2, 0).numpy() * 255).astype(np.uint8).repeat(SCALE, 0).repeat(SCALE, 1)
        views.append(View(f"view{v}.jpg", f"view{v}", f"view{v}.png",
                          ViewTransform((W * SCALE, H * SCALE), (1 / SCALE, 1 / SCALE), (0.0, 0.0)), photo))
    folder.mkdir(parents=True)
    return export_scene(folder, [("exact", ExactGeometry(sample))], {}, 0, views, sample["images"],
                        {"conf_threshold": 0.5, "conf_mode": "absolute", **options})


def reprojection_errors(rec) -> np.ndarray:
    errors = []
    for image in rec.images.values():
        cam = rec.cameras[image.camera_id]
        for p2d in image.points2D:
            if p2d.has_point3D():
                X = rec.points3D[p2d.point3D_id].xyz
                uv = cam.img_from_cam(image.cam_from_world() * X)
                errors.append(np.linalg.norm(np.asarray(uv) - np.asarray(p2d.xy)))
    return np.array(errors)


def test_colmap_model_has_tracks_that_reproject(sample, tmp_path):
    manifest = write(tmp_path / "txt", sample, colmap_max_points=3000)
    rec = pycolmap.Reconstruction(str(tmp_path / "txt" / "sparse" / "0"))
    assert rec.num_reg_images() == 3 and 0 < rec.num_points3D() <= 3000
    assert all(len(p.track.elements) >= 1 for p in rec.points3D.values())
    assert rec.compute_mean_track_length() > 1.25   # seen from more than their own view (these views overlap ~40 %)
    errors = reprojection_errors(rec)
    assert len(errors) == rec.compute_num_observations() and errors.max() < 1.0
    names = {img.name for img in rec.images.values()}
    assert names == {f"view{v}.png" for v in range(3)} and all((tmp_path / "txt" / "images" / n).is_file() for n in names)
    info = manifest["colmap"]
    assert info["points"] == rec.num_points3D() and info["observations"] == rec.compute_num_observations()
    assert info["mean_track_length"] == pytest.approx(rec.compute_mean_track_length())

    write(tmp_path / "bin", sample, colmap_max_points=3000, colmap_format="bin")
    assert sorted(p.name for p in (tmp_path / "bin" / "sparse" / "0").iterdir()) == ["cameras.bin", "images.bin",
                                                                                       "points3D.bin"]
    binary = pycolmap.Reconstruction(str(tmp_path / "bin" / "sparse" / "0"))
    assert binary.num_points3D() == rec.num_points3D()
    assert binary.compute_num_observations() == rec.compute_num_observations()
    for pid, p in rec.points3D.items():
        np.testing.assert_allclose(binary.points3D[pid].xyz, p.xyz, rtol=1e-6, atol=1e-6)


def test_point_budget_keeps_the_model_small(sample, tmp_path):
    small = write(tmp_path / "small", sample, colmap_max_points=200)["colmap"]
    large = write(tmp_path / "large", sample, colmap_max_points=10 ** 6)["colmap"]
    assert 100 <= small["points"] <= 200 < large["points"]
    assert (tmp_path / "small" / "sparse" / "0" / "points3D.txt").stat().st_size < \
        (tmp_path / "large" / "sparse" / "0" / "points3D.txt").stat().st_size / 5
    with pytest.raises(ValueError, match="export option colmap_max_points: expected an integer >= 1; got 0"):
        write(tmp_path / "bad", sample, colmap_max_points=0)


def _glb_json(path) -> dict:
    data = path.read_bytes()
    length = struct.unpack("<I", data[12:16])[0]
    return json.loads(data[20:20 + length])


def test_glb_is_y_up_with_the_first_camera_looking_down_minus_z(sample, tmp_path):
    trimesh = pytest.importorskip("trimesh")     # an independent glTF reader (the viewer's)

    manifest = write(tmp_path / "glb", sample, colmap_max_points=100)
    assert "y-up" in manifest["glb_convention"]
    gltf = _glb_json(tmp_path / "glb" / "scene.glb")
    root = next(n for n in gltf["nodes"] if n.get("name") == "opencv_to_gltf")
    np.testing.assert_allclose(np.array(root["matrix"]).reshape(4, 4).T, np.diag([1.0, -1.0, -1.0, 1.0]))
    scene = trimesh.load(tmp_path / "glb" / "scene.glb")
    node = next(n for n in scene.graph.nodes_geometry if "camera_000" in n)
    matrix, geometry = scene.graph[node]
    v = trimesh.transform_points(scene.geometry[geometry].vertices, matrix)   # in glTF's frame
    apex, corners = v[0], v[1:]
    np.testing.assert_allclose(apex, 0, atol=1e-9)               # world = camera 0
    assert (corners[:, 2] < 0).all()                             # looking down glTF's -z
    assert corners[0, 1] > corners[3, 1] and corners[1, 1] > corners[2, 1]   # the image's top edge is up (+y)
    cloud_node = next(n for n in scene.graph.nodes_geometry if "points" in n)
    m, g = scene.graph[cloud_node]
    pts = trimesh.transform_points(scene.geometry[g].vertices, m)
    assert np.median(pts[:, 2]) < 0                              # the scene lies in front of camera 0: -z


COMPONENTS = {5126: np.dtype("<f4"), 5125: np.dtype("<u4"), 5121: np.dtype("u1")}
WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


def read_glb(path) -> tuple[dict, dict]:
    """(glTF JSON, mesh name -> {attribute: array}) of a GLB, checking the glTF 2.0 binary rules a strict reader
    (Khronos' validator) enforces: header and chunk lengths, 4-byte alignment, accessors inside their views,
    POSITION bounds equal to the data. Written from the spec, independent of our writer and of trimesh."""
    data = path.read_bytes()
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert (magic, version, total) == (b"glTF", 2, len(data))
    n_json, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON" and n_json % 4 == 0
    gltf = json.loads(data[20:20 + n_json])
    rest = data[20 + n_json:]
    if not gltf.get("buffers"):
        return gltf, {}
    n_bin, kind = struct.unpack("<I4s", rest[:8])
    assert kind == b"BIN\0" and n_bin % 4 == 0 and len(rest) == 8 + n_bin and n_bin >= gltf["buffers"][0]["byteLength"]
    binary = rest[8:]

    def array(i: int) -> np.ndarray:
        acc = gltf["accessors"][i]
        view = gltf["bufferViews"][acc["bufferView"]]
        dtype, width = COMPONENTS[acc["componentType"]], WIDTH[acc["type"]]
        start = view["byteOffset"] + acc.get("byteOffset", 0)
        assert start % 4 == 0 and acc["count"] >= 1
        assert acc["count"] * width * dtype.itemsize <= view["byteLength"]
        assert view["byteOffset"] + view["byteLength"] <= gltf["buffers"][0]["byteLength"]
        return np.frombuffer(binary, dtype, acc["count"] * width, start).reshape(acc["count"], width)

    meshes = {}
    for mesh in gltf["meshes"]:
        prim = mesh["primitives"][0]
        arrays = {k: array(i) for k, i in prim["attributes"].items()}
        pos = gltf["accessors"][prim["attributes"]["POSITION"]]
        assert pos["min"] == arrays["POSITION"].min(0).tolist() and pos["max"] == arrays["POSITION"].max(0).tolist()
        if "indices" in prim:
            arrays["indices"] = array(prim["indices"])
            assert arrays["indices"].max() < len(arrays["POSITION"])
        meshes[mesh["name"]] = dict(arrays, mode=prim["mode"])
    return gltf, meshes


def test_glb_files_follow_the_binary_format_and_match_the_ply(sample, tmp_path):
    """scene.glb and a colour layer read with the spec alone (no trimesh: GLB needs no extra package): the cloud
    is the PLY's points, in its order, with its colours; one triangle frustum per camera under the root node."""
    from iggt_lightning.viewer import read_ply

    scene = write(tmp_path / "glb", sample, colmap_max_points=100)
    ply = read_ply(tmp_path / "glb" / "points.ply")
    gltf, meshes = read_glb(tmp_path / "glb" / "scene.glb")
    root = gltf["nodes"][gltf["scenes"][gltf["scene"]]["nodes"][0]]
    assert root["name"] == "opencv_to_gltf" and sorted(gltf["nodes"][c]["name"] for c in root["children"]) == \
        ["camera_000", "camera_001", "camera_002", "points"]
    points = meshes["points"]
    assert points["mode"] == 0 and len(points["POSITION"]) == scene["points"] == len(ply)
    assert np.array_equal(points["POSITION"], np.stack([ply["x"], ply["y"], ply["z"]], 1))
    assert np.array_equal(points["COLOR_0"], np.stack([ply["red"], ply["green"], ply["blue"],
                                                       np.full(len(ply), 255, np.uint8)], 1))
    assert gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]["normalized"] is True
    for v in range(3):
        frustum = meshes[f"camera_{v:03d}"]
        assert frustum["mode"] == 4 and frustum["POSITION"].shape == (5, 3) and frustum["indices"].shape == (18, 1)
    _, layer = read_glb(tmp_path / "glb" / "bgr.glb")                # same points, in the same order
    assert np.array_equal(layer["points"]["POSITION"], points["POSITION"])
    assert np.array_equal(layer["points"]["COLOR_0"][:, :3], np.stack([ply["blue"], ply["green"], ply["red"]], 1))


def test_transforms_json_projects_like_the_opencv_cameras(sample, tmp_path):
    write(tmp_path / "ns", sample, colmap_max_points=100)
    t = json.loads((tmp_path / "ns" / "transforms.json").read_text())
    cams = json.loads((tmp_path / "ns" / "cameras.json").read_text())["views"]
    assert t["ply_file_path"] == "points.ply" and [f["file_path"] for f in t["frames"]] == \
        [f"images/view{v}.png" for v in range(3)]
    X = sample["world_points"][1][sample["valid_mask"][1]][::97].double().numpy()
    for frame, cam in zip(t["frames"], cams):
        c2w = np.array(frame["transform_matrix"])
        gl = (X - c2w[:3, 3]) @ c2w[:3, :3]                       # camera coordinates, OpenGL axes
        u = frame["fl_x"] * gl[:, 0] / -gl[:, 2] + frame["cx"]
        v = frame["fl_y"] * -gl[:, 1] / -gl[:, 2] + frame["cy"]
        E, K = np.array(cam["extrinsic"]), np.array(cam["intrinsic"])
        cv = X @ E[:, :3].T + E[:, 3]
        np.testing.assert_allclose(u, K[0, 0] * cv[:, 0] / cv[:, 2] + K[0, 2], atol=1e-4)
        np.testing.assert_allclose(v, K[1, 1] * cv[:, 1] / cv[:, 2] + K[1, 2], atol=1e-4)
    assert np.allclose(t["frames"][0]["transform_matrix"], np.diag([1.0, -1.0, -1.0, 1.0]), atol=1e-6)


def test_iggt_predict_writes_a_binary_model_with_tracks(tmp_path):
    """The command-line flow: photos -> iggt predict --colmap-format bin --colmap-max-points -> pycolmap."""
    from PIL import Image

    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.cli import main
    from iggt_lightning.model import IGGTModel

    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), tmp_path / "nano.safetensors")
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(SyntheticScenes(length=1, num_views=3, image_size=(98, 154), seed=1)[0]["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / "photos" / f"v{i}.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "photos"), "-c", str(tmp_path / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", "--colmap-format", "bin", "--colmap-max-points", "500"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin", "transforms.json"} <= \
        set(manifest["files"])
    rec = pycolmap.Reconstruction(str(out / "sparse" / "0"))
    assert 0 < rec.num_points3D() <= 500 and all(len(p.track.elements) >= 1 for p in rec.points3D.values())
    assert {img.name for img in rec.images.values()} == {"v0.png", "v1.png", "v2.png"}
    assert manifest["colmap"]["observations"] == rec.compute_num_observations()
