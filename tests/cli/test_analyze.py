"""analyze -> allocate -> quantize -> eval on the tiny model; pareto and heat map images; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bitsfusion.cli.allocate import parse_bytes, parse_pins
from bitsfusion.cli.analyze import parse_group_sizes
from bitsfusion.cli.inspect import bits_grid
from bitsfusion.cli.main import app
from bitsfusion.errors import ConfigError
from bitsfusion.pack.io import read_manifest
from bitsfusion.plan import BitPlan

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sens(tmp_path_factory: pytest.TempPathFactory, runner: CliRunner) -> Path:
    out = tmp_path_factory.mktemp("analyze") / "sens.json"
    result = runner.invoke(app, ["analyze", "tiny", "--out", str(out), "--bits", "1,2,4,8", "--batches", "2",
                                 "--group-size", "16,0"])
    assert result.exit_code == 0, result.output
    assert "proxy rank correlation" in result.stdout and "fc1" in result.stdout
    return out


@pytest.mark.parametrize("method", ["exact", "threshold"])
def test_analyze_allocate_quantize_eval(runner: CliRunner, sens: Path, tmp_path: Path, method: str) -> None:
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["allocate", str(sens), "--avg-bits", "3", "--out", str(plan), "--method", method,
                                 "--pin", "head=8"])
    assert result.exit_code == 0, result.output
    assert "stored" in result.stdout and "paper counting" in result.stdout
    summary = json.loads(plan.read_text())["allocation"]
    assert summary["bits_per_weight_stored"] <= 3.0 and summary["counting"] == "stored"
    assert BitPlan.load(plan).resolve("head").bits == 8
    art = tmp_path / "art"
    result = runner.invoke(app, ["quantize", "tiny", "--plan", str(plan), "--out", str(art)])
    assert result.exit_code == 0, result.output
    layers = read_manifest(art)["layers"]
    assert {n: e["scheme"]["bits"] for n, e in layers.items()} == \
        {n: s.bits for n, s in BitPlan.load(plan).rules.items()}
    result = runner.invoke(app, ["eval", str(art)])
    assert result.exit_code == 0, result.output
    assert "mean_cos" in result.stdout or "cos" in result.stdout


def test_analyze_resumes_without_remeasuring(runner: CliRunner, sens: Path) -> None:
    before = json.loads(sens.read_text())
    result = runner.invoke(app, ["analyze", "tiny", "--out", str(sens), "--bits", "1,2,4,8", "--batches", "2",
                                 "--group-size", "16,0"])
    assert result.exit_code == 0, result.output
    assert json.loads(sens.read_text())["loss"] == before["loss"]


def test_pareto_plot_with_measured_check(runner: CliRunner, sens: Path, tmp_path: Path) -> None:
    png = tmp_path / "pareto.png"
    result = runner.invoke(app, ["pareto", str(sens), "--out", str(png), "--mark", "2.5", "--check",
                                 "--budgets", "1.75,2.5,4"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG
    assert "measured/predicted" in result.stdout.replace("\n", "") or "measured" in result.stdout


def test_quantize_avg_bits_shortcut_and_heatmap(runner: CliRunner, tmp_path: Path) -> None:
    art, table = tmp_path / "art", tmp_path / "sens.json"
    result = runner.invoke(app, ["quantize", "tiny", "--avg-bits", "2.5", "--grid", "asymmetric",
                                 "--sens", str(table), "--out", str(art)])
    assert result.exit_code == 0, result.output
    assert table.exists() and "predicted mse loss" in result.stdout
    png = tmp_path / "bits.png"
    result = runner.invoke(app, ["inspect", str(art), "--heatmap", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG


@pytest.mark.parametrize("args,fragments", [
    (["allocate", "{sens}", "--avg-bits", "0.5", "--out", "{tmp}/p.json"], ["minimum achievable", "bits per weight"]),
    (["allocate", "{sens}", "--avg-bits", "3", "--pin", "nolayer=4", "--out", "{tmp}/p.json"], ["nolayer"]),
    (["allocate", "{sens}", "--avg-bits", "3", "--pin", "head", "--out", "{tmp}/p.json"], ["NAME=BITS"]),
    (["allocate", "{sens}", "--out", "{tmp}/p.json"], ["give a budget"]),
    (["allocate", "{sens}", "--max-bytes", "6XB", "--out", "{tmp}/p.json"], ["--max-bytes"]),
    (["allocate", "{tmp}/missing.json", "--avg-bits", "2", "--out", "{tmp}/p.json"], ["bitsfusion analyze"]),
    (["analyze", "nosuchmodel", "--out", "{tmp}/s.json"], ["nosuchmodel"]),
], ids=["infeasible", "pin-typo", "pin-syntax", "no-budget", "bad-bytes", "missing-table", "bad-model"])
def test_errors_are_one_line(runner, sens, tmp_path, assert_one_line_error, args, fragments) -> None:
    argv = [a.format(sens=sens, tmp=tmp_path) for a in args]
    assert_one_line_error(runner.invoke(app, argv), *fragments)


def test_parsers_and_heatmap_layout() -> None:
    assert parse_bytes("6MB") == 6_000_000 and parse_bytes("1.5MiB") == 1_572_864 and parse_bytes("4096") == 4096
    assert parse_pins(["head=8", "re:.*stem=4"]) == {"head": 8, "re:.*stem": 4}
    assert parse_group_sizes("64,128,0") == (64, 128, None)
    for bad in ("", "64,x", "-8"):
        with pytest.raises(typer.BadParameter):
            parse_group_sizes(bad)
    with pytest.raises(ConfigError):
        parse_pins(["head=9"])
    rows, cols, values = bits_grid({"enc.0.q": 2, "enc.0.k": 4, "enc.1.q": 3, "head": 8})
    assert rows == ["enc.0", "enc.1", "(other)"] and cols == ["q", "k", "head"]
    assert values[0][:2] == [2, 4] and values[2][2] == 8
