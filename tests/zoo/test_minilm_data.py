"""MiniLM's calibration text never overlaps the sentences it is evaluated on."""

from __future__ import annotations

import pytest

from bitsfusion.errors import ConfigError
from bitsfusion.zoo import get_model_spec
from bitsfusion.zoo.minilm import load_calibration_sentences, load_sentences


def test_calibration_and_evaluation_sentences_are_disjoint() -> None:
    calibration, evaluation = load_calibration_sentences(), load_sentences()
    assert len(calibration) == len(set(calibration)) == 512
    assert len(evaluation) == 1000
    assert not set(calibration) & set(evaluation)


def test_calibration_batches_and_their_limit() -> None:
    spec = get_model_spec("minilm")
    batches = spec.calibration(2)
    assert [b["input_ids"].shape[0] for b in batches] == [16, 16]
    with pytest.raises(ConfigError, match="at most 32"):
        spec.calibration(33)
