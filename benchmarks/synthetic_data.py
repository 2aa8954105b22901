"""Throughput of the procedural SyntheticScenes dataset (CPU).

    python -m benchmarks.synthetic_data [--scenes 40] [--out benchmarks/results/synthetic_data.json]

Prints a table (views, size, workers, scenes/s, ms/scene) and writes it as JSON atomically. ``workers = 0``
renders in this process; ``workers = 2`` goes through a DataLoader with two worker processes, which is
how training consumes it. Each worker renders whole scenes single-threaded, but handing a scene (~15 MB at
8 x 224 x 224) to the main process through shared memory costs the worker ~15 ms of kernel time, so on a
2-core machine 2 workers only match the in-process rate; with more cores throughput grows with the workers.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from iggt_lightning.data import SyntheticScenes, collate_scenes
from iggt_lightning.fileio import write_json

CONFIGS = [  # (views, (H, W), DataLoader workers)
    (8, (224, 224), 0),
    (8, (336, 504), 0),
    (8, (224, 224), 2),
    (8, (336, 504), 2),
]


def time_in_process(ds: SyntheticScenes, scenes: int) -> float:
    """Seconds for ``scenes`` consecutive samples, after one warm-up sample (imports, allocator)."""
    ds[0]
    start = time.perf_counter()
    for i in range(1, scenes + 1):
        ds[i]
    return time.perf_counter() - start


def time_dataloader(ds: SyntheticScenes, scenes: int, workers: int) -> float:
    """Seconds for ``scenes`` samples through a DataLoader, timed from the first delivered batch so that
    worker start-up is not counted (it is paid once per epoch with persistent workers)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=collate_scenes,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(scenes):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return elapsed


def run(scenes: int) -> list[dict]:
    rows = []
    for views, size, workers in CONFIGS:
        ds = SyntheticScenes(length=scenes + 1, num_views=views, image_size=size, seed=0)
        elapsed = time_dataloader(ds, scenes, workers) if workers else time_in_process(ds, scenes)
        rows.append({"views": views, "height": size[0], "width": size[1], "workers": workers, "scenes": scenes,
                     "scenes_per_s": scenes / elapsed, "ms_per_scene": 1000 * elapsed / scenes})
        print(_format_row(rows[-1]), flush=True)
    return rows


def _format_row(r: dict) -> str:
    return (f"{r['views']:>5}  {r['height']:>4}x{r['width']:<4}  {r['workers']:>7}  "
            f"{r['scenes_per_s']:>9.1f}  {r['ms_per_scene']:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40, help="timed scenes per configuration")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "synthetic_data.json")
    args = parser.parse_args()
    torch.set_num_threads(1)   # rendering is numpy, single-threaded; keep torch's few ops from oversubscribing
    load = os.getloadavg()[0]
    # Other processes on the machine skew every number here; the load average says how busy it was.
    print(f"load average (1 min) before the run: {load:.2f} on {os.cpu_count()} cores")
    print(f"{'views':>5}  {'size':<9}  {'workers':>7}  {'scenes/s':>9}  {'ms/scene':>9}")
    rows = run(args.scenes)
    payload = {
        "benchmark": "synthetic_data", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__,
        "load_average_1min_before": load, "load_average_1min_after": os.getloadavg()[0], "results": rows,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
