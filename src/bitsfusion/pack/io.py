"""Reading and writing artifacts: atomic save, safe load (never unpickles), exact file sizes.

``save_artifact`` writes ``model.safetensors`` and ``bitsfusion.json`` into a fresh hidden
sibling directory ``.{name}.bitsfusion-tmp-*``, fsyncs both files and the directory, then
swaps it in: an existing artifact is renamed aside to ``.{name}.bitsfusion-old-*``, the new
one renamed into place, the parent directory fsynced and the old one deleted. A reader sees
the old artifact or the new one, never a mix. The one window: between the two renames
``path`` does not exist; a crash there leaves the old artifact in the aside directory, and
the next ``load_artifact`` or ``save_artifact`` of ``path`` renames it back (and deletes the
crashed save's leftovers). One writer per path at a time; a reader that lands in a live
writer's window restores the old artifact and that save then fails with an error.

``load_artifact`` parses the safetensors header itself before handing the file to
safetensors, so truncation and corruption are reported precisely, then validates the
manifest (``format.validate_manifest``), checksums included.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import torch as st

from ..errors import ConfigError, FormatError
from .format import (
    MANIFEST_NAME, RESAVE_HINT, TORCH_DTYPES, WEIGHTS_NAME, build_manifest, check_format_version, dtype_name,
    validate_manifest,
)

__all__ = [
    "save_artifact",
    "load_artifact",
    "read_manifest",
    "read_safetensors_header",
    "artifact_nbytes",
    "predict_weights_nbytes",
    "swap_in_dir",
    "recover_dir",
    "temporary_dir",
    "write_dir_atomically",
]

WEIGHTS_METADATA = {"format": "pt"}
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces
# safetensors writes tensors sorted by dtype, last of this list first, then by name.
SAFETENSORS_DTYPE_ORDER = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
                           "I32", "U32", "F32", "F64", "I64", "U64")
_TMP_TAG = ".bitsfusion-tmp-"
_ASIDE_TAG = ".bitsfusion-old-"
_RESAVE = "re-save the artifact"

TensorSpec = tuple[torch.dtype, Sequence[int]]


# -- the safetensors file, byte by byte -------------------------------------------------------


def read_safetensors_header(file: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """Parse and check the header of a safetensors ``file``: ``name -> (dtype, shape, begin, end)``.

    Layout: ``u64`` little-endian header length ``n``, ``n`` bytes of JSON, then the data,
    where tensor ``name`` occupies bytes ``[begin, end)`` counted from the end of the header.
    Every inconsistency (short file, bad length, bad JSON, offsets that overlap, leave gaps or
    disagree with dtype x shape, data shorter or longer than the header says) is a FormatError.
    """
    size = file.stat().st_size
    if size < 8:
        raise FormatError(f"the file is {size} bytes, shorter than its 8-byte header length: "
                          f"the file is truncated; {_RESAVE}", path=file)
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise FormatError(f"the header length field says {n} bytes (safetensors allows at most "
                              f"{MAX_HEADER_BYTES}): garbage header, not a safetensors file; {_RESAVE}", path=file)
        if 8 + n > size:
            raise FormatError(f"the header length field says {n} bytes of JSON header but only {size - 8} "
                              f"bytes follow: the file is truncated; {_RESAVE}", path=file)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"the {n}-byte header is not valid JSON ({e}): garbage header, the file is "
                          f"corrupt; {_RESAVE}", path=file) from None
    if not isinstance(header, dict):
        raise FormatError(f"the header must be a JSON object, got {type(header).__name__}: garbage header; "
                          f"{_RESAVE}", path=file)
    header.pop("__metadata__", None)
    records = {name: _header_record(name, entry, file) for name, entry in header.items()}
    end = 0
    for name, (_, _, begin, stop) in sorted(records.items(), key=lambda r: (r[1][2], r[1][3])):
        if begin != end:
            raise FormatError(f"its data starts at byte {begin} of the data section but the previous tensor "
                              f"ends at {end} (gap or overlap): corrupt header; {_RESAVE}", path=file, tensor=name)
        end = stop
    data = size - 8 - n
    if data < end:
        raise FormatError(f"the header says {end} bytes of data but the file has {data}: the file is "
                          f"truncated; {_RESAVE}", path=file)
    if data > end:
        raise FormatError(f"the header says {end} bytes of data but the file has {data}: "
                          f"{data - end} trailing bytes, the file is corrupt; {_RESAVE}", path=file)
    return records


def _header_record(name: str, entry: Any, file: Path) -> tuple[str, list[int], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"header entry must be an object with 'dtype', 'shape', 'data_offsets', got "
                          f"{entry!r}: corrupt header; {_RESAVE}", path=file, tensor=name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in TORCH_DTYPES:
        raise FormatError(f"unsupported dtype {dtype!r} (supported: {sorted(TORCH_DTYPES)})", path=file, tensor=name)

    def naturals(xs: Any, count: int | None) -> bool:
        return (isinstance(xs, list) and (count is None or len(xs) == count)
                and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs))

    if not naturals(shape, None) or not naturals(offsets, 2) or offsets[0] > offsets[1]:
        raise FormatError(f"bad shape {shape!r} or data_offsets {offsets!r}: corrupt header; {_RESAVE}",
                          path=file, tensor=name)
    need = math.prod(shape) * TORCH_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != need:
        raise FormatError(f"data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but {dtype} {shape} needs "
                          f"{need}: corrupt header; {_RESAVE}", path=file, tensor=name)
    return dtype, shape, offsets[0], offsets[1]


def predict_weights_nbytes(tensors: Mapping[str, torch.Tensor | TensorSpec]) -> int:
    """Exact size in bytes of the ``model.safetensors`` that ``save_artifact`` writes for ``tensors``.

    ``8 + header + data``: the header is safetensors' compact JSON (metadata first, then tensors
    in the order they are written: dtype rank descending, then name) padded with spaces to a
    multiple of 8; the data is every tensor's bytes, back to back. Accepts tensors or
    ``(dtype, shape)`` pairs, so a size is known before anything is packed.
    """
    entries = []
    for name, t in tensors.items():
        dtype, shape = (t.dtype, list(t.shape)) if isinstance(t, torch.Tensor) else (t[0], list(t[1]))
        entries.append((SAFETENSORS_DTYPE_ORDER.index(dtype_name(dtype)), name, dtype, shape))
    entries.sort(key=lambda e: (-e[0], e[1]))
    header: dict[str, Any] = {"__metadata__": WEIGHTS_METADATA}
    offset = 0
    for _, name, dtype, shape in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": dtype_name(dtype), "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    n = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return 8 + n + (-n) % 8 + offset


def artifact_nbytes(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of the artifact at ``path``: ``model.safetensors`` plus ``bitsfusion.json``."""
    return sum((Path(path) / name).stat().st_size for name in (WEIGHTS_NAME, MANIFEST_NAME))


