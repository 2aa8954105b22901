"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers never see a half-written file, and a failed write leaves the old file (if any) untouched.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(dst: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` onto ``dst``."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)  # mkstemp creates 0600; give the file the permissions a plain open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(dst: str | os.PathLike, payload: Any, strict: bool = False) -> None:
    """Atomically write ``payload`` as indented JSON (fsynced before the rename); ``strict``: a NaN/inf is a
    ``ValueError`` (nothing written) instead of a non-standard token."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, allow_nan=not strict)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(dst, write)


def lies_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """``path`` lies strictly inside ``folder``, both resolved (symlinks and ``..`` followed): the one test of
    the output-folder rule and of the paths a checkpoint stores."""
    return Path(os.path.realpath(folder)) in Path(os.path.realpath(path)).parents
