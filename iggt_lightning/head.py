"""The plugin-head contract shared by every head.

Frame chunking is a memory/speed setting only, so it never changes what a head computes: dense heads decode
the flattened B*S frames in chunks (``frames_chunk_size``, on CPU at most :data:`CPU_FRAMES_CHUNK`) only when the
head is in eval mode, and the whole batch in one go while it trains. A training-mode BatchNorm (the instance
head's) normalises by the statistics of the frames it sees at once and updates its running stats once per call,
so chunked training would have made losses, gradients, running stats and ``num_batches_tracked`` depend on the
chunk size. Chunking in training would save little memory anyway: autograd keeps every chunk's activations
for the backward pass. In eval mode BatchNorm uses its running stats and every op is per frame, so chunked and
whole decoding agree to float rounding. tests/test_chunk_semantics.py holds both to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .plugin import Plugin


# Frames a head decodes at once on CPU in eval mode (training decodes the whole batch: see above). Results do not
# depend on it (tests/test_model.py); 8 frames' maps at 224x224 outgrow the caches, so decoding them 2 at a time
# is faster (benchmarks/vs_official.py measures the forward with it). None: the model's frames_chunk_size alone.
CPU_FRAMES_CHUNK: int | None = 2


@dataclass
class HeadInput:
    """What a head sees: the backbone tokens plus the outputs of the heads that ran before it."""

    tokens: list                      # per layer [B, S, P, 2C] (None for layers nobody asked for)
    patch_start_idx: int
    images: torch.Tensor              # [B, S, 3, H, W] in [0, 1]
    query_points: torch.Tensor | None = None   # [B, N, 2] pixels (x, y)
    outputs: dict = field(default_factory=dict)
    frames_chunk_size: int | None = 8
    training: bool = False            # the running head's mode (IGGTModel sets it): True decodes unchunked

    @property
    def shape(self) -> tuple[int, int, int, int]:
        B, S, _, H, W = self.images.shape
        return B, S, H, W

    def patch_tokens(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s patch tokens flattened over frames: [B*S, h*w, 2C]."""
        t = self.tokens[layer]
        if t is None:
            raise RuntimeError(f"backbone layer {layer} was not kept; declare it in the head's token_layers")
        return t[:, :, self.patch_start_idx:].reshape(t.shape[0] * t.shape[1], -1, t.shape[-1])

    def frame_chunks(self) -> list[slice]:
        """Slices over the flattened B*S frames, in order, of at most ``frames_chunk_size`` frames (on CPU at
        most :data:`CPU_FRAMES_CHUNK`: the decoders' maps then stay cache-sized, which is faster). With
        ``training`` set, one slice of all frames: a training-mode BatchNorm must see the whole batch."""
        B, S, _, _ = self.shape
        n = B * S
        if self.training:
            return [slice(0, n)]
        step = n if not self.frames_chunk_size else self.frames_chunk_size
        if self.images.device.type == "cpu" and CPU_FRAMES_CHUNK:
            step = min(step, CPU_FRAMES_CHUNK)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]


class Head(nn.Module, Plugin):
    """Base class of plugin heads: part of the network (pure tensors in, tensors out), trained by its loss terms.

    Class attributes a head declares, besides :class:`~iggt_lightning.plugin.Plugin`'s ``requires`` / ``outputs``:
    ``intermediates`` (output keys returned only with ``return_intermediates=True``, e.g. features another
    head reads), ``trainable`` and ``loss_terms`` (names of the loss terms its :meth:`loss` returns; each gets
    a weight in the config, ``loss_weights.<term>``). Instances set ``token_layers`` (which backbone layers they
    read) so the backbone keeps only those. The hooks (input checks, metrics, image logging, describe) are
    :class:`~iggt_lightning.plugin.Plugin`'s. The model checks the configured heads' declarations together when
    it is built (:func:`~iggt_lightning.plugin.check_contract`).

    A head with a counterpart in the official IGGT / VGGT checkpoints declares its keys there:
    ``official_prefixes``, (official key prefix, the path under ``heads.<name>.`` it loads into: ``""`` for the
    head itself) pairs, and ``official_drop_rules``, (rule name, regular expression on the official key starting
    with ``^`` and one of its prefixes, why dropping the key is safe) for official keys it has no place for.
    :func:`~iggt_lightning.checkpoints.official_rules` builds the strict key mapping from them.
    """

    intermediates: ClassVar[tuple[str, ...]] = ()
    trainable: ClassVar[bool] = True
    # Whether the head follows a reduced-precision autocast when the model's head_precision is "autocast" (False:
    # it stays in float32 then too, for a head whose arithmetic is negligible and whose outputs are sensitive)
    reduced_precision: ClassVar[bool] = True
    loss_terms: ClassVar[tuple[str, ...]] = ()
    official_prefixes: ClassVar[tuple[tuple[str, str], ...]] = ()
    official_drop_rules: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    token_layers: tuple[int, ...] = ()

    def forward(self, inp: HeadInput) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ views across processes
    # (iggt_lightning.context_parallel: each process holds a contiguous slice of the scene's views). By default a
    # head is per view: each view's outputs come from that view's tokens alone (like the dense heads). A head whose
    # views meet must say where, or refuse: otherwise each process would see only its own views.

    def view_attention(self) -> list[nn.Module]:
        """The :class:`~iggt_lightning.layers.attention.Attention` modules whose tokens are this head's views (one
        token or more per view, in view order, e.g. the camera head's trunk): with the views split, they attend
        over every process's keys and values. Views must meet nowhere else."""
        return []

    def check_split_views(self, query_points: torch.Tensor | None) -> None:
        """Raise ``ValueError`` (naming the option) when this head cannot run with the views split across
        processes, e.g. because it needs every view's features at once."""

    def loss(self, outputs: dict, batch: dict, active: dict[str, dict]) -> dict[str, torch.Tensor]:
        """Training loss of this head on a normalised batch (see ``data.normalize_scene``).

        ``active`` maps each of this head's ``loss_terms`` whose weight is non-zero to its options
        (``loss_options.<term>`` in the config). Return ``loss_<term>`` (unweighted; the module applies
        the weight) for every active term, plus any sub-terms worth logging (``loss_<term>_<part>``).
        """
        return {}
