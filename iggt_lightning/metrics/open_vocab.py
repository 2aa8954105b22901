"""Open-vocabulary segmentation metrics: 2D mIoU / mAcc over pixels and 3D mIoU over voxels."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class OpenVocabMetrics(Metric):
    """``update(pred [S,H,W], target [S,H,W], points [S,H,W,3] | None)`` with class indices, -1 = none.

    * 2D (LangSplat / LangSurf style): a confusion matrix over pixels whose target is a class; a pixel
      predicted as none counts against its class. Per class IoU = TP / (TP + FP + FN), accuracy = TP / (TP + FN);
      ``miou_2d`` and ``macc_2d`` average them over the classes present in the targets.
    * 3D: pixels are binned into voxels of ``voxel_size`` by their (ground-truth) world points; a voxel's
      target and prediction are the majority labels of its pixels; ``miou_3d`` as above over voxels.
    The confusion matrices are summed across processes (DDP-correct). ``per_class_iou()`` gives the 2D IoUs.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, voxel_size: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.num_classes, self.voxel_size = int(num_classes), float(voxel_size)
        n = self.num_classes + 1  # the last row/column is "none"
        self.add_state("confusion_2d", torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confusion_3d", torch.zeros(n, n, dtype=torch.long), dist_reduce_fx="sum")

    def _confusion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = self.num_classes + 1
        pred = torch.where(pred < 0, torch.full_like(pred, n - 1), pred)
        return torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def update(self, pred: torch.Tensor, target: torch.Tensor, points: torch.Tensor | None = None) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if int(pred.max() if pred.numel() else -1) >= self.num_classes or \
                int(target.max() if target.numel() else -1) >= self.num_classes:
            raise ValueError(f"class indices must be < num_classes={self.num_classes}")
        keep = target >= 0
        p, t = pred[keep].long().cpu(), target[keep].long().cpu()
        self.confusion_2d = self.confusion_2d + self._confusion(p, t)
        if points is None:
            return
        if points.shape != (*target.shape, 3):
            raise ValueError(f"points must be {(*target.shape, 3)}; got {tuple(points.shape)}")
        pts = points[keep].cpu()
        finite = torch.isfinite(pts).all(-1)
        pts, p, t = pts[finite], p[finite], t[finite]
        if not len(pts):
            return
        vox = torch.floor(pts / self.voxel_size).long()
        _, voxel = torch.unique(vox, dim=0, return_inverse=True)
        n = self.num_classes + 1
        V = int(voxel.max()) + 1
        p_n = torch.where(p < 0, torch.full_like(p, n - 1), p)
        votes_t = torch.zeros(V, n, dtype=torch.long).index_put_((voxel, t), torch.ones_like(t), accumulate=True)
        votes_p = torch.zeros(V, n, dtype=torch.long).index_put_((voxel, p_n), torch.ones_like(p), accumulate=True)
        self.confusion_3d = self.confusion_3d + self._confusion(votes_p.argmax(1), votes_t.argmax(1))

    @staticmethod
    def _scores(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = conf[:-1].double()                      # rows: target classes (none never a target)
        tp = c.diagonal()
        fn = c.sum(1) - tp
        fp = conf[:, :-1].double().sum(0) - tp
        present = c.sum(1) > 0
        return tp / (tp + fp + fn).clamp(min=1), tp / (tp + fn).clamp(min=1), present

    def per_class_iou(self) -> torch.Tensor:
        """[num_classes] 2D IoU per class (NaN for classes absent from the targets)."""
        iou, _, present = self._scores(self.confusion_2d)
        return torch.where(present, iou, torch.full_like(iou, float("nan")))

    def compute(self) -> dict[str, torch.Tensor]:
        iou, acc, present = self._scores(self.confusion_2d)
        iou3, _, present3 = self._scores(self.confusion_3d)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {"miou_2d": iou[present].mean() if present.any() else nan,
                "macc_2d": acc[present].mean() if present.any() else nan,
                "miou_3d": iou3[present3].mean() if present3.any() else nan}