# -- save ---------------------------------------------------------------------------------------


def save_artifact(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], body: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and the manifest built from ``body`` to the artifact directory ``path``, atomically.

    ``body`` holds ``model``, ``layers`` and ``accounting`` (see ``format.build_manifest``).
    Tensors may live on any device, be non-contiguous or share memory: each is copied as needed.
    Refuses (ConfigError) when ``path`` exists but is not an artifact (anything other than an
    empty directory or one holding only the two artifact files), and when the layers in ``body``
    do not match ``tensors``. On any exception ``path`` is left as it was and no temporary
    directory remains.
    """
    path = Path(path)
    prepared = _prepare_tensors(tensors)
    manifest = build_manifest(body, prepared)
    try:
        validate_manifest(manifest, prepared, path, verify_checksums=False)
    except FormatError as e:
        problem = str(e).removesuffix(f"; {RESAVE_HINT}")
        raise ConfigError(f"refusing to save {path}, it would not load back: {problem}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path, clean_stale=True)
    _check_replaceable(path)
    return write_dir_atomically(path, lambda tmp: _write_files(tmp, prepared, manifest))


def write_dir_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary directory beside ``path``, which then replaces ``path`` by rename.

    On any exception ``path`` is left as it was and the temporary directory is removed.
    """
    tmp = temporary_dir(path)
    try:
        write(tmp)
        aside = swap_in_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return path


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, dense, contiguous CPU tensors, each owning its memory (safetensors refuses shared storage)."""
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"tensors must be a mapping of names to tensors, got {type(tensors).__name__}")
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ConfigError(f"tensor names must be non-empty strings other than '__metadata__', got {name!r}")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_meta:
            raise ConfigError(f"tensor '{name}' must be a dense tensor with data, got {type(t).__name__}")
        dtype_name(t.dtype)
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            storages.add(ptr)
        out[name] = t
    return out


def _check_replaceable(path: Path) -> None:
    if not os.path.lexists(path):
        return
    entries = set(os.listdir(path)) if path.is_dir() and not path.is_symlink() else None
    if entries is not None and (not entries or (MANIFEST_NAME in entries and entries <= {MANIFEST_NAME, WEIGHTS_NAME})):
        return
    held = "a file or a symlink" if entries is None else f"a directory holding {sorted(entries)[:5]}"
    raise ConfigError(f"{path} exists and is not a BitsFusion artifact ({held}; an artifact holds only "
                      f"{MANIFEST_NAME} and {WEIGHTS_NAME}): refusing to overwrite it; choose another path "
                      f"or remove it")


def _write_files(tmp: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    weights = tmp / WEIGHTS_NAME
    st.save_file(tensors, str(weights), metadata=WEIGHTS_METADATA)
    with open(weights, "rb+") as f:
        os.fsync(f.fileno())
    with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)


def temporary_dir(path: Path) -> Path:
    """A new empty directory beside ``path`` to build its replacement in (``recover_dir`` cleans leftovers)."""
    return Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP_TAG}", dir=path.parent))


def swap_in_dir(tmp: Path, path: Path) -> Path | None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is first renamed aside and that name returned.

    With ``recover_dir`` this is the one atomic directory replacement of the package (artifacts here,
    training checkpoints in ``train.checkpoint``): a crash leaves the old directory or the new one.
    """
    aside = None
    if os.path.lexists(path):
        aside = path.with_name(f".{path.name}{_ASIDE_TAG}{uuid.uuid4().hex[:12]}")
        os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        if aside is not None and not os.path.lexists(path):
            os.rename(aside, path)
        raise
    _fsync_dir(path.parent)
    return aside


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_dir(path: Path, *, clean_stale: bool) -> None:
    """Undo a save that crashed between its two renames: restore the aside artifact if ``path`` is gone.

    After a restore, and always when ``clean_stale`` (a writer about to save), the leftovers of
    crashed saves of ``path`` (temporary and aside directories) are deleted.
    """
    if not path.parent.is_dir():
        return
    stem = f".{glob.escape(path.name)}"
    asides = sorted(path.parent.glob(f"{stem}{_ASIDE_TAG}*"), key=lambda p: p.stat().st_mtime)
    restored = False
    if asides and not os.path.lexists(path):
        os.rename(asides.pop(), path)
        _fsync_dir(path.parent)
        restored = True
    if restored or clean_stale:
        for leftover in [*asides, *path.parent.glob(f"{stem}{_TMP_TAG}*")]:
            shutil.rmtree(leftover, ignore_errors=True)


