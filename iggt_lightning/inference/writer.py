"""Writing predictions: one output folder per scene, described by the plugins and written by the exporters.

:func:`write_prediction` builds a scene's folder under a temporary sibling and renames it into place, so an
error leaves nothing half-written. Inside, every plugin (heads in order, then post-processors) gets
``describe`` (fill the scene's slots: cameras, sources of points, colour layers, ...); this module chooses the
cloud and runs every exporter (:mod:`iggt_lightning.exporters`) whose inputs are present: the per-view maps,
``points.ply``, the GLBs, ``images/``, ``cameras.json``, the COLMAP model ``sparse/0/`` and ``transforms.json``
(docs/tool-layouts.md). Nothing here knows a plugin or a format by name. Every file is written with the core
install; an option whose files need an optional package (:data:`OPTIONAL_PACKAGES`) is checked by
:func:`check_output_packages` before any inference.

:class:`PredictionWriter` is the Lightning callback that does this for every scene of every predict batch,
so ``iggt predict`` on photos and ``trainer.predict`` over a dataset (many scenes, any strategy) share it.
"""
from __future__ import annotations

import errno
import importlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from iggt_lightning.exporters import (COLMAP_DIR, DEFAULT_COLMAP_POINTS, Exporter, FilePlan,  # noqa: F401 (API)
                                      applicable_exporters, available_exporters, chosen, is_scene_exporter)
from iggt_lightning.fileio import write_json
from iggt_lightning.plugin import Plugin

from . import export
from .output_folder import (MANIFEST_FORMAT, OutputFolderError, check_existing, folder_files, host_tag, refuse_overlap,
                            replace_dir)
from .options import registered_plugins, resolve_export_options
from .frame_stack import as_stack, view_of
from .scene import Cloud, SceneError, SceneExport, View, identity_transform


class PredictError(OutputFolderError):
    """A refused option, output folder or write; the message names the path or the option."""


# export options whose files need a package outside the core install: (option, module, extra, what it makes)
OPTIONAL_PACKAGES: tuple[tuple[str, str, str, str], ...] = ()


def check_output_packages(options: dict) -> None:
    """Import every optional package the chosen outputs need, so that a missing one stops the run before any
    inference: one :class:`PredictError` naming the option and the extra to install."""
    for option, module, extra, what in OPTIONAL_PACKAGES:
        if not options.get(option):
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:   # also a broken install (a compiled part that fails to load)
            raise PredictError(f"{what} needs {module}, which cannot be imported here ({err}); install it with "
                               f"pip install 'iggt-lightning[{extra}]', or run without it") from None


class ViewList:
    """The views of one scene in a batch (a plain container, so Lightning's device transfer leaves it alone)."""

    def __init__(self, views: list[View]) -> None:
        self.views = list(views)


# ---------------------------------------------------------------------------------------------- the cloud
# confidences the percentile filter looks at: all of them up to this many, else every k-th (the manifest says k)
PERCENTILE_SAMPLE = 8_000_000


def _choose_points(scene: SceneExport) -> tuple[str, Any, Any, bool] | None:
    """The source of points the scene files show: ``points_from`` if given, else the available one of highest
    priority. -> (name, points stack [S,H,W,3], confidence stack [S,H,W], made from the cameras) or None."""
    def evaluated(name: str):
        src = scene.point_sources[name]
        pts = src.points() if callable(src.points) else src.points   # a callable may unproject: only when asked
        return None if pts is None else (name, as_stack(pts), src.confidence, src.from_cameras)

    wanted = scene.option("points_from")
    if wanted is not None:
        chosen = evaluated(wanted) if wanted in scene.point_sources else None
        if chosen is None:
            offered = sorted(n for n in scene.point_sources if evaluated(n) is not None)
            raise SceneError(f"--points-from {wanted}: this model's heads offer the source(s) of points "
                             f"{offered}; choose one of them")
        return chosen
    for name in sorted(scene.point_sources, key=lambda n: -scene.point_sources[n].priority):
        chosen = evaluated(name)
        if chosen is not None:
            return chosen
    return None


def _finite(points: torch.Tensor, conf: torch.Tensor) -> np.ndarray:
    """[H*W] bool: a view's pixels with a finite 3D position and a finite confidence above 1e-5."""
    c = conf.reshape(-1).float().numpy()
    return np.isfinite(points.reshape(-1, 3).float().numpy()).all(1) & np.isfinite(c) & (c > 1e-5)


