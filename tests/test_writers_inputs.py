"""One input-vs-output rule for every writer, found by a red team: predictions through wrapper datasets, --overwrite
of folders that are not (only) ours, `iggt data check --json` into the data, and dataset files naming paths
outside the dataset. Every case builds a real dataset with the fixture writers, runs the real CLI (or the Python
entry it uses) and checks the exit code, the one-line message and that no pre-existing file changed."""
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from iggt_lightning.cli import main

SIZE = (28, 42)          # (H, W), multiples of nano's patch size


def tree(root: Path) -> dict:
    """Every entry under ``root``: a file's sha256, a link's target, "dir" for a folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line(err: str, prefix: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A nano checkpoint, a scene-folder dataset (2 scenes, 2 views) and one real photo prediction of scene 0."""
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data.fixtures import write_fixture
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("writers_inputs")
    write_fixture("scene_folder", root / "data", num_scenes=2, num_views=2, image_size=SIZE)
    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    cam = model.heads["camera"]      # as test_predict_datasets: identity poses, a 1 rad field of view (valid cameras)
    with torch.no_grad():
        cam.pose_branch.fc2.weight.zero_()
        cam.pose_branch.fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1.0]) / cam.num_iterations)
    save_model(model, root / "nano.safetensors")
    photos = sorted((root / "data" / "scene0000" / "images").iterdir())
    assert main(["predict", *map(str, photos), "-c", str(root / "nano.safetensors"), "-o", str(root / "pred"),
                 "--size", str(SIZE[1]), str(SIZE[0]), "--quiet"]) == 0
    return root


