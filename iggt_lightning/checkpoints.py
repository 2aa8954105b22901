"""Checkpoint files: reading them as data, telling their format apart (ours, official IGGT / VGGT-1B, a Lightning
``.ckpt``), the trust checks on a stored config, loading weights into a model, saving and converting.

Files are read without unpickling code (``weights_only=True``) or from ``.safetensors``. The official key mapping
and the strict matching of keys live in :mod:`iggt_lightning.official_keys` (re-exported here); the training module
for a file is built by :meth:`iggt_lightning.module.IGGTLitModule.from_checkpoint_file`.

Our own format: a ``.safetensors`` file whose metadata holds ``format`` = ``iggt-lightning/v1`` and the
model ``config`` (JSON), or a ``.pt``/``.ckpt`` dict ``{"format", "config", "state_dict"}``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint_error import CheckpointError
from .fileio import atomic_write
from .model import PRESETS, IGGTModel
from .registry import check_plugin_entries

FORMAT = "iggt-lightning/v1"


def __getattr__(name: str):
    # OFFICIAL_PREFIXES (official prefix -> ours) and DROP_RULES ((rule name, regex on the official key, why it is
    # safe to drop)): built from the declarations when asked, so a head registered later is in them
    if name == "OFFICIAL_PREFIXES":
        return official_rules().prefixes
    if name == "DROP_RULES":
        return official_rules().drops
    if name == "load_module":
        raise AttributeError("iggt_lightning.checkpoints.load_module is now "
                             "iggt_lightning.module.IGGTLitModule.from_checkpoint_file")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from .official_keys import (OFFICIAL_PRESETS, OfficialRules, _listing, convert_official_state_dict,  # noqa: E402,F401
                            drop_rule, match_state_dict, official_kind, official_rules, rename_official_key,
                            rename_official_state_dict)


@dataclass
class LoadReport:
    """What :func:`load_state` did: tensors loaded, heads left freshly initialised, dropped heads skipped."""

    what: str
    kind: str                                   # "ours" or "official"
    loaded: int
    fresh: dict[str, list[str]] = field(default_factory=dict)
    ignored: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.what}: loaded {self.loaded} tensors ({'official' if self.kind == 'official' else 'our'} format)"
        if self.fresh:
            text += (f"; {sum(map(len, self.fresh.values()))} tensors of new head(s) {sorted(self.fresh)} "
                     "freshly initialised")
        if self.ignored:
            text += (f"; {sum(map(len, self.ignored.values()))} tensors of dropped head(s) {sorted(self.ignored)} "
                     "not loaded")
        return text


def load_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, official: bool = False,
               new_heads_ok: bool = False, drop_heads=(), what: str = "checkpoint", against: str = "the model"
               ) -> LoadReport:
    """The weight loader (``load_model``, ``load_weights`` and so ``model.init_checkpoint``): rename an official
    state dict, match it (:func:`match_state_dict`) and load exactly the matched tensors."""
    names = None
    if official:
        try:
            sd, names = rename_official_state_dict(sd)
        except CheckpointError as err:
            raise CheckpointError(f"{what}: {err}") from err
    out, fresh, ignored = match_state_dict(model, sd, new_heads_ok=new_heads_ok, drop_heads=drop_heads,
                                           file_names=names, what=what, against=against)
    missing, unexpected = model.load_state_dict(out, strict=False)
    left = {k for keys in fresh.values() for k in keys}
    # match_state_dict accounted for every key (BatchNorm does not report its num_batches_tracked as missing)
    if set(missing) - left or unexpected:
        raise RuntimeError(f"{what}: load_state_dict disagrees with the key matching: missing "
                           f"{_listing(set(missing) - left)}, unexpected {_listing(unexpected)}")
    return LoadReport(what, "official" if official else "ours", len(out), fresh, ignored)


def load_weights(model: torch.nn.Module, path: str | os.PathLike, *, new_heads_ok: bool = False, drop_heads=(),
                 what: str | None = None, against: str = "the model") -> LoadReport:
    """Load a file's weights into an already built ``model`` (``model.init_checkpoint``): our format, a
    Lightning ``.ckpt`` or an official IGGT/VGGT file. The file's stored config is never built (it is only
    data), so it cannot name code to run. See :func:`match_state_dict` for ``new_heads_ok`` / ``drop_heads``."""
    what = what or str(path)
    from .hub import resolve_checkpoint

    path = resolve_checkpoint(path, what)     # a Hub id or model folder -> its weights file (docs/hub.md)
    sd, meta = read_file(path, check_config=False)
    ours = meta.get("format") == FORMAT or (bool(sd) and all(k.startswith(("backbone.", "heads.")) for k in sd))
    if not ours:
        try:
            official_kind(sd)
        except CheckpointError as err:
            raise CheckpointError(f"{what}: neither {FORMAT} weights nor an official checkpoint: {err}") from err
    return load_state(model, sd, official=not ours, new_heads_ok=new_heads_ok, drop_heads=drop_heads, what=what,
                      against=against)


# ---------------------------------------------------------------------------- files
CONFIG_KEYS = ("backbone", "heads", "frames_chunk_size", "postprocess")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (flat, or under 'model'/'state_dict')")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _read_safetensors(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor | None], dict[str, str]]:
    """(state dict, metadata); ``tensors=False`` reads the header only (values None)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) if tensors else None for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({_one_line(err)}); it may be truncated "
                              "or not a checkpoint at all") from err
    return sd, meta


