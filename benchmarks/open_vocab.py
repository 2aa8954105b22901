"""Open-vocabulary labelling on the synthetic test split: per-class 2D IoU, mIoU/mAcc and 3D mIoU.

    python -m benchmarks.open_vocab [--ckpt runs/synthetic_tiny/checkpoints/last.ckpt] [--scenes 48] [--json path]

The vocabulary is the synthetic palette's colour names and the encoder the weight-free ``colour`` encoder
(it can tell those classes apart). Two rows of masks are scored: the ground-truth instances (the labelling
step alone) and, with ``--ckpt``, the instances that checkpoint's tracking post-processor predicts (the whole chain).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from iggt_lightning.heads.postprocessors.open_vocab import OpenVocabLabels
from iggt_lightning.data import SyntheticDataModule
from iggt_lightning.data.normalize import normalize_scene
from iggt_lightning.data.synthetic import COLOUR_NAMES
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="a Lightning checkpoint of configs/synthetic_tiny.yaml")
    p.add_argument("--scenes", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "open_vocab.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dm = SyntheticDataModule(num_train=1, num_val=1, num_test=a.scenes, num_views=[2, 3], image_size=[112, 112],
                             background_id=100, batch_size=4, num_workers=0)
    dm.setup("test")
    head = OpenVocabLabels(class_names=list(COLOUR_NAMES), encoder="colour")
    model = None
    if a.ckpt:
        from iggt_lightning.module import IGGTLitModule

        model = IGGTLitModule.from_checkpoint_file(a.ckpt).eval()           # the network and its post-processing, read as data
    sources = {"ground-truth instances": None, **({"predicted instances": model} if model is not None else {})}
    rows = {}
    for name, net in sources.items():
        metric = head.build_metrics()
        for batch in dm.test_dataloader():
            batch = normalize_scene(batch)
            if net is None:
                ids = batch["instance_ids"].clone()
                ids[ids == 100] = 0  # the room is not in the vocabulary
                inst = {"instance_masks": ids, "instance_scores": [torch.ones(int(i.max())) for i in ids]}
            else:
                with torch.no_grad():
                    out = net.run(batch["images"], "test")
                inst = {"instance_masks": out["instance_masks"], "instance_scores": out["instance_scores"]}
            got = head.process(inst, batch["images"])
            head.update_metrics(metric, got, batch)
        m = metric["open_vocab"]
        rows[name] = {**{k: float(v) for k, v in m.compute().items()},
                      "per_class_iou": {c: float(v) for c, v in zip(COLOUR_NAMES, m.per_class_iou())}}
    print(f"{'masks':<24}" + "".join(f"{c:>8}" for c in COLOUR_NAMES) + f"{'mIoU':>8}{'mAcc':>8}{'3D mIoU':>9}")
    for name, r in rows.items():
        print(f"{name:<24}" + "".join(f"{r['per_class_iou'][c]:>8.3f}" for c in COLOUR_NAMES)
              + f"{r['miou_2d']:>8.3f}{r['macc_2d']:>8.3f}{r['miou_3d']:>9.3f}")
    write_json(a.json, {"ckpt": a.ckpt, "scenes": a.scenes, "load_avg": os.getloadavg(), "rows": rows})
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
