"""Loading throughput of the real-dataset readers: scenes/s at 8 views, 336x504, through a DataLoader (CPU).

    python -m benchmarks.data_loading [--layouts scannetpp re10k] [--samples 32] [--workers 2]
                                                    [--quick] [--out benchmarks/results/data_loading.json]

For each layout a fixture is written to a temporary folder with ``write_fixture`` (4 scenes x 12 frames,
stored at 378x560, larger than the target so that the crop and resize really work; ScanNet's colour is
written at twice its depth resolution, 756x1120, about the size of the real 1296x968 colour frames, and the
reader works on the 378x560 depth grid as on real ScanNet). The reader is then built as for training
(``split="all"``, ``deterministic=False``: random views, random crop position, scale augmentation 1-1.2,
colour jitter p=0.5) and a shuffled DataLoader with batch size 1 and ``collate_checked`` is timed over
``--samples`` samples. What is measured per sample: decoding every file of 8 views (image, depth, ids,
cameras), the co-transforms, the unprojection of depth to world points, the id renumbering, the batch
contract check and collation (plus, with workers, the hand-over through shared memory).

Both ``--workers`` DataLoader workers and the in-process rate (workers = 0) are measured in the same run,
side by side. The first ``--warmup`` batches are not timed; the time to the first batch (worker start-up,
imports, the first sample) is reported separately as "first batch s". Each epoch is long enough that the
timed window never restarts the iterator (which would start the workers again). Workers run torch
single-threaded (``worker_init_fn``; the main process too, so that workers = 0 is one core's rate).

The fixture's files were just written, so they sit in the OS page cache: the numbers are an upper bound
for a cold disk or a network file system. Other processes skew them; the load average is recorded. Prints a
table and writes it as JSON atomically (default ``benchmarks/results/data_loading.json``).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from iggt_lightning.data import collate_checked
from iggt_lightning.data.fixtures import write_fixture
from iggt_lightning.data.registry import layouts, reader_class
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]

LAYOUTS = tuple(r.name for r in layouts() if not r.cameras_only)    # the training layouts (depth or ids)
STORED = (378, 560)       # (H, W) written: multiples of 14 (the renderer's constraint), larger than the target
TARGET = (336, 504)       # (H, W) of the samples


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(ds, samples: int, workers: int, warmup: int, seed: int, views: int) -> dict:
    """Time ``samples`` batches of one sample after ``warmup`` untimed ones; the first batch's latency
    (worker start-up included) is reported on its own."""
    if warmup + samples > len(ds):
        raise ValueError(f"{len(ds)} samples per epoch < {warmup} warm-up + {samples} timed")
    loader = torch.utils.data.DataLoader(
        ds, batch_size=1, shuffle=True, num_workers=workers, collate_fn=collate_checked,
        worker_init_fn=_one_thread if workers else None, generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    it = iter(loader)
    batch = next(it)
    first = time.perf_counter() - t0
    expected = (1, views, 3, *TARGET)
    if tuple(batch["images"].shape) != expected:
        raise RuntimeError(f"batch images {tuple(batch['images'].shape)}, expected {expected}")
    for _ in range(warmup - 1):
        next(it)
    t1 = time.perf_counter()
    for _ in range(samples):
        next(it)
    elapsed = time.perf_counter() - t1
    del it                                       # shuts the workers down
    return {"first_batch_s": first, "seconds": elapsed, "scenes_per_s": samples / elapsed,
            "ms_per_sample": 1000 * elapsed / samples}


def run_layout(layout: str, tmp: Path, a, samples: int, warmup: int, scenes: int, frames: int) -> dict:
    root = tmp / layout
    # The scannet fixture writes depth at image_size and colour at twice that; the reader works on the depth grid.
    t = time.perf_counter()
    write_fixture(layout, root, num_scenes=scenes, num_views=frames, image_size=STORED, seed=a.seed)
    write_s = time.perf_counter() - t
    per_scene = math.ceil((warmup + samples) / scenes)       # one epoch covers warm-up + timed samples
    ds = reader_class(layout)(root, split="all", num_views=a.views, image_size=TARGET, scale_augment=(1.0, 1.2),
                              color_jitter=0.5, view_sampling="random", samples_per_scene=per_scene,
                              deterministic=False, seed=a.seed)
    stored = [2 * STORED[0], 2 * STORED[1]] if layout == "scannet" else list(STORED)
    row = {"layout": layout, "reader": type(ds).__name__, "stored_image_hw": stored, "scenes": scenes,
           "frames_per_scene": frames, "fixture_write_s": write_s, "fixture_mb": _folder_bytes(root) / 2 ** 20,
           "load_average_1min_before": os.getloadavg()[0]}
    for workers in (a.workers, 0):
        m = measure(ds, samples, workers, warmup, a.seed, a.views)
        row.update({f"{k}_w{workers}": v for k, v in m.items()})
    row["ratio"] = row[f"scenes_per_s_w{a.workers}"] / row["scenes_per_s_w0"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument("--samples", type=int, default=32, help="timed samples (scenes) per layout and worker count")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, measured beside workers = 0")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (the first one is reported)")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--scenes", type=int, default=4, help="scenes of each fixture")
    p.add_argument("--frames", type=int, default=12, help="frames per scene of each fixture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke test: 4 timed samples, 1 warm-up, 2 scenes")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_loading.json")
    a = p.parse_args()
    if a.workers < 1:
        p.error("--workers must be >= 1 (workers = 0 is always measured beside it)")
    samples, warmup, scenes = (4, 1, 2) if a.quick else (a.samples, max(1, a.warmup), a.scenes)
    frames = max(a.frames, a.views)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    w = a.workers
    print(f"{a.views} views at {TARGET[0]}x{TARGET[1]}, batch 1, {samples} timed samples after {warmup} warm-up; "
          f"fixtures {scenes} scenes x {frames} frames at {STORED[0]}x{STORED[1]}")
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, load average (1 min) before: {load:.2f}\n",
          flush=True)
    header = (f"{'layout':<13}{'stored HxW':>11}{f'scenes/s {w}w':>13}{'scenes/s 0w':>13}{'ratio':>7}"
              f"{f'ms/sample {w}w':>15}{'ms/sample 0w':>14}{f'1st batch {w}w':>15}{'write s':>9}")
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iggt-data-bench-") as tmp:
        for layout in a.layouts:
            r = run_layout(layout, Path(tmp), a, samples, warmup, scenes, frames)
            rows.append(r)
            print(f"{layout:<13}{'x'.join(map(str, r['stored_image_hw'])):>11}{r[f'scenes_per_s_w{w}']:>13.2f}"
                  f"{r['scenes_per_s_w0']:>13.2f}{r['ratio']:>7.2f}{r[f'ms_per_sample_w{w}']:>15.0f}"
                  f"{r['ms_per_sample_w0']:>14.0f}{r[f'first_batch_s_w{w}']:>14.2f}s{r['fixture_write_s']:>9.1f}",
                  flush=True)
    payload = {
        "benchmark": "data_loading", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": a.quick,
        "views": a.views, "target_hw": list(TARGET), "stored_hw": list(STORED), "samples": samples,
        "warmup": warmup, "workers": w, "batch_size": 1, "augmentation": {"scale": [1.0, 1.2], "color_jitter": 0.5},
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "numpy": np.__version__, "load_average_1min_before": load,
        "load_average_after": list(os.getloadavg()), "results": rows,
    }
    write_json(a.out, payload)
    print(f"\nload average (1, 5, 15 min) after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
