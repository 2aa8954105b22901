"""One loaded view of a real dataset, before co-transforms: the common currency of every reader.

Readers turn their layout into :class:`Frame` s in *our* conventions (below); co-transforms
(:mod:`.transforms`) then crop and resize every field together, and :class:`.multiview.MultiViewScenes`
stacks the views into the batch contract of docs/batch-contract.md.

Conventions of a Frame:
- ``image`` uint8 RGB [H,W,3];
- ``depth`` float32 [H,W] in metres (camera-frame z), 0 = invalid, or None when the dataset has no depth;
- ``intrinsics`` float64 [3,3] in pixels of ``image`` with **pixel centres at integer coordinates**
  (pixel (row i, column j) is at u = j, v = i), the convention of ``iggt_lightning.geometry``. Datasets
  that follow OpenCV/COLMAP's continuous convention (pixel j spans [j, j+1), centre j + 0.5) are shifted by
  -0.5 on reading (:func:`from_continuous_pixels`);
- ``extrinsics`` float64 [3,4] world-to-camera [R|t], OpenCV axes (x right, y down, z forward);
- ``instance_ids`` int64 [H,W], ids shared by the views of a scene, 0 = no instance; or None.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Frame:
    image: np.ndarray
    intrinsics: np.ndarray
    extrinsics: np.ndarray
    depth: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    name: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return self.image.shape[0], self.image.shape[1]


def from_continuous_pixels(K: np.ndarray) -> np.ndarray:
    """Intrinsics with pixel centres at j + 0.5 (OpenCV/COLMAP) -> pixel centres at j (ours)."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def to_continuous_pixels(K: np.ndarray) -> np.ndarray:
    K = np.array(K, dtype=np.float64)
    K[0, 2] += 0.5
    K[1, 2] += 0.5
    return K


def pose_to_extrinsics(pose: np.ndarray, what: str, where: str | os.PathLike) -> np.ndarray:
    """A 4x4 (or 3x4) camera-to-world pose -> world-to-camera [R|t] 3x4, checking it is a rigid motion."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape not in ((4, 4), (3, 4)):
        raise DatasetError(f"{where}: {what} has shape {pose.shape}; expected a 4x4 or 3x4 matrix")
    if not np.isfinite(pose).all():
        raise DatasetError(f"{where}: {what} contains NaN or inf (an invalid/untracked frame)")
    check_last_row(pose, what, where)
    R, t = pose[:3, :3], pose[:3, 3]
    check_rotation(R, what, where)
    return np.concatenate([R.T, (-R.T @ t)[:, None]], 1)


def as_extrinsics(matrix: np.ndarray, what: str, where: str | os.PathLike) -> np.ndarray:
    """A 4x4 or 3x4 world-to-camera matrix -> 3x4, checking it is a rigid motion."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape not in ((4, 4), (3, 4)):
        raise DatasetError(f"{where}: {what} has shape {m.shape}; expected a 4x4 or 3x4 matrix")
    if not np.isfinite(m).all():
        raise DatasetError(f"{where}: {what} contains NaN or inf; expected finite numbers")
    check_last_row(m, what, where)
    check_rotation(m[:3, :3], what, where)
    return m[:3].copy()


def check_last_row(m: np.ndarray, what: str, where: str | os.PathLike) -> None:
    """A 4x4 rigid transform ends in [0, 0, 0, 1]; anything else would be dropped unread (only [R|t] is used)."""
    if m.shape == (4, 4) and not np.allclose(m[3], [0, 0, 0, 1], atol=1e-4):
        raise DatasetError(f"{where}: {what} has last row {np.array2string(m[3], precision=4)}; expected [0, 0, 0, 1] "
                           "(a 4x4 rigid transform)")


def check_rotation(R: np.ndarray, what: str, where: str | os.PathLike, tol: float = 1e-3) -> None:
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if err > tol or det < 0:
        raise DatasetError(f"{where}: the rotation of {what} is not a proper rotation (|R R^T - I| = {err:.2g}, "
                           f"det = {det:.3g}); expected an orthonormal R with det +1")


