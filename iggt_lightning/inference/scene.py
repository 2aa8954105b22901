"""What plugins and exporters see when a prediction is written: one scene of a batch, its views, and the slots
through which plugins describe what they produced (docs/writing-an-exporter.md).

A plugin's ``describe`` hook fills slots (cameras, sources of 3D points, colour layers, vertex attributes,
``shared``); the writer (:mod:`.writer`) then chooses the cloud (:class:`Cloud`) and the exporters
(:mod:`iggt_lightning.exporters`) write the files from the slots and the outputs through :meth:`SceneExport.path`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .export import colmap_names
from .images import ViewTransform


class SceneError(ValueError):
    """A prediction that cannot be written as asked (the message names the option or what is missing)."""


@dataclass
class View:
    """One view of the scene: ``name`` (unique, e.g. the photo's file name), ``stem`` (for per-view files),
    ``image_name`` (the file under ``images/`` and COLMAP's name), ``transform`` (model-input pixels -> photo
    pixels), ``photo`` (uint8 [H,W,3] at photo resolution, or None when the views are the model input)."""

    name: str
    stem: str
    image_name: str
    transform: ViewTransform
    photo: np.ndarray | None = None

    @property
    def photo_size(self) -> tuple[int, int]:
        return tuple(self.transform.photo_size)


def unique_view_names(paths: list[Path]) -> list[str]:
    """The views' names from their files: the file names, numbered when two folders hold the same stem."""
    names = [p.name for p in paths]
    if len(set(Path(n).stem for n in names)) != len(names):
        names = [f"{i:03d}_{n}" for i, n in enumerate(names)]
    return names


def saved_view_names(names: list[str], save_images: bool) -> list[str]:
    """Per view, the name COLMAP's images.txt holds; with ``save_images`` also the file under images/ (a PNG)."""
    return colmap_names([Path(n).stem + ".png" for n in names] if save_images else names)


@dataclass
class SceneCameras:
    """Per view, OpenCV ``extrinsics`` [S,3,4] (world to view), ``intrinsics`` [S,3,3] in photo pixels with pixel
    i's centre at i + 0.5 (COLMAP's convention), ``model_intrinsics`` [S,3,3] at the model input with centres at
    integer coordinates (for unprojecting model-resolution maps), ``valid`` [S] (finite, positive focal)."""

    extrinsics: np.ndarray
    intrinsics: np.ndarray
    model_intrinsics: np.ndarray
    valid: list[bool]


@dataclass
class PointSource:
    """3D points for every model-input pixel, [S,H,W,3] (or a callable returning them, evaluated once every
    plugin has described the scene; None = not available), and their confidence [S,H,W]."""

    points: torch.Tensor | Callable[[], torch.Tensor | None]
    confidence: torch.Tensor
    priority: int = 0
    from_cameras: bool = False   # made with the cameras: a view whose cameras are not valid has no usable points


@dataclass
class Cloud:
    """The points the scene files show: the source ``name``, ``points`` [S,H,W,3] and ``confidence`` [S,H,W] per
    model-input pixel, and ``keep`` (bool, flat over S*H*W) the pixels the confidence filter keeps."""

    name: str
    points: torch.Tensor
    confidence: torch.Tensor
    keep: np.ndarray

    def xyz(self) -> np.ndarray:
        return self.points.reshape(-1, 3).numpy()[self.keep]

    def rgb(self, images: torch.Tensor) -> np.ndarray:
        """The kept points' colours from the model input ``images`` [S,3,H,W]."""
        return images.permute(0, 2, 3, 1).reshape(-1, 3).numpy()[self.keep]


@dataclass
class SceneExport:
    """One scene being written. ``index``: the scene's position in the batch (``outputs[key][scene.index]``).
    ``images``: the model input [S,3,H,W] (CPU, float in [0,1]); ``options``: the export options, checked
    against their declarations and complete (:mod:`.options`; ``scene.option(name)``)."""

    folder: Path
    index: int
    views: list[View]
    images: torch.Tensor
    options: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    cameras: SceneCameras | None = None
    invalid: dict[int, list[str]] = field(default_factory=dict)
    point_sources: dict[str, PointSource] = field(default_factory=dict)
    colour_layers: dict[str, torch.Tensor] = field(default_factory=dict)
    point_attributes: dict[str, torch.Tensor] = field(default_factory=dict)
    cloud: Cloud | None = None   # chosen by the writer once every plugin has described the scene
    current: str | None = None   # the file being written (named in errors)

    @property
    def model_size(self) -> tuple[int, int]:
        """(W, H) of the model input."""
        return int(self.images.shape[-1]), int(self.images.shape[-2])

    def camera_views(self) -> list[int]:
        """The views whose cameras are usable (all of them when the scene has no cameras)."""
        return [v for v in range(len(self.views)) if self.cameras is None or self.cameras.valid[v]]

    def option(self, name: str, default: Any = None) -> Any:
        """A declared option's value (its declared default when not given); ``default`` for an undeclared name."""
        return self.options.get(name, default)

    def path(self, rel: str) -> Path:
        """The path to write ``rel`` (relative, forward slashes) to; lists it in ``manifest.json``."""
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise SceneError(f"an exported file must be a relative path inside the output folder; got {rel!r}")
        if rel in self.files:
            raise SceneError(f"two plugins or exporters write {rel!r}; each output file must come from one")
        self.current = rel
        self.files.append(rel)
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def report_invalid(self, view: int, what: str) -> None:
        """Record that view ``view``'s ``what`` (e.g. ``confidence``) is not finite: listed in ``invalid_views``."""
        problems = self.invalid.setdefault(view, [])
        if what not in problems:
            problems.append(what)

    def report_non_finite(self, values: torch.Tensor, what: str) -> None:
        """:meth:`report_invalid` for every view whose slice of ``values`` [S,...] has a non-finite entry."""
        bad = ~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)
        for v in torch.nonzero(bad).flatten().tolist():
            self.report_invalid(v, what)

    def add_points(self, name: str, points, confidence: torch.Tensor, priority: int = 0,
                   from_cameras: bool = False) -> None:
        """Offer a source of 3D points (``--points-from name`` picks one; otherwise the highest priority)."""
        if name in self.point_sources:
            raise SceneError(f"two plugins offer a source of points named {name!r}")
        self.point_sources[name] = PointSource(points, confidence.detach().float().cpu(), priority, from_cameras)

    def add_colour_layer(self, file: str, colours: torch.Tensor) -> None:
        """Another coloured copy of the cloud of points, written as ``file`` (a .glb): colours [S,H,W,3] in [0,1]
        (or uint8) per model-input pixel."""
        if file in self.colour_layers:
            raise SceneError(f"two plugins add the colour layer {file!r}")
        self.colour_layers[file] = colours.detach().cpu()

    def add_point_attribute(self, name: str, values: torch.Tensor) -> None:
        """An integer attribute per vertex (a PLY property ``name``), given per model-input pixel [S,H,W]."""
        if name in self.point_attributes or name in ("x", "y", "z", "red", "green", "blue", "confidence"):
            raise SceneError(f"the vertex attribute {name!r} is taken")
        self.point_attributes[name] = values.detach().cpu()

    def to_photo(self, view: int, value: torch.Tensor, nearest: bool = False,
                 fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """A model-resolution map [H,W] or [H,W,C] of view ``view`` at its photo's resolution -> (map, inside),
        ``inside`` marking photo pixels covered by the model input."""
        out, inside = self.views[view].transform.to_photo(value.detach().cpu(), self.model_size, nearest, fill)
        return out.numpy(), inside.numpy()


def identity_transform(width: int, height: int) -> ViewTransform:
    return ViewTransform((width, height), (1.0, 1.0), (0.0, 0.0))
