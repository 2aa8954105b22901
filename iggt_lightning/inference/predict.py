"""``iggt predict``: a folder of photos -> 3D points, cameras, per-view maps and instances, in files other tools open.

Stages: read photos -> preprocess -> load the checkpoint (network + post-processing) -> predict and export. The
last stage is Lightning's: ``trainer.predict`` runs :meth:`IGGTLitModule.predict_step` (the network, then the
post-processors) and a :class:`~iggt_lightning.inference.writer.PredictionWriter` writes the folder from the
plugins' hooks, exactly as for a dataset (``iggt predict --config ... --data ...``). The folder is built under a
temporary sibling and renamed into place at the end, so an error (bad input, full disk) leaves nothing
half-written, and an existing folder is replaced only with ``overwrite``.

Safety: :func:`validate` runs the same checks for ``dry_run`` and the real run before anything is read or
written; the output folder's rules (never an input, ``overwrite`` only of a previous prediction, leftovers of
dead runs, free space) live in :mod:`.output_folder`. SIGTERM / SIGINT stop a run with exit status 143 / 130 and
leave nothing behind (:class:`StopOnSignal`). Views with non-finite predictions are reported per view and
recorded in ``manifest.json`` (``invalid_views``).

Resolution: per-pixel maps are resampled by the plugins to each photo's own size, intrinsics are rescaled to it;
clouds have one 3D sample per model-input pixel (bounded size), from the source of points ``points_from`` names
(by default the one the heads rank first).
"""
from __future__ import annotations

import dataclasses

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .images import is_video, list_images, load_image, load_video_frames, preprocess
from .output_folder import (MANIFEST_FORMAT, check_existing, check_free_space,  # noqa: F401 (MANIFEST_FORMAT: API)
                            check_output_folder, clean_leftovers, find_leftovers)
from ..exporters import selected_exporters
from .windowed import check_window, default_overlap, plan_windows
from ..layers.token_merge import parse_global_attention
from ..model import HEAD_PRECISIONS
from .options import resolve_export_options
from .scene import View, saved_view_names, unique_view_names
from .writer import COLMAP_DIR, PredictError, PredictionWriter, ViewList, check_output_packages, scene_file_names

PRECISIONS = {"32": "32-true", "fp32": "32-true", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "16": "16-mixed", "fp16": "16-mixed", "16-mixed": "16-mixed"}


def head_precision(o: "PredictOptions") -> str:
    """The heads' precision of a run: as asked, else following a bf16 / fp16 autocast (on CPU the heads are
    most of the arithmetic: bf16 is fast only with them) and float32 otherwise."""
    if o.head_precision is not None:
        return o.head_precision
    return "fp32" if PRECISIONS.get(o.precision) == "32-true" else "autocast"


@dataclass
class PredictOptions:
    inputs: list[str]
    checkpoint: str
    out: str
    preset: str | None = None
    mode: str = "resize"
    size: tuple[int, int] | None = None
    device: str = "cpu"
    precision: str = "32"
    conf_threshold: float = 5.0
    conf_mode: str = "percentile"        # "percentile": drop the lowest p %; "absolute": keep confidence >= value
    points_from: str | None = None       # a source of points the heads offer; None: the one they rank first
    postprocess: dict | None = None      # merged over the checkpoint's post-processing (e.g. another clusterer)
    export_options: dict = field(default_factory=dict)   # declared in .options (writer's) or by the plugins
    video_frames: int = 8                # frames sampled evenly from each input video
    save_images: bool = True             # images/<name>.png: the input views, so the folder re-reads as a dataset
    overwrite: bool = False
    dry_run: bool = False
    progress: bool = True
    trust_code: bool = False             # let the checkpoint's stored config import unregistered head classes
    global_attention: dict | None = None  # the backbone's global attention for this run (docs/many-view.md,
                                          # e.g. {"kind": "merged", "ratio": 0.9}); None: the checkpoint's own
    window: int | str | None = None      # frames per window (docs/long-videos.md), "auto" (from memory_budget);
    #                                      None: every frame in one pass
    memory_budget: int | None = None     # MiB a --window auto run may use; None: half the memory available
    overlap: int | None = None           # frames consecutive windows share; None: a quarter of the window (>= 2)
    head_precision: str | None = None    # "fp32" (heads in float32 under autocast, as the official model) or
    #                                      "autocast" (they follow it); None: autocast under bf16/16, else fp32
    stride: int = 1                      # with --window: every stride-th frame (and photo)
    no_association: bool = False         # with --window: every window numbers its objects anew (a baseline)
    ba: bool = False                     # bundle-adjust the cameras on predicted tracks (.track_ba)
    ba_refine_focal: bool = False        # with --ba: the focal lengths too
    prompts: str | None = None           # a prompts file: these instances instead of the clustering's (.prompts)


