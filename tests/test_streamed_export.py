"""A windowed run keeps its per-pixel outputs on disk and the exporters read them a view at a time: the files are
the same as when everything is in memory, and the cloud is held to a budget (``--max-points``)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iggt_lightning.cli import main
from iggt_lightning.data.long_sequence import LongSequence
from iggt_lightning.inference.frame_stack import Batched, PerView, StoredFrames, in_memory, view_of

av = pytest.importorskip("av")


def test_stored_frames_read_back_what_was_written_one_frame_at_a_time(tmp_path):
    stack = StoredFrames(tmp_path / "x.raw", 5, (2, 3), torch.float32)
    data = torch.arange(30, dtype=torch.float32).reshape(5, 2, 3)
    stack.write(0, data[:2])
    stack.write(2, data[2:])
    assert stack.shape == (5, 2, 3) and len(stack) == 5
    assert torch.equal(stack[3], data[3]) and torch.equal(stack[-1], data[4]) and torch.equal(stack[1:4], data[1:4])
    assert torch.equal(stack[2, 1], data[2, 1])
    assert torch.equal(in_memory(stack), data)
    with pytest.raises(IndexError):
        stack[5]
    with pytest.raises(ValueError, match="do not fit"):
        stack.write(4, data[:2])
    batched = Batched(stack)
    assert batched.shape == (1, 5, 2, 3) and batched[0] is stack and torch.equal(view_of(batched[0], 4), data[4])
    lazy = PerView(lambda v: data[v] * 2, 5, (2, 3))
    assert torch.equal(view_of(lazy, 1), data[1] * 2) and lazy.shape == (5, 2, 3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    root = tmp_path_factory.mktemp("streamed")
    LongSequence(frames=30, seed=2).write_video(root / "walk.mp4")
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), root / "nano.safetensors")
    return root


def predict(inputs, out, *extra):
    return main(["predict", str(inputs / "walk.mp4"), "-c", str(inputs / "nano.safetensors"), "-o", str(out),
                 "--size", "112", "84", "--quiet", "--window", "10", "--overlap", "3", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_kept_on_disk_write_the_same_files_as_outputs_in_memory(inputs, tmp_path, monkeypatch):
    from iggt_lightning.inference import predict_windowed

    assert predict(inputs, tmp_path / "disk", "--points-from", "point") == 0
    stored = predict_windowed.FrameStore
    monkeypatch.setattr(predict_windowed, "FrameStore", lambda frames, folder: stored(frames))   # all in memory
    assert predict(inputs, tmp_path / "memory", "--points-from", "point") == 0
    disk, memory = _files(tmp_path / "disk"), _files(tmp_path / "memory")
    assert set(disk) == set(memory)
    differ = [f for f in disk if f != "manifest.json" and disk[f] != memory[f]]
    assert not differ, differ
    a, b = (json.loads(x["manifest.json"]) for x in (disk, memory))
    for m in (a, b):
        m.pop("seconds")
        for w in m["windowed"]["per_window"]:
            w.pop("seconds"), w.pop("network_seconds")
    assert a == b
    assert a["cloud"]["points"] == a["points"] > 1000 and a["cloud"]["max_points"] == 2_000_000
    with np.load(tmp_path / "disk" / "depth" / "depth.npz") as npz:      # per view: random weights' cameras
        stems = [f"walk_{i:06d}" for i in range(30)]                        # are not all valid
        arrays = ([npz["depth"][i] for i in range(30)], [npz["valid"][i] for i in range(30)]) if "depth" in npz \
            else ([npz[f"depth_{s}"] for s in stems], [npz[f"valid_{s}"] for s in stems])
        assert all(d.shape == v.shape and v.dtype == bool and np.isfinite(d).all() for d, v in zip(*arrays))


def _ply_vertices(path: Path) -> int:
    head = path.read_bytes()[:2000].split(b"end_header")[0].decode()
    return int(next(line.split()[2] for line in head.splitlines() if line.startswith("element vertex")))


def test_the_cloud_is_thinned_evenly_to_max_points(inputs, tmp_path):
    assert predict(inputs, tmp_path / "all", "--points-from", "point", "--max-points", "10000000") == 0
    assert predict(inputs, tmp_path / "few", "--points-from", "point", "--max-points", "5000") == 0
    full = json.loads((tmp_path / "all" / "manifest.json").read_text())
    few = json.loads((tmp_path / "few" / "manifest.json").read_text())
    assert full["cloud"]["kept"] == few["cloud"]["kept"] == full["points"] > 5000
    assert few["points"] == few["cloud"]["points"] == _ply_vertices(tmp_path / "few" / "points.ply") == 5000
    # evenly: every view keeps about its share of the budget, per instance too
    inst_all = {r["id"]: r["points"] for r in json.loads((tmp_path / "all" / "instances3d.json").read_text())["instances"]}
    inst_few = {r["id"]: r["points"] for r in json.loads((tmp_path / "few" / "instances3d.json").read_text())["instances"]}
    share = 5000 / full["cloud"]["kept"]
    for k, n in inst_all.items():
        if n > 2000:
            assert abs(inst_few[k] / n - share) < 0.2 * share, (k, n, inst_few[k])


def test_a_bad_max_points_is_one_line_naming_the_option(inputs, tmp_path, capsys):
    assert predict(inputs, tmp_path / "bad", "--max-points", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_points" in err and not (tmp_path / "bad").exists()
