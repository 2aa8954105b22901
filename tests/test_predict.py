"""`iggt predict` end to end on synthetic photos with a tiny checkpoint; every output reopened by its own library;
the default outputs need no optional package, and an option that needs one stops before inference naming its extra."""
import fnmatch
import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iggt_lightning.cli import main
from iggt_lightning.inference.images import ViewTransform, list_images, preprocess


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data import SyntheticScenes
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    photos = root / "photos"
    photos.mkdir()
    scene = SyntheticScenes(length=1, num_views=3, image_size=(98, 154), seed=1)[0]
    for i, im in enumerate(scene["images"]):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(photos / f"view_{i}.png")
    return root


def predict(assets, out, *extra):
    return main(["predict", str(assets / "photos"), "-c", str(assets / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", *extra])


def read_colmap(folder: Path):
    from scipy.spatial.transform import Rotation

    cams, imgs, pts = {}, {}, []
    for line in (folder / "cameras.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            i, model, w, h, fx, fy, cx, cy = line.split()
            assert model == "PINHOLE"
            cams[int(i)] = (int(w), int(h), np.array([[float(fx), 0, float(cx)], [0, float(fy), float(cy)], [0, 0, 1]]))
    lines = [ln for ln in (folder / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    for line in lines[::2]:
        f = line.split()
        qw, qx, qy, qz, tx, ty, tz = map(float, f[1:8])
        R = Rotation.from_quat([qx, qy, qz, qw]).as_matrix()     # scipy: scalar last
        imgs[int(f[0])] = (R, np.array([tx, ty, tz]), int(f[8]), f[9])
    for line in (folder / "points3D.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            pts.append([float(v) for v in line.split()[1:4]])
    return cams, imgs, np.array(pts)


def test_predict_writes_files_other_tools_open(assets, tmp_path):
    from pycocotools import mask as mask_utils

    trimesh = pytest.importorskip("trimesh")      # an independent reader of our PLY and GLB

    out = tmp_path / "out"
    assert predict(assets, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for rel in manifest["files"]:
        assert (out / rel).is_file(), rel
    assert not list(tmp_path.glob(".out.partial-*"))
    n = manifest["points"]
    # PLY and GLBs through trimesh
    ply = trimesh.load(out / "points.ply")
    assert len(ply.vertices) == n
    for name in ("scene.glb", "instances.glb", "features.glb"):
        scene = trimesh.load(out / name)
        geoms = scene.geometry
        assert len(geoms["points"].vertices) == n and sum(k.startswith("camera_") for k in geoms) == 3
    # 16-bit id maps at photo resolution + COCO RLE that decodes to the same masks
    coco = json.loads((out / "masks" / "instances.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["view_0.png", "view_1.png", "view_2.png"]
    assert coco["info"]["image_root"] == "images" and all((out / "images" / im["file_name"]).is_file()
                                                          for im in coco["images"])
    for im in coco["images"]:
        ids = np.asarray(Image.open(out / "masks" / (Path(im["file_name"]).stem + ".png")))
        assert ids.shape == (98, 154) and ids.dtype == np.uint16 and (ids > 0).all()
        for ann in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), ids == ann["track_id"])
            assert 0 <= ann["score"] <= 1
    assert max(a["track_id"] for a in coco["annotations"]) == manifest["instances"]
    # COLMAP: the cameras reproject every exported point onto the depth map of the view it came from
    cams, imgs, pts = read_colmap(out / "sparse" / "0")
    assert len(pts) == n
    depth = np.load(out / "depth" / "depth.npz")["depth"]
    assert depth.shape == (3, 98, 154)
    png = np.asarray(Image.open(out / "depth" / "view_0.png")).astype(np.float64)
    assert np.allclose(png / 1000.0, np.clip(depth[0], 0, 65.535), atol=1e-3)
    matched = np.zeros(len(pts), bool)
    for i, (R, t, cam, name) in imgs.items():
        w, h, K = cams[cam]
        assert (w, h) == (154, 98)
        xc = pts @ R.T + t
        uv = xc @ K.T
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        inside = (xc[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = np.full(len(pts), np.nan)
        d[inside] = depth[i - 1][np.floor(v[inside]).astype(int), np.floor(u[inside]).astype(int)]
        matched |= np.abs(xc[:, 2] - d) <= 0.02 * d
    assert matched.mean() > 0.95, matched.mean()
    cameras = json.loads((out / "cameras.json").read_text())
    assert "world-to-camera" in cameras["convention"] and len(cameras["views"]) == 3


def test_predict_refuses_bad_input_and_leaves_nothing(assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(assets, out) == 0
    assert predict(assets, out) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert predict(assets, out, "--overwrite", "--mode", "pad", "--no-images") == 0
    assert json.loads((out / "manifest.json").read_text())["mode"] == "pad"
    assert not list(out.glob("images*"))                 # no views saved: COCO names the photos, no image root
    coco = json.loads((out / "masks" / "instances.json").read_text())
    assert coco["info"]["image_root"] is None and [im["file_name"] for im in coco["images"]] == \
        sorted(p.name for p in (assets / "photos").iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "-c", str(assets / "nano.safetensors"), "-o", str(tmp_path / "o2")]) == 2
    assert "contains no images" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"not a png")
    assert main(["predict", str(bad), "-c", str(assets / "nano.safetensors"), "-o", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "a.png" in err
    assert main(["predict", str(assets / "photos"), "-c", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o4")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_predict_disk_error_mid_write_leaves_no_files(assets, tmp_path, monkeypatch):
    from iggt_lightning.inference import colmap

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(colmap, "write_model", full_disk)
    assert predict(assets, tmp_path / "out") == 2
    assert list(tmp_path.iterdir()) == []


def test_predict_dry_run_prints_the_plan(assets, tmp_path, capsys):
    assert predict(assets, tmp_path / "out", "--dry-run") == 0
    text = capsys.readouterr().out
    assert "3 view(s)" in text and "points.ply" in text and "masks/view_2.png" in text
    assert not (tmp_path / "out").exists()


def test_preprocess_modes_keep_any_aspect_and_map_back(tmp_path):
    photos = [np.zeros((300, 400, 3), np.uint8), np.zeros((480, 360, 3), np.uint8)]
    for mode, shape in (("resize", (336, 504)), ("crop", (392, 518)), ("pad", (518, 518))):
        images, transforms = preprocess(photos, mode)
        assert images.shape == (2, 3, *shape)
        h, w = shape
        # a model-resolution map of model x-coordinates comes back as the photo's mapped coordinates
        xm = (torch.arange(w) + 0.5).float()[None].expand(h, w)
        for t in transforms:
            back, inside = t.to_photo(xm, (w, h))
            expected = (torch.arange(t.photo_size[0]) + 0.5) * t.scale[0] + t.offset[0]
            assert torch.allclose(back[inside], expected[None].expand_as(back)[inside], atol=1e-3)
    # intrinsics: a photo pixel and its model pixel see the same ray
    t = ViewTransform((400, 300), (504 / 400, 336 / 300), (0.0, 0.0))
    K_model = torch.tensor([[300.0, 0, 252], [0, 310, 168], [0, 0, 1]], dtype=torch.float64)
    K_photo = t.intrinsics_to_photo(K_model)
    px = torch.tensor([123.5, 77.5, 1.0], dtype=torch.float64)
    pm = t.matrix() @ px
    assert torch.allclose(torch.linalg.solve(K_photo, px), torch.linalg.solve(K_model, pm))
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        preprocess(photos, "stretch")
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.jpg"]


def test_predict_from_a_lightning_checkpoint_and_a_wrong_checkpoint(assets, tmp_path, capsys):
    from tests.test_cli_training import tiny_args

    assert main(["fit", *tiny_args(tmp_path / "run", steps=1)]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["predict", str(assets / "photos"), "-c", str(ckpt), "-o", str(tmp_path / "out"),
                 "--size", "112", "84", "--quiet", "--granularity", "large"]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["views"] == 3
    # a file that is neither our format nor an official checkpoint (a plain state dict of another model)
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    capsys.readouterr()
    assert main(["predict", str(assets / "photos"), "-c", str(tmp_path / "other.pt"), "-o", str(tmp_path / "o2"),
                 "--quiet"]) == 2
    assert "not an official IGGT/VGGT checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_predict_names_instances_when_the_open_vocab_postprocessor_is_configured(assets, tmp_path):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data.synthetic import COLOUR_NAMES
    from iggt_lightning.model import IGGTModel

    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    save_model(model, tmp_path / "ov.safetensors", postprocess={
        "tracking": {}, "open_vocab": {"class_names": list(COLOUR_NAMES), "encoder": "colour"}})
    assert main(["predict", str(assets / "photos"), "-c", str(tmp_path / "ov.safetensors"), "-o", str(tmp_path / "out"),
                 "--size", "112", "84", "--quiet", "--granularity", "0.05"]) == 0
    coco = json.loads((tmp_path / "out" / "masks" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert list(names.values())[1:] == list(COLOUR_NAMES)
    for ann in coco["annotations"]:
        assert ann["label"] in COLOUR_NAMES and names[ann["category_id"]] == ann["label"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["labels"]) == manifest["instances"]


def test_predict_from_a_video_and_mixed_photo_sizes(assets, tmp_path):
    av = pytest.importorskip("av")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((assets / "photos").iterdir())]
    video = tmp_path / "walk.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 154, 98, "yuv420p"
        for f in frames * 2:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    small = tmp_path / "small.png"
    Image.fromarray(frames[0][:70, :120]).save(small)  # a photo of another size
    out = tmp_path / "out"
    assert main(["predict", str(video), str(small), "-c", str(assets / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", "--video-frames", "3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["views"] == 4 and manifest["photo_sizes"] == [[154, 98]] * 3 + [[120, 70]]
    assert (out / "masks" / "walk_00000.png").is_file() and (out / "masks" / "small.png").is_file()
    assert np.asarray(Image.open(out / "depth" / "small.png")).shape == (70, 120)
    assert "depth_small" in np.load(out / "depth" / "depth.npz")


def test_predict_with_merged_global_attention_for_many_views(assets, tmp_path, capsys):
    out = tmp_path / "merged"
    assert predict(assets, out, "--global-attention", '{"kind": "merged", "ratio": 0.5}') == 0
    used = json.loads((out / "manifest.json").read_text())["global_attention"]
    assert (used["kind"], used["ratio"]) == ("merged", 0.5)
    assert predict(assets, tmp_path / "exact") == 0                 # the checkpoint's own mode by default
    assert json.loads((tmp_path / "exact" / "manifest.json").read_text())["global_attention"] == {"kind": "exact"}
    for spec, message in (('{"kind": "merged", "ratio": 1.5}', "--global-attention.ratio must be a number"),
                          ('{"kind": "merged", "start_block": 99}', "--global-attention.start_block must be"),
                          ('{"kind": "sparse"}', "--global-attention.kind must be one of")):
        assert predict(assets, tmp_path / "bad", "--global-attention", spec) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------- what a plain install can write
def _canon(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def optional_packages() -> tuple[set[str], list[str]]:
    """(distributions, their top-level modules) installed here that only an extra of iggt-lightning requires, i.e.
    what a plain `pip install iggt-lightning` lacks (from the installed metadata; pytest, the runner, stays)."""
    from packaging.requirements import Requirement

    core, extra = set(), set()
    for text in metadata.requires("iggt-lightning") or []:
        req = Requirement(text)
        (extra if req.marker is not None and "extra" in str(req.marker) else core).add(_canon(req.name))
    optional = extra - core - {"pytest"}
    modules = sorted(m for m, dists in metadata.packages_distributions().items()
                     if {_canon(d) for d in dists} & optional and not {_canon(d) for d in dists} & core)
    return optional, modules


# a fresh interpreter in which the optional packages are not installed as far as Python can tell: the path finder
# neither finds their modules (import fails, importlib.util.find_spec gives None) nor lists their distributions
# (importlib.metadata, which lightning's and torchmetrics' availability checks read); runs `iggt` per argument list
BLOCKED_RUN = textwrap.dedent("""
    import importlib.machinery, json, sys
    dists, modules = set(sys.argv[1].split(",")), set(sys.argv[2].split(","))

    class NotInstalled(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            return None if name.partition(".")[0] in modules else super().find_spec(name, path, target)

        @classmethod
        def find_distributions(cls, *args, **kwargs):
            return (d for d in super().find_distributions(*args, **kwargs)
                    if (d.metadata["Name"] or "").replace("_", "-").replace(".", "-").lower() not in dists)

    sys.meta_path[:] = [NotInstalled if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert not modules & set(sys.modules), "imported before the finder was replaced"
    from iggt_lightning.cli import main
    print(json.dumps([main(argv) for argv in json.loads(sys.argv[3])]))
""")


def test_default_outputs_need_no_optional_package(assets, tmp_path):
    dists, modules = optional_packages()
    assert {"trimesh", "pycolmap"} <= set(modules)        # installed here (dev extra): really taken away below
    out = tmp_path / "out"
    args = ["predict", str(assets / "photos"), "-c", str(assets / "nano.safetensors"), "-o", str(out),
            "--size", "112", "84", "--quiet"]
    runs = json.dumps([[*args, "--dry-run"], args])
    run = subprocess.run([sys.executable, "-c", BLOCKED_RUN, ",".join(dists), ",".join(modules), runs],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and json.loads(run.stdout.splitlines()[-1]) == [0, 0], run.stderr[-3000:]
    planned = [ln.strip() for ln in run.stdout.splitlines() if ln.startswith("  ")]
    assert {"scene.glb", "instances.glb", "sparse/0/points3D.txt", "images_4/view_0.png"} <= set(planned)
    listed = json.loads((out / "manifest.json").read_text())["files"]
    # the plan names every file (a name with <id>: one file per instance found) and nothing that is not written
    fixed = {f for f in planned if "<id>" not in f}
    patterns = [f.replace("<id>", "*") for f in planned if "<id>" in f]
    assert fixed <= set(listed) and all(f in fixed or any(fnmatch.fnmatch(f, q) for q in patterns) for f in listed)
    assert all(any(fnmatch.fnmatch(f, q) for f in listed) for q in patterns)
    assert all((out / f).is_file() for f in listed)


def test_ba_without_pycolmap_stops_before_inference(assets, tmp_path, capsys, monkeypatch):
    from iggt_lightning.module import IGGTLitModule

    def no_inference(*a, **k):
        raise AssertionError("the model was loaded: the missing package was found only after inference started")

    monkeypatch.setitem(sys.modules, "pycolmap", None)      # import pycolmap now raises ModuleNotFoundError
    monkeypatch.setattr(IGGTLitModule, "from_checkpoint_file", no_inference)
    for dry in (["--dry-run"], []):
        assert predict(assets, tmp_path / "out", "--ba", *dry) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "pip install 'iggt-lightning[colmap]'" in err and "--ba" in err, err
        assert list(tmp_path.iterdir()) == []                # no output folder, no temporary one


@pytest.mark.parametrize("selection", ["ply,cameras_json", "masks,glb,colmap", "depth_maps", "grounding"])
def test_exporters_option_writes_exactly_the_chosen_formats_and_the_dry_run_says_so(assets, tmp_path, capsys,
                                                                                       selection):
    capsys.readouterr()
    assert predict(assets, tmp_path / "dry", "--dry-run", "--exporters", selection) == 0
    said = {line.strip() for line in capsys.readouterr().out.splitlines()}
    assert predict(assets, tmp_path / "out", "--exporters", selection) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["exporters"] == [n for n in manifest["exporters"] if n in selection.split(",")]
    assert set(manifest["exporters"]) == set(selection.split(","))
    written = {str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert written == set(manifest["files"])
    # the dry run listed every file written (<id>: one file per instance found)
    assert all(f in said or any(fnmatch.fnmatch(f, s.replace("<id>", "*")) for s in said if "<id>" in s)
               for f in written), written - said
    assert not any(f.startswith("images/") for f in written)        # the views are an exporter too
    assert "manifest.json" in written


def test_an_unknown_exporter_is_one_line_naming_the_option_and_the_registered_names(assets, tmp_path, capsys):
    assert predict(assets, tmp_path / "out", "--exporters", "ply,plyy") != 0
    err = capsys.readouterr().err
    assert "exporters" in err and "'plyy'" in err and "cameras_json" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