@dataclass
class Plan:
    """What :func:`validate` found: the resolved output folder, the listed inputs, the checkpoint's patch size."""

    out: Path                            # the output folder, symlinks resolved
    paths: list[Path]                    # input photos / videos, in order
    patch_size: int
    plugins: list                        # (name, class) of the heads and post-processors the checkpoint runs
    remove: list[Path] = field(default_factory=list)   # leftovers of dead runs
    restore: Path | None = None          # an ``.old-<pid>`` of a dead run whose replacement never arrived
    replaces: bool = False               # the output exists (or is restored) and will be replaced
    export_options: dict = field(default_factory=dict)   # every export option of the run, checked, with defaults


@dataclass
class Stages:
    progress: bool = True
    seconds: dict = field(default_factory=dict)
    _t: float = 0.0
    _name: str = ""

    total: int = 7

    def start(self, name: str) -> None:
        self._name, self._t = name, time.perf_counter()
        if self.progress:
            print(f"[{len(self.seconds) + 1}/{self.total}] {name} ...", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        self.seconds[self._name] = round(time.perf_counter() - self._t, 3)
        if self.progress:
            print(f" {self.seconds[self._name]:.2f} s", file=sys.stderr, flush=True)

    def failed(self) -> None:
        """End the open progress line, so that the error is a line of its own."""
        if self.progress and self._name and self._name not in self.seconds:
            print(" failed", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- validation
def check_options(o: PredictOptions) -> None:
    """The option values alone (no file is touched)."""
    if o.mode not in ("resize", "crop", "pad"):
        raise ValueError(f"--mode must be resize, crop or pad; got {o.mode!r}")
    if o.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}; got {o.precision!r}")
    if o.conf_mode not in ("percentile", "absolute"):
        raise ValueError(f"--conf-mode must be percentile or absolute; got {o.conf_mode!r}")
    if not math.isfinite(o.conf_threshold):
        raise ValueError(f"--conf-threshold must be a finite number; got {o.conf_threshold}")
    if o.conf_mode == "percentile" and not 0 <= o.conf_threshold < 100:
        raise ValueError(f"--conf-threshold: a percentile confidence threshold must be in [0, 100); "
                         f"got {o.conf_threshold}")
    if o.points_from is not None and (not isinstance(o.points_from, str) or not o.points_from):
        raise ValueError(f"--points-from must name a source of points; got {o.points_from!r}")
    if not isinstance(o.video_frames, int) or o.video_frames < 1:
        raise ValueError(f"--video-frames must be >= 1; got {o.video_frames}")
    if o.size is not None and (len(o.size) != 2 or any(int(v) != v for v in o.size)):
        raise ValueError(f"--size must be two integers W H; got {o.size}")
    _check_device(o.device)
    if o.global_attention is not None:   # the values alone; start_block is checked once the model is loaded
        parse_global_attention(o.global_attention, field="--global-attention")
    if o.head_precision is not None and o.head_precision not in HEAD_PRECISIONS:
        raise ValueError(f"--head-precision must be one of {list(HEAD_PRECISIONS)}; got {o.head_precision!r}")
    if PRECISIONS[o.precision] == "16-mixed" and torch.device(o.device).type == "cpu":
        raise ValueError(f"--precision {o.precision}: float16 autocast needs a GPU; use bf16 on the CPU")
    from iggt_lightning.cpu_features import bf16_warning

    warning = bf16_warning(torch.device(o.device).type, PRECISIONS[o.precision])
    if warning and not o.dry_run:
        print(f"iggt predict: warning: {warning}", file=sys.stderr)
    _check_windowing(o)
    if o.prompts is not None and o.window is not None:
        raise ValueError("--prompts with --window: prompted instances are made in one pass; leave out --window")
    if o.prompts is not None and not Path(o.prompts).is_file():
        raise FileNotFoundError(f"--prompts: {o.prompts} is not a file")
    if o.ba_refine_focal and not o.ba:
        raise ValueError("--ba-refine-focal refines what --ba adjusts: give --ba too")
    if o.ba:
        try:
            import pycolmap  # noqa: F401
        except ImportError as err:
            raise PredictError(f"--ba needs pycolmap, which cannot be imported here ({err}); install it with "
                               "pip install 'iggt-lightning[colmap]', or run without it") from None


def _check_windowing(o: PredictOptions) -> None:
    """--window / --overlap / --stride alone (the frame count is checked when the input is counted)."""
    given = [f for f, v in (("--overlap", o.overlap), ("--no-association", o.no_association or None),
                            ("--stride", o.stride if o.stride != 1 else None)) if v is not None]
    if o.window is None:
        if given:
            raise ValueError(f"{given[0]} applies to windowed runs: give --window N too")
    if o.memory_budget is not None and o.window != "auto":
        raise ValueError("--memory-budget sets the window of --window auto: give --window auto too")
    if o.window is None:
        return
    if not isinstance(o.stride, int) or isinstance(o.stride, bool) or o.stride < 1:
        raise ValueError(f"--stride must be an integer >= 1; got {o.stride!r}")
    if o.window == "auto":
        if o.memory_budget is not None and (isinstance(o.memory_budget, bool) or not isinstance(o.memory_budget, int)
                                            or o.memory_budget < 1):
            raise ValueError(f"--memory-budget must be a number of MiB >= 1; got {o.memory_budget!r}")
        if o.overlap is not None:
            check_window(o.overlap + 1, o.overlap)          # the overlap alone; the window is chosen later
        return
    check_window(o.window, o.overlap if o.overlap is not None else default_overlap(o.window))


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a device name (e.g. cpu, cuda, cuda:1, mps): "
                         f"{' '.join(str(err).split())}") from None
    if dev.type == "meta":
        raise ValueError(f"--device {device!r}: the meta device holds no data; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ValueError(f"--device {device}: {dev.type} is not available on this machine")


def checkpoint_info(path: str, preset: str | None = None, trust_code: bool = False,
                    postprocess: dict | None = None) -> tuple[int, list]:
    """(patch size, [(name, class)] of the heads and post-processors) of what a checkpoint runs, read without its
    weights and without building anything."""
    from iggt_lightning.checkpoints import inspect_checkpoint
    from iggt_lightning.plugin import split_spec
    from iggt_lightning.postprocessor import checkpoint_postprocess, postprocess_specs
    from iggt_lightning.registry import get_head, get_postprocessor

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = inspect_checkpoint(path, preset, trust_code)
    backbone, heads = config.get("backbone") or {}, config.get("heads") or {}
    source = f"checkpoint {path}"
    classes = [(n, get_head(split_spec(n, spec, "head", source)[0], trust_code, source)) for n, spec in heads.items()]
    given, drop = checkpoint_postprocess(config.get("postprocess"), postprocess)
    specs = postprocess_specs(given, dict(classes), drop, trust_code=trust_code, source=source)
    classes += [(n, get_postprocessor(split_spec(n, spec, "postprocess", source)[0], trust_code, source))
                for n, spec in specs.items()]
    return int(backbone.get("patch_size", _default_patch_size())), classes


def _default_patch_size() -> int:
    import inspect

    from iggt_lightning.backbone import Aggregator

    return int(inspect.signature(Aggregator.__init__).parameters["patch_size"].default)


def check_before_checkpoint(o: PredictOptions) -> None:
    """The checks that need neither the checkpoint nor a decoded photo: run before a Hub id is resolved, so a
    mistyped option or a wrong output folder is refused before any download (:func:`validate` repeats them)."""
    check_options(o)
    check_output_folder(o, list_images(o.inputs), checkpoint=False)


def validate(o: PredictOptions) -> Plan:
    """Every check of a run that needs no photo decoded and no model built, shared by ``dry_run`` and the real
    run (so both refuse the same options with the same messages). Nothing is written."""
    check_options(o)
    paths = list_images(o.inputs)
    out = check_output_folder(o, paths)
    if not Path(o.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {o.checkpoint}")
    remove, restore = find_leftovers(out)
    replaces = check_existing(o, out, restore)
    patch, plugins = checkpoint_info(o.checkpoint, o.preset, o.trust_code, o.postprocess)
    if o.size is not None and min(o.size) < patch:
        raise ValueError(f"--size {o.size[0]} {o.size[1]}: the model input must be at least the checkpoint's "
                         f"patch size, {patch} px, on each side")
    options = run_export_options(o, plugins)
    check_output_packages(options)      # an optional package the outputs need: missing -> stop before inference
    return Plan(out, paths, patch, plugins, remove, restore, replaces, options)


def run_export_options(o: PredictOptions, plugins: list) -> dict:
    """The run's export options: the flags (--conf-threshold, --no-images, ...) with ``export_options`` over them,
    checked against the writer's and ``plugins``' declarations (:mod:`.options`)."""
    flags = {"conf_threshold": o.conf_threshold, "conf_mode": o.conf_mode, "points_from": o.points_from,
             "save_images": o.save_images}
    return resolve_export_options({**flags, **o.export_options}, plugins)


def estimate_output_bytes(model_size: tuple[int, int], photo_sizes: list[tuple[int, int]], files: list[str],
                          stems: list[str]) -> int:
    """An upper estimate of the output's size from the planned files: every model-input pixel a 3D sample (PLY 23 B
    plus 4 B per attribute, each GLB 16 B, COLMAP text ~64 B), a per-view PNG 3 B per photo pixel (1/N^2 of it
    under images_N/), an npz 9 B per photo pixel, a COCO file 1 B, and a margin for headers and JSON."""
    W, H = model_size
    points = len(photo_sizes) * W * H
    pixels = sum(w * h for w, h in photo_sizes)
    per_view = dict(zip(stems, (w * h for w, h in photo_sizes)))
    b = len(photo_sizes) * 8192 + (1 << 20)
    for f in files:
        stem = Path(f).stem
        if f.endswith(".ply"):
            b += points * 31
        elif f.endswith(".glb"):
            b += points * 16
        elif f.startswith(f"{COLMAP_DIR}/"):
            b += points * 22
        elif f.endswith(".png"):
            folder = f.split("/", 1)[0]
            shrink = int(folder[7:]) ** 2 if folder.startswith("images_") and folder[7:].isdigit() else 1
            b += 3 * per_view.get(stem, max(per_view.values(), default=0)) // shrink
        elif f.endswith(".npz"):
            b += pixels * 9
        elif f.endswith(".json"):
            b += pixels
    return int(b * 1.1)


def planned_files(names: list[str], plugins: list, save_images: bool = True,
                  image_names: list[str] | None = None, colmap_format: str = "txt",
                  photo_sizes: list[tuple[int, int]] | None = None, selection: str | None = None) -> list[str]:
    """What a scene's folder will hold (``--dry-run``, the free-space estimate): the files of the exporters the
    ``exporters`` option (``selection``) keeps, and those a plugin writing with its own ``export`` lists."""
    from iggt_lightning.exporters import files_for_outputs
    from iggt_lightning.plugin import Plugin

    stems = [Path(n).stem for n in names]
    layers = [f for _, cls in plugins for f in getattr(cls, "colour_layers", ())]
    files = scene_file_names((image_names or [s + ".png" for s in stems]) if save_images else None, colmap_format,
                             photo_sizes, layers if "glb" in selected_exporters(selection) else (), selection)
    for _, cls in plugins:
        files += [f for f in files_for_outputs(cls.outputs, stems, selection=selection) if f not in files]
        if getattr(cls.planned_files, "__func__", None) is not Plugin.planned_files.__func__:
            # a plugin's own listing: its files, less those of exporters the selection leaves out
            left_out = set(files_for_outputs(cls.outputs, stems)) | set(getattr(cls, "colour_layers", ()))
            files += [f for f in cls.planned_files(stems) if f not in files and f not in left_out]
    return files


def _read_photos(paths: list[Path], video_frames: int) -> tuple[list[np.ndarray], list[str]]:
    photos, frame_paths = [], []
    for p in paths:
        if is_video(p):
            frames, frame_names = load_video_frames(p, video_frames)
            photos += frames
            frame_paths += [p.parent / n for n in frame_names]
        else:
            photos.append(load_image(p))
            frame_paths.append(p)
    return photos, unique_view_names(frame_paths)


def _warn(msg: str) -> None:
    print(f"iggt predict: warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the run
class PredictInterrupted(SystemExit):
    """SIGTERM or SIGINT stopped ``iggt predict`` before its output was in place, and nothing was written. A
    ``SystemExit`` with the shell's status for the signal, 128 + its number (SIGTERM 143, SIGINT 130), which the
    CLI exits with."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class StopOnSignal:
    """For one run: SIGTERM and SIGINT raise :class:`PredictInterrupted` (Lightning alone notes a SIGTERM and
    carries on, exit 0, and turns Ctrl-C into exit 1). The exception unwinds through the writer, which removes its
    temporary folder (and puts back an output a replace had moved aside); on the way out any ``.partial-<pid>``
    of this process is removed too, and one line says the run was interrupted. Once the new output folder has
    been renamed into place the run is complete: a signal from then on is reported, not raised, so a non-zero
    exit always means no new output. Only in the main thread (Python delivers signals there)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, out: str) -> None:
        self.display, self.out = out, Path(os.path.realpath(out))
        self.mark()
        self.late: int | None = None          # a signal that arrived once the output was in place
        self.raised = False
        self.previous: dict = {}

    def mark(self) -> None:
        """Note the output folder as it stands (absent, or the one being replaced) before this run writes it; the
        run calls it again once leftovers of dead runs are dealt with (one may have been put back)."""
        self.before = _identity(self.out)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind, err, tb) -> bool:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if isinstance(err, PredictInterrupted):
            self._remove_own_partials()
            name = signal.Signals(err.signum).name
            print(f"iggt predict: interrupted by {name}; nothing was written ({self.display} is as it was before the "
                  "run)", file=sys.stderr, flush=True)
        elif err is None and self.late is not None:
            _warn(f"{signal.Signals(self.late).name} arrived after the output {self.display} was complete; the run "
                  "finished")
        return False

    def _handle(self, signum: int, frame) -> None:
        if self.raised:                     # already stopping: let the clean-up finish
            return
        now = _identity(self.out)
        if now is not None and now != self.before:    # the new output is in place: the run is done
            self.late = signum
            return
        self.raised = True
        raise PredictInterrupted(signum)

    def _remove_own_partials(self) -> None:
        """The writer removes its temporary folder; this also catches one made just as the signal arrived."""
        prefix = f".{self.out.name}.partial-{os.getpid()}-"
        try:
            entries = [e for e in os.scandir(self.out.parent) if e.name.startswith(prefix)]
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)


