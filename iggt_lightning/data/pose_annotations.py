"""Camera-pose benchmarks as VGGT's evaluation prepares them: one gzip-JSON annotation file lists the frames
of every sequence with its camera; images lie under ``root``. No depth and no instances (pose metrics only).

* :class:`CO3DScenes` (CO3Dv2): ``<annotations>/<category>_<split>.jgz`` = ``{sequence: [{filepath, R, T,
  focal_length, principal_point}, ...]}`` with ``filepath`` relative to ``root``. ``R``, ``T`` are PyTorch3D's
  (row-vector convention, +X left, +Y up), turned into OpenCV world-to-camera as
  ``R_cv = (R F)^T``, ``t_cv = F T`` with ``F = diag(-1, -1, 1)``; ``focal_length`` / ``principal_point`` are
  NDC (isotropic), turned into pixels with s = min(W, H) / 2: ``f_px = f s``, ``c_px = -p s + (W, H) / 2``
  (continuous pixel centres). Scene id = ``<category>/<sequence>``, so metrics can aggregate per category.
  As VGGT's ``test_co3d.py`` does, a sequence with a frame whose T components sum to more than 1e5 is left
  out (listed in ``skipped``), and ``min_views`` (VGGT: 50) drops short sequences.
* :class:`PoseListScenes` (RealEstate10K as VGGT's ``prepare_re10k.py`` writes it): ``<annotations>`` is one
  ``.jgz`` = ``{sequence: [[{filepath, extri (3x4 OpenCV world-to-camera), intri (3x3 pixels)}, ...]]}``.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, as_extrinsics, check_intrinsics, read_rgb
from .multiview import MultiViewScenes, SceneRecord
from .paths import in_dataset

_FLIP = np.diag([-1.0, -1.0, 1.0])


def read_jgz(path: Path, what: str) -> dict:
    try:
        with gzip.open(path, "rt") as f:
            data = json.load(f)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"cannot read {what} {path} (gzip-compressed JSON expected): {err}") from err
    if not isinstance(data, dict):
        raise DatasetError(f"{what} {path}: expected an object {{sequence: frames}}; got {type(data).__name__}")
    return data


def pytorch3d_to_opencv(R: np.ndarray, T: np.ndarray) -> np.ndarray:
    """PyTorch3D camera (R applied to row vectors, +X left / +Y up) -> OpenCV world-to-camera [R|t] 3x4."""
    return np.concatenate([(R @ _FLIP).T, (_FLIP @ T)[:, None]], 1)


def ndc_to_pixels(focal: np.ndarray, principal: np.ndarray, width: int, height: int) -> np.ndarray:
    """CO3Dv2's isotropic NDC focal length / principal point -> K in pixels (continuous pixel centres)."""
    s = min(width, height) / 2.0
    K = np.eye(3)
    K[0, 0], K[1, 1] = focal[0] * s, focal[1] * s
    K[0, 2], K[1, 2] = -principal[0] * s + width / 2.0, -principal[1] * s + height / 2.0
    return K


