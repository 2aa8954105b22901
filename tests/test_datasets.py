"""Real-dataset readers: each layout written on the fly from rendered scenes with known geometry, read back.

The convention checks: cameras, depth and ids come back as written (c2w poses inverted, pixel centres
shifted, millimetres converted); after crop / scale / jitter augmentation the loaded world points project
with the loaded cameras onto the loaded depth, the views agree with each other (no point lands in front of
another view's surface, ids match where views see the same surface), and ids and image pixels still sit
where the intrinsics say they came from.

Every layout of the registry (iggt_lightning.data.registry) is parametrised here with its fixture writer; what
a layout holds (depth, ids) decides which checks apply, so a newly registered layout is tested with no edit here
(tests/test_docs_only_reader.py runs the same checks on the reader of docs/writing-a-reader.md).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iggt_lightning.cli import main
from iggt_lightning.data import DatasetError, MixedScenes, SceneDataModule, check_sample
from iggt_lightning.data.check import check_dataset, detect_layout, free_space_violations
from iggt_lightning.data.fixtures import write_fixture
from iggt_lightning.data.frames import Frame
from iggt_lightning.data.multiview import overlap_ranking, split_of
from iggt_lightning.data.registry import get_layout, layout_names, layouts, reader_class
from iggt_lightning.geometry import project_points

SIZE = (84, 126)          # stored resolution (multiples of 14: the renderer's constraint)


@pytest.fixture(scope="module", params=layout_names())
def written(request, tmp_path_factory):
    layout = request.param
    root = tmp_path_factory.mktemp(layout)
    gt = write_fixture(layout, root, num_scenes=2, num_views=4, image_size=SIZE, seed=3)
    return layout, root, {s["scene_id"]: s for s in gt}


def gt_of(gt: dict, scene_id: str) -> dict:
    # Infinigen's sequences are "<scene>/<sub>", CO3D's "<category>/<scene>"
    return gt[next(part for part in scene_id.split("/") if part in gt)]


def view_index(ds, sample: dict, index: int) -> list[int]:
    record = ds.scenes[index // ds.samples_per_scene]
    return [record.frames.index(name) for name in sample["frame_ids"]]


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Ids equal up to renumbering (0 kept): a bijection between the labels of a and b."""
    pairs = torch.unique(torch.stack([a.flatten(), b.flatten()]), dim=1)
    return len(torch.unique(pairs[0])) == pairs.shape[1] == len(torch.unique(pairs[1])) and \
        bool(((pairs[0] == 0) == (pairs[1] == 0)).all())


def test_layout_reads_back_what_was_written(written):
    assert_reads_back(*written)


def assert_reads_back(layout: str, root: Path, gt: dict) -> None:
    """Every scene read back through the registry's reader: cameras and images as written, and depth and ids
    where the layout holds them (none: all zero)."""
    holds = get_layout(layout).holds
    views = len(next(iter(gt.values()))["images"])
    ds = reader_class(layout)(root, split="all", num_views=views, image_size=SIZE, view_sampling="sequential")
    assert len(ds) == len(gt)
    tol = 0.02 if any(root.rglob("*.jpg")) else 0.005                                    # JPEG (ScanNet: 2x colour)
    for i in range(len(ds)):
        s = check_sample(ds[i])
        g = gt_of(gt, s["scene_id"])
        assert view_index(ds, s, i) == list(range(views))
        torch.testing.assert_close(s["extrinsics"], g["extrinsics"], atol=1e-5, rtol=0)   # c2w inverted
        torch.testing.assert_close(s["intrinsics"], g["intrinsics"], atol=1e-4, rtol=0)   # pixel centre shift
        if "depth" in holds:
            assert s["valid_mask"].all()
            assert (s["depth"] - g["depth"]).abs().max() <= 6e-4                           # mm quantisation
            torch.testing.assert_close(s["world_points"], g["world_points"], atol=5e-3, rtol=0)
        else:                                                   # e.g. RE10K: no depth
            assert not s["valid_mask"].any() and not s["depth"].any()
        if "instance_ids" in holds:
            assert same_partition(s["instance_ids"], g["instance_ids"])
        else:
            assert not s["instance_ids"].any()
        assert (s["images"] - g["images"]).abs().mean() < tol


