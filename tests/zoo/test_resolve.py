"""resolve_model: every accepted form, and a ConfigError naming the input for every bad one."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bitsfusion.errors import ConfigError
from bitsfusion.zoo.resolve import example_inputs, generic_spec, rebuild, resolve_model
from bitsfusion.zoo.tiny import TinyNet


def test_bundled_name() -> None:
    model, source, spec = resolve_model("tiny")
    assert isinstance(model, TinyNet) and source == {"zoo": "tiny"} and spec is not None and spec.name == "tiny"


@pytest.mark.parametrize(
    ("text", "has_spec"), [("bitsfusion.zoo.tiny:build_tiny", False), ("bitsfusion.zoo.tiny:tiny_spec", True)],
    ids=["module-factory", "spec-factory"],
)
def test_factory(text: str, has_spec: bool) -> None:
    model, source, spec = resolve_model(text)
    assert isinstance(model, TinyNet) and source == {"factory": text} and (spec is not None) == has_spec


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "bf_user_factories.py").write_text(
        "import torch\n"
        "def not_a_model():\n    return 42\n"
        "def broken():\n    raise RuntimeError('no weights here')\n"
        "def needs_args(x):\n    return x\n"
        "def bare():\n    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "bf_user_factories"
    sys.modules.pop("bf_user_factories", None)


@pytest.mark.parametrize(
    ("func", "match"),
    [("not_a_model", "returned int"), ("broken", "RuntimeError: no weights here"),
     ("needs_args", "failed when called with no arguments"), ("missing", "has no callable 'missing'")],
    ids=["returns-int", "raises", "needs-args", "missing-function"],
)
def test_bad_factories(user_module: str, func: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        resolve_model(f"{user_module}:{func}")
    assert f"{user_module}:{func}" in str(e.value)


def test_unimportable_factory_module() -> None:
    with pytest.raises(ConfigError, match=r"'no_such_pkg_xyz.mod:f'.*cannot import.*accepted"):
        resolve_model("no_such_pkg_xyz.mod:f")


def test_plain_module_factory_gets_inferred_inputs_and_generic_evaluator(user_module: str) -> None:
    model, source, spec = resolve_model(f"{user_module}:bare")
    assert spec is None
    assert example_inputs(model).shape == (8, 6)
    generic = generic_spec("bare", lambda: resolve_model(f"{user_module}:bare")[0])
    scores = generic.evaluate(model, model)
    assert scores["mean_cos"] == pytest.approx(1.0) and scores["sqnr_db"] == math.inf
    assert [b.shape for b in generic.calibration(2)] == [(8, 6), (8, 6)]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: None, "is not a bundled model, a directory or a factory"),
        (lambda d: d.mkdir(), "has no config.json"),
        (lambda d: (d.mkdir(), (d / "model_index.json").write_text("{}")), "diffusers pipeline"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{oops")), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "bert"}')), "transformers could not"),
        (lambda d: d.write_text("x"), "is a file, not a directory"),
    ],
    ids=["missing", "no-config", "pipeline-dir", "bad-json", "no-weights", "file"],
)
def test_bad_paths(tmp_path: Path, setup, match: str) -> None:
    target = tmp_path / "model"
    setup(target)
    with pytest.raises(ConfigError, match=match) as e:
        resolve_model(str(target))
    assert str(target) in str(e.value)


def test_unknown_plain_name_lists_accepted_forms() -> None:
    with pytest.raises(ConfigError, match=r"'resnet9000'.*minilm, tiny.*pkg\.module:function"):
        resolve_model("resnet9000")


def test_diffusers_directory_needs_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("diffusers is installed here")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "_diffusers_version": "0.30"}))
    with pytest.raises(ConfigError, match="pip install diffusers"):
        resolve_model(str(tmp_path))


def test_transformers_directory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=40)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    model, source, spec = resolve_model(str(tmp_path))
    assert source == {"path": str(tmp_path.resolve()), "kind": "transformers"} and spec is None
    batch = example_inputs(model)
    assert batch["input_ids"].shape == (8, 32) and int(batch["input_ids"].max()) < 50
    again, _ = rebuild(source)
    scores = generic_spec("bert", lambda: again).evaluate(model, again)
    assert scores["mean_cos"] == pytest.approx(1.0)


@pytest.mark.parametrize("source", [{}, {"zoo": 3}, None, "tiny"], ids=["empty", "not-str", "none", "bare-str"])
def test_rebuild_refuses_sources_naming_nothing(source: object) -> None:
    with pytest.raises(ConfigError, match="--model"):
        rebuild(source)


def test_rebuild_zoo_source() -> None:
    model, spec = rebuild({"zoo": "tiny"})
    assert isinstance(model, nn.Module) and spec is not None and spec.name == "tiny"


def test_example_inputs_cannot_guess_for_parameterless_models() -> None:
    with pytest.raises(ConfigError, match="example_inputs"):
        example_inputs(nn.ReLU())
