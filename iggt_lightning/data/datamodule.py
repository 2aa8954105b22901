"""Datamodules: train/val/test scene datasets, batches of equal-shaped scenes, checked samples.

A batch stacks scenes, so its scenes need the same number of views and image size. Datasets whose
samples vary (``num_views: [2, 8]``) are batched by :class:`GroupedBatchSampler`, which only puts scenes
of one shape together; a dataset tells it a sample's shape through ``sample_shape(index)``. Validation, test
and predict loaders visit every scene of their split exactly once (a group's last batch may be smaller); the
training loader keeps a fixed number of batches per epoch instead (see :class:`GroupedBatchSampler`).

The training loader is resumable (:mod:`.resumable`): its order per epoch is a function of (seed, epoch), every
index carries its epoch into the dataset, and its position is part of Lightning's checkpoints, so a run resumed
mid-epoch with ``--ckpt_path`` continues with the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from lightning import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from .resumable import EpochBatchSampler, EpochShuffleSampler, ResumableDataLoader, default_seed
from .synthetic import SyntheticScenes, collate_scenes
from .validate import SampleError, check_sample


class GroupedBatchSampler(EpochBatchSampler):
    """Batches of ``batch_size`` indices whose samples share a group key (e.g. (views, H, W)).

    Full batches come first in sampler order, then each group's partial remainder. Two modes:

    - ``fixed_length=True`` (training): every epoch yields exactly ``len(self)`` = ceil(N / batch_size) batches
      (floor with ``drop_last``), N being the number of indices ``sampler`` yields, so that DDP ranks always run
      the same number of steps. Grouping can make more batches than that (one remainder per group): the surplus
      partial batches are left out of this epoch (their scenes come back in other epochs' orders), and a
      shortfall (rare; only with ``drop_last``) is made up by repeating batches.
    - ``fixed_length=False`` (validate, test, predict): every index the sampler yields, exactly once; the last
      batch of each group may be smaller, so ``len(self)`` is the sum over groups of ceil(group size /
      batch_size). Under a DistributedSampler that pads every rank to an equal share (validate, test) the
      ranks' batch counts can still differ; every rank then pads to the largest count by repeating its own
      first batches, as the sampler itself pads with repeats, because collectives (FSDP's gathers, synced logs)
      need the ranks in step. Lightning's predict sampler (``UnrepeatedDistributedSampler``), which repeats
      nothing and lets ranks differ, gets no padding either: a scene predicted twice would be written twice.

    Lightning swaps ``sampler`` for a DistributedSampler under DDP/FSDP and keeps the grouping. As an
    :class:`EpochBatchSampler` it tags indices with the epoch and can start at batch ``k`` (resumes).
    """

    def __init__(self, sampler: Sampler | Sequence[int], batch_size: int, drop_last: bool,
                 group_keys: Sequence[Any], fixed_length: bool = True) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if drop_last and not fixed_length:
            raise ValueError("GroupedBatchSampler: drop_last=True drops scenes, fixed_length=False promises "
                             "every scene once; pick one")
        self.group_keys = list(group_keys)
        self.fixed_length = fixed_length

    def __len__(self) -> int:
        if not self.fixed_length:
            if isinstance(self.sampler, UnrepeatedDistributedSampler):    # predict under DDP: no repeats
                return self._batch_count(self.sampler)
            return max(self._batch_count(o) for o in self._rank_orders())
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _batch_count(self, order) -> int:
        sizes = Counter(self.group_keys[i] for i in order)
        return sum(math.ceil(k / self.batch_size) for k in sizes.values())

    def _rank_orders(self) -> list:
        """The index order of every rank: this sampler's alone unless it is a distributed one."""
        replicas = getattr(self.sampler, "num_replicas", 1)
        if not isinstance(replicas, int) or replicas <= 1 or not hasattr(self.sampler, "rank"):
            return [list(self.sampler)]
        orders = []
        for rank in range(replicas):
            other = copy.copy(self.sampler)     # DistributedSampler picks its share by self.rank alone
            other.rank = rank
            orders.append(list(other))
        return orders

    def _group(self, order) -> tuple[list[list[int]], list[list[int]]]:
        """(full batches, partial remainders) of one order, each group's indices in order."""
        buckets: dict[Any, list[int]] = {}
        full: list[list[int]] = []
        for idx in order:
            bucket = buckets.setdefault(self.group_keys[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                full.append(list(bucket))
                bucket.clear()
        return full, [b for b in buckets.values() if b]

    def epoch_batches(self):
        full, partial = self._group(self.sampler)
        total = len(self)
        if self.fixed_length:
            batches = (full + ([] if self.drop_last else partial))[:total]
        else:
            batches = full + partial          # every index once; len(self) > this only to pad a DDP rank
        if not batches:
            return
        for i in range(total):
            yield batches[i % len(batches)]


def collate_checked(samples: list[dict]) -> dict:
    """:func:`check_sample` every scene, make sure the batch's scenes share a shape, then collate."""
    samples = [check_sample(s) for s in samples]
    shapes = [tuple(s["images"].shape) for s in samples]
    if len(set(shapes)) > 1:
        names = [s.get("scene_id", i) for i, s in enumerate(samples)]
        raise SampleError(f"the scenes of one batch differ in shape ([S,3,H,W]): {dict(zip(names, shapes))}; "
                          "use batch_size 1, fixed views and size, or a dataset with sample_shape() so that "
                          "GroupedBatchSampler can group scenes of one shape")
    return collate_scenes(samples)


def _group_keys(dataset: Dataset) -> list | None:
    shape_of = getattr(dataset, "sample_shape", None)
    return [shape_of(i) for i in range(len(dataset))] if callable(shape_of) else None


class SceneDataModule(LightningDataModule):
    """Batches scene datasets (each sample one scene of the batch contract) for train/val/test/predict.

    Args:
        train, val, test, predict: the datasets of each stage (None = stage unavailable; predict falls
            back to test).
        batch_size: scenes per training batch; ``eval_batch_size`` for the others (default: batch_size).
        num_workers: DataLoader worker processes; ``persistent_workers`` keeps them between epochs.
        check_samples: validate every sample against the batch contract (cheap; errors name the field).
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 predict: Dataset | None = None, batch_size: int = 1, eval_batch_size: int | None = None,
                 num_workers: int = 0, persistent_workers: bool = True, pin_memory: bool = False,
                 check_samples: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0; got {num_workers}")
        self.datasets = {"train": train, "val": val, "test": test, "predict": predict if predict is not None else test}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.persistent_workers, self.pin_memory = num_workers, persistent_workers, pin_memory
        self.check_samples = check_samples

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[stage]
        if dataset is None:
            raise ValueError(f"{type(self).__name__} has no {stage} dataset configured")
        batch_size = self.batch_size if stage == "train" else self.eval_batch_size
        # shuffled (training): an order per epoch from (seed, epoch) and a loader whose position is checkpointed
        seed = default_seed()
        sampler = EpochShuffleSampler(dataset, seed) if shuffle else SequentialSampler(dataset)
        keys = _group_keys(dataset) if batch_size > 1 else None
        if keys is not None and len(set(keys)) > 1:
            # training keeps a fixed epoch length (DDP ranks in step); evaluation sees every scene exactly once
            batch_sampler = GroupedBatchSampler(sampler, batch_size, drop_last=shuffle, group_keys=keys,
                                                fixed_length=shuffle)
        else:
            batch_sampler = EpochBatchSampler(sampler, batch_size, drop_last=shuffle and len(dataset) >= batch_size)
        kwargs = dict(batch_sampler=batch_sampler, num_workers=self.num_workers,
                      collate_fn=collate_checked if self.check_samples else collate_scenes,
                      persistent_workers=self.persistent_workers and self.num_workers > 0, pin_memory=self.pin_memory)
        if shuffle:
            return ResumableDataLoader(dataset, seed=seed, **kwargs)
        # a generator of its own: iterating an evaluation loader never draws from the global torch RNG
        return DataLoader(dataset, generator=torch.Generator(), **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)


class SyntheticDataModule(SceneDataModule):
    """The embedded default: procedurally generated rooms (see :class:`SyntheticScenes`), nothing to download.

    The splits use seeds ``seed``, ``seed + 1_000_003`` and ``seed + 2_000_006``, so train, val and test
    scenes never coincide. ``num_views`` may be a range ``[min, max]``; batches then group scenes by view count.
    """

    def __init__(self, num_train: int = 512, num_val: int = 32, num_test: int = 32,
                 num_views: int | tuple[int, int] = 4, image_size: tuple[int, int] = (112, 112),
                 num_objects: tuple[int, int] = (2, 6), focal_range: tuple[float, float] = (0.8, 1.3),
                 repeat_prob: float = 0.0, background_id: int = 0, seed: int = 0, batch_size: int = 1,
                 eval_batch_size: int | None = None, num_workers: int = 0, persistent_workers: bool = True, check_samples: bool = True) -> None:
        common = dict(num_views=num_views, image_size=image_size, num_objects=num_objects, focal_range=focal_range,
                      repeat_prob=repeat_prob, background_id=background_id)
        super().__init__(train=SyntheticScenes(num_train, seed=seed, **common),
                         val=SyntheticScenes(num_val, seed=seed + 1_000_003, **common),
                         test=SyntheticScenes(num_test, seed=seed + 2_000_006, **common),
                         batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         persistent_workers=persistent_workers, check_samples=check_samples)


class VideoWindowsDataModule(SceneDataModule):
    """Consecutive frames of long camera paths (:class:`~iggt_lightning.data.long_sequence.LongSequenceWindows`):
    what a model needs to see to run on videos. Train, val and test use sequences of seeds ``1000 + seed``,
    ``100_003 + seed`` and ``200_006 + seed``: never seed 0, the long-video benchmark's sequence."""

    def __init__(self, num_train: int = 1000, num_val: int = 16, num_test: int = 32, num_views: int = 8,
                 frames: int = 300, sequences: int = 50, steps: tuple[int, int] = (1, 3),
                 image_size: tuple[int, int] = (84, 112), background_id: int = 0, seed: int = 0,
                 batch_size: int = 1, eval_batch_size: int | None = None, num_workers: int = 0,
                 persistent_workers: bool = True, check_samples: bool = True) -> None:
        from .long_sequence import LongSequenceWindows

        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        common = dict(num_views=num_views, frames=frames, sequences=sequences, steps=steps, image_size=image_size,
                      background_id=background_id)
        super().__init__(train=LongSequenceWindows(num_train, seed=1000 + seed, **common),
                         val=LongSequenceWindows(num_val, seed=100_003 + seed, **common),
                         test=LongSequenceWindows(num_test, seed=200_006 + seed, **common),
                         batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         persistent_workers=persistent_workers, check_samples=check_samples)
