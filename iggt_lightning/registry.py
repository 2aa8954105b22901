"""The plugin registries: heads and post-processors register by name with a decorator (built-ins in the
repository's ``heads/``, installed as the package ``iggt_lightning.heads``; third-party packages through the
``iggt_lightning.heads`` / ``iggt_lightning.postprocessors`` entry-point groups) and declare which plugins they
need.

Trust: a dotted ``module.Class`` path is imported only when the caller trusts where it came from. Configs the
user writes (Python, their own YAML) are trusted; configs read from a checkpoint are data
(``trust_code=False``): they may name registered heads (by name, or by the dotted path of a registered
class) and nothing else, unless the user opts in (``--trust-checkpoint-code`` / ``trust_code=True``), the
way Hugging Face's ``trust_remote_code`` works.

This module imports no module of the package but the leaf ``checkpoint_error`` (tests/test_import_graph.py):
every plugin imports it for its decorator, so a lookup importing the plugins back would be a circle. The built-ins are imported by the
loader the package hands over (:func:`add_plugin_loader`, from :mod:`iggt_lightning.builtin_plugins`), and a
plugin's base class is looked up among the modules already imported (:func:`_imported_class`)."""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from .checkpoint_error import CheckpointError

ENTRY_POINT_GROUP = "iggt_lightning.heads"
# The built-in plugins, only ever imported by this name: a bare ``heads`` would be whatever ``heads`` comes first
# on sys.path (the current folder's, with ``python -m``)
BUILTIN_PACKAGE = "iggt_lightning.heads"
POSTPROCESSOR_GROUP = "iggt_lightning.postprocessors"

TRUST_OPT_IN = "--trust-checkpoint-code (in Python: trust_code=True)"


class UntrustedCodeError(ValueError):
    """A file asked for code that is not registered (a dotted import path); refused unless trusted."""


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _current_name(name: str) -> str:
    """Configs and checkpoints written before the built-ins moved into the package name them ``heads.x.Class``."""
    return f"iggt_lightning.{name}" if name.startswith("heads.") else name


@lru_cache(maxsize=1)
def source_checkout() -> Path | None:
    """The repository folder when this package is imported from a clone (editable install or PYTHONPATH), else
    None (an installed wheel: its site-packages is no checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = (root / "setup.cfg").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return root if re.search(r"^name\s*=\s*iggt-lightning\s*$", text, re.M) else None


class _CheckoutPlugins:
    """Finds ``iggt_lightning.heads`` in a clone, where it is the top-level ``heads/`` folder beside the package.

    The wheel installs that folder as ``iggt_lightning/heads`` (setup.cfg's package_dir) and an editable install's
    finder maps it too; this finder covers a clone on PYTHONPATH with no install (or a copied tree whose editable
    finder points at the original) and keeps the plugins from the same tree as the package. It answers for that
    one name only and never looks at sys.path."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None):
        if fullname != BUILTIN_PACKAGE:
            return None
        root = source_checkout()
        init = root / "heads" / "__init__.py" if root is not None else None
        if init is None or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


# first, so that the plugins come from the same tree as the package (once, even if this module is re-imported)
if not any(getattr(f, "__module__", "") == __name__ and getattr(f, "__qualname__", "") == "_CheckoutPlugins"
           for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutPlugins)


class Registry:
    """Named plugin classes of one kind (heads, post-processors): registered by decorator, by the built-in
    package on first use, or through an entry-point group."""

    def __init__(self, kind: str, group: str, base: str) -> None:
        self.kind, self.group, self.base = kind, group, base      # base: "module:Class" checked on lookup
        self.classes: dict[str, type] = {}
        self.sources: dict[str, str] = {}
        self._entry_points_loaded = False

    def register(self, name: str):
        def decorate(cls: type) -> type:
            other = self.classes.get(name)
            if other is not None and other is not cls and qualified_name(other) != qualified_name(cls):
                raise ValueError(f"{self.kind} name {name!r} is already registered by {qualified_name(other)}")
            clash = _other_kind(self).classes.get(name)
            if clash is not None and qualified_name(clash) != qualified_name(cls):
                raise ValueError(f"{self.kind} name {name!r} is already a {_other_kind(self).kind} "
                                 f"({qualified_name(clash)}); heads and post-processors share one namespace")
            cls.name = name
            self.classes[name] = cls
            self.sources.setdefault(name, cls.__module__)
            return cls

        return decorate

    def load_entry_points(self, refresh: bool = False) -> None:
        if refresh:
            self._entry_points_loaded = False
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as err:
                raise ImportError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
            if isinstance(obj, type) and ep.name not in self.classes:
                self.register(ep.name)(obj)
            self.sources[ep.name] = f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})"

    def registered(self, name: str) -> type | None:
        """The class registered under ``name`` or whose dotted path ``name`` is (imports nothing)."""
        load_plugins()
        if not isinstance(name, str):
            return None
        if name in self.classes:
            return self.classes[name]
        name = _current_name(name)
        return next((cls for cls in self.classes.values() if qualified_name(cls) == name), None)

    def get(self, name: str, trust_code: bool = True, source: str = "the configuration") -> type:
        base_module, _, base_name = self.base.partition(":")
        base = _imported_class(self.base)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} must be named by a string; {source} gives {name!r}")
        cls = self.registered(name)
        if cls is None and "." in name:
            cls = import_trusted_class(name, self.kind, sorted(self.classes), trust_code, source,
                                       advice="; better, install the package that defines it so that it registers "
                                              "itself")
        if cls is None:
            hint = ""
            other = _other_kind(self).registered(name)
            if other is not None:
                hint = f"; {name!r} is a {_other_kind(self).kind}: configure it under {_other_kind(self).config_field}"
            raise ValueError(f"unknown {self.kind} {name!r} in {source}; registered {self.kind}s: "
                             f"{sorted(self.classes)}{hint}")
        if not (isinstance(cls, type) and base is not None and issubclass(cls, base)):
            raise ValueError(f"{source}: {name!r} is {cls!r}, not a subclass of {base_module}.{base_name}")
        return cls

    @property
    def config_field(self) -> str:
        return "heads" if self is HEADS else "postprocess"


