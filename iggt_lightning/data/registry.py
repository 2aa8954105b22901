"""The dataset layouts: one registry, layout name -> :class:`DatasetLayout` (the reader, how a folder of that
layout is recognised, the fixture writer that makes a tiny one, where its poses are and what it holds).

Every consumer reads it: ``iggt data check`` (detection, ``--layout`` choices, the reader, pose-file names),
:func:`.fixtures.write_fixture` (the writer), the tests' layout parametrisation and the loading benchmark. So a
layout registered here is checkable and tested with no other edit (docs/writing-a-reader.md).

The built-ins are registered at the end of this module by lazy import paths (``"iggt_lightning.data.x:Class"``,
resolved on first use), so this module imports no reader and no writer: anything may import it without a
circle. Others register the class and function themselves::

    register_layout("npz_frames", NpzFrameScenes, writer=write_npz_frames_scene, markers=(("*/rgb", "*/frames/*.npz"),))
"""
from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .frames import DatasetError

# what a layout can hold; every layout holds images and cameras
FIELDS = ("images", "cameras", "depth", "instance_ids")
FULL = frozenset(FIELDS)
CAMERAS_ONLY = frozenset({"images", "cameras"})
CONVENTIONS = ("world-to-camera", "camera-to-world")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_BUILTIN_PATH = re.compile(r"^iggt_lightning(\.\w+)+:\w+$")     # strings name our own modules only


@dataclass(frozen=True)
class PoseFiles:
    """Where a scene keeps its poses (relative to the scene folder, for messages) and the convention the reader
    expects in them."""

    where: str
    convention: str = "world-to-camera"


@dataclass(frozen=True)
class DatasetLayout:
    """One registered layout. Built by :func:`register_layout`, which checks every field."""

    name: str
    reader: type | str                  # a MultiViewScenes subclass, or a built-in's "iggt_lightning.module:Class"
    markers: tuple[tuple[str, ...], ...]  # globs under the root; a group whose globs all match marks the layout
    writer: Callable | str              # fixture writer(root, scene_name, arrays), or a built-in's lazy path
    priority: int = 0                   # detection order: higher first, so the most specific layout wins
    poses: PoseFiles | None = None
    holds: frozenset = FULL
    shared_intrinsics: bool = False     # one K per scene (ScanNet): its fixtures give the views one focal length

    @property
    def cameras_only(self) -> bool:
        return self.holds == CAMERAS_ONLY

    def reader_class(self) -> type:
        return _resolve(self.reader)

    def fixture_writer(self) -> Callable:
        return _resolve(self.writer)

    @property
    def class_path(self) -> str:
        """The reader's dotted path, as a YAML ``class_path`` names it."""
        cls = self.reader_class()
        return f"{cls.__module__}.{cls.__qualname__}"

    def found_in(self, root: Path) -> bool:
        return any(all(any(root.glob(p)) for p in group) for group in self.markers)

    def describe_markers(self) -> str:
        return " | ".join(" + ".join(group) for group in self.markers)


_LAYOUTS: dict[str, DatasetLayout] = {}


def _resolve(target):
    if not isinstance(target, str):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def _refuse(name, what: str, value, expected: str):
    raise ValueError(f"register_layout({name!r}): {what} is {value!r}; expected {expected}")


def _markers(name: str, markers) -> tuple[tuple[str, ...], ...]:
    """Each entry a glob, or a tuple of globs that must all match; globs stay inside the dataset folder."""
    if isinstance(markers, str) or not markers:
        _refuse(name, "markers", markers, "a non-empty tuple of glob patterns (or of tuples of them)")
    groups = tuple((m,) if isinstance(m, str) else tuple(m) for m in markers)
    for group in groups:
        for glob in group:
            parts = PurePosixPath(glob).parts if isinstance(glob, str) else ()
            if not parts or glob.startswith(("/", "\\")) or ".." in parts or os.path.isabs(glob):
                _refuse(name, "a marker", glob, "a glob relative to the dataset folder, without '..'")
    return groups


