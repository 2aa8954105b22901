"""The prediction folder as the tools users feed it read it: COLMAP's model at sparse/0 (pycolmap; COLMAP's own
`model_analyzer` where installed), gsplat's COLMAP parser (its file rules, mimicked below), COCO with an image root
(pycocotools) and nerfstudio's transforms.json, every name pointing at a file under images/ (or images_N/)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iggt_lightning.cli import main

pycolmap = pytest.importorskip("pycolmap")

SIZE = (154, 98)        # photo W, H: not a multiple of 4 or 8, so the downscaled copies crop a remainder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """`iggt predict` with default options on JPEG photos whose names have spaces (COLMAP's text format cannot)."""
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    (root / "photos").mkdir()
    scene = SyntheticScenes(length=1, num_views=3, image_size=SIZE[::-1], seed=1)[0]
    for i, im in enumerate(scene["images"]):
        rgb = (im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / "photos" / f"my photo {i}.jpg", quality=95)
    out = root / "out"
    assert main(["predict", str(root / "photos"), "-c", str(root / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet"]) == 0
    return out


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def test_colmap_model_at_sparse_0_names_the_saved_images(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["colmap"]["path"] == "sparse/0" and not (folder / "colmap").exists()
    rec = pycolmap.Reconstruction(str(folder / "sparse" / "0"))
    assert rec.num_reg_images() == 3 and rec.num_points3D() == manifest["colmap"]["points"] > 0
    names = sorted(im.name for im in rec.images.values())
    assert names == sorted(p.name for p in (folder / "images").iterdir()) == [f"my_photo_{i}.png" for i in range(3)]
    for im in rec.images.values():
        cam = rec.cameras[im.camera_id]
        assert cam.model.name == "PINHOLE" and (cam.width, cam.height) == image_size(folder / "images" / im.name)


def test_coco_file_names_are_the_saved_images(folder):
    from pycocotools.coco import COCO

    coco = COCO(str(folder / "masks" / "instances.json"))
    root = folder / coco.dataset["info"]["image_root"]        # what a COCO tool is given with the json
    assert root == folder / "images" and len(coco.imgs) == 3
    for im in coco.imgs.values():
        assert (root / im["file_name"]).is_file(), im["file_name"]
        assert image_size(root / im["file_name"]) == (im["width"], im["height"])
        assert im["input_name"] == im["file_name"].replace("_", " ").replace(".png", ".jpg")
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]])):
            assert coco.annToMask(ann).shape == (im["height"], im["width"])
    assert coco.getAnnIds()


def test_transforms_json_frames_resolve_as_nerfstudio_reads_them(folder):
    """nerfstudio's data parser (nerfstudio/data/dataparsers/nerfstudio_dataparser.py): `file_path` relative to the
    folder; per-frame fl_x, fl_y, cx, cy, w, h; `ply_file_path` relative to the folder; a downscale factor N reads
    images_N/<the file's name> and divides the intrinsics by N."""
    meta = json.loads((folder / "transforms.json").read_text())
    assert (folder / meta["ply_file_path"]).is_file() and len(meta["frames"]) == 3
    factors = json.loads((folder / "manifest.json").read_text())["images_downscaled"]["factors"]
    assert factors == [2, 4, 8]
    for frame in meta["frames"]:
        path = folder / frame["file_path"]
        assert path.parent.name == "images" and image_size(path) == (frame["w"], frame["h"])
        assert {"fl_x", "fl_y", "cx", "cy"} <= set(frame)
        for n in factors:
            assert image_size(folder / f"images_{n}" / path.name) == (frame["w"] // n, frame["h"] // n)


def gsplat_parser_problems(data_dir: Path, factor: int) -> list[str]:
    """What stops gsplat's COLMAP parser (examples/datasets/colmap.py, class Parser, in nerfstudio-project/gsplat at
    commit 90d7b4b, Aug 2026; simple_trainer.py's data_factor, default 4, is its ``factor``) from loading
    ``data_dir``, or makes it load the wrong image or intrinsics silently. Its rules, checked without gsplat:
    * the model is pycolmap.Reconstruction(data_dir/sparse/0/), else data_dir/sparse; at least one registered image;
    * camera models SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE only;
    * images/ and, for factor > 1, images_<factor>/ exist; their files (all of them, recursively, sorted) are paired
      by position, and every image name of the model must be among images/' files (else a KeyError); a name
      paired with another file reads another view's image;
    * the first image (by name) is read from images_<factor>/ and its size divided by the model camera's
      (width // factor, height // factor) rescales *every* camera's K[:2] /= factor: so each view's image must be
      exactly that size, or the intrinsics are off with no error; images are read as [..., :3] (RGB files);
    * the trainer's default sfm initialisation takes the model's 3D points (a 4-nearest-neighbour scale): >= 4."""
    sparse = data_dir / "sparse" / "0"
    if not sparse.exists():
        sparse = data_dir / "sparse"
    if not sparse.exists():
        return [f"COLMAP directory {sparse} does not exist"]
    rec = pycolmap.Reconstruction(str(sparse))
    images = [rec.images[i] for i in rec.reg_image_ids()]
    problems = [] if images else ["No images found in COLMAP"]
    accepted = {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE"}
    problems += [f"camera {im.camera_id}: model {rec.cameras[im.camera_id].model.name} not supported"
                 for im in images if rec.cameras[im.camera_id].model.name not in accepted]
    colmap_dir = data_dir / "images"
    image_dir = data_dir / (f"images_{factor}" if factor > 1 else "images")
    missing = [str(d) for d in (image_dir, colmap_dir) if not d.is_dir()]
    if missing:
        return problems + [f"Image folder {d} does not exist" for d in missing]

    def rel_files(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())

    pairs = dict(zip(rel_files(colmap_dir), rel_files(image_dir)))
    for im in sorted(images, key=lambda im: im.name):
        if im.name not in pairs:
            problems.append(f"{im.name}: not a file under images/")
            continue
        path = image_dir / pairs[im.name]
        cam = rec.cameras[im.camera_id]
        expected = (cam.width // factor, cam.height // factor)
        with Image.open(path) as picture:
            if picture.size != expected:
                problems.append(f"{path.relative_to(data_dir)}: {picture.size} px, camera says {expected}")
            if picture.mode != "RGB":
                problems.append(f"{path.relative_to(data_dir)}: mode {picture.mode}, not RGB")
        if pairs[im.name] != im.name:
            problems.append(f"{im.name} pairs with {image_dir.name}/{pairs[im.name]}: another view's file")
    if rec.num_points3D() < 4:
        problems.append(f"{rec.num_points3D()} 3D points: the sfm initialisation needs at least 4")
    return problems


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_gsplat_parser_rules_hold_at_every_data_factor(folder, factor):
    assert gsplat_parser_problems(folder, factor) == []


def test_gsplat_mimic_catches_a_broken_folder(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "images_4" / "my_photo_0.png").rename(copy / "images_4" / "zz.png")        # pairs shift by one
    Image.new("RGB", (10, 10)).save(copy / "images_2" / "my_photo_1.png")             # wrong size
    assert len(gsplat_parser_problems(copy, 4)) >= 2
    assert any("camera says" in p for p in gsplat_parser_problems(copy, 2))
    shutil.rmtree(copy / "images_8")
    assert any("images_8 does not exist" in p for p in gsplat_parser_problems(copy, 8))


def test_downscaled_views_are_whole_block_averages(folder):
    """images_N keeps the photo's pixel grid (pixel j covers photo pixels [Nj, Nj + N)), so gsplat's and nerfstudio's
    K / N is exact; a resize to a rounded size would shift it by up to a pixel."""
    full = np.asarray(Image.open(folder / "images" / "my_photo_1.png"), dtype=np.float64)
    for n in (2, 4, 8):
        small = np.asarray(Image.open(folder / f"images_{n}" / "my_photo_1.png"), dtype=np.float64)
        h, w = SIZE[1] // n, SIZE[0] // n
        blocks = full[:h * n, :w * n].reshape(h, n, w, n, 3).mean((1, 3))
        assert small.shape == (h, w, 3) and np.abs(small - blocks).max() <= 0.5 + 1e-9


@pytest.mark.skipif(shutil.which("colmap") is None, reason="COLMAP's command-line tool is not installed")
def test_colmap_itself_reads_sparse_0(folder):
    run = subprocess.run(["colmap", "model_analyzer", "--path", str(folder / "sparse" / "0")], capture_output=True,
                         text=True, timeout=120)
    text = run.stdout + run.stderr
    points = json.loads((folder / "manifest.json").read_text())["colmap"]["points"]
    assert run.returncode == 0 and "Registered images: 3" in text and f"Points: {points}" in text, text
