// Narrow C ABI between the dispatcher and the per-ISA kernels of bitsfusion._C.
//
// Kernel weight layout (made by bitsfusion/kernels/repack.py from the canonical bit-planes):
//   planes  uint8 [NB][bits][Q][16][4]   NB = ceil(N/16) row blocks, KB = ceil(K/8) bytes a row,
//           Q = ceil(KB/4) "quartets" of 4 plane bytes (32 elements of K) per row.
//           planes[nb][j][q][r][p] = canonical qweight[j, 16*nb + r, 4*q + p]  (plane j = bit b-1-j, MSB
//           first; bit i of the byte is element k = 8*(4q+p) + i). Rows past N and bytes past KB are zero.
//           One 64-byte vector holds, for 16 rows, 4 consecutive plane bytes of each row in one 32-bit lane.
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

enum bf_isa { BF_ISA_SCALAR = 0, BF_ISA_AVX2 = 1, BF_ISA_AVX512 = 2, BF_ISA_NEON = 3, BF_ISA_COUNT = 4 };
// LUT32: fp32 tables (exact). DEQUANT: fp32 dequantised tiles (exact). LUT8: int8 tables (T-MAC style,
// table rounding error). INT8: activations quantised to int8 per row, integer dot products.
enum bf_kernel { BF_KERNEL_LUT32 = 0, BF_KERNEL_DEQUANT = 1, BF_KERNEL_LUT8 = 2, BF_KERNEL_INT8 = 3 };
// Activation applied to y (bias included) by every kernel, in a pass over each part of y right after writing it:
// GELU = x * Phi(x) (erf form, as torch.nn.functional.gelu), erf from a rational approximation (kernel_impl.h).
enum bf_act { BF_ACT_NONE = 0, BF_ACT_GELU = 1, BF_ACT_COUNT = 2 };

typedef struct bf_linear_args {
    const float* x;            // [m, k] row-major
    int64_t m, k, n;
    const float* input_scale;  // [k] or NULL
    const uint8_t* planes;     // [NB][bits][Q][16][4]
    int32_t bits, active_bits; // stored planes, planes read (1..bits)
    const float* scales;       // [NB][NG][16]
    const float* szs;          // [NB][NG][16]
    int64_t n_groups, group_kb;
    const float* bias;         // [n] or NULL
    float* y;                  // [m, n] row-major
    int32_t kernel;            // bf_kernel
    // Optional (LUT8 on AVX-512 reads them when set): the same scales, and the zeros, as float16 [NB][NG][16];
    // s * z is formed in fp32 in the kernel, which equals szs, and halves the bytes a GEMV streams besides planes.
    const uint16_t* scales_h;
    const uint16_t* zeros_h;   // NULL with scales_h set: every group's zero is zero_h (a symmetric grid's constant)
    float zero_h;
    int32_t act;               // bf_act, applied to y[m, n] (bias included) once the kernel has written it
    // Optional (LUT8 and INT8 only; not with input_scale): the kernels take x R^T, every whole block of rot_block
    // columns of a row becoming H (s * v) / sqrt(rot_block) (bitsfusion/quant/rotation.py), s = rot_signs
    // [k / rot_block * rot_block]; formed row by row inside the per-call preparation (x is not written).
    int64_t rot_block;         // 0: no rotation; else a power of two in 2..4096
    const float* rot_signs;
} bf_linear_args;

// Per-call scratch, all owned by the caller (K32 = 32*Q, the padded K; T = K32/4 tables a row).
//   fp32 kernels (LUT32, DEQUANT):
//     xs     float [m][K32]        x' padded with zeros
//     xsum   float [m][NG]         per-group sums of x'
//     tables float [m][T][16]      LUT32 only: tables[m][t][v] = sum_{i<4, bit i of v} x'[m, 4t+i]
//     tile   float [K32][16]       DEQUANT only, one per worker thread
//   LUT8 (needs NG == 1 or group_kb % 4 == 0, so that a group is whole quartets):
//     xsum   float [m][NG]         as above
//     tab8   uint8 [m][Q][2][4][16] tab8[m][q][h][p][v] = e of table t = 8q + 2p + h (h: low/high nibble)
//     tpar   float [m][NG][2]      (sc, off): table t's entry v stands for sc*e + neg_t, off = sum_{t in g} neg_t
//     dacc   int32 [8][NG][16]     per worker thread: per-group integer sums while planes stream by
//   INT8:
//     xq     int8  [m][K32]        round(x' / sx[m]), |xq| <= 127, zero past K
//     sx     float [m]             max_k |x'[m,k]| / 127
//     xqsum  float [m][NG]         per-group sums of xq (integers, exact in float for K < 132k)
//     xqt    int8  [ceil(m/6)][K32/4][6][4]  xq by tiles of 6 rows, then k-quad, for the AVX-512 GEMM: the 6 rows
//            of its register tile read one contiguous stream (rows past m are not written nor read)
//     tile8  uint8 [2P][8Q][16][4] per worker thread (P = bf_int8_panel_pairs(Q)): codes of P pairs of row
//            blocks, 4 consecutive k per lane (AVX-512 and AVX2 paths; the AVX2 one stores c' - 128 at 8 active bits)
typedef struct bf_q8_scratch {
    float* xs;        // [m][K32] x' padded (both); NULL for INT8 without input_scale when K = K32 (x is used)
    float* xsum;
    uint8_t* tab8;
    float* tpar;
    float* tstat;     // [2][T] LUT8 only: per-table sum |x| and neg_t of one row (reused per row)
    int8_t* xq;
    int8_t* xqt;      // [ceil(m/6)][K32/4][6][4] INT8 only (AVX-512): xq of 6 rows' k-quads side by side
    float* sx;
    float* xqsum;
    int64_t xqt_m0;   // the first row of this (part of a) call: a preparation of rows m0.. writes xqt (the
                      // whole call's, not offset) at rows m0 + m
} bf_q8_scratch;

// Row-block pairs the AVX-512 and AVX2 INT8 GEMMs unpack at once (a panel of at most 256 KB of codes, at least one
// pair; 1024 Q bytes a pair); its per-worker tile8 buffer is this many pairs.
static inline int64_t bf_int8_panel_pairs(int64_t Q) {
    const int64_t p = (int64_t)(256 << 10) / (1024 * Q);
    return p < 1 ? 1 : p;
}

typedef struct bf_isa_impl {
    const char* name;
    void (*prepare)(const bf_linear_args* a, float* xs, float* xsum, float* tables);
    void (*rows)(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                 int64_t nb_begin, int64_t nb_end, float* tile);
    void (*prepare_q8)(const bf_linear_args* a, const bf_q8_scratch* s);
    // work: dacc (LUT8) or tile8 (INT8) of this worker
    void (*rows_q8)(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb_begin, int64_t nb_end, void* work);
} bf_isa_impl;

extern const bf_isa_impl bf_impl_scalar;
#if defined(BF_X86)
extern const bf_isa_impl bf_impl_avx2;
extern const bf_isa_impl bf_impl_avx512;
#endif
#if defined(BF_ARM)
extern const bf_isa_impl bf_impl_neon;
#endif

#ifdef __cplusplus
}
#endif