@pytest.fixture
def work(base, tmp_path):
    """A private copy of the base folder (tests add user files to it)."""
    shutil.copytree(base, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def mixed_config(work: Path, data: Path) -> Path:
    """`iggt predict --config`: a MixedScenes wrapping a SceneFolderScenes over ``data``."""
    config = work / "mixed.yaml"
    config.write_text(f"""
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_progress_bar: false, enable_model_summary: false}}
model: {{preset: nano, drop_heads: [track], init_checkpoint: {work / 'nano.safetensors'}}}
data:
  class_path: iggt_lightning.data.SceneDataModule
  init_args:
    predict:
      class_path: iggt_lightning.data.MixedScenes
      init_args:
        datasets:
          - class_path: iggt_lightning.data.SceneFolderScenes
            init_args: {{root: {data}, split: all, num_views: 2, image_size: [{SIZE[0]}, {SIZE[1]}]}}
""")
    return config


# ---------------------------------------------------------------------------- 1. dataset prediction through a wrapper
@pytest.mark.parametrize("where, why", [("data", "is the input data"), (".", "contains the input data"),
                                        ("data/scene0000/preds", "lies inside the input")])
def test_prediction_through_a_wrapper_never_writes_over_into_or_around_the_data(work, capsys, where, why):
    data = work / "data"                 # its scene0000: an earlier prediction (it re-reads as a scene folder)
    shutil.rmtree(data / "scene0000")
    shutil.copytree(work / "pred", data / "scene0000")
    (data / "scene0000" / "notes.txt").write_text("the user's own file")
    config = mixed_config(work, data)
    out = work / where if where != "." else work
    before = tree(work)
    assert main(["predict", "--config", str(config), "--out", str(out), "--overwrite", "true"]) == 2
    line = one_line(capsys.readouterr().err, "iggt predict: error:")
    assert f"--out {out} {why}" in line and str(data) in line
    assert tree(work) == before


def test_every_dataset_names_its_input_roots(work):
    from torch.utils.data import ConcatDataset, Subset

    from iggt_lightning.data import MixedScenes, PoseListScenes, SceneFolderScenes, SyntheticScenes
    from iggt_lightning.data.fixtures import write_fixture
    from iggt_lightning.data.paths import input_roots_of

    write_fixture("pose_list", work / "poses", num_scenes=1, num_views=2, image_size=SIZE)
    folder = SceneFolderScenes(work / "data", split="all", num_views=2, image_size=SIZE)
    poses = PoseListScenes(work / "poses", split="all", num_views=2, image_size=SIZE,
                           annotations=str(work / "poses" / "annotations.jgz"))
    nested = MixedScenes([Subset(ConcatDataset([folder, SyntheticScenes(2)]), [0]), MixedScenes([poses])])
    assert input_roots_of(nested) == [work / "data", work / "poses", work / "poses" / "annotations.jgz"]


# ---------------------------------------------------------------------------- 2. --overwrite deletes only its own files
def test_prediction_manifest_lists_every_file_it_wrote(work):
    from iggt_lightning.inference.output_folder import folder_files

    listed = json.loads((work / "pred" / "manifest.json").read_text())["files"]
    assert len(listed) == len(set(listed)) and set(listed) == set(folder_files(work / "pred"))


@pytest.mark.parametrize("added", ["notes.txt", "masks/my_edit.png"])
def test_overwrite_refuses_a_prediction_holding_user_files(work, capsys, added):
    (work / "pred" / added).write_text("added by hand after the prediction")
    photos = sorted((work / "data" / "scene0000" / "images").iterdir())
    before = tree(work)
    assert main(["predict", *map(str, photos), "-c", str(work / "nano.safetensors"), "-o", str(work / "pred"),
                 "--overwrite", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "iggt predict: error:")
    assert added in line and "not in its manifest.json" in line and str(work / "pred") in line
    assert tree(work) == before


def test_overwrite_refuses_a_folder_that_only_copies_our_format_string(work, capsys):
    from iggt_lightning.inference.output_folder import MANIFEST_FORMAT

    thesis = work / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work")
    (thesis / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT}))
    photos = sorted((work / "data" / "scene0000" / "images").iterdir())
    before = tree(work)
    assert main(["predict", *map(str, photos), "-c", str(work / "nano.safetensors"), "-o", str(thesis),
                 "--overwrite", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "iggt predict: error:")
    assert "chapter1.tex" in line and str(thesis) in line
    assert tree(work) == before


def test_overwrite_refuses_a_manifest_listing_a_path_outside_its_folder(work, capsys):
    manifest = json.loads((work / "pred" / "manifest.json").read_text())
    outside = "../data/scene0000/cameras.json"
    manifest["files"].append(outside)
    (work / "pred" / "manifest.json").write_text(json.dumps(manifest))
    photos = sorted((work / "data" / "scene0000" / "images").iterdir())
    before = tree(work)
    assert main(["predict", *map(str, photos), "-c", str(work / "nano.safetensors"), "-o", str(work / "pred"),
                 "--overwrite", "--quiet"]) == 2
    line = one_line(capsys.readouterr().err, "iggt predict: error:")
    assert repr(outside) in line and "outside its folder" in line
    assert tree(work) == before


def test_dataset_prediction_overwrite_refuses_a_scene_folder_with_user_files(work, capsys):
    out = work / "preds"
    (out / "scene0000").mkdir(parents=True)
    for f in (work / "pred").iterdir():          # a previous prediction of the scene, with a file added by hand
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, out / "scene0000" / f.name)
    (out / "scene0000" / "notes.txt").write_text("mine")
    before = tree(work)
    assert main(["predict", "--config", str(mixed_config(work, work / "data")), "--out", str(out),
                 "--overwrite", "true"]) == 2
    line = one_line(capsys.readouterr().err, "iggt predict: error:")
    assert "notes.txt" in line and str(out / "scene0000") in line
    assert {k: v for k, v in tree(work).items() if k != "mixed.yaml"} == \
        {k: v for k, v in before.items() if k != "mixed.yaml"}


def test_a_replaced_output_loses_only_the_files_its_manifest_lists(work):
    from iggt_lightning.inference.output_folder import discard_old

    old = work / ".pred.old-1"
    shutil.copytree(work / "pred", old)
    (old / "raced.txt").write_text("appeared between the check and the delete")
    discard_old(old)
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json", "raced.txt"]


def test_overwrite_replaces_a_clean_previous_prediction(work):
    photos = sorted((work / "data" / "scene0000" / "images").iterdir())
    before = {k: v for k, v in tree(work).items() if not k.startswith("pred")}
    assert main(["predict", *map(str, photos), "-c", str(work / "nano.safetensors"), "-o", str(work / "pred"),
                 "--size", str(SIZE[1]), str(SIZE[0]), "--overwrite", "--quiet"]) == 0
    assert {k: v for k, v in tree(work).items() if not k.startswith("pred")} == before
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------- 3. iggt data check --json
@pytest.mark.parametrize("target", ["scene0000/cameras.json", "report.json", "."])
def test_data_check_json_is_never_written_into_the_dataset(work, capsys, target):
    data = work / "data"
    path = data / target if target != "." else data
    before = tree(work)
    assert main(["data", "check", str(data), "--json", str(path)]) == 2
    line = one_line(capsys.readouterr().err, "iggt data check:")
    assert f"--json {path}" in line and "the dataset being checked" in line
    assert tree(work) == before
    assert main(["data", "check", str(data), "--json", str(work / "report.json")]) == 0    # beside it: fine
    assert json.loads((work / "report.json").read_text())["ok"] is True


