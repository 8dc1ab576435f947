"""The Hadamard input rotation (``QScheme.rotation``): the transform, the quantizer, modules, kernels, artifacts."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitsfusion as bf
from bitsfusion.errors import ConfigError
from bitsfusion.kernels import native, reference
from bitsfusion.quant import quantize
from bitsfusion.quant.codes import dequantize_codes
from bitsfusion.quant.quantizer import output_error, relative_error
from bitsfusion.quant.rotation import hadamard, rotate, rotate_hessian, signs, unrotate
from bitsfusion.types import QScheme

from tests.kernels.native_helpers import ISAS, assert_close, error_bound, magnitude_weight, needs_native, random_packed


def _dense_r(k: int, block: int) -> torch.Tensor:
    """``R`` as a dense ``[K, K]`` matrix: blocks ``H_B diag(s) / sqrt(B)``, identity on the tail."""
    nb = k // block
    r = torch.eye(k)
    if nb:
        s = signs(nb * block)
        r[: nb * block, : nb * block] = torch.block_diag(*[hadamard(block)] * nb) * s
    return r


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 300), log_block=st.integers(1, 7), rows=st.integers(1, 5))
def test_rotate_is_the_orthogonal_block_transform_and_unrotate_inverts_it(k: int, log_block: int, rows: int) -> None:
    block = 1 << log_block
    x = torch.randn(rows, k, dtype=torch.float64).float()
    r = _dense_r(k, block)
    torch.testing.assert_close(rotate(x, block), x @ r.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unrotate(rotate(x, block), block), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r @ r.T, torch.eye(k), atol=1e-5, rtol=0)
    h = x.T @ x + torch.eye(k)
    torch.testing.assert_close(rotate_hessian(h, block), r @ h @ r.T, atol=1e-4, rtol=1e-4)


def test_signs_are_fixed_and_prefix_stable() -> None:
    a, b = signs(64), signs(1000)
    assert torch.equal(a, b[:64]) and set(b.tolist()) == {-1.0, 1.0}
    assert 400 < int((b > 0).sum()) < 600  # about half of each
    # the stored artifact depends on this sequence: it must never change
    assert signs(8).tolist() == [-1.0, -1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0]


def test_rotate_keeps_dtype_and_leading_dims() -> None:
    x = torch.randn(2, 3, 40).to(torch.bfloat16)
    y = rotate(x, 16)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


@pytest.mark.parametrize("bad", [1, 3, 96, -2, 8192, 2.0, True, "128"])
def test_invalid_rotation_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="rotation must be 0"):
        QScheme(3, rotation=bad)  # type: ignore[arg-type]


def test_rotation_does_not_combine_with_awq() -> None:
    with pytest.raises(ConfigError, match="does not combine"):
        QScheme(3, calibration="awq", rotation=64)


def test_scheme_round_trip_and_name() -> None:
    s = QScheme(3, None, "asymmetric", calibration="gptq", rotation=128)
    assert QScheme.from_dict(s.to_dict()) == s and str(s) == "asym3/ch/als/gptq/rot128"
    old = s.to_dict()
    del old["rotation"]  # manifests written before rotation existed
    assert QScheme.from_dict(old).rotation == 0


@pytest.mark.parametrize("calibration", ["none", "gptq"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rotation_spreads_an_outlier_column(calibration: str, bits: int) -> None:
    """A weight with one large input column: the rotated scheme's error is a fraction of the plain one's, and
    ``dequantize`` is back in the layer's basis."""
    torch.manual_seed(bits)
    w = torch.randn(48, 200)
    w[:, 5] *= 25
    x = torch.randn(512, 200)
    h = x.T @ x / 512
    errs = {}
    for rot in (0, 64):
        s = QScheme(bits, None, "asymmetric", calibration=calibration, rotation=rot)
        q = quantize(w, s, hessian=h)
        errs[rot] = output_error(w, q.dequantize(), h)
        if rot:  # the codes are of W R^T: the same error measured in the stored basis
            stored = dequantize_codes(q.codes, q.scales, q.zeros, s)
            assert relative_error(rotate(w, rot), stored) == pytest.approx(relative_error(w, q.dequantize()), rel=1e-4)
    assert errs[64] < 0.7 * errs[0], errs


def _model() -> nn.Module:
    # K = 70 (two 32-blocks and a tail of 6), 50; the conv's K = 3 * 3 * 3 = 27 (one 16-block, tail 11)
    return nn.Sequential(nn.Linear(70, 50), nn.GELU(), nn.Linear(50, 30))