def check_intrinsics(K: np.ndarray, where: str | os.PathLike, what: str = "intrinsics") -> np.ndarray:
    """A pinhole matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] (a 4x4 one, as ScanNet writes, gives its top-left
    3x3); the zeros and the 1 are checked too, since nothing would read them."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (4, 4):       # ScanNet writes 4x4 intrinsics
        K = K[:3, :3]
    pinhole = K.shape == (3, 3) and bool(np.isfinite(K).all()) and K[0, 0] > 0 and K[1, 1] > 0 \
        and abs(K[1, 0]) < 1e-9 and np.allclose(K[2], [0, 0, 1], atol=1e-6)
    if not pinhole:
        raise DatasetError(f"{where}: {what} is {np.array2string(K, precision=3)}; expected a finite 3x3 matrix "
                           "[[fx, s, cx], [0, fy, cy], [0, 0, 1]] with positive focal lengths")
    return K


def describe_json(value) -> str:
    """What a value read from a JSON file is, for an error message: 'a string ('abc')', 'an object (dict)', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return "NaN" if value != value else ("Infinity" if math.isinf(value) else f"the number {value!r}")
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({text!r})"
    if isinstance(value, dict):
        return f"an object (dict) with {len(value)} key(s)"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def json_matrix(value, field: str, where: str | os.PathLike, shapes: tuple[tuple[int, int], ...],
                expected: str) -> np.ndarray:
    """A matrix read from a JSON file (a list of rows of finite numbers) -> float64 array; otherwise a
    :class:`DatasetError` naming ``where``, the ``field`` (down to the entry: ``extrinsic[1][2]``) and what was
    ``expected``. A string, an object, a number, a ragged or wrongly sized matrix, a non-number or a
    NaN/Infinity entry: each is named as such, never passed to numpy (which would raise or misread it)."""
    def refuse(path: str, what: str):
        raise DatasetError(f"{where}: {path} is {what}; expected {expected}")

    if not isinstance(value, list):
        refuse(field, describe_json(value))
    for r, row in enumerate(value):
        if not isinstance(row, list):
            refuse(f"{field}[{r}]", describe_json(row) + " instead of a row of numbers")
        for c, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                refuse(f"{field}[{r}][{c}]", describe_json(x))
    rows, cols = len(value), {len(row) for row in value}
    if len(cols) > 1:
        refuse(field, f"ragged (rows of {sorted(cols)} numbers)")
    shape = (rows, cols.pop() if cols else 0)
    if shape not in shapes:
        refuse(field, f"a {shape[0]}x{shape[1]} matrix")
    return np.array(value, dtype=np.float64)


def read_rgb(path: Path) -> np.ndarray:
    """RGB uint8 [H,W,3], decoded as :func:`iggt_lightning.inference.images.load_image` does (EXIF orientation
    applied, 16-bit / float / palette / CMYK converted, transparency on white); failures are a
    :class:`DatasetError` naming the file."""
    from ..imageio import read_image_rgb

    return read_image_rgb(path, DatasetError, "image")


def read_png_array(path: Path, what: str) -> np.ndarray:
    """A single-channel 8/16-bit PNG as an integer array (no EXIF rotation: maps are stored as the sensor wrote
    them)."""
    from ..imageio import open_image

    arr = np.asarray(open_image(path, DatasetError, what, orient=False))
    if arr.ndim != 2:
        raise DatasetError(f"{what} {path} has shape {arr.shape}; expected a single-channel image")
    _log_map(path, what, arr)
    return arr


