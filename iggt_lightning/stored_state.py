"""Stored state is data: one schema for everything a checkpoint file holds, and one walker that checks it.

A Lightning ``.ckpt`` carries much more than weights: the module's hyper-parameters (which LightningCLI would
re-parse as constructor arguments), our model config, loop counters, callback state (ModelCheckpoint keeps file
paths it later *deletes*), optimizer and scheduler state, RNG states and logger versions (used as folder names).
Each of those is a way in for a hostile file, so nothing of it reaches Lightning, jsonargparse or our code before
:func:`check_checkpoint` has walked it against :data:`CHECKPOINT`:

- only plain data: ``None``/bool/int/float/str, lists/tuples, mappings with string keys and tensors where the
  schema has them; no ``class_path``/``init_args``/``__path__`` key (nor such a word inside a string) anywhere
  except the heads and post-processors a registered-plugin check covers;
- known fields with their types and ranges (a field the schema does not know is an error where the writer is ours);
- bounded sizes: nesting depth, string length, items per list or mapping, integers;
- every failure is one :class:`StoredStateError` line ``FILE: FIELD: what was expected``.

Paths a file stores (ModelCheckpoint's) are re-rooted by :func:`reroot_checkpoint_paths`: kept only if they
resolve inside this run's checkpoint folder.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import torch

from .checkpoint_error import CheckpointError
from .model import HEAD_PRECISIONS
from .fileio import lies_inside
from .ranges import Range

# Sizes no honest checkpoint comes near; they bound what a file can make us allocate or loop over.
MAX_DEPTH = 32
MAX_STRING = 4096
MAX_ITEMS = 1_000_000          # entries of one list / mapping (a state dict of a 1.3 B model has ~2 k)
MAX_INT = 2 ** 62
MAX_MODEL_INT = 2 ** 16        # widths, counts, sizes in a model config
MAX_MODEL_DEPTH = 1024         # blocks in a stack (the official models have 24)
# words that make jsonargparse import and call a class, anywhere they appear
CODE_KEYS = ("class_path", "init_args", "__path__", "dict_kwargs")
_CODE_WORDS = re.compile("|".join(map(re.escape, CODE_KEYS)))
NAME = r"[A-Za-z_][A-Za-z0-9_]{0,127}"


class StoredStateError(CheckpointError):
    """A field of a stored file that is not the data the schema describes; the message names file and field."""


@dataclass
class Ctx:
    file: str
    plugin_check: Callable[[str, str, dict], None] | None = None   # (field, entry path, mapping) -> raises
    trusted_freeze: frozenset = frozenset()                         # freeze regexes the user's own config gives

    def fail(self, path: str, what: str) -> StoredStateError:
        shown = path or "(top level)"
        return StoredStateError(f"{self.file}: {shown}: {what}")


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor {tuple(value.shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


# ----------------------------------------------------------------------------- schema nodes
class Schema:
    what = "a value"

    def check(self, value: Any, path: str, ctx: Ctx, depth: int) -> None:
        raise NotImplementedError


class Int(Schema):
    def __init__(self, lo: int | None = None, hi: int = MAX_INT) -> None:
        self.lo, self.hi = lo, hi
        self.what = "an integer" + (f" in [{lo}, {hi}]" if lo is not None else f" <= {hi}")

    def check(self, value, path, ctx, depth):
        if not isinstance(value, int) or isinstance(value, bool) or value > self.hi or \
                (self.lo is not None and value < self.lo) or value < -MAX_INT:
            raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")


class Float(Schema):
    """A finite number (an int is accepted), optionally bounded (the options' :class:`~iggt_lightning.ranges.Range`)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> None:
        self.range = Range(lo, hi, lo_open)
        self.what = "a finite number" + self.range.text()

    def check(self, value, path, ctx, depth):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and self.range.holds(value)):
            raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")


class Bool(Schema):
    what = "true or false"

    def check(self, value, path, ctx, depth):
        if not isinstance(value, bool):
            raise ctx.fail(path, f"expected true or false; got {_describe(value)}")


class Null(Schema):
    what = "null"

    def check(self, value, path, ctx, depth):
        if value is not None:
            raise ctx.fail(path, f"expected null; got {_describe(value)}")


