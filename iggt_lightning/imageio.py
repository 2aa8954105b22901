"""Photo files -> RGB uint8: the one decoder behind ``iggt predict``
(:func:`iggt_lightning.inference.images.load_image`) and every dataset reader
(:func:`iggt_lightning.data.frames.read_rgb`).

* The EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo comes out as a viewer shows
  it, width and height swapped for orientations 5-8.
* 8-bit photos (the usual JPEG, PNG, WebP, ...) are Pillow's pixels as they are. Grey and bilevel give three
  equal channels; ``P``, ``CMYK`` (Adobe-inverted JPEG too) and ``YCbCr`` through Pillow's conversion;
  transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) is composited on white, as the
  official demo does.
* Photos by their significant bits (one rule for every view, never a per-photo guess):

  - 16-bit PNGs (grey, grey+alpha, RGB, RGBA; every sample read at its full 16 bits) with an ``sBIT`` chunk of
    ``b`` < 16 bits: if no sample exceeds ``2**b - 1`` and the low ``16 - b`` bits are not all zero, the data
    are ``b``-bit values stored as they are (how cameras and most tools write 10/12-bit data) and are scaled by
    ``2**b - 1``; otherwise they are left-aligned as the PNG specification says and scaled by 65535.
  - 16-bit data without ``sBIT`` (PNG, 16-bit TIFF, ``I;16*``) are scaled by 65535, as the PNG specification
    says (a per-photo guess from the brightest pixel would give the views of one scene different scales); when
    no sample reaches ``2**12`` a warning names the file: it looks like 10/12-bit data reaching the model at
    1/16 or 1/64 brightness (add an ``sBIT`` chunk, or rescale it to 16 bits). 16-bit colour TIFFs are read
    by Pillow at 8 bits (each sample's high byte), with the same warning.
  - 32-bit integer images (``I``: TIFF) have no stated range: values 0..255 are read as 8-bit and values
    0..65535 as 16-bit, each with a warning naming the file and the rule; anything else is refused.
  - Float images (``F``): [0, 1] as they are; whole numbers within 0..255 or 0..65535 are read as 8- or 16-bit
    values with a warning; anything else (HDR radiance, negative, NaN) is refused: its range is unknown.
* Multi-page TIFFs are refused, naming the file and its page count (which page is the photo is unknowable);
  an animated GIF/PNG/WebP gives its first frame with a warning; an MPO (a camera JPEG with extra images)
  gives its primary image.
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
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_PIXELS_ENV = "IGGT_MAX_IMAGE_PIXELS"
FEW_BITS = 12          # 16-bit data without sBIT that never reach 2**12 look like 10/12-bit data: warned
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


@dataclass(frozen=True)
class Source:
    """What the file says about its samples, beyond Pillow's mode."""

    format: str | None = None
    bits: int | None = None                   # bits per sample stored (PNG IHDR, TIFF BitsPerSample)
    png_colour: int | None = None             # PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA)
    sbit: tuple[int, ...] | None = None       # PNG sBIT: significant bits per channel


def open_image(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "image",
               orient: bool = True):
    """Open and fully decode ``path`` with Pillow (the returned image is loaded; the file is closed), its EXIF
    orientation applied when ``orient``. Every failure is raised as ``error`` naming the file; Pillow's
    warnings are re-issued naming it. A multi-page TIFF is refused; an animation's first frame is used, with a
    warning."""
    return _open(Path(path), error, what, orient)[0]


def _open(path: Path, error: type[Exception], what: str, orient: bool):
    """(:func:`open_image`'s image, the file's :class:`Source`)."""
    from PIL import Image

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
    frames, source = 1, Source()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with Image.open(path) as im:
                size = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)   # before load: counting TIFF pages seeks
                source = _source(im, path)
                if frames > 1 and im.format != "TIFF" and im.format != "MPO":   # MPO: a camera JPEG's extras
                    warnings.warn(f"{what} {path}: an animation of {frames} frames ({im.format}); its first frame is "
                                  "used", ImageWarning)
                if frames == 1 or im.format != "TIFF":
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
    if frames > 1 and source.format == "TIFF":
        raise error(f"{what} {path} is a multi-page TIFF of {frames} pages; which page is the photo is not "
                    "known, so it is not read: save the page you mean as a file of its own")
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            pixels = size[0] * size[1] if size else None
            warnings.warn(f"{what} {path}: {size[0]}x{size[1]} = {pixels:,} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS "
                          f"({limit:,}; a possible decompression bomb); reading it anyway (refused above "
                          f"{2 * limit:,})", ImageWarning, stacklevel=4)
        elif issubclass(w.category, ImageWarning):          # ours, already naming the file
            warnings.warn(w.message, stacklevel=4)
        else:
            warnings.warn(f"{what} {path}: {w.message}", w.category if issubclass(w.category, Warning) else
                          ImageWarning, stacklevel=4)
    return im, source


