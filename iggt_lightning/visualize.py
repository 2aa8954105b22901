"""Images for people: normalised maps and PCA colours of feature maps (TensorBoard, exported colour layers)."""
from __future__ import annotations

import torch


def normalised(values: torch.Tensor) -> torch.Tensor:
    """[H,W] -> [1,H,W] in [0,1] (min-max over the finite values; non-finite pixels 0)."""
    v = values.detach().float()
    finite = torch.isfinite(v)
    if not finite.any():
        return torch.zeros(1, *v.shape)
    lo, hi = v[finite].min(), v[finite].max()
    return torch.where(finite, (v - lo) / (hi - lo + 1e-8), torch.zeros_like(v))[None]


def pca_colours(features: torch.Tensor) -> torch.Tensor:
    """[D,H,W] features -> [3,H,W] colours from the top-3 principal components (2-98 % stretched)."""
    D, H, W = features.shape
    x = torch.nn.functional.normalize(features.reshape(D, -1).T.float(), dim=-1)
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[: min(3, D)].T
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], 1)
    lo, hi = torch.quantile(proj, 0.02, dim=0), torch.quantile(proj, 0.98, dim=0)
    return ((proj - lo) / (hi - lo + 1e-8)).clamp(0, 1).T.reshape(3, H, W)
