"""IGGTLitModule: training, validation and testing of an IGGTModel with Lightning.

Loss terms are summed with per-term weights from the config (``loss_weights``), so an ablation is a
YAML change: ``contrastive: 0`` switches the instance loss off, ``contrastive_options.cross_view: false``
restricts its pairs to single views.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch
from lightning import LightningModule

from .geometry import extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from .losses import camera_loss, depth_loss, instance_contrastive_loss, point_loss
from .metrics import CameraMetrics, DepthMetrics
from .model import IGGTModel

DEFAULT_WEIGHTS = {"camera": 1.0, "depth": 1.0, "point": 1.0, "contrastive": 1.0}


class IGGTLitModule(LightningModule):
    """Args:
        preset: an IGGTModel preset name (``nano``, ``tiny``, ``iggt-large``, ...), or None with ``model``.
        model: IGGTModel arguments (``backbone``, ``heads``) merged over the preset.
        drop_heads: heads of the preset to leave out.
        loss_weights: term -> weight (``camera``, ``depth``, ``point``, ``contrastive``).
        contrastive_options: keyword arguments of ``instance_contrastive_loss`` (``num_samples``,
            ``margin``, ``lambda_pull``, ``lambda_push``, ``cross_view``).
        lr / backbone_lr: learning rates of the heads and the backbone (backbone_lr defaults to lr).
        weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to 0 at the last step.
        freeze: regular expressions on parameter names to freeze (e.g. ``["^backbone\\."]``).
        init_checkpoint: weights to start from (our format or an official IGGT/VGGT checkpoint).
        log_images_every_n_steps: TensorBoard images (input, depth, PCA of instance features); 0 = off.
    """

    def __init__(self, preset: str | None = "nano", model: dict | None = None, drop_heads: list[str] | None = None,
                 loss_weights: dict[str, float] | None = None, contrastive_options: dict | None = None,
                 lr: float = 1e-4, backbone_lr: float | None = None, weight_decay: float = 0.05,
                 warmup_steps: int = 100, freeze: list[str] | None = None, init_checkpoint: str | None = None,
                 log_images_every_n_steps: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = set(loss_weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss term(s) {sorted(unknown)}; expected {sorted(DEFAULT_WEIGHTS)}")
        if preset is not None:
            self.model = IGGTModel.from_preset(preset, drop_heads=list(drop_heads or ()), **(model or {}))
        else:
            if not model:
                raise ValueError("give a preset or a model configuration")
            self.model = IGGTModel(**model)
        self.hparams["model_config"] = self.model.config
        self.loss_weights = {**DEFAULT_WEIGHTS, **(loss_weights or {})}
        self.contrastive_options = dict(contrastive_options or {})
        if init_checkpoint:
            from .checkpoints import CheckpointError, convert_official_state_dict, read_file

            sd, meta = read_file(init_checkpoint)
            if not meta:
                sd = convert_official_state_dict(sd, self.model)
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"init_checkpoint {init_checkpoint} does not fit the model: missing "
                                      f"{sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}")
        for pattern in freeze or ():
            hits = [n for n, p in self.model.named_parameters() if re.search(pattern, n)]
            if not hits:
                raise ValueError(f"freeze pattern {pattern!r} matches no parameter")
            for n, p in self.model.named_parameters():
                if re.search(pattern, n):
                    p.requires_grad_(False)
        self.val_depth, self.test_depth = DepthMetrics(), DepthMetrics()
        self.val_camera, self.test_camera = CameraMetrics(), CameraMetrics()

    def forward(self, images: torch.Tensor, **kwargs: Any) -> dict:
        return self.model(images, **kwargs)

    # ------------------------------------------------------------------ losses
    def compute_losses(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        H, W = batch["images"].shape[-2:]
        w = self.loss_weights
        terms: dict[str, torch.Tensor] = {}
        total = batch["images"].new_zeros(())
        valid = batch["valid_mask"]
        if "pose_enc" in out and w["camera"]:
            gt_enc = extri_intri_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (H, W))
            cam = camera_loss(out["pose_enc"], gt_enc)
            terms.update(cam)
            total = total + w["camera"] * cam["loss_camera"]
        if "depth" in out and w["depth"]:
            d = depth_loss(out["depth"], out["depth_conf"], batch["depth"], valid)
            terms.update(d)
            total = total + w["depth"] * d["loss_depth"]
        if "world_points" in out and w["point"]:
            p = point_loss(out["world_points"], out["world_points_conf"], batch["world_points"], valid)
            terms.update(p)
            total = total + w["point"] * p["loss_point"]
        if "part_feat" in out and w["contrastive"]:
            c = instance_contrastive_loss(out["part_feat"], batch["instance_ids"], **self.contrastive_options)
            terms.update(c)
            total = total + w["contrastive"] * c["loss_contrastive"]
        terms["loss"] = total
        return terms

    def _prepare(self, batch: dict) -> dict:
        from .data.normalize import normalize_scene

        return normalize_scene(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self._prepare(batch)
        out = self.model(batch["images"])
        terms = self.compute_losses(out, batch)
        bs = batch["images"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=bs, prog_bar=False)
        self.log("train/loss", terms["loss"].detach(), batch_size=bs, prog_bar=True)
        n = self.hparams.log_images_every_n_steps
        if n and self.global_step % n == 0:
            self._log_images(batch, out)
        return terms["loss"]

    def _evaluate(self, batch: dict, stage: str) -> None:
        batch = self._prepare(batch)
        out = self.model(batch["images"])
        terms = self.compute_losses(out, batch)
        bs = batch["images"].shape[0]
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=bs, sync_dist=True)
        depth_metric = self.val_depth if stage == "val" else self.test_depth
        camera_metric = self.val_camera if stage == "val" else self.test_camera
        if "depth" in out:
            depth_metric.update(out["depth"], batch["depth"], batch["valid_mask"])
        if "pose_enc" in out:
            H, W = batch["images"].shape[-2:]
            extr, _ = pose_encoding_to_extri_intri(out["pose_enc"][-1], (H, W))
            camera_metric.update(extr, batch["extrinsics"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_metric_dicts(self, stage: str) -> None:
        for metric in ((self.val_depth, self.val_camera) if stage == "val" else (self.test_depth, self.test_camera)):
            if metric.update_count:
                for k, v in metric.compute().items():
                    self.log(f"{stage}/{k}", v.float(), sync_dist=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric_dicts("val")

    def on_test_epoch_end(self) -> None:
        self._log_metric_dicts("test")

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def _log_images(self, batch: dict, out: dict) -> None:
        logger = getattr(self.logger, "experiment", None)
        if logger is None or not hasattr(logger, "add_image"):
            return
        img = batch["images"][0, 0]
        logger.add_image("input", img.clamp(0, 1), self.global_step)
        if "depth" in out:
            d = out["depth"][0, 0, ..., 0]
            logger.add_image("depth", ((d - d.min()) / (d.max() - d.min() + 1e-8))[None], self.global_step)
        if "part_feat" in out:
            logger.add_image("instance_pca", pca_colours(out["part_feat"][0, 0]), self.global_step)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        groups: dict[tuple[float, float], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            lr = backbone_lr if name.startswith("backbone.") else hp.lr
            no_decay = p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed"))
            groups.setdefault((lr, 0.0 if no_decay else hp.weight_decay), []).append(p)
        opt = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1
        warm = min(hp.warmup_steps, max(0, total - 1))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def pca_colours(features: torch.Tensor) -> torch.Tensor:
    """[D,H,W] features -> [3,H,W] colours from the top-3 principal components (2-98 % stretched)."""
    D, H, W = features.shape
    x = torch.nn.functional.normalize(features.reshape(D, -1).T.float(), dim=-1)
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[: min(3, D)].T
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], 1)
    lo, hi = torch.quantile(proj, 0.02, dim=0), torch.quantile(proj, 0.98, dim=0)
    return ((proj - lo) / (hi - lo + 1e-8)).clamp(0, 1).T.reshape(3, H, W)
