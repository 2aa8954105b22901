"""``iggt predict``: a folder of photos -> point cloud, cameras, depth, instance masks, in files other tools open.

Stages: read photos -> preprocess -> load model -> inference -> instances (tracking head, or the default
clusterer on the instance features) -> back to photo resolution -> export. The whole output directory is
built under a temporary sibling and renamed into place at the end, so an error (bad input, full disk)
leaves nothing half-written, and an existing directory is replaced only with ``overwrite``.

Safety: :func:`validate` runs the same checks for ``dry_run`` and the real run before anything is read or
written; the output folder's rules (never an input, ``overwrite`` only of a previous prediction, leftovers of
dead runs, free space) live in :mod:`.output_folder`. Views whose predicted camera is not finite (or has a
non-positive focal length) or whose depth / points are not finite are reported per view and recorded in
``manifest.json`` (``invalid_views``); files that cannot hold them leave them out.

Resolution: per-pixel maps (depth, confidence, instance ids) are resampled to each photo's own size and
intrinsics are rescaled to it; point clouds have one point per model-input pixel (bounded size), unprojected
from the predicted depth with the predicted cameras (``points_from="depth"``, consistent with the depth maps
and cameras by construction) or taken from the point head (``points_from="point"``, as the official GLBs).
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from iggt_lightning.fileio import write_json

from . import export
from .images import is_video, list_images, load_image, load_video_frames, preprocess
from .output_folder import (MANIFEST_FORMAT, OutputFolderError, check_existing, check_free_space,
                            check_output_folder, clean_leftovers, find_leftovers, host_tag, replace_dir)

PRECISIONS = {"32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "fp16": torch.float16, "16-mixed": torch.float16}
CAMERA_PROBLEMS = ("intrinsics", "extrinsics")


class PredictError(OutputFolderError):
    """A refused option, output folder or write; the message names the path or the option."""


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
    conf_mode: str = "percentile"        # "percentile": drop the lowest p %; "absolute": keep conf >= value
    points_from: str = "depth"
    clusterer: str | dict | None = None  # None: the model's tracking head, else the default torch clusterer
    depth_png_scale: float = 1000.0      # PNG value = depth * scale ("millimetres" when units are metres)
    video_frames: int = 8                # frames sampled evenly from each input video
    save_images: bool = True             # images/<name>.png: the input views, so the folder re-reads as a dataset
    overwrite: bool = False
    dry_run: bool = False
    progress: bool = True
    trust_code: bool = False             # let the checkpoint's stored config import unregistered head classes


@dataclass
class Plan:
    """What :func:`validate` found: the resolved output folder, the listed inputs, the checkpoint's patch size."""

    out: Path                            # the output folder, symlinks resolved
    paths: list[Path]                    # input photos / videos, in order
    patch_size: int
    has_instances: bool
    remove: list[Path] = field(default_factory=list)   # leftovers of dead runs
    restore: Path | None = None          # an ``.old-<pid>`` of a dead run whose replacement never arrived
    replaces: bool = False               # the output exists (or is restored) and will be replaced


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
    if o.points_from not in ("depth", "point"):
        raise ValueError(f"--points-from must be depth or point; got {o.points_from!r}")
    if not isinstance(o.video_frames, int) or o.video_frames < 1:
        raise ValueError(f"--video-frames must be >= 1; got {o.video_frames}")
    if not (math.isfinite(o.depth_png_scale) and o.depth_png_scale > 0):
        raise ValueError(f"depth_png_scale must be a positive finite number; got {o.depth_png_scale}")
    if o.size is not None and (len(o.size) != 2 or any(int(v) != v for v in o.size)):
        raise ValueError(f"--size must be two integers W H; got {o.size}")
    _check_device(o.device)


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


def checkpoint_info(path: str, preset: str | None = None, trust_code: bool = False) -> tuple[int, bool]:
    """(patch size, has an instance head) of the model a checkpoint builds, read without its weights."""
    from iggt_lightning.checkpoints import inspect_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = inspect_checkpoint(path, preset, trust_code)
    backbone, heads = config.get("backbone") or {}, config.get("heads") or {}
    return int(backbone.get("patch_size", _default_patch_size())), "instance" in heads