@pytest.mark.parametrize("scheme", [
    QScheme(4, 32, "asymmetric", nested=(2,), calibration="gptq", rotation=32),
    QScheme(3, None, "symmetric", rotation=16),
], ids=["asym4+2-gptq-rot32", "symm3-ch-rot16"])
def test_quantized_model_runs_rotated_and_round_trips(scheme: QScheme, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model()
    batches = [torch.randn(16, 70) for _ in range(4)]
    x = torch.randn(7, 70)
    with torch.no_grad():
        want = model(x)
    q = copy.deepcopy(model)
    hessians = bf.collect_hessians(model, batches, names=["0", "2"], progress=False) if scheme.calibration.uses_inputs else None
    bf.quantize_(q, bf.BitPlan(default=scheme), hessians=hessians, progress=False)
    assert isinstance(q[0], bf.QLinear) and q[0].scheme.rotation == scheme.rotation
    with torch.no_grad():
        got = q(x)
        # the layer is the dequantized weight in the float basis: reference == native (which rotates x)
        w0 = q[0].packed.dequantize()
        torch.testing.assert_close(torch.nn.functional.linear(x, w0, q[0].bias), q[0](x), atol=2e-2, rtol=2e-2)
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)) > 0.9
    path = bf.save(q, tmp_path / "rot")
    back = bf.load(path, _model())
    assert back[0].scheme == scheme
    with torch.no_grad():
        assert torch.equal(back(x), q(x))


def test_rotated_conv_matches_its_reference() -> None:
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    q = copy.deepcopy(conv)
    bf.quantize_(q, bf.BitPlan(default=QScheme(4, None, "asymmetric", rotation=16)), progress=False)
    x = torch.randn(2, 3, 9, 9)
    q[0].exact = True  # fp32 kernels: equal to the reference up to summation order
    with torch.no_grad():
        ref = reference.conv2d(x, q[0].packed, q[0].bias, None, q[0].weight_shape, padding=1)
        torch.testing.assert_close(q(x), ref, atol=1e-4, rtol=1e-4)
        assert float(torch.nn.functional.cosine_similarity(q(x).flatten(), conv(x).flatten(), dim=0)) > 0.97


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 9, 150], ids=["gemv", "gemm", "gemm-split-prep"])  # 300 rows: prep on 2 threads
@pytest.mark.parametrize(("k", "block"), [(131, 32), (256, 128), (40, 64)], ids=["tail", "exact", "k<block"])
def test_native_kernels_rotate_the_input(isa: str, m: int, k: int, block: int) -> None:
    packed = random_packed(QScheme(4, group_size=64, grid="asymmetric", nested=(2,), rotation=block), 45, k)
    twin = dataclasses.replace(packed, scheme=packed.scheme.replace(rotation=0))  # the same stored codes
    x = torch.randn(2, m, k)
    xr = rotate(x, block)
    for active in (2, 4):
        for kernel in ("lut32", "dequant"):
            y = native.linear(x, packed, None, active, kernel=kernel, isa=isa)
            assert_close(y, reference.linear(x, packed, None, active),
                         error_bound(xr, magnitude_weight(packed, active)), f"rot {kernel} {isa}")
        y = native.linear(x, packed, None, active, kernel="lut", isa=isa)
        bound = error_bound(xr, magnitude_weight(packed, active)) + reference.lut8_error_bound(x, packed, active)
        assert_close(y, reference.linear(x, packed, None, active), bound.float(), f"rot lut {isa}")
        # int8: the oracle on x rotated by the same native transform (a torch rotation differs in the last
        # bit, which can move an activation across an int8 rounding boundary), with the unrotated twin weight
        y = native.linear(x, packed, None, active, kernel="int8", isa=isa)
        xn = native.rotate(x.reshape(-1, k), block, isa).reshape(x.shape)
        xq, sx = reference.quantize_activations(xn, None, 0)
        assert_close(y, reference.linear_int8_activations(xn, twin, None, active),
                     error_bound(xq * sx, magnitude_weight(packed, active)), f"rot int8 {isa}")


@needs_native
def test_dispatch_fast_path_rotates_too() -> None:
    """The cached common call (``native.fast_linear``) and the checked path give the same rotated result."""
    from bitsfusion.kernels import dispatch

    packed = random_packed(QScheme(3, group_size=None, grid="asymmetric", rotation=64), 33, 192)
    x = torch.randn(5, 192)
    with torch.no_grad():
        for kernel in ("dequant", "int8", "lut", "lut32"):
            fast = dispatch.linear(x, packed, None, None, kernel=kernel)
            checked = native.linear(x, packed, None, None, kernel=kernel)
            assert torch.equal(fast, checked), kernel
        fast = dispatch.linear(x, packed, None, None, kernel="dequant")
    torch.testing.assert_close(fast, reference.linear(x, packed), atol=1e-4, rtol=1e-4)


