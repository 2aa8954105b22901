"""The README's main job, exactly as a user runs it from a clone, over several seeds, timed and recorded:

    python -m benchmarks.main_job                          # seeds 0 1 2 -> benchmarks/main_job.json (~20 min a seed)
    python -m benchmarks.main_job --readme                 # rewrite README's table from the JSON
    python -m benchmarks.main_job --seeds 0 --agree-with benchmarks/main_job.json --json mine.json
                                                           # does this machine's run agree with the recorded one?

Each seed runs ``iggt fit --config synthetic_tiny --seed_everything SEED && iggt test --config synthetic_tiny
--ckpt_path last`` in a fresh working folder (subprocesses, the config's thread pin). The JSON holds, per seed,
the test table, the step ``last.ckpt`` holds, the fit time and the load average; over the seeds, mean, sample
standard deviation, min and max of every metric; and what a user needs to tell whether their machine is "of the
same kind": the commit (a run from a checkout with uncommitted changes is refused), the CPU model and the
instruction set torch dispatches to, the thread count, and the version of every installed package with the
differences from ``constraints.txt``. ``--agree-with`` compares a run with a recorded JSON metric by metric: the
same seed bit-identical, or within the recorded seeds' mean ± 2 sd. The README's main-job table is this JSON
(``tests/test_readme_numbers.py`` holds them equal).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from iggt_lightning.benchmarking import fill_block
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]

CONFIG = "synthetic_tiny"      # the packaged config, by name, as the README's command names it
CONSTRAINTS = ROOT / "constraints.txt"
COMMAND = ("iggt fit --config synthetic_tiny --seed_everything {seed} && "
           "iggt test --config synthetic_tiny --ckpt_path last")
ROW = re.compile(r"(test/[^\s│|┃]+)\s*[│|┃]?\s*([-+]?[0-9][0-9.eE+-]*|nan)\s*[│|┃]?\s*$", re.M)
BEGIN, END = "<!-- main_job.json: python -m benchmarks.main_job --readme -->", "<!-- /main_job.json -->"
# what the README shows, in order: (metric key, label)
SHOWN = [("ap", "AP"), ("ap50", "AP50"), ("ap25", "AP25"), ("ap50_objects", "AP50 objects"),
         ("t_miou", "T-mIoU"), ("t_sr", "T-SR"), ("t_miou_objects", "T-mIoU objects"), ("abs_rel", "AbsRel"),
         ("tau_1.03", "τ<1.03"), ("auc@30", "AUC@30")]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")   # what changes torch's CPU kernels


# ---------------------------------------------------------------- the record
def summarize(runs: list[dict]) -> dict:
    """Per metric over the seeds: mean, sample sd (0 for one seed), min, max."""
    out = {}
    for key in runs[0]["test"]:
        values = [r["test"][key] for r in runs if key in r["test"]]
        if len(values) != len(runs) or any(math.isnan(v) for v in values):
            continue
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def readme_table(payload: dict) -> str:
    runs, summary, env = payload["runs"], payload["summary"], payload["environment"]
    rows = ["| seed | " + " | ".join(label for _, label in SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
    for r in runs:
        rows.append(f"| {r['seed']} | " + " | ".join(f"{r['test'][k]:.3f}" for k, _ in SHOWN) + " |")
    rows.append("| **mean ± sd** | " + " | ".join(f"**{summary[k]['mean']:.3f}** ± {summary[k]['sd']:.3f}"
                                                     for k, _ in SHOWN) + " |")
    fits = [r["fit_seconds"] for r in runs]
    loads = [r["load_average_before"][0] for r in runs]
    drift = env["constraints_differences"]
    note = (f"(test split, all {runs[0]['test_scenes']} scenes; `last.ckpt` at step {runs[0]['last_ckpt_step']}; "
            f"fit {statistics.fmean(fits) / 60:.1f} min a seed ({min(fits):.0f}–{max(fits):.0f} s) on "
            f"{env['cpu_count']} cores of an {env['cpu_model']} ({_family(env)}torch CPU capability "
            f"{env['torch_cpu_capability']}), "
            f"load average {min(loads):.2f}–{max(loads):.2f} before; commit {env['commit'][:7]}, torch "
            f"{env['packages'].get('torch')}, Python {env['python']}, "
            + ("every package as `constraints.txt` pins it" if not drift else f"{len(drift)} package(s) off "
               "`constraints.txt`") + ")")
    return "\n".join([BEGIN, *rows, "", note, END])


CHECKS_BEGIN = "<!-- main_job checks: python -m benchmarks.main_job --readme -->"
CHECKS_END = "<!-- /main_job checks -->"
# runs of the main job on a second clean clone, compared with main_job.json by --agree-with: (file, what differed)
CHECKS = [("main_job_second_clone.json", "a second clean clone and venv, same CPU kernels"),
          ("main_job_avx2.json", "a second clean clone, torch's CPU kernels limited to AVX2 (another kind of machine)")]


def readme_checks(checks: list[tuple[str, dict]]) -> str:
    """One row per recorded check: which run, and per shown metric its value and verdict."""
    rows = ["| run | seed | " + " | ".join(label for _, label in SHOWN) + " | verdicts |",
            "|---|---|" + "---|" * len(SHOWN) + "---|"]
    mark = {"identical": "=", "within 2 sd": "", "outside": " ✗"}
    for what, payload in checks:
        env = payload["environment"]
        for seed, verdicts in payload["agreement"].items():
            cells = [f"{verdicts[label]['value']:.3f}{mark[verdicts[label]['verdict']]}" for _, label in SHOWN]
            counts = {v: sum(r["verdict"] == v for r in verdicts.values()) for v in mark}
            summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
            rows.append(f"| {what} (commit {env['commit'][:7]}, {env['torch_cpu_capability']} kernels) | {seed} | "
                        + " | ".join(cells) + f" | {summary} |")
    return "\n".join([CHECKS_BEGIN, *rows, CHECKS_END])


def recorded_checks(folder: Path = ROOT / "benchmarks") -> list[tuple[str, dict]]:
    return [(what, json.loads((folder / name).read_text())) for name, what in CHECKS if (folder / name).is_file()]


def _family(env: dict) -> str:
    """'AuthenticAMD/26/2/1' -> 'AuthenticAMD family 26 model 2, ' (the CPU generation a bare model name hides)."""
    parts = (env.get("cpu_family_model") or "").split("/")
    return f"{parts[0]} family {parts[1]} model {parts[2]}, " if len(parts) == 4 else ""


def update_readme(json_path: str) -> None:
    fill_block(BEGIN, END, readme_table(json.loads(Path(json_path).read_text())), ROOT)
    fill_block(CHECKS_BEGIN, CHECKS_END, readme_checks(recorded_checks()), ROOT)


def cpu_info() -> dict:
    """The CPU as /proc/cpuinfo names it (Linux), plus the flags that change which kernels torch runs."""
    info = {"cpu_model": platform.processor() or platform.machine(), "cpu_family_model": None, "cpu_flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(re.findall(r"^([^\t:]+?)\s*:\s*(.*)$", text.split("\n\n")[0], re.M))
    info["cpu_model"] = fields.get("model name", info["cpu_model"])
    info["cpu_family_model"] = "/".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model", "stepping"))
    flags = set(fields.get("flags", "").split())
    info["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    return info


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def constraints_differences(packages: dict[str, str]) -> list[str]:
    """Packages whose installed version is not the one ``constraints.txt`` pins (missing ones included)."""
    if not CONSTRAINTS.is_file():
        return ["constraints.txt: missing"]
    out = []
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, pinned = (s.strip() for s in line.split("==", 1))
        have = packages.get(_canonical(name))
        if have != pinned:
            out.append(f"{name}: pinned {pinned}, installed {have or 'none'}")
    return out


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def environment(allow_dirty: bool) -> dict:
    import torch

    dirty = git("status", "--porcelain", "--untracked-files=no")
    if dirty and not allow_dirty:
        raise SystemExit(f"main_job: the checkout has uncommitted changes, so the record could not name the code "
                         f"it ran; commit them, or pass --allow-dirty for a trial run:\n{dirty}")
    packages = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": bool(dirty), **cpu_info(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
            "packages": dict(sorted(packages.items())), "constraints_differences": constraints_differences(packages),
            # kernel-selection overrides change results as a different CPU would: recorded when set
            "isa_overrides": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
                                                        "ONEDNN_MAX_CPU_ISA") if k in os.environ}}


# ---------------------------------------------------------------- one seed
def iggt(args: list[str], cwd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-m", "iggt_lightning", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"iggt {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def run_seed(seed: int) -> dict:
    import torch

    work = tempfile.mkdtemp(prefix=f"iggt-main-job-seed{seed}-")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    iggt(["fit", "--config", CONFIG, "--seed_everything", str(seed)], work)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = iggt(["test", "--config", CONFIG, "--ckpt_path", "last"], work)
    test_s = time.perf_counter() - t0
    metrics = {k[len("test/"):]: float(v) for k, v in ROW.findall(table)}
    if not metrics:
        raise SystemExit(f"no test metrics in the output of iggt test:\n{table[-3000:]}")
    last = torch.load(Path(work) / "runs" / "synthetic_tiny" / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    return {"seed": seed, "command": COMMAND.format(seed=seed), "last_ckpt_step": int(last["global_step"]),
            "test_scenes": _test_scenes(), "fit_seconds": round(fit_s, 1), "test_seconds": round(test_s, 1),
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "test": metrics}


def _test_scenes() -> int:
    """The test split's size from the packaged config (the test loop visits every scene once:
    tests/test_eval_coverage.py)."""
    import yaml

    from iggt_lightning.config_files import resolve_config

    cfg = yaml.safe_load(Path(resolve_config(CONFIG)).read_text())
    return int(cfg["data"]["init_args"]["num_test"])


# ---------------------------------------------------------------- fingerprint
FINGERPRINT_STEPS = 3
FINGERPRINT_KEYS = ("train/loss", "train/loss_contrastive", "train/loss_depth", "train/loss_camera")


def fingerprint() -> dict:
    """The first training steps' losses of the main job (seed 0): a few seconds of the same command, recorded
    beside the full runs so that a test can tell whether the code still computes what the JSON measured (a
    change to training, data or losses moves them; another CPU kind moves them only by float rounding)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work = tempfile.mkdtemp(prefix="iggt-main-job-fingerprint-")
    iggt(["fit", "--config", CONFIG, "--seed_everything", "0", "--trainer.max_steps", str(FINGERPRINT_STEPS),
          "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"], work)
    events = EventAccumulator(str(next((Path(work) / "runs" / "synthetic_tiny" / "tensorboard").iterdir())))
    events.Reload()
    out = {"steps": FINGERPRINT_STEPS}
    for key in FINGERPRINT_KEYS:
        out[key] = [s.value for s in sorted(events.Scalars(key), key=lambda s: s.step)]
    return out


