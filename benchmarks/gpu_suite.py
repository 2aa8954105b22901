"""The driver of ``benchmarks/gpu_suite.sh``: one timed pass over what a GPU changes, written as one JSON file.

Steps (each a function below; the sizes and presets are arguments, filled in from a *profile*):

1. ``forward``: aggregator-only (``model.backbone(images, layers=model.token_layers)``, the layers the heads
   read) and full forward (``model(images)``) of each ``--presets`` model with random weights, eval, inference
   mode, bf16 autocast, at ``--frames`` x ``--size``; wall time (CUDA-synchronised; the median of up to
   ``--repeats`` timed runs after ``--warmup`` untimed ones) and peak memory, beside VGGT's published H100
   table (:data:`PUBLISHED`) with ratios ours / published.
2. ``max_frames``: the largest frame count whose full forward of ``--fit-preset`` fits in memory, with exact
   global attention and with ``--merged-backbone`` (the merged many-view attention; "unavailable" where the
   model does not take that option), by doubling from ``--fit-start`` and then bisection. Each probe is
   bounded by ``--probe-limit`` seconds (a pre-forward hook on every module aborts it), a probe predicted to
   take longer is not started, OOM is caught and the allocator cache emptied between probes.
3. ``train_step``: forward + backward + AdamW step (bf16 autocast, gradient checkpointing) of the model of
   ``--train-config`` at ``--train-frames`` x ``--train-size``, with that config's loss (the heads' loss terms
   and weights, ``IGGTLitModule.compute_losses``) on a synthetic scene; ``--train-loss sum-of-means`` (or a
   failing loss) uses the sum of the outputs' means instead, which is enough to time a step and is recorded.
4. ``fsdp_fit``: ``iggt fit --config configs/synthetic_tiny.yaml --config configs/strategies/fsdp.yaml`` on one
   device (FSDP2 via Lightning's ModelParallelStrategy, ``data_parallel_size 1``) for ``--fsdp-steps`` steps,
   validation off, in a subprocess with a temporary root folder.

Profiles: ``gpu`` (the real sizes, default with CUDA) and ``cpu`` (a miniature of every step: nano/mini models,
28x28 images and 1-2 frames, a 5 MiB memory cap for the search, the FSDP fit at 56x56 on gloo; default without
CUDA or with ``--cpu``). A profile only
sets defaults: every size is a flag, so both run the same code.

Time budget: ``--budget`` seconds (default 450, or ``$IGGT_GPU_SUITE_BUDGET``), counted from
``$IGGT_SUITE_T0`` (the shell script's start) or this process's start. The steps run in the order forward,
train_step, fsdp_fit, max_frames (the open-ended search last, so it gets what the others leave) and each gets a
share of what is left (50 %, 10 %, 15 %, 25 %, renormalised over the steps still to run, so what one step
leaves goes to the next); inside a step nothing is started past its share or when its predicted time exceeds
what is left; a step not started at all is "skipped" with the reason. The JSON is rewritten (atomically) after
every step, so an interrupted run leaves the steps done so far.

Step 2 on a real GPU: a full forward of iggt-large near its memory limit (by an estimate from the code, some
hundreds of frames on 80 GB) takes minutes, global attention being quadratic in the frame count, more than
the 8-minute budget leaves, so the suite's answer is usually a measured lower bound ("fits N", the search
stopped by the probe limit or the budget) plus ``predicted_max_frames``, a straight line through the measured
peaks extended to the free GPU memory. For a measured bracket give it the time:
``--steps max_frames --budget 1800 --probe-limit 400`` (``--fit-memory-mib 80000`` on an H200 stands in for an
80 GB H100).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, *including* the weights
(fp32 here) and the input (``baseline_bytes`` is what was allocated before the run). On CPU the peak increase
of the process's RSS over its value before the run (``iggt_lightning.benchmarking.CpuPeakRSS``), *excluding*
the weights. GB = 10^9 bytes.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from iggt_lightning.benchmarking import MIB, CpuPeakRSS, environment, is_oom, parse_size, positive_int, sync
from iggt_lightning.fileio import write_json
from iggt_lightning.model import PRESETS, IGGTModel

_REPO = Path(__file__).resolve().parent.parent
GB = 1e9
STEPS = ("forward", "max_frames", "train_step", "fsdp_fit")  # as reported
# As run: the open-ended search last, so it gets whatever the steps of a predictable cost leave.
RUN_ORDER = ("forward", "train_step", "fsdp_fit", "max_frames")
STEP_TITLES = {"forward": "1 forward", "max_frames": "2 max frames", "train_step": "3 train step",
               "fsdp_fit": "4 FSDP2 fit"}
# Share of the remaining budget each step gets (renormalised over the steps still to run).
STEP_WEIGHTS = {"forward": 0.50, "train_step": 0.10, "fsdp_fit": 0.15, "max_frames": 0.25}

# VGGT's published runtime / memory table, stored as data (not re-typed anywhere else).
PUBLISHED = {
    "source": "https://github.com/facebookresearch/vggt/blob/eb66e2041daeb32da50136686436ba9b04678103/README.md"
              "#runtime-and-gpu-memory",
    "section": "facebookresearch/vggt README.md, 'Runtime and GPU Memory'",
    "what": "VGGT-1B aggregator: the README says 'We benchmark the runtime and GPU memory usage of VGGT's "
            "aggregator'; the heads are not included. The paper (arXiv:2503.11651, Table 9 and its text) adds "
            "that the camera head costs about 5 % of that runtime and a DPT head about 0.03 s and 0.2 GB per frame",
    "gpu": "1x NVIDIA H100",
    "attention": "Flash Attention 3 (the README: faster than the default Flash Attention 2 'while maintaining "
                 "almost the same memory usage')",
    "resolution": "336x518 (the paper's Table 9; the README names none)",
    "memory_unit": "GB as printed; the README does not say 10^9 or 2^30 bytes, the ratios here use 10^9",
    "frames": [1, 2, 4, 8, 10, 20, 50, 100, 200],
    "time_s": [0.04, 0.05, 0.07, 0.11, 0.14, 0.31, 1.04, 3.12, 8.75],
    "memory_gb": [1.88, 2.07, 2.45, 3.23, 3.63, 5.58, 11.41, 21.15, 40.63],
}
MERGED_BACKBONE = '{"global_attention": {"kind": "merged", "ratio": 0.9}}'

PROFILES = {
    "gpu": dict(
        json="benchmarks/gpu_suite.json", presets=["vggt-large", "iggt-large"], frames=[1, 10, 50, 100, 200],
        size=(336, 518), dtype="bf16", repeats=3, warmup=1, long_run=2.0, config_seconds=10.0,
        fit_preset="iggt-large", fit_size=(336, 518), fit_start=128, fit_max=8192, fit_resolution=0.1,
        probe_limit=60.0, fit_memory_mib=None,
        train_config="configs/iggt_large.yaml", train_preset=None, train_frames=8, train_size=(336, 518),
        train_batch=1, train_steps=3,
        fsdp_accelerator="gpu", fsdp_steps=2, fsdp_size=None, fsdp_views=None, fsdp_batch=None,
        fsdp_num_train=None, fsdp_workers=None, fsdp_min_seconds=25.0),
    "cpu": dict(
        json="benchmarks/results/gpu_suite_cpu.json", presets=["nano", "mini"], frames=[1, 2],
        size=(28, 28), dtype="bf16", repeats=2, warmup=1, long_run=2.0, config_seconds=3.0,
        fit_preset="nano", fit_size=(28, 28), fit_start=1, fit_max=8, fit_resolution=0.25,
        probe_limit=5.0, fit_memory_mib=5,
        train_config="configs/synthetic_tiny.yaml", train_preset=None, train_frames=2, train_size=(28, 28),
        train_batch=1, train_steps=2,
        fsdp_accelerator="cpu", fsdp_steps=2, fsdp_size=(56, 56), fsdp_views=2, fsdp_batch=2,
        fsdp_num_train=8, fsdp_workers=0, fsdp_min_seconds=10.0),
}


# ----------------------------------------------------------------------------- arguments
def _size(text: str) -> tuple[int, int]:
    h, w = parse_size(text)                  # the shared HxW parser, plus the patch grid the models need
    if h % 14 or w % 14:
        raise argparse.ArgumentTypeError(f"size must be positive multiples of the patch size 14, got {text!r}")
    return h, w


def _steps(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STEPS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown step(s) {bad}; expected a comma list of {', '.join(STEPS)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GPU suite: forward vs VGGT's table, max frames, a training step, "
                                "a 2-step FSDP2 fit; one JSON and one Markdown table. Flags left out come from "
                                "the profile (gpu with CUDA, cpu otherwise).")
    a = p.add_argument
    a("--profile", choices=("auto", "gpu", "cpu"), default="auto", help="default sizes (auto: gpu with CUDA)")
    a("--cpu", action="store_true", help="same as --profile cpu: the miniature of every step, on the CPU")
    a("--budget", type=float, default=float(os.environ.get("IGGT_GPU_SUITE_BUDGET", 450)),
      help="total seconds (default $IGGT_GPU_SUITE_BUDGET or 450); steps not started in time are skipped")
    a("--steps", type=_steps, default=list(STEPS), help=f"comma list of steps to run ({','.join(STEPS)})")
    a("--json", default=None,
      help="output (gpu: benchmarks/gpu_suite.json; cpu: benchmarks/results/gpu_suite_cpu.json)")
    a("--seed", type=int, default=0)
    a("--threads", type=positive_int, default=None, help="torch.set_num_threads here and --threads of the FSDP fit "
      "(default: torch's own; the fit: its config's)")
    g = p.add_argument_group("1 forward")
    g.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=None)
    g.add_argument("--frames", type=positive_int, nargs="+", default=None)
    g.add_argument("--size", type=_size, default=None, help="HxW of steps 1")
    g.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="bf16 = torch.autocast (steps 1-3)")
    g.add_argument("--repeats", type=positive_int, default=None, help="timed runs per configuration at most")
    g.add_argument("--warmup", type=int, default=None, help="untimed runs per configuration")
    g.add_argument("--long-run", type=float, default=None, metavar="S", help="after a configuration whose median "
                   "exceeded this, the next larger one of the series gets no warm-up run")
    g.add_argument("--config-seconds", type=float, default=None, metavar="S", help="no further timed run of a "
                   "configuration once its timed runs add up to this (at least one runs)")
    g = p.add_argument_group("2 max frames")
    g.add_argument("--fit-preset", choices=sorted(PRESETS), default=None)
    g.add_argument("--fit-size", type=_size, default=None)
    g.add_argument("--fit-start", type=positive_int, default=None, help="first frame count of the doubling")
    g.add_argument("--fit-max", type=positive_int, default=None, help="the doubling stops above this")
    g.add_argument("--fit-resolution", type=float, default=None, help="bisection stops when the bracket is "
                   "within this fraction of the largest fitting count")
    g.add_argument("--probe-limit", type=float, default=None, metavar="S", help="seconds per probe at most")
    g.add_argument("--fit-memory-mib", type=float, default=None, help="memory cap (a probe above it counts as "
                   "not fitting; on CUDA also set as the allocator's limit); default: the whole GPU / 5 MiB of "
                   "RSS growth on CPU")
    g.add_argument("--merged-backbone", default=MERGED_BACKBONE, help="backbone overrides of the merged "
                   "many-view attention variant (JSON)")
    g = p.add_argument_group("3 train step")
    g.add_argument("--train-config", default=None, help="the config whose model section (and loss) is trained")
    g.add_argument("--train-preset", default=None, help="overrides the config's preset")
    g.add_argument("--train-frames", type=positive_int, default=None)
    g.add_argument("--train-size", type=_size, default=None)
    g.add_argument("--train-batch", type=positive_int, default=None)
    g.add_argument("--train-steps", type=positive_int, default=None, help="steps run (the first is reported as "
                   "warm-up: it allocates the optimiser state)")
    g.add_argument("--train-loss", choices=("auto", "model", "sum-of-means"), default="auto",
                   help="model: the config's loss; auto: that, else the sum of the outputs' means")
    g.add_argument("--no-checkpointing", action="store_true", help="train without gradient checkpointing")
    g = p.add_argument_group("4 FSDP2 fit")
    g.add_argument("--fsdp-accelerator", choices=("gpu", "cpu"), default=None)
    g.add_argument("--fsdp-steps", type=positive_int, default=None)
    g.add_argument("--fsdp-precision", default=None, help="trainer.precision override (default: the config's)")
    g.add_argument("--fsdp-size", type=_size, default=None, help="data image size override")
    g.add_argument("--fsdp-views", type=positive_int, default=None)
    g.add_argument("--fsdp-batch", type=positive_int, default=None)
    g.add_argument("--fsdp-num-train", type=positive_int, default=None)
    g.add_argument("--fsdp-workers", type=int, default=None)
    g.add_argument("--fsdp-min-seconds", type=float, default=None, help="not started with less time than this left")
    args = p.parse_args(argv)
    if args.cpu:
        args.profile = "cpu"
    if args.profile == "auto":
        args.profile = "gpu" if torch.cuda.is_available() else "cpu"
    if args.profile == "gpu" and not torch.cuda.is_available():
        p.error("--profile gpu needs CUDA (use --cpu for the miniature)")
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.frames = sorted(set(args.frames))
    gpu_json = (_REPO / PROFILES["gpu"]["json"]).resolve()
    args.json = (Path(args.json) if Path(args.json).is_absolute() else _REPO / args.json).resolve()
    if args.profile == "cpu" and args.json == gpu_json:
        p.error(f"a CPU run may not write the GPU results {gpu_json}; choose another --json")
    if args.budget <= 0:
        p.error("--budget must be positive")
    return args


# ----------------------------------------------------------------------------- clock and helpers
class Clock:
    def __init__(self, budget: float) -> None:
        try:
            self.t0 = float(os.environ["IGGT_SUITE_T0"])
        except (KeyError, ValueError):
            self.t0 = time.time()
        self.budget = budget

    def elapsed(self) -> float:
        return time.time() - self.t0

    def end(self) -> float:
        return self.t0 + self.budget


class ProbeTimeout(Exception):
    pass


def _cleanup(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def _err(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:400]


class Memory:
    """Peak memory of what runs between start() and stop(): CUDA allocator peak or CPU RSS growth."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = None

    def start(self) -> None:
        if self.device.type == "cuda":
            _cleanup(self.device)
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.cpu = CpuPeakRSS()
            self.cpu.start()

    def stop(self) -> dict:
        if self.device.type == "cuda":
            sync(self.device)
            return {"peak_bytes": torch.cuda.max_memory_allocated(self.device), "baseline_bytes": self.baseline,
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device)}
        peak, base = self.cpu.stop()
        self.cpu = None
        return {"peak_bytes": peak, "baseline_bytes": base}

    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated, incl. the (fp32) weights and the input"
        return "peak RSS increase over the value before the run (iggt_lightning.benchmarking.CpuPeakRSS), excl. weights"


