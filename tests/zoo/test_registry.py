"""The model registry: lookup, caching and its errors."""

from __future__ import annotations

import pytest

from bitsfusion.errors import ConfigError
from bitsfusion.zoo import ModelSpec, get_model_spec, model_names, register_model
from bitsfusion.zoo.tiny import tiny_spec


def test_bundled_models_are_registered() -> None:
    assert {"minilm", "tiny"} <= set(model_names())
    assert get_model_spec("tiny") is get_model_spec("tiny")  # made once


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError, match=r"unknown bundled model 'resnet'.*minilm.*tiny"):
        get_model_spec("resnet")


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny")(lambda: tiny_spec())


@pytest.mark.parametrize("name", ["", "has space", "a-b", 3], ids=["empty", "space", "dash", "int"])
def test_model_names_must_be_identifiers(name: object) -> None:
    with pytest.raises(ConfigError, match="identifier"):
        register_model(name)  # type: ignore[arg-type]


def test_factory_must_return_a_spec_of_its_name() -> None:
    register_model("_misnamed_for_test")(lambda: tiny_spec())
    with pytest.raises(ConfigError, match="ModelSpec named '_misnamed_for_test'"):
        get_model_spec("_misnamed_for_test")


def test_spec_is_frozen() -> None:
    spec = get_model_spec("tiny")
    assert isinstance(spec, ModelSpec)
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
