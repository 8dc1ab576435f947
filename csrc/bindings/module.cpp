// bitsfusion._C: nanobind bindings (no libtorch). Arrays cross as DLPack / buffer-protocol ndarrays;
// dtype, rank, contiguity and device are enforced by the ndarray types, shapes are re-checked here,
// and the GIL is released while the kernel runs. bitsfusion/kernels/native.py is the only caller.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "../core/dispatch.h"

namespace nb = nanobind;
template <class T, size_t D>
using Arr = nb::ndarray<T, nb::ndim<D>, nb::c_contig, nb::device::cpu>;

static void need(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("bitsfusion._C.linear: " + what);
}

// A rotation (bitsfusion/quant/rotation.py) of x before the kernels: none (0) or a power-of-two block, not
// together with AWQ's input_scale (QScheme refuses the combination).
static void need_rotation(int64_t rot_block, bool input_scale) {
    need(rot_block == 0 || (rot_block >= 2 && rot_block <= 4096 && !(rot_block & (rot_block - 1))),
         "rot_block must be 0 or a power of two in 2..4096");
    need(!rot_block || !input_scale, "a rotation and an input_scale cannot be combined");
}

static void linear(Arr<const float, 2> x, Arr<const uint8_t, 4> planes, Arr<const float, 3> scales,
                   Arr<const float, 3> szs, std::optional<Arr<const float, 1>> input_scale,
                   std::optional<Arr<const float, 1>> bias, Arr<float, 2> y, int64_t n, int active_bits,
                   int64_t group_kb, int kernel, int isa, int threads, int act, int64_t rot_block,
                   std::optional<Arr<const float, 1>> rot_signs) {
    const int64_t m = (int64_t)x.shape(0), k = (int64_t)x.shape(1);
    const int64_t NB = (n + 15) / 16, KB = (k + 7) / 8, NG = (int64_t)scales.shape(1);
    need(n >= 1 && k >= 1, "empty weight");
    const int64_t Q = (KB + 3) / 4;
    need((int64_t)planes.shape(0) == NB && (int64_t)planes.shape(2) == Q && planes.shape(3) == 64,
         "planes must be [ceil(N/16), bits, ceil(K/32), 64]");
    const int bits = (int)planes.shape(1);
    need(active_bits >= 1 && active_bits <= bits && bits <= 8, "active_bits must be in 1..bits (<= 8)");
    need((int64_t)scales.shape(0) == NB && scales.shape(2) == 16, "scales must be [ceil(N/16), n_groups, 16]");
    need(szs.shape(0) == scales.shape(0) && szs.shape(1) == scales.shape(1) && szs.shape(2) == 16,
         "szs must have the shape of scales");
    need(group_kb >= 1 && NG == (KB + group_kb - 1) / group_kb, "n_groups must be ceil(ceil(K/8) / group_kb)");
    need(!input_scale || (int64_t)input_scale->shape(0) == k, "input_scale must be [K]");
    need(!bias || (int64_t)bias->shape(0) == n, "bias must be [N]");
    need((int64_t)y.shape(0) == m && (int64_t)y.shape(1) == n, "y must be [M, N]");
    need(kernel >= BF_KERNEL_LUT32 && kernel <= BF_KERNEL_INT8,
         "kernel must be 0 (lut32), 1 (dequant), 2 (lut8) or 3 (int8)");
    need(kernel != BF_KERNEL_LUT8 || NG == 1 || group_kb % 4 == 0,
         "the lut8 kernel needs one group per row or a group size that is a multiple of 32");
    need(k < (1 << 17), "K must be below 131072 (int32 sums of the integer kernels)");
    need(isa >= 0 && isa < BF_ISA_COUNT && bf::isa_supported(isa), "this ISA path does not run on this CPU");
    need(act >= BF_ACT_NONE && act < BF_ACT_COUNT, "act must be 0 (none) or 1 (gelu)");
    need_rotation(rot_block, input_scale.has_value());
    need(!rot_block || k < rot_block || (rot_signs && (int64_t)rot_signs->shape(0) == k / rot_block * rot_block),
         "rot_signs must be [K // rot_block * rot_block]");
    bf_linear_args a{};
    if (rot_block && k >= rot_block) {
        a.rot_block = rot_block;
        a.rot_signs = rot_signs->data();
    }
    a.x = x.data(); a.m = m; a.k = k; a.n = n;
    a.input_scale = input_scale ? input_scale->data() : nullptr;
    a.planes = planes.data(); a.bits = bits; a.active_bits = active_bits;
    a.scales = scales.data(); a.szs = szs.data(); a.n_groups = NG; a.group_kb = group_kb;
    a.bias = bias ? bias->data() : nullptr;
    a.y = y.data(); a.kernel = kernel; a.act = act;
    if (m == 0) return;
    nb::gil_scoped_release release;
    bf::linear(a, isa, threads);
}

