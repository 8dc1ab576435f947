"""The Python boundary of the native kernels: input checks, fallbacks, repacking, thread safety."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from bitsfusion.errors import ConfigError, KernelUnavailable
from bitsfusion.kernels import dispatch, isa, native, reference
from bitsfusion.kernels.repack import kernel_weight, repack_planes
from bitsfusion.types import QScheme
from tests.kernels.native_helpers import needs_native, random_packed


def test_repacked_planes_put_sixteen_rows_of_four_bytes_side_by_side() -> None:
    qweight = torch.randint(0, 256, (3, 20, 5), dtype=torch.uint8)  # K = 40: 5 plane bytes a row
    planes = repack_planes(qweight)
    assert planes.shape == (2, 3, 2, 64)  # [ceil(20/16), bits, ceil(5/4), 16 rows x 4 bytes]
    assert planes[1, 0, 1, 4 * 3 + 0] == qweight[0, 19, 4]  # the module docstring's example
    blocks = planes.view(2, 3, 2, 16, 4)
    assert torch.equal(blocks[0, :, 0].permute(0, 1, 2), qweight[:, :16, :4])
    assert int(blocks[1, :, :, 4:].abs().sum()) == 0  # rows 20..31 are padding
    assert int(blocks[:, :, 1, :, 1:].abs().sum()) == 0  # plane bytes 5..7 are padding


@needs_native
def test_repack_is_cached_and_switching_precision_does_not_repack() -> None:
    packed = random_packed(QScheme(4, group_size=32, nested=(2,)), 24, 64)
    kw = kernel_weight(packed)
    native.linear(torch.randn(1, 64), packed, None, 2)
    native.linear(torch.randn(1, 64), packed, None, 4)
    assert kernel_weight(packed) is kw and kw.planes.data_ptr() == kernel_weight(packed).planes.data_ptr()
    packed.qweight.zero_()  # an in-place write (e.g. load_state_dict) invalidates the cache
    assert kernel_weight(packed) is not kw
    x = torch.randn(2, 64)
    exact = native.linear(x, packed, kernel="lut32")  # the fp32-table kernel: equal up to summation order
    assert torch.allclose(exact, reference.linear(x, packed), rtol=1e-5, atol=1e-5)


@needs_native
def test_concurrent_calls_from_threads_equal_serial_calls() -> None:
    """Several Python threads on one layer (and the native worker pool): every kernel, every precision."""
    packed = random_packed(QScheme(3, group_size=64, grid="asymmetric", nested=(1, 2)), 300, 1000)
    xs = [torch.randn(m, 1000) for m in (1, 4, 8, 16, 1, 32, 2, 9)]
    jobs = [(x, b, k) for x in xs for b in (1, 2, 3) for k in ("lut", "lut32", "int8", "dequant")]
    run = lambda job: native.linear(job[0], packed, None, job[1], kernel=job[2])  # noqa: E731
    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run, jobs))
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel))


@needs_native
def test_bad_inputs_raise_before_any_pointer_is_touched() -> None:
    packed = random_packed(QScheme(4, group_size=32, nested=(2,)), 20, 40)
    kw = kernel_weight(packed)
    good = torch.randn(3, 40)
    with pytest.raises(ConfigError, match="40 features"):
        native.linear(torch.randn(3, 41), packed)
    with pytest.raises(ConfigError, match="runs at \\[2, 4\\] bits"):
        native.linear(good, packed, None, 3)
    with pytest.raises(KernelUnavailable, match="multiple of 32"):
        native.linear(good, random_packed(QScheme(4, group_size=8), 20, 40), kernel="lut")
    with pytest.raises(ConfigError, match="not one of"):
        native.run(good, kw, packed, None, 4, "fast", "scalar", 1)
    with pytest.raises(ConfigError, match="float32/float16/bfloat16"):
        native.linear(good.double(), packed)
    with pytest.raises(ConfigError, match="contiguous"):
        native.run(torch.randn(40, 3).T, kw, packed, None, 4, "lut", "scalar", 1)
    with pytest.raises(ConfigError, match="float32"):
        native.run(good.half(), kw, packed, None, 4, "lut", "scalar", 1)
    with pytest.raises(ConfigError, match="bias must have shape"):
        native.run(good, kw, packed, torch.randn(21), 4, "lut", "scalar", 1)
    raw = np.frombuffer(bytearray(3 * 40 * 4 + 1), dtype=np.float32, count=120, offset=1)  # odd address
    misaligned = torch.from_numpy(raw).reshape(3, 40)
    if misaligned.data_ptr() % 4:
        with pytest.raises(ConfigError, match="aligned"):
            native.run(misaligned, kw, packed, None, 4, "lut", "scalar", 1)
    with pytest.raises(ConfigError, match="requires grad"):
        native.linear(good.clone().requires_grad_(), packed)
    with pytest.raises(ConfigError, match="names no ISA path"):
        native.linear(good, packed, isa="sse9")
    with pytest.raises(ConfigError, match="not one of"):
        dispatch.linear(good, packed, kernel="fast")
    with pytest.raises(ValueError, match="planes must be"):  # the C++ side re-checks shapes
        isa.NATIVE.linear(good, kw.planes[:1], *kw.precision(packed, 4), None, None,
                          torch.empty(3, 20), 20, 4, kw.group_kb, 0, 0, 1)


@needs_native
def test_isa_env_var_rejects_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BITSFUSION_ISA", "sve2")
    with pytest.raises(ConfigError, match="BITSFUSION_ISA"):
        isa.selected_isa()


@needs_native
def test_an_isa_of_another_architecture_is_unavailable_not_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    """``neon`` is a known path that an x86-64 build does not run (and ``avx2`` one that an AArch64 build does not)."""
    other = "avx2" if "neon" in isa.supported_isas() else "neon"
    monkeypatch.setenv("BITSFUSION_ISA", other)
    with pytest.raises(KernelUnavailable, match=f"does not run the {other} path"):
        isa.selected_isa()


@needs_native
def test_forcing_an_isa_the_cpu_lacks_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoAvx512:
        def __getattr__(self, name: str) -> object:
            return getattr(isa.NATIVE, name)

        def isa_supported(self, code: int) -> bool:
            return code != isa.isa_code("avx512")

    monkeypatch.setattr(isa, "NATIVE", NoAvx512())
    with pytest.raises(KernelUnavailable, match="does not run the avx512 path"):
        isa.selected_isa("avx512")


@pytest.mark.parametrize("scheme", [QScheme(2, group_size=32, grid="balanced"), QScheme(3, group_size=12)],
                         ids=["balanced-grid", "group-12"])
def test_weights_the_kernels_do_not_take_fall_back_to_the_reference(scheme: QScheme) -> None:
    packed = random_packed(scheme, 10, 50)
    x = torch.randn(2, 50)
    kernel, why = dispatch.choose_kernel(x, packed)
    assert kernel == "reference" and why
    assert torch.equal(dispatch.linear(x, packed), reference.linear(x, packed))
    if native.available():
        with pytest.raises(KernelUnavailable, match="cannot run this weight"):
            native.linear(x, packed)


def test_autograd_through_x_uses_the_reference() -> None:
    packed = random_packed(QScheme(4, group_size=32), 10, 64)
    x = torch.randn(2, 64, requires_grad=True)
    assert dispatch.choose_kernel(x, packed)[0] == "reference"
    dispatch.linear(x, packed).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_without_the_extension_everything_runs_on_the_reference_with_one_warning() -> None:
    code = (
        "import sys, warnings\n"
        "sys.modules['bitsfusion._C'] = None\n"  # makes `import bitsfusion._C` fail, as after a failed build
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    import torch\n"
        "    from bitsfusion.kernels import dispatch, native\n"
        "    import bitsfusion.kernels.native\n"
        "from bitsfusion.types import QScheme\n"
        "from tests.kernels.native_helpers import random_packed\n"
        "msgs = [str(w.message) for w in seen if 'native kernels unavailable' in str(w.message)]\n"
        "assert len(msgs) == 1 and 'using the torch reference' in msgs[0], msgs\n"
        "p = random_packed(QScheme(3, group_size=32), 8, 40)\n"
        "assert dispatch.choose_kernel(torch.randn(1, 40), p)[0] == 'reference'\n"
        "assert dispatch.linear(torch.randn(1, 40), p).shape == (1, 8)\n"
        "assert not native.available() and dispatch.describe()['isas'] == []\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
