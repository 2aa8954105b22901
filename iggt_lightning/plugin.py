"""What every plugin (a :class:`~iggt_lightning.head.Head` or a
:class:`~iggt_lightning.postprocessor.PostProcessor`) declares and which hooks it may implement.

Each hook has a default that does nothing, and each stage of the framework calls it on every configured plugin,
built-in or not, so a plugin plugs into training, evaluation, image logging and prediction without a change to
the framework (docs/writing-a-head.md):

* :meth:`Plugin.check_inputs` before anything runs (a clear error instead of a failure deep inside);
* :meth:`Plugin.build_metrics` / :meth:`Plugin.update_metrics` in validation and test;
* :meth:`Plugin.log_images` when the training module logs images;
* :meth:`Plugin.describe` when a prediction is written (``iggt predict``): the plugin says what it produced and
  the exporters (:mod:`iggt_lightning.exporters`) write the files; :meth:`Plugin.planned_files` lists them for
  ``--dry-run``. (:meth:`Plugin.export`, a plugin writing its own files, still runs for plugins written before
  exporters; new code writes an exporter: docs/writing-an-exporter.md.)
"""
from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .inference.scene import SceneExport

# keys the model itself puts in its output dict; a plugin declaring one would be overwritten
RESERVED_OUTPUTS = ("images", "backbone")


class Plugin:
    """Declarations (class attributes): ``requires`` (names of the heads / post-processors whose outputs it reads;
    they run first), ``outputs`` (the keys it adds to the prediction dict)."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    # the GLB files of the colour layers its describe adds (scene.add_colour_layer); the GLB exporter writes them
    colour_layers: ClassVar[tuple[str, ...]] = ()

    def check_inputs(self, images: "torch.Tensor", query_points: "torch.Tensor | None") -> None:
        """Raise ``ValueError`` naming what this plugin cannot work with (images [B,S,3,H,W], query points [B,N,2]
        or None), before the network runs."""

    def build_metrics(self) -> dict:
        """name -> torchmetrics Metric evaluating this plugin (built once per validate/test stage)."""
        return {}

    def update_metrics(self, metrics: dict, outputs: dict, batch: dict) -> None:
        """Update this plugin's metrics (as built by :meth:`build_metrics`) on a normalised batch."""

    def log_images(self, outputs: dict, batch: dict) -> dict[str, "torch.Tensor"]:
        """tag -> image [C,H,W] (C = 1 or 3, values in [0, 1]) of the batch's first view, logged as
        ``<plugin>/<tag>``."""
        return {}

    def describe(self, outputs: dict, scene: "SceneExport") -> None:
        """Prediction, first pass over every plugin: put into ``scene`` what other plugins or the scene files need
        (cameras, a point source, a colour layer, a point attribute, ``scene.shared`` entries). No files here."""

    def export(self, outputs: dict, scene: "SceneExport") -> None:
        """Prediction, second pass, for plugins written before exporters: write this plugin's own files through
        ``scene.path(rel)`` (which lists them in ``manifest.json``) and add entries to ``scene.manifest``.
        ``outputs[key][scene.index]`` is this scene's. The built-in plugins write nothing: an exporter consumes
        their outputs (docs/writing-an-exporter.md)."""

    @classmethod
    def planned_files(cls, stems: list[str]) -> list[str]:
        """The files a prediction holds because of this plugin, for views named ``stems`` (shown by ``iggt predict
        --dry-run``): by default those of the exporters consuming its ``outputs`` and of its ``colour_layers``; a
        plugin writing with :meth:`export` lists its own files too."""
        from iggt_lightning.exporters import files_for_outputs

        return [*cls.colour_layers, *files_for_outputs(cls.outputs, stems)]


def init_params(cls: type) -> set[str]:
    return {n for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def has_var_kw(cls: type) -> bool:
    if cls.__init__ is object.__init__ or getattr(cls.__init__, "__qualname__", "") == "Module.__init__":
        return False  # a plugin without __init__: no argument is accepted
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())


