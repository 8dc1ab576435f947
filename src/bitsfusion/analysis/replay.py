"""Replay cached module outputs so a sensitivity cell re-runs only the part of the model it changes.

Quantizing layer ``L`` cannot change the output of any module call that *finished before
``L`` first ran* (the model is a feed-forward program in eval mode). One reference pass
records, per calibration batch, every call of a set of replayable modules (the root's
children and the entries of every ``ModuleList``/``Sequential``) with its output and its
position in execution order. To measure a cell for ``L``, each outermost replayable module
whose calls all ended before ``L`` started has its ``forward`` replaced by "return the cached
output of this call" (a clone, so in-place ops downstream cannot corrupt the cache). For
a 6-block encoder that skips the embeddings and every block before ``L``'s.

``Replayer.verify`` checks once that a replayed pass equals the reference pass bit for bit;
if it does not (a model with data-dependent control flow, say), replay is disabled.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

__all__ = ["Replayer"]


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_clone(o) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        out = obj.__class__.__new__(obj.__class__)
        for k, v in obj.items():
            out[k] = _clone(v)
        if hasattr(obj, "__dict__"):
            out.__dict__.update({k: v for k, v in obj.__dict__.items() if k not in out.__dict__})
        return out
    return obj


def _replayable(model: nn.Module) -> dict[str, nn.Module]:
    names: dict[str, nn.Module] = dict(model.named_children())
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            for child_name, child in mod.named_children():
                names[f"{name}.{child_name}" if name else child_name] = child
    return names


@dataclass
class _Trace:
    """Per batch: module name -> list of (start, end, output) for each call, in order."""

    calls: list[dict[str, list[tuple[int, int, Any]]]] = field(default_factory=list)
    first_start: list[dict[str, int]] = field(default_factory=list)


class Replayer:
    """Records one reference pass, then replays the unaffected prefix for each target layer."""

    def __init__(self, model: nn.Module, targets: Sequence[str]):
        self.model = model
        self.targets = list(targets)
        self.replayable = _replayable(model)
        self.trace = _Trace()
        self.enabled = True

    def record(
        self,
        run: Callable[[Any], Any],
        batches: Sequence[Any],
        observers: Mapping[str, Callable[[nn.Module, tuple[Any, ...]], None]] | None = None,
    ) -> list[Any]:
        """Run every batch once with hooks; return the outputs of ``run`` per batch.

        ``observers`` maps a target's fqn to a forward pre-hook ``(module, args)`` called on each of
        its calls in this pass (e.g. to accumulate the layer's input second moment), so inputs are
        captured in the same pass that records the trace.
        """
        watched = {**self.replayable, **{t: self.model.get_submodule(t) for t in self.targets}}
        self.trace = _Trace()
        outputs = []
        for batch in batches:
            counter = [0]
            calls: dict[str, list[tuple[int, int, Any]]] = {}
            starts: dict[str, int] = {}
            handles = []
            for name, mod in watched.items():
                handles.append(mod.register_forward_pre_hook(self._pre_hook(name, counter, starts)))
                handles.append(mod.register_forward_hook(self._post_hook(name, counter, starts, calls)))
            for name, hook in (observers or {}).items():
                handles.append(self.model.get_submodule(name).register_forward_pre_hook(hook))
            try:
                with torch.no_grad():
                    outputs.append(run(batch))
            finally:
                for h in handles:
                    h.remove()
            self.trace.calls.append(calls)
            self.trace.first_start.append({n: s for n, s in starts.items()})
        return outputs

    @staticmethod
    def _pre_hook(name: str, counter: list[int], starts: dict[str, int]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            counter[0] += 1
            starts.setdefault(name, counter[0])
            starts[f"__open__{name}"] = counter[0]

        return hook

    @staticmethod
    def _post_hook(name: str, counter: list[int], starts: dict[str, int], calls: dict) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            counter[0] += 1
            # a clone: modules run later may modify the output in place (residual ``+=``)
            calls.setdefault(name, []).append((starts[f"__open__{name}"], counter[0], _clone(output)))

        return hook

    def _skippable(self, target: str, batch_index: int) -> list[str]:
        calls = self.trace.calls[batch_index]
        start = self.trace.first_start[batch_index].get(target)
        if start is None:
            return []
        chosen = [
            n
            for n in self.replayable
            if n in calls and all(end < start for _, end, _ in calls[n]) and not target.startswith(n + ".")
        ]
        return [n for n in chosen if not any(n.startswith(o + ".") for o in chosen if o != n)]

    @contextlib.contextmanager
    def replaying(self, target: str, batch_index: int) -> Iterator[list[str]]:
        """Within the block, modules unaffected by ``target`` return cached outputs for this batch."""
        names = self._skippable(target, batch_index) if self.enabled else []
        patched = []
        try:
            for n in names:
                mod = self.replayable[n]
                queue = iter([out for _, _, out in self.trace.calls[batch_index][n]])
                mod.forward = (lambda q: (lambda *a, **k: _clone(next(q))))(queue)  # type: ignore[method-assign]
                patched.append(mod)
            yield names
        finally:
            for mod in patched:
                del mod.forward

    def verify(self, run: Callable[[Any], Any], batches: Sequence[Any], reference: Sequence[Any]) -> bool:
        """Replay for every target on the first batch must reproduce the reference exactly.

        On the first mismatch replay is disabled (``enabled = False``: every later pass runs the
        whole model) and False is returned. Costs one pass per target on one batch.
        """
        by_skip = {tuple(self._skippable(t, 0)): t for t in self.targets}  # one target per distinct prefix
        with torch.no_grad():
            for target in by_skip.values():
                with self.replaying(target, 0):
                    out = run(batches[0])
                if not _equal(out, reference[0]):
                    self.enabled = False
                    return False
        return True


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return a == b
