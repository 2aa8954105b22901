"""``iggt predict``: a folder of photos -> point cloud, cameras, depth, instance masks, in files other tools open.

Stages: read photos -> preprocess -> load model -> inference -> instances (tracking head, or the default
clusterer on the instance features) -> back to photo resolution -> export. The whole output directory is
built under a temporary sibling and renamed into place at the end, so an error (bad input, full disk)
leaves nothing half-written, and an existing directory is replaced only with ``overwrite``.

Resolution: per-pixel maps (depth, confidence, instance ids) are resampled to each photo's own size and
intrinsics are rescaled to it; point clouds have one point per model-input pixel (bounded size), unprojected
from the predicted depth with the predicted cameras (``points_from="depth"``, consistent with the depth maps
and cameras by construction) or taken from the point head (``points_from="point"``, as the official GLBs).
"""
from __future__ import annotations

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

PRECISIONS = {"32": torch.float32, "fp32": torch.float32, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "16": torch.float16, "fp16": torch.float16, "16-mixed": torch.float16}


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
    save_images: bool = True             # images/<stem>.png: the input views, so the folder re-reads as a dataset
    overwrite: bool = False
    dry_run: bool = False
    progress: bool = True


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


def check_options(o: PredictOptions) -> None:
    if o.mode not in ("resize", "crop", "pad"):
        raise ValueError(f"--mode must be resize, crop or pad; got {o.mode!r}")
    if o.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {sorted(PRECISIONS)}; got {o.precision!r}")
    if o.conf_mode not in ("percentile", "absolute"):
        raise ValueError(f"--conf-mode must be percentile or absolute; got {o.conf_mode!r}")
    if o.conf_mode == "percentile" and not 0 <= o.conf_threshold < 100:
        raise ValueError(f"a percentile confidence threshold must be in [0, 100); got {o.conf_threshold}")
    if o.points_from not in ("depth", "point"):
        raise ValueError(f"--points-from must be depth or point; got {o.points_from!r}")
    out = Path(o.out)
    if out.exists() and not o.overwrite:
        raise ValueError(f"output directory {out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if not Path(o.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {o.checkpoint}")
    if o.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {o.device}: CUDA is not available on this machine")


def planned_files(names: list[str], has_instances: bool, save_images: bool = True) -> list[str]:
    stems = [Path(n).stem for n in names]
    files = ["manifest.json", "points.ply", "scene.glb", "cameras.json", "colmap/cameras.txt", "colmap/images.txt",
             "colmap/points3D.txt", "depth/depth.npz"] + [f"depth/{s}.png" for s in stems]
    files += [f"images/{s}.png" for s in stems] if save_images else []
    if has_instances:
        files += ["instances.glb", "features.glb", "masks/instances.json"] + [f"masks/{s}.png" for s in stems]
    return files


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(Path(n).stem for n in names)) != len(names):  # the same stem in two folders: number them
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def run_predict(o: PredictOptions) -> dict:
    """Run the pipeline; returns the summary (also written into manifest.json)."""
    from iggt_lightning.checkpoints import load_model
    from iggt_lightning.geometry import pose_encoding_to_extri_intri, unproject_depth

    check_options(o)
    st = Stages(o.progress)
    st.start("read photos")
    paths = list_images(o.inputs)
    photos, frame_paths = [], []
    for p in paths:
        if is_video(p):
            frames, frame_names = load_video_frames(p, o.video_frames)
            photos += frames
            frame_paths += [p.parent / n for n in frame_names]
        else:
            photos.append(load_image(p))
            frame_paths.append(p)
    names = _unique_names(frame_paths)
    st.done()
    if o.dry_run:
        sizes = sorted({(p.shape[1], p.shape[0]) for p in photos})
        return {"dry_run": True, "views": len(photos), "photo_sizes": sizes, "out": str(o.out),
                "files": planned_files(names, True, o.save_images)}
    st.start("load model")
    model = load_model(o.checkpoint, preset=o.preset).eval().to(o.device)
    st.done()
    st.start("preprocess")
    images, transforms = preprocess(photos, o.mode, o.size, model.backbone.patch_size)
    S, _, H, W = images.shape
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
    if o.points_from == "point" and "world_points" in out:
        points, conf = out["world_points"][0].float().cpu(), out["world_points_conf"][0].float().cpu()
    else:
        points = unproject_depth(depth.double(), extr, intr).float()
        conf = depth_conf
    colours = images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    flat_conf = conf.reshape(-1).numpy()
    finite = np.isfinite(points.reshape(-1, 3).numpy()).all(1) & np.isfinite(flat_conf) & (flat_conf > 1e-5)
    if o.conf_mode == "percentile":
        cut = np.percentile(flat_conf[finite], o.conf_threshold) if finite.any() else np.inf
        keep = finite & (flat_conf >= cut)
    else:
        keep = finite & (flat_conf >= o.conf_threshold)
    xyz = points.reshape(-1, 3).numpy()[keep]
    rgb = colours[keep]
    inst = ids_model.reshape(-1).numpy()[keep] if ids_model is not None else np.zeros(len(xyz), np.int64)
    photo_sizes = [t.photo_size for t in transforms]
    # the model's intrinsics put pixel centres at integer coordinates (VGGT); exported ones at i + 0.5 (COLMAP)
    K_centre = intr.clone()
    K_centre[:, :2, 2] += 0.5
    K_photo = np.stack([t.intrinsics_to_photo(K).numpy() for t, K in zip(transforms, K_centre)])
    E = extr.numpy()
    st.done()
    st.start("export")
    out_dir = Path(o.out)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        summary = _export(tmp, o, names, photo_sizes, transforms, (W, H), depth, depth_conf, ids_model, scores,
                          feats, keep, xyz, rgb, inst, flat_conf[keep], E, K_photo, labels, photos)
        summary["seconds"] = st.seconds
        write_json(tmp / "manifest.json", summary)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    st.done()
    summary["seconds"] = st.seconds
    return summary


