"""IGGTLitModule: training, validation and testing of an IGGTModel with Lightning.

Each head brings its loss terms (``Head.loss_terms`` / ``Head.loss``); the module sums them with per-term
weights from the config (``loss_weights``), so an ablation is a YAML change: ``contrastive: 0`` switches the
instance loss off, ``loss_options.contrastive.cross_view: false`` restricts its pairs to single views.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import time
from typing import Any

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .checkpoints import CheckpointError, load_state, load_weights, read_for_building
from .losses.options import check_loss_options
from .model import PRESETS, build_model
from .optimizers import build_optimizer, build_scheduler
from .optimizers import resolve as resolve_optimizer
from .postprocessor import (build_postprocessing, checkpoint_postprocess, move_postprocessors_out_of_drop_heads,
                            move_postprocessors_out_of_heads)
from .visualize import pca_colours  # noqa: F401 (kept importable from here)


class IGGTLitModule(LightningModule):
    """Args:
        preset: an IGGTModel preset name (``nano``, ``tiny``, ``iggt-large``, ...); None = build from
            ``backbone`` and ``heads`` alone. Both go through :func:`~iggt_lightning.model.build_model`.
        backbone: Aggregator arguments merged over the preset's (e.g. ``{gradient_checkpointing: true}``).
        heads: head name -> arguments, merged over the preset's heads; a new name adds a head (a registered
            name, or ``{class_path: pkg.module.MyHead, init_args: {...}}``).
        drop_heads: configured heads to leave out (e.g. ``[track]``; a non-trainable head needing one goes too), or
            heads of ``init_checkpoint`` that the configuration does not build (their tensors are skipped).
        postprocess: post-processors run after the network at test / predict time (``iggt_lightning.postprocessor``),
            merged over the defaults (``tracking`` for a model with an instance head): e.g. ``{tracking: {clusterer:
            {name: hdbscan}}, open_vocab: {class_names: [...]}}``; ``drop_postprocess``: defaults to leave out.
        frames_chunk_size: frames a dense head decodes at once at validate / test / predict time (memory bound
            only); training decodes the whole batch, so BatchNorm statistics never depend on it.
        head_precision: under a reduced-precision ``trainer.precision`` (``bf16-mixed``): ``fp32`` keeps the heads in
            float32, as the official model does (the default); ``autocast`` runs them in bf16 too, at every stage,
            training included. On CPU the heads are most of the arithmetic, so only that makes bf16 fast there
            (``iggt test --trainer.precision bf16-mixed --model.head_precision autocast``; docs/speed.md).
        loss_weights: term -> weight, for the terms the configured heads declare (built-ins: ``camera``,
            ``depth``, ``point``, ``contrastive``); a term not listed has weight 1, weight 0 skips it.
        loss_options: term -> options of that term (e.g. ``contrastive: {cross_view: false, num_samples:
            2048}``, ``camera: {loss_type: huber}``, ``depth: {gradient_weight: 0}``).
        lr / backbone_lr: learning rates of the heads and the backbone (backbone_lr defaults to lr).
        weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to 0 at the last step.
        optimizer / lr_scheduler: another torch.optim optimizer / torch.optim.lr_scheduler scheduler instead
            (``SGD`` or ``{class_path: torch.optim.SGD, init_args: {momentum: 0.9}}``; a config gives them at its
            top level, ``optimizer:`` / ``lr_scheduler:``): see :mod:`iggt_lightning.optimizers`. The parameter
            groups (lr, backbone_lr, weight_decay) stay; a scheduler replaces the warm-up cosine one. Never stored
            in the hyper-parameters, so a checkpoint cannot name one.
        freeze: what not to train: module names (``backbone``, ``heads.depth``: the module and everything under
            it) or regular expressions on parameter names (``^backbone\\.``); one matching nothing is an error.
        init_checkpoint: weights to start from (our format, a Lightning ``.ckpt`` or an official IGGT/VGGT
            checkpoint; its stored config is never built). Every tensor the file has for the configured model is
            loaded, strictly; a head the file has no tensor of (a head you add) keeps its fresh initialisation
            and is named in the log; a head the file has and the configuration leaves out must be in
            ``drop_heads``. See :func:`~iggt_lightning.checkpoints.load_weights`.
        metric_options: plugin name -> keyword arguments of its ``build_metrics`` (an evaluation protocol, e.g.
            ``{depth: {clip_range: [0.1, 100]}, camera: {pairs: unordered, aggregate: category}}``); a
            post-processor takes its metric options in ``postprocess`` instead.
        log_images_every_n_steps: TensorBoard images every n training steps (the input and each head's
            ``log_images``: depth, PCA of instance features) and of the first validation batch (post-processors'
            too: instance ids); 0 = off.
    """

    def __init__(self, preset: str | None = "nano", backbone: dict | None = None, heads: dict[str, dict | None] | None = None,
                 drop_heads: list[str] | None = None, postprocess: dict[str, dict | None] | None = None,
                 drop_postprocess: list[str] | None = None, frames_chunk_size: int | None = 8,
                 loss_weights: dict[str, float] | None = None, loss_options: dict[str, dict[str, Any]] | None = None,
                 lr: float = 1e-4, backbone_lr: float | None = None, weight_decay: float = 0.05,
                 warmup_steps: int = 100, freeze: list[str] | None = None, init_checkpoint: str | None = None,
                 metric_options: dict[str, dict[str, Any]] | None = None, log_images_every_n_steps: int = 0,
                 optimizer: dict | str | None = None, lr_scheduler: dict | str | None = None,
                 head_precision: str = "fp32") -> None:
        super().__init__()
        # optimizer / lr_scheduler name classes: they come from the user's own config each run, never from a file
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        _check_training_fields(lr=lr, backbone_lr=backbone_lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                               frames_chunk_size=frames_chunk_size,
                               log_images_every_n_steps=log_images_every_n_steps)
        self.optimizer_spec = resolve_optimizer(optimizer, "optimizer")
        self.lr_scheduler_spec = resolve_optimizer(lr_scheduler, "lr_scheduler")
        if self.lr_scheduler_spec is not None and warmup_steps:
            # nothing silent: a configured scheduler replaces the warm-up cosine one, warm-up included
            rank_zero_warn(f"model.warmup_steps={warmup_steps} is not used: lr_scheduler "
                           f"{self.lr_scheduler_spec[0].__name__} replaces the default warm-up + cosine schedule "
                           "(set model.warmup_steps 0 to silence this, or leave lr_scheduler out)")
        # configs written before post-processing was its own component name tracking / open_vocab as heads
        heads, moved = move_postprocessors_out_of_heads(heads, "model.heads")
        postprocess = {**moved, **dict(postprocess or {})}
        drop_heads, moved_drops = move_postprocessors_out_of_drop_heads(drop_heads, "model.drop_heads")
        drop_postprocess = [*(drop_postprocess or []), *moved_drops]
        # drop_heads may also name a head the configuration does not build but the init_checkpoint file has (it
        # then says "leave that head of the file out"); such a name must be a head of the file or a registered
        # head (a resumed run no longer reads the file), so a misspelt name is still an error
        configured = set(PRESETS[preset]["heads"] if preset in PRESETS else ()) | set(heads or ())
        drop = list(drop_heads or ())
        unbuilt = [h for h in drop if h not in configured]
        if not init_checkpoint:
            self._check_unbuilt_drops(unbuilt, preset, configured, None)
        self.model = build_model(preset, backbone=backbone, heads=heads,
                                 drop_heads=[h for h in drop if h not in unbuilt], frames_chunk_size=frames_chunk_size)
        self.model.set_head_precision(head_precision, "model.head_precision")
        self.postprocess = build_postprocessing(postprocess, self.model.heads, drop_postprocess)
        self.loss_weights, self.loss_options = self._check_loss_config(loss_weights or {}, loss_options or {})
        # A head no active loss term trains (track, a zero-weighted ablation) would get no gradient: freeze
        # it, which changes nothing for the optimiser and keeps DDP from failing on unused parameters.
        # head -> {term: options} of its terms with a non-zero weight, fixed for the run
        self.active_losses = {n: {t: self.loss_options[t] for t in h.loss_terms if self.loss_weights[t]}
                              for n, h in self.model.heads.items() if h.trainable}
        self.frozen_heads = [n for n in self.model.heads if not self.active_losses.get(n)]
        for name in self.frozen_heads:
            self.model.heads[name].requires_grad_(False)
        self.init_report = None
        if init_checkpoint:
            # the file's tensors of every head the model leaves out on purpose (drop_heads, their dependants) are
            # skipped; a head it has that the configuration does not name is an error
            left_out = (configured - set(self.model.heads)) | set(unbuilt)
            self.init_report = load_weights(self.model, init_checkpoint, new_heads_ok=True, drop_heads=sorted(left_out),
                                            what=f"init_checkpoint {init_checkpoint}", against="the configured model")
            self._check_unbuilt_drops(unbuilt, preset, configured, set(self.init_report.ignored))
            rank_zero_info(self.init_report.summary())
        self.frozen_by_pattern = self._freeze(list(freeze or ()))
        rank_zero_info(self._trainable_summary())
        # each head brings its metrics (Head.build_metrics); one set per stage so validation inside fit
        # never mixes with a test run
        self.metric_options = self._check_metric_options(dict(metric_options or {}))
        self.val_metrics = self._build_metrics()
        self.test_metrics = self._build_metrics()

    @classmethod
    def from_checkpoint_file(cls, path: str | os.PathLike, preset: str | None = None, trust_code: bool = False,
                             postprocess: dict | None = None) -> "IGGTLitModule":
        """The module for prediction from a checkpoint file (ours, a Lightning ``.ckpt``, an official IGGT/VGGT
        file, a model folder or Hub id): its network, built from the file's stored config checked as data (or the
        official preset) and loaded strictly as :func:`~iggt_lightning.checkpoints.load_model` does, and its
        post-processing (the stored ``postprocess``, or the defaults for its heads) with ``postprocess`` merged
        over it (e.g. another clusterer). ``trust_code``: see :mod:`iggt_lightning.registry`."""
        sd, config, kind = read_for_building(path, preset, trust_code)
        specs, drop = checkpoint_postprocess((config or {}).get("postprocess"), postprocess)
        try:
            if config is not None:
                module = cls(preset=None, backbone=config.get("backbone"), heads=config.get("heads"),
                             frames_chunk_size=config.get("frames_chunk_size", 8), postprocess=specs,
                             drop_postprocess=drop)
            else:
                module = cls(preset=kind, postprocess=specs, drop_postprocess=drop)
        except CheckpointError:
            raise
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: its model configuration cannot be built: {err}") from err
        load_state(module.model, sd, official=config is None, what=str(path),
                   against="the model its own stored config builds" if config is not None else "the model")
        return module

    @staticmethod
    def _check_unbuilt_drops(names: list[str], preset: str | None, configured: set[str],
                             in_file: set[str] | None) -> None:
        """drop_heads names the configuration does not build: each must be a registered head or (``in_file``:
        the heads init_checkpoint has, None without one) a head of the file."""
        from .registry import registered_head

        unknown = [h for h in names if h not in (in_file or ()) and registered_head(h) is None]
        if unknown:
            where = f"preset {preset!r}" if preset is not None else "the configuration"
            raise ValueError(f"drop_heads: {where} has no head(s) {unknown}"
                             + (", nor has init_checkpoint" if in_file is not None else "")
                             + f"; configured heads: {sorted(configured)}")

    def _freeze(self, patterns: list[str]) -> list[str]:
        """``freeze``: a module name (``backbone``, ``heads.depth``) freezes the module and everything under it;
        anything else is a regular expression searched in parameter names. -> the parameters it froze."""
        params = dict(self.model.named_parameters())
        modules = {n for n, _ in self.model.named_modules() if n}
        frozen: dict[str, None] = {}          # ordered, each name once
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"freeze: expected module names or regular expressions; got {pattern!r}")
            if pattern in modules:  # a module name first, so heads.depth does not also freeze heads.depth_x
                hits = [n for n in params if n.startswith(pattern + ".")]
            else:
                try:
                    rx = re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"freeze pattern {pattern!r} is neither a module name nor a valid regular "
                                     f"expression ({err})") from err
                hits = [n for n in params if rx.search(n)]
            if not hits:
                top = ["backbone", *(f"heads.{h}" for h in self.model.heads)]
                raise ValueError(f"freeze pattern {pattern!r} matches no parameter; give a module name (it freezes "
                                 f"everything under it) or a regular expression on parameter names; the model's "
                                 f"modules: {', '.join(top)}")
            for n in hits:
                params[n].requires_grad_(False)
            frozen.update(dict.fromkeys(hits))
        return list(frozen)

    def _trainable_summary(self) -> str:
        counts = {n: p.numel() for n, p in self.model.named_parameters()}
        total, train = sum(counts.values()), sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        by_loss = {n for n in counts if n.split(".")[0] == "heads" and n.split(".")[1] in self.frozen_heads}
        why = []
        if self.frozen_by_pattern:
            why.append(f"{sum(counts[n] for n in self.frozen_by_pattern):,} by freeze {self.hparams.freeze}")
        rest = by_loss - set(self.frozen_by_pattern)
        if rest:
            heads = sorted({n.split(".")[1] for n in rest})
            why.append(f"{sum(counts[n] for n in rest):,} in head(s) {heads} without an active loss term")
        explained = sum(counts[n] for n in set(self.frozen_by_pattern) | by_loss)
        if total - train > explained:  # parameters a head keeps frozen itself (the instance head's unused cross_attention_1)
            why.append(f"{total - train - explained:,} frozen by their own head")
        return (f"trainable: {train:,} of {total:,} parameters; frozen: {total - train:,}"
                + (f" ({'; '.join(why)})" if why else ""))

    def plugins(self) -> list[tuple[str, Any]]:
        """(name, plugin) of every head in running order, then every post-processor in running order."""
        return [*self.model.heads.items(), *self.postprocess.items.items()]

    def _check_metric_options(self, options: dict) -> dict:
        plugins = dict(self.plugins())
        for name, opts in options.items():
            if name not in plugins:
                raise ValueError(f"model.metric_options: {name!r} is not a head or post-processor of this model "
                                 f"({sorted(plugins)})")
            if not isinstance(opts, dict):
                raise ValueError(f"model.metric_options.{name} must be a mapping of build_metrics arguments; got "
                                 f"{opts!r}")
            build = plugins[name].build_metrics
            try:
                inspect.signature(build).bind(**opts)
            except TypeError as err:
                raise ValueError(f"model.metric_options.{name}: {type(plugins[name]).__name__}.build_metrics"
                                 f"{inspect.signature(build)} does not take {sorted(opts)}: {err}") from None
            # typed by build_metrics' annotations (one rule for arguments read from configs and files)
            from .stored_state import Arguments, StoredStateError, check

            try:
                check(opts, Arguments(build), "model.metric_options", name)
            except StoredStateError as err:
                raise ValueError(str(err).replace("model.metric_options: ", "model.metric_options.", 1)) from None
        return options

    def _build_metrics(self) -> torch.nn.ModuleDict:
        built = {n: p.build_metrics(**self.metric_options.get(n, {})) for n, p in self.plugins()}
        return torch.nn.ModuleDict({n: torch.nn.ModuleDict(m) for n, m in built.items() if m})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The built architecture travels beside the hyper-parameters, not inside them: LightningCLI re-parses a
        # checkpoint's hyper-parameters as IGGTLitModule arguments (``--ckpt_path file``).
        checkpoint["iggt_model_config"] = {**self.model.config, "postprocess": self.postprocess.config}

    def configure_model(self) -> None:
        """Under Lightning's ModelParallelStrategy, shard with FSDP2 over the data-parallel mesh: one unit per
        transformer block and per head, the rest (embeddings, tokens) in the root unit. Other strategies: no-op."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or getattr(self, "_sharded", False):
            return
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6
            from torch.distributed._composable.fsdp import fully_shard
        if mesh["tensor_parallel"].size() > 1:
            raise ValueError(f"IGGT applies no tensor parallelism, but the ModelParallelStrategy mesh has "
                             f"tensor_parallel_size={mesh['tensor_parallel'].size()}; set data_parallel_size to "
                             "devices x nodes and tensor_parallel_size: 1 (see configs/strategies/fsdp.yaml)")
        dp_mesh = mesh["data_parallel"]
        backbone = self.model.backbone
        heads = [h for h in self.model.heads.values() if any(True for _ in h.parameters())]
        for block in [*backbone.frame_blocks, *backbone.global_blocks, *heads]:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(self.model, mesh=dp_mesh)
        self._sharded = True

    def forward(self, images: torch.Tensor, **kwargs: Any) -> dict:
        return self.model(images, **kwargs)

    def run(self, images: torch.Tensor, stage: str) -> dict:
        """The network, then the post-processors of ``stage`` (validate, test, predict): the one path the test
        loop and prediction share."""
        self.postprocess.check_inputs(images)
        t0 = time.perf_counter()
        out = self.model(images)
        t1 = time.perf_counter()
        out = self.postprocess(out, out["images"], stage)
        self.last_run_seconds = {"network": round(t1 - t0, 3), "postprocess": round(time.perf_counter() - t1, 3)}
        return out

    # ------------------------------------------------------------------ losses
    def _check_loss_config(self, weights: dict, options: dict) -> tuple[dict[str, float], dict[str, dict]]:
        """Weights (numbers >= 0, not all 0) and options of the terms the trainable heads bring, each option
        checked against the loss function the owning head names for its term (``Head.loss_functions``)."""
        owners = {t: h for h in self.model.heads.values() if h.trainable for t in h.loss_terms}
        for field, given in (("loss_weights", weights), ("loss_options", options)):
            unknown = sorted(set(given) - set(owners))
            if unknown:
                raise ValueError(f"model.{field}: unknown loss term(s) {unknown}; the configured heads "
                                 f"{list(self.model.heads)} bring {sorted(owners)}")
        for term, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"model.loss_weights.{term} must be a finite number >= 0 (0 switches the term "
                                 f"off); got {w!r}")
        if owners and not any(weights.get(t, 1.0) for t in owners):
            raise ValueError(f"model.loss_weights: every loss term {sorted(owners)} has weight 0, so nothing would "
                             "train; give at least one a weight > 0")
        for term, opts in options.items():
            declared = getattr(owners[term], "loss_functions", {}).get(term)
            if declared is not None:
                check_loss_options(declared, opts, f"model.loss_options.{term}")
            elif not isinstance(opts, dict):
                raise ValueError(f"model.loss_options.{term} must be a mapping of options; got {opts!r}")
        return ({t: float(weights.get(t, 1.0)) for t in owners}, {t: dict(options.get(t) or {}) for t in owners})

    def compute_losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        """Every head's terms (``loss_<term>`` and sub-terms) and ``loss`` = sum of weight * ``loss_<term>``."""
        terms: dict[str, torch.Tensor] = {}
        total = batch["images"].new_zeros(())
        for name, active in self.active_losses.items():
            if not active:
                continue
            got = self.model.heads[name].loss(out, batch, active)
            for t in active:
                if f"loss_{t}" not in got:
                    raise RuntimeError(f"head {name!r} did not return 'loss_{t}' from loss()")
                total = total + self.loss_weights[t] * got[f"loss_{t}"]
            terms.update(got)
        terms["loss"] = total
        return terms

    def _prepare(self, batch: dict) -> dict:
        from .data.normalize import normalize_scene

        return normalize_scene(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self._prepare(batch)
        out = self.model(batch["images"])
        terms = self.compute_losses(out, batch)
        self._stop_if_non_finite(terms, batch)
        bs = batch["images"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", terms["loss"].detach(), batch_size=bs, prog_bar=True)
        n = self.hparams.log_images_every_n_steps
        if n and self.global_step % n == 0:
            self._log_images(batch, out)
        return terms["loss"]

    def _stop_if_non_finite(self, terms: dict[str, torch.Tensor], batch: dict) -> None:
        """Training stops at the first NaN/inf loss (on every rank at once under DDP), naming the step and terms."""
        bad = not bool(torch.isfinite(terms["loss"].detach()))
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            from .training_callbacks import NonFiniteLossError, format_non_finite

            scenes = batch.get("scene_id")
            main = ["loss", *(f"loss_{t}" for t in self.loss_weights)]       # the total and the terms, then sub-terms
            terms = {**{k: terms[k] for k in main if k in terms}, **terms}
            raise NonFiniteLossError(
                f"non-finite training loss at global step {self.global_step}: "
                f"{format_non_finite(terms) or 'finite here (another rank had a non-finite loss)'}"
                + (f" (scenes {list(scenes)})" if isinstance(scenes, (list, tuple)) else "")
                + "; training stopped")

    def _evaluate(self, batch: dict, stage: str, batch_idx: int = 0) -> None:
        batch = self._prepare(batch)
        out = self.run(batch["images"], "validate" if stage == "val" else stage)
        if stage == "val" and batch_idx == 0 and self.hparams.log_images_every_n_steps:
            self._log_images(batch, out)
        terms = self.compute_losses(out, batch)
        bs = batch["images"].shape[0]
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=bs, sync_dist=True)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        plugins = dict(self.plugins())
        for name, plugin_metrics in metrics.items():
            plugins[name].update_metrics(dict(plugin_metrics), out, batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """The network and the predict-stage post-processors on ``batch["images"]``; a
        :class:`~iggt_lightning.inference.writer.PredictionWriter` callback writes the result. With the writer's
        ``windows`` (``predict_windows``), a scene of more views than a window runs in overlapping windows
        aligned into one reconstruction (:mod:`iggt_lightning.inference.windowed`)."""
        windows = getattr(self, "predict_windows", None)
        images = batch["images"]
        if windows is None or images.shape[1] <= windows.window:
            return self.run(images, "predict")
        return self._predict_windowed(images, windows)

    def _predict_windowed(self, images: torch.Tensor, options) -> dict:
        from iggt_lightning.inference.windowed import describe_windows, iter_windows, plan_windows, reconstruct

        if images.shape[0] != 1:
            raise ValueError(f"--windows runs one scene at a time; the predict batch holds {images.shape[0]} "
                             "(set data.init_args.batch_size 1)")
        S = images.shape[1]
        result = reconstruct(lambda window: self.run(window, "predict"),
                             iter_windows(plan_windows(S, options.window, options.overlap), iter(images[0])), S,
                             options)
        outputs = {k: (v.to(images.device) if torch.is_tensor(v) else v) for k, v in result.outputs.items()}
        outputs["windowed"] = [{"window": options.window, "overlap": options.overlap,
                                "association": options.associate, **describe_windows(result.windows)}]
        return outputs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def _log_metric_dicts(self, stage: str) -> None:
        values: dict[str, torch.Tensor] = {}
        for head, head_metrics in (self.val_metrics if stage == "val" else self.test_metrics).items():
            for metric in head_metrics.values():
                if metric.update_count:
                    for k, v in metric.compute().items():
                        # metric names are flat (abs_rel, ap50, ...); a clash between heads gets the head's name
                        values[f"{head}/{k}" if k in values else k] = v
                metric.reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v.float(), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metric_dicts("val")

    def on_test_epoch_end(self) -> None:
        self._log_metric_dicts("test")

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def _log_images(self, batch: dict, out: dict) -> None:
        """The first view's input, and every plugin's :meth:`~iggt_lightning.plugin.Plugin.log_images`."""
        logger = getattr(self.logger, "experiment", None)
        if logger is None or not hasattr(logger, "add_image"):
            return
        logger.add_image("input", batch["images"][0, 0].clamp(0, 1), self.global_step)
        for name, plugin in self.plugins():
            for tag, image in plugin.log_images(out, batch).items():
                logger.add_image(f"{name}/{tag}", image.float().clamp(0, 1), self.global_step)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """The parameter groups (backbone / heads learning rate, decayed / not), under AdamW and the warm-up cosine
        schedule unless ``optimizer`` / ``lr_scheduler`` name others (:mod:`iggt_lightning.optimizers`)."""
        hp = self.hparams
        backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        groups: dict[tuple[float, float], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            lr = backbone_lr if name.startswith("backbone.") else hp.lr
            no_decay = p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed"))
            groups.setdefault((lr, 0.0 if no_decay else hp.weight_decay), []).append(p)
        opt = build_optimizer(self.optimizer_spec,
                              [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])
        total = max(1, int(self._trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        sched = build_scheduler(self.lr_scheduler_spec, opt, total, hp.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _check_training_fields(**values) -> None:
    """The optimisation and logging arguments, before anything is built: one error naming ``model.<field>``."""
    def number(name: str, ok, what: str, integer: bool = False, optional: bool = False) -> None:
        v = values[name]
        if v is None and optional:
            return
        kind = int if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v) or not ok(v):
            raise ValueError(f"model.{name} must be {what}; got {v!r}")

    number("lr", lambda v: v > 0, "a finite number > 0")
    number("backbone_lr", lambda v: v > 0, "a finite number > 0, or null for lr", optional=True)
    number("weight_decay", lambda v: v >= 0, "a finite number >= 0")
    number("warmup_steps", lambda v: v >= 0, "an integer >= 0", integer=True)
    number("frames_chunk_size", lambda v: v >= 1, "an integer >= 1 (frames a dense head decodes at once), or "
           "null for all", integer=True, optional=True)
    number("log_images_every_n_steps", lambda v: v >= 0, "an integer >= 0 (0: off)", integer=True)
