"""``fuse_activations_``: the GELU after a ``QLinear`` moves into the layer; the model's function stays."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bitsfusion.nn import QLinear, fuse_activations_, quantize_, save
from bitsfusion.nn import load as load_artifact
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme

transformers = pytest.importorskip("transformers")
SCHEME = QScheme(4, group_size=32, nested=(2,))


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    quantize_(model, BitPlan(default=SCHEME), progress=False)
    return model


@pytest.mark.parametrize("tokens", [1, 12], ids=["gemv", "gemm"])
def test_bert_feed_forward_gelu_is_fused_and_the_output_kept(tokens: int) -> None:
    model = tiny_bert()
    fused = copy.deepcopy(model)
    names = fuse_activations_(fused)
    assert names == ["encoder.layer.0.intermediate.dense", "encoder.layer.1.intermediate.dense"]
    layer = fused.encoder.layer[0].intermediate
    assert layer.dense.activation == "gelu" and isinstance(layer.intermediate_act_fn, nn.Identity)
    assert "activation=gelu" in repr(layer.dense)
    ids = torch.randint(0, 64, (2, tokens))
    with torch.inference_mode():
        want, got = model(input_ids=ids).last_hidden_state, fused(input_ids=ids).last_hidden_state
        for bits in (4, 2):  # a switched precision runs fused too
            from bitsfusion.nn import set_active_bits

            set_active_bits(model, bits)
            set_active_bits(fused, bits)
            torch.testing.assert_close(fused(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state,
                                       rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert fuse_activations_(fused) == []  # idempotent


def test_sequential_linear_then_gelu_is_fused_but_tanh_gelu_is_not() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 48), nn.GELU(), nn.Linear(48, 24), nn.GELU(approximate="tanh"),
                          nn.Linear(24, 8))
    quantize_(model, BitPlan(default=SCHEME), progress=False)
    fused = copy.deepcopy(model)
    assert fuse_activations_(fused) == ["0"]
    assert isinstance(fused[1], nn.Identity) and isinstance(fused[3], nn.GELU)
    assert fused[2].activation is None
    x = torch.randn(7, 40)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_float_layers_are_left_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.GELU())
    assert fuse_activations_(model) == [] and isinstance(model[1], nn.GELU)


def test_the_artifact_holds_no_activation(tmp_path) -> None:
    """Fusion is a run-time rewrite: a saved fused model loads as the plain quantized model."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    quantize_(model, BitPlan(default=SCHEME), progress=False)
    assert fuse_activations_(model) == ["0"]
    save(model, tmp_path / "fused")
    loaded = load_artifact(tmp_path / "fused", model=nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)))
    assert isinstance(loaded[0], QLinear) and loaded[0].activation is None
    x = torch.randn(3, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)
