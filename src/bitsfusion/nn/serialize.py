"""``save(model, path)`` and ``load(path, model=None)``: a quantized model to an artifact and back.

The artifact (``pack.io``) holds the model's whole ``state_dict`` (quantized layers as their
``{fqn}.qweight``, ``{fqn}.scales``, ... buffers) and a manifest body::

    {"model": {"kind": "transformers" | "diffusers" | "module", "module": "transformers",
               "class": "BertModel", "config": {...}, "source": <caller's JSON, e.g. {"zoo": "minilm"}>},
     "layers": {fqn: QModule.manifest_entry()},
     "tied_tensors": {name: canonical name},     # state-dict entries that are the same tensor
     "cached_modules": {fqn: {"type": ...}},      # only when present: nn.time_cache tables (diffusion UNets)
     "accounting": {"quantized_params", "packed_bytes", "bits_per_weight",
                    "float_params", "float_bytes", "total_bytes"}}

Loading builds a float skeleton, swaps an empty cached-table module in at every ``cached_modules``
entry and an empty quantized shell in at every manifest layer,
and loads the state strictly. The skeleton is the caller's ``model`` when given; otherwise it is
built from the recorded class and config, and only from a class exported by the
``transformers`` or ``diffusers`` package: a file never makes BitsFusion import a module it names.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FormatError
from ..pack.accounting import packed_nbytes
from ..pack.format import MANIFEST_NAME, WEIGHTS_NAME
from ..pack.io import load_artifact, save_artifact
from ..pack.packed import PackedWeight
from ..types import QScheme
from .qmodule import QModule, qmodule_class
from .swap import module_references
from .time_cache import CACHED_MODULES, cached_module_from_entry

__all__ = ["save", "load"]

_LIBRARIES = {"transformers": "PreTrainedModel", "diffusers": "ModelMixin"}
_FIX = "pass the skeleton the artifact was saved from: load(path, model=<the same class and config>)"


# -- save -------------------------------------------------------------------------------------


def _library_class(model: nn.Module) -> str | None:
    """``"transformers"``/``"diffusers"`` when ``type(model)`` is that package's own exported class."""
    cls = type(model)
    for lib, base_name in _LIBRARIES.items():
        pkg = sys.modules.get(lib)  # a model of the library means the library is already imported
        if pkg is None or not cls.__module__.startswith(f"{lib}."):
            continue
        base = getattr(pkg, base_name, None)
        if base is not None and isinstance(model, base) and getattr(pkg, cls.__name__, None) is cls:
            return lib
    return None


