// Portable kernels: the 16 lanes are plain arrays (the compiler may use the baseline SIMD of the target).
#include <math.h>
#include "bitsfusion/kernels.h"

namespace bf_scalar {
#include "kernel_impl.h"
#include "ops_scalar.h"
#include "q8_prep.h"
#include "q8_portable.h"
}  // namespace bf_scalar

static void prepare_scalar(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_scalar::prepare<bf_scalar::Ops>(a, xs, xsum, tables);
}
static void rows_scalar(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                        int64_t b0, int64_t b1, float* tile) {
    bf_scalar::rows<bf_scalar::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
static void prepare_q8_scalar(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_scalar::prepare_q8<bf_scalar::Ops>(a, s);
}
static void rows_q8_scalar(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_scalar::rows_q8_portable(a, s, b0, b1, work);
}
extern "C" const bf_isa_impl bf_impl_scalar = {"scalar", prepare_scalar, rows_scalar, prepare_q8_scalar,
                                               rows_q8_scalar};
