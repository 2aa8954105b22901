"""Whole videos: windowed reconstruction against one exact pass, on the long-sequence test bed.

Two parts, each optional (``--skip scaling`` / ``--skip accuracy``):

(a) **scaling**: ``iggt predict VIDEO --window W --overlap K`` as a user runs it (a subprocess per run; the video
    written by ``LongSequence.write_video``), frames 64 .. 1000 (``--frames``), and the exact one-pass run
    (``--video-frames N``) where it fits in ``--exact-limit`` seconds: wall time and peak resident memory of the
    process (``os.wait4``'s ``ru_maxrss``: everything it held, weights, decoder and outputs included). The model:
    ``--checkpoint`` (default: the ``nano`` preset with random weights, written once: time and memory do not
    depend on the weights).
(b) **accuracy** (``--trained CKPT``, the main job's model: ``iggt fit --config synthetic_tiny`` then
    ``runs/synthetic_tiny/checkpoints/last.ckpt``): on a ``--accuracy-frames`` long sequence (default 300),
    windowed with association vs windowed without it; on its first ``--exact-frames`` frames (default 48, where one
    pass fits), the same two plus the exact pass. Scored from the prediction folders against the sequence's
    ground truth (``iggt_lightning.metrics.sequence``): T-mIoU, T-SR, id switches, ATE, RPE, AbsRel.

    python -m benchmarks.long_video --trained runs/synthetic_tiny/checkpoints/last.ckpt
    python -m benchmarks.long_video --skip accuracy --frames 64 256 --exact-frames 16 32   # a short run

Writes ``benchmarks/long_video.json`` (``--json``) with the environment; ``--render`` refills the table in
docs/long-videos.md from it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from iggt_lightning.benchmarking import environment, fill_block_from_json
from iggt_lightning.fileio import write_json

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- long-video-table -->", "<!-- /long-video-table -->"
THREADS = [2]          # torch threads of the runs (--threads)
METRICS = ("t_miou", "t_sr", "id_switches", "ate", "rpe_trans", "rpe_rot_deg", "abs_rel_median")


def run_measured(args: list[str], cwd: Path, timeout: float) -> dict:
    """Run ``iggt ARGS`` in a subprocess; its wall time, peak RSS (MiB) and exit status (stderr tail on failure)."""
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONWARNINGS"] = "ignore"
    env["OMP_NUM_THREADS"] = str(THREADS[0])
    err = open(cwd / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "iggt_lightning", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"status": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
        time.sleep(0.05)
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    out = {"status": "ok" if code == 0 else f"exit {code}", "seconds": round(seconds, 2),
           "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    if code:
        err.seek(0)
        out["stderr"] = err.read()[-800:]
    return out


def nano_checkpoint(folder: Path) -> Path:
    import torch

    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.model import IGGTModel

    path = folder / "nano.safetensors"
    torch.manual_seed(0)
    save_model(IGGTModel.from_preset("nano", drop_heads=["track"]), path)
    return path


def scaling(a, work: Path) -> dict:
    from iggt_lightning.data.long_sequence import LongSequence

    ckpt = Path(a.checkpoint) if a.checkpoint else nano_checkpoint(work)
    rows = []
    exact_alive = True
    for n in sorted(set(a.frames) | set(a.exact_frames)):
        video = work / f"seq_{n}.mp4"
        LongSequence(frames=n, seed=a.seed).write_video(video)
        # the point head's maps: every frame's points count (with random weights most predicted cameras are not
        # valid, so the depth maps unprojected with them would leave most frames out of the cloud)
        common = [str(video), "-c", str(ckpt), "--size", "112", "84", "--quiet", "--points-from", "point"]
        row = {"frames": n}
        if n in a.frames:
            out = work / f"win_{n}"
            row["windowed"] = run_measured(["predict", *common, "-o", str(out), "--window", str(a.window),
                                            "--overlap", str(a.overlap)], work, a.timeout)
            row["windowed"].update(_cloud(out))
            print(f"frames {n}: windowed {row['windowed']}", flush=True)
        if n in a.exact_frames and exact_alive:
            out = work / f"exact_{n}"
            row["exact"] = run_measured(["predict", *common, "-o", str(out), "--video-frames", str(n)], work,
                                        a.exact_limit)
            exact_alive = row["exact"]["status"] == "ok"
            row["exact"].update(_cloud(out))
            print(f"frames {n}: exact {row['exact']}", flush=True)
        rows.append(row)
        for f in work.glob(f"*_{n}"):
            subprocess.run(["rm", "-rf", str(f)])
    return {"checkpoint": "nano preset, random weights (seed 0)" if not a.checkpoint else a.checkpoint,
            "window": a.window, "overlap": a.overlap, "size": [112, 84], "rows": rows}


def _cloud(out: Path) -> dict:
    """The cloud a run wrote: pixels kept by the confidence filter and points written (at most max_points)."""
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"cloud_kept": m["cloud"]["kept"], "cloud_points": m["cloud"]["points"], "max_points": m["cloud"]["max_points"]}


def score_folder(folder: Path, seq, frames: range) -> dict:
    """The sequence metrics of a prediction folder against the sequence's ground truth."""
    from PIL import Image

    from iggt_lightning.metrics.sequence import SequenceMetrics

    cams = json.loads((folder / "cameras.json").read_text())["views"]
    order = [v["file_name"] for v in cams]
    depth = np.load(folder / "depth" / "depth.npz")["depth"]
    m = SequenceMetrics()
    stems = [Path(n).stem for n in order]
    for k, i in enumerate(frames):
        ids = np.asarray(Image.open(folder / "masks" / f"{stems[k]}.png")).astype(np.int64)
        gt = seq.frame(i)
        m.update(k, ids, gt["instance_ids"], depth[k], gt["depth"])
    m.set_trajectory(np.stack([np.asarray(v["extrinsic"]) for v in cams]), seq.extrinsics[frames.start:frames.stop])
    return {k: v for k, v in m.compute().items()}


