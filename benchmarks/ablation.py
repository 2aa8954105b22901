"""The contrastive-loss ablation on the tiny synthetic config: train each variant (same seed, same budget),
test it on the synthetic test split, print AP / AP50 / AP25 / T-mIoU / T-SR / AbsRel side by side (+ JSON).

    python -m benchmarks.ablation [--variants full "contrastive off" ...] [--json path] [-- extra CLI args]
    python -m benchmarks.ablation --parallel 7 --threads 2 -- --trainer.accelerator gpu   # GPU: variants at once
    python -m benchmarks.ablation --add "my run=--model.lr 1e-3" --variants "my run"     # an ad-hoc variant
    python -m benchmarks.ablation --readme          # rewrite README's table from benchmarks/ablation.json

``--parallel N`` trains up to N variants at once, each in its own process (``--threads`` torch threads each);
results do not depend on it (each process seeds itself from the config). ``--save-weights DIR`` keeps each
variant's trained model weights (``DIR/<variant>.pt``); ``--from-weights DIR`` evaluates them again without
training (e.g. after a change to the clusterer or the metrics). Every variant is evaluated by the same test
loop on the test split and on the val split (``val_*`` columns).

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
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from iggt_lightning.benchmarking import evaluate, fill_block
from iggt_lightning.fileio import write_json
from iggt_lightning.lightning_cli import IGGTCLI

ROOT = Path(__file__).resolve().parents[1]

CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"
# test split, then the val split (same test loop); loss_contrastive is the test loop's (absent when switched off)
COLUMNS = ["ap", "ap50", "ap25", "ap50_2d", "ap50_objects", "t_miou", "t_sr", "t_miou_objects", "abs_rel",
           "val_ap", "val_ap50", "val_ap25", "val_ap50_objects", "val_t_miou", "val_t_sr", "val_abs_rel",
           "loss_contrastive"]


def variants(config: Path) -> dict[str, list[str]]:
    opts = yaml.safe_load(config.read_text())["model"].get("loss_options", {}).get("contrastive", {})

    def contrastive(**change) -> list[str]:
        # a dict given on the command line replaces the config's whole dict, so restate the other options
        return ["--model.loss_options", json.dumps({"contrastive": {**opts, **change}})]

    return {
        "full": [],
        "full, seed 1": ["--seed_everything", "1"],
        "contrastive off": ["--model.loss_weights", json.dumps({"contrastive": 0.0})],
        "cross-view off": contrastive(cross_view=False),
        "fusion off": ["--model.heads", json.dumps({"instance": {"fusion": False}})],
        "lambda 0.1": ["--model.loss_weights", json.dumps({"contrastive": 0.1})],
        "lambda 10": ["--model.loss_weights", json.dumps({"contrastive": 10.0})],
        "lambda_pull 2 (paper)": contrastive(lambda_pull=2.0),
    }


BEGIN, END = "<!-- ablation.json: python -m benchmarks.ablation --readme -->", "<!-- /ablation.json -->"
# what the README table shows, in order: (metric key, label)
SHOWN = [("ap", "AP"), ("ap50", "AP50"), ("ap25", "AP25"), ("ap50_objects", "AP50 obj."), ("t_miou", "T-mIoU"),
         ("t_sr", "T-SR"), ("t_miou_objects", "T-mIoU obj."), ("abs_rel", "AbsRel"), ("val_ap50", "val AP50"),
         ("val_ap50_objects", "val AP50 obj."), ("val_t_sr", "val T-SR"), ("loss_contrastive", "test L_contrastive")]


def readme_table(payload: dict) -> str:
    """The README's ablation table and its measurement note, from the JSON this script writes."""
    rows = ["| variant | override | " + " | ".join(label for _, label in SHOWN) + " |",
            "|---|---|" + "---|" * len(SHOWN)]
    for r in payload["rows"]:
        override = " ".join(r["override"]) if r["override"] else "(the config)"
        if "error" in r:
            rows.append(f"| {r['variant']} | `{override}` | " + " | ".join("failed" for _ in SHOWN) + " |")
            continue
        cells = ("–" if r.get(k) is None else f"{r[k]:.3f}" for k, _ in SHOWN)   # a term switched off has no loss
        rows.append(f"| {r['variant']} | `{override}` | " + " | ".join(cells) + " |")
    by_name = {r["variant"]: r for r in payload["rows"] if "error" not in r}
    spread = ""
    if "full" in by_name and "full, seed 1" in by_name:
        a, b = by_name["full"], by_name["full, seed 1"]
        spread = (f" Seed spread (full vs seed 1): AP50 {abs(a['ap50'] - b['ap50']):.3f} test, "
                  f"{abs(a['val_ap50'] - b['val_ap50']):.3f} val; AP50 objects {abs(a['ap50_objects'] - b['ap50_objects']):.3f} test.")
    minutes = [r["train_seconds"] / 60 for r in payload["rows"] if "error" not in r]
    load = payload.get("load_avg") or [float("nan")]
    note = (f"({len(payload['rows'])} variants, {payload['threads']} torch thread(s) each, {payload['parallel']} at a "
            f"time on {payload.get('cpu_count', '?')} cores, {min(minutes):.0f}-{max(minutes):.0f} min of training "
            f"each; load average {load[0]:.2f} at the end; torch {payload.get('torch', '?')}, commit "
            f"{str(payload.get('commit', '?'))[:7]}; {_scene_counts(payload['rows'])}.{spread})")
    return "\n".join([BEGIN, *rows, "", note, END])


