"""Photos in, model-sized tensors out, and the way back to each photo's own pixels.

Pixel coordinates are continuous with pixel i covering [i, i+1) (centre i + 0.5), in the original photo
and in the model input alike; each view's :class:`ViewTransform` maps one to the other by a per-axis scale
and offset, so intrinsics move exactly (``K_photo = A^-1 K_model``) and per-pixel outputs are resampled
back to every photo's resolution (bilinear for depth/points/confidence, nearest for instance ids).

Modes (``preprocess(..., mode=)``):

* ``resize`` (the official demo): every photo resized to exactly ``size`` = (W, H) (default 504x336),
  aspect ratio ignored.
* ``crop``: scaled to width ``size[0]`` (default 518), height rounded to the patch size and centre-cropped
  to at most ``size[0]``; photos of different aspect ratios are cropped to the smallest height, so
  regions outside the crop come back as invalid (depth 0, id 0). A photo longer than 4:1 either way
  (:data:`CROP_MAX_ASPECT`) is refused, naming it and its size: a wide one would cut every view down to a
  thin strip, a tall one would keep only its middle (``pad`` takes both whole).
* ``pad``: long side scaled to ``size[0]`` (default 518), short side to a multiple of the patch size, padded
  with white to a square.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
MODES = ("resize", "crop", "pad")
DEFAULT_SIZE = {"resize": (504, 336), "crop": (518, 518), "pad": (518, 518)}
CROP_MAX_ASPECT = 4.0      # --mode crop: the longest photo side at most 4x the shortest


class InputError(ValueError):
    """Bad input photos (missing, empty, unreadable); the message names the file."""


def list_images(inputs: str | os.PathLike | list) -> list[Path]:
    """A folder (its images, sorted by name) or a list of image / video paths and folders, in order."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("no input images given")
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if not p.exists():
            raise InputError(f"input not found: {p}")
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {p} contains no images ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(p)
    return paths


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def load_video_frames(path: Path, frames: int = 8) -> tuple[list[np.ndarray], list[str]]:
    """``frames`` frames evenly spaced over a video (RGB uint8) and their names (``<stem>_<index>.png``): the same
    frames as decoding the whole clip and picking from it, without holding the clip. Needs PyAV
    (``pip install 'iggt-lightning[video]'``).

    Memory is bounded by the picked frames, not the clip's length: the video is decoded frame by frame and only
    the picked ones are kept, at most ``frames`` RGB arrays of W x H x 3 bytes (8 frames of 1920x1080: 50 MB)
    plus the decoder's few working frames, for a 10-second clip as for a 10-minute one. The frame count that
    places the picks comes from the stream's header (or, when it states none, from counting the packets without
    decoding them); the picking pass counts what it decodes, and where the header was wrong it decodes once more
    with the picks of the true count, so the picks always match a full decode.
    """
    try:
        import av
    except ImportError as err:
        raise InputError(f"{path} is a video; reading videos needs PyAV: pip install 'iggt-lightning[video]'") from err
    if frames < 1:
        raise InputError(f"--video-frames must be >= 1; got {frames}")
    try:
        count = _frame_count_hint(av, path)
        kept, decoded = _decode_picks(av, path, _picks(count, frames))
        if decoded != count:            # the header (or packet count) was wrong: pick from the true count
            count = decoded
            kept, decoded = _decode_picks(av, path, _picks(count, frames))
            if decoded != count:
                raise InputError(f"cannot read video {path}: it decoded to {count} and then {decoded} frames "
                                 "(did it change while it was read?)")
    except (av.FFmpegError, OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"cannot read video {path}: {err}") from err
    if not kept:
        raise InputError(f"video {path} has no frames")
    picks = sorted(kept)
    return [kept[i] for i in picks], [f"{Path(path).stem}_{i:05d}.png" for i in picks]


def _picks(count: int, frames: int) -> list[int]:
    """Indices of ``frames`` frames evenly spaced over ``count`` (first and last included)."""
    if count < 1:
        return []
    return np.unique(np.linspace(0, count - 1, min(frames, count)).round().astype(int)).tolist()


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise InputError(f"video {path} has no video stream")
    return container.streams.video[0]


