"""``iggt fit|validate|test|predict-dataset``: Lightning's CLI over :class:`IGGTLitModule` and the scene datamodules.

:class:`IGGTCLI` owns Lightning's four subcommands (``subcommands()``: fit, validate, test, predict); ``iggt``'s
table of subcommands (``iggt_lightning.cli.COMMANDS``) names the fourth ``predict-dataset``:
``iggt predict-dataset --config ... --data ... --out DIR`` runs ``trainer.predict`` over the datamodule's predict
split (any strategy) and writes one folder per scene under ``DIR`` (:class:`~.inference.writer.PredictionWriter`).
The options only one subcommand takes (``--out``, ``--overwrite``, ``--export_options``: predict; ``--results``:
validate, test) are declared for all of them and refused where they do not apply, before anything is built.

The optimizer and learning-rate scheduler are LightningCLI's top-level ``optimizer:`` / ``lr_scheduler:``
(``class_path`` + ``init_args``), handed to the module's own arguments (:mod:`~iggt_lightning.optimizers`);
nothing given: AdamW with the warm-up cosine schedule.

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
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from . import context_parallel_strategy  # noqa: F401 (registers --trainer.strategy context_parallel)
from .checkpoints import CheckpointError, load_tensor_file

from .data.datamodule import SceneDataModule, SyntheticDataModule
from .module import IGGTLitModule
from .registry import UntrustedCodeError, load_plugins, qualified_name
from .training_callbacks import add_resume_state, reuse_logger_versions


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader and remover, for files that may come from anyone.

    Reading: ``weights_only=True`` always, then the whole file is checked as data
    (:func:`~iggt_lightning.stored_state.check_checkpoint`: one schema, errors name the file and field) and the
    ModelCheckpoint paths it stores are kept only inside this run's checkpoint folders. Removing: only a regular
    file inside one of those folders, never recursively (Lightning's own remover deletes whole trees)."""

    def __init__(self, check=None, trainer=None) -> None:
        super().__init__()
        self.check, self.trainer = check, trainer

    def _folders(self) -> dict[str, str | None]:
        from lightning.pytorch.callbacks import ModelCheckpoint

        cbs = self.trainer.callbacks if self.trainer is not None else []
        return {cb.state_key: cb.dirpath for cb in cbs if isinstance(cb, ModelCheckpoint)}

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        from .stored_state import check_checkpoint, reroot_checkpoint_paths

        ckpt = load_tensor_file(path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
        (self.check or check_checkpoint)(ckpt, path)
        reset = reroot_checkpoint_paths(ckpt, self._folders())
        if reset:
            rank_zero_warn(f"{path}: ignored stored checkpoint path(s) outside this run's checkpoint folder: "
                           f"{', '.join(reset)}")
        return ckpt

    def remove_checkpoint(self, path) -> None:
        from .fileio import lies_inside

        folders = [d for d in self._folders().values() if d]
        if not os.path.isfile(path) or os.path.islink(path) or not any(lies_inside(path, d) for d in folders):
            rank_zero_warn(f"not removing {path}: only checkpoint files inside this run's checkpoint folder(s) "
                           f"{folders} are ever deleted")
            return
        os.remove(path)


def _stop_on_signals() -> dict:
    """Dataset prediction: SIGTERM and SIGINT raise :class:`~.inference.predict.PredictInterrupted` (exit 143 /
    130) instead of Lightning noting a SIGTERM and carrying on to exit 0. The scene being written unwinds through
    the writer, which removes its temporary folder; scene folders finished before stay, complete (each is renamed
    into place whole). Lightning's own SIGTERM handler calls this one too (it keeps existing handlers).
    -> the previous handlers."""
    import signal
    import threading

    from .inference.predict import PredictInterrupted

    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum, frame):
        raise PredictInterrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, stop)
    return previous


def _restore_signals(previous: dict) -> None:
    import signal

    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def stored_state_check(trust_code: bool = False, user_model=None):
    """The one check of a ``--ckpt_path`` file (``_parse_ckpt_path`` and Lightning's reader use it): the whole file
    against the schema (:func:`~iggt_lightning.stored_state.check_checkpoint`); heads and post-processors must be
    registered, named by the user's own config, or trusted with ``--trust-checkpoint-code``; a freeze regular
    expression only if the user's own config has it. -> ``check(ckpt, path)``."""
    from .stored_state import check_checkpoint, registered_plugins_only

    def user_entries(field: str):
        got = getattr(user_model, field, None) if not isinstance(user_model, dict) else user_model.get(field)
        return got or ({} if field != "freeze" else [])

    # classes the user's own config names are trusted already (the user asked for them)
    trusted = {(spec or {}).get("class_path", name) for field in ("heads", "postprocess")
               for name, spec in dict(user_entries(field)).items() if spec is None or isinstance(spec, dict)}
    trusted_freeze = {f for f in user_entries("freeze") if isinstance(f, str)}

    def check(ckpt: dict, path) -> dict:
        try:
            return check_checkpoint(ckpt, path, registered_plugins_only(f"--ckpt_path {path}", trust_code, trusted),
                                    trusted_freeze=trusted_freeze)
        except UntrustedCodeError as err:
            raise UntrustedCodeError(f"{err}; or name the same class in your own config") from None
    return check


