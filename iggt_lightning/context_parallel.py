"""Views across processes (context parallelism): one scene's S views split over the N processes of a group.

Each process holds a contiguous slice of the views (the first ``S % N`` processes one view more) and runs the
network on it: patch embedding, frame attention and the per-view heads on its own views only. The views meet in
two places, and both stay **exact** (the same maths as one process, to float rounding):

* each **global block** of the backbone: every process computes q, k, v for its own tokens, all-gathers the keys
  and values of every view, and attends its own queries over all of them (the hook is
  :attr:`~iggt_lightning.layers.attention.Attention.view_context`; RoPE positions are per frame, so a view's
  tokens need no global index);
* the **camera head**'s trunk, which attends over the views' camera tokens, by the same all-gather
  (:meth:`~iggt_lightning.head.Head.view_attention` lists such modules of any head).

The scene's frame 0 is the reference view (it gets the slot-0 camera and register tokens): each process tells
the backbone the index of its first view (``Aggregator.first_view``). Refused, each with one error: token merging
(``backbone.global_attention`` kind ``merged``: its partition spans all frames), point tracking (query points:
the tracker needs every view's feature maps; :meth:`~iggt_lightning.head.Head.check_split_views`), a model in
training mode (a training BatchNorm would see only its process's views) and ``return_intermediates``. It is
inference only: it runs under ``torch.no_grad()`` and no gradient flows through the all-gather.

Memory per process: its share of the activations plus, in each global block, every view's keys and values
(``2 x S x tokens x width`` per scene) while that block attends.

    import torch.distributed as dist
    dist.init_process_group("gloo")                 # or "nccl", one GPU per process
    out = forward_views(model.eval(), images)       # every process: the same images [B, S, 3, H, W]
    # out: the whole scene's outputs on every process (gather=False: this process's views only)

Through Lightning: ``iggt test ... --trainer.strategy context_parallel --trainer.devices N``
(:class:`ContextParallelStrategy`); docs/speed.md, "Views across processes".
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .layers.attention import Attention, attend


def split_counts(num_views: int, world_size: int) -> list[int]:
    """Views per process, contiguous and as even as possible (the first ``num_views % world_size`` get one more)."""
    base, extra = divmod(num_views, world_size)
    return [base + (r < extra) for r in range(world_size)]


class ViewShard:
    """This process's slice of a scene's ``num_views`` views within ``group`` (None: the default group), and the
    collectives over views: :meth:`attend` (the attention hook) and :meth:`all_gather_views`."""

    def __init__(self, num_views: int, group: Any = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("views across processes need an initialised process group "
                               "(torch.distributed.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if num_views < self.world_size:
            raise ValueError(f"images: {num_views} view(s) cannot be split over {self.world_size} processes; "
                             f"expected at least one view per process")
        self.num_views = num_views
        self.counts = split_counts(num_views, self.world_size)
        self.start = sum(self.counts[:self.rank])
        self.stop = self.start + self.counts[self.rank]

    @property
    def views(self) -> slice:
        return slice(self.start, self.stop)

    def all_gather_views(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Every process's ``t`` (this process's views along ``dim``, the same number of entries per view on every
        process) concatenated in view order: the whole scene's tensor, on every process."""
        n = t.shape[dim]
        count = self.counts[self.rank]
        if n % count:
            raise ValueError(f"dim {dim} of shape {tuple(t.shape)} does not hold {count} views of equal size")
        per = n // count
        if self.world_size == 1:
            return t
        most = max(self.counts) * per
        if n < most:
            pad = list(t.shape)
            pad[dim] = most - n
            t = torch.cat([t, t.new_zeros(pad)], dim=dim)
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat([p.narrow(dim, 0, c * per) for p, c in zip(parts, self.counts)], dim=dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[B, heads, N, D]`` with N this process's tokens (a whole number per view): the local queries over every
        view's keys and values."""
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            raise RuntimeError("views across processes are inference only: no gradient flows through the "
                               "all-gathered keys and values (run under torch.no_grad())")
        kv = self.all_gather_views(torch.stack([k, v]), dim=3)
        return attend(q, kv[0], kv[1])


def _spanning_attention(model) -> list[Attention]:
    mods = [block.attn for block in model.backbone.global_blocks]
    for name, head in model.heads.items():
        for m in head.view_attention():
            if not isinstance(m, Attention):
                raise TypeError(f"head {name!r}: view_attention() must return Attention modules; "
                                f"got {type(m).__name__}")
            mods.append(m)
    return mods


@contextlib.contextmanager
def views_split(model, shard: ViewShard) -> Iterator[None]:
    """While active, ``model`` (an :class:`~iggt_lightning.model.IGGTModel`) called on this process's views
    ``images[:, shard.views]`` computes exactly what it computes for them on the whole scene."""
    backbone = model.backbone
    if backbone.global_attention.kind != "exact":
        raise ValueError(f"backbone.global_attention: token merging (kind {backbone.global_attention.kind!r}) "
                         "does not run with the views split across processes; expected kind 'exact'")
    mods = _spanning_attention(model)
    before = backbone.first_view
    backbone.first_view = shard.start
    for m in mods:
        m.view_context = shard
    try:
        yield
    finally:
        backbone.first_view = before
        for m in mods:
            m.view_context = None


def gather_views(outputs: dict, shard: ViewShard, dst: int | None = None) -> dict | None:
    """This process's outputs (tensors, or lists of them, with views at dim 1) -> the whole scene's, on every
    process (``dst`` None) or on process ``dst`` only (the others get None). Every process must call it."""
    def one(key: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 2 or t.shape[1] != shard.counts[shard.rank]:
            raise ValueError(f"output {key!r} of shape {tuple(t.shape)} does not hold this process's "
                             f"{shard.counts[shard.rank]} view(s) at dim 1")
        return shard.all_gather_views(t, dim=1)

    full = {}
    for key in sorted(outputs):   # the same order on every process: the collectives pair up
        value = outputs[key]
        if torch.is_tensor(value):
            full[key] = one(key, value)
        elif isinstance(value, (list, tuple)) and all(torch.is_tensor(v) for v in value):
            full[key] = type(value)(one(key, v) for v in value)
        else:
            raise ValueError(f"output {key!r} ({type(value).__name__}) cannot be gathered over views; "
                             "expected a tensor or a list of tensors with views at dim 1")
    return full if dst is None or shard.rank == dst else None


def _check_model(model, return_intermediates: bool) -> None:
    if model.training:
        raise ValueError("model: views across processes are for inference, but the model is in training mode; "
                         "call model.eval() first")
    if return_intermediates:
        raise ValueError("return_intermediates: the backbone's tokens are not gathered across processes; "
                         "expected return_intermediates=False with the views split")


def forward_local(model, images: torch.Tensor, query_points: torch.Tensor | None = None, *, group: Any = None,
                  return_intermediates: bool = False) -> tuple[dict, ViewShard]:
    """Run ``model`` on this process's slice of the scene ``images`` (the same [S,3,H,W] or [B,S,3,H,W] on every
    process of ``group``) -> (this process's outputs, with its views at dim 1; its :class:`ViewShard`)."""
    _check_model(model, return_intermediates)
    images, query_points = model._check_inputs(images, query_points)
    for head in model.heads.values():
        head.check_split_views(query_points)
    shard = ViewShard(images.shape[1], group)
    with torch.no_grad(), views_split(model, shard):
        out = type(model).forward(model, images[:, shard.views], query_points)
    return out, shard


def forward_views(model, images: torch.Tensor, query_points: torch.Tensor | None = None, *, group: Any = None,
                  gather: bool = True, dst: int | None = None, return_intermediates: bool = False) -> dict | None:
    """The whole scene's outputs, computed with its views split over the processes of ``group``: ``gather``
    False returns this process's views only; ``dst`` (with gather) returns them on that process only."""
    out, shard = forward_local(model, images, query_points, group=group, return_intermediates=return_intermediates)
    return gather_views(out, shard, dst) if gather else out


@contextlib.contextmanager
def model_splits_views(model, group: Any = None) -> Iterator[None]:
    """While active, ``model(images, query_points)`` runs with the views split over ``group`` and returns the whole
    scene's outputs on every process (what a Lightning step calls: :class:`ContextParallelStrategy`)."""
    def forward(images, query_points=None, return_intermediates=False):
        return forward_views(model, images, query_points, group=group, return_intermediates=return_intermediates)

    model.forward = forward
    try:
        yield
    finally:
        del model.forward
