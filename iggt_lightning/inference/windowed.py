"""Windowed reconstruction of long sequences: the network runs on overlapping windows of frames, each window is
brought into the first one's coordinates by a Sim(3) fitted on the frames it shares with what came before, and its
instances take the ids of the instances they continue.

Why windows: global attention costs time quadratic in the frame count and memory linear in it, and the model was
trained on a few dozen views; a thousand-frame video does not fit one forward pass. Each window is a scene of its
own to the network, with its own world frame (its first camera) and its own scale, so consecutive windows share
``overlap`` frames and those frames tie them together:

* **Geometry.** The shared frames' predicted points, in the new window's frame (``src``) and in the aligned
  global frame (``dst``, from earlier windows), give a similarity ``dst ≈ s R src + t``: weighted Umeyama, the
  weights the product of the two predictions' confidences, re-weighted a few times with a Huber rule on the
  residuals so that pixels where the windows disagree (occlusion edges, sky, a moving object) do not pull it.
  Every output of the window is then moved by it (points, depth by ``s``, cameras).
* **Instances.** A window's clusters get ids 1..k of their own. Each is compared with the global instances seen so
  far by (a) the IoU of their masks on the shared frames, (b) the overlap of their 3D voxels in the aligned frame
  (what lets an object that left the view and came back, or is occluded in the shared frames, keep its id, and
  what tells identical copies in different places apart) and (c) the cosine similarity of their pooled instance
  features, which must pass ``min_feature_similarity`` for any match. One-to-one matching (Hungarian) on
  ``max(IoU, voxel overlap)``; a pair below ``min_match`` stays unmatched and the window's instance gets a new id.
* A frame's outputs come from the first window that holds it; later windows use it only to align and associate.

Nothing here reads files or writes them: :func:`reconstruct` takes a function that runs the network on a
window's images and returns its outputs, and returns the assembled outputs of the whole sequence (the shapes of
one forward pass over every frame) with per-window diagnostics for the manifest.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from iggt_lightning.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri

# Per-frame outputs a window hands over, and how a Sim(3) moves them ("points", "depth", "none"); anything else a
# window returns (e.g. the instance features) is used for association and dropped.
FRAME_OUTPUTS = {"images": "none", "depth": "depth", "depth_conf": "none", "world_points": "points",
                 "world_points_conf": "none"}


class WindowError(ValueError):
    """A windowing option or input that cannot work, named in one line."""


def default_overlap(window: int) -> int:
    """The overlap when none is given: a quarter of the window, at least the 2 frames alignment needs."""
    return max(2, window // 4) if isinstance(window, int) else 2     # a wrong --window is check_window's


def check_window(window: int, overlap: int) -> None:
    """--window / --overlap alone (before anything is counted or read)."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 3:
        raise WindowError(f"--window must be an integer >= 3; got {window!r}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 2:
        raise WindowError(f"--overlap {overlap}: at least 2 shared frames are needed to align two windows")
    if window <= overlap:
        raise WindowError(f"--window {window} must be larger than --overlap {overlap} (each window must bring "
                          "new frames)")


def plan_windows(frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of each window over ``frames`` frames: ``window`` frames each, consecutive windows sharing
    ``overlap``; the last one ends at the last frame (it shares more when the frames do not divide evenly)."""
    check_window(window, overlap)
    if frames < window:
        raise WindowError(f"--window {window}: the input has only {frames} frame(s); give a window of at most "
                          f"{frames} frames or leave --window out to run every frame in one pass")
    step = window - overlap
    starts = list(range(0, frames - window + 1, step))
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return [(s, s + window) for s in starts]


# ----------------------------------------------------------------------------------------------- Sim(3)
@dataclass(frozen=True)
class Sim3:
    """``x -> s R x + t`` (float64)."""

    s: float = 1.0
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def points(self, p: torch.Tensor) -> torch.Tensor:
        R = torch.as_tensor(self.R, dtype=p.dtype)
        return self.s * p @ R.T + torch.as_tensor(self.t, dtype=p.dtype)

    def extrinsics(self, E: torch.Tensor) -> torch.Tensor:
        """World-to-camera ``[Rc|tc]`` of the old world -> of the new one (``X_old = (R^T (X_new - t)) / s``; the
        camera frame is scaled by ``s`` too, so depth in the new units is ``s`` times the old)."""
        R = torch.as_tensor(self.R, dtype=E.dtype)
        t = torch.as_tensor(self.t, dtype=E.dtype)
        Rc, tc = E[..., :3, :3], E[..., :3, 3]
        Rn = Rc @ R.T
        return torch.cat([Rn, (self.s * tc - (Rn @ t))[..., None]], -1)


def weighted_umeyama(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> Sim3:
    """Least-squares similarity with per-point weights (Umeyama 1991, weighted moments)."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, D, Vh = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vh) < 0:
        sign[-1] = -1
    R = U @ np.diag(sign) @ Vh
    var = float(w @ (xs * xs).sum(1))
    s = float((D * sign).sum() / max(var, 1e-300))
    return Sim3(s, R, mu_d - s * R @ mu_s)


def robust_sim3(src: np.ndarray, dst: np.ndarray, weights: np.ndarray, iterations: int = 6) -> tuple[Sim3, dict]:
    """:func:`weighted_umeyama` re-weighted ``iterations`` times: residuals beyond ``c`` (2.5 robust standard
    deviations, from their median) count with weight ``c / r`` (Huber). Returns the Sim(3) and its diagnostics:
    ``residual`` (median residual over the spread of ``dst``, unitless), ``inliers`` (share within ``c``)."""
    keep = np.isfinite(src).all(1) & np.isfinite(dst).all(1) & np.isfinite(weights) & (weights > 0)
    src, dst, weights = src[keep].astype(np.float64), dst[keep].astype(np.float64), weights[keep].astype(np.float64)
    if len(src) < 3:
        raise WindowError(f"cannot align windows: only {len(src)} shared pixel(s) with finite, confident points")
    w = weights.copy()
    sim = weighted_umeyama(src, dst, w)
    for _ in range(iterations):
        r = np.linalg.norm(sim.s * src @ sim.R.T + sim.t - dst, axis=1)
        c = max(2.5 * 1.4826 * float(np.median(r)), 1e-12)
        w = weights * np.minimum(1.0, c / np.maximum(r, 1e-300))
        sim = weighted_umeyama(src, dst, w)
    r = np.linalg.norm(sim.s * src @ sim.R.T + sim.t - dst, axis=1)
    spread = float(np.median(np.linalg.norm(dst - np.median(dst, 0), axis=1)))
    c = 2.5 * 1.4826 * float(np.median(r))
    return sim, {"residual": float(np.median(r) / max(spread, 1e-12)), "inliers": float((r <= c).mean()),
                 "scale": sim.s, "pixels": int(len(src))}


# ---------------------------------------------------------------------------------------------- instances
def _voxel_keys(points: np.ndarray, voxel: float) -> np.ndarray:
    """Unique int64 keys of the voxels (edge ``voxel``) holding ``points`` [N,3] (21 bits per axis)."""
    q = np.floor(points / voxel).astype(np.int64) + (1 << 20)
    q = np.clip(q, 0, (1 << 21) - 1)
    return np.unique((q[:, 0] << 42) | (q[:, 1] << 21) | q[:, 2])


@dataclass
class GlobalInstance:
    feature_sum: np.ndarray          # sum of the windows' pooled, normalised features
    voxels: np.ndarray               # sorted unique voxel keys seen so far (capped)
    score: float
    windows: int = 1

    @property
    def feature(self) -> np.ndarray:
        return self.feature_sum / max(np.linalg.norm(self.feature_sum), 1e-12)


@dataclass
class WindowInstance:
    local_id: int
    feature: np.ndarray
    voxels: np.ndarray
    score: float


MAX_VOXELS = 20000        # per instance: enough to tell objects apart, bounded for thousand-frame runs


def window_instances(ids: torch.Tensor, scores: torch.Tensor, features: torch.Tensor | None,
                     points: torch.Tensor, conf: torch.Tensor, voxel: float) -> list[WindowInstance]:
    """One entry per instance of a window: pooled normalised feature, voxels of its confident aligned points."""
    ids_np = ids.reshape(-1).numpy()
    pts = points.reshape(-1, 3).numpy()
    c = conf.reshape(-1).numpy()
    confident = np.isfinite(pts).all(1) & (c >= np.median(c[np.isfinite(c)])) if np.isfinite(c).any() else \
        np.zeros_like(ids_np, bool)
    feats = None
    if features is not None:                               # [S,C,H,W] -> [S*H*W, C], normalised per pixel
        f = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()
        feats = torch.nn.functional.normalize(f, dim=1).numpy()
    out = []
    for k in range(1, int(scores.numel()) + 1):
        sel = ids_np == k
        if not sel.any():
            continue
        feature = feats[sel].mean(0) if feats is not None else np.zeros(1)
        feature = feature / max(np.linalg.norm(feature), 1e-12)
        vox = _voxel_keys(pts[sel & confident], voxel) if (sel & confident).any() else np.zeros(0, np.int64)
        out.append(WindowInstance(k, feature, vox[:MAX_VOXELS], float(scores[k - 1])))
    return out


def match_instances(local: list[WindowInstance], memory: dict[int, GlobalInstance], shared_iou: np.ndarray,
                    min_match: float, min_feature_similarity: float) -> dict[int, int]:
    """{local id: global id} by one-to-one assignment on ``max(shared-frame IoU, voxel overlap)``, pairs whose
    features are less similar than ``min_feature_similarity`` or whose score is under ``min_match`` left out.
    ``shared_iou`` [len(local), len(memory)] in the order of ``memory``'s keys."""
    from scipy.optimize import linear_sum_assignment

    gids = list(memory)
    if not local or not gids:
        return {}
    score = np.zeros((len(local), len(gids)))
    for i, w in enumerate(local):
        for j, g in enumerate(gids):
            m = memory[g]
            if w.feature.shape == m.feature.shape and float(w.feature @ m.feature) < min_feature_similarity:
                continue
            # the share of the window's voxels the instance already holds: an object seen in part before
            # still matches as a whole; copies elsewhere share none
            overlap = np.intersect1d(w.voxels, m.voxels, assume_unique=True).size / max(w.voxels.size, 1)
            score[i, j] = max(float(shared_iou[i, j]), overlap)
    rows, cols = linear_sum_assignment(score, maximize=True)
    return {local[r].local_id: gids[c] for r, c in zip(rows, cols) if score[r, c] >= min_match}


def shared_iou(global_ids: torch.Tensor, local_ids: torch.Tensor, local: list[WindowInstance],
               memory: dict[int, GlobalInstance]) -> np.ndarray:
    """IoU over the shared frames' pixels (jointly) of each window instance with each global one."""
    g = global_ids.reshape(-1).numpy().astype(np.int64)
    l_ = local_ids.reshape(-1).numpy().astype(np.int64)
    out = np.zeros((len(local), len(memory)))
    if g.size == 0:
        return out
    gmax, lmax = int(g.max(initial=0)) + 1, int(l_.max(initial=0)) + 1
    joint = np.bincount(l_ * gmax + g, minlength=lmax * gmax).reshape(lmax, gmax)
    area_l, area_g = joint.sum(1), joint.sum(0)
    for i, w in enumerate(local):
        for j, gid in enumerate(memory):
            if w.local_id < lmax and gid < gmax and joint[w.local_id, gid]:
                inter = joint[w.local_id, gid]
                out[i, j] = inter / (area_l[w.local_id] + area_g[gid] - inter)
    return out


# ---------------------------------------------------------------------------------------------- the driver
@dataclass
class WindowOptions:
    window: int
    overlap: int
    associate: bool = True            # False: every window's instances get new ids (the baseline)
    min_match: float = 0.25
    min_feature_similarity: float = 0.3
    voxel_fraction: float = 0.03      # voxel edge as a share of the first window's median camera-to-point distance
    max_align_pixels: int = 20000     # shared pixels sampled for the Sim(3)


def _frame_outputs(out: dict) -> dict[str, torch.Tensor]:
    """A window's batch-of-one outputs as per-frame tensors (first axis = frames)."""
    got = {k: out[k][0].detach().float().cpu() for k in FRAME_OUTPUTS if k in out}
    if "pose_enc" in out:
        got["pose_enc"] = out["pose_enc"][-1][0].detach().float().cpu()
    return got


class FrameStore:
    """Where :func:`reconstruct` keeps the frames the windows bring: tensors in memory (the default), or with a
    ``folder`` one raw file per output (:class:`~.frame_stack.StoredFrames`), so that a thousand frames cost disk,
    not memory. Cameras (a few numbers per frame) stay in memory either way."""

    SMALL = ("extrinsics", "intrinsics")

    def __init__(self, frames: int, folder=None) -> None:
        self.frames, self.folder = frames, folder
        self.columns: dict = {}

    def put(self, key: str, start: int, values: torch.Tensor) -> None:
        if key not in self.columns:
            if self.folder is None or key in self.SMALL:
                self.columns[key] = torch.empty((self.frames, *values.shape[1:]), dtype=values.dtype)
            else:
                from pathlib import Path

                from .frame_stack import StoredFrames

                self.columns[key] = StoredFrames(Path(self.folder) / f"{key}.raw", self.frames,
                                                 tuple(values.shape[1:]), values.dtype)
        column = self.columns[key]
        if torch.is_tensor(column):
            column[start: start + len(values)] = values
        else:
            column.write(start, values)

    def get(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self.columns[key][start:stop]

    def __contains__(self, key: str) -> bool:
        return key in self.columns


@dataclass
class WindowedResult:
    outputs: dict                     # the sequence's outputs, shaped like one forward pass over every frame
    windows: list[dict]               # per-window diagnostics (frames, alignment, instances)
    observations: list = field(default_factory=list)   # what ``observe`` returned per window, in the global frame


def reconstruct(run: Callable[[torch.Tensor], dict], windows: Iterable[tuple[int, int, torch.Tensor]],
                frames: int, options: WindowOptions, observe: Callable | None = None,
                store: FrameStore | None = None) -> WindowedResult:
    """``windows`` yields (start, end, images [end-start,3,H,W]) in order (:func:`plan_windows`); ``run`` maps a
    window's images [1,S,3,H,W] to the network's and post-processors' outputs. ``observe(images, outputs)``
    (optional) returns a window's point tracks in its own frame (:class:`~.track_ba.TrackObservations`); they
    come back moved into the global frame, for bundle adjustment over the whole sequence. Returns the assembled
    sequence; its per-frame outputs are ``store``'s columns (in memory unless a :class:`FrameStore` with a
    folder is given)."""
    store = store if store is not None else FrameStore(frames)
    memory: dict[int, GlobalInstance] = {}
    filled = 0                        # frames [0, filled) are in the store
    voxel = None
    diagnostics, observations = [], []
    for start, end, images in windows:
        t0 = time.perf_counter()
        out = run(images[None])
        t_net = time.perf_counter() - t0
        per = _frame_outputs(out)
        H, W = images.shape[-2:]
        E, K = (pose_encoding_to_extri_intri(per["pose_enc"], (H, W)) if "pose_enc" in per else (None, None))
        shared = range(start, min(filled, end))
        info: dict = {"frames": [start, end], "shared": len(shared), "network_seconds": round(t_net, 3)}
        sim = Sim3()
        if len(shared):
            src = per["world_points"][: len(shared)].reshape(-1, 3).numpy()
            dst = store.get("world_points", shared.start, shared.stop).reshape(-1, 3).numpy()
            w = (per["world_points_conf"][: len(shared)].reshape(-1).numpy()
                 * store.get("world_points_conf", shared.start, shared.stop).reshape(-1).numpy())
            pick = np.random.default_rng(start).permutation(len(src))[: options.max_align_pixels]
            sim, fit = robust_sim3(src[pick], dst[pick], w[pick])
            info["alignment"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in fit.items()}
        if observe is not None:
            obs = observe(images, per)
            if obs is not None:
                observations.append(obs.moved(sim, np.arange(start, end)))
        aligned = {}
        for key, how in FRAME_OUTPUTS.items():
            if key in per:
                v = per[key]
                aligned[key] = sim.points(v.double()).float() if how == "points" else \
                    v * sim.s if how == "depth" else v
        if E is not None:
            aligned["extrinsics"] = sim.extrinsics(E.double()).float()
            aligned["intrinsics"] = K
        if voxel is None and "world_points" in aligned:
            cam0 = -E[0, :3, :3].T @ E[0, :3, 3] if E is not None else torch.zeros(3)
            dist = (aligned["world_points"] - cam0).norm(dim=-1)
            voxel = options.voxel_fraction * float(dist[torch.isfinite(dist)].median())
        # instances
        if "instance_masks" in out:
            local_ids = out["instance_masks"][0].detach().cpu().long()
            scores = out["instance_scores"][0].detach().float().cpu()
            feats = out.get("part_feat")
            local = window_instances(local_ids, scores, None if feats is None else feats[0].detach().cpu(),
                                     aligned["world_points"], aligned["world_points_conf"], voxel or 1.0)
            shared_ids = store.get("instance_masks", shared.start, shared.stop) if len(shared) else None
            if options.associate and memory:
                iou = shared_iou(shared_ids, local_ids[: len(shared)], local, memory) \
                    if len(shared) else np.zeros((len(local), len(memory)))
                mapping = match_instances(local, memory, iou, options.min_match, options.min_feature_similarity)
            else:
                mapping = {}
            seen_before = set(shared_ids.unique().tolist()) - {0} if len(shared) else set()
            new = 0
            for inst in local:
                gid = mapping.get(inst.local_id)
                if gid is None:
                    gid = max(memory, default=0) + 1
                    memory[gid] = GlobalInstance(np.zeros_like(inst.feature), np.zeros(0, np.int64), 0.0, 0)
                    mapping[inst.local_id] = gid
                    new += 1
                m = memory[gid]
                m.feature_sum = m.feature_sum + inst.feature
                m.voxels = np.union1d(m.voxels, inst.voxels)
                if m.voxels.size > MAX_VOXELS:        # a bounded, deterministic subset
                    m.voxels = m.voxels[np.linspace(0, m.voxels.size - 1, MAX_VOXELS).astype(np.int64)]
                m.score, m.windows = max(m.score, inst.score), m.windows + 1
            lut = torch.zeros(int(local_ids.max()) + 1 if local_ids.numel() else 1, dtype=torch.long)
            for lid, gid in mapping.items():
                if lid < lut.numel():
                    lut[lid] = gid
            aligned["instance_masks"] = lut[local_ids]
            info["instances"] = {"window": len(local), "matched": len(local) - new, "new": new,
                                 "dropped": len(seen_before - set(mapping.values()))}
        # the frames this window brings
        first_new = max(filled - start, 0)
        for key, v in aligned.items():
            store.put(key, filled, v[first_new:])
        filled = end
        info["seconds"] = round(time.perf_counter() - t0, 3)
        diagnostics.append(info)
    if filled != frames:
        raise WindowError(f"the windows covered {filled} of {frames} frames")
    return WindowedResult(_assemble(store, memory), diagnostics, observations)


def _assemble(store: FrameStore, memory: dict[int, GlobalInstance]) -> dict:
    """The store as one forward pass's outputs over every frame (batch of one; a stored column as a
    :class:`~.frame_stack.Batched` stack read per view)."""
    from .frame_stack import Batched

    out = {k: v[None] if torch.is_tensor(v) else Batched(v) for k, v in store.columns.items()
           if k in FRAME_OUTPUTS or k == "instance_masks"}
    if "extrinsics" in store:
        H, W = store.columns["images"].shape[-2:]
        out["pose_enc"] = [extri_intri_to_pose_encoding(store.columns["extrinsics"], store.columns["intrinsics"],
                                                        (H, W))[None]]
    if "instance_masks" in store:
        K = max(memory, default=0)
        out["instance_scores"] = [torch.tensor([memory[k].score if k in memory else 0.0 for k in range(1, K + 1)])]
    return out


def iter_windows(plan: list[tuple[int, int]], frames: Iterator[torch.Tensor]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, images) per window from a stream of preprocessed frames [3,H,W], holding only one window's
    frames (the overlap is kept for the next)."""
    held: list[torch.Tensor] = []
    held_from = 0
    it = iter(frames)
    for start, end in plan:
        held = held[start - held_from:] if start >= held_from else held
        held_from = start
        while held_from + len(held) < end:
            try:
                held.append(next(it))
            except StopIteration:
                raise WindowError(f"the input ended after {held_from + len(held)} frames; window "
                                  f"[{start}, {end}) needs more") from None
        yield start, end, torch.stack(held[: end - start])


def describe_windows(diagnostics: list[dict]) -> dict:
    """The manifest's summary of a windowed run."""
    res = [d["alignment"]["residual"] for d in diagnostics if "alignment" in d]
    inst = [d["instances"] for d in diagnostics if "instances" in d]
    return {"windows": len(diagnostics),
            "alignment_residual_max": max(res) if res else None,
            "alignment_residual_median": float(np.median(res)) if res else None,
            "instances_matched": sum(i["matched"] for i in inst), "instances_new": sum(i["new"] for i in inst),
            "instances_dropped": sum(i["dropped"] for i in inst), "per_window": diagnostics,
            "nan_free": all(math.isfinite(r) for r in res)}
