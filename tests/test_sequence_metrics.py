"""Streaming sequence metrics: T-mIoU / T-SR equal TrackingMetrics on stacked masks, known-answer ID switches,
ATE / RPE under a known Sim(3), and AbsRel against the direct formula."""
import math

import numpy as np
import pytest
import torch

from iggt_lightning.metrics.sequence import SequenceMetrics
from iggt_lightning.metrics.tracking import TrackingMetrics

H, W = 12, 16


def _masks(ids: torch.Tensor) -> torch.Tensor:
    """[S,H,W] id maps -> [K,S,H,W] masks of the non-zero ids, in increasing id order."""
    values = [int(v) for v in torch.unique(ids) if v != 0]
    return torch.stack([ids == v for v in values]) if values else torch.zeros((0, *ids.shape), dtype=torch.bool)


def _blobs(frames: int, objects: int, seed: int) -> torch.Tensor:
    """Ground-truth id maps of moving rectangles that enter and leave the frame."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((frames, H, W), np.int64)
    for k in range(1, objects + 1):
        r, c = rng.integers(0, H - 4), rng.integers(-6, W)
        h, w = rng.integers(2, 5), rng.integers(2, 6)
        for f in range(frames):
            cc = c + f * int(rng.integers(-1, 2))
            ids[f, r:r + h, max(cc, 0):max(cc + w, 0)] = k
    return torch.from_numpy(ids)


@pytest.mark.parametrize("seed", range(5))
def test_tmiou_tsr_equal_tracking_metrics_on_stacked_masks(seed):
    rng = np.random.default_rng(100 + seed)
    gt = _blobs(9, 5, seed)
    # A noisy prediction: ids relabelled, some pixels flipped to other / new ids, one frame partly erased.
    pred = torch.from_numpy(rng.permutation(20)[gt.numpy()] + 0)
    noise = torch.from_numpy(rng.random(gt.shape) < 0.15)
    pred[noise] = torch.from_numpy(rng.integers(0, 8, int(noise.sum())))
    pred[4, : H // 2] = 0
    metric = SequenceMetrics()
    metric.update(0, pred[:5], gt[:5])          # a window, then single frames
    for f in range(5, 9):
        metric.update(f, pred[f], gt[f])
    got = metric.compute()
    reference = TrackingMetrics()
    reference.update([{"masks": _masks(pred)}], [{"masks": _masks(gt)}])
    expected = reference.compute()
    assert got["objects"] == len(_masks(gt)) and got["frames"] == 9
    assert got["t_miou"] == pytest.approx(float(expected["t_miou"]), abs=1e-12)
    assert got["t_sr"] == pytest.approx(float(expected["t_sr"]), abs=1e-12)


def test_perfect_prediction_with_permuted_ids_has_no_switch():
    gt = _blobs(12, 4, 0)
    pred = torch.tensor([0, 7, 3, 9, 5])[gt]
    metric = SequenceMetrics()
    metric.update(0, pred, gt)
    out = metric.compute()
    assert out["id_switches"] == 0 and out["fragments"] == 0 and out["misses"] == 0
    assert out["t_miou"] == pytest.approx(1.0) and out["t_sr"] == 1.0


def _two_squares(frames: int) -> torch.Tensor:
    ids = torch.zeros(frames, H, W, dtype=torch.long)
    ids[:, 1:5, 1:5] = 1
    ids[:, 6:10, 8:12] = 2
    return ids


def test_one_id_change_is_one_switch():
    gt = _two_squares(10)
    pred = gt.clone()
    pred[6:][gt[6:] == 1] = 5                  # object 1 gets a new predicted id from frame 6 on
    metric = SequenceMetrics()
    metric.update(0, pred, gt)
    assert metric.compute()["id_switches"] == 1


def test_two_objects_swapping_ids_is_two_switches():
    gt = _two_squares(10)
    pred = gt.clone()
    pred[4:] = torch.tensor([0, 2, 1])[gt[4:]]
    metric = SequenceMetrics()
    for f in range(10):
        metric.update(f, pred[f], gt[f])
    assert metric.compute()["id_switches"] == 2


def test_unmatched_frames_do_not_reset_the_last_id():
    gt = _two_squares(9)
    pred = gt.clone()
    pred[3:5][gt[3:5] == 1] = 0                # object 1 missed in frames 3-4 ...
    pred[5:][gt[5:] == 1] = 6                  # ... and back with another id: one switch, one fragment
    metric = SequenceMetrics()
    metric.update(0, pred, gt)
    out = metric.compute()
    assert (out["id_switches"], out["fragments"], out["misses"]) == (1, 1, 2)
    # Back with the same id: a fragment, no switch.
    pred[5:][gt[5:] == 1] = 1
    metric = SequenceMetrics()
    metric.update(0, pred, gt)
    out = metric.compute()
    assert (out["id_switches"], out["fragments"], out["misses"]) == (0, 1, 2)


def test_frames_are_given_once():
    metric = SequenceMetrics()
    metric.update(0, torch.zeros(3, H, W, dtype=torch.long), torch.zeros(3, H, W, dtype=torch.long))
    with pytest.raises(ValueError, match="frame 2"):
        metric.update(2, torch.zeros(H, W, dtype=torch.long), torch.zeros(H, W, dtype=torch.long))


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q * np.linalg.det(q)


def _trajectory(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world rotations [n,3,3] and centres [n,3] of a smooth walk."""
    t = np.linspace(0, 2 * math.pi, n)
    centres = np.stack([3 * np.cos(t), 1.4 + 0.2 * np.sin(3 * t), 2 * np.sin(t)], 1)
    base = _rotation(rng)
    rotations = []
    for a in t:
        c, s = math.cos(a), math.sin(a)
        rotations.append(np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ base)
    return np.stack(rotations), centres