def choose_cloud(scene: SceneExport) -> Cloud | None:
    """The cloud of the chosen source, read view by view (never the whole scene's per-pixel maps at once): the
    pixels with finite values that pass the confidence filter (``conf_mode`` / ``conf_threshold``; a percentile
    over every finite confidence, or over every k-th beyond :data:`PERCENTILE_SAMPLE`), thinned evenly to
    ``max_points`` when given, with their colours, the plugins' colour layers and vertex attributes."""
    chosen = _choose_points(scene)
    if chosen is None:
        return None
    name, points, conf, from_cameras = chosen
    S = len(scene.views)
    W, H = scene.model_size
    valid = list(scene.cameras.valid) if from_cameras and scene.cameras is not None else None
    scene.report_non_finite(points, "points")
    every = max(1, -(-S * H * W // PERCENTILE_SAMPLE))
    sample, any_finite = [], False
    for v in range(S):
        if valid is not None and not valid[v]:     # unprojected with degenerate cameras: meaningless even if finite
            continue
        c = view_of(conf, v).reshape(-1).float().numpy()
        ok = _finite(view_of(points, v), view_of(conf, v))
        any_finite |= bool(ok.any())
        if scene.option("conf_mode") == "percentile":
            sample.append(c[ok][::every])
    if not any_finite:
        detail = "; ".join(f"{scene.views[v].name}: {', '.join(p)}" for v, p in list(scene.invalid.items())[:5])
        detail += f"; and {len(scene.invalid) - 5} more view(s)" if len(scene.invalid) > 5 else ""
        raise SceneError(f"no view has a usable prediction (non-finite {detail or 'points'})")
    threshold = scene.option("conf_threshold")
    if scene.option("conf_mode") == "percentile":
        threshold = float(np.percentile(np.concatenate(sample), threshold))
    del sample
    cloud = Cloud(name, np.zeros(0, np.int64), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                  np.zeros((0, 3), np.float32), (W, H), points, conf, threshold, valid)
    budget = scene.option("max_points")
    # only a budget needs the kept total before gathering (one more pass over the views); otherwise it is counted
    total = sum(int(cloud.kept_in(v).sum()) for v in range(S)) if budget else None
    rate = 1.0 if not budget or total <= budget else budget / total
    parts: dict[str, list] = {"index": [], "points": [], "confidence": [], "colours": []}
    layers = {f: [] for f in scene.colour_layers}
    attributes = {a: [] for a in scene.point_attributes}
    before = 0
    for v in range(S):
        pix = np.flatnonzero(cloud.kept_in(v))
        kept = len(pix)
        if rate < 1.0:            # every 1/rate-th kept pixel of the whole scene, in order: an even thinning
            rank = before + np.arange(kept)
            pix = pix[np.floor((rank + 1) * rate) > np.floor(rank * rate)]
        before += kept
        parts["index"].append(v * H * W + pix)
        parts["points"].append(view_of(points, v).reshape(-1, 3).float().numpy()[pix])
        parts["confidence"].append(view_of(conf, v).reshape(-1).float().numpy()[pix])
        parts["colours"].append(view_of(scene.images, v).float().reshape(3, -1).T.numpy()[pix])
        for f in layers:
            layers[f].append(view_of(scene.colour_layers[f], v).reshape(H * W, -1).numpy()[pix])
        for a in attributes:
            attributes[a].append(view_of(scene.point_attributes[a], v).reshape(-1).numpy()[pix])
    cloud.index, cloud.points, cloud.confidence, cloud.colours = (np.concatenate(parts[k]) for k in
                                                                  ("index", "points", "confidence", "colours"))
    cloud.kept = before
    cloud.layers = {f: np.concatenate(x) for f, x in layers.items()}
    cloud.attributes = {a: np.concatenate(x) for a, x in attributes.items()}
    scene.manifest["cloud"] = {"kept": cloud.kept, "points": int(len(cloud.index)), "max_points": budget,
                               "percentile_sample_every": every if scene.option("conf_mode") == "percentile"
                               else None}
    return cloud


def scene_file_names(image_names: list[str] | None, colmap_format: str = "txt",
                     photo_sizes: list[tuple[int, int]] | None = None, colour_layers=(),
                     selection: str | None = None) -> list[str]:
    """The scene-level files a prediction may hold (for ``--dry-run``; which ones appear depends on the heads):
    the manifest and what every exporter of the scene as a whole plans, among those ``selection`` (the
    ``exporters`` option) names. ``photo_sizes`` (W, H) decide the downscaled copies (all factors when not
    given); ``colour_layers``: the GLB files of the plugins' colour layers."""
    plan = FilePlan(image_names=image_names, photo_sizes=photo_sizes, colour_layers=tuple(colour_layers),
                    options={"colmap_format": colmap_format, "save_images": image_names is not None})
    files = ["manifest.json"]
    for cls in chosen(available_exporters().values(), selection):
        if is_scene_exporter(cls):
            files += [f for f in cls.planned(plan) if f not in files]
    return files


def run_order(plugins: list[tuple[str, Any]], exporters: list[Exporter]) -> list[tuple[str, Any]]:
    """What writes, in order: each plugin's turn runs the exporters of the outputs it produces (then its own
    ``export`` hook, kept for plugins written before exporters), and the scene's exporters come last, so the
    files keep the order they always had."""
    steps, left = [], list(exporters)
    for _, plugin in plugins:
        mine = [e for e in left if set(e.consumed_outputs()) & set(getattr(plugin, "outputs", ()))]
        left = [e for e in left if e not in mine]
        steps += [(e.name, e) for e in mine]
        if type(plugin).export is not Plugin.export:
            steps.append(("plugin", plugin))
    return steps + [(e.name, e) for e in left]


def export_scene(folder: Path, plugins: Iterable[tuple[str, Any]], outputs: dict, index: int, views: list[View],
                 images: torch.Tensor, options: dict | None = None, manifest: dict | None = None,
                 state: dict | None = None) -> dict:
    """Write scene ``index`` of ``outputs`` into the (empty) ``folder``; returns its manifest. ``state["scene"]``
    is set to the :class:`SceneExport` (whose ``current`` names the file being written, for errors). ``options``
    are checked against the plugins' and exporters' table (:func:`~.options.resolve_export_options`), the rest at
    defaults. Every plugin describes the scene, the writer chooses the cloud, then the exporters whose inputs
    are present write."""
    plugins = list(plugins)
    options = resolve_export_options(options, plugins)
    scene = SceneExport(Path(folder), index, views, as_stack(images), options)
    if state is not None:
        state["scene"] = scene
    for _, plugin in plugins:
        plugin.describe(outputs, scene)
    scene.cloud = choose_cloud(scene)
    summary: dict[str, Any] = {"points": 0}     # the scene's summary in the manifest: 0 points without a cloud
    ran = []
    exporters = [cls(options) for cls in chosen(applicable_exporters(plugins), options.get("exporters"))]
    for name, step in run_order(plugins, exporters):
        if isinstance(step, Exporter):
            if not step.ready(scene, outputs):
                continue
            scene.current = None
            summary.update(step.write(scene, outputs) or {})
            ran.append(name)
        else:
            step.export(outputs, scene)
    scene.current = None
    cams = scene.cameras
    if cams is not None:
        omitted = [scene.views[v].name for v in range(len(scene.views)) if not cams.valid[v]]
        summary["cameras_omitted"] = dict(export.CAMERAS_OMITTED, views=omitted) if omitted else None
    # every file in the folder, so that --overwrite can later delete exactly these (a plugin may write extras)
    files = [*scene.files, *(f for f in folder_files(Path(folder)) if f not in scene.files and f != "manifest.json")]
    body = {"format": MANIFEST_FORMAT, "views": len(views), "files": [*files, "manifest.json"],
            **summary, "photo_sizes": [list(v.photo_size) for v in views], "model_input": list(scene.model_size),
            "confidence_filter": {"mode": scene.option("conf_mode"), "threshold": scene.option("conf_threshold")},
            "invalid_views": {views[v].name: list(p) for v, p in sorted(scene.invalid.items())},
            "colmap_names": {v.name: v.image_name for v in views}, "convention": export.CONVENTION,
            "glb_convention": export.GLB_CONVENTION,
            **scene.manifest, **(manifest or {}), "exporters": ran}
    scene.current = "manifest.json"
    write_json(Path(folder) / "manifest.json", body, strict=True)   # a NaN here is a bug, never a silent token
    return body


def write_prediction(out_dir: Path, plugins, outputs: dict, index: int, views: list[View], images: torch.Tensor,
                     options: dict | None = None, manifest: dict | None = None, *, overwrite: bool = False,
                     display: str | None = None) -> dict:
    """:func:`export_scene` into a temporary sibling ``.<out>.partial-<pid>-*`` renamed to ``out_dir`` at the end;
    any failure removes it (and parent folders this call created) and is one line naming ``display``."""
    out_dir = Path(out_dir)
    display = display or str(out_dir)
    created = []
    p = out_dir.parent
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    tmp = None
    folder_state = {"scene": None}
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-{host_tag()}-", dir=out_dir.parent))
        summary = export_scene(tmp, plugins, outputs, index, views, images, options, manifest, folder_state)
        replace_dir(tmp, out_dir, SimpleNamespace(out=display, overwrite=overwrite))
        return summary
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:               # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(err, (OSError, ValueError)) and not isinstance(err, OutputFolderError):
            scene = folder_state["scene"]
            raise PredictError(_write_error(display, err, scene.current if scene else None, tmp)) from err
        raise


def _write_error(display: str, err: BaseException, rel: str | None, tmp: Path | None) -> str:
    if tmp is None:                 # the temporary folder itself could not be made
        why = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        return " ".join(f"cannot create the output folder {display} (in {Path(display).parent}): {why}; "
                        "nothing was written".split())
    if isinstance(err, OSError):
        why = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        if err.filename and str(err.filename).startswith(str(tmp)):
            rel = rel or os.path.relpath(err.filename, tmp)
        elif err.filename and not rel:
            why += f": {err.filename}"
    else:
        why = str(err)
        rel = None if isinstance(err, SceneError) else rel
    why = why.replace(str(tmp), display)
    where = f" (writing {rel})" if rel else ""
    return " ".join(f"cannot write the prediction to {display}{where}: {why}; nothing was written".split())


# ---------------------------------------------------------------------------------------------- the callback
def _window_options(windows: dict | None):
    """``--windows {window, overlap, association}`` checked (one line naming the field) -> WindowOptions or None."""
    if windows is None:
        return None
    from .windowed import WindowError, WindowOptions, check_window, default_overlap

    if not isinstance(windows, dict) or set(windows) - {"window", "overlap", "association"} or "window" not in windows:
        raise PredictError(f"--windows: expected {{window: N, overlap: K, association: true}} (window required); "
                           f"got {windows!r}")
    window = windows["window"]
    overlap = windows.get("overlap", default_overlap(window))
    try:
        check_window(window, overlap)
    except WindowError as err:
        raise PredictError(f"--windows: {err}") from None
    association = windows.get("association", True)
    if not isinstance(association, bool):
        raise PredictError(f"--windows: association: expected true or false; got {association!r}")
    return WindowOptions(window, overlap, associate=association)


def scene_folder_name(scene_id: Any, taken: set[str]) -> str:
    """A file-system-safe, unique folder name for a scene id."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(scene_id)).strip("._") or "scene"
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def dataset_views(batch: dict, b: int) -> list[View]:
    """Views of scene ``b`` of a dataset batch: the model input is the photo (named by ``frame_ids`` if any)."""
    S, _, H, W = batch["images"][b].shape
    frames = batch.get("frame_ids")
    names = [str(f) for f in frames[b]] if frames is not None and len(frames) > b and frames[b] is not None \
        else [f"{v:05d}" for v in range(S)]
    if len(names) != S or len(set(names)) != S:
        names = [f"{v:05d}" for v in range(S)]
    stems = [Path(n).stem or f"{v:05d}" for v, n in enumerate(names)]
    if len(set(stems)) != S:
        stems = [f"{v:05d}_{s}" for v, s in enumerate(stems)]
    image_names = export.colmap_names([s + ".png" for s in stems])
    photos = (batch["images"][b].detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1) * 255).round().byte().numpy()
    return [View(n, s, i, identity_transform(W, H), p) for n, s, i, p in zip(names, stems, image_names, photos)]


class PredictionWriter(BasePredictionWriter):
    """Writes every scene of every predict batch into a folder of its own under ``out_dir`` (named after its
    ``scene_id``), or with ``one_folder=True`` the single scene into ``out_dir`` itself (``iggt predict`` on
    photos). A scene folder that exists is refused unless ``overwrite`` (and then only a previous prediction is
    replaced). ``options``: the export options (:mod:`.options`: ``conf_threshold``, ``conf_mode``, ``points_from``,
    ``save_images``, the plugins' own such as ``depth_png_scale``), checked here against every registered plugin's
    and again, at :meth:`setup`, against the model's; ``manifest``: entries added to every manifest."""

    def __init__(self, out_dir: str, overwrite: bool = False, options: dict | None = None,
                 manifest: dict | None = None, one_folder: bool = False, display: str | None = None,
                 inputs: list[str] | None = None, refine=None, windows: dict | None = None) -> None:
        super().__init__(write_interval="batch")
        # windows: each scene's views in overlapping windows (the module runs them, inference/windowed.py)
        self.windows = _window_options(windows)
        # refine(outputs of one scene, its images [S,3,H,W]) -> (outputs, {manifest key: report}): e.g. --ba's
        # cameras or --prompts' instances, before export
        self.refine = refine
        self.out_dir, self.overwrite, self.one_folder = Path(out_dir), overwrite, one_folder
        self.check_inputs([("input", str(p)) for p in inputs or ()])   # e.g. the dataset's roots
        # a misspelt key, a bad value or a missing optional package stops the run here, before the model is loaded
        check_output_packages(resolve_export_options(options, registered_plugins()))
        self.options, self.manifest, self.display = dict(options or {}), dict(manifest or {}), display
        self.written: list[dict] = []
        self.seconds = 0.0
        self._taken: set[str] = set()

    def check_inputs(self, inputs: list[tuple[str, str]]) -> None:
        """Predictions never go into, onto or around an input (:func:`~.output_folder.refuse_overlap`)."""
        try:
            refuse_overlap(self.out_dir, inputs, "--out" if not self.one_folder else "output directory")
        except OutputFolderError as err:
            raise PredictError(str(err)) from None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Before anything is predicted: the options against this model's plugins (an option another model's
        plugin declares is unknown here); the module learns the windows to run scenes in."""
        pl_module.predict_windows = self.windows
        self.options = resolve_export_options(self.options, pl_module.plugins())

    def on_predict_start(self, trainer, pl_module) -> None:
        """Before any scene is written: the output is apart from every file the datasets read, whatever their
        nesting (each dataset's ``input_roots()``; wrappers give their members')."""
        from iggt_lightning.data.paths import input_roots_of

        datasets = [d for d in (getattr(trainer.datamodule, "datasets", None) or {}).values() if d is not None]
        loaders = trainer.predict_dataloaders
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            dataset = getattr(loader, "dataset", None)
            if dataset is not None and not isinstance(dataset, (list, tuple)):   # a list: batches in memory (photos)
                datasets.append(dataset)
        roots = list(dict.fromkeys(p for d in datasets for p in input_roots_of(d)))
        self.check_inputs([("input data", str(p)) for p in roots])

    def _folder(self, scene_id: Any) -> tuple[Path, str]:
        if self.one_folder:
            if self.written:
                raise PredictError(f"{self.display or self.out_dir}: one output folder, but more than one scene")
            return self.out_dir, self.display or str(self.out_dir)
        folder = self.out_dir / scene_folder_name(scene_id, self._taken)
        check_existing(SimpleNamespace(out=str(folder), overwrite=self.overwrite), folder, None)   # photos' rule
        return folder, str(folder)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx: int = 0) -> None:
        t0 = time.perf_counter()
        plugins = pl_module.plugins()
        images = batch["images"]
        for b in range(images.shape[0]):
            views = batch["views"][b].views if "views" in batch else dataset_views(batch, b)
            scene_id = batch["scene_id"][b] if "scene_id" in batch else f"scene_{batch_idx:05d}_{b}"
            folder, display = self._folder(scene_id)
            extra = dict(self.manifest, seconds={**self.manifest.get("seconds", {}),
                                                 **getattr(pl_module, "last_run_seconds", {})},
                         global_attention=pl_module.model.backbone.global_attention.to_dict(),
                         precision=str(trainer.precision), head_precision=pl_module.model.head_precision)
            if not self.one_folder:
                extra["scene"] = str(scene_id)
            if isinstance(prediction.get("windowed"), list):       # a windowed run's per-scene diagnostics
                extra["windowed"] = prediction["windowed"][b]
            scene_outputs = prediction
            if self.refine is not None:          # photos: one scene per batch (iggt predict)
                if images.shape[0] != 1:
                    raise PredictError("refining cameras needs one scene per batch")
                scene_outputs, reports = self.refine(prediction, images[0])
                extra.update(reports)
            self.written.append(write_prediction(folder, plugins, scene_outputs, b, views, images[b],
                                                 self.options, extra, overwrite=self.overwrite, display=display))
        self.seconds += time.perf_counter() - t0
