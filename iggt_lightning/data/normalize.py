"""VGGT scene normalisation: first camera's frame, unit mean point distance.

The network only sees images, so the world frame and the metric scale of a scene are unobservable; the
losses compare against ground truth expressed in the first camera's frame and divided by the mean
distance of the valid points to that camera's centre.
"""
from __future__ import annotations

import torch

_GEOMETRY_KEYS = ("extrinsics", "world_points", "depth", "valid_mask")


def normalize_scene(sample: dict) -> dict:
    """Return a copy of ``sample`` in the first camera's frame with unit mean valid-point distance.

    Works on a single scene (``extrinsics`` [S,3,4]) or a batch ([B,S,3,4], normalised per scene).
    ``extrinsics`` become [R_i R_0^T | (t_i - R_i R_0^T t_0) / s] (the first one is [I|0]),
    ``world_points`` become (R_0 X + t_0) / s (0 where invalid), ``depth`` becomes depth / s, and the
    scale s is stored under ``scene_scale`` (a scalar, or [B]). Intrinsics and images are unchanged.

    A scene without any valid depth (RE10K has none) is scaled by the mean distance of its camera centres
    to the first camera's centre instead (1 if all cameras coincide), so its camera targets stay comparable.
    """
    missing = [k for k in _GEOMETRY_KEYS if k not in sample]
    if missing:
        raise ValueError(f"normalize_scene needs keys {list(_GEOMETRY_KEYS)}; missing {missing}")
    ext = sample["extrinsics"]
    if ext.ndim not in (3, 4) or ext.shape[-2:] != (3, 4):
        raise ValueError(f"extrinsics must be [S,3,4] or [B,S,3,4]; got {tuple(ext.shape)}")
    batched = ext.ndim == 4
    if not batched:
        out = _normalize_batch({k: sample[k].unsqueeze(0) for k in _GEOMETRY_KEYS})
        out = {k: v.squeeze(0) for k, v in out.items()}
    else:
        out = _normalize_batch({k: sample[k] for k in _GEOMETRY_KEYS})
    return {**sample, **out}


def _normalize_batch(g: dict) -> dict:
    """The batched core: ``g`` holds [B,S,...] tensors; float64 inside so the round trip stays exact enough."""
    ext, pts, depth, valid = g["extrinsics"], g["world_points"], g["depth"], g["valid_mask"].bool()
    B = ext.shape[0]
    counts = valid.reshape(B, -1).sum(-1)
    E = ext.double()
    R, t = E[..., :3], E[..., 3]                                     # [B,S,3,3], [B,S,3]
    R0, t0 = R[:, :1], t[:, :1]                                      # [B,1,3,3], [B,1,3]
    R_new = R @ R0.transpose(-1, -2)
    t_new = t - (R_new @ t0.unsqueeze(-1)).squeeze(-1)
    shape = pts.shape                                                # [B,S,H,W,3]
    X = pts.double().reshape(B, -1, 3) @ R0[:, 0].transpose(-1, -2) + t0                     # [B,N,3]
    X = X.reshape(shape) * valid.unsqueeze(-1)
    dist = X.norm(dim=-1) * valid
    scale = dist.reshape(B, -1).sum(-1) / counts.clamp(min=1)       # [B]
    if (counts == 0).any():                                          # no depth: the camera baseline instead
        centres = -(R_new.transpose(-1, -2) @ t_new.unsqueeze(-1)).squeeze(-1)      # [B,S,3], camera 0 at 0
        baseline = centres.norm(dim=-1)[:, 1:].mean(-1) if centres.shape[1] > 1 else torch.zeros_like(scale)
        baseline = torch.where(torch.isfinite(baseline) & (baseline > 0), baseline, torch.ones_like(baseline))
        scale = torch.where(counts == 0, baseline, scale)
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise ValueError(f"normalize_scene: degenerate scene scale {scale.tolist()} (all valid points at the camera?)")
    s_pts = scale.view(B, *([1] * (X.ndim - 1)))
    return {
        "extrinsics": torch.cat([R_new, (t_new / scale.view(B, 1, 1)).unsqueeze(-1)], -1).to(ext.dtype),
        "world_points": (X / s_pts).to(pts.dtype),
        "depth": (depth.double() / scale.view(B, *([1] * (depth.ndim - 1)))).to(depth.dtype),
        "valid_mask": g["valid_mask"],
        "scene_scale": scale.to(pts.dtype),
    }
