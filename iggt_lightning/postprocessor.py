"""Post-processors: what runs after the network on its outputs (clustering instance features into multi-view
instances, naming them with a vision-language model, ...). Not part of the network and not trained; configured
beside the heads (``postprocess`` in the model config) and run by the test loop and by prediction through one
code path, :class:`PostProcessing`.

A post-processor is a :class:`~iggt_lightning.plugin.Plugin` with the same hooks as a head (input checks,
metrics, image logging, export); it registers with ``@register_postprocessor(name)`` or the
``iggt_lightning.postprocessors`` entry-point group.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar, Iterator, Mapping

import torch

from .plugin import Plugin, build_plugin, check_contract, split_spec
from .registry import dependency_order, get_postprocessor

STAGES = ("validate", "test", "predict")


class PostProcessor(Plugin):
    """Base class. Implement :meth:`process`; declare ``requires`` (heads or post-processors whose outputs it
    reads) and ``outputs``. ``stages``: the stages it runs in (of validate, test, predict); never in training."""

    default_stages: ClassVar[tuple[str, ...]] = ("test", "predict")
    default: ClassVar[bool] = False   # True: runs whenever its requirements are configured, unless dropped

    def __init__(self, stages: tuple[str, ...] | list[str] | None = None) -> None:
        stages = tuple(self.default_stages if stages is None else stages)
        if isinstance(stages, str) or not set(stages) <= set(STAGES):
            raise ValueError(f"{self.name or type(self).__name__} stages must be among {list(STAGES)}; got {stages!r}")
        self.stages = stages

    def process(self, outputs: dict, images: torch.Tensor) -> dict[str, Any]:  # pragma: no cover - interface
        """outputs: the network's (and earlier post-processors') dict for a batch; images [B,S,3,H,W] in [0,1].
        Returns the keys of ``outputs`` (the class attribute) to add."""
        raise NotImplementedError


class PostProcessing:
    """The configured post-processors of a model, built, checked against the heads and ordered.

    Args:
        specs: name -> arguments (``None`` = defaults); a name is a registered post-processor or, with
            ``class_path``, any :class:`PostProcessor` (dotted paths need ``trust_code``, see ``registry``).
        heads: the model's heads (their names satisfy ``requires``; their declarations are checked together
            with the post-processors': one plugin per output key and metric name).
    """

    def __init__(self, specs: Mapping[str, dict | None] | None, heads: Mapping[str, Any], *, trust_code: bool = True,
                 source: str = "the model configuration") -> None:
        specs = dict(specs or {})
        self.config = copy.deepcopy(specs)
        built: dict[str, PostProcessor] = {}
        for name, spec in specs.items():
            if name in heads:
                raise ValueError(f"{source}: postprocess.{name}: a head of the model is named {name!r} too; "
                                 "give the post-processor another name")
            target, kwargs = split_spec(name, spec, "postprocess", source)
            cls = get_postprocessor(target, trust_code=trust_code, source=f"{source} (postprocess.{name})")
            built[name] = build_plugin(cls, "post-processor", name, kwargs)
        self.order = dependency_order({n: tuple(p.requires) for n, p in built.items()}, kind="post-processor",
                                      available=tuple(heads))
        check_contract({**dict(heads), **built}, source)
        self.items = {n: built[n] for n in self.order}

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, name: object) -> bool:
        return name in self.items

    def __getitem__(self, name: str) -> PostProcessor:
        return self.items[name]

    def check_inputs(self, images: torch.Tensor, query_points: torch.Tensor | None = None) -> None:
        for p in self.items.values():
            p.check_inputs(images, query_points)

    @torch.no_grad()
    def __call__(self, outputs: dict, images: torch.Tensor, stage: str) -> dict:
        """Run, in order, every post-processor configured for ``stage``; returns ``outputs`` with their keys."""
        if stage not in STAGES:
            raise ValueError(f"post-processing runs in {list(STAGES)}, not in {stage!r}")
        out = dict(outputs)
        for p in self.items.values():
            if stage in p.stages:
                out.update(p.process(out, images))
        return out


def default_postprocess() -> dict[str, dict]:
    """name -> {} for every registered post-processor whose class sets ``default = True``."""
    from .registry import available_postprocessors

    return {n: {} for n, cls in available_postprocessors().items() if getattr(cls, "default", False)}


def postprocess_specs(postprocess: Mapping[str, dict | None] | None, heads: Mapping[str, Any],
                      drop: list[str] | tuple[str, ...] = (), *, trust_code: bool = True,
                      source: str = "the model configuration") -> dict[str, dict]:
    """The post-processors a configuration runs: the defaults (``default = True`` classes, e.g. ``tracking``)
    with ``postprocess`` merged over them (a new name adds one, ``name: null`` keeps the defaults), minus
    ``drop``. A default whose requirements the model does not have (no instance head) is left out; one named
    in ``postprocess`` stays, and its missing requirement is an error naming both."""
    from .model import _merge

    if isinstance(drop, str):
        raise ValueError(f"drop_postprocess must be a list of names; got the string {drop!r}")
    given = dict(postprocess or {})
    specs = _merge(default_postprocess(), {k: {} if v is None else v for k, v in given.items()})
    unknown = sorted(set(drop) - set(specs))
    if unknown:
        raise ValueError(f"drop_postprocess: {source} has no post-processor(s) {unknown}; configured: {list(specs)}")
    specs = {k: v for k, v in specs.items() if k not in set(drop)}

    def requires(name: str) -> set[str]:
        target, _ = split_spec(name, specs[name], "postprocess", source)
        return set(get_postprocessor(target, trust_code=trust_code, source=f"{source} (postprocess.{name})").requires)

    while True:
        left_without = [n for n in specs if n not in given and not requires(n) <= set(heads) | set(specs)]
        if not left_without:
            return specs
        for n in left_without:
            del specs[n]


def checkpoint_postprocess(stored: Mapping[str, dict | None] | None,
                           overrides: Mapping[str, dict | None] | None = None) -> tuple[dict, list[str]]:
    """What a checkpoint runs after its network, as (``postprocess``, ``drop_postprocess``) for
    :func:`postprocess_specs`: its stored post-processing exactly (defaults it does not list stay out) or, when it
    stores none, the defaults; ``overrides`` merged over either."""
    from .model import _merge

    given = _merge(dict(stored or {}), dict(overrides or {}))
    return given, ([n for n in default_postprocess() if n not in given] if stored is not None else [])


def build_postprocessing(postprocess: Mapping[str, dict | None] | None, heads: Mapping[str, Any],
                         drop: list[str] | tuple[str, ...] = (), *, trust_code: bool = True,
                         source: str = "the model configuration") -> PostProcessing:
    """:class:`PostProcessing` of :func:`postprocess_specs`."""
    specs = postprocess_specs(postprocess, heads, drop, trust_code=trust_code, source=source)
    return PostProcessing(specs, heads, trust_code=trust_code, source=source)


def move_postprocessors_out_of_heads(heads: Mapping[str, Any] | None, where: str) -> tuple[dict, dict]:
    """Configs written before post-processing was its own component listed ``tracking`` / ``open_vocab`` under
    ``heads``: -> (heads without them, the entries to put under ``postprocess``), with a warning saying what to
    write instead."""
    import warnings

    heads, moved = dict(heads or {}), {}
    for name in list(heads):
        spec = heads[name]
        if _is_postprocessor(spec.get("class_path", name) if isinstance(spec, dict) else name):
            moved[name] = heads.pop(name)
    if moved:
        warnings.warn(f"{where}: {sorted(moved)} are post-processors, not heads (they run after the network); "
                      f"they were moved to postprocess. Write them under postprocess instead of heads "
                      f"(YAML: model.postprocess.{next(iter(moved))}: ...)", FutureWarning, stacklevel=3)
    return heads, moved


def move_postprocessors_out_of_drop_heads(drop_heads: list[str] | None, where: str) -> tuple[list, list]:
    """The same for ``drop_heads: [tracking]``: -> (heads to drop, post-processors to drop), with a warning."""
    import warnings

    drop_heads = list(drop_heads or [])
    moved = [h for h in drop_heads if _is_postprocessor(h)]
    if moved:
        warnings.warn(f"{where}: {moved} are post-processors, not heads; write drop_postprocess: {moved}",
                      FutureWarning, stacklevel=3)
    return [h for h in drop_heads if h not in moved], moved


def _is_postprocessor(name: str) -> bool:
    from .registry import POSTPROCESSORS, registered_head

    return registered_head(name) is None and POSTPROCESSORS.registered(name) is not None
