"""Artifacts on disk: round trips, every corruption a FormatError, atomic saves, exact sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs
from safetensors import torch as st

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.pack import io
from bitsfusion.pack.accounting import packed_nbytes
from bitsfusion.pack.format import DTYPE_NAMES, MANIFEST_NAME, WEIGHTS_NAME
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.types import QScheme

SCHEMES = {
    "sym2-g64": QScheme(bits=2),
    "asym3+1-g4": QScheme(bits=3, group_size=4, grid="asymmetric", nested=(1,)),
    "sym8+2,4-ch": QScheme(bits=8, group_size=None, nested=(2, 4)),
    "bal1-g8": QScheme(bits=1, group_size=8, grid="balanced"),
    "bal3-g16": QScheme(bits=3, group_size=16, grid="balanced"),
    "asym4+2-g8-awq": QScheme(bits=4, group_size=8, grid="asymmetric", nested=(2,), calibration="awq"),
}


def random_tensor(dtype: torch.dtype, shape, gen: torch.Generator) -> torch.Tensor:
    nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).view(dtype).reshape(tuple(shape))


def model_state(layers: dict[str, tuple[QScheme, tuple[int, int]]], seed: int = 0):
    """Tensors and manifest body of a model with packed ``layers`` plus unquantised odds and ends."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for fqn, (scheme, shape) in layers.items():
        for suffix, (dtype, s) in PackedWeight.tensor_specs(scheme, shape).items():
            tensors[f"{fqn}.{suffix}"] = random_tensor(dtype, s, gen)
        tensors[f"{fqn}.bias"] = torch.randn(shape[0], generator=gen)
    tensors.update({"emb.weight": torch.randn(7, 5, generator=gen).to(torch.bfloat16),
                    "step": torch.tensor(3), "mask": torch.tensor([True, False, True]), "empty": torch.zeros(0, 4)})
    body = {"model": {"kind": "test", "config": {"hidden": 5}},
            "layers": {fqn: {"scheme": s.to_dict(), "shape": list(sh), "module": "Linear", "kwargs": {"bias": True}}
                       for fqn, (s, sh) in layers.items()},
            "accounting": {"bits_per_weight": 2.5}}
    return tensors, body


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@pytest.fixture
def saved(tmp_path):
    tensors, body = model_state({"enc.fc": (SCHEMES["asym3+1-g4"], (3, 10))})
    path = io.save_artifact(tmp_path / "art", tensors, body)
    return path, tensors


def expect(path, *words: str, **kw) -> str:
    with pytest.raises(FormatError) as info:
        io.load_artifact(path, **kw)
    for word in words:
        assert word in str(info.value), str(info.value)
    return str(info.value)


def header_length(path: Path) -> int:
    return int.from_bytes((path / WEIGHTS_NAME).read_bytes()[:8], "little")


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES.keys())
@pytest.mark.parametrize("shape", [(1, 1), (4, 64), (3, 37)], ids=["1x1", "4x64", "3x37"])
def test_round_trip(tmp_path, scheme, shape):
    tensors, body = model_state({"a.b": (scheme, shape), "c": (QScheme(bits=4, group_size=8), (2, 16))})
    path = io.save_artifact(tmp_path / "art", tensors, body)
    assert sorted(os.listdir(tmp_path)) == ["art"]
    assert sorted(os.listdir(path)) == [MANIFEST_NAME, WEIGHTS_NAME]
    manifest, loaded = io.load_artifact(path)
    assert loaded.keys() == tensors.keys()
    assert all(same_bytes(loaded[k], tensors[k]) for k in tensors)
    assert manifest == json.loads((path / MANIFEST_NAME).read_text())
    assert {k: manifest[k] for k in body} == json.loads(json.dumps(body))
    assert io.read_manifest(path) == manifest


def test_non_contiguous_shared_and_parameter_tensors(tmp_path):
    base = torch.randn(4, 6)
    tensors = {"t": base.t(), "tied_a": base, "tied_b": base, "half": base[:2], "param": torch.nn.Parameter(base)}
    _, loaded = io.load_artifact(io.save_artifact(tmp_path / "art", tensors, {}))
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t.detach()), name


def test_overwriting_an_artifact_replaces_it_and_leaves_nothing_behind(saved):
    path, _ = saved
    tensors, body = model_state({"x": (SCHEMES["sym2-g64"], (2, 64))}, seed=1)
    io.save_artifact(path, tensors, body)
    assert sorted(os.listdir(path.parent)) == ["art"]
    _, loaded = io.load_artifact(path)
    assert loaded.keys() == tensors.keys()


def test_save_creates_parents_and_fills_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new" / "deep" / "art"):
        io.save_artifact(target, {"x": torch.ones(2)}, {})
        assert torch.equal(io.load_artifact(target)[1]["x"], torch.ones(2))


