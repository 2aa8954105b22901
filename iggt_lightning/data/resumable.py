"""Resumable training data: the order and the randomness of every epoch are pure functions of (seed, epoch).

A run killed mid-epoch and resumed from a checkpoint must see the same batches as an uninterrupted run. Three
pieces make that so:

- :class:`EpochShuffleSampler`: epoch ``e``'s order is a permutation drawn from ``(seed, e)`` alone (no global
  RNG), so it can be regenerated anywhere. Under DDP/FSDP Lightning wraps it in a ``DistributedSampler(Wrapper)``,
  whose order is a function of (seed, epoch) as well.
- :class:`EpochBatchSampler`: batches the sampler's order, can start at batch ``k`` of its epoch (``skip``), and
  tags every index with the epoch (:class:`SampleIndex`). The tag travels with the index into DataLoader worker
  processes, so a dataset draws its views and augmentations from (seed, epoch, index) in whichever process reads it
  (``GroupedBatchSampler`` in :mod:`.datamodule` is one).
- :class:`ResumableDataLoader`: counts the batches it hands out; ``state_dict()`` / ``load_state_dict()`` (epoch,
  batches, seed) are what Lightning stores in a checkpoint for a stateful loader (``loops.fit_loop.combined_loader``)
  and gives back on ``--ckpt_path``, before the loader is iterated again. Its own ``torch.Generator``, re-seeded from
  (seed, epoch) at every epoch, seeds the worker processes, so iterating it never draws from the global torch RNG
  (whose state the checkpoint restores for the training step: see ``training_callbacks.ResumeState``).
"""
from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler


class SampleIndex(int):
    """A dataset index that also says which epoch asks for it (``index.epoch``); otherwise a plain int."""

    epoch: int

    def __new__(cls, value: int, epoch: int = 0) -> "SampleIndex":
        self = super().__new__(cls, value)
        self.epoch = int(epoch)
        return self

    def __reduce__(self):
        return SampleIndex, (int(self), self.epoch)


def epoch_of(index, default: int = 0) -> int:
    """The epoch a :class:`SampleIndex` carries, else ``default``."""
    return getattr(index, "epoch", default)


def with_epoch(index: int, like) -> int:
    """``index`` tagged with the epoch of ``like`` (for datasets that forward an index to another dataset)."""
    return SampleIndex(index, like.epoch) if hasattr(like, "epoch") else index


def default_seed() -> int:
    """The seed of ``seed_everything`` (``PL_GLOBAL_SEED``), else 0: what Lightning's DistributedSampler uses too."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def _mix(*values: int) -> int:
    """One 63-bit seed from several non-negative ints."""
    return int(np.random.SeedSequence([int(v) & (2 ** 63 - 1) for v in values]).generate_state(1, np.uint64)[0]) >> 1


class EpochShuffleSampler(Sampler[int]):
    """Every index once per epoch, in an order that only depends on (``seed``, epoch); ``set_epoch`` picks it."""

    def __init__(self, data_source: Sized | int, seed: int | None = None) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.seed = default_seed() if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed & (2 ** 63 - 1), 0x5A3B1E, self.epoch]).permutation(self.num_samples)
        return iter(order.tolist())


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that yields :class:`SampleIndex` lists tagged with the epoch and can start mid-epoch.

    The epoch is the sampler's (``sampler.epoch``, set by Lightning through ``set_epoch``), else this batch
    sampler's own ``set_epoch``. ``skip = k`` makes the next iteration start at batch ``k`` of the epoch (then it
    is reset to 0). Subclasses change how an epoch's order becomes batches by overriding :meth:`epoch_batches`.
    """

    def __init__(self, sampler: Sampler[int] | Sized, batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", self._epoch))

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def epoch_batches(self) -> Iterator[list[int]]:
        """The batches of the current epoch, from its first (plain ``BatchSampler`` batching)."""
        return BatchSampler.__iter__(self)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        for batch in itertools.islice(self.epoch_batches(), skip, None):
            yield [SampleIndex(i, epoch) for i in batch]


class _CountingIterator:
    def __init__(self, iterator, loader: "ResumableDataLoader") -> None:
        self._iterator, self._loader = iterator, loader

    def __iter__(self) -> "_CountingIterator":
        return self

    def __next__(self):
        batch = next(self._iterator)
        self._loader._taken += 1
        return batch

    def __len__(self) -> int:
        return len(self._iterator)


class ResumableDataLoader(DataLoader):
    """The training DataLoader: a position (epoch, batches handed out) that survives a checkpoint.

    Takes DataLoader's arguments with an :class:`EpochBatchSampler` as ``batch_sampler``, plus ``seed`` (the
    seed of the epoch orders and of the worker processes; default: ``seed_everything``'s). With
    :class:`EpochShuffleSampler` and a dataset that draws from (seed, epoch, index), what an epoch yields depends
    only on the seeds and the epoch, so skipping the batches a checkpoint had already consumed continues the run
    exactly. Lightning pre-fetches nothing from a loader with a length, so the count is what training consumed.
    """

    def __init__(self, *args, seed: int | None = None, **kwargs) -> None:
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(*args, **kwargs)
        if not isinstance(self.batch_sampler, EpochBatchSampler):
            raise TypeError(f"ResumableDataLoader needs an EpochBatchSampler as batch_sampler; got "
                            f"{type(self.batch_sampler).__name__}")
        self.seed = default_seed() if seed is None else int(seed)
        self._epoch: int | None = None    # the epoch being iterated
        self._taken = 0                   # batches of that epoch handed out (including skipped ones)
        self._skip = 0                    # batches the next iteration skips (from load_state_dict)

    def __iter__(self):
        epoch = self.batch_sampler.epoch
        skip, self._skip = self._skip, 0
        self.batch_sampler.skip = skip
        self._epoch, self._taken = epoch, skip
        self.generator.manual_seed(_mix(self.seed, epoch, 0x10ADE5))   # worker seeds from (seed, epoch)
        return _CountingIterator(super().__iter__(), self)

    def state_dict(self) -> dict:
        epoch = self.batch_sampler.epoch if self._epoch is None else self._epoch
        return {"epoch": int(epoch), "batches": int(self._taken), "seed": int(self.seed),
                "batches_per_epoch": int(len(self))}

    def load_state_dict(self, state: dict) -> None:
        epoch, taken = int(state["epoch"]), int(state["batches"])
        per_epoch = len(self)
        if int(state.get("batches_per_epoch", per_epoch)) != per_epoch:
            warnings.warn(f"the checkpoint's training loader had {state['batches_per_epoch']} batches per epoch, this "
                          f"one has {per_epoch} (the data or batch size changed): the resumed run continues from "
                          f"batch {taken} of epoch {epoch} but cannot replay the same batches", stacklevel=2)
        if taken >= per_epoch:                 # saved on the last batch of an epoch: the next one starts fresh
            epoch, taken = epoch + 1, 0
        self.seed = int(state.get("seed", self.seed))
        sampler = self.batch_sampler.sampler
        if hasattr(sampler, "seed"):           # ours, or Lightning's DistributedSampler(Wrapper)
            sampler.seed = self.seed
        self.batch_sampler.set_epoch(epoch)
        self._epoch, self._taken, self._skip = epoch, taken, taken