def test_cli_quantize_with_rotation_and_a_bad_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bitsfusion.cli.main import app

    runner = CliRunner()
    bad = runner.invoke(app, ["quantize", "tiny", "--out", str(tmp_path / "bad"), "--rotation", "96"])
    assert bad.exit_code != 0 and "power of two" in bad.output and "Traceback" not in bad.output
    ok = runner.invoke(app, ["quantize", "tiny", "--out", str(tmp_path / "rot"), "--rotation", "16"])
    assert ok.exit_code == 0, ok.output
    shown = runner.invoke(app, ["inspect", str(tmp_path / "rot")], terminal_width=200)
    assert shown.exit_code == 0 and "rot16" in shown.output, shown.output
    table = runner.invoke(app, ["analyze", "tiny", "--out", str(tmp_path / "t.json"), "--rotation", "0,100"])
    assert table.exit_code != 0 and "power of two" in table.output


@needs_native
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("m", "k", "block"), [(1, 384, 128), (7, 131, 32), (3, 40, 64), (4, 1536, 128),
                                               (2, 24, 8), (5, 50, 16), (3, 600, 256), (2, 4096, 4096),
                                               (0, 64, 16)])
def test_native_rotation_is_the_torch_rotation(isa: str, m: int, k: int, block: int) -> None:
    x = torch.randn(m, k)
    before = x.clone()
    got = native.rotate(x, block, isa)
    torch.testing.assert_close(got, rotate(x, block), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(native.rotate(got, block, isa, inverse=True), x, atol=1e-5, rtol=1e-5)
    assert torch.equal(x, before)  # a new tensor: the caller's input is not written


@needs_native
def test_native_rotation_checks_its_input() -> None:
    with pytest.raises(ConfigError, match="float32"):
        native.rotate(torch.randn(2, 64).double(), 32)
    with pytest.raises(ConfigError, match="contiguous"):
        native.rotate(torch.randn(64, 2).T, 32)
    with pytest.raises(ConfigError, match="2-D"):
        native.rotate(torch.randn(64), 32)
    with pytest.raises(ConfigError, match="power of two"):
        native.rotate(torch.randn(2, 64), 48)


@pytest.mark.parametrize("inverse", [False, True])
def test_rotate_autograd_matches_the_torch_form_and_its_gradient(inverse: bool) -> None:
    x = torch.randn(3, 5, 150, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    got = native.rotate_autograd(x, 32, inverse=inverse)
    want = (unrotate if inverse else rotate)(x2, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(want)
    got.backward(g)
    want.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-5)


def test_convert_measures_the_error_in_the_layer_basis() -> None:
    from bitsfusion.train import convert, prepare

    torch.manual_seed(3)
    model = _model()
    scheme = QScheme(3, None, "asymmetric", rotation=32)
    ptq, fake = copy.deepcopy(model), copy.deepcopy(model)
    bf.quantize_(ptq, bf.BitPlan(default=scheme), progress=False)
    prepare(fake, bf.BitPlan(default=scheme), progress=False)
    latent = fake[0].layer_weight().detach()
    assert relative_error(model[0].weight, latent) < 0.5 * ptq[0].weight_error  # near W, inside the PTQ cells
    convert(fake)
    assert fake[0].weight_error == pytest.approx(relative_error(latent, fake[0].packed.dequantize()), rel=1e-6)


def test_rotated_qlinear_under_autograd_takes_the_reference_and_agrees() -> None:
    """An input that needs grad runs on the reference (the layer's basis, nothing rotated): same output as the
    native kernels on the rotated input, and a gradient."""
    torch.manual_seed(5)
    q = _model()
    bf.quantize_(q, bf.BitPlan(default=QScheme(3, 32, "asymmetric", rotation=32)), progress=False)
    x = torch.randn(4, 70, requires_grad=True)
    y = q[0](x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.no_grad():
        q[0].exact = True
        torch.testing.assert_close(y.detach(), q[0](x.detach()), atol=1e-4, rtol=1e-4)
    assert QScheme(3).to_dict().keys() == QScheme(3, rotation=16).to_dict().keys() - {"rotation"}
