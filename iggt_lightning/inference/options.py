"""Export options: what the prediction writer and the plugins' export hooks read (``iggt predict --export-option
KEY=VALUE``, or ``--export_options`` with ``--config``), each declared once with its type, default, range and help.

The writer's own options are :data:`WRITER_OPTIONS`; a plugin declares its own in a class attribute
``export_options`` (a tuple of :class:`ExportOption`, e.g. the depth head's ``depth_png_scale``). The table of a run
is :func:`option_table` over its plugins, and :func:`resolve_export_options` checks what the user gave against it
(an unknown key, a wrong type or an out-of-range value is one :class:`ExportOptionError` naming the option and
what it expects) and fills in the defaults, before anything is predicted or written.
"""
from __future__ import annotations

import difflib
import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable

from ..ranges import Range
from .colmap import FORMATS as COLMAP_FORMATS

DEFAULT_COLMAP_POINTS = 100_000   # a COLMAP model of ~10 MB with tracks; more with --colmap-max-points

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


# the writer's options: the cloud's confidence filter, its source, the saved views and the COLMAP model
WRITER_OPTIONS = (
    ExportOption("conf_threshold", float, 5.0, "points kept by confidence: with conf_mode percentile the lowest "
                 "p % are dropped (0 <= p < 100), with absolute those below the value (--conf-threshold)"),
    ExportOption("conf_mode", str, "percentile", "how conf_threshold reads (--conf-mode)",
                 choices=("percentile", "absolute")),
    ExportOption("points_from", str, None, "the source of the point clouds, one the heads offer (depth, point, "
                 "...); null: the one they rank first (--points-from)", optional=True),
    ExportOption("save_images", bool, True, "write the input views under images/ (--no-images: false)"),
    ExportOption("colmap_format", str, "txt", "COLMAP model format (--colmap-format)", choices=COLMAP_FORMATS),
    ExportOption("colmap_max_points", int, DEFAULT_COLMAP_POINTS, "3D points of the COLMAP model, thinned by "
                 "voxels keeping the most confident (--colmap-max-points)", low=1),
    ExportOption("colmap_depth_tolerance", float, 0.03, "a track's visibility test: relative depth difference "
                 "to the view's own surface", low=0, high=1, low_open=True, high_open=True),
    ExportOption("colmap_ba", bool, False, "bundle-adjust the COLMAP model with pycolmap (--ba)"),
)


def option_table(plugins: Iterable[tuple[str, Any]] = ()) -> dict[str, tuple[ExportOption, str]]:
    """name -> (declaration, owner) of the writer's options and those of ``plugins`` ((name, class or instance));
    two owners declaring one name is an error."""
    table = {o.name: (o, "the writer") for o in WRITER_OPTIONS}
    for name, plugin in plugins:
        for opt in getattr(plugin, "export_options", ()):
            if opt.name in table and table[opt.name][0] is not opt:
                raise ExportOptionError(f"export option {opt.name} is declared by both {table[opt.name][1]} and "
                                        f"the plugin {name!r}; each option has one owner")
            table[opt.name] = (opt, f"the plugin {name!r}")
    return table


def registered_plugins() -> list[tuple[str, type]]:
    """(name, class) of every registered head and post-processor (their options, for ``--help``)."""
    from iggt_lightning.registry import available_heads, available_postprocessors

    return [*available_heads().items(), *available_postprocessors().items()]


def resolve_export_options(given: dict | None, plugins: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Every option of the run's table: ``given`` checked (and text parsed) against its declaration, the rest
    at their defaults. Raises :class:`ExportOptionError` naming the option and what it expects."""
    table = option_table(plugins)
    given = dict(given or {})
    for key in given:
        if key not in table:
            raise ExportOptionError(_unknown(key, table))
    values = {name: opt.parse(given[name]) if name in given else opt.default for name, (opt, _) in table.items()}
    _check_together(values)
    return values


def _unknown(key: Any, table: dict) -> str:
    close = difflib.get_close_matches(str(key), list(table), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"export option {key!r} is unknown{hint}; this run's export options are {sorted(table)}"


def _check_together(values: dict) -> None:
    """Constraints between options."""
    if values["conf_mode"] == "percentile" and not 0 <= values["conf_threshold"] < 100:
        raise ExportOptionError(f"export option conf_threshold: with conf_mode percentile expected a percentile "
                                f"in [0, 100); got {values['conf_threshold']!r}")


def describe_options(plugins: Iterable[tuple[str, Any]] = (), width: int = 100) -> str:
    """The table as text: one entry per option with its type, default, what it accepts, help and owner."""
    lines = []
    for name, (opt, owner) in sorted(option_table(plugins).items()):
        owned = "" if owner == "the writer" else f" [{owner.removeprefix('the ')}]"
        text = f"{name} ({TYPE_NAMES[opt.type]}, default {_show(opt.default)}; {opt.expected()}): {opt.help}{owned}"
        lines.append(textwrap.fill(text, width, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
