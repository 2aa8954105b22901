"""Bundle adjustment on predicted tracks (iggt_lightning/inference/track_ba.py): on rendered views whose poses are
perturbed, with tracks that follow the true surface points (what a good track head returns, plus pixel noise),
the adjustment must bring the poses back toward the truth, and say so in its report."""
import numpy as np
import pytest
import torch

from iggt_lightning.data import SyntheticScenes
from iggt_lightning.inference.track_ba import adjust, collect_tracks, query_pixels, reference_frames

pytest.importorskip("pycolmap")


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(axis_angle).as_matrix()


def _centres(E: np.ndarray) -> np.ndarray:
    return -np.einsum("sji,sj->si", E[:, :3, :3], E[:, :3, 3])


def pose_error(E: np.ndarray, E_gt: np.ndarray) -> tuple[float, float]:
    """(mean rotation error in degrees of relative poses to frame 0, centre RMSE after a Sim(3) fit): gauge-free."""
    from iggt_lightning.geometry import umeyama_alignment

    c, cg = torch.as_tensor(_centres(E)), torch.as_tensor(_centres(E_gt))
    s, R, t = umeyama_alignment(c, cg)
    rmse = float(((s * c @ R.T + t - cg) ** 2).sum(1).mean().sqrt())
    rot = []
    for a, b in zip(E[1:], E_gt[1:]):
        Ra, Rb = a[:3, :3] @ E[0, :3, :3].T, b[:3, :3] @ E_gt[0, :3, :3].T
        rot.append(np.degrees(np.arccos(np.clip((np.trace(Ra @ Rb.T) - 1) / 2, -1, 1))))
    return float(np.mean(rot)), rmse


@pytest.fixture(scope="module")
def scene():
    return SyntheticScenes(length=1, num_views=8, image_size=(84, 112), seed=4)[0]


def true_tracker(scene, noise_px: float, seed: int = 0):
    """A stand-in for the track head: query pixels of the first frame (of the order given) projected into every
    frame with the true cameras, visible where the true depth agrees, plus Gaussian pixel noise."""
    rng = np.random.default_rng(seed)
    E, K = scene["extrinsics"].double().numpy(), scene["intrinsics"].double().numpy()
    depth, points = scene["depth"].double().numpy(), scene["world_points"].double().numpy()

    def track(images, queries):
        order = [int(np.flatnonzero([(im == ref).all() for ref in scene["images"]])[0]) for im in images]
        q = queries.long().numpy()
        X = points[order[0]][q[:, 1], q[:, 0]]
        xy, vis = [], []
        for s in order:
            cam = X @ E[s, :3, :3].T + E[s, :3, 3]
            p = cam[:, :2] / cam[:, 2:] @ K[s, :2, :2].T + K[s, :2, 2]
            H, W = depth.shape[1:]
            ix, iy = np.clip(np.round(p[:, 0]).astype(int), 0, W - 1), np.clip(np.round(p[:, 1]).astype(int), 0, H - 1)
            inside = (p[:, 0] >= 0) & (p[:, 0] <= W - 1) & (p[:, 1] >= 0) & (p[:, 1] <= H - 1) & (cam[:, 2] > 0)
            v = inside & (np.abs(depth[s][iy, ix] - cam[:, 2]) < 0.02 * cam[:, 2])
            xy.append(p + rng.normal(scale=noise_px, size=p.shape))
            vis.append(v)
        return (torch.as_tensor(np.stack(xy)).float(), torch.as_tensor(np.stack(vis)).float(),
                torch.ones(len(order), len(q)))

    return track


def test_query_pixels_cover_the_frame():
    conf = torch.rand(84, 112)
    q = query_pixels(conf, 64)
    assert 48 <= len(q) <= 80
    assert q[:, 0].min() < 30 and q[:, 0].max() > 80 and q[:, 1].min() < 25 and q[:, 1].max() > 60
    assert reference_frames(100, 3) == [0, 50, 99] and reference_frames(2, 5) == [0, 1]


def test_bundle_adjustment_on_tracks_reduces_the_pose_error(scene):
    E_gt = scene["extrinsics"].double().numpy()
    K = scene["intrinsics"].double().numpy()
    rng = np.random.default_rng(1)
    E0 = E_gt.copy()
    for s in range(1, len(E0)):                        # perturbed predictions: ~1.5 deg and ~8 cm per camera
        dR = _rotation(rng.normal(scale=np.radians(1.5), size=3))
        E0[s, :3, :3] = dR @ E0[s, :3, :3]
        E0[s, :3, 3] = dR @ E0[s, :3, 3] + rng.normal(scale=0.08, size=3)
    # the tracks' initial points: the true surface with 3 % depth noise (a predicted point map)
    points = scene["world_points"].double()
    noisy = points * (1 + 0.03 * torch.as_tensor(rng.normal(size=points.shape[:-1] + (1,))))
    obs = collect_tracks(true_tracker(scene, noise_px=0.3), scene["images"], noisy,
                         torch.ones(points.shape[:-1]), reference_frames(len(E0), 3), per_frame=96)
    assert obs.observations > 3 * len(obs.points)       # tracks reach other frames
    E1, K1, report = adjust(E0, K, (112, 84), obs)
    rot0, pos0 = pose_error(E0, E_gt)
    rot1, pos1 = pose_error(E1, E_gt)
    assert rot1 < 0.3 * rot0 and pos1 < 0.5 * pos0, (rot0, rot1, pos0, pos1)
    assert report["reprojection_error_after"] < 0.2 * report["reprojection_error_before"]
    assert report["reprojection_error_after"] < 1.0                      # ~ the 0.3 px noise
    assert report["rotation_change_max_deg"] > 0.5                       # it moved the poses
    assert np.allclose(K1, K)                                           # intrinsics fixed unless asked


def test_no_track_seen_twice_is_one_clear_error(scene):
    E = scene["extrinsics"].double().numpy()
    from iggt_lightning.inference.track_ba import TrackObservations

    obs = TrackObservations(np.zeros((3, len(E), 2)), np.eye(3, len(E), dtype=bool), np.ones((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="no predicted track is seen in two frames"):
        adjust(E, scene["intrinsics"].double().numpy(), (112, 84), obs)