// The same call on raw addresses: nanobind's ndarray conversion costs ~1.5 us per array, a tenth of a
// 4096x4096 GEMV. Only bitsfusion/kernels/native.py calls it, after checking every tensor (dtype, device,
// shape, contiguity, alignment) and the shapes of its own repacked weights; the values here are trusted.
static void linear_raw(uintptr_t x, int64_t m, int64_t k, uintptr_t planes, int bits, uintptr_t scales,
                       uintptr_t szs, int64_t n_groups, uintptr_t input_scale, uintptr_t bias, uintptr_t y,
                       int64_t n, int active_bits, int64_t group_kb, int kernel, int isa, int threads,
                       uintptr_t scales_h, uintptr_t zeros_h, int act, float zero_h, int64_t rot_block,
                       uintptr_t rot_signs) {
    need(n >= 1 && k >= 1 && k < (1 << 17) && m >= 0, "bad sizes");
    need(active_bits >= 1 && active_bits <= bits && bits <= 8, "active_bits must be in 1..bits (<= 8)");
    need(kernel >= BF_KERNEL_LUT32 && kernel <= BF_KERNEL_INT8, "unknown kernel");
    need(kernel != BF_KERNEL_LUT8 || n_groups == 1 || group_kb % 4 == 0, "lut8 needs whole quartets a group");
    need(group_kb >= 1 && n_groups == ((k + 7) / 8 + group_kb - 1) / group_kb, "n_groups does not match group_kb");
    need(isa >= 0 && isa < BF_ISA_COUNT && bf::isa_supported(isa), "this ISA path does not run on this CPU");
    need(x && planes && scales && szs && y, "null address");
    need(act >= BF_ACT_NONE && act < BF_ACT_COUNT, "act must be 0 (none) or 1 (gelu)");
    bf_linear_args a{};
    a.x = (const float*)x; a.m = m; a.k = k; a.n = n;
    a.input_scale = (const float*)input_scale;
    a.planes = (const uint8_t*)planes; a.bits = bits; a.active_bits = active_bits;
    a.scales = (const float*)scales; a.szs = (const float*)szs; a.n_groups = n_groups; a.group_kb = group_kb;
    a.bias = (const float*)bias;
    a.y = (float*)y; a.kernel = kernel; a.act = act;
    need(scales_h != 0 || zeros_h == 0, "zeros_h needs scales_h");
    need_rotation(rot_block, input_scale != 0);
    if (rot_block && k >= rot_block) {  // fewer than rot_block columns: no whole block, nothing rotates
        need(rot_signs != 0, "rot_signs: null address");
        a.rot_block = rot_block;
        a.rot_signs = (const float*)rot_signs;
    }
    a.scales_h = (const uint16_t*)scales_h; a.zeros_h = (const uint16_t*)zeros_h; a.zero_h = zero_h;
    if (m == 0) return;
    nb::gil_scoped_release release;
    bf::linear(a, isa, threads);
}