def build_plugin(cls: type, kind: str, name: str, kwargs: dict, defaults: dict | None = None) -> Any:
    """``cls(**kwargs)`` with ``defaults`` filled in where the class takes them; unknown arguments are an error
    naming the plugin and what it accepts."""
    kwargs = dict(kwargs)
    accepted = init_params(cls)
    for k, v in (defaults or {}).items():
        if k in accepted or has_var_kw(cls):
            kwargs.setdefault(k, v)
    unknown = sorted(set(kwargs) - accepted)
    if unknown and not has_var_kw(cls):
        raise ValueError(f"{kind} {name!r} ({cls.__name__}) got unknown argument(s) {unknown}; "
                         f"it accepts {sorted(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"cannot build {kind} {name!r} ({cls.__name__}): {err}") from err


def split_spec(name: str, spec: Any, kind: str, source: str) -> tuple[str, dict]:
    """A config entry ``name: {class_path: ..., init_args: {...}, **more}`` or ``name: null`` -> (class name, kwargs)."""
    if spec is not None and not isinstance(spec, dict):
        raise ValueError(f"{source}: {kind}s.{name} must be a mapping of arguments or null; got {spec!r}")
    spec = copy.deepcopy(dict(spec or {}))
    target = spec.pop("class_path", name)
    return target, dict(spec.pop("init_args", None) or {}, **spec)


def check_contract(plugins: dict[str, Any], source: str = "the model configuration") -> None:
    """What the configured plugins declare must fit together: one plugin per output key, per loss-term name and
    per metric name; declarations are tuples of names; ``intermediates`` are among ``outputs``; metrics are
    torchmetrics ``Metric``s. Errors name both plugins. (Requirements are checked by
    :func:`~iggt_lightning.registry.dependency_order`.)"""
    from torchmetrics import Metric

    owners: dict[str, dict[str, str]] = {}

    def kind(name: str) -> str:
        return "head" if hasattr(plugins[name], "loss_terms") else "post-processor"

    def label(name: str) -> str:
        return f"{kind(name)} {name!r}"

    def claim(what: str, key: Any, name: str) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError(f"{source}: {label(name)} declares {what} {key!r}; names must be non-empty strings")
        other = owners.setdefault(what, {}).get(key)
        if other == name:
            raise ValueError(f"{source}: {label(name)} declares {what} {key!r} twice")
        if other is not None:
            both = (f"{kind(name)}s {other!r} and {name!r}" if kind(other) == kind(name)
                    else f"{label(other)} and {label(name)}")
            raise ValueError(f"{source}: {both} both declare {what} {key!r}; each must come from one plugin "
                             f"(rename it in one of them, or drop one)")
        owners[what][key] = name

    for name, plugin in plugins.items():
        for attr, what in (("outputs", "output key"), ("loss_terms", "loss term"), ("requires", "requirement"),
                           ("intermediates", "intermediate")):
            declared = getattr(plugin, attr, ())
            if isinstance(declared, str) or not isinstance(declared, (tuple, list)):
                raise ValueError(f"{source}: {label(name)} ({type(plugin).__name__}) declares {attr} = {declared!r}; "
                                 f"expected a tuple of names, e.g. {attr} = ({declared!r},)")
            if attr in ("outputs", "loss_terms"):
                for key in declared:
                    claim(what, key, name)
        extra = sorted(set(getattr(plugin, "intermediates", ())) - set(plugin.outputs))
        if extra:
            raise ValueError(f"{source}: {label(name)} declares intermediates {extra} that are not among its outputs "
                             f"{list(plugin.outputs)}")
        reserved = sorted(set(plugin.outputs) & set(RESERVED_OUTPUTS))
        if reserved:
            raise ValueError(f"{source}: {label(name)} declares output key(s) {reserved}, which the model itself "
                             "sets; choose other names")
        metrics = plugin.build_metrics()
        if not isinstance(metrics, dict):
            raise ValueError(f"{source}: {label(name)}'s build_metrics() returned {type(metrics).__name__}; "
                             "expected a dict of name -> torchmetrics Metric")
        for metric_name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise ValueError(f"{source}: {label(name)}'s build_metrics() gives {metric_name!r} = "
                                 f"{type(metric).__name__}, not a torchmetrics Metric")
            claim("metric", metric_name, name)
