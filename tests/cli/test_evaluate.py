"""``bitsfusion eval``: rebuild the original from the manifest, or take --model; --active-bits."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from typer.testing import CliRunner

from bitsfusion.cli.main import app


def _score(output: str, name: str) -> float:
    match = re.search(rf"{name}\s*│\s*([-0-9.e]+|inf)", output)
    assert match, output
    return float(match.group(1))


def test_eval_rebuilds_the_original_from_the_manifest(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["eval", str(tiny_artifact)])
    assert result.exit_code == 0, result.output
    assert 0.95 < _score(result.stdout, "mean_cos") < 1.0
    assert _score(result.stdout, "p5_cos") <= _score(result.stdout, "mean_cos")


def test_active_bits_runs_the_nested_precision(runner: CliRunner, tiny_artifact: Path) -> None:
    full = _score(runner.invoke(app, ["eval", str(tiny_artifact)]).stdout, "sqnr_db")
    result = runner.invoke(app, ["eval", str(tiny_artifact), "--active-bits", "2"])
    assert result.exit_code == 0, result.output
    assert _score(result.stdout, "sqnr_db") < full


def test_active_bits_not_stored_is_one_line_exit_2(
    assert_one_line_error, runner: CliRunner, tiny_artifact: Path,
) -> None:
    assert_one_line_error(runner.invoke(app, ["eval", str(tiny_artifact), "--active-bits", "3"]), "3")


def test_model_option_uses_the_generic_evaluator(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["eval", str(tiny_artifact), "--model", "bitsfusion.zoo.tiny:build_tiny"])
    assert result.exit_code == 0, result.output
    assert "bitsfusion.zoo.tiny:build_tiny" in result.stdout
    assert 0.95 < _score(result.stdout, "mean_cos") < 1.0


def test_manifest_without_source_needs_model(
    assert_one_line_error, runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
) -> None:
    copy = tmp_path / "nosource"
    shutil.copytree(tiny_artifact, copy)
    manifest_path = copy / "bitsfusion.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"].pop("source", None)
    manifest.pop("source", None)
    manifest_path.write_text(json.dumps(manifest))
    assert_one_line_error(runner.invoke(app, ["eval", str(copy)]), "--model")


def test_corrupt_manifest_is_one_line_exit_2(
    assert_one_line_error, runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
) -> None:
    copy = tmp_path / "badjson"
    shutil.copytree(tiny_artifact, copy)
    (copy / "bitsfusion.json").write_text("{ not json")
    assert_one_line_error(runner.invoke(app, ["eval", str(copy)]), "not valid JSON")
