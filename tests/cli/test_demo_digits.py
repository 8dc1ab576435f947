"""``bitsfusion demo`` on the digits UNet end to end, at a small size (the full demo is ``make demo``)."""

from __future__ import annotations

import pytest
from rich.console import Console

pytest.importorskip("diffusers")

from bitsfusion.cli.demo_digits import demo_table, digits_demo  # noqa: E402
from bitsfusion.cli.main import app  # noqa: E402
from bitsfusion.pack.io import read_manifest  # noqa: E402


@pytest.mark.slow
def test_digits_demo_end_to_end_small(tmp_path) -> None:
    out, grid = tmp_path / "artifact", tmp_path / "grid.png"
    result = digits_demo(avg_bits=2.3, candidate_bits=(2,), distill_steps=4, data_steps=2, per_class=3, steps=6,
                         out=out, grid=grid, console=Console(file=open(tmp_path / "log.txt", "w")))
    assert list(result) == ["fp32", "uniform 2-bit PTQ", "mixed 2.3-bit PTQ", "mixed 2.3-bit + distill"]
    fp32, final = result["fp32"], result["mixed 2.3-bit + distill"]
    assert fp32["image_mse"] == 0.0 and fp32["accuracy"] >= 0.7
    assert final["bits_per_weight"] <= 2.3 + 1e-9 and final["paper_bits"] < final["bits_per_weight"]
    assert fp32["size_bytes"] / final["weight_bytes"] > 10 and final["size_bytes"] > final["weight_bytes"]
    assert 0 < final["image_mse"] < 1 and 0 <= final["accuracy"] <= 1
    manifest = read_manifest(out)
    assert manifest["layers"]["conv_in"]["scheme"]["bits"] == 8 and manifest["layers"]["conv_out"]["scheme"]["bits"] == 8
    assert manifest["cached_modules"]["time_proj"]["timesteps"] == 6
    assert not any("time_emb" in n for n in manifest["layers"])
    assert grid.stat().st_size > 1000
    Console(file=open(tmp_path / "table.txt", "w"), width=200).print(demo_table(result, 2.3))
    assert "conditional accuracy" in (tmp_path / "table.txt").read_text()


def test_demo_rejects_an_unknown_model(runner) -> None:
    result = runner.invoke(app, ["demo", "--model", "resnet"])
    assert result.exit_code == 2 and "not a demo model" in result.output and "Traceback" not in result.output