def build_model(preset: str, device: torch.device, **overrides) -> tuple[IGGTModel, float]:
    """The preset with random weights, created on ``device`` directly (a 1.3 B model builds in seconds there)."""
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = IGGTModel.from_preset(preset, **overrides)
    return model.to(device).eval(), time.perf_counter() - t


def _predict(history: list[tuple[int, float]], S: int) -> float | None:
    """Seconds of one run at S frames from earlier (frames, seconds): a power law through the last two points
    (exponent clamped to [1, 2]; 2, the quadratic global attention, from a single point)."""
    if not history:
        return None
    s1, t1 = history[-1]
    e = 2.0
    if len(history) >= 2:
        s0, t0 = history[-2]
        if s1 > s0 and t0 > 0 and t1 > 0:
            e = min(2.0, max(1.0, math.log(t1 / t0) / math.log(s1 / s0)))
    return t1 * (S / s1) ** e


def published_at(frames: int) -> tuple[float | None, float | None]:
    if frames in PUBLISHED["frames"]:
        i = PUBLISHED["frames"].index(frames)
        return PUBLISHED["time_s"][i], PUBLISHED["memory_gb"][i]
    return None, None


# ----------------------------------------------------------------------------- step 1: forward
def run_config(fn, device: torch.device, args, warmup: int, deadline: float) -> dict:
    """Time ``fn()`` (warm-up runs, then timed runs) and measure its peak memory."""
    res: dict = {"warmup_runs": warmup}
    mem = Memory(device)
    times: list[float] = []
    mem.start()
    try:
        for i in range(warmup + args.repeats):
            sync(device)
            t = time.perf_counter()
            out = fn()
            sync(device)
            dt = time.perf_counter() - t
            del out
            if i < warmup:
                res.setdefault("warmup_s", []).append(dt)
                continue
            times.append(dt)
            if sum(times) >= args.config_seconds or time.time() + dt > deadline:
                break
        res["status"] = "ok" if len(times) == args.repeats else f"ok ({len(times)}/{args.repeats} runs)"
    except Exception as err:  # noqa: BLE001 - reported, not raised
        res["status"] = "OOM" if is_oom(err) else "error"
        res["error"] = _err(err)
    finally:
        res.update(mem.stop())
        _cleanup(device)
    if times:
        res.update(times_s=times, median_s=statistics.median(times), min_s=min(times))
    return res


