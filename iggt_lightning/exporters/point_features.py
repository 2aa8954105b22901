"""``features/points.npy``: the instance feature of every point of ``points.ply`` (same order), unit length,
float16, so that a viewer or a script can cluster the instances again at another granularity without the model
(``iggt view``'s granularity slider, ``{"recluster": ...}`` in an edit file: docs/predict.md)."""
from __future__ import annotations

import numpy as np

from iggt_lightning.fileio import atomic_write
from iggt_lightning.inference.frame_stack import view_of

from .base import Exporter, FilePlan, register_exporter

FEATURES_FILE = "features/points.npy"


@register_exporter("point_features")
class PointFeatures(Exporter):
    consumes = ("part_feat", "cloud")

    @classmethod
    def files(cls, plan: FilePlan, options) -> list[str]:
        return [FEATURES_FILE]

    def write(self, scene, outputs: dict) -> dict:
        cloud, feats = scene.cloud, outputs["part_feat"][scene.index]       # [S,D,h,w]
        W, H = cloud.model_size
        D, h, w = feats.shape[-3:]
        out = np.zeros((len(cloud.index), D), np.float16)
        pixels = cloud.pixels
        for v in range(len(scene.views)):                # a view's feature map at a time
            mine = cloud.of_view(v)
            if mine.start == mine.stop:
                continue
            f = view_of(feats, v).float()
            f = f / f.norm(dim=0, keepdim=True).clamp_min(1e-12)
            y, x = pixels[mine] // W, pixels[mine] % W
            fy, fx = (y * h) // H, (x * w) // W          # the feature pixel covering the model-input pixel
            out[mine] = f[:, fy, fx].T.numpy().astype(np.float16)
        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, out, allow_pickle=False)

        atomic_write(scene.path(FEATURES_FILE), save)
        return {"point_features": {"file": FEATURES_FILE, "points": int(len(out)), "dims": int(D)}}
