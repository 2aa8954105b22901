"""Tiny datasets on disk in every registered layout, rendered from procedural scenes with known geometry.

Tests, docs and the loading benchmark use them: the ground truth is the rendered scene, so a reader that
loads the files back must reproduce the cameras, depth and ids that were written. Each writer stores the
geometry the way the real dataset does (camera-to-world poses where the layout has them, intrinsics with
pixel centres at j + 0.5, millimetre PNG depth, the layout's id encoding), which is exactly what catches
convention mistakes.

    write_fixture("scannetpp", "/tmp/spp", num_scenes=2, num_views=4, image_size=(112, 168))

The layouts and their writers are those of :mod:`.registry`: each record names its fixture writer (the
built-ins' are in :mod:`.fixture_writers`), ``writer(root, scene_name, arrays)``, which stores one rendered
scene as that layout does.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .registry import get_layout, reader_class
from .synthetic import SyntheticScenes

__all__ = ["reader_class", "write_fixture"]     # reader_class is the registry's, importable here as before


def _to_uint8(images) -> np.ndarray:
    return (np.asarray(images).transpose(0, 2, 3, 1) * 255 + 0.5).clip(0, 255).astype(np.uint8)


def write_fixture(layout: str, root: str | os.PathLike, num_scenes: int = 2, num_views: int = 4,
                  image_size: tuple[int, int] = (112, 168), seed: int = 0, num_objects: tuple[int, int] = (3, 5),
                  focal_range: tuple[float, float] | None = None, scene_prefix: str = "scene") -> list[dict]:
    """Write ``num_scenes`` rendered scenes in ``layout`` under ``root``; returns the ground-truth samples
    (the batch contract, ``intrinsics`` with integer pixel centres, at the written resolution; for
    ``scannet`` at the depth camera's resolution, the colour images being written at twice that size)."""
    record = get_layout(layout)             # an unknown layout: a DatasetError (a ValueError) naming the choices
    write_scene = record.fixture_writer()
    root = Path(root)
    if focal_range is None:                 # e.g. ScanNet has one K per scene: its views share the focal length
        focal_range = (1.0, 1.0) if record.shared_intrinsics else (0.8, 1.3)
    scenes = SyntheticScenes(num_scenes, num_views=num_views, image_size=image_size, num_objects=num_objects,
                             seed=seed, focal_range=focal_range)
    samples = []
    for i in range(num_scenes):
        s = scenes[i]
        name = f"{scene_prefix}{i:04d}"
        s["scene_id"] = name
        arrays = {"rgb": _to_uint8(s["images"]), "depth": s["depth"].numpy(), "E": s["extrinsics"].numpy(),
                  "K": s["intrinsics"].numpy(), "ids": s["instance_ids"].numpy(), "names": list(s["class_names"])}
        write_scene(root, name, arrays)
        samples.append(s)
    return samples
