"""What an exporter is and the registry of exporters.

An exporter turns what a prediction holds into files: it declares what it ``consumes`` (model output keys such
as ``depth``, or scene slots that the plugins' ``describe`` hooks fill: :data:`SCENE_SLOTS`), the files it
writes (:meth:`Exporter.files`, a function of the scene's plan: ``iggt predict --dry-run`` and the manifest read
the same list), its options (a dataclass, :meth:`Exporter.option_declarations`) and :meth:`Exporter.write`.
It runs only when everything it consumes is there. Heads and post-processors write no files: they describe what
they produce, and the exporters write it.

Exporters register by name with :func:`register_exporter` (the built-ins in this package) or through the
entry-point group ``iggt_lightning.exporters``. The trust rule is the heads' (:mod:`iggt_lightning.registry`): a
dotted ``module.Class`` path is imported only when the caller trusts where it came from; a name read from a file
(a manifest, a checkpoint) may only be a registered one.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

from iggt_lightning.inference.export import saved_image_names
from iggt_lightning.inference.option_types import ExportOption, ExportOptionError
from iggt_lightning.registry import import_trusted_class, qualified_name

ENTRY_POINT_GROUP = "iggt_lightning.exporters"

# What the writer and the plugins' describe hooks put into a scene (iggt_lightning/inference/scene.py); any other
# name an exporter consumes is a model output key
SCENE_SLOTS = {
    "cloud": lambda scene: scene.cloud is not None,          # the chosen points and the confidence filter
    "cameras": lambda scene: scene.cameras is not None,
    "photos": lambda scene: saved_image_names(scene) is not None,   # the views, to be saved under images/
}


def export_option(default: Any, help: str, **declaration) -> Any:
    """A field of an exporter's options dataclass: ``name: float = export_option(1000.0, "what it does", low=0)``.
    The field's name and type annotation complete the :class:`ExportOption` (``str | None``: optional)."""
    return field(default=default, metadata={"export_option": dict(help=help, **declaration)})


@dataclass(frozen=True)
class NoOptions:
    """The options of an exporter that has none."""


@dataclass(frozen=True)
class FilePlan:
    """What decides a scene's file names before anything is predicted: the views' ``stems`` (per-view files),
    ``colour_layers`` (the GLB files of the colour layers the plugins declare), ``image_names`` (the views' files under ``images/``; None when they are not saved), ``photo_sizes`` (W, H;
    None: not known) and the export ``options`` given so far (the rest at their defaults)."""

    stems: list[str] = field(default_factory=list)
    colour_layers: tuple[str, ...] = ()
    image_names: list[str] | None = None
    photo_sizes: list[tuple[int, int]] | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ViewerLayer:
    """What ``iggt view`` reads from the files an exporter wrote: ``kind`` (``instances``: per-instance entries),
    ``file`` (relative to the scene folder), ``attribute`` (the ``points.ply`` vertex property holding the ids
    the file's entries are keyed by) and ``colour_layer`` (the colour layer showing those ids: the viewer draws
    it with the writer's palette when its GLB is missing)."""

    kind: str
    file: str
    attribute: str | None = None
    colour_layer: str | None = None


