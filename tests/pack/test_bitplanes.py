"""Bit-plane packing: round trips, the documented byte layout, nested truncation, and refusals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.errors import ConfigError
from bitsfusion.pack.bitplanes import bitplanes_shape, pack_bitplanes, unpack_bitplanes

ALL_BITS = list(range(1, 9))
SHAPES = {"1x1": (1, 1), "1x8": (1, 8), "3x7": (3, 7), "2x9": (2, 9), "4x64": (4, 64), "5x131": (5, 131)}


def random_codes(bits: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.uint8)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    n=st.integers(1, 5),
    k=st.integers(1, 70),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_and_every_nested_truncation(bits: int, n: int, k: int, seed: int) -> None:
    codes = random_codes(bits, (n, k), seed)
    planes = pack_bitplanes(codes, bits)
    assert planes.dtype == torch.uint8
    assert tuple(planes.shape) == bitplanes_shape(bits, n, k) == (bits, n, -(-k // 8))
    assert torch.equal(unpack_bitplanes(planes, k), codes)
    for active in range(1, bits + 1):
        assert torch.equal(unpack_bitplanes(planes, k, active), codes >> (bits - active))


@pytest.mark.parametrize("bits", ALL_BITS, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_round_trip_with_extreme_codes(bits: int, shape: tuple[int, int]) -> None:
    for fill in (0, (1 << bits) - 1):
        codes = torch.full(shape, fill, dtype=torch.uint8)
        assert torch.equal(unpack_bitplanes(pack_bitplanes(codes, bits), shape[1]), codes)


def test_worked_example_from_the_docstring() -> None:
    planes = pack_bitplanes(torch.tensor([[3, 1, 2]], dtype=torch.uint8), 2)
    assert planes.tolist() == [[[0b101]], [[0b011]]]


@pytest.mark.parametrize("k", [1, 7, 8, 9, 17], ids=lambda k: f"K{k}")
def test_element_k_sits_at_bit_k_mod_8_of_byte_k_div_8(k: int) -> None:
    codes = torch.eye(k, dtype=torch.uint8)  # row n has a single 1 at element n
    plane = pack_bitplanes(codes, 1)[0]
    expected = torch.zeros_like(plane)
    rows = torch.arange(k)
    expected[rows, rows // 8] = (1 << (rows % 8)).to(torch.uint8)
    assert torch.equal(plane, expected)


def test_plane_zero_holds_the_msb() -> None:
    planes = pack_bitplanes(torch.tensor([[0b100]], dtype=torch.uint8), 3)
    assert planes[:, 0, 0].tolist() == [1, 0, 0]


@pytest.mark.parametrize("k", [1, 3, 12], ids=lambda k: f"K{k}")
def test_padding_bits_are_zero(k: int) -> None:
    planes = pack_bitplanes(torch.full((2, k), 255, dtype=torch.uint8), 8)
    in_last_byte = k - 8 * (planes.shape[-1] - 1)  # real elements in each row's last byte
    assert bool((planes[:, :, -1] == (1 << in_last_byte) - 1).all())


@pytest.mark.parametrize("bits", ALL_BITS, ids=lambda b: f"b{b}")
def test_unpack_reads_only_the_active_planes(bits: int) -> None:
    codes = random_codes(bits, (3, 21))
    planes = pack_bitplanes(codes, bits)
    for active in range(1, bits + 1):
        spoiled = planes.clone()
        spoiled[active:] = 0xFF
        assert torch.equal(unpack_bitplanes(spoiled, 21, active), codes >> (bits - active))


def test_large_weight_round_trip() -> None:
    codes = random_codes(8, (256, 1000))
    assert torch.equal(unpack_bitplanes(pack_bitplanes(codes, 8), 1000, 5), codes >> 3)


@pytest.mark.parametrize(
    "codes, bits, words",
    [
        (torch.zeros(2, 3, dtype=torch.int64), 2, "uint8"),
        (torch.zeros(2, 3, dtype=torch.uint8), 0, "bits must be an int in 1..8"),
        (torch.zeros(2, 3, dtype=torch.uint8), 9, "bits must be an int in 1..8"),
        (torch.zeros(2, 3, dtype=torch.uint8), True, "bits must be an int"),
        (torch.zeros(6, dtype=torch.uint8), 2, "2-D"),
        (torch.zeros(0, 3, dtype=torch.uint8), 2, "non-empty"),
        (torch.tensor([[0, 4]], dtype=torch.uint8), 2, "value 4"),
        ([[0, 1]], 2, "torch.Tensor"),
    ],
    ids=["int64", "bits0", "bits9", "bool-bits", "1-D", "empty", "out-of-range", "list"],
)
def test_pack_refuses_bad_input(codes: object, bits: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        pack_bitplanes(codes, bits)  # type: ignore[arg-type]


def test_unpack_refuses_bad_input() -> None:
    planes = pack_bitplanes(random_codes(3, (2, 10)), 3)
    with pytest.raises(ConfigError, match=r"cannot hold rows of K=17"):
        unpack_bitplanes(planes, 17)
    with pytest.raises(ConfigError, match="active_bits must be an int in 1..3"):
        unpack_bitplanes(planes, 10, 4)
    with pytest.raises(ConfigError, match="active_bits"):
        unpack_bitplanes(planes, 10, 0)
    with pytest.raises(ConfigError, match="positive int"):
        unpack_bitplanes(planes, 0)
    with pytest.raises(ConfigError, match="uint8"):
        unpack_bitplanes(planes.to(torch.int32), 10)
    with pytest.raises(ConfigError, match="planes.shape"):
        unpack_bitplanes(torch.zeros(9, 2, 2, dtype=torch.uint8), 10)
