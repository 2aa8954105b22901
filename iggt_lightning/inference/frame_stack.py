"""Per-view values of a scene read one view at a time, so that writing a thousand-frame prediction holds one view
in memory, not the sequence.

A *stack* is anything indexed by view that knows its ``shape`` ([S, ...]): a tensor (a one-pass prediction, in
memory), :class:`StoredFrames` (a windowed run's outputs in a raw file, each ``[v]`` a read) or :class:`PerView`
(values made on demand, e.g. depth unprojected with the cameras). Plugins and exporters that read per-pixel
outputs per view (``view_of(stack, v)``) work on all three; ``outputs[key][scene.index]`` of a windowed run is a
:class:`StoredFrames`, so code that reads a whole scene's tensor at once meets an error there rather than a
thousand frames in memory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


class StoredFrames:
    """Frames of one output, ``count`` x ``frame_shape`` of ``dtype``, in a raw file: ``[v]`` reads frame ``v``,
    ``[a:b]`` frames ``a..b-1`` (never more than asked). :meth:`write` fills frames in place."""

    def __init__(self, path: Path, count: int, frame_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.path, self.count, self.frame_shape, self.dtype = Path(path), int(count), tuple(frame_shape), dtype
        self._np = torch.empty(0, dtype=dtype).numpy().dtype
        self._frame_bytes = int(math.prod(self.frame_shape)) * self._np.itemsize
        with open(self.path, "wb") as f:                 # sparse: frames not yet written read as zeros
            f.truncate(self._frame_bytes * self.count)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.count, *self.frame_shape))

    def __len__(self) -> int:
        return self.count

    def _read(self, start: int, stop: int) -> torch.Tensor:
        n = max(stop - start, 0)
        a = np.fromfile(self.path, dtype=self._np, count=n * int(math.prod(self.frame_shape)),
                        offset=start * self._frame_bytes)
        return torch.from_numpy(a.reshape(n, *self.frame_shape))

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise IndexError("StoredFrames: a range of frames must be contiguous")
            return self._read(start, stop)
        if isinstance(index, tuple):                      # [v, ...rest]: the frame, then the rest of the index
            return self[index[0]][index[1:]]
        v = int(index)
        if v < 0:
            v += self.count
        if not 0 <= v < self.count:
            raise IndexError(f"frame {index} of {self.count}")
        return self._read(v, v + 1)[0]

    def write(self, start: int, frames: torch.Tensor) -> None:
        frames = frames.detach().cpu().to(self.dtype).contiguous()
        if tuple(frames.shape[1:]) != self.frame_shape or start + len(frames) > self.count:
            raise ValueError(f"StoredFrames {self.path.name}: frames {tuple(frames.shape)} at {start} do not fit "
                             f"{self.count} x {self.frame_shape}")
        with open(self.path, "r+b") as f:
            f.seek(start * self._frame_bytes)
            f.write(frames.numpy().tobytes())


class PerView:
    """Per-view values made on demand: ``[v]`` is ``make(v)``; ``shape`` is ``(count, *frame_shape)``."""

    def __init__(self, make: Callable[[int], torch.Tensor], count: int, frame_shape: tuple[int, ...]) -> None:
        self.make, self.count, self.frame_shape = make, int(count), tuple(frame_shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.count, *self.frame_shape))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, v: int) -> torch.Tensor:
        return self.make(int(v))


class Batched:
    """A batch of one around a stack (``shape`` [1, S, ...]; ``[0]`` is the stack), as a one-pass output is."""

    def __init__(self, stack) -> None:
        self.stack = stack

    @property
    def shape(self) -> torch.Size:
        return torch.Size((1, *self.stack.shape))

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        if index == 0:
            return self.stack
        if isinstance(index, tuple) and index and index[0] == 0:
            return self.stack[index[1:]] if len(index) > 1 else self.stack
        raise IndexError(f"a batch of one has no item {index!r}")


def view_of(stack, v: int) -> torch.Tensor:
    """View ``v`` of a stack as a CPU tensor (float stays as it is; a tensor stack is sliced, not copied)."""
    value = stack[v]
    return value.detach().cpu() if torch.is_tensor(value) else torch.as_tensor(value)


def views_of(stack) -> Iterator[torch.Tensor]:
    for v in range(len(stack)):
        yield view_of(stack, v)


def in_memory(stack) -> torch.Tensor:
    """The whole stack as one tensor (for what is small: a view's worth per frame of a few numbers)."""
    return stack.detach().cpu() if torch.is_tensor(stack) else torch.stack(list(views_of(stack)))


def as_stack(value):
    """A scene's value as a stack: a tensor detached on the CPU, anything else (a lazy stack) as it is."""
    return value.detach().cpu() if torch.is_tensor(value) else value


__all__ = ["Batched", "PerView", "StoredFrames", "as_stack", "in_memory", "view_of", "views_of"]