def register_layout(name: str, reader: type | str, *, markers, writer: Callable | str, priority: int = 0,
                    poses: tuple[str, str] | PoseFiles | None = None, holds=FULL,
                    shared_intrinsics: bool = False) -> DatasetLayout:
    """Register a dataset layout (see :class:`DatasetLayout`); returns its record.

    ``markers``: glob patterns relative to the dataset folder; an entry may be a tuple of globs that must all
    match. ``poses``: (where, convention) with convention ``"world-to-camera"`` or ``"camera-to-world"``.
    ``holds``: a subset of :data:`FIELDS` with images and cameras (:data:`FULL`, :data:`CAMERAS_ONLY`, ...).
    Registering a name again is refused unless the record is the same."""
    if not isinstance(name, str) or not _NAME.match(name) or name == "auto":
        _refuse(name, "the name", name, "lower-case letters, digits and _ (not 'auto': the CLI's detection)")
    if isinstance(reader, str):
        if not _BUILTIN_PATH.match(reader):
            _refuse(name, "reader", reader, "the class itself ('iggt_lightning.<module>:<Class>' strings are for "
                    "the built-ins)")
    else:
        from .multiview import MultiViewScenes

        if not (isinstance(reader, type) and issubclass(reader, MultiViewScenes)):
            _refuse(name, "reader", reader, "a subclass of iggt_lightning.data.multiview.MultiViewScenes")
    if (isinstance(writer, str) and not _BUILTIN_PATH.match(writer)) or (not isinstance(writer, str)
                                                                          and not callable(writer)):
        _refuse(name, "writer", writer, "a function writer(root, scene_name, arrays) (docs/writing-a-reader.md)")
    if not isinstance(priority, int) or isinstance(priority, bool):
        _refuse(name, "priority", priority, "an integer (higher: tried first by detection)")
    if poses is not None and not isinstance(poses, PoseFiles):
        if isinstance(poses, str) or len(poses) != 2:
            _refuse(name, "poses", poses, "(where, convention)")
        poses = PoseFiles(*poses)
    if poses is not None and (not isinstance(poses.where, str) or poses.convention not in CONVENTIONS):
        _refuse(name, "poses", poses, f"(where: a string, convention: one of {CONVENTIONS})")
    holds = frozenset([holds] if isinstance(holds, str) else holds)
    if not CAMERAS_ONLY <= holds <= FULL:
        _refuse(name, "holds", sorted(holds), f"a subset of {FIELDS} with 'images' and 'cameras'")
    record = DatasetLayout(name, reader, _markers(name, markers), writer, priority, poses, holds,
                           bool(shared_intrinsics))
    if name in _LAYOUTS and _LAYOUTS[name] != record:
        raise ValueError(f"register_layout({name!r}): a layout of that name is registered already "
                         f"(reader {_LAYOUTS[name].reader}); unregister_layout it first to replace it")
    _LAYOUTS[name] = record
    return record


def unregister_layout(name: str) -> None:
    """Remove a layout (tests, or a plugin replacing one); an unknown name is an error."""
    get_layout(name)
    del _LAYOUTS[name]


def get_layout(name: str) -> DatasetLayout:
    if name not in _LAYOUTS:
        raise DatasetError(f"unknown dataset layout {name!r}; registered: {', '.join(_LAYOUTS)} "
                           "(iggt_lightning.data.registry)")
    return _LAYOUTS[name]


def layouts() -> tuple[DatasetLayout, ...]:
    """Every registered layout, in registration order."""
    return tuple(_LAYOUTS.values())


def layout_names() -> tuple[str, ...]:
    return tuple(_LAYOUTS)


def detection_order() -> tuple[DatasetLayout, ...]:
    """The layouts as detection tries them: higher priority first, then registration order."""
    return tuple(sorted(_LAYOUTS.values(), key=lambda r: -r.priority))


def reader_class(name: str) -> type:
    """The dataset class that reads layout ``name``."""
    return get_layout(name).reader_class()


def _register_builtins() -> None:
    """The built-in layouts, the one place they are listed. Priorities keep the most specific markers first."""
    writers = "iggt_lightning.data.fixture_writers"
    register_layout("scannetpp", "iggt_lightning.data.scannetpp:ScanNetPPScenes", priority=70,
                    markers=("*/scene_iphone_metadata.npz",), writer=f"{writers}:write_scannetpp_scene",
                    poses=("scene_iphone_metadata.npz ('trajectories')", "camera-to-world"))
    register_layout("infinigen", "iggt_lightning.data.infinigen:InfinigenScenes", priority=60,
                    markers=("*/*/frames/Image",), writer=f"{writers}:write_infinigen_scene",
                    poses=("camview/*/*.npz ('T')", "camera-to-world"))
    register_layout("re10k", "iggt_lightning.data.re10k:RE10KScenes", priority=40,
                    markers=(("*/rgb", "*/cam"),), writer=f"{writers}:write_re10k_scene",
                    poses=("cam/*.npz ('pose')", "camera-to-world"), holds=FULL - {"depth"})
    register_layout("scannet", "iggt_lightning.data.scannet:ScanNetScenes", priority=50,
                    markers=(("*/color", "*/pose"),), writer=f"{writers}:write_scannet_scene",
                    poses=("pose/*.txt", "camera-to-world"), shared_intrinsics=True)
    # a folder of scenes or one scene; its reader's pose_source tells its two camera formats apart per scene
    register_layout("scene_folder", "iggt_lightning.data.scene_folder:SceneFolderScenes", priority=10,
                    markers=("cameras.json", "cam", "*/cameras.json", "*/cam"),
                    writer=f"{writers}:write_scene_folder_scene",
                    poses=("cameras.json ('extrinsic')", "world-to-camera"))
    # cameras only (VGGT's evaluation annotations): no depth, no instances
    register_layout("co3d", "iggt_lightning.data.pose_annotations:CO3DScenes", priority=30,
                    markers=("annotations/*.jgz",), writer=f"{writers}:write_co3d_scene",
                    poses=("annotations/<category>_<split>.jgz ('R', 'T', PyTorch3D axes)", "world-to-camera"),
                    holds=CAMERAS_ONLY)
    register_layout("pose_list", "iggt_lightning.data.pose_annotations:PoseListScenes", priority=20,
                    markers=("annotations.jgz",), writer=f"{writers}:write_pose_list_scene",
                    poses=("annotations.jgz ('extri')", "world-to-camera"), holds=CAMERAS_ONLY)


_register_builtins()
