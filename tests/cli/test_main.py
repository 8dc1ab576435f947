"""The app: its commands, and typer rejecting bad arguments with exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bitsfusion.cli.main import app


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("quantize", "inspect", "eval", "demo"):
        assert command in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["quantize", "tiny", "--bits", "9", "--out", "x"],
        ["quantize", "tiny", "--bits", "0", "--out", "x"],
        ["quantize", "tiny", "--grid", "circular", "--out", "x"],
        ["quantize", "tiny", "--method", "guess", "--out", "x"],
        ["quantize", "tiny", "--nested", "two", "--out", "x"],
        ["quantize", "tiny", "--group-size", "-1", "--out", "x"],
        ["quantize", "tiny"],
        ["eval", "x", "--active-bits", "12"],
        ["inspect"],
        ["demo", "--avg-bits", "two"],
        ["demo", "--avg-bits", "0.5"],
        ["demo", "--candidate-bits", "1,9"],
        ["frobnicate"],
    ],
    ids=["bits-9", "bits-0", "bad-grid", "bad-method", "bad-nested", "negative-group", "no-out", "active-bits-12",
         "inspect-no-dir", "demo-bad-bits", "demo-tiny-budget", "demo-bad-candidates", "unknown-command"],
)
def test_bad_arguments_exit_2(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
