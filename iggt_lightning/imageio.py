"""Photo files -> RGB uint8: the one decoder behind ``iggt predict``
(:func:`iggt_lightning.inference.images.load_image`) and every dataset reader
(:func:`iggt_lightning.data.frames.read_rgb`).

* The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo comes out as a viewer shows
  it, width and height swapped for orientations 5-8.
* Every Pillow mode becomes RGB uint8: 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, and ``I``, which holds
  16-bit PNG values 0..65535) is scaled by 255/65535; float ``F`` must lie in [0, 1] (anything else is refused:
  its range is unknown); grey and bilevel give three equal channels; ``P``, ``CMYK`` (Adobe-inverted JPEG
  too) and ``YCbCr`` through Pillow's conversion; transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a
  transparent colour) is composited on white, as the official demo does.
* Decompression bombs: Pillow's limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels by default; the
  environment variable ``IGGT_MAX_IMAGE_PIXELS`` replaces it). Above the limit a warning names the file;
  above twice the limit the file is refused, naming its pixel count and the limit.
* Missing, empty, truncated and non-image files are refused in one line naming the file; Pillow's own
  warnings about a file (corrupt EXIF, ...) are re-issued with the file's name.

Errors are raised as the caller's exception class (``InputError`` for photos, ``DatasetError`` for datasets).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

MAX_PIXELS_ENV = "IGGT_MAX_IMAGE_PIXELS"


class ImageWarning(UserWarning):
    """Something about an image file worth knowing that does not stop it from being read; names the file."""


def pixel_limit() -> int | None:
    """Pillow's decompression-bomb limit in pixels (warning above it, refusal above twice it), after
    ``IGGT_MAX_IMAGE_PIXELS``; None = no limit (``IGGT_MAX_IMAGE_PIXELS=0``)."""
    from PIL import Image

    env = os.environ.get(MAX_PIXELS_ENV)
    if env is not None and env.strip():
        try:
            value = int(float(env))
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={env!r} is not a number of pixels") from None
        Image.MAX_IMAGE_PIXELS = value if value > 0 else None
    return Image.MAX_IMAGE_PIXELS


def _bomb_message(path: Path, what: str, pixels: int | None, size: tuple[int, int] | None, limit: int) -> str:
    dims = f"{size[0]}x{size[1]} = " if size else ""
    count = f"{dims}{pixels:,} pixels" if pixels is not None else "its pixel count"
    return (f"{what} {path}: {count} exceeds the decompression-bomb limit of {limit:,} pixels "
            f"(2 x PIL.Image.MAX_IMAGE_PIXELS); downscale the file, or if you trust it raise the limit with "
            f"{MAX_PIXELS_ENV}=<pixels>")


def open_image(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "image",
               orient: bool = True):
    """Open and fully decode ``path`` with Pillow (the returned image is loaded; the file is closed), its EXIF
    orientation applied when ``orient``. Every failure is raised as ``error`` naming the file; Pillow's
    warnings are re-issued naming it."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        raise error(f"missing {what} {path}")
    if not path.is_file():
        raise error(f"{what} {path} is not a file")
    try:
        nbytes = path.stat().st_size
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err}") from err
    if nbytes == 0:
        raise error(f"cannot read {what} {path}: the file is empty (0 bytes)")
    limit = pixel_limit()
    size = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as im:
                size = im.size
                im.load()
                if orient:
                    im = _orient(im, path, what)
        except Image.DecompressionBombError as err:
            found = re.search(r"\((\d+) pixels\)", str(err))
            raise error(_bomb_message(path, what, int(found.group(1)) if found else None, size,
                                      2 * (limit or 0))) from err
        except MemoryError as err:
            raise error(f"cannot read {what} {path}: out of memory decoding {size or 'it'}") from err
        except Exception as err:   # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
            kind = "not an image Pillow can read" if isinstance(err, Image.UnidentifiedImageError) else \
                f"{type(err).__name__}: {err}"
            if isinstance(err, OSError) and "truncated" in str(err):
                kind = f"the file is truncated or damaged ({err})"
            raise error(f"cannot read {what} {path}: {kind}") from err
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            pixels = size[0] * size[1] if size else None
            warnings.warn(f"{what} {path}: {size[0]}x{size[1]} = {pixels:,} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS "
                          f"({limit:,}; a possible decompression bomb); reading it anyway (refused above "
                          f"{2 * limit:,})", ImageWarning, stacklevel=3)
        elif issubclass(w.category, ImageWarning):          # ours, already naming the file
            warnings.warn(w.message, stacklevel=3)
        else:
            warnings.warn(f"{what} {path}: {w.message}", w.category if issubclass(w.category, Warning) else
                          ImageWarning, stacklevel=3)
    return im


def _orient(im, path: Path, what: str):
    """The image as a viewer shows it (``ImageOps.exif_transpose``); unreadable EXIF is ignored with a warning."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (1, None):
            return im
        if orientation not in range(2, 9):
            warnings.warn(f"{what} {path}: EXIF orientation {orientation!r} is not 1..8; ignored", ImageWarning,
                          stacklevel=4)
            return im
        return ImageOps.exif_transpose(im)
    except Exception as err:   # a damaged EXIF block should not make the pixels unreadable
        warnings.warn(f"{what} {path}: cannot read its EXIF orientation ({type(err).__name__}: {err}); the pixels "
                      "are used as stored", ImageWarning, stacklevel=4)
        return im


def _white_composite(im):
    from PIL import Image

    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


def to_rgb_uint8(im, path: str | os.PathLike = "<image>", error: type[Exception] = ValueError,
                 what: str = "image") -> np.ndarray:
    """A decoded Pillow image -> RGB uint8 [H,W,3] (see the module docstring for what each mode becomes)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        return _white_composite(im)
    if mode in ("L", "1"):
        return _grey(np.asarray(im.convert("L")))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
        if lo < 0 or hi > 65535:
            raise error(f"{what} {path}: 32-bit integer pixels range {lo}..{hi}; expected 16-bit values 0..65535 "
                        "(convert it to an 8- or 16-bit image)")
        return _grey(np.round(values / 257.0).astype(np.uint8))
    if mode == "F":
        values = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            raise error(f"{what} {path}: float image with {100 * (1 - finite.mean()):.2g} % NaN/inf pixels; expected "
                        "values in [0, 1]")
        lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if lo < 0 or hi > 1:
            raise error(f"{what} {path}: float image ranges {lo:.4g}..{hi:.4g}; only [0, 1] is understood as "
                        "intensity (convert it to an 8- or 16-bit image)")
        return _grey(np.round(values * 255.0).astype(np.uint8))
    try:  # P without transparency, CMYK (Pillow undoes Adobe's inversion on decoding), YCbCr, HSV, ...
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as err:
        raise error(f"{what} {path}: cannot convert pixel mode {mode} to RGB ({err})") from err


def read_image_rgb(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "image") -> np.ndarray:
    """The file as RGB uint8 [H,W,3], EXIF orientation applied; failures raised as ``error`` naming the file."""
    return to_rgb_uint8(open_image(path, error, what), Path(path), error, what)