// The rotation of bitsfusion/quant/rotation.py, in place on raw addresses (checked by kernels/native.py: float32,
// contiguous [m, k], 4-byte aligned; signs float32 [k // block * block]).
static void hadamard_raw(uintptr_t x, int64_t m, int64_t k, int64_t block, uintptr_t signs, bool inverse, int isa,
                         int threads) {
    if (!x || !signs) throw std::invalid_argument("bitsfusion._C.hadamard_raw: null address");
    if (m < 0 || k < 1) throw std::invalid_argument("bitsfusion._C.hadamard_raw: bad sizes");
    if (isa < 0 || isa >= BF_ISA_COUNT || !bf::isa_supported(isa))
        throw std::invalid_argument("bitsfusion._C.hadamard_raw: this ISA path does not run on this CPU");
    nb::gil_scoped_release release;
    bf::hadamard((float*)x, m, k, block, (const float*)signs, inverse, isa, threads);
}

NB_MODULE(_C, mod) {
    mod.doc() = "BitsFusion native low-bit CPU kernels (bit-serial LUT GEMV: int8 or fp32 tables; int8-activation and dequantised-tile GEMM)";
    mod.def("linear", &linear, nb::arg("x"), nb::arg("planes"), nb::arg("scales"), nb::arg("szs"),
            nb::arg("input_scale").none(), nb::arg("bias").none(), nb::arg("y"), nb::arg("n"),
            nb::arg("active_bits"), nb::arg("group_kb"), nb::arg("kernel"), nb::arg("isa"), nb::arg("threads"), nb::arg("act") = 0,
            nb::arg("rot_block") = 0, nb::arg("rot_signs").none() = nb::none());
    mod.def("linear_raw", &linear_raw, nb::arg("x"), nb::arg("m"), nb::arg("k"), nb::arg("planes"), nb::arg("bits"),
            nb::arg("scales"), nb::arg("szs"), nb::arg("n_groups"), nb::arg("input_scale"), nb::arg("bias"),
            nb::arg("y"), nb::arg("n"), nb::arg("active_bits"), nb::arg("group_kb"), nb::arg("kernel"),
            nb::arg("isa"), nb::arg("threads"), nb::arg("scales_h") = 0, nb::arg("zeros_h") = 0,
            nb::arg("act") = 0, nb::arg("zero_h") = 0.0f, nb::arg("rot_block") = 0, nb::arg("rot_signs") = 0);
    mod.def("hadamard_raw", &hadamard_raw, nb::arg("x"), nb::arg("m"), nb::arg("k"), nb::arg("block"),
            nb::arg("signs"), nb::arg("inverse"), nb::arg("isa"), nb::arg("threads"));
    mod.def("isa_supported", &bf::isa_supported, nb::arg("isa"));
    mod.def("best_isa", &bf::best_isa);
    mod.def("isa_name", [](int isa) { return std::string(bf::isa_name(isa)); }, nb::arg("isa"));
    mod.def("cpu_features", []() {
        const bf::CpuFeatures f = bf::cpu_features();
        nb::dict d;
        d["avx2"] = f.avx2; d["avx512f"] = f.avx512f; d["avx512bw"] = f.avx512bw; d["avx512dq"] = f.avx512dq;
        d["avx512vl"] = f.avx512vl; d["avx512vnni"] = f.avx512vnni; d["avx512vbmi"] = f.avx512vbmi; d["gfni"] = f.gfni;
        return d;
    });
    mod.attr("ISA_SCALAR") = (int)BF_ISA_SCALAR;
    mod.attr("ISA_AVX2") = (int)BF_ISA_AVX2;
    mod.attr("ISA_AVX512") = (int)BF_ISA_AVX512;
    mod.attr("KERNEL_LUT32") = (int)BF_KERNEL_LUT32;
    mod.attr("KERNEL_DEQUANT") = (int)BF_KERNEL_DEQUANT;
    mod.attr("KERNEL_LUT8") = (int)BF_KERNEL_LUT8;
    mod.attr("KERNEL_INT8") = (int)BF_KERNEL_INT8;
    mod.attr("ACT_NONE") = (int)BF_ACT_NONE;
    mod.attr("ACT_GELU") = (int)BF_ACT_GELU;
}
