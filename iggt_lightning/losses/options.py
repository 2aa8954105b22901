"""The options of a loss term (``model.loss_options.<term>``), declared once: by the keyword parameters of the loss
function that takes them. A parameter's default is the option's default, its annotation the type (``bool``,
``int``, ``float``, ``str``, a ``Literal`` of choices, ``| None`` when null is accepted) and, through
``Annotated[..., Range(...)]``, the range. Parameters of other types (tensors, a generator) are inputs, not options.

A loss that passes its ``**options`` on to another says so with :func:`forwards_options`. A head names, per term,
the function its ``loss`` calls in its ``loss_functions`` class attribute; :func:`check_loss_options` checks a
config's options against that declaration when the training module is built, before any step.
"""
from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union

from ..ranges import Range  # noqa: F401 (declared here as Annotated[..., Range(...)])

_PLAIN = (bool, int, float, str)


Positive = Annotated[float, Range(0, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Fraction = Annotated[float, Range(0, 1, low_open=True)]        # (0, 1]
Count = Annotated[int, Range(0)]


@dataclass(frozen=True)
class Declared:
    """One option as its function declares it."""

    name: str
    type: type
    default: Any
    choices: tuple = ()
    range: Range | None = None
    optional: bool = False

    def expected(self) -> str:
        if self.choices:
            text = f"one of {list(self.choices)}"
        elif self.type is bool:
            text = "true or false"
        elif self.type is str:
            text = "a string"
        else:
            text = ("an integer" if self.type is int else "a finite number") + (self.range.text() if self.range else "")
        return text + (" or null" if self.optional else "")

    def accepts(self, v: Any) -> bool:
        if v is None:
            return self.optional
        if self.choices:
            return isinstance(v, str) and v in self.choices
        if self.type is bool or self.type is str:
            return isinstance(v, self.type)
        if isinstance(v, bool) or not isinstance(v, int if self.type is int else (int, float)):
            return False
        return math.isfinite(v) and (self.range is None or self.range.holds(v))


def forwards_options(to: Callable | dict[str, Callable], by: str | None = None):
    """Mark a loss whose ``**options`` go on to ``to`` (or, with ``by``, to ``to[<the value of option by>]``), so
    that its options are those of its own signature plus the target's."""
    def mark(fn: Callable) -> Callable:
        fn.forwards_options = (to, by)
        return fn

    return mark


def _unwrap(hint: Any) -> tuple[Any, Range | None, bool]:
    """(plain type or Literal, range, optional) of an annotation."""
    rng, optional = None, False
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        rng = next((e for e in extras if isinstance(e, Range)), None)
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else hint
        if typing.get_origin(hint) is Annotated:
            inner, inner_rng, _ = _unwrap(hint)
            hint, rng = inner, rng or inner_rng
    return hint, rng, optional


def declared_options(fn: Callable) -> dict[str, Declared]:
    """name -> :class:`Declared` of every option ``fn``'s own signature declares."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.default is p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            continue
        hint, rng, optional = _unwrap(hints.get(name, type(p.default)))
        if typing.get_origin(hint) is Literal:
            out[name] = Declared(name, str, p.default, tuple(typing.get_args(hint)), None, optional)
        elif hint in _PLAIN:
            out[name] = Declared(name, hint, p.default, (), rng, optional)
    return out


def all_options(fn: Callable, options: dict) -> tuple[dict[str, Declared], str]:
    """The options ``fn`` takes given ``options`` (following :func:`forwards_options`), and who declares them."""
    own = declared_options(fn)
    to, by = getattr(fn, "forwards_options", (None, None))
    if to is None:
        return own, fn.__name__
    target = to
    if by is not None:
        choice = options.get(by, own[by].default)
        target = to.get(choice) if own[by].accepts(choice) else None
        if target is None:           # the choice itself is wrong: only fn's own options can be named
            return own, fn.__name__
    more, whose = all_options(target, options)
    return {**more, **own}, f"{fn.__name__} -> {whose}"


def check_loss_options(fn: Callable, options: Any, field: str) -> None:
    """``options`` against what ``fn`` declares: one ``ValueError`` naming ``field.<option>`` and what it expects
    (an unknown name, a value of the wrong type or out of range)."""
    if not isinstance(options, dict):
        raise ValueError(f"{field} must be a mapping of options; got {options!r}")
    declared, whose = all_options(fn, options)
    for key, value in options.items():        # values first: a wrong variant decides which options exist
        if key in declared and not declared[key].accepts(value):
            raise ValueError(f"{field}.{key}: expected {declared[key].expected()}; got {value!r}")
    for key in options:
        if key not in declared:
            close = difflib.get_close_matches(str(key), list(declared), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{field}.{key}: unknown option{hint}; {whose} takes {sorted(declared)}")
