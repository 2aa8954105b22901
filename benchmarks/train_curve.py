"""Train a config (default: the embedded synthetic_tiny) and report the validation curve.

Validates once at initialisation, then trains with the config's validation interval, recording wall time,
step and every validation metric; prints a table and writes JSON. This is how the "trains in <= 10 minutes
and lowers val AbsRel >= 3x" target of configs/synthetic_tiny.yaml is measured:

    python -m benchmarks.train_curve [--config configs/synthetic_tiny.yaml] [--threads 2] [-- extra CLI args]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from iggt_lightning.fileio import write_json
from iggt_lightning.lightning_cli import IGGTCLI

ROOT = Path(__file__).resolve().parents[1]


class Recorder(Callback):
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.train_seconds = 0.0
        self._fit_start: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.train_seconds = time.perf_counter() - self._fit_start

    def on_validation_end(self, trainer, pl_module) -> None:
        # on_validation_end runs after the module's epoch-end hook, which logs the metrics
        metrics = {k[len("val/"):]: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and v.numel() == 1}
        if "abs_rel" in metrics:
            self.rows.append({"step": trainer.global_step, "seconds": round(time.perf_counter() - self.t0, 1),
                              **metrics})
            print(f"step {trainer.global_step:>5}  {self.rows[-1]['seconds']:>7.1f} s  val AbsRel {metrics['abs_rel']:.4f}",
                  flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthetic_tiny.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "train_curve.json"))
    p.add_argument("extra", nargs="*", help="extra LightningCLI arguments (after --)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    workdir = tempfile.mkdtemp(prefix="iggt-train-curve-")
    args = ["--config", a.config, "--trainer.default_root_dir", workdir, "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", *a.extra]
    cli = IGGTCLI(args=args, run=False)
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    rows = recorder.rows
    keys = ["step", "seconds"] + sorted({k for r in rows for k in r} - {"step", "seconds"})
    keys = [k for k in keys if k in ("step", "seconds", "abs_rel", "delta_1.25", "tau_1.03", "rra@30", "rta@30",
                                     "auc@30", "loss", "loss_contrastive")]
    print(" ".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(" ".join(f"{r.get(k, float('nan')):>16.4g}" for k in keys))
    first, last = rows[0]["abs_rel"], rows[-1]["abs_rel"]
    summary = {"config": a.config, "extra_args": a.extra, "threads": a.threads, "train_seconds": recorder.train_seconds,
               "abs_rel_init": first, "abs_rel_final": last, "abs_rel_ratio": first / max(last, 1e-12),
               "load_avg": os.getloadavg(), "curve": rows}
    print(f"\ntraining time {recorder.train_seconds / 60:.1f} min; val AbsRel {first:.4f} -> {last:.4f} "
          f"({first / max(last, 1e-12):.2f}x lower)")
    write_json(a.json, summary)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