@pytest.mark.parametrize("kind", ["file", "foreign-dir"])
def test_save_refuses_to_overwrite_what_is_not_an_artifact(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("precious")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("precious")
        (target / MANIFEST_NAME).write_text("{}")
    with pytest.raises(ConfigError, match="is not a BitsFusion artifact"):
        io.save_artifact(target, {"x": torch.ones(2)}, {})
    assert "precious" in (target.read_text() if kind == "file" else (target / "notes.txt").read_text())
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_save_refuses_layers_that_do_not_match_the_tensors(tmp_path):
    tensors, body = model_state({"fc": (SCHEMES["sym2-g64"], (2, 64))})
    del tensors["fc.scales"]
    with pytest.raises(ConfigError, match="would not load back.*fc.scales"):
        io.save_artifact(tmp_path / "art", tensors, body)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("tensors", [{"__metadata__": torch.ones(1)}, {"": torch.ones(1)}, {"x": [1.0]},
                                     {"x": torch.ones(1, dtype=torch.complex64)}],
                         ids=["reserved-name", "empty-name", "not-tensor", "complex"])
def test_save_refuses_bad_tensors(tmp_path, tensors):
    with pytest.raises(ConfigError):
        io.save_artifact(tmp_path / "art", tensors, {})


# -- corrupt artifacts --------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    expect(tmp_path / "nope", "not found", "artifact directory")


def test_missing_manifest(saved):
    path, _ = saved
    (path / MANIFEST_NAME).unlink()
    expect(path, MANIFEST_NAME, "missing bitsfusion.json")


def test_missing_weights(saved):
    path, _ = saved
    (path / WEIGHTS_NAME).unlink()
    expect(path, WEIGHTS_NAME, "missing model.safetensors")


@pytest.mark.parametrize("text", ["{not json", "\xff\xfe garbage", ""], ids=["broken", "binary", "empty"])
def test_manifest_not_json(saved, text):
    path, _ = saved
    (path / MANIFEST_NAME).write_bytes(text.encode("latin-1"))
    expect(path, MANIFEST_NAME, "not valid JSON")


def test_future_version_is_reported_before_the_weights_are_read(saved):
    path, _ = saved
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    manifest["format_version"] = 7
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    (path / WEIGHTS_NAME).write_bytes(b"a future layout")
    expect(path, "newer BitsFusion", "upgrade")


def test_flipped_data_byte_fails_the_checksum(saved):
    path, _ = saved
    data = bytearray((path / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0x10  # the last byte of the last tensor's data
    (path / WEIGHTS_NAME).write_bytes(bytes(data))
    expect(path, WEIGHTS_NAME, "checksum mismatch", "corrupt")
    io.load_artifact(path, verify_checksums=False)


def _cuts(path: Path) -> list[int]:
    n = header_length(path)
    size = (path / WEIGHTS_NAME).stat().st_size
    return [0, 5, 8, 8 + n // 2, 8 + n, 8 + n + (size - 8 - n) // 2, size - 1]


@pytest.mark.parametrize("which", range(7), ids=["empty", "in-length", "no-header", "mid-header", "no-data",
                                                  "mid-data", "last-byte"])
def test_truncated_weights(saved, which):
    path, _ = saved
    data = (path / WEIGHTS_NAME).read_bytes()
    cut = _cuts(path)[which]
    (path / WEIGHTS_NAME).write_bytes(data[:cut])
    message = expect(path, WEIGHTS_NAME, "truncated", "re-save the artifact")
    n = int.from_bytes(data[:8], "little")
    if cut >= 8 + n:
        assert f"header says {len(data) - 8 - n} bytes of data but the file has {cut - 8 - n}" in message


def _rewrite_header(path: Path, edit) -> None:
    """Apply ``edit`` to the header JSON, re-padded to its original length so the data stays in place."""
    data = (path / WEIGHTS_NAME).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = edit(json.loads(data[8 : 8 + n]))
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= n
    (path / WEIGHTS_NAME).write_bytes(data[:8] + raw.ljust(n) + data[8 + n :])


def _set(name, key, value):
    def edit(h):
        h[name][key] = value
        return h
    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda h: b"\x00\xff" * 10, ["not valid JSON", "garbage header"]),
        (lambda h: b"[1, 2]", ["must be a JSON object", "garbage header"]),
        (_set("fc_like", "dtype", "I8"), ["tensor 'fc_like'", "dtype mismatch", "'U8'", "'I8'"]),
        (_set("fc_like", "shape", [3, 2]), ["tensor 'fc_like'", "shape mismatch", "[2, 3]", "[3, 2]"]),
        (_set("fc_like", "shape", [4, 2]), ["tensor 'fc_like'", "span 6 bytes", "needs 8"]),
        (_set("fc_like", "dtype", "Q4"), ["tensor 'fc_like'", "unsupported dtype 'Q4'"]),
        (_set("fc_like", "data_offsets", [2, 8]), ["tensor 'fc_like'", "gap or overlap"]),
        (lambda h: {k: v for k, v in h.items() if k != "fc_like"}, ["says 8 bytes of data", "6 trailing bytes"]),
        (_set("b", "data_offsets", "x"), ["tensor 'b'", "bad shape"]),
    ],
    ids=["binary", "list", "dtype", "shape", "shape-size", "unknown-dtype", "overlap", "dropped-entry", "offsets"],
)
def test_corrupt_header(tmp_path, edit, words):
    path = io.save_artifact(tmp_path / "art", {"fc_like": torch.arange(6, dtype=torch.uint8).reshape(2, 3),
                                               "b": torch.ones(2)}, {})
    _rewrite_header(path, edit)
    expect(path, WEIGHTS_NAME, *words)


def test_garbage_length_field(saved):
    path, _ = saved
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(b"\xff" * 8 + data[8:])
    expect(path, WEIGHTS_NAME, "garbage header")


def test_weights_from_another_model(tmp_path, saved):
    path, _ = saved
    other = io.save_artifact(tmp_path / "other", {"x": torch.ones(2)}, {})
    os.replace(other / WEIGHTS_NAME, path / WEIGHTS_NAME)
    expect(path, "missing from model.safetensors", "do not belong together")


# -- atomicity ----------------------------------------------------------------------------------


def test_a_writer_failing_midway_leaves_the_old_artifact(saved, monkeypatch):
    path, old = saved

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(st.save(tensors, metadata=metadata)[:100])
        raise OSError("No space left on device")

    monkeypatch.setattr(st, "save_file", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        io.save_artifact(path, {"new": torch.zeros(3)}, {})
    assert sorted(os.listdir(path.parent)) == ["art"]
    _, loaded = io.load_artifact(path)
    assert loaded.keys() == old.keys()


def test_a_failed_swap_puts_the_old_artifact_back(saved, monkeypatch):
    path, old = saved
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new artifact moving in
            raise PermissionError("simulated")
        real(src, dst)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(PermissionError):
        io.save_artifact(path, {"new": torch.zeros(3)}, {})
    monkeypatch.undo()
    assert sorted(os.listdir(path.parent)) == ["art"]
    assert io.load_artifact(path)[1].keys() == old.keys()


CRASH = textwrap.dedent("""
    import os, sys, torch
    from bitsfusion.pack import io
    real = os.rename
    def rename(src, dst):
        real(src, dst)
        os._exit(3)  # power cut: the old artifact is aside, the new one not yet in place
    os.rename = rename
    io.save_artifact(sys.argv[1], {"new": torch.zeros(3)}, {})
""")


def test_a_crash_between_the_renames_is_recovered_on_load(saved):
    path, old = saved
    run = subprocess.run([sys.executable, "-c", CRASH, str(path)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 3, run.stderr
    left = sorted(os.listdir(path.parent))
    assert "art" not in left and any(".bitsfusion-old-" in n for n in left) and any("-tmp-" in n for n in left)
    manifest, loaded = io.load_artifact(path)
    assert loaded.keys() == old.keys()
    assert all(same_bytes(loaded[k], old[k]) for k in old)
    assert sorted(os.listdir(path.parent)) == ["art"]


def test_save_cleans_up_leftovers_of_crashed_saves(saved):
    path, _ = saved
    (path.parent / ".art.bitsfusion-tmp-dead").mkdir()
    (path.parent / ".art.bitsfusion-old-dead").mkdir()
    io.save_artifact(path, {"x": torch.ones(1)}, {})
    assert sorted(os.listdir(path.parent)) == ["art"]


# -- sizes --------------------------------------------------------------------------------------


def test_file_size_equals_the_prediction_from_specs_alone(saved):
    path, tensors = saved
    scheme, shape = SCHEMES["asym3+1-g4"], (3, 10)
    specs = {f"enc.fc.{s}": spec for s, spec in PackedWeight.tensor_specs(scheme, shape).items()}
    specs.update({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items() if k not in specs})
    size = (path / WEIGHTS_NAME).stat().st_size
    assert size == io.predict_weights_nbytes(specs) == io.predict_weights_nbytes(tensors)
    unquantised = sum(t.numel() * t.element_size() for k, t in tensors.items() if not k.startswith("enc.fc.")
                      or k == "enc.fc.bias")
    assert size == 8 + header_length(path) + packed_nbytes(scheme, shape) + unquantised
    assert io.artifact_nbytes(path) == size + (path / MANIFEST_NAME).stat().st_size


NAMES = hs.text(hs.sampled_from("ab.z_9é"), min_size=1, max_size=6).filter(lambda s: s != "__metadata__")
TENSORS = hs.dictionaries(
    NAMES,
    hs.tuples(hs.sampled_from(list(DTYPE_NAMES)), hs.lists(hs.integers(0, 5), max_size=3)),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(specs=TENSORS, seed=hs.integers(0, 2**16))
def test_predicted_size_is_exact_for_any_tensors(specs, seed):
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: random_tensor(dtype, shape, gen) for name, (dtype, shape) in specs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = io.save_artifact(Path(tmp) / "art", tensors, {})
        assert (path / WEIGHTS_NAME).stat().st_size == io.predict_weights_nbytes(tensors)
        loaded = io.load_artifact(path)[1]
    assert all(same_bytes(loaded[k], tensors[k]) for k in tensors)
