"""The VGGT point tracker (CoTracker-style), official module layout.

Correlation pyramid + an update transformer alternating attention over time (per track) and
over space (tracks <-> virtual tracks), refining coordinates and track features iteratively.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .block import Mlp


def bilinear_sampler(inp: torch.Tensor, coords: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """grid_sample with pixel coordinates (x, y), align_corners=True. Samples in ``inp``'s dtype."""
    coords = coords.detach().clone().to(inp.device).to(inp.dtype)
    H, W = inp.shape[2:]
    scale = torch.tensor([2 / max(W - 1, 1), 2 / max(H - 1, 1)], device=coords.device, dtype=coords.dtype)
    coords.mul_(scale).sub_(1)
    return F.grid_sample(inp, coords, align_corners=True, padding_mode=padding_mode)


def sample_features4d(inp: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """inp [B, C, H, W], coords [B, R, 2] pixels -> [B, R, C]."""
    B = inp.shape[0]
    feats = bilinear_sampler(inp, coords.unsqueeze(2))
    return feats.permute(0, 2, 1, 3).reshape(B, -1, feats.shape[1] * feats.shape[3])


def sincos_table_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """[1, embed_dim, grid_h, grid_w] fixed 2D sin-cos table (frequency base 10000), rounded to fp32."""
    gy = torch.arange(grid_h, dtype=torch.float)
    gx = torch.arange(grid_w, dtype=torch.float)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=0).reshape(2, 1, grid_h, grid_w)

    def one_d(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.double) / (dim / 2.0))
        out = torch.einsum("m,d->md", pos.reshape(-1), omega)
        return torch.cat([out.sin(), out.cos()], dim=1)[None].float()

    emb = torch.cat([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], dim=2)
    return emb.reshape(1, grid_h, grid_w, -1).permute(0, 3, 1, 2)


