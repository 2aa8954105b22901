"""Instance head (IGGT): per-pixel instance features from the tokens, fused with geometry.

Two parts with the official layout: ``adaptor`` (the official ``part_adaptor``, a SAM-style
projector giving maps at 4h, 2h, h and h/2) and ``decoder`` (the official ``part_head``): a
RefineNet decoder whose h-scale map cross-attends to the point head's h-scale features, whose
4h-scale map does overlapping window cross-attention to the point head's 4h-scale features, and
whose output gets a window self-attention block before the final convs. Output ``part_feat``
[B, S, D, H, W] is raw (not normalised), as in the official model; clustering normalises it.

``fusion=False`` drops the cross-modal fusion (an ablation; then no point head is needed).
"""
from __future__ import annotations

import torch
from torch import nn

from iggt_lightning.head import Head, HeadInput
from iggt_lightning.layers.attention import CrossAttention
from iggt_lightning.layers.dpt import interpolate, make_scratch
from iggt_lightning.layers.fast_conv import Conv2d, ConvTranspose2d
from iggt_lightning.layers.swin import SwinCA, SwinSA
from iggt_lightning.losses import contrastive_loss
from iggt_lightning.registry import register_head


class Projects(nn.Module):
    """1x1 conv+BN+ReLU, a residual 3x3 conv pair with BN, then a 1x1 conv."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.input_proj = nn.Sequential(Conv2d(dim_in, dim_out, 1, bias=False), nn.BatchNorm2d(dim_out),
                                        nn.ReLU(inplace=True))
        self.residual_conv = nn.Sequential(
            Conv2d(dim_out, dim_out, 3, 1, 1, bias=False), nn.BatchNorm2d(dim_out), nn.ReLU(inplace=True),
            Conv2d(dim_out, dim_out, 3, 1, 1, bias=False), nn.BatchNorm2d(dim_out))
        self.output_proj = Conv2d(dim_out, dim_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_proj(x)
        return self.output_proj(self.residual_conv(x) + x)


class InstanceAdaptor(nn.Module):
    """Tokens of four layers -> maps at 4h, 2h, h, h/2 (``res1..res4``)."""

    def __init__(self, dim_in: int, out_channels: tuple[int, ...] = (256, 256, 256, 256)) -> None:
        super().__init__()
        c = out_channels
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(Conv2d(dim_in, oc, 1) for oc in c)
        self.resize_layers = nn.ModuleList([
            nn.Sequential(ConvTranspose2d(c[0], c[0], 4, 2, 1), Projects(c[0], c[0]),
                          ConvTranspose2d(c[0], c[0], 4, 2, 1), Projects(c[0], c[0])),
            nn.Sequential(ConvTranspose2d(c[1], c[1], 2, 2, 0), Projects(c[1], c[1])),
            nn.Sequential(nn.Identity(), Projects(c[2], c[2])),
            nn.Sequential(Conv2d(c[3], c[3], 3, 2, 1), Projects(c[3], c[3])),
        ])

    def forward(self, layer_tokens: list[torch.Tensor], grid_hw: tuple[int, int]) -> list[torch.Tensor]:
        h, w = grid_hw
        out = []
        for i, x in enumerate(layer_tokens):
            x = self.norm(x).permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], h, w)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class InstanceDecoder(nn.Module):
    def __init__(self, in_channels: tuple[int, ...] = (256, 256, 256, 256), features: int = 256,
                 output_dim: int = 8, num_heads: int = 8, window_size: int = 8, fusion: bool = True) -> None:
        super().__init__()
        self.fusion = fusion
        self.scratch = make_scratch(list(in_channels), features)
        self.scratch.output_conv1 = Conv2d(features, features // 2, 3, 1, 1)
        self.scratch.output_conv2 = nn.Sequential(Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(inplace=True),
                                                  Conv2d(32, output_dim, 1, 1, 0))
        if fusion:
            # cross_attention_1 is computed but discarded by the official forward: kept so checkpoints load,
            # never run (it cannot change the output), frozen (DDP refuses parameters that get no gradient).
            self.cross_attention_1 = CrossAttention(features, num_heads).requires_grad_(False)
            self.cross_attention_2 = CrossAttention(features, num_heads)
            self.window_cross_attention = SwinCA(features, features, 4, window_size)
        self.window_self_atten = SwinSA(features // 2, features // 2, 4, window_size)

    def forward(self, feats: list[torch.Tensor], point_feat, out_hw: tuple[int, int]) -> torch.Tensor:
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(feats[0]), s.layer2_rn(feats[1]), s.layer3_rn(feats[2]), s.layer4_rn(feats[3])
        out = s.refinenet4(l4, size=l3.shape[2:])
        if self.fusion:
            geo = point_feat[2].flatten(2).transpose(1, 2)
            out = self.cross_attention_2(out.flatten(2).transpose(1, 2), geo, geo).transpose(1, 2).reshape(out.shape)
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        if self.fusion:
            geo = point_feat[0].permute(0, 2, 3, 1)
            out = self.window_cross_attention(out.permute(0, 2, 3, 1), geo, geo).permute(0, 3, 1, 2)
        out = s.output_conv1(s.refinenet1(out, l1))
        out = self.window_self_atten(out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out = interpolate(out, out_hw, align_corners=True)
        return s.output_conv2(out)


@register_head("instance")
class InstanceHead(Head):
    requires = ("point",)  # for the geometry fusion; an instance with fusion=False needs nothing
    outputs = ("part_feat",)
    colour_layers = ("features.glb",)
    loss_terms = ("contrastive",)
    loss_functions = {"contrastive": contrastive_loss}   # variant + the chosen loss's keyword parameters
    official_prefixes = (("part_adaptor.", "adaptor."), ("part_head.", "decoder."))
    official_drop_rules = (
        ("part-head-dead-dpt-base", r"^part_head\.(norm|projects\.\d+|resize_layers\.\d+)\.",
         "PartHead inherits DPTHead's norm/projects/resize_layers but its forward never runs them "
         "(it reads the part_adaptor maps instead); 17.3 M dead parameters"),)

    def __init__(self, dim_in: int = 2048, patch_size: int = 14, output_dim: int = 8, features: int = 256,
                 adaptor_channels: tuple[int, ...] = (256, 256, 256, 256), num_heads: int = 8,
                 window_size: int = 8, layers: tuple[int, ...] = (4, 11, 17, 23), fusion: bool = True) -> None:
        super().__init__()
        self.token_layers = tuple(layers)
        self.patch_size, self.output_dim = patch_size, output_dim
        self.requires = ("point",) if fusion else ()
        self.adaptor = InstanceAdaptor(dim_in, tuple(adaptor_channels))
        self.decoder = InstanceDecoder(tuple(adaptor_channels), features, output_dim, num_heads, window_size, fusion)

    def forward(self, inp: HeadInput) -> dict:
        B, S, H, W = inp.shape
        h, w = H // self.patch_size, W // self.patch_size
        tokens = [inp.patch_tokens(layer) for layer in self.token_layers]
        point_feat = inp.outputs.get("point_feat") if self.decoder.fusion else None
        if self.decoder.fusion and point_feat is None:
            raise RuntimeError("the instance head fuses the point head's features, but none were computed")
        out = []
        for sl in inp.frame_chunks():
            feats = self.adaptor([t[sl] for t in tokens], (h, w))
            geo = tuple(f[sl] for f in point_feat) if point_feat is not None else None
            out.append(self.decoder(feats, geo, (h * self.patch_size, w * self.patch_size)))
        out = torch.cat(out)
        return {"part_feat": out.reshape(B, S, *out.shape[1:])}

    def log_images(self, outputs: dict, batch: dict) -> dict:
        from iggt_lightning.visualize import pca_colours

        return {"pca": pca_colours(outputs["part_feat"][0, 0].detach())} if "part_feat" in outputs else {}

    def describe(self, outputs: dict, scene) -> None:
        """A colour layer ``features.glb``: one PCA of the instance features over all views of the scene."""
        if "part_feat" not in outputs:
            return
        from iggt_lightning.visualize import pca_colours

        f = outputs["part_feat"][scene.index].detach().float().cpu()          # [S,D,h,w]
        S, D, h, w = f.shape
        pca = pca_colours(f.permute(1, 0, 2, 3).reshape(D, S * h, w)).reshape(3, S, h, w).permute(1, 2, 3, 0)
        scene.add_colour_layer("features.glb", pca)

    def loss(self, outputs: dict, batch: dict, active: dict[str, dict]) -> dict:
        """``contrastive``: the 3D-consistent pixel-pair loss (paper Eq. 4), or with ``variant: mean`` the
        community's per-instance-mean loss; other options go to the chosen function."""
        if "contrastive" not in active:
            return {}
        return contrastive_loss(outputs["part_feat"], batch["instance_ids"], **active["contrastive"])
