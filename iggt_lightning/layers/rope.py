"""2D rotary position embedding (RoPE) over patch-grid coordinates."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grid_positions(batch: int, height: int, width: int, num_special: int, device: torch.device) -> torch.Tensor:
    """(y, x) integer positions per token: special tokens at (0, 0), patches at (row+1, col+1).

    The +1 keeps patch positions distinct from the special tokens' position.
    """
    ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    patch = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=-1) + 1
    special = torch.zeros(num_special, 2, dtype=patch.dtype, device=device)
    return torch.cat([special, patch], dim=0).unsqueeze(0).expand(batch, -1, -1)


class RotaryPositionEmbedding2D(nn.Module):
    """Rotate-half RoPE applied separately to the y half and the x half of each head's channels."""

    def __init__(self, frequency: float = 100.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._cache: dict = {}

    def _tables(self, dim: int, length: int, device: torch.device, dtype: torch.dtype):
        key = (dim, length, device, dtype)
        if key not in self._cache:
            # The angle table is built in float32 (then cast), as in the official code: an fp64 run
            # keeps this fp32 island, and reproducing it keeps fp64 parity tight.
            exponents = torch.arange(0, dim, 2, device=device).float() / dim
            inv_freq = 1.0 / (self.frequency ** exponents)
            angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq).to(dtype)
            angles = torch.cat([angles, angles], dim=-1)
            self._cache[key] = (angles.cos(), angles.sin())
        return self._cache[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def _rope_1d(self, x, pos, cos, sin):
        cos = F.embedding(pos, cos)[:, None]
        sin = F.embedding(pos, sin)[:, None]
        return x * cos + self._rotate_half(x) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B, heads, N, D]; positions [B, N, 2] integer (y, x)."""
        half = tokens.shape[-1] // 2
        cos, sin = self._tables(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        y, x = tokens.chunk(2, dim=-1)
        return torch.cat([self._rope_1d(y, positions[..., 0], cos, sin),
                          self._rope_1d(x, positions[..., 1], cos, sin)], dim=-1)
