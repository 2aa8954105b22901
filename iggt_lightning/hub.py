"""Checkpoints by Hugging Face Hub id: ``OWNER/NAME[@REVISION][:FILE]``, and model folders (docs/hub.md).

:func:`resolve_checkpoint` turns what a user gives as a checkpoint into one local weights file:

1. an existing local path always wins: a file is returned as is, a folder (a model folder ``iggt publish`` wrote,
   a downloaded Hub snapshot) gives its one weight file;
2. otherwise ``OWNER/NAME[@REVISION][:FILE]`` is a Hub model repo, resolved through ``huggingface_hub`` (its
   cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` / ``hf auth login``, the revision): ``FILE`` names the weights file,
   else the repo's one weight file is used (the official VGGT repos hold the same weights twice: we take
   ``model.safetensors``);
3. anything else is a local path that does not exist, left to the caller's "not found".

A string that starts with ``.``, ``/`` or ``~``, has more than one ``/``, or ends in a weights suffix without
``@``/``:`` is always a path. Every refusal is one :class:`~iggt_lightning.checkpoints.CheckpointError` line
naming the id or folder and what to do.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .checkpoint_error import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt")

# Official repos that hold one set of weights in several files: the file we read, first found first. Read from
# public sources, never downloaded here (docs/hub.md): facebook/VGGT-1B has model.safetensors + config.json
# (PyTorchModelHubMixin, used by VGGT.from_pretrained) and model.pt (the README's torch.hub URL); the
# commercial-licence checkpoint (gated) has the same layout. safetensors first: no pickle, a header to inspect.
# lifuguan/IGGT_official (the model link of the IGGT README) is left to the general rule: its file list could not
# be read, so its one weight file is used, or the error lists them. The loader tells the preset from the keys
# (iggt-large with part_head.*, vggt-large without), whatever the file is called.
KNOWN_REPOS = {
    "facebook/vggt-1b": ("model.safetensors", "model.pt"),
    "facebook/vggt-1b-commercial": ("model.safetensors", "model.pt"),
}

_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{0,95}[A-Za-z0-9_])"
                     r"(?:@(?P<revision>[^:@\s]+))?(?::(?P<filename>[^\s]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``OWNER/NAME[@REVISION][:FILE]``."""

    repo: str
    revision: str | None = None
    filename: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f":{self.filename}" if self.filename
                                                                             else "")


def parse_hub_id(text: str) -> HubRef | None:
    """``OWNER/NAME[@REVISION][:FILE]`` -> :class:`HubRef`; None for anything that reads as a path."""
    if not isinstance(text, str) or text.startswith((".", "/", "~")) or "\\" in text:
        return None
    m = _HUB_ID.fullmatch(text)
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        return None
    if m["revision"] is None and m["filename"] is None and m["repo"].lower().endswith(WEIGHT_SUFFIXES):
        return None                      # runs/last.ckpt: a missing file, not a repo called last.ckpt
    for part in (m["revision"], m["filename"]):
        if part is not None and (part.startswith("/") or ".." in PurePosixPath(part).parts):
            return None                  # a name that would leave the repo's folder in the cache
    return HubRef(m["repo"], m["revision"], m["filename"])


def resolve_checkpoint(spec: str | os.PathLike, what: str | None = None) -> Path:
    """A checkpoint argument -> the local weights file to read (see the module docstring); ``what`` starts the
    messages (default: the argument itself). A :class:`~pathlib.Path` is always a path."""
    what = what or str(spec)
    path = Path(spec)
    if path.is_dir():
        return path / pick_weights(_folder_files(path), f"{what}: the folder",
                                   lambda name: f"give the file's path, e.g. {path / name}",
                                   none=f"{what} is a folder; expected a checkpoint file (.safetensors, .pt, .pth or "
                                   ".ckpt) or a model folder holding one (model.safetensors, as `iggt publish` "
                                   "writes, or a Hub snapshot); it holds none")
    if path.exists() or not isinstance(spec, str):
        return path
    ref = parse_hub_id(spec)
    return path if ref is None else _resolve_hub(ref, what)


def pick_weights(files, where: str, how_to_pick, prefer=(), none: str | None = None) -> str:
    """The one weight file among ``files`` (paths relative to a folder or repo, ``/``-separated); ``prefer``: the
    names to take, in order, when there are several. ``how_to_pick(name)`` says how to name one in the errors;
    ``none`` is the message when there is no weight file (default: ``where`` holds none)."""
    top = sorted(f for f in files if "/" not in f and _is_weights(f))
    for name in prefer:
        if name in top:
            return name
    if len(top) == 1:
        return top[0]
    if top:
        raise CheckpointError(f"{where} holds several weight files ({', '.join(top)}); pick one: "
                              f"{how_to_pick(top[0])}")
    nested = sorted(f for f in files if _is_weights(f))
    inside = f" at its top level (in subfolders: {_listing(nested)}; to use one, {how_to_pick(nested[0])})" \
        if nested else ""
    raise CheckpointError((none + inside) if none else
                          f"{where} holds no weight file ({', '.join(WEIGHT_SUFFIXES)}){inside}; expected a model "
                          "repo with one, such as `iggt publish` writes (model.safetensors)")


