"""The backbone's many-view mode (token merging in the global attention, docs/many-view.md): exact vs merged.

Three parts, each optional:

(a) **error** (``--error-views``, default 2 4 8): the ``tiny`` preset with random weights (seed ``--seed``), one
    forward with exact and one with merged global attention per view count and ratio on the same images; per
    output (``depth``, ``world_points``, ``part_feat``, ``pose_enc`` of the last refinement iteration) max|d| and
    max|d|/max|ref|. Inputs: rendered synthetic rooms (``--inputs synthetic``, the default: images with the
    redundancy merging relies on) or uniform noise (``--inputs noise``: no redundancy, the hard case).
(b) **speed** (``--views``, default 64 128 256): the backbone alone (``model.backbone(images, layers=...)`` with the
    layers the preset's heads read; the heads do not depend on the mode) timed under ``torch.no_grad()``, exact
    and merged runs interleaved (exact, merged, merged, exact, ...) so load changes hit both; median and minimum
    over ``--repeats`` runs after ``--warmup`` untimed ones, peak memory per mode (as benchmarks/forward.py: on
    CPU the peak RSS increase over the pre-run baseline, sampled every ~5 ms plus VmHWM; on CUDA
    ``max_memory_allocated``), the speed-up and memory ratios, and ``os.getloadavg()`` before and after.
(c) **eval** (``--weights PATH``: model weights for ``--config``, default configs/synthetic_tiny.yaml, as
    ``python -m benchmarks.ablation --save-weights DIR --variants full`` writes them): the config's test loop on
    its test split (``--num-test`` scenes, default the config's) with ``--eval-views`` views per scene (default
    8; the config trains on 2-3), exact vs merged; depth AbsRel, multi-view AP50 (and the rest of the test
    metrics in the JSON).

    python -m benchmarks.many_view --threads 2                                   # (a) and (b): the full table
    python -m benchmarks.many_view --views 8 16 --error-views 2 4 --time-budget 300 --threads 1   # a short run
    python -m benchmarks.many_view --weights DIR/full.pt --skip error speed      # (c) only

Options: ``--ratios`` (0.9) merged variants, ``--merge-options`` JSON of the other ``global_attention`` keys
(e.g. ``'{"start_block": 4, "scope": "frame"}'``), ``--size`` HxW (224x224), ``--preset`` (tiny), ``--device``,
``--threads``, ``--skip`` parts, ``--json`` (benchmarks/many_view.json, written atomically after every part).
``--time-budget`` SECONDS: once exceeded, speed configurations (and eval runs) not yet started are reported as
skipped; a configuration already running finishes its current round, keeping at least one timed run per mode.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from iggt_lightning.benchmarking import (MIB, CpuPeakRSS, environment, evaluate, fill_block_from_json, is_oom,
                                         parse_size, sync)
from iggt_lightning.fileio import write_json
from iggt_lightning.layers.token_merge import parse_global_attention
from iggt_lightning.model import PRESETS, IGGTModel

ROOT = Path(__file__).resolve().parents[1]

_T0 = time.perf_counter()
OUTPUTS = ("depth", "world_points", "part_feat", "pose_enc")
EVAL_SHOWN = ("abs_rel", "delta_1.25", "ap50", "ap50_objects", "auc@30")
CONFIG = ROOT / "configs" / "synthetic_tiny.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--size", type=parse_size, default=(224, 224), help="HxW of parts (a) and (b)")
    p.add_argument("--views", type=int, nargs="+", default=[64, 128, 256], help="view counts of the speed part")
    p.add_argument("--error-views", type=int, nargs="+", default=[2, 4, 8], help="view counts of the error part")
    p.add_argument("--eval-views", type=int, default=8, help="views per test scene of the eval part")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.9], help="merged variants' ratio")
    p.add_argument("--merge-options", type=json.loads, default={}, help="other global_attention keys (JSON)")
    p.add_argument("--inputs", choices=("synthetic", "noise"), default="synthetic", help="images of the error part")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode and view count")
    p.add_argument("--exact-max-views", type=int, default=None,
                   help="speed part: run exact attention only up to this many views (it is quadratic)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per mode and view count")
    p.add_argument("--weights", default=None, help="trained weights for --config: runs the eval part")
    p.add_argument("--config", default=str(CONFIG), help="the config the --weights were trained with")
    p.add_argument("--num-test", type=int, default=None, help="test scenes of the eval part (default: the config's)")
    p.add_argument("--skip", nargs="*", default=[], choices=("error", "speed", "eval"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "many_view.json"))
    p.add_argument("--readme", action="store_true", help="only rewrite README's tables from --json")
    p.add_argument("--update", action="store_true",
                   help="keep the parts of an existing --json that this run skips (same preset and size)")
    a = p.parse_args(argv)
    if not isinstance(a.merge_options, dict) or "ratio" in a.merge_options or "kind" in a.merge_options:
        p.error("--merge-options must be a JSON object of global_attention keys other than kind and ratio")
    a.views, a.error_views = sorted(set(a.views)), sorted(set(a.error_views))
    if min(a.views + a.error_views + [a.eval_views, a.repeats]) < 1 or a.warmup < 0:
        p.error("view counts and --repeats must be positive, --warmup >= 0")
    return a


def specs(a) -> list[tuple[str, dict]]:
    """(label, global_attention) per mode: exact first, then one merged variant per ratio (validated here)."""
    out = [("exact", {"kind": "exact"})]
    for r in a.ratios:
        spec = {"kind": "merged", "ratio": r, **a.merge_options}
        parse_global_attention(spec, field="--ratios/--merge-options")
        out.append((f"merged {r:g}", spec))
    return out


def _over_budget(a) -> bool:
    return a.time_budget is not None and time.perf_counter() - _T0 > a.time_budget


def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def set_mode(model: IGGTModel, spec: dict) -> None:
    """Switch the backbone's global attention (it holds no parameters, so the weights stay as they are)."""
    model.backbone.global_attention = parse_global_attention(spec, model.backbone.depth)


