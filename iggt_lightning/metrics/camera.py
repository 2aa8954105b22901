"""Relative camera pose metrics: RRA / RTA at 30° and AUC@30 over frame pairs, pooled or per scene / category."""
from __future__ import annotations

import hashlib

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _relative(extrinsics: torch.Tensor):
    """[S,3,4] w2c -> relative rotations R_ij [S,S,3,3] and camera-centre directions between i and j."""
    R, t = extrinsics[:, :, :3], extrinsics[:, :, 3]
    R_rel = R[None] @ R[:, None].transpose(-1, -2)          # R_j R_i^T: i -> j
    t_rel = t[None] - (R_rel @ t[:, None, :, None])[..., 0]  # t_j - R_ij t_i
    return R_rel, t_rel


def rotation_angle_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    cos = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def translation_angle_deg(ta: torch.Tensor, tb: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Angle between translation directions; scale-free, as the translation scale is not observable.
    Taken as min(angle, 180 - angle) like VGGT's evaluation, which ignores the direction sign ambiguity."""
    cos = (ta * tb).sum(-1) / (ta.norm(dim=-1) * tb.norm(dim=-1)).clamp_min(eps)
    ang = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    return torch.minimum(ang, 180 - ang)


def _group_key(name) -> int:
    """A scene id (or its category) as an int64 for a torchmetrics list state (stable across processes)."""
    return int.from_bytes(hashlib.md5(str(name).encode()).digest()[:8], "little", signed=True)


class CameraMetrics(Metric):
    """``update(pred_extrinsics [B,S,3,4] or [S,3,4], gt_extrinsics, scene_ids=None)`` (world-to-camera, OpenCV).

    For every pair of views: the rotation error of the relative rotation and the angle between the relative
    translation directions (sign-free: min(angle, 180 - angle)). RRA / RTA: fraction of pairs under
    ``max_threshold`` degrees; ``auc@T`` (T in ``auc_thresholds``, default just ``max_threshold``): the mean over
    k = 1..T of the fraction of pairs whose max(rotation, translation) error is < k (<= T for the last bin,
    VGGT's histogram).

    Args:
        pairs: ``ordered`` (every i != j, relative pose i -> j) or ``unordered`` (i < j, VGGT's
            ``E_i inv(E_j)``: camera j -> camera i).
        aggregate: ``pairs`` (all pairs of all scenes pooled), ``scene`` (one AUC per scene, then their mean:
            VGGT on RealEstate10K) or ``category`` (pairs pooled per category = the scene id up to its first
            ``/``, then the mean over categories: VGGT on CO3D). RRA / RTA are always over pooled pairs.
    """

    full_state_update = False

    def __init__(self, max_threshold: int = 30, pairs: str = "ordered", aggregate: str = "pairs",
                 auc_thresholds: tuple[int, ...] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if pairs not in ("ordered", "unordered"):
            raise ValueError(f"CameraMetrics pairs must be 'ordered' or 'unordered'; got {pairs!r}")
        if aggregate not in ("pairs", "scene", "category"):
            raise ValueError(f"CameraMetrics aggregate must be 'pairs', 'scene' or 'category'; got {aggregate!r}")
        self.max_threshold, self.pairs, self.aggregate = int(max_threshold), pairs, aggregate
        self.auc_thresholds = tuple(int(t) for t in (auc_thresholds or (max_threshold,)))
        if any(t < 1 for t in self.auc_thresholds):
            raise ValueError(f"auc_thresholds must be positive integers (degrees); got {auc_thresholds!r}")
        # per pair: max(rotation, translation) error, rotation, translation, and the pair's group
        for name in ("worst", "r_err", "t_err", "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor, scene_ids: list | None = None) -> None:
        if pred.shape != target.shape or pred.shape[-2:] != (3, 4):
            raise ValueError(f"extrinsics must both be [...,S,3,4]; got {tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.reshape(-1, *pred.shape[-3:]).double(), target.reshape(-1, *target.shape[-3:]).double()
        if isinstance(scene_ids, str):
            scene_ids = [scene_ids]
        if scene_ids is not None and len(scene_ids) != len(pred):
            raise ValueError(f"{len(scene_ids)} scene ids for {len(pred)} scenes")
        if self.aggregate != "pairs" and scene_ids is None:
            raise ValueError(f"CameraMetrics aggregate={self.aggregate!r} needs the scenes' ids (scene_ids)")
        for b, (p, g) in enumerate(zip(pred, target)):
            S = p.shape[0]
            if S < 2:
                continue
            Rp, tp = _relative(p)
            Rg, tg = _relative(g)
            if self.pairs == "ordered":
                pick = ~torch.eye(S, dtype=torch.bool, device=p.device)
            else:   # _relative's [i, j] is i -> j; VGGT's pair (i < j) maps camera j to camera i: entry [j, i]
                pick = torch.tril(torch.ones(S, S, dtype=torch.bool, device=p.device), diagonal=-1)
            r_err = rotation_angle_deg(Rp[pick], Rg[pick])
            t_err = translation_angle_deg(tp[pick], tg[pick])
            worst = torch.nan_to_num(torch.maximum(r_err, t_err), nan=1e6)
            if self.aggregate == "pairs":
                key = 0
            else:
                name = str(scene_ids[b])
                key = _group_key(name.split("/")[0] if self.aggregate == "category" else name)
            self.worst.append(worst)
            self.r_err.append(r_err)
            self.t_err.append(t_err)
            self.group.append(torch.full_like(worst, 0, dtype=torch.long) + key)

    @staticmethod
    def auc(worst: torch.Tensor, threshold: int) -> torch.Tensor:
        """VGGT's AUC: histogram of the errors over integer bins 0..T (the last one closed), divided by the
        number of pairs, cumulated, averaged over the T bins."""
        k = torch.arange(1, threshold + 1, dtype=torch.float64, device=worst.device)
        below = (worst[:, None] < k[None]).double()
        below[:, -1] = (worst <= threshold).double()
        return below.mean(0).mean()

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        T = self.max_threshold
        if isinstance(self.worst, list) and not self.worst:
            return {f"rra@{T}": nan, f"rta@{T}": nan, **{f"auc@{t}": nan for t in self.auc_thresholds}}
        worst, r_err, t_err, group = (dim_zero_cat(x) for x in (self.worst, self.r_err, self.t_err, self.group))
        out = {f"rra@{T}": (r_err < T).double().mean(), f"rta@{T}": (t_err < T).double().mean()}
        groups = [worst] if self.aggregate == "pairs" else [worst[group == g] for g in group.unique()]
        for t in self.auc_thresholds:
            out[f"auc@{t}"] = torch.stack([self.auc(w, t) for w in groups]).mean()
        return out
