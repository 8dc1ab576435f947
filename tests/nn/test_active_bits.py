"""set_active_bits(model, bits): min(bits, stored bits) per layer, all-or-nothing, errors name the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsfusion.errors import ConfigError
from bitsfusion.nn import active_bits_of, quantize_, set_active_bits
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 4))
    quantize_(model, BitPlan(rules={
        "0": QScheme(8, group_size=8, nested=(2, 4)),
        "2": QScheme(4, group_size=8, nested=(2,)),
        "3": QScheme(2, group_size=8),
    }), progress=False)
    return model


@pytest.mark.parametrize("bits, want", [
    pytest.param(8, {"0": 8, "2": 4, "3": 2}, id="b8"),
    pytest.param(4, {"0": 4, "2": 4, "3": 2}, id="b4"),
    pytest.param(2, {"0": 2, "2": 2, "3": 2}, id="b2"),
])
def test_each_layer_runs_at_min_of_bits_and_its_stored_bits(bits: int, want: dict[str, int]) -> None:
    model = _model()
    assert set_active_bits(model, bits) == want
    assert active_bits_of(model) == want


def test_switching_changes_outputs_and_back_again_exactly() -> None:
    model = _model()
    x = torch.randn(3, 16)
    full = model(x)
    set_active_bits(model, 2)
    low = model(x)
    assert not torch.equal(low, full)
    set_active_bits(model, 8)
    torch.testing.assert_close(model(x), full, rtol=0, atol=0)


def test_a_missing_precision_names_the_layer_and_switches_nothing() -> None:
    model = _model()
    with pytest.raises(ConfigError, match=r"layer '0' .* stores precisions \[2, 4, 8\], not 3 \(and 1 more layers\)"):
        set_active_bits(model, 3)
    assert active_bits_of(model) == {"0": 8, "2": 4, "3": 2}


@pytest.mark.parametrize("bad", [0, 9, 2.0, True], ids=repr)
def test_bits_out_of_range(bad) -> None:
    with pytest.raises(ConfigError, match="active bits must be an int in 1..8"):
        set_active_bits(_model(), bad)


def test_a_float_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="no quantized layers"):
        set_active_bits(nn.Linear(2, 2), 4)
