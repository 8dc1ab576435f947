// Narrow C ABI between the dispatcher and the per-ISA kernels of bitsfusion._C.
//
// Kernel weight layout (made by bitsfusion/kernels/repack.py from the canonical bit-planes):
//   planes  uint8 [NB][bits][KB][16]   NB = ceil(N/16) row blocks, KB = ceil(K/8) bytes a row.
//           planes[nb][j][kb][r] = canonical qweight[j, 16*nb + r, kb]  (plane j = bit b-1-j, MSB first;
//           bit i of the byte is element k = 8*kb + i). Rows past N are zero.
//   scales  float [NB][NG][16]   scale of precision b' per (row, group);  szs = scale * zero (same layout).
// A group covers bytes [g*group_kb, (g+1)*group_kb) of a row: group_size must be a multiple of 8,
// or the layer has one group (group_kb = KB).
//
// The maths, with x' = x * input_scale (zero past K) and c' the top b' bits of the code:
//   y[m, n] = sum_g ( s[n,g] * sum_{k in g} x'[m,k] * c'[n,k]  -  s[n,g]*z[n,g] * sum_{k in g} x'[m,k] ) + bias[n]
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum bf_isa { BF_ISA_SCALAR = 0, BF_ISA_AVX2 = 1, BF_ISA_AVX512 = 2, BF_ISA_COUNT = 3 };
enum bf_kernel { BF_KERNEL_LUT = 0, BF_KERNEL_DEQUANT = 1 };

typedef struct bf_linear_args {
    const float* x;            // [m, k] row-major
    int64_t m, k, n;
    const float* input_scale;  // [k] or NULL
    const uint8_t* planes;     // [NB][bits][KB][16]
    int32_t bits, active_bits; // stored planes, planes read (1..bits)
    const float* scales;       // [NB][NG][16]
    const float* szs;          // [NB][NG][16]
    int64_t n_groups, group_kb;
    const float* bias;         // [n] or NULL
    float* y;                  // [m, n] row-major
    int32_t kernel;            // bf_kernel
} bf_linear_args;

// Per-call scratch sizes (floats), all owned by the caller.
//   xs     [m][K8]            x' padded with zeros to K8 = 8*KB
//   xsum   [m][NG]            per-group sums of x'
//   tables [m][2*KB][16]      LUT kernel only: tables[m][t][v] = sum_{i<4, bit i of v} x'[m, 4t+i]
//   tile   [K8][16]           dequant kernel only, one per worker thread
typedef struct bf_isa_impl {
    const char* name;
    void (*prepare)(const bf_linear_args* a, float* xs, float* xsum, float* tables);
    void (*rows)(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                 int64_t nb_begin, int64_t nb_end, float* tile);
} bf_isa_impl;

extern const bf_isa_impl bf_impl_scalar;
#if defined(BF_X86)
extern const bf_isa_impl bf_impl_avx2;
extern const bf_isa_impl bf_impl_avx512;
#endif

#ifdef __cplusplus
}
#endif
