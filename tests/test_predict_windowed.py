"""``iggt predict --window``: a video or a folder of frames streamed through overlapping windows into one
prediction folder, as a user runs it (the command line, a real video file, a checkpoint file)."""
import json
from pathlib import Path

import pytest
import torch

from iggt_lightning.cli import main
from iggt_lightning.data.long_sequence import LongSequence

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("windowed")
    seq = LongSequence(frames=40, seed=1)
    seq.write_video(root / "walk.mp4")
    seq.write_photos(root / "frames")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano"), root / "nano.safetensors")
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "no_track.safetensors")
    data = (root / "walk.mp4").read_bytes()
    broken = bytearray(data)
    broken[len(data) // 2: len(data) // 2 + 4000] = bytes(4000)          # damaged in the middle
    (root / "damaged.mp4").write_bytes(bytes(broken))
    return root


def predict(inputs, source, out, *extra, ckpt="nano.safetensors"):
    return main(["predict", str(inputs / source), "-c", str(inputs / ckpt), "-o", str(out), "--size", "112", "84",
                 "--quiet", *extra])


def test_a_video_in_windows_gives_one_folder_with_every_frame(inputs, tmp_path):
    out = tmp_path / "out"
    assert predict(inputs, "walk.mp4", out, "--window", "12", "--overlap", "4") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    cams = json.loads((out / "cameras.json").read_text())["views"]
    assert manifest["views"] == len(cams) == 40
    assert [v["file_name"] for v in cams] == [f"walk_{i:06d}.png" for i in range(40)]
    assert len(list((out / "masks").glob("*.png"))) == 40
    w = manifest["windowed"]
    assert (w["window"], w["overlap"], w["windows"]) == (12, 4, 5)
    assert [d["frames"] for d in w["per_window"]] == [[0, 12], [8, 20], [16, 28], [24, 36], [28, 40]]
    for d in w["per_window"][1:]:                     # every later window aligned on its shared frames
        assert d["shared"] >= 4 and 0 <= d["alignment"]["residual"] < 1 and d["alignment"]["pixels"] > 100
        assert set(d["instances"]) == {"window", "matched", "new", "dropped"}
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == set(manifest["files"])


def test_a_frame_folder_with_a_stride_and_no_association(inputs, tmp_path):
    out = tmp_path / "out"
    assert predict(inputs, "frames", out, "--window", "6", "--stride", "2", "--no-association") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["views"] == 20 and manifest["windowed"]["overlap"] == 2          # a quarter of 6, at least 2
    assert manifest["windowed"]["association"] is False
    assert manifest["windowed"]["instances_matched"] == 0
    names = [v["file_name"] for v in json.loads((out / "cameras.json").read_text())["views"]]
    assert names == [f"frame_{i:05d}.png" for i in range(0, 40, 2)]


@pytest.mark.parametrize("extra, words", [
    (["--window", "8", "--overlap", "8"], "--window 8 must be larger than --overlap 8"),
    (["--window", "8", "--overlap", "1"], "--overlap 1: at least 2 shared frames"),
    (["--window", "64"], "--window 64: the input has only 40 frame(s)"),
    (["--overlap", "4"], "--overlap applies to windowed runs: give --window N too"),
    (["--stride", "2"], "--stride applies to windowed runs"),
    (["--window", "2"], "--window must be an integer >= 3"),
])
def test_windowing_mistakes_are_one_line_and_write_nothing(inputs, tmp_path, capsys, extra, words):
    assert predict(inputs, "walk.mp4", tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and words in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_video_damaged_part_way_names_the_frame_and_writes_nothing(inputs, tmp_path, capsys):
    assert predict(inputs, "damaged.mp4", tmp_path / "out", "--window", "12") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "damaged.mp4" in err and "after frame" in err, err
    assert list(tmp_path.iterdir()) == []


def test_ba_needs_the_track_head_and_says_what_it_did(inputs, tmp_path, capsys):
    assert predict(inputs, "walk.mp4", tmp_path / "none", "--window", "12", "--ba", ckpt="no_track.safetensors") == 2
    err = capsys.readouterr().err
    assert "--ba" in err and "no point-track head" in err
    assert not (tmp_path / "none").exists()
    # the nano model's track head has random weights: its tracks are noise, so the adjustment must not make the
    # cameras worse -- it keeps the predicted ones and says so
    assert predict(inputs, "walk.mp4", tmp_path / "ba", "--window", "12", "--overlap", "4", "--ba") == 0
    report = json.loads((tmp_path / "ba" / "manifest.json").read_text())["bundle_adjustment"]
    assert report["tracks"] > 100 and report["observations"] > 2 * report["tracks"]
    assert report["reprojection_error_after"] < report["reprojection_error_before"] or \
        "kept_predicted_cameras" in report
    assert "bundle adjustment on" in capsys.readouterr().out


def test_window_auto_fits_the_memory_budget(inputs, tmp_path, capsys):
    """--window auto measures this model at this input size and takes the largest window the budget holds; a
    budget that holds none is one line naming the option, before anything is written."""
    out = tmp_path / "auto"
    assert predict(inputs, "walk.mp4", out, "--window", "auto", "--memory-budget", "6000") == 0
    w = json.loads((out / "manifest.json").read_text())["windowed"]
    auto = w["auto"]
    assert w["window"] == auto["window"] and 3 <= w["window"] <= min(40, auto["max_window"])
    predicted = auto["peak_at_4_views_mib"] + (w["window"] - 4) * auto["per_view_mib"] + auto["allowance_mib"]
    assert predicted <= 6000 and auto["per_view_mib"] >= 1 and auto["budget_mib"] == 6000
    tight = tmp_path / "tight"
    capsys.readouterr()
    assert predict(inputs, "walk.mp4", tight, "--window", "auto", "--memory-budget", "600") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--memory-budget 600 MiB holds no window" in err and not tight.exists()
    assert predict(inputs, "walk.mp4", tight, "--memory-budget", "600") == 2
    assert "give --window auto too" in capsys.readouterr().err


def test_precision_applies_to_every_window(inputs, tmp_path):
    """--precision bf16 runs each window under bf16 autocast, as a one-pass run does under Lightning's: the
    maps move by bf16's rounding, not more, and the manifest says which."""
    import numpy as np

    for precision in ("32", "bf16"):
        assert predict(inputs, "walk.mp4", tmp_path / precision, "--window", "12", "--overlap", "4",
                       "--precision", precision) == 0
    manifests = {p: json.loads((tmp_path / p / "manifest.json").read_text()) for p in ("32", "bf16")}
    w = {p: m["windowed"] for p, m in manifests.items()}
    assert (w["32"]["precision"], w["bf16"]["precision"]) == ("32-true", "bf16-mixed")
    # under bf16 the heads follow the autocast by default (--head-precision fp32 keeps the official fp32 heads)
    assert [(manifests[p]["precision"], manifests[p]["head_precision"]) for p in ("32", "bf16")] == \
        [("32-true", "fp32"), ("bf16-mixed", "autocast")]
    with np.load(tmp_path / "32" / "depth" / "depth.npz") as a, np.load(tmp_path / "bf16" / "depth" / "depth.npz") as b:
        keys = [k for k in a.files if k.startswith("depth")]
        da = np.concatenate([a[k].ravel() for k in keys])
        db = np.concatenate([b[k].ravel() for k in keys])
    rel = np.abs(da - db) / np.maximum(np.abs(da), 1e-6)
    assert not np.array_equal(da, db) and np.median(rel[da > 0]) < 0.05
