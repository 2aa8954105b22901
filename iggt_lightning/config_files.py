"""Configs by name: ``iggt fit --config synthetic_tiny`` (or ``--config eval/scannet_table1``) reads the config
shipped with the package, from any folder.

The wheel installs the repository's ``configs/`` as ``iggt_lightning/configs`` (setup.cfg); in a clone (editable
install, PYTHONPATH) they are read where they are, ``<repo>/configs``. ``--config VALUE``:

* a file that exists is that file (a path always wins over a name);
* else the name of a packaged config (its path under ``configs/`` without ``.yaml``) is that config's file, so
  relative paths inside it resolve beside it, as for any config file;
* YAML/JSON text (what jsonargparse also takes after ``--config``) is passed on as text;
* anything else is an error that lists the packaged names.
"""
from __future__ import annotations

import re
from pathlib import Path

from jsonargparse import ActionConfigFile

from .registry import source_checkout

SUFFIX = ".yaml"
# a value made only of these could be a file or a config name; anything else (spaces, braces, colons, newlines)
# is config text for jsonargparse
_NAME_LIKE = re.compile(r"[\w.\-/]+")


class ConfigNameError(ValueError):
    """``--config`` names neither a file nor a packaged config."""


def packaged_configs_dir() -> Path | None:
    """``iggt_lightning/configs`` of an installed wheel, else the clone's ``configs/``; None if neither exists."""
    installed = Path(__file__).resolve().parent / "configs"
    if installed.is_dir():
        return installed
    root = source_checkout()
    return root / "configs" if root is not None and (root / "configs").is_dir() else None


def packaged_configs() -> dict[str, Path]:
    """Name (``synthetic_tiny``, ``eval/scannet_table1``) -> file, for every packaged config."""
    folder = packaged_configs_dir()
    if folder is None:
        return {}
    files = (p for p in folder.rglob(f"*{SUFFIX}") if p.is_file())
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(files)}


def resolve_config(value):
    """What ``--config value`` reads: the value itself when it is a file or config text, else the packaged
    config of that name (its absolute path). Raises :class:`ConfigNameError` listing the packaged names."""
    if not isinstance(value, str) or Path(value).is_file() or not _NAME_LIKE.fullmatch(value):
        return value
    found = packaged_configs()
    if value in found:
        return str(found[value])
    hint = ""
    if value.endswith(SUFFIX) and value[:-len(SUFFIX)].removeprefix("configs/") in found:
        hint = f" (a name is given without folder and {SUFFIX}: {value[:-len(SUFFIX)].removeprefix('configs/')})"
    listing = ", ".join(found) if found else "none (no configs folder is installed)"
    raise ConfigNameError(f"--config {value}: not a file, nor the name of a packaged config{hint}; "
                          f"packaged configs: {listing}")


class ConfigFileOrName(ActionConfigFile):
    """jsonargparse's ``--config`` action, also taking a packaged config's name."""

    def __call__(self, parser, cfg, values, option_string=None):
        super().__call__(parser, cfg, resolve_config(values), option_string)
