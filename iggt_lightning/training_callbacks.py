"""Training that resumes exactly and fails loudly: what ``iggt fit`` adds to every Trainer.

:class:`ResumeState` (the CLI adds it to every run; add it yourself to a hand-built Trainer):

- **RNG states in the checkpoint.** Every checkpoint stores the global RNG states (torch CPU, CUDA when in use,
  numpy, Python ``random``) of every rank; ``--ckpt_path`` puts them back right before the first training step
  after the resume, so the step draws what the uninterrupted run drew (the contrastive loss samples pixels with
  torch's RNG). Validation inside ``fit`` runs on a fork of the RNG states, so whether a validation ran between a
  checkpoint and the next step changes nothing. Together with the resumable training loader
  (:mod:`iggt_lightning.data.resumable`: same batches) and Lightning's optimizer and LR-scheduler state, the
  training losses after a resume are bit-equal (on CPU) to those of a run that was never interrupted.
- **The same logger run.** The checkpoint records each logger's version; :func:`reuse_logger_versions`, called
  before ``fit`` with a ``ckpt_path``, makes the loggers write into that version (TensorBoard: the same
  ``version_N`` folder, with ``purge_step`` so the steps logged after the checkpoint by the killed run are
  replaced, not shown twice).
- **``last.ckpt`` holds the final step.** When training ends, every ``ModelCheckpoint`` with ``save_last`` whose
  last save was at an earlier step saves ``last.ckpt`` once more (Lightning alone leaves it at the last
  ``every_n_train_steps`` multiple, so ``--ckpt_path last`` would load older weights).

:class:`NonFiniteLossError` is what ``IGGTLitModule.training_step`` raises at the first non-finite loss.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

KEY = "iggt_resume"


class NonFiniteLossError(ValueError):
    """Training produced a NaN/inf loss; the message names the global step and the terms."""


def format_non_finite(terms: dict[str, torch.Tensor]) -> str:
    """``loss=nan, loss_depth=nan``: the entries of ``terms`` that are not finite, with their value."""
    parts = []
    for k, v in terms.items():
        v = v.detach().float()
        if not bool(torch.isfinite(v).all()):
            parts.append(f"{k}={v.item()}" if v.numel() == 1 else f"{k}={int((~torch.isfinite(v)).sum())} non-finite")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- RNG states
def collect_rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain containers (readable with ``torch.load(weights_only=True)``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    # CUDA only when this process uses it: querying initialises a context on every visible device otherwise
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    if states.get("cuda") and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


def _gather(trainer, states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's states, by rank (a collective: checkpoints are dumped on all ranks together)."""
    dist = torch.distributed
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()) or trainer.interrupted:
        return [states]  # after an exception the ranks may not meet again: keep this rank's own
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return gathered


# ----------------------------------------------------------------------------- loggers
def _logger_entries(trainer) -> list[dict[str, Any]]:
    out = []
    for logger in trainer.loggers:
        version = getattr(logger, "version", None)
        out.append({"class": type(logger).__qualname__, "name": getattr(logger, "name", None),
                    "version": version if isinstance(version, (int, str)) else None})
    return out


def resolve_ckpt_path(trainer, ckpt_path: str | None) -> Path | None:
    """The file ``fit(ckpt_path=...)`` will load: a path, or ``last`` (the newest ``last*.ckpt`` of the
    ModelCheckpoint folders, as Lightning picks it); None when there is none (yet)."""
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        found = []
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath and Path(cb.dirpath).is_dir():
                found += [p for p in Path(cb.dirpath).glob(f"{cb.CHECKPOINT_NAME_LAST}*{cb.FILE_EXTENSION}")]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None
    path = Path(ckpt_path)
    return path if path.is_file() else None


def reuse_logger_versions(trainer, ckpt_path: str | None, check=None) -> None:
    """Before ``trainer.fit(ckpt_path=...)``: loggers that were not given a version write into the version the
    checkpoint was written under (TensorBoard: its ``version_N`` folder, steps after the checkpoint purged).
    The file is memory-mapped (only its small state is read) and checked as data first (``check``: the CLI's
    check of a ``--ckpt_path`` file; default: the stored-state schema), so a stored version is an integer or a
    plain folder name, never a path. Refusals name the file and field."""
    from .checkpoints import load_tensor_file
    from .stored_state import PLAIN_NAME, check_checkpoint

    path = resolve_ckpt_path(trainer, ckpt_path)
    if path is None:
        return
    ckpt = load_tensor_file(path, mmap=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        (check or check_checkpoint)(ckpt, str(path))
    saved = (ckpt.get(KEY) or {}).get("loggers") if isinstance(ckpt, dict) else None
    if not saved:
        return
    step = _logging_step(ckpt)
    for logger, entry in zip(trainer.loggers, saved):
        version = entry.get("version")
        if entry.get("class") != type(logger).__qualname__ or version is None:
            continue
        if not (isinstance(version, int) and not isinstance(version, bool) and version >= 0) and \
                not (isinstance(version, str) and re.fullmatch(PLAIN_NAME, version)):
            raise ValueError(f"{path}: iggt_resume.loggers: version {version!r} is neither a non-negative integer nor "
                             "a plain folder name")
        if not hasattr(logger, "_version") or getattr(logger, "_version") is not None:
            continue  # a version the user chose stays
        if getattr(logger, "_experiment", None) is not None:
            continue  # already writing somewhere
        logger._version = entry["version"]
        kwargs = getattr(logger, "_kwargs", None)
        if step is not None and isinstance(logger, TensorBoardLogger) and isinstance(kwargs, dict) \
                and kwargs.get("purge_step") is None:  # (LightningCLI passes every SummaryWriter argument)
            kwargs["purge_step"] = step  # SummaryWriter: the events from this step on are the resumed run's


def _logging_step(ckpt: dict) -> int | None:
    """The first logger step the resumed run writes: what the killed run logged from there on is replaced."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]) + 1
    except (KeyError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- the callback
class ResumeState(Callback):
    """RNG states and logger versions in every checkpoint, restored on resume; ``last.ckpt`` at the final step;
    validation inside fit on forked RNG states. See the module docstring."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._around_validation: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "ResumeState"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # a checkpoint saved between the restore point and the first step after a resume keeps the restored states
        states = self._to_restore or collect_rng_states()
        checkpoint[KEY] = {"rng": _gather(trainer, states), "loggers": _logger_entries(trainer)}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = (checkpoint.get(KEY) or {}).get("rng")
        if trainer.state.fn != "fit" or not saved:
            return
        rank = trainer.global_rank
        self._to_restore = saved[rank] if rank < len(saved) else saved[0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._to_restore is not None:  # right before the first step after a resume, after whatever drew since
            set_rng_states(self._to_restore)
            self._to_restore = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._around_validation = collect_rng_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._around_validation is not None:
            set_rng_states(self._around_validation)
            self._around_validation = None

    def on_train_end(self, trainer, pl_module) -> None:
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb._should_skip_saving_checkpoint(trainer):
                continue  # _should_skip_...: already saved at this step (or sanity check / fast_dev_run)
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))


def add_resume_state(trainer) -> None:
    """Give ``trainer`` a :class:`ResumeState` unless it has one."""
    if not any(isinstance(cb, ResumeState) for cb in trainer.callbacks):
        trainer.callbacks.append(ResumeState())