# ---------------------------------------------------------------------------- 4. paths read from dataset files
def _edit_cameras(data: Path, **fields) -> None:
    path = data / "scene0000" / "cameras.json"
    cameras = json.loads(path.read_text())
    cameras["views"][0].update(fields)
    path.write_text(json.dumps(cameras))


@pytest.mark.parametrize("field", ["file_name", "image_path"])
def test_a_cameras_json_path_outside_the_dataset_is_refused(work, capsys, field):
    from PIL import Image

    data = work / "data"
    Image.new("RGB", (SIZE[1], SIZE[0]), (255, 0, 0)).save(work / "secret.png")
    value = "../../../secret.png" if field == "file_name" else str(work / "secret.png")
    _edit_cameras(data, **{field: value})
    before = tree(work)
    want = [str(data / "scene0000" / "cameras.json"), f"views[0].{field}", repr(value), "outside the dataset folder"]
    assert main(["data", "check", str(data)]) == 1
    out = capsys.readouterr().out
    assert all(w in one_line(out, "  - ") for w in want), out
    assert main(["predict", "--config", str(mixed_config(work, data)), "--out", str(work / "preds")]) == 2
    err = capsys.readouterr().err       # jsonargparse nests the reader's line in its own report of the config
    assert any(all(w in line for w in want) for line in err.splitlines()), err
    assert not (work / "preds").exists()
    assert {k: v for k, v in tree(work).items() if k != "mixed.yaml"} == \
        {k: v for k, v in before.items() if k != "mixed.yaml"}


@pytest.mark.parametrize("layout", ["scannetpp", "pose_list", "co3d"])
def test_every_reader_refuses_file_paths_that_leave_the_dataset(tmp_path, layout):
    """The readers whose files name other files: ScanNet++'s metadata ``images``, the annotations' ``filepath``."""
    import gzip

    import numpy as np

    from iggt_lightning.data.fixtures import reader_class, write_fixture
    from iggt_lightning.data.frames import DatasetError

    root = tmp_path / "d"
    write_fixture(layout, root, num_scenes=1, num_views=2, image_size=SIZE)
    evil = "../../../outside.jpg"
    if layout == "scannetpp":
        file = root / "scene0000" / "scene_iphone_metadata.npz"
        meta = dict(np.load(file))
        meta["images"] = np.array([meta["images"][0], evil, *meta["images"][2:]])
        np.savez(file, **meta)
        field = "images[1]"
    else:
        file = root / ("annotations.jgz" if layout == "pose_list" else "annotations/toycategory_test.jgz")
        data = json.loads(gzip.open(file, "rt").read())
        frames = data["scene0000"][0] if layout == "pose_list" else data["scene0000"]
        frames[1]["filepath"] = evil
        with gzip.open(file, "wt") as f:
            json.dump(data, f)
        field = "frames[1].filepath"
    before = tree(tmp_path)
    with pytest.raises(DatasetError) as err:
        reader_class(layout)(root, split="all", num_views=2, image_size=SIZE, min_views=2)
    message = str(err.value)
    assert "\n" not in message and str(file) in message and field in message and repr(evil) in message
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------- 5. the rule itself (results, convert)
def test_the_rule_refuses_is_inside_and_around_through_symlinks(tmp_path):
    from iggt_lightning.inference.output_folder import OutputFolderError, refuse_overlap

    config = tmp_path / "c.yaml"
    config.write_text("x: 1")
    (tmp_path / "link.yaml").symlink_to(config)
    assert refuse_overlap(None, [str(config)], "--results") is None           # no output asked for
    assert refuse_overlap(tmp_path / "r.json", [str(config)], "--results") == tmp_path / "r.json"
    for out, why in ((config, "is one of this run's inputs"), (tmp_path / "link.yaml", f"is one of this run's "
                     f"inputs, {config}"), (tmp_path, "contains one of this run's inputs")):
        with pytest.raises(OutputFolderError, match="--results") as err:
            refuse_overlap(out, [str(config)], "--results")
        assert why in str(err.value)
    assert config.read_text() == "x: 1"


def test_convert_never_writes_over_its_input_through_a_symlink(base, tmp_path, capsys):
    src = tmp_path / "model.safetensors"
    shutil.copy2(base / "nano.safetensors", src)
    (tmp_path / "alias.safetensors").symlink_to(src)
    before = tree(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "alias.safetensors")]) == 2
    line = one_line(capsys.readouterr().err, "iggt convert:")
    assert f"is the input checkpoint {src}" in line
    assert tree(tmp_path) == before