def _oracle_run(seq, frames: range, window: int, overlap: int, associate: bool) -> dict:
    import torch

    from iggt_lightning.benchmarking.oracle import GroundTruthNetwork
    from iggt_lightning.geometry import pose_encoding_to_extri_intri
    from iggt_lightning.inference.windowed import WindowOptions, iter_windows, plan_windows, reconstruct
    from iggt_lightning.metrics.sequence import SequenceMetrics

    class Part:                       # the frames [start, stop) of the sequence as a sequence of their own
        def __init__(self, seq, frames):
            self.seq, self.offset, self.objects = seq, frames.start, seq.objects

        def frame(self, i):
            return self.seq.frame(self.offset + i)

    part, n = Part(seq, frames), len(frames)
    net = GroundTruthNetwork(part, seed=0)
    plan = plan_windows(n, window, overlap) if window < n else [(0, n)]
    starts = iter([s for s, _ in plan])
    stream = (torch.as_tensor(part.frame(i)["images"]) for i in range(n))
    t0 = time.perf_counter()
    result = reconstruct(lambda images: net(images, next(starts)), iter_windows(plan, stream), n,
                         WindowOptions(window if window < n else n, overlap, associate=associate))
    seconds = time.perf_counter() - t0
    out = result.outputs
    H, W = out["images"].shape[-2:]
    E, _ = pose_encoding_to_extri_intri(out["pose_enc"][-1][0], (H, W))
    m = SequenceMetrics()
    for k in range(n):
        f = part.frame(k)
        m.update(k, out["instance_masks"][0, k], f["instance_ids"], out["depth"][0, k, ..., 0], f["depth"])
    m.set_trajectory(E, seq.extrinsics[frames.start:frames.stop])
    return {"status": "ok", "seconds": round(seconds, 2), "metrics": m.compute()}


def accuracy(a, work: Path) -> dict:
    from iggt_lightning.data.long_sequence import LongSequence

    seq = LongSequence(frames=a.accuracy_frames, seed=a.seed)
    runs = {}
    for part, frames, kinds in (("long", range(0, a.accuracy_frames), ("windowed", "no_association")),
                                ("short", range(0, a.accuracy_exact_frames),
                                 ("windowed", "no_association", "exact"))):
        for kind in kinds:
            window = len(frames) if kind == "exact" else a.window
            r = _oracle_run(seq, frames, window, a.overlap, associate=kind != "no_association")
            runs[f"oracle {part}/{kind}"] = r
            print("oracle", part, kind, r["metrics"], flush=True)
    photos = work / "photos"
    seq.write_photos(photos)
    names = sorted(p for p in photos.glob("*.png"))
    short = work / "short"
    short.mkdir()
    for p in names[: a.accuracy_exact_frames]:
        os.link(p, short / p.name)
    plans = {"long": (photos, range(0, a.accuracy_frames), ("windowed", "no_association")),
             "short": (short, range(0, a.accuracy_exact_frames), ("windowed", "no_association", "exact"))}
    for label, ckpt in zip(a.labels or [Path(c).parent.parent.name for c in a.trained], a.trained):
        common = ["-c", ckpt, "--size", "112", "84", "--quiet", "--exporters", "masks,depth_maps,cameras_json"]
        for part, (folder, frames, kinds) in plans.items():
            for kind in kinds:
                out = work / f"{label}_{part}_{kind}"
                extra = [] if kind == "exact" else ["--window", str(a.window), "--overlap", str(a.overlap)]
                if kind == "no_association":
                    extra.append("--no-association")
                r = run_measured(["predict", str(folder), *common, "-o", str(out), *extra], work, a.timeout)
                if r["status"] == "ok":
                    r["metrics"] = score_folder(out, seq, frames)
                runs[f"{label} {part}/{kind}"] = r
                print(label, part, kind, r.get("metrics", r), flush=True)
    return {"checkpoints": dict(zip(a.labels or [Path(c).parent.parent.name for c in a.trained], a.trained)),
            "frames": a.accuracy_frames, "exact_frames": a.accuracy_exact_frames, "seed": a.seed,
            "window": a.window, "overlap": a.overlap, "runs": runs}