def _scene_counts(rows: list[dict]) -> str:
    counts = {(r.get("test_scenes"), r.get("val_scenes")) for r in rows if "error" not in r}
    if len(counts) == 1 and None not in (pair := counts.pop()):
        return f"test = {pair[0]} scenes, val = {pair[1]}"
    return "scene counts not recorded by this run"


def update_readme(json_path: str) -> None:
    fill_block(BEGIN, END, readme_table(json.loads(Path(json_path).read_text())), ROOT)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def weights_file(directory: str, name: str) -> Path:
    return Path(directory) / f"{slug(name)}.pt"


def run_variant(config: Path, override: list[str], extra: list[str], save_weights: str | None = None,
                name: str = "", from_weights: str | None = None) -> dict:
    workdir = tempfile.mkdtemp(prefix="iggt-ablation-")
    args = ["--config", str(config), "--trainer.default_root_dir", workdir, "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--threads", str(torch.get_num_threads()), *override, *extra]   # --threads, not the config's pin
    cli = IGGTCLI(args=args, run=False)
    t0 = time.perf_counter()
    if from_weights:
        weights = weights_file(from_weights, name)
        if not weights.is_file():
            raise FileNotFoundError(f"--from-weights: no trained weights for variant {name!r} at {weights}")
        cli.model.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    train_s = time.perf_counter() - t0
    steps = cli.trainer.global_step
    if save_weights and not from_weights:
        Path(save_weights).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in cli.model.model.state_dict().items()}, weights_file(save_weights, name))
    t1 = time.perf_counter()
    out = evaluate(cli, "", datamodule=cli.datamodule)
    test_s = time.perf_counter() - t1
    # the same test loop over the val split: the targets are on val
    val_loader = cli.datamodule.val_dataloader()
    val = evaluate(cli, "val_", dataloaders=val_loader)
    # every scene of a split is visited once (tests/test_eval_coverage.py): the split sizes are the scene counts
    scenes = {"test_scenes": len(cli.datamodule.test_dataloader().dataset), "val_scenes": len(val_loader.dataset)}
    return {"train_seconds": train_s, "test_seconds": test_s, "steps": steps, **scenes,
            "trained_from": str(weights) if from_weights else "fit", "device": str(cli.model.device), **out, **val}