def test_data_check_detects_each_layout_and_finds_no_problem(written, capsys):
    assert_checks_clean(*written[:2], capsys)


def assert_checks_clean(layout: str, root: Path, capsys) -> None:
    """`iggt data check` on a clean fixture: detected as its own layout by its markers, every frame read, no
    problem; the command line takes the layout by name (--layout; one frame per scene, to keep it quick)."""
    assert detect_layout(root) == layout
    report = check_dataset(root)
    assert report.layout == layout and report.ok, report.problems
    assert report.scenes and all(s.frames > 0 for s in report.scenes)
    capsys.readouterr()
    assert main(["data", "check", str(root), "--layout", layout, "--max-frames", "1"]) == 0
    out = capsys.readouterr().out
    assert f"layout {layout}," in out and "no problems found" in out
    assert ("holds cameras only" in out) == get_layout(layout).cameras_only


def test_scannet_color_resolution_resamples_depth_onto_the_colour_grid(tmp_path):
    gt = write_fixture("scannet", tmp_path, num_scenes=1, num_views=3, image_size=SIZE)[0]
    H, W = 2 * SIZE[0], 2 * SIZE[1]
    ds = reader_class("scannet")(tmp_path, split="all", num_views=3, image_size=(H, W), resolution="color",
                                 view_sampling="sequential")
    s = ds[0]
    K = gt["intrinsics"].clone()
    K[:, :2, :2] *= 2
    K[:, :2, 2] = (K[:, :2, 2] + 0.5) * 2 - 0.5
    torch.testing.assert_close(s["intrinsics"], K, atol=1e-4, rtol=0)
    _assert_projection(s)
    assert _cross_view(s)[0] < 0.05


def _assert_projection(s: dict) -> None:
    """World points projected with the loaded cameras land on their own pixel at the loaded depth."""
    S, H, W = s["depth"].shape
    for v in range(S):
        valid = s["valid_mask"][v]
        uv, z = project_points(s["world_points"][v][valid].double(), s["extrinsics"][v].double(),
                               s["intrinsics"][v].double())
        i, j = torch.nonzero(valid, as_tuple=True)
        assert torch.allclose(uv[:, 0], j.double(), atol=1e-3) and torch.allclose(uv[:, 1], i.double(), atol=1e-3)
        assert torch.allclose(z, s["depth"][v][valid].double(), rtol=1e-4)


def _cross_view(s: dict) -> tuple[float, float]:
    """(worst free-space violation over view pairs, worst id disagreement where two views see one surface)."""
    worst_violation, worst_ids = 0.0, 0.0
    frames = [Frame(image=np.zeros((1, 1, 3), np.uint8), intrinsics=s["intrinsics"][v].double().numpy(),
                    extrinsics=s["extrinsics"][v].double().numpy(), depth=s["depth"][v].numpy())
              for v in range(len(s["depth"]))]
    S, H, W = s["depth"].shape
    for a in range(S):
        for b in range(S):
            if a == b:
                continue
            v, n = free_space_violations(frames[a], frames[b], frames[a].extrinsics, frames[b].extrinsics)
            if n > 200:
                worst_violation = max(worst_violation, v)
            valid = s["valid_mask"][a]
            uv, z = project_points(s["world_points"][a][valid].double(), s["extrinsics"][b].double(),
                                   s["intrinsics"][b].double())
            j, i = uv[:, 0].round().long(), uv[:, 1].round().long()
            inside = (z > 0) & (j >= 0) & (j < W) & (i >= 0) & (i < H)
            jj, ii = j[inside], i[inside]
            same_surface = (z[inside] - s["depth"][b][ii, jj].double()).abs() < 0.01 * z[inside]
            if same_surface.sum() > 200:
                ids_a = s["instance_ids"][a][valid][inside][same_surface]
                ids_b = s["instance_ids"][b][ii[same_surface], jj[same_surface]]
                worst_ids = max(worst_ids, float((ids_a != ids_b).double().mean()))
    return worst_violation, worst_ids


def test_augmented_samples_keep_geometry_and_ids_aligned(written):
    assert_augmented_samples_aligned(*written)