# ---------------------------------------------------------------- agreement
def agreement(mine: dict, recorded: dict) -> dict:
    """Per shown metric and seed of ``mine``: bit-identical to the recorded same seed, within the recorded seeds'
    mean ± 2 sd, or outside."""
    by_seed = {r["seed"]: r["test"] for r in recorded["runs"]}
    out = {}
    for run in mine["runs"]:
        rows = {}
        for key, label in SHOWN:
            x, s = run["test"][key], recorded["summary"][key]
            same = by_seed.get(run["seed"], {}).get(key)
            verdict = ("identical" if same is not None and same == x
                       else "within 2 sd" if abs(x - s["mean"]) <= 2 * s["sd"] else "outside")
            rows[label] = {"value": x, "recorded_same_seed": same, "recorded_mean": s["mean"],
                           "recorded_sd": s["sd"], "verdict": verdict}
        out[str(run["seed"])] = rows
    return out


def print_agreement(result: dict) -> None:
    for seed, rows in result.items():
        print(f"seed {seed}: metric, yours, recorded same seed, recorded mean ± sd, verdict")
        for label, r in rows.items():
            same = "–" if r["recorded_same_seed"] is None else f"{r['recorded_same_seed']:.4f}"
            print(f"  {label:<15} {r['value']:.4f}  {same:>7}  {r['recorded_mean']:.4f} ± {r['recorded_sd']:.4f}  "
                  f"{r['verdict']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "main_job.json"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--readme", action="store_true", help="only rewrite README's main-job table from --json")
    p.add_argument("--agree-with", metavar="JSON", help="compare this run with a recorded main_job.json")
    p.add_argument("--allow-dirty", action="store_true", help="run from a checkout with uncommitted changes")
    a = p.parse_args()
    if a.readme:
        update_readme(a.json)
        return 0
    recorded = json.loads(Path(a.agree_with).read_text()) if a.agree_with else None
    payload = {"command": COMMAND, "environment": environment(a.allow_dirty), "fingerprint": fingerprint(),
               "runs": []}
    for seed in a.seeds:
        run = run_seed(seed)
        payload["runs"].append(run)
        payload["summary"] = summarize(payload["runs"])
        write_json(a.json, payload)        # after every seed: a stopped run keeps what it finished
        print(f"seed {seed}: AP50 {run['test']['ap50']:.4f}, AP50 objects {run['test']['ap50_objects']:.4f}, "
              f"T-mIoU {run['test']['t_miou']:.4f}; fit {run['fit_seconds']:.0f} s", flush=True)
    if recorded is not None:
        payload["agreement"] = agreement(payload, recorded)
        write_json(a.json, payload)
        print_agreement(payload["agreement"])
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
