"""The head registry: heads register by name with a decorator (built-ins in ``heads/``, third-party
packages through the ``iggt_lightning.heads`` entry-point group) and declare which heads they need."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "iggt_lightning.heads"
_HEADS: dict[str, type] = {}
_SOURCES: dict[str, str] = {}
_loaded = {"builtin": False, "entry_points": False}


def register_head(name: str):
    """Class decorator: ``@register_head("depth")`` makes the head buildable by that name."""

    def decorate(cls: type) -> type:
        other = _HEADS.get(name)
        if other is not None and other is not cls and f"{other.__module__}.{other.__qualname__}" != \
                f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(f"head name {name!r} is already registered by {other.__module__}.{other.__qualname__}")
        cls.name = name
        _HEADS[name] = cls
        _SOURCES.setdefault(name, cls.__module__)
        return cls

    return decorate


def load_plugins(refresh: bool = False) -> None:
    """Import the built-in heads and every head advertised through the entry-point group (once per process;
    ``refresh=True`` looks at the installed distributions again, e.g. after installing a plugin)."""
    if refresh:
        _loaded["entry_points"] = False
    if not _loaded["builtin"]:
        _loaded["builtin"] = True
        importlib.import_module("heads")
    if not _loaded["entry_points"]:
        _loaded["entry_points"] = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as err:
                raise ImportError(f"head plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
            if isinstance(obj, type) and ep.name not in _HEADS:
                register_head(ep.name)(obj)
            _SOURCES[ep.name] = f"entry point {ep.value} ({ep.dist.name if ep.dist else '?'})"


def get_head(name: str) -> type:
    """The head class registered under ``name``, or a class given by its dotted ``module.Class`` path."""
    load_plugins()
    if name in _HEADS:
        return _HEADS[name]
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import head class {name!r}: {err}") from err
    raise ValueError(f"unknown head {name!r}; registered heads: {sorted(_HEADS)}")


def available_heads() -> dict[str, type]:
    load_plugins()
    return dict(sorted(_HEADS.items()))


def head_source(name: str) -> str:
    return _SOURCES.get(name, "?")


def dependency_order(requires: dict[str, tuple[str, ...]]) -> list[str]:
    """Topological order of heads (stable w.r.t. the given order); errors on a missing head or a cycle."""
    for name, deps in requires.items():
        missing = [d for d in deps if d not in requires]
        if missing:
            raise ValueError(f"head {name!r} needs head(s) {missing}, which the configuration does not include; "
                             f"configured heads: {list(requires)}")
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(f"head dependency cycle: {' -> '.join(path + (name,))}")
        state[name] = 1
        for dep in requires[name]:
            visit(dep, path + (name,))
        state[name] = 2
        order.append(name)

    for name in requires:
        visit(name, ())
    return order
