"""Class-agnostic instance-mask average precision, multi-view and per view.

Two protocols (``InstanceAP(protocol=...)``):

* ``"coco"``: pycocotools' COCOeval with categories off (``useCats=0``), area range "all", at most
  ``max_detections`` detections per image, 101-point interpolated precision; a prediction matches a
  ground truth at IoU >= t. ``ap`` averages t = 0.50:0.05:0.95; ``ap50``, ``ap25`` are t = 0.5, 0.25.
* ``"scannet"``: exactly ScanNet's ``evaluate_semantic_instance.py`` (class-agnostic, as SAI3D runs it):
  t = 0.50:0.05:0.90 for ``ap``; a match needs IoU *strictly greater* than t (float64); ground truths and
  predictions smaller than ``min_region_size`` (100) pixels are left out; ground truths are matched in order,
  each to the first unvisited prediction (in the given order) over t, a further one over t adding a false
  positive with the lower score without being visited (it may still match a later ground truth); a
  prediction matching nothing is a false positive unless more than t of it is *void* (pixels in no
  ground-truth instance, plus the target's ``ignore``) or in small ground truths; AP is ScanNet's step
  integral of the precision/recall curve at unique scores. Without any ground truth the APs are NaN, as
  ScanNet reports (``ap`` = the mean over thresholds, so NaN too; ``iggt test`` prints it as nan).

Multi-view numbers (``ap``, ``ap50``, ``ap25``) treat one instance as its masks in all views of a scene
(IoU over all views' pixels jointly; for COCO the views are stacked into one image). Per-view numbers
(``ap_2d``, ...) treat each view as an image whose detections are the instances' non-empty masks there.
Scenes without ground truth contribute only false positives; with no ground truth at all the COCO APs are -1
(as COCO and torchmetrics report) and the ScanNet APs NaN.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torchmetrics import Metric

COCO_THRESHOLDS = np.round(np.linspace(0.5, 0.95, 10), 2)
SCANNET_THRESHOLDS = np.arange(0.5, 0.95, 0.05)   # unrounded, as ScanNet's script computes them (0.6000000000000001, ...)


class InstanceAP(Metric):
    """``update(preds, target)``: one dict per scene, preds ``{"masks": bool [K,S,H,W], "scores": [K]}``,
    target ``{"masks": bool [G,S,H,W]}`` (+ optional ``"ignore": bool [S,H,W]``: pixels to leave out, e.g. of
    ignored classes; ScanNet adds it to its void, COCO gets it as a crowd region whose detections are not
    counted).
    ``compute()`` -> ``ap, ap50, ap25`` (multi-view) and ``ap_2d, ap50_2d, ap25_2d`` (per view).

    States are flat tensors concatenated across processes, so results are the same under DDP.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, protocol: str = "coco", min_region_size: int | None = None, max_detections: int = 100,
                 backend: str = "pycocotools", suffix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.suffix = str(suffix)       # result keys ap{suffix}, ap50{suffix}, ..., ap50_2d{suffix} (e.g. "_objects")
        if protocol not in ("coco", "scannet"):
            raise ValueError(f"protocol must be 'coco' or 'scannet'; got {protocol!r}")
        if backend not in ("pycocotools", "faster_coco_eval"):
            raise ValueError(f"backend must be 'pycocotools' or 'faster_coco_eval'; got {backend!r}")
        self.protocol, self.backend, self.max_detections = protocol, backend, int(max_detections)
        self.min_region_size = int(min_region_size if min_region_size is not None else
                                   (100 if protocol == "scannet" else 0))
        for name in ("pred_masks", "gt_masks", "ignore", "scores", "meta"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: list[dict], target: list[dict]) -> None:
        if isinstance(preds, dict) or isinstance(target, dict):
            raise TypeError("preds and target must be lists with one dict per scene")
        if len(preds) != len(target):
            raise ValueError(f"got {len(preds)} prediction dicts and {len(target)} target dicts; one per scene each")
        for i, (p, t) in enumerate(zip(preds, target)):
            pm, sc, gm = p["masks"], p["scores"], t["masks"]
            if pm.ndim != 4 or gm.ndim != 4:
                raise ValueError(f"scene {i}: masks must be [K,S,H,W] (preds) and [G,S,H,W] (target); got "
                                 f"{tuple(pm.shape)} and {tuple(gm.shape)}")
            if pm.shape[1:] != gm.shape[1:]:
                raise ValueError(f"scene {i}: prediction masks {tuple(pm.shape[1:])} and target masks "
                                 f"{tuple(gm.shape[1:])} differ in [S,H,W]")
            if sc.ndim != 1 or sc.shape[0] != pm.shape[0]:
                raise ValueError(f"scene {i}: scores must be [K] with K={pm.shape[0]}; got {tuple(sc.shape)}")
            if not torch.isfinite(sc).all():
                raise ValueError(f"scene {i}: scores contain NaN/inf")
            S, H, W = gm.shape[1:]
            ign = t.get("ignore")
            if ign is None:
                ign = torch.zeros(S, H, W, dtype=torch.bool, device=gm.device)
            elif tuple(ign.shape) != (S, H, W):
                raise ValueError(f"scene {i}: ignore must be [S,H,W] = {(S, H, W)}; got {tuple(ign.shape)}")
            self.pred_masks.append(pm.bool().flatten().to(torch.uint8))
            self.gt_masks.append(gm.bool().flatten().to(torch.uint8))
            self.ignore.append(ign.bool().flatten().to(torch.uint8))
            self.scores.append(sc.detach().double().flatten())
            self.meta.append(torch.tensor([[pm.shape[0], gm.shape[0], S, H, W]], dtype=torch.long, device=gm.device))

    def scenes(self):
        """The accumulated scenes as (pred masks [K,S,H,W], scores [K], gt masks [G,S,H,W], ignore [S,H,W])."""
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        if isinstance(self.meta, list) and not self.meta:
            return []
        meta, pm, gm, ig, sc = (cat(x).cpu() for x in (self.meta, self.pred_masks, self.gt_masks, self.ignore,
                                                        self.scores))
        out, op, og, oi, os_ = [], 0, 0, 0, 0
        for K, G, S, H, W in meta.reshape(-1, 5).tolist():
            n = S * H * W
            out.append((pm[op:op + K * n].view(K, S, H, W).bool(), sc[os_:os_ + K],
                        gm[og:og + G * n].view(G, S, H, W).bool(), ig[oi:oi + n].view(S, H, W).bool()))
            op, og, oi, os_ = op + K * n, og + G * n, oi + n, os_ + K
        return out

    def compute(self) -> dict[str, torch.Tensor]:
        scenes = self.scenes()
        multi = [(p, s, g, i) for p, s, g, i in scenes]
        # per view: each view of each scene is an image
        per_view = [(p[:, v], s, g[:, v], i[v:v + 1]) for p, s, g, i in scenes for v in range(g.shape[1])]
        per_view = [(p.unsqueeze(1), s, g.unsqueeze(1), i) for p, s, g, i in per_view]
        fn = self._coco if self.protocol == "coco" else self._scannet
        res = {}
        for view, images in (("", multi), ("_2d", per_view)):
            ap, ap50, ap25 = fn(images)
            res.update({f"ap{view}{self.suffix}": ap, f"ap50{view}{self.suffix}": ap50,
                        f"ap25{view}{self.suffix}": ap25})
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in res.items()}

    # ------------------------------------------------------------------ COCO
    def _coco(self, images) -> tuple[float, float, float]:
        from pycocotools import mask as mask_utils

        gts, dets, infos = [], [], []
        for img_id, (p, s, g, ign) in enumerate(images, start=1):
            K, S, H, W = p.shape
            infos.append({"id": img_id, "height": S * H, "width": W})
            for m in g:
                if int(m.sum()) > max(0, self.min_region_size - 1):
                    gts.append(_annotation(mask_utils, m.reshape(S * H, W), img_id, len(gts) + 1))
            if bool(ign.any()):   # COCO's own ignore region: a crowd annotation (detections on it are not counted)
                gts.append(_annotation(mask_utils, ign.reshape(S * H, W), img_id, len(gts) + 1, crowd=True))
            for m, score in zip(p, s.tolist()):
                if int(m.sum()) > max(0, self.min_region_size - 1):
                    ann = _annotation(mask_utils, m.reshape(S * H, W), img_id, len(dets) + 1)
                    ann["score"] = float(score)
                    dets.append(ann)
        if not any(not a["iscrowd"] for a in gts):
            return -1.0, -1.0, -1.0
        precision = coco_precision(gts, dets, infos, np.concatenate([[0.25], COCO_THRESHOLDS]),
                                   self.max_detections, self.backend)
        per_t = [float(np.mean(pt[pt > -1])) if (pt > -1).any() else -1.0 for pt in precision]
        return float(np.mean(per_t[1:])), per_t[1], per_t[0]

    # ------------------------------------------------------------------ ScanNet
    def _scannet(self, images) -> tuple[float, float, float]:
        thresholds = np.concatenate([SCANNET_THRESHOLDS, [0.25]])
        pairs = [_scannet_pairs(p, s, g, ign, self.min_region_size) for p, s, g, ign in images]
        per_t = [_scannet_threshold_ap(pairs, float(t)) for t in thresholds]
        return float(np.mean(per_t[:-1])), per_t[0], per_t[-1]


