"""DPT (dense prediction transformer) decoder parts, with the official module layout."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .fast_conv import Conv2d, ConvTranspose2d, activated

_INTERP_MAX = 1610612736  # F.interpolate overflows int32 indexing above this many output elements


def interpolate(x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: float | None = None,
                mode: str = "bilinear", align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize that splits the batch when the output would overflow int32 indexing."""
    if size is None:
        size = (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    n = size[0] * size[1] * x.shape[0] * x.shape[1]
    if n > _INTERP_MAX:
        chunks = torch.chunk(x, n // _INTERP_MAX + 1, dim=0)
        return torch.cat([F.interpolate(c, size=size, mode=mode, align_corners=align_corners) for c in chunks])
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def _sincos_1d(dim: int, pos: torch.Tensor, omega_0: float) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.double, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0 ** omega
    out = torch.einsum("m,d->md", pos.reshape(-1), omega)  # promotes to float64
    return torch.cat([out.sin(), out.cos()], dim=1).float()  # the official table is rounded to fp32


def uv_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype: torch.dtype,
                 device: torch.device, omega_0: float = 100) -> torch.Tensor:
    """Sinusoidal embedding [channels, height, width] of a centred UV grid normalised by its diagonal."""
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                        device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    emb = torch.cat([_sincos_1d(channels // 2, uu, omega_0), _sincos_1d(channels // 2, vv, omega_0)], dim=-1)
    return emb.view(height, width, channels).permute(2, 0, 1)


@functools.lru_cache(maxsize=16)
def _cached_uv_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype: torch.dtype,
                         device: torch.device, ratio: float) -> torch.Tensor:
    # A constant of the map size: computed once (in float64 sines), not on every chunk of every head.
    with torch.inference_mode(False), torch.no_grad():
        return (uv_embedding(height, width, channels, aspect_ratio, dtype, device) * ratio).to(dtype)[None]


def add_uv_embedding(x: torch.Tensor, image_w: int, image_h: int, ratio: float = 0.1) -> torch.Tensor:
    """``x`` plus the UV embedding; in place (``x`` must be a fresh map no one else reads: a conv's or resize's
    output), which saves writing a second full-resolution map."""
    return x.add_(_cached_uv_embedding(x.shape[-2], x.shape[-1], x.shape[1], image_w / image_h, x.dtype, x.device,
                                       ratio))


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(features, features, 3, 1, 1, bias=True)
        self.conv2 = Conv2d(features, features, 3, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official unit applies an in-place ReLU to its input, so its skip path adds relu(x), not x.
        x = F.relu(x)
        return self.conv2(activated(self.conv1, x, "relu")) + x


class FeatureFusionBlock(nn.Module):
    """RefineNet-style fusion: (x + rcu1(skip)) -> rcu2 -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = Conv2d(features, features, 1, 1, 0, bias=True)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        # The 1x1 conv before the resize instead of after (the official order): bilinear weights sum to one, so
        # the two commute exactly, and the conv then runs on a quarter of the pixels.
        x = self.out_conv(self.resConfUnit2(x))
        return interpolate(x, size=tuple(size), align_corners=True) if size is not None else \
            interpolate(x, scale_factor=2, align_corners=True)


def make_scratch(in_channels: list[int], features: int) -> nn.Module:
    """layerN_rn 3x3 convs to ``features`` channels plus the four fusion blocks."""
    scratch = nn.Module()
    for i, c in enumerate(in_channels, start=1):
        setattr(scratch, f"layer{i}_rn", Conv2d(c, features, 3, 1, 1, bias=False))
    scratch.refinenet1 = FeatureFusionBlock(features)
    scratch.refinenet2 = FeatureFusionBlock(features)
    scratch.refinenet3 = FeatureFusionBlock(features)
    scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
    return scratch


def dpt_resize_layers(out_channels: list[int]) -> nn.ModuleList:
    """x4 (transposed conv), x2 (transposed conv), x1, x1/2 (strided conv) for the four token layers."""
    c = out_channels
    return nn.ModuleList([
        ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4, padding=0),
        ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2, padding=0),
        nn.Identity(),
        Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
    ])


def activate_dense(out: torch.Tensor, activation: str, conf_activation: str):
    """[N, C, H, W] -> (values [N, H, W, C-1], confidence [N, H, W]), in float32 whatever ``out``'s dtype.

    The activations run in float32 even when the head ran in bf16: ``1 + exp(c)`` rounded to bf16 keeps 2^-7
    steps near 1, which flattened the low-confidence end of the map into a few values (a percentile filter then
    kept every pixel)."""
    fmap = out.float().permute(0, 2, 3, 1)
    xyz, conf = fmap[..., :-1], fmap[..., -1]
    if activation == "exp":
        values = torch.exp(xyz)
    elif activation == "inv_log":
        values = torch.sign(xyz) * torch.expm1(torch.abs(xyz))
    elif activation == "relu":
        values = F.relu(xyz)
    elif activation == "linear":
        values = xyz
    elif activation == "sigmoid":
        values = torch.sigmoid(xyz)
    else:
        raise ValueError(f"unknown activation {activation!r}")
    if conf_activation == "expp1":
        conf = 1 + conf.exp()
    elif conf_activation == "expp0":
        conf = conf.exp()
    elif conf_activation == "sigmoid":
        conf = torch.sigmoid(conf)
    else:
        raise ValueError(f"unknown conf_activation {conf_activation!r}")
    return values, conf


class DPT(nn.Module):
    """The DPT decoder over four token layers (official ``DPTHead`` layout, so checkpoints map by prefix).

    ``forward`` works on a chunk of frames already flattened to [N, P, C] patch tokens per layer and returns
    the dense output and the fused maps (out2 at 4h, out3 at 2h, out4 at h) that the instance head reads.
    With ``feature_only`` (the tracker's feature extractor) there is no ``output_conv2``/activation.
    """

    def __init__(self, dim_in: int, patch_size: int = 14, output_dim: int = 4, activation: str = "inv_log",
                 conf_activation: str = "expp1", features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024), pos_embed: bool = True,
                 down_ratio: int = 1, feature_only: bool = False) -> None:
        super().__init__()
        self.patch_size, self.activation, self.conf_activation = patch_size, activation, conf_activation
        self.pos_embed, self.down_ratio, self.feature_only = pos_embed, down_ratio, feature_only
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(Conv2d(dim_in, oc, 1, 1, 0) for oc in out_channels)
        self.resize_layers = dpt_resize_layers(list(out_channels))
        self.scratch = make_scratch(list(out_channels), features)
        if feature_only:
            self.scratch.output_conv1 = Conv2d(features, features, 3, 1, 1)
        else:
            self.scratch.output_conv1 = Conv2d(features, features // 2, 3, 1, 1)
            self.scratch.output_conv2 = nn.Sequential(
                Conv2d(features // 2, 32, 3, 1, 1), nn.ReLU(inplace=True), Conv2d(32, output_dim, 1, 1, 0))

    def forward(self, layer_tokens: list[torch.Tensor], image_hw: tuple[int, int]):
        H, W = image_hw
        h, w = H // self.patch_size, W // self.patch_size
        feats = []
        for i, x in enumerate(layer_tokens):
            x = self.norm(x).permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], h, w)
            x = self.projects[i](x)
            if self.pos_embed:
                x = add_uv_embedding(x, W, H)
            feats.append(self.resize_layers[i](x))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(feats[0]), s.layer2_rn(feats[1]), s.layer3_rn(feats[2]), s.layer4_rn(feats[3])
        out4 = s.refinenet4(l4, size=l3.shape[2:])
        out3 = s.refinenet3(out4, l3, size=l2.shape[2:])
        out2 = s.refinenet2(out3, l2, size=l1.shape[2:])
        out = s.output_conv1(s.refinenet1(out2, l1))
        out = interpolate(out, (int(h * self.patch_size / self.down_ratio), int(w * self.patch_size / self.down_ratio)),
                          align_corners=True)
        if self.pos_embed:
            out = add_uv_embedding(out, W, H)
        if self.feature_only:
            return out, (out2, out3, out4)
        values, conf = activate_dense(s.output_conv2(out), self.activation, self.conf_activation)
        return (values, conf), (out2, out3, out4)