class Str(Schema):
    """A string, bounded, matching ``pattern`` (fully) when given; never one naming code (``class_path`` ...)."""

    def __init__(self, pattern: str | None = None, what: str | None = None, max_len: int = MAX_STRING,
                 choices: Callable[[], Any] | None = None) -> None:
        self.rx = re.compile(pattern) if pattern else None
        self.max_len, self.choices = max_len, choices
        self.what = what or (f"a string matching {pattern}" if pattern else f"a string of at most {max_len} characters")

    def check(self, value, path, ctx, depth):
        if not isinstance(value, str):
            raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")
        if len(value) > self.max_len:
            raise ctx.fail(path, f"expected {self.what}; got a string of {len(value):,} characters")
        if _CODE_WORDS.search(value):
            raise ctx.fail(path, f"a string naming code ({', '.join(CODE_KEYS)}) is not data; got {value[:60]!r}")
        if self.rx is not None and not self.rx.fullmatch(value):
            raise ctx.fail(path, f"expected {self.what}; got {value[:60]!r}")
        if self.choices is not None:
            allowed = sorted(self.choices())
            if value not in allowed:
                raise ctx.fail(path, f"expected one of {allowed}; got {value[:60]!r}")


class Tensor(Schema):
    def __init__(self, dtype: torch.dtype | None = None, shape: tuple | None = None, max_dim: int | None = None) -> None:
        self.dtype, self.shape, self.max_dim = dtype, shape, max_dim
        self.what = "a tensor" + (f" of {dtype}" if dtype else "") + (f" of shape {shape}" if shape else "")

    def check(self, value, path, ctx, depth):
        if not isinstance(value, torch.Tensor):
            raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")
        if (self.dtype is not None and value.dtype != self.dtype) or \
                (self.shape is not None and tuple(value.shape) != self.shape) or \
                (self.max_dim is not None and value.dim() > self.max_dim):
            raise ctx.fail(path, f"expected {self.what}; got a {value.dtype} tensor of shape {tuple(value.shape)}")


class OneOf(Schema):
    def __init__(self, *options: Schema) -> None:
        self.options = options
        self.what = " or ".join(o.what for o in options)

    def check(self, value, path, ctx, depth):
        errors = []
        for option in self.options:
            try:
                option.check(value, path, ctx, depth)
                return
            except StoredStateError as err:
                errors.append(err)
        # the error of the option of the value's own kind says most (a bad dict inside a dict-or-null field)
        for option, err in zip(self.options, errors):
            if _same_kind(option, value):
                raise err
        raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")


def Opt(schema: Schema) -> Schema:
    return OneOf(Null(), schema)


def _same_kind(schema: Schema, value: Any) -> bool:
    kinds = {Record: dict, MapOf: dict, ListOf: (list, tuple), TupleOf: (list, tuple), Tensor: torch.Tensor,
             Str: str, Plain: object, PluginMap: dict, ModelArgs: dict, Arguments: dict, Counters: object}
    return any(isinstance(schema, s) and isinstance(value, t) for s, t in kinds.items())


def _container(value, path, ctx, depth, kinds, what):
    if depth > MAX_DEPTH:
        raise ctx.fail(path, f"nested deeper than {MAX_DEPTH} levels")
    if not isinstance(value, kinds):
        raise ctx.fail(path, f"expected {what}; got {_describe(value)}")
    if len(value) > MAX_ITEMS:
        raise ctx.fail(path, f"expected {what} of at most {MAX_ITEMS:,} items; got {len(value):,}")


class ListOf(Schema):
    def __init__(self, item: Schema, max_len: int = MAX_ITEMS, min_len: int = 0) -> None:
        self.item, self.max_len, self.min_len = item, max_len, min_len
        self.what = f"a list of {item.what}"

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, (list, tuple), self.what)
        if not self.min_len <= len(value) <= self.max_len:
            raise ctx.fail(path, f"expected {self.what} of {self.min_len} to {self.max_len} items; got {len(value)}")
        for i, v in enumerate(value):
            self.item.check(v, _join(path, i), ctx, depth + 1)


