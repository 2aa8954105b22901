"""Window attention blocks of the instance decoder (HAT-style), official module layout.

``SwinSA``: one non-shifted window self-attention block (no relative-position bias) with a
channel-attention conv branch. ``SwinCA``: overlapping window cross-attention (8x8 query
windows against 12x12 key/value windows, with a learned relative-position bias). Both pad their
feature maps to a multiple of the window inside the attention and crop back, so any patch grid
works; grids that are already multiples take exactly the official path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention
from .fast_conv import Conv2d, Linear
from .block import Mlp


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[b, h, w, c] -> [b * h/ws * w/ws, ws, ws, c]."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def _padded(n: int, ws: int) -> int:
    return -(-n // ws) * ws


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * mask


class ChannelAttention(nn.Module):
    def __init__(self, num_feat: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), Conv2d(num_feat, max(1, num_feat // squeeze_factor), 1), nn.ReLU(inplace=True),
            Conv2d(max(1, num_feat // squeeze_factor), num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention conv branch."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30) -> None:
        super().__init__()
        self.cab = nn.Sequential(
            Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class HAB(nn.Module):
    """Hybrid attention block: window self-attention + 0.01 * channel-attention conv, then MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, compress_ratio: int = 3,
                 squeeze_factor: int = 30, conv_scale: float = 0.01, mlp_ratio: float = 4.0,
                 drop_path: float = 0.1) -> None:
        super().__init__()
        self.window_size, self.conv_scale = window_size, conv_scale
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
        H, W = _padded(h, ws), _padded(w, ws)
        xp = F.pad(x, (0, 0, 0, W - w, 0, H - h)) if (H, W) != (h, w) else x
        windows = window_partition(xp, ws).view(-1, ws * ws, c)
        attn = window_reverse(self.attn(windows).view(-1, ws, ws, c), ws, H, W)[:, :h, :w]
        x = shortcut + self.drop_path(attn.reshape(b, h * w, c)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries in ws x ws windows, keys/values in (1+r)ws windows."""

    def __init__(self, dim: int, window_size: int, overlap_ratio: float, num_heads: int, mlp_ratio: float = 2) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        ows = self.overlap_win_size
        self.norm1 = nn.LayerNorm(dim)
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.unfold = nn.Unfold(kernel_size=(ows, ows), stride=window_size, padding=(ows - window_size) // 2)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((window_size + ows - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int],
                rpi: torch.Tensor) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        ws, ows, nh = self.window_size, self.overlap_win_size, self.num_heads
        shortcut = x
        q = self.q(self.norm1(x).view(b, h, w, c)).permute(0, 3, 1, 2)
        k = self.k(self.norm1(k).view(b, h, w, c)).permute(0, 3, 1, 2)
        v = self.v(self.norm1(v).view(b, h, w, c)).permute(0, 3, 1, 2)
        H, W = _padded(h, ws), _padded(w, ws)
        if (H, W) != (h, w):  # zero keys/values beyond the border, as the unfold's own padding
            q, k, v = (F.pad(t, (0, W - w, 0, H - h)) for t in (q, k, v))
        kv = torch.cat([k, v], dim=1)
        # The official code hands the channel-first query map to the channel-last window partition, so
        # its "query windows" are slices of the (channel, row, column) layout. Reproduced for parity.
        q_windows = window_partition(q, ws).view(-1, ws * ws, c)
        kv_windows = rearrange(self.unfold(kv), "b (nc ch owh oww) nw -> nc (b nw) (owh oww) ch",
                               nc=2, ch=c, owh=ows, oww=ows)
        bw, nq, _ = q_windows.shape
        d = c // nh
        qh = q_windows.reshape(bw, nq, nh, d).permute(0, 2, 1, 3)
        kh = kv_windows[0].reshape(bw, -1, nh, d).permute(0, 2, 1, 3)
        vh = kv_windows[1].reshape(bw, -1, nh, d).permute(0, 2, 1, 3)
        attn = (qh * self.scale) @ kh.transpose(-2, -1)
        bias = self.relative_position_bias_table[rpi.reshape(-1)].view(ws * ws, ows * ows, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        out = (attn @ vh).transpose(1, 2).reshape(bw, nq, c).view(-1, ws, ws, c)
        out = window_reverse(out, ws, H, W)[:, :h, :w].reshape(b, h * w, c)
        x = self.proj(out) + shortcut
        return x + self.mlp(self.norm2(x))


class _TokenNorm(nn.Module):
    """[b, c, h, w] -> LayerNorm'd tokens [b, h*w, c] (the official ``patch_embed`` with patch size 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


def _relative_index_sa(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def _relative_index_oca(ws: int, overlap_ratio: float) -> torch.Tensor:
    ext = ws + int(overlap_ratio * ws)
    ori = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    exf = torch.stack(torch.meshgrid(torch.arange(ext), torch.arange(ext), indexing="ij")).flatten(1)
    rel = (exf[:, None, :] - ori[:, :, None]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - ext + 1
    rel[:, :, 1] += ws - ext + 1
    rel[:, :, 0] *= ws + ext - 1
    return rel.sum(-1)


class _SwinTail(nn.Module):
    """Shared tail: LayerNorm -> conv_after_body + input -> conv+LeakyReLU -> conv_last."""

    def _build_tail(self, embed_dim: int, out_chans: int) -> None:
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = Conv2d(embed_dim, embed_dim, 3, 1, 1)
        self.conv_before_upsample = nn.Sequential(Conv2d(embed_dim, 64, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.conv_last = Conv2d(64, out_chans, 3, 1, 1)

    def _tail(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        feats = self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)
        x = self.conv_after_body(feats) + x
        return self.conv_last(self.conv_before_upsample(x))


class SwinSA(_SwinTail):
    """Window self-attention refinement of a [B, H, W, C] map (channels last in and out)."""

    def __init__(self, embed_dim: int = 128, out_chans: int = 128, num_heads: int = 4, window_size: int = 8,
                 drop_path: float = 0.1) -> None:
        super().__init__()
        # Persistent because the official checkpoint stores it (unused: this attention has no bias table).
        self.register_buffer("relative_position_index_SA", _relative_index_sa(window_size))
        self.patch_embed = _TokenNorm(embed_dim)
        self.atten_block = HAB(embed_dim, num_heads, window_size, drop_path=drop_path)
        self._build_tail(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        tokens = self.atten_block(self.patch_embed(x), (x.shape[2], x.shape[3]))
        return self._tail(tokens, x).permute(0, 2, 3, 1).contiguous()


class SwinCA(_SwinTail):
    """Overlapping window cross-attention of a query map against key/value maps (channels last)."""

    def __init__(self, embed_dim: int = 256, out_chans: int = 256, num_heads: int = 4, window_size: int = 8,
                 overlap_ratio: float = 0.5, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("relative_position_index_SA", _relative_index_sa(window_size))
        self.patch_embed = _TokenNorm(embed_dim)
        self.atten_block = OCAB(embed_dim, window_size, overlap_ratio, num_heads, mlp_ratio)
        self._build_tail(embed_dim, out_chans)
        self.register_buffer("relative_position_index_OCA", _relative_index_oca(window_size, overlap_ratio))

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x, k, v = (t.permute(0, 3, 1, 2) for t in (x, k, v))
        hw = (x.shape[2], x.shape[3])
        tokens = self.atten_block(self.patch_embed(x), self.patch_embed(k), self.patch_embed(v), hw,
                                  self.relative_position_index_OCA)
        return self._tail(tokens, x).permute(0, 2, 3, 1).contiguous()
