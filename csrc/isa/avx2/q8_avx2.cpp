// AVX2 integer kernels (no VNNI, no byte permute across 16 entries x 4 tables). Compiled with -mavx2 -mfma.
//
// LUT8 GEMV: a ymm holds 8 rows x 4 plane bytes (a row per 32-bit lane) and the 4 bytes of a lane need
// 4 different tables, while vpshufb looks up one 16-entry table per 128-bit lane. So each table p is
// looked up with the indices of the other 3 byte positions forced to 0x80 (vpshufb then yields 0) and the
// 4 results are OR-ed; vpmaddubsw + vpmaddwd against ones then sum each row's 8 lookups into int32.
// INT8 GEMM: codes unpacked to int16 [k/2][16 rows][2], activations paired as int16, vpmaddwd: exact for
// every bit width (vpmaddubsw could saturate at 8 bits).
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "bitsfusion/kernels.h"

#define BF_STR(x) #x
#define UNROLL _Pragma("GCC unroll 16")

namespace bf_avx2q {
#include "../../core/kernel_impl.h"
#include "ops_avx2.h"
#include "../../core/q8_prep.h"

template <int MT>
static void lut8_block(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0, int32_t* dacc) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = lut8_group_q(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const __m256i lo4 = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i keep[4];  // keep[p]: 0 at byte positions p (mod 4), 0x80 elsewhere
    UNROLL for (int p = 0; p < 4; ++p) keep[p] = _mm256_set1_epi32((int32_t)(0x80808080u & ~(0xFFu << (8 * p))));
    const uint8_t* tab[MT];
    UNROLL for (int mm = 0; mm < MT; ++mm) tab[mm] = s->tab8 + (m0 + mm) * 128 * Q;
    for (int64_t i = 0; i < 2 * MT * NG; ++i) _mm256_storeu_si256((__m256i*)(dacc + 8 * i), _mm256_setzero_si256());
    for (int j = 0; j < a->active_bits; ++j) {
        const uint8_t* pj = blk + j * Q * 64;
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
            __m256i acc[MT][2];
            UNROLL for (int mm = 0; mm < MT; ++mm) acc[mm][0] = acc[mm][1] = _mm256_setzero_si256();
            for (int64_t q = q0; q < q1; ++q) {
                UNROLL for (int h = 0; h < 2; ++h) {
                    const __m256i w = _mm256_loadu_si256((const __m256i*)(pj + 64 * q + 32 * h));
                    const __m256i lo = _mm256_and_si256(w, lo4);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), lo4);
                    UNROLL for (int mm = 0; mm < MT; ++mm) {
                        const uint8_t* t = tab[mm] + 128 * q;
                        __m256i rl = _mm256_setzero_si256(), rh = _mm256_setzero_si256();
                        UNROLL for (int p = 0; p < 4; ++p) {
                            const __m256i tl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(t + 16 * p)));
                            const __m256i th = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(t + 64 + 16 * p)));
                            rl = _mm256_or_si256(rl, _mm256_shuffle_epi8(tl, _mm256_or_si256(lo, keep[p])));
                            rh = _mm256_or_si256(rh, _mm256_shuffle_epi8(th, _mm256_or_si256(hi, keep[p])));
                        }
                        const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(rl, ones8), _mm256_maddubs_epi16(rh, ones8));
                        acc[mm][h] = _mm256_add_epi32(acc[mm][h], _mm256_madd_epi16(s16, ones16));
                    }
                }
            }
            UNROLL for (int mm = 0; mm < MT; ++mm)
                UNROLL for (int h = 0; h < 2; ++h) {
                    __m256i* d = (__m256i*)(dacc + (mm * NG + g) * 16 + 8 * h);
                    const __m256i dv = _mm256_loadu_si256(d);
                    _mm256_storeu_si256(d, _mm256_add_epi32(_mm256_add_epi32(dv, dv), acc[mm][h]));
                }
        }
    }
    const float planes_sum = (float)((1 << a->active_bits) - 1);
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        const int64_t m = m0 + mm;
        Ops::V f = Ops::zero();
        for (int64_t g = 0; g < NG; ++g) {
            const int32_t* d = dacc + (mm * NG + g) * 16;
            const Ops::V dv = {_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)d)),
                               _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i*)(d + 8)))};
            const float* tp = s->tpar + (m * NG + g) * 2;
            const Ops::V inner = Ops::fmadd(Ops::set1(tp[0]), dv, Ops::set1(planes_sum * tp[1]));
            f = Ops::fmadd(Ops::load(a->scales + (nb * NG + g) * 16), inner, f);
            f = Ops::fnmadd(Ops::load(a->szs + (nb * NG + g) * 16), Ops::set1(s->xsum[m * NG + g]), f);
        }
        float out[16];
        Ops::store(out, f);
        store_block(a, nb, m, out);
    }
}

