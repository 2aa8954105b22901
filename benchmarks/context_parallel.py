"""Views across processes (iggt_lightning.context_parallel) against one process: time, memory per process, exactness.

For each view count (``--views``, default 16 32 64; 128 and 256 on request) the forward of the ``--preset``
(``tiny``, random weights of seed 0: time does not depend on them) at ``--size`` (224x224) on the same images,
under ``torch.no_grad()``, in fresh processes per run (so each peak is its own):

* ``1p x 1t``: one process, one thread (``model(images)``, no process group);
* ``1p x Nt``: one process, N threads (N = ``--processes``): the honest baseline on N cores;
* ``Np x 1t``: N processes of one thread each (gloo), each holding ``S/N`` views
  (:func:`~iggt_lightning.context_parallel.forward_local`), then gathered onto every process.

Per run: the median of ``--repeats`` timed forwards after one untimed warm-up forward of 2 views, the gather's
seconds (split runs), and per process the peak RSS (``VmHWM`` of /proc/self/status, read after the timed forwards
and before the gather: what the process needs for its share) and the RSS before the forwards (model, inputs);
and against the ``1p x 1t`` outputs the largest relative difference of every output (max|a-b| / max|b| per key,
the last refinement's ``pose_enc``), which the split runs' exactness and the thread count's rounding both show.

``--device cuda``: the same code on GPUs, one per process (NCCL; ``cuda:<rank>``, so N processes need N GPUs);
runs ``1p`` and ``Np`` (threads do not apply), and records ``torch.cuda.max_memory_allocated`` per process too.

    python -m benchmarks.context_parallel                           # 16 32 64 views, writes the JSON
    python -m benchmarks.context_parallel --views 16 32 64 128 256 --timeout 7200
    python -m benchmarks.context_parallel --device cuda --processes 2 --views 64 128 256
    python -m benchmarks.context_parallel --render                  # refill docs/speed.md from the JSON

Writes ``benchmarks/context_parallel.json`` (``--json``; after every view count) with the environment (commit,
CPU model, torch, load average before and after, threads per process); ``--render`` refills the table in
docs/speed.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- context-parallel-table -->", "<!-- /context-parallel-table -->"
KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "part_feat")
MIB = 1024 ** 2


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _diffs(got: dict, ref: dict) -> dict:
    import torch

    out = {}
    for key in KEYS:
        if key in ref and key in got:
            a, b = got[key], ref[key]
            if isinstance(b, (list, tuple)):
                a, b = a[-1], b[-1]
            out[key] = float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
            del a, b
    return out


def _worker(rank: int, world: int, spec: dict) -> None:
    """One process of one run: writes ``rank<r>.json`` (and the reference outputs when asked) into spec["dir"]."""
    import torch
    import torch.distributed as dist

    from iggt_lightning.model import IGGTModel

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    device = torch.device(f"cuda:{rank}" if spec["device"] == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=spec["init"], rank=rank,
                                world_size=world)
    try:
        from iggt_lightning import context_parallel as cp

        torch.manual_seed(0)
        model = IGGTModel.from_preset(spec["preset"]).eval().to(device)
        H, W = spec["size"]
        images = torch.rand(1, spec["views"], 3, H, W, generator=torch.Generator().manual_seed(1)).to(device)

        def run(x):
            if world == 1:
                with torch.no_grad():
                    return model(x), None
            return cp.forward_local(model, x)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        run(images[:, :max(2, world)])                   # warm-up: allocator, kernels, the process group
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = {"rank": rank, "rss_before_mib": _status_mib("VmRSS")}
        times = []
        for _ in range(spec["repeats"]):
            out = None
            t0 = time.perf_counter()
            out, shard = run(images)
            sync()
            times.append(time.perf_counter() - t0)
        row.update(views=(shard.stop - shard.start) if shard is not None else spec["views"],
                   times=[round(t, 3) for t in times], peak_rss_mib=_status_mib("VmHWM"))
        if device.type == "cuda":
            row["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / MIB, 1)
        if shard is not None:
            t0 = time.perf_counter()
            out = cp.gather_views(out, shard)
            sync()
            row["gather_s"] = round(time.perf_counter() - t0, 3)
        if rank == 0:
            out = {k: ([t.cpu() for t in v] if isinstance(v, list) else v.cpu()) for k, v in out.items() if k in KEYS}
            ref_path = Path(spec["dir"]).parent / "reference.pt"
            if spec["reference"]:
                torch.save(out, ref_path)
            elif ref_path.is_file():
                row["max_rel_diff"] = _diffs(out, torch.load(ref_path, weights_only=True))
        with open(Path(spec["dir"]) / f"rank{rank}.json", "w") as f:
            json.dump(row, f)
    finally:
        if world > 1:
            dist.destroy_process_group()


def measure(name: str, processes: int, threads: int, views: int, a, work: Path, reference: bool) -> dict:
    """One run in fresh processes -> its row (``status`` ok, timeout or the error's last line)."""
    import torch.multiprocessing as mp

    run_dir = work / name.replace(" ", "")
    run_dir.mkdir()
    spec = {"preset": a.preset, "size": list(a.size), "views": views, "repeats": a.repeats, "threads": threads,
            "device": a.device, "dir": str(run_dir), "reference": reference,
            "init": f"file://{run_dir / 'rendezvous'}"}
    row = {"name": name, "processes": processes, "threads_per_process": threads}
    ctx = mp.start_processes(_worker, args=(processes, spec), nprocs=processes, join=False, start_method="spawn")
    deadline = time.monotonic() + a.timeout
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                return {**row, "status": f"timeout ({a.timeout:g} s)"}
    except Exception as err:          # a worker failed (out of memory, ...): recorded, the next run goes on
        return {**row, "status": "error: " + (str(err).strip().splitlines() or ["?"])[-1][:300]}
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(processes)]
    seconds = max(statistics.median(r["times"]) for r in ranks)
    row.update(status="ok", seconds=round(seconds, 3), per_process=ranks)
    if "max_rel_diff" in ranks[0]:
        row["max_rel_diff"] = ranks[0]["max_rel_diff"]
    return row


