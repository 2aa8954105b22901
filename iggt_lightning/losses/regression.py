"""Confidence-weighted regression losses for the depth and point heads (VGGT style).

Follows VGGT's ``regression_loss`` with ``gradient_loss_fn="grad"`` as used by the IGGT reproduction
(TRAINING-AND-DATA.md §5.1 "Depth"; PAPER.md §7 "Losses"). On the valid pixels ``p`` of a batch, with
``r_p = ||pred_p - gt_p||_2`` and confidence ``c_p`` (the heads give ``c = 1 + exp(.) >= 1``)::

    L_conf = mean_p Q(gamma * r_p * c_p - alpha * log c_p)
    L_reg  = mean_p Q(r_p)
    L_grad = multi-scale gradient matching of the residual map (see ``gradient_matching_loss``)
    total  = L_conf + L_reg + gradient_weight * L_grad

where ``Q`` is the outlier filter of ``filter_by_quantile``, applied separately to the per-pixel conf and
reg values (not to the gradient term).
"""
from __future__ import annotations

import math
from typing import Annotated

import torch

from .options import Count, NonNegative, Positive, Range, forwards_options

__all__ = ["conf_regression_loss", "depth_loss", "point_loss", "filter_by_quantile", "gradient_matching_loss"]


def _zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0 that still belongs to the inputs' graph, so an empty batch does not break ``backward``/DDP."""
    return sum(t.sum() for t in tensors if t.is_floating_point()) * 0.0


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> fp32: ``log c`` and the quantile of small residuals need the mantissa."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile of a flat tensor (same as ``torch.quantile``).

    ``kthvalue`` instead of ``torch.quantile`` because the latter refuses inputs above 2^24 elements, which
    a batch of full-resolution maps can exceed.
    """
    x = x.reshape(-1)
    pos = q * (x.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, x.numel() - 1)
    v_lo, v_hi = x.kthvalue(lo + 1).values, x.kthvalue(hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)


def filter_by_quantile(values: torch.Tensor, quantile: float | None = 0.98, min_elements: int = 1000,
                       hard_max: float = 100.0) -> torch.Tensor:
    """Outlier filter ``Q`` on a flat tensor of per-pixel losses.

    ``v <- min(v, hard_max)``; then, if there are more than ``min_elements`` values, keep those strictly
    below the ``quantile`` of the batch (when more than ``min_elements`` survive). GT depth has a few
    percent of wrong pixels (edges, reflective surfaces); dropping the top 2 % stops them from dominating.
    The clamp is applied always (it cannot hurt a sane batch), the quantile step only on large inputs, as
    in VGGT, because a quantile of a few values is not a meaningful threshold.
    """
    values = values.clamp(max=hard_max)
    if quantile is None or quantile <= 0 or values.numel() <= min_elements:
        return values
    thresh = _quantile(values.detach(), quantile).clamp(max=hard_max)
    keep = values < thresh
    if int(keep.sum()) > min_elements:
        return values[keep]
    return values


def _gradient_matching_single_scale(residual: torch.Tensor, mask: torch.Tensor,
                                    hard_max: float = 100.0) -> torch.Tensor:
    """One scale, ``residual`` ``[N,H,W,C]`` (already zero at invalid pixels), ``mask`` ``[N,H,W]``::

        (sum_{x-pairs} |D(p+1) - D(p)| m_x + sum_{y-pairs} |D(p+1) - D(p)| m_y) / #valid

    ``m_x``/``m_y`` = both neighbours valid; each difference is clamped at ``hard_max``; the sums run over
    channels too. Returns 0 with no valid pixel.
    """
    m = mask[..., None].to(residual.dtype)
    grad_x = (residual[:, :, 1:] - residual[:, :, :-1]).abs().clamp(max=hard_max) * (m[:, :, 1:] * m[:, :, :-1])
    grad_y = (residual[:, 1:] - residual[:, :-1]).abs().clamp(max=hard_max) * (m[:, 1:] * m[:, :-1])
    count = m.sum()
    return (grad_x.sum() + grad_y.sum()) / count.clamp_min(1.0)


def gradient_matching_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, scales: int = 4,
                           hard_max: float = 100.0) -> torch.Tensor:
    """Multi-scale gradient matching (MiDaS/VGGT "grad"), on ``[N,H,W,C]`` maps and ``[N,H,W]`` masks::

        D = valid * (pred - gt)
        L_grad = (1/scales) * sum_{k<scales} G(D[::2^k, ::2^k], valid[::2^k, ::2^k])

    with ``G`` the single-scale term. Penalising differences of the residual between neighbours asks for
    the right *shape* (edges, slopes) independently of a per-region offset. Not confidence-weighted, as in
    the reproduction (TRAINING-AND-DATA.md §5.1: ``"conf" not in "grad"``).
    """
    # where, not multiply: gt may hold NaN/inf at invalid pixels and NaN * 0 is NaN
    residual = torch.where(valid[..., None], pred - gt, torch.zeros_like(pred))
    total = residual.new_zeros(())
    for k in range(scales):
        step = 2 ** k
        total = total + _gradient_matching_single_scale(residual[:, ::step, ::step], valid[:, ::step, ::step],
                                                        hard_max)
    return total / scales


def _flatten_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B,S,...]`` -> ``[B*S,...]``: the gradient term treats every frame as an image."""
    return x.reshape(-1, *x.shape[2:])