def run_predict(o: PredictOptions) -> dict:
    """Run the pipeline; returns the summary (also written into manifest.json). SIGTERM / SIGINT stop it with
    :class:`PredictInterrupted` and leave nothing behind (:class:`StopOnSignal`)."""
    with StopOnSignal(o.out) as stop:
        return _run_predict(o, stop)


def _run_predict(o: PredictOptions, stop: StopOnSignal) -> dict:
    plan = validate(o)
    if not o.dry_run:
        clean_leftovers(plan)
        stop.mark()
    st = Stages(o.progress, total=2 if o.dry_run else 4)
    try:
        return _run(o, plan, st)
    except BaseException:
        st.failed()
        raise


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's start-up lines (devices, module summary) and its dataloader hints are not for photo users."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(does not have many workers|predict_dataloader|infer the batch indices).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _as_is(item):
    return item


def _load_module(o: PredictOptions, plan: Plan):
    from iggt_lightning.module import IGGTLitModule

    module = IGGTLitModule.from_checkpoint_file(o.checkpoint, preset=o.preset, trust_code=o.trust_code,
                                                postprocess=o.postprocess)
    if module.model.backbone.patch_size != plan.patch_size:
        raise PredictError(f"{o.checkpoint}: the model's patch size {module.model.backbone.patch_size} differs "
                           f"from its header's {plan.patch_size}")
    if o.global_attention is not None:
        module.model.backbone.set_global_attention(o.global_attention, field="--global-attention")
    module.model.set_head_precision(head_precision(o), field="--head-precision")
    if o.ba:
        from .track_ba import require_tracker

        require_tracker(module, o.checkpoint)
    return module


