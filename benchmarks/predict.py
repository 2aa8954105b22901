"""Time per stage of `iggt predict` for 8 photos at 336x504 on CPU, per preset, and peak memory.

    python benchmarks/predict.py [--presets tiny small-dino] [--views 8] [--threads 2] [--json path]

Each preset runs in its own subprocess (randomly initialised weights saved to a temporary checkpoint, so
nothing is downloaded) so that its peak resident memory (ru_maxrss) is its own. Prints a table and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, torch, numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from iggt_lightning.checkpoints import save_model
from iggt_lightning.data import SyntheticScenes
from iggt_lightning.inference.predict import PredictOptions, run_predict
from iggt_lightning.model import IGGTModel
torch.set_num_threads({threads})
work = {work!r}
torch.manual_seed(0)
save_model(IGGTModel.from_preset({preset!r}, drop_heads=["track"]), work + "/model.safetensors")
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small-dino"])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "predict.json"))
    a = p.parse_args()
    rows = []
    for preset in a.presets:
        with tempfile.TemporaryDirectory() as work:
            code = CHILD.format(root=str(ROOT), threads=a.threads, work=work, preset=preset, views=a.views)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if res.returncode:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append({"preset": preset, **json.loads(res.stdout.strip().splitlines()[-1])})
    stages = list(rows[0]["seconds"])
    print(f"{a.views} photos at 336x504 (resize mode), CPU, {a.threads} threads; seconds per stage")
    print(f"{'preset':<12}" + "".join(f"{s:>13}" for s in stages) + f"{'total':>9}{'peak MB':>9}{'points':>10}")
    for r in rows:
        print(f"{r['preset']:<12}" + "".join(f"{r['seconds'][s]:>13.2f}" for s in stages)
              + f"{r['total']:>9.2f}{r['peak_rss_mb']:>9.0f}{r['points']:>10,}")
    from iggt_lightning.fileio import write_json

    sys.path.insert(0, str(ROOT))
    write_json(a.json, {"views": a.views, "size": [336, 504], "threads": a.threads, "load_avg": os.getloadavg(),
                        "rows": rows})
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