def _default_patch_size() -> int:
    import inspect

    from iggt_lightning.backbone import Aggregator

    return int(inspect.signature(Aggregator.__init__).parameters["patch_size"].default)


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
    patch, has_instances = checkpoint_info(o.checkpoint, o.preset, o.trust_code)
    if o.size is not None and min(o.size) < patch:
        raise ValueError(f"--size {o.size[0]} {o.size[1]}: the model input must be at least the checkpoint's "
                         f"patch size, {patch} px, on each side")
    return Plan(out, paths, patch, has_instances, remove, restore, replaces)


def estimate_output_bytes(model_size: tuple[int, int], photo_sizes: list[tuple[int, int]], has_instances: bool,
                          save_images: bool) -> int:
    """An upper estimate of the output's size: every model-input pixel a point (PLY 23 B, each GLB 16 B, COLMAP
    text ~64 B), per photo pixel 16-bit depth (+ instance) PNGs, float depth/confidence/valid in the npz, RGB
    PNGs, and a margin for headers and JSON."""
    W, H = model_size
    points = len(photo_sizes) * W * H
    pixels = sum(w * h for w, h in photo_sizes)
    b = points * (23 + 16 * (3 if has_instances else 1) + 64)
    b += pixels * (2 + 9)
    b += pixels * 3 if save_images else 0
    b += pixels * (2 + 1) if has_instances else 0          # masks PNG + COCO RLE
    b += len(photo_sizes) * 8192 + (1 << 20)
    return int(b * 1.1)


def planned_files(names: list[str], has_instances: bool, save_images: bool = True,
                  image_names: list[str] | None = None) -> list[str]:
    stems = [Path(n).stem for n in names]
    files = ["manifest.json", "points.ply", "scene.glb", "cameras.json", "colmap/cameras.txt", "colmap/images.txt",
             "colmap/points3D.txt", "depth/depth.npz"] + [f"depth/{s}.png" for s in stems]
    files += [f"images/{n}" for n in (image_names or [s + ".png" for s in stems])] if save_images else []
    if has_instances:
        files += ["instances.glb", "features.glb", "masks/instances.json"] + [f"masks/{s}.png" for s in stems]
    return files


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(Path(n).stem for n in names)) != len(names):  # the same stem in two folders: number them
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def _view_names(names: list[str], save_images: bool) -> list[str]:
    """Per view, the name COLMAP's images.txt holds; with ``save_images`` also the file under images/."""
    return export.colmap_names([Path(n).stem + ".png" for n in names] if save_images else names)


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
    return photos, _unique_names(frame_paths)


