"""`iggt data check`'s pose diagnosis on a sequence like a real capture: consecutive views look at opposite walls
(they share no pixels), depth is noisy, and the world frame lies far from every camera. Both hypotheses are
scored on the same, nearby-by-rotation pairs: correct poses pass, camera-to-world poses are named as such."""
import json

import numpy as np
from PIL import Image

from iggt_lightning.data.check import check_dataset, invert, overlap_pairs

H, W, F = 48, 64, 50.0
ROOM = np.array([[-4.0, 4.0], [-1.5, 1.5], [-3.0, 3.0]])      # x, y (down), z extents around the room centre
OFFSET = np.array([200.0, -50.0, 120.0])                       # the world origin is far from the room


def look(forward: np.ndarray) -> np.ndarray:
    """World-to-camera rotation of a camera looking along ``forward`` with image y along world +y (down)."""
    z = forward / np.linalg.norm(forward)
    y = np.array([0.0, 1.0, 0.0])
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z])


def render_depth(R: np.ndarray, centre: np.ndarray, K: np.ndarray, rng) -> np.ndarray:
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T @ R       # world directions, camera z = 1
    c = centre - OFFSET
    t = np.full((H, W), np.inf)
    for axis in range(3):
        for bound in ROOM[axis]:
            with np.errstate(divide="ignore", invalid="ignore"):
                hit = (bound - c[axis]) / rays[..., axis]
            t = np.where((hit > 1e-6) & (hit < t), hit, t)
    return (t * (1 + 0.01 * rng.standard_normal(t.shape))).astype(np.float32)   # 1 % depth noise


def write_scene(folder, c2w: bool):
    rng = np.random.default_rng(0)
    K = np.array([[F, 0, W / 2], [0, F, H / 2], [0, 0, 1.0]])
    (folder / "images").mkdir(parents=True)
    (folder / "depth").mkdir()
    views = []
    for i in range(8):
        yaw = np.deg2rad(rng.uniform(-10, 10))
        forward = np.array([np.cos(yaw), 0.0, np.sin(yaw)]) * (1 if i % 2 == 0 else -1)   # +x, -x, +x, ...
        R = look(forward)
        centre = OFFSET + rng.uniform(-0.3, 0.3, 3)
        E = np.concatenate([R, (-R @ centre)[:, None]], 1)
        np.save(folder / "depth" / f"v{i}.npy", render_depth(R, centre, K, rng))
        Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(folder / "images" / f"v{i}.png")
        views.append({"file_name": f"v{i}.png", "width": W, "height": H, "intrinsic": K.tolist(),
                      "extrinsic": (invert(E) if c2w else E).tolist()})
    (folder / "cameras.json").write_text(json.dumps({"pixel_center": 0.5, "views": views}))


def test_correct_poses_pass_and_consecutive_views_need_not_overlap(tmp_path):
    write_scene(tmp_path / "scene", c2w=False)
    report = check_dataset(tmp_path, "scene_folder")
    assert report.ok, report.problems
    scene = report.scenes[0]
    assert scene.violation < 0.02                               # noisy depth, consistent geometry
    assert scene.violation_inverted > 0.2 or np.isnan(scene.violation_inverted)


def test_camera_to_world_poses_are_named(tmp_path):
    write_scene(tmp_path / "scene", c2w=True)
    report = check_dataset(tmp_path, "scene_folder")
    assert not report.ok
    assert any("camera-to-world where world-to-camera is expected" in p for p in report.problems), report.problems


def test_pairs_are_chosen_by_rotation_not_by_order():
    class View:
        def __init__(self, forward):
            R = look(np.asarray(forward, float))
            self.extrinsics = np.concatenate([R, np.zeros((3, 1))], 1)

    views = [View([1, 0, 0.05 * i]) if i % 2 == 0 else View([-1, 0, 0.05 * i]) for i in range(6)]
    pairs = overlap_pairs(views, 4)
    assert pairs and all((a - b) % 2 == 0 for a, b in pairs)       # same-wall views only, never consecutive


def test_a_camera_to_world_layout_holding_world_to_camera_poses_is_named_with_its_files(tmp_path):
    from iggt_lightning.data.fixtures import write_fixture

    write_fixture("scannet", tmp_path, num_scenes=1, num_views=4, image_size=(56, 84))
    scene = tmp_path / "scene0000"
    assert check_dataset(tmp_path).ok
    for path in (scene / "pose").glob("*.txt"):
        pose = np.loadtxt(path)
        if np.isfinite(pose).all():                       # the lost-tracking frame (-inf) stays as it is
            np.savetxt(path, np.linalg.inv(pose))
    problems = check_dataset(tmp_path).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"scene scene0000: {scene / 'pose/*.txt'}: the poses look world-to-camera where "
                                  "camera-to-world is expected: "), problems[0]


def test_the_inverted_hypothesis_must_win_by_the_margin():
    from iggt_lightning.data.check import inverted_fits

    assert inverted_fits((0.046, 0.95), (0.010, 0.98))          # the red team's sequence: 4.6 % vs 1.0 %
    assert not inverted_fits((0.046, 0.95), (0.020, 0.98))      # under a third is needed
    assert not inverted_fits((0.015, 0.98), (0.001, 0.99))      # and 2 points fewer: noise at little motion
    assert not inverted_fits((0.30, 0.60), (0.01, 0.20))        # fewer points on the surfaces: behind them
    assert not inverted_fits((0.30, 0.60), None)
