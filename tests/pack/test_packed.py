"""PackedWeight: lossless packing of a QuantizedWeight, named tensors, precisions, refusals."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.pack.basepack import code_dtype
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import Grid, QScheme
from tests.conftest import GRID_BITS

ALL_BITS = list(range(1, 9))
SHAPES = {"1x1": (1, 1), "2x7": (2, 7), "3x65": (3, 65), "5x131": (5, 131)}


def scheme_for(grid: Grid, bits: int, group_size: int | None = 8) -> QScheme:
    """Every nested precision the grid allows, so all of them are exercised."""
    nested = tuple(range(1, bits)) if grid.nests else ()
    return QScheme(bits=bits, group_size=group_size, grid=grid, nested=nested)


def random_quantized(scheme: QScheme, shape: tuple[int, int], seed: int = 0) -> QuantizedWeight:
    """A QuantizedWeight built by hand: random in-range codes, random float16 scales and zeros."""
    gen = torch.Generator().manual_seed(seed)
    n, k = shape
    g = scheme.n_groups(k)

    def per_group(bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        scales = (torch.rand(n, g, generator=gen) + 0.01).half()
        zeros = torch.randint(0, 1 << bits, (n, g), generator=gen).half() if scheme.has_zeros else None
        return scales, zeros

    codes = torch.randint(0, scheme.levels, shape, generator=gen).to(code_dtype(scheme.levels))
    scales, zeros = per_group(scheme.bits)
    return QuantizedWeight(codes, scales, zeros, scheme, {b: per_group(b) for b in scheme.nested})


def asym_nested() -> tuple[QScheme, tuple[int, int]]:
    return QScheme(bits=4, group_size=16, grid="asymmetric", nested=(1, 2)), (3, 40)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_from_quantized_is_lossless_at_every_precision(grid: Grid, bits: int, shape: tuple[int, int]) -> None:
    scheme = scheme_for(grid, bits)
    qw = random_quantized(scheme, shape)
    packed = PackedWeight.from_quantized(qw)
    back = packed.to_quantized()
    assert back.scheme == scheme and back.shape == shape
    assert back.codes.dtype == qw.codes.dtype and torch.equal(back.codes, qw.codes)
    assert torch.equal(back.scales, qw.scales)
    assert (back.zeros is None) == (qw.zeros is None) and (qw.zeros is None or torch.equal(back.zeros, qw.zeros))
    for b in scheme.precisions:
        assert torch.equal(packed.codes(b), qw.truncated_codes(b))
        assert torch.equal(packed.dequantize(b), qw.dequantize(b))
        assert torch.equal(back.dequantize(b), qw.dequantize(b))


@pytest.mark.parametrize("grid", list(Grid), ids=lambda g: g.value)
@pytest.mark.parametrize("group_size", [None, 1, 64], ids=["per-channel", "g1", "g64"])
def test_tensors_match_specs_and_round_trip(grid: Grid, group_size: int | None) -> None:
    scheme, shape = scheme_for(grid, 3, group_size), (4, 70)
    packed = PackedWeight.from_quantized(random_quantized(scheme, shape))
    tensors, specs = packed.tensors(), PackedWeight.tensor_specs(scheme, shape)
    assert list(tensors) == list(specs)
    for suffix, (dtype, spec_shape) in specs.items():
        assert "." not in suffix
        assert tensors[suffix].dtype == dtype and tuple(tensors[suffix].shape) == spec_shape
    again = PackedWeight.from_tensors(scheme, shape, tensors)
    assert all(torch.equal(again.tensors()[s], t) for s, t in tensors.items())
    module = torch.nn.Module()  # the suffixes are valid buffer names
    for suffix, t in tensors.items():
        module.register_buffer(suffix, t)
    assert set(dict(module.named_buffers())) == set(specs)


def test_tensor_specs_example_from_the_docstring() -> None:
    specs = PackedWeight.tensor_specs(QScheme(4, group_size=64, grid="asymmetric", nested=(2,)), (3, 100))
    half = (torch.float16, (3, 2))
    assert specs == {"qweight": (torch.uint8, (4, 3, 13)), "scales": half, "zeros": half,
                     "scales_b2": half, "zeros_b2": half}
    assert PackedWeight.tensor_specs(QScheme(1, group_size=None, grid="balanced"), (2, 11)) == {
        "qweight": (torch.uint8, (2, 3)), "scales": (torch.float16, (2, 1))}


@pytest.mark.parametrize("grid", list(Grid), ids=lambda g: g.value)
def test_empty_has_the_right_buffers_and_loads(grid: Grid) -> None:
    scheme, shape = scheme_for(grid, 4), (3, 33)
    empty = PackedWeight.empty(scheme, shape)
    assert {s: (t.dtype, tuple(t.shape)) for s, t in empty.tensors().items()} == PackedWeight.tensor_specs(
        scheme, shape
    )
    assert not bool(empty.codes().any())
    source = PackedWeight.from_quantized(random_quantized(scheme, shape))
    for suffix, t in empty.tensors().items():
        t.copy_(source.tensors()[suffix])
    assert torch.equal(empty.dequantize(), source.dequantize())


def test_dequantize_dtype_and_unknown_precision() -> None:
    scheme, shape = asym_nested()
    packed = PackedWeight.from_quantized(random_quantized(scheme, shape))
    assert packed.dequantize(2, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match=r"can run at \[1, 2, 4\] bits, not 3"):
        packed.dequantize(3)
    with pytest.raises(ConfigError, match=r"\[1, 2, 4\]"):
        packed.codes(5)
    balanced = PackedWeight.from_quantized(random_quantized(scheme_for(Grid.BALANCED, 2), shape))
    with pytest.raises(ConfigError, match=r"can run at \[2\] bits, not 1"):
        balanced.codes(1)


def test_nbytes_sums_every_tensor() -> None:
    scheme, shape = asym_nested()
    packed = PackedWeight.from_quantized(random_quantized(scheme, shape))
    # planes 4 * 3 * ceil(40/8) = 60; scales, zeros at b = 4, 1, 2: six float16 [3, 3] = 6 * 18 = 108
    assert packed.nbytes == 60 + 108


SUFFIXES = list(PackedWeight.tensor_specs(*asym_nested()))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_from_tensors_names_a_missing_tensor(suffix: str) -> None:
    scheme, shape = asym_nested()
    tensors = PackedWeight.empty(scheme, shape).tensors()
    del tensors[suffix]
    with pytest.raises(FormatError, match=f"tensor '{suffix}': missing") as info:
        PackedWeight.from_tensors(scheme, shape, tensors)
    assert info.value.tensor == suffix


@pytest.mark.parametrize("suffix", ["bias", "scales_b3", "zeros_b8", "qweight.extra"])
def test_from_tensors_names_an_unexpected_tensor(suffix: str) -> None:
    scheme, shape = asym_nested()
    tensors = PackedWeight.empty(scheme, shape).tensors()
    tensors[suffix] = torch.zeros(3, 3, dtype=torch.float16)
    with pytest.raises(FormatError, match=f"tensor '{suffix}': unexpected") as info:
        PackedWeight.from_tensors(scheme, shape, tensors)
    assert info.value.tensor == suffix


def test_from_tensors_refuses_zeros_for_a_symmetric_weight() -> None:
    scheme, shape = QScheme(3, group_size=16), (3, 40)
    tensors = PackedWeight.empty(scheme, shape).tensors()
    tensors["zeros"] = torch.zeros(3, 3, dtype=torch.float16)
    with pytest.raises(FormatError, match="tensor 'zeros': unexpected"):
        PackedWeight.from_tensors(scheme, shape, tensors)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_from_tensors_names_a_wrong_dtype(suffix: str) -> None:
    scheme, shape = asym_nested()
    tensors = PackedWeight.empty(scheme, shape).tensors()
    tensors[suffix] = tensors[suffix].to(torch.float32)
    with pytest.raises(FormatError, match=f"tensor '{suffix}': wrong dtype: expected torch.(uint8|float16)") as info:
        PackedWeight.from_tensors(scheme, shape, tensors)
    assert info.value.tensor == suffix


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_from_tensors_names_a_wrong_shape(suffix: str) -> None:
    scheme, shape = asym_nested()
    tensors = PackedWeight.empty(scheme, shape).tensors()
    tensors[suffix] = torch.cat([tensors[suffix], tensors[suffix]])
    with pytest.raises(FormatError, match=f"tensor '{suffix}': wrong shape") as info:
        PackedWeight.from_tensors(scheme, shape, tensors)
    assert info.value.tensor == suffix


def test_from_tensors_refuses_a_non_tensor_and_a_bad_shape() -> None:
    scheme, shape = asym_nested()
    tensors: dict[str, object] = dict(PackedWeight.empty(scheme, shape).tensors())
    tensors["scales"] = [[1.0]]
    with pytest.raises(FormatError, match="tensor 'scales': must be a torch.Tensor"):
        PackedWeight.from_tensors(scheme, shape, tensors)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"shape must be \(N, K\)"):
        PackedWeight.tensor_specs(scheme, (3, 0))


def test_from_quantized_refuses_a_weight_that_does_not_match_its_scheme() -> None:
    scheme, shape = asym_nested()
    qw = random_quantized(scheme, shape)
    fp32 = QuantizedWeight(qw.codes, qw.scales.float(), qw.zeros, scheme, qw.nested)
    with pytest.raises(ConfigError, match="tensor 'scales': wrong dtype"):
        PackedWeight.from_quantized(fp32)
    missing = QuantizedWeight(qw.codes, qw.scales, qw.zeros, scheme, {1: qw.nested[1]})
    with pytest.raises(ConfigError, match=r"nested precisions \[1\].*says \[1, 2\]"):
        PackedWeight.from_quantized(missing)
    too_big = QuantizedWeight(qw.codes + 16, qw.scales, qw.zeros, scheme, qw.nested)
    with pytest.raises(ConfigError, match="only 0..15 fit"):
        PackedWeight.from_quantized(too_big)


# -- input_scale (AWQ schemes) --------------------------------------------------------------------


def awq_quantized(shape: tuple[int, int] = (3, 40), seed: int = 0) -> QuantizedWeight:
    scheme = QScheme(bits=4, group_size=16, grid="asymmetric", nested=(1, 2), calibration="awq")
    qw = random_quantized(scheme, shape, seed)
    factors = (torch.rand(shape[1], generator=torch.Generator().manual_seed(seed)) * 4 + 0.25).half()
    return QuantizedWeight(qw.codes, qw.scales, qw.zeros, scheme, qw.nested, input_scale=factors)


@pytest.mark.parametrize("calibration", ["awq", "awq+gptq"])
def test_input_scale_is_stored_and_round_trips(calibration: str) -> None:
    qw = awq_quantized()
    qw = QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.scheme.replace(calibration=calibration), qw.nested,
                         input_scale=qw.input_scale)
    packed = PackedWeight.from_quantized(qw)
    specs = PackedWeight.tensor_specs(qw.scheme, (3, 40))
    assert specs["input_scale"] == (torch.float16, (40,)) and set(packed.tensors()) == set(specs)
    again = PackedWeight.from_tensors(qw.scheme, (3, 40), packed.tensors())
    back = again.to_quantized()
    assert back.input_scale is not None and torch.equal(back.input_scale, qw.input_scale)
    for b in qw.scheme.precisions:
        plain = QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.scheme, qw.nested).dequantize(b)
        want = plain * qw.input_scale.float()
        torch.testing.assert_close(again.dequantize(b), want, rtol=0, atol=0)
        torch.testing.assert_close(qw.dequantize(b), want, rtol=0, atol=0)


def test_input_scale_is_required_exactly_for_awq_schemes() -> None:
    qw = awq_quantized()
    tensors = PackedWeight.from_quantized(qw).tensors()
    del tensors["input_scale"]
    with pytest.raises(FormatError, match="tensor 'input_scale': missing"):
        PackedWeight.from_tensors(qw.scheme, (3, 40), tensors)
    gptq = qw.scheme.replace(calibration="gptq")
    assert "input_scale" not in PackedWeight.tensor_specs(gptq, (3, 40))
    with pytest.raises(ConfigError, match="tensor 'input_scale': unexpected"):
        PackedWeight.from_quantized(QuantizedWeight(qw.codes, qw.scales, qw.zeros, gptq, qw.nested, qw.input_scale))
    with pytest.raises(ConfigError, match="tensor 'input_scale': missing"):
        PackedWeight.from_quantized(QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.scheme, qw.nested))
    wrong = QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.scheme, qw.nested, qw.input_scale[:-1])
    with pytest.raises(ConfigError, match="tensor 'input_scale': wrong shape"):
        PackedWeight.from_quantized(wrong)
