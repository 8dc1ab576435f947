"""Analysis fixtures: the tiny zoo model, its calibration batches and one measured table (made once)."""

from __future__ import annotations

import pytest

from bitsfusion.analysis import SensitivityTable, default_candidates, measure_sensitivity
from bitsfusion.zoo import get_model_spec

BITS = (1, 2, 4, 8)


@pytest.fixture(scope="session")
def tiny_spec():
    return get_model_spec("tiny")


@pytest.fixture(scope="session")
def tiny_table(tiny_spec) -> SensitivityTable:
    """Every tiny layer x asymmetric 1/2/4/8 bits, MSE of the logits on 2 calibration batches."""
    model = tiny_spec.build()
    return measure_sensitivity(model, tiny_spec.calibration(2), default_candidates(BITS), run=tiny_spec.run,
                               progress=False)
