"""The head registry: heads register by name with a decorator (built-ins in ``heads/``, third-party
packages through the ``iggt_lightning.heads`` entry-point group) and declare which heads they need.

Trust: a dotted ``module.Class`` path is imported only when the caller trusts where it came from. Configs the
user writes (Python, their own YAML) are trusted; configs read from a checkpoint are data
(``trust_code=False``): they may name registered heads (by name, or by the dotted path of a registered
class) and nothing else, unless the user opts in (``--trust-checkpoint-code`` / ``trust_code=True``), the
way Hugging Face's ``trust_remote_code`` works."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "iggt_lightning.heads"
_HEADS: dict[str, type] = {}
_SOURCES: dict[str, str] = {}
_loaded = {"builtin": False, "entry_points": False}

TRUST_OPT_IN = "--trust-checkpoint-code (in Python: trust_code=True)"


class UntrustedCodeError(ValueError):
    """A file asked for code that is not registered (a dotted import path); refused unless trusted."""


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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


def registered_head(name: str) -> type | None:
    """The registered head class for a registered name or a registered class's dotted path (imports nothing)."""
    load_plugins()
    if not isinstance(name, str):
        return None
    if name in _HEADS:
        return _HEADS[name]
    return next((cls for cls in _HEADS.values() if qualified_name(cls) == name), None)


def get_head(name: str, trust_code: bool = True, source: str = "the configuration") -> type:
    """The head class registered under ``name``, or a class given by its dotted ``module.Class`` path.

    With ``trust_code=False`` (configs read from files) a dotted path is imported only if it names a
    registered class; anything else raises :class:`UntrustedCodeError` naming ``source`` and the opt-in.
    Whatever is returned is a :class:`~iggt_lightning.head.Head` subclass (checked before anything calls it).
    """
    from .head import Head

    if not isinstance(name, str) or not name:
        raise ValueError(f"a head must be named by a string; {source} gives {name!r}")
    cls = registered_head(name)
    if cls is None and "." in name:
        if not trust_code:
            raise UntrustedCodeError(
                f"{source} names head class {name!r}, which is not a registered head; importing it would run "
                f"code from that file. Registered heads: {sorted(_HEADS)}. If you trust the file, pass "
                f"{TRUST_OPT_IN}; better, install the head's package so that it registers itself")
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import head class {name!r}: {err}") from err
    if cls is None:
        raise ValueError(f"unknown head {name!r} in {source}; registered heads: {sorted(_HEADS)}")
    if not (isinstance(cls, type) and issubclass(cls, Head)):
        raise ValueError(f"{source}: {name!r} is {cls!r}, not a subclass of iggt_lightning.head.Head")
    return cls


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
            raise ValueError(f"head {name!r} needs head(s) {missing} (its requires), which the configuration does not "
                             f"include; configured heads: {list(requires)}")
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
