"""The NEON path (csrc/isa/neon), which this x86-64 machine cannot run natively: cross-built for AArch64 with the
portable scalar path beside it into one static program (tests/kernels/neon_cross_check.cpp) and run under
qemu-user, which compares every NEON kernel with the scalar one. Skipped without ``aarch64-linux-gnu-g++`` and
``qemu-aarch64`` (Debian: ``apt-get install g++-aarch64-linux-gnu qemu-user``; .ci/run installs them)."""

from __future__ import annotations

import shutil
import subprocess
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
