"""Metrics over a whole long sequence, fed one frame (or one window) at a time.

Memory does not grow with the frames beyond small tables: per frame, the (predicted id, ground-truth id)
pixel counts that are non-zero and the per-id areas (a few dozen integers), the two 3x4 cameras, and a fixed
histogram of depth ratios. Every metric is computed from those in :meth:`SequenceMetrics.compute`.

* ``t_miou`` / ``t_sr``: exactly :class:`iggt_lightning.metrics.tracking.TrackingMetrics` with the whole
  sequence as one scene (one-to-one Hungarian matching on the all-frames IoU, then per object the mean over the
  frames where it is visible of the per-frame IoU with its match; success = the match is non-empty in every
  such frame).
* ``id_switches`` (CLEAR-MOT IDSW), ``fragments``, ``misses``: per frame a one-to-one Hungarian matching on IoU
  with IoU >= ``match_iou``; a switch is a change of an object's matched predicted id between consecutive frames
  where it is matched (frames where it is unmatched or not visible in between do not reset the last id); a
  fragment is a run of visible-but-unmatched frames between two matched frames; a miss is one
  visible-but-unmatched (object, frame).
* ``ate``: RMSE of the camera centres after the Sim(3) (Umeyama) alignment of the predicted centres to the
  ground truth; ``sim3_scale`` is its scale.
* ``rpe_trans`` / ``rpe_rot_deg``: RMSE over the frame pairs (i, i + ``rpe_delta``) of the translation (with the
  predicted one times ``sim3_scale``) and of the rotation angle in degrees of the relative-pose error
  inv(gt_rel) pred_rel, rel = inv(c2w_i) c2w_{i+delta}.
* ``abs_rel``: mean over valid pixels of ``|s pred - gt| / gt`` with s = ``sim3_scale`` (one scale for the
  whole sequence, the one the cameras imply); ``abs_rel_median`` the same with s = 1 / median(pred / gt) over
  all the sequence's valid pixels (``median_scale``). Both come from a histogram of log(pred / gt) with, per
  bin, the count and the sum of the ratios: the sums are exact except in the one bin that holds 1/s, which
  is split as if its ratios all sat at their mean (error < 1e-3 of that bin's share); the median is read to
  the bin width (0.2 %).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..geometry import umeyama_alignment

_LOG_RATIO_RANGE = 8.0      # ratios pred / gt in [e^-8, e^8]; outside it they land in the edge bins
_LOG_RATIO_BINS = 8000      # bin width 2e-3 in log ratio


def _as_numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


class SequenceMetrics:
    """Streaming instance-tracking, camera and depth metrics over one sequence (see the module docstring).

    Args:
        match_iou: minimum per-frame IoU of a match for the ID-switch counts.
        rpe_delta: frame gap of the relative pose error.
        ignore_id: the id meaning "no instance" in both predictions and ground truth (excluded everywhere).

    ``update(frame_index, pred_ids, gt_ids, ...)`` takes one frame [H,W] or a window [S,H,W] (then
    ``frame_index`` is the first frame's index or a list of S indices). A frame may be given once.
    Cameras come through :meth:`set_trajectory` (all frames) or :meth:`update_cameras` (some frames).
    """

    def __init__(self, match_iou: float = 0.5, rpe_delta: int = 1, ignore_id: int = 0) -> None:
        if not 0.0 < match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1]; got {match_iou!r}")
        if not isinstance(rpe_delta, (int, np.integer)) or rpe_delta < 1:
            raise ValueError(f"rpe_delta must be a positive int; got {rpe_delta!r}")
        self.match_iou, self.rpe_delta, self.ignore_id = float(match_iou), int(rpe_delta), int(ignore_id)
        self.reset()

    def reset(self) -> None:
        # frame -> (pair ids [P,2], pair counts [P], pred ids, pred areas, gt ids, gt areas)
        self._tables: dict[int, tuple[np.ndarray, ...]] = {}
        self._cameras: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ratio_count = np.zeros(_LOG_RATIO_BINS, np.int64)
        self._ratio_sum = np.zeros(_LOG_RATIO_BINS, np.float64)

    # ------------------------------------------------------------------------------------- inputs

    def update(self, frame_index, pred_ids, gt_ids, pred_depth=None, gt_depth=None, valid=None) -> None:
        pred_ids, gt_ids = _as_numpy(pred_ids, np.int64), _as_numpy(gt_ids, np.int64)
        if pred_ids.shape != gt_ids.shape or pred_ids.ndim not in (2, 3):
            raise ValueError(f"pred_ids and gt_ids must both be [H,W] or [S,H,W]; got {pred_ids.shape} and {gt_ids.shape}")
        single = pred_ids.ndim == 2
        if single:
            pred_ids, gt_ids = pred_ids[None], gt_ids[None]
        S = pred_ids.shape[0]
        indices = _frame_indices(frame_index, S)
        for i in indices:
            if i in self._tables:
                raise ValueError(f"frame {i} was already given (each frame once; overlapping windows must pick one)")
        for i, p, g in zip(indices, pred_ids, gt_ids):
            self._tables[i] = self._count(p, g)
        if (pred_depth is None) != (gt_depth is None):
            raise ValueError("give both pred_depth and gt_depth, or neither")
        if pred_depth is not None:
            pred_depth, gt_depth = _as_numpy(pred_depth, np.float64), _as_numpy(gt_depth, np.float64)
            if pred_depth.ndim == gt_depth.ndim + 1 and pred_depth.shape[-1] == 1:
                pred_depth = pred_depth[..., 0]
            if pred_depth.shape != gt_depth.shape or pred_depth.shape[-2:] != pred_ids.shape[-2:]:
                raise ValueError(f"depth shapes {pred_depth.shape} / {gt_depth.shape} do not match the ids' "
                                 f"{pred_ids.shape[-2:]} frames")
            mask = (gt_depth > 0) & np.isfinite(gt_depth) & (pred_depth > 0) & np.isfinite(pred_depth)
            if valid is not None:
                mask &= _as_numpy(valid, bool).reshape(mask.shape)
            log_ratio = np.log(pred_depth[mask] / gt_depth[mask])
            bins = np.clip(((log_ratio + _LOG_RATIO_RANGE) * (_LOG_RATIO_BINS / (2 * _LOG_RATIO_RANGE))).astype(np.int64),
                           0, _LOG_RATIO_BINS - 1)
            self._ratio_count += np.bincount(bins, minlength=_LOG_RATIO_BINS)
            self._ratio_sum += np.bincount(bins, weights=np.exp(log_ratio), minlength=_LOG_RATIO_BINS)

    def _count(self, pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, ...]:
        """The frame's pair counts and areas, the ignore id dropped."""
        p, g = pred.ravel(), gt.ravel()
        pred_ids, pred_area = np.unique(p[p != self.ignore_id], return_counts=True)
        gt_ids, gt_area = np.unique(g[g != self.ignore_id], return_counts=True)
        both = (p != self.ignore_id) & (g != self.ignore_id)
        pairs, counts = np.unique(np.stack([p[both], g[both]], 1), axis=0, return_counts=True)
        return pairs.reshape(-1, 2), counts, pred_ids, pred_area, gt_ids, gt_area

    def set_trajectory(self, pred_extrinsics, gt_extrinsics, frame_indices=None) -> None:
        """World-to-camera [N,3,4] (or [N,4,4]) predicted and ground-truth cameras of frames 0..N-1 (or of
        ``frame_indices``). The two worlds may differ by any Sim(3): the metrics align them."""
        pred, gt = _as_numpy(pred_extrinsics, np.float64)[..., :3, :4], _as_numpy(gt_extrinsics, np.float64)[..., :3, :4]
        if pred.shape != gt.shape or pred.ndim != 3:
            raise ValueError(f"extrinsics must both be [N,3,4]; got {pred.shape} and {gt.shape}")
        indices = range(len(pred)) if frame_indices is None else _frame_indices(frame_indices, len(pred))
        for i, p, g in zip(indices, pred, gt):
            self._cameras[int(i)] = (p, g)

    update_cameras = set_trajectory

    # ------------------------------------------------------------------------------------- results

    def compute(self) -> dict[str, float]:
        out = {"frames": len(self._tables)}
        out.update(self._tracking())
        out.update(self._trajectory())
        out.update(self._depth(out.get("sim3_scale", math.nan)))
        return out

    def _tracking(self) -> dict:
        from scipy.optimize import linear_sum_assignment

        frames = sorted(self._tables)
        all_pred = np.unique(np.concatenate([self._tables[f][2] for f in frames] or [np.zeros(0, np.int64)]))
        all_gt = np.unique(np.concatenate([self._tables[f][4] for f in frames] or [np.zeros(0, np.int64)]))
        P, G = len(all_pred), len(all_gt)
        nan = math.nan
        if G == 0:
            return {"objects": 0, "t_miou": nan, "t_sr": nan, "id_switches": 0, "fragments": 0, "misses": 0}
        # Whole-sequence intersections and areas, accumulated from the per-frame tables.
        inter = np.zeros((P, G), np.float64)
        pred_area, gt_area = np.zeros(P), np.zeros(G)
        local = []          # per frame: (pair rows, pair cols, counts, pred rows, pred areas, gt cols, gt areas)
        for f in frames:
            pairs, counts, pids, parea, gids, garea = self._tables[f]
            pr, gc = np.searchsorted(all_pred, pairs[:, 0]), np.searchsorted(all_gt, pairs[:, 1])
            prow, gcol = np.searchsorted(all_pred, pids), np.searchsorted(all_gt, gids)
            np.add.at(inter, (pr, gc), counts)
            pred_area[prow] += parea
            gt_area[gcol] += garea
            local.append((pr, gc, counts, prow, parea, gcol, garea))
        # As TrackingMetrics: Hungarian on the all-views IoU (float32, as it computes it), pairs with IoU 0 unmatched.
        iou = (inter / np.maximum(pred_area[:, None] + gt_area[None] - inter, 1)).astype(np.float32)
        match = {}
        if P:
            rows, cols = linear_sum_assignment(iou, maximize=True)
            match = {int(c): int(r) for r, c in zip(rows, cols) if iou[r, c] > 0}

        iou_sum, views, success = np.zeros(G), np.zeros(G), np.ones(G, bool)
        last_id = np.full(G, -1)
        pending_gap = np.zeros(G, bool)   # visible-but-unmatched since the last matched frame
        switches = fragments = misses = 0
        for pr, gc, counts, prow, parea, gcol, garea in local:
            # T-mIoU / T-SR of the sequence-level match in this frame.
            frame_pred_area = dict(zip(prow.tolist(), parea.tolist()))
            frame_inter = {(r, c): n for r, c, n in zip(pr.tolist(), gc.tolist(), counts.tolist())}
            for c, a in zip(gcol.tolist(), garea.tolist()):
                views[c] += 1
                r = match.get(c)
                if r is None:
                    continue
                pa = frame_pred_area.get(r, 0)
                n = frame_inter.get((r, c), 0)
                iou_sum[c] += n / (pa + a - n)
                success[c] &= pa > 0
            # Per-frame one-to-one matching for the identity counts.
            if len(gcol) == 0:
                continue
            frame_iou = np.zeros((len(prow), len(gcol)))
            row_of = {r: k for k, r in enumerate(prow.tolist())}
            col_of = {c: k for k, c in enumerate(gcol.tolist())}
            for (r, c), n in frame_inter.items():
                frame_iou[row_of[r], col_of[c]] = n / (parea[row_of[r]] + garea[col_of[c]] - n)
            matched = {}
            if len(prow):
                rows, cols = linear_sum_assignment(frame_iou, maximize=True)
                matched = {int(gcol[c]): int(all_pred[prow[r]]) for r, c in zip(rows, cols)
                           if frame_iou[r, c] >= self.match_iou}
            for c in gcol.tolist():
                pid = matched.get(c)
                if pid is None:
                    misses += 1
                    pending_gap[c] |= last_id[c] >= 0
                    continue
                if last_id[c] >= 0 and pid != last_id[c]:
                    switches += 1
                fragments += int(pending_gap[c])
                pending_gap[c] = False
                last_id[c] = pid
        counted = views > 0
        unmatched = np.array([c not in match for c in range(G)])
        success &= ~unmatched
        per_object = np.where(counted, iou_sum / np.maximum(views, 1), 0.0)
        return {"objects": int(G), "t_miou": float(per_object.mean()), "t_sr": float(success.mean()),
                "id_switches": int(switches), "fragments": int(fragments), "misses": int(misses)}

    def _trajectory(self) -> dict:
        nan = math.nan
        frames = sorted(self._cameras)
        if len(frames) < 3:
            return {"ate": nan, "rpe_trans": nan, "rpe_rot_deg": nan, "sim3_scale": nan}
        pred = np.stack([self._cameras[f][0] for f in frames])
        gt = np.stack([self._cameras[f][1] for f in frames])
        pred_R, pred_c = _camera_to_world(pred)
        gt_R, gt_c = _camera_to_world(gt)
        s, R, t = umeyama_alignment(torch.from_numpy(pred_c), torch.from_numpy(gt_c))
        s, R, t = float(s), R.numpy(), t.numpy()
        aligned = s * pred_c @ R.T + t
        ate = float(np.sqrt(((aligned - gt_c) ** 2).sum(1).mean()))
        # Pairs (i, i + delta) by frame index, among the frames that have cameras.
        position = {f: k for k, f in enumerate(frames)}
        pairs = [(position[f], position[f + self.rpe_delta]) for f in frames if f + self.rpe_delta in position]
        if not pairs:
            return {"ate": ate, "rpe_trans": nan, "rpe_rot_deg": nan, "sim3_scale": s}
        i, j = np.array(pairs).T
        # Relative motion in camera i's frame: rotation R_i^T R_j, translation R_i^T (c_j - c_i).
        gt_rel_R = np.einsum("nki,nkj->nij", gt_R[i], gt_R[j])
        gt_rel_t = np.einsum("nki,nk->ni", gt_R[i], gt_c[j] - gt_c[i])
        pred_rel_R = np.einsum("nki,nkj->nij", pred_R[i], pred_R[j])
        pred_rel_t = s * np.einsum("nki,nk->ni", pred_R[i], pred_c[j] - pred_c[i])
        # Error inv(gt_rel) pred_rel: rotation gt_rel_R^T pred_rel_R, translation gt_rel_R^T (pred_t - gt_t).
        err_R = np.einsum("nki,nkj->nij", gt_rel_R, pred_rel_R)
        err_t = np.linalg.norm(pred_rel_t - gt_rel_t, axis=1)     # rotating it does not change its length
        cos = np.clip((np.trace(err_R, axis1=1, axis2=2) - 1) / 2, -1.0, 1.0)
        angle = np.degrees(np.arccos(cos))
        return {"ate": ate, "rpe_trans": float(np.sqrt((err_t ** 2).mean())),
                "rpe_rot_deg": float(np.sqrt((angle ** 2).mean())), "sim3_scale": s}

    def _depth(self, scale: float) -> dict:
        n = self._ratio_count.sum()
        nan = math.nan
        if n == 0:
            return {"abs_rel": nan, "abs_rel_median": nan, "median_scale": nan}
        cumulative = np.cumsum(self._ratio_count)
        median_bin = int(np.searchsorted(cumulative, (n + 1) / 2))
        median_ratio = self._ratio_sum[median_bin] / self._ratio_count[median_bin]
        median_scale = 1.0 / median_ratio
        abs_rel = self._abs_rel(scale) if math.isfinite(scale) and scale > 0 else nan
        return {"abs_rel": abs_rel, "abs_rel_median": self._abs_rel(median_scale), "median_scale": float(median_scale)}

    def _abs_rel(self, s: float) -> float:
        """mean |s r - 1| over the pixels' ratios r = pred / gt, from the per-bin counts and ratio sums."""
        count, total = self._ratio_count, self._ratio_sum
        used = count > 0
        mean_r = np.where(used, total / np.maximum(count, 1), 0.0)
        # Per bin sum |s r - 1|: exact where every ratio is on one side of 1/s, i.e. the whole bin is; the bin
        # holding 1/s is taken at its mean ratio.
        edges = np.exp(np.linspace(-_LOG_RATIO_RANGE, _LOG_RATIO_RANGE, _LOG_RATIO_BINS + 1))
        above, below = edges[:-1] * s >= 1, edges[1:] * s <= 1
        # The edge bins also hold the clipped ratios beyond the range: their side is that of their mean.
        above[0], below[-1] = above[0] and mean_r[0] * s >= 1, below[-1] and mean_r[-1] * s <= 1
        per_bin = np.where(above, s * total - count, np.where(below, count - s * total, np.abs(s * mean_r - 1) * count))
        return float(per_bin[used].sum() / count.sum())


def _frame_indices(frame_index, count: int) -> list[int]:
    if isinstance(frame_index, (int, np.integer)):
        return list(range(int(frame_index), int(frame_index) + count))
    indices = [int(i) for i in _as_numpy(frame_index).reshape(-1)]
    if len(indices) != count or len(set(indices)) != count:
        raise ValueError(f"need {count} distinct frame indices; got {frame_index!r}")
    return indices


def _camera_to_world(extrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera [N,3,4] -> camera-to-world rotations [N,3,3] and camera centres [N,3]."""
    R, t = extrinsics[:, :, :3], extrinsics[:, :, 3]
    R_c2w = R.transpose(0, 2, 1)
    return R_c2w, -np.einsum("nij,nj->ni", R_c2w, t)
