"""measure_sensitivity: each cell is the loss of quantizing one layer alone; resumable; losses; candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bitsfusion.analysis import (
    LOSSES,
    SensitivityTable,
    default_candidates,
    measure_sensitivity,
    scheme_key,
    weight_view,
)
from bitsfusion.errors import ConfigError
from bitsfusion.quant import quantize
from bitsfusion.types import MAX_BALANCED_BITS, QScheme

BITS = (1, 2, 4, 8)  # as in conftest.tiny_table


def _full_run_cell(spec, layer: str, scheme: QScheme, loss: str = "mse") -> float:
    """The oracle: a fresh model, the layer's weight overwritten, every batch run in full."""
    ref_model, model = spec.build(), spec.build()
    mod = model.get_submodule(layer)
    w_hat = quantize(weight_view(mod).float(), scheme).dequantize()
    with torch.no_grad():
        mod.weight.copy_(w_hat.reshape(mod.weight.shape))
    batches = spec.calibration(2)
    return sum(LOSSES[loss](spec.run(ref_model, b), spec.run(model, b)) for b in batches) / len(batches)


@pytest.mark.parametrize("layer", ["stem", "fc1", "head"])
@pytest.mark.parametrize("bits", [1, 4], ids=lambda b: f"{b}bit")
def test_cell_equals_a_full_run_with_only_that_layer_quantized(tiny_spec, tiny_table, layer, bits) -> None:
    scheme = QScheme(bits, grid="asymmetric")
    assert tiny_table.cell(layer, scheme) == pytest.approx(_full_run_cell(tiny_spec, layer, scheme), rel=1e-6)


def test_table_is_complete_monotone_in_bits_and_restores_weights(tiny_spec, tiny_table) -> None:
    assert tiny_table.is_complete() and tiny_table.meta["replay"] is True
    for name in tiny_table.layers:
        losses = [tiny_table.cell(name, s) for s in tiny_table.schemes]
        assert losses[0] > losses[-1] > 0
    model = tiny_spec.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure_sensitivity(model, tiny_spec.calibration(1), [QScheme(2)], run=tiny_spec.run, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Stop(Exception):
    pass


@pytest.mark.parametrize("k", [1, 7, 13], ids=lambda k: f"kill_after_{k}")
def test_interrupted_run_resumes_and_measures_only_missing_cells(tiny_spec, tiny_table, tmp_path, k) -> None:
    path = tmp_path / "sens.json"
    seen: list[tuple[str, str]] = []

    def stop_after_k(layer: str, scheme: QScheme, loss: float) -> None:
        seen.append((layer, scheme_key(scheme)))
        if len(seen) == k:
            raise Stop

    candidates = default_candidates(BITS)
    with pytest.raises(Stop):
        measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), candidates, run=tiny_spec.run,
                            path=path, progress=False, on_cell=stop_after_k)
    partial = SensitivityTable.load(path)
    assert len(partial.missing()) == len(tiny_table.layers) * len(BITS) - k
    rerun: list[tuple[str, str]] = []
    table = measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), candidates, run=tiny_spec.run,
                                path=path, progress=False, on_cell=lambda n, s, _: rerun.append((n, scheme_key(s))))
    assert not set(rerun) & set(seen) and len(rerun) + k == len(tiny_table.layers) * len(BITS)
    assert table.loss == tiny_table.loss
    assert SensitivityTable.load(path).loss == tiny_table.loss


def test_resume_refuses_a_table_for_other_candidates(tiny_spec, tmp_path) -> None:
    path = tmp_path / "sens.json"
    measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [QScheme(2)], run=tiny_spec.run,
                        path=path, progress=False)
    with pytest.raises(ConfigError, match="another metric or candidate list"):
        measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [QScheme(3)], run=tiny_spec.run,
                            path=path, progress=False)


@pytest.mark.parametrize("loss", ["mse", "cosine", "kl", "callable"])
def test_losses_by_name_and_callable(tiny_spec, loss) -> None:
    fn = (lambda r, c: float((r - c).abs().max())) if loss == "callable" else loss
    table = measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [QScheme(1), QScheme(8)],
                                run=tiny_spec.run, loss=fn, include=lambda n, _: n == "head", progress=False)
    one, eight = (table.cell("head", s) for s in table.schemes)
    assert one > eight >= 0
    assert table.metric == ("<lambda>" if loss == "callable" else loss)


