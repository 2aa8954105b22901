"""Shared base of the DPT dense heads (depth, point): chunked over frames, official layout under ``dpt``."""
from __future__ import annotations

import torch

from iggt_lightning.head import Head, HeadInput
from iggt_lightning.layers.dpt import DPT


class DenseHead(Head):
    value_key = "values"
    conf_key = "conf"

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024), layers: tuple[int, ...] = (4, 11, 17, 23),
                 pos_embed: bool = True) -> None:
        super().__init__()
        if len(layers) != 4 or len(out_channels) != 4:
            raise ValueError(f"a DPT head reads exactly 4 token layers with 4 widths; got layers={layers}, "
                             f"out_channels={out_channels}")
        self.token_layers = tuple(layers)
        self.dpt = DPT(dim_in, patch_size, output_dim, activation, conf_activation, features, tuple(out_channels),
                       pos_embed)

    def run(self, inp: HeadInput):
        """-> (values [B,S,H,W,C], conf [B,S,H,W], fused maps (out2, out3, out4) each [B*S, F, ., .])."""
        B, S, H, W = inp.shape
        tokens = [inp.patch_tokens(layer) for layer in self.token_layers]
        values, confs, feats = [], [], []
        for sl in inp.frame_chunks():
            (v, c), f = self.dpt([t[sl] for t in tokens], (H, W))
            values.append(v)
            confs.append(c)
            feats.append(f)
        values = torch.cat(values).reshape(B, S, *values[0].shape[1:])
        confs = torch.cat(confs).reshape(B, S, *confs[0].shape[1:])
        fused = tuple(torch.cat([f[i] for f in feats]) for i in range(3))
        return values, confs, fused
