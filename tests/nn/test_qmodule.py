"""QModule: registry, buffers named by PackedWeight suffixes, dtypes kept on moves, precision switching."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitsfusion.errors import ConfigError, FormatError, UnsupportedLayer
from bitsfusion.nn import QConv2d, QLinear, QModule, qmodule_class, qmodule_for, register_qmodule
from bitsfusion.nn.qmodule import registered_float_types
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.types import Grid, QScheme

ASYM_NESTED = QScheme(4, group_size=16, grid=Grid.ASYMMETRIC, nested=(2,))


def _qlinear(scheme: QScheme = ASYM_NESTED) -> QLinear:
    return QLinear.from_float(nn.Linear(40, 6), scheme)


def test_registry_maps_exact_float_types() -> None:
    assert set(registered_float_types()) >= {nn.Linear, nn.Conv2d}
    assert qmodule_for(nn.Linear(2, 2)) is QLinear and qmodule_for(nn.Conv2d(1, 1, 1)) is QConv2d
    # MultiheadAttention reads out_proj.weight directly: its Linear subclass must not be swapped
    assert qmodule_for(nn.MultiheadAttention(8, 2).out_proj) is None
    assert qmodule_for(nn.Embedding(3, 2)) is None
    assert qmodule_class("QConv2d") is QConv2d


def test_registering_a_second_module_for_a_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="Linear already has a quantized module, QLinear"):
        @register_qmodule(nn.Linear)
        class Other(QModule):
            pass
    assert qmodule_for(nn.Linear(1, 1)) is QLinear


def test_unknown_type_in_a_manifest_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="unknown quantized module type 'QLSTM'"):
        qmodule_class("QLSTM")


@pytest.mark.parametrize(
    "scheme, suffixes",
    [
        pytest.param(QScheme(4), {"qweight", "scales"}, id="sym4"),
        pytest.param(ASYM_NESTED, {"qweight", "scales", "zeros", "scales_b2", "zeros_b2"}, id="asym4+2"),
        pytest.param(QScheme(3, grid=Grid.BALANCED), {"qweight", "scales"}, id="bal3"),
    ],
)
def test_state_dict_holds_the_packed_tensors_as_buffers(scheme: QScheme, suffixes: set[str]) -> None:
    q = _qlinear(scheme)
    assert set(q.state_dict()) == suffixes | {"bias"}
    assert {name for name, _ in q.named_buffers()} == suffixes
    assert {name for name, _ in q.named_parameters()} == {"bias"}
    for suffix, (dtype, shape) in PackedWeight.tensor_specs(scheme, (6, 40)).items():
        t = getattr(q, suffix)
        assert t.dtype == dtype and tuple(t.shape) == shape
    packed = q.packed
    assert all(packed.tensors()[s].data_ptr() == getattr(q, s).data_ptr() for s in suffixes)  # a view, no copy


def test_the_packed_view_is_kept_until_a_buffer_is_replaced() -> None:
    q = _qlinear()
    view = q.packed
    assert q.packed is view  # one view: the kernels' per-weight cache is keyed by it
    q.scales.mul_(2)  # in place: the same view sees it
    assert torch.equal(q.packed.scales, q.scales) and q.packed is view
    q.scales = q.scales.clone()  # a new buffer: a new, validated view over it
    assert q.packed is not view and q.packed.scales is q.scales
    q.load_state_dict(_qlinear().state_dict())  # copies in place
    assert torch.equal(q.packed.qweight, q.qweight)
    q.qweight = torch.zeros(3, dtype=torch.uint8)  # the wrong shape is caught when the view is rebuilt
    with pytest.raises(FormatError, match="qweight"):
        q.packed


@pytest.mark.parametrize("convert", [
    pytest.param(lambda m: m.half(), id="half"),
    pytest.param(lambda m: m.float(), id="float"),
    pytest.param(lambda m: m.to(torch.bfloat16), id="to-bf16"),
    pytest.param(lambda m: m.double(), id="double"),
])
def test_dtype_conversions_leave_the_packed_buffers_alone(convert) -> None:
    q = _qlinear()
    before = {name: b.clone() for name, b in q.named_buffers()}
    convert(q)
    for name, b in q.named_buffers():
        assert b.dtype == before[name].dtype and torch.equal(b, before[name]), name
    assert q.bias.dtype == convert(nn.Linear(1, 1)).bias.dtype  # the float bias follows the conversion
    x = torch.randn(2, 40).to(q.bias.dtype)
    assert q(x).dtype == q.bias.dtype


def test_device_moves_keep_dtypes() -> None:
    q = _qlinear().to("meta")
    assert all(b.device.type == "meta" for b in q.buffers())
    assert q.qweight.dtype == torch.uint8 and q.scales.dtype == torch.float16 and q.bias.device.type == "meta"


def test_set_active_bits_accepts_only_stored_precisions() -> None:
    q = _qlinear()
    assert q.active_bits == 4
    q.set_active_bits(2)
    assert q.active_bits == 2
    for bad in (3, 1, 8, True, "2"):
        with pytest.raises(ConfigError, match=r"can run at \[2, 4\] bits"):
            q.set_active_bits(bad)  # type: ignore[arg-type]
    assert q.active_bits == 2
    assert "_active_bits" not in q.state_dict()


def test_manifest_entry_is_json_and_rebuilds_an_equivalent_shell() -> None:
    q = _qlinear()
    entry = json.loads(json.dumps(q.manifest_entry()))
    assert entry["type"] == "QLinear" and entry["shape"] == [6, 40]
    assert entry["kwargs"] == {"in_features": 40, "out_features": 6, "bias": True}
    assert QScheme.from_dict(entry["scheme"]) == ASYM_NESTED
    assert entry["weight_error"] == q.weight_error and 0 < q.weight_error < 0.1
    shell = QModule.from_spec(entry, dtype=torch.float64)
    assert isinstance(shell, QLinear) and shell.bias.dtype == torch.float64
    assert all(torch.count_nonzero(b) == 0 for b in shell.buffers())
    shell.load_state_dict(q.state_dict())
    x = torch.randn(3, 40)
    torch.testing.assert_close(shell.float()(x), q(x), rtol=0, atol=0)


def test_from_spec_rejects_inconsistent_entries() -> None:
    entry = _qlinear().manifest_entry()
    with pytest.raises(FormatError, match=r"shape \[6, 41\].*packed shape \[6, 40\]"):
        QModule.from_spec({**entry, "shape": [6, 41]})
    with pytest.raises(FormatError, match="cannot rebuild a QLinear"):
        QModule.from_spec({**entry, "kwargs": {"in_features": 40}})
    with pytest.raises(FormatError, match="cannot rebuild a QLinear"):
        QModule.from_spec({**entry, "scheme": {"bits": 12}})


def test_from_float_takes_only_its_float_type() -> None:
    with pytest.raises(UnsupportedLayer, match="QLinear.from_float takes a Linear, got Conv2d"):
        QLinear.from_float(nn.Conv2d(2, 2, 1), QScheme(4))


def test_from_float_keeps_training_mode_and_device() -> None:
    layer = nn.Linear(8, 4).eval()
    q = QLinear.from_float(layer, QScheme(2, group_size=None))
    assert not q.training and q.qweight.device == layer.weight.device
    assert q.nbytes == PackedWeight.from_tensors(q.scheme, q.shape, dict(q.named_buffers())).nbytes


@settings(max_examples=20, deadline=None)
@given(
    bits=st.integers(2, 8),
    grid=st.sampled_from([Grid.SYMMETRIC, Grid.ASYMMETRIC]),
    n=st.integers(1, 12),
    k=st.integers(1, 90),
    group=st.sampled_from([None, 1, 16, 64]),
    bias=st.booleans(),
)
def test_every_stored_precision_survives_the_manifest_round_trip(bits, grid, n, k, group, bias) -> None:
    """Property: a shell from ``manifest_entry`` + ``state_dict`` equals the original at every precision."""
    scheme = QScheme(bits, group_size=group, grid=grid, nested=(1, bits - 1) if bits > 2 else (1,))
    q = QLinear.from_float(nn.Linear(k, n, bias=bias), scheme)
    shell = QModule.from_spec(json.loads(json.dumps(q.manifest_entry())))
    shell.load_state_dict(q.state_dict())
    x = torch.randn(2, k)
    for b in scheme.precisions:
        q.set_active_bits(b)
        shell.set_active_bits(b)
        torch.testing.assert_close(shell(x), q(x), rtol=0, atol=0)
