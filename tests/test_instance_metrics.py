"""InstanceAP (COCO via pycocotools, ScanNet rules), TrackingMetrics, PointMapMetrics."""
import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iggt_lightning.geometry import umeyama_alignment
from iggt_lightning.metrics import InstanceAP, PointMapMetrics, TrackingMetrics


def floats(results):
    return {k: float(v) for k, v in results.items()}


def random_scene(rng, K=6, G=4, S=3, H=24, W=32):
    """Ground truth from an id map (instances never overlap, as in real data), predictions = noisy copies."""
    ids = torch.zeros(S, H, W, dtype=torch.long)
    for j in range(1, G + 1):
        for s in range(S):
            if rng.random() < 0.15:
                continue  # objects are not visible in every view
            y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
            h, w = rng.integers(3, 12, 2)
            ids[s, y:y + h, x:x + w] = j
    gt = ids.unsqueeze(0) == torch.arange(1, G + 1).view(-1, 1, 1, 1)
    pred = gt[torch.from_numpy(rng.integers(0, G, K))].clone()
    pred ^= torch.from_numpy(rng.random(pred.shape) < 0.04)
    return {"masks": pred, "scores": torch.from_numpy(rng.random(K))}, {"masks": gt}


def cocoeval_stats(images):
    """Plain pycocotools: one image per entry of (pred masks [K,H,W], scores, gt masks [G,H,W])."""
    gts, dts, infos = [], [], []
    for i, (p, s, g) in enumerate(images, start=1):
        infos.append({"id": i, "height": g.shape[1], "width": g.shape[2]})
        for m in g:
            if m.any():
                rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
                gts.append({"id": len(gts) + 1, "image_id": i, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist()})
        for m, sc in zip(p, s):
            if m.any():
                rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
                dts.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(sc)})
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = {"images": infos, "annotations": gts, "categories": [{"id": 1}]}
        c.createIndex()
        e = COCOeval(c, c.loadRes(dts), "segm")
        e.params.useCats = 0
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_instance_ap_equals_pycocotools_cocoeval_on_random_masks():
    rng = np.random.default_rng(0)
    preds, target = zip(*[random_scene(rng) for _ in range(6)])
    metric = InstanceAP()
    metric.update(list(preds), list(target))
    res = metric.compute()
    per_view = [(p["masks"][:, v], p["scores"], t["masks"][:, v]) for p, t in zip(preds, target) for v in range(3)]
    stats = cocoeval_stats(per_view)
    assert res["ap_2d"].item() == pytest.approx(stats[0], abs=1e-12)
    assert res["ap50_2d"].item() == pytest.approx(stats[1], abs=1e-12)
    # multi-view: one instance = its masks in all views, i.e. COCO on the views stacked into one image
    stacked = [(p["masks"].flatten(1, 2), p["scores"], t["masks"].flatten(1, 2)) for p, t in zip(preds, target)]
    stats = cocoeval_stats(stacked)
    assert res["ap"].item() == pytest.approx(stats[0], abs=1e-12)
    assert res["ap50"].item() == pytest.approx(stats[1], abs=1e-12)
    assert 0 < res["ap"] < res["ap50"] <= res["ap25"] <= 1


def test_perfect_and_empty_predictions_and_no_ground_truth():
    rng = np.random.default_rng(1)
    _, t = random_scene(rng)
    perfect = {"masks": t["masks"], "scores": torch.linspace(0.9, 0.5, t["masks"].shape[0])}
    none = {"masks": torch.zeros(0, *t["masks"].shape[1:], dtype=torch.bool), "scores": torch.zeros(0)}
    for protocol in ("coco", "scannet"):
        m = InstanceAP(protocol=protocol, min_region_size=1)
        m.update([perfect], [t])
        assert all(v.item() == pytest.approx(1.0) for v in m.compute().values())
        m = InstanceAP(protocol=protocol, min_region_size=1)
        m.update([none], [t])
        assert all(v.item() == 0.0 for v in m.compute().values())
        m = InstanceAP(protocol=protocol)  # a scene with no ground-truth instance, alone: undefined
        m.update([perfect], [{"masks": torch.zeros(0, *t["masks"].shape[1:], dtype=torch.bool)}])
        undefined = [v.item() for v in m.compute().values()]
        # COCO (and torchmetrics) report -1, ScanNet's evaluator NaN
        assert all(v == -1.0 for v in undefined) if protocol == "coco" else all(math.isnan(v) for v in undefined)


