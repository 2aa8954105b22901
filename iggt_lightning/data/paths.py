"""Paths and datasets: what a dataset reads, and where a path read from one of its files may lead.

* :func:`in_dataset` joins a path read from a dataset file (a ``cameras.json`` ``file_name``, an annotation's
  ``filepath``, ...) onto the dataset folder, and refuses it when it leads outside that folder. Every reader
  routes such paths through it, so a dataset file can never make a reader open (and a prediction copy) a file
  elsewhere.
* :func:`input_roots_of` names the folders and files a dataset reads (``input_roots()`` of every dataset class;
  wrappers give the union of their members'), so that writers keep their outputs apart from all of them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from .frames import DatasetError


def in_dataset(root: str | os.PathLike, value, file: str | os.PathLike, field: str,
               base: str | os.PathLike | None = None) -> Path:
    """``base / value`` (``base`` defaults to ``root``) for a path ``value`` read from the dataset file ``file``
    (its ``field``); a :class:`DatasetError` naming the file, field and value unless it stays inside ``root``.

    The test is on the path as written (``..`` and absolute paths), and the path returned has no ``..`` left,
    so what is opened is what was checked. Symlinks the dataset's owner placed in the folder are followed."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)) or not str(value) \
            or "\x00" in str(value):
        raise DatasetError(f"{file}: {field} must be a path inside the dataset folder {root}; got {value!r}")
    top = Path(os.path.abspath(root))
    joined = Path(os.path.normpath(Path(os.path.abspath(base if base is not None else root)) / str(value)))
    if top not in joined.parents:
        raise DatasetError(f"{file}: {field} {str(value)!r} points outside the dataset folder {root}; paths read "
                           "from a dataset file must stay inside it")
    return Path(root) / joined.relative_to(top)


def input_roots_of(dataset) -> list[Path]:
    """The folders and files ``dataset`` reads: its ``input_roots()``; for torch's wrappers (``ConcatDataset``'s
    ``datasets``, ``Subset``'s ``dataset``) their members'; else its ``root``. A dataset that tells none of
    these gets a warning naming its class (a writer then cannot keep its output apart from the data)."""
    method = getattr(dataset, "input_roots", None)
    if callable(method):
        return _unique(Path(p) for p in method())
    members = getattr(dataset, "datasets", None)
    if members is None and getattr(dataset, "dataset", None) is not None:
        members = [dataset.dataset]
    if members is not None:
        return _unique(p for m in members for p in input_roots_of(m))
    root = getattr(dataset, "root", None)
    if root is not None:
        return [Path(root)]
    warnings.warn(f"{type(dataset).__name__} does not say which files it reads (no input_roots() or root): outputs "
                  "cannot be checked against them, so keep them apart from its data yourself", stacklevel=2)
    return []


def _unique(paths) -> list[Path]:
    return list(dict.fromkeys(paths))