def run_parallel(a, table: dict, names: list[str], log_dir: Path, progress=None) -> list[dict]:
    """Each variant in a child process of this script (at most ``a.parallel`` at once); rows in ``names`` order."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, rows = list(names), {}, {}
    while pending or running:
        while pending and len(running) < a.parallel:
            name = pending.pop(0)
            part = log_dir / f"{slug(name)}.json"
            # the same cwd as this run (the repository root: python -m benchmarks.ablation), so relative paths agree
            cmd = [sys.executable, "-u", "-m", "benchmarks.ablation", "--config", str(a.config),
                   "--threads", str(a.threads), "--json", str(part), "--variants", name,
                   *(["--add", f"{name}={shlex.join(table[name])}"] if name in a.added else []),
                   *(["--save-weights", a.save_weights] if a.save_weights else []),
                   *(["--from-weights", a.from_weights] if a.from_weights else []), "--", *a.extra]
            log = open(log_dir / f"{slug(name)}.log", "w")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), part, log)
            print(f"== started {name}: {' '.join(table[name]) or '(the config as is)'}", flush=True)
        time.sleep(1.0)
        for name, (proc, part, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            if proc.returncode == 0 and part.exists():
                rows[name] = json.loads(part.read_text())["rows"][0]
                print(f"== done {name} ({rows[name]['train_seconds']:.0f} s)", flush=True)
            else:
                rows[name] = {"variant": name, "override": table[name], "error": f"exit {proc.returncode}",
                              "log": (log_dir / f"{slug(name)}.log").read_text()[-3000:]}
                print(f"== FAILED {name}: exit {proc.returncode}; log {log_dir / (slug(name) + '.log')}", flush=True)
            if progress is not None:
                progress([rows[n] for n in names if n in rows])
    return [rows[n] for n in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--variants", nargs="*", help="names of the variants to run (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "ablation.json"))
    p.add_argument("--readme", action="store_true", help="only rewrite README's ablation table from --json")
    p.add_argument("--parallel", type=int, default=1, help="variants trained at once, each in its own process")
    p.add_argument("--add", action="append", default=[], metavar="NAME=ARGS",
                   help="an extra variant: NAME=command-line overrides (shell-quoted); repeatable; "
                        "runs after the named --variants (all of them when none are named)")
    p.add_argument("--save-weights", metavar="DIR", help="save each variant's trained weights to DIR/<variant>.pt")
    p.add_argument("--from-weights", metavar="DIR",
                   help="skip training: evaluate the weights a --save-weights run left in DIR/<variant>.pt")
    p.add_argument("extra", nargs="*", help="extra LightningCLI arguments for every variant (after --)")
    a = p.parse_args()
    if a.readme:
        update_readme(a.json)
        return 0
    torch.set_num_threads(a.threads)
    table = variants(a.config)
    a.added = []
    for spec in a.add:
        name, sep, args = spec.partition("=")
        if not sep or not name:
            p.error(f"--add takes NAME=ARGS; got {spec!r}")
        table[name] = shlex.split(args)
        a.added.append(name)
    # --add'ed variants always run, also next to an explicit --variants list
    names = (a.variants or [n for n in table if n not in a.added]) + [n for n in a.added if n not in (a.variants or [])]
    unknown = [n for n in names if n not in table]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(table)}")
    header = {"config": str(a.config), "extra_args": a.extra, "threads": a.threads, "parallel": a.parallel,
              "commit": git_commit(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
              "from_weights": a.from_weights,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    t0 = time.perf_counter()
    if a.parallel > 1 and len(names) > 1:
        rows = run_parallel(a, table, names, Path(tempfile.mkdtemp(prefix="iggt-ablation-logs-")),
                            lambda done: write_json(a.json, {**header, "load_avg": os.getloadavg(), "rows": done}))
    else:
        rows = []
        for name in names:
            print(f"== {name}: {' '.join(table[name]) or '(the config as is)'}", flush=True)
            rows.append({"variant": name, "override": table[name],
                         **run_variant(a.config, table[name], a.extra, a.save_weights, name, a.from_weights)})
            write_json(a.json, {**header, "load_avg": os.getloadavg(), "rows": rows})  # partial results survive
    write_json(a.json, {**header, "load_avg": os.getloadavg(), "wall_seconds": time.perf_counter() - t0,
                        "rows": rows})
    print()
    width = {c: max(len(c), 6) + 2 for c in COLUMNS}
    print(f"{'variant':<24}" + "".join(f"{c:>{width[c]}}" for c in COLUMNS) + f"{'train min':>11}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<24} FAILED: {r['error']}")
            continue
        print(f"{r['variant']:<24}" + "".join(f"{r.get(c, float('nan')):>{width[c]}.4f}" for c in COLUMNS)
              + f"{r['train_seconds'] / 60:>11.1f}")
    print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