def _network_of(hparams: dict):
    """The network IGGTLitModule builds from ``hparams`` (its layout migrations applied, silently: the module
    itself warns). Every class path in them passed :func:`stored_state_check` already (registered, named by the
    user's own config, or trusted by the opt-in), so it may be imported."""
    import warnings

    from .model import PRESETS, build_model
    from .postprocessor import move_postprocessors_out_of_drop_heads, move_postprocessors_out_of_heads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heads, _ = move_postprocessors_out_of_heads(hparams.get("heads"), "--ckpt_path")
        drop, _ = move_postprocessors_out_of_drop_heads(hparams.get("drop_heads"), "--ckpt_path")
    preset = hparams.get("preset")
    # drop_heads may name heads of an init_checkpoint that the configuration does not build (IGGTLitModule)
    configured = set(PRESETS[preset]["heads"] if preset in PRESETS else ()) | set(heads or ())
    return build_model(preset, backbone=hparams.get("backbone"), heads=heads,
                       drop_heads=[h for h in drop or () if h in configured])


def module_arguments(ckpt: dict, ckpt_path) -> dict:
    """The IGGTLitModule arguments a checked ``--ckpt_path`` file's hyper-parameters give (the file's class must be
    ours; a stored ``init_checkpoint`` is dropped), after sizing the network they build on the meta device against
    the file's tensors."""
    from .stored_state import model_size_check, state_numel

    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    own = qualified_name(IGGTLitModule)
    cls_path = hparams.pop("_class_path", own)
    if cls_path != own:
        raise CheckpointError(f"--ckpt_path {ckpt_path}: hyper_parameters._class_path names the model class "
                              f"{cls_path!r}; iggt loads {own} only")
    # the weights come from the checkpoint itself; a stored init_checkpoint names a file of the author's machine
    hparams.pop("init_checkpoint", None)
    # the optimizer and scheduler name classes: only the user's own config gives them (the module never stores them)
    accepted = set(inspect.signature(IGGTLitModule.__init__).parameters) - {"self", "optimizer", "lr_scheduler"}
    unknown = sorted(set(hparams) - accepted)
    if unknown:
        raise CheckpointError(f"--ckpt_path {ckpt_path}: unknown hyper-parameter(s) {unknown}; "
                              f"IGGTLitModule takes {sorted(accepted)}")
    if hparams.get("heads") is not None or hparams.get("preset") is not None:
        model_size_check(lambda: _network_of(hparams), state_numel(ckpt["state_dict"], "model."),
                         f"--ckpt_path {ckpt_path}", "its hyper-parameters (preset, backbone, heads)")
    return hparams


# Options one subcommand takes, declared for every subcommand (LightningCLI's public hook, add_arguments_to_parser,
# does not say which subcommand a parser is for) and refused by before_instantiate_classes where they do not apply.
SUBCOMMAND_OPTIONS = {"out": ("predict",), "overwrite": ("predict",), "export_options": ("predict",),
                      "windows": ("predict",),
                      "results": ("validate", "test")}


def _as_dict(spec):
    """jsonargparse's namespace of a class (``class_path`` + ``init_args``) -> the plain mapping the module takes."""
    return spec.as_dict() if hasattr(spec, "as_dict") else spec


# Lightning's subcommands as ``iggt``'s table (iggt_lightning/cli.py) names them; the others keep their names
TYPED_NAMES = {"predict": "predict-dataset"}


class IggtArgumentParser(LightningArgumentParser):
    """Lightning's parser whose usage line names what a user typed: jsonargparse sets a subcommand parser's
    ``prog`` to ``"iggt [options] predict"`` when it adds it, and ``iggt predict-dataset --help`` should say
    ``usage: iggt predict-dataset``."""

    @property
    def prog(self) -> str:
        return self._typed_prog

    @prog.setter
    def prog(self, value: str) -> None:
        head, sep, method = (value or "").rpartition(" [options] ")
        self._typed_prog = f"{head} {TYPED_NAMES.get(method, method)}" if sep else value


