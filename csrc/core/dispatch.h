// The dispatcher's interface to the bindings: CPU features, ISA choice, and one threaded linear call.
#pragma once
#include "bitsfusion/kernels.h"

namespace bf {

struct CpuFeatures {
    bool avx2 = false, avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
    bool avx512vnni = false, avx512vbmi = false, gfni = false;
};

CpuFeatures cpu_features();
bool isa_supported(int isa);  // compiled in and runnable on this CPU (and OS)
int best_isa();
const char* isa_name(int isa);
// Runs y = linear(x) on `threads` workers (the calling thread is one of them). Throws std::invalid_argument
// for an ISA path that does not run here. Arguments are trusted: bitsfusion/kernels/native.py checks them.
void linear(const bf_linear_args& a, int isa, int threads);
// In place on x [m, k] (row-major float32): every whole block of `block` floats of a row (a power of two, 2..4096)
// becomes H (s * v) / sqrt(block), or s * (H v) / sqrt(block) when `inverse`; signs s is [k / block * block].
// The tail past the last whole block is left as it is. Throws std::invalid_argument for bad sizes or ISA.
void hadamard(float* x, int64_t m, int64_t k, int64_t block, const float* signs, bool inverse, int isa, int threads);
// On the calling thread: dst[r, :k] = the forward rotation of src[r, :k] for rows r < m (row strides lds and
// ldd >= k), dst[r, k:ldd] = 0. Arguments are trusted (the dispatcher's own buffers; `isa` runs here).
void hadamard_copy(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t m, int64_t k, int64_t block,
                   const float* signs, int isa);

}  // namespace bf
