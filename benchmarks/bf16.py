"""bf16 on the CPU against fp32: how much faster, and what it changes in what the model predicts.

Two parts (``--skip speed`` / ``--skip accuracy``):

Two bf16 variants: ``bf16`` runs the whole network in bf16 (``head_precision="autocast"``: the default of ``iggt
predict --precision bf16``), ``bf16, heads fp32`` only the backbone, as the official model does under autocast.

(a) **speed**: the forward of the ``tiny`` preset (random weights: time does not depend on them) at 224x224 with
    1, 2, 4 and 8 views and at 336x504 with 1 and 2, in fp32 and in both bf16 variants, interleaved (fp32, bf16,
    ... ``--repeats`` times each, after one warm-up of each), median seconds and their ratios.
(b) **accuracy**: the main job's model (``iggt fit --config synthetic_tiny``, ``--checkpoint``) on its test split,
    in fp32 and in both bf16 variants, as ``iggt test`` runs it (Lightning's ``precision``, the module's
    ``head_precision``): the test metrics (depth AbsRel, AP, T-mIoU, ...), and what bf16 moves per scene against fp32's own
    prediction: the depth's median relative change, the points' median shift over the scene's spread, the
    largest camera rotation change (degrees) and the instance masks after clustering (the fp32 instances matched
    one-to-one to bf16's, multi-view IoU).

    python -m benchmarks.bf16 --checkpoint runs/synthetic_tiny/checkpoints/last.ckpt

Writes ``benchmarks/bf16.json`` with the environment (CPU model and flags: bf16 is fast only with bf16
instructions, ``iggt_lightning.cpu_features``); ``--render`` refills the table in docs/speed.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from iggt_lightning.benchmarking import environment, fill_block_from_json
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bf16-table -->", "<!-- /bf16-table -->"
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
SPEED_CONFIGS = ((224, 224, 1), (224, 224, 2), (224, 224, 4), (224, 224, 8), (336, 504, 1), (336, 504, 2))
TEST_METRICS = ("abs_rel", "delta1", "ap", "ap50", "t_miou", "t_sr")


def _autocast(bf16: bool):
    import contextlib

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


MODES = {"fp32": (False, "fp32"), "bf16_heads_fp32": (True, "fp32"), "bf16": (True, "autocast")}


def speed(repeats: int) -> list[dict]:
    from iggt_lightning.model import IGGTModel

    torch.manual_seed(0)
    model = IGGTModel.from_preset("tiny").eval()
    rows = []
    for H, W, S in SPEED_CONFIGS:
        images = torch.rand(1, S, 3, H, W)
        times = {m: [] for m in MODES}
        for i in range(repeats + 1):                      # the first round warms every mode up and is not counted
            for mode, (bf16, heads) in MODES.items():
                model.set_head_precision(heads)
                t0 = time.perf_counter()
                with torch.inference_mode(), _autocast(bf16):
                    model(images)
                if i:
                    times[mode].append(time.perf_counter() - t0)
        model.set_head_precision("fp32")
        med = {m: statistics.median(t) for m, t in times.items()}
        rows.append({"size": [W, H], "views": S, **{f"{m}_s": round(v, 3) for m, v in med.items()},
                     "speedup": round(med["fp32"] / med["bf16"], 2),
                     "speedup_heads_fp32": round(med["fp32"] / med["bf16_heads_fp32"], 2)})
        print(rows[-1], flush=True)
    return rows


def _rotation_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    cos = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))


def accuracy(checkpoint: str, limit: int | None) -> dict:
    from lightning import Trainer

    from iggt_lightning.data import SyntheticDataModule
    from iggt_lightning.geometry import pose_encoding_to_extri_intri
    from iggt_lightning.metrics.interactive import matched_mious
    from iggt_lightning.module import IGGTLitModule

    config = yaml.safe_load(CONFIG.read_text())
    init = dict(config["data"]["init_args"])
    init["seed"] = config.get("seed_everything", 0)
    module = IGGTLitModule.from_checkpoint_file(checkpoint).eval()
    metrics = {}
    for name, (bf16, heads) in MODES.items():
        module.model.set_head_precision(heads)
        trainer = Trainer(accelerator="cpu", devices=1, precision="bf16-mixed" if bf16 else "32-true", logger=False,
                          enable_progress_bar=False, enable_model_summary=False)
        (got,) = trainer.test(module, datamodule=SyntheticDataModule(**init), verbose=False)
        metrics[name] = {k.removeprefix("test/"): float(v) for k, v in got.items()
                         if k.removeprefix("test/") in TEST_METRICS}
    dataset = SyntheticDataModule(**init).datasets["test"]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    changes = {m: {"depth": [], "points": [], "pose": [], "masks": []} for m in MODES if m != "fp32"}
    for i in range(n):
        images = dataset[i]["images"][None]
        module.model.set_head_precision("fp32")
        with torch.inference_mode():
            a = module.run(images, "test")
        for mode, change in changes.items():
            module.model.set_head_precision(MODES[mode][1])
            with torch.inference_mode(), _autocast(True):
                b = module.run(images, "test")
            da, db = a["depth"][0, ..., 0].float(), b["depth"][0, ..., 0].float()
            ok = torch.isfinite(da) & torch.isfinite(db) & (da.abs() > 1e-6)
            change["depth"].append(float(((db - da).abs() / da.abs())[ok].median()))
            pa, pb = a["world_points"][0].float(), b["world_points"][0].float()
            spread = (pa - pa.reshape(-1, 3).median(0).values).norm(dim=-1).median()
            change["points"].append(float((pb - pa).norm(dim=-1).median() / spread))
            H, W = images.shape[-2:]
            Ea, _ = pose_encoding_to_extri_intri(a["pose_enc"][-1][0].float(), (H, W))
            Eb, _ = pose_encoding_to_extri_intri(b["pose_enc"][-1][0].float(), (H, W))
            change["pose"].append(float(_rotation_deg(Ea[:, :3, :3], Eb[:, :3, :3]).max()))
            ids_a, ids_b = a["instance_masks"][0], b["instance_masks"][0]
            objs = [int(k) for k in ids_a.unique() if k != 0]
            change["masks"] += matched_mious(ids_b, ids_a, objs)
    module.model.set_head_precision("fp32")
    return {"scenes": n, "metrics": metrics, "changes": {
        mode: {"depth_rel_change_median": float(np.median(c["depth"])),
               "point_shift_over_spread_median": float(np.median(c["points"])),
               "pose_change_deg_max": float(np.max(c["pose"])), "pose_change_deg_median": float(np.median(c["pose"])),
               "instance_mask_iou_mean": float(np.mean(c["masks"])) if c["masks"] else None,
               "instances": len(c["masks"])} for mode, c in changes.items()}}


LABELS = {"fp32": "fp32", "bf16_heads_fp32": "bf16, heads fp32 (official)", "bf16": "bf16 (heads too)"}


def table(payload: dict) -> str:
    env = payload["environment"]
    lines = [BEGIN]
    rows = payload.get("speed")
    if rows:
        lines += ["| input | views | fp32 s | bf16, heads fp32 s | bf16 s | bf16 speed-up | heads-fp32 speed-up |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['size'][0]}x{r['size'][1]} | {r['views']} | {r['fp32_s']} | {r['bf16_heads_fp32_s']} | "
                  f"{r['bf16_s']} | {r['speedup']}x | {r['speedup_heads_fp32']}x |" for r in rows]
        lines.append("")
    acc = payload.get("accuracy")
    if acc:
        names = [k for k in TEST_METRICS if k in acc["metrics"]["fp32"]]
        lines += ["| precision | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for p in MODES:
            lines.append(f"| {LABELS[p]} | " + " | ".join(f"{acc['metrics'][p][k]:.4f}" for k in names) + " |")
        ch = acc["changes"]
        modes = [m for m in MODES if m in ch]
        lines += ["", "| against fp32's own prediction | " + " | ".join(LABELS[m] for m in modes) + " |",
                  "|---|" + "---|" * len(modes),
                  "| depth, median relative change | " + " | ".join(f"{ch[m]['depth_rel_change_median']:.2e}"
                                                                  for m in modes) + " |",
                  "| points, median shift / scene spread | " + " | ".join(
                      f"{ch[m]['point_shift_over_spread_median']:.2e}" for m in modes) + " |",
                  "| cameras, rotation change (median / largest) | " + " | ".join(
                      f"{ch[m]['pose_change_deg_median']:.3f}° / {ch[m]['pose_change_deg_max']:.3f}°"
                      for m in modes) + " |",
                  "| instances after clustering, matched mask IoU | " + " | ".join(
                      f"{ch[m]['instance_mask_iou_mean']:.3f} ({ch[m]['instances']} instances)" for m in modes) + " |"]
    lines.append(f"\n(commit {env['git_commit'][:7]}, {env.get('cpu_model') or env['processor']}, bf16 instructions: "
                 f"{payload.get('native_bf16')}, {payload['threads']} threads, torch {env['torch']}; load average "
                 f"{payload['load_before'][0]:.2f} before, {payload['load_after'][0]:.2f} after; speed: tiny preset, "
                 f"random weights, median of {payload.get('repeats')} interleaved runs; accuracy: "
                 f"{(acc or {}).get('scenes', '-')} test scenes of configs/synthetic_tiny.yaml, "
                 f"{payload.get('checkpoint', '-')})")
    lines.append(END)
    return "\n".join(lines)


readme_table = table     # the name tests/test_speed_benchmarks.py looks for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/synthetic_tiny/checkpoints/last.ckpt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="the first N test scenes of the per-scene comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "accuracy"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "bf16.json"))
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    from iggt_lightning.cpu_features import native_bf16

    torch.set_num_threads(a.threads)
    payload = {"environment": environment(torch.device("cpu"), ROOT), "load_before": os.getloadavg(),
               "threads": a.threads, "repeats": a.repeats, "native_bf16": native_bf16(), "checkpoint": a.checkpoint}
    if "speed" not in a.skip:
        payload["speed"] = speed(a.repeats)
    if "accuracy" not in a.skip:
        payload["accuracy"] = accuracy(a.checkpoint, a.limit)
    payload["load_after"] = os.getloadavg()
    write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
