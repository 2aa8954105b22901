"""The README's main job, exactly as a user runs it from a clone, timed and recorded:

    python benchmarks/main_job.py [--json benchmarks/main_job.json]   # run it (about 10 min on 2 cores)
    python benchmarks/main_job.py --readme                           # rewrite README's table from the JSON

runs ``iggt fit --config configs/synthetic_tiny.yaml && iggt test --config configs/synthetic_tiny.yaml --ckpt_path
last`` in a fresh working folder (subprocesses, the config's own seed and thread pin), then writes the test table,
the step ``last.ckpt`` holds, the wall time, the load average and the versions as JSON. The README's main-job
table is this JSON (``tests/test_readme_numbers.py`` holds them equal).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))   # readme_block beside this script
sys.path.insert(0, str(ROOT))

from iggt_lightning.fileio import write_json  # noqa: E402

CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
ROW = re.compile(r"(test/[^\s│|┃]+)\s*[│|┃]?\s*([-+]?[0-9][0-9.eE+-]*|nan)\s*[│|┃]?\s*$", re.M)
BEGIN, END = "<!-- main_job.json: python benchmarks/main_job.py --readme -->", "<!-- /main_job.json -->"
# what the README shows, in order: (metric key, label)
SHOWN = [("ap", "AP"), ("ap50", "AP50"), ("ap25", "AP25"), ("ap50_objects", "AP50 objects"),
         ("t_miou", "T-mIoU"), ("t_sr", "T-SR"), ("t_miou_objects", "T-mIoU objects"), ("abs_rel", "AbsRel"),
         ("tau_1.03", "τ<1.03"), ("auc@30", "AUC@30")]


def readme_table(payload: dict) -> str:
    m = payload["test"]
    rows = ["| " + " | ".join(label for _, label in SHOWN) + " |", "|" + "---|" * len(SHOWN),
            "| " + " | ".join(f"{m[k]:.3f}" for k, _ in SHOWN) + " |"]
    note = (f"(test split, 48 scenes; `last.ckpt` at step {payload['last_ckpt_step']}; fit {payload['fit_seconds']:.0f} s "
            f"on {payload['cpu_count']} cores, load average {payload['load_average_before'][0]:.2f} before; "
            f"torch {payload['torch']})")
    return "\n".join([BEGIN, *rows, "", note, END])


def update_readme(json_path: str) -> None:
    import json

    from readme_block import fill_block

    fill_block(BEGIN, END, readme_table(json.loads(Path(json_path).read_text())))


def iggt(args: list[str], cwd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"iggt {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "main_job.json"))
    p.add_argument("--readme", action="store_true", help="only rewrite README's main-job table from --json")
    a = p.parse_args()
    if a.readme:
        update_readme(a.json)
        return 0
    import torch

    work = tempfile.mkdtemp(prefix="iggt-main-job-")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    iggt(["fit", "--config", str(CONFIG)], work)
    fit_s = time.perf_counter() - t0
    table = iggt(["test", "--config", str(CONFIG), "--ckpt_path", "last"], work)
    metrics = {k[len("test/"):]: float(v) for k, v in ROW.findall(table)}
    if not metrics:
        raise SystemExit(f"no test metrics in the output of iggt test:\n{table[-3000:]}")
    last = torch.load(Path(work) / "runs" / "synthetic_tiny" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    payload = {"command": "iggt fit --config configs/synthetic_tiny.yaml && iggt test --config "
                          "configs/synthetic_tiny.yaml --ckpt_path last",
               "last_ckpt_step": int(last["global_step"]), "fit_seconds": round(fit_s, 1),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
               "torch": torch.__version__, "python": platform.python_version(), "test": metrics}
    write_json(a.json, payload)
    width = max(map(len, metrics))
    for k, v in metrics.items():
        print(f"{k:<{width}}  {v:.4f}")
    print(f"last.ckpt at step {payload['last_ckpt_step']}; fit {fit_s:.0f} s; wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
