"""The output folder of ``iggt predict``: it never touches an input, and nothing half-written survives.

* never an input (a photo, an input folder, a video, the checkpoint), never an ancestor of one, never inside
  one, never the current directory or one of its parents (:func:`check_output_folder`);
* ``overwrite`` replaces only a previous prediction, a folder with our ``manifest.json`` (:func:`check_existing`);
* the output is built in ``.<out>.partial-<pid>-h<host>-*`` and renamed into place; a replace moves the old
  output to ``.<out>.old-<pid>`` first (:func:`replace_dir`). Leftovers of dead processes are removed by the
  next run, and an ``.old-<pid>`` whose replacement never arrived is put back (:func:`find_leftovers`);
* the free space is checked against an estimate before inference (:func:`check_free_space`).

``o`` below is a :class:`~iggt_lightning.inference.predict.PredictOptions` (``out``, ``inputs``,
``checkpoint``, ``overwrite``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

from .images import is_video

MANIFEST_FORMAT = "iggt-lightning/prediction-v1"


class OutputFolderError(ValueError):
    """A refused output folder or write; the message names the path."""


def _warn(msg: str) -> None:
    print(f"iggt predict: warning: {msg}", file=sys.stderr, flush=True)


def _inside(path: Path, folder: Path) -> bool:
    """``path`` lies strictly inside ``folder`` (both resolved)."""
    return folder in path.parents


def overlap(out: Path, raw: str | os.PathLike) -> str | None:
    """How the (resolved) output folder ``out`` meets the path ``raw``: "is", "contains", "lies inside" or None."""
    real = Path(os.path.realpath(raw))
    if real == out:
        return "is"
    if _inside(real, out):
        return "contains"
    if _inside(out, real):
        return "lies inside"
    return None


def check_output_folder(o, paths: list[Path]) -> Path:
    """The output folder is never an input, never holds one, never lies in one, and never is the current
    directory or one of its parents. Returns it resolved (symlinks and ``..`` followed)."""
    out = Path(os.path.realpath(o.out))
    cwd = Path(os.path.realpath(os.getcwd()))
    if out == cwd or _inside(cwd, out):
        raise OutputFolderError(f"output directory {o.out!r} ({out}) is the current directory or one of its parents; "
                           "the output folder is built and replaced as a whole, so give a folder of its own, "
                           f"e.g. -o {os.path.join(o.out, 'prediction')}")
    items: list[tuple[str, str]] = []
    for raw in o.inputs:
        kind = "input folder" if Path(raw).is_dir() else "input video" if is_video(Path(raw)) else "input photo"
        items.append((kind, str(raw)))
    items += [("input video" if is_video(p) else "input photo", str(p)) for p in paths]
    items.append(("checkpoint", str(o.checkpoint)))
    for kind, raw in items:
        why = overlap(out, raw)
        if why is None:
            continue
        raise OutputFolderError(f"output directory {o.out} {why} the {kind} {raw}; the output folder is replaced as a "
                           "whole, so it must be a folder apart from every input (choose another -o)")
    return out


def is_prediction_folder(folder: Path) -> bool:
    """A folder ``iggt predict`` wrote: its ``manifest.json`` is ours."""
    try:
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(m, dict):
        return False
    return m.get("format") == MANIFEST_FORMAT or {"views", "files", "convention"} <= set(m)  # older manifests


def _pid_alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # PermissionError: another user's live process; anything else: keep it
        return True
    return True


def host_tag() -> str:
    """Names this machine in temporary folder names: a pid means something only on the host that made it."""
    import hashlib
    import socket

    return "h" + hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def find_leftovers(out: Path) -> tuple[list[Path], Path | None]:
    """Temporary siblings of ``out`` left by dead runs: (folders to remove, an ``.old-<pid>`` to put back).

    ``.<name>.partial-<pid>-*`` of a dead pid is an unfinished output: removed (unless its name says another
    host made it: ``.partial-<pid>-h<tag>-*``, a pid of a shared file system's other machine or container).
    ``.<name>.old-<pid>`` of a dead pid is the previous output moved aside by a replace: removed when ``out``
    exists (the new one arrived), put back when it does not (the run died between the two renames). Folders
    of live pids are never touched."""
    parent = out.parent
    name = re.escape(out.name)
    partial, old = re.compile(rf"\.{name}\.partial-(\d+)-(.+)"), re.compile(rf"\.{name}\.old-(\d+)")
    host = host_tag()
    remove, olds = [], []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return [], None
    for e in entries:
        m_part, m_old = partial.fullmatch(e.name), old.fullmatch(e.name)
        if not (m_part or m_old) or not e.is_dir(follow_symlinks=False):
            continue
        if m_part:
            tag = re.match(r"(h[0-9a-f]{8})-", m_part.group(2))
            if tag and tag.group(1) != host:
                continue
        if _pid_alive(int((m_part or m_old).group(1))):
            continue
        (remove if m_part else olds).append(Path(e.path))
    restore = None
    if olds and not os.path.lexists(out):
        olds.sort(key=lambda p: p.stat().st_mtime)
        restore = olds.pop()
    return remove + olds, restore


def check_existing(o, out: Path, restore: Path | None) -> bool:
    """Refuse an existing output unless ``overwrite`` and it is a previous prediction; True if it is replaced."""
    target = out if os.path.lexists(out) else restore
    if target is None:
        return False
    if not target.is_dir():
        raise OutputFolderError(f"output path {o.out} exists and is not a directory")
    where = "" if target == out else (f" (its previous contents are in {restore}, left by a run that died while "
                                      "replacing it)")
    if not o.overwrite:
        raise OutputFolderError(f"output directory {o.out} exists{where}; pass --overwrite to replace it")
    if not is_prediction_folder(target) and any(target.iterdir()):
        raise OutputFolderError(f"--overwrite: {o.out}{where} is not an iggt predict output (no manifest.json of ours), "
                           "so it is not replaced; remove it yourself or choose another folder")
    return True



def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(o, out: Path, need: int) -> int:
    """Refuse when the file system of ``out`` has less free space than ``need`` bytes; returns the free bytes."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = int(shutil.disk_usage(probe).free)
    except OSError:
        return -1
    if need > free:
        raise OutputFolderError(f"not enough free space for the output {o.out}: it needs about {human_size(need)} "
                           f"({need:,} bytes), and {probe} has {human_size(free)} ({free:,} bytes) free")
    return free



# ---------------------------------------------------------------------------------------------- leftovers
def clean_leftovers(plan) -> None:
    """Remove the temporary folders of dead runs and put back an output a dead run had moved aside."""
    for p in plan.remove:
        shutil.rmtree(p, ignore_errors=True)
    if plan.restore is not None and not os.path.lexists(plan.out):
        try:
            os.replace(plan.restore, plan.out)
            _warn(f"put {plan.out} back from {plan.restore.name}, left by a run that died while replacing it")
        except OSError as err:
            raise OutputFolderError(f"cannot put {plan.out} back from {plan.restore}: {err.strerror or err}") from err



def replace_dir(new: Path, dst: Path, o) -> None:
    if os.path.lexists(dst):
        if not o.overwrite:
            raise OutputFolderError(f"output directory {o.out} appeared during the run; pass --overwrite to replace it")
        if not dst.is_dir() or (not is_prediction_folder(dst) and any(dst.iterdir())):
            raise OutputFolderError(f"--overwrite: {o.out} changed during the run and is no longer an iggt predict "
                               "output, so it is not replaced")
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        if os.path.lexists(old):                # our own pid: a leftover of this process
            shutil.rmtree(old)
        os.replace(dst, old)
        try:
            os.replace(new, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)
