"""Windowed reconstruction (iggt_lightning/inference/windowed.py) on the long-sequence test bed, with a stand-in
network that returns the ground truth as a real one would see it: each window in its own frame (its first camera
at the origin, its own scale), instance ids numbered per window in an arbitrary order, features that identify
the object up to noise (identical copies get the same feature, as appearance cannot tell them apart), a little
depth noise. What the pipeline must recover is then known exactly."""
import numpy as np
import pytest
import torch

from iggt_lightning.data.long_sequence import LongSequence
from iggt_lightning.benchmarking.oracle import GroundTruthNetwork
from iggt_lightning.inference.windowed import (WindowError, WindowOptions, iter_windows, plan_windows,
                                               reconstruct, robust_sim3)
from iggt_lightning.metrics.sequence import SequenceMetrics


def test_plan_windows_covers_every_frame_with_the_overlap():
    plan = plan_windows(100, 16, 4)
    assert plan[0] == (0, 16) and plan[-1][1] == 100
    assert all(b[0] == a[1] - 4 for a, b in zip(plan[:-2], plan[1:-1]))
    assert all(e - s == 16 for s, e in plan)
    assert plan[-1][0] < plan[-2][1] - 3             # the last window shares at least the overlap
    for args, words in (((100, 8, 8), "--window 8 must be larger than --overlap 8"),
                        ((100, 8, 1), "--overlap 1"), ((5, 8, 2), "--window 8: the input has only 5 frame")):
        with pytest.raises(WindowError, match=words):
            plan_windows(*args)


def test_robust_sim3_recovers_a_similarity_despite_outliers():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(2000, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = q * np.sign(np.linalg.det(q))
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5]) + rng.normal(scale=1e-3, size=src.shape)
    dst[:300] += rng.normal(scale=3.0, size=(300, 3))          # 15 % gross outliers (occlusion edges)
    sim, fit = robust_sim3(src, dst, np.ones(len(src)))
    assert abs(sim.s - 2.5) < 1e-2 and np.abs(sim.R - R).max() < 1e-2
    assert 0.8 < fit["inliers"] < 0.9


def _run(seq, window, overlap, associate=True, seed=0):
    net = GroundTruthNetwork(seq, seed)
    plan = plan_windows(len(seq), window, overlap)
    frames = (torch.as_tensor(seq.frame(i)["images"]) for i in range(len(seq)))
    windows = ((s, e, im) for s, e, im in iter_windows(plan, frames))
    starts = iter([s for s, _ in plan])
    result = reconstruct(lambda images: net(images, next(starts)), windows, len(seq),
                         WindowOptions(window, overlap, associate=associate))
    return result, net


def _score(seq, result) -> dict:
    from iggt_lightning.geometry import pose_encoding_to_extri_intri

    m = SequenceMetrics()
    out = result.outputs
    H, W = out["images"].shape[-2:]
    E, _ = pose_encoding_to_extri_intri(out["pose_enc"][-1][0], (H, W))
    for i in range(len(seq)):
        f = seq.frame(i)
        m.update(i, out["instance_masks"][0, i], f["instance_ids"], out["depth"][0, i, ..., 0], f["depth"])
    m.set_trajectory(E, seq.extrinsics)
    return m.compute()


@pytest.fixture(scope="module")
def sequence():
    return LongSequence(frames=120, seed=3)


def test_windows_are_aligned_and_instances_keep_their_ids(sequence):
    result, net = _run(sequence, window=16, overlap=4)
    assert all(s == 16 for s in net.calls)
    scores = _score(sequence, result)
    spread = np.linalg.norm(sequence.camera_centres - sequence.camera_centres.mean(0), axis=1).mean()
    assert scores["ate"] < 0.02 * spread, scores
    assert scores["abs_rel"] < 0.03, scores
    assert scores["t_miou"] > 0.95 and scores["id_switches"] == 0, scores
    assert all(d["alignment"]["residual"] < 0.05 for d in result.windows[1:])
    seen = {int(i) for f in range(len(sequence)) for i in np.unique(sequence.frame(f)["instance_ids"]) if i}
    assert sum(d["instances"]["new"] for d in result.windows) == len(seen)      # one id per object, no more


def test_without_association_ids_restart_in_every_window(sequence):
    with_, _ = _run(sequence, window=16, overlap=4, associate=True)
    without, _ = _run(sequence, window=16, overlap=4, associate=False)
    a, b = _score(sequence, with_), _score(sequence, without)
    assert b["t_miou"] < a["t_miou"] - 0.2, (a, b)
    assert b["id_switches"] > 5


def test_an_object_that_leaves_and_returns_keeps_its_id(sequence):
    """Objects the camera passes on both laps: the same predicted id on each pass (voxels in the aligned frame
    carry it over the frames where nothing of it is visible)."""
    result, _ = _run(sequence, window=16, overlap=4)
    ids = result.outputs["instance_masks"][0]
    vis = sequence.visibility("render")
    checked = 0
    for oid, ranges in vis.items():
        if len(ranges) < 2:
            continue
        per_pass = []
        for a, b in ranges:
            gt = torch.stack([torch.as_tensor(sequence.frame(i)["instance_ids"]) for i in range(a, b)])
            pred = ids[a:b][gt == oid]
            pred = pred[pred > 0]
            if pred.numel() > 50:
                per_pass.append(int(pred.mode().values))
        if len(per_pass) >= 2:
            checked += 1
            assert len(set(per_pass)) == 1, (oid, ranges, per_pass)
    assert checked >= 1
