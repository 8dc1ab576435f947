"""``quantize_(model, plan)``: swap every planned layer for its quantized module, in place; the report.

For each module, in ``named_modules`` order, the plan (``BitPlan.resolve``) decides:

- a registered type (``nn.Linear``, ``nn.Conv2d``) with a scheme -> quantized (``QModule.from_float``);
- a registered type the plan maps to None -> skipped, "plan keeps it float", with the rule that said so;
- a leaf module owning parameters of an unregistered type (``Embedding``, ``LayerNorm``) -> skipped,
  "no quantized module for this type" (containers and parameter-free modules are not listed);
- a module already quantized -> skipped, so running ``quantize_`` twice is harmless;
- a registered type in a configuration no quantized module takes (``UnsupportedLayer``, e.g.
  ``Conv2d(padding_mode='reflect')``) -> skipped with that message;
- a calibrated scheme (``QScheme.calibration``: GPTQ, AWQ) for a layer with no input Hessian in
  ``hessians`` -> skipped, "calibrated scheme without an input Hessian", with the fix.

Calibrated schemes read ``hessians[fqn]`` (``collect_hessians``). ``calibration_data=batches``
collects them first, from the float model, for the planned calibrated layers only (one pass over
the batches before any layer is swapped). ``sequential=True`` instead fits the calibrated layers one stage
at a time in forward order on the partly quantized model's inputs (``nn.sequential``).

A module reachable under several names (shared) is quantized once, under its first name, and
every reference to it is swapped. An exact plan rule that names no module of the model is
reported as a warning (a typo would otherwise silently leave a layer in the default scheme).
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedLayer
from ..pack.accounting import bits_per_weight, packed_nbytes
from ..plan import BitPlan
from ..types import QScheme
from .calibrate import collect_hessians, hessian_unsupported
from .precision import SwitchablePrecision
from .qmodule import QModule, qmodule_for, registered_float_types
from .sequential import MIN_ROWS_PER_INPUT, first_call_order, stage_statistics, target_weight

__all__ = ["quantize_", "apply_plan", "LayerBuilder", "QuantizeReport", "QuantizedLayer", "SkippedModule", "module_references"]

PROGRESS_MIN_LAYERS = 5
SKIP_PLAN = "plan keeps it float"
SKIP_NO_QMODULE = "no quantized module for this type"
SKIP_ALREADY = "already quantized"
SKIP_FILTER = "excluded by filter_fn"
SKIP_NO_HESSIAN = "calibrated scheme without an input Hessian"


@dataclass(frozen=True)
class QuantizedLayer:
    """One swapped layer: its packed size counts planes, scales, zeros and nested scales (bias excluded)."""

    fqn: str
    type: str
    scheme: QScheme
    shape: tuple[int, int]
    nbytes: int
    bits_per_weight: float
    weight_error: float
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "type": self.type, "scheme": self.scheme.to_dict(), "shape": list(self.shape),
                "nbytes": self.nbytes, "bits_per_weight": self.bits_per_weight,
                "weight_error": self.weight_error, "rule": self.rule}


@dataclass(frozen=True)
class SkippedModule:
    """A module left as it was, with why (``reason``) and, when the plan decided, the ``rule``."""

    fqn: str
    type: str
    reason: str
    rule: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"fqn": self.fqn, "type": self.type, "reason": self.reason, "rule": self.rule}


@dataclass
class QuantizeReport:
    """What ``quantize_`` did: quantized layers, skipped modules, warnings."""

    quantized: list[QuantizedLayer] = field(default_factory=list)
    skipped: list[SkippedModule] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        """``layers``, ``quantized_params``, ``packed_bytes``, ``bits_per_weight`` (stored, every overhead)."""
        params = sum(q.shape[0] * q.shape[1] for q in self.quantized)
        nbytes = sum(q.nbytes for q in self.quantized)
        return {"layers": len(self.quantized), "skipped": len(self.skipped), "quantized_params": params,
                "packed_bytes": nbytes, "bits_per_weight": 8 * nbytes / params if params else None}

    def summary(self) -> str:
        """One line of totals, plus one line per warning."""
        t = self.totals()
        bpw = "-" if t["bits_per_weight"] is None else f"{t['bits_per_weight']:.3f}"
        lines = [f"quantized {t['layers']} layers ({t['quantized_params']:,} weights) into {t['packed_bytes']:,} "
                 f"bytes, {bpw} bits per weight (scales, zeros and padding counted); "
                 f"{t['skipped']} modules skipped"]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "quantized": [q.to_dict() for q in self.quantized],
                "skipped": [s.to_dict() for s in self.skipped], "warnings": list(self.warnings)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def module_references(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """For every module object, each ``(parent, attribute)`` holding it (shared modules have several)."""
    refs: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is not None:
                refs.setdefault(id(child), []).append((parent, name))
    return refs


def _owns_parameters(module: nn.Module) -> bool:
    return next(iter(module.parameters(recurse=False)), None) is not None


def _typo_warnings(model: nn.Module, plan: BitPlan) -> list[str]:
    names = [name for name, _ in model.named_modules(remove_duplicate=False)]
    known = set(names)
    out = []
    for key, _ in plan.items():
        if key.startswith("re:") or key in known:
            continue
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        out.append(f"plan rule '{key}' names no module of the model{hint}")
    return out


def _progress(total: int, enabled: bool, verb: str = "quantizing") -> Any:
    if not enabled or total < PROGRESS_MIN_LAYERS:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(verb + " {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True)


LayerBuilder = Callable[[type[QModule], nn.Module, QScheme, "torch.Tensor | None"], nn.Module]
"""``build(qcls, module, scheme, hessian) -> new module``: what a planned layer is swapped for."""


def _pack(qcls: type[QModule], module: nn.Module, scheme: QScheme, hessian: torch.Tensor | None) -> nn.Module:
    return qcls.from_float(module, scheme, hessian=hessian)


def quantize_(
    model: nn.Module,
    plan: BitPlan,
    *,
    progress: bool = True,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    hessians: Mapping[str, torch.Tensor] | None = None,
    calibration_data: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    sequential: bool = False,
) -> QuantizeReport:
    """Quantize ``model`` in place by ``plan``; return what was quantized and what was skipped, and why.

    ``filter_fn(fqn, module) -> bool``, when given, must also accept a layer for it to be
    quantized (a layer it rejects is skipped, "excluded by filter_fn"). The root module itself
    cannot be swapped in place (wrap it, e.g. ``nn.Sequential(layer)``). A transient rich
    progress bar is shown when ``progress`` and at least ``PROGRESS_MIN_LAYERS`` layers are due.

    ``hessians``: ``{fqn: H}`` (float ``[K, K]``, from ``collect_hessians``) for layers whose scheme
    is calibrated; such a layer without one is skipped with the reason. ``calibration_data``
    (batches for ``forward(model, batch)``, see ``collect_hessians``) collects them here instead;
    giving both is a ``ConfigError``.

    ``sequential=True`` (needs ``calibration_data``) quantizes the calibrated layers in forward order, each
    from its inputs in the partly quantized model and toward the float model's output (``nn.sequential``):
    slower (two passes over the batches per stage) and better at 3 bits and below. A layer's
    ``weight_error`` is then measured against that target weight.
    """
    return apply_plan(model, plan, _pack, progress=progress, filter_fn=filter_fn, hessians=hessians,
                      calibration_data=calibration_data, forward=forward, sequential=sequential)


def apply_plan(
    model: nn.Module,
    plan: BitPlan,
    build: LayerBuilder,
    *,
    progress: bool = True,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    hessians: Mapping[str, torch.Tensor] | None = None,
    calibration_data: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    verb: str = "quantizing",
    sequential: bool = False,
) -> QuantizeReport:
    """``quantize_``'s walk with another ``build``: every planned layer is swapped for what ``build`` returns.

    ``train.qat.prepare`` swaps in fake-quant layers this way, so both see the same layers, skips,
    Hessians and report. The built module must have ``scheme``, ``shape`` and ``weight_error``.
    """
    caller = "quantize_" if build is _pack else "prepare"
    if calibration_data is not None and hessians is not None:
        raise ConfigError(f"{caller}: pass hessians= or calibration_data=, not both")
    if sequential and calibration_data is None:
        raise ConfigError(f"{caller}: sequential=True fits each layer on calibration batches; pass "
                          "calibration_data=batches (hessians= describe the float model only)")
    report = QuantizeReport(warnings=_typo_warnings(model, plan))
    refs = module_references(model)
    todo: list[tuple[str, nn.Module, QScheme, str]] = []
    for fqn, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, SwitchablePrecision):  # packed, or fake-quant in training
            report.skipped.append(SkippedModule(fqn, kind, SKIP_ALREADY))
        elif qmodule_for(module) is None:
            if _owns_parameters(module) and not any(True for _ in module.children()):
                registered = ", ".join(t.__name__ for t in registered_float_types())
                report.skipped.append(SkippedModule(fqn, kind, f"{SKIP_NO_QMODULE} (quantized: {registered})"))
        elif (scheme := plan.resolve(fqn)) is None:
            report.skipped.append(SkippedModule(fqn, kind, SKIP_PLAN, plan.explain(fqn)))
        elif filter_fn is not None and not filter_fn(fqn, module):
            report.skipped.append(SkippedModule(fqn, kind, SKIP_FILTER, plan.explain(fqn)))
        elif fqn == "":
            report.skipped.append(SkippedModule(fqn, kind, "the root module cannot be swapped in place; "
                                                "wrap it, e.g. nn.Sequential(layer)", plan.explain(fqn)))
        else:
            todo.append((fqn, module, scheme, plan.explain(fqn)))
    if sequential:
        assert calibration_data is not None
        _apply_sequential(report, refs, todo, model, list(calibration_data), forward, build, progress, verb)
        return report
    if calibration_data is not None:
        wanted = [fqn for fqn, m, sc, _ in todo if sc.calibration.uses_inputs and hessian_unsupported(m) is None]
        hessians = collect_hessians(model, calibration_data, forward=forward, names=wanted, progress=progress)
    bar = _progress(len(todo), progress, verb)
    if bar is not None:
        bar.start()
        task = bar.add_task("", total=len(todo))
    try:
        for fqn, module, scheme, rule in todo:
            if bar is not None:
                bar.update(task, description=fqn)
            _swap_one(report, refs, fqn, module, scheme, rule, hessians, build)
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return report


def _apply_sequential(
    report: QuantizeReport, refs: dict[int, list[tuple[nn.Module, str]]],
    todo: list[tuple[str, nn.Module, QScheme, str]], model: nn.Module, batches: list[Any],
    forward: Callable[[nn.Module, Any], Any] | None, build: LayerBuilder, progress: bool, verb: str,
) -> None:
    """``apply_plan`` with ``sequential=True``: see ``nn.sequential``."""
    if not batches:
        raise ConfigError("sequential calibration got no calibration batches; pass a non-empty list of model inputs")
    fitted = {fqn: m for fqn, m, sc, _ in todo if sc.calibration.uses_inputs and hessian_unsupported(m) is None}
    swapped: dict[str, tuple[nn.Module, nn.Module]] = {}  # fqn -> (float original, its replacement)

    def install(which: int) -> None:
        for pair in swapped.values():
            for parent, name in refs[id(pair[0])]:
                setattr(parent, name, pair[which])

    for fqn, module, scheme, rule in todo:  # schemes that read no inputs go first: every stage sees them quantized
        if fqn not in fitted:
            q = _swap_one(report, refs, fqn, module, scheme, rule, None, build)
            if q is not None:
                swapped[fqn] = (module, q)
    stages, repeated = first_call_order(model, fitted, batches[0], forward)
    entries = {fqn: (module, scheme, rule) for fqn, module, scheme, rule in todo}
    bar = _progress(len(stages), progress, verb + " (sequential)")
    if bar is not None:
        bar.start()
        task = bar.add_task("", total=len(stages))
    try:
        for stage in stages:
            if bar is not None:
                bar.update(task, description=stage[0])
            lead = fitted[stage[0]]
            h, c, rows = stage_statistics(model, lead, batches, lambda: install(0), lambda: install(1),
                                          forward=forward, stop_early=not any(f in repeated for f in stage))
            if rows < MIN_ROWS_PER_INPUT * h.shape[0]:
                report.warnings.append(
                    f"sequential calibration fitted {', '.join(stage)} on {rows} input rows for {h.shape[0]} inputs; "
                    f"with fewer than {MIN_ROWS_PER_INPUT} rows per input the target weight follows the batches "
                    "(measured: worse than sequential=False); give more calibration batches")
            for fqn in stage:
                module, scheme, rule = entries[fqn]
                qcls = qmodule_for(module)
                assert qcls is not None
                source = copy.deepcopy(module)
                with torch.no_grad():
                    w = qcls.weight_matrix(module)
                    source.weight.copy_(target_weight(w, h, c).to(w.dtype).view_as(source.weight))
                q = _swap_one(report, refs, fqn, module, scheme, rule, {fqn: h.to(torch.float32)}, build,
                              source=source)
                if q is not None:
                    swapped[fqn] = (module, q)
            if bar is not None:
                bar.advance(task)
    finally:
        install(1)
        if bar is not None:
            bar.stop()
    reached = {fqn for stage in stages for fqn in stage}
    for fqn, module, scheme, rule in todo:
        if fqn in fitted and fqn not in reached:
            report.skipped.append(SkippedModule(fqn, type(module).__name__, f"{SKIP_NO_HESSIAN} "
                                                f"({scheme.calibration.value}): no calibration batch reaches it",
                                                rule))


def _swap_one(
    report: QuantizeReport, refs: dict[int, list[tuple[nn.Module, str]]], fqn: str, module: nn.Module,
    scheme: QScheme, rule: str, hessians: Mapping[str, torch.Tensor] | None, build: LayerBuilder,
    source: nn.Module | None = None,
) -> nn.Module | None:
    """Swap ``module`` (every reference to it) for ``build``'s result and report it; None when skipped.
    ``source``: the module ``build`` quantizes instead of ``module`` (a copy holding another weight)."""
    qcls = qmodule_for(module)
    assert qcls is not None
    hessian = None
    if scheme.calibration.uses_inputs:
        hessian = None if hessians is None else hessians.get(fqn)
        if hessian is None:
            why = hessian_unsupported(module)
            fix = (f"({why})" if why is not None else "pass hessians=collect_hessians(model, batches) or "
                   "calibration_data=batches to quantize_")
            report.skipped.append(SkippedModule(fqn, type(module).__name__, f"{SKIP_NO_HESSIAN} "
                                                f"({scheme.calibration.value}): {fix}", rule))
            return None
    try:
        q = build(qcls, module if source is None else source, scheme, hessian)
    except UnsupportedLayer as e:
        report.skipped.append(SkippedModule(fqn, type(module).__name__, f"unsupported: {e}", rule))
        return None
    for parent, name in refs[id(module)]:
        setattr(parent, name, q)
    report.quantized.append(QuantizedLayer(
        fqn=fqn, type=type(module).__name__, scheme=scheme, shape=q.shape,  # type: ignore[arg-type]
        nbytes=packed_nbytes(scheme, q.shape),  # type: ignore[arg-type]
        bits_per_weight=bits_per_weight(scheme, q.shape), weight_error=float(q.weight_error), rule=rule,  # type: ignore[arg-type]
    ))
    return q