def assert_augmented_samples_aligned(layout: str, root: Path, gt: dict) -> None:
    holds = get_layout(layout).holds
    ds = reader_class(layout)(root, split="train", val_fraction=0, test_fraction=0, num_views=[2, 3],
                              image_size=(56, 70), scale_augment=(1.0, 1.6), color_jitter=1.0, samples_per_scene=3)
    torch.manual_seed(0)
    for i in range(len(ds)):
        s = check_sample(ds[i])
        assert s["images"].shape[0] == ds.sample_shape(i)[0]
        g = gt_of(gt, s["scene_id"])
        if "depth" in holds:
            _assert_projection(s)
            violation, id_mismatch = _cross_view(s)
            assert violation < 0.02 and id_mismatch < 0.05, (violation, id_mismatch)
        if "instance_ids" not in holds:
            continue
        # every pixel's id is the written id at the source pixel the intrinsics point to
        for v, src in enumerate(view_index(ds, s, i)):
            K_src = g["intrinsics"][src].double()
            M = K_src @ torch.linalg.inv(s["intrinsics"][v].double())
            H, W = s["instance_ids"].shape[1:]
            jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float64), torch.arange(H, dtype=torch.float64),
                                    indexing="xy")
            p = torch.stack([jj, ii, torch.ones_like(jj)], -1) @ M.T
            u = p[..., 0].round().long().clamp(0, SIZE[1] - 1)
            w = p[..., 1].round().long().clamp(0, SIZE[0] - 1)
            assert same_partition_fraction(s["instance_ids"][v], g["instance_ids"][src][w, u]) > 0.95


def same_partition_fraction(loaded: torch.Tensor, written: torch.Tensor) -> float:
    """Fraction of pixels whose loaded id maps to the written id by the majority correspondence."""
    agree = 0
    for k in torch.unique(loaded):
        m = loaded == k
        agree += int(torch.mode(written[m]).values.eq(written[m]).sum())
    return agree / loaded.numel()


def test_images_move_with_the_intrinsics_under_crop_and_scale(tmp_path):
    gt = write_fixture("scene_folder", tmp_path, num_scenes=1, num_views=2, image_size=SIZE)[0]
    ds = reader_class("scene_folder")(tmp_path, split="all", num_views=2, image_size=(42, 56),
                                      scale_augment=(1.3, 1.3), deterministic=False, view_sampling="sequential")
    torch.manual_seed(1)
    s = ds[0]
    for v in range(2):
        M = gt["intrinsics"][v].double() @ torch.linalg.inv(s["intrinsics"][v].double())
        # the centre of the crop in the source image, from the loaded K: compare a patch of colours there
        c = M @ torch.tensor([27.5, 20.5, 1.0], dtype=torch.float64)
        src = gt["images"][v][:, int(c[1].round()) - 2:int(c[1].round()) + 3, int(c[0].round()) - 2:int(c[0].round()) + 3]
        got = s["images"][v][:, 18:23, 25:30]
        assert (src.mean((1, 2)) - got.mean((1, 2))).abs().max() < 0.06


@pytest.mark.parametrize("mode, scale", [("crop", (1.0, 1.0)), ("crop", (1.2, 1.7)), ("resize", (1.0, 1.0))])
def test_crop_resize_moves_intrinsics_with_the_pixels(mode, scale):
    """Maps whose values are their own source column / row: after the transform, the value at each pixel is
    where the new intrinsics say the pixel came from (to rounding; a half-pixel slip fails)."""
    from iggt_lightning.data.transforms import CropResize

    h, w = 120, 200
    cols, rows = np.meshgrid(np.arange(w), np.arange(h))
    K = np.array([[150.0, 0, 99.5], [0, 150.0, 59.5], [0, 0, 1]])
    frame = Frame(image=np.stack([cols, rows, cols], -1).astype(np.uint8), intrinsics=K, extrinsics=np.eye(3, 4),
                  depth=rows.astype(np.float32) + 1, instance_ids=cols.astype(np.int64))
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = CropResize((48, 70), mode, scale, random_position=True)([frame], rng)[0]
        src = np.stack([*np.meshgrid(np.arange(70.0), np.arange(48.0)), np.ones((48, 70))], -1) @ \
            (K @ np.linalg.inv(out.intrinsics)).T
        assert np.abs(out.instance_ids - src[..., 0]).max() <= 0.5 + 1e-6          # nearest: round(u)
        assert np.abs(out.depth - 1 - src[..., 1]).max() <= 0.5 + 1e-6
        inner = (slice(4, -4), slice(4, -4))                                         # linear ramps survive bicubic
        assert abs(float(np.mean(out.image[..., 0][inner] - src[..., 0][inner]))) < 0.15
        assert abs(float(np.mean(out.image[..., 1][inner] - src[..., 1][inner]))) < 0.15


