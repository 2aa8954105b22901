"""The optimizer and learning-rate schedule of :class:`~iggt_lightning.module.IGGTLitModule`, named by data.

A config names them as LightningCLI does, at the top level (``optimizer: SGD``, or ``{class_path:
torch.optim.SGD, init_args: {momentum: 0.9}}``; ``lr_scheduler`` the same way); the CLI hands them to the module's
``optimizer`` / ``lr_scheduler`` arguments. A class is looked up by name among torch.optim's own optimizers
(torch.optim.lr_scheduler's schedulers), never imported, so no text can name code here.

The learning rates and the weight decay stay the module's (``lr``, ``backbone_lr``, ``weight_decay``: its parameter
groups, backbone / heads, decayed / not), so an optimizer's own ``lr`` / ``weight_decay`` are not arguments here.
A scheduler is stepped after every optimizer step, as the default one is. Nothing named: AdamW with linear
warm-up then cosine decay to 0 at the last step (``warmup_steps``), exactly as before these were configurable.
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch

# name -> (where its classes live, their base class, arguments the module itself supplies)
KINDS = {
    "optimizer": (torch.optim, torch.optim.Optimizer, ("params", "lr", "weight_decay")),
    "lr_scheduler": (torch.optim.lr_scheduler, torch.optim.lr_scheduler.LRScheduler, ("optimizer",)),
}
# classes of those modules a config cannot use, and why
UNUSABLE = {
    "ReduceLROnPlateau": "it steps on a monitored metric, and schedulers here step after every optimizer step",
    "LambdaLR": "it takes a function, which a config cannot give",
    "MultiplicativeLR": "it takes a function, which a config cannot give",
    "SequentialLR": "it takes other schedulers, which a config cannot give",
    "ChainedScheduler": "it takes other schedulers, which a config cannot give",
}

Spec = tuple[type, dict]


def registered(kind: str) -> list[str]:
    """The class names a config may give for ``kind`` (``optimizer`` or ``lr_scheduler``)."""
    module, base, _ = KINDS[kind]
    return sorted(n for n, c in vars(module).items() if isinstance(c, type) and issubclass(c, base)
                  and c is not base and not n.startswith("_") and n not in UNUSABLE)


def resolve(spec: Any, kind: str) -> Spec | None:
    """A config's ``optimizer`` / ``lr_scheduler`` (a class name, ``torch.optim.Name``, or ``{class_path,
    init_args}``) -> (class, init_args), checked; None stays None (the default). One error naming the field."""
    if spec is None:
        return None
    module, base, supplied = KINDS[kind]
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or set(spec) - {"class_path", "init_args"} or "class_path" not in spec:
        raise ValueError(f"{kind}: expected a class name of {module.__name__} or {{class_path: ..., init_args: "
                         f"{{...}}}}; got {spec!r}")
    path, init = spec["class_path"], spec.get("init_args") or {}
    name = path.rsplit(".", 1)[-1] if isinstance(path, str) else ""
    cls = vars(module).get(name) if name in registered(kind) else None
    # the short name, the name under torch.optim[.lr_scheduler], or the class's own module path
    if cls is None or path not in (name, f"{module.__name__}.{name}", f"{cls.__module__}.{name}"):
        why = f" ({UNUSABLE[name]})" if name in UNUSABLE else ""
        raise ValueError(f"{kind}.class_path: {path!r} is not usable{why}; expected one of {module.__name__}'s "
                         f"{', '.join(registered(kind))}")
    if not isinstance(init, dict) or not all(isinstance(k, str) for k in init):
        raise ValueError(f"{kind}.init_args: expected a mapping of argument name -> value; got {init!r}")
    for key, value in init.items():
        if key in supplied:
            raise ValueError(f"{kind}.init_args.{key}: given by the module, not the config"
                             + (" (set model.lr, model.backbone_lr and model.weight_decay: the parameter groups "
                                "carry them)" if kind == "optimizer" else ""))
        _plain(value, f"{kind}.init_args.{key}")
    try:
        inspect.signature(cls).bind(None, **init)
    except TypeError as err:
        raise ValueError(f"{kind}.init_args: {name} does not take {sorted(init)}: {err}") from None
    return cls, dict(init)


def _plain(value: Any, field: str) -> None:
    """Arguments are numbers, strings, booleans, null and lists / mappings of them: never an object or function."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{field}[{i}]")
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for k, v in value.items():
            _plain(v, f"{field}.{k}")
        return
    raise ValueError(f"{field}: expected plain data (numbers, strings, lists); got {type(value).__name__}")


def build_optimizer(spec: Spec | None, groups: list[dict]) -> torch.optim.Optimizer:
    """The optimizer over the module's parameter groups (each with its ``lr`` and ``weight_decay``); AdamW by
    default."""
    cls, init = spec or (torch.optim.AdamW, {})
    return cls(groups, **init)


def build_scheduler(spec: Spec | None, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """The configured scheduler, or the default: linear warm-up over ``warmup_steps`` then cosine decay to 0 at
    ``total_steps``."""
    if spec is not None:
        cls, init = spec
        return cls(optimizer, **init)
    warm = min(warmup_steps, max(0, total_steps - 1))

    # a plain function: LambdaLR stores None for it in a checkpoint (a callable object's attributes otherwise)
    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
