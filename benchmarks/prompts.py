"""Steering instances by clicks, and instances as 3D boxes: the main job's model on its own test split.

For every ground-truth object of every test scene (the room, id 100, left out):

* **k-click mIoU** (k = 1, 2, 3): clicks placed by the interactive-segmentation protocol
  (``iggt_lightning.metrics.interactive``: the first at the object's interior point farthest from its boundary in
  its largest view, each next one in the largest error region), the prompted mask from the instance features
  (``iggt_lightning.inference.prompts``), its IoU with the object over all views jointly;
* **the clustering's matched mIoU**: the IoU of the tracking post-processor's instance matched one-to-one to the
  object (Hungarian on multi-view IoU; 0 when unmatched), what a user gets without clicking;
* **3D box IoU**: the oriented box of the matched instance's confident predicted points
  (``iggt_lightning.inference.instances3d``), moved into the generator's world by the similarity that best maps
  the predicted points onto the true ones (Umeyama on every valid pixel), against the object's true box (the
  generator's shape, size and yaw); Monte Carlo IoU.

    python -m benchmarks.prompts --checkpoint runs/synthetic_tiny/checkpoints/last.ckpt

Writes ``benchmarks/prompts.json`` with the environment; ``--render`` refills the table in docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from iggt_lightning.benchmarking import environment, fill_block_from_json
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- prompts-table -->", "<!-- /prompts-table -->"
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"


def true_box(obj) -> dict:
    """The generator's object as an oriented box record (world frame; boxes turn by ``yaw`` about +y)."""
    x, z = obj.centre_xz
    if obj.shape == "box":
        c, s = np.cos(obj.yaw), np.sin(obj.yaw)
        hx, hy, hz = obj.size
        return {"centre": [x, hy, z], "axes": [[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]],
                "half_extents": [hx, hy, hz]}
    if obj.shape == "sphere":
        r = obj.size[0]
        return {"centre": [x, r, z], "axes": np.eye(3).tolist(), "half_extents": [r, r, r]}
    r, h = obj.size
    return {"centre": [x, h / 2, z], "axes": np.eye(3).tolist(), "half_extents": [r, h / 2, r]}


def moved_box(box: dict, s: float, R: np.ndarray, t: np.ndarray) -> dict:
    return {"centre": (s * R @ np.asarray(box["centre"]) + t).tolist(),
            "axes": (np.asarray(box["axes"]) @ R.T).tolist(),
            "half_extents": (s * np.asarray(box["half_extents"])).tolist()}


def evaluate(module, dataset, clicks: int, background: int, limit: int | None) -> dict:
    from iggt_lightning.geometry import umeyama_alignment
    from iggt_lightning.inference.instances3d import box_iou, instance_records
    from iggt_lightning.inference.prompts import prompt_mask
    from iggt_lightning.metrics.interactive import click_ious, iou, matched_mious

    per_click, matched, boxes, objects = [], [], [], 0
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        sample = dataset[i]
        with torch.inference_mode():
            out = module.run(sample["images"][None], "test")
        feats, pred_ids = out["part_feat"][0].float(), out["instance_masks"][0]
        gt = sample["instance_ids"]
        objs = [int(o) for o in gt.unique() if o not in (0, background)]
        objects += len(objs)
        points = out["world_points"][0].float()
        for o in objs:
            per_click.append(click_ious(lambda p: prompt_mask(feats, p, points).mask, gt == o, clicks))
        mious = matched_mious(pred_ids, gt, objs)
        matched += mious
        # 3D boxes: the matched instance's points, moved onto the true world
        pts = out["world_points"][0].float()
        conf = out["world_points_conf"][0].float()
        valid = sample["valid_mask"] & torch.isfinite(pts).all(-1)
        s, R, t = umeyama_alignment(pts[valid].double(), sample["world_points"][valid].double())
        keep = (conf >= conf.median()).numpy()
        records = {r["id"]: r for r in instance_records(pred_ids.numpy(), pts.numpy(), keep)}
        scene = dataset.scene(i)
        for o in objs:
            candidates = [(iou(pred_ids == k, gt == o), k) for k in records]
            best_iou, best = max(candidates, default=(0.0, None))
            if best is None or best_iou == 0 or "box" not in records[best]:
                boxes.append(0.0)
                continue
            pred = moved_box(records[best]["box"], float(s), R.numpy(), t.numpy())
            boxes.append(box_iou(pred, true_box(scene.objects[o - 1])))
    arr = np.asarray(per_click)
    return {"scenes": n, "objects": objects,
            "click_miou": [float(v) for v in arr.mean(0)] if len(arr) else [],
            "clustering_matched_miou": float(np.mean(matched)) if matched else None,
            "box_iou_mean": float(np.mean(boxes)) if boxes else None,
            "box_iou_at_0.25": float(np.mean(np.asarray(boxes) >= 0.25)) if boxes else None}


def table(payload: dict) -> str:
    r = payload["result"]
    env = payload["environment"]
    head = "| " + " | ".join(f"{k}-click mIoU" for k in range(1, len(r["click_miou"]) + 1))
    lines = [BEGIN, head + " | clustering matched mIoU | 3D box IoU (mean) | box IoU ≥ 0.25 |",
             "|" + "---|" * (len(r["click_miou"]) + 3),
             "| " + " | ".join(f"{v:.3f}" for v in r["click_miou"])
             + f" | {r['clustering_matched_miou']:.3f} | {r['box_iou_mean']:.3f} | {r['box_iou_at_0.25']:.3f} |",
             "", f"({r['objects']} objects in {r['scenes']} test scenes of configs/synthetic_tiny.yaml, the room "
                 f"left out; the main job's model, `iggt fit --config synthetic_tiny` (seed 0): {payload['checkpoint']}; "
                 f"{payload['seconds']:.0f} s; commit "
                 f"{(env.get('git_commit') or '?')[:7]}, {env.get('cpu_model') or env['processor']}, torch "
                 f"{env['torch']})", END]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/synthetic_tiny/checkpoints/last.ckpt")
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="the first N test scenes only (a quick look)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "prompts.json"))
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    from iggt_lightning.data import SyntheticDataModule
    from iggt_lightning.module import IGGTLitModule

    torch.set_num_threads(a.threads)
    config = yaml.safe_load(CONFIG.read_text())
    init = dict(config["data"]["init_args"])
    init["seed"] = config.get("seed_everything", 0)
    dataset = SyntheticDataModule(**init).datasets["test"]
    background = int(init.get("background_id", 0))
    module = IGGTLitModule.from_checkpoint_file(a.checkpoint).eval()
    t0 = time.perf_counter()
    result = evaluate(module, dataset, a.clicks, background, a.limit)
    payload = {"environment": environment(torch.device("cpu"), ROOT), "checkpoint": a.checkpoint,
               "seconds": time.perf_counter() - t0, "load_average": os.getloadavg(), "result": result}
    write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
