"""Official IGGT / VGGT-1B checkpoints <-> this framework, with strict key accounting.

Every official key is either renamed by a prefix rule (``OFFICIAL_PREFIXES``) or dropped by a named
rule (``DROP_RULES``); a missing key, a leftover key or a shape mismatch is an error listing the
keys. The rules are not written here: their owners declare them (:func:`official_rules`), the model for the
backbone and each registered head for its own keys. Files are read without unpickling code
(``weights_only=True``) or from ``.safetensors``. The training module for a file is built by
:meth:`iggt_lightning.module.IGGTLitModule.from_checkpoint_file`.

Our own format: a ``.safetensors`` file whose metadata holds ``format`` = ``iggt-lightning/v1`` and the
model ``config`` (JSON), or a ``.pt``/``.ckpt`` dict ``{"format", "config", "state_dict"}``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint_error import CheckpointError
from .fileio import atomic_write
from .model import PRESETS, IGGTModel
from .registry import available_heads, check_plugin_entries, qualified_name

FORMAT = "iggt-lightning/v1"
# The presets an official file can be, smallest first (official_kind picks the first that holds its heads).
OFFICIAL_PRESETS = ("vggt-large", "iggt-large")


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


def _listing(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---------------------------------------------------------------------------- the official key mapping
@dataclass(frozen=True)
class OfficialRules:
    """The official key mapping as its owners declare it (``official_prefixes`` / ``official_drop_rules`` of
    :class:`~iggt_lightning.model.IGGTModel` and of each registered head, whose paths are under ``heads.<name>.``).
    Module internals keep the official names; only prefixes change."""

    prefixes: tuple[tuple[str, str], ...]       # official prefix -> our prefix; no prefix starts another
    drops: tuple[tuple[str, str, str], ...]     # (rule name, regex on the official key, why it is safe to drop)
    heads: dict[str, str]                       # official prefix -> the head it belongs to (the model's own: none)


_rules_cache: list = [None, None]               # (the registered heads it was built from, the rules)


def _declared(cls: type, where: str, under: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """``cls``'s official prefixes (their paths put under ``under``) and drop rules, checked; errors name ``where``."""
    prefixes, drops = getattr(cls, "official_prefixes", ()), getattr(cls, "official_drop_rules", ())

    def strings(value, n: int) -> bool:
        return isinstance(value, (tuple, list)) and all(
            isinstance(v, (tuple, list)) and len(v) == n and all(isinstance(x, str) for x in v) for v in value)

    if not strings(prefixes, 2) or any(not s.endswith(".") or (d and not d.endswith(".")) for s, d in prefixes):
        raise CheckpointError(f"{where} declares official_prefixes = {prefixes!r}; expected (official prefix, path "
                              "under it) pairs, the prefix ending in '.' and the path '' or ending in '.', e.g. "
                              "(('sky_head.', ''),)")
    if not strings(drops, 3):
        raise CheckpointError(f"{where} declares official_drop_rules = {drops!r}; expected (rule name, regular "
                              "expression on the official key, why it is safe to drop) triples of strings")
    anchors = ["^" + re.escape(src) for src, _ in prefixes]
    for name, pattern, _ in drops:
        if not pattern.startswith(tuple(anchors)):
            raise CheckpointError(f"{where}: drop rule {name!r} ({pattern!r}) must start with one of its own "
                                  f"official prefixes, anchored and escaped: {anchors}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise CheckpointError(f"{where}: drop rule {name!r} is not a valid regular expression ({err})") from err
    return [(src, under + dst) for src, dst in prefixes], [tuple(d) for d in drops]


def official_rules() -> OfficialRules:
    """The official key mapping, from the model's declarations (the backbone's) and those of every registered head
    (a third-party head declares its own the same way); rebuilt when the registered heads change. Two owners of
    one prefix, overlapping prefixes or a rule name used twice are errors naming both."""
    heads = available_heads()
    if _rules_cache[0] == heads:
        return _rules_cache[1]
    prefixes, drops, owner, head_of, rule_owner, seen = [], [], {}, {}, {}, set()
    for name, cls in [(None, IGGTModel), *heads.items()]:
        if cls in seen:                          # one class registered under two names: its first
            continue
        seen.add(cls)
        where = f"{'the model' if name is None else f'head {name!r}'} ({qualified_name(cls)})"
        own, rules = _declared(cls, where, "" if name is None else f"heads.{name}.")
        for src, _ in own:
            other = next((p for p in owner if p.startswith(src) or src.startswith(p)), None)
            if other is not None:
                raise CheckpointError(f"official key prefix {src!r} of {where} overlaps {other!r} of {owner[other]}; "
                                      "every official key must have one owner")
            owner[src] = where
            if name is not None:
                head_of[src] = name
        for rule in rules:
            if rule[0] in rule_owner:
                raise CheckpointError(f"drop rule {rule[0]!r} is declared by {rule_owner[rule[0]]} and {where}")
            rule_owner[rule[0]] = where
        prefixes += own
        drops += rules
    _rules_cache[:] = [heads, OfficialRules(tuple(prefixes), tuple(drops), head_of)]
    return _rules_cache[1]


def drop_rule(key: str, rules: OfficialRules | None = None) -> str | None:
    """The name of the drop rule that removes an official key, or None."""
    for name, pattern, _ in (rules or official_rules()).drops:
        if re.search(pattern, key):
            return name
    return None


def rename_official_key(key: str, rules: OfficialRules | None = None) -> str | None:
    """Our name for an official key, or None when a drop rule removes it."""
    rules = rules or official_rules()
    if drop_rule(key, rules):
        return None
    for src, dst in rules.prefixes:
        if key.startswith(src):
            return dst + key[len(src):]
    raise CheckpointError(f"official key {key!r} matches no mapping rule (expected a prefix among "
                          f"{[p for p, _ in rules.prefixes]})")


def official_kind(keys) -> str:
    """'iggt-large' or 'vggt-large' from the official key set; an error for anything else. An official file has
    the model's own (backbone) keys and keys of some head; its preset is the first of :data:`OFFICIAL_PRESETS`
    whose heads include every head the file has keys of (whose a key is, the heads' official prefixes say)."""
    keys = set(keys)
    rules = official_rules()
    own = tuple(src for src, _ in rules.prefixes if src not in rules.heads)
    present = {head for src, head in rules.heads.items() if any(k.startswith(src) for k in keys)}
    if not present or not any(k.startswith(own) for k in keys):
        sample = _listing(sorted(keys)[:8], 8)
        wanted = "/".join(f"'{p}*'" for p in own)
        heads = ", ".join(f"'{p}*'" for p in rules.heads)
        raise CheckpointError(f"this is not an official IGGT/VGGT checkpoint (it needs {wanted} keys and a head's: "
                              f"{heads}); its keys look like: {sample}")
    return min(OFFICIAL_PRESETS, key=lambda p: (len(present - set(PRESETS[p]["heads"])), len(PRESETS[p]["heads"])))


def rename_official_state_dict(official: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (the state dict under our key names, our key -> its official name); keys a drop rule removes are left
    out, a key no rule covers is an error."""
    rules = official_rules()
    renamed, names = {}, {}
    for key, value in official.items():
        new = rename_official_key(key, rules)
        if new is not None:
            renamed[new], names[new] = value, key
    return renamed, names


def _head_of(key: str) -> str | None:
    """``heads.<name>.…`` -> ``<name>``; None for the backbone and anything else."""
    parts = key.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "heads" else None


def match_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], *, new_heads_ok: bool = False,
                     drop_heads=(), file_names: dict[str, str] | None = None, what: str = "checkpoint",
                     against: str = "the model"
                     ) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, list[str]]]:
    """Match a state dict (our key names) to ``model``'s keys and shapes, without loading anything.

    -> (the tensors to load, new head -> its keys left to their fresh initialisation, dropped head -> the file's
    keys of it that are not loaded). Strict by default: every model key must be in the file with its shape and
    every file key must have a place in the model. ``new_heads_ok``: a head of the model that the file has no
    key of at all is new and keeps its initialisation (a head only partly in the file is still an error).
    ``drop_heads``: heads the configuration leaves out on purpose; their file keys are skipped. A head the file
    has but the model does not is otherwise an error that says to list it there. ``file_names`` gives the
    file's own key names (official checkpoints) for the messages; ``what`` names the file in them and
    ``against`` the model."""
    ours = model.state_dict()
    model_heads = set(getattr(model, "heads", {}))
    named = (lambda k: f"{file_names[k]} (-> {k})") if file_names else (lambda k: k)
    file_heads = {h for h in map(_head_of, sd) if h is not None}
    ignored = {h: sorted(k for k in sd if _head_of(k) == h) for h in sorted(file_heads & set(drop_heads) - model_heads)}
    out: dict[str, torch.Tensor] = {}
    unexpected, mismatched, unconfigured = [], [], {}
    for key, value in sd.items():
        head = _head_of(key)
        if head in ignored:
            continue
        if key not in ours:
            if new_heads_ok and head is not None and head not in model_heads:
                unconfigured.setdefault(head, []).append(key)
            else:
                unexpected.append(named(key))
        elif tuple(ours[key].shape) != tuple(value.shape):
            mismatched.append(f"{file_names[key] if file_names else key}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(ours[key].shape)}")
        else:
            out[key] = value
    fresh = {}
    if new_heads_ok:
        for head in model_heads - file_heads:
            keys = [k for k in ours if _head_of(k) == head]
            if keys:
                fresh[head] = keys
    missing = [k for k in ours if k not in out and _head_of(k) not in fresh]
    problems = []
    if missing:
        partial = sorted({h for h in map(_head_of, missing) if h in file_heads}) if new_heads_ok else []
        problems.append(f"{len(missing)} model key(s) missing from the checkpoint: {_listing(missing)}"
                        + (f" (head(s) {partial} are only partly in the file)" if partial else ""))
    if unconfigured:
        problems.append(f"the checkpoint has head(s) {sorted(unconfigured)} "
                        f"({sum(map(len, unconfigured.values()))} tensors) that the configuration does not build; "
                        "to leave them out, list them in model.drop_heads")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint key(s) the model does not have: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not match {against}:\n  " + "\n  ".join(problems))
    return out, fresh, ignored


def convert_official_state_dict(official: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s keys; raises :class:`CheckpointError` on any mismatch."""
    renamed, names = rename_official_state_dict(official)
    return match_state_dict(model, renamed, file_names=names)[0]


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