def test_colour_jitter_is_shared_across_views_and_leaves_geometry(tmp_path):
    write_fixture("scene_folder", tmp_path, num_scenes=1, num_views=3, image_size=SIZE)
    plain = reader_class("scene_folder")(tmp_path, split="all", num_views=3, image_size=SIZE,
                                         view_sampling="sequential")[0]
    jit = reader_class("scene_folder")(tmp_path, split="all", num_views=3, image_size=SIZE, view_sampling="sequential",
                                       color_jitter={"p": 1.0, "brightness": 0.5, "contrast": 0, "saturation": 0,
                                                     "hue": 0})[0]
    ratio = jit["images"].mean((1, 2, 3)) / plain["images"].mean((1, 2, 3))
    assert (ratio - ratio[0]).abs().max() < 0.02 and (ratio[0] - 1).abs() > 0.01
    for key in ("depth", "extrinsics", "intrinsics", "instance_ids"):
        assert torch.equal(plain[key], jit[key])


# -- bad input: each error names the file -----------------------------------------------------------------

def test_missing_and_truncated_files_are_named(tmp_path):
    write_fixture("scannetpp", tmp_path, num_scenes=1, num_views=3, image_size=SIZE)
    scene = tmp_path / "scene0000"
    ds = reader_class("scannetpp")(tmp_path, split="all", num_views=3, image_size=SIZE)
    (scene / "depth" / "frame_000010.png").unlink()
    with pytest.raises(DatasetError, match="missing depth .*frame_000010.png"):
        ds[0]
    image = scene / "images" / "frame_000020.jpg"
    image.write_bytes(image.read_bytes()[:200])
    report = check_dataset(tmp_path)
    assert not report.ok and len(report.problems) == 3
    assert "3 frame(s) but 2 file(s) match depth/*.png" in report.problems[0]
    assert any("frame_000010.png" in p for p in report.problems)
    assert any("frame_000020.jpg" in p for p in report.problems)