def _is_weights(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.lower().endswith(WEIGHT_SUFFIXES) and not base.startswith(".")   # not a half-written .tmp


def _listing(names, limit: int = 12) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def _folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


# ---------------------------------------------------------------------------- the Hub
def _hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401 (a lazily loaded submodule: read below as hh.constants)
    except ImportError:
        return None
    return huggingface_hub


def _offline(hh) -> bool:
    return bool(hh.constants.HF_HUB_OFFLINE)     # what the library read from HF_HUB_OFFLINE when imported


def _resolve_hub(ref: HubRef, what: str) -> Path:
    hh = _hub()
    if hh is None:
        raise CheckpointError(f"{what}: no such local file or folder, and reading it as a Hugging Face Hub id "
                              "needs huggingface_hub: pip install huggingface_hub")
    files, cached_only, where = _repo_files(hh, ref, what)
    if ref.filename is None:
        weights = pick_weights(files, where, lambda name: f"name it after a colon, e.g. "
                               f"{HubRef(ref.repo, ref.revision, name)}",
                               KNOWN_REPOS.get(ref.repo.lower(), ()))
        others = [f for f in files if "/" not in f and _is_weights(f) and f != weights]
        if others:   # a known repo's second copy of the weights: say which file is read
            print(f"{what}: using {weights} (the repo also holds {', '.join(others)}, the same weights in another "
                  f"format; name another after a colon: {ref.repo}:FILE)", file=sys.stderr)
    elif ref.filename in files:
        weights = ref.filename
    else:
        found = sorted(f for f in files if _is_weights(f))
        raise CheckpointError(f"{where} has no file {ref.filename!r}; its weight files: "
                              f"{_listing(found) if found else 'none'}"
                              + (f" (name one after a colon, e.g. {HubRef(ref.repo, ref.revision, found[0])})"
                                 if found else ""))
    return _download(hh, ref, weights, cached_only, what)


def _repo_files(hh, ref: HubRef, what: str) -> tuple[list[str], bool, str]:
    """(the repo's files at the revision, whether only the cache may be used, how to name it in messages)."""
    named = f"{what}: {ref.repo}" + (f"@{ref.revision}" if ref.revision else "")
    if _offline(hh):
        return _cached_files(hh, ref, what, "HF_HUB_OFFLINE is set"), True, f"{named} (in the local cache)"
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return sorted(hh.HfApi().list_repo_files(ref.repo, revision=ref.revision)), False, named
    except GatedRepoError as err:
        raise CheckpointError(f"{what}: {ref.repo} is a gated repo; accept its terms at "
                              f"https://huggingface.co/{ref.repo} and log in (`hf auth login` or HF_TOKEN)") from err
    except RepositoryNotFoundError as err:
        raise CheckpointError(f"{what}: no such local file or folder, and no model repo {ref.repo} on the Hugging "
                              "Face Hub (or it is private: log in with `hf auth login` or HF_TOKEN)") from err
    except RevisionNotFoundError as err:
        raise CheckpointError(f"{what}: {ref.repo} has no revision {ref.revision!r} on the Hub; give a branch, tag "
                              "or commit of the repo (e.g. @main)") from err
    except Exception as err:  # noqa: BLE001 (the transport's errors differ between versions): use the cache
        why = f"the Hub could not be reached ({type(err).__name__}: {_one_line(err)})"
        return _cached_files(hh, ref, what, why), True, f"{named} (in the local cache)"


def _cached_files(hh, ref: HubRef, what: str, why: str) -> list[str]:
    """The files of the cached snapshot of ``ref`` (huggingface_hub's cache layout), read without the network."""
    cache = Path(hh.constants.HF_HUB_CACHE)
    storage = cache / ("models--" + ref.repo.replace("/", "--"))
    fix = "download it once online (e.g. `hf download " + ref.repo + "`), point HF_HUB_CACHE or HF_HOME at a cache " \
          "that has it, or give a local path"
    if not storage.is_dir():
        raise CheckpointError(f"{what}: no such local file or folder, and {ref.repo} is not in the Hugging Face "
                              f"cache ({cache}) while {why}; {fix}")
    revision = ref.revision or "main"
    commit = revision if _COMMIT.fullmatch(revision) else _cached_ref(storage, revision)
    snapshot = storage / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        refs = sorted(p.relative_to(storage / "refs").as_posix() for p in (storage / "refs").rglob("*") if p.is_file())
        have = f"cached revisions: {', '.join(refs)}" if refs else "no revision of it is cached"
        raise CheckpointError(f"{what}: revision {revision!r} of {ref.repo} is not in the Hugging Face cache ({have}) "
                              f"while {why}; use a cached revision or download this one online")
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _cached_ref(storage: Path, revision: str) -> str | None:
    """The commit a cached branch/tag points at (``refs/<revision>`` holds its hash), None when not cached."""
    ref = storage / "refs" / revision
    if not ref.is_file():
        return None
    commit = ref.read_text(errors="replace")[:100].strip()
    if not _COMMIT.fullmatch(commit):
        raise CheckpointError(f"{ref}: a Hugging Face cache ref must hold a 40-hex commit hash; got {commit[:50]!r} "
                              "(a damaged cache: delete the file and download again)")
    return commit


def _download(hh, ref: HubRef, filename: str, cached_only: bool, what: str) -> Path:
    """``hf_hub_download`` of one file (from the cache when ``cached_only``); failures are one line."""
    try:
        return Path(hh.hf_hub_download(ref.repo, filename, revision=ref.revision, local_files_only=cached_only))
    except Exception as err:  # noqa: BLE001 (network, disk, server: each named in one line)
        raise CheckpointError(f"{what}: could not get {filename} of {ref.repo}"
                              + (f"@{ref.revision}" if ref.revision else "")
                              + f" ({type(err).__name__}: {_one_line(err)})") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + " ..."