def _annotation(mask_utils, m: torch.Tensor, img_id: int, ann_id: int, crowd: bool = False) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
    return {"id": ann_id, "image_id": img_id, "category_id": 1, "segmentation": rle,
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": int(crowd)}


def coco_precision(gts: list, dets: list, images: list, thresholds: np.ndarray, max_detections: int,
                   backend: str = "pycocotools") -> np.ndarray:
    """COCOeval (segm, categories off, area "all") -> precision [T, 101] (-1 where undefined)."""
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster as COCOeval
        except ImportError as err:
            raise ImportError("backend 'faster_coco_eval' needs `pip install faster-coco-eval`") from err
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": 1, "name": "instance"}]}
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else COCO()
        if not dets:
            dt.dataset = {"images": images, "annotations": [], "categories": gt.dataset["categories"]}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.useCats = 0
        ev.params.iouThrs = np.asarray(thresholds, dtype=np.float64)
        ev.params.maxDets = [max_detections]
        ev.params.areaRng = [[0.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][:, :, 0, 0, -1]  # [T, R, K(=1), A, M]


def _scannet_pairs(p, s, g, ign, min_size: int) -> dict:
    """What ScanNet's evaluator knows of one scene, in exact integer counts: the predictions kept (at least
    ``min_size`` pixels, in their given order) with sizes and scores, their intersections with every ground truth
    and with the void (pixels in no ground-truth instance, plus the target's ``ignore``), which ground truths
    count (at least ``min_size`` pixels)."""
    P, G = p.flatten(1), g.flatten(1)
    p_size, g_size = P.sum(1).long(), G.sum(1).long()
    keep = torch.nonzero(p_size >= max(min_size, 1)).flatten()
    P, p_size, scores = P[keep], p_size[keep], s[keep].double()
    inter = (P.double() @ G.double().T).round().long()                  # exact: float64 holds counts to 2**53
    void = ~G.any(0) | ign.reshape(-1)
    void_inter = (P & void[None]).sum(1).long()
    return {"p_size": p_size.numpy(), "g_size": g_size.numpy(), "scores": scores.numpy(), "inter": inter.numpy(),
            "void_inter": void_inter.numpy(), "valid_gt": (g_size >= min_size).numpy()}


def _scannet_scene(d: dict, t: float) -> tuple[list[float], list[float], int]:
    """ScanNet's matching of one scene at overlap ``t`` -> (y_true, y_score, hard false negatives).

    Ground truths in order, each over the predictions in their order: the first unvisited one with IoU > t is
    the match (and is marked visited); each further one with IoU > t keeps the higher score on the ground truth
    and adds a false positive with the lower one, *without* being marked visited, so it may still match a later
    ground truth. A prediction with no ground truth at IoU > t (small ones included) is a false positive
    unless more than t of it lies in the void or in small ground truths. IoUs and fractions in float64."""
    p_size, g_size, inter, scores = d["p_size"], d["g_size"], d["inter"], d["scores"]
    iou = inter / np.maximum(p_size[:, None] + g_size[None, :] - inter, 1).astype(np.float64)
    visited = np.zeros(len(p_size), bool)
    y_true: list[float] = []
    y_score: list[float] = []
    hard_fn = 0
    for j in np.nonzero(d["valid_gt"])[0]:
        best = None
        for k in np.nonzero(inter[:, j] > 0)[0]:
            if visited[k] or not iou[k, j] > t:
                continue
            if best is None:
                best, visited[k] = float(scores[k]), True
            else:
                y_true.append(0.0)
                y_score.append(min(best, float(scores[k])))
                best = max(best, float(scores[k]))
        if best is None:
            hard_fn += 1
        else:
            y_true.append(1.0)
            y_score.append(best)
    small = ~d["valid_gt"]
    for k in range(len(p_size)):
        if (iou[k] > t).any():
            continue
        ignored = int(d["void_inter"][k]) + int(inter[k, small].sum())
        if ignored / float(p_size[k]) <= t:
            y_true.append(0.0)
            y_score.append(float(scores[k]))
    return y_true, y_score, hard_fn


def _scannet_threshold_ap(pairs: list[dict], t: float) -> float:
    """AP over all scenes at one overlap: NaN without any ground truth that counts (ScanNet's "no ground truth"),
    0 with ground truth but no prediction, else the step integral of :func:`_scannet_ap`."""
    if not any(d["valid_gt"].any() for d in pairs):
        return float("nan")
    if not any(len(d["p_size"]) for d in pairs):
        return 0.0
    y_true, y_score, hard_fn = [], [], 0
    for d in pairs:
        yt, ys, fn = _scannet_scene(d, t)
        y_true += yt
        y_score += ys
        hard_fn += fn
    hits = np.array(y_true, bool)
    return _scannet_ap(hits, np.array(y_score, np.float64), int(hits.sum()) + hard_fn)


def _scannet_ap(hits: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """ScanNet's AP: precision/recall at each unique score (detections scoring >= it), closed with
    (recall 0, precision 1), integrated with step widths (r[i-1] - r[i+1]) / 2. (Where no prediction matched
    and every one was ignored, the reference script fails on an empty array; this returns 0.)"""
    if hits.size == 0:
        return 0.0
    order = np.argsort(scores, kind="stable")
    hits, scores = hits[order], scores[order]
    uniq, first = np.unique(scores, return_index=True)
    cum = np.concatenate([[0], np.cumsum(hits)])
    total_tp = cum[-1]
    n = len(scores)
    precision, recall = [], []
    for i in first:
        tp = total_tp - cum[i]
        fp = (n - i) - tp
        precision.append(tp / max(tp + fp, 1))
        recall.append(tp / n_gt)
    precision.append(1.0)
    recall.append(0.0)
    r = np.array(recall)
    padded = np.concatenate([[r[0]], r, [0.0]])
    widths = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(np.array(precision), widths))