def step_forward(args, device: torch.device, deadline: float, done: dict) -> dict:
    H, W = args.size
    rows: list[dict] = []
    models: dict = {}
    for pi, preset in enumerate(args.presets):
        sub_deadline = time.time() + (deadline - time.time()) / (len(args.presets) - pi)
        configs = [(S, mode) for S in args.frames for mode in ("aggregator", "full")]
        base = lambda S, mode: {"preset": preset, "mode": mode, "frames": S, "height": H, "width": W}  # noqa: E731
        if time.time() > sub_deadline:
            rows += [dict(base(S, m), status="skipped (time budget)") for S, m in configs]
            continue
        try:
            model, build_s = build_model(preset, device)
        except Exception as err:  # noqa: BLE001
            rows += [dict(base(S, m), status="error", error=f"building the model: {_err(err)}") for S, m in configs]
            continue
        models[preset] = {"parameters": sum(p.numel() for p in model.parameters()),
                          "backbone_parameters": sum(p.numel() for p in model.backbone.parameters()),
                          "heads": list(model.head_order), "token_layers": sorted(model.token_layers),
                          "build_s": build_s}
        gen = torch.Generator(device).manual_seed(args.seed)
        fns = {"aggregator": lambda x: model.backbone(x, layers=model.token_layers), "full": lambda x: model(x)}
        try:  # one untimed forward first: one-time initialisation is not charged to the first configuration
            with torch.inference_mode(), _autocast(device, args.dtype):
                model(torch.rand(1, 1, 3, H, W, device=device, generator=gen))
            sync(device)
        except Exception as err:  # noqa: BLE001 - the configurations report it
            print(f"  {preset}: global warm-up failed: {_err(err)}", file=sys.stderr)
        history: dict[str, list] = {"aggregator": [], "full": []}
        oom_at: dict[str, int] = {}
        for S, mode in configs:
            row = base(S, mode)
            pub_t, pub_m = published_at(S)
            row.update(published_time_s=pub_t, published_memory_gb=pub_m)
            prev = history[mode][-1][1] if history[mode] else None
            warmup = args.warmup if (prev is None or prev < args.long_run) else 0
            pred = _predict(history[mode], S)
            left = sub_deadline - time.time()
            failed = [oom_at[m] for m in (("aggregator",) if mode == "aggregator" else ("aggregator", "full"))
                      if m in oom_at and S >= oom_at[m]]  # the full forward needs more than the aggregator
            if failed:
                row["status"] = f"skipped (OOM at {min(failed)} frames)"
            elif left <= 0:
                row["status"] = "skipped (time budget)"
            elif pred is not None and pred * (1 + warmup) > left:
                row["status"] = f"skipped (time budget: predicted {pred * (1 + warmup):.3g} s, {left:.3g} s left)"
            else:
                x = torch.rand(1, S, 3, H, W, device=device, generator=gen)
                fn = fns[mode]
                with torch.inference_mode(), _autocast(device, args.dtype):
                    row.update(run_config(lambda: fn(x), device, args, warmup, sub_deadline))
                del x
                if row["status"] == "OOM":
                    oom_at[mode] = S
                if "median_s" in row:
                    history[mode].append((S, row["median_s"]))
                    row["time_ratio"] = row["median_s"] / pub_t if pub_t else None
                if row["status"].startswith("ok") and pub_m:
                    row["memory_ratio"] = row["peak_bytes"] / GB / pub_m
            print(f"  forward {preset} {mode} x{S}: {row['status']}"
                  + (f" {row['median_s']:.3f} s" if "median_s" in row else ""), file=sys.stderr, flush=True)
            rows.append(row)
        model = fns = None  # the lambdas above hold it too
        _cleanup(device)
    return {"status": "ran", "rows": rows, "models": models, "dtype": args.dtype,
            "mode_note": "aggregator = model.backbone(images, layers=model.token_layers): it keeps only the layers "
                         "the heads read (VGGT's own aggregator returns all 24); full = model(images), every head "
                         "(the track head returns nothing without query points); heads run in fp32 as in the model",
            "memory": Memory(device).method()}