def _extrinsics(rotations: np.ndarray, centres: np.ndarray) -> np.ndarray:
    R = rotations.transpose(0, 2, 1)
    return np.concatenate([R, -np.einsum("nij,nj->ni", R, centres)[:, :, None]], 2)


def test_ate_rpe_vanish_under_a_known_sim3():
    rng = np.random.default_rng(0)
    rotations, centres = _trajectory(60, rng)
    s, R, t = 0.37, _rotation(rng), np.array([1.0, -2.0, 0.5])
    pred = _extrinsics(np.einsum("ij,njk->nik", R, rotations), s * centres @ R.T + t)
    metric = SequenceMetrics(rpe_delta=3)
    metric.set_trajectory(torch.from_numpy(pred), torch.from_numpy(_extrinsics(rotations, centres)))
    out = metric.compute()
    assert out["ate"] < 1e-9 and out["rpe_trans"] < 1e-9 and out["rpe_rot_deg"] < 1e-5
    assert out["sim3_scale"] == pytest.approx(1 / s)


def test_ate_matches_known_centre_noise():
    rng = np.random.default_rng(1)
    rotations, centres = _trajectory(2000, rng)
    sigma = 0.05                                # per axis: RMSE of the 3D error sqrt(3) sigma
    noisy = centres + rng.normal(scale=sigma, size=centres.shape)
    metric = SequenceMetrics()
    metric.set_trajectory(_extrinsics(rotations, noisy), _extrinsics(rotations, centres))
    out = metric.compute()
    assert out["ate"] == pytest.approx(math.sqrt(3) * sigma, rel=0.05)
    # Independent noise on both ends of each pair: the relative translation error is sqrt(2) times it.
    assert out["rpe_trans"] == pytest.approx(math.sqrt(6) * sigma, rel=0.06)
    assert out["rpe_rot_deg"] < 1e-5


def test_abs_rel_with_the_trajectory_scale_and_the_median_scale():
    rng = np.random.default_rng(2)
    rotations, centres = _trajectory(20, rng)
    scale = 2.5                                 # prediction in other units: pred = gt / scale
    metric = SequenceMetrics()
    metric.set_trajectory(_extrinsics(rotations, centres / scale), _extrinsics(rotations, centres))
    gt = rng.uniform(0.5, 6.0, (20, H, W))
    pred = gt / scale * rng.uniform(0.8, 1.25, gt.shape)
    valid = rng.random(gt.shape) > 0.1
    ids = torch.zeros(20, H, W, dtype=torch.long)
    metric.update(0, ids[:10], ids[:10], torch.from_numpy(pred[:10]), torch.from_numpy(gt[:10]), valid[:10])
    metric.update(10, ids[10:], ids[10:], pred[10:], gt[10:], valid[10:])
    out = metric.compute()
    p, g = pred[valid], gt[valid]
    assert out["sim3_scale"] == pytest.approx(scale)
    assert out["abs_rel"] == pytest.approx(np.mean(np.abs(scale * p - g) / g), abs=1e-5)
    median_scale = 1 / np.median(p / g)
    assert out["median_scale"] == pytest.approx(median_scale, rel=3e-3)
    assert out["abs_rel_median"] == pytest.approx(np.mean(np.abs(out["median_scale"] * p - g) / g), abs=1e-5)


def test_empty_metric_is_nan_not_an_error():
    out = SequenceMetrics().compute()
    assert out["frames"] == 0 and out["objects"] == 0
    assert all(math.isnan(out[k]) for k in ("t_miou", "t_sr", "ate", "rpe_trans", "rpe_rot_deg", "abs_rel"))
