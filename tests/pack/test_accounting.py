"""Accounting: the bytes predicted from a scheme equal the bytes a PackedWeight holds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bitsfusion.errors import ConfigError
from bitsfusion.pack.accounting import (
    bits_per_weight, packed_nbytes, packed_nbytes_by_tensor, paper_bits_per_weight,
)
from bitsfusion.pack.basepack import code_dtype
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import MAX_BALANCED_BITS, Grid, QScheme
from tests.conftest import GRID_BITS

ALL_BITS = list(range(1, 9))
SHAPES = {"1x1": (1, 1), "1x9": (1, 9), "3x65": (3, 65), "7x131": (7, 131)}
GROUPS = {"per-channel": None, "g1": 1, "g7": 7, "g64": 64}


def packed_random(scheme: QScheme, shape: tuple[int, int]) -> PackedWeight:
    """Pack random in-range codes with random float16 scales (and zeros) of every precision."""
    n, g = shape[0], scheme.n_groups(shape[1])

    def per_group() -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.rand(n, g).half(), torch.rand(n, g).half() if scheme.has_zeros else None

    codes = torch.randint(0, scheme.levels, shape).to(code_dtype(scheme.levels))
    qw = QuantizedWeight(codes, *per_group(), scheme, {b: per_group() for b in scheme.nested})
    return PackedWeight.from_quantized(qw)


@pytest.mark.parametrize("group_size", GROUPS.values(), ids=GROUPS.keys())
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_packed_nbytes_equals_the_packed_weight(
    grid: Grid, bits: int, shape: tuple[int, int], group_size: int | None
) -> None:
    nested = tuple(range(1, bits, 2)) if grid.nests else ()
    scheme = QScheme(bits=bits, group_size=group_size, grid=grid, nested=nested)
    packed = packed_random(scheme, shape)
    assert packed_nbytes(scheme, shape) == packed.nbytes
    by_tensor = packed_nbytes_by_tensor(scheme, shape)
    assert by_tensor == {s: t.numel() * t.element_size() for s, t in packed.tensors().items()}
    assert bits_per_weight(scheme, shape) == 8 * packed.nbytes / (shape[0] * shape[1])


def test_worked_example_from_the_docstring() -> None:
    scheme = QScheme(4, group_size=64)
    assert packed_nbytes_by_tensor(scheme, (3, 100)) == {"qweight": 156, "scales": 12}
    assert packed_nbytes(scheme, (3, 100)) == 168
    assert bits_per_weight(scheme, (3, 100)) == pytest.approx(4.48)
    assert paper_bits_per_weight(scheme) == 4.0


def test_every_overhead_is_counted() -> None:
    base = QScheme(2, group_size=128)
    shape = (16, 1024)  # no padding: 2 planes of 128 bytes a row, 8 groups a row
    assert bits_per_weight(base, shape) == 2 + 16 / 128  # codes + one float16 scale per 128 weights
    assert bits_per_weight(base.replace(grid="asymmetric"), shape) == 2 + 32 / 128  # + a zero
    assert bits_per_weight(base.replace(nested=(1,)), shape) == 2 + 32 / 128  # + a scale for 1 bit
    assert bits_per_weight(QScheme(2, group_size=128), (16, 1025)) > bits_per_weight(base, shape)  # padding


def test_ternary_stores_1_6_bits_plus_its_scale() -> None:
    scheme = QScheme(1, group_size=None, grid="balanced")
    assert packed_nbytes(scheme, (1, 5000)) == 1000 + 2
    assert bits_per_weight(scheme, (1, 5000)) == pytest.approx(8 * 1002 / 5000)
    assert paper_bits_per_weight(scheme) == pytest.approx(math.log2(3))


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_paper_bits_are_log2_of_the_levels(grid: Grid, bits: int) -> None:
    expected = math.log2(2**bits + 1) if grid is Grid.BALANCED else bits
    assert paper_bits_per_weight(QScheme(bits, grid=grid)) == pytest.approx(expected)


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(1, 8),
    grid=st.sampled_from(list(Grid)),
    n=st.integers(1, 50),
    k=st.integers(1, 5000),
    group_size=st.one_of(st.none(), st.integers(1, 256)),
)
def test_stored_bits_never_undercut_the_paper_count(
    bits: int, grid: Grid, n: int, k: int, group_size: int | None
) -> None:
    assume(not (grid is Grid.BALANCED and bits > MAX_BALANCED_BITS))
    scheme = QScheme(bits, group_size=group_size, grid=grid)
    assert bits_per_weight(scheme, (n, k)) > paper_bits_per_weight(scheme)


def test_refuses_a_bad_shape() -> None:
    with pytest.raises(ConfigError, match="shape"):
        bits_per_weight(QScheme(4), (0, 8))


def test_input_scale_costs_two_bytes_a_column() -> None:
    """The docstring's example with ``calibration='awq'``: 168 + 2 * 100 bytes."""
    scheme = QScheme(4, group_size=64, calibration="awq")
    assert packed_nbytes_by_tensor(scheme, (3, 100))["input_scale"] == 200
    assert packed_nbytes(scheme, (3, 100)) == 368
    assert packed_nbytes(scheme.replace(calibration="gptq"), (3, 100)) == 168
    plain = packed_random(scheme.replace(calibration="none"), (3, 100)).to_quantized()
    awq = QuantizedWeight(plain.codes, plain.scales, None, scheme.replace(calibration="awq+gptq"),
                          input_scale=torch.ones(100, dtype=torch.float16))
    assert PackedWeight.from_quantized(awq).nbytes == 368
