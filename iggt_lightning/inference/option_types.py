"""The typing of export options: :class:`ExportOption` (type, default, range, help) reads a value, typed or the
text of ``KEY=VALUE``, strictly. A leaf module, so that the exporters (:mod:`iggt_lightning.exporters`) declare
their options with it while :mod:`.options`, which builds a run's table from the exporters, imports them."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..ranges import Range

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_INT_TEXT = re.compile(r"[+-]?\d+")


class ExportOptionError(ValueError):
    """An export option that is unknown, of the wrong type or out of range (the message names it)."""


@dataclass(frozen=True)
class ExportOption:
    """One export option. ``type``: bool, int, float or str; ``low`` / ``high``: bounds of a number (open with
    ``low_open`` / ``high_open``); ``choices``: the values a str may take; ``optional``: None is accepted too."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    optional: bool = False

    def expected(self) -> str:
        """What a value must be, in words (for errors and ``--help``)."""
        if self.type is bool:
            text = "true or false, or 1 or 0"
        elif self.type is str:
            text = f"one of {list(self.choices)}" if self.choices else "a non-empty string"
        else:
            text = ("an integer" if self.type is int else "a finite number") + self._range()
        return text + (" or null" if self.optional else "")

    def _range(self) -> str:
        return Range(self.low, self.high, self.low_open, self.high_open).text()

    def parse(self, value: Any) -> Any:
        """``value`` (typed, or the text of ``KEY=VALUE``) -> the option's value; :class:`ExportOptionError` when
        it is not what the option expects."""
        if value is None and self.optional:
            return None
        typed = self._typed(value)
        if typed is None or not self._in_range(typed):
            raise ExportOptionError(f"export option {self.name}: expected {self.expected()}; got {value!r}")
        return typed

    def _typed(self, value: Any) -> Any:
        """The value as the option's type, or None when it is not one (text is read strictly)."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            key = value.lower() if isinstance(value, str) else value if type(value) is int else None
            return True if key in (*_TRUE, 1) else False if key in (*_FALSE, 0) else None
        if self.type is str:
            return value if isinstance(value, str) and value else None
        if isinstance(value, bool):           # True is an int to Python, never a number here
            return None
        if self.type is int:
            if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
                return int(value)
            return value if isinstance(value, int) else None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def _in_range(self, v: Any) -> bool:
        if self.choices:
            return v in self.choices
        if self.type in (bool, str):
            return True
        return Range(self.low, self.high, self.low_open, self.high_open).holds(v)
