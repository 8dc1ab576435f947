"""The NEON path (csrc/isa/neon), which this x86-64 machine cannot run natively: cross-built for AArch64 with the
portable scalar path beside it into one static program (tests/kernels/neon_cross_check.cpp) and run under
qemu-user, which compares every NEON kernel with the scalar one; and the whole extension module cross-built for
AArch64 through CMakeLists.txt. Skipped without ``aarch64-linux-gnu-g++`` and ``qemu-aarch64`` (Debian:
``apt-get install g++-aarch64-linux-gnu qemu-user``; .ci/run installs them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["tests/kernels/neon_cross_check.cpp", "csrc/core/dispatch.cpp", "csrc/core/hadamard.cpp",
           "csrc/core/parallel.cpp", "csrc/core/kernels_scalar.cpp", "csrc/isa/neon/kernels_neon.cpp",
           "csrc/isa/neon/q8_neon.cpp"]


def test_neon_kernels_match_the_scalar_path_under_qemu(tmp_path: Path) -> None:
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if not (cxx and qemu):
        pytest.skip("no aarch64-linux-gnu-g++ / qemu-aarch64 (apt-get install g++-aarch64-linux-gnu qemu-user)")
    exe = tmp_path / "neon_check"
    build = subprocess.run([cxx, "-O2", "-std=gnu++17", "-static", "-pthread", "-DBF_ARM=1", "-Wall",
                            f"-I{ROOT / 'csrc/include'}", *[str(ROOT / s) for s in SOURCES], "-o", str(exe), "-ldl"],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"cross build failed:\n{build.stderr[-4000:]}"
    run = subprocess.run([qemu, str(exe)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "neon cross check ok" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_extension_module_cross_builds_for_aarch64(tmp_path: Path) -> None:
    """The CMake branch for AArch64 (CMakeLists.txt: the neon sources, BF_ARM) and the bindings compile and link
    into an AArch64 shared object. Built against this interpreter's headers, so it is not a module to import there,
    only a check that the ARM build of the package compiles."""
    cxx = shutil.which("aarch64-linux-gnu-g++")
    try:
        import nanobind
    except ImportError:
        pytest.skip("nanobind is not installed in this environment (pip install nanobind)")
    if not (cxx and shutil.which("cmake")):
        pytest.skip("no aarch64-linux-gnu-g++ or cmake (apt-get install g++-aarch64-linux-gnu cmake)")
    toolchain = tmp_path / "aarch64.cmake"
    toolchain.write_text(f"set(CMAKE_SYSTEM_NAME Linux)\nset(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
                         f"set(CMAKE_CXX_COMPILER {cxx})\n")
    build = tmp_path / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = ["cmake", "-S", str(ROOT), "-B", str(build), *gen, f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
           f"-DPython_EXECUTABLE={sys.executable}", f"-DPython_INCLUDE_DIR={sysconfig.get_paths()['include']}",
           f"-Dnanobind_DIR={nanobind.cmake_dir()}"]
    for cmd in (cfg, ["cmake", "--build", str(build), "-j", "2"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    (so,) = build.glob("_C*.so")
    assert so.read_bytes()[18:20] == (183).to_bytes(2, "little")  # ELF e_machine: EM_AARCH64
