"""What is left of the CPU forward to gain, and whether torch's own tools take it.

    python -m benchmarks.headroom              # writes benchmarks/headroom.json (~15 min on 2 cores)
    python -m benchmarks.headroom --train      # also compiles a training step of the main job (~10 min more)
    python -m benchmarks.headroom --render     # refills the table in docs/speed.md

(a) **Products against the rest.** The ``tiny`` forward (random weights, 224x224, ``--views``) with our kernels,
    in fp32 and in bf16 (heads included), every convolution, transposed convolution and linear layer timed
    (forward hooks) and its arithmetic counted from its shapes. The products' GFLOP/s are set beside the oneDNN
    matrix-product peak measured in the same run (``benchmarks/kernels.py``'s), and the time outside them is "the
    rest": normalisations, resizes, attention, copies, additions.
(b) **torch.compile** (inductor, weights frozen, PyTorch's ordinary kernels underneath so that inductor sees the
    convolutions): the seconds the first call takes, then eager and compiled runs alternating, medians, and the
    largest relative difference from eager.
(c) **Winograd F(4x4, 3x3) with fused transforms**, for the forward's costliest convolution shape (256 -> 256
    channels, 3x3, a 64x64 map) on 1 and ``--views`` frames: the input and output transforms each compiled by
    inductor into one pass, the 36 products through oneDNN, against the prepacked direct convolution.
(d) ``--train``: torch.compile of a training step of the main job (``configs/synthetic_tiny.yaml``'s model and
    data): the first steps (which compile) and the steady step, against eager.

``--no-compile`` skips everything that needs a C++ compiler (b, d, and (c)'s transforms run eagerly); the test
suite runs that miniature.
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
import torch.nn.functional as F

from benchmarks.kernels import add_forward_arguments, peaks, run_note
from iggt_lightning.benchmarking import environment, fill_block_from_json
from iggt_lightning.benchmarking.official import max_output_difference
from iggt_lightning.fileio import write_json
from iggt_lightning.layers import fast_conv

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- headroom-table -->", "<!-- /headroom-table -->"
PRECISIONS = ("fp32", "bf16")
OUTPUT_KEYS = ("depth", "world_points", "part_feat")


def _median(xs) -> float:
    return statistics.median(list(xs))


def _precision(model, precision: str):
    """The context a forward runs in at ``precision`` (bf16: autocast with the heads following it)."""
    model.set_head_precision("autocast" if precision == "bf16" else "fp32")
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _max_rel_diff(ref: dict, out: dict) -> float:
    """The largest max|out - ref| / max|ref| over the dense outputs (depth, world points, instance features)."""
    diffs = max_output_difference(ref, out)
    return max(diffs[k] for k in OUTPUT_KEYS if k in diffs)


# ---------------------------------------------------------------- (a) products against the rest
def _product_flop(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-adds x 2 of one layer's call, counted directly (a 3x3 convolution as 9 per output and input channel)."""
    if isinstance(layer, torch.nn.Linear):
        return 2 * y.numel() * layer.in_features
    kh, kw = layer.kernel_size
    if isinstance(layer, torch.nn.ConvTranspose2d):
        return 2 * x.numel() * (layer.out_channels // layer.groups) * kh * kw
    return 2 * y.numel() * (layer.in_channels // layer.groups) * kh * kw


def _shape_key(layer: torch.nn.Module, x: torch.Tensor) -> str:
    if isinstance(layer, torch.nn.Linear):
        return f"linear {layer.in_features}->{layer.out_features} x{x.numel() // layer.in_features}"
    kind = "conv-transpose" if isinstance(layer, torch.nn.ConvTranspose2d) else "conv"
    kh, kw = layer.kernel_size
    return (f"{kind} {kh}x{kw}/{layer.stride[0]} {layer.in_channels}->{layer.out_channels} "
            f"{x.shape[-2]}x{x.shape[-1]} x{x.shape[0]}")


def products_and_rest(model, images: torch.Tensor, repeats: int) -> dict:
    """Per precision: the forward's time, the time and counted GFLOP in its products, and the busiest shapes."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
    record: list[tuple[str, float, int]] = []
    starts: dict[int, float] = {}

    def pre(layer, args):
        starts[id(layer)] = time.perf_counter()

    def post(layer, args, out):
        record.append((_shape_key(layer, args[0]), time.perf_counter() - starts[id(layer)],
                       _product_flop(layer, args[0], out)))

    hooks = [h for m in layers for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    runs = {p: [] for p in PRECISIONS}
    try:
        for i in range(repeats + 1):                  # round 0 warms up (and packs the weights of each dtype)
            for p in PRECISIONS:
                record.clear()
                with torch.inference_mode(), _precision(model, p):
                    t0 = time.perf_counter()
                    model(images)
                    total = time.perf_counter() - t0
                if i:
                    runs[p].append((total, list(record)))
    finally:
        for h in hooks:
            h.remove()
        model.set_head_precision("fp32")
    out = {}
    for p, rs in runs.items():
        per_shape = {k: {"seconds": _median(sum(dt for kk, dt, _ in rec if kk == k) for _, rec in rs),
                         "gflop": sum(f for kk, _, f in rs[0][1] if kk == k) / 1e9}
                     for k in dict.fromkeys(key for key, _, _ in rs[0][1])}
        busiest = sorted(per_shape.items(), key=lambda kv: -kv[1]["seconds"])[:6]
        out[p] = {"total_s": _median(t for t, _ in rs),
                  "products_s": _median(sum(dt for _, dt, _ in rec) for _, rec in rs),
                  "products_gflop": sum(f for _, _, f in rs[0][1]) / 1e9,
                  "busiest": [{"shape": k, "seconds": v["seconds"], "gflop_per_s": v["gflop"] / v["seconds"]}
                              for k, v in busiest]}
        out[p]["rest_s"] = out[p]["total_s"] - out[p]["products_s"]
    return out


# ---------------------------------------------------------------- (b) torch.compile of the forward
def compile_forward(model, images: torch.Tensor, precision: str, repeats: int) -> dict:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True            # weights as constants: inductor prepacks the convolutions itself
    compiled = torch.compile(model)
    times = {"eager": [], "compiled": []}
    try:
        with torch.no_grad(), _precision(model, precision):
            fast_conv.set_conv_algorithm("auto")
            ref = model(images)
            fast_conv.set_conv_algorithm("direct")   # inductor lowers aten convolutions, not our packed calls
            t0 = time.perf_counter()
            out = compiled(images)
            compile_s = time.perf_counter() - t0
            for r in range(repeats):
                for side in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
                    fast_conv.set_conv_algorithm("auto" if side == "eager" else "direct")
                    t0 = time.perf_counter()
                    (model if side == "eager" else compiled)(images)
                    times[side].append(time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 - no compiler, an inductor failure: recorded, not fatal
        return {"status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]}
    finally:
        fast_conv.set_conv_algorithm("auto")
        model.set_head_precision("fp32")
        torch._dynamo.reset()
    eager, comp = _median(times["eager"]), _median(times["compiled"])
    return {"status": "ok", "compile_s": compile_s, "eager_s": eager, "compiled_s": comp, "speedup": eager / comp,
            "max_rel_diff": _max_rel_diff(ref, out)}


# ---------------------------------------------------------------- (c) Winograd with fused transforms
def _combine(rows: list[torch.Tensor], coefficients) -> list[torch.Tensor]:
    """``sum_k c[a][k] * rows[k]`` for every row ``a`` of the constant matrix ``c`` (zeros skipped)."""
    out = []
    for row in coefficients:
        acc = None
        for c, r in zip(row, rows):
            if c:
                term = r if c == 1 else r * c
                acc = term if acc is None else acc + term
        out.append(acc)
    return out


def winograd_input(xp: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Zero-padded NHWC input [N, 4th+2, 4tw+2, C] -> B^T d B per 6x6 tile, [36, N*th*tw, C]."""
    rows = _combine([xp[:, k:k + 4 * th:4] for k in range(6)], fast_conv._BT)          # 6 x [N, th, W+2, C]
    tiles = [t for r in rows for t in _combine([r[:, :, k:k + 4 * tw:4] for k in range(6)], fast_conv._BT)]
    return torch.stack(tiles).reshape(36, -1, xp.shape[-1])


def winograd_output(m: torch.Tensor, n: int, th: int, tw: int, bias: torch.Tensor) -> torch.Tensor:
    """Products [36, N*th*tw, O] -> A^T m A per tile, the output [N, 4th, 4tw, O] (NHWC) with the bias."""
    o = m.shape[-1]
    m = m.view(6, 6, n, th, tw, o)
    rows = _combine(list(m), fast_conv._AT)                                            # 4 x [6, N, th, tw, O]
    blocks = [torch.stack(_combine(list(r), fast_conv._AT), 3) for r in rows]           # 4 x [N, th, tw, 4, O]
    return torch.stack(blocks, 2).reshape(n, 4 * th, 4 * tw, o) + bias


def winograd_probe(frames: int, channels: int, size: int, repeats: int, compile_transforms: bool) -> dict:
    torch.manual_seed(0)
    conv = fast_conv.Conv2d(channels, channels, 3, padding=1).eval()
    x = torch.randn(frames, channels, size, size).contiguous(memory_format=torch.channels_last)
    th = tw = size // 4
    u = fast_conv.winograd_weight(conv.weight).transpose(1, 2).contiguous()             # [36, O, C]
    tf_in = torch.compile(winograd_input, dynamic=False) if compile_transforms else winograd_input
    tf_out = torch.compile(winograd_output, dynamic=False) if compile_transforms else winograd_output
    linear = torch.ops.mkldnn._linear_pointwise
    xh = x.permute(0, 2, 3, 1)

    def products(v):
        return torch.stack([linear(v[f], u[f], None, "none", [], "") for f in range(36)])

    with torch.inference_mode():
        ref = conv(x)
        xp = F.pad(xh, (0, 0, 1, 1, 1, 1))
        v = tf_in(xp, th, tw)
        m = products(v)
        y = tf_out(m, frames, th, tw, conv.bias).permute(0, 3, 1, 2)
        parts = {"direct": lambda: conv(x), "input_transform": lambda: tf_in(F.pad(xh, (0, 0, 1, 1, 1, 1)), th, tw),
                 "products": lambda: products(v), "output_transform": lambda: tf_out(m, frames, th, tw, conv.bias)}
        times = {k: [] for k in parts}
        for _ in range(2):
            for fn in parts.values():
                fn()
        for _ in range(repeats):
            for k, fn in parts.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    med = {k: _median(t) for k, t in times.items()}
    winograd = med["input_transform"] + med["products"] + med["output_transform"]
    executed = 2 * 36 * frames * th * tw * channels * channels / 1e9
    direct_flop = 2 * frames * size * size * channels * channels * 9 / 1e9
    return {"frames": frames, "channels": channels, "size": size, "seconds": med, "winograd_s": winograd,
            "speedup": med["direct"] / winograd, "direct_gflop_per_s": direct_flop / med["direct"],
            "products_gflop_per_s": executed / med["products"],
            "max_rel_diff": float((y - ref).abs().max() / ref.abs().max())}


# ---------------------------------------------------------------- (d) torch.compile of a training step
def compile_training(steps: int) -> dict:
    import yaml

    from iggt_lightning.data import SyntheticDataModule
    from iggt_lightning.module import IGGTLitModule

    cfg = yaml.safe_load((ROOT / "configs" / "synthetic_tiny.yaml").read_text())
    data = dict(cfg["data"]["init_args"], num_train=8 * (steps + 3))
    dm = SyntheticDataModule(**data)
    dm.setup("fit")
    batches = [b for _, b in zip(range(2 * steps + 6), dm.train_dataloader())]
    result = {}
    for side in ("eager", "compiled"):
        torch.manual_seed(0)
        keys = ("preset", "drop_heads", "loss_weights", "loss_options", "postprocess")
        module = IGGTLitModule(**{k: cfg["model"][k] for k in keys}).train()
        if side == "compiled":
            module.model.backbone = torch.compile(module.model.backbone)
            for name in list(module.model.heads):
                module.model.heads[name] = torch.compile(module.model.heads[name])
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3)

        def step(batch):
            loss = module.training_step(batch, 0)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        for b in batches[:3]:                      # both view counts of the config (2 and 3) among them
            step(b)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in batches[3:3 + steps]:
            step(b)
        result[side] = {"first_3_steps_s": first, "step_s": (time.perf_counter() - t0) / steps}
        torch._dynamo.reset()
    result["speedup"] = result["eager"]["step_s"] / result["compiled"]["step_s"]
    return result


# ---------------------------------------------------------------- the table
def table(payload: dict) -> str:
    pk, fw = payload["peak_gflops"], payload["forward"]
    peak = {"fp32": pk.get("onednn_fp32"), "bf16": pk.get("onednn_bf16")}
    H, W = payload["size"]
    lines = [BEGIN, f"| {payload['preset']} forward, {H}x{W}, {payload['views']} views | fp32 | bf16 |",
             "|---|---|---|",
             "| forward s | " + " | ".join(f"{fw[p]['total_s']:.3f}" for p in PRECISIONS) + " |",
             "| in convolutions and linear layers s (share) | " + " | ".join(
                 f"{fw[p]['products_s']:.3f} ({fw[p]['products_s'] / fw[p]['total_s']:.0%})" for p in PRECISIONS) + " |",
             "| their GFLOP/s (oneDNN matrix-product peak) | " + " | ".join(
                 f"{fw[p]['products_gflop'] / fw[p]['products_s']:.0f} ({peak[p]:.0f})" if peak[p] else "-"
                 for p in PRECISIONS) + " |",
             "| the rest s | " + " | ".join(f"{fw[p]['rest_s']:.3f}" for p in PRECISIONS) + " |"]
    comp = payload.get("compile")
    if comp:
        cells = {p: comp[p] for p in PRECISIONS if p in comp}
        if all(c["status"] == "ok" for c in cells.values()):
            lines += ["| torch.compile: first call s | " + " | ".join(f"{cells[p]['compile_s']:.0f}" for p in PRECISIONS) + " |",
                      "| torch.compile: eager s / compiled s | " + " | ".join(
                          f"{cells[p]['eager_s']:.3f} / {cells[p]['compiled_s']:.3f} ({cells[p]['speedup']:.2f}x)"
                          for p in PRECISIONS) + " |",
                      "| torch.compile: max rel diff from eager | " + " | ".join(
                          f"{cells[p]['max_rel_diff']:.1e}" for p in PRECISIONS) + " |"]
        else:
            lines += ["| torch.compile | " + " | ".join(c.get("error", "ok") for c in cells.values()) + " |"]
    first = payload["winograd"][0]
    lines += ["", f"| 3x3 convolution {first['channels']}->{first['channels']}, {first['size']}x{first['size']} | direct (prepacked) s | Winograd: input transform s | 36 products s "
              "(GFLOP/s) | output transform s | Winograd total s | speed-up | max rel diff |",
              "|---|---|---|---|---|---|---|---|"]
    for w in payload["winograd"]:
        s = w["seconds"]
        lines.append(f"| {w['frames']} frame(s) | {s['direct'] * 1e3:.1f} ms ({w['direct_gflop_per_s']:.0f} GFLOP/s) | "
                     f"{s['input_transform'] * 1e3:.1f} ms | {s['products'] * 1e3:.1f} ms ({w['products_gflop_per_s']:.0f}) | "
                     f"{s['output_transform'] * 1e3:.1f} ms | {w['winograd_s'] * 1e3:.1f} ms | {w['speedup']:.2f}x | "
                     f"{w['max_rel_diff']:.1e} |")
    tr = payload.get("train")
    if tr:
        lines += ["", "| main job's training step | first 3 steps s | steady step s |", "|---|---|---|",
                  f"| eager | {tr['eager']['first_3_steps_s']:.1f} | {tr['eager']['step_s']:.3f} |",
                  f"| torch.compile | {tr['compiled']['first_3_steps_s']:.1f} | {tr['compiled']['step_s']:.3f} "
                  f"({tr['speedup']:.2f}x) |"]
    lines.append(f"\n(median of {payload['repeats']} interleaved rounds; transforms "
                 f"{'compiled by inductor' if payload['compiled_transforms'] else 'eager'}; {run_note(payload)})")
    lines.append(END)
    return "\n".join(lines)


readme_table = table     # the name tests/test_speed_benchmarks.py looks for


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_forward_arguments(ap, views=4)
    ap.add_argument("--winograd-size", type=int, default=64, help="the map size of (c)'s convolution")
    ap.add_argument("--winograd-channels", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true", help="skip (b) and (d); (c)'s transforms run eagerly")
    ap.add_argument("--train", action="store_true", help="also (d), torch.compile of a main-job training step")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "headroom.json"))
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    from iggt_lightning.model import IGGTModel

    torch.set_num_threads(a.threads)
    payload = {"environment": environment(torch.device("cpu"), ROOT), "load_before": os.getloadavg(),
               "threads": a.threads, "repeats": a.repeats, "size": list(a.size), "views": a.views,
               "preset": a.preset, "compiled_transforms": not a.no_compile}
    payload["peak_gflops"] = peaks()
    torch.manual_seed(0)
    model = IGGTModel.from_preset(a.preset).eval()
    images = torch.rand(1, a.views, 3, *a.size)
    payload["forward"] = products_and_rest(model, images, a.repeats)
    print({p: {k: v for k, v in r.items() if k != "busiest"} for p, r in payload["forward"].items()}, flush=True)
    payload["winograd"] = [winograd_probe(f, a.winograd_channels, a.winograd_size, a.repeats, not a.no_compile)
                           for f in sorted({1, a.views})]
    print(payload["winograd"], flush=True)
    if not a.no_compile:
        payload["compile"] = {p: compile_forward(model, images, p, a.repeats) for p in PRECISIONS}
        print(payload["compile"], flush=True)
        if a.train:
            payload["train"] = compile_training(a.train_steps)
    payload["load_after"] = os.getloadavg()
    write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