def flow_embedding(xy: torch.Tensor, C: int) -> torch.Tensor:
    """[B, N, 2] -> [B, N, 2C] interleaved sin/cos at linear frequencies; stored in fp32 as officially."""
    B, N, _ = xy.shape
    div_term = (torch.arange(0, C, 2, device=xy.device, dtype=torch.float32) * (1000.0 / C)).reshape(1, 1, C // 2)
    pe_x = torch.zeros(B, N, C, device=xy.device, dtype=torch.float32)
    pe_y = torch.zeros(B, N, C, device=xy.device, dtype=torch.float32)
    x, y = xy[:, :, 0:1], xy[:, :, 1:2]
    pe_x[:, :, 0::2] = torch.sin(x * div_term)
    pe_x[:, :, 1::2] = torch.cos(x * div_term)
    pe_y[:, :, 0::2] = torch.sin(y * div_term)
    pe_y[:, :, 1::2] = torch.cos(y * div_term)
    return torch.cat([pe_x, pe_y], dim=2)


class AttnBlock(nn.Module):
    """Self-attention block; note the residual is taken after norm1 (as in the official tracker)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    def __init__(self, depth: int = 6, input_dim: int = 388, hidden_size: int = 384, num_heads: int = 8,
                 output_dim: int = 130, mlp_ratio: float = 4.0, num_virtual_tracks: int = 64) -> None:
        super().__init__()
        self.num_virtual_tracks = num_virtual_tracks
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))  # official spelling
        self.time_blocks = nn.ModuleList(AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.input_transform(self.input_norm(x))
        init_tokens = tokens
        B, _, T, _ = tokens.shape
        tokens = torch.cat([tokens, self.virual_tracks.repeat(B, 1, T, 1).to(tokens.dtype)], dim=1)
        N = tokens.shape[1]
        nv = self.num_virtual_tracks
        for i in range(len(self.time_blocks)):
            tokens = self.time_blocks[i](tokens.contiguous().view(B * N, T, -1)).view(B, N, T, -1)
            space = tokens.permute(0, 2, 1, 3).contiguous().view(B * T, N, -1)
            point, virtual = space[:, : N - nv], space[:, N - nv:]
            virtual = self.space_virtual2point_blocks[i](virtual, point)
            virtual = self.space_virtual_blocks[i](virtual)
            point = self.space_point2virtual_blocks[i](point, virtual)
            tokens = torch.cat([point, virtual], dim=1).view(B, T, N, -1).permute(0, 2, 1, 3)
        tokens = tokens[:, : N - nv] + init_tokens
        return self.flow_head(self.output_norm(tokens))


class CorrBlock:
    """Feature pyramid of avg-pooled maps; samples (2r+1)^2 correlations around each track per level."""

    def __init__(self, fmaps: torch.Tensor, num_levels: int = 4, radius: int = 4) -> None:
        self.radius = radius
        self.pyramid = [fmaps]
        for _ in range(num_levels - 1):
            B, S, C, H, W = fmaps.shape
            fmaps = F.avg_pool2d(fmaps.reshape(B * S, C, H, W), kernel_size=2, stride=2)
            fmaps = fmaps.reshape(B, S, C, *fmaps.shape[-2:])
            self.pyramid.append(fmaps)
        r = radius
        d = torch.linspace(-r, r, 2 * r + 1, device=fmaps.device, dtype=fmaps.dtype)
        # (dy, dx) pairs added to (x, y) coordinates: a transposed neighbourhood order, kept for parity.
        self.delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), dim=-1)

    def corr_sample(self, targets: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        B, S, N, C = targets.shape
        n = 2 * self.radius + 1
        out = []
        for i, fmaps in enumerate(self.pyramid):
            _, _, _, H, W = fmaps.shape
            corrs = torch.matmul(targets, fmaps.view(B, S, C, H * W)) / math.sqrt(C)
            centroid = coords.reshape(B * S * N, 1, 1, 2) / (2 ** i)
            sample_at = centroid + self.delta.to(coords.device).to(coords.dtype).view(1, n, n, 2)
            sampled = bilinear_sampler(corrs.reshape(B * S * N, 1, H, W), sample_at, padding_mode="zeros")
            out.append(sampled.view(B, S, N, -1))
        return torch.cat(out, dim=-1).contiguous()


class BaseTrackerPredictor(nn.Module):
    def __init__(self, stride: int = 2, corr_levels: int = 7, corr_radius: int = 4, latent_dim: int = 128,
                 hidden_size: int = 384, depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64,
                 max_scale: int = 518, predict_conf: bool = True) -> None:
        super().__init__()
        self.stride, self.latent_dim, self.corr_levels, self.corr_radius = stride, latent_dim, corr_levels, corr_radius
        self.max_scale, self.predict_conf = max_scale, predict_conf
        self.flows_emb_dim = latent_dim // 2
        self.corr_mlp = Mlp(corr_levels * (corr_radius * 2 + 1) ** 2, hidden_size, latent_dim)
        self.transformer_dim = 3 * latent_dim + 4
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = EfficientUpdateFormer(depth, self.transformer_dim, hidden_size, num_heads,
                                                  latent_dim + 2, 4.0, num_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        if predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def forward(self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int = 4):
        """query_points [B, N, 2] pixels; fmaps [B, S, C, h, w] -> (list of coords [B,S,N,2], vis, conf)."""
        B, N, _ = query_points.shape
        _, S, C, HH, WW = fmaps.shape
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        query_points = query_points / float(self.stride)
        coords = query_points.clone().reshape(B, 1, N, 2).repeat(1, S, 1, 1)
        track_feats = sample_features4d(fmaps[:, 0], coords[:, 0]).unsqueeze(1).repeat(1, S, 1, 1)
        coords_backup = coords.clone()
        corr = CorrBlock(fmaps, num_levels=self.corr_levels, radius=self.corr_radius)
        # Fixed table, sampled at the query positions in fp32 (an fp32 island of the official fp64 run).
        pos_table = sincos_table_2d(self.transformer_dim, HH, WW).to(query_points.device)
        sampled_pos = sample_features4d(pos_table.expand(B, -1, -1, -1), coords[:, 0])
        sampled_pos = rearrange(sampled_pos, "b n c -> (b n) c").unsqueeze(1)
        ref = torch.cat([self.query_ref_token[:, 0:1], self.query_ref_token[:, 1:2].expand(-1, S - 1, -1)], dim=1)

        preds = []
        for _ in range(iters):
            coords = coords.detach()
            fcorrs = corr.corr_sample(track_feats, coords)
            fcorrs = self.corr_mlp(fcorrs.permute(0, 2, 1, 3).reshape(B * N, S, fcorrs.shape[3]))
            flows = (coords - coords[:, 0:1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flows_emb = torch.cat([flow_embedding(flows, self.flows_emb_dim), flows / self.max_scale,
                                   flows / self.max_scale], dim=-1)
            track_feats_ = track_feats.permute(0, 2, 1, 3).reshape(B * N, S, self.latent_dim)
            x = torch.cat([flows_emb, fcorrs, track_feats_], dim=2) + sampled_pos
            x = x + ref.to(x.device).to(x.dtype)
            delta = rearrange(self.updateformer(rearrange(x, "(b n) s d -> b n s d", b=B)), "b n s d -> (b n) s d")
            delta_feats = delta[:, :, 2:].reshape(B * N * S, self.latent_dim)
            track_feats_ = self.ffeat_updater(self.ffeat_norm(delta_feats)) + track_feats_.reshape(B * N * S, -1)
            track_feats = track_feats_.reshape(B, N, S, self.latent_dim).permute(0, 2, 1, 3)
            coords = coords + delta[:, :, :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
            coords[:, 0] = coords_backup[:, 0]
            preds.append(coords * self.stride)

        flat = track_feats.reshape(B * S * N, self.latent_dim)
        vis = torch.sigmoid(self.vis_predictor(flat).reshape(B, S, N))
        conf = torch.sigmoid(self.conf_predictor(flat).reshape(B, S, N)) if self.predict_conf else None
        return preds, vis, conf
