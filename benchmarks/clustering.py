"""Speed and agreement of the clusterers on 8 views at 336x504 (1.35 M pixels), CPU.

    python benchmarks/clustering.py [--views 8] [--size 336 504] [--threads 2] [--json path]

The features stand in for a trained instance head: SyntheticScenes renders the views (instance ids and
world points of procedural rooms); each instance, and the background, gets a random unit vector, and every
pixel that vector plus Gaussian noise (``--noise``). Reports seconds per clusterer (best of ``--repeat``),
instances found, the adjusted Rand index (ARI) of each against the rendered ids and between the two
clusterers, as a table and JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iggt_lightning.data import SyntheticScenes  # noqa: E402
from iggt_lightning.fileio import write_json  # noqa: E402
from iggt_lightning.inference import build_clusterer  # noqa: E402


def synthetic_features(views: int, size: tuple[int, int], noise: float, seed: int):
    sample = SyntheticScenes(length=1, num_views=views, image_size=size, num_objects=(6, 10), seed=seed)[0]
    ids = sample["instance_ids"]
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(int(ids.max()) + 1, 8, generator=g), dim=-1)
    feats = centres[ids] + noise * torch.randn(*ids.shape, 8, generator=g)
    return feats.permute(0, 3, 1, 2).contiguous(), sample["world_points"], ids


def main() -> int:
    from sklearn.metrics import adjusted_rand_score

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(336, 504))
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "clustering.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    feats, points, ids = synthetic_features(a.views, tuple(a.size), a.noise, a.seed)
    gt = ids.flatten().numpy()
    specs = {"torch (default)": "torch",
             "hdbscan (official, 20k sample)": {"name": "hdbscan", "preset": "large", "backend": "hdbscan"},
             # scikit-learn's epsilon merge fails under NumPy >= 2.4 (issue 33219): shows what that costs
             "hdbscan, sklearn backend": {"name": "hdbscan", "preset": "large", "backend": "sklearn"}}
    rows, labels = [], {}
    for name, spec in specs.items():
        backend = spec.get("backend") if isinstance(spec, dict) else None
        if backend and importlib.util.find_spec(backend) is None:
            print(f"skipped {name}: the {backend} package is not installed")
            continue
        clusterer = build_clusterer(spec)
        times = []
        for _ in range(a.repeat if spec == "torch" else 1):
            t0 = time.perf_counter()
            out = clusterer(feats, points)
            times.append(time.perf_counter() - t0)
        labels[name] = out.ids.flatten().numpy()
        rows.append({"clusterer": name, "seconds": min(times), "instances": out.num_instances,
                     "ari_vs_truth": adjusted_rand_score(gt, labels[name])})
    names = list(labels)
    agreement = adjusted_rand_score(labels[names[0]], labels[names[1]]) if len(names) > 1 else float("nan")
    print(f"{a.views} views x {a.size[0]}x{a.size[1]} = {ids.numel() / 1e6:.2f} M pixels, "
          f"{int(ids.max()) + 1} rendered ids (incl. background), {a.threads} threads")
    print(f"{'clusterer':<32}{'seconds':>10}{'instances':>11}{'ARI vs truth':>14}")
    for r in rows:
        print(f"{r['clusterer']:<32}{r['seconds']:>10.2f}{r['instances']:>11}{r['ari_vs_truth']:>14.4f}")
    print(f"agreement of the first two (ARI): {agreement:.4f}")
    write_json(a.json, {"views": a.views, "size": list(a.size), "pixels": ids.numel(), "noise": a.noise,
                        "threads": a.threads, "load_avg": os.getloadavg(), "rows": rows, "ari_between": agreement})
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
