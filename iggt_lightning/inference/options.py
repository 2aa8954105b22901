"""Export options: what the prediction writer and the exporters read (``iggt predict --export-option KEY=VALUE``,
or ``--export_options`` with ``--config``), each declared once with its type, default, range and help (the typing:
:mod:`.option_types`).

The writer's own options are :data:`WRITER_OPTIONS`; an exporter declares its own in its options dataclass (e.g.
the depth maps' ``depth_png_scale``, :mod:`iggt_lightning.exporters`), and a plugin written before exporters in a
class attribute ``export_options`` (a tuple of :class:`ExportOption`). The table of a run is :func:`option_table`
over its plugins and the exporters they feed, and :func:`resolve_export_options` checks what the user gave against it
(an unknown key, a wrong type or an out-of-range value is one :class:`ExportOptionError` naming the option and
what it expects) and fills in the defaults, before anything is predicted or written.
"""
from __future__ import annotations

import difflib
import textwrap
from typing import Any, Iterable

from iggt_lightning.exporters import DEFAULT_COLMAP_POINTS, applicable_exporters, selected_exporters

from .option_types import TYPE_NAMES, ExportOption, ExportOptionError

# ExportOption and its errors live in .option_types (a leaf the exporters import) and are re-exported here
__all__ = ["DEFAULT_COLMAP_POINTS", "TYPE_NAMES", "WRITER_OPTIONS", "ExportOption", "ExportOptionError",
           "describe_options", "option_table", "registered_plugins", "resolve_export_options"]


# the writer's own options: the cloud's confidence filter and its source (the exporters' are theirs)
WRITER_OPTIONS = (
    ExportOption("conf_threshold", float, 5.0, "points kept by confidence: with conf_mode percentile the lowest "
                 "p % are dropped (0 <= p < 100), with absolute those below the value (--conf-threshold)"),
    ExportOption("conf_mode", str, "percentile", "how conf_threshold reads (--conf-mode)",
                 choices=("percentile", "absolute")),
    ExportOption("max_points", int, None, "the most points the cloud (points.ply, the GLBs, instances3d.json) "
                 "holds: the kept points thinned evenly; null: every kept point, or 2 000 000 in a windowed run "
                 "(--max-points)", optional=True, low=1),
    ExportOption("points_from", str, None, "the source of the point clouds, one the heads offer (depth, point, "
                 "...); null: the one they rank first (--points-from)", optional=True),
    ExportOption("exporters", str, None, "the exporters to run, comma-separated names (iggt heads list shows "
                 "them; e.g. ply,cameras_json,colmap); null: every exporter whose inputs the prediction has (--exporters)",
                 optional=True),
)


def option_table(plugins: Iterable[tuple[str, Any]] = ()) -> dict[str, tuple[ExportOption, str]]:
    """name -> (declaration, owner) of the writer's options, those of the exporters a run with ``plugins`` ((name,
    class or instance)) may use (:func:`~iggt_lightning.exporters.applicable_exporters`) and the plugins' own
    ``export_options`` (plugins written before exporters); two owners declaring one name is an error."""
    plugins = list(plugins)
    table = {o.name: (o, "the writer") for o in WRITER_OPTIONS}
    for exporter in applicable_exporters(plugins):
        for opt in exporter.option_declarations():
            if opt.name in table:
                raise ExportOptionError(f"export option {opt.name} is declared by both {table[opt.name][1]} and "
                                        f"the exporter {exporter.name!r}; each option has one owner")
            table[opt.name] = (opt, f"the exporter {exporter.name!r}")
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
    if values["exporters"] is not None:
        values["exporters"] = ",".join(selected_exporters(values["exporters"]))
        if "images" not in values["exporters"].split(",") and "save_images" in values:
            values["save_images"] = False     # no views under images/, so nothing may refer to them there
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