class TupleOf(Schema):
    def __init__(self, *items: Schema) -> None:
        self.items = items
        self.what = f"a list of {len(items)} items"

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, (list, tuple), self.what)
        if len(value) != len(self.items):
            raise ctx.fail(path, f"expected {self.what}; got {len(value)}")
        for i, (s, v) in enumerate(zip(self.items, value)):
            s.check(v, _join(path, i), ctx, depth + 1)


class MapOf(Schema):
    """A mapping whose keys match ``key`` (a regex on strings, or ``int`` keys) and values ``value``."""

    def __init__(self, value: Schema, key: str | type = NAME, max_len: int = MAX_ITEMS) -> None:
        self.value, self.max_len = value, max_len
        self.key = key if key is int else re.compile(key)
        self.what = f"a mapping of {value.what}"

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, dict, self.what)
        if len(value) > self.max_len:
            raise ctx.fail(path, f"expected {self.what} of at most {self.max_len} entries; got {len(value)}")
        for k, v in value.items():
            sub = _join(path, k if isinstance(k, str) else str(k))
            if self.key is int:
                if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_INT:
                    raise ctx.fail(sub, f"expected an integer key; got {_describe(k)}")
            elif not isinstance(k, str) or len(k) > 1024 or not self.key.fullmatch(k) or _CODE_WORDS.search(k):
                raise ctx.fail(sub, f"unexpected key {str(k)[:60]!r} (expected a name matching {self.key.pattern})")
            self.value.check(v, sub, ctx, depth + 1)


class Record(Schema):
    """A mapping with known fields; ``required`` must be there; ``extra`` checks unknown fields (None: refused)."""

    def __init__(self, fields: dict[str, Schema], required: tuple[str, ...] = (), extra: Schema | None = None,
                 what: str = "a mapping") -> None:
        self.fields, self.required, self.extra, self.what = fields, required, extra, what

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, dict, self.what)
        missing = [k for k in self.required if k not in value]
        if missing:
            raise ctx.fail(_join(path, missing[0]), "missing")
        # the known fields first: what a file says it is (a model class) explains more than what it adds
        for k, v in sorted(value.items(), key=lambda kv: kv[0] not in self.fields):
            if not isinstance(k, str):
                raise ctx.fail(path, f"unexpected non-string key {_describe(k)}")
            sub = _join(path, k)
            schema = self.fields.get(k, self.extra)
            if schema is None:
                raise ctx.fail(sub, f"unknown field; expected one of {sorted(self.fields)}")
            if k not in self.fields and (_CODE_WORDS.search(k) or len(k) > 1024):
                raise ctx.fail(sub, f"unexpected key {k[:60]!r}")
            schema.check(v, sub, ctx, depth + 1)


class Plain(Schema):
    """Any plain data (JSON types, tuples, and tensors when ``tensors``): the type of fields whose content the
    plugin that reads them checks (loss and metric options, a third-party callback's state). Still no code."""

    def __init__(self, tensors: bool = False) -> None:
        self.tensors = tensors
        self.what = "plain data (numbers, strings, lists, mappings" + (", tensors)" if tensors else ")")

    def check(self, value, path, ctx, depth):
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            return Int().check(value, path, ctx, depth)
        if isinstance(value, float):
            return Float().check(value, path, ctx, depth)
        if isinstance(value, str):
            return Str().check(value, path, ctx, depth)
        if isinstance(value, torch.Tensor) and self.tensors:
            return
        if isinstance(value, (list, tuple)):
            _container(value, path, ctx, depth, (list, tuple), self.what)
            for i, v in enumerate(value):
                self.check(v, _join(path, i), ctx, depth + 1)
            return
        if isinstance(value, dict):
            _container(value, path, ctx, depth, dict, self.what)
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise ctx.fail(path, f"unexpected key {_describe(k)}")
                sub = _join(path, k if isinstance(k, str) else str(k))
                if isinstance(k, str) and (k in CODE_KEYS or _CODE_WORDS.search(k) or len(k) > 1024):
                    raise ctx.fail(sub, "a key naming code is not data (only registered plugins may be named, "
                                        "in heads/postprocess)")
                self.check(v, sub, ctx, depth + 1)
            return
        raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")


