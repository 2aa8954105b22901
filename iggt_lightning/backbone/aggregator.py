"""The VGGT aggregator: patch embedding, then alternating frame / global attention."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers.block import Block
from ..layers.rope import RotaryPositionEmbedding2D, grid_positions
from ..layers.token_merge import Layout, merged_block, parse_global_attention
from .patch_embed import DINOV2_SIZES, ConvPatchEmbed, DinoV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneOutput:
    """``tokens[i]`` is layer i's ``cat(frame_out, global_out)`` of shape [B, S, P, 2C], or None when no
    head asked for that layer (saves memory); per frame the tokens are [camera, registers, patches]."""

    tokens: list
    patch_start_idx: int
    patch_tokens: torch.Tensor  # [B*S, h*w, C], what the patch embedding produced


class Aggregator(nn.Module):
    """Alternating-attention aggregator (VGGT).

    Images are RGB in [0, 1] and are ImageNet-normalised inside. Each frame gets one camera token and
    ``num_register_tokens`` register tokens; slot 0 of those parameters is used for the first frame
    (the reference view) and slot 1 for every other frame. ``first_view``: the index in the whole scene of the
    first frame this process holds (0 unless the views are split across processes,
    :mod:`iggt_lightning.context_parallel`): only the scene's frame 0 gets slot 0.

    ``global_attention``: how the global blocks attend. ``None`` or ``{"kind": "exact"}``: over all tokens of all
    frames. ``{"kind": "merged", "ratio": 0.9, "start_block": 0, ...}``: training-free token merging (FastVGGT
    style) in the global blocks from ``start_block`` on, for many views; see
    :mod:`iggt_lightning.layers.token_merge` for the keys and docs/many-view.md. It adds no parameters.
    """

    def __init__(self, embed_dim: int = 1024, depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_register_tokens: int = 4, patch_embed: str = "dinov2_vitl14_reg", patch_size: int = 14,
                 img_size: int = 518, qkv_bias: bool = True, proj_bias: bool = True, ffn_bias: bool = True,
                 qk_norm: bool = True, rope_freq: float = 100, init_values: float = 0.01,
                 gradient_checkpointing: bool = False, global_attention: dict | None = None) -> None:
        super().__init__()
        if patch_embed == "conv":
            self.patch_embed = ConvPatchEmbed(patch_size, 3, embed_dim)
        elif patch_embed in DINOV2_SIZES:
            if DINOV2_SIZES[patch_embed][0] != embed_dim:
                raise ValueError(f"{patch_embed} has width {DINOV2_SIZES[patch_embed][0]} but embed_dim={embed_dim}")
            self.patch_embed = DinoV2(patch_embed, img_size, patch_size, num_register_tokens)
        else:
            raise ValueError(f"unknown patch_embed {patch_embed!r}; expected 'conv' or one of {sorted(DINOV2_SIZES)}")
        self.embed_dim, self.depth, self.patch_size = embed_dim, depth, patch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.global_attention = parse_global_attention(global_attention, depth, "backbone.global_attention")
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None

        def make_block() -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, init_values,
                         qk_norm=qk_norm, rope=self.rope)

        self.frame_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.global_blocks = nn.ModuleList(make_block() for _ in range(depth))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, num_register_tokens, embed_dim) * 1e-6)
        self.patch_start_idx = 1 + num_register_tokens
        self.first_view = 0
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def set_global_attention(self, spec: dict | None, field: str = "backbone.global_attention") -> None:
        """Switch how the global blocks attend (the weights are untouched); ``spec`` is checked against this
        backbone (``start_block`` must name one of its blocks), errors name ``field``."""
        self.global_attention = parse_global_attention(spec, self.depth, field)

    @staticmethod
    def _per_frame(token: torch.Tensor, B: int, S: int, reference: bool = True) -> torch.Tensor:
        """[1, 2, X, C] -> [B*S, X, C]: slot 0 for frame 0, slot 1 for frames 1..S-1 (all S frames get slot 1
        when ``reference`` is False: the reference view is another process's)."""
        if not reference:
            return token[:, 1:].expand(B, S, *token.shape[2:]).reshape(B * S, *token.shape[2:])
        first = token[:, :1].expand(B, 1, *token.shape[2:])
        rest = token[:, 1:].expand(B, S - 1, *token.shape[2:])
        return torch.cat([first, rest], dim=1).reshape(B * S, *token.shape[2:])

    def _run(self, block: Block, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, pos, use_reentrant=False)
        return block(x, pos=pos)

    def _run_global(self, i: int, x: torch.Tensor, pos: torch.Tensor | None, layout: Layout) -> torch.Tensor:
        block = self.global_blocks[i]
        if not self.global_attention.merges(i):
            return self._run(block, x, pos)
        fn = partial(merged_block, block, layout=layout, cfg=self.global_attention, index=i)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, x, pos, use_reentrant=False)
        return fn(x, pos)

    def forward(self, images: torch.Tensor, layers: set[int] | None = None) -> BackboneOutput:
        """images [B, S, 3, H, W] in [0, 1]; ``layers``: which outputs to keep (None = all)."""
        B, S, _, H, W = images.shape
        x = (images - self._mean) / self._std
        patch_tokens = self.patch_embed(x.reshape(B * S, 3, H, W))
        ref = self.first_view == 0
        special = [self._per_frame(self.camera_token, B, S, ref), self._per_frame(self.register_token, B, S, ref)]
        tokens = torch.cat(special + [patch_tokens], dim=1)
        _, P, C = tokens.shape
        pos = None
        if self.rope is not None:
            pos = grid_positions(B * S, H // self.patch_size, W // self.patch_size, self.patch_start_idx, images.device)
        pos_global = pos.reshape(B, S * P, 2) if pos is not None else None
        layout = Layout(S, P, self.patch_start_idx, H // self.patch_size, W // self.patch_size)

        outputs: list = []
        for i in range(self.depth):
            tokens = self._run(self.frame_blocks[i], tokens.reshape(B * S, P, C), pos)
            frame_out = tokens
            tokens = self._run_global(i, tokens.reshape(B, S * P, C), pos_global, layout)
            keep = layers is None or i in layers or (i - self.depth) in layers
            outputs.append(torch.cat([frame_out.reshape(B, S, P, C), tokens.reshape(B, S, P, C)], dim=-1)
                           if keep else None)
        return BackboneOutput(outputs, self.patch_start_idx, patch_tokens)