def _model_info(model: nn.Module, source: Any) -> dict[str, Any]:
    lib = _library_class(model)
    cls = type(model)
    if lib == "transformers":
        config: Any = model.config.to_dict()  # type: ignore[operator, union-attr]
    elif lib == "diffusers":
        config = dict(model.config)  # type: ignore[call-overload, arg-type]
    else:
        return {"kind": "module", "module": cls.__module__, "class": cls.__qualname__, "source": source}
    return {"kind": lib, "module": lib, "class": cls.__name__, "config": config, "source": source}


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per distinct tensor; ``{alias: canonical}`` for entries that are the same view."""
    seen: dict[tuple[Any, ...], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for name, t in state.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t
    return tensors, tied


def _accounting(layers: dict[str, dict[str, Any]], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    packed: set[str] = set()
    q_params = q_bytes = 0
    for fqn, entry in layers.items():
        scheme, shape = QScheme.from_dict(entry["scheme"]), (entry["shape"][0], entry["shape"][1])
        packed.update(f"{fqn}.{s}" for s in PackedWeight.tensor_specs(scheme, shape))
        q_params += shape[0] * shape[1]
        q_bytes += packed_nbytes(scheme, shape)
    rest = [t for name, t in tensors.items() if name not in packed]
    f_params = sum(t.numel() for t in rest)
    f_bytes = sum(t.numel() * t.element_size() for t in rest)
    return {"quantized_params": q_params, "packed_bytes": q_bytes,
            "bits_per_weight": 8 * q_bytes / q_params if q_params else None,
            "float_params": f_params, "float_bytes": f_bytes, "total_bytes": q_bytes + f_bytes}


def save(model: nn.Module, path: str | os.PathLike[str], *, source: Any = None) -> Path:
    """Write ``model`` (quantized by ``quantize_``, or not) as an artifact directory at ``path``.

    ``source`` is any JSON value recorded as ``model.source`` (e.g. ``{"zoo": "minilm"}``), for
    tools that rebuild the float original. Entries of the state that are the same tensor (tied
    weights, shared modules) are stored once. Returns ``path``; ``ConfigError`` if ``path`` holds
    something other than an artifact or the config is not JSON.
    """
    layers = {fqn: m.manifest_entry() for fqn, m in model.named_modules() if isinstance(m, QModule)}
    tensors, tied = _dedupe(model.state_dict())
    body: dict[str, Any] = {"model": _model_info(model, source), "layers": layers, "tied_tensors": tied,
                            "accounting": _accounting(layers, tensors)}
    cached = {fqn: m.cache_entry() for fqn, m in model.named_modules()  # type: ignore[operator]
              if CACHED_MODULES.get(type(m).__name__) is type(m)}
    if cached:
        body["cached_modules"] = cached
    return save_artifact(path, tensors, body)


# -- load -------------------------------------------------------------------------------------


def _import_library(lib: str) -> Any:
    try:
        return __import__(lib)
    except ImportError:
        raise ConfigError(f"this artifact holds a {lib} model: pip install {lib} to load it, or pass "
                          f"load(path, model=<a skeleton of the model>)") from None


def _recorded_class(info: dict[str, Any], mpath: Path) -> tuple[str, type]:
    """The class the manifest names, looked up only among ``transformers``/``diffusers`` exports."""
    kind, module, name = info.get("kind"), info.get("module"), info.get("class")
    if kind not in _LIBRARIES or module != kind:
        raise FormatError(f"model class {module}.{name} (kind {kind!r}) is not one BitsFusion rebuilds: only "
                          f"classes of {sorted(_LIBRARIES)} are built from a file; build the model yourself "
                          f"and pass load(path, model=...)", path=mpath)
    pkg = _import_library(kind)
    cls = None
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        try:
            cls = getattr(pkg, name, None)
        except Exception:  # a lazy module raises its own errors for missing optional parts
            cls = None
    base = getattr(pkg, _LIBRARIES[kind])
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise FormatError(f"{name!r} is not a {kind}.{_LIBRARIES[kind]} class of the installed {kind} "
                          f"{getattr(pkg, '__version__', '?')}: upgrade {kind}, or pass load(path, model=...)",
                          path=mpath)
    return kind, cls


def _skeleton(info: Any, mpath: Path) -> nn.Module:
    """A float model built from the manifest's class and config (transformers/diffusers only)."""
    if not isinstance(info, dict):
        raise FormatError("'model' must be a JSON object; re-save the artifact", path=mpath)
    if info.get("kind") == "module":
        raise ConfigError(f"{mpath.parent}: the artifact holds a plain nn.Module ({info.get('module')}."
                          f"{info.get('class')}), which BitsFusion does not build from a file: build the float "
                          f"model and pass it, load(path, model=YourModule(...))")
    kind, cls = _recorded_class(info, mpath)
    config = info.get("config")
    if not isinstance(config, dict):
        raise FormatError(f"'model.config' must be a JSON object for a {kind} model", path=mpath)
    try:
        if kind == "transformers":
            model = cls._from_config(cls.config_class.from_dict(config))  # type: ignore[attr-defined]
        else:
            model = cls.from_config(config)  # type: ignore[attr-defined]
    except Exception as e:  # the library's own validation of a config it did not write
        raise FormatError(f"{kind} could not build {cls.__name__} from the recorded config "
                          f"({type(e).__name__}: {e}); pass load(path, model=...)", path=mpath) from None
    return model


def _module_at(model: nn.Module, fqn: str) -> nn.Module | None:
    """The submodule named ``fqn`` (None for the root or a name the model lacks)."""
    try:
        return model.get_submodule(fqn) if fqn else None
    except AttributeError:
        return None