def _refinement(o: PredictOptions, module, prompts: list | None):
    """The writer's hook run on a scene's outputs before export: --ba bundle-adjusts the cameras on predicted
    tracks, --prompts replaces the clustering's instances by the prompted ones."""
    if not o.ba and not prompts:
        return None

    def refine(outputs, images):
        reports = {}
        if o.ba:
            from .track_ba import refine_outputs

            outputs, reports["bundle_adjustment"] = refine_outputs(module, outputs, images,
                                                                   refine_focal=o.ba_refine_focal)
        if prompts:
            from .prompts import prompted_outputs

            outputs, reports["prompted_instances"] = prompted_outputs(outputs, prompts, o.checkpoint)
        return outputs, reports

    return refine


def _run_windowed(o: PredictOptions, plan: Plan, st: Stages) -> dict:
    """--window: the frames counted and the windows planned before the model is loaded (a window larger than the
    input is refused first), then :func:`.predict_windowed.run_windowed`."""
    from .predict_windowed import count_frames, run_windowed

    total = count_frames(plan.paths, o.stride)
    auto = o.window == "auto"
    if not auto:
        overlap = o.overlap if o.overlap is not None else default_overlap(o.window)
        windows = plan_windows(total, o.window, overlap)
    if o.dry_run:
        return {"dry_run": True, "views": total, "windows": "auto" if auto else len(windows), "out": str(o.out),
                "replaces": plan.replaces, "leftovers": [str(p) for p in plan.remove],
                "restore": str(plan.restore) if plan.restore else None, "files": []}
    with _quiet_lightning():
        st.start("load model")
        module = _load_module(o, plan)
        st.done()
        extra = {"mode": o.mode, "seconds": dict(st.seconds)}
        if auto:                                    # measured on this model, input size and device
            st.start("choose window")
            choice = _choose_window(o, plan, module, total)
            st.done()
            o = dataclasses.replace(o, window=choice.window)
            overlap = o.overlap if o.overlap is not None else default_overlap(o.window)
            windows = plan_windows(total, o.window, overlap)
            extra["window_choice"] = choice.manifest()
        st.start("windowed inference and export")
        summary = run_windowed(o, plan, module, plan.export_options, extra, total, windows, overlap,
                               PRECISIONS[o.precision])
        st.done()
    return summary