def test_bad_inputs_raise_config_error(tiny_spec) -> None:
    model, batches = tiny_spec.build(), tiny_spec.calibration(1)
    with pytest.raises(ConfigError, match="unknown loss"):
        measure_sensitivity(model, batches, [QScheme(2)], run=tiny_spec.run, loss="l7")
    with pytest.raises(ConfigError, match="calibration batch"):
        measure_sensitivity(model, [], [QScheme(2)], run=tiny_spec.run)
    with pytest.raises(ConfigError, match="no quantizable layers"):
        measure_sensitivity(model, batches, [QScheme(2)], run=tiny_spec.run, include=lambda n, _: False)


@pytest.mark.parametrize("grid", ["asymmetric", "symmetric", "balanced"])
def test_default_candidates(grid) -> None:
    cands = default_candidates(grid=grid, calibrations=("none",))
    top = MAX_BALANCED_BITS if grid == "balanced" else 8
    assert [s.bits for s in cands] == [1, 2, 3, 4, 5, 6, top]
    assert {s.grid.value for s in cands} == {grid}


def test_table_json_round_trip_and_malformed(tiny_table, tmp_path) -> None:
    path = tiny_table.save(tmp_path / "t.json")
    again = SensitivityTable.load(path)
    assert again.to_dict() == json.loads(json.dumps(tiny_table.to_dict()))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "bitsfusion.sensitivity/1", "schemes": []}))
    with pytest.raises(ConfigError, match="malformed"):
        SensitivityTable.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        SensitivityTable.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="no cell"):
        tiny_table.cell("stem", "asym3/g64/als")


@pytest.mark.parametrize("layer", ["stem", "fc2"])
def test_calibrated_cell_uses_the_layers_input_hessian(tiny_spec, layer) -> None:
    from bitsfusion.nn.calibrate import collect_hessians

    scheme = QScheme(2, grid="asymmetric", calibration="gptq")
    batches = tiny_spec.calibration(2)
    table = measure_sensitivity(tiny_spec.build(), batches, [scheme], run=tiny_spec.run,
                                include=lambda n, _: n == layer, progress=False)
    ref_model, model = tiny_spec.build(), tiny_spec.build()
    h = collect_hessians(model, batches, names=[layer], progress=False)[layer]
    mod = model.get_submodule(layer)
    w_hat = quantize(weight_view(mod).float(), scheme, hessian=h).dequantize()
    with torch.no_grad():
        mod.weight.copy_(w_hat.reshape(mod.weight.shape))
    oracle = sum(LOSSES["mse"](tiny_spec.run(ref_model, b), tiny_spec.run(model, b)) for b in batches) / 2
    assert table.cell(layer, scheme) == pytest.approx(oracle, rel=1e-5)


def test_merged_tables_hold_both_candidate_lists(tiny_spec, tiny_table) -> None:
    extra = measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), [QScheme(3, grid="asymmetric")],
                                run=tiny_spec.run, progress=False)
    both = tiny_table.merged(extra)
    assert [scheme_key(s) for s in both.schemes][-1] == "asym3/g64/als" and both.is_complete()
    assert both.cell("fc1", "asym3/g64/als") == extra.cell("fc1", "asym3/g64/als")
    assert both.cell("fc1", "asym2/g64/als") == tiny_table.cell("fc1", "asym2/g64/als")
    with pytest.raises(ConfigError, match="same layers and metric"):
        tiny_table.merged(measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [QScheme(3)],
                                              run=tiny_spec.run, loss="cosine", progress=False))


def test_resume_refuses_other_calibration_batches(tiny_spec, tmp_path) -> None:
    path = tmp_path / "sens.json"
    measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [QScheme(2)], run=tiny_spec.run,
                        path=path, progress=False)
    with pytest.raises(ConfigError, match="other calibration batches"):
        measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), [QScheme(2)], run=tiny_spec.run,
                            path=path, progress=False)


def test_default_candidates_with_competing_group_sizes() -> None:
    cands = default_candidates((2, 3), group_sizes=(64, 128, None, 64), calibrations=("none", "gptq"))
    assert [(s.calibration.value, s.group_size, s.bits) for s in cands] == [
        (c, g, b) for c in ("none", "gptq") for g in (64, 128, None) for b in (2, 3)]
    with pytest.raises(ConfigError, match="group_sizes is empty"):
        default_candidates((2,), group_sizes=())


