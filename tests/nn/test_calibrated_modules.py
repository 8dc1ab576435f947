"""Calibrated schemes (GPTQ, AWQ) through QLinear / QConv2d, quantize_ with Hessians, and save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsfusion.errors import ConfigError
from bitsfusion.nn import QConv2d, QLinear, collect_hessians, load, quantize_, save, set_active_bits
from bitsfusion.nn.swap import SKIP_NO_HESSIAN
from bitsfusion.pack.accounting import packed_nbytes
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme
from tests.nn.conftest import rel_err

CALIBRATED = ["gptq", "awq", "awq+gptq"]


class Net(nn.Module):
    """conv (stride 2) -> depthwise conv -> pooled features -> two linears."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 24)
        self.head = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.depthwise(torch.relu(self.conv(x)))).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc(h)))


def _loud_inputs(m: int, k: int) -> torch.Tensor:
    x = torch.randn(m, k)
    x[:, ::4] *= 8
    return x


@pytest.mark.parametrize("calibration", CALIBRATED)
def test_qlinear_runs_the_dequantized_weight_at_every_precision(calibration: str) -> None:
    fc = nn.Linear(96, 40)
    x = _loud_inputs(256, 96)
    scheme = QScheme(4, 32, "asymmetric", nested=(2, 3), calibration=calibration)
    q = QLinear.from_float(fc, scheme, hessian=x.T @ x / 256)
    q.kernel = "reference"  # exact arithmetic (the native kernels are checked against it in tests/kernels)
    assert (q.packed.input_scale is not None) == scheme.calibration.scales_inputs
    for b in (2, 3, 4):
        set_active_bits(q, b)
        want = F.linear(x, q.packed.to_quantized().dequantize(b), fc.bias)
        torch.testing.assert_close(q(x), want, rtol=0, atol=0)
    set_active_bits(q, 4)
    assert rel_err(q(x), fc(x)) < 0.02


@pytest.mark.parametrize("calibration", ["none", *CALIBRATED])
def test_calibrated_qlinear_beats_round_to_nearest_on_its_inputs(calibration: str) -> None:
    fc = nn.Linear(128, 64)
    x = _loud_inputs(512, 128)
    h = x.T @ x / 512
    rtn = rel_err(QLinear.from_float(fc, QScheme(3, 64))(x), fc(x))
    err = rel_err(QLinear.from_float(fc, QScheme(3, 64, calibration=calibration), hessian=h)(x), fc(x))
    assert err <= rtn * (1.0 if calibration in ("none", "awq") else 0.95), (err, rtn)


@pytest.mark.parametrize("calibration", CALIBRATED)
def test_qconv_uses_im2col_columns(calibration: str) -> None:
    model = Net()
    x = torch.randn(4, 3, 12, 12)
    h = collect_hessians(model, [x], progress=False)["conv"]
    scheme = QScheme(3, 16, nested=(2,), calibration=calibration)
    q = QConv2d.from_float(model.conv, scheme, hessian=h)
    q.kernel = "reference"  # exact arithmetic, as above
    assert q.shape == (8, 27) and (q.packed.input_scale is not None) == scheme.calibration.scales_inputs
    for b in (2, 3):
        set_active_bits(q, b)
        weight = q.packed.dequantize(b).view(8, 3, 3, 3)
        torch.testing.assert_close(q(x), F.conv2d(x, weight, model.conv.bias, 2, 1), rtol=0, atol=0)
    set_active_bits(q, 3)
    assert rel_err(q(x), model.conv(x)) < 0.1


def test_from_float_without_a_hessian_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="collect_hessians"):
        QLinear.from_float(nn.Linear(8, 8), QScheme(4, calibration="gptq"))


def test_quantize_skips_calibrated_layers_without_a_hessian() -> None:
    model = Net()
    plan = BitPlan(default=QScheme(4, 8, calibration="awq"), rules={"head": QScheme(4, 8)})
    hessians = collect_hessians(model, [torch.randn(2, 3, 8, 8)], names=["fc"], progress=False)
    report = quantize_(model, plan, hessians=hessians, progress=False)
    assert sorted(q.fqn for q in report.quantized) == ["fc", "head"]
    reasons = {s.fqn: s.reason for s in report.skipped}
    assert reasons["conv"].startswith(SKIP_NO_HESSIAN) and "collect_hessians" in reasons["conv"]
    assert reasons["depthwise"].startswith(SKIP_NO_HESSIAN) and "groups=8" in reasons["depthwise"]
    assert isinstance(model.fc, QLinear) and isinstance(model.conv, nn.Conv2d)


def test_quantize_with_calibration_data_collects_then_quantizes() -> None:
    model, reference = Net(), Net()
    reference.load_state_dict(model.state_dict())
    batches = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    plan = BitPlan(default=QScheme(4, 8, calibration="awq+gptq"), rules={"depthwise": QScheme(4, 8)})
    report = quantize_(model, plan, calibration_data=batches, progress=False)
    assert sorted(q.fqn for q in report.quantized) == ["conv", "depthwise", "fc", "head"]
    x = torch.randn(2, 3, 12, 12)
    assert rel_err(model(x), reference(x)) < 0.05
    with pytest.raises(ConfigError, match="not both"):
        quantize_(Net(), plan, hessians={}, calibration_data=batches, progress=False)


def test_awq_artifact_round_trip_is_exact(tmp_path: Path) -> None:
    model = Net()
    batches = [torch.randn(4, 3, 12, 12)]
    plan = BitPlan(default=QScheme(4, 8, "asymmetric", nested=(2,), calibration="awq"),
                   rules={"depthwise": QScheme(3, 8, nested=(2,))})
    quantize_(model, plan, calibration_data=batches, progress=False)
    assert "input_scale" in dict(model.fc.named_buffers())
    assert model.fc.nbytes == packed_nbytes(model.fc.scheme, model.fc.shape)
    path = save(model, tmp_path / "awq")
    loaded = load(path, model=Net())
    assert torch.equal(loaded.fc.input_scale, model.fc.input_scale)
    x = torch.randn(2, 3, 12, 12)
    model.eval()
    for b in (4, 2):
        set_active_bits(model, b)
        set_active_bits(loaded, b)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
