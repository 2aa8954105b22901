"""Convolution and linear layers with fast CPU inference paths; training is untouched.

:class:`Conv2d`, :class:`ConvTranspose2d` and :class:`Linear` are the ``torch.nn`` layers (same parameters, same
state-dict keys). At inference on CPU (no autograd) they compute with oneDNN directly, in channels-last memory and
with weights reordered once (:mod:`iggt_lightning.layers.onednn`), in float32 or, under bf16 autocast, in bf16.
Everywhere else (autograd, CUDA, other dtypes) they are the ordinary layers, bit for bit. The algorithm is one
switch, ``set_conv_algorithm`` or the ``IGGT_CONV`` environment variable:

* ``auto`` (default): the oneDNN path.
* ``winograd``: the oneDNN path, and 3x3 / stride-1 convolutions with at least ``MIN_CHANNELS`` channels in
  and out as Winograd F(4x4, 3x3) in float32: each 4x4 output tile from a 6x6 input tile with 36 products
  instead of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), the convolution
  becoming 36 matrix products over channels. It is exact in real arithmetic; in float32 its error is a few 1e-6
  of the output's magnitude. It pays where the matrix product is fast and the direct convolution is not; on the
  CPU of docs/speed.md the prepacked direct convolution is faster (``benchmarks/kernels.py`` compares them).
* ``direct``: PyTorch's ordinary kernels everywhere.

The outputs of every path stay inside the parity bar (``tests/test_fast_conv.py``, ``tests/test_parity.py``).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from . import onednn

MIN_CHANNELS = 128      # below this the transforms cost more than the multiplications they save
MIN_PIXELS = 8 * 8
_TILES_PER_CHUNK = 1024  # frames go through in groups of about this many 4x4 tiles: cache-sized transforms

ALGORITHMS = ("auto", "winograd", "direct")
_ALGORITHM = os.environ.get("IGGT_CONV", "auto")

# F(4x4, 3x3) with the interpolation points 0, +-1, +-2 (and infinity): input transform B^T, weight transform G,
# output transform A^T.
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def set_conv_algorithm(name: str) -> None:
    """``auto`` (oneDNN at CPU inference), ``winograd`` (and Winograd 3x3 convolutions) or ``direct`` (PyTorch's
    ordinary kernels); see the module docstring."""
    global _ALGORITHM
    if name not in ALGORITHMS:
        raise ValueError(f"unknown convolution algorithm {name!r}; expected one of {', '.join(map(repr, ALGORITHMS))}")
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


def inference_dtype(x: torch.Tensor, layer: nn.Module) -> torch.dtype | None:
    """The dtype a fast CPU inference path computes ``layer(x)`` in, or None where the ordinary kernel runs:
    float32 (or bf16 for bf16 input), bf16 under bf16 autocast, never with autograd or off the CPU."""
    if _ALGORITHM == "direct" or x.device.type != "cpu" or not onednn.available():
        return None
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters(recurse=False))):
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return x.dtype if x.dtype in (torch.float32, torch.bfloat16) else None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the fast CPU inference paths of the module docstring."""

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        return (_ALGORITHM == "winograd" and x.dtype == torch.float32 and x.ndim == 4
                and self.padding_mode == "zeros" and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1
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

    def _onednn_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype of the prepacked oneDNN path for ``x``, or None (the ordinary kernel, or Winograd)."""
        if self.padding_mode != "zeros" or x.ndim != 4 or isinstance(self.padding, str):
            return None
        dtype = inference_dtype(x, self)
        return None if dtype == torch.float32 and self._winograd_applies(x) else dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._onednn_dtype(x)
        if dtype is not None:
            return onednn.packed_conv2d(self, x, dtype)
        if self._winograd_applies(x) and inference_dtype(x, self) == torch.float32:
            return winograd_conv3x3(x, self._transformed(), self.bias)
        return super().forward(x)


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with prepacked weights in channels-last memory at CPU inference."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        dtype = inference_dtype(x, self) if output_size is None and x.ndim == 4 else None
        if dtype is None:
            return super().forward(x, output_size)
        return onednn.conv_transpose2d(self, x, dtype)


class Linear(nn.Linear):
    """``nn.Linear`` whose CPU inference product is oneDNN's (see :mod:`iggt_lightning.layers.onednn`)."""

    def _onednn_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype of the oneDNN path for ``x``, or None (the ordinary kernel)."""
        return inference_dtype(x, self) if x.ndim >= 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self._onednn_dtype(x)
        return super().forward(x) if dtype is None else onednn.linear(self, x, dtype)


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def activated(layer: nn.Module, x: torch.Tensor, activation: str) -> torch.Tensor:
    """``activation(layer(x))`` for one of this module's layers, the activation (``relu``, or ``gelu`` after a
    :class:`Linear`) fused into the product where the fast path runs: one pass over the output, not two."""
    fusable = isinstance(layer, Linear) or (isinstance(layer, Conv2d) and activation == "relu")
    dtype = layer._onednn_dtype(x) if fusable else None
    if dtype is None:
        return _ACTIVATIONS[activation](layer(x))
    fused = onednn.linear if isinstance(layer, Linear) else onednn.packed_conv2d
    return fused(layer, x, dtype, activation)
