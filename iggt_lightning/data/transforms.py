"""Co-transforms: change every field of a scene's frames together, so geometry and ids stay aligned.

A crop or resize moves the image, the depth, the instance ids and the intrinsics as one: images are
resampled with antialiasing, depth and ids with nearest neighbour (depth must not blend across object
edges, ids must stay ids), and the intrinsics follow the same pixel mapping (pixel centres at integer
coordinates, see :mod:`.frames`): ``u' = (u - x0 + 0.5) * W/w - 0.5``.

Each transform is ``transform(frames, rng) -> frames`` with a ``numpy.random.Generator``, so a dataset
controls the randomness (reproducible per sample in evaluation, fresh per epoch in training).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .frames import Frame, resize_nearest


def _crop_resize_frame(f: Frame, box: tuple[int, int, int, int], size: tuple[int, int]) -> Frame:
    """Crop ``box`` = (x0, y0, cw, ch) from every field of ``f`` and resize it to ``size`` = (H, W)."""
    from PIL import Image

    x0, y0, cw, ch = box
    H, W = size
    img = Image.fromarray(f.image).resize((W, H), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    sx, sy = W / cw, H / ch
    K = f.intrinsics.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 1] *= sx
    K[0, 2] = (K[0, 2] - x0 + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] - y0 + 0.5) * sy - 0.5

    def crop(m):
        return None if m is None else resize_nearest(m[y0:y0 + ch, x0:x0 + cw], (H, W))

    return replace(f, image=np.asarray(img), intrinsics=K, depth=crop(f.depth), instance_ids=crop(f.instance_ids))


class CropResize:
    """Bring every view to ``size`` = (H, W), keeping the aspect ratio by cropping (``mode="crop"``) or
    stretching the whole image (``mode="resize"``, the official demo's way).

    ``scale`` = (1, s_max) zooms in by a random factor in that range (a smaller crop, resized up): the
    scale augmentation. With ``random_position`` the crop sits anywhere inside the image, else centred.
    Views are transformed independently (each keeps its own intrinsics).
    """

    def __init__(self, size: tuple[int, int], mode: str = "crop", scale: tuple[float, float] = (1.0, 1.0),
                 random_position: bool = False) -> None:
        if mode not in ("crop", "resize"):
            raise ValueError(f"CropResize mode must be 'crop' or 'resize'; got {mode!r}")
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"CropResize size must be (H, W) with positive entries; got {size}")
        lo, hi = float(scale[0]), float(scale[1])
        if not (1.0 <= lo <= hi):
            raise ValueError(f"CropResize scale must be (lo, hi) with 1 <= lo <= hi (zoom-in factors); got {scale}")
        self.size, self.mode, self.scale, self.random_position = size, mode, (lo, hi), random_position

    def box(self, hw: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
        h, w = hw
        H, W = self.size
        if self.mode == "resize":
            cw, ch = float(w), float(h)
        elif w * H > h * W:           # wider than the target: full height
            cw, ch = h * W / H, float(h)
        else:
            cw, ch = float(w), w * H / W
        zoom = rng.uniform(*self.scale) if self.scale[1] > self.scale[0] else self.scale[0]
        cw, ch = max(1, int(round(cw / zoom))), max(1, int(round(ch / zoom)))
        cw, ch = min(cw, w), min(ch, h)
        if self.random_position:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        else:
            x0, y0 = (w - cw) // 2, (h - ch) // 2
        return x0, y0, cw, ch

    def __call__(self, frames: list[Frame], rng: np.random.Generator) -> list[Frame]:
        return [_crop_resize_frame(f, self.box(f.size, rng), self.size) for f in frames]


class ColorJitter:
    """Brightness / contrast / saturation / hue jitter with probability ``p`` per sample.

    With ``shared`` (default) the views of a scene get the same jitter, as one camera's exposure change
    would; otherwise each view draws its own. Geometry and ids are untouched.
    """

    def __init__(self, p: float = 0.5, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 hue: float = 0.02, shared: bool = True) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"ColorJitter p must be in [0, 1]; got {p}")
        self.p, self.shared = p, shared
        self.ranges = (brightness, contrast, saturation, hue)

    def _params(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        b, c, s, h = self.ranges
        return (rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h))

    @staticmethod
    def _apply(image: np.ndarray, params) -> np.ndarray:
        b, c, s, h = params
        x = image.astype(np.float32) / 255.0 * b
        grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = (x - grey.mean()) * c + grey.mean()
        grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        x = (x - grey) * s + grey
        if h:
            # hue: rotate the chroma around the grey axis (YIQ rotation)
            yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
            a = 2 * np.pi * h
            rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
            x = x @ (np.linalg.inv(yiq) @ rot @ yiq).T
        return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)

    def __call__(self, frames: list[Frame], rng: np.random.Generator) -> list[Frame]:
        if rng.random() >= self.p:
            return frames
        shared = self._params(rng)
        return [replace(f, image=self._apply(f.image, shared if self.shared else self._params(rng))) for f in frames]


class Compose:
    def __init__(self, transforms: list) -> None:
        self.transforms = list(transforms)

    def __call__(self, frames: list[Frame], rng: np.random.Generator) -> list[Frame]:
        for t in self.transforms:
            frames = t(frames, rng)
        return frames
