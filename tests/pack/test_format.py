"""The manifest: what build_manifest writes and every way validate_manifest refuses one."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.pack.format import (
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, WEIGHTS_NAME, build_manifest, dtype_name, tensor_sha256,
    validate_manifest,
)
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.types import QScheme

ART = Path("some/artifact")

SCHEMES = {
    "sym3-g4": QScheme(bits=3, group_size=4),
    "asym4+1,2-g8": QScheme(bits=4, group_size=8, grid="asymmetric", nested=(1, 2)),
    "sym8+4-ch": QScheme(bits=8, group_size=None, nested=(4,)),
    "bal1-g4": QScheme(bits=1, group_size=4, grid="balanced"),
    "bal2-g64": QScheme(bits=2, grid="balanced"),
}
SHAPES = {"2x10": (2, 10), "3x64": (3, 64), "1x1": (1, 1), "5x131": (5, 131)}


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random bytes viewed as ``dtype``: any bit pattern is valid data for the format."""
    nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen).view(dtype).reshape(shape)


def layer_tensors(fqn: str, scheme: QScheme, shape: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the names, dtypes and shapes a packed layer stores."""
    gen = torch.Generator().manual_seed(seed)
    specs = PackedWeight.tensor_specs(scheme, shape)
    return {f"{fqn}.{suffix}": random_tensor(dtype, tuple(s), gen) for suffix, (dtype, s) in specs.items()}


def small_model(scheme: QScheme = SCHEMES["asym4+1,2-g8"], shape=(2, 10)):
    """Tensors and a matching manifest: one packed layer ``fc`` plus its bias and a buffer."""
    tensors = layer_tensors("fc", scheme, shape)
    tensors["fc.bias"] = torch.randn(shape[0])
    tensors["norm.weight"] = torch.ones(3, dtype=torch.bfloat16)
    body = {
        "model": {"kind": "test", "config": {"hidden": 3}},
        "layers": {"fc": {"scheme": scheme.to_dict(), "shape": list(shape), "module": "Linear"}},
        "accounting": {"bits_per_weight": 4.5},
    }
    return tensors, build_manifest(body, tensors)


def expect(manifest, tensors, *words: str) -> None:
    with pytest.raises(FormatError) as info:
        validate_manifest(manifest, tensors, ART)
    for word in words:
        assert word in str(info.value), str(info.value)


# -- build_manifest -----------------------------------------------------------------------------


def test_build_manifest_adds_format_version_and_sorted_tensor_table():
    tensors, manifest = small_model()
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == FORMAT_VERSION
    assert isinstance(manifest["library_version"], str)
    assert list(manifest) == ["format", "format_version", "library_version", "model", "layers", "tensors",
                              "accounting"]
    assert list(manifest["tensors"]) == sorted(tensors)
    entry = manifest["tensors"]["fc.bias"]
    assert entry["dtype"] == "F32" and entry["shape"] == [2]
    assert entry["sha256"] == hashlib.sha256(tensors["fc.bias"].numpy().tobytes()).hexdigest()
    assert json.loads(json.dumps(manifest)) == manifest


def test_build_manifest_returns_the_json_form_of_the_body():
    tensors, _ = small_model()
    body = {"layers": {}, "model": {"dims": (1, 2)}, "extra": {"k": 1}}
    manifest = build_manifest(body, {"x": torch.zeros(1)})
    assert manifest["model"] == {"dims": [1, 2]} and manifest["extra"] == {"k": 1}
    assert manifest["accounting"] == {}


@pytest.mark.parametrize("body", [{"tensors": {}}, {"format": "x"}, {"format_version": 2}],
                         ids=["tensors", "format", "format_version"])
def test_build_manifest_refuses_keys_the_format_owns(body):
    with pytest.raises(ConfigError, match="must not set"):
        build_manifest(body, {})


@pytest.mark.parametrize("value", [float("nan"), object()], ids=["nan", "object"])
def test_build_manifest_refuses_non_json_bodies(value):
    with pytest.raises(ConfigError, match="not plain JSON"):
        build_manifest({"model": {"x": value}}, {})


def test_sha256_is_of_the_row_major_bytes_whatever_the_strides():
    t = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    assert tensor_sha256(t.t()) == hashlib.sha256(t.t().contiguous().numpy().tobytes()).hexdigest()
    assert tensor_sha256(torch.tensor([True, False])) == hashlib.sha256(b"\x01\x00").hexdigest()
    assert tensor_sha256(torch.zeros(0)) == hashlib.sha256(b"").hexdigest()


def test_dtype_name_refuses_dtypes_an_artifact_cannot_hold():
    assert dtype_name(torch.bfloat16) == "BF16"
    with pytest.raises(ConfigError, match="cannot be stored"):
        dtype_name(torch.complex64)


# -- validate_manifest: accepts what build_manifest writes ---------------------------------------


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("scheme", SCHEMES.values(), ids=SCHEMES.keys())
def test_valid_manifest_passes(scheme, shape):
    tensors, manifest = small_model(scheme, shape)
    validate_manifest(manifest, tensors, ART)


# -- validate_manifest: the header --------------------------------------------------------------


def test_not_a_json_object():
    expect([1, 2], {}, MANIFEST_NAME, "must be a JSON object")


@pytest.mark.parametrize("name", ["gguf", None], ids=["other", "absent"])
def test_wrong_format_name(name):
    tensors, manifest = small_model()
    manifest["format"] = name
    expect(manifest, tensors, MANIFEST_NAME, "not a BitsFusion manifest")


def test_future_version_says_upgrade():
    tensors, manifest = small_model()
    manifest["format_version"] = FORMAT_VERSION + 1
    expect(manifest, tensors, "written by a newer BitsFusion", f"format version {FORMAT_VERSION + 1}", "upgrade")


@pytest.mark.parametrize("version", [0, -3], ids=["zero", "negative"])
def test_unknown_old_version(version):
    tensors, manifest = small_model()
    manifest["format_version"] = version
    expect(manifest, tensors, f"format version {version} is not one BitsFusion ever wrote")


@pytest.mark.parametrize("version", ["1", 1.0, True, None], ids=["str", "float", "bool", "none"])
def test_version_not_an_int(version):
    tensors, manifest = small_model()
    manifest["format_version"] = version
    expect(manifest, tensors, "'format_version' must be an integer")


@pytest.mark.parametrize("key", ["model", "layers", "tensors", "accounting"])
def test_sections_must_be_objects(key):
    tensors, manifest = small_model()
    manifest[key] = []
    expect(manifest, tensors, f"'{key}' must be a JSON object")


# -- validate_manifest: the tensor table ----------------------------------------------------------


def test_tensor_in_table_missing_from_file():
    tensors, manifest = small_model()
    del tensors["fc.bias"]
    expect(manifest, tensors, WEIGHTS_NAME, "tensor 'fc.bias'", "missing from model.safetensors")


def test_tensor_in_file_missing_from_table():
    tensors, manifest = small_model()
    tensors["stray"] = torch.zeros(2)
    expect(manifest, tensors, "tensor 'stray'", "unexpected")


def test_dtype_mismatch():
    tensors, manifest = small_model()
    tensors["fc.bias"] = tensors["fc.bias"].double()
    expect(manifest, tensors, "tensor 'fc.bias'", "dtype mismatch", "'F32'", "'F64'")


def test_shape_mismatch():
    tensors, manifest = small_model()
    tensors["norm.weight"] = tensors["norm.weight"].reshape(1, 3)
    expect(manifest, tensors, "tensor 'norm.weight'", "shape mismatch", "[3]", "[1, 3]")


def test_changed_data_fails_the_checksum_unless_disabled():
    tensors, manifest = small_model()
    tensors["fc.qweight"] = tensors["fc.qweight"].clone()
    tensors["fc.qweight"].view(-1)[5] ^= 1
    expect(manifest, tensors, "tensor 'fc.qweight'", "checksum mismatch", "corrupt")
    validate_manifest(manifest, tensors, ART, verify_checksums=False)


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [2]}, {"dtype": "F32", "shape": [2], "sha256": "ab"}],
                         ids=["no-sha", "short-sha"])
def test_malformed_table_entry(entry):
    tensors, manifest = small_model()
    manifest["tensors"]["fc.bias"] = entry
    expect(manifest, tensors, "tensor 'fc.bias'")


# -- validate_manifest: layers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme, words",
    [
        ({"bits": 9}, ["bits must be in 1..8"]),
        ({"bits": 2, "grid": "hexagonal"}, ["grid must be one of"]),
        ({"bits": 2, "colour": 1}, ["unknown scheme keys"]),
        ({"group_size": 4}, ["needs 'bits'"]),
        ({"bits": 2, "nested": ["x"]}, ["invalid scheme"]),
        ("4-bit", ["must be a JSON object"]),
    ],
    ids=["bits9", "grid", "unknown-key", "no-bits", "nested-str", "not-object"],
)
def test_layer_with_invalid_scheme(scheme, words):
    tensors, manifest = small_model()
    manifest["layers"]["fc"]["scheme"] = scheme
    expect(manifest, tensors, MANIFEST_NAME, "layer 'fc'", "invalid scheme", *words)


def test_layer_without_scheme():
    tensors, manifest = small_model()
    del manifest["layers"]["fc"]["scheme"]
    expect(manifest, tensors, "layer 'fc' has no 'scheme'")


@pytest.mark.parametrize("shape", [None, [2], [2, 0], [2, "10"], [True, 10], [2, 10, 1]],
                         ids=["none", "1d", "zero", "str", "bool", "3d"])
def test_layer_with_bad_shape(shape):
    tensors, manifest = small_model()
    manifest["layers"]["fc"]["shape"] = shape
    expect(manifest, tensors, "layer 'fc'", "'shape' must be [N, K]")


def _drop(tensors, manifest, name):
    del tensors[name]
    del manifest["tensors"][name]


def _swap(tensors, manifest, name, t):
    tensors[name] = t
    manifest["tensors"][name] = build_manifest({}, {name: t})["tensors"][name]


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t, m: _drop(t, m, "fc.scales_b2"), ["tensor 'fc.scales_b2'", "needs this tensor"]),
        (lambda t, m: _swap(t, m, "fc.scales", torch.zeros(2, 3, dtype=torch.float16)),
         ["tensor 'fc.scales'", "needs F16 [2, 2]", "F16 [2, 3]"]),
        (lambda t, m: _swap(t, m, "fc.qweight", torch.zeros(4, 2, 3, dtype=torch.uint8)),
         ["tensor 'fc.qweight'", "needs U8 [4, 2, 2]", "U8 [4, 2, 3]"]),
        (lambda t, m: _swap(t, m, "fc.zeros", torch.zeros(2, 2, dtype=torch.float32)),
         ["tensor 'fc.zeros'", "F32 [2, 2]"]),
        (lambda t, m: _swap(t, m, "fc.scales_b3", torch.zeros(2, 2, dtype=torch.float16)),
         ["tensor 'fc.scales_b3'", "unexpected for layer 'fc'"]),
    ],
    ids=["missing-nested-scale", "scales-groups", "qweight-shape", "zeros-dtype", "extra-nested-scale"],
)
def test_layer_tensors_must_match_tensor_specs(edit, words):
    tensors, manifest = small_model()
    edit(tensors, manifest)
    expect(manifest, tensors, WEIGHTS_NAME, *words)


def test_zeros_on_a_grid_without_zeros_is_unexpected():
    scheme = SCHEMES["sym3-g4"]
    tensors, manifest = small_model(scheme)
    _swap(tensors, manifest, "fc.zeros", torch.zeros(2, 3, dtype=torch.float16))
    expect(manifest, tensors, "tensor 'fc.zeros'", "unexpected for layer 'fc'")


def test_layer_shape_disagreeing_with_its_tensors():
    tensors, manifest = small_model()
    manifest["layers"]["fc"]["shape"] = [3, 10]
    expect(manifest, tensors, "layer 'fc'", "shape [3, 10]", "needs")


def test_validation_does_not_modify_the_manifest():
    tensors, manifest = small_model()
    before = copy.deepcopy(manifest)
    validate_manifest(manifest, tensors, ART)
    assert manifest == before