def test_data_check_detects_camera_to_world_given_as_world_to_camera(tmp_path, capsys):
    root = tmp_path / "data"               # the --json report goes beside the dataset: never into it
    write_fixture("scene_folder", root, num_scenes=1, num_views=4, image_size=SIZE)
    assert main(["data", "check", str(root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    cams = root / "scene0000" / "cameras.json"
    data = json.loads(cams.read_text())
    for v in data["views"]:        # store the inverse (camera-to-world) where world-to-camera is expected
        E = np.array(v["extrinsic"])
        v["extrinsic"] = np.concatenate([E[:, :3].T, -E[:, :3].T @ E[:, 3:]], 1).tolist()
    cams.write_text(json.dumps(data))
    assert main(["data", "check", str(root), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "camera-to-world where world-to-camera is expected" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_data_check_on_cameras_only_layouts_checks_the_cameras(tmp_path, capsys):
    """CO3D and pose lists hold no depth or ids: every image is still read and every camera checked, each
    problem naming its frame, and the report says what was not checked."""
    import gzip

    write_fixture("pose_list", tmp_path / "pl", num_scenes=1, num_views=3, image_size=SIZE)
    path = tmp_path / "pl" / "annotations.jgz"
    data = json.loads(gzip.open(path, "rt").read())
    data["scene0000"][0][1]["extri"][0][0] *= 2.0                       # frame 1's rotation: not orthonormal
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    (tmp_path / "pl" / "scene0000" / "images" / "0002.png").unlink()
    problems = check_dataset(tmp_path / "pl").problems
    assert len(problems) == 2, problems
    assert "scene0000/images/0001.png: the rotation of extri" in problems[0] and "not a proper rotation" in problems[0]
    assert problems[1].startswith(f"missing image {tmp_path / 'pl' / 'scene0000' / 'images' / '0002.png'}")

    write_fixture("co3d", tmp_path / "co3d", num_scenes=1, num_views=2, image_size=SIZE)
    path = tmp_path / "co3d" / "annotations" / "toycategory_test.jgz"
    data = json.loads(gzip.open(path, "rt").read())
    data["scene0000"][0]["focal_length"][0] = -1.0
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "co3d")]) == 1
    out = capsys.readouterr().out
    assert "layout co3d, 1 scene(s), 1 frame(s)" in out and "layout co3d holds cameras only" in out
    assert "toycategory/scene0000/images/frame000001.jpg: intrinsics is" in out and "positive focal lengths" in out


def test_depth_in_millimetres_where_metres_are_expected(tmp_path):
    write_fixture("infinigen", tmp_path, num_scenes=1, num_views=2, image_size=SIZE)
    path = next((tmp_path / "scene0000" / "0" / "frames" / "Depth" / "camera_0").glob("*.npy"))
    np.save(path, np.load(path) * 1000)
    ds = reader_class("infinigen")(tmp_path, split="all", num_views=2, image_size=SIZE)
    with pytest.raises(DatasetError, match=f"{path.name}.*millimetres"):
        ds[0]
    # millimetre PNGs read with the wrong depth_scale: each file flagged, or (less extreme) the scene's unit
    write_fixture("scannetpp", tmp_path / "spp", num_scenes=1, num_views=2, image_size=SIZE)
    report = check_dataset(tmp_path / "spp", reader_kwargs={"depth_scale": 1.0})
    assert len(report.problems) == 2 and all("frame_0000" in p and "millimetres" in p for p in report.problems)
    report = check_dataset(tmp_path / "spp", reader_kwargs={"depth_scale": 10.0})
    assert any("wrong depth_scale" in p for p in report.problems), report.problems


def test_id_map_of_another_size_is_refused(tmp_path):
    write_fixture("scannetpp", tmp_path, num_scenes=1, num_views=2, image_size=SIZE)
    path = tmp_path / "scene0000" / "refined_ins_ids" / "frame_000000.jpg.npy"
    np.save(path, np.zeros((SIZE[0], SIZE[0]), np.int16))
    ds = reader_class("scannetpp")(tmp_path, split="all", num_views=2, image_size=SIZE)
    with pytest.raises(DatasetError, match="instance_ids map is 84x84 but the image is 126x84"):
        ds[0]


def test_bad_rotation_and_non_finite_poses(tmp_path):
    write_fixture("re10k", tmp_path, num_scenes=1, num_views=2, image_size=SIZE)
    cam = tmp_path / "scene0000" / "cam" / "00001.npz"
    data = dict(np.load(cam))
    data["pose"][:3, :3] *= 2.0
    np.savez(cam, **data)
    ds = reader_class("re10k")(tmp_path, split="all", num_views=2, image_size=SIZE)
    with pytest.raises(DatasetError, match="00001.npz.*not a proper rotation"):
        ds[0]
    # ScanNet's -inf poses (lost tracking) are dropped, not fatal: the fixture holds one such frame
    write_fixture("scannet", tmp_path / "sn", num_scenes=1, num_views=3, image_size=SIZE)
    ds = reader_class("scannet")(tmp_path / "sn", split="all", num_views=3, image_size=SIZE)
    assert len(ds.scenes[0].frames) == 4
    ds[0]
    assert ds.scenes[0].frames == ["0.jpg", "1.jpg", "2.jpg"]


def test_masklet_rows_must_match_frames(tmp_path):
    write_fixture("re10k", tmp_path, num_scenes=1, num_views=3, image_size=SIZE)
    path = tmp_path / "scene0000" / "auto_masks.json"
    data = json.loads(path.read_text())
    del data["frame_names"]
    data["masklet"] = data["masklet"][:2]
    path.write_text(json.dumps(data))
    ds = reader_class("re10k")(tmp_path, split="all", num_views=3, image_size=SIZE)
    with pytest.raises(DatasetError, match="auto_masks.json has 2 rows but .* has 3 frames"):
        ds[0]


def test_empty_or_unknown_folders(tmp_path):
    with pytest.raises(DatasetError, match="no scene found"):
        reader_class("scannetpp")(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        reader_class("scannet")(tmp_path / "nope")
    assert main(["data", "check", str(tmp_path)]) == 2


# -- sampling, splits, mixing --------------------------------------------------------------------------------

def test_splits_are_stable_and_disjoint(tmp_path):
    write_fixture("scene_folder", tmp_path, num_scenes=12, num_views=2, image_size=(28, 28))
    kw = dict(num_views=2, image_size=(28, 28), val_fraction=0.25, test_fraction=0.25)
    names = {sp: {r.name for r in reader_class("scene_folder")(tmp_path, split=sp, **kw).scenes}
             for sp in ("train", "val", "test")}
    assert sum(map(len, names.values())) == 12 and not (names["train"] & names["val"]) and not (
        names["val"] & names["test"])
    assert all(split_of(n, 0.25, 0.25) == sp for sp, ns in names.items() for n in ns)


def test_view_sampling_overlap_stride_and_min_views(tmp_path):
    write_fixture("scene_folder", tmp_path, num_scenes=1, num_views=9, image_size=(28, 28))
    ds = reader_class("scene_folder")(tmp_path, split="all", num_views=3, image_size=(28, 28), frame_stride=2)
    torch.manual_seed(0)
    for _ in range(5):
        assert {int(n[5:7]) % 2 for n in ds[0]["frame_ids"]} == {0}      # views 0, 2, 4, 6, 8 only
    ds = reader_class("scene_folder")(tmp_path, split="all", num_views=3, image_size=(28, 28), frame_stride=5,
                                      min_views=3)
    assert len(ds) == 0 and "min_views 3" in ds.skipped[0][1]
    ds = reader_class("scene_folder")(tmp_path, split="all", num_views=3, image_size=(28, 28),
                                      view_sampling="overlap", overlap_top_k=2)
    poses = ds.poses_of(ds.scenes[0])
    for i in range(4):
        picked = [ds.scenes[0].frames.index(n) for n in ds[0]["frame_ids"]]
        anchors_ok = any(set(picked) <= {a, *overlap_ranking(poses, a)[1:3].tolist()} for a in picked)
        assert anchors_ok, picked
    ev = reader_class("scene_folder")(tmp_path, split="all", num_views=[2, 4], image_size=(28, 28),
                                      samples_per_scene=6, deterministic=True)
    assert [ev[i]["frame_ids"] for i in range(6)] == [ev[i]["frame_ids"] for i in range(6)]
    assert [ev.sample_shape(i)[0] for i in range(6)] == [len(ev[i]["frame_ids"]) for i in range(6)]


def test_mixed_scenes_follow_the_weights_and_batch_by_dataset(tmp_path):
    a = reader_class("scene_folder")(_fixture(tmp_path / "a", "scene_folder", 2), split="all", num_views=2,
                                     image_size=(28, 42))
    b = reader_class("re10k")(_fixture(tmp_path / "b", "re10k", 3), split="all", num_views=2, image_size=(28, 42))
    mixed = MixedScenes([a, b], weights=[1, 3], length=12, seed=0)
    assert mixed.counts == [3, 9]
    located = [mixed.locate(i) for i in range(12)]
    assert sorted(i for k, i in located if k == 1) == [0, 0, 0, 1, 1, 1, 2, 2, 2]   # each sample, evenly
    assert {mixed.sample_shape(i) for i in range(12)} == {(0, 2, 28, 42), (1, 2, 28, 42)}
    loader = SceneDataModule(train=mixed, batch_size=3).train_dataloader()
    for batch in loader:
        assert batch["images"].shape[:2] == (3, 2)
        assert len({s.startswith("scene") for s in batch["scene_id"]}) == 1
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        MixedScenes([a, b], weights=[1, -1])


def _fixture(root: Path, layout: str, n: int) -> Path:
    write_fixture(layout, root, num_scenes=n, num_views=2, image_size=(28, 42))
    return root


# -- training from YAML alone on each layout ---------------------------------------------------------------

@pytest.mark.parametrize("layout", [r.name for r in layouts() if not r.cameras_only])
def test_fit_runs_on_each_layout_from_yaml(layout, tmp_path):
    import yaml

    write_fixture(layout, tmp_path / "data", num_scenes=2, num_views=4, image_size=SIZE)

    def dataset(**extra):
        return {"class_path": get_layout(layout).class_path,
                "init_args": {"root": str(tmp_path / "data"), "split": "all", "image_size": [56, 70], **extra}}

    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "val_check_interval": 2, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"preset": "nano", "drop_heads": ["track"], "warmup_steps": 1, "log_images_every_n_steps": 0},
        "data": {"class_path": "iggt_lightning.data.SceneDataModule", "init_args": {
            "batch_size": 2,
            "train": {"class_path": "iggt_lightning.data.MixedScenes", "init_args": {"length": 4, "datasets": [
                dataset(num_views=[2, 3], scale_augment=[1.0, 1.5], color_jitter=0.5)]}},
            "val": dataset(num_views=2)}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "epoch=0-step=2.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


def test_predict_output_reads_back_as_a_scene_folder(tmp_path):
    from PIL import Image

    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.model import IGGTModel

    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), tmp_path / "nano.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(SyntheticScenes(length=1, num_views=2, image_size=(56, 84), seed=2)[0]["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photos / f"v{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", str(photos), "-c", str(tmp_path / "nano.safetensors"), "-o", str(out), "--quiet"]) == 0
    shutil.rmtree(photos)                                  # the output folder stands on its own
    s = check_sample(reader_class("scene_folder")(out, split="all", num_views=2, image_size=(56, 84),
                                                  view_sampling="sequential")[0])
    cams = json.loads((out / "cameras.json").read_text())
    torch.testing.assert_close(s["extrinsics"], torch.tensor([v["extrinsic"] for v in cams["views"]]).float())
    depth = np.load(out / "depth" / "depth.npz")
    np.testing.assert_allclose(s["depth"].numpy(), np.where(depth["valid"], depth["depth"], 0), rtol=1e-6)
    masks = np.stack([np.asarray(Image.open(out / "masks" / f"v{i}.png")) for i in range(2)])
    assert same_partition(s["instance_ids"], torch.from_numpy(masks.astype(np.int64)))
    _assert_projection(s)