# ----------------------------------------------------------------------------- step 2: max frames
def _deadline_hooks(model: torch.nn.Module, deadline: float, device: torch.device) -> list:
    """A pre-forward hook on every module that raises ProbeTimeout past ``deadline`` (on CUDA it synchronises at
    most every 0.25 s first, so the host clock follows the GPU's progress)."""
    state = {"sync": time.perf_counter()}

    def hook(module, inputs):
        if device.type == "cuda" and time.perf_counter() - state["sync"] > 0.25:
            torch.cuda.synchronize(device)
            state["sync"] = time.perf_counter()
        if time.time() > deadline:
            raise ProbeTimeout(f"probe stopped at {type(module).__name__}: past its time limit")

    return [m.register_forward_pre_hook(hook) for m in model.modules()]


def probe(model, S: int, args, device: torch.device, deadline: float, cap: float | None) -> dict:
    H, W = args.fit_size
    res: dict = {"frames": S}
    x = torch.rand(1, S, 3, H, W, device=device, generator=torch.Generator(device).manual_seed(args.seed))
    hooks = _deadline_hooks(model, deadline, device)
    mem = Memory(device)
    mem.start()
    t = time.perf_counter()
    try:
        with torch.inference_mode(), _autocast(device, args.dtype):
            out = model(x)
        sync(device)
        del out
        res["status"] = "fits"
    except ProbeTimeout as err:
        res["status"], res["error"] = "timeout", str(err)
    except Exception as err:  # noqa: BLE001
        res["status"] = "OOM" if is_oom(err) else "error"
        res["error"] = _err(err)
    finally:
        for h in hooks:
            h.remove()
        res["seconds"] = time.perf_counter() - t
        res.update(mem.stop())
        del x
        _cleanup(device)
    if res["status"] == "fits" and cap is not None and res["peak_bytes"] > cap:
        res["status"] = "over cap"
    return res


