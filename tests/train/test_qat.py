"""prepare -> convert: fake-quant layers start exactly at post-training quantization and convert exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitsfusion as bf
from bitsfusion.errors import ConfigError
from bitsfusion.nn import QConv2d, QLinear
from bitsfusion.train import FakeQuantConv2d, FakeQuantLinear, convert, fake_quant_layers, prepare, quant_parameters

from tests.conftest import GRID_BITS


def _model() -> nn.Module:
    # K = 70 and 50 are not multiples of the group sizes; the conv has K = 3 * 3 * 3 = 27
    return nn.Sequential(nn.Linear(70, 50), nn.GELU(), nn.Linear(50, 30), nn.Conv2d(3, 8, 3, padding=1))


def _fwd(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model[2](model[1](model[0](x)))


def _batches() -> list[torch.Tensor]:
    return [torch.randn(16, 70) * (1 + torch.arange(70) / 10) for _ in range(4)]


SCHEMES = [
    pytest.param(bf.QScheme(bits=2, group_size=32, grid="asymmetric"), id="asym2-g32"),
    pytest.param(bf.QScheme(bits=4, group_size=16, nested=(3, 2)), id="symm4-nested32"),
    pytest.param(bf.QScheme(bits=8, group_size=None, grid="asymmetric", nested=(4, 2)), id="asym8-ch-nested"),
    pytest.param(bf.QScheme(bits=3, group_size=32, grid="asymmetric", calibration="gptq"), id="asym3-gptq"),
    pytest.param(bf.QScheme(bits=3, group_size=None, calibration="awq"), id="symm3-awq"),
    pytest.param(bf.QScheme(bits=2, group_size=24, grid="balanced"), id="balanced2"),
    pytest.param(bf.QScheme(bits=1, group_size=64, grid="asymmetric"), id="asym1"),
    # K = 70: two 32-blocks and a 6-column tail; the conv's K = 27: one 16-block, tail 11
    pytest.param(bf.QScheme(bits=4, group_size=32, grid="asymmetric", nested=(2,), calibration="gptq", rotation=32),
                 id="asym4+2-gptq-rot32"),
    pytest.param(bf.QScheme(bits=3, group_size=None, rotation=16), id="symm3-ch-rot16"),
]


def _pair(scheme: bf.QScheme) -> tuple[nn.Module, nn.Module, dict | None]:
    model = _model()
    ptq, fake = copy.deepcopy(model), copy.deepcopy(model)
    hessians = None
    if scheme.calibration.uses_inputs:
        hessians = bf.collect_hessians(model, _batches(), forward=_fwd, names=["0", "2"])
    bf.quantize_(ptq, bf.BitPlan(default=scheme), hessians=hessians, progress=False)
    prepare(fake, bf.BitPlan(default=scheme), hessians=hessians, progress=False)
    return ptq, fake, hessians


@pytest.mark.parametrize("scheme", SCHEMES)
def test_convert_of_prepare_equals_post_training_quantization(scheme: bf.QScheme) -> None:
    ptq, fake, _ = _pair(scheme)
    report = convert(fake)
    a, b = ptq.state_dict(), fake.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [type(m) for m in ptq] == [type(m) for m in fake]
    assert all(q.nbytes > 0 for q in report.quantized)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fake_forward_is_the_dequantized_weight(scheme: bf.QScheme) -> None:
    ptq, fake, _ = _pair(scheme)
    for i in (0, 2, 3):
        if not isinstance(fake[i], (FakeQuantLinear, FakeQuantConv2d)):
            continue
        for bits in scheme.precisions:
            expected = ptq[i].packed.dequantize(bits).reshape(fake[i].weight.shape)
            got = fake[i].quantized_weight(bits).detach()
            if scheme.rotation:  # rotated back by the native kernel (training) or torch (dequantize): fp32 rounding
                torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
            else:
                assert torch.equal(got, expected), (i, bits)


@pytest.mark.parametrize(("grid", "bits"), GRID_BITS)
def test_every_grid_and_width_round_trips(grid: bf.Grid, bits: int) -> None:
    scheme = bf.QScheme(bits=bits, group_size=16, grid=grid)
    ptq, fake, _ = _pair(scheme)
    convert(fake)
    assert all(torch.equal(v, fake.state_dict()[k]) for k, v in ptq.state_dict().items())


def test_trained_layers_convert_to_what_the_fake_forward_computed() -> None:
    torch.manual_seed(1)
    scheme = bf.QScheme(bits=3, group_size=16, grid="asymmetric", nested=(2,))
    _, fake, _ = _pair(scheme)
    params = [p for _, m in fake_quant_layers(fake) for p in (m.weight, *m.quant_parameters())]
    opt = torch.optim.Adam(params, lr=3e-2)
    x, y = torch.randn(64, 70), torch.randn(64, 30)
    starts = {n: m.to_quantized().codes.clone() for n, m in fake_quant_layers(fake)}
    for _ in range(20):
        opt.zero_grad()
        loss = (_fwd(fake, x) - y).square().mean()
        loss.backward()
        opt.step()
    moved = sum(int((m.to_quantized().codes != starts[n]).sum()) for n, m in fake_quant_layers(fake))
    assert moved > 0, "training changed no code"
    with torch.no_grad():
        expected = {bits: _fwd_at(fake, x, bits) for bits in scheme.precisions}
        expected_conv = fake[3].quantized_weight().clone()
    convert(fake)
    assert isinstance(fake[0], QLinear) and isinstance(fake[3], QConv2d)
    with torch.no_grad():
        for bits in scheme.precisions:
            bf.set_active_bits(fake, bits)
            got = torch.nn.functional.linear(fake[1](torch.nn.functional.linear(
                x, fake[0].packed.dequantize(bits), fake[0].bias)), fake[2].packed.dequantize(bits), fake[2].bias)
            torch.testing.assert_close(got, expected[bits], rtol=0, atol=1e-5)
    bf.set_active_bits(fake, 3)
    assert torch.equal(fake[3].packed.dequantize().reshape(expected_conv.shape), expected_conv)


def _fwd_at(model: nn.Module, x: torch.Tensor, bits: int) -> torch.Tensor:
    bf.set_active_bits(model, bits)
    out = _fwd(model, x)
    bf.set_active_bits(model, max(model[0].scheme.precisions))
    return out


def test_gradients_reach_latent_weights_scales_and_zeros() -> None:
    _, fake, _ = _pair(bf.QScheme(bits=2, group_size=32, grid="asymmetric", nested=(1,)))
    for bits in (2, 1):
        bf.set_active_bits(fake, bits)
        fake.zero_grad()
        _fwd(fake, torch.randn(8, 70)).square().sum().backward()
        layer = fake[0]
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        assert getattr(layer, f"log_scale_b{bits}").grad.abs().sum() > 0
        assert getattr(layer, f"zero_b{bits}").grad is not None
    assert len(quant_parameters(fake)) == 3 * 2 * 2  # 3 layers x 2 precisions x (log-scale, zero)


@pytest.mark.parametrize("scheme", SCHEMES[:3])
def test_dampening_pulls_latent_weights_to_their_levels_without_changing_codes(scheme: bf.QScheme) -> None:
    _, fake, _ = _pair(scheme)
    for layer in (m for _, m in fake_quant_layers(fake)):
        codes = layer.to_quantized().codes.clone()
        before = layer.dampening_loss()
        assert 0 < float(before.detach()) <= 0.25  # the latents start off-centre, inside their cells
        layer.zero_grad()
        before.backward()
        assert all(p.grad is None or not p.grad.any() for p in layer.quant_parameters())  # scales are constants
        with torch.no_grad():
            layer.weight -= 0.2 * layer.weight.grad / layer.weight.grad.abs().max().clamp(min=1e-12) * \
                layer.weight.abs().max() * 1e-3
        assert float(layer.dampening_loss().detach()) < float(before.detach())
        assert torch.equal(layer.to_quantized().codes, codes)
        with torch.no_grad():  # exactly on the levels: nothing to pull
            layer.weight.copy_(layer.quantized_weight().detach())
        assert float(layer.dampening_loss().detach()) < 1e-8


def test_set_active_bits_switches_fake_layers_and_refuses_unstored_precisions() -> None:
    _, fake, _ = _pair(bf.QScheme(bits=4, group_size=16, nested=(2,)))
    assert set(bf.set_active_bits(fake, 2).values()) == {2}
    assert set(bf.active_bits_of(fake).values()) == {2}
    with pytest.raises(ConfigError, match="stores precisions"):
        bf.set_active_bits(fake, 3)


def test_prepare_twice_is_harmless_and_convert_needs_fake_layers() -> None:
    _, fake, _ = _pair(bf.QScheme(bits=4, group_size=16))
    again = prepare(fake, bf.BitPlan(default=bf.QScheme(bits=2)), progress=False)
    assert not again.quantized and all(s.reason == "already quantized" for s in again.skipped if s.fqn in "023")
    with pytest.raises(ConfigError, match="no fake-quant layers"):
        convert(_model())


def test_prepare_reports_calibrated_layers_without_hessians() -> None:
    model = _model()
    report = prepare(model, bf.BitPlan(default=bf.QScheme(bits=3, calibration="gptq")), progress=False)
    assert not report.quantized
    assert any("without an input Hessian" in s.reason for s in report.skipped)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 40), bits=st.integers(1, 8), group=st.sampled_from([None, 4, 7, 16]),
       asym=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip_property(n: int, k: int, bits: int, group: int | None, asym: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(k, n))
    scheme = bf.QScheme(bits=bits, group_size=group, grid="asymmetric" if asym else "symmetric")
    ptq, fake = copy.deepcopy(layer), copy.deepcopy(layer)
    bf.quantize_(ptq, bf.BitPlan(default=scheme), progress=False)
    prepare(fake, bf.BitPlan(default=scheme), progress=False)
    convert(fake)
    for key, value in ptq.state_dict().items():
        assert torch.equal(value, fake.state_dict()[key]), key
