"""The long-sequence test bed: determinism, path properties, ground-truth consistency, laziness, writers."""
import json

import numpy as np
import pytest
import torch

import iggt_lightning.data.long_sequence as long_sequence
from iggt_lightning.data.long_sequence import LongSequence
from iggt_lightning.geometry import unproject_depth


@pytest.fixture(scope="module")
def sequence():
    return LongSequence(frames=300, seed=4)


def test_same_seed_same_frames_other_seed_differs(sequence):
    again = LongSequence(frames=300, seed=4)
    for i in (0, 151):
        a, b = sequence.frame(i), again.frame(i)
        for key in ("images", "depth", "instance_ids", "world_points", "extrinsics", "intrinsics"):
            assert torch.equal(a[key], b[key]), key
    other = LongSequence(frames=300, seed=5)
    assert not np.allclose(other.extrinsics, sequence.extrinsics)
    assert not torch.equal(other.frame(0)["images"], sequence.frame(0)["images"])


def test_path_is_smooth_and_inside_the_room_outside_every_object(sequence):
    assert len(sequence) == 300 and sequence.extrinsics.shape == (300, 3, 4)
    assert sequence.intrinsics.shape == (300, 3, 3)
    centres = sequence.camera_centres
    room = sequence.room
    assert (np.abs(centres[:, 0]) < room.half_x).all() and (np.abs(centres[:, 2]) < room.half_z).all()
    assert ((centres[:, 1] > 1.2) & (centres[:, 1] < 1.6)).all()
    for obj in sequence.objects:
        lo, hi = obj.aabb()
        assert not ((centres > lo) & (centres < hi)).all(1).any(), obj.instance_id
    steps = np.linalg.norm(np.diff(np.concatenate([centres, centres[:1]]), axis=0), axis=1)
    assert steps.max() < 0.15                  # closed loop: the last frame also leads smoothly to the first


def test_groups_hold_identical_copies_in_different_groups(sequence):
    assert 3 <= len(sequence.groups) <= 5
    ids = [i for g in sequence.groups for i in g.instance_ids]
    assert ids == list(range(1, len(sequence.objects) + 1))
    assert sequence.copies
    by_id = {o.instance_id: o for o in sequence.objects}
    for copy, source in sequence.copies:
        a, b = by_id[copy], by_id[source]
        assert sequence.group_of(copy) != sequence.group_of(source)
        assert (a.shape, a.size, a.yaw, a.class_index) == (b.shape, b.size, b.yaw, b.class_index)
        assert np.array_equal(a.rgb, b.rgb) and a.centre_xz != b.centre_xz


def test_objects_leave_the_view_and_reenter(sequence):
    frustum = sequence.visible("frustum")            # cheap, ignores occlusion: a superset of what is seen
    rendered = sequence.visible("render")
    assert not (rendered & ~frustum).any()
    # Objects out of the frustum for >= 20 frames and really seen (rendered) both before and after that gap.
    reentering = set()
    for m, ranges in enumerate(sequence.visibility("frustum").values()):
        for a, b in zip(ranges, ranges[1:]):
            if b[0] - a[1] >= 20 and rendered[:a[1], m].any() and rendered[b[0]:, m].any():
                reentering.add(m + 1)
    assert len(reentering) >= len(sequence.objects) // 2


def test_depth_unprojects_to_world_points(sequence):
    for i in (3, 200):
        f = sequence.frame(i)
        assert f["images"].shape == (3, 84, 112) and f["instance_ids"].dtype == torch.int64
        assert 0 <= f["images"].min() and f["images"].max() <= 1 and f["valid_mask"].all()
        points = unproject_depth(f["depth"].double(), f["extrinsics"].double(), f["intrinsics"].double())
        torch.testing.assert_close(points.float(), f["world_points"], atol=2e-4, rtol=1e-5)


def test_thousand_frames_render_only_the_asked_frame(monkeypatch):
    calls = []
    real = long_sequence.render_view
    monkeypatch.setattr(long_sequence, "render_view", lambda scene, view, out=None: calls.append(view) or real(scene, view, out))
    sequence = LongSequence(frames=1000, seed=1)
    assert not calls                                 # the cameras exist without any rendering
    assert sequence.extrinsics.shape == (1000, 3, 4)
    steps = np.linalg.norm(np.diff(sequence.camera_centres, axis=0), axis=1)
    assert steps.max() < 0.05
    frame = sequence.frame(777)
    assert calls == [777]
    assert torch.equal(frame["extrinsics"], torch.from_numpy(sequence.extrinsics[777]))


def test_write_photos_and_regenerate_from_json(tmp_path):
    sequence = LongSequence(frames=30, seed=2)
    sequence.write_photos(tmp_path, every=7)
    from PIL import Image

    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"frame_{i:05d}.png" for i in (0, 7, 14, 21, 28)]
    image = np.asarray(Image.open(tmp_path / "frame_00014.png"))
    assert image.shape == (84, 112, 3) and image.dtype == np.uint8
    record = json.loads((tmp_path / "sequence.json").read_text())
    assert record["params"]["seed"] == 2 and record["every"] == 7
    again = LongSequence.from_json(tmp_path / "sequence.json")
    expected = (sequence.frame(14)["images"].numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(image, expected)
    assert torch.equal(again.frame(14)["depth"], sequence.frame(14)["depth"])


def test_write_video_decodes_back_to_every_frame(tmp_path):
    av = pytest.importorskip("av", reason="PyAV not installed (pip install 'iggt-lightning[video]')")
    sequence = LongSequence(frames=24, seed=3)
    path = sequence.write_video(tmp_path / "walk.mp4", fps=30)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 24 and frames[0].shape == (84, 112, 3)
    first = (sequence.frame(0)["images"].numpy().transpose(1, 2, 0) * 255).astype(np.float64)
    assert np.abs(frames[0] - first).mean() < 8          # lossy, but the same picture
    assert LongSequence.from_json(path.with_suffix(".json")).params() == sequence.params()


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="image_size"):
        LongSequence(image_size=(80, 112))
    with pytest.raises(ValueError, match="laps"):
        LongSequence(laps=1.5)


def test_video_windows_are_consecutive_frames_in_the_batch_contract():
    from iggt_lightning.data import VideoWindowsDataModule
    from iggt_lightning.data.long_sequence import LongSequence, LongSequenceWindows
    from iggt_lightning.data.validate import check_sample

    ds = LongSequenceWindows(length=6, num_views=5, frames=120, sequences=3, steps=(2, 2), background_id=100)
    sample = ds[4]
    check_sample(sample)
    assert sample["images"].shape == (5, 3, 84, 112) and sample["extrinsics"].shape == (5, 3, 4)
    seed, start, step = (int(v) for v in sample["scene_id"].split("-")[1:])
    assert step == 2 and seed == ds.seed + 4 % 3
    seq = LongSequence(frames=120, seed=seed)
    for k in range(5):                                  # the frames it says, rendered the same
        f = seq.frame(start + k * step)
        assert torch.equal(sample["images"][k], f["images"])
        assert torch.equal(sample["instance_ids"][k], f["instance_ids"].masked_fill(f["instance_ids"] == 0, 100))
    assert torch.equal(ds[4]["images"], sample["images"])        # a pure function of (seed, index)
    dm = VideoWindowsDataModule(num_train=2, num_val=1, num_test=1, frames=120, sequences=2)
    assert min(d.seed for d in (dm.datasets["train"], dm.datasets["val"], dm.datasets["test"])) >= 1000