def _choose_window(o: PredictOptions, plan: Plan, module, total: int):
    """--window auto: the largest window that fits the budget, from two calibration passes at the input size."""
    from .predict_windowed import stream_frames
    from .window_budget import MiB, choose_window

    device = torch.device(o.device)
    module.to(device).eval()
    name, photo = next(stream_frames(plan.paths, o.stride))        # the input size, as the run will have it
    H, W = preprocess([photo], o.mode, o.size, plan.patch_size, [name])[0].shape[-2:]
    if total < 3:
        raise ValueError(f"--window auto: the input has only {total} frame(s); a window needs 3")
    from .predict_windowed import autocast

    def run(images):
        with autocast(PRECISIONS[o.precision], device):      # measured as the windows will run
            return module.run(images, "predict")

    return choose_window(run, (W, H), device, total, None if o.memory_budget is None else o.memory_budget * MiB)


def _trainer_device(device: str) -> dict:
    dev = torch.device(device)
    if dev.type == "cpu":
        return {"accelerator": "cpu", "devices": 1}
    if dev.type == "cuda":
        return {"accelerator": "cuda", "devices": [dev.index or 0]}
    return {"accelerator": dev.type, "devices": 1}


def _run(o: PredictOptions, plan: Plan, st: Stages) -> dict:
    from lightning import Trainer
    from torch.utils.data import DataLoader

    if o.window is not None:
        return _run_windowed(o, plan, st)
    st.start("read photos")
    photos, names = _read_photos(plan.paths, o.video_frames)
    st.done()
    st.start("preprocess")
    images, transforms = preprocess(photos, o.mode, o.size, plan.patch_size, names)
    S, _, H, W = images.shape
    photo_sizes = [t.photo_size for t in transforms]
    prompts = None
    if o.prompts is not None:              # checked with the photos it points into, before the model is loaded
        from .prompts import read_prompts

        prompts = read_prompts(o.prompts, [Path(n).name for n in names], transforms, photo_sizes)
    options = plan.export_options
    view_names = saved_view_names(names, options["save_images"])
    files = planned_files(names, plan.plugins, options["save_images"], view_names, options["colmap_format"],
                          photo_sizes, options["exporters"])
    need = estimate_output_bytes((W, H), photo_sizes, files, [Path(n).stem for n in names])
    free = check_free_space(o, plan.out, need)
    st.done()
    if o.dry_run:
        sizes = sorted({(p.shape[1], p.shape[0]) for p in photos})
        return {"dry_run": True, "views": len(photos), "photo_sizes": sizes, "out": str(o.out),
                "model_input": [W, H], "estimated_bytes": need, "free_bytes": free, "replaces": plan.replaces,
                "leftovers": [str(p) for p in plan.remove], "restore": str(plan.restore) if plan.restore else None,
                "files": files}
    with _quiet_lightning():
        st.start("load model")
        module = _load_module(o, plan)
        st.done()
        st.start("inference and export")
        t0 = time.perf_counter()
        views = [View(n, Path(n).stem, i, t, p) for n, i, t, p in zip(names, view_names, transforms, photos)]
        writer = PredictionWriter(str(plan.out), overwrite=o.overwrite, options=options, one_folder=True,
                                  display=str(o.out), manifest={"mode": o.mode, "seconds": dict(st.seconds)},
                                  refine=_refinement(o, module, prompts))
        batch = {"images": images[None], "scene_id": ["photos"], "views": [ViewList(views)]}
        trainer = Trainer(**_trainer_device(o.device), precision=PRECISIONS[o.precision], callbacks=[writer],
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)
        loader = DataLoader([batch], batch_size=None, collate_fn=_as_is)    # one scene, already a batch
        trainer.predict(module, loader, return_predictions=False)
        st.done()
    summary = dict(writer.written[0])
    summary["seconds"] = {**st.seconds, **module.last_run_seconds, "export": round(writer.seconds, 3),
                          "total_predict": round(time.perf_counter() - t0, 3)}
    omitted = set((summary.get("cameras_omitted") or {}).get("views", ()))
    for name, problems in summary["invalid_views"].items():
        left_out = (f"; left out of cameras.json, {COLMAP_DIR}/, transforms.json and the GLB cameras"
                    if name in omitted else "")
        _warn(f"view {name}: non-finite {', '.join(problems)} predicted{left_out}")
    return summary
