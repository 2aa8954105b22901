"""Relative camera pose metrics: RRA / RTA at 30° and AUC@30 over all ordered frame pairs of a scene."""
from __future__ import annotations

import torch
from torchmetrics import Metric


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


class CameraMetrics(Metric):
    """``update(pred_extrinsics [B,S,3,4] or [S,3,4], gt_extrinsics)`` (world-to-camera, OpenCV).

    For every ordered pair i != j: rotation error of R_ij and angle error of the relative translation
    direction. RRA@30 / RTA@30: fraction of pairs under 30°. AUC@30: mean over thresholds 1..30° of the
    fraction of pairs whose max(rotation, translation) error is under the threshold.
    """

    full_state_update = False

    def __init__(self, max_threshold: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_threshold = max_threshold
        self.add_state("hist", default=torch.zeros(max_threshold, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rra", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rta", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape or pred.shape[-2:] != (3, 4):
            raise ValueError(f"extrinsics must both be [...,S,3,4]; got {tuple(pred.shape)} and {tuple(target.shape)}")
        pred, target = pred.reshape(-1, *pred.shape[-3:]).double(), target.reshape(-1, *target.shape[-3:]).double()
        for p, g in zip(pred, target):
            S = p.shape[0]
            if S < 2:
                continue
            Rp, tp = _relative(p)
            Rg, tg = _relative(g)
            off = ~torch.eye(S, dtype=torch.bool, device=p.device)
            r_err = rotation_angle_deg(Rp[off], Rg[off])
            t_err = translation_angle_deg(tp[off], tg[off])
            self.rra = self.rra + (r_err < self.max_threshold).double().sum()
            self.rta = self.rta + (t_err < self.max_threshold).double().sum()
            worst = torch.maximum(r_err, t_err)
            thresholds = torch.arange(1, self.max_threshold + 1, device=p.device, dtype=torch.float64)
            self.hist = self.hist + (worst[:, None] < thresholds[None]).double().sum(0)
            self.pairs = self.pairs + int(off.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.pairs.double()
        if self.pairs == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {f"rra@{self.max_threshold}": nan, f"rta@{self.max_threshold}": nan, f"auc@{self.max_threshold}": nan}
        return {f"rra@{self.max_threshold}": self.rra / n, f"rta@{self.max_threshold}": self.rta / n,
                f"auc@{self.max_threshold}": (self.hist / n).mean()}
