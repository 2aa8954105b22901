"""Forward-pass benchmark of an :class:`~iggt_lightning.model.IGGTModel` preset.

Builds one preset with random weights (no checkpoint, no network), puts it in eval mode and times
``model(images)`` under ``torch.no_grad()`` for every (image size, view count) pair, then prints a
markdown table and writes the results as JSON.

Usage (from the repository root)::

    python -m benchmarks.forward --preset tiny --views 1 2 4 8 --sizes 224x224 336x504
    python -m benchmarks.forward --preset iggt-large --device cuda --dtype bf16 \\
        --views 1 8 32 --sizes 518x518 --time-budget 600

    python -m benchmarks.forward --preset tiny --views 8 16 32 64 128 256 --repeats 1 \\
        --plot benchmarks/forward_views.png --json benchmarks/forward_views.json

Options: ``--preset`` (tiny), ``--views`` (1 2 4 8 16 32), ``--sizes`` HxW, multiples of the patch
size 14 (224x224), ``--batch`` (1), ``--device`` (cuda if available, else cpu), ``--dtype`` fp32|bf16
(bf16 = ``torch.autocast``; the heads run in fp32 anyway, as in the model), ``--repeats`` timed runs
(3), ``--warmup`` untimed runs (1), ``--json`` output path
(``benchmarks/results/forward_<preset>_<device>.json``), ``--time-budget`` seconds, ``--threads``
(``torch.set_num_threads``), ``--official CHECKOUT`` (also time the official model classes from a local
checkout of lifuguan/IGGT_official, with the same weights: iggt_lightning/benchmarking/official.py; the official forward fails
above 12 views, which the table then shows as an error), ``--plot PNG`` (time and memory against views, one
line per model and size; needs matplotlib, the ``bench`` extra).

``MiB/view`` is the growth of the peak memory per extra view since the previous view count of the same size
and model: constant when memory is linear in views.

Timing: wall time of one forward call (``time.perf_counter``; on CUDA bracketed by
``torch.cuda.synchronize``). The table gives the median and the minimum over ``--repeats`` runs and
``views/s`` = batch * views / median.

Order and budget: one untimed single-view forward of the smallest size runs
first (one-time initialisation would otherwise show up in the first configuration). Configurations run from the cheapest to the most expensive (batch * views * H * W),
the table lists them by size (as given) and view count. Once the elapsed time since the script
started exceeds ``--time-budget``, every configuration not yet started is reported as skipped; a
configuration already running stops after its current run, keeping at least one timed run (its
status then says how many of the requested runs it has). After an out-of-memory error at some view
count, the larger view counts of the same size are skipped.

Memory (``peak MiB``) means different things on the two devices:

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``torch.cuda.reset_peak_memory_stats()`` at the
  start of each configuration: the peak of memory held by PyTorch tensors, *including* the weights
  and the input (the JSON also gives ``baseline_mib``, the allocated memory before the first run, so
  the activation peak is ``peak_mib - baseline_mib``). The caching allocator's reserved-but-free
  memory is not counted (``peak_reserved_mib`` in the JSON is).
* CPU: the peak increase of the process's resident set size (RSS) over its value just before the
  configuration's first (warm-up) run: ``peak - baseline`` of ``VmRSS`` from ``/proc/self/status``,
  sampled by a background thread every ~5 ms, combined with the kernel's exact high-water mark
  ``VmHWM`` where it can be reset per configuration (``/proc/self/clear_refs`` = 5). The weights and
  the input are therefore *not* included (their RSS is in ``baseline_mib``). Before each baseline the
  script runs ``gc.collect()`` and glibc's ``malloc_trim(0)`` so memory freed by earlier
  configurations does not hide this one's growth; RSS also counts allocator slack and thread
  stacks, so read it as an upper-ish estimate of the activation memory, accurate to a few MiB.
  Without ``/proc`` (not Linux) it falls back to ``resource.getrusage().ru_maxrss``, a lifetime peak
  that cannot be reset, so only configurations that raise it get a meaningful value.

Out-of-memory errors (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` saying "out of memory"
/ "can't allocate memory") are reported as ``OOM`` instead of ending the script; other errors are
reported as ``error`` with their message in the JSON.

The JSON (written atomically: a temporary file in the same folder, then ``os.replace``) holds the
arguments, the environment (torch/python versions, platform, CPU count, threads, GPU name, git
commit), the preset's parameter count and, per configuration, every timed run.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from iggt_lightning.benchmarking import (MIB, CpuPeakRSS, environment, fill_block_from_json, is_oom, parse_size,
                                         positive_int, sync)
from iggt_lightning.fileio import write_json
from iggt_lightning.model import PRESETS, IGGTModel

_REPO = Path(__file__).resolve().parent.parent
FIXTURES = _REPO / "tests" / "data" / "reference"   # the parity fixtures the small official presets are built from
_T0 = time.perf_counter()


# ----------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time the IGGTModel forward pass over image sizes and view counts.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--views", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="views per sample (S)")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(224, 224)], help="image sizes HxW")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration")
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/forward_<preset>_<device>.json)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="skip the configurations not yet started once this much time has elapsed")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official", default=None, metavar="CHECKOUT",
                   help="also time the official classes from this local checkout of lifuguan/IGGT_official")
    p.add_argument("--plot", default=None, metavar="PNG", help="write a plot of time and memory against views")
    p.add_argument("--readme", action="store_true",
                   help="only rewrite README's views table (and --plot) from --json (default benchmarks/forward_views.json)")
    args = p.parse_args(argv)
    args.views = sorted(set(args.views))
    args.sizes = list(dict.fromkeys(args.sizes))
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


# ----------------------------------------------------------------------------- benchmark
def _over_budget(args) -> bool:
    return args.time_budget is not None and time.perf_counter() - _T0 > args.time_budget


def run_config(model, args, device, H: int, W: int, S: int) -> dict:
    res = {"height": H, "width": W, "views": S, "batch": args.batch}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext())
    gen = torch.Generator().manual_seed(args.seed)
    times: list[float] = []
    cpu_mem = None
    x = None
    try:
        x = torch.rand(args.batch, S, 3, H, W, generator=gen).to(device)
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            res["baseline_mib"] = torch.cuda.memory_allocated(device) / MIB
        else:
            cpu_mem = CpuPeakRSS()
            cpu_mem.start()
        with torch.no_grad(), autocast:
            for i in range(args.warmup + args.repeats):
                sync(device)
                t = time.perf_counter()
                out = model(x)
                sync(device)
                dt = time.perf_counter() - t
                del out
                if i >= args.warmup:
                    times.append(dt)
                if times and i < args.warmup + args.repeats - 1 and _over_budget(args):
                    break
        res["status"] = "ok" if len(times) == args.repeats else f"ok ({len(times)}/{args.repeats} runs)"
    except Exception as err:  # noqa: BLE001 - reported, not raised
        if is_oom(err):
            res["status"] = "OOM"
        else:
            res["status"] = "error"
        res["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500]
    finally:
        out = None
        if cpu_mem is not None:
            peak, base = cpu_mem.stop()
            res["peak_mib"] = peak / MIB
            res["baseline_mib"] = base / MIB
            res["memory_method"] = cpu_mem.method
        del x
        gc.collect()
        if device.type == "cuda":
            res["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
            res["peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / MIB
            torch.cuda.empty_cache()
    if times:
        med = statistics.median(times)
        res.update(times_s=times, median_s=med, min_s=min(times), views_per_s=args.batch * S / med)
    return res


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _measured_series(results: list[dict]) -> dict[tuple, list[dict]]:
    """The timed rows with a peak memory, grouped by (model, height, width), each group by view count."""
    series: dict = {}
    for r in results:
        if r.get("peak_mib") is not None and "median_s" in r:
            series.setdefault((r.get("model", "ours"), r["height"], r["width"]), []).append(r)
    return {k: sorted(rows, key=lambda r: r["views"]) for k, rows in sorted(series.items())}


def add_memory_slopes(results: list[dict]) -> None:
    """``mib_per_view``: peak-memory growth per extra view since the previous view count (same model, size)."""
    for rows in _measured_series(results).values():
        for prev, r in zip(rows, rows[1:]):
            r["mib_per_view"] = (r["peak_mib"] - prev["peak_mib"]) / (r["views"] - prev["views"])


def memory_fits(results: list[dict], min_points: int = 3) -> list[dict]:
    """Least-squares line peak_mib = base + per_view * views per (model, size) with ``min_points`` measured
    counts, and its largest residual: how far the measured peaks are from growing by a constant per view."""
    fits = []
    for (model, h, w), rows in _measured_series(results).items():
        if len(rows) < min_points:
            continue
        x = torch.tensor([float(r["views"]) for r in rows], dtype=torch.float64)
        y = torch.tensor([r["peak_mib"] for r in rows], dtype=torch.float64)
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        base = float(y.mean() - slope * x.mean())
        resid = (y - (base + slope * x)).abs()
        fits.append({"model": model, "size": f"{h}x{w}", "views": [int(v) for v in x.tolist()],
                     "mib_per_view": slope, "base_mib": base, "max_residual_mib": float(resid.max()),
                     "max_residual_of_peak": float((resid / y).max())})
    return fits


def table(results: list[dict]) -> str:
    lines = ["| model | size | views | median s | min s | views/s | peak MiB | MiB/view | status |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.get('model', 'ours')} | {r['height']}x{r['width']} | {r['views']} | "
                     f"{_fmt(r.get('median_s'), '.4f')} | {_fmt(r.get('min_s'), '.4f')} | "
                     f"{_fmt(r.get('views_per_s'), '.2f')} | {_fmt(r.get('peak_mib'), '.1f')} | "
                     f"{_fmt(r.get('mib_per_view'), '.1f')} | {r['status']} |")
    return "\n".join(lines)


def plot_payload(payload: dict, path: Path) -> None:
    """:func:`plot` of a run's JSON payload, titled by its settings."""
    plot(payload["results"], path, f"{payload['preset']}, {payload['device']}, {payload['dtype']}, "
         f"{payload['threads']} threads, torch {payload['torch']}")


