"""Procedural multi-view instance scenes: contract, determinism, camera convention, geometry, normalisation."""
import math

import numpy as np
import pytest
import torch

from iggt_lightning.data import CLASS_NAMES, SyntheticScenes, collate_scenes, normalize_scene, render_scene

SIZE = (70, 112)   # small and non-square, so an H/W mix-up cannot pass


@pytest.fixture(scope="module")
def dataset():
    return SyntheticScenes(length=50, num_views=4, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def sample(dataset):
    return dataset[0]


def _project(points, E, K):
    """Pixel coordinates and camera z of world points [S,H,W,3] (float64, to test the data, not the maths)."""
    P, E, K = points.double(), E.double(), K.double()
    cam = torch.einsum("sij,shwj->shwi", E[:, :, :3], P) + E[:, None, None, :, 3]
    pix = torch.einsum("sij,shwj->shwi", K, cam)
    return pix[..., :2] / pix[..., 2:], cam[..., 2]


def _assert_projection_convention(s):
    S, H, W = s["depth"].shape
    uv, z = _project(s["world_points"], s["extrinsics"], s["intrinsics"])
    # Pixel centres at integer coordinates (VGGT / iggt_lightning.geometry convention).
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    m = s["valid_mask"]
    assert m.any()
    assert (uv[..., 0] - u)[m].abs().max() < 1e-3
    assert (uv[..., 1] - v)[m].abs().max() < 1e-3
    depth = s["depth"].double()
    assert ((z - depth)[m].abs() / depth[m]).max() < 1e-4


def _equal(a, b):
    """Exact equality of tensors, strings and (nested) lists of them."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _tensors_equal(a, b):
    return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)


def test_contract_shapes_and_dtypes(sample):
    S, (H, W) = 4, SIZE
    expected = {
        "images": ((S, 3, H, W), torch.float32), "depth": ((S, H, W), torch.float32),
        "extrinsics": ((S, 3, 4), torch.float32), "intrinsics": ((S, 3, 3), torch.float32),
        "world_points": ((S, H, W, 3), torch.float32), "valid_mask": ((S, H, W), torch.bool),
        "instance_ids": ((S, H, W), torch.int64),
    }
    for key, (shape, dtype) in expected.items():
        assert sample[key].shape == shape, key
        assert sample[key].dtype == dtype, key
    assert isinstance(sample["scene_id"], str)
    assert isinstance(sample["frame_ids"], list) and len(sample["frame_ids"]) == S
    assert len(set(sample["frame_ids"])) == S and all(isinstance(f, str) for f in sample["frame_ids"])
    N = len(sample["class_names"])
    assert sample["instance_classes"].shape == (N,) and sample["instance_classes"].dtype == torch.int64
    assert 0.0 <= sample["images"].min() and sample["images"].max() <= 1.0
    # The room encloses every camera: every pixel hits something.
    assert sample["valid_mask"].all() and torch.equal(sample["valid_mask"], sample["depth"] > 0)
    assert torch.isfinite(sample["world_points"]).all()


def test_class_names_match_instances(dataset):
    for i in range(5):
        s = dataset[i]
        N = len(s["class_names"])
        assert 2 <= N <= 6
        for k in range(N):
            assert CLASS_NAMES[int(s["instance_classes"][k])] == s["class_names"][k]
        assert (s["instance_classes"] > 0).all()          # class 0 is the room
        ids = s["instance_ids"].unique()
        assert ids.min() >= 0 and ids.max() <= N


def test_determinism(dataset, sample):
    assert _tensors_equal(sample, dataset[0])
    again = SyntheticScenes(length=50, num_views=4, image_size=SIZE, seed=3)[0]
    assert _tensors_equal(sample, again)
    assert not torch.equal(sample["images"], dataset[1]["images"])
    other_seed = SyntheticScenes(length=50, num_views=4, image_size=SIZE, seed=4)[0]
    assert not torch.equal(sample["images"], other_seed["images"])
    assert sample["scene_id"] != dataset[1]["scene_id"]
    assert _tensors_equal(dataset[-1], dataset[49])
    with pytest.raises(IndexError):
        dataset[50]


def test_projection_convention(dataset):
    for i in range(3):
        _assert_projection_convention(dataset[i])


def test_world_points_match_geometry_unprojection(dataset):
    """The data and the model-side geometry share one pixel convention: unprojecting depth gives world_points."""
    from iggt_lightning.geometry import unproject_depth

    s = dataset[1]
    world = unproject_depth(s["depth"].double(), s["extrinsics"].double(), s["intrinsics"].double())
    assert (world - s["world_points"].double()).abs().max() < 1e-4


def test_cameras(dataset):
    s = dataset[2]
    R = s["extrinsics"][:, :, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    assert torch.allclose(R @ R.transpose(-1, -2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-5)
    K = s["intrinsics"]
    H, W = SIZE
    assert torch.allclose(K[:, 0, 2], torch.full((len(K),), W / 2)) and torch.allclose(K[:, 1, 2], torch.full((len(K),), H / 2))
    assert ((K[:, 0, 0] >= 0.8 * W - 1e-3) & (K[:, 0, 0] <= 1.3 * W + 1e-3)).all()
    # Cameras sit inside the room and look down at the scene rather than into the floor or the ceiling.
    centres = -(R.transpose(-1, -2) @ s["extrinsics"][:, :, 3:].double())[..., 0]
    room = dataset.scene(2).room
    assert (centres[:, 0].abs() < room.half_x).all() and (centres[:, 2].abs() < room.half_z).all()
    assert ((centres[:, 1] > 0) & (centres[:, 1] < room.height)).all()


def _on_surface(obj, p: np.ndarray, tol: float = 2e-3) -> np.ndarray:
    """Whether world points p [n,3] lie on the surface of ``obj``."""
    x, z = obj.centre_xz
    if obj.shape == "sphere":
        r = obj.size[0]
        return np.abs(np.linalg.norm(p - [x, r, z], axis=-1) - r) < tol
    if obj.shape == "cylinder":
        r, h = obj.size
        radial = np.hypot(p[:, 0] - x, p[:, 2] - z)
        side = (np.abs(radial - r) < tol) & (p[:, 1] > -tol) & (p[:, 1] < h + tol)
        cap = (np.abs(p[:, 1] - h) < tol) & (radial < r + tol)
        return side | cap
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    q = p - [x, obj.size[1], z]
    local = np.stack([c * q[:, 0] - s * q[:, 2], q[:, 1], s * q[:, 0] + c * q[:, 2]], -1)
    ratio = np.abs(local) / np.asarray(obj.size)
    return np.abs(ratio.max(-1) - 1) < tol / min(obj.size)


def test_instances_are_consistent_across_views(dataset):
    shared = 0
    for i in range(4):
        s, scene = dataset[i], dataset.scene(i)
        ids, pts = s["instance_ids"].numpy(), s["world_points"].numpy().astype(np.float64)
        for obj in scene.objects:
            views = [v for v in range(ids.shape[0]) if (ids[v] == obj.instance_id).sum() > 0]
            shared += len(views) >= 2
            lo, hi = obj.aabb()
            for v in views:
                p = pts[v][ids[v] == obj.instance_id]
                # Same id in every view means the same physical object: its points lie on that object.
                assert ((p >= lo - 1e-3) & (p <= hi + 1e-3)).all()
                assert _on_surface(obj, p).mean() > 0.99, (obj.shape, obj.size)
        # Room pixels lie on a wall, the floor or the ceiling.
        room = scene.room
        p = pts[ids == 0]
        gap = np.minimum.reduce([np.abs(np.abs(p[:, 0]) - room.half_x), np.abs(p[:, 1]),
                                 np.abs(p[:, 1] - room.height), np.abs(np.abs(p[:, 2]) - room.half_z)])
        assert gap.max() < 1e-3
    assert shared >= 4                                     # objects are seen from several views


def test_objects_are_visible():
    ds = SyntheticScenes(length=6, num_views=4, image_size=SIZE, seed=0)
    for i in range(len(ds)):
        ids = ds[i]["instance_ids"]
        assert len(ids.unique()[ids.unique() > 0]) >= 2
        assert (ids[0] > 0).any() and (ids[0] == 0).any()


def test_view_count_range_and_background_id():
    ds = SyntheticScenes(length=20, num_views=(2, 5), image_size=(28, 42), seed=1, background_id=-1)
    counts = [ds[i]["images"].shape[0] for i in range(20)]
    assert set(counts) <= {2, 3, 4, 5} and len(set(counts)) > 1
    assert counts == [ds[i]["depth"].shape[0] for i in range(20)]
    s = ds[0]
    assert (s["instance_ids"] == -1).any() and not (s["instance_ids"] == 0).any()


def test_repeated_objects_are_identical_copies_with_their_own_ids():
    ds = SyntheticScenes(length=8, num_views=3, image_size=SIZE, num_objects=(3, 4), seed=2, repeat_prob=1.0)
    base = SyntheticScenes(length=8, num_views=3, image_size=SIZE, num_objects=(3, 4), seed=2)
    seen_twice = 0
    for i in range(len(ds)):
        objects = ds.scene(i).objects
        first = objects[0]
        for obj in objects[1:]:   # repeat_prob 1: every later object copies an earlier one, hence the first
            assert (obj.shape, obj.size, obj.yaw, obj.class_index) == (first.shape, first.size, first.yaw, first.class_index)
            assert np.array_equal(obj.rgb, first.rgb) and obj.centre_xz != first.centre_xz
        assert [o.instance_id for o in objects] == list(range(1, len(objects) + 1))
        s = ds[i]
        visible = [o.instance_id for o in objects if (s["instance_ids"] == o.instance_id).any()]
        seen_twice += len(visible) >= 2
        assert len({o.colour_name for o in base.scene(i).objects}) == len(base.scene(i).objects)
    assert seen_twice >= 4          # copies are rendered as distinct instances of one appearance


def test_normalize_single_scene(sample):
    before = {k: v.clone() for k, v in sample.items() if isinstance(v, torch.Tensor)}
    n = normalize_scene(sample)
    for k, v in before.items():                            # the input is left alone
        assert torch.equal(v, sample[k])
    assert torch.allclose(n["extrinsics"][0], torch.eye(3, 4), atol=1e-5)
    mean_dist = n["world_points"][n["valid_mask"]].double().norm(dim=-1).mean()
    assert abs(mean_dist.item() - 1.0) < 1e-4
    assert n["scene_scale"].ndim == 0 and n["scene_scale"] > 0
    assert torch.allclose(n["depth"] * n["scene_scale"], sample["depth"], rtol=1e-5)
    assert torch.equal(n["intrinsics"], sample["intrinsics"])
    _assert_projection_convention(n)


def test_normalize_batch_matches_single(dataset):
    samples = [dataset[i] for i in range(2)]
    batch = collate_scenes(samples)
    assert batch["images"].shape[:2] == (2, 4) and isinstance(batch["class_names"], list)
    n = normalize_scene(batch)
    assert n["scene_scale"].shape == (2,)
    for b, s in enumerate(samples):
        single = normalize_scene(s)
        for key in ("extrinsics", "world_points", "depth", "scene_scale"):
            assert torch.allclose(n[key][b], single[key], atol=1e-6), key


def test_normalize_without_valid_points_uses_camera_baseline(sample):
    # RE10K has no depth: the scale falls back to the mean distance of the camera centres to camera 0
    empty = {**sample, "valid_mask": torch.zeros_like(sample["valid_mask"])}
    n = normalize_scene(empty)
    E = sample["extrinsics"].double()
    centres = -(E[:, :, :3].transpose(1, 2) @ E[:, :, 3:]).squeeze(-1)
    expected = (centres[1:] - centres[0]).norm(dim=-1).mean()
    assert float(n["scene_scale"]) == pytest.approx(float(expected), rel=1e-5)
    C = -(n["extrinsics"][:, :, :3].double().transpose(1, 2) @ n["extrinsics"][:, :, 3:].double()).squeeze(-1)
    assert C[1:].norm(dim=-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert not n["world_points"].any()


def test_dataloader_with_collate(dataset):
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_scenes)
    batch = next(iter(loader))
    assert batch["world_points"].shape == (3, 4, *SIZE, 3)
    assert len(batch["instance_classes"]) == 3 and len(batch["scene_id"]) == 3
    # A worker stacks into shared memory: same values as in-process.
    worker = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, collate_fn=collate_scenes)
    assert _tensors_equal(batch, next(iter(worker)))


def test_shared_memory_rendering_matches(dataset):
    plain = render_scene(dataset.scene(5))
    shared = render_scene(dataset.scene(5), shared=True)
    assert shared["images"].is_shared() and _tensors_equal(plain, shared)


@pytest.mark.parametrize("kwargs, field", [
    ({"image_size": (100, 224)}, "image_size"),
    ({"image_size": (224, 230)}, "image_size"),
    ({"num_views": 0}, "num_views"),
    ({"num_views": (3, 2)}, "num_views"),
    ({"num_objects": (3, 1)}, "num_objects"),
    ({"focal_range": (0.0, 1.0)}, "focal_range"),
    ({"repeat_prob": 1.5}, "repeat_prob"),
    ({"background_id": 2}, "background_id"),
    ({"seed": -1}, "seed"),
    ({"length": -5}, "length"),
])
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SyntheticScenes(**kwargs)