class PluginMap(Schema):
    """``heads`` / ``postprocess``: name -> null or a mapping of arguments, optionally naming its class by
    ``class_path`` (+ ``init_args``); the class must pass ``ctx.plugin_check`` (a registered plugin, unless the
    user trusts the file)."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.what = f"a mapping of {field} name -> arguments or null"

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, dict, self.what)
        for name, spec in value.items():
            sub = _join(path, str(name))
            if not isinstance(name, str) or not re.fullmatch(NAME, name):
                raise ctx.fail(sub, f"expected a plugin name matching {NAME}; got {_describe(name)}")
            if spec is None:
                continue
            if not isinstance(spec, dict):
                raise ctx.fail(sub, f"expected a mapping of arguments or null; got {_describe(spec)}")
            args = dict(spec)
            target = args.pop("class_path", None)
            init = args.pop("init_args", {})
            if target is not None:
                Str(r"[A-Za-z_][\w.]{0,255}", "a dotted class name").check(target, _join(sub, "class_path"), ctx, depth)
                if not isinstance(init, dict):
                    raise ctx.fail(_join(sub, "init_args"), f"expected a mapping; got {_describe(init)}")
            elif "init_args" in spec:
                raise ctx.fail(_join(sub, "init_args"), "init_args without class_path")
            Plain().check(init, _join(sub, "init_args"), ctx, depth + 1)
            Plain().check(args, sub, ctx, depth)
            if ctx.plugin_check is not None:
                ctx.plugin_check(self.field, sub, {name: spec})
            cls = self.registered(str(target or name))
            if cls is not None:   # a registered plugin's arguments are typed by its __init__
                Arguments(cls.__init__, sizes=self.sizes).check(init if target else args, sub, ctx, depth + 1)

    sizes = False

    def registered(self, name: str):
        from .registry import POSTPROCESSORS, registered_head

        return POSTPROCESSORS.registered(name) if self.field == "postprocess" else registered_head(name)


class Arguments(Schema):
    """The keyword arguments of ``fn`` (a class's ``__init__``, a plugin's ``build_metrics``), typed by its
    annotations: an unknown name or a value of the wrong type is an error naming the field. Integers are bounded
    as sizes when ``sizes`` (model arguments); unannotated or ``Any`` parameters take plain data."""

    what = "a mapping of arguments"

    def __init__(self, fn: Callable, sizes: bool = False) -> None:
        self.fn, self.sizes = fn, sizes

    def fields(self) -> dict[str, Schema]:
        import inspect
        import typing

        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # noqa: BLE001 (an annotation that does not evaluate: fall back to plain data)
            hints = {}
        out = {}
        for name, param in inspect.signature(self.fn).parameters.items():
            if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            out[name] = annotation_schema(hints.get(name, Any), name if self.sizes else None)
        return out

    def check(self, value, path, ctx, depth):
        import inspect

        Plain().check(value, path, ctx, depth)
        if not isinstance(value, dict):
            raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")
        open_ended = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())
        fields = self.fields()
        for k, v in value.items():
            if k in fields:
                fields[k].check(v, _join(path, k), ctx, depth + 1)
            elif not open_ended:
                raise ctx.fail(_join(path, k), f"unknown argument; {getattr(self.fn, '__qualname__', self.fn)} "
                                               f"takes {sorted(fields)}")


def annotation_schema(hint: Any, size_name: str | None = None) -> Schema:
    """A schema from a type annotation: int, float, bool, str, X | None, list/tuple[X, ...], dict[str, X]; anything
    else (Any, classes, unions of several) is plain data. ``size_name``: integers are model sizes (bounded)."""
    import types
    import typing

    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return Bool()
    if hint is int:
        return _model_int(size_name) if size_name is not None else Int()
    if hint is float:
        return Float()
    if hint is str:
        return Str()
    if hint is type(None):
        return Null()
    if origin in (typing.Union, types.UnionType):
        options = [annotation_schema(p, size_name) for p in params]
        return OneOf(*options)
    if origin in (list, tuple) or hint in (list, tuple):
        item = params[0] if params and (origin is list or (len(params) == 2 and params[1] is Ellipsis)) else None
        if origin is tuple and params and params[-1] is not Ellipsis:
            return TupleOf(*(annotation_schema(p, size_name) for p in params))
        return ListOf(annotation_schema(item, size_name) if item is not None else Plain())
    if origin is dict or hint is dict:
        return MapOf(annotation_schema(params[1], size_name) if len(params) == 2 else Plain(), key=r"[^\x00]{1,256}")
    return Plain()


# ----------------------------------------------------------------------------- the schemas
def _module_class() -> str:
    # by name: module.py checks its own arguments with this module, so importing it here would be a circle
    # (tests/test_import_graph.py); a checkpoint the CLI wrote names the class by this path
    return "iggt_lightning.module.IGGTLitModule"


def _preset_names():
    from .model import PRESETS

    return PRESETS


def _model_int(key: str) -> Schema:
    return Int(0, MAX_MODEL_DEPTH if "depth" in key else MAX_MODEL_INT)


class ModelArgs(Schema):
    """A backbone's or head's arguments: plain data whose integers are bounded as sizes (a file cannot ask for a
    16384-wide, 10^9-deep network before the meta-device size check sees it)."""

    what = "a mapping of model arguments"

    def check(self, value, path, ctx, depth):
        Plain().check(value, path, ctx, depth)
        self._ints(value, path, ctx, depth, "")

    def _ints(self, value, path, ctx, depth, key):
        if isinstance(value, int) and not isinstance(value, bool):
            _model_int(key).check(value, path, ctx, depth)
        elif isinstance(value, dict):
            for k, v in value.items():
                self._ints(v, _join(path, str(k)), ctx, depth + 1, str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self._ints(v, _join(path, i), ctx, depth + 1, key)


class ModelPluginMap(PluginMap):
    """A model's heads: integers bounded as sizes."""

    sizes = True

    def check(self, value, path, ctx, depth):
        super().check(value, path, ctx, depth)
        ModelArgs()._ints(value, path, ctx, depth, "")


