"""The CPU inference fast paths (oneDNN prepacked layers, Winograd 3x3 convolution) and the fusion blocks' 1x1 order."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from iggt_lightning.layers import fast_conv, onednn
from iggt_lightning.layers.dpt import FeatureFusionBlock, interpolate
from iggt_lightning.layers.fast_conv import Conv2d, set_conv_algorithm, winograd_conv3x3, winograd_weight


@pytest.fixture(autouse=True)
def _auto_algorithm():
    before = fast_conv.get_conv_algorithm()
    set_conv_algorithm("auto")
    yield
    set_conv_algorithm(before)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.detach().double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("n,c,o,h,w,bias", [(2, 16, 24, 8, 8, True), (1, 8, 8, 7, 13, False), (3, 32, 16, 17, 5, True),
                                            (1, 4, 4, 1, 1, True)])
def test_winograd_equals_the_convolution(n, c, o, h, w, bias):
    g = torch.Generator().manual_seed(n * 100 + h)
    x, weight = torch.randn(n, c, h, w, generator=g), torch.randn(o, c, 3, 3, generator=g)
    b = torch.randn(o, generator=g) if bias else None
    ref = F.conv2d(x.double(), weight.double(), b.double() if bias else None, padding=1)
    out = winograd_conv3x3(x, winograd_weight(weight), b)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 2e-5
    # the same in float64 is exact to rounding: the transforms are right, not merely close
    out64 = winograd_conv3x3(x.double(), winograd_weight(weight.double()), b.double() if bias else None)
    assert _rel(out64, ref) < 1e-12


def test_winograd_chunks_frames_without_changing_results(monkeypatch):
    x, weight = torch.randn(5, 8, 12, 12), torch.randn(8, 8, 3, 3)
    u = winograd_weight(weight)
    whole = winograd_conv3x3(x, u)
    monkeypatch.setattr(fast_conv, "_TILES_PER_CHUNK", 9)   # one frame (3x3 tiles) per chunk
    assert torch.equal(winograd_conv3x3(x, u), whole)


def _conv(c=128, o=128) -> Conv2d:
    torch.manual_seed(0)
    return Conv2d(c, o, 3, 1, 1).eval()


needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN fused ops")


@needs_onednn
def test_conv2d_paths_auto_winograd_and_direct():
    conv, x = _conv(), torch.randn(1, 128, 16, 16)
    direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
    ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    with torch.no_grad():
        packed = conv(x)                                   # auto: oneDNN, prepacked weights, channels-last out
        assert packed.is_contiguous(memory_format=torch.channels_last) and _rel(packed, ref) < 2e-6
        set_conv_algorithm("winograd")
        wino = conv(x)
        assert not torch.equal(wino, packed) and _rel(wino, ref) < 2e-5
        assert torch.equal(wino, winograd_conv3x3(x, winograd_weight(conv.weight), conv.bias))
        # Winograd only where it applies: on small maps or few channels the prepacked kernel
        small, narrow, y = torch.randn(1, 128, 7, 7), _conv(64, 128), torch.randn(1, 64, 16, 16)
        assert _rel(conv(small), F.conv2d(small.double(), conv.weight.double(), conv.bias.double(), padding=1)) < 2e-6
        assert _rel(narrow(y), F.conv2d(y.double(), narrow.weight.double(), narrow.bias.double(), padding=1)) < 2e-6
        set_conv_algorithm("direct")
        assert torch.equal(conv(x), direct)
    set_conv_algorithm("auto")
    # with autograd: the ordinary kernel, bit for bit (training is untouched)
    assert torch.equal(conv(x), direct)
    with pytest.raises(ValueError, match="unknown convolution algorithm"):
        set_conv_algorithm("winograd-ish")


@needs_onednn
@pytest.mark.parametrize("make,shape", [
    (lambda: fast_conv.Conv2d(24, 40, 3, 2, 1), (2, 24, 9, 11)),           # strided
    (lambda: fast_conv.Conv2d(24, 40, 1), (2, 24, 9, 11)),                 # pointwise
    (lambda: fast_conv.Conv2d(24, 40, 3, 1, 1, bias=False), (1, 24, 5, 6)),
    (lambda: fast_conv.ConvTranspose2d(24, 16, 4, 2, 1), (2, 24, 6, 7)),
    (lambda: fast_conv.ConvTranspose2d(24, 16, 2, 2, 0), (1, 24, 6, 7)),
    (lambda: fast_conv.Linear(24, 40), (3, 7, 24)),
    (lambda: fast_conv.Linear(24, 40, bias=False), (5, 24)),
])
def test_every_fast_layer_equals_the_ordinary_one(make, shape):
    torch.manual_seed(1)
    layer, x = make().eval(), torch.randn(*shape)
    ordinary = type(layer).__mro__[1].forward            # the torch.nn class's own forward
    with torch.no_grad():
        plain = ordinary(layer, x)
        fast = layer(x)
        assert fast.shape == plain.shape and _rel(fast, plain.double()) < 2e-6
        # the same layer under bf16 autocast computes in bf16, as the ordinary one does there
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast16, plain16 = layer(x), ordinary(layer, x)
        assert fast16.dtype == plain16.dtype == torch.bfloat16
        assert _rel(fast16.float(), plain.double()) < 2e-2
    # autograd: the ordinary kernel, bit for bit, and its gradient
    assert torch.equal(layer(x), plain)
    set_conv_algorithm("direct")
    with torch.no_grad():
        assert torch.equal(layer(x), plain)


@needs_onednn
@pytest.mark.parametrize("algorithm", ["auto", "winograd"])
def test_cached_weights_follow_weight_updates(algorithm):
    set_conv_algorithm(algorithm)
    conv, x = _conv(), torch.randn(1, 128, 16, 16)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(-2.0)                          # an optimiser-like in-place update
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert _rel(conv(x), ref) < 2e-5
        other = _conv()
        other.weight.normal_()
        conv.load_state_dict(other.state_dict())        # a checkpoint load copies in place
        ref = F.conv2d(x.double(), other.weight.double(), other.bias.double(), padding=1)
        assert _rel(conv(x), ref) < 2e-5
    # the caches are never saved or copied with the module
    assert set(conv.state_dict()) == {"weight", "bias"}
    if algorithm == "auto":      # a bf16 run keeps its own packed weights beside the fp32 ones (no re-pack each switch)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)
        assert set(onednn._PACKED[conv]) == {torch.float32, torch.bfloat16}
    twin = copy.deepcopy(conv)
    with torch.no_grad():
        assert _rel(twin(x), ref) < 2e-5


def test_fusion_block_order_is_the_official_one_in_exact_arithmetic():
    torch.manual_seed(0)
    block = FeatureFusionBlock(8).double().eval()
    x, skip = torch.randn(2, 8, 6, 7, dtype=torch.float64), torch.randn(2, 8, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x, skip, size=(11, 13))
        # the official order: resize first, then the 1x1 conv
        y = block.resConfUnit2(x + block.resConfUnit1(skip))
        official = block.out_conv(interpolate(y, size=(11, 13), align_corners=True))
    assert torch.allclose(ours, official, rtol=0, atol=1e-12)


@needs_onednn
@pytest.mark.parametrize("make,shape,activation", [
    (lambda: fast_conv.Conv2d(24, 40, 3, 1, 1), (2, 24, 9, 11), "relu"),
    (lambda: fast_conv.Linear(24, 40), (3, 7, 24), "gelu"),
    (lambda: fast_conv.Linear(24, 40), (3, 24), "relu"),
    (lambda: torch.nn.Conv2d(24, 40, 3, 1, 1), (2, 24, 9, 11), "relu"),     # not ours: applied after the layer
])
def test_fused_activation_equals_the_layer_then_the_activation(make, shape, activation):
    torch.manual_seed(2)
    layer, x = make().eval(), torch.randn(*shape)
    act = {"relu": F.relu, "gelu": F.gelu}[activation]
    with torch.no_grad():
        ref = act(type(layer).__mro__[0 if type(layer).__module__.startswith("torch") else 1].forward(layer, x))
        assert _rel(fast_conv.activated(layer, x, activation), ref.double()) < 2e-6
    assert torch.equal(fast_conv.activated(layer, x, activation), act(layer(x)))     # autograd: the plain layers
