"""The kernels built with AddressSanitizer + UndefinedBehaviorSanitizer, run on odd shapes in a subprocess.

CMake builds ``_C`` with ``-DBITSFUSION_SANITIZE=ON`` into ``build/sanitizer`` (kept between runs, so
only the first run compiles: ~30-60 s on two shared cores). This process (with torch) writes repacked
weights, inputs and the reference outputs to an ``.npz``; a child process with the ASan runtime preloaded
and *without* torch (whose own allocator hooks would drown the report) calls the sanitized module on every
ISA path, every kernel (lut32, dequant, lut8, int8; through the checked ``linear`` and the raw-address
``linear_raw`` that ``native.py`` uses, on plain and rotated weights; the Hadamard rotation ``hadamard_raw``
forward and inverse) and 1 and 2 threads, and checks the results: 1e-4 of max |y| for the fp32 kernels, 3e-2
for the int8 ones (table / activation rounding, bounded in test_native.py). Any heap overflow, use after free
or undefined behaviour aborts the child and fails the test with the sanitizer's report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsfusion.kernels import reference
from bitsfusion.kernels.repack import kernel_weight
from bitsfusion.types import QScheme
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.quant.rotation import rotate, signs
from tests.kernels.native_helpers import random_packed

AWQ = "input_scale" in QuantizedWeight.__dataclass_fields__  # cover the activation scaling when it exists

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "sanitizer"
pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import _C
    cases = np.load(sys.argv[2])
    count = int(cases["count"])
    for isa in range(3):
        if not _C.isa_supported(isa):
            continue
        for c in range(count):
            g = lambda name: cases[f"{c}_{name}"]
            ref = g("ref")
            inp = g("input_scale") if g("input_scale").size else None
            rot, rs = int(g("rot")), g("rot_signs")  # a rotated weight: the kernel rotates x (hadamard_copy)
            rs_arr, rs_ptr = (rs, rs.ctypes.data) if rs.size else (None, 0)
            for kernel in (0, 1, 2, 3):
                if kernel == 2 and not int(g("lut8_ok")):
                    continue
                for threads in (1, 2):
                    y = np.empty_like(ref)
                    _C.linear(g("x"), g("planes"), g("scales"), g("szs"), inp, g("bias"), y, ref.shape[1],
                              int(g("active")), int(g("group_kb")), kernel, isa, threads, 0, rot, rs_arr)
                    err = np.abs(y - ref).max() / (np.abs(ref).max() + 1e-6)
                    assert err < (1e-4 if kernel < 2 else 3e-2), (isa, c, kernel, threads, err)
                    y2 = np.empty_like(ref)
                    x, planes, scales, szs, bias = g("x"), g("planes"), g("scales"), g("szs"), g("bias")
                    _C.linear_raw(x.ctypes.data, x.shape[0], x.shape[1], planes.ctypes.data, planes.shape[1],
                                  scales.ctypes.data, szs.ctypes.data, scales.shape[1],
                                  0 if inp is None else inp.ctypes.data, bias.ctypes.data, y2.ctypes.data,
                                  ref.shape[1], int(g("active")), int(g("group_kb")), kernel, isa, threads,
                                  0, 0, 0, 0.0, rot, rs_ptr)
                    assert np.array_equal(y, y2), (isa, c, kernel, threads)
                    if kernel == 2 and g("scales_h").size:  # float16 scales and zeros: the same numbers
                        sh, zh = g("scales_h"), g("zeros_h")  # no zeros_h: a symmetric grid's constant zero_h
                        _C.linear_raw(x.ctypes.data, x.shape[0], x.shape[1], planes.ctypes.data, planes.shape[1],
                                      scales.ctypes.data, szs.ctypes.data, scales.shape[1],
                                      0 if inp is None else inp.ctypes.data, bias.ctypes.data, y2.ctypes.data,
                                      ref.shape[1], int(g("active")), int(g("group_kb")), kernel, isa, threads,
                                      sh.ctypes.data, zh.ctypes.data if zh.size else 0, 0, float(g("zero_h")),
                                      rot, rs_ptr)
                        assert np.array_equal(y, y2), ("float16 scales", isa, c, threads)
        for c in range(int(cases["had_count"])):  # the Hadamard rotation, in place, forward and inverse
            g = lambda name: cases[f"had{c}_{name}"]
            x, sg, block = g("x"), g("signs"), int(g("block"))
            for inverse, ref in ((False, g("ref")), (True, g("x"))):
                for threads in (1, 2):
                    y = (x if not inverse else g("ref")).copy()
                    _C.hadamard_raw(y.ctypes.data, y.shape[0], y.shape[1], block, sg.ctypes.data, inverse, isa,
                                    threads)
                    assert np.abs(y - ref).max() <= 1e-5 * (np.abs(ref).max() + 1), (isa, c, inverse, threads)
    print("sanitized kernels ok")
""")


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _runtime(lib: str) -> str | None:
    out = subprocess.run(["c++", f"-print-file-name={lib}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if out.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


def _build() -> Path:
    try:
        import nanobind
    except ImportError:
        pytest.skip("nanobind is not installed in this environment (pip install nanobind) to build the sanitized _C")
    if not (_tool("cmake") and _tool("c++")):
        pytest.skip("no cmake or C++ compiler on PATH to build the sanitized _C")
    gen = ["-G", "Ninja"] if _tool("ninja") else []
    cfg = ["cmake", "-S", str(ROOT), "-B", str(BUILD), *gen, "-DCMAKE_BUILD_TYPE=Debug", "-DBITSFUSION_SANITIZE=ON",
           f"-DPython_EXECUTABLE={sys.executable}", f"-Dnanobind_DIR={nanobind.cmake_dir()}"]
    for cmd in (cfg, ["cmake", "--build", str(BUILD), "-j", "2"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return BUILD


def _cases(path: Path) -> None:
    """Odd shapes (K, N not multiples of 8/16/groups), M across the LUT and GEMM paths, AWQ, both grids."""
    specs = [(QScheme(3, group_size=32, nested=(1, 2)), 19, 77, 1, 2, False),
             (QScheme(4, group_size=64, nested=(2,)), 50, 300, 13, 4, False),  # INT8: 6-row and 2-block tails
             (QScheme(8, group_size=None, grid="asymmetric", nested=(5,)), 33, 45, 9, 5, False),
             (QScheme(2, group_size=64, grid="asymmetric"), 17, 131, 5, 2, AWQ),
             (QScheme(1, group_size=8), 40, 203, 3, 1, False),
             # rotated (x R^T formed in the preparation): a tail past the last block, K32 padding, k < block
             (QScheme(4, group_size=64, rotation=32), 21, 77, 9, 4, False),
             (QScheme(3, group_size=32, rotation=16, nested=(2,)), 18, 64, 3, 2, False),
             (QScheme(2, group_size=None, grid="asymmetric", rotation=128), 20, 300, 7, 2, False),
             (QScheme(4, group_size=32, rotation=64), 9, 40, 6, 4, False)]
    arrays: dict[str, np.ndarray] = {"count": np.array(len(specs))}
    for c, (scheme, n, k, m, active, awq) in enumerate(specs):
        packed = random_packed(scheme, n, k, seed=c, input_scale=awq)
        kw = kernel_weight(packed)
        x, bias = torch.randn(m, k), torch.randn(n)
        scales, szs = kw.precision(packed, active)
        inp = kw.input_scale if kw.input_scale is not None else torch.empty(0)
        for name, t in {"x": x, "planes": kw.planes, "scales": scales, "szs": szs, "input_scale": inp,
                        "bias": bias, "ref": reference.linear(x, packed, bias, active)}.items():
            arrays[f"{c}_{name}"] = t.contiguous().numpy()
        arrays[f"{c}_active"], arrays[f"{c}_group_kb"] = np.array(active), np.array(kw.group_kb)
        arrays[f"{c}_lut8_ok"] = np.array(int(kw.lut8_reason is None))
        halves = kw.precision_half(packed, active)
        for name, t in zip(("scales_h", "zeros_h"), halves if halves is not None else (None, None)):
            arrays[f"{c}_{name}"] = np.empty(0, np.uint16) if t is None else t.contiguous().view(torch.int16).numpy()
        arrays[f"{c}_zero_h"] = np.array(kw.pointers(packed, active)[4], np.float32)
        rot = scheme.rotation
        arrays[f"{c}_rot"] = np.array(rot)
        arrays[f"{c}_rot_signs"] = signs(k // rot * rot).numpy() if rot and k >= rot else np.empty(0, np.float32)
    rotations = [(3, 77, 32), (6, 256, 128), (1, 40, 64), (5, 33, 2), (2, 4096, 4096)]  # tails, k < block, sizes
    arrays["had_count"] = np.array(len(rotations))
    for c, (m, k, block) in enumerate(rotations):
        x = torch.randn(m, k)
        arrays[f"had{c}_x"], arrays[f"had{c}_ref"] = x.numpy(), rotate(x, block).numpy()
        arrays[f"had{c}_signs"] = signs(max(k // block * block, 1)).numpy()
        arrays[f"had{c}_block"] = np.array(block)
    np.savez(path, **arrays)


def test_kernels_are_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("the sanitizer run preloads the ASan runtime with LD_PRELOAD (Linux only)")
    asan = _runtime("libasan.so")
    if asan is None:
        pytest.skip("the compiler has no libasan.so to preload")
    build = _build()
    _cases(tmp_path / "cases.npz")
    (tmp_path / "child.py").write_text(CHILD)
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1", PYTHONPATH="")
    out = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(build), str(tmp_path / "cases.npz")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and "sanitized kernels ok" in out.stdout, out.stderr[-4000:]