class BackboneArgs(ModelArgs):
    def check(self, value, path, ctx, depth):
        from .backbone import Aggregator

        super().check(value, path, ctx, depth)
        Arguments(Aggregator.__init__, sizes=True).check(value, path, ctx, depth)


# A freeze entry from a file: a module or parameter name, optionally anchored, with escaped dots. Without
# quantifiers, groups or alternation Python's regex search is linear-time in practice (a file's regex is not run
# otherwise: ``^([a-z_.0-9]+)+X$`` hangs the matcher).
FREEZE_FROM_FILE = r"\^?(?:[A-Za-z0-9_]|\\\.|\.)+\$?"


class Freeze(Str):
    def __init__(self) -> None:
        super().__init__(FREEZE_FROM_FILE, "a module or parameter name (a file's freeze list holds no regular "
                                           "expression; repeat it in your own config's model.freeze to use it)", 512)

    def check(self, value, path, ctx, depth):
        if isinstance(value, str) and value in ctx.trusted_freeze:
            return
        super().check(value, path, ctx, depth)

HYPER_PARAMETERS = Record({
    "preset": Opt(Str(choices=_preset_names, what="a preset name")),
    "backbone": Opt(BackboneArgs()),
    "heads": Opt(ModelPluginMap("heads")),
    "drop_heads": Opt(ListOf(Str(NAME, "a head name"))),
    "postprocess": Opt(PluginMap("postprocess")),
    "drop_postprocess": Opt(ListOf(Str(NAME, "a post-processor name"))),
    "frames_chunk_size": Opt(Int(1, MAX_MODEL_INT)),
    "loss_weights": Opt(MapOf(Float(0.0))),
    "loss_options": Opt(MapOf(MapOf(Plain()))),
    "lr": Float(0.0, lo_open=True),
    "backbone_lr": Opt(Float(0.0, lo_open=True)),
    "weight_decay": Float(0.0),
    "warmup_steps": Int(0),
    "freeze": Opt(ListOf(Freeze(), max_len=4096)),
    "init_checkpoint": Opt(Str()),
    "metric_options": Opt(MapOf(MapOf(Plain()))),
    "log_images_every_n_steps": Int(0),
    "head_precision": Opt(Str(choices=lambda: list(HEAD_PRECISIONS), what="a head precision")),
    # what LightningCLI's save_hyperparameters adds
    "_instantiator": Opt(Str(r"[\w.]+", "a dotted name")),
    "_class_path": Str(choices=lambda: [_module_class()], what="the module class"),
}, what="the module's hyper-parameters")

