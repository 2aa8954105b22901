"""Where the CPU forward's time goes: GFLOP/s per component against this machine's measured matrix-product peak.

    python -m benchmarks.kernels                 # writes benchmarks/kernels.json
    python -m benchmarks.kernels --render        # refills the table in docs/speed.md

(a) **Peak**: a 4096 x 1024 x 1024 matrix product, median of 7 after 3 warm-ups, through the BLAS (``torch.mm``,
    MKL in the usual CPU wheels) and through oneDNN (its fused linear op, what our layers use at inference) in
    fp32, and through oneDNN in bf16.
(b) **Components**: the ``tiny`` preset's forward (random weights) at 224x224 with 1 view (``--size``, ``--views``),
    timed per component (the backbone and each head, forward hooks), median of ``--repeats`` interleaved rounds,
    with each kernel setting: PyTorch's ordinary kernels (``direct``), ours (``auto``: oneDNN, prepacked),
    ``winograd``, and ours in bf16 (heads included). The arithmetic is counted once by torch's
    ``FlopCounterMode`` with the ordinary kernels (a 3x3 convolution as 9 multiply-adds per output and input
    channel; Winograd executes fewer), so ``GFLOP/s`` = counted GFLOP / seconds is comparable across settings.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from iggt_lightning.benchmarking import environment, fill_block_from_json
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- kernels-table -->", "<!-- /kernels-table -->"
SETTINGS = ("direct", "auto", "winograd", "auto-bf16")


def _median_time(fn, repeats: int = 7, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peaks() -> dict:
    m, k, n = 4096, 1024, 1024
    a, w = torch.randn(m, k), torch.randn(n, k) * 0.03
    flop = 2 * m * k * n
    out = {"shape": [m, k, n], "blas_fp32": flop / _median_time(lambda: a @ w.t()) / 1e9}
    try:
        lin = torch.ops.mkldnn._linear_pointwise
        out["onednn_fp32"] = flop / _median_time(lambda: lin(a, w, None, "none", [], "")) / 1e9
        ab, wb = a.bfloat16(), w.bfloat16()
        out["onednn_bf16"] = flop / _median_time(lambda: lin(ab, wb, None, "none", [], "")) / 1e9
    except (AttributeError, RuntimeError) as err:   # no oneDNN in this build
        out["onednn_error"] = str(err)[:200]
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


def _components(model) -> list[str]:
    return ["backbone", *model.heads]


def count_flops(model, images: torch.Tensor) -> dict:
    """GFLOP per component with the ordinary kernels (the count does not depend on the kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    from iggt_lightning.layers.fast_conv import get_conv_algorithm, set_conv_algorithm

    before = get_conv_algorithm()
    set_conv_algorithm("direct")
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.requires_grad_(False)     # FlopCounterMode's module tracker would hook gradients of inputs that need them
    try:
        counter = FlopCounterMode(display=False)        # counts per module, by the modules' dotted names
        with torch.no_grad(), counter:
            model(images)
        counts = counter.get_flop_counts()
        prefix = type(model).__name__
        flops = {name: sum(counts.get(f"{prefix}.{'backbone' if name == 'backbone' else 'heads.' + name}",
                                      {}).values()) / 1e9 for name in _components(model)}
    finally:
        set_conv_algorithm(before)
        for p in trainable:
            p.requires_grad_(True)
    return flops


def time_components(model, images: torch.Tensor, repeats: int) -> dict:
    from iggt_lightning.layers.fast_conv import get_conv_algorithm, set_conv_algorithm

    before = get_conv_algorithm()
    starts, spans = {}, {}
    hooks = []
    for name in _components(model):
        part = model.backbone if name == "backbone" else model.heads[name]
        hooks.append(part.register_forward_pre_hook(lambda *_, n=name: starts.__setitem__(n, time.perf_counter())))
        # (__setitem__ returns None, so neither hook replaces the module's input or output)
        hooks.append(part.register_forward_hook(
            lambda *_, n=name: spans.__setitem__(n, time.perf_counter() - starts[n])))
    runs = {s: [] for s in SETTINGS}
    try:
        for i in range(repeats + 1):                       # round 0 warms every setting up (and packs weights)
            for setting in SETTINGS:
                set_conv_algorithm(setting.removesuffix("-bf16"))
                bf16 = setting.endswith("-bf16")
                model.set_head_precision("autocast" if bf16 else "fp32")
                spans.clear()
                t0 = time.perf_counter()
                with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                                              else contextlib.nullcontext()):
                    model(images)
                if i:
                    runs[setting].append({"total": time.perf_counter() - t0, **spans})
    finally:
        for h in hooks:
            h.remove()
        set_conv_algorithm(before)
        model.set_head_precision("fp32")
    return {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}


