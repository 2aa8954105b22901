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
from .frame_stack import PerView, as_stack, view_of
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
    """3D points for every model-input pixel, a stack [S,H,W,3] (a tensor, a per-view stack of
    :mod:`.frame_stack`, or a callable returning either, evaluated once every plugin has described the scene; None
    = not available), and their confidence [S,H,W]."""

    points: Any
    confidence: Any
    priority: int = 0
    from_cameras: bool = False   # made with the cameras: a view whose cameras are not valid has no usable points


@dataclass
class Cloud:
    """The points the scene files show, gathered view by view (the writer's :func:`~.writer.choose_cloud`):
    ``index`` [N] (int64, the pixel ``v*H*W + y*W + x`` of the model input each of the points comes from, in increasing
    order), ``points`` [N,3], ``confidence`` [N], ``colours`` [N,3] (the model input's RGB in [0,1]), ``layers``
    (the plugins' colour layers, file -> [N,3]) and ``attributes`` (name -> [N]). ``source`` / ``source_confidence``
    are the whole per-pixel stacks and ``kept_in(v)`` the pixels of view ``v`` the confidence filter keeps, for
    what needs a view's full surface (COLMAP's visibility test). ``kept``: the pixels the filter kept, before
    the budget ``max_points`` thinned them."""

    name: str
    index: np.ndarray
    points: np.ndarray
    confidence: np.ndarray
    colours: np.ndarray
    model_size: tuple[int, int]                 # (W, H)
    source: Any = None
    source_confidence: Any = None
    threshold: float = 0.0
    valid_views: list[bool] | None = None
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    kept: int = 0                               # pixels the confidence filter kept (before max_points)

    def xyz(self) -> np.ndarray:
        return self.points

    def rgb(self, images=None) -> np.ndarray:
        """The points' colours from the model input (``images`` is accepted for older exporters; unused)."""
        return self.colours

    @property
    def views(self) -> np.ndarray:
        """The view of each of the points [N]."""
        W, H = self.model_size
        return self.index // (H * W)

    @property
    def pixels(self) -> np.ndarray:
        """The pixel (``y*W + x``) of each of the points in its view [N]."""
        W, H = self.model_size
        return self.index % (H * W)

    def of_view(self, v: int) -> slice:
        """The points of view ``v`` (``index`` is sorted, so they are one run)."""
        W, H = self.model_size
        lo, hi = np.searchsorted(self.index, [v * H * W, (v + 1) * H * W])
        return slice(int(lo), int(hi))

    def kept_in(self, v: int) -> np.ndarray:
        """[H*W] bool: view ``v``'s pixels with finite points and confidence at least the threshold."""
        from .frame_stack import view_of

        pts = view_of(self.source, v).reshape(-1, 3).float().numpy()
        conf = view_of(self.source_confidence, v).reshape(-1).float().numpy()
        keep = np.isfinite(pts).all(1) & np.isfinite(conf) & (conf > 1e-5) & (conf >= self.threshold)
        if self.valid_views is not None and not self.valid_views[v]:
            keep[:] = False
        return keep

    def surface(self, v: int) -> np.ndarray:
        """[H*W,3] float64: view ``v``'s points."""
        from .frame_stack import view_of

        return view_of(self.source, v).reshape(-1, 3).double().numpy()


@dataclass
class SceneExport:
    """One scene being written. ``index``: the scene's position in the batch (``outputs[key][scene.index]``).
    ``images``: the model input [S,3,H,W] (float in [0,1]; a stack read per view in a windowed run,
    :mod:`.frame_stack`); ``options``: the export options, checked against their declarations and complete
    (:mod:`.options`; ``scene.option(name)``)."""

    folder: Path
    index: int
    views: list[View]
    images: Any
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

    def report_non_finite(self, values, what: str) -> None:
        """:meth:`report_invalid` for every view whose slice of ``values`` (a stack [S,...]) has a non-finite
        entry."""
        if torch.is_tensor(values):
            bad = torch.nonzero(~torch.isfinite(values.reshape(values.shape[0], -1)).all(1)).flatten().tolist()
        else:
            bad = [v for v in range(len(values)) if not torch.isfinite(view_of(values, v)).all()]
        for v in bad:
            self.report_invalid(v, what)

    def add_points(self, name: str, points, confidence, priority: int = 0, from_cameras: bool = False) -> None:
        """Offer a source of 3D points (``--points-from name`` picks one; otherwise the highest priority):
        ``points`` a stack [S,H,W,3] or a function returning one, ``confidence`` a stack [S,H,W]."""
        if name in self.point_sources:
            raise SceneError(f"two plugins offer a source of points named {name!r}")
        self.point_sources[name] = PointSource(points, as_stack(confidence), priority, from_cameras)

    def add_colour_layer(self, file: str, colours) -> None:
        """Another coloured copy of the cloud of points, written as ``file`` (a .glb): colours, a stack
        [S,H,W,3] in [0,1] (or uint8) per model-input pixel."""
        if file in self.colour_layers:
            raise SceneError(f"two plugins add the colour layer {file!r}")
        self.colour_layers[file] = as_stack(colours)

    def add_point_attribute(self, name: str, values) -> None:
        """An integer attribute per vertex (a PLY property ``name``), a stack [S,H,W] per model-input pixel."""
        if name in self.point_attributes or name in ("x", "y", "z", "red", "green", "blue", "confidence"):
            raise SceneError(f"the vertex attribute {name!r} is taken")
        self.point_attributes[name] = as_stack(values)

    def view(self, stack, v: int) -> torch.Tensor:
        """View ``v`` of a per-view stack (an output ``outputs[key][self.index]``, a slot's value)."""
        return view_of(stack, v)

    def per_view(self, make: Callable[[int], torch.Tensor], frame_shape: tuple[int, ...]) -> PerView:
        """A stack whose view ``v`` is ``make(v)``, made when read (what a slot takes without holding every view:
        maps unprojected view by view, a palette applied to one view's ids)."""
        return PerView(make, len(self.views), frame_shape)

    def to_photo(self, view: int, value: torch.Tensor, nearest: bool = False,
                 fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """A model-resolution map [H,W] or [H,W,C] of view ``view`` at its photo's resolution -> (map, inside),
        ``inside`` marking photo pixels covered by the model input."""
        out, inside = self.views[view].transform.to_photo(value.detach().cpu(), self.model_size, nearest, fill)
        return out.numpy(), inside.numpy()


def identity_transform(width: int, height: int) -> ViewTransform:
    return ViewTransform((width, height), (1.0, 1.0), (0.0, 0.0))
