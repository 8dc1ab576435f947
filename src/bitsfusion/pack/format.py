"""The BitsFusion artifact format: names, the manifest schema, and its validation.

An artifact is a directory holding two files (``docs/FORMAT.md`` describes every byte):

- ``model.safetensors``: every tensor of the model state. A quantized layer ``fqn`` stores the
  tensors ``PackedWeight.tensor_specs`` names as ``{fqn}.{suffix}`` (``qweight``, ``scales``,
  ``zeros``, ``scales_b{b'}``, ``zeros_b{b'}``); everything else keeps its state-dict name.
- ``bitsfusion.json``: the manifest, a JSON object::

      {"format": "bitsfusion", "format_version": 1, "library_version": "0.1.0",
       "model": {...},                                   # caller's: kind, class, config
       "layers": {fqn: {"scheme": QScheme.to_dict(), "shape": [N, K], ...caller's extras}},
       "tensors": {name: {"dtype": "U8", "shape": [...], "sha256": "<hex of the raw bytes>"}},
       "accounting": {...}}                              # caller's

``build_manifest`` writes the parts this module owns (format, versions, tensor table);
``validate_manifest`` checks a manifest against the tensors of its file and raises a
``FormatError`` naming the file, the tensor or key, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, FormatError
from ..types import QScheme
from .packed import PackedWeight

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "DTYPE_NAMES",
    "RESAVE_HINT",
    "dtype_name",
    "library_version",
    "tensor_sha256",
    "tensor_entry",
    "build_manifest",
    "check_format_version",
    "validate_manifest",
]

FORMAT_NAME = "bitsfusion"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_NAME = "bitsfusion.json"
WEIGHTS_NAME = "model.safetensors"

# torch dtype <-> safetensors dtype string, for every dtype an artifact may hold.
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}
TORCH_DTYPES: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_PACKED_SUFFIX = re.compile(r"(.+)\.(qweight|scales|zeros|scales_b\d+|zeros_b\d+)")
_OWNED_KEYS = ("format", "format_version", "library_version", "tensors")
RESAVE_HINT = "re-save the artifact from the model"


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors name of ``dtype`` (``torch.uint8 -> "U8"``); ConfigError if an artifact cannot hold it."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ConfigError(
            f"dtype {dtype} cannot be stored in a BitsFusion artifact; supported: {sorted(TORCH_DTYPES)}"
        ) from None


def library_version() -> str:
    """The installed BitsFusion version (read from package metadata, so ``pack`` never imports the API)."""
    try:
        return metadata.version("bitsfusion")
    except metadata.PackageNotFoundError:
        return "unknown"


def tensor_sha256(t: torch.Tensor) -> str:
    """Hex SHA-256 of the tensor's raw bytes, row-major, little-endian: exactly its bytes in the file."""
    flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(flat.numpy()).hexdigest()


def tensor_entry(t: torch.Tensor) -> dict[str, Any]:
    """The manifest's record of one tensor: ``{"dtype", "shape", "sha256"}``."""
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "sha256": tensor_sha256(t)}


