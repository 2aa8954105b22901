"""Depth metrics with per-frame median alignment (scale-invariant, as VGGT-style models predict up to scale)."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class DepthMetrics(Metric):
    """AbsRel, δ<1.25 and τ<1.03 (inlier ratio at 3 %), each averaged over valid pixels per frame then over frames.

    ``update(pred [..., H, W] or [..., H, W, 1], target [..., H, W], valid [..., H, W] (optional))``: each frame's
    prediction is scaled by median(target)/median(pred) over its valid pixels (target > 0 and ``valid``), then,
    with ``clip_range`` (lo, hi), clamped to it (IGGT's evaluator: (0.1, 100) metres). Frames with no valid pixel
    are skipped. State is summed across processes (DDP-correct).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, min_depth: float = 1e-6, clip_range: tuple[float, float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if clip_range is not None and not (len(clip_range) == 2 and 0 <= clip_range[0] < clip_range[1]):
            raise ValueError(f"DepthMetrics clip_range must be (lo, hi) with 0 <= lo < hi; got {clip_range!r}")
        self.min_depth = min_depth
        self.clip_range = None if clip_range is None else (float(clip_range[0]), float(clip_range[1]))
        for name in ("abs_rel", "delta_1_25", "tau_1_03"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("frames", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    # States are rebound, not updated in place: a state created under inference mode (trainer.validate) cannot
    # be modified in place later under no_grad (validation inside fit).
    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1:
            pred = pred[..., 0]
        if pred.shape != target.shape:
            raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        H, W = target.shape[-2:]
        pred = pred.reshape(-1, H, W).double()
        target = target.reshape(-1, H, W).double()
        mask = target > self.min_depth
        if valid is not None:
            mask &= valid.reshape(-1, H, W).bool()
        mask &= torch.isfinite(pred) & (pred > 0)
        for p, t, m in zip(pred, target, mask):
            if not m.any():
                continue
            p, t = p[m], t[m]
            p = p * (t.median() / p.median())
            if self.clip_range is not None:
                p = p.clamp(*self.clip_range)
            ratio = torch.maximum(p / t, t / p)
            self.abs_rel = self.abs_rel + ((p - t).abs() / t).mean()
            self.delta_1_25 = self.delta_1_25 + (ratio < 1.25).double().mean()
            self.tau_1_03 = self.tau_1_03 + (ratio < 1.03).double().mean()
            self.frames = self.frames + 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.frames.clamp_min(1).double()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        if self.frames == 0:
            return {"abs_rel": nan, "delta_1.25": nan, "tau_1.03": nan}
        return {"abs_rel": self.abs_rel / n, "delta_1.25": self.delta_1_25 / n, "tau_1.03": self.tau_1_03 / n}