def _source(im, path: Path) -> Source:
    """The stored bits per sample (and for PNG the colour type and sBIT), read before decoding."""
    if im.format == "PNG":
        return _png_source(path)
    bits = None
    tags = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tags is not None:
        stored = tags.get(258)                      # BitsPerSample, one per channel
        stored = stored if isinstance(stored, tuple) else (stored,)
        bits = max((int(b) for b in stored if isinstance(b, int)), default=None)
    return Source(im.format, bits)


def _png_source(path: Path) -> Source:
    """IHDR's bit depth and colour type and the sBIT chunk, from the chunks before the first IDAT (Pillow keeps
    no sBIT); a file this cannot follow gives an empty Source (Pillow's reading then decides)."""
    header, sbit = None, None
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return Source("PNG")
            for _ in range(10_000):                 # chunks before the pixels; a bound, not a real limit
                head = f.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    break
                if kind == b"IHDR" and length == 13:
                    header = struct.unpack(">IIBBBBB", f.read(13))
                elif kind == b"sBIT" and length <= 4:
                    sbit = tuple(f.read(length))
                else:
                    f.seek(length, os.SEEK_CUR)
                f.seek(4, os.SEEK_CUR)              # CRC (Pillow checked the file)
    except (OSError, struct.error):
        return Source("PNG")
    if header is None:
        return Source("PNG")
    return Source("PNG", int(header[2]), int(header[3]), sbit)


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
                 what: str = "image", source: Source | None = None) -> np.ndarray:
    """A decoded Pillow image -> RGB uint8 [H,W,3] (see the module docstring for what each mode becomes);
    ``source``: what the file says about its samples (:func:`read_image_rgb` passes it)."""
    mode, source = im.mode, source or Source()
    if mode == "RGB":
        return _check_high_bytes(np.asarray(im), source, path, what)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        if mode == "RGBA":
            _check_high_bytes(np.asarray(im)[..., :3], source, path, what)
        return _white_composite(im)
    if mode in ("L", "1"):
        return _grey(np.asarray(im.convert("L")))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if mode == "I" and source.bits == 32:
            return _grey(_from_int32(values, path, error, what))
        lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
        if lo < 0 or hi > 65535:
            raise error(f"{what} {path}: integer pixels ({mode}) range {lo}..{hi}; expected 16-bit values 0..65535 "
                        "(convert it to an 8- or 16-bit image)")
        top = _tops_16(values[..., None], None, path, what)[0]
        return _grey(_to_uint8(values, top))
    if mode == "F":
        return _grey(_from_float(np.asarray(im, dtype=np.float64), path, error, what))
    try:  # P without transparency, CMYK (Pillow undoes Adobe's inversion on decoding), YCbCr, HSV, ...
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as err:
        raise error(f"{what} {path}: cannot convert pixel mode {mode} to RGB ({err})") from err


def read_image_rgb(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "image") -> np.ndarray:
    """The file as RGB uint8 [H,W,3], EXIF orientation applied, samples scaled by their significant bits (module
    docstring); failures raised as ``error`` naming the file."""
    path = Path(path)
    im, source = _open(path, error, what, orient=True)
    if source.format == "PNG" and source.bits == 16:
        rgb = _png16_rgb(im, source, path, error, what)
        if rgb is not None:
            return rgb
    return to_rgb_uint8(im, path, error, what, source)


# ---------------------------------------------------------------------------------------------- by their bits
def _to_uint8(values: np.ndarray, top: int) -> np.ndarray:
    """Integer samples where ``top`` is white -> uint8 (x 255 / top, rounded; exact for top = 255)."""
    return np.round(values * 255.0 / top).astype(np.uint8)


