"""Interactive segmentation on multi-view instances: how good is the mask after 1, 2, 3 clicks.

Clicks are placed as interactive-segmentation benchmarks place them (the NoC protocol of DIOS / RITM): the first
at the object's interior point farthest from its boundary, in the view where the object is largest; every next
one in the largest error region of the current mask (missed object pixels: a positive click; wrongly taken
pixels: a negative click), at that region's interior point farthest from its boundary, in the view where the
region is largest. The IoU after ``k`` clicks is over all views jointly. Needs scipy (distance transform).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from iggt_lightning.inference.prompts import Click, Prompt


def interior_click(region: np.ndarray, positive: bool) -> Click | None:
    """The pixel of ``region`` [S,H,W] bool farthest from the region's boundary (and the image edge), in the view
    where the region is largest; None for an empty region."""
    from scipy.ndimage import distance_transform_edt

    sizes = region.reshape(len(region), -1).sum(1)
    if sizes.max(initial=0) == 0:
        return None
    v = int(sizes.argmax())
    dist = distance_transform_edt(np.pad(region[v], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return Click(v, float(x), float(y), bool(positive))


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def click_ious(segment: Callable[[Prompt], torch.Tensor], target: torch.Tensor, clicks: int = 3) -> list[float]:
    """IoU of ``segment(prompt)`` (a bool [S,H,W] mask) with ``target`` after 1..``clicks`` clicks."""
    gt = target.numpy().astype(bool)
    placed = [interior_click(gt, True)]
    out = []
    for k in range(clicks):
        mask = segment(Prompt(tuple(c for c in placed if c is not None)))
        out.append(iou(mask, target))
        if k + 1 == clicks:
            break
        pred = mask.numpy()
        missed, extra = gt & ~pred, pred & ~gt
        worse_is_missed = missed.sum() >= extra.sum()
        nxt = interior_click(missed if worse_is_missed else extra, positive=bool(worse_is_missed))
        if nxt is None:                       # perfect: later clicks change nothing
            out += [out[-1]] * (clicks - k - 1)
            break
        placed.append(nxt)
    return out


def matched_mious(pred_ids: torch.Tensor, gt_ids: torch.Tensor, objects: list[int]) -> list[float]:
    """Per ground-truth object, the multi-view IoU of the predicted instance matched to it one-to-one
    (Hungarian on IoU over all views; 0 when unmatched): the clustering's side of the comparison."""
    from scipy.optimize import linear_sum_assignment

    preds = [int(k) for k in pred_ids.unique() if k != 0]
    if not objects:
        return []
    table = np.zeros((len(objects), max(len(preds), 1)))
    for i, o in enumerate(objects):
        g = gt_ids == o
        for j, k in enumerate(preds):
            table[i, j] = iou(pred_ids == k, g)
    rows, cols = linear_sum_assignment(table, maximize=True)
    out = np.zeros(len(objects))
    out[rows] = table[rows, cols]
    return out.tolist()
