"""Allocation fixtures: small synthetic sensitivity tables (no model), random but seeded."""

from __future__ import annotations

import numpy as np
import pytest

from bitsfusion.analysis import LayerInfo, SensitivityTable, scheme_key
from bitsfusion.types import QScheme

SCHEMES = [QScheme(b, grid="asymmetric") for b in (1, 2, 3, 4)] + [QScheme(2, grid="symmetric"),
                                                                    QScheme(1, grid="balanced")]


def random_table(seed: int, n_layers: int, schemes: list[QScheme] = SCHEMES) -> SensitivityTable:
    """Layers of random shapes; loss ~ sensitivity * 4^-bits with noise (so some options are dominated)."""
    rng = np.random.default_rng(seed)
    table = SensitivityTable(metric="mse", schemes=list(schemes))
    for i in range(n_layers):
        name = f"block.{i // 2}.{'ab'[i % 2]}"
        table.layers[name] = LayerInfo(name, "Linear", (int(rng.integers(1, 9)) * 8, int(rng.integers(1, 5)) * 48))
        sens = float(rng.lognormal())
        for s in schemes:
            loss = sens * 4.0 ** (-s.grid.info_bits(s.bits)) * float(rng.uniform(0.5, 1.5))
            table.loss.setdefault(name, {})[scheme_key(s)] = loss
            table.weight_error.setdefault(name, {})[scheme_key(s)] = loss / sens
    return table


@pytest.fixture(scope="session")
def make_table():
    """``random_table(seed, n_layers)`` as a fixture (tests must not import conftest by name)."""
    return random_table