def import_trusted_class(name: str, kind: str, registered: list[str], trust_code: bool, source: str,
                         advice: str = "") -> Any:
    """What the dotted path ``name`` names, imported only when the user trusts where it came from (the one rule
    for every plugin kind: heads, post-processors, exporters); otherwise one :class:`UntrustedCodeError`."""
    if not trust_code:
        raise UntrustedCodeError(f"{source} names {kind} class {name!r}, which is not a registered {kind}; importing "
                                 f"it would run code from that file. Registered: {registered}. If you trust the file, "
                                 f"pass {TRUST_OPT_IN}{advice}")
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {kind} class {name!r}: {err}") from err


def _imported_class(ref: str) -> type | None:
    """The class ``module:Class`` names, if that module is imported; else None. A class can only subclass a base
    whose module has run, so checking against it needs no import (the base modules import this one)."""
    module, _, name = ref.partition(":")
    return getattr(sys.modules.get(module), name, None)


HEADS = Registry("head", ENTRY_POINT_GROUP, "iggt_lightning.head:Head")
POSTPROCESSORS = Registry("post-processor", POSTPROCESSOR_GROUP, "iggt_lightning.postprocessor:PostProcessor")
# Loaders of the plugins a package brings (the built-ins: iggt_lightning.builtin_plugins adds theirs when the
# package is imported), each run once, on the first lookup
_plugin_loaders: list[Callable[[], None]] = []
_loaders_run = [0]


def _other_kind(reg: Registry) -> Registry:
    return POSTPROCESSORS if reg is HEADS else HEADS


def register_head(name: str):
    """Class decorator: ``@register_head("depth")`` makes the head buildable by that name."""
    return HEADS.register(name)


def register_postprocessor(name: str):
    """Class decorator: ``@register_postprocessor("tracking")`` makes the post-processor buildable by that name."""
    return POSTPROCESSORS.register(name)


def add_plugin_loader(load: Callable[[], None]) -> None:
    """Have :func:`load_plugins` call ``load`` (once), e.g. a function importing a package of plugins that
    register themselves; the package's built-ins come this way (:mod:`iggt_lightning.builtin_plugins`)."""
    if load not in _plugin_loaders:
        _plugin_loaders.append(load)


