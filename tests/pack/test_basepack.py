"""Base-L packing of the balanced grid: layout choice, byte order, round trips, refusals."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.pack.basepack import base_layout, base_row_bytes, code_dtype, pack_base, unpack_base

ALL_BITS = list(range(1, 9))
# bits of the balanced grid -> (digits per word, word bytes), the table in basepack's docstring.
LAYOUTS = {1: (5, 1), 2: (13, 4), 3: (5, 2), 4: (7, 4), 5: (3, 2), 6: (5, 4), 7: (1, 1), 8: (3, 4)}


def random_codes(levels: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, shape, generator=gen).to(code_dtype(levels))


@pytest.mark.parametrize("bits", ALL_BITS, ids=lambda b: f"b{b}")
def test_layout_of_the_balanced_grid(bits: int) -> None:
    assert base_layout((1 << bits) + 1) == LAYOUTS[bits]


def test_ternary_is_five_digits_a_byte() -> None:
    assert base_layout(3) == (5, 1)
    assert base_row_bytes(10, 3) == 2 and base_row_bytes(11, 3) == 3


@pytest.mark.parametrize("levels", range(2, 258), ids=lambda n: f"L{n}")
def test_layout_is_the_densest_word_with_ties_to_the_smaller(levels: int) -> None:
    d, w = base_layout(levels)
    assert d == math.floor(8 * w / math.log2(levels) + 1e-12)
    assert levels**d <= 2 ** (8 * w) < levels ** (d + 1)
    for other in (1, 2, 4):
        od = max(dd for dd in range(0, 33) if levels**dd <= 2 ** (8 * other))
        if od == 0:
            continue
        cost, other_cost = Fraction(8 * w, d), Fraction(8 * other, od)
        assert cost < other_cost or (cost == other_cost and w <= other)


def test_worked_example_from_the_docstring() -> None:
    data = pack_base(torch.tensor([[2, 0, 1, 1, 2, 1]], dtype=torch.uint8), 3)
    assert data.tolist() == [[200, 1]]


def test_words_are_little_endian_with_digit_zero_least_significant() -> None:
    data = pack_base(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 2]], dtype=torch.uint8), 257)
    assert data.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [2, 4, 2, 0]]  # 1, 257, 2 * 257^2 = 0x020402


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    n=st.integers(1, 4),
    k=st.integers(1, 60),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_balanced_levels(bits: int, n: int, k: int, seed: int) -> None:
    levels = (1 << bits) + 1
    codes = random_codes(levels, (n, k), seed)
    data = pack_base(codes, levels)
    assert data.dtype == torch.uint8 and tuple(data.shape) == (n, base_row_bytes(k, levels))
    assert torch.equal(unpack_base(data, k, levels), codes)


@settings(max_examples=40, deadline=None)
@given(levels=st.integers(2, 257), k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_round_trip_any_base(levels: int, k: int, seed: int) -> None:
    codes = random_codes(levels, (3, k), seed)
    assert torch.equal(unpack_base(pack_base(codes, levels), k, levels), codes)


@pytest.mark.parametrize("bits", ALL_BITS, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("k", [1, 7, 131], ids=lambda k: f"K{k}")
def test_round_trip_with_extreme_codes(bits: int, k: int) -> None:
    levels = (1 << bits) + 1
    for fill in (0, levels - 1):
        codes = torch.full((2, k), fill, dtype=code_dtype(levels))
        assert torch.equal(unpack_base(pack_base(codes, levels), k, levels), codes)


def test_codes_of_the_8_bit_balanced_grid_are_int16() -> None:
    assert code_dtype(256) == torch.uint8 and code_dtype(257) == torch.int16
    codes = torch.tensor([[256, 0, 255, 1]], dtype=torch.int16)
    assert torch.equal(unpack_base(pack_base(codes, 257), 4, 257), codes)
    as_bytes = torch.tensor([[255, 0, 7]], dtype=torch.uint8)  # uint8 in is fine when every code fits
    assert torch.equal(unpack_base(pack_base(as_bytes, 257), 3, 257), as_bytes.to(torch.int16))


def test_a_word_out_of_range_is_corrupt_data() -> None:
    with pytest.raises(FormatError, match=r"word 1 of row 0 is 243.*largest valid 242"):
        unpack_base(torch.tensor([[0, 243]], dtype=torch.uint8), 10, 3)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: pack_base(torch.tensor([[0, 3]], dtype=torch.uint8), 3), "value 3"),
        (lambda: pack_base(torch.zeros(1, 3, dtype=torch.int32), 3), "codes must be uint8, got"),
        (lambda: pack_base(torch.zeros(1, 3, dtype=torch.int32), 257), "uint8 or int16"),
        (lambda: pack_base(torch.tensor([[-1]], dtype=torch.int16), 257), "value -1"),
        (lambda: pack_base(torch.zeros(1, 3, dtype=torch.uint8), 1), "levels"),
        (lambda: pack_base(torch.zeros(1, 3, dtype=torch.uint8), 258), "levels"),
        (lambda: pack_base(torch.zeros(1, 3, dtype=torch.uint8), True), "levels"),
        (lambda: unpack_base(torch.zeros(1, 3, dtype=torch.uint8), 10, 3), r"uint8 \[N>=1, 2\]"),
        (lambda: unpack_base(torch.zeros(1, 2, dtype=torch.int16), 10, 3), "uint8"),
        (lambda: unpack_base(torch.zeros(1, 2, dtype=torch.uint8), 0, 3), "positive int"),
    ],
    ids=["code-too-big", "int32", "int32-L257", "negative", "levels1", "levels258", "bool-levels", "wrong-row-bytes", "int16", "k0"],
)
def test_refuses_bad_input(call, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        call()