# -- load ---------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the artifact at ``path``, its format and version checked; tensors are not read."""
    path = Path(path)
    recover_dir(path, clean_stale=False)
    if not path.is_dir():
        what = "is a file, not" if path.exists() else "not found: no"
        raise FormatError(f"{what} an artifact directory (one holding {MANIFEST_NAME} and {WEIGHTS_NAME})",
                          path=path)
    mpath = path / MANIFEST_NAME
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"missing {MANIFEST_NAME}: not a BitsFusion artifact, or an incomplete copy; "
                          f"{_RESAVE}", path=mpath) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"the manifest is not valid JSON ({e}); {_RESAVE}", path=mpath) from None
    check_format_version(manifest, mpath)
    return manifest


def load_artifact(
    path: str | os.PathLike[str], *, verify_checksums: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, tensors)`` of the artifact at ``path``, every check passed (FormatError otherwise).

    Never unpickles: the manifest is JSON and the tensors are safetensors. ``verify_checksums=False``
    skips hashing the data (a cost of about one pass over the file), not the structural checks.
    """
    path = Path(path)
    manifest = read_manifest(path)
    wpath = path / WEIGHTS_NAME
    if not wpath.is_file():
        raise FormatError(f"missing {WEIGHTS_NAME}: an incomplete copy of the artifact; {_RESAVE}", path=wpath)
    read_safetensors_header(wpath)
    try:
        tensors = st.load_file(str(wpath))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError or ValueError
        raise FormatError(f"safetensors could not read the file ({type(e).__name__}: {e}); {_RESAVE}",
                          path=wpath) from None
    validate_manifest(manifest, tensors, path, verify_checksums=verify_checksums)
    return manifest, tensors