def conf_regression_loss(pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                         gamma: Positive = 1.0, alpha: NonNegative = 0.2, gradient_weight: NonNegative = 1.0,
                         quantile: Annotated[float, Range(0, 1)] | None = 0.98, gradient_scales: Count = 4,
                         min_elements: Count = 1000, hard_max: Positive = 100.0) -> dict[str, torch.Tensor]:
    """Confidence-weighted regression of ``pred`` ``[B,S,H,W,C]`` against ``gt`` ``[B,S,H,W,C]``.

    ``conf`` ``[B,S,H,W]`` (>0; the heads give >= 1), ``valid`` ``[B,S,H,W]`` bool. Per valid pixel
    ``r = ||pred - gt||_2`` over C and ``L_conf = mean Q(gamma r c - alpha log c)``: a confident pixel pays
    more for its error, and ``-alpha log c`` stops the network from setting ``c`` to its minimum
    everywhere. ``L_reg = mean Q(r)`` is the plain error, ``L_grad`` the gradient matching term; see the
    module docstring. Returns ``loss_conf``, ``loss_reg``, ``loss_grad`` and ``total``; everything is 0
    (attached to the graph) when no pixel is valid.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ")
    valid = valid.to(torch.bool)
    pred, conf, gt = _at_least_fp32(pred), _at_least_fp32(conf), _at_least_fp32(gt)
    zero = _zero_like_graph(pred, conf)
    if not bool(valid.any()):
        return {"loss_conf": zero, "loss_reg": zero, "loss_grad": zero, "total": zero}

    c = conf[valid]
    residual = torch.linalg.vector_norm(pred[valid] - gt[valid], dim=-1)
    per_pixel_conf = gamma * residual * c - alpha * torch.log(c)
    loss_conf = filter_by_quantile(per_pixel_conf, quantile, min_elements, hard_max).mean()
    loss_reg = filter_by_quantile(residual, quantile, min_elements, hard_max).mean()

    if gradient_weight and gradient_scales > 0:
        loss_grad = gradient_matching_loss(_flatten_frames(pred), _flatten_frames(gt), _flatten_frames(valid),
                                           gradient_scales, hard_max)
    else:
        loss_grad = zero
    total = loss_conf + loss_reg + gradient_weight * loss_grad
    return {"loss_conf": loss_conf, "loss_reg": loss_reg, "loss_grad": loss_grad, "total": total}


def _prefixed(terms: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``loss_conf`` -> ``loss_<name>_conf`` ...; ``total`` -> ``loss_<name>``."""
    out = {f"loss_{name}_{k[len('loss_'):]}": v for k, v in terms.items() if k != "total"}
    out[f"loss_{name}"] = terms["total"]
    return out


@forwards_options(conf_regression_loss)
def depth_loss(pred_depth: torch.Tensor, depth_conf: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor,
               **kwargs) -> dict[str, torch.Tensor]:
    """Depth: ``pred_depth`` ``[B,S,H,W,1]``, ``depth_conf`` ``[B,S,H,W]``, ``gt_depth`` ``[B,S,H,W]``.

    ``conf_regression_loss`` with C = 1 (so ``r = |d_hat - d|``). Keys ``loss_depth`` (the total),
    ``loss_depth_conf``, ``loss_depth_reg``, ``loss_depth_grad``.
    """
    if gt_depth.dim() == pred_depth.dim() - 1:
        gt_depth = gt_depth[..., None]
    return _prefixed(conf_regression_loss(pred_depth, depth_conf, gt_depth, valid, **kwargs), "depth")


@forwards_options(conf_regression_loss)
def point_loss(pred_points: torch.Tensor, points_conf: torch.Tensor, gt_points: torch.Tensor, valid: torch.Tensor,
               **kwargs) -> dict[str, torch.Tensor]:
    """World points: ``[B,S,H,W,3]`` predictions and GT, ``[B,S,H,W]`` confidence and mask.

    ``conf_regression_loss`` with C = 3 (``r`` = Euclidean point error). Keys ``loss_point`` (the total),
    ``loss_point_conf``, ``loss_point_reg``, ``loss_point_grad``.
    """
    return _prefixed(conf_regression_loss(pred_points, points_conf, gt_points, valid, **kwargs), "point")