@pytest.mark.parametrize("layer", ["stem", "fc2"])
def test_hessians_from_their_own_batches(tiny_spec, layer) -> None:
    """With ``hessian_batches`` the calibrated cell uses H of those batches; the loss stays on ``batches``."""
    from bitsfusion.nn.calibrate import collect_hessians

    scheme = QScheme(2, grid="asymmetric", calibration="gptq")
    batches, h_batches = tiny_spec.calibration(1), tiny_spec.calibration(3)
    table = measure_sensitivity(tiny_spec.build(), batches, [scheme], run=tiny_spec.run, hessian_batches=h_batches,
                                include=lambda n, _: n == layer, progress=False)
    assert table.meta["batches"] == 1 and table.meta["hessian_batches"] == 3
    ref_model, model = tiny_spec.build(), tiny_spec.build()
    h = collect_hessians(model, h_batches, names=[layer], progress=False)[layer]
    mod = model.get_submodule(layer)
    w_hat = quantize(weight_view(mod).float(), scheme, hessian=h).dequantize()
    with torch.no_grad():
        mod.weight.copy_(w_hat.reshape(mod.weight.shape))
    oracle = LOSSES["mse"](tiny_spec.run(ref_model, batches[0]), tiny_spec.run(model, batches[0]))
    assert table.cell(layer, scheme) == pytest.approx(oracle, rel=1e-5)


def test_resume_refuses_other_hessian_batches(tiny_spec, tmp_path) -> None:
    path, scheme = tmp_path / "sens.json", QScheme(2, grid="asymmetric", calibration="gptq")
    measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [scheme], run=tiny_spec.run,
                        hessian_batches=tiny_spec.calibration(2), path=path, progress=False)
    with pytest.raises(ConfigError, match="other calibration batches"):
        measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [scheme], run=tiny_spec.run,
                            hessian_batches=tiny_spec.calibration(3), path=path, progress=False)
    with pytest.raises(ConfigError, match="hessian_batches is empty"):
        measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(1), [scheme], run=tiny_spec.run,
                            hessian_batches=[], progress=False)


@pytest.mark.parametrize("proxy", ["input_weighted", "hawq"])
def test_proxy_tables_need_no_pass_per_cell(tiny_spec, tiny_table, proxy) -> None:
    """``loss="proxy:..."``: cells are the proxy values a measured table records beside its losses."""
    calls = {"n": 0}

    def counting_run(model, batch):
        calls["n"] += 1
        return tiny_spec.run(model, batch)

    batches = tiny_spec.calibration(2)
    table = measure_sensitivity(tiny_spec.build(), batches, tiny_table.schemes, run=counting_run,
                                loss=f"proxy:{proxy}", progress=False)
    assert table.metric == f"proxy:{proxy}" and table.is_complete()
    cells = len(table.layers) * len(table.schemes)
    assert calls["n"] < cells, (calls, cells)  # reference pass and replay checks only, none per cell
    for name in table.layers:
        for key, value in table.loss[name].items():
            assert value == pytest.approx(tiny_table.proxies[proxy][name][key], rel=1e-6)
    assert "proxy_spearman" not in table.meta
    with pytest.raises(ConfigError, match="unknown proxy"):
        measure_sensitivity(tiny_spec.build(), batches, [QScheme(2)], run=tiny_spec.run, loss="proxy:magic")


def test_without_proxies_no_hessian_is_kept_and_the_losses_are_the_same(tiny_spec, tiny_table, monkeypatch) -> None:
    from bitsfusion.analysis import proxies as proxies_module

    made = []
    real = proxies_module.InputMoments.__init__

    def spy(self, *a, **kw):
        made.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(proxies_module.InputMoments, "__init__", spy)
    bare = measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), default_candidates(BITS),
                               run=tiny_spec.run, progress=False, proxies=False)
    assert not made
    assert bare.loss == tiny_table.loss
    assert bare.proxies == {} and "proxy_spearman" not in bare.meta
    gptq = default_candidates((2,), calibrations=("gptq",))
    with_h = measure_sensitivity(tiny_spec.build(), tiny_spec.calibration(2), gptq, run=tiny_spec.run,
                                 progress=False, proxies=False)
    assert made and with_h.is_complete()  # a calibrated candidate still gets its Hessian
