"""``iggt fit|validate|test|predict``: Lightning's CLI over :class:`IGGTLitModule` and the scene datamodules.

``iggt predict --config ... --data ... --out DIR`` runs ``trainer.predict`` over the datamodule's predict split
(any strategy) and writes one folder per scene under ``DIR`` (:class:`~.inference.writer.PredictionWriter`).

Configs are YAML (``--config configs/synthetic_tiny.yaml``, several may be stacked, dotted overrides on
the command line). The model section takes IGGTLitModule's arguments; heads are named by their registered
names or by ``class_path``; third-party heads advertised in the ``iggt_lightning.heads`` entry-point
group are loaded before parsing, so their short names resolve. The data section names a datamodule by
``class_path`` (``SyntheticDataModule`` by default).

Checkpoints without an explicit ``dirpath`` go to ``<trainer.default_root_dir>/checkpoints`` (not a
per-version log folder), so ``--ckpt_path last`` finds the previous run's ``last.ckpt``.

Checkpoints are data: every ``--ckpt_path`` file is read with ``weights_only=True`` (errors name the file),
and the hyper-parameters LightningCLI re-parses from it may name only registered heads (or classes the
user's own config names) unless ``--trust-checkpoint-code`` is given.
"""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from .checkpoints import CheckpointError, load_tensor_file

