"""collect_hessians: X^T X / n by hand for Linear and Conv2d, hook hygiene, names, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsfusion.errors import ConfigError, UnsupportedLayer
from bitsfusion.nn import collect_hessians
from bitsfusion.nn.calibrate import input_rows

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


class Net(nn.Module):
    """conv (stride 2, padding 1) -> conv 'same' (even kernel, dilation 2) -> depthwise -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.same = nn.Conv2d(4, 5, (2, 4), padding="same", dilation=(1, 2), bias=False)
        self.depthwise = nn.Conv2d(5, 5, 3, groups=5)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(self.same(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _patches(x: torch.Tensor, kh: int, kw: int, stride: int, pad: int) -> torch.Tensor:
    """Receptive fields ``[B * H' * W', C * kh * kw]`` by explicit indexing of the zero-padded input."""
    x = F.pad(x, [pad] * 4)
    b, c, h, w = x.shape
    rows = []
    for n in range(b):
        for i in range(0, h - kh + 1, stride):
            for j in range(0, w - kw + 1, stride):
                rows.append(x[n, :, i : i + kh, j : j + kw].reshape(-1))
    return torch.stack(rows)


def test_linear_hessian_is_the_mean_of_x_xt_over_every_row() -> None:
    fc = nn.Linear(4, 3)
    batches = [torch.randn(2, 5, 4), torch.randn(3, 4)]
    h = collect_hessians(nn.Sequential(fc), batches, progress=False)["0"]
    x = torch.cat([b.reshape(-1, 4) for b in batches]).double()
    assert h.dtype == torch.float32 and h.shape == (4, 4)
    torch.testing.assert_close(h, (x.T @ x / 13).float(), rtol=1e-6, atol=1e-7)


def test_conv_hessian_is_the_mean_over_receptive_fields() -> None:
    model = Net()
    batches = [torch.randn(2, 3, 7, 6), torch.randn(1, 3, 5, 5)]
    h = collect_hessians(model, batches, progress=False)
    x = torch.cat([_patches(b, 3, 3, 2, 1) for b in batches]).double()
    assert h["conv"].shape == (27, 27)
    torch.testing.assert_close(h["conv"], (x.T @ x / x.shape[0]).float(), rtol=1e-5, atol=1e-6)


def test_same_padding_hessian_reproduces_the_output_energy() -> None:
    """``W H W^T = Y^T Y / n`` for the conv's output ``Y`` (no bias): checks 'same' padding and column order."""
    model = Net()
    x = torch.randn(2, 3, 9, 8)
    h = collect_hessians(model, [x], progress=False)["same"].double()
    with torch.no_grad():
        y = model.same(model.conv(x))
    y = y.permute(0, 2, 3, 1).reshape(-1, 5).double()
    w = model.same.weight.reshape(5, -1).double()
    torch.testing.assert_close(w @ h @ w.T, y.T @ y / y.shape[0], rtol=1e-5, atol=1e-6)


def test_rows_of_a_conv_follow_the_weight_column_order() -> None:
    conv = nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 0), bias=False)
    x = torch.randn(2, 2, 5, 7)
    rows = input_rows(conv, x)
    want = conv(x).permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(rows @ conv.weight.reshape(3, -1).T, want, rtol=1e-5, atol=1e-5)


def test_grouped_convs_are_left_out_and_refused_by_name() -> None:
    model = Net()
    h = collect_hessians(model, [torch.randn(1, 3, 8, 8)], progress=False)
    assert set(h) == {"conv", "same", "fc"}
    with pytest.raises(UnsupportedLayer, match="depthwise.*groups=5"):
        collect_hessians(model, [torch.randn(1, 3, 8, 8)], names=["depthwise"], progress=False)


def test_names_select_layers_and_an_unknown_name_is_an_error() -> None:
    model = Net()
    h = collect_hessians(model, [torch.randn(1, 3, 8, 8)], names=["fc"], progress=False)
    assert set(h) == {"fc"}
    with pytest.raises(ConfigError, match="'fcc'"):
        collect_hessians(model, [torch.randn(1, 3, 8, 8)], names=["fcc"], progress=False)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_even_when_forward_fails() -> None:
    model = Net()

    def failing(m: nn.Module, batch: torch.Tensor) -> None:
        m(batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect_hessians(model, [torch.randn(1, 3, 8, 8)], forward=failing, progress=False)
    assert _hook_count(model) == 0
    collect_hessians(model, [torch.randn(1, 3, 8, 8)], progress=True)
    assert _hook_count(model) == 0


def test_dict_batches_are_keyword_arguments_and_gradients_are_off() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, *, features: torch.Tensor) -> torch.Tensor:
            assert not torch.is_grad_enabled()
            return self.fc(features)

    feats = torch.randn(4, 3)
    h = collect_hessians(Keyword(), [{"features": feats}], progress=False)["fc"]
    torch.testing.assert_close(h, feats.T @ feats / 4)


def test_unreached_layers_are_absent_and_no_batches_is_an_error() -> None:
    model = nn.ModuleDict({"used": nn.Linear(3, 3), "unused": nn.Linear(3, 3)})
    h = collect_hessians(model, [torch.randn(2, 3)], forward=lambda m, b: m["used"](b), progress=False)
    assert set(h) == {"used"}
    with pytest.raises(ConfigError, match="no calibration batches"):
        collect_hessians(model, [], progress=False)
