"""Callbacks and datamodules the CLI tests name by class_path (imported inside `iggt` subprocesses)."""
from __future__ import annotations

import json
import os

import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset

from iggt_lightning.data import SceneDataModule, SyntheticScenes


class KillAtStep(Callback):
    """Simulates a killed run: the process dies (no clean-up, no exception) once ``step`` steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)


class RecordSteps(Callback):
    """Writes the global step seen at the first and last training batch, and the world size, to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.first: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.tensor import DTensor

        # FSDP2 keeps the root unit (tokens, patch embedding) unsharded after a forward without backward,
        # so look at the per-block and per-head units
        units = [p for n, p in pl_module.named_parameters() if "blocks." in n or ".heads." in n]
        sharded = sum(isinstance(p, DTensor) for p in units)
        payload = {"first": self.first, "last": trainer.global_step, "world_size": trainer.world_size,
                   "strategy": type(trainer.strategy).__name__,
                   "sharded": "all" if sharded == len(units) else "none" if sharded == 0 else f"{sharded}/{len(units)}"}
        with open(f"{self.path}.rank{trainer.global_rank}", "w") as f:
            json.dump(payload, f)


class RecordLosses(Callback):
    """Appends one JSON line per training step to ``path``: the global step after it, ``train/loss`` as returned
    by training_step (exact: a float64 of the float32 value), the first parameter group's lr and the batch's
    scene ids. Appends, so a killed run and its resume write one file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_rank != 0:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {"step": trainer.global_step, "loss": float(loss.detach()),
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "scenes": list(batch.get("scene_id", []))}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class _Corrupt(Dataset):
    """Synthetic scenes with one field broken, to check the errors that reach the user."""

    def __init__(self, fault: str) -> None:
        self.base = SyntheticScenes(4, num_views=2, image_size=(56, 56))
        self.fault = fault

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        s = self.base[i]
        if self.fault == "nan_depth":
            s["depth"][1, 3, 3] = float("nan")
        elif self.fault == "negative_depth":
            s["depth"][0, 5, 5] = -1.0
        elif self.fault == "ids_shape":
            s["instance_ids"] = s["instance_ids"][:, :28]
        elif self.fault == "view_sizes":
            s["images"] = [s["images"][0], torch.zeros(3, 42, 56)]
        return s


class CorruptDataModule(SceneDataModule):
    def __init__(self, fault: str = "nan_depth") -> None:
        ds = _Corrupt(fault)
        super().__init__(train=ds, val=ds, test=ds, batch_size=2)


class PauseAfterBatch(Callback):
    """Sleeps after each predict batch (a slow run for the signal tests)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        import time

        time.sleep(self.seconds)


class RecordEvalScenes(Callback):
    """Appends one JSON line per validation / test / predict batch to ``path``: the stage and the batch's scene
    ids (what the loop actually ran on, so a loader that drops or repeats scenes shows up)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _record(self, stage: str, batch: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": stage, "scenes": list(batch.get("scene_id", []))}) + "\n")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record("validate", batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record("test", batch)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record("predict", batch)


def pinned_nano_model():
    """A nano model (no track head) whose camera head predicts identity poses and a 1 rad field of view: random
    weights often predict a degenerate one, which predict refuses to write."""
    from iggt_lightning.model import IGGTModel

    torch.manual_seed(0)
    model = IGGTModel.from_preset("nano", drop_heads=["track"])
    cam = model.heads["camera"]
    with torch.no_grad():
        cam.pose_branch.fc2.weight.zero_()
        cam.pose_branch.fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1.0]) / cam.num_iterations)
    return model