class Exporter:
    """Base class. Declare ``consumes`` and ``Options``; implement :meth:`files` and :meth:`write`."""

    name: ClassVar[str] = ""
    consumes: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type] = NoOptions
    viewer_layers: ClassVar[tuple[ViewerLayer, ...]] = ()

    def __init__(self, options: dict | None = None) -> None:
        """``options``: the run's export options (checked, :mod:`iggt_lightning.inference.options`); this
        exporter's own become :attr:`options`, an instance of its ``Options`` dataclass."""
        given = options or {}
        self.options = self.typed_options(given)

    @classmethod
    def typed_options(cls, given: dict) -> Any:
        """``given`` (a run's options, possibly with other exporters' too) -> this exporter's ``Options``, each
        value read by its declaration and the missing ones at their defaults."""
        values = {o.name: o.parse(given[o.name]) for o in cls.option_declarations() if o.name in given}
        return cls.Options(**values)

    @classmethod
    def option_declarations(cls) -> tuple[ExportOption, ...]:
        """The :class:`ExportOption` of every field of ``Options`` (the typing of iggt_lightning.inference.options)."""
        hints = typing.get_type_hints(cls.Options)
        declared = []
        for f in dataclasses.fields(cls.Options):
            extra = dict(f.metadata.get("export_option") or {})
            if not extra:
                raise ExportOptionError(f"exporter {cls.name!r}: option {f.name} is no export_option(...) field")
            kind, optional = hints[f.name], extra.pop("optional", False)
            if isinstance(kind, types.UnionType) and type(None) in kind.__args__:   # "str | None": None accepted
                (kind,), optional = [a for a in kind.__args__ if a is not type(None)], True
            declared.append(ExportOption(f.name, kind, f.default, optional=optional, **extra))
        return tuple(declared)

    @classmethod
    def consumed_outputs(cls) -> tuple[str, ...]:
        """The model output keys among ``consumes`` (the rest are scene slots)."""
        return tuple(c for c in cls.consumes if c not in SCENE_SLOTS)

    @classmethod
    def files(cls, plan: FilePlan, options: Any) -> list[str]:  # pragma: no cover - interface
        """The files :meth:`write` makes for a scene planned as ``plan`` (``options``: this exporter's)."""
        raise NotImplementedError

    @classmethod
    def planned(cls, plan: FilePlan) -> list[str]:
        return list(cls.files(plan, cls.typed_options(plan.options)))

    def ready(self, scene, outputs: dict) -> bool:
        """Everything it consumes is present in this scene."""
        return all(SCENE_SLOTS[c](scene) if c in SCENE_SLOTS else c in outputs for c in self.consumes)

    def write(self, scene, outputs: dict) -> dict | None:  # pragma: no cover - interface
        """Write the files through ``scene.path(rel)`` (which lists them in ``manifest.json``); return entries of
        the manifest's scene summary (or None). ``outputs[key][scene.index]`` is this scene's."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- the registry
_EXPORTERS: dict[str, type[Exporter]] = {}
_SOURCES: dict[str, str] = {}
_entry_points_loaded = [False]


def register_exporter(name: str, cls: type[Exporter] | None = None):
    """``register_exporter("xyz", XyzCloud)``, or as a class decorator ``@register_exporter("xyz")``."""
    def decorate(cls: type[Exporter]) -> type[Exporter]:
        if not (isinstance(cls, type) and issubclass(cls, Exporter)):
            raise ValueError(f"exporter {name!r}: {cls!r} is not a subclass of iggt_lightning.exporters.Exporter")
        other = _EXPORTERS.get(name)
        if other is not None and qualified_name(other) != qualified_name(cls):
            raise ValueError(f"exporter name {name!r} is already registered by {qualified_name(other)}")
        for c in cls.consumes:
            if not isinstance(c, str) or not c:
                raise ValueError(f"exporter {name!r} consumes {c!r}; expected output keys or scene slots "
                                 f"{sorted(SCENE_SLOTS)}")
        cls.name = name
        cls.option_declarations()      # a bad options dataclass is an error now, not when a run reads it
        _EXPORTERS[name] = cls
        _SOURCES.setdefault(name, cls.__module__)
        return cls

    return decorate if cls is None else decorate(cls)


def unregister_exporter(name: str) -> None:
    _EXPORTERS.pop(name, None)
    _SOURCES.pop(name, None)


def load_entry_points(refresh: bool = False) -> None:
    """Import the exporters advertised in the ``iggt_lightning.exporters`` entry-point group (once per process)."""
    if _entry_points_loaded[0] and not refresh:
        return
    _entry_points_loaded[0] = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:
            raise ImportError(f"exporter {ep.name!r} ({ep.value}) failed to import: {err}") from err
        if ep.name not in _EXPORTERS:
            register_exporter(ep.name, obj)
        _SOURCES[ep.name] = f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})"


def available_exporters() -> dict[str, type[Exporter]]:
    """Every registered exporter, in the order they run (built-ins first, in the order of their files)."""
    load_entry_points()
    return dict(_EXPORTERS)


def exporter_source(name: str) -> str:
    """Where exporter ``name`` came from: its module, or the entry point and distribution that advertised it."""
    available_exporters()
    return _SOURCES.get(name, "?")


def registered_exporter(name: str) -> type[Exporter] | None:
    """The exporter registered under ``name`` or whose dotted class path ``name`` is; imports nothing."""
    classes = available_exporters()
    if not isinstance(name, str):
        return None
    return classes.get(name) or next((c for c in classes.values() if qualified_name(c) == name), None)


def get_exporter(name: str, trust_code: bool = False, source: str = "the configuration") -> type[Exporter]:
    """A registered exporter by name (or its class's dotted path); another dotted path only with ``trust_code``
    (configs the user writes), never for a name read from a file."""
    cls = registered_exporter(name)
    if cls is None and isinstance(name, str) and "." in name:
        cls = import_trusted_class(name, "exporter", sorted(_EXPORTERS), trust_code, source)
        if not (isinstance(cls, type) and issubclass(cls, Exporter)):
            raise ValueError(f"{source}: {name!r} is {cls!r}, not a subclass of iggt_lightning.exporters.Exporter")
    if cls is None:
        raise ValueError(f"unknown exporter {name!r} in {source}; registered exporters: {sorted(_EXPORTERS)}")
    return cls


def applicable_exporters(plugins) -> list[type[Exporter]]:
    """The exporters a run with ``plugins`` ((name, class or instance) pairs) may use: those consuming only scene
    slots, and those whose output keys the plugins produce."""
    produced = {k for _, p in plugins for k in getattr(p, "outputs", ())}
    return [cls for cls in available_exporters().values() if set(cls.consumed_outputs()) <= produced]


def is_scene_exporter(cls: type[Exporter]) -> bool:
    """An exporter of the scene as a whole (consuming scene slots only): its files are listed whatever the heads."""
    return not cls.consumed_outputs()


def selected_exporters(selection: str | None) -> list[str]:
    """The names in ``selection`` (the ``exporters`` export option: comma-separated), each a registered exporter;
    every registered name when ``selection`` is None. One error naming the unknown name and the registered ones."""
    registered = available_exporters()
    if selection is None:
        return list(registered)
    names = [n.strip() for n in selection.split(",") if n.strip()]
    unknown = [n for n in names if n not in registered]
    if unknown or not names:
        raise ExportOptionError(f"export option exporters: {unknown[0] if unknown else selection!r} is not a "
                                f"registered exporter; expected comma-separated names among {sorted(registered)}")
    return list(dict.fromkeys(names))


def chosen(classes, selection: str | None) -> list:
    """``classes`` (exporter classes, in run order) kept when ``selection`` names them (None: all)."""
    names = set(selected_exporters(selection))
    return [c for c in classes if c.name in names]


def files_for_outputs(outputs, stems: list[str], colour_layers=(), selection: str | None = None) -> list[str]:
    """The files of the exporters consuming any of ``outputs`` (a plugin's declared keys), for views ``stems``,
    among the exporters ``selection`` names (None: all)."""
    plan = FilePlan(stems=list(stems), colour_layers=tuple(colour_layers))
    found: list[str] = []
    for cls in chosen(available_exporters().values(), selection):
        if set(cls.consumed_outputs()) & set(outputs):
            found += [f for f in cls.planned(plan) if f not in found]
    return found


def viewer_layer_table(names=None) -> list[tuple[str, ViewerLayer]]:
    """(exporter, layer) of the exporters named ``names`` (a manifest's ``exporters``: only registered names are
    looked up, nothing is imported) or of every registered one."""
    classes = available_exporters()
    chosen = classes if names is None else {n: classes[n] for n in names if isinstance(n, str) and n in classes}
    return [(n, layer) for n, cls in chosen.items() for layer in cls.viewer_layers]
