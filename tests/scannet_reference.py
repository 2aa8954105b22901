"""A line-by-line Python port of the matching and AP of ScanNet's ``evaluate_semantic_instance.py`` (one class,
as SAI3D runs it class-agnostically), kept apart from the library so that tests can hold ``InstanceAP`` to it.

Its data structures are the reference's: per scene the ground-truth instances with ``matched_pred`` lists (in
prediction file order), per prediction ``matched_gt``, ``void_intersection``, ``vert_count``; per overlap the
``pred_visited`` table, ``cur_true`` / ``cur_score`` / ``cur_match`` arrays and ``hard_false_negatives``; the
precision/recall curve at unique scores and its integral by convolution with [-0.5, 0, 0.5].

Input per scene: ``gt_ids`` int [N] (0 = no instance / void, k >= 1 instance k) and predictions as
(bool [N] mask, confidence). Only one deviation, for an input the reference cannot take: where ground truth and
predictions exist but every prediction is ignored and none matches, the reference indexes an empty array and
fails; the port returns 0 there (as ``InstanceAP`` does).
"""
from __future__ import annotations

import numpy as np

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
MIN_REGION_SIZE = 100


def assign_instances(gt_ids: np.ndarray, preds: list[tuple[np.ndarray, float]]):
    gt_instances = []
    for inst in np.unique(gt_ids):
        if inst == 0:
            continue
        gt_instances.append({"instance_id": int(inst), "vert_count": int(np.count_nonzero(gt_ids == inst)),
                             "matched_pred": []})
    bool_void = gt_ids == 0
    pred_instances = []
    for i, (mask, conf) in enumerate(preds):
        mask = np.not_equal(mask, 0)
        num = np.count_nonzero(mask)
        if num < MIN_REGION_SIZE:
            continue
        pred = {"filename": i, "vert_count": num, "confidence": conf,
                "void_intersection": np.count_nonzero(np.logical_and(bool_void, mask))}
        matched_gt = []
        for gt in gt_instances:
            intersection = np.count_nonzero(np.logical_and(gt_ids == gt["instance_id"], mask))
            if intersection > 0:
                gt_copy, pred_copy = dict(gt), dict(pred)
                gt_copy["intersection"] = pred_copy["intersection"] = intersection
                matched_gt.append(gt_copy)
                gt["matched_pred"].append(pred_copy)
        pred["matched_gt"] = matched_gt
        pred_instances.append(pred)
    return gt_instances, pred_instances


def evaluate(scenes: list[tuple[np.ndarray, list[tuple[np.ndarray, float]]]]) -> np.ndarray:
    """-> AP per overlap in ``OVERLAPS`` order (the last is 0.25)."""
    matches = [assign_instances(gt_ids, preds) for gt_ids, preds in scenes]
    ap = np.zeros(len(OVERLAPS))
    for oi, overlap_th in enumerate(OVERLAPS):
        pred_visited = {}
        for m, (_, preds) in enumerate(matches):
            for p in preds:
                pred_visited[(m, p["filename"])] = False
        y_true, y_score = np.empty(0), np.empty(0)
        hard_false_negatives = 0
        has_gt = has_pred = False
        for m, (gts, preds) in enumerate(matches):
            gts = [gt for gt in gts if gt["vert_count"] >= MIN_REGION_SIZE]
            has_gt = has_gt or bool(gts)
            has_pred = has_pred or bool(preds)
            cur_true = np.ones(len(gts))
            cur_score = np.ones(len(gts)) * (-float("inf"))
            cur_match = np.zeros(len(gts), dtype=bool)
            for gti, gt in enumerate(gts):
                found_match = False
                for pred in gt["matched_pred"]:
                    if pred_visited[(m, pred["filename"])]:
                        continue
                    overlap = float(pred["intersection"]) / (gt["vert_count"] + pred["vert_count"] - pred["intersection"])
                    if overlap > overlap_th:
                        confidence = pred["confidence"]
                        if cur_match[gti]:
                            max_score, min_score = max(cur_score[gti], confidence), min(cur_score[gti], confidence)
                            cur_score[gti] = max_score
                            cur_true = np.append(cur_true, 0)
                            cur_score = np.append(cur_score, min_score)
                            cur_match = np.append(cur_match, True)
                        else:
                            found_match = True
                            cur_match[gti] = True
                            cur_score[gti] = confidence
                            pred_visited[(m, pred["filename"])] = True
                if not found_match:
                    hard_false_negatives += 1
            cur_true, cur_score = cur_true[cur_match], cur_score[cur_match]
            for pred in preds:
                found_gt = False
                for gt in pred["matched_gt"]:
                    overlap = float(gt["intersection"]) / (gt["vert_count"] + pred["vert_count"] - gt["intersection"])
                    if overlap > overlap_th:
                        found_gt = True
                        break
                if not found_gt:
                    num_ignore = pred["void_intersection"]
                    for gt in pred["matched_gt"]:
                        if gt["vert_count"] < MIN_REGION_SIZE:
                            num_ignore += gt["intersection"]
                    if float(num_ignore) / pred["vert_count"] <= overlap_th:
                        cur_true = np.append(cur_true, 0)
                        cur_score = np.append(cur_score, pred["confidence"])
            y_true, y_score = np.append(y_true, cur_true), np.append(y_score, cur_score)
        if has_gt and has_pred:
            if len(y_true) == 0:          # the reference fails here (empty cumsum); see the module docstring
                ap[oi] = 0.0
                continue
            order = np.argsort(y_score)
            y_score_sorted, y_true_sorted = y_score[order], y_true[order]
            cumsum = np.cumsum(y_true_sorted)
            _, unique_indices = np.unique(y_score_sorted, return_index=True)
            precision = np.zeros(len(unique_indices) + 1)
            recall = np.zeros(len(unique_indices) + 1)
            num_examples, num_true = len(y_score_sorted), cumsum[-1]
            cumsum = np.append(cumsum, 0)
            for idx_res, idx_scores in enumerate(unique_indices):
                c = cumsum[idx_scores - 1]
                tp, fp, fn = num_true - c, num_examples - idx_scores - (num_true - c), c + hard_false_negatives
                precision[idx_res], recall[idx_res] = float(tp) / (tp + fp), float(tp) / (tp + fn)
            precision[-1], recall[-1] = 1.0, 0.0
            r = np.append(np.append(recall[0], recall), 0.0)
            ap[oi] = np.dot(precision, np.convolve(r, [-0.5, 0, 0.5], "valid"))
        elif has_gt:
            ap[oi] = 0.0
        else:
            ap[oi] = float("nan")
    return ap
