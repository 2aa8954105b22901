"""Camera (pose-encoding) loss over the refinement iterations of the camera head.

Follows VGGT's ``compute_camera_loss`` as used by the IGGT reproduction (TRAINING-AND-DATA.md §5.1,
PAPER.md §7): L1 by default ("more stable than smooth-L1" in VGGT), per-iteration weights ``gamma^(n-1-i)``,
terms averaged over iterations by dividing the weighted sum by ``n`` (not by the sum of the weights).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .options import NonNegative, Positive

__all__ = ["camera_loss"]

TRANSLATION_CLAMP = 100.0


def _elementwise_error(pred: torch.Tensor, gt: torch.Tensor, loss_type: str) -> torch.Tensor:
    """``|pred - gt|`` (``l1``) or the Huber loss with delta 1 (``huber``), per element."""
    if loss_type == "l1":
        return (pred - gt).abs()
    if loss_type == "huber":
        return F.huber_loss(pred, gt, reduction="none", delta=1.0)
    raise ValueError(f"loss_type must be 'l1' or 'huber', got {loss_type!r}")


def _single_iteration(pred: torch.Tensor, gt: torch.Tensor, loss_type: str):
    """One refinement iteration, on frames ``[N,9]``:

    ``L_T = mean min(e(t_hat, t), 100)``, ``L_R = mean e(q_hat, q)``, ``L_fov = mean e(fov_hat, fov)``.
    The translation clamp (VGGT) keeps one wildly wrong early prediction from dominating the step.
    """
    err = _elementwise_error(pred, gt, loss_type)
    return err[:, :3].clamp(max=TRANSLATION_CLAMP).mean(), err[:, 3:7].mean(), err[:, 7:9].mean()


def _as_list(pred_pose_enc_list, gt: torch.Tensor) -> list[torch.Tensor]:
    """A list of ``[B,S,9]``, a stacked ``[n,B,S,9]`` tensor, or one ``[B,S,9]`` tensor (n = 1)."""
    if isinstance(pred_pose_enc_list, torch.Tensor):
        if pred_pose_enc_list.dim() == gt.dim() + 1:
            return list(pred_pose_enc_list.unbind(0))
        return [pred_pose_enc_list]
    return list(pred_pose_enc_list)


def _frame_mask(valid: torch.Tensor | None, gt: torch.Tensor) -> torch.Tensor:
    """``valid`` per scene ``[B]`` or per frame ``[B,S]`` -> frame mask ``[B,S]``.

    VGGT passes "first frame has > 100 valid depth pixels" per scene: the GT is normalised by frame 0, so a
    scene without a usable frame 0 has meaningless camera targets.
    """
    if valid is None:
        return torch.ones(gt.shape[:-1], dtype=torch.bool, device=gt.device)
    valid = valid.to(device=gt.device, dtype=torch.bool)
    if valid.dim() == gt.dim() - 2:
        valid = valid[..., None]
    return valid.expand(gt.shape[:-1])


def camera_loss(pred_pose_enc_list: Sequence[torch.Tensor] | torch.Tensor, gt_pose_enc: torch.Tensor,
                valid: torch.Tensor | None = None, gamma: Positive = 0.6, loss_type: Literal["l1", "huber"] = "l1",
                weight_trans: NonNegative = 1.0, weight_rot: NonNegative = 1.0,
                weight_fov: NonNegative = 0.5) -> dict[str, torch.Tensor]:
    """Iteration-weighted pose-encoding loss.

    For ``n`` iterations with predictions ``g_hat_i`` and per-iteration terms ``L_X^i`` (see
    ``_single_iteration``, means over the valid frames' components)::

        L_X = (1/n) * sum_i gamma^(n-1-i) * L_X^i          X in {T, R, fov}
        L_camera = weight_trans * L_T + weight_rot * L_R + weight_fov * L_fov

    The last iteration has weight 1; dividing by ``n`` (not by ``sum_i gamma^(n-1-i)``) is what VGGT and
    the IGGT reproduction do (TRAINING-AND-DATA.md §5.1: "sum of weighted terms / n"), so the loss scale
    matches their camera weight (5.0). ``valid`` ([B] or [B,S] bool) selects the frames; with none valid
    all terms are 0 but stay attached to the predictions' graph.
    """
    preds = _as_list(pred_pose_enc_list, gt_pose_enc)
    if not preds:
        raise ValueError("camera_loss needs at least one prediction")
    mask = _frame_mask(valid, gt_pose_enc)
    n = len(preds)
    if not bool(mask.any()):
        zero = sum(p.sum() for p in preds) * 0.0
        return {"loss_camera": zero, "loss_T": zero, "loss_R": zero, "loss_fov": zero}
    gt = gt_pose_enc[mask]
    total_T = total_R = total_fov = 0.0
    for i, pred in enumerate(preds):
        w = gamma ** (n - 1 - i)
        l_T, l_R, l_fov = _single_iteration(pred[mask], gt, loss_type)
        total_T, total_R, total_fov = total_T + w * l_T, total_R + w * l_R, total_fov + w * l_fov
    loss_T, loss_R, loss_fov = total_T / n, total_R / n, total_fov / n
    loss = weight_trans * loss_T + weight_rot * loss_R + weight_fov * loss_fov
    return {"loss_camera": loss, "loss_T": loss_T, "loss_R": loss_R, "loss_fov": loss_fov}
