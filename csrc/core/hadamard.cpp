// The randomised block Hadamard rotation of activations (bitsfusion/quant/rotation.py; FORMAT.md 3.6): in place
// (`hadamard`, for bitsfusion._C.hadamard_raw) or from x into the integer kernels' scratch (`hadamard_copy`).
// Compiled for the baseline target; the AVX2 and AVX-512 loops carry target attributes and run only where
// dispatch.cpp's cpuid check says they may.
#include "dispatch.h"
#include "parallel.h"

#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <string.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace bf {

// Each block of B consecutive floats of a row (the tail past the last whole block untouched) becomes
// H_B (s * v) / sqrt(B) (forward) or s * (H_B v) / sqrt(B) (inverse): log2(B) butterfly stages. The
// AVX-512 path does the four stages inside a 16-float vector with lane permutes and masked subtracts, and the
// later ones between whole vectors; the AVX2 path likewise with 8-float vectors (three stages, permute + FMA
// by +-1); the portable path is plain loops. Rows are split over the workers.
namespace {

inline void butterfly(float* __restrict a, float* __restrict b, int64_t h) {
    for (int64_t j = 0; j < h; ++j) {
        const float p = a[j], q = b[j];
        a[j] = p + q;
        b[j] = p - q;
    }
}

// Row r of dst starts as row r of src (copied unless they are the same memory), the columns past k zeroed.
inline void start_row(const float* sr, float* d, int64_t k, int64_t ldd) {
    if (d != sr) {
        memcpy(d, sr, sizeof(float) * k);
        if (ldd > k) memset(d + k, 0, sizeof(float) * (ldd - k));
    }
}

// The transform of the whole blocks of one row, in place: log2(B) butterfly stages on plain loops.
#define BF_HADAMARD_ROW_PORTABLE(v0)                                                                         \
    {                                                                                                        \
        const float c = 1.0f / std::sqrt((float)B);                                                          \
        for (int64_t blk = 0; blk < k / B; ++blk) {                                                          \
            float* v = (v0) + blk * B;                                                                       \
            const float* sg = s + blk * B;                                                                   \
            if (!inverse)                                                                                    \
                for (int64_t i = 0; i < B; ++i) v[i] *= sg[i];                                               \
            for (int64_t h = 1; h < B; h <<= 1)                                                              \
                for (int64_t i = 0; i < B; i += 2 * h) butterfly(v + i, v + i + h, h);                       \
            if (inverse)                                                                                     \
                for (int64_t i = 0; i < B; ++i) v[i] *= c * sg[i];                                           \
            else                                                                                             \
                for (int64_t i = 0; i < B; ++i) v[i] *= c;                                                   \
        }                                                                                                    \
    }

// Rows r0..r1-1: dst[r, :k] = the transform of src[r, :k] (row strides lds, ldd; src == dst: in place),
// dst[r, k:ldd] = 0 when dst is not src.
#define BF_HADAMARD_ROWS_ARGS                                                                                \
    const float *src, int64_t lds, float *dst, int64_t ldd, int64_t r0, int64_t r1, int64_t k, int64_t B,    \
        const float *s, bool inverse
typedef void (*hadamard_rows_fn)(BF_HADAMARD_ROWS_ARGS);

void hadamard_rows_portable(BF_HADAMARD_ROWS_ARGS) {
    for (int64_t r = r0; r < r1; ++r) {
        float* d = dst + r * ldd;
        start_row(src + r * lds, d, k, ldd);
        BF_HADAMARD_ROW_PORTABLE(d)
    }
}
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
// One 8-float vector through the stages h = 1, 2, 4: v[j] = v[j^h] + v[j] where bit h of j is 0, else
// v[j^h] - v[j], as one FMA with +-1 (exact: the same sums and differences as the AVX-512 path's).
__attribute__((target("avx2,fma"))) inline __m256 wht8(__m256 v) {
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1), s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    v = _mm256_fmadd_ps(v, s1, _mm256_permute_ps(v, 0xB1));            // h = 1: swap neighbours
    v = _mm256_fmadd_ps(v, s2, _mm256_permute_ps(v, 0x4E));            // h = 2: swap pairs
    return _mm256_fmadd_ps(v, s4, _mm256_permute2f128_ps(v, v, 0x01));  // h = 4: swap 128-bit halves
}

