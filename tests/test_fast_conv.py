"""The CPU inference fast paths of the dense heads: Winograd 3x3 convolution and the fusion blocks' 1x1 order."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iggt_lightning.layers import fast_conv
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


def test_conv2d_takes_winograd_only_where_it_applies():
    conv, x = _conv(), torch.randn(1, 128, 16, 16)
    direct = F.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        fast = conv(x)
    assert not torch.equal(fast, direct) and _rel(fast, direct.double()) < 2e-5
    # with autograd, under the "direct" switch, on small maps or few channels: the ordinary kernel, bit for bit
    assert torch.equal(conv(x), direct)
    set_conv_algorithm("direct")
    with torch.no_grad():
        assert torch.equal(conv(x), direct)
    set_conv_algorithm("auto")
    with torch.no_grad():
        small = torch.randn(1, 128, 7, 7)
        assert torch.equal(conv(small), F.conv2d(small, conv.weight, conv.bias, padding=1))
        narrow, y = _conv(64, 128), torch.randn(1, 64, 16, 16)
        assert torch.equal(narrow(y), F.conv2d(y, narrow.weight, narrow.bias, padding=1))
    with pytest.raises(ValueError, match="unknown convolution algorithm"):
        set_conv_algorithm("winograd-ish")


def test_transformed_weights_follow_weight_updates():
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
    assert "_winograd_cache" not in conv.state_dict()


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
