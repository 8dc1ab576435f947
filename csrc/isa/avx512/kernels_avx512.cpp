// AVX-512 (F/BW/DQ/VL) kernels: 16 lanes are one zmm; the 16-entry fp32 table lookup is one vpermps
// (_mm512_permutexvar_ps, which reads the low 4 bits of each index). Compiled with AVX-512 flags (this file only).
#include <immintrin.h>
#include "bitsfusion/kernels.h"

namespace bf_avx512 {
#include "../../core/kernel_impl.h"

struct Ops {
    using V = __m512;
    using I = __m512i;
    static V zero() { return _mm512_setzero_ps(); }
    static I izero() { return _mm512_setzero_si512(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
    static V add(V x, V y) { return _mm512_add_ps(x, y); }
    static V mul(V x, V y) { return _mm512_mul_ps(x, y); }
    static V neg(V x) { return _mm512_sub_ps(_mm512_setzero_ps(), x); }
    static V fmadd(V x, V y, V c) { return _mm512_fmadd_ps(x, y, c); }
    static V fnmadd(V x, V y, V c) { return _mm512_fnmadd_ps(x, y, c); }
    static I bytes(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p)); }
    static I shr4(I x) { return _mm512_srli_epi32(x, 4); }
    static I push_bit(I c, I v, int bit) {
        const I b = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(bit)), _mm512_set1_epi32(1));
        return _mm512_add_epi32(_mm512_add_epi32(c, c), b);
    }
    static V to_float(I x) { return _mm512_cvtepi32_ps(x); }
    static V lookup(I idx, const float* table) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table)); }
};
}  // namespace bf_avx512

static void prepare_avx512(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_avx512::prepare<bf_avx512::Ops>(a, xs, xsum, tables);
}
static void rows_avx512(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                        int64_t b0, int64_t b1, float* tile) {
    bf_avx512::rows<bf_avx512::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
extern "C" const bf_isa_impl bf_impl_avx512 = {"avx512", prepare_avx512, rows_avx512};
