"""`iggt predict --config ... --data ...`: Lightning's predict loop over a dataset, one output folder per scene,
written by the same PredictionWriter (and plugin hooks) as `iggt predict` on photos."""
import json

import numpy as np
import pytest
from PIL import Image

from iggt_lightning.cli import main

pytest.importorskip("trimesh")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.data.fixtures import write_fixture
    from tests.cli_helpers import pinned_nano_model

    root = tmp_path_factory.mktemp("predict_data")
    samples = write_fixture("scene_folder", root / "data", num_scenes=3, num_views=2, image_size=(56, 84))
    save_model(pinned_nano_model(), root / "nano.safetensors")
    config = root / "predict.yaml"
    config.write_text(f"""
trainer: {{accelerator: cpu, devices: 1, logger: false, enable_progress_bar: false, enable_model_summary: false}}
model: {{preset: nano, drop_heads: [track], init_checkpoint: {root / 'nano.safetensors'}}}
data:
  class_path: iggt_lightning.data.SceneDataModule
  init_args:
    eval_batch_size: 2
    predict:
      class_path: iggt_lightning.data.SceneFolderScenes
      init_args: {{root: {root / 'data'}, split: all, num_views: 2, image_size: [56, 84]}}
""")
    return root, samples


def test_three_scenes_three_folders(dataset, tmp_path, capsys):
    root, samples = dataset
    out = tmp_path / "predictions"
    assert main(["predict", "--config", str(root / "predict.yaml"), "--out", str(out),
                 "--export_options", '{"conf_threshold": 0}']) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["scene0000", "scene0001", "scene0002"]      # batches of 2 and 1 scenes
    for name in folders:
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert manifest["scene"] == name and manifest["views"] == 2 and manifest["model_input"] == [84, 56]
        for rel in manifest["files"]:
            assert (out / name / rel).is_file(), rel
        assert manifest["points"] == 2 * 56 * 84                     # conf_threshold 0 keeps every finite point
        cameras = json.loads((out / name / "cameras.json").read_text())
        frames = [v["file_name"] for v in cameras["views"]]
        assert frames == list(manifest["colmap_names"]) == ["view_00.png", "view_01.png"]   # the dataset's frame ids
        ids = np.asarray(Image.open(out / name / "masks" / "view_00.png"))
        assert ids.shape == (56, 84) and manifest["instances"] == int(ids.max())
        assert not list(out.glob(f".{name}.partial-*"))
    # a second run refuses to overwrite, then replaces previous predictions when asked
    assert main(["predict", "--config", str(root / "predict.yaml"), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["predict", "--config", str(root / "predict.yaml"), "--out", str(out), "--overwrite", "true"]) == 0
    # predictions never go into the dataset they read
    before = sorted(p.relative_to(root) for p in (root / "data").rglob("*"))
    assert main(["predict", "--config", str(root / "predict.yaml"), "--out", str(root / "data" / "preds")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert sorted(p.relative_to(root) for p in (root / "data").rglob("*")) == before


def test_photos_and_datasets_share_the_writer(dataset, tmp_path):
    """The same scene through both entries: photos of the fixture's views give the dataset path's files."""
    root, _ = dataset
    views = sorted((root / "data" / "scene0000" / "images").iterdir())
    out_photos = tmp_path / "photos_out"
    assert main(["predict", *map(str, views), "-c", str(root / "nano.safetensors"), "-o", str(out_photos),
                 "--size", "84", "56", "--quiet"]) == 0
    out_data = tmp_path / "data_out"
    assert main(["predict", "--config", str(root / "predict.yaml"), "--out", str(out_data)]) == 0
    a = json.loads((out_photos / "manifest.json").read_text())
    b = json.loads((out_data / "scene0000" / "manifest.json").read_text())
    strip = {"seconds", "scene", "mode", "colmap_names", "photo_sizes", "points"}
    files_a = {f.rsplit("/", 1)[0] if "/" in f else f for f in a["files"]}
    files_b = {f.rsplit("/", 1)[0] if "/" in f else f for f in b["files"]}
    assert files_a == files_b
    assert {k for k in a if k not in strip} == {k for k in b if k not in strip}


def test_sigterm_stops_a_dataset_prediction_with_nothing_half_written(dataset, tmp_path):
    """Lightning alone notes a SIGTERM and carries on to exit 0; here the run stops with 143, the scene being
    written is removed and the scene folders finished before it are whole."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root, _ = dataset
    out = tmp_path / "predictions"
    # a slow writer (one scene per batch, a pause after each) so the signal lands mid-run
    slow = tmp_path / "slow.yaml"
    slow.write_text("data:\n  init_args:\n    eval_batch_size: 1\n"
                    "trainer:\n  callbacks:\n    - class_path: tests.cli_helpers.PauseAfterBatch\n"
                    "      init_args: {seconds: 3}\n")
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=f"{repo}{os.pathsep}{env.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "iggt_lightning", "predict", "--config", str(root / "predict.yaml"),
                             "--config", str(slow), "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "scene0000" / "manifest.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "Traceback" not in err
    written = sorted(p.name for p in out.iterdir())
    assert "scene0000" in written and len(written) < 3
    assert not [p for p in out.parent.rglob("*") if ".partial-" in p.name]
    for name in written:       # whole folders only
        manifest = json.loads((out / name / "manifest.json").read_text())
        assert all((out / name / rel).is_file() for rel in manifest["files"])


def test_a_scene_of_many_views_in_windows(dataset, tmp_path, capsys):
    """``--windows``: a dataset scene of 12 views runs in windows of 6 sharing 2, into one folder, with the
    per-window diagnostics in its manifest; a bad window is one line naming the option."""
    from iggt_lightning.data.fixtures import write_fixture

    root, _ = dataset
    write_fixture("scene_folder", tmp_path / "long", num_scenes=1, num_views=12, image_size=(56, 84))
    config = tmp_path / "long.yaml"
    config.write_text((root / "predict.yaml").read_text().replace(str(root / "data"), str(tmp_path / "long"))
                      .replace("num_views: 2", "num_views: 12").replace("eval_batch_size: 2", "eval_batch_size: 1"))
    out = tmp_path / "out"
    assert main(["predict", "--config", str(config), "--out", str(out), "--windows", '{"window": 6, "overlap": 2}']) == 0
    (scene,) = out.iterdir()
    manifest = json.loads((scene / "manifest.json").read_text())
    assert manifest["views"] == 12 and len(list((scene / "masks").glob("*.png"))) == 12
    w = manifest["windowed"]
    assert (w["window"], w["overlap"], w["windows"]) == (6, 2, 3)
    assert [d["frames"] for d in w["per_window"]] == [[0, 6], [4, 10], [6, 12]]
    assert len(json.loads((scene / "cameras.json").read_text())["views"]) <= 12
    capsys.readouterr()
    assert main(["predict", "--config", str(config), "--out", str(tmp_path / "bad"), "--windows",
                 '{"window": 3, "overlap": 3}']) == 2
    err = capsys.readouterr().err
    assert "--windows" in err and "--overlap 3" in err and not (tmp_path / "bad").exists()
