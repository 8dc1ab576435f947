"""MiniLM's calibration text never overlaps the sentences it is evaluated on."""

from __future__ import annotations

import pytest

from bitsfusion.errors import ConfigError
from bitsfusion.zoo import get_model_spec
from bitsfusion.zoo.minilm import load_calibration_sentences, load_distill_sentences, load_sentences


def test_calibration_and_evaluation_sentences_are_disjoint() -> None:
    calibration, evaluation = load_calibration_sentences(), load_sentences()
    assert len(calibration) == len(set(calibration)) == 512
    assert len(evaluation) == 1000
    assert not set(calibration) & set(evaluation)


def test_calibration_batches_and_their_limit() -> None:
    spec = get_model_spec("minilm")
    batches = spec.calibration(2)
    assert [b["input_ids"].shape[0] for b in batches] == [16, 16]
    more = spec.calibration(34)  # the 32 batches of calibration sentences, then distillation sentences
    assert len(more) == 34 and all(b["input_ids"].shape[0] == 16 for b in more)
    assert all(a["input_ids"].equal(b["input_ids"]) for a, b in zip(more[:32], spec.calibration(32)))
    most = (512 + len(load_distill_sentences())) // 16
    with pytest.raises(ConfigError, match=f"at most {most}"):
        spec.calibration(most + 1)


def test_distillation_sentences_avoid_the_evaluation_sentences() -> None:
    assert not set(load_distill_sentences()) & set(load_sentences())
