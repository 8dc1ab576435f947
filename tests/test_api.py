"""The public API as the README shows it: quantize_ -> save -> load -> set_active_bits, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bitsfusion as bf
from bitsfusion.zoo.tiny import build_tiny


def test_all_names_resolve() -> None:
    for name in bf.__all__:
        assert getattr(bf, name) is not None, name


def test_readme_quick_start_round_trip(tmp_path: Path) -> None:
    model = build_tiny()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    report = bf.quantize_(model, bf.BitPlan.uniform(bits=4, group_size=64, nested=(2,)), progress=False)
    assert report.totals()["layers"] == 5 and not report.warnings
    path = bf.save(model, tmp_path / "tiny-4bit")
    loaded = bf.load(path, model=build_tiny())
    with torch.no_grad():
        out4 = loaded(x)
        torch.testing.assert_close(out4, model(x))
        bf.set_active_bits(loaded, 2)
        out2 = loaded(x)
    err4 = float((out4 - ref).square().mean() / ref.square().mean())
    err2 = float((out2 - ref).square().mean() / ref.square().mean())
    assert err4 < 0.05 and err4 < err2


def test_errors_share_one_base() -> None:
    with pytest.raises(bf.BitsFusionError, match="bits"):
        bf.QScheme(bits=9)


def test_mixed_precision_flow_as_the_docstring_shows(tmp_path: Path) -> None:
    """measure_sensitivity -> allocate -> quantize_ with calibration data, within the budget, on tiny."""
    from bitsfusion.zoo import get_model_spec

    spec = get_model_spec("tiny")
    model, batches = spec.build(), spec.calibration(2)
    cands = bf.default_candidates((2, 4), group_sizes=(16, None), calibrations=("gptq",))
    table = bf.measure_sensitivity(model, batches, cands, run=spec.run, path=tmp_path / "sens.json", progress=False)
    plan = bf.allocate(table, avg_bits=3.0)
    assert plan.bits_per_weight <= 3.0
    report = bf.quantize_(model, plan.plan(), calibration_data=batches, forward=spec.run, progress=False)
    assert report.totals()["layers"] == len(table.layers)
    assert all("no quantized module" in s.reason for s in report.skipped)