def runs_for(a) -> list[tuple[str, int, int]]:
    n = a.processes
    if a.device == "cuda":
        return [("1p", 1, 1), (f"{n}p", n, 1)]
    return [("1p x 1t", 1, 1), (f"1p x {n}t", 1, n), (f"{n}p x 1t", n, 1)]


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(payload: dict) -> str:
    s = payload["settings"]
    names = [name for name, _, _ in runs_for(argparse.Namespace(**s))]
    lines = [BEGIN, "| views | " + " | ".join(f"{n} s" for n in names) + " | split vs "
             f"{names[-2]} | peak RSS MiB per process ({' / '.join(names)}) | max rel diff of the split run |",
             "|---|" + "---|" * (len(names) + 3)]
    for r in payload["results"]:
        runs = {x["name"]: x for x in r["runs"]}

        def sec(n):
            x = runs.get(n, {})
            return _fmt(x.get("seconds")) if x.get("status") == "ok" else x.get("status", "-")

        base, split = runs.get(names[-2], {}), runs.get(names[-1], {})
        ratio = (f"{base['seconds'] / split['seconds']:.2f}x" if base.get("status") == split.get("status") == "ok"
                 else "-")
        rss = " / ".join(
            ", ".join(_fmt(p.get("peak_rss_mib"), ".0f") for p in runs[n]["per_process"])
            if runs.get(n, {}).get("status") == "ok" else "-" for n in names)
        diff = split.get("max_rel_diff")
        lines.append(f"| {r['views']} | " + " | ".join(sec(n) for n in names) + f" | {ratio} | {rss} | "
                     f"{_fmt(max(diff.values()) if diff else None, '.1e')} |")
    env = payload["environment"]
    lines.append(f"\n(commit {(env.get('git_commit') or '?')[:7]}, {env.get('cpu_model') or env['processor']}, "
                 f"{env['cpu_count']} cores, torch {env['torch']}, {s['device']}; preset {s['preset']}, "
                 f"{s['size'][0]}x{s['size'][1]}, median of {s['repeats']}; load average "
                 f"{payload['load_before'][0]:.2f} before, {payload.get('load_after', [float('nan')])[0]:.2f} after)")
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> int:
    from iggt_lightning.benchmarking import environment, fill_block_from_json, parse_size, positive_int
    from iggt_lightning.fileio import write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--views", type=positive_int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--processes", type=positive_int, default=2)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=parse_size, default=(224, 224), help="HxW")
    ap.add_argument("--repeats", type=positive_int, default=1, help="timed forwards per run (median)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one run (all its processes) may take")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "context_parallel.json"))
    ap.add_argument("--render", action="store_true", help="only refill the docs table from the JSON")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    if a.processes < 2:
        ap.error(f"--processes: expected at least 2 (the split run); got {a.processes}")
    if min(a.views) < a.processes:
        ap.error(f"--views: every view count must be at least --processes ({a.processes}); got {min(a.views)}")
    import torch

    from iggt_lightning.model import PRESETS

    if a.preset not in PRESETS:
        ap.error(f"--preset: expected one of {sorted(PRESETS)}; got {a.preset!r}")
    if a.device == "cuda" and torch.cuda.device_count() < a.processes:
        ap.error(f"--device cuda: {a.processes} processes need {a.processes} GPUs (one each); "
                 f"{torch.cuda.device_count()} visible")
    env = environment(torch.device("cuda" if a.device == "cuda" else "cpu"), ROOT)
    payload = {"environment": env, "load_before": list(os.getloadavg()),
               "settings": {"preset": a.preset, "size": list(a.size), "views": a.views, "repeats": a.repeats,
                            "device": a.device, "processes": a.processes},
               "threads_per_process": {name: t for name, _, t in runs_for(a)}, "results": []}
    with tempfile.TemporaryDirectory(prefix="iggt-cp-") as tmp:
        for views in a.views:
            work = Path(tmp) / str(views)
            work.mkdir()
            rows = []
            for i, (name, processes, threads) in enumerate(runs_for(a)):
                rows.append(measure(name, processes, threads, views, a, work, reference=i == 0))
                print(f"{views} views, {name}: {rows[-1].get('seconds', rows[-1]['status'])}", flush=True)
            (work / "reference.pt").unlink(missing_ok=True)
            payload["results"].append({"views": views, "runs": rows})
            payload["load_after"] = list(os.getloadavg())
            write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