def _frame_count_hint(av, path: Path) -> int:
    """The video stream's frame count from its header, else its packets counted without decoding (0: none)."""
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        if stream.frames > 0:
            return int(stream.frames)
    return count_packets(av, path)


def count_packets(av, path: Path) -> int:
    """The video stream's frames counted from its packets, without decoding (headers can be wrong)."""
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        return sum(1 for packet in container.demux(stream) if packet.size)


def _decode_picks(av, path: Path, picks: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """({index: RGB uint8} of the picked frames, the number of frames decoded): one decoding pass keeping only the
    picked frames (every other frame is released as soon as it is decoded)."""
    wanted, kept, count = set(picks), {}, 0
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_type = "AUTO"     # frame threads: the same frames, decoded faster
        for frame in container.decode(stream):
            if count in wanted:
                kept[count] = _frame_rgb(frame)
            count += 1
    return kept, count


def _frame_rgb(frame) -> np.ndarray:
    """A decoded frame as an RGB uint8 array that owns its memory (PyAV's array is a view into a frame)."""
    return np.array(frame.to_ndarray(format="rgb24"), copy=True)


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 [H,W,3] as a viewer shows the photo: EXIF orientation applied, 16-bit (by their significant bits)
    / 32-bit / float / palette / CMYK / bilevel pixels converted properly, transparency composited on white (as
    the official demo). Unreadable, empty, truncated, multi-page and oversized (decompression-bomb) files raise
    :class:`InputError` naming the file (:mod:`iggt_lightning.imageio`, shared with the dataset readers)."""
    from iggt_lightning.imageio import read_image_rgb

    return read_image_rgb(path, InputError, "image")


@dataclass
class ViewTransform:
    """Model-input pixel = scale * photo pixel + offset (per axis, continuous coordinates)."""

    photo_size: tuple[int, int]          # (W, H) of the photo
    scale: tuple[float, float]           # (sx, sy)
    offset: tuple[float, float]          # (ox, oy)

    def matrix(self) -> torch.Tensor:
        (sx, sy), (ox, oy) = self.scale, self.offset
        return torch.tensor([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def intrinsics_to_photo(self, K: torch.Tensor) -> torch.Tensor:
        """Model-input intrinsics [3,3] -> the photo's."""
        return (torch.linalg.inv(self.matrix()) @ K.double()).to(K.dtype)

    def to_photo(self, value: torch.Tensor, model_size: tuple[int, int], nearest: bool = False,
                 fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample a model-resolution map [h,w] or [h,w,C] to the photo's pixels.

        Returns (map at photo resolution, bool mask of photo pixels that fall inside the model input);
        pixels outside get ``fill``.
        """
        W0, H0 = self.photo_size
        w, h = model_size
        (sx, sy), (ox, oy) = self.scale, self.offset
        xs = (torch.arange(W0, dtype=torch.float64) + 0.5) * sx + ox      # model-input coordinates
        ys = (torch.arange(H0, dtype=torch.float64) + 0.5) * sy + oy
        inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
        squeeze = value.ndim == 2
        v = value[..., None] if squeeze else value
        if nearest:
            iy = ys.floor().long().clamp(0, h - 1)
            ix = xs.floor().long().clamp(0, w - 1)
            out = v[iy][:, ix]
        else:  # bilinear, align_corners=False: normalised coordinate = 2 * x / size - 1
            grid = torch.stack(torch.meshgrid((ys / h * 2 - 1).float(), (xs / w * 2 - 1).float(), indexing="ij")[::-1], -1)
            out = F.grid_sample(v.permute(2, 0, 1)[None].float(), grid[None], mode="bilinear", padding_mode="border",
                                align_corners=False)[0].permute(1, 2, 0)
        mask = inside[..., None].expand_as(out)
        out = torch.where(mask, out, torch.as_tensor(fill, dtype=out.dtype))
        return (out[..., 0] if squeeze else out), inside


def _fit(size: int, patch: int) -> int:
    return max(patch, int(round(size / patch)) * patch)


def check_crop_aspect(photos: list[np.ndarray], width: int, patch: int, names: list[str] | None = None) -> None:
    """``crop`` mode refuses a photo longer than :data:`CROP_MAX_ASPECT`:1 either way, naming it and its size."""
    for i, photo in enumerate(photos):
        h0, w0 = photo.shape[:2]
        if max(w0, h0) <= CROP_MAX_ASPECT * min(w0, h0):
            continue
        name = names[i] if names is not None and i < len(names) else f"view {i}"
        h = _fit(h0 * width / w0, patch)
        why = (f"every view would be cut to {width}x{h} px" if w0 > h0 else
               f"only its middle {width} of {h} rows would be kept ({100 * width / h:.2g} %)")
        raise InputError(f"--mode crop: photo {name} is {w0}x{h0} px, longer than {CROP_MAX_ASPECT:g}:1: crop mode "
                         f"scales every photo to the model width and crops all to the shortest, so {why}; use "
                         "--mode pad (every photo whole) or leave this one out")


def preprocess(photos: list[np.ndarray], mode: str = "resize", size: tuple[int, int] | None = None,
               patch: int = 14, names: list[str] | None = None) -> tuple[torch.Tensor, list[ViewTransform]]:
    """Photos (uint8 [H,W,3], any sizes) -> images [S,3,H,W] in [0,1] and one ViewTransform per view; ``names``
    (one per photo) name a refused photo."""
    from PIL import Image

    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
    if not photos:
        raise InputError("no photos to preprocess")
    size = tuple(size or DEFAULT_SIZE[mode])
    if len(size) != 2 or min(size) < patch:
        raise ValueError(f"size must be (W, H) of at least {patch} px each; got {size}")
    plans = []  # (resize_to (w, h), offset (ox, oy) in the resized image, final canvas (W, H))
    if mode == "resize":
        W, H = _fit(size[0], patch), _fit(size[1], patch)
        plans = [((W, H), (0, 0), (W, H)) for _ in photos]
    elif mode == "crop":
        W = _fit(size[0], patch)
        check_crop_aspect(photos, W, patch, names)
        heights = [_fit(p.shape[0] * W / p.shape[1], patch) for p in photos]
        H = min(min(heights), _fit(size[0], patch))
        plans = [((W, h), (0, (h - H) // 2), (W, H)) for h in heights]
    else:  # pad
        L = _fit(size[0], patch)
        for p in photos:
            h0, w0 = p.shape[:2]
            w, h = (L, _fit(h0 * L / w0, patch)) if w0 >= h0 else (_fit(w0 * L / h0, patch), L)
            w, h = min(w, L), min(h, L)
            plans.append(((w, h), (-((L - w) // 2), -((L - h) // 2)), (L, L)))
    images, transforms = [], []
    for photo, ((w, h), (ox, oy), (W, H)) in zip(photos, plans):
        h0, w0 = photo.shape[:2]
        resized = np.asarray(Image.fromarray(photo).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
        canvas = np.ones((H, W, 3), dtype=np.float32)      # white, as the official pad mode
        # place the resized photo at -offset (crop: positive offset cuts; pad: negative offset shifts)
        src_y0, src_x0 = max(oy, 0), max(ox, 0)
        dst_y0, dst_x0 = max(-oy, 0), max(-ox, 0)
        hh, ww = min(h - src_y0, H - dst_y0), min(w - src_x0, W - dst_x0)
        canvas[dst_y0:dst_y0 + hh, dst_x0:dst_x0 + ww] = resized[src_y0:src_y0 + hh, src_x0:src_x0 + ww]
        images.append(torch.from_numpy(canvas).permute(2, 0, 1).clamp(0, 1))
        transforms.append(ViewTransform((w0, h0), (w / w0, h / h0), (float(-ox), float(-oy))))
    return torch.stack(images), transforms
