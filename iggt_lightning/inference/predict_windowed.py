"""``iggt predict --window N``: photos or a video streamed through :mod:`.windowed`, into one prediction folder.

Frames are read one at a time (a video is decoded as a stream, never held whole): each is preprocessed to the
model input, which the window buffer holds until its last window has run, and the photo itself goes to a raw cache
file in a temporary folder, read back view by view when the exporters save ``images/`` or resample maps to the
photo (:class:`CachedPhoto`). The windows' per-pixel outputs go to raw files in the same folder
(:class:`~.windowed.FrameStore`), and the exporters read them a view at a time, so memory holds a window, one
view being written and the cloud (at most ``max_points``), however long the video. The files are those of a
one-pass prediction, with the per-window diagnostics (alignment residual, matched / new / dropped instances) in
``manifest.json`` under ``windowed``.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .images import InputError, _frame_rgb, count_packets, is_video, load_image, preprocess
from .scene import View, saved_view_names, unique_view_names
from .windowed import FrameStore, WindowError, WindowOptions, describe_windows, iter_windows, reconstruct

# the cloud's size in a windowed run when --max-points is not given: points.ply ~50 MB, whatever the length
WINDOWED_MAX_POINTS = 2_000_000


@dataclass
class CachedPhoto:
    """A photo kept in a raw cache file (uint8 H x W x 3 at ``offset``), read when an exporter asks for it:
    ``np.asarray(photo)`` reads it, ``photo.shape`` needs no read."""

    path: Path
    offset: int
    shape: tuple[int, int, int]

    def __array__(self, dtype=None, copy=None):
        count = int(np.prod(self.shape))
        a = np.fromfile(self.path, dtype=np.uint8, count=count, offset=self.offset).reshape(self.shape)
        return a.astype(dtype) if dtype is not None else a


class PhotoCache:
    """Appends photos to one raw file in a private temporary folder (removed by :meth:`close`)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="iggt-frames-"))
        self.path = self.folder / "photos.raw"
        self._file = open(self.path, "wb")
        self._offset = 0

    def add(self, photo: np.ndarray) -> CachedPhoto:
        photo = np.ascontiguousarray(photo, dtype=np.uint8)
        self._file.write(photo.tobytes())
        entry = CachedPhoto(self.path, self._offset, tuple(photo.shape))
        self._offset += photo.nbytes
        return entry

    def finish(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def count_frames(paths: list[Path], stride: int) -> int:
    """Frames the run will read: every ``stride``-th photo (the photos as one sequence) and every ``stride``-th
    frame of each video (its packets counted without decoding, so a wrong header does not misplan the windows)."""
    photos = sum(1 for p in paths if not is_video(p))
    total = (photos + stride - 1) // stride
    for p in paths:
        if not is_video(p):
            continue
        import av

        try:
            n = count_packets(av, p)
        except av.FFmpegError as err:
            raise InputError(f"cannot read video {p}: {err}") from err
        total += (n + stride - 1) // stride
    return total


def stream_frames(paths: list[Path], stride: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB uint8 photo) of every ``stride``-th photo and every ``stride``-th frame of each video, in order;
    video frames are named ``<stem>_<index>.png`` (the index in the video). One frame in memory at a time."""
    photo_index = 0
    for p in paths:
        if not is_video(p):
            if photo_index % stride == 0:
                yield p.name, load_image(p)
            photo_index += 1
            continue
        import av

        index = -1
        try:
            with av.open(str(p)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_type = "AUTO"
                for index, frame in enumerate(container.decode(stream)):
                    if index % stride == 0:
                        yield f"{p.stem}_{index:06d}.png", _frame_rgb(frame)
        except av.FFmpegError as err:
            raise InputError(f"cannot decode video {p} after frame {index}: {err}") from err


def autocast(precision: str, device: torch.device):
    """The context a window runs in for Lightning's ``precision`` (what ``--precision`` maps to): bf16 or fp16
    autocast, or nothing for 32-true."""
    import contextlib

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def run_windowed(o, plan, module, options: dict, manifest: dict, total: int, windows: list[tuple[int, int]],
                 overlap: int, precision: str = "32-true") -> dict:
    """The windowed run: stream, reconstruct, (with ``o.ba``) bundle-adjust the whole path on every window's
    predicted tracks, write. ``o``: PredictOptions, ``plan``: predict's Plan; ``precision``: Lightning's name of
    ``--precision`` (each window runs under its autocast, as a one-pass run under Lightning's)."""
    from .writer import write_prediction

    stride = max(1, int(o.stride or 1))
    cache = PhotoCache()
    views: list[View] = []
    try:
        def frames():
            for i, (name, photo) in enumerate(stream_frames(plan.paths, stride)):
                if i >= total:
                    raise InputError(f"the input holds more frames than its {total} counted packets (frame {i})")
                images, transforms = preprocess([photo], o.mode, o.size, plan.patch_size, [name])
                views.append(View(name, Path(name).stem, name, transforms[0], cache.add(photo)))
                yield images[0]

        device = torch.device(o.device)
        module.to(device).eval()

        def run(images: torch.Tensor) -> dict:
            with torch.inference_mode(), autocast(precision, device):
                out = module.run(images.to(device), "predict")
            return {k: (v.cpu() if torch.is_tensor(v) else [x.cpu() for x in v] if isinstance(v, list) else v)
                    for k, v in out.items()}

        observe = _track_observer(module, device) if o.ba else None
        t0 = time.perf_counter()
        # the sequence's per-pixel outputs go to raw files beside the photos, read back a view at a time
        store = FrameStore(total, cache.folder)
        result = reconstruct(run, iter_windows(windows, frames()), total,
                             WindowOptions(o.window, overlap, associate=not o.no_association), observe, store)
        cache.finish()
        seconds = time.perf_counter() - t0
        manifest = dict(manifest)
        if o.ba:
            manifest["bundle_adjustment"] = _adjust_sequence(result, o.ba_refine_focal)
        # named as a one-pass run names them (images/ holds PNGs, so a saved view is <stem>.png)
        names = unique_view_names([Path(v.name) for v in views])
        views = [View(n, Path(n).stem, s, v.transform, v.photo)
                 for n, s, v in zip(names, saved_view_names(names, options["save_images"]), views)]
        images = result.outputs["images"][0]
        auto = manifest.pop("window_choice", None)        # --window auto: how the window was chosen
        manifest["windowed"] = {"window": o.window, **({"auto": auto} if auto else {}), "overlap": overlap,
                                "stride": stride, "precision": precision,
                                "association": not o.no_association, **describe_windows(result.windows)}
        manifest["seconds"] = {**manifest.get("seconds", {}), "windowed_inference": round(seconds, 3)}
        # as a one-pass run's manifest has them (its writer adds them)
        manifest["precision"], manifest["head_precision"] = precision, module.model.head_precision
        if options.get("max_points") is None:        # a bounded cloud, whatever the length of the video
            options = {**options, "max_points": WINDOWED_MAX_POINTS}
        t1 = time.perf_counter()
        summary = write_prediction(plan.out, module.plugins(), result.outputs, 0, views, images, options, manifest,
                                   overwrite=o.overwrite, display=str(o.out))
        summary = dict(summary)
        summary["seconds"] = {**summary.get("seconds", {}), "export": round(time.perf_counter() - t1, 3)}
        return summary
    finally:
        cache.close()


def _track_observer(module, device):
    """A window's predicted tracks (two query frames per window: consecutive windows' tracks share frames)."""
    from .track_ba import collect_tracks, head_tracker, reference_frames

    tracker = head_tracker(module, device)

    def observe(images, per):
        return collect_tracks(tracker, images, per["world_points"], per["world_points_conf"],
                              reference_frames(len(images), 2), per_frame=128)

    return observe


def _adjust_sequence(result, refine_focal: bool) -> dict:
    """Bundle adjustment of the assembled path on the windows' tracks; the refined cameras replace ``pose_enc``."""
    from iggt_lightning.geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri

    from .track_ba import adjust

    out = result.outputs
    H, W = out["images"].shape[-2:]
    E, K = pose_encoding_to_extri_intri(out["pose_enc"][-1][0], (H, W))
    E1, K1, report = adjust(E.double().numpy(), K.double().numpy(), (W, H), result.observations, refine_focal)
    out["pose_enc"] = [extri_intri_to_pose_encoding(torch.as_tensor(E1).float(), torch.as_tensor(K1).float(),
                                                    (H, W))[None]]
    return report


__all__ = ["CachedPhoto", "PhotoCache", "WindowError", "count_frames", "run_windowed", "stream_frames"]
