"""Shared fixtures: seeded RNG, bit widths with readable ids."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ALL_BITS = list(range(1, 9))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def bits_id(bits: int) -> str:
    return f"b{bits}"


def grid_bits_params() -> list:
    """Every valid (grid, bits) pair, with ids like ``symmetric-b3`` (balanced stops at 7 bits)."""
    from bitsfusion.types import MAX_BALANCED_BITS, Grid

    return [
        pytest.param(g, b, id=f"{g.value}-b{b}")
        for g in Grid
        for b in ALL_BITS
        if not (g is Grid.BALANCED and b > MAX_BALANCED_BITS)
    ]


GRID_BITS = grid_bits_params()
