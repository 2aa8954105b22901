"""Point-track head (VGGT): DPT feature maps at half resolution + the iterative tracker.

Runs only when query points are given: ``query_points`` [B, N, 2] in pixels (x, y) of frame 0.
Outputs ``track`` [B, S, N, 2] (last iteration), ``vis`` and ``conf`` [B, S, N] (sigmoid), and
``track_iters`` (every iteration's coordinates).
"""
from __future__ import annotations

import torch

from iggt_lightning.head import Head, HeadInput
from iggt_lightning.layers.dpt import DPT
from iggt_lightning.layers.tracker import BaseTrackerPredictor
from iggt_lightning.registry import register_head


@register_head("track")
class TrackHead(Head):
    outputs = ("track", "vis", "conf", "track_iters")
    intermediates = ("track_iters",)
    official_prefixes = (("track_head.", ""),)

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, features: int = 128, iters: int = 4,
                 predict_conf: bool = True, stride: int = 2, corr_levels: int = 7, corr_radius: int = 4,
                 hidden_size: int = 384, depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
                 layers: tuple[int, ...] = (4, 11, 17, 23)) -> None:
        super().__init__()
        self.token_layers = tuple(layers)
        self.iters, self.stride, self.corr_levels = iters, stride, corr_levels
        self.feature_extractor = DPT(dim_in, patch_size, features=features, out_channels=tuple(out_channels),
                                     pos_embed=False, down_ratio=2, feature_only=True)
        self.tracker = BaseTrackerPredictor(stride, corr_levels, corr_radius, features, hidden_size, depth,
                                            num_heads, num_virtual_tracks, predict_conf=predict_conf)

    def min_image_side(self) -> int:
        """Smallest image side for which every correlation-pyramid level keeps at least one cell."""
        return 2 * 2 ** (self.corr_levels - 1)  # feature maps are at half resolution

    def check_inputs(self, images: torch.Tensor, query_points: torch.Tensor | None) -> None:
        H, W = images.shape[-2:]
        if query_points is not None and min(H, W) < self.min_image_side():
            raise ValueError(f"point tracking needs images of at least {self.min_image_side()} px per side (its "
                             f"correlation pyramid halves the map {self.corr_levels - 1} times); got {H}x{W}")

    def check_split_views(self, query_points: torch.Tensor | None) -> None:
        """The tracker follows each query through every view's feature maps at once: not with split views."""
        if query_points is not None:
            raise ValueError("query_points: point tracking (the track head) needs every view's feature maps in one "
                             "process, so it does not run with the views split across processes; track in one "
                             "process, or give no query points")

    def feature_maps(self, inp: HeadInput) -> torch.Tensor:
        B, S, H, W = inp.shape
        tokens = [inp.patch_tokens(layer) for layer in self.token_layers]
        maps = [self.feature_extractor([t[sl] for t in tokens], (H, W))[0] for sl in inp.frame_chunks()]
        maps = torch.cat(maps)
        return maps.reshape(B, S, *maps.shape[1:])

    def forward(self, inp: HeadInput, iters: int | None = None) -> dict:
        if inp.query_points is None:
            return {}
        preds, vis, conf = self.tracker(inp.query_points, self.feature_maps(inp), iters or self.iters)
        return {"track": preds[-1], "vis": vis, "conf": conf, "track_iters": preds}