class _AnnotatedScenes(MultiViewScenes):
    """Scenes whose frames and cameras all come from annotation files (read once, in ``scan``)."""

    def frame_entry(self, record: SceneRecord, key: str) -> dict:
        return record.info["entries"][key]

    def _camera(self, record: SceneRecord, key: str, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        return self._camera(record, key, None)[0]

    def input_roots(self) -> list[Path]:
        return [*super().input_roots(), self.annotations]

    def _record(self, name: str, keys: list[str], entries: list[dict], path: Path, seq: str) -> SceneRecord:
        """A sequence whose frames' ``filepath`` s are checked to stay inside ``root``."""
        files = {k: in_dataset(self.root, k, path, f"sequence {seq!r}, frames[{i}].filepath")
                 for i, k in enumerate(keys)}
        return SceneRecord(name, keys, {"entries": dict(zip(keys, entries)), "files": files, "dir": self.root})

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        image = read_rgb(record.info["files"][key])
        E, K = self._camera(record, key, image.shape[:2])
        return Frame(image=image, intrinsics=K, extrinsics=E, name=key)

    @staticmethod
    def _entry(frame, where: str, keys: tuple[str, ...]) -> dict:
        if not isinstance(frame, dict) or any(k not in frame for k in keys):
            raise DatasetError(f"{where}: every frame must be an object with {list(keys)}; got {str(frame)[:120]}")
        return frame


class CO3DScenes(_AnnotatedScenes):
    """CO3Dv2 with VGGT's annotation files (see the module docstring).

    Args:
        annotations: the folder of ``<category>_<annotation_split>.jgz`` files (default ``<root>/annotations``).
        annotation_split: which files (``test`` for VGGT's evaluation, ``train``).
        categories: the categories to read (default: every file of the split, sorted).
    The base class's ``split`` picks by scene hash; the benchmark's split is ``annotation_split``, so use
    ``split: all`` for it.
    """

    layout = "CO3D (<annotations>/<category>_<split>.jgz from VGGT's preprocess_co3d.py; images under root)"

    def __init__(self, root, annotations: str | None = None, annotation_split: str = "test",
                 categories: list[str] | None = None, **kwargs) -> None:
        self.annotations = Path(annotations) if annotations else Path(root) / "annotations"
        self.annotation_split = annotation_split
        self.categories = list(categories) if categories else None
        self.skipped_large_t: list[str] = []
        super().__init__(root, **kwargs)
        self.skipped.extend((name, "a frame's T sums to more than 1e5 (VGGT leaves it out)")
                            for name in self.skipped_large_t)

    def scan(self) -> list[SceneRecord]:
        if not self.annotations.is_dir():
            raise DatasetError(f"CO3DScenes: annotations folder {self.annotations} does not exist")
        suffix = f"_{self.annotation_split}.jgz"
        files = {p.name[:-len(suffix)]: p for p in sorted(self.annotations.glob(f"*{suffix}"))}
        wanted = self.categories or sorted(files)
        missing = [c for c in wanted if c not in files]
        if missing:
            raise DatasetError(f"CO3DScenes: no annotation file for categories {missing} in {self.annotations} "
                               f"(expected <category>{suffix})")
        records = []
        for category in wanted:
            path = files[category]
            for seq, frames in sorted(read_jgz(path, "CO3D annotations").items()):
                where = f"{path} (sequence {seq})"
                if not isinstance(frames, list):
                    raise DatasetError(f"{where}: expected a list of frames")
                entries = [self._entry(f, where, ("filepath", "R", "T", "focal_length", "principal_point"))
                           for f in frames]
                if any(float(np.sum(e["T"])) > 1e5 for e in entries):
                    self.skipped_large_t.append(f"{category}/{seq}")
                    continue
                keys = [str(e["filepath"]) for e in entries]
                records.append(self._record(f"{category}/{seq}", keys, entries, path, seq))
        return records

    def _camera(self, record, key, size):
        e = self.frame_entry(record, key)
        where = f"{record.name}/{key}"
        R, T = np.asarray(e["R"], np.float64), np.asarray(e["T"], np.float64)
        if R.shape != (3, 3) or T.shape != (3,):
            raise DatasetError(f"{where}: R must be 3x3 and T 3 numbers; got {R.shape} and {T.shape}")
        E = as_extrinsics(pytorch3d_to_opencv(R, T), "camera (R, T)", where)
        if size is None:
            return E, np.eye(3)
        H, W = size
        K = ndc_to_pixels(np.asarray(e["focal_length"], np.float64), np.asarray(e["principal_point"], np.float64), W, H)
        return E, check_intrinsics(K, where)


class PoseListScenes(_AnnotatedScenes):
    """Sequences listed in one annotation file with OpenCV cameras (VGGT's prepared RealEstate10K test set;
    see the module docstring). ``annotations``: the ``.jgz`` file (default ``<root>/annotations.jgz``);
    ``split: all`` uses every sequence in it."""

    layout = "pose list (<annotations>.jgz: {sequence: [[{filepath, extri, intri}, ...]]}; images under root)"

    def __init__(self, root, annotations: str | None = None, **kwargs) -> None:
        self.annotations = Path(annotations) if annotations else Path(root) / "annotations.jgz"
        super().__init__(root, **kwargs)

    def scan(self) -> list[SceneRecord]:
        if not self.annotations.is_file():
            raise DatasetError(f"PoseListScenes: annotation file {self.annotations} does not exist")
        records = []
        for seq, value in sorted(read_jgz(self.annotations, "pose annotations").items()):
            where = f"{self.annotations} (sequence {seq})"
            frames = value[0] if isinstance(value, list) and value and isinstance(value[0], list) else value
            if not isinstance(frames, list):
                raise DatasetError(f"{where}: expected [[frame, ...]] or [frame, ...]")
            entries = [self._entry(f, where, ("filepath", "extri", "intri")) for f in frames]
            keys = [str(e["filepath"]) for e in entries]
            records.append(self._record(seq, keys, entries, self.annotations, seq))
        return records

    def _camera(self, record, key, size):
        e = self.frame_entry(record, key)
        where = f"{record.name}/{key}"
        E = as_extrinsics(np.asarray(e["extri"], np.float64), "extri (world-to-camera)", where)
        return E, check_intrinsics(np.asarray(e["intri"], np.float64), where)