def _few_bits(path, what: str, peak: int, how: str) -> None:
    warnings.warn(f"{what} {path}: its 16-bit samples reach only {peak} (below 2**{FEW_BITS}) and the file states "
                  f"no significant bits (PNG sBIT): {how}, so it reaches the model at {100 * peak / 65535:.2g} % of "
                  f"full brightness at most; if it holds 10- or 12-bit data, rescale it to 16 bits (or store it as a "
                  "16-bit PNG with an sBIT chunk)", ImageWarning, stacklevel=4)


def _check_high_bytes(rgb: np.ndarray, source: Source, path, what: str) -> np.ndarray:
    """Pillow reads 16-bit colour TIFFs by each sample's high byte: warn when they look like 10/12-bit data."""
    if source.bits == 16 and source.format != "PNG":
        peak = int(rgb.max(initial=0))
        if peak < 1 << (FEW_BITS - 8):
            _few_bits(path, what, peak * 256 + 255, "read as 16-bit data (each sample's high byte)")
    return rgb


def _tops_16(colour: np.ndarray, sbit: tuple[int, ...] | None, path, what: str, warn: bool = True) -> list[int]:
    """The sample value that means full intensity, per channel of 16-bit data [H,W,C] with significant bits
    ``sbit`` (one per channel) or None (module docstring: the rule)."""
    channels = colour.shape[-1]
    peaks = [int(colour[..., c].max(initial=0)) for c in range(channels)]
    if sbit is not None and all(b >= 16 for b in sbit):
        return [65535] * channels                       # stated full 16 bits: nothing to guess or warn about
    if sbit is not None:
        tops = [(1 << b) - 1 for b in sbit]
        if all(p <= t for p, t in zip(peaks, tops)):
            if any(np.any(colour[..., c] & ((1 << (16 - b)) - 1)) for c, b in enumerate(sbit)):
                return tops                             # b-bit values stored as they are
            if warn and max(peaks) > 0:
                warnings.warn(f"{what} {path}: sBIT states {'/'.join(map(str, sbit))} significant bits, and its "
                              f"samples (at most {max(peaks)}) fit them but have all their low bits zero: read "
                              "left-aligned, as the PNG specification says (a very dark image)", ImageWarning,
                              stacklevel=4)
        return [65535] * channels                       # left-aligned, as the PNG specification says
    if warn and max(peaks, default=0) < 1 << FEW_BITS:
        _few_bits(path, what, max(peaks, default=0), "read as full-range 16-bit data as the PNG specification says")
    return [65535] * channels


def _png16_rgb(im, source: Source, path: Path, error: type[Exception], what: str) -> np.ndarray | None:
    """A 16-bit PNG at its full 16 bits by :func:`_tops_16`'s rule, transparency on white; None when Pillow's
    reading is not the one this expects (then Pillow's 8-bit reading is used)."""
    samples = _png16_samples(im, source, path, error, what)
    if samples is None:
        return None
    alpha = source.png_colour in (4, 6)
    channels = samples.shape[-1]
    sbit = source.sbit
    if sbit is not None and (len(sbit) != channels or not all(1 <= b <= 16 for b in sbit)):
        warnings.warn(f"{what} {path}: its sBIT chunk {list(sbit)} is not {channels} values in 1..16; ignored",
                      ImageWarning, stacklevel=3)
        sbit = None
    colour = samples[..., :channels - 1] if alpha else samples
    tops = _tops_16(colour, sbit[:colour.shape[-1]] if sbit else None, path, what)
    if not alpha:
        out = np.stack([_to_uint8(colour[..., c], tops[c]) for c in range(colour.shape[-1])], -1)
    else:   # composited on white, as 8-bit transparency is
        a_top = _tops_16(samples[..., -1:], sbit[-1:] if sbit else None, path, what, warn=False)[0]
        a = np.minimum(samples[..., -1] / a_top, 1.0)
        out = np.stack([np.round((np.minimum(colour[..., c] / tops[c], 1.0) * a + (1 - a)) * 255).astype(np.uint8)
                        for c in range(colour.shape[-1])], -1)
    return _grey(out[..., 0]) if out.shape[-1] == 1 else out


