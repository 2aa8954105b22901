"""RealEstate10K with SAM2 masklets (InsScene-15K's video part), one sequence = one clip::

    <root>/<seq>/rgb/<frame>.png                   RGB (any PIL format; frames in natural-sort order)
    <root>/<seq>/cam/<frame>.npz                   pose (4x4 camera-to-world, OpenCV axes), intrinsics (3x3)
    <mask_root>/<seq>/auto_masks.json              {"masklet": [[rle, rle, ...] per frame], "frame_names": [...]?}

Poses are camera-to-world (as the CUT3R-processed release stores them) and are inverted into our
world-to-camera extrinsics. ``masklet[f][k]`` is the COCO RLE (``{"size": [h, w], "counts": ...}``) of
object k in frame f; object k gets instance id k + 1 in every frame, which is what makes the ids agree
across views. Frames are matched to masklet rows by ``frame_names`` (stems) when present, else by position
(the counts must agree). Where two masks overlap, the lower object index keeps the pixel. An empty or
``null`` RLE means "object absent from this frame".

RE10K has no depth: samples come with depth 0 and an all-False valid mask, so depth and point losses get no
pixels and :func:`~iggt_lightning.data.normalize.normalize_scene` scales such scenes by their camera
baseline instead (camera and instance losses still train).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .frames import DatasetError, Frame, check_intrinsics, pose_to_extrinsics, read_npz, read_rgb
from .multiview import MultiViewScenes, SceneRecord

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def natural_key(text: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def decode_rle(rle: dict | None, size: tuple[int, int], where: str) -> np.ndarray:
    """One COCO RLE (compressed string/bytes counts, or uncompressed list counts) -> bool [H,W]."""
    from pycocotools import mask as mask_utils

    H, W = size
    if not rle:
        return np.zeros((H, W), dtype=bool)
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise DatasetError(f"{where}: a masklet entry must be a COCO RLE {{'size': [h, w], 'counts': ...}}; "
                           f"got {str(rle)[:80]}")
    h, w = (int(s) for s in rle["size"])
    if (h, w) != (H, W):
        raise DatasetError(f"{where}: mask is {w}x{h} but the image is {W}x{H}; masks must match their frame")
    counts = rle["counts"]
    try:
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        else:
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
        return mask_utils.decode(rle).astype(bool)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: cannot decode the RLE: {err}") from err


class RE10KScenes(MultiViewScenes):
    """RE10K clips with SAM2 masklets (see the module docstring); every ``MultiViewScenes`` option applies.

    Args:
        mask_root: the folder holding ``<seq>/<masks_file>`` (default: ``root`` itself).
        masks_file: the masklet file's name inside each sequence folder.
        require_masks: skip (False) or refuse (True) sequences without a masklet file.
    """

    layout = "RE10K (<seq>/rgb/*.png, <seq>/cam/*.npz with pose (c2w) + intrinsics, <seq>/auto_masks.json)"

    def __init__(self, root, mask_root: str | None = None, masks_file: str = "auto_masks.json",
                 require_masks: bool = False, **kwargs) -> None:
        self.mask_root = Path(mask_root) if mask_root else Path(root)
        self.masks_file, self.require_masks = masks_file, require_masks
        self._masklet: tuple[str, tuple[list, dict[str, int]]] | None = None   # the last sequence's, parsed
        super().__init__(root, **kwargs)

    def input_roots(self) -> list[Path]:
        return [*super().input_roots(), self.mask_root]

    def scan(self) -> list[SceneRecord]:
        records = []
        for rgb in sorted(p for p in self.root.glob("*/rgb") if p.is_dir()):
            seq = rgb.parent
            keys = sorted((p.name for p in rgb.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
            masks = self.mask_root / seq.name / self.masks_file
            if not masks.is_file():
                if self.require_masks:
                    raise DatasetError(f"missing masklet file {masks} for sequence {seq}")
                masks = None
            records.append(SceneRecord(seq.name, keys, {"dir": seq, "masks": masks}))
        return records

    def _cam(self, record: SceneRecord, key: str) -> tuple[np.ndarray, np.ndarray]:
        path = record.info["dir"] / "cam" / f"{Path(key).stem}.npz"
        cam = read_npz(path, "RE10K camera", ("pose", "intrinsics"))
        return pose_to_extrinsics(cam["pose"], "pose (camera-to-world)", path), check_intrinsics(cam["intrinsics"], path)

    def companions(self, record: SceneRecord) -> dict[str, int]:
        return self.count_files(record.info["dir"], ["cam/*.npz"])

    def read_pose(self, record: SceneRecord, key: str) -> np.ndarray:
        return self._cam(record, key)[0]

    def masklet(self, record: SceneRecord) -> tuple[list, dict[str, int]] | None:
        """The parsed masklet of a sequence: per-frame RLE lists and frame stem -> row. Only the last
        sequence's is kept (the views of a sample share it; thousands of sequences would not fit)."""
        path = record.info["masks"]
        if path is None:
            return None
        if self._masklet is None or self._masklet[0] != record.name:
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as err:
                raise DatasetError(f"cannot read masklet file {path}: {err}") from err
            rows = data.get("masklet") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise DatasetError(f"masklet file {path} has no 'masklet' list (per frame, a list of COCO RLEs)")
            names = data.get("frame_names")
            if names is not None:
                if len(names) != len(rows):
                    raise DatasetError(f"masklet file {path}: {len(names)} frame_names for {len(rows)} masklet rows")
                index = {Path(str(n)).stem: i for i, n in enumerate(names)}
            else:
                if len(rows) != len(record.frames):
                    raise DatasetError(f"masklet file {path} has {len(rows)} rows but {record.info['dir'] / 'rgb'} "
                                       f"has {len(record.frames)} frames; add 'frame_names' or match the counts")
                index = {Path(k).stem: i for i, k in enumerate(record.frames)}
            self._masklet = (record.name, (rows, index))
        return self._masklet[1]

    def read_frame(self, record: SceneRecord, key: str) -> Frame:
        image = read_rgb(record.info["dir"] / "rgb" / key)
        E, K = self._cam(record, key)
        ids = None
        parsed = self.masklet(record)
        if parsed is not None:
            rows, index = parsed
            where = f"{record.info['masks']} (frame {key})"
            row = index.get(Path(key).stem)
            if row is None:
                raise DatasetError(f"{where}: the frame is not in the masklet file's frame_names")
            H, W = image.shape[:2]
            ids = np.zeros((H, W), np.int64)
            for k in reversed(range(len(rows[row] or []))):  # reversed: the lower index is painted last, wins
                ids[decode_rle(rows[row][k], (H, W), f"{where}, object {k}")] = k + 1
        return Frame(image=image, intrinsics=K, extrinsics=E, depth=None, instance_ids=ids, name=key)
