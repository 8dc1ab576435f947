"""``bitsfusion quantize``: schemes, plans, skips and factories, all on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitsfusion.cli.main import app
from bitsfusion.cli.quantize import build_plan, parse_nested
from bitsfusion.pack.io import read_manifest
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme

TINY_QUANTIZABLE = {"stem", "patch", "fc1", "fc2", "head"}


def test_quantize_prints_report_and_writes_every_quantizable_layer(
    runner: CliRunner, tiny_artifact: Path,
) -> None:
    manifest = read_manifest(tiny_artifact)
    assert set(manifest["layers"]) == TINY_QUANTIZABLE
    assert all(e["scheme"]["bits"] == 4 and e["scheme"]["nested"] == [2] for e in manifest["layers"].values())


def test_quantize_output_names_layers_and_skips(runner: CliRunner, tmp_path: Path) -> None:
    args = ["quantize", "tiny", "--bits", "3", "--group-size", "0", "--out", str(tmp_path / "a")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in (*TINY_QUANTIZABLE, "pos", "norm"):
        assert name in result.stdout
    manifest = read_manifest(tmp_path / "a")
    assert {e["scheme"]["group_size"] for e in manifest["layers"].values()} == {None}


@pytest.mark.parametrize("grid", ["asymmetric", "symmetric", "balanced"], ids=lambda g: g)
def test_grid_and_method_options(runner: CliRunner, tmp_path: Path, grid: str) -> None:
    out = tmp_path / grid
    result = runner.invoke(app, ["quantize", "tiny", "--bits", "2", "--grid", grid, "--method", "minmax",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    schemes = {json.dumps(e["scheme"], sort_keys=True) for e in read_manifest(out)["layers"].values()}
    assert schemes == {json.dumps(QScheme(2, grid=grid, method="minmax").to_dict(), sort_keys=True)}


def test_plan_file_and_skip(runner: CliRunner, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    BitPlan(default=QScheme(bits=2), rules={"head": QScheme(bits=8), "re:fc.*": QScheme(bits=3)}).save(plan)
    out = tmp_path / "planned"
    result = runner.invoke(app, ["quantize", "bitsfusion.zoo.tiny:build_tiny", "--plan", str(plan),
                                 "--skip", "fc2", "--skip", "re:st.*", "--out", str(out)])
    assert result.exit_code == 0, result.output
    bits = {fqn: e["scheme"]["bits"] for fqn, e in read_manifest(out)["layers"].items()}
    assert bits == {"patch": 2, "fc1": 3, "head": 8}


def test_sequential_gptq_plan(runner: CliRunner, tmp_path: Path) -> None:
    """Convs and linears of the tiny model fitted in forward order on its calibration batches."""
    plan = tmp_path / "plan.json"
    BitPlan(default=QScheme(bits=3, group_size=16, calibration="gptq")).save(plan)
    out = tmp_path / "seq"
    result = runner.invoke(app, ["quantize", "tiny", "--plan", str(plan), "--sequential", "--calibration-batches",
                                 "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    layers = read_manifest(out)["layers"]
    assert set(layers) == TINY_QUANTIZABLE and {e["scheme"]["calibration"] for e in layers.values()} == {"gptq"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["no_such_model"], ["no_such_model", "accepted"]),
        (["tiny", "--grid", "balanced", "--nested", "2"], ["balanced grid does not nest"]),
        (["tiny", "--plan", "{missing}"], ["plan file not found"]),
        (["bitsfusion.zoo.tiny:nothing"], ["has no callable 'nothing'"]),
        (["tiny", "--sequential"], ["--sequential", "no calibrated scheme"]),
    ],
    ids=["unknown-model", "balanced-nested", "missing-plan", "bad-factory", "sequential-uncalibrated"],
)
def test_user_errors_are_one_red_line(
    assert_one_line_error, runner: CliRunner, tmp_path: Path, args: list[str], fragments: list[str],
) -> None:
    args = [a.replace("{missing}", str(tmp_path / "missing.json")) for a in args]
    result = runner.invoke(app, ["quantize", *args, "--out", str(tmp_path / "out")])
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_parse_nested() -> None:
    assert parse_nested("") == () and parse_nested("3,2") == (3, 2)


def test_build_plan_skips_win_over_plan_rules() -> None:
    plan = build_plan(QScheme(4), None, ["fc1"], ("re:head",))
    assert plan.resolve("fc1") is None and plan.resolve("head") is None and plan.resolve("fc2") == QScheme(4)