def _metadata_config(meta: dict[str, str], path: Path) -> Any:
    """The model config our .safetensors files keep as JSON in their metadata."""
    text = meta.get("config", "")
    if len(text) > 1_000_000:
        raise CheckpointError(f"{path}: its metadata 'config' is {len(text):,} characters; a model config is a few "
                              "hundred")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its metadata 'config' is not valid JSON ({err})") from err
    except RecursionError:
        raise CheckpointError(f"{path}: its metadata 'config' is JSON nested too deep to be a model config") from None


def _official_kind_of(keys, path: str | os.PathLike) -> str:
    try:
        return official_kind(keys)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:300] + " ..."


def load_tensor_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` of a .pt/.pth/.ckpt without unpickling code (``weights_only=True``), every failure one
    :class:`CheckpointError` naming the file. Also used for Lightning's ``--ckpt_path``."""
    path = _existing_file(path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); expected a PyTorch checkpoint")
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... depending on the damage
        text = _one_line(err)
        if not _looks_like_torch_file(path):
            why = f"it is not a PyTorch checkpoint (neither a zip archive nor a pickle; {size:,} bytes)"
        elif "weights_only" in text or "Unsupported global" in text or "Unpickl" in type(err).__name__:
            why = ("it contains Python objects other than tensors and plain containers; loading those could run "
                   "code, so it is refused")
        elif "zip" in text.lower() or isinstance(err, EOFError) or "central directory" in text:
            why = f"it is truncated or not a PyTorch checkpoint ({size:,} bytes)"
        else:
            why = "it cannot be read as a tensor-only checkpoint"
        raise CheckpointError(f"{path}: {why} [{type(err).__name__}: {text}]") from err


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a checkpoint file (.safetensors, .pt, .pth or .ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format) or a pickle stream (the legacy format)."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_file(path: str | os.PathLike, trust_code: bool = False, check_config: bool = True, mmap: bool = False
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (state dict, metadata). Metadata has ``format``/``config`` for our own files, else is empty.

    The stored config is validated as data (:func:`check_stored_config`) before anyone builds from it;
    ``check_config=False`` is for callers that use the weights only (the config is then returned as read);
    ``mmap=True`` maps a .pt/.ckpt's tensors instead of reading them (for a look at keys and config)."""
    def checked(config: Any) -> Any:
        return check_stored_config(config, path, trust_code) if check_config else config

    path = _existing_file(path)
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
        if meta.get("format") == FORMAT:
            return sd, {"format": FORMAT, "config": checked(_metadata_config(meta, path))}
        return _unwrap(sd, path), {}
    obj = load_tensor_file(path, mmap=mmap)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(f"{path}: an {FORMAT} file without a 'state_dict' mapping")
        return obj["state_dict"], {"format": FORMAT, "config": checked(obj.get("config"))}
    if isinstance(obj, dict) and "hyper_parameters" in obj and "state_dict" in obj:  # a Lightning checkpoint
        from .stored_state import STATE_DICT, check

        check(obj["state_dict"], STATE_DICT, path, "state_dict")
        sd = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        cfg = obj.get("iggt_model_config", (obj.get("hyper_parameters") or {}).get("model_config"))
        if cfg is None:
            return sd, {}
        return sd, {"format": FORMAT, "config": checked(cfg)}
    return _unwrap(obj, path), {}


def check_stored_config(config: Any, path: str | os.PathLike, trust_code: bool = False) -> dict:
    """A model config read from ``path``, checked as data: known fields only, backbone arguments that
    :class:`Aggregator` takes, heads that are registered (dotted paths only with ``trust_code``)."""
    import inspect

    from .backbone import Aggregator
    from .postprocessor import move_postprocessors_out_of_heads

    from .stored_state import MODEL_CONFIG, check

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the stored model config must be a mapping; got {type(config).__name__}")
    check(config, MODEL_CONFIG, path, "config")   # plain data, bounded sizes, no code (plugins checked below)
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise CheckpointError(f"{path}: unknown field(s) {unknown} in the stored model config; expected "
                              f"{list(CONFIG_KEYS)}")
    backbone = config.get("backbone") or {}
    if not isinstance(backbone, dict):
        raise CheckpointError(f"{path}: config.backbone must be a mapping; got {backbone!r}")
    accepted = [n for n in inspect.signature(Aggregator.__init__).parameters if n != "self"]
    bad = sorted(set(backbone) - set(accepted))
    if bad:
        raise CheckpointError(f"{path}: config.backbone has unknown argument(s) {bad}; the backbone accepts {accepted}")
    heads = config.get("heads") or {}
    if not isinstance(heads, dict):
        raise CheckpointError(f"{path}: config.heads must be a mapping of head name -> arguments; got {heads!r}")
    heads, moved = move_postprocessors_out_of_heads(heads, f"checkpoint {path} (written by an older version)")
    if moved:
        config = {**config, "heads": heads, "postprocess": {**moved, **(config.get("postprocess") or {})}}
    post = config.get("postprocess")
    if post is not None and not isinstance(post, dict):
        raise CheckpointError(f"{path}: config.postprocess must be a mapping of name -> arguments; got {post!r}")
    check_plugin_entries(post or {}, "postprocess", f"checkpoint {path}", "config.postprocess", trust_code)
    check_plugin_entries(heads, "heads", f"checkpoint {path}", "config.heads", trust_code)
    chunk = config.get("frames_chunk_size")
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise CheckpointError(f"{path}: config.frames_chunk_size must be a positive integer or null; got {chunk!r}")
    return config


def size_check_stored_config(config: dict, sd: dict, path: str | os.PathLike, trust_code: bool = False) -> None:
    """Size the network a (checked) stored config builds on the meta device against the file's tensors, before
    anything is allocated: a small file cannot make us allocate a huge network."""
    from .stored_state import model_size_check, state_numel

    network = {k: v for k, v in config.items() if k != "postprocess"}
    model_size_check(lambda: IGGTModel(**network, trust_code=trust_code, source=f"checkpoint {path}"),
                     state_numel(sd), str(path), "its stored model config",
                     match=lambda skeleton: match_state_dict(skeleton, sd, what=str(path),
                                                             against="the model its own stored config builds"))


def build_from_config(config: dict, path: str | os.PathLike, trust_code: bool = False) -> IGGTModel:
    """IGGTModel from a stored config; construction errors name the file."""
    try:
        network = {k: v for k, v in config.items() if k != "postprocess"}
        return IGGTModel(**network, trust_code=trust_code, source=f"checkpoint {path}")
    except CheckpointError:
        raise
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: its stored model config cannot be built: {err}") from err


def inspect_checkpoint(path: str | os.PathLike, preset: str | None = None, trust_code: bool = False) -> dict:
    """The model config a checkpoint builds (its stored config, checked, or the official preset's), without
    reading the weights: a .safetensors header, a memory-mapped .pt/.ckpt. Errors name the file."""
    path = Path(path)
    if preset is not None and preset not in PRESETS:
        raise CheckpointError(f"preset {preset!r} is not a preset; expected one of {sorted(PRESETS)}")
    if path.suffix == ".safetensors" and path.is_file():
        header, meta = _read_safetensors(path, tensors=False)
        if meta.get("format") == FORMAT:
            return check_stored_config(_metadata_config(meta, path), path, trust_code)
        keys = list(header)
    else:
        sd, meta = read_file(path, trust_code=trust_code, mmap=True)
        if meta.get("format") == FORMAT:
            return meta["config"]
        keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module."):] for k in keys]
    kind = preset or _official_kind_of(keys, path)
    return {"backbone": dict(PRESETS[kind]["backbone"]), "heads": dict(PRESETS[kind]["heads"])}


def check_official_shapes(sd: dict[str, torch.Tensor], kind: str, path: str | os.PathLike) -> None:
    """Validate an official state dict against the preset's keys and shapes on the meta device (no memory,
    a few seconds) before the real model is built."""
    with torch.device("meta"):
        skeleton = IGGTModel.from_preset(kind)
    try:
        convert_official_state_dict(sd, skeleton)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err


def read_for_building(path: str | os.PathLike, preset: str | None, trust_code: bool):
    """-> (state dict, our stored config or None, official kind or None) of a file to build a model from (here and
    ``IGGTLitModule.from_checkpoint_file``): the stored config checked as data and sized against the tensors, an
    official file's shapes checked against its preset, both on the meta device."""
    from .hub import resolve_checkpoint

    sd, meta = read_file(resolve_checkpoint(path), trust_code=trust_code)   # a Hub id or model folder: docs/hub.md
    if meta.get("format") == FORMAT:
        size_check_stored_config(meta["config"], sd, path, trust_code)
        return sd, meta["config"], None
    kind = preset or _official_kind_of(sd, path)
    check_official_shapes(sd, kind, path)
    return sd, None, kind


def load_model(path: str | os.PathLike, preset: str | None = None, map_location: str | torch.device = "cpu",
               trust_code: bool = False) -> IGGTModel:
    """Build and load a model from our format or an official IGGT/VGGT checkpoint (strict).

    Nothing in the file runs: tensors are read without unpickling code and the stored config may name only
    registered heads, unless ``trust_code=True`` (the CLI's ``--trust-checkpoint-code``)."""
    sd, config, kind = read_for_building(path, preset, trust_code)
    if config is not None:
        model = build_from_config(config, path, trust_code)
        load_state(model, sd, what=str(path), against="the model its own stored config builds")
        return model.to(map_location)
    model = IGGTModel.from_preset(kind)
    load_state(model, sd, official=True, what=str(path))
    return model.to(map_location)


def save_model(model: IGGTModel, dst: str | os.PathLike, postprocess: dict | None = None) -> None:
    """Write ``model`` in our format (safetensors if the suffix says so, else a tensor-only .pt); ``postprocess``:
    the post-processing to store with it (default: none stored, so the defaults for its heads run)."""
    dst = Path(dst)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    config = dict(model.config, **({"postprocess": postprocess} if postprocess is not None else {}))
    if dst.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(dst, lambda p: save_file(sd, p, metadata={"format": FORMAT, "config": json.dumps(config)}))
    else:
        atomic_write(dst, lambda p: torch.save({"format": FORMAT, "config": config, "state_dict": sd}, p))


def convert(src: str | os.PathLike, dst: str | os.PathLike, preset: str | None = None,
            trust_code: bool = False) -> IGGTModel:
    """``iggt convert``: official (or our) checkpoint -> our format. The output never replaces the input."""
    from .hub import resolve_checkpoint

    src = resolve_checkpoint(src)   # a Hub id or model folder -> its weights file, so the check below sees it
    if Path(dst).exists() and Path(src).exists() and os.path.samefile(src, dst):
        raise CheckpointError(f"the output {dst} is the input checkpoint itself; choose another path")
    if Path(dst).suffix not in (".safetensors", ".pt", ".pth"):
        raise CheckpointError(f"output {dst}: expected a .safetensors or .pt path")
    model = load_model(src, preset, trust_code=trust_code)
    save_model(model, dst)
    return model
