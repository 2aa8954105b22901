"""oneDNN kernels for CPU inference: prepacked convolutions and matrix products.

PyTorch's CPU ``nn.Linear`` goes to the BLAS (MKL), and ``nn.Conv2d`` to oneDNN, which reorders the weights into its
blocked layout on every call. On some CPUs that costs a factor of two or more: on the AMD EPYC (Zen 5, AVX-512)
this project is measured on, MKL's fp32 matrix product runs at about 165 GFLOP/s on two cores where oneDNN reaches
about 440, and a 1024-channel 3x3 convolution on a 16x16 map spends more time reordering its 38 MB of weights
than multiplying. ``benchmarks/kernels.py`` measures both on the machine at hand.

Here the weights are reordered once (cached per module and rebuilt when the weights change) and the products go
through oneDNN's fused ops (the ones ``torch.compile`` uses for frozen CPU graphs). They compute the same sums in
another order: results differ from the ordinary kernels by float rounding only (tests/test_fast_conv.py).

The caches are held outside the modules (a weak dictionary), so they are never saved, copied or moved with them.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

# layer -> {dtype: (weight key, packed weight, bias)}: a run in fp32 and one in bf16 each keep theirs
_PACKED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_STATE: dict = {"available": None}


def available() -> bool:
    """Whether this torch build has oneDNN and its fused convolution / linear ops (checked once, by running them)."""
    if _STATE["available"] is None:
        try:
            w = torch.ones(1, 1, 1, 1)
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), [0, 0], [1, 1], [1, 1], 1, [1, 1, 1, 1])
            y = torch.ops.mkldnn._convolution_pointwise(torch.ones(1, 1, 1, 1), packed, None, [0, 0], [1, 1], [1, 1],
                                                        1, "none", [], "")
            z = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 1), torch.ones(1, 1), None, "none", [], "")
            t = torch.ops.mkldnn._reorder_convolution_transpose_weight(w, [0, 0], [0, 0], [1, 1], [1, 1], 1,
                                                                       [1, 1, 1, 1])
            t = torch.ops.mkldnn._convolution_transpose_pointwise(torch.ones(1, 1, 1, 1), t, None, [0, 0], [0, 0],
                                                                  [1, 1], [1, 1], 1, "none", [], "")
            _STATE["available"] = bool(torch.backends.mkldnn.is_available() and y.item() == 1 and z.item() == 1
                                      and t.item() == 1)
        except Exception:  # a build without oneDNN, or one whose private ops changed: the ordinary kernels
            _STATE["available"] = False
    return _STATE["available"]


def _weight_key(weight: torch.Tensor, dtype: torch.dtype) -> tuple:
    return weight.data_ptr(), weight._version, weight.dtype, dtype


def _cached(layer: nn.Module, dtype: torch.dtype, make) -> tuple:
    """The layer's cached (packed weight, bias) in ``dtype``, made by ``make()`` when missing or stale."""
    key = _weight_key(layer.weight, dtype)
    per_dtype = _PACKED.setdefault(layer, {})
    entry = per_dtype.get(dtype)
    if entry is None or entry[0] != key:
        entry = (key, *make())
        per_dtype[dtype] = entry
    return entry[1], entry[2]


def packed_conv2d(conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype, activation: str = "none") -> torch.Tensor:
    """``conv(x)`` (zero padding) in ``dtype`` with the weights in oneDNN's layout, followed by ``activation``
    (``none`` or ``relu``, fused into the same pass); channels-last output."""
    def make():
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.detach().to(dtype).to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation),
            conv.groups, list(x.shape))
        return packed, conv.bias.detach().to(dtype) if conv.bias is not None else None

    weight, bias = _cached(conv, dtype, make)
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, activation, [], "")


def linear(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype, activation: str = "none") -> torch.Tensor:
    """``layer(x)`` in ``dtype`` through oneDNN's matrix product, followed by ``activation`` (``none``, ``relu``
    or ``gelu``: the exact, erf-based GELU) in the same pass."""
    if dtype == layer.weight.dtype:
        weight, bias = layer.weight.detach(), layer.bias.detach() if layer.bias is not None else None
    else:
        weight, bias = _cached(layer, dtype, lambda: (layer.weight.detach().to(dtype),
                                                      layer.bias.detach().to(dtype) if layer.bias is not None else None))
    return torch.ops.mkldnn._linear_pointwise(x.to(dtype), weight, bias, activation, [],
                                              "none" if activation == "gelu" else "")


def conv_transpose2d(conv: nn.ConvTranspose2d, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``conv(x)`` in ``dtype`` with the weights in oneDNN's layout; channels-last output."""
    args = (list(conv.padding), list(conv.output_padding), list(conv.stride), list(conv.dilation), conv.groups)
    weight, bias = _cached(conv, dtype, lambda: (
        torch.ops.mkldnn._reorder_convolution_transpose_weight(conv.weight.detach().to(dtype), *args, list(x.shape)),
        conv.bias.detach().to(dtype) if conv.bias is not None else None))
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_transpose_pointwise(x, weight, bias, *args, "none", [], "")