def plot(results: list[dict], path: Path, title: str) -> None:
    """Time against views (log-log) and peak memory against views (linear axes, so that a constant cost per
    view is a straight line; the least-squares line of each series is drawn dashed), one series per model and
    size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    fits = {(f["model"], f["size"]): f for f in memory_fits(results)}
    for (model, h, w), rows in _measured_series(results).items():
        views = [r["views"] for r in rows]
        style = dict(marker="o", linestyle="-" if model == "ours" else "none", label=f"{model} {h}x{w}")
        line_t, = ax_t.plot(views, [r["median_s"] for r in rows], **style)
        ax_m.plot(views, [r["peak_mib"] for r in rows], **{**style, "linestyle": "none"})
        fit = fits.get((model, f"{h}x{w}"))
        if fit:
            ends = [0, views[-1]]
            ax_m.plot(ends, [fit["base_mib"] + fit["mib_per_view"] * v for v in ends], "--", color=line_t.get_color(),
                      label=f"fit: {fit['base_mib']:.0f} + {fit['mib_per_view']:.1f}/view MiB")
    ax_t.set_xscale("log", base=2)
    ax_t.set_yscale("log")
    ax_m.set_xlim(left=0)
    ax_m.set_ylim(bottom=0)
    for ax, label in ((ax_t, "forward time (s, median)"), (ax_m, "peak memory (MiB)")):
        ax.set_xlabel("views")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


BEGIN, END = "<!-- forward_views.json: python -m benchmarks.forward --readme -->", "<!-- /forward_views.json -->"


def readme_table(payload: dict) -> str:
    env = payload["environment"]
    note = (f"{payload['preset']}, {payload['dtype']}, {payload['device']}, {env['threads']} threads, "
            f"torch {env['torch']}, {payload['args']['repeats']} run(s) per point; {payload['timestamp'][:10]}")
    fits = "".join(
        f"\n\nLeast-squares line through {f['model']} {f['size']} at {f['views'][0]}-{f['views'][-1]} views: peak "
        f"≈ {f['base_mib']:.0f} MiB + {f['mib_per_view']:.1f} MiB × views; the farthest point is "
        f"{f['max_residual_mib']:.0f} MiB ({100 * f['max_residual_of_peak']:.0f} % of its peak) off the line."
        for f in memory_fits(payload["results"]))
    return f"{BEGIN}\n{note}\n\n{table(payload['results'])}{fits}\n{END}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme:
        source = Path(args.json or _REPO / "benchmarks" / "forward_views.json")
        fill_block_from_json(BEGIN, END, readme_table, source, _REPO)
        if args.plot:  # redraw the plot from the same JSON
            plot_payload(json.loads(source.read_text()), Path(args.plot))
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.manual_seed(args.seed)

    t = time.perf_counter()
    models = {}
    if args.official:
        from iggt_lightning.benchmarking import official as official_lib

        if args.preset not in official_lib.PRESETS:
            raise SystemExit(f"--official: preset {args.preset!r} has no official counterpart; "
                             f"expected one of {official_lib.PRESETS}")
        official, ours = official_lib.build_pair(args.preset, args.official, FIXTURES, seed=args.seed)
        models = {"ours": ours.to(device), "official": official.to(device)}
    else:
        models = {"ours": IGGTModel.from_preset(args.preset).eval().to(device)}
    model = models["ours"]
    build_s = time.perf_counter() - t
    patch = model.backbone.patch_size
    bad = [f"{h}x{w}" for h, w in args.sizes if h % patch or w % patch]
    if bad:
        raise SystemExit(f"sizes {bad} are not multiples of the patch size {patch}")
    n_params = sum(p.numel() for p in model.parameters())
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    env = environment(device, _REPO)

    header = {
        "preset": args.preset,
        "parameters": n_params,
        "backbone_parameters": n_backbone,
        "heads": list(model.head_order),
        "device": str(device) + (f" ({env['gpu']})" if "gpu" in env else ""),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(f"# IGGT forward benchmark: preset {args.preset}")
    print(f"parameters: {n_params:,} ({n_params / 1e6:.1f} M; backbone {n_backbone / 1e6:.1f} M) "
          f"heads: {', '.join(model.head_order)}")
    print(f"device: {header['device']}  dtype: {args.dtype}  torch: {torch.__version__}  "
          f"threads: {header['threads']}  batch: {args.batch}  warmup: {args.warmup}  repeats: {args.repeats}")
    mem_note = ("torch.cuda.max_memory_allocated (incl. weights)" if device.type == "cuda"
                else "peak RSS increase over the pre-run baseline (excl. weights)")
    load = env.get("loadavg")
    print(f"peak MiB = {mem_note}; model built in {build_s:.1f} s"
          + (f"; load average {load[0]:.2f} on {env['cpu_count']} CPUs" if load else ""))
    print(flush=True)

    # Run from the cheapest to the most expensive; report by size (as given), then views.
    configs = [(h, w, s) for (h, w) in args.sizes for s in args.views]
    order = sorted(configs, key=lambda c: (args.batch * c[2] * c[0] * c[1], configs.index(c)))
    if order:
        # One untimed forward of the cheapest configuration first, so one-time costs (thread pools,
        # kernel selection, allocator growth) are not charged to the first configuration's memory.
        h, w, _ = order[0]
        try:
            with torch.no_grad(), (torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16"
                                   else nullcontext()):
                for m in models.values():
                    m(torch.rand(1, 1, 3, h, w, device=device))
            sync(device)
        except Exception as err:  # noqa: BLE001 - the configuration itself will report it
            print(f"  global warm-up failed: {type(err).__name__}: {err}", file=sys.stderr)
    done: dict[tuple[str, int, int, int], dict] = {}
    failed_at: dict[tuple[str, int, int], tuple[int, str]] = {}
    for h, w, s in order:
        for name, m in models.items():
            key = (name, h, w, s)
            base = {"model": name, "height": h, "width": w, "views": s, "batch": args.batch}
            if _over_budget(args):
                done[key] = dict(base, status="skipped (time budget)")
            elif (name, h, w) in failed_at and s > failed_at[(name, h, w)][0]:
                at, why = failed_at[(name, h, w)]
                done[key] = dict(base, status=f"skipped ({why} at {at} views)")
            else:
                r = dict(run_config(m, args, device, h, w, s), model=name)
                done[key] = r
                if r["status"] in ("OOM", "error"):   # more views would fail the same way
                    failed_at[(name, h, w)] = (s, r["status"])
                msg = (f"{r['median_s']:.4f} s median" if "median_s" in r else r.get("error", ""))
                print(f"  {name} {h}x{w} x{s}: {r['status']}  {msg}  (elapsed {time.perf_counter() - _T0:.0f} s)",
                      file=sys.stderr, flush=True)
    results = [done[(name, *c)] for c in configs for name in models]
    add_memory_slopes(results)

    print(table(results))
    path = Path(args.json) if args.json else _REPO / "benchmarks" / "results" / f"forward_{args.preset}_{device.type}.json"
    payload = dict(header, args={k: (v if k != "sizes" else [f"{h}x{w}" for h, w in v]) for k, v in vars(args).items()},
                   memory=mem_note, build_s=build_s, total_s=time.perf_counter() - _T0,
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   argv=sys.argv, environment=env,
                   loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None, results=results)
    write_json(path, payload)
    print(f"\nJSON: {path}")
    if args.plot:
        plot_payload(payload, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