def _swap_in_cached(model: nn.Module, cached: Any, mpath: Path) -> None:
    """Replace the module at each ``cached_modules`` entry by an empty table module of its type."""
    if not isinstance(cached, dict):
        raise FormatError("'cached_modules' must be a JSON object; re-save the artifact", path=mpath)
    refs = module_references(model)
    for fqn, entry in cached.items():
        current = _module_at(model, fqn)
        if current is None:
            raise FormatError(f"cached module '{fqn}' has no module in the model; {_FIX}", path=mpath)
        module = cached_module_from_entry(entry)
        for parent, name in refs[id(current)]:
            setattr(parent, name, module)


def _swap_in_shells(model: nn.Module, layers: Any, mpath: Path) -> None:
    """Replace the module at each manifest layer by an empty quantized shell on its device and dtype."""
    if not isinstance(layers, dict):
        raise FormatError("'layers' must be a JSON object; re-save the artifact", path=mpath)
    refs = module_references(model)
    for fqn, entry in layers.items():
        qcls = qmodule_class(entry.get("type"))
        current = _module_at(model, fqn)
        if current is None:
            raise FormatError(f"layer '{fqn}' ({qcls.__name__}) has no module in the model; {_FIX}", path=mpath)
        if not isinstance(current, qcls) and type(current) is not qcls.float_type:
            raise FormatError(f"layer '{fqn}' is a {qcls.__name__} of a {qcls.float_type.__name__} in the artifact, "
                              f"the model has a {type(current).__name__} there; {_FIX}", path=mpath)
        param = next(current.parameters(), None)
        bias = getattr(current, "bias", None)
        dtype = bias.dtype if isinstance(bias, torch.Tensor) else param.dtype if param is not None else None
        shell = qcls.from_spec(entry, device=None if param is None else param.device, dtype=dtype)
        for parent, name in refs[id(current)]:
            setattr(parent, name, shell)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], wpath: Path) -> None:
    """``load_state_dict(strict=True)``, every mismatch a FormatError naming the tensor and the fix."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise FormatError(f"the model expects this tensor but the artifact does not hold it ({len(missing)} "
                          f"missing in all); {_FIX}", path=wpath, tensor=missing[0])
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise FormatError(f"the artifact holds this tensor but the model has no place for it ({len(unexpected)} "
                          f"unexpected in all); {_FIX}", path=wpath, tensor=unexpected[0])
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise FormatError(f"shape mismatch: the artifact holds {list(t.shape)}, the model expects "
                              f"{list(expected[name].shape)}; {_FIX}", path=wpath, tensor=name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FormatError(f"load_state_dict failed: {e}; {_FIX}", path=wpath) from None


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """The model saved at ``path``, quantized layers as ``QModule``s running at all stored bits, in eval mode.

    ``model``: a float skeleton of the saved model (same class and config; its weights are
    overwritten), modified in place and returned. Required for plain ``nn.Module`` artifacts;
    optional for transformers/diffusers ones, which are rebuilt from the recorded class and config.
    FormatError for a corrupt artifact or a skeleton that does not match it; ConfigError when a
    needed skeleton or library is missing.
    """
    path = Path(path)
    manifest, tensors = load_artifact(path)
    mpath, wpath = path / MANIFEST_NAME, path / WEIGHTS_NAME
    skeleton = model if model is not None else _skeleton(manifest["model"], mpath)
    _swap_in_cached(skeleton, manifest.get("cached_modules", {}), mpath)
    _swap_in_shells(skeleton, manifest["layers"], mpath)
    state = dict(tensors)
    tied = manifest.get("tied_tensors", {})
    if not isinstance(tied, dict):
        raise FormatError("'tied_tensors' must be a JSON object; re-save the artifact", path=mpath)
    for alias, canonical in tied.items():
        if canonical not in tensors:
            raise FormatError(f"'tied_tensors' says it is the tensor '{canonical}', which the artifact does not "
                              f"hold; re-save the artifact", path=mpath, tensor=alias)
        state[alias] = tensors[canonical]
    _load_state(skeleton, state, wpath)
    return skeleton.eval()
