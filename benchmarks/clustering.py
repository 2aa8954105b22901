"""Speed, agreement and pixel scaling of the clusterers, CPU.

    python -m benchmarks.clustering [--views 8] [--size 336 504] [--scaling-views 1 4 16 64] [--threads 2]
    python -m benchmarks.clustering --readme      # only rewrite README's block from the JSON

The features stand in for a trained instance head: SyntheticScenes renders the views (instance ids and
world points of procedural rooms); each instance, and the background, gets a random unit vector, and every
pixel that vector plus Gaussian noise (``--noise``).

* agreement (``--views`` at ``--size``): seconds per clusterer (best of ``--repeat``), instances found, the
  adjusted Rand index (ARI) of each against the rendered ids and between the first two clusterers.
* scaling (``--scaling-views`` at ``--size``): seconds per clusterer as the pixel count grows. Both
  clusterers fit a fixed-size pixel sample and then label every pixel by a nearest-centre or nearest-sample
  search, so their time should grow far slower than the pixel count (``ns/pixel`` falls).
Writes a table and JSON (default ``benchmarks/clustering.json``, the README's source).
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

from iggt_lightning.benchmarking import fill_block_from_json
from iggt_lightning.data import SyntheticScenes
from iggt_lightning.fileio import write_json
from iggt_lightning.inference import build_clusterer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_JSON = ROOT / "benchmarks" / "clustering.json"
BEGIN, END = "<!-- clustering.json: python -m benchmarks.clustering --readme -->", "<!-- /clustering.json -->"
SPECS = {"torch (default)": "torch",
         "hdbscan (official, 20k sample)": {"name": "hdbscan", "preset": "large", "backend": "hdbscan"},
         # scikit-learn's epsilon merge fails under NumPy >= 2.4 (issue 33219): shows what that costs
         "hdbscan, sklearn backend": {"name": "hdbscan", "preset": "large", "backend": "sklearn"}}


def synthetic_features(views: int, size: tuple[int, int], noise: float, seed: int):
    sample = SyntheticScenes(length=1, num_views=views, image_size=size, num_objects=(6, 10), seed=seed)[0]
    ids = sample["instance_ids"]
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(int(ids.max()) + 1, 8, generator=g), dim=-1)
    feats = centres[ids] + noise * torch.randn(*ids.shape, 8, generator=g)
    return feats.permute(0, 3, 1, 2).contiguous(), sample["world_points"], ids


def _available(spec) -> bool:
    backend = spec.get("backend") if isinstance(spec, dict) else None
    return backend is None or importlib.util.find_spec(backend) is not None


def _time(clusterer, feats, points, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = clusterer(feats, points)
        times.append(time.perf_counter() - t0)
    return min(times), out


def agreement(a) -> dict:
    from sklearn.metrics import adjusted_rand_score

    feats, points, ids = synthetic_features(a.views, tuple(a.size), a.noise, a.seed)
    gt = ids.flatten().numpy()
    rows, labels = [], {}
    for name, spec in SPECS.items():
        if not _available(spec):
            print(f"skipped {name}: the {spec['backend']} package is not installed")
            continue
        seconds, out = _time(build_clusterer(spec), feats, points, a.repeat if spec == "torch" else 1)
        labels[name] = out.ids.flatten().numpy()
        rows.append({"clusterer": name, "seconds": seconds, "instances": out.num_instances,
                     "ari_vs_truth": adjusted_rand_score(gt, labels[name])})
    names = list(labels)
    between = adjusted_rand_score(labels[names[0]], labels[names[1]]) if len(names) > 1 else float("nan")
    print(f"{a.views} views x {a.size[0]}x{a.size[1]} = {ids.numel() / 1e6:.2f} M pixels, "
          f"{int(ids.max()) + 1} rendered ids (incl. background), {a.threads} threads")
    print(f"{'clusterer':<32}{'seconds':>10}{'instances':>11}{'ARI vs truth':>14}")
    for r in rows:
        print(f"{r['clusterer']:<32}{r['seconds']:>10.2f}{r['instances']:>11}{r['ari_vs_truth']:>14.4f}")
    print(f"agreement of the first two (ARI): {between:.4f}")
    return {"views": a.views, "pixels": ids.numel(), "rendered_ids": int(ids.max()) + 1, "rows": rows,
            "ari_between": between, "load_avg": os.getloadavg()}


def scaling(a) -> dict:
    specs = {k: v for k, v in list(SPECS.items())[:2] if _available(v)}
    rows = []
    print(f"{'views':>6}{'M pixels':>10}" + "".join(f"{n[:24]:>28}" for n in specs))
    for views in a.scaling_views:
        feats, points, ids = synthetic_features(views, tuple(a.size), a.noise, a.seed)
        row = {"views": views, "pixels": ids.numel(), "load_avg_before": os.getloadavg(), "clusterers": {}}
        for name, spec in specs.items():
            seconds, out = _time(build_clusterer(spec), feats, points, a.repeat if spec == "torch" else 1)
            row["clusterers"][name] = {"seconds": seconds, "ns_per_pixel": 1e9 * seconds / ids.numel(),
                                       "instances": out.num_instances}
        rows.append(row)
        print(f"{views:>6}{ids.numel() / 1e6:>10.2f}" + "".join(
            f"{c['seconds']:>14.3f} s {c['ns_per_pixel']:>8.0f} ns/px" for c in row["clusterers"].values()))
        del feats, points, ids
    return {"rows": rows, "clusterers": list(specs)}


def readme_table(p: dict) -> str:
    ag, sc = p["agreement"], p["scaling"]
    h, w = p["size"]
    lines = [BEGIN,
             f"CPU, {p['threads']} threads, torch {p['torch']}, synthetic features (noise {p['noise']}); "
             f"{p['timestamp'][:10]}", "",
             f"{ag['views']} views at {h}×{w} ({ag['pixels'] / 1e6:.2f} M pixels, {ag['rendered_ids']} rendered ids):",
             "", "| clusterer | seconds | instances | ARI vs rendered ids |", "|---|---:|---:|---:|"]
    lines += [f"| {r['clusterer']} | {r['seconds']:.2f} | {r['instances']} | {r['ari_vs_truth']:.2f} |"
              for r in ag["rows"]]
    lines += ["", f"ARI between the first two: {ag['ari_between']:.2f}.", "",
              f"Pixel scaling at {h}×{w}, seconds (ns per pixel):", "",
              "| views | M pixels | " + " | ".join(sc["clusterers"]) + " |",
              "|---:|---:|" + "---:|" * len(sc["clusterers"])]
    for r in sc["rows"]:
        cells = [f"{c['seconds']:.2f} ({c['ns_per_pixel']:.0f})" for c in r["clusterers"].values()]
        lines.append(f"| {r['views']} | {r['pixels'] / 1e6:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [END])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, nargs=2, default=(336, 504))
    p.add_argument("--scaling-views", type=int, nargs="*", default=[1, 4, 16, 64])
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(DEFAULT_JSON))
    p.add_argument("--readme", action="store_true", help="only rewrite README's block from --json")
    a = p.parse_args()
    if a.readme:
        fill_block_from_json(BEGIN, END, readme_table, a.json, ROOT)
        return 0
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    payload = {"size": list(a.size), "noise": a.noise, "threads": a.threads, "seed": a.seed,
               "torch": torch.__version__, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "argv": sys.argv[1:], "agreement": agreement(a), "scaling": scaling(a),
               "load_avg_end": os.getloadavg()}
    write_json(a.json, payload)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