MODEL_CONFIG = Record({
    "backbone": Opt(BackboneArgs()),
    "heads": Opt(ModelPluginMap("heads")),
    "frames_chunk_size": Opt(Int(1, MAX_MODEL_INT)),
    "postprocess": Opt(PluginMap("postprocess")),
}, what="the stored model config")

PLAIN_NAME = r"(?!\.\.?$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"      # a file or folder name, never . or ..


class Counters(Schema):
    """Lightning's loop state: nested mappings of non-negative integers, booleans, null (and the training loaders'
    states as a list)."""

    what = "loop counters (integers, booleans, null)"

    def check(self, value, path, ctx, depth):
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int):
            return Int(0).check(value, path, ctx, depth)
        if isinstance(value, dict):
            _container(value, path, ctx, depth, dict, self.what)
            for k, v in value.items():
                if not isinstance(k, str) or not re.fullmatch(r"[\w.]{1,128}", k) or _CODE_WORDS.search(k):
                    raise ctx.fail(_join(path, str(k)[:60]), "unexpected key in loop state")
                if k == "combined_loader":   # the training loaders' states (ours: epoch, batches, seed, ...)
                    ListOf(MapOf(Int(0), key=r"\w{1,64}"), max_len=1024).check(v, _join(path, k), ctx, depth + 1)
                    continue
                self.check(v, _join(path, k), ctx, depth + 1)
            return
        raise ctx.fail(path, f"expected {self.what}; got {_describe(value)}")


_SCORE = Opt(OneOf(Tensor(shape=()), Float()))
MODEL_CHECKPOINT_STATE = Record({
    "monitor": Opt(Str(r"(?!.*\.\.)[\w./-]{1,256}", "a metric name")),
    "best_model_score": _SCORE,
    "best_model_path": Str(),
    "current_score": _SCORE,
    "dirpath": Opt(Str()),
    "best_k_models": MapOf(OneOf(Tensor(shape=()), Float()), key=r"[^\x00]{1,4096}", max_len=10_000),
    "kth_best_model_path": Str(),
    "kth_value": OneOf(Tensor(shape=()), Float()),
    "last_model_path": Str(),
}, what="ModelCheckpoint's state")

_NUMBER = Float()
PARAM_GROUP = Record({
    "lr": OneOf(Float(0.0), Tensor(shape=())), "initial_lr": OneOf(Float(0.0), Tensor(shape=())),
    "weight_decay": Float(0.0), "betas": TupleOf(Float(0.0, 1.0), Float(0.0, 1.0)), "eps": Float(0.0),
    "amsgrad": Bool(), "maximize": Bool(), "foreach": Opt(Bool()), "capturable": Bool(), "differentiable": Bool(),
    "fused": Opt(Bool()), "decoupled_weight_decay": Bool(), "params": ListOf(Int(0)),
}, required=("lr", "params"),
    # a newer torch adds flags: scalars only
    extra=OneOf(Null(), Bool(), Float(), Str(r"[\w.-]{0,128}", "a short name")), what="an optimizer parameter group")

OPTIMIZER_STATE = Record({
    "state": MapOf(MapOf(OneOf(Tensor(), Float()), key=r"[\w]{1,64}"), key=int),
    "param_groups": ListOf(PARAM_GROUP, max_len=1024),
}, required=("state", "param_groups"), what="an optimizer's state")

class SchedulerState(Record):
    """A learning-rate scheduler's state: the fields every scheduler has, plus its own settings and counters
    (``step_size``, ``gamma``, ``T_max``, ``T_cur``, ...: whichever torch.optim scheduler the user's config names,
    iggt_lightning/optimizers.py) as scalars or lists of scalars. ``load_state_dict`` writes every field into the
    scheduler object's ``__dict__``, so a field may not shadow what a scheduler class defines (``step``,
    ``get_lr``, ...) or its ``optimizer``: a file could otherwise replace a method with data."""

    _KEY = re.compile(r"[A-Za-z_]\w{0,63}")

    def check(self, value, path, ctx, depth):
        if isinstance(value, dict):
            for k in value:
                if k in self.fields:
                    continue
                if not isinstance(k, str) or not self._KEY.fullmatch(k) or k in _scheduler_class_names():
                    raise ctx.fail(_join(path, str(k)[:60]), "not a scheduler setting or counter (a plain name "
                                   "that no scheduler class defines)")
        super().check(value, path, ctx, depth)


