"""Outputs never touch an input, and nothing half-written survives.

* ONE rule for every writer (``iggt predict`` on photos or a dataset, ``iggt data check --json``, ``iggt
  test --results``, ``iggt convert``): an output is never an input, never inside one and never holds one
  (:func:`refuse_overlap`); ``iggt predict``'s folder is also never the current directory or one of its parents
  (:func:`check_output_folder`);
* ``overwrite`` replaces only a previous prediction, and deletes only the files its ``manifest.json`` lists: a
  folder holding any other file, or whose manifest lists a path outside it, is refused (:func:`check_existing`,
  :func:`check_replaceable`);
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
from pathlib import Path, PurePosixPath

from ..fileio import lies_inside
from .images import is_video

MANIFEST_FORMAT = "iggt-lightning/prediction-v1"


class OutputFolderError(ValueError):
    """A refused output folder or write; the message names the path."""


def _warn(msg: str) -> None:
    print(f"iggt predict: warning: {msg}", file=sys.stderr, flush=True)


def overlap(out: Path, raw: str | os.PathLike) -> str | None:
    """How the (resolved) output folder ``out`` meets the path ``raw``: "is", "contains", "lies inside" or None."""
    real = Path(os.path.realpath(raw))
    if real == out:
        return "is"
    if lies_inside(real, out):
        return "contains"
    if lies_inside(out, real):
        return "lies inside"
    return None


def refuse_overlap(out: str | os.PathLike | None, inputs, what: str = "output") -> Path | None:
    """The input-vs-output rule of every writer: the output ``out`` (a file or a folder) may not be, lie inside or
    contain any of ``inputs`` (paths, or ``(kind, path)`` pairs naming what each is), symlinks and ``..``
    followed. ``what`` names the output in the message (``--results``, ``output directory``). Returns ``out``
    resolved (None when ``out`` is empty: no output asked for); raises :class:`OutputFolderError` naming both."""
    if out is None or str(out) == "":
        return None
    real = Path(os.path.realpath(out))
    for item in inputs:
        kind, raw = item if isinstance(item, tuple) else (None, item)
        if raw is None or str(raw) == "":
            continue
        why = overlap(real, raw)
        if why is None:
            continue
        same = why == "is" and str(raw) == str(out)      # no need to name the path twice
        if kind:
            named = f"the {kind} itself" if same else f"the {kind} {raw}"
        else:
            named = "one of this run's inputs" if same else f"one of this run's inputs, {raw}"
        raise OutputFolderError(f"{what} {out} {why} {named}; an output is kept apart from every input (never the "
                                "input, inside it or around it): choose another path")
    return real


def check_output_folder(o, paths: list[Path], checkpoint: bool = True) -> Path:
    """The output folder is never an input, never holds one, never lies in one (:func:`refuse_overlap`), and
    never is the current directory or one of its parents. Returns it resolved (symlinks and ``..`` followed).
    ``checkpoint=False``: leave the checkpoint out (a Hub id not resolved to its file yet)."""
    out = Path(os.path.realpath(o.out))
    cwd = Path(os.path.realpath(os.getcwd()))
    if out == cwd or lies_inside(cwd, out):
        raise OutputFolderError(f"output directory {o.out!r} ({out}) is the current directory or one of its parents; "
                           "the output folder is built and replaced as a whole, so give a folder of its own, "
                           f"e.g. -o {os.path.join(o.out, 'prediction')}")
    items: list[tuple[str, str]] = []
    for raw in o.inputs:
        kind = "input folder" if Path(raw).is_dir() else "input video" if is_video(Path(raw)) else "input photo"
        items.append((kind, str(raw)))
    items += [("input video" if is_video(p) else "input photo", str(p)) for p in paths]
    if checkpoint:
        items.append(("checkpoint", str(o.checkpoint)))
    refuse_overlap(o.out, items, "output directory")
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
    """Refuse an existing output unless ``overwrite`` and :func:`check_replaceable`; True if it is replaced."""
    target = out if os.path.lexists(out) else restore
    if target is None:
        return False
    if not target.is_dir():
        raise OutputFolderError(f"output path {o.out} exists and is not a directory")
    where = "" if target == out else (f" (its previous contents are in {restore}, left by a run that died while "
                                      "replacing it)")
    if not o.overwrite:
        raise OutputFolderError(f"output directory {o.out} exists{where}; pass --overwrite to replace it")
    check_replaceable(target, f"{o.out}{where}")
    return True


# ------------------------------------------------------------------------------------ what --overwrite deletes
def folder_files(folder: Path) -> list[str]:
    """Every entry under ``folder`` that is not a directory (files, symlinks, ...), as relative POSIX paths; a
    symlink to a directory is an entry, never walked into. An unreadable subfolder is an ``OSError``."""
    found = []

    def fail(err: OSError) -> None:
        raise err

    for top, dirs, files in os.walk(folder, onerror=fail):
        rel = Path(top).relative_to(folder)
        found += [(rel / d).as_posix() for d in dirs if os.path.islink(os.path.join(top, d))]
        found += [(rel / f).as_posix() for f in files]
    return sorted(found)


def manifest_files(folder: Path, display: str | os.PathLike) -> set[str]:
    """The files the ``manifest.json`` of the prediction ``folder`` lists (with itself): relative paths inside it,
    else :class:`OutputFolderError` (a manifest naming a path outside its folder is never trusted)."""
    try:
        files = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError) as err:
        raise OutputFolderError(f"--overwrite: cannot read {display}/manifest.json ({err}); the folder is not "
                                "replaced") from err
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise OutputFolderError(f"--overwrite: {display}/manifest.json: 'files' must be a list of relative paths; "
                                "the folder is not replaced")
    listed = {"manifest.json"}
    for f in files:
        rel = PurePosixPath(f)
        if not f or "\x00" in f or os.path.isabs(f) or ".." in rel.parts or rel == PurePosixPath("."):
            raise OutputFolderError(f"--overwrite: {display}/manifest.json lists {f!r}, a path outside its folder; "
                                    "the folder is not replaced")
        listed.add(rel.as_posix())
    return listed


def check_replaceable(folder: Path, display: str | os.PathLike) -> set[str]:
    """What ``--overwrite`` may delete in the existing ``folder``: nothing when it is empty; else it must be a
    previous prediction (our ``manifest.json``) holding only the files its manifest lists, or it is refused,
    naming the others. Returns the listed files."""
    if os.path.islink(folder):
        raise OutputFolderError(f"--overwrite: {display} is a symbolic link, so it is not replaced; give the folder "
                                "it points to, or another one")
    if not any(folder.iterdir()):
        return set()
    if not is_prediction_folder(folder):
        raise OutputFolderError(f"--overwrite: {display} is not an iggt predict output (no manifest.json of ours), "
                                "so it is not replaced; remove it yourself or choose another folder")
    listed = manifest_files(folder, display)
    try:
        others = [f for f in folder_files(folder) if f not in listed]
    except OSError as err:
        raise OutputFolderError(f"--overwrite: cannot list {display}: {err.strerror or err}: {err.filename}; the "
                                "folder is not replaced") from err
    if others:
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        raise OutputFolderError(f"--overwrite: {display} holds {len(others)} file(s) the previous prediction did not "
                                f"write (not in its manifest.json): {', '.join(others[:5])}{more}; --overwrite deletes "
                                "only a prediction's own files: move them out or choose another folder")
    return listed


def remove_listed(folder: Path, listed: set[str]) -> list[str]:
    """Delete the files of ``listed`` found in ``folder`` (symlinks unlinked, never followed), then its emptied
    subfolders and itself; ``manifest.json`` goes last, and stays (with the folder) if anything unlisted is left.
    Returns what is left."""
    entries = folder_files(folder)
    left = [f for f in entries if f not in listed]
    for f in entries:
        if f in listed and (f != "manifest.json" or not left):
            os.unlink(folder / f)
    for top in sorted((t for t, _, _ in os.walk(folder)), key=lambda t: -len(Path(t).parts)):   # deepest first
        try:
            os.rmdir(top)
        except OSError:                     # not empty: what is left (or appeared meanwhile) stays
            pass
    if left or not os.path.lexists(folder):
        return left
    return folder_files(folder)             # files that appeared meanwhile


def discard_old(old: Path) -> None:
    """Delete a previous output moved aside by a replace (``.<out>.old-<pid>``): only its manifest's files; one
    without a manifest is an emptied (or half-deleted) folder of ours, removed whole. What its manifest does not
    list is kept, with a warning."""
    if not os.path.lexists(old / "manifest.json"):
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        left = remove_listed(old, manifest_files(old, old))
    except (OSError, OutputFolderError) as err:
        _warn(f"kept {old}: {err}")
        return
    if left:
        _warn(f"kept {old}: it holds file(s) no prediction wrote: {', '.join(left[:5])}")


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
    old = re.compile(rf"\.{re.escape(plan.out.name)}\.old-\d+")
    for p in plan.remove:
        if old.fullmatch(p.name):
            discard_old(p)
        else:
            shutil.rmtree(p, ignore_errors=True)
    if plan.restore is not None and not os.path.lexists(plan.out):
        try:
            os.replace(plan.restore, plan.out)
            _warn(f"put {plan.out} back from {plan.restore.name}, left by a run that died while replacing it")
        except OSError as err:
            raise OutputFolderError(f"cannot put {plan.out} back from {plan.restore}: {err.strerror or err}") from err



def replace_dir(new: Path, dst: Path, o) -> None:
    """Rename the finished ``new`` to ``dst``; an existing ``dst`` (with ``o.overwrite``, checked again: it may
    have changed during the run) is moved aside first and then loses only its manifest's files."""
    if not os.path.lexists(dst):
        os.replace(new, dst)
        return
    if not o.overwrite:
        raise OutputFolderError(f"output directory {o.out} appeared during the run; pass --overwrite to replace it")
    if not dst.is_dir():
        raise OutputFolderError(f"--overwrite: {o.out} changed during the run and is no longer an iggt predict "
                                "output, so it is not replaced")
    check_replaceable(dst, o.out)
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if os.path.lexists(old):                # our own pid: a leftover of this process
        discard_old(old)
    os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    discard_old(old)
