"""`iggt data check` names what is actually wrong: depth in another unit than metres (each file and its median; the
geometry check names the unit instead of blaming the poses), float or lossily compressed id maps (the file), and a
pixel_center that is not a number (the field, not the poses)."""
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from iggt_lightning.data.check import check_dataset, lossy_id_signature
from iggt_lightning.data.fixtures import write_fixture

SIZE = (56, 84)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("units") / "clean"
    samples = write_fixture("scene_folder", root, num_scenes=1, num_views=4, image_size=SIZE)
    return root, samples[0]


def copy_of(clean, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(clean[0], root)
    return root, root / "scene0000"


def depth_as_npy(scene, depth, factor):
    """Replace the mm PNGs by float .npy depth in metres x ``factor`` (e.g. 100: centimetres)."""
    paths = []
    for v, d in enumerate(depth.numpy()):
        (scene / "depth" / f"view_{v:02d}.png").unlink()
        paths.append(scene / "depth" / f"view_{v:02d}.npy")
        np.save(paths[-1], (d * factor).astype(np.float32))
    return paths


def test_the_clean_fixture_has_no_problem(clean):
    report = check_dataset(clean[0], "scene_folder")
    assert report.ok, report.problems


def test_depth_in_centimetres_names_each_file_and_its_median(clean, tmp_path):
    root, scene = copy_of(clean, tmp_path)
    paths = depth_as_npy(scene, clean[1]["depth"], 100.0)
    problems = check_dataset(root, "scene_folder").problems
    units = next(p for p in problems if "implausible for metres" in p)
    for path in paths:
        median = float(np.median(np.load(path)[np.load(path) > 0]))
        assert f"{path} (median {median:.4g})" in units or "more" in units, units
    assert units.startswith("scene scene0000: depth implausible for metres") and "wrong depth_scale" in units
    geometry = next(p for p in problems if "views disagree" in p)
    assert "the depth looks like centimetres" in geometry and "camera-to-world" not in geometry, geometry


def test_depth_in_feet_is_named_not_read_as_camera_to_world_poses(clean, tmp_path):
    root, scene = copy_of(clean, tmp_path)
    depth_as_npy(scene, clean[1]["depth"], 1 / 0.3048)          # medians of a few "metres": plausible alone
    problems = check_dataset(root, "scene_folder").problems
    assert len(problems) == 1 and "with every depth map x 0.3048" in problems[0], problems
    assert "the depth looks like feet where metres are expected" in problems[0]
    assert "camera-to-world" not in problems[0]


def test_whole_number_depth_of_a_plausible_size_is_named(clean, tmp_path):
    root, scene = copy_of(clean, tmp_path)
    paths = depth_as_npy(scene, clean[1]["depth"], 1.0)
    for p in paths:                                           # centimetres of a room 4x smaller: medians ~100
        np.save(p, np.round(np.load(p) * 25))
    units = next(p for p in check_dataset(root, "scene_folder").problems if "implausible" in p)
    assert "whole numbers only" in units and str(paths[0].parent) in units, units


def test_pixel_center_nan_is_named_not_the_poses(clean, tmp_path):
    root, scene = copy_of(clean, tmp_path)
    cams = scene / "cameras.json"
    data = json.loads(cams.read_text())
    data["pixel_center"] = float("nan")
    cams.write_text(json.dumps(data))                  # Python's json writes NaN, and reads it back
    problems = check_dataset(root, "scene_folder").problems
    assert problems == [f"scene scene0000: {cams}: pixel_center is nan; expected a finite number (0.5: pixel j's "
                        "centre at j + 0.5, OpenCV/COLMAP; 0: at j); the views' geometry is not checked"]


def test_float_instance_ids_are_named(tmp_path):
    write_fixture("scannetpp", tmp_path, num_scenes=1, num_views=2, image_size=SIZE)
    path = tmp_path / "scene0000" / "refined_ins_ids" / "frame_000010.jpg.npy"
    ids = np.load(path).astype(np.float32)
    np.save(path, np.where(ids > 0, ids + 0.4, 0))       # truncated by the reader: 2.4 -> 2, ...
    problems = check_dataset(tmp_path).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"scene scene0000, frame frame_000010.jpg: instance ids {path}: ")
    assert "not whole numbers (e.g. 1.4" in problems[0] and "instances merge" in problems[0]


def test_jpeg_compressed_id_maps_saved_as_png_are_named(clean, tmp_path):
    root, scene = copy_of(clean, tmp_path)
    path = scene / "instances" / "view_01.png"
    ids = np.asarray(Image.open(path))
    assert lossy_id_signature(ids) is None                # the exact map is clean
    buf = io.BytesIO()
    Image.fromarray(ids.astype(np.uint8)).save(buf, "JPEG", quality=90)
    Image.fromarray(np.asarray(Image.open(buf))).save(path)            # a JPEG's pixels in a .png
    problems = check_dataset(root, "scene_folder").problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"scene scene0000, frame view_01.png: instance ids {path}: looks lossily "
                                  "compressed"), problems[0]
