"""``bitsfusion distill``: MiniLM end to end on a few sentences, resumed, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import bitsfusion as bf
from bitsfusion.cli.main import app
from bitsfusion.zoo import get_model_spec
from bitsfusion.zoo.minilm import load_distill_sentences, load_sentences

pytestmark = pytest.mark.slow


@pytest.fixture
def sentences(tmp_path: Path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(load_distill_sentences()[:96]) + "\n", encoding="utf-8")
    return path


def test_distill_writes_model_and_report_and_resumes(runner: CliRunner, tmp_path: Path, sentences: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "minilm", "--bits", "3", "--group-size", "64", "--nested", "2", "--train-bits", "3,2",
            "--calibration", "none", "--data", str(sentences), "--eval-every", "2", "--checkpoint-every", "2",
            "--dampen", "0.5", "--bit-weights", "1,1.5", "--out", str(out)]
    first = runner.invoke(app, [*args, "--steps", "2"])
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and report["resumed_from"] is None
    assert report["config"]["dampen"] == 0.5 and report["config"]["bit_weights"] == [1.0, 1.5]
    assert set(report["quality"]) == {"post-training (start)", "distilled @3 bits", "distilled @2 bits"}
    assert report["bits_per_weight"] == pytest.approx(4.0)  # 3 bits + fp16 scale and zero per 64, two precisions
    assert [e["step"] for e in report["evaluations"]] == [0, 2]  # the start, then every 2 steps

    again = runner.invoke(app, [*args, "--steps", "4"])
    assert again.exit_code == 0, again.output
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["resumed_from"] == 2
    assert "resumed at step 2" in again.stdout

    model = bf.load(out / "model")  # the packed artifact, rebuilt from its manifest
    spec = get_model_spec("minilm")
    scores = spec.evaluate(spec.build(), model)  # what training reached (native kernels: int8 activations)
    assert scores["mean_cos"] == pytest.approx(report["quality"]["distilled @3 bits"]["mean_cos"], abs=3e-3)
    bf.set_active_bits(model, 2)
    assert not torch.equal(spec.run(model, _batch()), spec.run(bf.load(out / "model"), _batch()))


def _batch():
    from bitsfusion.zoo.minilm import tokenize

    return tokenize(list(load_sentences()[:4]))


def test_distill_errors_are_one_line(runner: CliRunner, tmp_path: Path, sentences: Path,
                                     assert_one_line_error) -> None:
    out = str(tmp_path / "x")
    assert_one_line_error(runner.invoke(app, ["distill", "tiny", "--out", out]), "no distillation recipe", "minilm")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--data", str(tmp_path / "nope.txt"),
                                              "--out", out]), "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--data", str(empty), "--out", out]),
                          "no non-empty lines")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--bits", "4", "--calibration", "none",
                                              "--train-bits", "4,2", "--data", str(sentences), "--out", out]),
                          "stores precisions")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--train-float", "some", "--out", out]),
                          "train_float")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--train-bits", "4,2", "--bit-weights", "1",
                                              "--out", out]), "one weight per entry")
    assert_one_line_error(runner.invoke(app, ["distill", "minilm", "--bit-weights", "1,x", "--out", out]),
                          "comma-separated numbers")
