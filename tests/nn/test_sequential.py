"""Sequential calibration (``quantize_(..., sequential=True)``, ``nn.sequential``): stage order, the target
weight, and that fitting each layer on the partly quantized model's inputs lowers the output error."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitsfusion.errors import ConfigError
from bitsfusion.nn import QLinear, quantize_
from bitsfusion.nn.sequential import first_call_order, target_weight
from bitsfusion.plan import BitPlan
from bitsfusion.train import convert, prepare
from bitsfusion.types import QScheme


class Net(nn.Module):
    """fc1 -> (q, k from the same input) -> out; ``unused`` never runs."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        self.fc1 = nn.Linear(24, width)
        self.q = nn.Linear(width, 32)
        self.k = nn.Linear(width, 32)
        self.out = nn.Linear(64, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        return self.out(torch.cat([torch.relu(self.q(h)), torch.tanh(self.k(h))], dim=-1))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x)))))


def _batches(n: int, seed: int, rows: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(24, 24, generator=g) / 4 + torch.eye(24)  # correlated inputs, as real activations are
    return [torch.randn(rows, 24, generator=g) @ mix for _ in range(n)]


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().eval()


def test_stages_follow_the_first_calls_and_group_shared_inputs() -> None:
    net = _net()
    layers = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    stages, repeated = first_call_order(net, layers, _batches(1, 0)[0])
    assert stages == [["fc1"], ["q", "k"], ["out"]] and repeated == set()
    twice = Twice()
    stages, repeated = first_call_order(twice, {"a": twice.a, "b": twice.b}, torch.randn(3, 16))
    assert stages == [["a"], ["b"]] and repeated == {"a"}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(2, 12), ridge=st.floats(1e-3, 2.0), seed=st.integers(0, 2**16))
def test_target_weight_is_the_ridge_least_squares_fit(n: int, k: int, ridge: float, seed: int) -> None:
    """``W*`` minimises ``||X W^T - X~ W'^T||^2 / M + lambda ||W' - W||^2`` (checked against lstsq)."""
    g = torch.Generator().manual_seed(seed)
    m = 4 * k + 8
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    xq = x + 0.3 * torch.randn(m, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    h, c = xq.T @ xq / m, xq.T @ x / m
    lam = ridge * float(h.diagonal().mean())
    a = torch.cat([xq / m**0.5, lam**0.5 * torch.eye(k, dtype=torch.float64)])
    b = torch.cat([x @ w.T / m**0.5, lam**0.5 * w.T])
    want = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(target_weight(w, h, c, ridge).double(), want, rtol=1e-4, atol=1e-4)


def test_target_weight_is_the_weight_when_the_inputs_are_exact() -> None:
    x = torch.randn(200, 10, dtype=torch.float64)
    w = torch.randn(5, 10)
    h = x.T @ x / 200
    torch.testing.assert_close(target_weight(w, h, h), w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(target_weight(w, torch.zeros(10, 10), torch.zeros(10, 10)), w)
    with pytest.raises(ConfigError, match="ridge must be > 0"):
        target_weight(w, h, h, ridge=0.0)


def _output_error(model: nn.Module, reference: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        num = sum(float((model(b) - reference(b)).square().sum()) for b in batches)
        den = sum(float(reference(b).square().sum()) for b in batches)
    return num / den


@pytest.mark.parametrize("bits", [2, 3])
def test_sequential_lowers_the_output_error(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")
    reference = _net(1)
    calibration, held_out = _batches(16, 1), _batches(8, 2)
    plan = BitPlan(default=QScheme(bits, group_size=8, calibration="gptq"))
    plain, seq = copy.deepcopy(reference), copy.deepcopy(reference)
    quantize_(plain, plan, calibration_data=calibration, progress=False)
    report = quantize_(seq, plan, calibration_data=calibration, progress=False, sequential=True)
    assert sorted(q.fqn for q in report.quantized) == ["fc1", "k", "out", "q"]
    assert all(isinstance(getattr(seq, n), QLinear) for n in ("fc1", "q", "k", "out"))  # float passes undone
    [skip] = [s for s in report.skipped if s.fqn == "unused"]
    assert "no calibration batch reaches it" in skip.reason
    assert report.warnings == []  # 1024 rows for at most 64 inputs
    e_plain, e_seq = _output_error(plain, reference, held_out), _output_error(seq, reference, held_out)
    assert e_seq < 0.9 * e_plain, (e_seq, e_plain)


def test_round_to_nearest_layers_are_quantized_first_and_seen_by_the_stages(monkeypatch) -> None:
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")
    reference = _net(2)
    calibration = _batches(8, 3)
    plan = BitPlan(default=QScheme(3, group_size=8, calibration="gptq"), rules={"fc1": QScheme(2, group_size=8)})
    model = copy.deepcopy(reference)
    report = quantize_(model, plan, calibration_data=calibration, progress=False, sequential=True)
    assert [q.fqn for q in report.quantized][:1] == ["fc1"] and isinstance(model.fc1, QLinear)
    # q and k were fitted to fc1's quantized output: their weights differ from the float-Hessian GPTQ ones
    plain = copy.deepcopy(reference)
    quantize_(plain, plan, calibration_data=calibration, progress=False)
    assert not torch.equal(model.q.packed.dequantize(), plain.q.packed.dequantize())


def test_sequential_needs_calibration_batches() -> None:
    with pytest.raises(ConfigError, match="sequential=True .* calibration_data"):
        quantize_(_net(), BitPlan(default=QScheme(4, calibration="gptq")), progress=False, sequential=True)
    with pytest.raises(ConfigError, match="no calibration batches"):
        quantize_(_net(), BitPlan(default=QScheme(4, calibration="gptq")), calibration_data=[], progress=False,
                  sequential=True)


def test_prepare_starts_from_the_sequential_result(monkeypatch) -> None:
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")
    reference = _net(3)
    calibration, held_out = _batches(8, 4), _batches(2, 5)
    plan = BitPlan(default=QScheme(3, group_size=8, calibration="gptq"))
    ptq, qat = copy.deepcopy(reference), copy.deepcopy(reference)
    quantize_(ptq, plan, calibration_data=calibration, progress=False, sequential=True)
    prepare(qat, plan, calibration_data=calibration, progress=False, sequential=True)
    convert(qat)
    with torch.no_grad():
        for b in held_out:
            torch.testing.assert_close(qat(b), ptq(b), rtol=1e-3, atol=1e-3)


def test_too_few_rows_are_warned_about(monkeypatch) -> None:
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")
    model = _net(4)
    report = quantize_(model, BitPlan(default=QScheme(3, group_size=8, calibration="gptq")),
                       calibration_data=_batches(1, 6, rows=100), progress=False, sequential=True)
    assert any("100 input rows for 48 inputs" in w and "q, k" in w for w in report.warnings), report.warnings
