"""Several datasets mixed with weights into one (e.g. ScanNet++ + Infinigen + RE10K, as InsScene-15K).

Each of the ``length`` slots of an epoch belongs to one dataset, in proportion to the weights, and walks
through that dataset's samples in a fixed shuffled order (so a small dataset repeats, a large one is
subsampled, and every sample gets its turn before any repeats). The mapping is a pure function of
``seed``: ``sample_shape`` stays valid for batching by shape, while each training epoch still draws fresh
views and augmentations inside the member datasets.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from .paths import input_roots_of
from .resumable import with_epoch


class MixedScenes(Dataset):
    """Weighted mixture of scene datasets.

    Args:
        datasets: the member datasets (any with ``__len__``/``__getitem__`` of the batch contract).
        weights: relative share of each dataset in an epoch (default: equal shares).
        length: samples per epoch (default: the sum of the members' lengths).
        seed: the fixed shuffle of each member's samples.
    """

    def __init__(self, datasets: Sequence[Dataset], weights: Sequence[float] | None = None,
                 length: int | None = None, seed: int = 0) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("MixedScenes needs at least one dataset")
        sizes = [len(d) for d in self.datasets]
        empty = [f"{i} ({type(d).__name__}" + (f", skipped: {d.skipped[:2]}" if getattr(d, "skipped", None) else "")
                 + ")" for i, (d, n) in enumerate(zip(self.datasets, sizes)) if n == 0]
        if empty:
            raise ValueError(f"MixedScenes: dataset(s) {empty} have no samples (wrong root or split? too few frames "
                             "for min_views after frame_stride?)")
        w = np.ones(len(self.datasets)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.datasets),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"MixedScenes weights must be {len(self.datasets)} non-negative numbers, not all 0; "
                             f"got {weights}")
        self.length = int(sum(sizes) if length is None else length)
        if self.length < 1:
            raise ValueError(f"MixedScenes length must be >= 1; got {length}")
        # slots per dataset: largest-remainder rounding of length * w / sum(w)
        share = self.length * w / w.sum()
        counts = np.floor(share).astype(int)
        for k in np.argsort(-(share - counts), kind="stable")[: self.length - counts.sum()]:
            counts[k] += 1
        self.counts = counts.tolist()
        self.weights = (w / w.sum()).tolist()
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._orders = [np.random.default_rng([seed, k]).permutation(n) for k, n in enumerate(sizes)]

    def __len__(self) -> int:
        return self.length

    def input_roots(self) -> list:
        """The union of the members' input folders and files (writers keep their outputs apart from all)."""
        return list(dict.fromkeys(p for d in self.datasets for p in input_roots_of(d)))

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset number, index inside it) of a slot."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        order = self._orders[k]
        return k, int(order[(index - self._starts[k]) % len(order)])

    def __getitem__(self, index: int) -> dict:
        k, i = self.locate(index)
        return self.datasets[k][with_epoch(i, index)]      # the member draws its views for the index's epoch

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if callable(getattr(d, "set_epoch", None)):
                d.set_epoch(epoch)

    def sample_shape(self, index: int):
        """(dataset number, then the member's sample shape): a batch never mixes datasets, whose samples may
        carry different optional keys (class names of synthetic scenes, say)."""
        k, i = self.locate(index)
        shape_of = getattr(self.datasets[k], "sample_shape", None)
        return (k, *shape_of(i)) if callable(shape_of) else (k,)