def load_plugins(refresh: bool = False) -> None:
    """Run the plugin loaders (the built-in plugins) and import every head / post-processor advertised through the
    entry-point groups (once per process; ``refresh=True`` looks at the installed distributions again, e.g. after
    installing one)."""
    while _loaders_run[0] < len(_plugin_loaders):
        _loaders_run[0] += 1          # counted first: a loader's imports may look plugins up again
        _plugin_loaders[_loaders_run[0] - 1]()
    HEADS.load_entry_points(refresh)
    POSTPROCESSORS.load_entry_points(refresh)


def registered_head(name: str) -> type | None:
    """The registered head class for a registered name or a registered class's dotted path (imports nothing)."""
    return HEADS.registered(name)


def get_head(name: str, trust_code: bool = True, source: str = "the configuration") -> type:
    """The head class registered under ``name``, or a class given by its dotted ``module.Class`` path.

    With ``trust_code=False`` (configs read from files) a dotted path is imported only if it names a
    registered class; anything else raises :class:`UntrustedCodeError` naming ``source`` and the opt-in.
    Whatever is returned is a :class:`~iggt_lightning.head.Head` subclass (checked before anything calls it).
    """
    return HEADS.get(name, trust_code, source)


def get_postprocessor(name: str, trust_code: bool = True, source: str = "the configuration") -> type:
    """As :func:`get_head`, for :class:`~iggt_lightning.postprocessor.PostProcessor` classes."""
    return POSTPROCESSORS.get(name, trust_code, source)


def available_heads() -> dict[str, type]:
    load_plugins()
    return dict(sorted(HEADS.classes.items()))


def available_postprocessors() -> dict[str, type]:
    load_plugins()
    return dict(sorted(POSTPROCESSORS.classes.items()))


def head_source(name: str) -> str:
    return HEADS.sources.get(name) or POSTPROCESSORS.sources.get(name, "?")


def check_plugin_entries(entries: dict, field: str, file: str, ref: str, trust_code: bool = False,
                         trusted: set[str] | frozenset = frozenset()) -> None:
    """Every ``name: spec`` of a file's ``heads`` / ``postprocess`` names a registered plugin (a dotted path only
    with ``trust_code`` or when it is in ``trusted``); nothing is imported otherwise. ``file`` starts the messages
    (e.g. ``checkpoint m.pt``), ``ref`` names the mapping (``config.heads``, ``hyper-parameter postprocess``). A
    registered post-processor under ``heads`` (an older version's config) is checked as one."""
    for name, spec in entries.items():
        if spec is not None and not isinstance(spec, dict):
            raise CheckpointError(f"{file}: {ref}.{name} must be a mapping of arguments or null; got {spec!r}")
        target = (spec or {}).get("class_path", name)
        lookup = get_postprocessor if field == "postprocess" or POSTPROCESSORS.registered(target) else get_head
        try:
            lookup(target, trust_code=trust_code or target in trusted, source=f"{file} ({ref}.{name})")
        except UntrustedCodeError:
            raise
        except ValueError as err:
            raise CheckpointError(str(err)) from err


def dependency_order(requires: dict[str, tuple[str, ...]], kind: str = "head",
                     available: tuple[str, ...] = ()) -> list[str]:
    """Topological order of plugins (stable w.r.t. the given order); errors on a missing one or a cycle.
    ``available``: names that run earlier (the heads, for post-processors)."""
    for name, deps in requires.items():
        missing = [d for d in deps if d not in requires and d not in available]
        if missing:
            what = "head(s)" if kind == "head" else "head(s) or post-processor(s)"
            raise ValueError(f"{kind} {name!r} needs {what} {missing} (its requires), which the configuration does "
                             f"not include; configured: {list(available) + list(requires)}")
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"{kind} dependency cycle: {' -> '.join(path + (name,))}")
        state[name] = 1
        for dep in requires[name]:
            if dep in requires:
                visit(dep, path + (name,))
        state[name] = 2
        order.append(name)

    for name in requires:
        visit(name, ())
    return order