@lru_cache(maxsize=1)
def _scheduler_class_names() -> frozenset[str]:
    import torch.optim.lr_scheduler as schedulers

    names = {"optimizer"}
    for obj in vars(schedulers).values():
        if isinstance(obj, type) and issubclass(obj, schedulers.LRScheduler):
            names.update(dir(obj))
    return frozenset(names)


_SCALAR = OneOf(Null(), Bool(), Float(), Str(r"[\w.-]{0,128}", "a short name"))
LR_SCHEDULER_STATE = SchedulerState({
    "base_lrs": ListOf(Float(0.0)), "_last_lr": ListOf(Float(0.0)), "last_epoch": Int(-1), "_step_count": Int(0),
    "_is_initial": Bool(), "_get_lr_called_within_step": Bool(), "verbose": Bool(),
    # LambdaLR writes a callable object's attributes back into it (fn.__dict__.update); ours are functions: None
    "lr_lambdas": ListOf(Null()),
}, extra=OneOf(_SCALAR, ListOf(_SCALAR, max_len=1024)), what="a learning-rate scheduler's state")

RNG_STATE = Record({
    "torch": Tensor(torch.uint8, max_dim=1),
    "numpy": Record({"keys": Tensor(torch.int64, (624,)), "pos": Int(0, 624), "has_gauss": Int(0, 1),
                     "gauss": Float()}, required=("keys", "pos", "has_gauss", "gauss")),
    "python": TupleOf(Int(0, 3), ListOf(Int(0, 2 ** 32), min_len=625, max_len=625), Opt(Float())),
    "cuda": ListOf(Tensor(torch.uint8, max_dim=1), max_len=4096),
}, required=("torch", "numpy", "python"), what="RNG states")

RESUME_STATE = Record({
    "rng": ListOf(RNG_STATE, max_len=65536),
    "loggers": ListOf(Record({
        "class": Str(NAME, "a class name"),
        "name": Opt(Str(PLAIN_NAME, "a plain name (no path separators, not . or ..)")),
        "version": Opt(OneOf(Int(0), Str(PLAIN_NAME, "a plain name (no path separators, not . or ..)"))),
    }, required=("class", "name", "version")), max_len=64),
}, what="the resume state")


class Callbacks(Schema):
    """Callback state by state key: ModelCheckpoint's by its schema (paths re-rooted later); any other callback's
    (a user's own) as plain data with tensors."""

    what = "a mapping of callback state"

    def check(self, value, path, ctx, depth):
        _container(value, path, ctx, depth, dict, self.what)
        for key, state in value.items():
            if not isinstance(key, str) or len(key) > 4096 or _CODE_WORDS.search(key):
                raise ctx.fail(path, f"unexpected callback key {_describe(key)[:80]}")
            sub = _join(path, key)
            if not isinstance(state, dict):
                raise ctx.fail(sub, f"expected a callback's state (a mapping); got {_describe(state)}")
            schema = MODEL_CHECKPOINT_STATE if key.startswith("ModelCheckpoint") else Plain(tensors=True)
            schema.check(state, sub, ctx, depth + 1)


STATE_DICT = MapOf(Tensor(), key=r"[\w.]{1,512}")

CHECKPOINT = Record({
    "epoch": Int(0), "global_step": Int(0),
    "pytorch-lightning_version": Str(r"\d+\.\d+\.\d+[\w.+-]{0,32}", "a version number"),
    "state_dict": STATE_DICT,
    "loops": MapOf(Counters(), key=r"\w{1,64}"),
    "callbacks": Callbacks(),
    "optimizer_states": ListOf(OPTIMIZER_STATE, max_len=64),
    "lr_schedulers": ListOf(LR_SCHEDULER_STATE, max_len=64),
    "hparams_name": Str(NAME, "a name"),
    "hyper_parameters": HYPER_PARAMETERS,
    "iggt_resume": RESUME_STATE,
    "iggt_model_config": MODEL_CONFIG,
}, required=("state_dict",),
    # what other Lightning versions, precision plugins or a datamodule add: data, read by their owners
    extra=Plain(tensors=True), what="a Lightning checkpoint")


