"""save/load: identical outputs after a round trip (custom module, tiny BertModel), and load errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.nn import QConv2d, QLinear, load, quantize_, save, set_active_bits
from bitsfusion.pack.accounting import packed_nbytes
from bitsfusion.pack.io import read_manifest
from bitsfusion.plan import BitPlan
from bitsfusion.types import Grid, QScheme

PLAN = BitPlan(
    default=QScheme(4, group_size=16, nested=(2,)),
    rules={"conv": QScheme(3, group_size=None, grid=Grid.ASYMMETRIC, nested=(2,)), "out": None},
)


class Custom(nn.Module):
    """Conv, two linears (one kept float) and a shared linear reached under two names."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding="same", groups=3)
        self.fc = nn.Linear(width, width)
        self.shared = nn.Linear(width, width)
        self.alias = self.shared
        self.out = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return self.out(self.alias(torch.relu(self.fc(self.shared(h)))))


def _saved_custom(tmp_path: Path) -> tuple[Custom, Path]:
    model = Custom()
    quantize_(model, PLAN, progress=False)
    return model, save(model, tmp_path / "custom", source={"test": "custom"})


def test_custom_module_round_trip_is_exact(tmp_path: Path) -> None:
    model, path = _saved_custom(tmp_path)
    loaded = load(path, model=Custom())
    assert isinstance(loaded.conv, QConv2d) and isinstance(loaded.fc, QLinear) and type(loaded.out) is nn.Linear
    assert loaded.shared is loaded.alias and not loaded.training
    x = torch.randn(2, 3, 7, 7)
    model.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    set_active_bits(loaded, 2)
    set_active_bits(model, 2)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.fc.weight_error == model.fc.weight_error


def test_manifest_body_and_accounting(tmp_path: Path) -> None:
    model, path = _saved_custom(tmp_path)
    manifest = read_manifest(path)
    assert manifest["model"] == {"kind": "module", "module": __name__, "class": "Custom", "source": {"test": "custom"}}
    assert list(manifest["layers"]) == ["conv", "fc", "shared"]
    assert manifest["layers"]["conv"]["kwargs"]["padding"] == "same"
    assert manifest["tied_tensors"] == {"alias.qweight": "shared.qweight", "alias.scales": "shared.scales",
                                        "alias.scales_b2": "shared.scales_b2", "alias.bias": "shared.bias"}
    assert not any(name.startswith("alias.") for name in manifest["tensors"])  # stored once
    acc = manifest["accounting"]
    q_bytes = packed_nbytes(PLAN.resolve("conv"), (12, 9)) + 2 * packed_nbytes(PLAN.resolve("fc"), (12, 12))
    assert acc["quantized_params"] == 12 * 9 + 2 * 144 and acc["packed_bytes"] == q_bytes
    assert acc["bits_per_weight"] == pytest.approx(8 * q_bytes / acc["quantized_params"])
    float_params = 3 * 12 + 48 + 4  # biases of conv, fc, shared; out weight + bias
    assert acc["float_params"] == float_params and acc["float_bytes"] == 4 * float_params
    assert acc["total_bytes"] == q_bytes + 4 * float_params


def test_plain_module_needs_a_skeleton(tmp_path: Path) -> None:
    _, path = _saved_custom(tmp_path)
    with pytest.raises(ConfigError, match=r"plain nn\.Module .*Custom.*load\(path, model=YourModule\(\.\.\.\)\)"):
        load(path)


def test_skeleton_mismatch_names_the_tensor(tmp_path: Path) -> None:
    _, path = _saved_custom(tmp_path)
    with pytest.raises(FormatError, match=r"tensor 'out.weight': shape mismatch: the artifact holds \[4, 12\], the model expects \[4, 16\]"):
        load(path, model=_Wider())
    with pytest.raises(FormatError, match=r"layer 'conv' is a QConv2d of a Conv2d in the artifact.*Linear there"):
        load(path, model=nn.ModuleDict({"conv": nn.Linear(2, 2)}))
    extra = Custom()
    extra.extra = nn.Linear(2, 2)
    with pytest.raises(FormatError, match=r"tensor 'extra.bias': the model expects this tensor.*\(2 missing in all\)"):
        load(path, model=extra)


class _Wider(Custom):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(16, 4)


def _edit_model_entry(path: Path, **changes) -> None:
    mpath = path / "bitsfusion.json"
    manifest = json.loads(mpath.read_text())
    manifest["model"].update(changes)
    mpath.write_text(json.dumps(manifest))


@pytest.mark.parametrize("entry", [
    pytest.param({"kind": "transformers", "module": "os", "class": "system"}, id="module-os"),
    pytest.param({"kind": "subprocess", "module": "subprocess", "class": "Popen"}, id="kind-subprocess"),
    pytest.param({"kind": "transformers", "module": "transformers", "class": "AutoTokenizer"}, id="not-a-model"),
    pytest.param({"kind": "transformers", "module": "transformers", "class": "__loader__"}, id="dunder"),
])
def test_a_class_outside_transformers_and_diffusers_is_refused(tmp_path: Path, entry: dict) -> None:
    _, path = _saved_custom(tmp_path)
    _edit_model_entry(path, config={}, **entry)
    with pytest.raises(FormatError, match="pass load\\(path, model=\\.\\.\\.\\)"):
        load(path)


@pytest.fixture(scope="module")
def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, vocab_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def test_bert_round_trip_from_the_recorded_class_and_config(tiny_bert, tmp_path: Path) -> None:
    model = tiny_bert
    report = quantize_(model, BitPlan(default=QScheme(4, group_size=16), rules={"pooler.dense": None}), progress=False)
    assert len(report.quantized) == 2 * 6
    path = save(model, tmp_path / "bert", source={"zoo": "tiny-bert"})
    info = read_manifest(path)["model"]
    assert (info["kind"], info["module"], info["class"]) == ("transformers", "transformers", "BertModel")
    ids = torch.randint(0, 64, (2, 9))
    want = model(input_ids=ids).last_hidden_state
    rebuilt = load(path)
    assert type(rebuilt) is type(model) and isinstance(rebuilt.encoder.layer[0].attention.self.query, QLinear)
    torch.testing.assert_close(rebuilt(input_ids=ids).last_hidden_state, want, rtol=0, atol=0)
    skeleton = type(model)(model.config)
    torch.testing.assert_close(load(path, model=skeleton)(input_ids=ids).last_hidden_state, want, rtol=0, atol=0)
