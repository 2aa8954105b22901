"""Patch embeddings: a plain strided conv, or a DINOv2 ViT with registers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.block import Block


class ConvPatchEmbed(nn.Module):
    """One patch_size x patch_size strided conv; positions come only from the aggregator's RoPE."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


DINOV2_SIZES = {  # name: (embed_dim, depth, num_heads)
    "dinov2_vits14_reg": (384, 12, 6),
    "dinov2_vitb14_reg": (768, 12, 12),
    "dinov2_vitl14_reg": (1024, 24, 16),
    "dinov2_vitg2_reg": (1536, 40, 24),
}


class DinoV2(nn.Module):
    """DINOv2 ViT with register tokens; returns the final-norm patch tokens only.

    The learned absolute position embedding (for a ``img_size/patch_size`` square grid) is resized
    bicubically with antialias to the actual grid, in float32, as the official aggregator does.
    """

    def __init__(self, name: str = "dinov2_vitl14_reg", img_size: int = 518, patch_size: int = 14,
                 num_register_tokens: int = 4) -> None:
        super().__init__()
        if name not in DINOV2_SIZES:
            raise ValueError(f"unknown DINOv2 patch embedding {name!r}; expected one of {sorted(DINOV2_SIZES)}")
        dim, depth, heads = DINOV2_SIZES[name]
        self.embed_dim, self.patch_size, self.num_register_tokens = dim, patch_size, num_register_tokens
        self.patch_embed = ConvPatchEmbed(patch_size, 3, dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, init_values=1.0, norm_eps=1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def resized_pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        m = int(round(n ** 0.5))
        if (grid_h, grid_w) == (m, m):
            return self.pos_embed
        pe = self.pos_embed.float()
        patch = pe[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pe[:, :1], patch], dim=1).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        tokens = tokens + self.resized_pos_embed(H // self.patch_size, W // self.patch_size, tokens.dtype)
        tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(B, -1, -1), tokens[:, 1:]], 1)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)[:, 1 + self.num_register_tokens:]