def _linear_max(probes: list[dict], cap: float | None) -> float | None:
    """Frames at which a least-squares line through the fitting probes' peaks reaches ``cap`` (a prediction)."""
    pts = {p["frames"]: p["peak_bytes"] for p in probes if p["status"] == "fits"}
    if cap is None or len(pts) < 2 or max(pts) < 2 * min(pts):
        return None
    xs, ys = list(pts), list(pts.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return (cap - (my - slope * mx)) / slope if slope > 0 else None


def search_max_frames(model, args, device: torch.device, deadline: float, cap: float | None,
                      usable: float | None, known: list[dict]) -> dict:
    """Doubling from --fit-start, then bisection. ``known``: full forwards of the same model and size measured
    already (step 1), used with the probes for the timing prediction and the linear memory prediction."""
    probes: list[dict] = []
    lo, hi, S, phase, stop = None, None, args.fit_start, "doubling", None
    if known:  # what step 1 ran fits already: the doubling goes on above it
        lo = max(p["frames"] for p in known)
        while S <= lo:
            S *= 2
    while True:
        if phase == "doubling" and S > args.fit_max:
            stop = f"search ceiling --fit-max {args.fit_max} reached"
            break
        if phase == "bisection":
            if hi - lo <= max(1, args.fit_resolution * lo):
                stop = "converged"
                break
            S = (lo + hi) // 2
        left = deadline - time.time()
        limit = min(args.probe_limit, left)
        timed = {p["frames"]: p["seconds"] for p in known + probes if p["status"] == "fits" and p["frames"] < S}
        pred = _predict(sorted(timed.items()), S)
        if left < 1:
            stop = f"time budget (before the probe at {S} frames)"
            break
        if pred is not None and pred > limit:
            stop = f"the probe at {S} frames is predicted to take {pred:.3g} s, over its {limit:.3g} s limit"
            break
        p = probe(model, S, args, device, time.time() + limit, cap)
        probes.append(p)
        print(f"  max frames x{S}: {p['status']} ({p['seconds']:.1f} s, peak {p['peak_bytes'] / GB:.3g} GB)",
              file=sys.stderr, flush=True)
        if p["status"] == "fits":
            lo = S
            if phase == "doubling":
                S *= 2
        elif p["status"] in ("OOM", "over cap"):
            hi, phase = S, "bisection"
            lo = lo or 0
            if lo >= hi:  # a step-1 size failing here: noise around the cap; restart the bracket below it
                lo = 0
        else:
            stop = f"the probe at {S} frames ended with {p['status']}" + (f" ({p['error']})" if p.get("error") else "")
            break
    return {"max_fit_frames": lo, "first_failing_frames": hi, "stop_reason": stop, "probes": probes,
            "exact": stop == "converged", "known_from_forward": [p["frames"] for p in known],
            "predicted_max_frames": _linear_max(known + probes, usable)}


def step_max_frames(args, device: torch.device, deadline: float, done: dict) -> dict:
    cap = args.fit_memory_mib * MIB if args.fit_memory_mib else None
    usable = cap
    if device.type == "cuda":
        _cleanup(device)
        total = torch.cuda.get_device_properties(device).total_memory
        if cap:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
        else:  # what max_memory_allocated can reach: free memory + what this process's allocator holds
            usable = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    # full forwards of the same model and size that step 1 measured (exact attention)
    rows = (done.get("forward") or {}).get("rows") or []
    known = [{"frames": r["frames"], "seconds": r["median_s"], "peak_bytes": r["peak_bytes"], "status": "fits"}
             for r in rows if r["preset"] == args.fit_preset and r["mode"] == "full" and "median_s" in r
             and (r["height"], r["width"]) == tuple(args.fit_size) and r.get("peak_bytes") is not None
             and (cap is None or r["peak_bytes"] <= cap)]
    merged_error = "--merged-backbone is not a JSON object"
    try:
        merged = json.loads(args.merged_backbone)
    except json.JSONDecodeError as err:
        merged, merged_error = None, f"--merged-backbone is not JSON: {err}"
    if not isinstance(merged, dict):
        merged = None
    variants = []
    todo = [("exact", {}), ("merged", merged)]
    try:
        for vi, (name, backbone) in enumerate(todo):
            v: dict = {"variant": name, "backbone": backbone, "preset": args.fit_preset,
                       "height": args.fit_size[0], "width": args.fit_size[1]}
            sub_deadline = time.time() + (deadline - time.time()) / (len(todo) - vi)
            if backbone is None:
                variants.append(dict(v, status="unavailable", reason=merged_error))
                continue
            if time.time() > sub_deadline:
                variants.append(dict(v, status="skipped", reason="time budget"))
                continue
            try:
                model, build_s = build_model(args.fit_preset, device, backbone=backbone)
            except Exception as err:  # noqa: BLE001 - e.g. the merged attention option does not exist yet
                variants.append(dict(v, status="unavailable" if name != "exact" else "error",
                                     reason=f"building the model raised {_err(err)}"))
                _cleanup(device)
                continue
            v.update(status="ran", build_s=build_s)
            v.update(search_max_frames(model, args, device, sub_deadline, cap, usable,
                                       known if name == "exact" else []))
            del model
            _cleanup(device)
            variants.append(v)
    finally:
        if device.type == "cuda" and cap:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    return {"status": "ran", "variants": variants, "memory_cap_bytes": cap, "usable_bytes": usable,
            "probe_limit_s": args.probe_limit,
            "note": "fits = the full forward (inference mode, autocast) finished without OOM (and within "
                    "--fit-memory-mib if given); max_fit_frames is measured; predicted_max_frames is a straight "
                    "line through the peaks of the fitting probes (and, for exact attention, step 1's full "
                    "forwards of the same model and size) extended to usable_bytes: a prediction, not measured",
            "memory": Memory(device).method()}


# ----------------------------------------------------------------------------- step 3: training step
def _sum_of_means(out: dict, batch: dict) -> torch.Tensor:
    total = None
    for key, value in out.items():
        vals = value if isinstance(value, (list, tuple)) else [value]
        for v in vals:
            if key != "images" and isinstance(v, torch.Tensor) and v.is_floating_point() and v.requires_grad:
                total = v.float().mean() if total is None else total + v.float().mean()
    return total


def step_train(args, device: torch.device, deadline: float, done: dict) -> dict:
    import yaml

    from iggt_lightning.data.synthetic import SyntheticScenes, collate_scenes
    from iggt_lightning.module import IGGTLitModule

    path = Path(args.train_config) if Path(args.train_config).is_absolute() else _REPO / args.train_config
    cfg = yaml.safe_load(path.read_text()) or {}
    model_cfg = copy.deepcopy(cfg.get("model") or {})
    model_cfg.pop("init_checkpoint", None)  # random weights
    model_cfg["log_images_every_n_steps"] = 0
    if args.train_preset:
        model_cfg["preset"] = args.train_preset
    model_cfg["backbone"] = {**(model_cfg.get("backbone") or {}), "gradient_checkpointing": not args.no_checkpointing}
    data_cfg = (cfg.get("data") or {}).get("init_args") or {}
    clip = (cfg.get("trainer") or {}).get("gradient_clip_val")
    H, W = args.train_size
    res: dict = {"config": str(path.relative_to(_REPO)) if path.is_relative_to(_REPO) else str(path),
                 "preset": model_cfg.get("preset"), "drop_heads": model_cfg.get("drop_heads"),
                 "frames": args.train_frames, "batch": args.train_batch, "height": H, "width": W,
                 "gradient_checkpointing": not args.no_checkpointing, "gradient_clip_val": clip,
                 "precision": "bf16 autocast over forward + loss (as trainer.precision bf16-mixed)"
                 if args.dtype == "bf16" else "fp32", "optimizer": "IGGTLitModule.configure_optimizers (AdamW)"}
    t = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(device):
        module = IGGTLitModule(**model_cfg)
    module.to(device).train()
    res["build_s"] = time.perf_counter() - t
    res["parameters"] = sum(p.numel() for p in module.parameters())
    res["trainable_parameters"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    t = time.perf_counter()
    keys = ("num_objects", "focal_range", "repeat_prob", "background_id")
    ds = SyntheticScenes(args.train_batch, num_views=args.train_frames, image_size=(H, W),
                         **{k: (tuple(v) if isinstance(v, list) else v) for k, v in data_cfg.items() if k in keys})
    batch = collate_scenes([ds[i] for i in range(args.train_batch)])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    batch = module._prepare(batch)
    res["data_s"] = time.perf_counter() - t
    opt = module.configure_optimizers()["optimizer"]
    params = [p for p in module.parameters() if p.requires_grad]
    loss_kind = "sum-of-means" if args.train_loss == "sum-of-means" else "model"

    def loss_fn(out: dict) -> torch.Tensor:
        nonlocal loss_kind
        if loss_kind == "model":
            try:
                return module.compute_losses(out, batch)["loss"]
            except Exception as err:  # noqa: BLE001
                if args.train_loss == "model" or is_oom(err):
                    raise
                res["model_loss_error"] = _err(err)
                loss_kind = "sum-of-means"
        return _sum_of_means(out, batch)

    times, losses = [], []
    mem = Memory(device)
    mem.start()
    try:
        for i in range(args.train_steps):
            if i and time.time() > deadline:
                break
            sync(device)
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with _autocast(device, args.dtype):
                out = module.model(batch["images"])
                loss = loss_fn(out)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sync(device)
            times.append(time.perf_counter() - t)
            losses.append(float(loss.detach()))
            del out, loss
        res["status"] = "ran"
    except Exception as err:  # noqa: BLE001
        res["status"] = "OOM" if is_oom(err) else "error"
        res["error"] = _err(err)
    finally:
        res.update(mem.stop())
        opt.zero_grad(set_to_none=True)
        module = opt = params = batch = None  # loss_fn holds module and batch too
        _cleanup(device)
    res["loss"] = {"model": "the config's loss: IGGTLitModule.compute_losses (each head's loss terms, the "
                            "config's loss_weights / loss_options) on a synthetic scene",
                   "sum-of-means": "sum of the means of the outputs (a timing stand-in for the loss)"}[loss_kind]
    res.update(loss_kind=loss_kind, loss_values=losses, steps_s=times)
    if times:
        res["first_step_s"] = times[0]
        res["step_s"] = statistics.median(times[1:]) if len(times) > 1 else times[0]
        res["step_note"] = ("median of the steps after the first (the first allocates the optimiser state)"
                            if len(times) > 1 else "the only step (includes the optimiser state's allocation)")
    res["memory"] = Memory(device).method() + " (peak over all steps; the baseline has the weights and the batch)"
    return res


# ----------------------------------------------------------------------------- step 4: FSDP2 fit
def fsdp_command(args, root: Path) -> list[str]:
    cmd = [sys.executable, "-m", "iggt_lightning", "fit",
           "--config", str(_REPO / "configs" / "synthetic_tiny.yaml"),
           "--config", str(_REPO / "configs" / "strategies" / "fsdp.yaml"),
           "--trainer.accelerator", args.fsdp_accelerator, "--trainer.devices", "1",
           "--trainer.strategy.init_args.data_parallel_size", "1",
           "--trainer.max_steps", str(args.fsdp_steps), "--trainer.limit_val_batches", "0",
           "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.default_root_dir", str(root), "--model.log_images_every_n_steps", "0"]
    if args.fsdp_precision:
        cmd += ["--trainer.precision", args.fsdp_precision]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    data = {"image_size": list(args.fsdp_size) if args.fsdp_size else None, "num_views": args.fsdp_views,
            "batch_size": args.fsdp_batch, "num_train": args.fsdp_num_train, "num_workers": args.fsdp_workers}
    for key, value in data.items():
        if value is not None:
            cmd += [f"--data.init_args.{key}", json.dumps(value)]
    return cmd


def step_fsdp(args, device: torch.device, deadline: float, done: dict) -> dict:
    _cleanup(device)  # the child needs the GPU memory this process holds in its cache
    timeout = deadline - time.time()
    if timeout < args.fsdp_min_seconds:
        return {"status": "skipped", "reason": f"time budget: {timeout:.3g} s left, a fit needs about "
                f"{args.fsdp_min_seconds:.3g} s (--fsdp-min-seconds)"}
    with tempfile.TemporaryDirectory(prefix="iggt_gpu_suite_fsdp_") as tmp:
        cmd = fsdp_command(args, Path(tmp))
        res: dict = {"command": " ".join(cmd[1:]).replace(str(_REPO) + os.sep, ""), "steps": args.fsdp_steps,
                     "accelerator": args.fsdp_accelerator, "timeout_s": timeout}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
        env["PYTHONPATH"] = str(_REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            res["returncode"] = proc.returncode
        except subprocess.TimeoutExpired:
            _kill(proc)
            stdout, stderr = proc.communicate()
            res["returncode"] = None
        finally:
            if proc.poll() is None:  # interrupted: take the child (its own process group) down too
                _kill(proc)
        res["seconds"] = time.perf_counter() - t
    text = (stdout or "") + (stderr or "")
    m = re.search(r"max_steps=(\d+)` reached", text)
    res["reached_max_steps"] = bool(m and int(m.group(1)) == args.fsdp_steps)
    if res["returncode"] is None:
        res["status"] = f"timeout (after {timeout:.0f} s)"
    elif res["returncode"] == 0 and res["reached_max_steps"]:
        res["status"] = "ran"
    else:
        res["status"] = "error"
    if res["status"] != "ran":
        res["output_tail"] = text[-3000:]
    return res


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and the workers it started
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ----------------------------------------------------------------------------- report
def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(payload: dict) -> str:
    lines = ["| step | model | what | frames | time s | peak GB | VGGT H100 s | VGGT GB | time x | memory x | status |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    steps = payload["steps"]

    def skipped(name: str) -> None:
        s = steps.get(name, {})
        lines.append(f"| {STEP_TITLES[name]} | - | - | - | - | - | - | - | - | - | "
                     f"{s.get('status', 'missing')}{': ' + s['reason'] if s.get('reason') else ''} |")

    fw = steps.get("forward", {})
    if fw.get("status") == "ran":
        for r in fw["rows"]:
            peak = r.get("peak_bytes")
            lines.append(f"| 1 forward | {r['preset']} | {r['mode']} | {r['frames']} | "
                         f"{_f(r.get('median_s'), '.3f')} | "
                         f"{_f(None if peak is None else peak / GB, '.3g')} | {_f(r.get('published_time_s'), '.2f')} | "
                         f"{_f(r.get('published_memory_gb'), '.2f')} | {_f(r.get('time_ratio'), '.2f')} | "
                         f"{_f(r.get('memory_ratio'), '.2f')} | {r['status']} |")
    else:
        skipped("forward")
    mf = steps.get("max_frames", {})
    if mf.get("status") == "ran":
        for v in mf["variants"]:
            if v["status"] != "ran":
                lines.append(f"| 2 max frames | {v['preset']} | {v['variant']} | - | - | - | - | - | - | - | "
                             f"{v['status']}: {v.get('reason', '')} |")
                continue
            fits = [p for p in v["probes"] if p["status"] == "fits"]
            best = max(fits, key=lambda p: p["frames"]) if fits else None
            hi = v["first_failing_frames"]
            pred = v.get("predicted_max_frames")
            status = (f"fits {v['max_fit_frames']}" + (f", fails {hi}" if hi is not None else "")
                      + f" ({v['stop_reason']})" + (f"; linear prediction {pred:.0f}" if pred else ""))
            lines.append(f"| 2 max frames | {v['preset']} | {v['variant']} | {_f(v['max_fit_frames'], 'd')} | "
                         f"{_f(best and best['seconds'], '.2f')} | {_f(best and best['peak_bytes'] / GB, '.3g')} | "
                         f"- | - | - | - | {status} |")
    else:
        skipped("max_frames")
    tr = steps.get("train_step", {})
    if "frames" in tr:
        lines.append(f"| 3 train step | {tr['preset']} | fwd+bwd+AdamW, {tr['loss_kind']} loss, "
                     f"{'ckpt' if tr['gradient_checkpointing'] else 'no ckpt'} | {tr['frames']} | "
                     f"{_f(tr.get('step_s'), '.3f')} | {_f(tr.get('peak_bytes') and tr['peak_bytes'] / GB, '.3g')} | "
                     f"- | - | - | - | {tr['status']}{': ' + tr['error'] if tr.get('error') else ''} |")
    else:
        skipped("train_step")
    fs = steps.get("fsdp_fit", {})
    if "command" in fs:
        lines.append(f"| 4 FSDP2 fit | synthetic_tiny | {fs['steps']} steps, 1 {fs['accelerator']} | - | "
                     f"{_f(fs.get('seconds'), '.1f')} | - | - | - | - | - | {fs['status']} |")
    else:
        skipped("fsdp_fit")
    return "\n".join(lines)


def notes(payload: dict) -> str:
    env = payload["environment"]
    mem = ("peak GB = torch.cuda.max_memory_allocated / 1e9 incl. the fp32 weights and the input"
           if payload["device"].startswith("cuda") else
           "peak GB = RSS increase over the pre-run baseline (excl. weights); CPU miniature: the ratios mean nothing")
    models = (payload["steps"].get("forward") or {}).get("models") or {}
    if payload["device"].startswith("cuda") and models:
        n = max(m["backbone_parameters"] for m in models.values())
        mem += (f"; our weights are fp32 ({n * 4 / GB:.2f} GB for the {n / 1e9:.2f} B-parameter aggregator), VGGT's "
                f"{PUBLISHED['memory_gb'][0]} GB at 1 frame is about that aggregator in bf16 ({n * 2 / GB:.2f} GB), "
                "so compare the growth with the frame count more than the totals (baseline_bytes in the JSON)")
    return "\n".join([
        f"device: {payload['device']}  profile: {payload['profile']}  torch {env.get('torch')}  "
        f"total {payload['total_s']:.0f} s of a {payload['budget_s']:.0f} s budget",
        f"{mem}. VGGT H100 = {PUBLISHED['section']} ({PUBLISHED['what'].split(';')[0]}; Flash Attention 3; "
        f"336x518), so 'aggregator' rows are the like-for-like ones; time x / memory x = ours / published.",
        f"JSON: {payload['json']}"])


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock(args.budget)
    device = torch.device("cuda" if args.profile == "gpu" else "cpu")
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)

    def _term(signum, frame):
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _term)
    env = environment(device, _REPO)
    if device.type == "cuda":
        env.update(flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                   attention_backend=os.environ.get("IGGT_ATTENTION", "auto"))
    payload = {
        "suite": "benchmarks/gpu_suite.sh", "profile": args.profile,
        "device": str(device) + (f" ({env['gpu']})" if "gpu" in env else ""),
        "budget_s": args.budget, "json": str(args.json.relative_to(_REPO) if args.json.is_relative_to(_REPO)
                                             else args.json),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:], "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": env, "published": PUBLISHED, "complete": False, "steps": {},
    }
    runners = {"forward": step_forward, "max_frames": step_max_frames, "train_step": step_train,
               "fsdp_fit": step_fsdp}
    todo = [s for s in RUN_ORDER if s in args.steps]
    for name in STEPS:  # reported in this order whatever the order they run in
        payload["steps"][name] = ({"status": "pending"} if name in todo else
                                  {"status": "skipped", "reason": "not selected (--steps)"})
    print(f"# IGGT GPU suite ({args.profile} profile on {payload['device']}, budget {args.budget:.0f} s)",
          file=sys.stderr, flush=True)
    interrupted = False
    try:
        for i, name in enumerate(todo):
            left = clock.end() - time.time()
            allowance = left * STEP_WEIGHTS[name] / sum(STEP_WEIGHTS[s] for s in todo[i:])
            if allowance < 1:
                payload["steps"][name] = {"status": "skipped", "reason": f"time budget: its share of the "
                                          f"{max(0, left):.3g} s left of {args.budget:.0f} s is under 1 s"}
            else:
                deadline = time.time() + allowance
                print(f"step {STEP_TITLES[name]}: {allowance:.0f} s of {left:.0f} s left",
                      file=sys.stderr, flush=True)
                t = time.perf_counter()
                payload["steps"][name] = {"status": "running"}
                try:
                    result = runners[name](args, device, deadline, payload["steps"])
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001 - one broken step does not hide the others
                    result = {"status": "error", "reason": _err(err)}
                result.update(wall_s=time.perf_counter() - t, allowance_s=allowance)
                payload["steps"][name] = result
            payload["total_s"] = clock.elapsed()
            write_json(args.json, payload)
    except KeyboardInterrupt:
        interrupted = True
        for name, s in payload["steps"].items():
            if s.get("status") in ("pending", "running"):
                payload["steps"][name] = {"status": "skipped", "reason": "interrupted"}
    failed = [n for n, s in payload["steps"].items() if s.get("status") == "error" or
              str(s.get("status")).startswith("timeout")]
    rc = 130 if interrupted else 1 if failed else 0
    payload["total_s"] = clock.elapsed()
    payload["complete"] = not interrupted
    payload["failed_steps"] = failed
    write_json(args.json, payload)
    print(table(payload))
    print()
    print(notes(payload))
    return rc


if __name__ == "__main__":
    sys.exit(main())
