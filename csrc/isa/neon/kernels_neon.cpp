// NEON (AArch64 Advanced SIMD) fp32 kernels: 16 lanes as four 128-bit registers; the 16-entry float table
// lookup is one tbl over the table's 64 bytes. Compiled for AArch64 only (CMakeLists.txt), where NEON is baseline.
#include <arm_neon.h>
#include <math.h>
#include "bitsfusion/kernels.h"

namespace bf_neon {
#include "../../core/kernel_impl.h"

#include "ops_neon.h"
}  // namespace bf_neon

static void prepare_neon(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_neon::prepare<bf_neon::Ops>(a, xs, xsum, tables);
}
static void rows_neon(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                      int64_t b0, int64_t b1, float* tile) {
    bf_neon::rows<bf_neon::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
// The integer kernels live in q8_neon.cpp.
extern "C" void bf_neon_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s);
extern "C" void bf_neon_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work);
extern "C" const bf_isa_impl bf_impl_neon = {"neon", prepare_neon, rows_neon, bf_neon_prepare_q8, bf_neon_rows_q8};
