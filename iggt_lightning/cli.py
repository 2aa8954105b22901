"""The ``iggt`` command: every subcommand is a row of :data:`COMMANDS` (``iggt --help`` lists them from there).

Lightning's subcommands, owned by :class:`~iggt_lightning.lightning_cli.IGGTCLI` (its configs, checkpoints and
options): ``iggt fit|validate|test --config CFG ...`` and ``iggt predict-dataset --config CFG [--data ...]
[--ckpt_path CKPT] --out DIR`` (Lightning's ``predict`` over a dataset: one folder per scene).

Helpers, each with its own parser: ``iggt predict PHOTOS... -c CKPT -o DIR`` (photos or videos -> one folder),
``iggt convert SRC DST``, ``iggt parity FIXTURE [--fp64] [--strict]``, ``iggt heads list``, ``iggt data check
PATH`` (validate a dataset folder), ``iggt view OUT_DIR`` (a prediction in the browser) and ``iggt publish
RUN_OR_CKPT DIR`` (a Hugging Face Hub-ready model folder; docs/hub.md). A checkpoint may be given as a Hub id
``OWNER/NAME[@REVISION][:FILE]`` or a model folder wherever a checkpoint file is read.

``iggt predict --config CFG ...`` is the older spelling of ``iggt predict-dataset --config CFG ...`` and still
runs it: the rule is only that ``--config`` is the first argument after ``predict``. The photos form has no
``--config`` option, so no photos command is read that way, and nothing else is looked at.

Checkpoints are data: a config stored in one may name only registered heads; ``--trust-checkpoint-code``
(predict, predict-dataset, convert, fit, validate, test) lets it import other head classes
(docs/checkpoints-are-data.md).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable


def _convert(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt convert", description="Convert an official IGGT/VGGT checkpoint "
                                "(.pt/.pth/.safetensors) to iggt-lightning's format (strict key accounting).")
    p.add_argument("src", help="a checkpoint file, a model folder, or a Hugging Face Hub id "
                   "OWNER/NAME[@REVISION][:FILE] (an existing local path wins; docs/hub.md)")
    p.add_argument("dst", help="output path; .safetensors or .pt")
    p.add_argument("--preset", default=None, help="model preset (default: detected from the keys)")
    p.add_argument("--trust-checkpoint-code", action="store_true", help="let the file's stored config import head "
                   "classes that are not registered (runs code named by the file: only for files you trust)")
    a = p.parse_args(argv)
    from .checkpoints import convert
    from .hub import resolve_checkpoint
    from .inference.output_folder import refuse_overlap

    try:
        src = str(resolve_checkpoint(a.src))        # a Hub id or model folder -> its weights file (docs/hub.md)
        refuse_overlap(a.dst, [("input checkpoint", src)], "the output")
        model = convert(src, a.dst, a.preset, trust_code=a.trust_checkpoint_code)
    except (ValueError, FileNotFoundError, OSError) as err:  # CheckpointError, UntrustedCodeError, ...
        print(f"iggt convert: {err}", file=sys.stderr)
        return 2
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"wrote {a.dst} ({n:,} values, heads: {', '.join(model.head_order)})")
    return 0


def _parity(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt parity", description="Compare this framework's forward with a "
                                "fixture made from the official IGGT forward (see docs/parity.md).")
    p.add_argument("fixture")
    p.add_argument("--fp64", action="store_true", help="run in float64 and compare track/vis/conf/pose_enc "
                   "with the fixture's float64 reference")
    p.add_argument("--strict", action="store_true", help="hold well-conditioned tensors to 2e-5 instead of 1e-4")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    from . import parity

    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        fx = parity.load_fixture(a.fixture)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as err:
        print(f"iggt parity: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(fx.get("description", a.fixture))
    rows = parity.run_parity(fx, fp64=a.fp64, strict=a.strict)
    print(parity.format_rows(rows))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    print(f"worst well-conditioned max|d|/max|ref|: {parity.worst_well_conditioned(rows):.3e}")
    return 1 if failed else 0


def _heads(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt heads", description="List the registered plugins: heads (parts of the "
                                "network), post-processors (run after it) and exporters (write the files; "
                                "'requires': what they consume; iggt predict --exporters picks them by name).")
    p.add_argument("action", choices=["list"])
    p.parse_args(argv)
    from .registry import available_heads, available_postprocessors, head_source

    rows = [("name", "kind", "source", "requires", "outputs", "loss terms", "trains")]
    for kind, plugins in (("head", available_heads()), ("post-processor", available_postprocessors())):
        for name, cls in plugins.items():
            trains = kind == "head" and getattr(cls, "trainable", True) and getattr(cls, "loss_terms", ())
            rows.append((name, kind, head_source(name), ",".join(getattr(cls, "requires", ())) or "-",
                         ",".join(getattr(cls, "outputs", ())), ",".join(getattr(cls, "loss_terms", ())) or "-",
                         "yes" if trains else "no"))
    from .exporters import available_exporters, exporter_source

    for name, cls in available_exporters().items():
        rows.append((name, "exporter", exporter_source(name), ",".join(cls.consumes), "-", "-", "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _is_dataset_form(argv: list[str]) -> bool:
    """``iggt predict --config CFG ...``: the older spelling of ``iggt predict-dataset``. Only the first argument
    decides (the photos form has no --config option, so it never starts with one)."""
    return bool(argv) and (argv[0] == "--config" or argv[0].startswith("--config="))


class _PhotosParser(argparse.ArgumentParser):
    """argparse, whose error for a missing argument or an option it does not know also names the dataset form
    (perhaps what was meant), still in one line."""

    def error(self, message: str):
        if message.startswith(("unrecognized arguments", "the following arguments are required")):
            message += ("; a dataset config is predicted with: iggt predict-dataset --config CFG [--data ...] "
                        "[--ckpt_path CKPT] --out DIR")
        super().error(message)


def _predict(argv: list[str]) -> int:
    if _is_dataset_form(argv):
        return _lightning("predict", "predict", argv)
    p = _PhotosParser(prog="iggt predict", description="Photos -> point cloud (PLY/GLB), cameras (JSON, COLMAP "
                      "text), depth (16-bit PNG + npz), instance masks (16-bit PNG + COCO RLE) and what other "
                      "plugins export. A dataset instead: iggt predict-dataset --config CFG.yaml [--data ...] "
                      "[--ckpt_path CKPT] --out DIR (one folder per scene).",
                      epilog=_export_options_help(), formatter_class=_EpilogAsIs)
    p.add_argument("inputs", nargs="+", help="a folder of images (jpg/png/webp, sorted by name), image paths, or "
                   "videos (mp4/mov/avi/mkv/webm; extra [video])")
    p.add_argument("--video-frames", type=int, default=8, help="frames sampled evenly from each video (default 8); "
                   "the video is decoded frame by frame and only these are kept, so memory holds at most N frames "
                   "of the video's size (8 of 1920x1080: 50 MB), whatever the clip's length")
    p.add_argument("--no-images", action="store_true", help="do not save the input views under images/ (then the "
                   "output does not re-read as a scene folder on its own)")
    p.add_argument("--checkpoint", "-c", required=True, help="our .safetensors/.pt, a Lightning .ckpt, or an "
                   "official IGGT/VGGT .pt/.safetensors (converted on the fly); a model folder (iggt publish's, a "
                   "Hub snapshot); or a Hugging Face Hub id OWNER/NAME[@REVISION][:FILE] (an existing local path "
                   "wins; docs/hub.md)")
    p.add_argument("--out", "-o", required=True, help="output directory: a folder of its own (never an input, the "
                   "checkpoint's folder or the current directory); refused if it exists, unless --overwrite")
    p.add_argument("--preset", default=None, help="preset of an official checkpoint (default: from its keys)")
    p.add_argument("--mode", default="resize", choices=["resize", "crop", "pad"])
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="model input size (resize: W H, default 504 336; crop/pad: the long side W, default 518)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32", help="32, bf16 or 16 (autocast)")
    p.add_argument("--head-precision", default=None, choices=["fp32", "autocast"],
                   help="under --precision bf16/16: fp32 keeps the heads in float32, as the official model does; "
                   "autocast (the default there) runs them in bf16 too, which is what makes bf16 fast on CPU "
                   "(docs/speed.md has its accuracy)")
    p.add_argument("--conf-threshold", type=float, default=5.0, help="points kept: by default the lowest 5 %% "
                   "by confidence are dropped")
    p.add_argument("--conf-mode", default="percentile", choices=["percentile", "absolute"])
    p.add_argument("--points-from", default=None, help="the point source of the point clouds: depth (depth maps "
                   "unprojected with the cameras; the default) or point (the point head's map), or one a plugin offers")
    p.add_argument("--granularity", default=None, help="instance granularity of the default clusterer "
                   "(small/medium/large or a feature distance); default: the checkpoint's tracking settings")
    p.add_argument("--postprocess", default=None, metavar="JSON", help="post-processing merged over the checkpoint's, "
                   "e.g. '{\"open_vocab\": {\"class_names\": [\"chair\", \"table\"]}}'")
    p.add_argument("--global-attention", default=None, metavar="JSON", help="the backbone's global attention for this "
                   "run, e.g. '{\"kind\": \"merged\", \"ratio\": 0.9}' for many views (docs/many-view.md); "
                   "default: the checkpoint's")
    p.add_argument("--export-option", action="append", default=[], metavar="KEY=VALUE", help="an export option "
                   "(listed below), e.g. depth_png_scale=1000 (PNG value = depth x scale); repeatable; an unknown "
                   "key or a value of the wrong type or range is an error")
    p.add_argument("--exporters", default=None, metavar="NAME,...", help="write only these formats, e.g. "
                   "ply,cameras_json,colmap (iggt heads list names the exporters; default: every one whose inputs the "
                   "prediction has)")
    p.add_argument("--colmap-format", choices=["txt", "bin"], default=None, help="COLMAP model format (default txt)")
    p.add_argument("--colmap-max-points", type=int, default=None, help="3D points of the COLMAP model, thinned by "
                   "voxels keeping the most confident (default 100000); each with its track of observations")
    p.add_argument("--max-points", type=int, default=None, help="the most points the cloud holds (points.ply, "
                   "GLBs, instances3d.json), the kept points thinned evenly (default: every kept point; 2000000 "
                   "with --window)")
    w = p.add_argument_group("long videos (docs/long-videos.md)")
    w.add_argument("--window", type=_window_arg, default=None, metavar="N|auto", help="run the frames in "
                   "overlapping windows of N, aligned into one reconstruction with instance ids kept across windows "
                   "(every frame of a video, streamed; --stride to thin them); auto: the largest window that fits "
                   "--memory-budget, measured on this model and input size")
    w.add_argument("--memory-budget", type=int, default=None, metavar="MiB", help="with --window auto: the memory "
                   "the run may use (default: half the memory available, or 80 %% of a GPU's free memory)")
    w.add_argument("--overlap", type=int, default=None, metavar="K", help="frames consecutive windows share "
                   "(default a quarter of the window, at least 2)")
    w.add_argument("--stride", type=int, default=1, help="with --window: every stride-th frame (default 1)")
    w.add_argument("--no-association", action="store_true", help="with --window: new instance ids in every "
                   "window (a baseline to compare against)")
    p.add_argument("--ba", action="store_true", help="bundle-adjust the cameras on the point-track head's predicted "
                   "tracks (pycolmap, the [colmap] extra; a checkpoint with the track head); the refined cameras "
                   "go to every output and the manifest reports the reprojection error before and after and how "
                   "far the poses moved")
    p.add_argument("--ba-refine-focal", action="store_true", help="with --ba: refine the focal lengths too")
    p.add_argument("--prompts", default=None, metavar="FILE", help="a JSON file of point prompts ({\"prompts\": "
                   "[{\"name\": ..., \"clicks\": [{\"view\": PHOTO, \"x\": COLUMN, \"y\": ROW, \"positive\": "
                   "true}]}]}): these instances, ids in the file's order, instead of the clustering's "
                   "(docs/evaluation.md#steering-instances-by-clicks-and-3d-boxes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder, only if it is a "
                   "previous prediction (has our manifest.json)")
    p.add_argument("--dry-run", action="store_true", help="check the inputs and every option as the real run does, "
                   "and print what would be written")
    p.add_argument("--trust-checkpoint-code", action="store_true", help="let the checkpoint's stored config import "
                   "head classes that are not registered (runs code named by the file: only for files you trust)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    import os

    from .checkpoints import CheckpointError
    from .inference.predict import PredictOptions, run_predict

    import json

    try:
        postprocess = json.loads(a.postprocess) if a.postprocess else {}
    except json.JSONDecodeError as err:
        p.error(f"--postprocess: not JSON ({err})")
    if not isinstance(postprocess, dict):
        p.error("--postprocess: expected a JSON object of name -> arguments")
    try:
        global_attention = json.loads(a.global_attention) if a.global_attention else None
    except json.JSONDecodeError as err:
        p.error(f"--global-attention: not JSON ({err})")
    if a.granularity is not None:
        g = a.granularity
        clusterer = {"name": "torch", "granularity": float(g) if g.replace(".", "", 1).isdigit() else g}
        postprocess = {**postprocess, "tracking": {**(postprocess.get("tracking") or {}), "clusterer": clusterer}}
    export_options = {}
    for item in a.export_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--export-option {item!r}: expected KEY=VALUE")
        if key in export_options:
            p.error(f"--export-option {key} is given twice")
        export_options[key] = value          # text: each option's declaration reads it (inference/options.py)
    for key, value, flag in (("exporters", a.exporters, "--exporters"),
                             ("colmap_format", a.colmap_format, "--colmap-format"),
                             ("colmap_max_points", a.colmap_max_points, "--colmap-max-points"),
                             ("max_points", a.max_points, "--max-points")):
        if value is not None and key in export_options:
            p.error(f"{flag} and --export-option {key} are both given; give one")
        if value is not None:
            export_options[key] = value
    from .hub import resolve_checkpoint
    from .inference.predict import check_before_checkpoint

    opts = PredictOptions(inputs=a.inputs, checkpoint=a.checkpoint, out=a.out, preset=a.preset, mode=a.mode,
                          size=tuple(a.size) if a.size else None, device=a.device, precision=a.precision,
                          conf_threshold=a.conf_threshold, conf_mode=a.conf_mode, points_from=a.points_from,
                          postprocess=postprocess or None, export_options=export_options, video_frames=a.video_frames,
                          overwrite=a.overwrite, save_images=not a.no_images, dry_run=a.dry_run,
                          progress=not a.quiet, trust_code=a.trust_checkpoint_code,
                          global_attention=global_attention, window=a.window, overlap=a.overlap,
                          memory_budget=a.memory_budget, head_precision=a.head_precision,
                          stride=a.stride, no_association=a.no_association, ba=a.ba,
                          ba_refine_focal=a.ba_refine_focal, prompts=a.prompts)
    try:
        check_before_checkpoint(opts)             # options, photos, output folder: before any Hub download
        opts.checkpoint = str(resolve_checkpoint(a.checkpoint))     # a Hub id or model folder -> its weights file
        summary = run_predict(opts)
    except (ValueError, FileNotFoundError, CheckpointError, OSError) as err:  # every message names the path/option
        if os.environ.get("IGGT_DEBUG"):
            raise
        print(f"iggt predict: error: {err}", file=sys.stderr)
        return 2
    if summary.get("dry_run") and "windows" in summary:
        print(f"dry run: {summary['views']} frame(s) in {summary['windows']} window(s); would "
              f"{'replace' if summary['replaces'] else 'write'} {summary['out']}")
        return 0
    if summary.get("dry_run"):
        from .inference.output_folder import human_size as _human

        free = summary["free_bytes"]
        space = _human(summary["estimated_bytes"]) + (f" of {_human(free)} free" if free >= 0 else "")
        print(f"dry run: {summary['views']} view(s), photo sizes {summary['photo_sizes']}, model input "
              f"{summary['model_input'][0]}x{summary['model_input'][1]}; about {space}; would "
              f"{'replace' if summary['replaces'] else 'write'} {summary['out']}:")
        for f in summary["files"]:
            print(f"  {f}")
        for f in summary["leftovers"]:
            print(f"would remove the leftover of a dead run: {f}")
        if summary["restore"]:
            print(f"would put {summary['out']} back from {summary['restore']} (left by a run that died replacing it)")
        return 0
    print(f"{summary['views']} views, {summary.get('instances', 0)} instances, {summary['points']:,} points -> {a.out}")
    ba = summary.get("bundle_adjustment") or {}
    if ba:
        print(f"  bundle adjustment on {ba['tracks']:,} predicted tracks: reprojection error "
              f"{ba['reprojection_error_before']:.2f} -> {ba['reprojection_error_after']:.3g} px"
              + (f"; kept the predicted cameras: {ba['kept_predicted_cameras']}" if "kept_predicted_cameras" in ba
                 else f"; poses moved up to {ba['rotation_change_max_deg']:.2f} deg"))
    if summary.get("invalid_views"):
        print(f"  {len(summary['invalid_views'])} view(s) with non-finite predictions: see invalid_views in "
              f"{os.path.join(a.out, 'manifest.json')}")
    print("  ".join(f"{k} {v:.2f} s" for k, v in summary["seconds"].items()))
    return 0


class _EpilogAsIs(argparse.HelpFormatter):
    """Wraps the description and arguments as usual but prints the epilog (the table of export options) as is."""

    def add_text(self, text):
        if text and text.startswith("export options"):
            self._add_item(lambda t: t + "\n", [text])
        else:
            super().add_text(text)


def _export_options_help() -> str:
    """The export options --export-option takes: the writer's and every registered plugin's."""
    from .inference.options import describe_options, registered_plugins

    try:
        plugins, note = registered_plugins(), ""
    except ImportError as err:          # a broken third-party plugin: still list the writer's own
        plugins, note = [], f"\n  (plugins' options not listed: {err})"
    return "export options (--export-option KEY=VALUE):\n" + describe_options(plugins) + note


def _data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt data", description="Dataset tools.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a dataset folder: files, sizes, rotations, depth units, ids, "
                       "pose convention; non-zero exit on problems")
    c.add_argument("path")
    from .data.registry import layout_names     # every registered layout is checkable

    c.add_argument("--layout", default="auto", choices=["auto", *layout_names()],
                   help="a layout of iggt_lightning.data.registry, or auto: detected from its files (default)")
    c.add_argument("--max-scenes", type=int, default=None, help="check only the first N scenes")
    c.add_argument("--max-frames", type=int, default=None, help="about N frames per scene, spread evenly")
    c.add_argument("--max-invalid-depth", type=float, default=0.01, metavar="FRACTION",
                   help="largest fraction of a frame's depth pixels that may be NaN/inf or negative (read as invalid); "
                   "more is a problem, as is a frame with no valid depth (default 0.01)")
    c.add_argument("--json", default=None, help="also write the report as JSON here")
    a = p.parse_args(argv)
    if not 0 <= a.max_invalid_depth <= 1:
        p.error(f"--max-invalid-depth must be a fraction in [0, 1]; got {a.max_invalid_depth}")
    from .data.check import check_dataset, format_report
    from .data.frames import DatasetError
    from .inference.output_folder import OutputFolderError, refuse_overlap

    try:
        refuse_overlap(a.json, [("dataset being checked", a.path)], "--json")   # before anything is read
        report = check_dataset(a.path, a.layout, a.max_scenes, a.max_frames, max_invalid_depth=a.max_invalid_depth)
        refuse_overlap(a.json, [("input", p) for p in report.inputs], "--json")
    except (DatasetError, OutputFolderError) as err:
        print(f"iggt data check: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if a.json:
        from .fileio import write_json

        write_json(a.json, {"root": report.root, "layout": report.layout, "ok": report.ok,
                            "problems": report.problems, "warnings": report.warnings, "skipped": report.skipped,
                            "scenes": [{"name": s.name, "frames": s.frames, "sizes": sorted(s.sizes),
                                        "depth_median": float(sum(s.depth_medians) / len(s.depth_medians))
                                        if s.depth_medians else None,
                                        "depth_valid_mean": float(sum(s.depth_valid) / len(s.depth_valid))
                                        if s.depth_valid else None,
                                        "depth_frames": s.depth_frames,
                                        "free_space_violation": None if s.violation != s.violation else s.violation}
                                       for s in report.scenes]})
    return 0 if report.ok else 1


def _view(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt view", description="Show a prediction folder of iggt predict in the "
                                "browser (viser; extra [viewer]): the point cloud coloured by RGB, instance id or "
                                "feature PCA, the cameras with their photos, the instances with a checkbox each. "
                                "Prints the URL and serves until Ctrl-C.")
    p.add_argument("folder", help="a scene folder (points.ply, cameras.json, ...) or a folder of scene folders "
                   "(iggt predict-dataset --config ... --data ...)")
    p.add_argument("--scene", default=None, help="the scene to open first, by folder name (default: the first)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; the printed URL carries a secret token, but over plain HTTP, so 0.0.0.0 lets anyone who "
                   "can read your network traffic see the scene)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; the next free one if taken; 0: any)")
    p.add_argument("--colour", "--color", default="rgb", help="colour layer shown first: rgb, or a colour layer "
                   "of the folder such as instances or features (default rgb)")
    p.add_argument("--max-points", type=int, default=500_000, help="points sent to the browser at most, "
                   "subsampled the same way every run (default 500000; 0: all)")
    a = p.parse_args(argv)
    if not 0 <= a.port <= 65535:
        p.error(f"--port {a.port}: expected 0..65535")
    import importlib.util
    import signal
    import threading
    import time
    from pathlib import Path

    from .viewer import ViewerError, check_host, find_scenes, load_scene, pick_scene

    try:
        scenes = find_scenes(Path(a.folder))
        scene = load_scene(pick_scene(scenes, a.scene), a.max_points)
        if a.colour not in scene.layers:
            raise ViewerError(f"--colour {a.colour}: {scene.folder} has the colour layers {', '.join(scene.layers)}")
        check_host(a.host)
    except ViewerError as err:
        print(f"iggt view: {err}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("viser") is None:
        print("iggt view: the viewer needs viser: pip install 'iggt-lightning[viewer]'", file=sys.stderr)
        return 2
    from .viewer import Viewer

    def stop(signum, frame):        # `kill` and service managers send SIGTERM: stop as cleanly as on Ctrl-C
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    for w in scene.warnings:
        print(f"iggt view: warning: {w}", file=sys.stderr)
    server = None
    try:
        server = Viewer(scenes, scene, a.host, a.port, a.colour, a.max_points)
        others = f"; {len(scenes)} scenes, a selector switches" if len(scenes) > 1 else ""
        print(f"iggt view: {scene.folder} at {server.url} (Ctrl-C to stop{others})", flush=True)
        while True:
            time.sleep(3600)
    except ViewerError as err:      # the server could not be secured (viser changed): nothing was served
        print(f"iggt view: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()
    return 0


def _window_arg(text: str):
    """--window: a number of frames, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of frames or auto; got {text!r}") from None