from .data.datamodule import SceneDataModule, SyntheticDataModule
from .module import IGGTLitModule
from .registry import UntrustedCodeError, load_plugins, qualified_name
from .training_callbacks import add_resume_state, reuse_logger_versions


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader with ``weights_only=True`` always and one error line naming the file."""

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_tensor_file(path)


class IGGTCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, trust_checkpoint_code: bool = False,
                 **kwargs) -> None:
        load_plugins()
        self.trust_checkpoint_code = trust_checkpoint_code
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        kwargs.setdefault("auto_configure_optimizers", False)  # IGGTLitModule builds its own parameter groups
        if args is not None and list(args) == sys.argv[1:]:
            args = None  # the console script: let LightningCLI read sys.argv itself (no "args and argv" warning)
        super().__init__(IGGTLitModule, SceneDataModule, subclass_mode_model=False, subclass_mode_data=True,
                         args=args, run=run, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{SyntheticDataModule.__module__}.SyntheticDataModule"}})
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch intra-op threads (CPU results depend on it: a config quoting numbers pins it)")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be a positive integer or null; got {threads}")
            torch.set_num_threads(int(threads))
        if self.subcommand in ("validate", "test"):
            self._check_results_path(config)

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            # where the PredictionWriter puts one folder per scene, and what it passes to the plugins' exports
            parser.add_argument("--out", type=str, required=True, help="folder of the per-scene output folders")
            parser.add_argument("--overwrite", type=bool, default=False, help="replace scene folders of a previous "
                                "prediction")
            parser.add_argument("--export_options", type=dict, default={}, help="options of the plugins' exports "
                                "(conf_threshold, conf_mode, points_from, save_images, depth_png_scale, ...)")
            parser.set_defaults({"return_predictions": False})
        if subcommand in ("validate", "test"):
            parser.add_argument("--results", type=Optional[str], default=None,
                                help="also write the metrics as JSON here (with the configs and checkpoint used), "
                                     "for benchmarks/eval_report.py")
        return parser

    def _check_results_path(self, cfg) -> None:
        """Before anything runs: the results file may not be one of the run's inputs."""
        path = cfg.get("results")
        configs = [str(c) for c in (cfg.get("config") or [])]
        inputs = [*configs, *(str(x) for x in (cfg.get("ckpt_path"), cfg["model"].get("init_checkpoint")) if x)]
        if path and any(os.path.abspath(path) == os.path.abspath(i) for i in inputs):
            raise ValueError(f"--results {path} is one of this run's inputs; choose another file")

    def _write_results(self, stage: str) -> None:
        cfg = self.config[self.subcommand]
        path = cfg.get("results")
        if not path:
            return
        from .fileio import write_json

        configs = [str(c) for c in (cfg.get("config") or [])]
        prefix = f"{stage}/"
        metrics = {k[len(prefix):]: float(v) for k, v in sorted(self.trainer.callback_metrics.items())
                   if k.startswith(prefix)}
        write_json(path, {"subcommand": self.subcommand, "config": configs, "ckpt_path": cfg.get("ckpt_path"),
                          "init_checkpoint": cfg["model"].get("init_checkpoint"), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "metrics": metrics})

    def after_test(self) -> None:
        self._write_results("test")

    def after_validate(self) -> None:
        self._write_results("val")

    def before_predict(self) -> None:
        from .inference.writer import PredictionWriter

        cfg = self.config["predict"]
        datasets = getattr(self.datamodule, "datasets", None) or {}
        roots = [str(d.root) for d in datasets.values() if getattr(d, "root", None) is not None]
        if not any(isinstance(cb, PredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter(cfg["out"], overwrite=bool(cfg["overwrite"]),
                                                           options=dict(cfg["export_options"] or {}), inputs=roots))

    def _parse_ckpt_path(self) -> None:
        """LightningCLI merges a ``--ckpt_path`` file's hyper-parameters into the model config; check them as
        data first (registered heads only, no foreign class) and read the file safely."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = load_tensor_file(ckpt_path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CheckpointError(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (no 'state_dict')")
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        own = qualified_name(IGGTLitModule)
        cls_path = hparams.pop("_class_path", own)
        if cls_path != own:
            raise CheckpointError(f"--ckpt_path {ckpt_path}: its hyper-parameters name the model class {cls_path!r}; "
                                  f"iggt loads {own} only")
        # the weights come from the checkpoint itself; a stored init_checkpoint names a file of the author's machine
        hparams.pop("init_checkpoint", None)
        accepted = set(inspect.signature(IGGTLitModule.__init__).parameters) - {"self"}
        unknown = sorted(set(hparams) - accepted)
        if unknown:
            raise CheckpointError(f"--ckpt_path {ckpt_path}: unknown hyper-parameter(s) {unknown}; "
                                  f"IGGTLitModule takes {sorted(accepted)}")
        self._check_ckpt_plugins(ckpt_path, hparams, self.config[sub].get("model"))
        if hparams:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)

    def _check_ckpt_plugins(self, ckpt_path: str, hparams: dict, user_model) -> None:
        """The heads and post-processors a ``--ckpt_path`` file's hyper-parameters name must be registered (or
        named by the user's own config) unless ``--trust-checkpoint-code``."""
        from .checkpoints import check_plugin_entries

        def user_entries(field: str) -> dict:
            got = (getattr(user_model, field, None) if not isinstance(user_model, dict) else user_model.get(field))
            return dict(got or {})

        for field in ("heads", "postprocess"):
            entries = hparams.get(field)
            if entries is None:
                continue
            if not isinstance(entries, dict):
                raise CheckpointError(f"--ckpt_path {ckpt_path}: hyper-parameter {field} must be a mapping; got "
                                      f"{entries!r}")
            # classes the user's own config names are trusted already (the user asked for them)
            trusted = {(spec or {}).get("class_path", name) for name, spec in user_entries(field).items()
                       if spec is None or isinstance(spec, dict)}
            try:
                check_plugin_entries(entries, field, f"--ckpt_path {ckpt_path}", f"hyper-parameter {field}",
                                     self.trust_checkpoint_code, trusted)
            except UntrustedCodeError as err:
                raise UntrustedCodeError(f"{err}; or name the same class in your own config") from None

    def instantiate_trainer(self, **kwargs):
        saver = self.save_config_callback
        logger = self._get(self.config, "trainer", {}).get("logger")
        if self.subcommand == "predict" or (self.subcommand in ("validate", "test") and logger is False):
            # without a logger its config.yaml would land in (and overwrite one in) the working directory; the
            # prediction folders and --results files say what ran
            self.save_config_callback = None
        try:
            trainer = super().instantiate_trainer(**kwargs)
        finally:
            self.save_config_callback = saver
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        # exact resumes (RNG states, the same logger version) and last.ckpt at the final step: training_callbacks.py
        add_resume_state(trainer)
        if self.subcommand == "fit":
            reuse_logger_versions(trainer, self._get(self.config, "ckpt_path"))
        return trainer


    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True  # torch < 2.6 would otherwise unpickle whatever the file holds
        return kwargs


def run_lightning_cli(argv: list[str], trust_checkpoint_code: bool = False) -> IGGTCLI:
    return IGGTCLI(args=argv, trust_checkpoint_code=trust_checkpoint_code)
