"""Point-map quality: accuracy, completeness and Chamfer distance after similarity alignment."""
from __future__ import annotations

import torch
from torchmetrics import Metric

from iggt_lightning.geometry import umeyama_alignment


class PointMapMetrics(Metric):
    """``update(pred [B,S,H,W,3], target [B,S,H,W,3], valid [B,S,H,W])``, per scene:

    1. the predicted valid points are aligned to the ground truth by the least-squares similarity
       (Umeyama: scale, rotation, translation), since the model predicts up to a similarity;
    2. ``accuracy`` = mean distance of each aligned predicted point to its nearest ground-truth point,
       ``completeness`` = mean distance of each ground-truth point to its nearest predicted point,
       ``chamfer`` = their mean; in the ground truth's units (normalised scene units in training).
    Up to ``max_points`` random valid points per scene are used (deterministic). Scenes are averaged; the
    state is summed (DDP-correct).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, max_points: int = 20000, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_points, self.seed = int(max_points), int(seed)
        for name in ("accuracy", "completeness"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scenes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        from scipy.spatial import cKDTree

        if pred.shape != target.shape or pred.shape[-1] != 3 or pred.ndim != 5:
            raise ValueError(f"point maps must both be [B,S,H,W,3]; got {tuple(pred.shape)} and {tuple(target.shape)}")
        if valid is None:
            valid = torch.ones(pred.shape[:-1], dtype=torch.bool, device=pred.device)
        g = torch.Generator().manual_seed(self.seed)
        for p, t, v in zip(pred.detach().double(), target.double(), valid.bool()):
            v = v & torch.isfinite(p).all(-1) & torch.isfinite(t).all(-1)
            p, t = p[v], t[v]
            if p.shape[0] < 3:
                continue
            if p.shape[0] > self.max_points:
                idx = torch.randperm(p.shape[0], generator=g)[: self.max_points].to(p.device)
                p, t = p[idx], t[idx]
            s, R, tr = umeyama_alignment(p, t)
            aligned = (s * p @ R.T + tr).cpu().numpy()
            t = t.cpu().numpy()
            acc = cKDTree(t).query(aligned, k=1, workers=-1)[0].mean()    # parallel queries: same distances
            comp = cKDTree(aligned).query(t, k=1, workers=-1)[0].mean()
            self.accuracy = self.accuracy + float(acc)
            self.completeness = self.completeness + float(comp)
            self.scenes = self.scenes + 1

    def compute(self) -> dict[str, torch.Tensor]:
        if self.scenes == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {"accuracy": nan, "completeness": nan, "chamfer": nan}
        acc, comp = self.accuracy / self.scenes, self.completeness / self.scenes
        return {"accuracy": acc, "completeness": comp, "chamfer": (acc + comp) / 2}
