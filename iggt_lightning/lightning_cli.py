"""``iggt fit|validate|test|predict``: Lightning's CLI over :class:`IGGTLitModule` and the scene datamodules.

Configs are YAML (``--config configs/synthetic_tiny.yaml``, several may be stacked, dotted overrides on
the command line). The model section takes IGGTLitModule's arguments; heads are named by their registered
names or by ``class_path``; third-party heads advertised in the ``iggt_lightning.heads`` entry-point
group are loaded before parsing, so their short names resolve. The data section names a datamodule by
``class_path`` (``SyntheticDataModule`` by default).

Checkpoints without an explicit ``dirpath`` go to ``<trainer.default_root_dir>/checkpoints`` (not a
per-version log folder), so ``--ckpt_path last`` finds the previous run's ``last.ckpt``.
"""
from __future__ import annotations

import os
import sys

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .data.datamodule import SceneDataModule, SyntheticDataModule
from .module import IGGTLitModule
from .registry import load_plugins


class IGGTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        load_plugins()
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("auto_configure_optimizers", False)  # IGGTLitModule builds its own parameter groups
        if args is not None and list(args) == sys.argv[1:]:
            args = None  # the console script: let LightningCLI read sys.argv itself (no "args and argv" warning)
        super().__init__(IGGTLitModule, SceneDataModule, subclass_mode_model=False, subclass_mode_data=True,
                         args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{SyntheticDataModule.__module__}.SyntheticDataModule"}})

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        return trainer


def run_lightning_cli(argv: list[str]) -> IGGTCLI:
    return IGGTCLI(args=argv)
