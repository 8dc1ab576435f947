"""From what a user types to a model: ``resolve_model("minilm" | DIR | "pkg.module:factory")``.

Accepted forms, tried in this order:

1. a bundled model name (``minilm``, ``tiny``): ``spec.build()``; source ``{"zoo": name}``;
2. ``pkg.module:factory``: the function is imported and called with no arguments; it returns
   an ``nn.Module`` or a ``ModelSpec``; source ``{"factory": "pkg.module:factory"}``;
3. a local directory with ``config.json``: a diffusers model when the config has
   ``_diffusers_version`` (diffusers is imported only then), else a transformers model loaded
   with ``AutoModel`` offline; source ``{"path": "/abs/dir", "kind": "transformers"|"diffusers"}``.

The source is stored in the artifact's manifest so ``rebuild(source)`` can make the float
original again (to evaluate against, or as the skeleton to load into).
Models that are not bundled are judged by ``generic_spec``: output cosine, MSE and SQNR on
fixed inputs (``example_inputs``).
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..analysis.metrics import cosine_stats, output_mse, sqnr_db
from ..errors import ConfigError
from .registry import ModelSpec, get_model_spec, model_names

__all__ = ["resolve_model", "rebuild", "generic_spec", "example_inputs", "run_model", "accepted_forms"]

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_SEED = 1234


def accepted_forms() -> str:
    """The forms a model argument may take, for error messages and ``--help``."""
    return (f"a bundled model name ({', '.join(model_names())}), a transformers model directory (with config.json), "
            "a diffusers model directory (config.json with _diffusers_version), "
            "or a Python factory 'pkg.module:function' returning an nn.Module or a ModelSpec")


def resolve_model(text: str) -> tuple[nn.Module, dict[str, Any], ModelSpec | None]:
    """``(model, source, spec)``: the model in eval mode, its JSON source, its ``ModelSpec`` if it has one."""
    if not isinstance(text, str) or not text:
        raise ConfigError(f"a model must be named by a non-empty string; accepted: {accepted_forms()}")
    if text in model_names():
        spec = get_model_spec(text)
        return spec.build().eval(), {"zoo": text}, spec
    if _FACTORY.fullmatch(text) and not Path(text).exists():
        model, spec = _from_factory(text)
        return model, {"factory": text}, spec
    path = Path(text)
    if path.is_dir():
        kind, model = _from_directory(path)
        return model, {"path": str(path.resolve()), "kind": kind}, None
    what = "is a file, not a directory" if path.exists() else "is not a bundled model, a directory or a factory"
    raise ConfigError(f"model {text!r} {what}; accepted: {accepted_forms()}")


def rebuild(source: Any) -> tuple[nn.Module, ModelSpec | None]:
    """The float original named by an artifact's ``source`` (what ``resolve_model`` returned)."""
    if isinstance(source, dict) and len(source) >= 1:
        for key in ("zoo", "factory", "path"):
            if isinstance(source.get(key), str):
                model, _, spec = resolve_model(source[key])
                return model, spec
    raise ConfigError(f"the artifact's model source {source!r} names no model to rebuild; "
                      "pass the original with --model (accepted: " + accepted_forms() + ")")


def _from_factory(text: str) -> tuple[nn.Module, ModelSpec | None]:
    module_name, func_name = text.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"factory {text!r}: cannot import module {module_name!r} ({e}); "
                          f"accepted: {accepted_forms()}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"factory {text!r}: module {module_name!r} has no callable {func_name!r}; "
                          f"accepted: {accepted_forms()}")
    try:
        made = func()
    except Exception as e:  # the user's code: any failure is reported as theirs, in one line
        raise ConfigError(f"factory {text!r} failed when called with no arguments: {type(e).__name__}: {e}") from None
    if isinstance(made, ModelSpec):
        return made.build().eval(), made
    if isinstance(made, nn.Module):
        return made.eval(), None
    raise ConfigError(f"factory {text!r} returned {type(made).__name__}; it must return an nn.Module or a ModelSpec")


