// AVX-512 (F/BW/DQ/VL) kernels: 16 lanes are one zmm; the 16-entry fp32 table lookup is one vpermps
// (_mm512_permutexvar_ps, which reads the low 4 bits of each index). Compiled with AVX-512 flags (this file only).
#include <immintrin.h>
#include "bitsfusion/kernels.h"

namespace bf_avx512 {
#include "../../core/kernel_impl.h"

#include "ops_avx512.h"
}  // namespace bf_avx512

static void prepare_avx512(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_avx512::prepare<bf_avx512::Ops>(a, xs, xsum, tables);
}
static void rows_avx512(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                        int64_t b0, int64_t b1, float* tile) {
    bf_avx512::rows<bf_avx512::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
// The integer kernels live in q8_avx512.cpp (compiled with VNNI and VBMI as well).
extern "C" void bf_avx512_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s);
extern "C" void bf_avx512_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work);
extern "C" const bf_isa_impl bf_impl_avx512 = {"avx512", prepare_avx512, rows_avx512, bf_avx512_prepare_q8, bf_avx512_rows_q8};
