"""QConv2d: every conv configuration against nn.Conv2d and the reference kernel; unsupported modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsfusion.errors import UnsupportedLayer
from bitsfusion.nn import QConv2d, QModule
from bitsfusion.types import Grid, QScheme
from tests.nn.conftest import rel_err

CONVS = [
    pytest.param(dict(in_channels=3, out_channels=8, kernel_size=3, padding=1), id="3x3-pad1"),
    pytest.param(dict(in_channels=8, out_channels=6, kernel_size=(2, 3), stride=2, groups=2), id="2x3-stride2-groups2"),
    pytest.param(dict(in_channels=6, out_channels=6, kernel_size=3, padding="same", dilation=2, groups=6),
                 id="depthwise-same-dilation2"),
    pytest.param(dict(in_channels=5, out_channels=4, kernel_size=1, padding="valid", bias=False), id="1x1-valid-nobias"),
    pytest.param(dict(in_channels=4, out_channels=16, kernel_size=4, stride=(1, 2), padding=(0, 2)), id="4x4-asym"),
]


def _conv(**kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(**kwargs)
    with torch.no_grad():
        conv.weight.normal_()
    return conv


@pytest.mark.parametrize("kwargs", CONVS)
@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC], ids=lambda g: g.value)
def test_eight_bits_matches_the_float_conv(kwargs: dict, grid: Grid) -> None:
    """Squared relative output error below 1e-4 at 8 bits, group 16 (K from 5 to 64, some tails)."""
    conv = _conv(**kwargs)
    q = QConv2d.from_float(conv, QScheme(8, group_size=16, grid=grid))
    x = torch.randn(2, kwargs["in_channels"], 9, 10)
    y = q(x)
    assert y.shape == conv(x).shape
    assert rel_err(y, conv(x)) < 1e-4
    weight = q.packed.dequantize().view(conv.weight.shape)
    want = F.conv2d(x, weight, q.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    # Bit-for-bit equality holds for the reference kernel only; without autograd the layer may run the native
    # im2col path (int8 activations for these 180 patches; its bounds are tested in tests/kernels).
    q.kernel = "reference"
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", CONVS)
def test_lower_bits_lose_more(kwargs: dict) -> None:
    conv = _conv(**kwargs)
    x = torch.randn(2, kwargs["in_channels"], 9, 10)
    errs = [rel_err(QConv2d.from_float(conv, QScheme(b, group_size=16))(x), conv(x)) for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2], errs


def test_weight_is_viewed_out_by_in_times_kernel() -> None:
    conv = _conv(in_channels=6, out_channels=4, kernel_size=(3, 5), groups=2)
    q = QConv2d.from_float(conv, QScheme(4, group_size=None))
    assert q.shape == (4, 3 * 3 * 5) and q.weight_shape == (4, 3, 3, 5)
    assert q.qweight.shape == (4, 4, -(-45 // 8)) and q.scales.shape == (4, 1)


def test_nested_switch_is_exact() -> None:
    conv = _conv(in_channels=4, out_channels=8, kernel_size=3, padding="same")
    q = QConv2d.from_float(conv, QScheme(4, group_size=12, nested=(2,)))
    x = torch.randn(1, 4, 7, 7)
    q.set_active_bits(2)
    want = F.conv2d(x, q.packed.dequantize(2).view(conv.weight.shape), q.bias, padding="same")
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_other_than_zeros_are_unsupported(mode: str) -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
    with pytest.raises(UnsupportedLayer, match=f"padding_mode='{mode}'.*padding_mode='zeros'"):
        QConv2d.from_float(conv, QScheme(4))


@pytest.mark.parametrize("kwargs", CONVS)
def test_manifest_entry_rebuilds_the_same_module(kwargs: dict) -> None:
    conv = _conv(**kwargs)
    q = QConv2d.from_float(conv, QScheme(3, group_size=16, grid=Grid.ASYMMETRIC, nested=(1, 2)))
    shell = QModule.from_spec(q.manifest_entry())
    assert isinstance(shell, QConv2d) and repr(shell) == repr(q)
    shell.load_state_dict(q.state_dict())
    x = torch.randn(2, kwargs["in_channels"], 8, 8)
    torch.testing.assert_close(shell(x), q(x), rtol=0, atol=0)