// A block of V vectors (B = 8 V <= 128) in registers from load (from `in`) to store (to `out`, which may be `in`).
template <int V>
__attribute__((target("avx2,fma"))) inline void wht_block_regs8(const float* in, float* out, const float* sg,
                                                                __m256 c, bool inverse) {
    __m256 r[V];
    for (int i = 0; i < V; ++i) {
        __m256 t = _mm256_loadu_ps(in + 8 * i);
        if (!inverse) t = _mm256_mul_ps(t, _mm256_loadu_ps(sg + 8 * i));
        r[i] = wht8(t);
    }
    for (int h = 1; h < V; h <<= 1)
        for (int i = 0; i < V; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const __m256 p = r[j], q = r[j + h];
                r[j] = _mm256_add_ps(p, q);
                r[j + h] = _mm256_sub_ps(p, q);
            }
    for (int i = 0; i < V; ++i) {
        __m256 t = _mm256_mul_ps(r[i], c);
        if (inverse) t = _mm256_mul_ps(t, _mm256_loadu_ps(sg + 8 * i));
        _mm256_storeu_ps(out + 8 * i, t);
    }
}

// Blocks larger than the registers: the first three stages per vector, then whole-vector butterflies, in place.
__attribute__((target("avx2,fma"))) void wht_block_mem8(float* v, const float* sg, int64_t B, __m256 c, bool inverse) {
    for (int64_t i = 0; i < B; i += 8) {
        __m256 t = _mm256_loadu_ps(v + i);
        if (!inverse) t = _mm256_mul_ps(t, _mm256_loadu_ps(sg + i));
        _mm256_storeu_ps(v + i, wht8(t));
    }
    for (int64_t h = 8; h < B; h <<= 1)
        for (int64_t i = 0; i < B; i += 2 * h)
            for (int64_t j = i; j < i + h; j += 8) {
                const __m256 p = _mm256_loadu_ps(v + j), q = _mm256_loadu_ps(v + j + h);
                _mm256_storeu_ps(v + j, _mm256_add_ps(p, q));
                _mm256_storeu_ps(v + j + h, _mm256_sub_ps(p, q));
            }
    for (int64_t i = 0; i < B; i += 8) {
        __m256 t = _mm256_mul_ps(_mm256_loadu_ps(v + i), c);
        if (inverse) t = _mm256_mul_ps(t, _mm256_loadu_ps(sg + i));
        _mm256_storeu_ps(v + i, t);
    }
}

__attribute__((target("avx2,fma"))) void hadamard_rows_avx2(BF_HADAMARD_ROWS_ARGS) {
    const int64_t nb = k / B;
    const __m256 c = _mm256_set1_ps(1.0f / std::sqrt((float)B));
    for (int64_t r = r0; r < r1; ++r) {
        const float* sr = src + r * lds;
        float* d = dst + r * ldd;
        if (B < 8 || B > 128) {  // copied first, then in place
            start_row(sr, d, k, ldd);
            if (B < 8) {
                BF_HADAMARD_ROW_PORTABLE(d)
            } else {
                for (int64_t blk = 0; blk < nb; ++blk) wht_block_mem8(d + blk * B, s + blk * B, B, c, inverse);
            }
            continue;
        }
        for (int64_t blk = 0; blk < nb; ++blk) {  // straight from src to dst
            const float* in = sr + blk * B;
            float* out = d + blk * B;
            const float* sg = s + blk * B;
            switch (B) {
                case 8: wht_block_regs8<1>(in, out, sg, c, inverse); break;
                case 16: wht_block_regs8<2>(in, out, sg, c, inverse); break;
                case 32: wht_block_regs8<4>(in, out, sg, c, inverse); break;
                case 64: wht_block_regs8<8>(in, out, sg, c, inverse); break;
                default: wht_block_regs8<16>(in, out, sg, c, inverse); break;
            }
        }
        if (d != sr) {  // the tail past the last whole block, and the padding
            memcpy(d + nb * B, sr + nb * B, sizeof(float) * (k - nb * B));
            if (ldd > k) memset(d + k, 0, sizeof(float) * (ldd - k));
        }
    }
}

// One 16-float vector through the stages h = 1, 2, 4, 8: v[j] += v[j^h] where bit h of j is 0, else
// v[j] = v[j^h] - v[j].
__attribute__((target("avx512f"))) inline __m512 wht16(__m512 v) {
    __m512 p = _mm512_permute_ps(v, 0xB1);  // h = 1: swap neighbours
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xAAAA, p, v);
    p = _mm512_permute_ps(v, 0x4E);  // h = 2: swap pairs
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xCCCC, p, v);
    p = _mm512_shuffle_f32x4(v, v, 0xB1);  // h = 4: swap 128-bit lanes
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xF0F0, p, v);
    p = _mm512_shuffle_f32x4(v, v, 0x4E);  // h = 8: swap 256-bit halves
    return _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xFF00, p, v);
}