def _from_directory(path: Path) -> tuple[str, nn.Module]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        hint = (" (it is a diffusers pipeline: point to one model's folder, e.g. its unet/)"
                if (path / "model_index.json").is_file() else "")
        raise ConfigError(f"model directory {str(path)!r} has no config.json{hint}; accepted: {accepted_forms()}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg_file}: not valid JSON ({e})") from None
    if isinstance(config, dict) and "_diffusers_version" in config:
        return "diffusers", _load_diffusers(path, config)
    return "transformers", _load_transformers(path)


def _load_transformers(path: Path) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{path} is a transformers model directory: pip install transformers") from None
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"transformers could not load {str(path)!r}: {str(e).splitlines()[0]}") from None
    return model.eval()


def _load_diffusers(path: Path, config: dict[str, Any]) -> nn.Module:
    try:
        diffusers = importlib.import_module("diffusers")
    except ImportError:
        raise ConfigError(f"{path} is a diffusers model directory (config.json has _diffusers_version): "
                          "pip install diffusers") from None
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None:
        raise ConfigError(f"{path}/config.json: _class_name {config.get('_class_name')!r} is not a diffusers class")
    try:
        model = cls.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"diffusers could not load {str(path)!r}: {str(e).splitlines()[0]}") from None
    return model.eval()


def example_inputs(model: nn.Module, n: int = 8, seed: int = _SEED) -> Any:
    """Fixed inputs for a model with no evaluator: its own ``example_inputs()``, else inferred from ``seed``.

    Inference: a transformers model gets ``input_ids`` int64 ``[n, 32]`` over its vocabulary; any
    other model is fed by its first leaf layer: ``Linear`` -> float32 ``[n, in_features]``,
    ``Conv2d`` -> ``[n, in_channels, 32, 32]``, ``Embedding`` -> int64 ``[n, 16]``.
    """
    own = getattr(model, "example_inputs", None)
    if callable(own):
        return own()
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and getattr(model, "main_input_name", None) == "input_ids":
        ids = torch.randint(0, vocab, (n, 32), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.randn(n, module.in_features, generator=g)
        if isinstance(module, nn.Conv2d):
            return torch.randn(n, module.in_channels, 32, 32, generator=g)
        if isinstance(module, nn.Embedding):
            return torch.randint(0, module.num_embeddings, (n, 16), generator=g)
    raise ConfigError(f"cannot guess inputs for {type(model).__name__}: give it an example_inputs() method, "
                      "or make the factory return a ModelSpec with an evaluator")


def run_model(model: nn.Module, batch: Any) -> torch.Tensor:
    """The model's first output tensor, float32 (dict batches are keyword arguments)."""
    with torch.inference_mode():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
    if hasattr(out, "last_hidden_state") and out.last_hidden_state is not None:
        out = out.last_hidden_state
    elif hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{type(model).__name__} returned no tensor to evaluate; give it a ModelSpec")
    return out.float()


def _output_evaluate(reference: nn.Module, candidate: nn.Module) -> dict[str, float]:
    batch = example_inputs(reference)
    ref, cand = run_model(reference, batch), run_model(candidate, batch)
    cos = cosine_stats(ref, cand)
    return {"mean_cos": cos["mean"], "p5_cos": cos["p5"], "mse": output_mse(ref, cand), "sqnr_db": sqnr_db(ref, cand)}


def generic_spec(name: str, build: Callable[[], nn.Module]) -> ModelSpec:
    """A ``ModelSpec`` for a model with no evaluator: output cosine/MSE/SQNR on ``example_inputs``.

    Its calibration batches are ``example_inputs`` drawn from seeds other than the evaluation's.
    """

    def calibration(n: int) -> list[Any]:
        model = build()
        return [example_inputs(model, seed=_SEED + 1 + i) for i in range(n)]

    return ModelSpec(
        name=name,
        description=f"{name} (no bundled evaluator: output similarity on fixed inputs)",
        build=build,
        calibration=calibration,
        evaluate=_output_evaluate,
        run=run_model,
    )
