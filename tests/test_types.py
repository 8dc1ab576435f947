import pytest

from bitsfusion.errors import ConfigError
from bitsfusion.types import Grid, QScheme, ScaleMethod
from tests.conftest import GRID_BITS


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_scheme_round_trips_through_json(bits: int, grid: Grid) -> None:
    nested = tuple(range(1, bits)) if grid.nests else ()
    s = QScheme(bits=bits, group_size=32, grid=grid, method="mse", nested=nested)
    assert QScheme.from_dict(s.to_dict()) == s
    assert s.method is ScaleMethod.MSE
    assert s.precisions[-1] == bits


def test_levels_and_constant_zero() -> None:
    assert QScheme(1, grid="balanced").levels == 3
    assert QScheme(2, grid="balanced").levels == 5
    assert QScheme(3).levels == 8
    assert Grid.SYMMETRIC.constant_zero(2) == 1.5
    assert Grid.BALANCED.constant_zero(1) == 1.0
    assert Grid.ASYMMETRIC.constant_zero(4) is None


def test_group_counts() -> None:
    s = QScheme(4, group_size=64)
    assert s.n_groups(64) == 1 and s.n_groups(65) == 2 and s.n_groups(1) == 1
    assert QScheme(4, group_size=None).n_groups(1000) == 1


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"bits": 0}, "bits must be in 1..8"),
        ({"bits": 9}, "bits must be in 1..8"),
        ({"bits": 2.0}, "must be an int"),
        ({"bits": 4, "group_size": 0}, "group_size"),
        ({"bits": 4, "grid": "ternary"}, "grid must be one of"),
        ({"bits": 4, "method": "gptq"}, "method must be one of"),
        ({"bits": 4, "nested": (4,)}, "nested precisions"),
        ({"bits": 4, "grid": "balanced", "nested": (2,)}, "does not nest"),
        ({"bits": 8, "grid": "balanced"}, "balanced grid goes up to 7 bits"),
    ],
    ids=["bits0", "bits9", "float-bits", "group0", "bad-grid", "bad-method", "nested-too-high", "balanced-nested",
         "balanced-8"],
)
def test_invalid_schemes_say_what_is_wrong(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        QScheme(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown scheme keys"):
        QScheme.from_dict({"bits": 4, "groupsize": 64})