def test_shipped_insscene15k_config_trains_on_fixtures(tmp_path):
    """configs/data/insscene15k.yaml with its roots pointed at fixtures of the three layouts."""
    root = Path(__file__).resolve().parents[1]
    for layout in ("scannetpp", "infinigen", "re10k"):
        write_fixture(layout, tmp_path / layout, num_scenes=2, num_views=4, image_size=SIZE)
    text = (root / "configs" / "data" / "insscene15k.yaml").read_text().replace("/data/insscene15k", str(tmp_path))
    text = text.replace("split: val", "split: all").replace("[336, 518]", "[56, 70]").replace("[2, 8]", "[2, 3]")
    text = text.replace("num_workers: 8", "num_workers: 0").replace("length: 20000", "length: 4")
    text = text.replace("frame_stride: 4", "frame_stride: 1")
    (tmp_path / "data.yaml").write_text(text)
    args = ["fit", "--config", str(root / "configs" / "synthetic_tiny.yaml"), "--config", str(tmp_path / "data.yaml"),
            "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--model.log_images_every_n_steps", "0",
            "--data.init_args.val.init_args.num_views", "2"]
    assert main(args) == 0


def test_data_check_counts_files_per_frame(tmp_path):
    write_fixture("infinigen", tmp_path, num_scenes=1, num_views=3, image_size=SIZE)
    assert check_dataset(tmp_path).ok
    cam = tmp_path / "scene0000" / "0" / "frames" / "camview" / "camera_0"
    extra = cam / "camview_9_0_0001_0.npz"
    extra.write_bytes(next(cam.glob("*.npz")).read_bytes())          # a camera without an image
    report = check_dataset(tmp_path)
    assert report.problems == ["scene scene0000/0: 3 frame(s) but 4 file(s) match "
                               "camview/camera_0/camview_*.npz; every frame needs exactly one"]