def build_manifest(body: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The full manifest: ``body`` (``model``, ``layers``, ``accounting``, extras) plus what the format owns.

    Adds ``format``, ``format_version``, ``library_version`` and the ``tensors`` table (dtype,
    shape and SHA-256 of every tensor, sorted by name). The result is returned as it reads back
    from JSON (tuples become lists), so it compares equal to what ``load_artifact`` returns.
    Raises ``ConfigError`` if ``body`` sets a key the format owns or is not JSON-serialisable.
    """
    if not isinstance(body, Mapping):
        raise ConfigError(f"the manifest body must be a mapping, got {type(body).__name__}")
    owned = sorted(set(_OWNED_KEYS) & set(body))
    if owned:
        raise ConfigError(f"the manifest body must not set {owned}: build_manifest writes them")
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "model": body.get("model", {}),
        "layers": body.get("layers", {}),
    }
    manifest.update({k: v for k, v in body.items() if k not in manifest and k != "accounting"})
    manifest["tensors"] = {name: tensor_entry(tensors[name]) for name in sorted(tensors)}
    manifest["accounting"] = body.get("accounting", {})
    try:
        return json.loads(json.dumps(manifest, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the manifest body is not plain JSON (no NaN/inf, no objects): {e}") from None


def check_format_version(manifest: Any, path: Path) -> None:
    """Check that ``manifest`` (read from the file ``path``) is a BitsFusion manifest this version reads."""
    if not isinstance(manifest, dict):
        raise FormatError(
            f"the manifest must be a JSON object, got {type(manifest).__name__}; {RESAVE_HINT}", path=path
        )
    name = manifest.get("format")
    if name != FORMAT_NAME:
        raise FormatError(
            f"'format' is {name!r}, not {FORMAT_NAME!r}: this is not a BitsFusion manifest", path=path
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise FormatError(f"'format_version' must be an integer, got {version!r}; {RESAVE_HINT}", path=path)
    if version > FORMAT_VERSION:
        raise FormatError(
            f"written by a newer BitsFusion ({manifest.get('library_version', 'unknown version')}, "
            f"format version {version}); this BitsFusion {library_version()} reads format versions up to "
            f"{FORMAT_VERSION}: upgrade BitsFusion (pip install --upgrade bitsfusion) to load it",
            path=path,
        )
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"format version {version} is not one BitsFusion ever wrote (known: {list(SUPPORTED_VERSIONS)}): "
            f"the manifest is corrupt or hand-edited; {RESAVE_HINT}",
            path=path,
        )


def validate_manifest(
    manifest: Any,
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    verify_checksums: bool = True,
) -> None:
    """Check ``manifest`` against the ``tensors`` of the artifact directory ``path``; FormatError if not.

    Checks, in order: format name and version; ``model``/``layers``/``accounting`` are objects;
    the tensor table lists exactly the file's tensors with their dtype, shape and (when
    ``verify_checksums``) SHA-256; every layer has a valid scheme and shape ``[N, K]``, and its
    ``{fqn}.{suffix}`` tensors are exactly ``PackedWeight.tensor_specs(scheme, (N, K))``.
    """
    mpath, wpath = Path(path) / MANIFEST_NAME, Path(path) / WEIGHTS_NAME
    check_format_version(manifest, mpath)
    for key in ("model", "layers", "tensors", "accounting"):
        if not isinstance(manifest.get(key), dict):
            raise FormatError(
                f"'{key}' must be a JSON object, got {type(manifest.get(key)).__name__}; {RESAVE_HINT}", path=mpath
            )
    _check_tensor_table(manifest["tensors"], tensors, mpath, wpath, verify_checksums)
    _check_layers(manifest["layers"], tensors, mpath, wpath)


def _check_tensor_table(
    table: dict[str, Any], tensors: Mapping[str, torch.Tensor], mpath: Path, wpath: Path, verify: bool
) -> None:
    missing = sorted(set(table) - set(tensors))
    if missing:
        raise FormatError(
            f"listed in {MANIFEST_NAME} but missing from {WEIGHTS_NAME} "
            f"({len(missing)} missing in all): the files do not belong together; {RESAVE_HINT}",
            path=wpath, tensor=missing[0],
        )
    unexpected = sorted(set(tensors) - set(table))
    if unexpected:
        raise FormatError(
            f"unexpected: in {WEIGHTS_NAME} but not listed in {MANIFEST_NAME} "
            f"({len(unexpected)} unexpected in all): the files do not belong together; {RESAVE_HINT}",
            path=wpath, tensor=unexpected[0],
        )
    for name, entry in table.items():
        t = tensors[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "sha256"}:
            raise FormatError(
                f"the tensor table entry must be an object with 'dtype', 'shape', 'sha256', got {entry!r}",
                path=mpath, tensor=name,
            )
        if entry["dtype"] != DTYPE_NAMES.get(t.dtype):
            raise FormatError(
                f"dtype mismatch: {MANIFEST_NAME} says {entry['dtype']!r}, {WEIGHTS_NAME} holds "
                f"{DTYPE_NAMES.get(t.dtype, str(t.dtype))!r}; {RESAVE_HINT}", path=wpath, tensor=name,
            )
        if entry["shape"] != list(t.shape):
            raise FormatError(
                f"shape mismatch: {MANIFEST_NAME} says {entry['shape']!r}, {WEIGHTS_NAME} holds "
                f"{list(t.shape)}; {RESAVE_HINT}", path=wpath, tensor=name,
            )
        if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
            raise FormatError(
                f"'sha256' must be 64 lowercase hex digits, got {entry['sha256']!r}", path=mpath, tensor=name
            )
        if verify and tensor_sha256(t) != entry["sha256"]:
            raise FormatError(
                f"checksum mismatch: the SHA-256 of its data differs from the one in {MANIFEST_NAME}: "
                f"the file is corrupt (or was modified after saving); {RESAVE_HINT}", path=wpath, tensor=name,
            )


def _layer_shape(fqn: str, entry: dict[str, Any], mpath: Path) -> tuple[int, int]:
    shape = entry.get("shape")
    ok = (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    )
    if not ok:
        raise FormatError(
            f"layer '{fqn}': 'shape' must be [N, K] with positive integers, got {shape!r}; {RESAVE_HINT}", path=mpath
        )
    return int(shape[0]), int(shape[1])


def _layer_scheme(fqn: str, entry: dict[str, Any], mpath: Path) -> QScheme:
    if "scheme" not in entry:
        raise FormatError(f"layer '{fqn}' has no 'scheme'; {RESAVE_HINT}", path=mpath)
    try:
        return QScheme.from_dict(entry["scheme"])
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise FormatError(f"layer '{fqn}' has an invalid scheme: {e}; {RESAVE_HINT}", path=mpath) from None


def _check_layers(layers: dict[str, Any], tensors: Mapping[str, torch.Tensor], mpath: Path, wpath: Path) -> None:
    packed_names: dict[str, set[str]] = {}
    for name in tensors:
        m = _PACKED_SUFFIX.fullmatch(name)
        if m is not None:
            packed_names.setdefault(m.group(1), set()).add(name)
    for fqn, entry in layers.items():
        if not isinstance(entry, dict):
            raise FormatError(f"layer '{fqn}' must be a JSON object, got {type(entry).__name__}", path=mpath)
        scheme = _layer_scheme(fqn, entry, mpath)
        shape = _layer_shape(fqn, entry, mpath)
        specs = PackedWeight.tensor_specs(scheme, shape)
        expected = {f"{fqn}.{suffix}" for suffix in specs}
        for suffix, (dtype, spec_shape) in specs.items():
            name = f"{fqn}.{suffix}"
            t = tensors.get(name)
            if t is None:
                raise FormatError(
                    f"layer '{fqn}' ({scheme}, shape {list(shape)}) needs this tensor but {WEIGHTS_NAME} "
                    f"does not hold it; {RESAVE_HINT}", path=wpath, tensor=name,
                )
            if t.dtype != dtype or tuple(t.shape) != tuple(spec_shape):
                raise FormatError(
                    f"layer '{fqn}' ({scheme}, shape {list(shape)}) needs {DTYPE_NAMES.get(dtype, dtype)} "
                    f"{list(spec_shape)}, the file holds {DTYPE_NAMES.get(t.dtype, t.dtype)} {list(t.shape)}; "
                    f"{RESAVE_HINT}", path=wpath, tensor=name,
                )
        extra = sorted(packed_names.get(fqn, set()) - expected)
        if extra:
            raise FormatError(
                f"unexpected for layer '{fqn}' ({scheme}), which stores only {sorted(specs)}; {RESAVE_HINT}",
                path=wpath, tensor=extra[0],
            )
