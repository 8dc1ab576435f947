"""``bitsfusion inspect``: the per-layer table, exact totals, and corrupt artifacts."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from bitsfusion.cli.inspect import artifact_totals, fmt_bytes
from bitsfusion.cli.main import app
from bitsfusion.pack.accounting import packed_nbytes
from bitsfusion.pack.io import artifact_nbytes, read_manifest
from bitsfusion.types import QScheme


def test_inspect_lists_layers_and_totals(runner: CliRunner, tiny_artifact: Path) -> None:
    result = runner.invoke(app, ["inspect", str(tiny_artifact)])
    assert result.exit_code == 0, result.output
    for name in ("stem", "patch", "fc1", "fc2", "head", "artifact on disk"):
        assert name in result.stdout
    assert fmt_bytes(artifact_nbytes(tiny_artifact)) in result.stdout


def test_totals_are_exact(tiny_artifact: Path) -> None:
    manifest = read_manifest(tiny_artifact)
    totals = artifact_totals(manifest, tiny_artifact)
    # tiny: stem [16, 27], patch [64, 256], fc1 [128, 64], fc2 [64, 128], head [10, 64]
    weights = 16 * 27 + 64 * 256 + 128 * 64 + 64 * 128 + 10 * 64
    nbytes = sum(packed_nbytes(QScheme(4, grid="asymmetric", nested=(2,)), s)
                 for s in [(16, 27), (64, 256), (128, 64), (64, 128), (10, 64)])
    assert totals["quantized_weights"] == weights and totals["quantized_bytes"] == nbytes
    assert totals["bits_per_weight"] == 8 * nbytes / weights
    # float tensors: 5 biases + pos [16, 64] + LayerNorm weight and bias, fp32
    assert totals["float_bytes"] == 4 * (16 + 64 + 128 + 64 + 10 + 16 * 64 + 2 * 64)
    assert totals["disk_bytes"] == artifact_nbytes(tiny_artifact)


def test_corrupt_artifact_is_one_line_exit_2(
    assert_one_line_error, runner: CliRunner, tiny_artifact: Path, tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifact, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a byte of tensor data: the checksum no longer matches
    weights.write_bytes(bytes(data))
    assert_one_line_error(runner.invoke(app, ["inspect", str(broken)]), "checksum")


def test_missing_artifact_is_one_line_exit_2(
    assert_one_line_error, runner: CliRunner, tmp_path: Path,
) -> None:
    assert_one_line_error(runner.invoke(app, ["inspect", str(tmp_path / "nope")]), str(tmp_path / "nope"))
