"""``QConv2d``'s native path (im2col + ``dispatch.linear``) against ``kernels.reference.conv2d``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsfusion.kernels import reference
from bitsfusion.nn.qconv import QConv2d
from bitsfusion.types import QScheme
from tests.kernels.native_helpers import needs_native

pytestmark = needs_native
CONVS = [
    pytest.param(dict(in_channels=6, out_channels=10, kernel_size=3, padding=1), id="3x3-pad1"),
    pytest.param(dict(in_channels=4, out_channels=7, kernel_size=(2, 3), stride=(2, 1), padding=(1, 0)),
                 id="2x3-stride"),
    pytest.param(dict(in_channels=5, out_channels=9, kernel_size=3, padding="same", dilation=2), id="same-dil2"),
    pytest.param(dict(in_channels=8, out_channels=12, kernel_size=1, padding="valid"), id="1x1-valid"),
]


@pytest.mark.parametrize("kwargs", CONVS)
@pytest.mark.parametrize("exact", [False, True], ids=["int8", "exact"])
def test_im2col_path_matches_the_reference_conv(kwargs: dict, exact: bool) -> None:
    """Bound: 2% of max |y| for the int8 kernels (activation / table rounding), 1e-4 for the exact ones."""
    conv = nn.Conv2d(**kwargs)
    q = QConv2d.from_float(conv, QScheme(4, group_size=32, nested=(2,)))
    q.exact = exact
    x = torch.randn(2, kwargs["in_channels"], 9, 11)
    with torch.no_grad():
        assert q._native_reason(x) is None
        for bits in (2, 4):
            q.set_active_bits(bits)
            y = q(x)
            want = reference.conv2d(x, q.packed, q.bias, bits, q.weight_shape, q.stride, q.padding, q.dilation,
                                    q.groups)
            assert y.shape == want.shape
            tol = (1e-4 if exact else 2e-2) * float(want.abs().max())
            assert float((y - want).abs().max()) <= tol


def test_large_kxk_convs_and_grouped_convs_stay_on_the_reference() -> None:
    big = QConv2d.from_float(nn.Conv2d(4, 4, 3, padding=1), QScheme(4, group_size=32))
    assert "patches" in big._native_reason(torch.randn(1, 4, 32, 32))
    grouped = QConv2d.from_float(nn.Conv2d(4, 4, 3, groups=2), QScheme(4, group_size=16))
    assert "groups=2" in grouped._native_reason(torch.randn(1, 4, 8, 8))
