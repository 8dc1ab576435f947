// AVX2 + FMA kernels: 16 lanes as two ymm registers; the 16-entry table lookup is two 8-entry
// vpermps and a blend on bit 3 of the index. Compiled with -mavx2 -mfma (this file only).
#include <immintrin.h>
#include "bitsfusion/kernels.h"

namespace bf_avx2 {
#include "../../core/kernel_impl.h"

#include "ops_avx2.h"
}  // namespace bf_avx2

static void prepare_avx2(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_avx2::prepare<bf_avx2::Ops>(a, xs, xsum, tables);
}
static void rows_avx2(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                      int64_t b0, int64_t b1, float* tile) {
    bf_avx2::rows<bf_avx2::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
// The integer kernels live in q8_avx2.cpp.
extern "C" void bf_avx2_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s);
extern "C" void bf_avx2_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work);
extern "C" const bf_isa_impl bf_impl_avx2 = {"avx2", prepare_avx2, rows_avx2, bf_avx2_prepare_q8, bf_avx2_rows_q8};