def _warn(msg: str) -> None:
    print(f"iggt predict: warning: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- the run
def run_predict(o: PredictOptions) -> dict:
    """Run the pipeline; returns the summary (also written into manifest.json)."""
    plan = validate(o)
    if not o.dry_run:
        clean_leftovers(plan)
    st = Stages(o.progress, total=2 if o.dry_run else 7)
    try:
        return _run(o, plan, st)
    except BaseException:
        st.failed()
        raise


def _run(o: PredictOptions, plan: Plan, st: Stages) -> dict:
    from iggt_lightning.checkpoints import load_model
    from iggt_lightning.geometry import pose_encoding_to_extri_intri, unproject_depth

    st.start("read photos")
    photos, names = _read_photos(plan.paths, o.video_frames)
    st.done()
    st.start("preprocess")
    images, transforms = preprocess(photos, o.mode, o.size, plan.patch_size)
    S, _, H, W = images.shape
    photo_sizes = [t.photo_size for t in transforms]
    need = estimate_output_bytes((W, H), photo_sizes, plan.has_instances, o.save_images)
    free = check_free_space(o, plan.out, need)
    view_names = _view_names(names, o.save_images)
    st.done()
    if o.dry_run:
        sizes = sorted({(p.shape[1], p.shape[0]) for p in photos})
        return {"dry_run": True, "views": len(photos), "photo_sizes": sizes, "out": str(o.out),
                "model_input": [W, H], "estimated_bytes": need, "free_bytes": free, "replaces": plan.replaces,
                "leftovers": [str(p) for p in plan.remove], "restore": str(plan.restore) if plan.restore else None,
                "files": planned_files(names, plan.has_instances, o.save_images, view_names)}
    st.start("load model")
    model = load_model(o.checkpoint, preset=o.preset, trust_code=o.trust_code).eval().to(o.device)
    if model.backbone.patch_size != plan.patch_size:
        raise PredictError(f"{o.checkpoint}: the model's patch size {model.backbone.patch_size} differs from its "
                           f"header's {plan.patch_size}")
    st.done()
    st.start("inference")
    dtype = PRECISIONS[o.precision]
    with torch.no_grad(), torch.autocast(torch.device(o.device).type, dtype=dtype, enabled=dtype != torch.float32):
        # "features": the tracking head stays idle here, so that clustering is timed as its own stage
        out = model(images.to(o.device)[None], stage="features")
    st.done()
    st.start("instances")
    feats = out.get("part_feat")
    ids_model = scores = None
    if feats is not None:
        from .clustering import build_clusterer

        tracking = model.heads["tracking"] if "tracking" in model.heads else None
        if o.clusterer is None and tracking is not None:
            clusterer, use_points = tracking.clusterer, tracking.use_points
        else:
            clusterer, use_points = build_clusterer(o.clusterer), True
        points = out.get("world_points") if use_points else None
        c = clusterer(feats[0].float(), None if points is None else points[0].float())
        ids_model, scores = c.ids.cpu(), c.scores.cpu()
    labels = None
    if ids_model is not None and "open_vocab" in model.heads:  # name the instances with the configured VLM
        from iggt_lightning.head import HeadInput

        head = model.heads["open_vocab"]
        inp = HeadInput([], 0, images[None], None, {"instance_masks": ids_model[None], "instance_scores": [scores]},
                        None, "predict")
        got = head(inp)
        if got:
            labels = {"names": head.class_names, "labels": got["instance_labels"][0].tolist(),
                      "scores": got["instance_label_scores"][0].tolist()}
    st.done()
    st.start("geometry")
    extr, intr = pose_encoding_to_extri_intri(out["pose_enc"][-1].float(), (H, W))
    extr, intr = extr[0].cpu().double(), intr[0].cpu().double()
    depth = out["depth"][0, ..., 0].float().cpu()
    depth_conf = out["depth_conf"][0].float().cpu()
    from_points = o.points_from == "point" and "world_points" in out
    if from_points:
        points, conf = out["world_points"][0].float().cpu(), out["world_points_conf"][0].float().cpu()
    else:
        points = unproject_depth(depth.double(), extr, intr).float()
        conf = depth_conf
    # the model's intrinsics put pixel centres at integer coordinates (VGGT); exported ones at i + 0.5 (COLMAP)
    K_centre = intr.clone()
    K_centre[:, :2, 2] += 0.5
    K_photo = np.stack([t.intrinsics_to_photo(K).numpy() for t, K in zip(transforms, K_centre)])
    E = extr.numpy()
    invalid = _invalid_views(E, K_photo, depth, conf, points)
    camera_ok = [not set(CAMERA_PROBLEMS) & set(invalid.get(v, ())) for v in range(S)]
    usable = [camera_ok[v] and bool(torch.isfinite(depth[v]).any()) for v in range(S)]
    if not any(usable):
        detail = "; ".join(f"{names[v]}: {', '.join(p)}" for v, p in list(invalid.items())[:5])
        detail += f"; and {len(invalid) - 5} more view(s)" if len(invalid) > 5 else ""
        raise PredictError(f"no view has a usable prediction (non-finite {detail}); nothing was written to {o.out}")
    colours = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    flat_conf = conf.reshape(-1).numpy()
    finite = np.isfinite(points.reshape(-1, 3).numpy()).all(1) & np.isfinite(flat_conf) & (flat_conf > 1e-5)
    if not from_points:   # points unprojected with a degenerate camera are meaningless even where finite
        finite &= np.repeat(np.asarray(camera_ok), H * W)
    if o.conf_mode == "percentile":
        cut = np.percentile(flat_conf[finite], o.conf_threshold) if finite.any() else np.inf
        keep = finite & (flat_conf >= cut)
    else:
        keep = finite & (flat_conf >= o.conf_threshold)
    xyz = points.reshape(-1, 3).numpy()[keep]
    rgb = colours[keep]
    inst = ids_model.reshape(-1).numpy()[keep] if ids_model is not None else np.zeros(len(xyz), np.int64)
    st.done()
    for v, problems in invalid.items():
        left_out = "; left out of cameras.json, colmap/ and the GLB cameras" if not camera_ok[v] else ""
        _warn(f"view {names[v]}: non-finite {', '.join(problems)} predicted{left_out}"
              + ("; its non-finite depth is written as 0 (invalid)" if "depth" in problems else ""))
    st.start("export")
    summary = _export_atomically(o, plan, st, names, view_names, photo_sizes, transforms, (W, H), depth, depth_conf,
                                 ids_model, scores, feats, keep, xyz, rgb, inst, flat_conf[keep], E, K_photo, labels,
                                 photos, invalid, camera_ok)
    st.done()
    summary["seconds"] = st.seconds
    return summary


def _invalid_views(E: np.ndarray, K: np.ndarray, depth: torch.Tensor, conf: torch.Tensor, points: torch.Tensor
                   ) -> dict[int, list[str]]:
    """View index -> what its prediction has that is not finite (a non-positive focal counts as intrinsics)."""
    out: dict[int, list[str]] = {}
    for v in range(len(E)):
        p = []
        if not (np.isfinite(K[v]).all() and K[v][0, 0] > 0 and K[v][1, 1] > 0):
            p.append("intrinsics")
        if not np.isfinite(E[v]).all():
            p.append("extrinsics")
        if not bool(torch.isfinite(depth[v]).all()):
            p.append("depth")
        if not bool(torch.isfinite(conf[v]).all()):
            p.append("confidence")
        if not bool(torch.isfinite(points[v]).all()):
            p.append("points")
        if p:
            out[v] = p
    return out


def _export_atomically(o: PredictOptions, plan: Plan, st: Stages, *args) -> dict:
    """Write everything under a temporary sibling ``.<out>.partial-<pid>-*`` and rename it into place; any
    failure removes it (and parent folders this run created) and is one line naming the output path."""
    out_dir = plan.out
    created = []
    p = out_dir.parent
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    tmp = None
    current = {"file": None}
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-{os.getpid()}-{host_tag()}-",
                                    dir=out_dir.parent))
        summary = _export(tmp, o, *args, current=current)
        summary["seconds"] = st.seconds
        current["file"] = "manifest.json"
        json.dumps(summary, allow_nan=False)     # strict JSON: a NaN here is a bug, never a silent token
        write_json(tmp / "manifest.json", summary)
        current["file"] = None
        replace_dir(tmp, out_dir, o)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:               # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(err, (OSError, ValueError)) and not isinstance(err, PredictError):
            raise PredictError(_write_error(o, err, current["file"], tmp)) from err
        raise
    return summary


