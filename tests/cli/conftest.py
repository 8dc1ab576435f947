"""CLI fixtures: a runner and a 4-bit artifact of the tiny model, made once by the CLI itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitsfusion.cli.main import app


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory, runner: CliRunner) -> Path:
    """``bitsfusion quantize tiny --bits 4 --nested 2 --out DIR``: 4-bit asymmetric codes that also run at 2 bits."""
    out = tmp_path_factory.mktemp("cli") / "tiny-4bit"
    result = runner.invoke(app, ["quantize", "tiny", "--bits", "4", "--nested", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def assert_one_line_error():
    """Check: exit code 2, stderr exactly one ``error:`` line naming every fragment, no traceback."""
    return _assert_one_line_error
