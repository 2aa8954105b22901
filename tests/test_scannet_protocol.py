"""InstanceAP(protocol="scannet") against a line-by-line port of ScanNet's evaluator (tests/scannet_reference.py)
on random multi-view scenes built to hit every rule: duplicates, predictions over two objects, predictions
mostly on void, regions of exactly 100 pixels (the minimum), small ground truths, empty scenes, scenes without
predictions, tied scores."""
import math

import numpy as np
import pytest
import torch

from iggt_lightning.metrics import InstanceAP
from iggt_lightning.metrics.instance_ap import SCANNET_THRESHOLDS, _scannet_pairs, _scannet_threshold_ap

from .scannet_reference import OVERLAPS, evaluate

S, H, W = 2, 20, 30            # 1200 "vertices" per scene


def _rect(rng, ids, value, area):
    """Paint a rectangle of about ``area`` pixels (over both views) with ``value``; returns its mask."""
    h = int(rng.integers(4, 12))
    w = max(2, int(round(area / (2 * h))))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, max(1, W - w + 1)))
    mask = np.zeros((S, H, W), bool)
    mask[:, y:y + h, x:x + w] = True
    ids[mask] = value
    return mask


def random_scene(rng):
    ids = np.zeros((S, H, W), np.int64)
    kind = rng.choice(["normal", "empty_gt", "no_pred", "exact_100"], p=[0.7, 0.1, 0.1, 0.1])
    n_gt = 0 if kind == "empty_gt" else int(rng.integers(1, 6))
    for k in range(1, n_gt + 1):
        area = 100 if kind == "exact_100" and k == 1 else int(rng.choice([40, 80, 100, 150, 240, 320]))
        _rect(rng, ids, k, area)
    if kind == "exact_100" and (ids == 1).sum() != 100:       # exactly 100 pixels: a 5 x 10 block in each view
        ids[ids == 1] = 0
        ids[:, :5, :10] = 1
    preds = []
    if kind != "no_pred":
        present = [k for k in np.unique(ids) if k]
        for k in present:
            m = ids == k
            if rng.random() < 0.8:                            # a noisy copy: shifted by 0-2 pixels
                preds.append((np.roll(m, int(rng.integers(0, 3)), axis=2), float(rng.choice([0.3, 0.5, 0.9]))))
            if rng.random() < 0.3:                            # a duplicate, sometimes with the same score
                preds.append((m.copy(), float(rng.choice([0.5, 0.9]))))
        if len(present) >= 2 and rng.random() < 0.4:          # one prediction over two objects
            preds.append(((ids == present[0]) | (ids == present[1]), 0.7))
        for _ in range(int(rng.integers(0, 3))):              # mostly on void, or mostly on a small object
            m = np.zeros((S, H, W), bool)
            m[:, int(rng.integers(0, 10)):, :int(rng.integers(4, 12))] = True
            preds.append((m, float(rng.random())))
        if rng.random() < 0.3:                                # exactly 100 pixels, and one just below
            m = np.zeros((S, H, W), bool)
            m[:, -5:, -10:] = True
            preds.append((m, 0.4))
            m2 = m.copy()
            m2[0, -1, -1] = False
            preds.append((m2, 0.45))
    return ids, preds


def ours(scenes):
    metric = InstanceAP(protocol="scannet")
    for ids, preds in scenes:
        gt = torch.from_numpy(ids)
        uniq = [k for k in np.unique(ids) if k]
        target = {"masks": torch.stack([gt == k for k in uniq]) if uniq else torch.zeros(0, S, H, W, dtype=torch.bool)}
        pm = torch.from_numpy(np.stack([m for m, _ in preds])) if preds else torch.zeros(0, S, H, W, dtype=torch.bool)
        metric.update([{"masks": pm, "scores": torch.tensor([c for _, c in preds], dtype=torch.float64)}], [target])
    return metric


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(60))
def test_scannet_protocol_equals_the_reference_port(seed):
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng) for _ in range(int(rng.integers(1, 5)))]
    ref = evaluate([(ids.reshape(-1), [(m.reshape(-1), c) for m, c in preds]) for ids, preds in scenes])
    metric = ours(scenes)
    pairs = [_scannet_pairs(p, s, g, i, 100) for p, s, g, i in metric.scenes()]
    for t, expected in zip(OVERLAPS, ref):
        assert same(_scannet_threshold_ap(pairs, float(t)), float(expected)), (seed, t)
    res = metric.compute()
    assert same(float(res["ap50"]), float(ref[0])) and same(float(res["ap25"]), float(ref[-1]))
    assert same(float(res["ap"]), float(np.mean(ref[:-1])))
    assert np.array_equal(np.append(SCANNET_THRESHOLDS, 0.25), OVERLAPS)   # the reference's unrounded values


def test_the_rules_the_reference_has_and_coco_has_not():
    ids = np.zeros((S, H, W), np.int64)
    ids[:, :10, :10] = 1                                              # one object of 200 pixels
    obj = ids == 1
    # a duplicate of the object is not visited: it matches a later, overlapping object instead
    ids2 = ids.copy()
    ids2[:, :10, 8:18] = 2                                            # object 2 overlaps where the duplicate lies
    background = np.zeros((S, H, W), bool)
    background[:, 12:, :] = True                                      # a prediction entirely on void
    cases = {
        "a prediction on void is no false positive": ([(ids, [(obj, 0.9), (background, 0.95)])], 1.0),
        "no ground truth at all: NaN": ([(np.zeros_like(ids), [(obj, 0.9)])], float("nan")),
        "ground truth, no prediction: 0": ([(ids, [])], 0.0),
    }
    for name, (scenes, ap50) in cases.items():
        ref = evaluate([(i.reshape(-1), [(m.reshape(-1), c) for m, c in p]) for i, p in scenes])
        assert same(float(ref[0]), ap50), name
        assert same(float(ours(scenes).compute()["ap50"]), ap50), name


@pytest.mark.parametrize("protocol", ["coco", "scannet"])
def test_objects_only_numbers_leave_ignored_ids_out(protocol):
    """The synthetic room (id 100) is an instance for `ap50` and ignored for `ap50_objects`: a perfect object
    prediction plus a poor room prediction is perfect objects-only, under either protocol."""
    from iggt_lightning.heads.postprocessors.tracking import InstanceTracking

    gt = torch.full((1, S, H, W), 100, dtype=torch.long)          # the room everywhere ...
    gt[0, :, :10, :12] = 1                                          # ... around one object
    pred = torch.zeros_like(gt)
    pred[0, :, :10, :12] = 1                                        # the object, exactly
    pred[0, :, 14:, :] = 2                                          # a third of the room (IoU 0.375)
    tracking = InstanceTracking(ap_protocol=protocol, ignore_ids=[100])
    metrics = tracking.build_metrics()
    assert set(metrics) == {"instance_ap", "tracking", "instance_ap_objects", "tracking_objects"}
    outputs = {"instance_masks": pred, "instance_scores": [torch.tensor([0.9, 0.8])]}
    tracking.update_metrics(metrics, outputs, {"instance_ids": gt})
    res = {k: float(v) for m in metrics.values() for k, v in m.compute().items()}
    assert res["ap50_objects"] == pytest.approx(1.0) and res["t_miou_objects"] == pytest.approx(1.0)
    assert res["ap50"] < 1.0 and res["t_miou"] < 1.0               # the room counts here, and is missed
    assert {"ap_objects", "ap25_objects", "ap50_2d_objects", "t_sr_objects"} <= set(res)
    with pytest.raises(ValueError, match="ignore_ids must be a list of positive instance ids"):
        InstanceTracking(ignore_ids=100)
