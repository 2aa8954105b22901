"""Multi-view instance tracking ("instance matching across views"): T-mIoU and T-SR as in the IGGT paper."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class TrackingMetrics(Metric):
    """``update(preds, target)`` with one dict per scene, as :class:`InstanceAP` (scores are not used).

    Matching: each ground-truth object is paired with at most one predicted instance by maximum-weight
    one-to-one assignment (Hungarian) on their multi-view IoU (all views' pixels jointly); pairs with IoU 0
    stay unmatched. Then for each object o, over the views t where its ground-truth mask is non-empty:

    * ``t_miou`` = mean over objects of (1/T_o) sum_t IoU(pred_t, gt_t) (0 for an unmatched object);
    * ``t_sr``   = fraction of objects whose matched prediction is non-empty in *every* such view.

    Objects of scenes with no ground truth do not exist, so such scenes change nothing; with no object at
    all both are NaN. States are sums (DDP-correct).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, suffix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.suffix = str(suffix)       # result keys t_miou{suffix}, t_sr{suffix}
        for name in ("iou_sum", "success_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("objects", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[dict], target: list[dict]) -> None:
        from scipy.optimize import linear_sum_assignment

        if len(preds) != len(target):
            raise ValueError(f"got {len(preds)} prediction dicts and {len(target)} target dicts; one per scene each")
        for i, (p, t) in enumerate(zip(preds, target)):
            pm, gm = p["masks"].bool(), t["masks"].bool()
            if pm.ndim != 4 or gm.ndim != 4 or pm.shape[1:] != gm.shape[1:]:
                raise ValueError(f"scene {i}: masks must be [K,S,H,W] and [G,S,H,W] with equal [S,H,W]; got "
                                 f"{tuple(pm.shape)} and {tuple(gm.shape)}")
            G = gm.shape[0]
            if G == 0:
                continue
            pf, gf = pm.flatten(1).float(), gm.flatten(1).float()
            inter = pf @ gf.T
            union = pf.sum(1)[:, None] + gf.sum(1)[None] - inter
            iou = (inter / union.clamp(min=1)).cpu()
            match = {}
            if pm.shape[0]:
                rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
                match = {int(c): int(r) for r, c in zip(rows, cols) if iou[r, c] > 0}
            iou_sum, success = 0.0, 0.0
            for j in range(G):
                views = gm[j].flatten(1).any(1)
                if not views.any():
                    continue
                if j not in match:
                    self.objects = self.objects + 1
                    continue
                pj, gj = pm[match[j]][views].flatten(1), gm[j][views].flatten(1)
                inter_v = (pj & gj).sum(1).double()
                union_v = (pj | gj).sum(1).double()
                iou_sum += float((inter_v / union_v).mean())
                success += float(pj.any(1).all())
                self.objects = self.objects + 1
            self.iou_sum = self.iou_sum + iou_sum
            self.success_sum = self.success_sum + success

    def compute(self) -> dict[str, torch.Tensor]:
        if self.objects == 0:
            nan = torch.tensor(float("nan"), dtype=torch.float64)
            return {f"t_miou{self.suffix}": nan, f"t_sr{self.suffix}": nan}
        n = self.objects.double()
        return {f"t_miou{self.suffix}": self.iou_sum / n, f"t_sr{self.suffix}": self.success_sum / n}
