"""The native extension ``bitsfusion._C`` and the instruction-set paths it can run here.

``_C`` is built by the package's own build (scikit-build-core + CMake, ``csrc/``). It holds one copy of
every kernel per ISA (``scalar``, ``avx2``, ``avx512`` on x86-64; ``scalar``, ``neon`` on AArch64), compiled
with per-file flags, and picks among them at run time from cpuid. The path used by a call is, in order of precedence:

1. the ``isa=`` argument of ``native.linear`` / ``dispatch.linear``;
2. the environment variable ``BITSFUSION_ISA=scalar|avx2|avx512|neon`` (read on every call, so tests can
   force each path);
3. the best path this CPU runs (``best_isa()``).

Forcing a path the CPU (or the build) lacks raises ``KernelUnavailable``; an unknown name ``ConfigError``.
This module never warns: ``native`` reports a missing extension once, at import.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..errors import ConfigError, KernelUnavailable

__all__ = ["ISA_NAMES", "NATIVE", "UNAVAILABLE_REASON", "supported_isas", "best_isa", "selected_isa",
           "isa_code", "cpu_features"]

ISA_NAMES: tuple[str, ...] = ("scalar", "avx2", "avx512", "neon")  # the codes of csrc enum bf_isa
ENV_VAR = "BITSFUSION_ISA"


def _load() -> tuple[ModuleType | None, str | None]:
    try:
        mod = importlib.import_module("bitsfusion._C")
    except Exception as e:  # ImportError, or an OSError from a broken shared object
        return None, f"bitsfusion._C did not load ({type(e).__name__}: {e})"
    return mod, None


NATIVE, UNAVAILABLE_REASON = _load()


def _need_native() -> ModuleType:
    if NATIVE is None:
        raise KernelUnavailable(f"native kernels unavailable: {UNAVAILABLE_REASON}; reinstall bitsfusion with a "
                                f"C++17 compiler and CMake present (pip install -e .), or use kernels.reference")
    return NATIVE


def supported_isas() -> tuple[str, ...]:
    """The ISA paths that run on this CPU, weakest first (empty when ``_C`` is not built)."""
    if NATIVE is None:
        return ()
    return tuple(name for i, name in enumerate(ISA_NAMES) if NATIVE.isa_supported(i))


def best_isa() -> str:
    """The fastest path this CPU runs. ``KernelUnavailable`` without ``_C``."""
    return ISA_NAMES[_need_native().best_isa()]


def selected_isa(requested: str | None = None) -> str:
    """The path a call will use: ``requested``, else ``$BITSFUSION_ISA``, else ``best_isa()``."""
    mod = _need_native()
    source = "isa argument"
    if requested is None:
        requested, source = os.environ.get(ENV_VAR) or None, f"${ENV_VAR}"
    if requested is None:
        return ISA_NAMES[mod.best_isa()]
    name = str(requested).strip().lower()
    if name not in ISA_NAMES:
        raise ConfigError(f"{source}={requested!r} names no ISA path; use one of {list(ISA_NAMES)}")
    if not mod.isa_supported(ISA_NAMES.index(name)):
        raise KernelUnavailable(f"{source}={name!r}: this CPU (or this build) does not run the {name} path; "
                                f"it runs {list(supported_isas())}")
    return name


def isa_code(name: str) -> int:
    """The integer ``_C`` uses for an ISA name."""
    return ISA_NAMES.index(name)


def cpu_features() -> dict[str, bool]:
    """cpuid flags the dispatcher looks at (avx2, avx512f/bw/dq/vl, avx512vnni, avx512vbmi); empty without ``_C``."""
    return {} if NATIVE is None else dict(NATIVE.cpu_features())
