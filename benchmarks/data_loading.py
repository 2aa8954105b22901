"""Loading throughput of the real-dataset readers: scenes/s at 8 views, 336x504, through a DataLoader.

    PYTHONPATH=. python3 benchmarks/data_loading.py [--layouts scannetpp re10k] [--samples 32] [--workers 2]
                                                    [--quick] [--out benchmarks/results/data_loading.json]

For each layout a fixture is written to a temporary folder (4 scenes x 12 frames, stored at 378x560 so
that the crop and resize really work; ScanNet colour at twice its depth resolution), then samples of 8 views
at 336x504 with training augmentation (scale 1-1.2, colour jitter p=0.5) are drawn: file decoding, the
co-transforms, unprojection to world points, the batch-contract check and collation. Both ``--workers``
DataLoader workers and the in-process rate (workers = 0) are measured in the same run, side by side;
worker start-up is timed separately. Files sit in the OS page cache, so this is an upper bound for a cold
disk. Prints a table and writes JSON atomically.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iggt_lightning.data import collate_checked  # noqa: E402
from iggt_lightning.data.fixtures import LAYOUTS, reader_class, write_fixture  # noqa: E402
from iggt_lightning.fileio import write_json  # noqa: E402

STORED = (378, 560)       # multiples of 14 (the renderer's constraint), larger than the target
TARGET = (336, 504)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def measure(ds, samples: int, workers: int) -> dict:
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=workers,
                                         collate_fn=collate_checked, worker_init_fn=_one_thread if workers else None,
                                         persistent_workers=False)
    t0 = time.perf_counter()
    it = iter(loader)
    warm = 2
    for _ in range(warm):                     # worker start-up + first samples
        next(it)
    t1 = time.perf_counter()
    done = 0
    while done < samples:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    t2 = time.perf_counter()
    del it
    return {"startup_s": t1 - t0, "seconds": t2 - t1, "scenes_per_s": samples / (t2 - t1),
            "ms_per_sample": 1000 * (t2 - t1) / samples}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=LAYOUTS)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="4 samples, 2 scenes x 8 frames: a smoke test")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_loading.json"))
    a = p.parse_args()
    samples = 4 if a.quick else a.samples
    scenes, frames = (2, max(8, a.views)) if a.quick else (4, max(12, a.views))
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="iggt-data-bench-") as tmp:
        for layout in a.layouts:
            root = Path(tmp) / layout
            size = (STORED[0] // 2, STORED[1] // 2) if layout == "scannet" else STORED
            size = tuple(s - s % 14 for s in size)
            t = time.perf_counter()
            write_fixture(layout, root, num_scenes=scenes, num_views=frames, image_size=size)
            write_s = time.perf_counter() - t
            ds = reader_class(layout)(root, split="all", num_views=a.views, image_size=TARGET,
                                      scale_augment=(1.0, 1.2), color_jitter=0.5, samples_per_scene=8)
            row = {"layout": layout, "stored": list(size if layout != "scannet" else (2 * size[0], 2 * size[1])),
                   "fixture_write_s": write_s}
            for workers in (a.workers, 0):
                m = measure(ds, samples, workers)
                row.update({f"{k}@{workers}w": v for k, v in m.items()})
            row["ratio"] = row[f"scenes_per_s@{a.workers}w"] / row["scenes_per_s@0w"]
            rows.append(row)
            print(f"{layout}: {row[f'scenes_per_s@{a.workers}w']:.2f} scenes/s with {a.workers} workers", flush=True)
    w = a.workers
    print(f"\n{a.views} views at {TARGET[0]}x{TARGET[1]}, batch 1, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"{'layout':<14}{'stored HxW':>12}{f'scenes/s {w}w':>15}{'scenes/s 0w':>13}{'ratio':>7}"
          f"{f'ms/sample {w}w':>15}{'startup s':>11}{'write s':>9}")
    for r in rows:
        print(f"{r['layout']:<14}{'x'.join(map(str, r['stored'])):>12}{r[f'scenes_per_s@{w}w']:>15.2f}"
              f"{r['scenes_per_s@0w']:>13.2f}{r['ratio']:>7.2f}{r[f'ms_per_sample@{w}w']:>15.0f}"
              f"{r[f'startup_s@{w}w']:>11.2f}{r['fixture_write_s']:>9.1f}")
    write_json(a.out, {"views": a.views, "target": list(TARGET), "samples": samples, "workers": w,
                       "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                       "load_avg": os.getloadavg(), "rows": rows})
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
