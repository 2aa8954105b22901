"""Time per stage of `iggt predict` for 8 photos at 336x504 on CPU, per preset, and peak memory.

    python -m benchmarks.predict [--presets tiny small-dino] [--views 8] [--threads 2] [--json path]
    python -m benchmarks.predict --ref /path/to/older/checkout --repeats 2    # before/after, interleaved

Each preset runs in its own subprocess (randomly initialised weights saved to a temporary checkpoint, so
nothing is downloaded) so that its peak resident memory (ru_maxrss) is its own. Random weights predict no
usable camera (a field of view <= 0), so the camera head's last layer is set to predict a 1-radian field of
view at the origin, with a little noise per view: every view then has a camera, points and COLMAP tracks
(all views see nearly everything, the most observations a COLMAP export can have). ``--ref DIR`` runs the same
child in another checkout of the project, alternating with this one, and prints the per-stage ratios.
Prints a table and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch, numpy as np
from PIL import Image
from iggt_lightning.checkpoints import save_model
from iggt_lightning.data import SyntheticScenes
from iggt_lightning.inference.predict import PredictOptions, run_predict
from iggt_lightning.model import IGGTModel
torch.set_num_threads({threads})
work = {work!r}
torch.manual_seed(0)
model = IGGTModel.from_preset({preset!r}, drop_heads=["track"])
head = model.heads["camera"]
last = head.pose_branch.fc2
with torch.no_grad():   # a plausible camera from random weights: t = 0, identity rotation, fov 1 rad, some noise
    last.weight.mul_(1e-3)
    last.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=last.bias.dtype) / head.num_iterations)
save_model(model, work + "/model.safetensors")
scene = SyntheticScenes(length=1, num_views={views}, image_size=(336, 504), seed=0)[0]
import os
os.makedirs(work + "/photos", exist_ok=True)
for i, im in enumerate(scene["images"]):
    Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(f"{{work}}/photos/{{i:03d}}.png")
t0 = time.perf_counter()
s = run_predict(PredictOptions(inputs=[work + "/photos"], checkpoint=work + "/model.safetensors", out=work + "/out",
                               progress=False))
total = time.perf_counter() - t0
print(json.dumps({{"seconds": s["seconds"], "total": total, "points": s["points"], "instances": s["instances"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _env_for(root: Path) -> dict:
    """The child's environment: this checkout's code is the installed package; another checkout (``--ref``, the
    user's choice) goes first on PYTHONPATH so its ``iggt_lightning`` is the one imported."""
    env = dict(os.environ)
    if root != ROOT:
        env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small-dino"])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "predict.json"))
    p.add_argument("--ref", type=Path, help="another checkout of the project to compare with (before/after)")
    p.add_argument("--repeats", type=int, default=1, help="runs per preset and checkout (interleaved)")
    a = p.parse_args()
    trees = [("this", ROOT)] + ([("ref", a.ref.resolve())] if a.ref else [])
    rows = []
    load = [os.getloadavg()]
    for preset in a.presets:
        for repeat in range(a.repeats):
            for tree, root in trees:   # alternate the checkouts so a noisy moment hits both
                with tempfile.TemporaryDirectory() as work:
                    code = CHILD.format(threads=a.threads, work=work, preset=preset, views=a.views)
                    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         env=_env_for(root))
                    if res.returncode:
                        print(f"{tree} ({root}), {preset}:\n{res.stderr[-3000:]}", file=sys.stderr)
                        return 1
                    rows.append({"preset": preset, "tree": tree, "repeat": repeat,
                                 **json.loads(res.stdout.strip().splitlines()[-1])})
                load.append(os.getloadavg())
    stages = list(rows[0]["seconds"])
    print(f"{a.views} photos at 336x504 (resize mode), CPU, {a.threads} threads; seconds per stage")
    print(f"{'preset':<12}{'tree':<6}" + "".join(f"{s:>13}" for s in stages) + f"{'total':>9}{'peak MB':>9}"
          f"{'points':>10}")
    for r in rows:
        print(f"{r['preset']:<12}{r['tree']:<6}" + "".join(f"{r['seconds'].get(s, float('nan')):>13.2f}" for s in stages)
              + f"{r['total']:>9.2f}{r['peak_rss_mb']:>9.0f}{r['points']:>10,}")
    ratios = {}
    if a.ref:
        print("\nthis / ref, median over repeats")
        for preset in a.presets:
            def med(tree, stage):
                vals = [r["seconds"].get(stage) if stage != "total" else r["total"] for r in rows
                        if r["preset"] == preset and r["tree"] == tree]
                vals = sorted(v for v in vals if v is not None)
                return vals[len(vals) // 2] if vals else float("nan")
            ratios[preset] = {s: med("this", s) / med("ref", s) for s in [*stages, "total"]}
            print(f"{preset:<12}" + "".join(f"{s}={v:.2f}  " for s, v in ratios[preset].items()))
    write_json(a.json, {"views": a.views, "size": [336, 504], "threads": a.threads, "load_avg": load,
                        "ref": str(a.ref) if a.ref else None, "rows": rows, "ratios": ratios})
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