# ----------------------------------------------------------------------------- (a) error
def images_for(a, S: int) -> torch.Tensor:
    H, W = a.size
    if a.inputs == "noise":
        return torch.rand(1, S, 3, H, W, generator=torch.Generator().manual_seed(a.seed))
    from iggt_lightning.data import SyntheticScenes

    return SyntheticScenes(1, num_views=S, image_size=(H, W), seed=a.seed)[0]["images"][None]


def _last(out: dict, key: str) -> torch.Tensor:
    return out[key][-1] if key == "pose_enc" else out[key]


def error_part(a, model: IGGTModel, device: torch.device) -> list[dict]:
    rows = []
    for S in a.error_views:
        x = images_for(a, S).to(device)
        set_mode(model, {"kind": "exact"})
        with torch.no_grad():
            ref = {k: _last(model(x), k).float() for k in OUTPUTS}
        for label, spec in specs(a)[1:]:
            set_mode(model, spec)
            with torch.no_grad():
                out = model(x)
            row = {"views": S, "mode": label, "global_attention": spec, "inputs": a.inputs}
            for k in OUTPUTS:
                d = (_last(out, k).float() - ref[k]).abs().max().item()
                row[k] = {"max_abs": d, "rel": d / max(ref[k].abs().max().item(), 1e-30),
                          "finite": bool(torch.isfinite(_last(out, k)).all())}
            rows.append(row)
            print(f"  error {S} views {label}: " + ", ".join(f"{k} {row[k]['rel']:.2e}" for k in OUTPUTS),
                  file=sys.stderr, flush=True)
        set_mode(model, {"kind": "exact"})
    return rows


