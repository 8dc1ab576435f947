// AVX2 + FMA kernels: 16 lanes as two ymm registers; the 16-entry table lookup is two 8-entry
// vpermps and a blend on bit 3 of the index. Compiled with -mavx2 -mfma (this file only).
#include <immintrin.h>
#include "bitsfusion/kernels.h"

namespace bf_avx2 {
#include "../../core/kernel_impl.h"

struct Ops {
    struct V { __m256 a, b; };
    struct I { __m256i a, b; };
    static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
    static I izero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
    static V set1(float x) { const __m256 v = _mm256_set1_ps(x); return {v, v}; }
    static V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
    static void store(float* p, V x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
    static V add(V x, V y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
    static V mul(V x, V y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
    static V neg(V x) { const __m256 z = _mm256_setzero_ps(); return {_mm256_sub_ps(z, x.a), _mm256_sub_ps(z, x.b)}; }
    static V fmadd(V x, V y, V c) { return {_mm256_fmadd_ps(x.a, y.a, c.a), _mm256_fmadd_ps(x.b, y.b, c.b)}; }
    static V fnmadd(V x, V y, V c) { return {_mm256_fnmadd_ps(x.a, y.a, c.a), _mm256_fnmadd_ps(x.b, y.b, c.b)}; }
    static I bytes(const uint8_t* p) {
        return {_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p)),
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8)))};
    }
    static I shr4(I x) { return {_mm256_srli_epi32(x.a, 4), _mm256_srli_epi32(x.b, 4)}; }
    static __m256i push1(__m256i c, __m256i v, int bit) {
        const __m256i b = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set1_epi32(bit)), _mm256_set1_epi32(1));
        return _mm256_add_epi32(_mm256_add_epi32(c, c), b);
    }
    static I push_bit(I c, I v, int bit) { return {push1(c.a, v.a, bit), push1(c.b, v.b, bit)}; }
    static V to_float(I x) { return {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
    static __m256 look8(__m256i idx, __m256 lo, __m256 hi) {
        const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), sel);
    }
    static V lookup(I idx, const float* table) {
        const __m256 lo = _mm256_loadu_ps(table), hi = _mm256_loadu_ps(table + 8);
        return {look8(idx.a, lo, hi), look8(idx.b, lo, hi)};
    }
};
}  // namespace bf_avx2

static void prepare_avx2(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_avx2::prepare<bf_avx2::Ops>(a, xs, xsum, tables);
}
static void rows_avx2(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                      int64_t b0, int64_t b1, float* tile) {
    bf_avx2::rows<bf_avx2::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
extern "C" const bf_isa_impl bf_impl_avx2 = {"avx2", prepare_avx2, rows_avx2};
