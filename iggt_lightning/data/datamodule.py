"""Datamodules: train/val/test scene datasets, batches of equal-shaped scenes, checked samples.

A batch stacks scenes, so its scenes need the same number of views and image size. Datasets whose
samples vary (``num_views: [2, 8]``) are batched by :class:`GroupedBatchSampler`, which only puts scenes
of one shape together; a dataset tells it a sample's shape through ``sample_shape(index)``.

The training loader is resumable (:mod:`.resumable`): its order per epoch is a function of (seed, epoch), every
index carries its epoch into the dataset, and its position is part of Lightning's checkpoints, so a run resumed
mid-epoch with ``--ckpt_path`` continues with the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from .resumable import EpochBatchSampler, EpochShuffleSampler, ResumableDataLoader, default_seed
from .synthetic import SyntheticScenes, collate_scenes
from .validate import SampleError, check_sample


class GroupedBatchSampler(EpochBatchSampler):
    """Batches of ``batch_size`` indices whose samples share a group key (e.g. (views, H, W)).

    Every epoch yields exactly ``len(self)`` = ceil(N / batch_size) batches (floor with ``drop_last``), N
    being the number of indices ``sampler`` yields, so that DDP ranks always run the same number of steps:
    full batches come first in sampler order, then the partial ones; any surplus partial batch is left
    for another epoch, and a shortfall (rare; only with ``drop_last``) is made up by repeating batches.
    Lightning swaps ``sampler`` for a DistributedSampler under DDP/FSDP and keeps the grouping. As an
    :class:`EpochBatchSampler` it tags indices with the epoch and can start at batch ``k`` (resumes).
    """

    def __init__(self, sampler: Sampler | Sequence[int], batch_size: int, drop_last: bool,
                 group_keys: Sequence[Any]) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.group_keys = list(group_keys)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_batches(self):
        total = len(self)
        buckets: dict[Any, list[int]] = {}
        full: list[list[int]] = []
        for idx in self.sampler:
            bucket = buckets.setdefault(self.group_keys[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                full.append(list(bucket))
                bucket.clear()
        partial = [] if self.drop_last else [b for b in buckets.values() if b]
        batches = (full + partial)[:total]
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
            batch_sampler = GroupedBatchSampler(sampler, batch_size, drop_last=shuffle, group_keys=keys)
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