// Codes of block nb as int16 [K32/2][16][2]: tile[kp][r][i] = c'[r, 2kp + i].
static void unpack_block16(const bf_linear_args* a, int64_t nb, int16_t* tile) {
    const int64_t Q = kquarts(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    for (int64_t q = 0; q < Q; ++q) {
        int16_t c[16][32];
        memset(c, 0, sizeof c);
        for (int j = 0; j < a->active_bits; ++j) {
            const uint8_t* w = blk + (j * Q + q) * 64;
            for (int r = 0; r < 16; ++r)
                for (int i = 0; i < 32; ++i) c[r][i] = (int16_t)(2 * c[r][i] + ((w[4 * r + (i >> 3)] >> (i & 7)) & 1));
        }
        int16_t* dst = tile + q * 16 * 32;  // 16 k-pairs of 16 rows x 2
        for (int kp = 0; kp < 16; ++kp)
            for (int r = 0; r < 16; ++r) {
                dst[(kp * 16 + r) * 2] = c[r][2 * kp];
                dst[(kp * 16 + r) * 2 + 1] = c[r][2 * kp + 1];
            }
    }
}

template <int MT>
static void int8_micro(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0, const int16_t* tile) {
    const int64_t Q = kquarts(a), KP = 16 * Q, K32 = 32 * Q, NG = a->n_groups, gp = 4 * a->group_kb;
    __m256 f[MT][2];
    UNROLL for (int mm = 0; mm < MT; ++mm) f[mm][0] = f[mm][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t p0 = g * gp, p1 = g == NG - 1 ? KP : p0 + gp;
        __m256i d[MT][2];
        UNROLL for (int mm = 0; mm < MT; ++mm) d[mm][0] = d[mm][1] = _mm256_setzero_si256();
        for (int64_t kp = p0; kp < p1; ++kp) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i*)(tile + kp * 32));
            const __m256i w1 = _mm256_loadu_si256((const __m256i*)(tile + kp * 32 + 16));
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                const int8_t* xp = s->xq + (m0 + mm) * K32 + 2 * kp;
                const uint32_t pair = (uint32_t)(uint16_t)(int16_t)xp[0] | ((uint32_t)(uint16_t)(int16_t)xp[1] << 16);
                const __m256i xb = _mm256_set1_epi32((int32_t)pair);
                d[mm][0] = _mm256_add_epi32(d[mm][0], _mm256_madd_epi16(w0, xb));
                d[mm][1] = _mm256_add_epi32(d[mm][1], _mm256_madd_epi16(w1, xb));
            }
        }
        UNROLL for (int h = 0; h < 2; ++h) {
            const __m256 sg = _mm256_loadu_ps(a->scales + (nb * NG + g) * 16 + 8 * h);
            const __m256 zg = _mm256_loadu_ps(a->szs + (nb * NG + g) * 16 + 8 * h);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                f[mm][h] = _mm256_fmadd_ps(sg, _mm256_cvtepi32_ps(d[mm][h]), f[mm][h]);
                f[mm][h] = _mm256_fnmadd_ps(zg, _mm256_set1_ps(s->xqsum[(m0 + mm) * NG + g]), f[mm][h]);
            }
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        const __m256 sxv = _mm256_set1_ps(s->sx[m0 + mm]);
        float out[16];
        _mm256_storeu_ps(out, _mm256_mul_ps(sxv, f[mm][0]));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(sxv, f[mm][1]));
        store_block(a, nb, m0 + mm, out);
    }
}

static void rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, void* work) {
    for (int64_t nb = nb0; nb < nb1; ++nb) {
        if (a->kernel == BF_KERNEL_LUT8) {
            int32_t* dacc = (int32_t*)work;
            int64_t m0 = 0;
            for (; m0 + 2 <= a->m; m0 += 2) lut8_block<2>(a, s, nb, m0, dacc);
            if (m0 < a->m) lut8_block<1>(a, s, nb, m0, dacc);
            activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
            continue;
        }
        int16_t* tile = (int16_t*)work;
        unpack_block16(a, nb, tile);
        int64_t m0 = 0;
        for (; m0 + 4 <= a->m; m0 += 4) int8_micro<4>(a, s, nb, m0, tile);
        switch (a->m - m0) {
            case 1: int8_micro<1>(a, s, nb, m0, tile); break;
            case 2: int8_micro<2>(a, s, nb, m0, tile); break;
            case 3: int8_micro<3>(a, s, nb, m0, tile); break;
            default: break;
        }
        activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
    }
}
}  // namespace bf_avx2q

extern "C" void bf_avx2_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_avx2q::prepare_q8<bf_avx2q::Ops>(a, s);
}
extern "C" void bf_avx2_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_avx2q::rows_q8(a, s, b0, b1, work);
}