def _png16_samples(im, source: Source, path: Path, error: type[Exception], what: str) -> np.ndarray | None:
    """[H,W,C] uint16 samples of a 16-bit PNG (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), oriented as ``im``.
    Pillow keeps only the high byte of 16-bit colour samples, so the file is decoded once more with a raw mode
    that keeps the low bytes (the same decoder, filters and interlacing)."""
    kind = {0: ("I;16", "I;16B", "I"), 2: ("RGB",), 4: ("RGBA",), 6: ("RGBA",)}.get(source.png_colour)
    if kind is None or im.mode not in kind:
        return None
    if source.png_colour == 0:
        return np.asarray(im).astype(np.uint16)[..., None]
    if source.png_colour == 4:      # 16-bit grey+alpha unpacked as 8-bit RGBA: L high, L low, A high, A low
        b = _redecode(path, "RGBA", im.size, error, what).astype(np.uint16)
        return np.stack([b[..., 0] << 8 | b[..., 1], b[..., 2] << 8 | b[..., 3]], -1)
    low = _redecode(path, "RGB;16L" if source.png_colour == 2 else "RGBA;16L", im.size, error, what)
    return np.asarray(im).astype(np.uint16) << 8 | low


def _redecode(path: Path, rawmode: str, size: tuple[int, int], error: type[Exception], what: str) -> np.ndarray:
    """The PNG's pixels unpacked with ``rawmode`` (":16L" on big-endian samples = their low bytes), oriented as
    :func:`open_image` orients it. Its warnings were given by the first decoding."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if len(im.tile) != 1 or im.format != "PNG":
                    raise ValueError(f"unexpected tiles {im.tile!r}")
                t = im.tile[0]
                im.tile = [t._replace(args=rawmode) if hasattr(t, "_replace") else (t[0], t[1], t[2], rawmode)]
                im.load()
                arr = np.asarray(_orient(im, path, what))
    except Exception as err:        # the first decoding of the same file succeeded: a changed file or a Pillow change
        raise error(f"cannot read {what} {path} at 16 bits: {type(err).__name__}: {err}") from err
    if arr.shape[1::-1] != tuple(size):
        raise error(f"cannot read {what} {path} at 16 bits: the file changed while it was read")
    return arr


def _from_int32(values: np.ndarray, path, error: type[Exception], what: str) -> np.ndarray:
    """32-bit integer samples (no stated range): 0..255 as 8-bit, 0..65535 as 16-bit, each warned; else refused."""
    lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
    if lo < 0 or hi > 65535:
        raise error(f"{what} {path}: 32-bit integer pixels range {lo}..{hi}; expected 8-bit values 0..255 or 16-bit "
                    "values 0..65535 (convert it to an 8- or 16-bit image)")
    bits, top = (8, 255) if hi <= 255 else (16, 65535)
    article = "an" if bits == 8 else "a"
    warnings.warn(f"{what} {path}: 32-bit integer pixels state no range; they span {lo}..{hi}, so they are read as "
                  f"{bits}-bit values (0..{top} = black..white); save it as {article} {bits}-bit image to be sure",
                  ImageWarning, stacklevel=4)
    return _to_uint8(values, top)


def _from_float(values: np.ndarray, path, error: type[Exception], what: str) -> np.ndarray:
    """Float samples: [0, 1] as intensity; whole numbers within 0..255 / 0..65535 as 8/16-bit values (warned)."""
    finite = np.isfinite(values)
    if not finite.all():
        raise error(f"{what} {path}: float image with {100 * (1 - finite.mean()):.2g} % NaN/inf pixels; expected "
                    "values in [0, 1]")
    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if lo >= 0 and hi <= 1:
        return np.round(values * 255.0).astype(np.uint8)
    if lo >= 0 and hi <= 65535 and np.array_equal(values, np.round(values)):
        bits, top = (8, 255) if hi <= 255 else (16, 65535)
        warnings.warn(f"{what} {path}: float pixels are whole numbers {lo:g}..{hi:g}, not [0, 1] intensities: read as "
                      f"{bits}-bit values (0..{top} = black..white)", ImageWarning, stacklevel=4)
        return _to_uint8(values, top)
    raise error(f"{what} {path}: float image ranges {lo:.4g}..{hi:.4g}; only [0, 1] is understood as intensity "
                "(or whole numbers within 0..255 or 0..65535; convert it to an 8- or 16-bit image)")
