"""The contrastive-loss ablation on the tiny synthetic config: train each variant (same seed, same budget),
test it on the synthetic test split, print AP / AP50 / AP25 / T-mIoU / T-SR / AbsRel side by side (+ JSON).

    python benchmarks/ablation.py [--variants full "contrastive off" ...] [--json path] [-- extra CLI args]

Every variant is a command-line override of configs/synthetic_tiny.yaml (listed in the table), so any row
can be reproduced with ``iggt fit --config configs/synthetic_tiny.yaml <override>``. lambda is the weight of
the contrastive term (L = L_camera + L_depth + L_point + lambda * L_contrastive); lambda = 1 is "full".
AP numbers are multi-view, class-agnostic, COCO protocol (see iggt_lightning/metrics/instance_ap.py);
T-mIoU / T-SR as in iggt_lightning/metrics/tracking.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iggt_lightning.fileio import write_json  # noqa: E402
from iggt_lightning.lightning_cli import IGGTCLI  # noqa: E402

CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
COLUMNS = ["ap", "ap50", "ap25", "ap50_2d", "t_miou", "t_sr", "abs_rel", "loss_contrastive"]


def variants(config: Path) -> dict[str, list[str]]:
    opts = yaml.safe_load(config.read_text())["model"].get("loss_options", {}).get("contrastive", {})

    def contrastive(**change) -> list[str]:
        # a dict given on the command line replaces the config's whole dict, so restate the other options
        return ["--model.loss_options", json.dumps({"contrastive": {**opts, **change}})]

    return {
        "full": [],
        "contrastive off": ["--model.loss_weights", json.dumps({"contrastive": 0.0})],
        "cross-view off": contrastive(cross_view=False),
        "fusion off": ["--model.heads", json.dumps({"instance": {"fusion": False}})],
        "lambda 0.1": ["--model.loss_weights", json.dumps({"contrastive": 0.1})],
        "lambda 10": ["--model.loss_weights", json.dumps({"contrastive": 10.0})],
        "lambda_pull 2 (paper)": contrastive(lambda_pull=2.0),
    }


def run_variant(config: Path, override: list[str], extra: list[str]) -> dict:
    workdir = tempfile.mkdtemp(prefix="iggt-ablation-")
    args = ["--config", str(config), "--trainer.default_root_dir", workdir, "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *override, *extra]
    cli = IGGTCLI(args=args, run=False)
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_s = time.perf_counter() - t0
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    out = {k[len("test/"):]: float(v) for k, v in metrics.items() if k.startswith("test/")}
    return {"train_seconds": train_s, "steps": cli.trainer.global_step, **out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "ablation.json"))
    p.add_argument("extra", nargs="*", help="extra LightningCLI arguments for every variant (after --)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    table = variants(a.config)
    names = a.variants or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(table)}")
    rows = []
    for name in names:
        print(f"== {name}: {' '.join(table[name]) or '(the config as is)'}", flush=True)
        rows.append({"variant": name, "override": table[name], **run_variant(a.config, table[name], a.extra)})
        write_json(a.json, {"config": str(a.config), "extra_args": a.extra, "threads": a.threads,
                            "load_avg": os.getloadavg(), "rows": rows})  # after each variant: partial results survive
    print()
    print(f"{'variant':<24}" + "".join(f"{c:>17}" for c in COLUMNS) + f"{'train min':>11}")
    for r in rows:
        print(f"{r['variant']:<24}" + "".join(f"{r.get(c, float('nan')):>17.4f}" for c in COLUMNS)
              + f"{r['train_seconds'] / 60:>11.1f}")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
