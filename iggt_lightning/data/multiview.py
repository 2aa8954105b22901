"""The base of every real-dataset reader: scenes on disk -> samples of the batch contract (docs/batch-contract.md).

A reader subclasses :class:`MultiViewScenes` and implements two methods:

- ``scan() -> list[SceneRecord]``: find the scenes (sequences) and their frames, cheaply;
- ``read_frame(record, key) -> Frame``: load one view in our conventions (:mod:`.frames`).

The base class does the rest, the same way for every layout: the split (by a hash of the scene id, so it
never changes when scenes are added), view sampling (random, by pose overlap, or sequential, with a
frame stride), co-transforms (crop/resize with scale augmentation, shared colour jitter), and the
assembly of the sample (world points unprojected from depth with the loaded cameras, valid mask, instance
ids renumbered 1..K per sample with 0 kept as "none").

Randomness: evaluation splits are a pure function of (seed, index); the training split draws fresh views and
augmentations every epoch as a pure function of (seed, epoch, index). The epoch comes with the index (the
training loader's indices are :class:`~.resumable.SampleIndex` tagged with their epoch, in whichever DataLoader
worker reads them), else from ``set_epoch`` (default 0); so workers, reruns and resumed runs agree. The number
of views of a sample only depends on (seed, index), so batches can group samples by shape (``sample_shape``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames import DatasetError, Frame, resize_nearest
from .paths import in_dataset
from .resumable import epoch_of
from .transforms import ColorJitter, Compose, CropResize

VIEW_SAMPLING = ("random", "overlap", "sequential")


@dataclass
class SceneRecord:
    """One scene (sequence) of a dataset: its id, its frame keys in temporal order, reader-specific info."""

    name: str
    frames: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    poses: np.ndarray | None = None     # [N,3,4] world-to-camera per frame, when the layout gives them cheaply


def split_of(name: str, val_fraction: float, test_fraction: float) -> str:
    """'train' / 'val' / 'test' from the md5 of the scene id: stable, and independent of the other scenes."""
    u = int(hashlib.md5(name.encode()).hexdigest()[:8], 16) / 16 ** 8
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def overlap_ranking(poses: np.ndarray, anchor: int, rotation_weight: float = 1.0) -> np.ndarray:
    """Frames ordered by pose distance to ``anchor`` (itself first): camera-centre distance divided by the
    sequence's median step between consecutive centres, plus ``rotation_weight`` x the angle between the
    viewing directions in units of 5 degrees (about one step of a handheld scan). A cheap proxy for view
    overlap when no co-visibility is stored."""
    R, t = poses[:, :, :3], poses[:, :, 3]
    centres = -np.einsum("nji,nj->ni", R, t)            # C = -R^T t
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    unit = float(np.median(steps)) if steps.size and np.median(steps) > 0 else 1.0
    dist = np.linalg.norm(centres - centres[anchor], axis=1) / unit
    forward = R[:, 2, :]                                 # the camera's z axis in world coordinates
    angle = np.arccos(np.clip(forward @ forward[anchor], -1.0, 1.0))
    score = dist + rotation_weight * angle / np.radians(5.0)
    score[anchor] = -1.0
    return np.argsort(score, kind="stable")


class MultiViewScenes(Dataset):
    """Samples of S views from the scenes of a dataset folder; the shared machinery of every reader.

    Args:
        root: the dataset folder.
        split: 'train', 'val', 'test' (by :func:`split_of` with ``val_fraction``/``test_fraction``) or 'all'.
        num_views: views per sample, or a range [min, max] drawn per sample.
        image_size: (H, W) of every view after the co-transforms.
        resize_mode: 'crop' (keep the aspect ratio, crop the excess) or 'resize' (stretch).
        scale_augment: (1, s_max) random zoom-in for training; (1, 1) = off.
        color_jitter: probability of a colour jitter shared by the views (0 = off), or ColorJitter kwargs.
        view_sampling: 'random' (uniform), 'overlap' (an anchor and views near it by pose, within the
            ``overlap_top_k`` nearest frames) or 'sequential' (consecutive frames).
        frame_stride: use every n-th frame of a sequence.
        min_views: scenes with fewer usable frames are skipped (listed in ``skipped``).
        samples_per_scene: how many samples (each with its own views) a scene gives per epoch.
        max_depth: depth beyond this (metres) is marked invalid; ``depth_quantile`` drops the farthest
            depths above that per-view quantile (the official loaders clip at 0.99 / 0.98).
        pixel_center: where the dataset's intrinsics put pixel j's centre: 0.5 for OpenCV/COLMAP-style
            calibrations (the default), 0 for VGGT-style; converted to ours (0) on reading. A scene may
            state its own (``SceneRecord.info["pixel_center"]``, e.g. from a scene folder's cameras.json).
        deterministic: fixed views and augmentation per index (default: every split but 'train'); otherwise
            they are drawn from (seed, epoch, index).
        seed: base seed of the sampling.
        labels_file: the class names of a scene's instance ids, so samples carry ``class_names`` (open-vocabulary
            metrics, ``tracking``'s ``ignore_classes``): a path inside the scene folder (``{scene}`` is replaced
            by the scene id), or a list of such paths (the first that exists). Either a ScanNet aggregation JSON
            (``segGroups``, where instance id = ``objectId`` + 1, as in ScanNet's 2D exports) or a plain JSON
            object ``{"<id>": "<name>"}``. A scene without the file is an error naming the paths tried.
        scenes: only these scene ids, in this order: a list, or a text file with one id per line (e.g. ScanNet's
            ``scannetv2_val.txt``); an id that is not in the folder is an error. Applied before ``split``.
        label_map: a tab-separated table (e.g. ScanNet's ``scannetv2-labels.combined.tsv``) mapping the names
            of ``labels_file`` through ``label_map_columns`` (from, to); names not in it become "".
    """

    layout = "generic"

    def __init__(self, root: str | os.PathLike, split: str = "train", num_views: int | tuple[int, int] = 8,
                 image_size: tuple[int, int] = (336, 504), resize_mode: str = "crop",
                 scale_augment: tuple[float, float] = (1.0, 1.0), color_jitter: float | dict = 0.0,
                 view_sampling: str = "random", overlap_top_k: int = 32, frame_stride: int = 1, min_views: int = 2,
                 samples_per_scene: int = 1, val_fraction: float = 0.05, test_fraction: float = 0.05,
                 max_depth: float | None = None, depth_quantile: float | None = None, pixel_center: float = 0.5,
                 deterministic: bool | None = None, seed: int = 0, scenes: list[str] | str | None = None,
                 labels_file: str | list[str] | None = None,
                 label_map: str | None = None,
                 label_map_columns: tuple[str, str] = ("raw_category", "nyu40class")) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{type(self).__name__}: dataset root {self.root} does not exist or is not a folder")
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be 'train', 'val', 'test' or 'all'; got {split!r}")
        if view_sampling not in VIEW_SAMPLING:
            raise ValueError(f"view_sampling must be one of {VIEW_SAMPLING}; got {view_sampling!r}")
        lo, hi = (num_views, num_views) if isinstance(num_views, int) else tuple(int(v) for v in num_views)
        if not 1 <= lo <= hi:
            raise ValueError(f"num_views must be >= 1 or a range [min, max] with 1 <= min <= max; got {num_views}")
        if frame_stride < 1 or samples_per_scene < 1 or min_views < 1:
            raise ValueError("frame_stride, samples_per_scene and min_views must be >= 1; got "
                             f"{frame_stride}, {samples_per_scene}, {min_views}")
        if depth_quantile is not None and not 0 < depth_quantile <= 1:
            raise ValueError(f"depth_quantile must be in (0, 1]; got {depth_quantile}")
        self.split, self.num_views, self.image_size = split, (lo, hi), tuple(int(s) for s in image_size)
        self.view_sampling, self.overlap_top_k, self.frame_stride = view_sampling, overlap_top_k, frame_stride
        self.min_views, self.samples_per_scene, self.seed = min_views, samples_per_scene, seed
        self.max_depth, self.depth_quantile, self.pixel_center = max_depth, depth_quantile, float(pixel_center)
        self.deterministic = split != "train" if deterministic is None else deterministic
        jitter = color_jitter if isinstance(color_jitter, dict) else {"p": float(color_jitter)}
        steps: list = [CropResize(self.image_size, resize_mode, scale_augment, random_position=not self.deterministic)]
        if jitter.get("p", 0.5) > 0:
            steps.append(ColorJitter(**jitter))
        self.transform = Compose(steps)

        records = self.scan()
        if not records:
            raise DatasetError(f"{type(self).__name__}: no scene found under {self.root} (expected the "
                               f"{self.layout} layout; see the class docstring)")
        if scenes is not None:
            records = self._select_scenes(records, scenes)
        if split != "all":
            found = len(records)
            records = [r for r in records if split_of(r.name, val_fraction, test_fraction) == split]
            if not records:
                raise DatasetError(f"{type(self).__name__}: none of the {found} scene(s) under {self.root} falls in "
                                   f"split {split!r} (val_fraction={val_fraction}, test_fraction={test_fraction}, "
                                   "by a hash of the scene id); use split 'all' or other fractions")
        self.skipped: list[tuple[str, str]] = []
        self.scenes: list[SceneRecord] = []
        for r in records:
            n = len(r.frames[::frame_stride])
            if n < max(min_views, 1):
                self.skipped.append((r.name, f"{n} frame(s) after stride {frame_stride} < min_views {min_views}"))
            else:
                self.scenes.append(r)
        self._pose_cache: dict[str, np.ndarray] = {}
        self.epoch = 0
        self.labels_file = [labels_file] if isinstance(labels_file, str) else list(labels_file or [])
        self.label_map = read_label_map(Path(label_map), *label_map_columns) if label_map else None
        self._labels: dict[str, dict[int, str]] = {}
        # files the options name beside root: writers keep their outputs apart from them too (input_roots)
        self._option_inputs = [Path(p) for p in (scenes if isinstance(scenes, (str, os.PathLike)) else None,
                                                  label_map) if p]

    def input_roots(self) -> list[Path]:
        """The folders and files this dataset reads: ``root`` and any file an option names (a reader with
        inputs elsewhere, such as RE10K's ``mask_root``, adds them)."""
        return [self.root, *self._option_inputs]

    def _select_scenes(self, records: list[SceneRecord], scenes: list[str] | str) -> list[SceneRecord]:
        if isinstance(scenes, (str, os.PathLike)):
            path = Path(scenes)
            if not path.is_file():
                raise DatasetError(f"{type(self).__name__}: scenes file {path} does not exist (scenes: a list of ids "
                                   "or a text file with one id per line)")
            wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            wanted = [str(s) for s in scenes]
        by_name = {r.name: r for r in records}
        missing = [s for s in wanted if s not in by_name]
        if missing:
            raise DatasetError(f"{type(self).__name__}: {len(missing)} scene(s) of 'scenes' not under {self.root}: "
                               f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return [by_name[s] for s in dict.fromkeys(wanted)]

    # -- to implement -------------------------------------------------------------------------------------
    def scan(self) -> list[SceneRecord]:
        raise NotImplementedError

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        raise NotImplementedError

    def prepare(self, record: SceneRecord) -> None:
        """Hook run before a scene's views are chosen (e.g. drop frames with invalid poses, lazily)."""

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        """World-to-camera [3,4] of one frame (for overlap sampling); default: read the whole frame."""
        return self.read_frame(record, key).extrinsics

    def companions(self, record: SceneRecord) -> dict[str, int]:
        """Files per frame-wise folder of a scene ({glob pattern: count}), for ``iggt data check`` to compare
        with the number of frames; only folders that exist are listed."""
        return {}

    def scene_dir(self, record: SceneRecord) -> Path:
        return Path(record.info.get("dir", self.root / record.name))

    def instance_labels(self, record: SceneRecord) -> dict[int, str] | None:
        """{instance id as stored: class name} of a scene from ``labels_file`` (None without the option)."""
        if not self.labels_file:
            return None
        if record.name not in self._labels:
            tried = [in_dataset(self.root, f.format(scene=record.name), "labels_file",
                                f"{f!r} (scene {record.name})", base=self.scene_dir(record)) for f in self.labels_file]
            path = next((p for p in tried if p.is_file()), None)
            if path is None:
                raise DatasetError(f"{record.name}: no labels file; looked for {[str(p) for p in tried]} "
                                   "(labels_file)")
            labels = read_instance_labels(path)
            if self.label_map is not None:
                labels = {i: self.label_map.get(n, "") for i, n in labels.items()}
            self._labels[record.name] = labels
        return self._labels[record.name]

    @staticmethod
    def count_files(folder: Path, patterns: list[str]) -> dict[str, int]:
        return {p: sum(1 for _ in folder.glob(p)) for p in patterns if (folder / p).parent.is_dir()}

    # -- sampling ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.scenes) * self.samples_per_scene

    def _views_of(self, index: int) -> int:
        lo, hi = self.num_views
        record = self.scenes[index // self.samples_per_scene]
        n = lo if lo == hi else int(np.random.default_rng([self.seed, index, 7]).integers(lo, hi + 1))
        return min(n, len(record.frames[::self.frame_stride]))

    def sample_shape(self, index: int) -> tuple[int, int, int]:
        return (self._views_of(index), *self.image_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of indices that do not carry their own (plain ints): training draws differ per epoch."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.deterministic:
            return np.random.default_rng([self.seed, int(index)])
        return np.random.default_rng([self.seed, int(index), 0x7EA1, epoch_of(index, self.epoch)])

    def pose_source(self, record: SceneRecord) -> tuple[str, str] | None:
        """(the files this scene's poses are read from, their convention) where a reader's scenes differ from one
        another; None: what the layout registered (iggt_lightning/data/registry.py) holds for every scene."""
        return None

    def poses_of(self, record: SceneRecord) -> np.ndarray:
        if record.poses is not None:
            return record.poses
        if record.name not in self._pose_cache:
            self._pose_cache[record.name] = np.stack([self.read_pose(record, k) for k in record.frames])
        return self._pose_cache[record.name]

    def choose_views(self, record: SceneRecord, n: int, rng: np.random.Generator) -> list[str]:
        idx = np.arange(0, len(record.frames), self.frame_stride)
        if self.view_sampling == "sequential":
            start = int(rng.integers(0, len(idx) - n + 1))
            picks = idx[start:start + n]
        elif self.view_sampling == "overlap" and n > 1:
            poses = self.poses_of(record)[idx]
            anchor = int(rng.integers(0, len(idx)))
            near = overlap_ranking(poses, anchor)[1:max(n - 1, min(self.overlap_top_k, len(idx) - 1)) + 1]
            picks = idx[np.sort(np.concatenate([[anchor], rng.choice(near, n - 1, replace=False)]))]
        else:
            picks = idx[np.sort(rng.choice(len(idx), n, replace=False))]
        return [record.frames[i] for i in picks]

    # -- assembly ----------------------------------------------------------------------------------------
    def _conform(self, f: Frame, record: SceneRecord) -> Frame:
        """Intrinsics to integer pixel centres (a scene may state its own ``pixel_center``); depth and id maps
        at another resolution than the image are resampled, nearest, onto the image grid if the aspect ratio
        agrees (ScanNet's depth is 640x480 beside 1296x968 colour)."""
        H, W = f.size
        where = f"{record.name}/{f.name}"
        shift = record.info.get("pixel_center", self.pixel_center)
        if shift:
            f.intrinsics = f.intrinsics.copy()
            f.intrinsics[:2, 2] -= shift
        for name in ("depth", "instance_ids"):
            m = getattr(f, name)
            if m is None or m.shape[:2] == (H, W):
                continue
            h, w = m.shape[:2]
            if abs(w / h - W / H) > 0.01 * (W / H):
                raise DatasetError(f"{where}: {name} map is {w}x{h} but the image is {W}x{H} (another aspect ratio); "
                                   "the maps of a frame must cover the same field of view")
            setattr(f, name, resize_nearest(m, (H, W)))
        return f

    def _clip_depth(self, depth: np.ndarray) -> np.ndarray:
        if self.max_depth is not None:
            depth = np.where(depth <= self.max_depth, depth, 0)
        if self.depth_quantile is not None and self.depth_quantile < 1 and (depth > 0).any():
            depth = np.where(depth <= np.quantile(depth[depth > 0], self.depth_quantile), depth, 0)
        return depth.astype(np.float32)

    def load_views(self, record: SceneRecord, keys: list[str], rng: np.random.Generator) -> list[Frame]:
        frames = [self._conform(self.read_frame(record, k), record) for k in keys]
        return self.transform(frames, rng)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        record = self.scenes[index // self.samples_per_scene]
        rng = self._rng(index)
        self.prepare(record)
        n = self._views_of(index)
        if len(record.frames[::self.frame_stride]) < n:
            raise DatasetError(f"{record.name}: only {len(record.frames[::self.frame_stride])} usable frame(s) left "
                               f"(after dropping invalid ones), {n} view(s) needed")
        keys = self.choose_views(record, n, rng)
        return assemble(self.load_views(record, keys, rng), record.name, self._clip_depth, self.instance_labels(record))


def read_instance_labels(path: Path) -> dict[int, str]:
    """{instance id: class name} from a ScanNet aggregation JSON (``segGroups``; id = objectId + 1) or from a
    plain ``{"<id>": "<name>"}`` JSON object."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read labels file {path}: {err}") from err
    if isinstance(data, dict) and "segGroups" in data:
        groups = data["segGroups"]
        if not isinstance(groups, list) or not all(isinstance(g, dict) and "objectId" in g and "label" in g
                                                   for g in groups):
            raise DatasetError(f"labels file {path}: segGroups must be a list of {{objectId, label, ...}} objects")
        return {int(g["objectId"]) + 1: str(g["label"]) for g in groups}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DatasetError(f"labels file {path}: expected ScanNet's aggregation JSON (segGroups) or an object "
                           '{"<instance id>": "<class name>"}')
    try:
        return {int(k): v for k, v in data.items()}
    except ValueError as err:
        raise DatasetError(f"labels file {path}: keys must be integer instance ids: {err}") from err


def read_label_map(path: Path, source: str, target: str) -> dict[str, str]:
    """A tab-separated table with a header row -> {row[source]: row[target]} (rows with an empty target left out)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as err:
        raise DatasetError(f"cannot read label_map {path}: {err}") from err
    if not rows or source not in rows[0] or target not in rows[0]:
        raise DatasetError(f"label_map {path} needs the columns {source!r} and {target!r} in its header; has "
                           f"{list(rows[0]) if rows else 'no rows'} (label_map_columns)")
    return {r[source]: r[target] for r in rows if r[target]}


def assemble(frames: list[Frame], scene_id: str, clip_depth=None, labels: dict[int, str] | None = None) -> dict:
    """Stack transformed frames into one sample of the batch contract; with ``labels`` ({stored id: name}) also
    ``class_names`` of the renumbered ids."""
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise DatasetError(f"{scene_id}: views differ in size after the transforms: {sorted(sizes)}")
    H, W = frames[0].size
    images = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float() / 255.0
    depth = np.stack([f.depth if f.depth is not None else np.zeros((H, W), np.float32) for f in frames])
    if clip_depth is not None:
        depth = np.stack([clip_depth(d) for d in depth])
    depth_t = torch.from_numpy(depth.astype(np.float32))
    E = torch.from_numpy(np.stack([f.extrinsics for f in frames]))          # float64 for the unprojection
    K = torch.from_numpy(np.stack([f.intrinsics for f in frames]))
    valid = depth_t > 0
    points = _unproject(depth_t, E, K) * valid[..., None]
    if all(f.instance_ids is None for f in frames):
        ids = torch.zeros((len(frames), H, W), dtype=torch.int64)
    else:
        raw = np.stack([f.instance_ids if f.instance_ids is not None else np.zeros((H, W), np.int64)
                        for f in frames]).astype(np.int64)
        ids = torch.from_numpy(renumber(raw))
    extra = {}
    if labels is not None:
        present = np.unique(raw) if any(f.instance_ids is not None for f in frames) else np.zeros(0, np.int64)
        extra["class_names"] = [labels.get(int(r), "") for r in present if r != 0]   # renumber's order
    return {"images": images, "depth": depth_t, "extrinsics": E.float(), "intrinsics": K.float(),
            "world_points": points, "valid_mask": valid, "instance_ids": ids, "scene_id": scene_id,
            "frame_ids": [f.name for f in frames], **extra}


def _unproject(depth: torch.Tensor, E: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """[S,H,W] depth, [S,3,4] world-to-camera, [S,3,3] K (integer pixel centres) -> [S,H,W,3] world points;
    float64 inside, one batched matmul (what ``geometry.unproject_depth`` computes, ~10x faster here)."""
    S, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    d = depth.double()
    K = K.double()
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * d
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * d
    cam = torch.stack([x, y, d], -1).reshape(S, H * W, 3) - E[:, None, :, 3]
    return torch.bmm(cam, E[:, :, :3]).reshape(S, H, W, 3).float()          # R^T (X - t), as row vectors


def renumber(raw: np.ndarray) -> np.ndarray:
    """Instance ids -> 1..K in increasing order of the original ids, 0 kept as "none" (a negative id counts
    as an instance too). A lookup table when ids are small non-negative integers (the usual case), else
    ``np.unique``."""
    lo, hi = int(raw.min()), int(raw.max())
    if lo >= 0 and hi < (1 << 22):
        present = np.bincount(raw.ravel(), minlength=hi + 1) > 0
        present[0] = False
        lut = np.cumsum(present).astype(np.int64)
        lut[0] = 0
        return lut[raw]
    uniq, inverse = np.unique(raw, return_inverse=True)
    nonzero = uniq != 0
    lut = np.where(nonzero, np.cumsum(nonzero), 0).astype(np.int64)
    return lut[inverse.reshape(raw.shape)]