# ----------------------------------------------------------------------------- (b) speed
def _one_run(model, x, layers, device) -> tuple[float, float, float]:
    """(seconds, peak MiB, baseline MiB) of one backbone forward."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        mem = CpuPeakRSS()
        mem.start()
    try:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.backbone(x, layers=layers)
        sync(device)
        dt = time.perf_counter() - t
        del out
    finally:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak, base = mem.stop()
    return dt, peak / MIB, base / MIB


def speed_config(a, model, device, S: int) -> dict:
    modes = specs(a)
    H, W = a.size
    res = {"views": S, "height": H, "width": W, "loadavg_before": _load(),
           "modes": {label: {"global_attention": spec, "times_s": [], "peak_mib": None} for label, spec in modes}}
    if a.exact_max_views is not None and S > a.exact_max_views:
        res["modes"]["exact"]["status"] = f"not run (--exact-max-views {a.exact_max_views})"
        modes = [(label, spec) for label, spec in modes if label != "exact"]
    layers = set(model.token_layers)
    try:
        x = torch.rand(1, S, 3, H, W, generator=torch.Generator().manual_seed(a.seed)).to(device)
        rounds = a.warmup + a.repeats
        for i in range(rounds):
            # exact, merged..., then reversed: each mode runs as often first as last
            order = modes if i % 2 == 0 else modes[::-1]
            for label, spec in order:
                set_mode(model, spec)
                dt, peak, base = _one_run(model, x, layers, device)
                m = res["modes"][label]
                m["peak_mib"] = peak if m["peak_mib"] is None else max(m["peak_mib"], peak)
                m["baseline_mib"] = base
                if i >= a.warmup:
                    m["times_s"].append(dt)
            timed = i + 1 - a.warmup
            if timed >= 1 and i < rounds - 1 and _over_budget(a):
                break
        res["status"] = "ok" if timed == a.repeats else f"ok ({max(timed, 0)}/{a.repeats} runs)"
    except Exception as err:  # noqa: BLE001 - reported, not raised
        res["status"] = "OOM" if is_oom(err) else "error"
        res["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    finally:
        set_mode(model, {"kind": "exact"})
        x = None
        gc.collect()
    for m in res["modes"].values():
        if m["times_s"]:
            m.update(median_s=statistics.median(m["times_s"]), min_s=min(m["times_s"]))
    ex = res["modes"]["exact"]
    for label, m in res["modes"].items():
        if label != "exact" and "median_s" in m and "median_s" in ex:
            m["speedup"] = ex["median_s"] / m["median_s"]
            if ex["peak_mib"]:
                m["memory_ratio"] = m["peak_mib"] / ex["peak_mib"]
    res["loadavg_after"] = _load()
    return res


def speed_part(a, model, device) -> list[dict]:
    rows = []
    if a.warmup:  # one-time costs (thread pools, allocator growth) before the first configuration
        with torch.no_grad():
            model.backbone(torch.rand(1, 2, 3, *a.size, device=device), layers=set())
    for S in a.views:
        if _over_budget(a):
            rows.append({"views": S, "status": "skipped (time budget)", "modes": {}})
            continue
        r = speed_config(a, model, device, S)
        rows.append(r)
        msg = ", ".join(f"{k} {m['median_s']:.3f} s" for k, m in r["modes"].items() if "median_s" in m)
        print(f"  speed {S} views: {r['status']} {msg or r.get('error', '')} "
              f"(elapsed {time.perf_counter() - _T0:.0f} s)", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- (c) eval
def eval_part(a) -> list[dict]:
    from iggt_lightning.lightning_cli import IGGTCLI

    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    rows = []
    for label, spec in specs(a):
        if _over_budget(a):
            rows.append({"mode": label, "views": a.eval_views, "status": "skipped (time budget)"})
            continue
        args = ["--config", a.config, "--trainer.default_root_dir", tempfile.mkdtemp(prefix="iggt-many-view-"),
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.enable_model_summary", "false", "--threads", str(torch.get_num_threads()),
                "--data.init_args.num_views", str(a.eval_views),
                "--model.backbone", json.dumps({"global_attention": spec})]
        if a.num_test is not None:
            args += ["--data.init_args.num_test", str(a.num_test)]
        if a.device == "cuda":
            args += ["--trainer.accelerator", "gpu"]
        argv, sys.argv = sys.argv, sys.argv[:1]  # this script's own arguments are not LightningCLI's
        try:
            cli = IGGTCLI(args=args, run=False)
        finally:
            sys.argv = argv
        cli.model.model.load_state_dict(state)
        t = time.perf_counter()
        metrics = evaluate(cli, "", datamodule=cli.datamodule)
        rows.append({"mode": label, "global_attention": spec, "views": a.eval_views,
                     "scenes": len(cli.datamodule.datasets["test"]), "test_seconds": time.perf_counter() - t,
                     "status": "ok", **metrics})
        print(f"  eval {label}: " + ", ".join(f"{k} {metrics.get(k, float('nan')):.4f}" for k in EVAL_SHOWN),
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- tables
def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def tables(payload: dict) -> str:
    out = []
    if payload.get("error"):
        out += [f"### (a) merged vs exact, random weights ({payload['preset']}, {payload['size']}, "
                f"{payload['error'][0]['inputs']} images): max|d| (max|d|/max|ref|)", "",
                "| views | mode | " + " | ".join(OUTPUTS) + " |", "|---:|---|" + "---:|" * len(OUTPUTS)]
        for r in payload["error"]:
            out.append(f"| {r['views']} | {r['mode']} | "
                       + " | ".join(f"{r[k]['max_abs']:.2e} ({r[k]['rel']:.2e})" for k in OUTPUTS) + " |")
        out.append("")
    if payload.get("speed"):
        labels = [lab for lab, _ in payload["modes"]]
        merged = labels[1:]
        out += [f"### (b) backbone forward ({payload['preset']}, {payload['size']}, {payload['device']}, "
                f"{payload['environment']['threads']} threads): median s (min s), peak MiB", "",
                "| views | " + " | ".join(labels) + " | " + " | ".join(f"speed-up {m}" for m in merged)
                + " | " + " | ".join(f"memory {m} / exact" for m in merged) + " | load before / after | status |",
                "|---:|" + "---:|" * (len(labels) + 2 * len(merged)) + "---|---|"]
        for r in payload["speed"]:
            ms = r.get("modes", {})
            cells = [f"{_f(ms[k].get('median_s'), '.3f')} ({_f(ms[k].get('min_s'), '.3f')}), "
                     f"{_f(ms[k].get('peak_mib'), '.0f')}" if k in ms else "-" for k in labels]
            sp = [_f(ms.get(k, {}).get("speedup"), ".2f") for k in merged]
            mr = [_f(ms.get(k, {}).get("memory_ratio"), ".2f") for k in merged]
            lb = r.get("loadavg_before"), r.get("loadavg_after")
            load = f"{lb[0][0]:.2f} / {lb[1][0]:.2f}" if lb[0] and lb[1] else "-"
            out.append(f"| {r['views']} | " + " | ".join(cells + sp + mr) + f" | {load} | {r['status']} |")
        out.append("")
    if payload.get("eval"):
        e = payload["eval"]
        out += [f"### (c) trained weights ({Path(payload['args']['config']).name}), test split, "
                f"{e[0]['views']} views per scene", "",
                "| mode | scenes | " + " | ".join(EVAL_SHOWN) + " | test s |",
                "|---|---:|" + "---:|" * (len(EVAL_SHOWN) + 1)]
        for r in e:
            if r["status"] != "ok":
                out.append(f"| {r['mode']} | - | " + " | ".join("-" for _ in EVAL_SHOWN) + f" | {r['status']} |")
                continue
            out.append(f"| {r['mode']} | {r['scenes']} | " + " | ".join(_f(r.get(k), ".4f") for k in EVAL_SHOWN)
                       + f" | {r['test_seconds']:.0f} |")
        out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- many_view.json: python -m benchmarks.many_view --readme -->", "<!-- /many_view.json -->"


def readme_table(payload: dict) -> str:
    return f"{BEGIN}\n{tables(payload).rstrip()}\n{END}"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.readme:
        fill_block_from_json(BEGIN, END, readme_table, a.json, ROOT)
        return 0
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    modes = specs(a)
    torch.manual_seed(a.seed)
    model = IGGTModel.from_preset(a.preset).eval().to(device)
    patch = model.backbone.patch_size
    if a.size[0] % patch or a.size[1] % patch:
        raise SystemExit(f"--size {a.size[0]}x{a.size[1]} is not a multiple of the patch size {patch}")
    payload = {"preset": a.preset, "size": f"{a.size[0]}x{a.size[1]}", "device": str(device), "modes": modes,
               "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
               "argv": sys.argv, "environment": environment(device, ROOT),
               "memory": ("torch.cuda.max_memory_allocated (incl. weights)" if device.type == "cuda"
                          else "peak RSS increase over the pre-run baseline (excl. weights)"),
               "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if a.weights is not None:  # the file's name only: its path names someone's machine
        payload["args"]["weights"] = Path(a.weights).name
        payload["argv"] = [Path(v).name if v == a.weights else v for v in sys.argv]
    print(f"# many-view benchmark: {a.preset} {payload['size']} on {device}, {torch.get_num_threads()} threads, "
          f"load average {payload['environment']['loadavg']}", flush=True)

    def keep_earlier_parts() -> None:
        # read when saving, so a part another run finishes meanwhile is kept too
        if not (a.update and Path(a.json).exists()):
            return
        old = json.loads(Path(a.json).read_text())
        if (old.get("preset"), old.get("size")) != (payload["preset"], payload["size"]):
            raise SystemExit(f"--update: {a.json} holds {old.get('preset')} {old.get('size')}, not this run's")
        for part in ("error", "speed", "eval"):
            if part in old and part in a.skip:   # each kept part keeps the run information it was made with
                payload[part] = old[part]
                info = {k: old.get(k) for k in ("argv", "timestamp", "environment", "args")}
                info.update(old.get("kept_from_earlier_runs", {}).get(part, {}))
                payload.setdefault("kept_from_earlier_runs", {})[part] = info

    def save() -> None:
        keep_earlier_parts()
        payload.update(total_s=time.perf_counter() - _T0, loadavg_end=_load())
        write_json(a.json, payload)

    if "error" not in a.skip:
        payload["error"] = error_part(a, model, device)
        save()
    if "speed" not in a.skip:
        payload["speed"] = speed_part(a, model, device)
        save()
    if a.weights is not None and "eval" not in a.skip:
        payload["eval"] = eval_part(a)
        save()
    print()
    print(tables(payload))
    print(f"JSON: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