def read_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing {what} {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err
    _log_map(path, what, arr)
    return arr


def read_npz(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"missing {what} {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError) as err:
        raise DatasetError(f"cannot read {what} {path}: {err}") from err
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(f"{what} {path} lacks key(s) {missing}; it has {sorted(data)}")
    return data


def depth_from_millimetres(raw: np.ndarray, scale: float, where: Path) -> np.ndarray:
    """uint16 depth PNG -> float32 metres (``raw / scale``), refusing depth that is not integer-coded."""
    if raw.dtype.kind not in "ui":
        raise DatasetError(f"depth {where} has dtype {raw.dtype}; expected an integer PNG (e.g. uint16 millimetres)")
    return raw.astype(np.float32) / float(scale)


def read_depth_png(path: Path, scale: float) -> np.ndarray:
    """An integer depth PNG (value = metres x ``scale``) -> float32 metres, checked by :func:`check_depth`."""
    return check_depth(depth_from_millimetres(read_png_array(path, "depth"), scale, path), path)


class DepthWarning(UserWarning):
    """A depth file has NaN/inf or negative pixels (read as invalid, 0); names the file and the fractions."""


@dataclass
class DepthStats:
    """What :func:`check_depth` found in one depth map: fractions of its pixels."""

    path: str
    pixels: int
    nonfinite: float        # NaN or +-inf
    negative: float         # finite and < 0
    valid: float            # finite and > 0 (zero is the usual "no measurement" code and is not counted as bad)

    @property
    def bad(self) -> float:
        return self.nonfinite + self.negative

    def describe(self) -> str:
        return (f"{pct(self.nonfinite)} NaN/inf and {pct(self.negative)} negative pixels, {pct(self.valid)} valid "
                f"(of {self.pixels:,})")


def pct(fraction: float) -> str:
    """0.00012 -> '0.012 %', 0.4567 -> '45.7 %', 1 -> '100 %'."""
    value = 100 * fraction
    return "0 %" if value == 0 else f"{value:.3g} %" if value >= 0.001 else "<0.001 %"


_depth_log: ContextVar[list | None] = ContextVar("iggt_depth_log", default=None)
_map_log: ContextVar[list | None] = ContextVar("iggt_map_log", default=None)


@contextmanager
def collect_map_reads() -> Iterator[list[tuple[Path, str, np.ndarray]]]:
    """Inside the block, :func:`read_npy` and :func:`read_png_array` append ``(path, what, array as stored)`` to
    the yielded list: ``iggt data check`` looks at id maps before a reader casts them (float ids truncated)."""
    log: list = []
    token = _map_log.set(log)
    try:
        yield log
    finally:
        _map_log.reset(token)


def _log_map(path: Path, what: str, arr: np.ndarray) -> None:
    log = _map_log.get()
    if log is not None:
        log.append((Path(path), what, arr))
_depth_warned: set[str] = set()


@contextmanager
def collect_depth_stats() -> Iterator[list[DepthStats]]:
    """Inside the block, :func:`check_depth` appends its :class:`DepthStats` to the yielded list instead of
    warning (``iggt data check`` reports them itself)."""
    log: list[DepthStats] = []
    token = _depth_log.set(log)
    try:
        yield log
    finally:
        _depth_log.reset(token)


def check_depth(depth: np.ndarray, where: Path, max_metres: float = 1000.0) -> np.ndarray:
    """Float depth in metres: NaN/inf/negative become 0 (invalid) with a :class:`DepthWarning` naming the file
    and the fractions (once per file and process); implausible units are an error."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise DatasetError(f"depth {where} has shape {depth.shape}; expected [H,W]")
    finite = np.isfinite(depth)
    negative = finite & (depth < 0)
    good = finite & (depth > 0)
    n = max(depth.size, 1)
    stats = DepthStats(str(where), depth.size, float(depth.size - np.count_nonzero(finite)) / n,
                       float(np.count_nonzero(negative)) / n, float(np.count_nonzero(good)) / n)
    log = _depth_log.get()
    if log is not None:
        log.append(stats)
    elif stats.bad > 0 and str(where) not in _depth_warned:
        _depth_warned.add(str(where))
        warnings.warn(f"depth {where}: {stats.describe()}; the NaN/inf and negative pixels are read as invalid "
                      "(0). `iggt data check` lists every such file", DepthWarning, stacklevel=2)
    depth = np.where(good, depth, 0).astype(np.float32)       # always a copy: callers may cache the input
    valid = depth[depth > 0]
    if valid.size and float(np.median(valid)) > max_metres:
        raise DatasetError(f"depth {where}: median {float(np.median(valid)):.4g} is implausible for metres "
                           f"(> {max_metres:g}); is it in millimetres? set the reader's depth_scale")
    return depth


def resize_nearest(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a [h,w] map to (H, W), sampling at pixel centres."""
    h, w = values.shape[:2]
    H, W = size
    if (h, w) == (H, W):
        return values
    rows = np.minimum(((np.arange(H) + 0.5) * (h / H)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * (w / W)).astype(np.int64), w - 1)
    return values[rows[:, None], cols[None, :]]