class IGGTCLI(LightningCLI):
    """Lightning's CLI over :class:`IGGTLitModule` and the scene datamodules, with the checkpoint checks of this
    project. Only public hooks are overridden, except ``_parse_ckpt_path`` (the one place a ``--ckpt_path`` file's
    hyper-parameters enter the config; tests/test_lightning_cli_contract.py pins what it relies on)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, trust_checkpoint_code: bool = False,
                 **kwargs) -> None:
        load_plugins()
        self.trust_checkpoint_code = trust_checkpoint_code
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # the usage lines say iggt; Lightning's predict is `iggt predict-dataset` (iggt_lightning/cli.py's table)
        kwargs.setdefault("parser_kwargs", {"default_env": False, "prog": "iggt", "predict": {
            "description": "iggt predict-dataset (Lightning's predict): a dataset config -> one folder per scene "
                           "under --out"}})
        # LightningCLI's automatic optimizer would build one group over all parameters and replace the module's
        # configure_optimizers: the optimizer arguments are linked to the module instead (add_arguments_to_parser)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", IggtArgumentParser)
        super().__init__(IGGTLitModule, SceneDataModule, subclass_mode_model=False, subclass_mode_data=True,
                         args=args, run=run, **kwargs)

    def init_parser(self, **kwargs):
        """Lightning's parser, whose ``--config`` also takes a packaged config's name (``--config synthetic_tiny``,
        from any folder: iggt_lightning/config_files.py)."""
        import lightning.pytorch as pl

        from .config_files import ConfigFileOrName

        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument("-c", "--config", action=ConfigFileOrName,
                            help="a configuration file (yaml or json), or the name of a packaged config "
                                 "(synthetic_tiny, eval/scannet_table1, ...)")
        return parser

    def parse_arguments(self, parser, args) -> None:
        """Lightning's parsing, without its warning about ``args`` given beside ``sys.argv``: ``iggt`` always
        passes the arguments itself (``iggt predict-dataset ...`` is Lightning's ``predict ...``)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"data": {"class_path": f"{SyntheticDataModule.__module__}.SyntheticDataModule"}})
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch intra-op threads (CPU results depend on it: a config quoting numbers pins it)")
        # LightningCLI's top-level form, handed to the module's own arguments so its parameter groups stay
        # (model.lr, model.backbone_lr, model.weight_decay own the learning rates and the decay: not arguments here)
        parser.add_subclass_arguments((Optimizer,), "optimizer", instantiate=False, fail_untyped=False, required=False,
                                      skip={"params", "lr", "weight_decay"},
                                      help="a torch.optim optimizer instead of AdamW (SGD, or class_path + init_args); "
                                           "learning rates and weight decay: model.lr, model.backbone_lr, "
                                           "model.weight_decay")
        parser.add_subclass_arguments((LRScheduler,), "lr_scheduler", instantiate=False, fail_untyped=False,
                                      required=False, skip={"optimizer"},
                                      help="a torch.optim.lr_scheduler scheduler instead of the warm-up cosine one, "
                                           "stepped after every optimizer step")
        parser.link_arguments("optimizer", "model.optimizer", compute_fn=_as_dict)
        parser.link_arguments("lr_scheduler", "model.lr_scheduler", compute_fn=_as_dict)
        only = parser.add_argument_group("Options of one subcommand", "refused by the others")
        # where the PredictionWriter puts one folder per scene, and what it passes to the plugins' exports
        only.add_argument("--out", type=Optional[str], default=None,
                          help="predict (required): folder of the per-scene output folders")
        only.add_argument("--overwrite", type=Optional[bool], default=None,
                          help="predict: replace scene folders of a previous prediction")
        only.add_argument("--export_options", type=Optional[dict], default=None,
                          help="predict: options of the plugins' exports (conf_threshold, conf_mode, points_from, "
                               "save_images, depth_png_scale, ...)")
        only.add_argument("--windows", type=Optional[dict], default=None,
                          help="predict: each scene's views in overlapping windows aligned into one reconstruction, "
                               "instance ids kept across them (docs/long-videos.md): {window: N, overlap: K, "
                               "association: true}; for scenes of more views than one pass holds")
        only.add_argument("--results", type=Optional[str], default=None,
                          help="validate, test: also write the metrics as JSON here (with the configs and checkpoint "
                               "used), for benchmarks/eval_report.py")

    def _subconfig(self):
        """The running subcommand's config (the whole config when there are no subcommands: ``run=False``)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        threads = config.get("threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be a positive integer or null; got {threads}")
            torch.set_num_threads(int(threads))
        if not self.subcommand:
            return
        typed = TYPED_NAMES
        for key, owners in SUBCOMMAND_OPTIONS.items():
            if config.get(key) is not None and self.subcommand not in owners:
                takes = " and ".join(f"iggt {typed.get(s, s)}" for s in owners)
                raise ValueError(f"--{key}: only {takes} {'takes' if len(owners) == 1 else 'take'} it, not "
                                 f"iggt {typed.get(self.subcommand, self.subcommand)}")
        if self.subcommand == "fit":
            context_parallel_strategy.refuse_fit(config.get("trainer", {}).get("strategy"))
        if self.subcommand == "predict":
            if not config.get("out"):
                raise ValueError("--out: iggt predict-dataset needs the folder to write one folder per scene in")
            if config.get("return_predictions") is None:
                config["return_predictions"] = False     # the writer has them; do not hold them all in memory
        if "weights_only" in config and config.get("weights_only") is None:
            config["weights_only"] = True  # torch < 2.6 would otherwise unpickle whatever a checkpoint holds
        if self.subcommand in ("validate", "test"):
            self._check_results_path(config)

    def _check_results_path(self, cfg) -> None:
        """Before anything runs: the results file may not be one of the run's inputs."""
        path = cfg.get("results")
        configs = [str(c) for c in (cfg.get("config") or [])]
        inputs = [*configs, *(str(x) for x in (cfg.get("ckpt_path"), cfg["model"].get("init_checkpoint")) if x)]
        from .inference.output_folder import refuse_overlap

        refuse_overlap(path, inputs, "--results")   # the one input-vs-output rule of every writer

    def _write_results(self, stage: str) -> None:
        cfg = self._subconfig()
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

    def _warn_precision(self) -> None:
        """bf16 on a CPU without bf16 instructions: said once, before the run (cpu_features)."""
        from .cpu_features import bf16_warning

        accelerator = type(self.trainer.accelerator).__name__.lower()
        warning = bf16_warning("cpu" if accelerator.startswith("cpu") else "other", self.trainer.precision)
        if warning:
            rank_zero_warn(warning.replace("--precision bf16", "trainer.precision bf16")
                           .replace("use --precision 32", "use trainer.precision 32"))

    def before_test(self) -> None:
        self._warn_precision()

    def before_validate(self) -> None:
        self._warn_precision()

    def before_predict(self) -> None:
        self._warn_precision()
        from .inference.writer import PredictionWriter

        cfg = self._subconfig()
        datasets = getattr(self.datamodule, "datasets", None) or {}
        roots = [str(d.root) for d in datasets.values() if getattr(d, "root", None) is not None]
        if not any(isinstance(cb, PredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter(cfg["out"], overwrite=bool(cfg["overwrite"]),
                                                           options=dict(cfg["export_options"] or {}), inputs=roots,
                                                           windows=cfg.get("windows")))
        self._signals = _stop_on_signals()

    def after_predict(self) -> None:
        _restore_signals(getattr(self, "_signals", {}))

    def _stored_state_check(self):
        sub = self.config.get("subcommand")
        return stored_state_check(self.trust_checkpoint_code, self.config[sub].get("model") if sub else None)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if path and Path(path).is_file() and not isinstance(err, CheckpointError):
                # the module's arguments came (in part) from the file: say so, naming it
                raise CheckpointError(f"--ckpt_path {path}: its hyper-parameters do not build the module: {err}") \
                    from err
            raise

    def _parse_ckpt_path(self) -> None:
        """Overrides a private LightningCLI method (the only one here; tests/test_lightning_cli_contract.py pins it):
        Lightning's merges a ``--ckpt_path`` file's hyper-parameters into the model config by parsing them, which
        imports any class path the file names, before any public hook runs. Here the whole file is checked as data
        first (:mod:`~iggt_lightning.stored_state`), the network its hyper-parameters build is sized on the meta
        device against the file's tensors, and the values are set in the config directly: jsonargparse never
        parses (nor instantiates) anything from the file."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        ckpt = load_tensor_file(ckpt_path)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise CheckpointError(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (no 'state_dict')")
        self._stored_state_check()(ckpt, ckpt_path)
        hparams = module_arguments(ckpt, ckpt_path)
        model_cfg = self.config[sub]["model"]
        for key, value in hparams.items():
            model_cfg[key] = value   # checked data, set as is: no parsing, no class_path resolution

    def instantiate_trainer(self, **kwargs):
        saver = self.save_config_callback
        logger = (self._subconfig().get("trainer") or {}).get("logger")
        if self.subcommand == "predict" or (self.subcommand in ("validate", "test") and logger is False):
            # without a logger its config.yaml would land in (and overwrite one in) the working directory; the
            # prediction folders and --results files say what ran
            self.save_config_callback = None
        try:
            trainer = super().instantiate_trainer(**kwargs)
        finally:
            self.save_config_callback = saver
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO(self._stored_state_check(), trainer)
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        # exact resumes (RNG states, the same logger version) and last.ckpt at the final step: training_callbacks.py
        add_resume_state(trainer)
        if self.subcommand == "fit":
            reuse_logger_versions(trainer, self._subconfig().get("ckpt_path"), check=self._stored_state_check())
        return trainer


def run_lightning_cli(argv: list[str], trust_checkpoint_code: bool = False) -> IGGTCLI:
    return IGGTCLI(args=argv, trust_checkpoint_code=trust_checkpoint_code)
