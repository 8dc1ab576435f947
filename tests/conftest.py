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