def _edit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="iggt edit", description="apply an instance edit file (merge, split, delete; "
                                "what the viewer's Save writes, docs/viewer.md) to a prediction folder, as a new "
                                "folder beside it: the original is never changed")
    p.add_argument("prediction", help="a prediction folder of iggt predict")
    p.add_argument("edit", help="the edit file (iggt-instance-edit/1)")
    p.add_argument("-o", "--out", default=None, help="the new folder (default: PREDICTION.v2, .v3, ...)")
    a = p.parse_args(argv)
    from pathlib import Path

    from .instance_edits import edit_from_file
    from .prediction_files import ViewerError

    try:
        out = edit_from_file(Path(a.prediction), Path(a.edit), Path(a.out) if a.out else None)
    except (ViewerError, OSError) as err:
        print(f"iggt edit: {err}", file=sys.stderr)
        return 2
    print(f"iggt edit: wrote {out}")
    return 0


def _lightning(name: str, method: str, argv: list[str]) -> int:
    """Lightning's subcommand ``method`` (a Trainer method) through IGGTCLI, typed as ``iggt NAME``; errors of
    configs, data and checkpoints as one line naming the field or file."""
    import os

    from .inference.predict import PredictInterrupted
    from .lightning_cli import run_lightning_cli

    trust = "--trust-checkpoint-code" in argv
    argv = [a for a in argv if a != "--trust-checkpoint-code"]
    try:
        run_lightning_cli([method, *argv], trust_checkpoint_code=trust)
    except PredictInterrupted as err:   # a dataset prediction stopped by SIGTERM / Ctrl-C
        import signal

        print(f"iggt {name}: interrupted by {signal.Signals(err.signum).name}; the scene being written was removed, "
              "scene folders finished before it are complete", file=sys.stderr)
        return err.code
    except (ValueError, FileNotFoundError) as err:  # configuration, data and checkpoint errors name the field/file
        if os.environ.get("IGGT_DEBUG"):
            raise
        print(f"iggt {name}: error: {_own_error(err)}\n(set IGGT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


def _publish(argv: list[str]) -> int:
    from .publish import main as publish_main     # imported when asked for: it loads torch

    return publish_main(argv)


@dataclass(frozen=True)
class Command:
    summary: str                        # its line in `iggt --help`
    run: Callable[[list[str]], int]     # the arguments after the subcommand's name -> exit status
    trainer_method: str | None = None   # Lightning's subcommand it is (IGGTCLI.subcommands()), if any


def _lightning_command(name: str, method: str, summary: str) -> Command:
    return Command(summary, partial(_lightning, name, method), method)


# The one table of subcommands. Lightning's four are IGGTCLI's (tests/test_cli_commands.py checks them against
# IGGTCLI.subcommands()); the helpers are registered beside them.
COMMANDS: dict[str, Command] = {
    "fit": _lightning_command("fit", "fit", "train from a config (iggt fit --config synthetic_tiny)"),
    "validate": _lightning_command("validate", "validate", "a model's validation metrics on a dataset config"),
    "test": _lightning_command("test", "test", "a model's test metrics on a dataset config (--results FILE)"),
    "predict-dataset": _lightning_command("predict-dataset", "predict", "a dataset config -> one prediction "
                                          "folder per scene (--config CFG --out DIR)"),
    "predict": Command("photos or videos -> one prediction folder (PHOTOS... -c CKPT -o DIR)", _predict),
    "convert": Command("an official IGGT/VGGT checkpoint -> ours", _convert),
    "parity": Command("compare the forward with the official one's fixture", _parity),
    "heads": Command("list the registered heads and post-processors (heads list)", _heads),
    "data": Command("dataset tools (data check PATH)", _data),
    "view": Command("show a prediction folder in the browser", _view),
    "edit": Command("apply an instance edit (merge, split, delete) -> a new prediction folder beside it", _edit),
    "publish": Command("a run or checkpoint -> a Hugging Face Hub-ready model folder", _publish),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name.ljust(width)}  {c.summary}" for name, c in COMMANDS.items())
    return (f"usage: iggt SUBCOMMAND [ARGUMENTS] (iggt SUBCOMMAND --help for its own)\n\nsubcommands:\n{rows}\n\n"
            "iggt predict --config CFG ... (--config first) still runs predict-dataset. A checkpoint may be a file, "
            "a model folder or a Hub id OWNER/NAME[@REVISION][:FILE]; --trust-checkpoint-code: "
            "docs/checkpoints-are-data.md.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"iggt: unknown subcommand {argv[0]!r}; expected one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return command.run(argv[1:])


def _own_error(err: BaseException) -> BaseException:
    """The error a user should read: jsonargparse wraps an error raised while it builds a class from the config
    (a dataset reader refusing a file) in a multi-line "Does not validate against any of the Union subtypes"
    dump; the first error of ours in the chain names the file and field in one line."""
    seen, item = set(), err
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        if type(item).__module__.startswith("iggt_lightning") and isinstance(item, (ValueError, FileNotFoundError)):
            return item
        item = item.__cause__ or item.__context__
    return err


if __name__ == "__main__":
    sys.exit(main())