def _write_error(o: PredictOptions, err: BaseException, rel: str | None, tmp: Path | None) -> str:
    if tmp is None:                 # the temporary folder itself could not be made
        why = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        return " ".join(f"cannot create the output folder {o.out} (in {Path(o.out).parent}): {why}; "
                        "nothing was written".split())
    if isinstance(err, OSError):
        why = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        if err.filename and tmp is not None and str(err.filename).startswith(str(tmp)):
            rel = rel or os.path.relpath(err.filename, tmp)
        elif err.filename and not rel:
            why += f": {err.filename}"
    else:
        why = str(err)
    if tmp is not None:
        why = why.replace(str(tmp), str(o.out))
    where = f" (writing {rel})" if rel else ""
    return " ".join(f"cannot write the prediction to {o.out}{where}: {why}; nothing was written".split())


def _export(d: Path, o: PredictOptions, names, view_names, photo_sizes, transforms, model_size, depth, depth_conf,
            ids_model, scores, feats, keep, xyz, rgb, inst, conf, E, K_photo, labels=None, photos=None,
            invalid=None, camera_ok=None, current=None) -> dict:
    from iggt_lightning.module import pca_colours

    stems = [Path(n).stem for n in names]
    invalid = invalid or {}
    camera_ok = [True] * len(names) if camera_ok is None else list(camera_ok)
    current = {} if current is None else current
    ok = [v for v in range(len(names)) if camera_ok[v]]
    files: list[str] = []

    def add(rel: str) -> Path:
        current["file"] = rel
        files.append(rel)
        return d / rel

    E_ok, K_ok, sizes_ok = E[ok], K_photo[ok], [photo_sizes[v] for v in ok]
    export.write_ply(add("points.ply"), xyz, rgb, inst, conf)
    export.write_glb(add("scene.glb"), xyz, rgb, E_ok, K_ok, sizes_ok)
    image_paths = None
    if o.save_images and photos is not None:        # the views as the model read them (EXIF-rotated, RGB)
        image_paths = [f"images/{n}" for n in view_names]
        for rel, photo in zip(image_paths, photos):
            export.write_png_rgb(add(rel), np.asarray(photo))
    export.write_cameras_json(add("cameras.json"), E_ok, K_ok, sizes_ok, [names[v] for v in ok],
                              None if image_paths is None else [image_paths[v] for v in ok])
    current["file"] = "colmap/"
    export.write_colmap_text(d / "colmap", E_ok, K_ok, sizes_ok, [view_names[v] for v in ok], xyz, rgb,
                             ids=[v + 1 for v in ok])
    files += ["colmap/cameras.txt", "colmap/images.txt", "colmap/points3D.txt"]
    # per-view maps at photo resolution; non-finite depth is 0 in the PNG and invalid in the npz
    depth_photo, conf_photo, valid_photo, ids_photo = [], [], [], []
    clipped = 0
    for v, t in enumerate(transforms):
        dv, inside = t.to_photo(depth[v], model_size)
        cv, _ = t.to_photo(depth_conf[v], model_size)
        dv, cv, inside = dv.numpy(), cv.numpy(), inside.numpy()
        good = np.isfinite(dv)
        inside = inside & good
        dv = np.where(good, dv, 0.0).astype(np.float32)
        depth_photo.append(dv)
        conf_photo.append(np.where(np.isfinite(cv), cv, 0.0).astype(np.float32))
        valid_photo.append(inside)
        png = np.round(dv * o.depth_png_scale)
        clipped += int((png > 65535).sum())
        export.write_png16(add(f"depth/{stems[v]}.png"), np.clip(png, 0, 65535))
        if ids_model is not None:
            iv, _ = t.to_photo(ids_model[v], model_size, nearest=True, fill=0)
            ids_photo.append(iv.numpy())
            export.write_png16(add(f"masks/{stems[v]}.png"), iv.numpy())
    # one stacked array per map when the views share a size and all are in cameras.json (a reader indexes the
    # stack by the order of cameras.json), else one array per view named by its stem
    stacked = len(set(photo_sizes)) == 1 and len(ok) == len(names)
    arrays = {"depth": np.stack(depth_photo), "confidence": np.stack(conf_photo), "valid": np.stack(valid_photo)} \
        if stacked else {f"{k}_{s}": a for s, dd, cc, vv in zip(stems, depth_photo, conf_photo, valid_photo)
                         for k, a in (("depth", dd), ("confidence", cc), ("valid", vv))}
    export.write_npz(add("depth/depth.npz"), **arrays)
    n_inst = 0
    if ids_model is not None:
        n_inst = int(scores.numel())
        palette = export.instance_colours(n_inst)
        export.write_glb(add("instances.glb"), xyz, palette[np.clip(inst, 0, n_inst)], E_ok, K_ok, sizes_ok)
        f = feats[0].float().cpu()                          # [S,D,h,w] -> one PCA over all views
        S, D, h, w = f.shape
        pca = pca_colours(f.permute(1, 0, 2, 3).reshape(D, S * h, w)).reshape(3, S, h, w).permute(1, 2, 3, 0)
        export.write_glb(add("features.glb"), xyz, pca.reshape(-1, 3).numpy()[keep], E_ok, K_ok, sizes_ok)
        coco = export.coco_instances(ids_photo, scores.numpy(), names, labels)
        rel = add("masks/instances.json")
        json.dumps(coco, allow_nan=False)      # strict JSON: refuse a non-finite score rather than write NaN
        write_json(rel, coco)
    current["file"] = None
    omitted = [names[v] for v in range(len(names)) if not camera_ok[v]]
    return {"format": MANIFEST_FORMAT, "views": len(names), "files": files, "instances": n_inst,
            "points": int(len(xyz)),
            "labels": None if labels is None else [labels["names"][i] if i >= 0 else None for i in labels["labels"]],
            "photo_sizes": [list(s) for s in photo_sizes], "model_input": list(model_size),
            "mode": o.mode, "points_from": o.points_from,
            "confidence_filter": {"mode": o.conf_mode, "threshold": o.conf_threshold},
            "depth_png": {"scale": o.depth_png_scale, "unit": "predicted (normalised) scene units x scale; "
                          "0 = invalid/outside the model input or non-finite", "clipped_pixels": clipped},
            "invalid_views": {names[v]: list(p) for v, p in invalid.items()},
            "cameras_omitted": {"views": omitted, "from": ["cameras.json", "colmap/", "GLB camera frustums"],
                                "why": "non-finite or non-positive predicted camera"} if omitted else None,
            "colmap_names": dict(zip(names, view_names)),
            "convention": "OpenCV world-to-camera; world = first camera; pixel centres at i + 0.5; id 0 = none"}
