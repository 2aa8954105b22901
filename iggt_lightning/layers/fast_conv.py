"""A 3x3 convolution that runs Winograd F(4x4, 3x3) on CPU at inference.

The dense heads spend most of their time in 3x3, stride-1 convolutions with 128-1024 channels, which
oneDNN already runs near this CPU's matrix-multiply peak, so only fewer multiplications make them faster.
Winograd's F(4x4, 3x3) computes each 4x4 output tile from a 6x6 input tile with 36 element-wise products
instead of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): the convolution
becomes 36 matrix products over channels, between transforms of the input and of the weights. It is exact in
real arithmetic; in float32 its error is a few 1e-6 of the output's magnitude (the direct kernel's is about
half that), see ``tests/test_fast_conv.py`` and docs/parity.md.

:class:`Conv2d` is an ``nn.Conv2d`` (same parameters, same state-dict keys) that takes this path only where
it pays and changes nothing else: float32 on CPU, no autograd (training and gradients use the ordinary
kernel), a 3x3 / stride 1 / padding 1 / ungrouped convolution with at least ``MIN_CHANNELS`` channels in and
out on a map of at least ``MIN_PIXELS`` pixels. ``set_conv_algorithm("direct")`` (or ``IGGT_CONV=direct``)
turns it off everywhere. The transformed weights are cached on the module and rebuilt when the weights
change (their version counter moves on every in-place update, e.g. an optimiser step or a state-dict load).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

MIN_CHANNELS = 128      # below this the transforms cost more than the multiplications they save
MIN_PIXELS = 8 * 8
_TILES_PER_CHUNK = 1024  # frames go through in groups of about this many 4x4 tiles: cache-sized transforms

_ALGORITHM = os.environ.get("IGGT_CONV", "auto")

# F(4x4, 3x3) with the interpolation points 0, +-1, +-2 (and infinity): input transform B^T, weight transform G,
# output transform A^T.
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def set_conv_algorithm(name: str) -> None:
    """``auto`` (Winograd where :class:`Conv2d` allows it) or ``direct`` (always the ordinary kernel)."""
    global _ALGORITHM
    if name not in ("auto", "direct"):
        raise ValueError(f"unknown convolution algorithm {name!r}; expected 'auto' or 'direct'")
    _ALGORITHM = name


def get_conv_algorithm() -> str:
    return _ALGORITHM


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """[O, C, 3, 3] -> [36, C, O]: G w G^T per (out, in) pair, indexed (row frequency, column frequency),
    computed in float64 and rounded once."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,ocij,bj->abco", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _transform_matrices(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D transforms as Kronecker products: B^T (x) B^T [36, 36] and A^T (x) A^T [16, 36]."""
    key = (dtype, device)
    if key not in _MATRICES:
        bt, at = torch.tensor(_BT, dtype=torch.float64), torch.tensor(_AT, dtype=torch.float64)
        _MATRICES[key] = (torch.kron(bt, bt).to(dtype=dtype, device=device),
                          torch.kron(at, at).to(dtype=dtype, device=device))
    return _MATRICES[key]


_MATRICES: dict = {}


def _winograd_tiles(x: torch.Tensor, u: torch.Tensor, out: torch.Tensor) -> None:
    """x [N, H, W, C] (contiguous), u from :func:`winograd_weight`; writes the convolution (zero padding 1) into
    ``out`` [N, th, 4, tw, 4, O], the output padded up to whole 4x4 tiles.

    Each transform is one matrix product over a gathered copy of the 6x6 tiles: these transforms are bound
    by memory traffic, and this is the fewest passes over it."""
    n, h, w, c = x.shape
    bt, at = _transform_matrices(x.dtype, x.device)
    th, tw = -(-h // 4), -(-w // 4)
    xp = F.pad(x, (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))                  # [N, 4th+2, 4tw+2, C]
    tiles = xp.unfold(1, 6, 4).unfold(2, 6, 4)                                     # [N, th, tw, C, 6, 6]
    tiles = tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, -1)                         # [tile pixel, N*th*tw*C]
    v = (bt @ tiles).view(36, n * th * tw, c)                                       # [row freq * 6 + col freq, ...]
    m = torch.bmm(v, u).view(36, -1)
    y = (at @ m).view(4, 4, n, th, tw, u.shape[2])                                  # [row, col in tile, N, th, tw, O]
    out.copy_(y.permute(2, 3, 0, 4, 1, 5))


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """3x3 convolution, stride 1, zero padding 1, of x [N, C, H, W] with the transformed weights ``u``.

    Returns [N, O, H, W] in channels-last memory (what the next convolution reads fastest)."""
    nhwc = x.permute(0, 2, 3, 1).contiguous()      # free when x is already channels-last
    n, h, w, _ = nhwc.shape
    th, tw, o = -(-h // 4), -(-w // 4), u.shape[2]
    out = nhwc.new_empty(n, th, 4, tw, 4, o)
    step = max(1, _TILES_PER_CHUNK // (th * tw))
    for i in range(0, n, step):
        _winograd_tiles(nhwc[i:i + step], u, out[i:i + step])
    out = out.view(n, 4 * th, 4 * tw, o)
    if (4 * th, 4 * tw) != (h, w):
        out = out[:, :h, :w]
    if bias is not None:
        out = out.add_(bias)
    return out.permute(0, 3, 1, 2)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes :func:`winograd_conv3x3` where that is faster (see the module docstring)."""

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        return (_ALGORITHM == "auto" and x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
                and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                and min(self.in_channels, self.out_channels) >= MIN_CHANNELS
                and x.shape[-2] * x.shape[-1] >= MIN_PIXELS and min(x.shape[-2:]) >= 4)

    def _transformed(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = getattr(self, "_winograd_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, winograd_weight(w))
            object.__setattr__(self, "_winograd_cache", cached)   # not a buffer: never saved, never moved
        return cached[1]

    def _pointwise_applies(self, x: torch.Tensor) -> bool:
        # A 1x1 conv on a channels-last map (what the Winograd path returns) is a plain matrix product; PyTorch's
        # CPU convolution would take a slow generic kernel for it.
        return (_ALGORITHM == "auto" and x.device.type == "cpu" and x.ndim == 4 and not torch.is_grad_enabled()
                and self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.groups == 1 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._winograd_applies(x):
            return winograd_conv3x3(x, self._transformed(), self.bias)
        if self._pointwise_applies(x):
            w = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), w, self.bias).permute(0, 3, 1, 2)
        return super().forward(x)