def two_object_case():
    gt = torch.zeros(2, 2, 10, 10, dtype=torch.bool)
    gt[0, :, :5, :5] = True
    gt[1, :, 5:, 5:] = True
    return gt


def test_scannet_rules_strict_iou_and_hand_computed_ap():
    gt = two_object_case()
    half = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    half[0, :, :5, :5] = True
    half[0, :, 5:, :5] = True  # IoU with object 0 is exactly 0.5
    pred = {"masks": half, "scores": torch.tensor([0.9])}
    coco, scannet = InstanceAP("coco"), InstanceAP("scannet", min_region_size=1)
    for m in (coco, scannet):
        m.update([pred], [{"masks": gt}])
    assert coco.compute()["ap50"] == pytest.approx(0.5 * 101 / 101, abs=0.01)  # matched at IoU >= 0.5 (recall 1/2)
    assert scannet.compute()["ap50"] == 0.0                                    # IoU must be > 0.5
    # TP (0.9), FP (0.8), TP (0.7) against 2 objects: PR points (p, r) = (2/3, 1), (1/2, 1/2), (1, 1/2), (1, 0)
    # -> AP = 2/3 * 1/4 + 1/2 * 1/4 + 1 * 1/4 + 1 * 1/4
    wrong = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    wrong[0, :, 5:, 3:8] = True    # IoU 15/35 with object 1, 40 % on void: a false positive
    pred = {"masks": torch.cat([gt[:1], wrong, gt[1:]]), "scores": torch.tensor([0.9, 0.8, 0.7])}
    m = InstanceAP("scannet", min_region_size=1)
    m.update([pred], [{"masks": gt}])
    assert m.compute()["ap50"].item() == pytest.approx(2 / 3 / 4 + 1 / 8 + 1 / 2)


def test_scannet_ignores_small_regions_void_and_the_ignore_region():
    gt = two_object_case()
    stray = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    stray[0, :, 5:, :5] = True                     # entirely unannotated pixels: ScanNet's void
    pred = {"masks": torch.cat([gt, stray]), "scores": torch.tensor([0.9, 0.8, 0.95])}
    m = InstanceAP("scannet", min_region_size=1)
    m.update([pred], [{"masks": gt}])
    assert m.compute()["ap50"] == pytest.approx(1.0)   # on void: not a false positive
    # half on object 0, half on void: at most t of it ignored, so a false positive (IoU 0.375 matches nothing)
    stray = torch.zeros(1, 2, 10, 10, dtype=torch.bool)
    stray[0, :, :5, 2:8] = True
    pred = {"masks": torch.cat([gt, stray]), "scores": torch.tensor([0.9, 0.8, 0.95])}
    m = InstanceAP("scannet", min_region_size=1)
    m.update([pred], [{"masks": gt}])
    assert m.compute()["ap50"] < 1
    ignore = torch.zeros(2, 10, 10, dtype=torch.bool)
    ignore[:, :5, 2:5] = True                          # an ignored region under its object part: now > t ignored
    m = InstanceAP("scannet", min_region_size=1)
    m.update([pred], [{"masks": gt, "ignore": ignore}])
    assert m.compute()["ap50"] == pytest.approx(1.0)
    # min_region_size: object 1 (50 px) is too small to count, and so is the prediction that finds it
    m = InstanceAP("scannet", min_region_size=60)
    m.update([{"masks": gt, "scores": torch.tensor([0.9, 0.8])}], [{"masks": gt}])
    assert math.isnan(m.compute()["ap50"])  # no ground truth large enough anywhere: NaN, as ScanNet