def table(payload: dict) -> str:
    pk = payload["peak_gflops"]
    lines = [BEGIN, "| matrix product 4096x1024x1024 | GFLOP/s |", "|---|---|",
             f"| fp32, BLAS (torch.mm) | {pk['blas_fp32']:.0f} |"]
    if "onednn_fp32" in pk:
        lines += [f"| fp32, oneDNN | {pk['onednn_fp32']:.0f} |", f"| bf16, oneDNN | {pk['onednn_bf16']:.0f} |"]
    comps = list(payload["gflop"])
    lines += ["", "| component | GFLOP | " + " | ".join(f"{s} s (GFLOP/s)" for s in SETTINGS) + " |",
              "|---|---|" + "---|" * len(SETTINGS)]
    t = payload["seconds"]
    for c in [*comps, "total"]:
        g = payload["gflop"][c] if c != "total" else sum(payload["gflop"].values())
        cells = [f"{t[s][c]:.3f} ({g / t[s][c]:.0f})" if t[s].get(c) else "-" for s in SETTINGS]
        lines.append(f"| {c} | {g:.1f} | " + " | ".join(cells) + " |")
    H, W = payload["size"]
    lines.append(f"\n({payload.get('preset', 'tiny')} preset, {H}x{W}, {payload['views']} view(s), median of {payload['repeats']} interleaved "
                 f"rounds; {run_note(payload)})")
    lines.append(END)
    return "\n".join(lines)


def run_note(payload: dict) -> str:
    """Where and how a run was measured, for a table's closing line: commit, CPU, threads, torch, load."""
    env = payload["environment"]
    return (f"commit {str(env.get('git_commit', '?'))[:7]}, {env.get('cpu_model') or env['processor']}, "
            f"{payload['threads']} threads, torch {env['torch']}; load average {payload['load_before'][0]:.2f} "
            f"before, {payload['load_after'][0]:.2f} after")


def add_forward_arguments(ap: argparse.ArgumentParser, views: int) -> None:
    """The options of a benchmark that times one forward of a preset with random weights."""
    ap.add_argument("--preset", default="tiny", help="the model preset (random weights)")
    ap.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    ap.add_argument("--views", type=int, default=views)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)


readme_table = table     # the name tests/test_speed_benchmarks.py looks for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_forward_arguments(ap, views=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "kernels.json"))
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    from iggt_lightning.model import IGGTModel

    torch.set_num_threads(a.threads)
    payload = {"environment": environment(torch.device("cpu"), ROOT), "load_before": os.getloadavg(),
               "threads": a.threads, "repeats": a.repeats, "size": list(a.size), "views": a.views,
               "preset": a.preset}
    payload["peak_gflops"] = peaks()
    print(payload["peak_gflops"], flush=True)
    torch.manual_seed(0)
    model = IGGTModel.from_preset(a.preset).eval()
    images = torch.rand(1, a.views, 3, *a.size)
    payload["gflop"] = count_flops(model, images)
    payload["seconds"] = time_components(model, images, a.repeats)
    payload["load_after"] = os.getloadavg()
    write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