def _replace_dir(new: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)


def _export(d: Path, o: PredictOptions, names, photo_sizes, transforms, model_size, depth, depth_conf, ids_model,
            scores, feats, keep, xyz, rgb, inst, conf, E, K_photo, labels=None, photos=None) -> dict:
    from iggt_lightning.module import pca_colours

    stems = [Path(n).stem for n in names]
    files: list[str] = []

    def add(rel: str) -> Path:
        files.append(rel)
        return d / rel

    export.write_ply(add("points.ply"), xyz, rgb, inst, conf)
    export.write_glb(add("scene.glb"), xyz, rgb, E, K_photo, photo_sizes)
    image_paths = None
    if o.save_images and photos is not None:        # the views as the model read them (EXIF-rotated, RGB)
        image_paths = [f"images/{s}.png" for s in stems]
        for rel, photo in zip(image_paths, photos):
            export.write_png_rgb(add(rel), np.asarray(photo))
    export.write_cameras_json(add("cameras.json"), E, K_photo, photo_sizes, names, image_paths)
    export.write_colmap_text(d / "colmap", E, K_photo, photo_sizes, names, xyz, rgb)
    files += ["colmap/cameras.txt", "colmap/images.txt", "colmap/points3D.txt"]
    # per-view maps at photo resolution
    depth_photo, conf_photo, valid_photo, ids_photo = [], [], [], []
    clipped = 0
    for v, t in enumerate(transforms):
        dv, inside = t.to_photo(depth[v], model_size)
        cv, _ = t.to_photo(depth_conf[v], model_size)
        depth_photo.append(dv.numpy())
        conf_photo.append(cv.numpy())
        valid_photo.append(inside.numpy())
        png = np.round(np.nan_to_num(dv.numpy(), nan=0.0, posinf=0.0) * o.depth_png_scale)
        clipped += int((png > 65535).sum())
        export.write_png16(add(f"depth/{stems[v]}.png"), np.clip(png, 0, 65535))
        if ids_model is not None:
            iv, _ = t.to_photo(ids_model[v], model_size, nearest=True, fill=0)
            ids_photo.append(iv.numpy())
            export.write_png16(add(f"masks/{stems[v]}.png"), iv.numpy())
    same_size = len(set(photo_sizes)) == 1
    arrays = {"depth": np.stack(depth_photo), "confidence": np.stack(conf_photo), "valid": np.stack(valid_photo)} \
        if same_size else {f"{k}_{s}": a for s, dd, cc, vv in zip(stems, depth_photo, conf_photo, valid_photo)
                           for k, a in (("depth", dd), ("confidence", cc), ("valid", vv))}
    export.write_npz(add("depth/depth.npz"), **arrays)
    n_inst = 0
    if ids_model is not None:
        n_inst = int(scores.numel())
        palette = export.instance_colours(n_inst)
        export.write_glb(add("instances.glb"), xyz, palette[np.clip(inst, 0, n_inst)], E, K_photo, photo_sizes)
        f = feats[0].float().cpu()                          # [S,D,h,w] -> one PCA over all views
        S, D, h, w = f.shape
        pca = pca_colours(f.permute(1, 0, 2, 3).reshape(D, S * h, w)).reshape(3, S, h, w).permute(1, 2, 3, 0)
        export.write_glb(add("features.glb"), xyz, pca.reshape(-1, 3).numpy()[keep], E, K_photo, photo_sizes)
        coco = export.coco_instances(ids_photo, scores.numpy(), names, labels)
        write_json(add("masks/instances.json"), coco)
    return {"views": len(names), "files": files, "instances": n_inst, "points": int(len(xyz)),
            "labels": None if labels is None else [labels["names"][i] if i >= 0 else None for i in labels["labels"]],
            "photo_sizes": [list(s) for s in photo_sizes], "model_input": list(model_size),
            "mode": o.mode, "points_from": o.points_from,
            "confidence_filter": {"mode": o.conf_mode, "threshold": o.conf_threshold},
            "depth_png": {"scale": o.depth_png_scale, "unit": "predicted (normalised) scene units x scale; "
                          "0 = invalid/outside the model input", "clipped_pixels": clipped},
            "convention": "OpenCV world-to-camera; world = first camera; pixel centres at i + 0.5; id 0 = none"}

