"""Our forward against the official IGGT/VGGT forward, same weights, interleaved runs, ratios.

    python -m benchmarks.vs_official --official /path/to/IGGT_official              # the default table
    python -m benchmarks.vs_official --official PATH --preset vggt-large --configs 224x224:1,2
    python -m benchmarks.vs_official                                                 # no checkout: ours alone

``--official`` is a local checkout of lifuguan/IGGT_official (never downloaded by this script, never part of
this repository; see iggt_lightning/benchmarking/official.py for how its classes are built and which of its
unused imports get placeholders). Both models get the same random weights, so ``max rel diff`` (max|ours - official| /
max|official| over depth, world points, instance features and the last pose encoding) says they compute the
same function. ``--configs`` lists ``HxW:views,views`` (default ``224x224:1,2,4,8 336x504:4 336x518:4``). The
official instance decoder cannot run grids with an odd patch count (518 px = 37 patches: its window attention
needs whole windows), so 336x518 shows its error and 336x504, the nearest size it runs, is compared instead.

``--bf16`` adds a third side, ours under bf16 autocast with the heads in bf16 too (``iggt predict --precision
bf16``'s default, ``head_precision="autocast"``), timed in the same rounds: ``bf16 speed-up`` = official (fp32) /
ours in bf16, and ``bf16 rel diff`` its median relative difference from the official fp32 output (bf16 rounds to
3 significant digits; docs/speed.md has what that changes in the test metrics).

Per configuration: one untimed run of each side, then ``--repeats`` rounds; each round runs both sides once,
the order alternating between rounds so drift in the machine's load hits both alike. Time = the median of a
side's runs (``time.perf_counter``, ``torch.no_grad`` for both); ``speed-up`` = official / ours. Memory = the
peak RSS increase during the side's runs over the RSS just before them (iggt_lightning.benchmarking's
``CpuPeakRSS``: weights and input excluded). The load average is recorded before and after each
configuration: these machines are shared, and a load above the core count inflates both sides.
Writes the JSON atomically (default benchmarks/vs_official.json; with no checkout,
benchmarks/results/vs_official_ours_only.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from iggt_lightning.benchmarking import CpuPeakRSS, MIB, environment, fill_block_from_json, is_oom
from iggt_lightning.benchmarking import official as official_lib
from iggt_lightning.fileio import write_json
from iggt_lightning.layers.fast_conv import ALGORITHMS, get_conv_algorithm, set_conv_algorithm
from iggt_lightning.model import IGGTModel

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent
FIXTURES = _REPO / "tests" / "data" / "reference"   # the parity fixtures the small official presets are built from
BEGIN, END = "<!-- vs_official.json: python -m benchmarks.vs_official --readme -->", "<!-- /vs_official.json -->"
DEFAULT_CONFIGS = ["224x224:1,2,4,8", "336x504:4", "336x518:4"]


def _config(text: str) -> tuple[int, int, list[int]]:
    try:
        size, views = text.split(":")
        h, w = (int(v) for v in size.lower().split("x"))
        return h, w, [int(v) for v in views.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"a config looks like 224x224:1,2,4 (HxW:views,...); got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--official", default=None, metavar="CHECKOUT", help="local checkout of lifuguan/IGGT_official")
    p.add_argument("--preset", default="tiny", choices=official_lib.PRESETS)
    p.add_argument("--configs", type=_config, nargs="+", default=[_config(c) for c in DEFAULT_CONFIGS])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--conv", choices=ALGORITHMS, default=None,
                   help="our convolution algorithm (iggt_lightning.layers.fast_conv); default: the library's")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="configurations not started once this much time has passed are skipped")
    p.add_argument("--bf16", action="store_true", help="also time ours in bf16 (heads included) against the official "
                   "fp32 forward, in the same interleaved rounds")
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", action="store_true",
                   help="add these rows to the existing JSON (a row of the same size and views is replaced)")
    p.add_argument("--readme", action="store_true", help="only rewrite README's table from --json (or the default)")
    return p.parse_args(argv)


def _timed(model, x) -> tuple[float, dict]:
    t = time.perf_counter()
    out = model(x)
    return time.perf_counter() - t, out


def run_side(model, x, log: dict) -> None:
    """One timed run of one side, its time and peak memory added to ``log``."""
    mem = CpuPeakRSS()
    mem.start()
    try:
        dt, out = _timed(model, x)
        log.setdefault("times_s", []).append(dt)
        log["_last"] = out
    except Exception as err:  # noqa: BLE001 - reported in the table
        log["status"] = "OOM" if is_oom(err) else "error"
        log["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    finally:
        peak, _ = mem.stop()
        log["peak_mib"] = max(log.get("peak_mib", 0.0), peak / MIB)


class Bf16(torch.nn.Module):
    """Our model under bf16 autocast with the heads following it (what ``iggt predict --precision bf16`` runs)."""

    def __init__(self, model: IGGTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        self.model.set_head_precision("autocast")
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.model(x)
        finally:
            self.model.set_head_precision("fp32")


def _median_rel_diff(ref: dict, out: dict) -> float:
    """The largest, over depth, world points and instance features, of the median |out - ref| / median |ref|."""
    worst = 0.0
    for k in ("depth", "world_points", "part_feat"):
        if k in ref and k in out:
            a, b = ref[k].float(), out[k].float()
            worst = max(worst, float((b - a).abs().median() / a.abs().median().clamp_min(1e-12)))
    return worst


def compare(sides: dict, h: int, w: int, s: int, repeats: int, seed: int) -> dict:
    x = torch.rand(1, s, 3, h, w, generator=torch.Generator().manual_seed(seed))
    logs = {name: {} for name in sides}
    row = {"height": h, "width": w, "views": s, "loadavg_start": list(os.getloadavg())}
    names = list(sides)
    with torch.no_grad():
        for name in names:                                   # untimed warm-up of each side
            run_side(sides[name], x, logs[name])
            logs[name].pop("times_s", None)
            logs[name]["peak_mib"] = 0.0
        for r in range(repeats):
            for name in (names if r % 2 == 0 else names[::-1]):
                if "error" not in logs[name]:
                    run_side(sides[name], x, logs[name])
    row["loadavg_end"] = list(os.getloadavg())
    outs = {}
    for name, log in logs.items():
        outs[name] = log.pop("_last", None)
        if log.get("times_s"):
            log["median_s"] = statistics.median(log["times_s"])
        log.setdefault("status", "ok")
        row[name] = log
    if "official" in row and "median_s" in row["official"] and "median_s" in row["ours"]:
        row["speedup"] = row["official"]["median_s"] / row["ours"]["median_s"]
        row["time_ratio"] = 1 / row["speedup"]
        if row["official"]["peak_mib"] > 0:
            row["memory_ratio"] = row["ours"]["peak_mib"] / row["official"]["peak_mib"]
        if outs.get("official") is not None and outs.get("ours") is not None:
            row["max_rel_diff"] = official_lib.max_output_difference(outs["official"], outs["ours"])
    if "official" in row and "median_s" in row["official"] and "median_s" in row.get("ours_bf16", {}):
        row["speedup_bf16"] = row["official"]["median_s"] / row["ours_bf16"]["median_s"]
        if outs.get("official") is not None and outs.get("ours_bf16") is not None:
            row["bf16_median_rel_diff"] = _median_rel_diff(outs["official"], outs["ours_bf16"])
    return row


def _f(v, spec):
    return "—" if v is None else format(v, spec)


def table(rows: list[dict], with_official: bool) -> str:
    bf16 = with_official and any("speedup_bf16" in r for r in rows)
    if with_official:
        lines = ["| size | views | official s | ours s | speed-up (official/ours) | official MiB | ours MiB | "
                 "memory ratio (ours/official) | max rel diff | load avg |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        if bf16:
            lines = [lines[0][:-len(" load avg |")] + " ours bf16 s | bf16 speed-up | bf16 median rel diff | load avg |",
                     "|---" * 13 + "|"]
    else:
        lines = ["| size | views | ours s | ours MiB | load avg |", "|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['height']}×{r['width']}"
        load = f"{r['loadavg_start'][0]:.2f}→{r['loadavg_end'][0]:.2f}" if "loadavg_end" in r else "—"
        ours = r.get("ours", {})
        if r.get("status", "").startswith("skipped"):
            lines.append(f"| {size} | {r['views']} | {r['status']} |" + " |" * (8 if with_official else 2))
            continue
        if with_official:
            off = r["official"]
            off_s = _f(off.get("median_s"), ".3f") if "median_s" in off else off.get("status", "—")
            diff = max(r["max_rel_diff"].values()) if r.get("max_rel_diff") else None
            speedup = f"{r['speedup']:.2f}×" if "speedup" in r else "—"
            off_mib = _f(off.get("peak_mib"), ".0f") if "median_s" in off else "—"
            b16 = ""
            if bf16:
                b16 = (f"{_f(r.get('ours_bf16', {}).get('median_s'), '.3f')} | "
                       f"{_f(r.get('speedup_bf16'), '.2f')}{'×' if 'speedup_bf16' in r else ''} | "
                       f"{_f(r.get('bf16_median_rel_diff'), '.1e')} | ")
            lines.append(f"| {size} | {r['views']} | {off_s} | {_f(ours.get('median_s'), '.3f')} | "
                         f"{speedup} | {off_mib} | "
                         f"{_f(ours.get('peak_mib'), '.0f')} | {_f(r.get('memory_ratio'), '.2f')} | "
                         f"{_f(diff, '.1e')} | {b16}{load} |")
        else:
            lines.append(f"| {size} | {r['views']} | {_f(ours.get('median_s'), '.3f')} | "
                         f"{_f(ours.get('peak_mib'), '.0f')} | {load} |")
    return "\n".join(lines)


def readme_table(payload: dict) -> str:
    env = payload["environment"]
    # a figure holds for the CPU it was measured on: the commit and the CPU go with it
    cpu = ", ".join(x for x in (env.get("cpu_model"), env.get("cpu_capability")) if x) or env.get("processor", "?")
    precision = "fp32 (ours also in bf16, heads included)" if any("speedup_bf16" in r for r in payload["results"]) \
        else "fp32"
    note = (f"{payload['preset']}, {precision}, our kernels {payload.get('conv_algorithm', 'auto')}, CPU ({cpu}), "
            f"{env['threads']} threads, torch {env['torch']}, "
            f"{payload['repeats']} interleaved rounds, same weights; commit {str(env.get('git_commit', '?'))[:7]}, "
            f"{payload['timestamp'][:10]}")
    return f"{BEGIN}\n{note}\n\n{table(payload['results'], payload['official_checkout_given'])}\n{END}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme:
        fill_block_from_json(BEGIN, END, readme_table, args.json or _HERE / "vs_official.json", _REPO)
        return 0
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.conv:
        set_conv_algorithm(args.conv)
    if args.official:
        official, ours = official_lib.build_pair(args.preset, args.official, FIXTURES, seed=args.seed)
        sides = {"official": official, "ours": ours}
        if args.bf16:
            sides["ours_bf16"] = Bf16(ours)
        print(f"# ours vs official ({args.official}), preset {args.preset}: same weights")
        if official_lib.STUBBED:
            print(f"placeholders for the official code's unused imports: {', '.join(official_lib.STUBBED)}")
    else:
        print("no --official checkout given: timing ours alone (see --help for the side-by-side run)")
        torch.manual_seed(args.seed)
        sides = {"ours": IGGTModel.from_preset(args.preset).eval()}
    env = environment(torch.device("cpu"), _REPO)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, our conv algorithm "
          f"{get_conv_algorithm()}, load average {env['loadavg'][0]:.2f} on {env['cpu_count']} CPUs\n", flush=True)
    rows = []
    for h, w, views in args.configs:
        for s in views:
            if args.time_budget is not None and time.perf_counter() - t0 > args.time_budget:
                rows.append({"height": h, "width": w, "views": s, "status": "skipped (time budget)"})
                continue
            row = compare(sides, h, w, s, args.repeats, args.seed)
            rows.append(row)
            print(f"  {h}x{w} x{s}: " + ", ".join(f"{k} {v.get('median_s', float('nan')):.3f} s"
                                                  for k, v in row.items() if isinstance(v, dict) and k in sides)
                  + (f", speed-up {row['speedup']:.2f}x" if "speedup" in row else ""), file=sys.stderr, flush=True)
    print(table(rows, "official" in sides))
    default = "vs_official.json" if args.official else "results/vs_official_ours_only.json"
    path = Path(args.json) if args.json else _HERE / default
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        r["timestamp"] = stamp
    payload = {
        "preset": args.preset, "official_checkout_given": bool(args.official), "stubbed_imports": official_lib.STUBBED,
        "conv_algorithm": get_conv_algorithm(), "repeats": args.repeats, "argv": sys.argv, "environment": env,
        "timestamp": stamp, "total_s": time.perf_counter() - t0, "results": rows}
    if args.append and path.exists():
        old = json.loads(path.read_text())
        same = ("preset", "official_checkout_given", "conv_algorithm", "repeats")
        if any(old.get(k) != payload[k] for k in same) or old["environment"]["threads"] != env["threads"]:
            raise SystemExit(f"--append: {path} was made with other settings ({', '.join(same)}, threads)")
        new_keys = {(r["height"], r["width"], r["views"]) for r in rows}
        kept = [r for r in old["results"] if (r["height"], r["width"], r["views"]) not in new_keys]
        payload = dict(old, results=kept + rows, appended=old.get("appended", []) + [{"argv": sys.argv, "timestamp": stamp,
                                                                                     "environment": env}])
    write_json(path, payload)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
