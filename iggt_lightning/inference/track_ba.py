"""Bundle adjustment on predicted point tracks (``iggt predict --ba``).

A COLMAP model whose observations are the projections of its own points has zero reprojection error by
construction, so adjusting it moves nothing. The observations here are independent of the cameras: query pixels
are picked in a few reference frames (the most confident pixel of each cell of a grid), the point-track head
follows each into every other frame (with visibility and confidence), and each track starts as the 3D point the
reference frame predicts at its pixel. Bundle adjustment (pycolmap, the ``[colmap]`` extra) then moves poses and
points (and, when asked, the focal lengths) to agree with the tracks; the refined cameras replace the predicted
ones in every output, and the report says how large the reprojection error was before and after and how far the
poses moved.

Everything is in model-input pixels here with pixel centres at integer coordinates (the network's convention);
the COLMAP files written for the adjuster use its own convention (centre at i + 0.5), converted at that boundary.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .colmap import Tracks, bundle_adjust, write_model


@dataclass
class TrackObservations:
    """``xy`` [N,S,2] model-input pixels of track n in frame s, ``seen`` [N,S] bool (visible and confident),
    ``points`` [N,3] the initial 3D point of each track, ``reference`` [N] its query frame."""

    xy: np.ndarray
    seen: np.ndarray
    points: np.ndarray
    reference: np.ndarray
    frames: np.ndarray | None = None      # the sequence's frame of each column (None: 0..S-1)

    def moved(self, sim, frames: np.ndarray) -> "TrackObservations":
        """The same tracks with their points moved by a Sim(3) and their columns given frame numbers."""
        pts = sim.s * self.points @ np.asarray(sim.R).T + np.asarray(sim.t)
        return TrackObservations(self.xy, self.seen, pts, self.reference, np.asarray(frames))

    @property
    def observations(self) -> int:
        return int(self.seen.sum())


def query_pixels(conf: torch.Tensor, count: int, border: int = 2) -> torch.Tensor:
    """About ``count`` query pixels (x, y) [N,2] spread over an [H,W] confidence map: the most confident pixel of
    each cell of a grid (so tracks cover the frame, not one textured corner), ``border`` pixels from the edge."""
    H, W = conf.shape
    cells = max(1, int(round((count * W / max(H, 1)) ** 0.5)))
    rows = max(1, int(round(count / cells)))
    c = conf.clone().float()
    c[~torch.isfinite(c)] = -torch.inf
    if border:
        c[:border], c[-border:], c[:, :border], c[:, -border:] = -torch.inf, -torch.inf, -torch.inf, -torch.inf
    ys = torch.linspace(0, H, rows + 1).long()
    xs = torch.linspace(0, W, cells + 1).long()
    picks = []
    for i in range(rows):
        for j in range(cells):
            block = c[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            if block.numel() == 0 or not torch.isfinite(block).any():
                continue
            k = int(block.argmax())
            picks.append((int(xs[j]) + k % block.shape[1], int(ys[i]) + k // block.shape[1]))
    return torch.tensor(picks, dtype=torch.float32).reshape(-1, 2)


def reference_frames(frames: int, count: int) -> list[int]:
    """``count`` query frames spread evenly over the sequence (first and last included)."""
    return sorted(set(np.linspace(0, frames - 1, max(1, min(count, frames))).round().astype(int).tolist()))


def collect_tracks(track: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   images: torch.Tensor, world_points: torch.Tensor, conf: torch.Tensor, references: list[int],
                   per_frame: int = 256, min_visibility: float = 0.2, min_confidence: float = 0.2
                   ) -> TrackObservations:
    """Tracks from every reference frame. ``track(images [S,3,H,W], queries [N,2])`` follows query pixels of the
    *first* frame through the others and returns (xy [S,N,2], visibility [S,N], confidence [S,N]) in [0, 1];
    a reference frame is put first and the result put back in order (as the track head expects). An observation
    counts where visibility and confidence both reach their thresholds (VGGT's demo keeps tracks at 0.2)."""
    S = images.shape[0]
    xy_all, seen_all, pts_all, ref_all = [], [], [], []
    for r in references:
        order = [r, *[s for s in range(S) if s != r]]
        q = query_pixels(conf[r], per_frame)
        if len(q) == 0:
            continue
        xy, vis, cf = track(images[order], q)
        back = np.argsort(order)
        xy, vis, cf = xy[back].numpy(), vis[back].numpy(), cf[back].numpy()
        seen = (vis >= min_visibility) & (cf >= min_confidence) & np.isfinite(xy).all(-1)
        seen[r] = True                                   # the query itself
        xy[r] = q.numpy()
        qi = q.long()
        pts = world_points[r][qi[:, 1], qi[:, 0]].double().numpy()
        xy_all.append(xy.transpose(1, 0, 2))
        seen_all.append(seen.T)
        pts_all.append(pts)
        ref_all.append(np.full(len(q), r))
    if not xy_all:
        return TrackObservations(np.zeros((0, S, 2)), np.zeros((0, S), bool), np.zeros((0, 3)), np.zeros(0, int))
    return TrackObservations(np.concatenate(xy_all), np.concatenate(seen_all), np.concatenate(pts_all),
                             np.concatenate(ref_all))


def _pose_difference(Ea: np.ndarray, Eb: np.ndarray) -> tuple[float, float]:
    """(largest rotation change in degrees, largest camera-centre change relative to the path's extent)."""
    rot = []
    ca = -np.einsum("sji,sj->si", Ea[:, :3, :3], Ea[:, :3, 3])
    cb = -np.einsum("sji,sj->si", Eb[:, :3, :3], Eb[:, :3, 3])
    for a, b in zip(Ea, Eb):
        R = a[:3, :3] @ b[:3, :3].T
        axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / 2
        rot.append(np.degrees(np.arctan2(np.linalg.norm(axis), (np.trace(R) - 1) / 2)))   # exact near 0 too
    extent = max(float(np.linalg.norm(ca - ca.mean(0), axis=1).max()), 1e-12)
    moved = np.linalg.norm(ca - cb, axis=1) / extent
    return float(max(rot)), float(moved.max())


def adjust(extrinsics: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int],
           obs: TrackObservations | list[TrackObservations], refine_focal: bool = False,
           max_error: float | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Bundle-adjust cameras (world-to-camera [S,3,4], model-input intrinsics [S,3,3] with centres at integer
    coordinates, image ``size`` (W, H)) against ``obs`` (one block of tracks, or blocks over parts of the sequence,
    e.g. one per window). Returns the refined (extrinsics, intrinsics) and a report: reprojection error before /
    after (pixels, mean over observations), how far the poses moved, tracks and observations used (tracks seen in
    one frame only constrain nothing and are left out).

    Observations farther than ``max_error`` pixels from where the predicted camera sees the track's point are
    dropped first (default: the largest of 8 px as VGGT's demo filters, 3 % of the image width, and 3 times the
    median of these errors, as the cameras to refine may be off by more than a fixed threshold allows): a wrong
    track must not drag the cameras. If the adjusted error is not below the predicted cameras' error on the same
    observations, the predicted cameras are kept and the report says so (``kept_predicted_cameras``)."""
    import pycolmap

    S = len(extrinsics)
    E0, K0 = extrinsics.astype(np.float64), intrinsics.astype(np.float64)
    blocks = obs if isinstance(obs, list) else [obs]
    errors = []                                      # per block [N, S_block]: where the predicted camera puts it
    for block in blocks:
        frames = np.arange(block.xy.shape[1]) if block.frames is None else block.frames
        err = np.full(block.seen.shape, np.inf)
        for col, f in enumerate(frames):
            cam = block.points @ E0[f, :3, :3].T + E0[f, :3, 3]
            with np.errstate(divide="ignore", invalid="ignore"):
                proj = cam[:, :2] / cam[:, 2:] @ K0[f, :2, :2].T + K0[f, :2, 2]
                e = np.linalg.norm(proj - block.xy[:, col], axis=1)
            err[:, col] = np.where((cam[:, 2] > 0) & np.isfinite(e), e, np.inf)
        errors.append(err)
    if max_error is None:
        seen_errors = np.concatenate([e[b.seen] for e, b in zip(errors, blocks)]) if blocks else np.zeros(0)
        finite = seen_errors[np.isfinite(seen_errors)]
        max_error = max(8.0, 0.03 * size[0], 3 * float(np.median(finite)) if finite.size else 0.0)
    points, per_frame_xy, per_frame_pt = [], [[] for _ in range(S)], [[] for _ in range(S)]
    dropped = 0
    for block, err in zip(blocks, errors):
        frames = np.arange(block.xy.shape[1]) if block.frames is None else block.frames
        far = ~(err <= max_error)
        dropped += int((block.seen & far).sum())
        seen = block.seen & ~far
        keep = (seen.sum(1) >= 2) & np.isfinite(block.points).all(1)
        for n in np.flatnonzero(keep):
            idx = len(points)
            points.append(block.points[n])
            for col in np.flatnonzero(seen[n]):
                per_frame_xy[frames[col]].append(block.xy[n, col])
                per_frame_pt[frames[col]].append(idx)
    if not points:
        raise ValueError(f"--ba: no predicted track is seen in two frames within {max_error:.1f} px of where the "
                         "predicted cameras put it; nothing to adjust")
    # COLMAP's convention: pixel i's centre at i + 0.5
    K = intrinsics.astype(np.float64).copy()
    K[:, :2, 2] += 0.5
    xy_of = [np.asarray(v, np.float64).reshape(-1, 2) + 0.5 for v in per_frame_xy]
    point_of = [np.asarray(v, np.int64) for v in per_frame_pt]
    tracks = Tracks(np.asarray(points), np.full((len(points), 3), 128, np.uint8), np.zeros(len(points)), xy_of,
                    point_of)
    with tempfile.TemporaryDirectory(prefix="iggt-ba-") as tmp:
        write_model(tmp, extrinsics.astype(np.float64), K, [tuple(size)] * S, [f"{s:06d}.png" for s in range(S)],
                    list(range(1, S + 1)), tracks, "bin")
        report = bundle_adjust(tmp, "bin", refine_focal=refine_focal, robust_scale=None)
        rec = pycolmap.Reconstruction(tmp)
        E_new = extrinsics.astype(np.float64).copy()
        K_new = intrinsics.astype(np.float64).copy()
        for image_id, image in rec.images.items():
            pose = image.cam_from_world() if callable(image.cam_from_world) else image.cam_from_world
            E_new[image_id - 1] = pose.matrix()
            cam = rec.cameras[image.camera_id]
            fx, fy, cx, cy = cam.params[:4]
            K_new[image_id - 1] = [[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]]
    before, after = report["reprojection_error_before"], report["reprojection_error_after"]
    if not (np.isfinite(after) and after < before and np.isfinite(E_new).all()):
        report["kept_predicted_cameras"] = (f"the adjusted reprojection error ({after:.3g} px) is not below the "
                                            f"predicted cameras' ({before:.3g} px)")
        E_new, K_new = E0.copy(), K0.copy()
    rot, moved = _pose_difference(E0, E_new)
    report.update(tracks=len(points), observations=int(sum(len(p) for p in point_of)),
                  observations_dropped=dropped, max_error=max_error,
                  rotation_change_max_deg=rot, centre_change_max=moved, refine_focal=refine_focal,
                  pixels="model input, centres at integer coordinates")
    return E_new, K_new, report


# ------------------------------------------------------------------------------------------- with the model
TRACK_HEAD = "track"          # the head whose outputs (track, vis, conf) this module reads


def require_tracker(module, checkpoint) -> None:
    """One line when the module's network has no point-track head (``--ba`` cannot work without it)."""
    if TRACK_HEAD not in module.model.heads:
        raise ValueError(f"--ba: {checkpoint} has no point-track head, whose predicted tracks are the observations "
                         "bundle adjustment needs (the official IGGT/VGGT checkpoints have one)")


def head_tracker(module, device: torch.device | None = None):
    """``track(images [S,3,H,W], queries [N,2])`` with the model's point-track head (the whole network runs: the
    head reads the backbone's tokens of these frames)."""
    device = device or next(module.parameters()).device

    def track(images: torch.Tensor, queries: torch.Tensor):
        with torch.inference_mode():
            out = module.model(images[None].to(device), query_points=queries[None].to(device))
        return out["track"][0].float().cpu(), out["vis"][0].float().cpu(), out["conf"][0].float().cpu()

    return track


def refine_outputs(module, outputs: dict, images: torch.Tensor, refine_focal: bool = False,
                   references: int = 3, per_frame: int = 256) -> tuple[dict, dict]:
    """One scene's outputs (batch of one) with its cameras bundle-adjusted on the track head's tracks from
    ``references`` query frames; returns (outputs with the refined ``pose_enc``, the report)."""
    from iggt_lightning.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri

    H, W = images.shape[-2:]
    enc = outputs["pose_enc"][-1][0].detach().float().cpu()
    E, K = pose_encoding_to_extri_intri(enc, (H, W))
    obs = collect_tracks(head_tracker(module), images.detach().cpu(), outputs["world_points"][0].detach().cpu(),
                         outputs["world_points_conf"][0].detach().cpu(), reference_frames(len(E), references),
                         per_frame)
    E1, K1, report = adjust(E.double().numpy(), K.double().numpy(), (W, H), obs, refine_focal)
    refined = extri_intri_to_pose_encoding(torch.as_tensor(E1).float(), torch.as_tensor(K1).float(), (H, W))
    out = dict(outputs)
    out["pose_enc"] = [*outputs["pose_enc"][:-1], refined[None].to(outputs["pose_enc"][-1].dtype)]
    report["references"] = reference_frames(len(E), references)
    return out, report