def table(payload: dict) -> str:
    lines = [BEGIN]
    sc = payload.get("scaling")
    if sc:
        lines += ["| frames | windowed s | windowed peak MiB | windowed cloud points | exact s | exact peak MiB | "
                  "exact cloud points |", "|---|---|---|---|---|---|---|"]
        for r in sc["rows"]:
            w, e = r.get("windowed") or {}, r.get("exact") or {}
            lines.append(f"| {r['frames']} | {w.get('seconds', '-')} | {w.get('peak_rss_mib', '-')} | "
                         f"{w.get('cloud_points', '-')} | "
                         f"{e.get('seconds', '-') if e.get('status', 'ok') == 'ok' else e.get('status')} | "
                         f"{e.get('peak_rss_mib', '-')} | {e.get('cloud_points', '-')} |")
        lines.append("")
    acc = payload.get("accuracy")
    if acc:
        lines += ["| run | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
        for name, r in acc["runs"].items():
            m = r.get("metrics") or {}
            lines.append(f"| {name} | " + " | ".join(
                (f"{m[k]:.3f}" if isinstance(m.get(k), float) else str(m.get(k, r['status']))) for k in METRICS)
                + " |")
    env = payload["environment"]
    lines.append(f"\n(commit {env['git_commit'][:7]}, {env.get('cpu_model') or env['processor']}, "
                 f"{env['cpu_count']} cores, torch {env['torch']}; load average {payload['load_before'][0]:.2f} "
                 f"before, {payload['load_after'][0]:.2f} after; scaling: "
                 f"{(sc or {}).get('checkpoint', '-')}, windows of {(sc or {}).get('window', '-')} sharing "
                 f"{(sc or {}).get('overlap', '-')}, input 112x84, every exporter, the point head's points; accuracy: sequence seed "
                 f"{(acc or {}).get('seed', '-')}, {(acc or {}).get('frames', '-')} frames (the first "
                 f"{(acc or {}).get('exact_frames', '-')} for short), checkpoints "
                 f"{', '.join((acc or {}).get('checkpoints', {})) or '-'})")
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[64, 128, 256, 512, 1000])
    ap.add_argument("--exact-frames", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--exact-limit", type=float, default=900, help="seconds an exact run may take")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--trained", nargs="*", default=[], help="trained checkpoints for the accuracy part")
    ap.add_argument("--labels", nargs="*", default=None, help="a name per --trained checkpoint (default: its run)")
    ap.add_argument("--accuracy-frames", type=int, default=300)
    ap.add_argument("--accuracy-exact-frames", type=int, default=48, help="the first frames, where one pass fits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--skip", nargs="*", default=[], choices=["scaling", "accuracy"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "long_video.json"))
    ap.add_argument("--render", action="store_true", help="only refill the docs table from the JSON")
    a = ap.parse_args(argv)
    if a.render:
        fill_block_from_json(BEGIN, END, table, a.json, ROOT)
        return 0
    import torch

    THREADS[0] = a.threads
    payload = {"environment": environment(torch.device("cpu"), ROOT), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="iggt-long-") as tmp:
        if "scaling" not in a.skip:
            payload["scaling"] = scaling(a, Path(tmp))
            write_json(a.json, payload)
        if "accuracy" not in a.skip:
            payload["accuracy"] = accuracy(a, Path(tmp))
    payload["load_after"] = os.getloadavg()
    write_json(a.json, payload)
    print(table(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