# ----------------------------------------------------------------------------- entry points
def check_checkpoint(ckpt: Any, file: str | os.PathLike, plugin_check=None, trusted_freeze=frozenset()) -> dict:
    """Walk a loaded Lightning checkpoint against :data:`CHECKPOINT`; -> it unchanged, or one
    :class:`StoredStateError` naming the file and the field. ``plugin_check`` defaults to registered plugins
    only."""
    plugin_check = plugin_check or registered_plugins_only(str(file))
    CHECKPOINT.check(ckpt, "", Ctx(str(file), plugin_check, frozenset(trusted_freeze)), 0)
    return ckpt


def check(value: Any, schema: Schema, file: str | os.PathLike, field: str = "", plugin_check=None) -> Any:
    """Check one stored value (e.g. a .safetensors file's model config) against ``schema``."""
    schema.check(value, field, Ctx(str(file), plugin_check), 0)
    return value


def registered_plugins_only(file: str, trust_code: bool = False, trusted=frozenset()):
    """A ``plugin_check`` for :class:`PluginMap`: a head / post-processor entry must name a registered plugin
    (a dotted class only with ``trust_code`` or when ``trusted`` holds it, e.g. the user's own config names it)."""
    from .registry import check_plugin_entries

    def plugin_check(field: str, path: str, entry: dict) -> None:
        check_plugin_entries(entry, "postprocess" if field == "postprocess" else "heads", file, path.rsplit(".", 1)[0],
                             trust_code, trusted)
    return plugin_check


CHECKPOINT_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


def reroot_checkpoint_paths(ckpt: dict, dirpaths: dict[str, str | None]) -> list[str]:
    """Keep a ModelCheckpoint state's file paths only where they resolve inside the live callback's folder
    (``dirpaths``: state key -> the folder this run's callback writes to); others become empty (Lightning then
    deletes nothing of them and keeps no stale best). -> the fields reset, for a warning."""
    reset = []
    for key, state in (ckpt.get("callbacks") or {}).items():
        if not key.startswith("ModelCheckpoint") or not isinstance(state, dict):
            continue
        folder = dirpaths.get(key)
        for field in CHECKPOINT_PATH_FIELDS:
            value = state.get(field)
            if value and (folder is None or not lies_inside(value, folder)):
                state[field] = ""
                reset.append(f"callbacks.{key}.{field}")
        best = state.get("best_k_models") or {}
        kept = {p: v for p, v in best.items() if folder is not None and lies_inside(p, folder)}
        if len(kept) != len(best):
            reset.append(f"callbacks.{key}.best_k_models")
            state["best_k_models"] = kept
        if folder is None or os.path.realpath(str(state.get("dirpath") or "")) != os.path.realpath(folder):
            state["dirpath"] = None   # Lightning restores paths only for its own folder: never for another
    return reset


def model_size_check(build: Callable[[], torch.nn.Module], file_numel: int, file: str, what: str,
                     match: Callable[[torch.nn.Module], None] | None = None) -> None:
    """Build the network ``build`` makes on the meta device (no memory) and refuse it when it is far larger than
    what the file's state dict can fill (a 604-byte file cannot make us allocate a 16384-wide model); ``match``
    then checks the skeleton's keys and shapes against the file's (the precise error for a near miss)."""
    with torch.device("meta"):
        try:
            model = build()
        except (ValueError, TypeError, KeyError) as err:
            raise StoredStateError(f"{file}: {what} cannot be built: {err}") from err
    need = sum(t.numel() for t in model.state_dict().values())
    if need > 2 * file_numel + SIZE_SLACK:
        raise StoredStateError(f"{file}: {what} builds a network of {need:,} elements but the file holds "
                               f"{file_numel:,}; refusing to allocate it")
    if match is not None:
        match(model)


# a near miss (a head more, a wider layer) gets the key-by-key error of the strict loader instead
SIZE_SLACK = 1_000_000


def state_numel(sd: dict, prefix: str = "") -> int:
    return sum(v.numel() for k, v in sd.items() if isinstance(v, torch.Tensor) and k.startswith(prefix))