def test_instance_ap_states_concatenate_like_a_ddp_gather():
    rng = np.random.default_rng(2)
    scenes = [random_scene(rng, S=2) for _ in range(4)]
    whole, a, b = InstanceAP(), InstanceAP(), InstanceAP()
    whole.update([p for p, _ in scenes], [t for _, t in scenes])
    a.update([p for p, _ in scenes[:2]], [t for _, t in scenes[:2]])
    b.update([p for p, _ in scenes[2:]], [t for _, t in scenes[2:]])
    for name in ("pred_masks", "gt_masks", "ignore", "scores", "meta"):  # what sync does: cat per state
        setattr(a, name, [torch.cat(getattr(a, name) + getattr(b, name))])
    assert floats(a.compute()) == pytest.approx(floats(whole.compute()))


def test_instance_ap_input_errors():
    m = InstanceAP()
    gt = two_object_case()
    with pytest.raises(ValueError, match=r"differ in \[S,H,W\]"):
        m.update([{"masks": gt[:, :1], "scores": torch.ones(2)}], [{"masks": gt}])
    with pytest.raises(ValueError, match="scores must be"):
        m.update([{"masks": gt, "scores": torch.ones(3)}], [{"masks": gt}])
    with pytest.raises(ValueError, match="one per scene"):
        m.update([{"masks": gt, "scores": torch.ones(2)}], [])
    with pytest.raises(ValueError, match="protocol"):
        InstanceAP("lvis")


def test_tracking_metrics_hand_case_and_matching():
    gt = two_object_case()
    pred = torch.zeros(3, 2, 10, 10, dtype=torch.bool)
    pred[2] = gt[0]                   # object 0 found in both views (as predicted id 3)
    pred[0, 0] = gt[1, 0]             # object 1 found in view 0 only
    pred[1, :, 0, 9] = True           # a stray instance
    m = TrackingMetrics()
    m.update([{"masks": pred, "scores": torch.ones(3)}], [{"masks": gt}])
    res = m.compute()
    assert res["t_miou"].item() == pytest.approx((1.0 + 0.5) / 2)
    assert res["t_sr"].item() == pytest.approx(0.5)
    # an object seen in one view only counts only that view; no prediction at all: 0
    gt1 = gt.clone()
    gt1[1, 1] = False
    m = TrackingMetrics()
    m.update([{"masks": pred, "scores": torch.ones(3)}], [{"masks": gt1}])
    assert m.compute()["t_sr"].item() == 1.0
    m = TrackingMetrics()
    m.update([{"masks": pred[:0], "scores": torch.ones(0)}], [{"masks": gt}])
    assert m.compute()["t_miou"].item() == 0.0
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(TrackingMetrics().compute()["t_miou"].item())


def test_point_map_metrics_are_similarity_invariant():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(1, 2, 8, 8, 3, generator=g)
    R, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    R = R * torch.sign(torch.det(R))
    pred = (2.5 * target @ R.T + torch.tensor([1.0, -2.0, 0.5]))
    m = PointMapMetrics()
    m.update(pred, target)
    res = m.compute()
    assert res["chamfer"].item() < 1e-6
    m = PointMapMetrics()
    m.update(pred + 0.3 * torch.randn(pred.shape, generator=g), target)
    res = m.compute()
    assert res["accuracy"] > 0.01 and res["completeness"] > 0.01
    assert res["chamfer"] == pytest.approx((res["accuracy"] + res["completeness"]) / 2)
    with pytest.raises(ValueError, match=r"\[B,S,H,W,3\]"):
        m.update(pred[..., :2], target[..., :2])


def test_umeyama_recovers_a_similarity():
    g = torch.Generator().manual_seed(1)
    src = torch.randn(50, 3, generator=g, dtype=torch.float64)
    R, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    R = R * torch.sign(torch.det(R))
    dst = 0.7 * src @ R.T + torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    s, R_, t = umeyama_alignment(src, dst)
    assert s.item() == pytest.approx(0.7) and torch.allclose(R_, R) and torch.allclose(s * src @ R_.T + t, dst)


def test_faster_coco_eval_backend_agrees_with_pycocotools():
    pytest.importorskip("faster_coco_eval")
    rng = np.random.default_rng(3)
    preds, target = zip(*[random_scene(rng) for _ in range(4)])
    a, b = InstanceAP(), InstanceAP(backend="faster_coco_eval")
    for m in (a, b):
        m.update(list(preds), list(target))
    assert floats(a.compute()) == pytest.approx(floats(b.compute()), abs=1e-9)