// A block of V vectors (B = 16 V <= 256) held in registers from load (from `in`) to store (to `out`, which may
// be `in`: every load precedes every store).
template <int V>
__attribute__((target("avx512f"))) inline void wht_block_regs(const float* in, float* out, const float* sg, __m512 c,
                                                              bool inverse) {
    __m512 r[V];
    for (int i = 0; i < V; ++i) {
        __m512 t = _mm512_loadu_ps(in + 16 * i);
        if (!inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + 16 * i));
        r[i] = wht16(t);
    }
    for (int h = 1; h < V; h <<= 1)
        for (int i = 0; i < V; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const __m512 p = r[j], q = r[j + h];
                r[j] = _mm512_add_ps(p, q);
                r[j + h] = _mm512_sub_ps(p, q);
            }
    for (int i = 0; i < V; ++i) {
        __m512 t = _mm512_mul_ps(r[i], c);
        if (inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + 16 * i));
        _mm512_storeu_ps(out + 16 * i, t);
    }
}

// Blocks larger than the registers: the first four stages per vector, then whole-vector butterflies, in place.
__attribute__((target("avx512f"))) void wht_block_mem(float* v, const float* sg, int64_t B, __m512 c, bool inverse) {
    for (int64_t i = 0; i < B; i += 16) {
        __m512 t = _mm512_loadu_ps(v + i);
        if (!inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + i));
        _mm512_storeu_ps(v + i, wht16(t));
    }
    for (int64_t h = 16; h < B; h <<= 1)
        for (int64_t i = 0; i < B; i += 2 * h)
            for (int64_t j = i; j < i + h; j += 16) {
                const __m512 p = _mm512_loadu_ps(v + j), q = _mm512_loadu_ps(v + j + h);
                _mm512_storeu_ps(v + j, _mm512_add_ps(p, q));
                _mm512_storeu_ps(v + j + h, _mm512_sub_ps(p, q));
            }
    for (int64_t i = 0; i < B; i += 16) {
        __m512 t = _mm512_mul_ps(_mm512_loadu_ps(v + i), c);
        if (inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + i));
        _mm512_storeu_ps(v + i, t);
    }
}

__attribute__((target("avx512f,avx2,fma"))) void hadamard_rows_avx512(BF_HADAMARD_ROWS_ARGS) {
    const int64_t nb = k / B;
    const __m512 c = _mm512_set1_ps(1.0f / std::sqrt((float)B));
    for (int64_t r = r0; r < r1; ++r) {
        const float* sr = src + r * lds;
        float* d = dst + r * ldd;
        if (B < 16 || B > 256) {  // copied first, then in place
            start_row(sr, d, k, ldd);
            if (B < 16) {
                BF_HADAMARD_ROW_PORTABLE(d)
            } else {
                for (int64_t blk = 0; blk < nb; ++blk) wht_block_mem(d + blk * B, s + blk * B, B, c, inverse);
            }
            continue;
        }
        for (int64_t blk = 0; blk < nb; ++blk) {  // straight from src to dst
            const float* in = sr + blk * B;
            float* out = d + blk * B;
            const float* sg = s + blk * B;
            switch (B) {
                case 16: wht_block_regs<1>(in, out, sg, c, inverse); break;
                case 32: wht_block_regs<2>(in, out, sg, c, inverse); break;
                case 64: wht_block_regs<4>(in, out, sg, c, inverse); break;
                case 128: wht_block_regs<8>(in, out, sg, c, inverse); break;
                default: wht_block_regs<16>(in, out, sg, c, inverse); break;
            }
        }
        if (d != sr) {  // the tail past the last whole block, and the padding
            memcpy(d + nb * B, sr + nb * B, sizeof(float) * (k - nb * B));
            if (ldd > k) memset(d + k, 0, sizeof(float) * (ldd - k));
        }
    }
}
#endif
#undef BF_HADAMARD_ROW_PORTABLE

hadamard_rows_fn rows_of(int isa) {
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
    if (isa == BF_ISA_AVX512) return hadamard_rows_avx512;
    if (isa == BF_ISA_AVX2) return hadamard_rows_avx2;
#endif
    (void)isa;
    return hadamard_rows_portable;
}

}  // namespace

void hadamard(float* x, int64_t m, int64_t k, int64_t block, const float* signs, bool inverse, int isa,
              int threads) {
    if (!isa_supported(isa)) throw std::invalid_argument("ISA path " + std::to_string(isa) + " does not run here");
    if (block < 2 || block > 4096 || (block & (block - 1)) || k < 1 || m < 0)
        throw std::invalid_argument("hadamard: block must be a power of two in 2..4096, k >= 1, m >= 0");
    const hadamard_rows_fn rows = rows_of(isa);
    if (m == 0 || k < block) return;
    const double work = (double)m * (double)k * 8.0;
    const int nt = worker_count(threads, m, work);
    fan_out(m, nt, 1, [&](int, int64_t r0, int64_t r1) { rows(x, k, x, k, r0, r1, k, block, signs, inverse); });
}

void hadamard_copy(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t m, int64_t k, int64_t block,
                   const float* signs, int isa) {
    rows_of(isa)(src, lds, dst, ldd, 0, m, k, block, signs, false);
}

}  // namespace bf
