// AVX-512 integer kernels (needs VBMI and VNNI on top of F/BW/DQ/VL; the dispatcher uses the AVX2 ones
// on CPUs without them). Compiled with those flags (this file only).
//
// LUT8 GEMV: one 64-byte plane vector holds 16 rows x 4 plane bytes (a row per 32-bit lane). Its low
// nibbles, with the byte's lane position p in bits 4-5 (one vpternlogd), index 64 table bytes: the 4
// tables of activations 8(4q+p)..+3 side by side, so one vpermb looks up 64 entries; the high nibbles
// likewise. vpdpbusd against ones sums each row's 4 lookups into its int32 lane. Planes combine by
// Horner in int32 per group (d = 2d + p_j) in registers.
// INT8 GEMM: codes of two 16-row blocks are unpacked to bytes [k/4][16 rows][4 k] (vpshufb, vptestmb,
// masked add per plane), then 6 activation rows x 32 weight rows per step: vpdpbusd(codes u8, xq s8).
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "bitsfusion/kernels.h"

#define UNROLL _Pragma("GCC unroll 16")

namespace bf_avx512q {
#include "../../core/kernel_impl.h"
#include "ops_avx512.h"
#include "../../core/q8_prep.h"

constexpr int64_t PF = 1024;  // software prefetch distance along each plane stream, bytes

// One row block (16 rows), activation rows m0..m0+MT-1. Groups outside, planes inside: for group g each
// active plane contributes the lookups of its GQ quartets (GQ = 0: a run-time count), d = 2d + p_j stays in
// registers, and the group's scale, table offset and zero term are applied at once.
template <int MT, int GQ>
static void lut8_block(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = GQ ? GQ : lut8_group_q(a), plane_bytes = Q * 64;
    const uint8_t* blk = a->planes + nb * a->bits * plane_bytes;
    const __m512i lane_pos = _mm512_set1_epi32(0x30201000), lo4 = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi8(1);
    const int nbits = a->active_bits;
    const float planes_sum = (float)((1 << nbits) - 1);
    const uint8_t* tab[MT];
    __m512 f[MT];
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        tab[mm] = s->tab8 + (m0 + mm) * 128 * Q;
        f[mm] = _mm512_setzero_ps();
    }
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
        __m512i d[MT];
        UNROLL for (int mm = 0; mm < MT; ++mm) d[mm] = _mm512_setzero_si512();
        for (int j = 0; j < nbits; ++j) {
            const uint8_t* pj = blk + j * plane_bytes;
            __m512i pl[MT], ph[MT];
            UNROLL for (int mm = 0; mm < MT; ++mm) pl[mm] = ph[mm] = _mm512_setzero_si512();
#define BF_LUT8_STEP(qq)                                                                                \
    do {                                                                                                \
        const int64_t q_ = (qq);                                                                        \
        _mm_prefetch((const char*)(pj + 64 * q_ + PF), _MM_HINT_T0);                                    \
        const __m512i w = _mm512_loadu_si512(pj + 64 * q_);                                             \
        const __m512i lo = _mm512_ternarylogic_epi32(w, lo4, lane_pos, 0xEA); /* (w & 15) | p << 4 */   \
        const __m512i hi = _mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), lo4, lane_pos, 0xEA);     \
        UNROLL for (int mm = 0; mm < MT; ++mm) {                                                        \
            const uint8_t* t = tab[mm] + 128 * q_;                                                      \
            pl[mm] = _mm512_dpbusd_epi32(pl[mm], _mm512_permutexvar_epi8(lo, _mm512_loadu_si512(t)), ones); \
            ph[mm] = _mm512_dpbusd_epi32(ph[mm], _mm512_permutexvar_epi8(hi, _mm512_loadu_si512(t + 64)), ones); \
        }                                                                                               \
    } while (0)
            if (GQ && q1 - q0 == GQ) {
                UNROLL for (int u = 0; u < (GQ ? GQ : 1); ++u) BF_LUT8_STEP(q0 + u);
            } else {
                for (int64_t q = q0; q < q1; ++q) BF_LUT8_STEP(q);
            }
#undef BF_LUT8_STEP
            UNROLL for (int mm = 0; mm < MT; ++mm)
                d[mm] = _mm512_add_epi32(_mm512_add_epi32(d[mm], d[mm]), _mm512_add_epi32(pl[mm], ph[mm]));
        }
        __m512 sg, zg;
        if (a->scales_h) {  // float16 scales and zeros: half the bytes of fp32 scales and s*z
            sg = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(a->scales_h + (nb * NG + g) * 16)));
            zg = _mm512_mul_ps(sg, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(a->zeros_h + (nb * NG + g) * 16))));
        } else {
            sg = _mm512_loadu_ps(a->scales + (nb * NG + g) * 16);
            zg = _mm512_loadu_ps(a->szs + (nb * NG + g) * 16);
        }
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const int64_t m = m0 + mm;
            const float* tp = s->tpar + (m * NG + g) * 2;
            const __m512 inner = _mm512_fmadd_ps(_mm512_set1_ps(tp[0]), _mm512_cvtepi32_ps(d[mm]),
                                                 _mm512_set1_ps(planes_sum * tp[1]));
            f[mm] = _mm512_fmadd_ps(sg, inner, f[mm]);
            f[mm] = _mm512_fnmadd_ps(zg, _mm512_set1_ps(s->xsum[m * NG + g]), f[mm]);
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        float out[16];
        _mm512_storeu_ps(out, f[mm]);
        store_block(a, nb, m0 + mm, out);
    }
}

template <int MT>
static void lut8_block_gq(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0) {
    switch (a->n_groups == 1 ? 0 : lut8_group_q(a)) {
        case 1: lut8_block<MT, 1>(a, s, nb, m0); break;
        case 2: lut8_block<MT, 2>(a, s, nb, m0); break;
        case 4: lut8_block<MT, 4>(a, s, nb, m0); break;
        default: lut8_block<MT, 0>(a, s, nb, m0); break;
    }
}

// Codes of block nb as bytes [8Q][16][4]: tile[kq][r][i] = c'[r, 4kq + i].
static void unpack_block(const bf_linear_args* a, int64_t nb, uint8_t* tile) {
    const int64_t Q = kquarts(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    __m512i ctrl[4], sel[2];
    UNROLL for (int p = 0; p < 4; ++p) {  // byte i of each 128-bit lane <- byte 4*(i/4) + p of that lane
        alignas(64) uint8_t c[64];
        for (int i = 0; i < 64; ++i) c[i] = (uint8_t)(4 * ((i & 15) / 4) + p);
        ctrl[p] = _mm512_load_si512(c);
    }
    UNROLL for (int h = 0; h < 2; ++h) {  // byte i <- bit 4h + i%4
        alignas(64) uint8_t c[64];
        for (int i = 0; i < 64; ++i) c[i] = (uint8_t)(1u << (4 * h + (i & 3)));
        sel[h] = _mm512_load_si512(c);
    }
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t q = 0; q < Q; ++q) {
        __m512i c[8];
        UNROLL for (int e = 0; e < 8; ++e) c[e] = _mm512_setzero_si512();
        for (int j = 0; j < a->active_bits; ++j) {
            const __m512i w = _mm512_loadu_si512(blk + (j * Q + q) * 64);
            UNROLL for (int e = 0; e < 8; ++e) {
                const __mmask64 bit = _mm512_test_epi8_mask(_mm512_shuffle_epi8(w, ctrl[e >> 1]), sel[e & 1]);
                c[e] = _mm512_add_epi8(c[e], c[e]);
                c[e] = _mm512_mask_add_epi8(c[e], bit, c[e], ones);
            }
        }
        UNROLL for (int e = 0; e < 8; ++e) _mm512_storeu_si512(tile + (8 * q + e) * 64, c[e]);
    }
}

// One group g of rows m0..m0+MT-1 against NT row blocks, added into facc[m][NT*16] (L1-resident: per group
// the kernel touches 2 KB of codes, MT rows of xq and these accumulators, not whole rows of K).
template <int MT, int NT>
static void int8_group(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0, int64_t g,
                       const uint8_t* tile, float* facc) {
    const int64_t Q = kquarts(a), KQ = 8 * Q, NG = a->n_groups, gk = 2 * a->group_kb, M = a->m;
    const int64_t k0 = g * gk, k1 = g == NG - 1 ? KQ : k0 + gk;
    __m512i d[MT][NT];
    UNROLL for (int mm = 0; mm < MT; ++mm)
        UNROLL for (int t = 0; t < NT; ++t) d[mm][t] = _mm512_setzero_si512();
    const uint8_t* wp = tile + k0 * 64;
    const int32_t* xp = (const int32_t*)(s->xqt) + k0 * M + m0;
    for (int64_t kq = k0; kq < k1; ++kq, wp += 64, xp += M) {
        __m512i w[NT];
        UNROLL for (int t = 0; t < NT; ++t) w[t] = _mm512_loadu_si512(wp + t * KQ * 64);
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const __m512i xb = _mm512_set1_epi32(xp[mm]);
            UNROLL for (int t = 0; t < NT; ++t) d[mm][t] = _mm512_dpbusd_epi32(d[mm][t], w[t], xb);
        }
    }
    UNROLL for (int t = 0; t < NT; ++t) {
        const __m512 sg = _mm512_loadu_ps(a->scales + ((nb + t) * NG + g) * 16);
        const __m512 zg = _mm512_loadu_ps(a->szs + ((nb + t) * NG + g) * 16);
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            float* fp = facc + (m0 + mm) * NT * 16 + 16 * t;
            __m512 f = _mm512_fmadd_ps(sg, _mm512_cvtepi32_ps(d[mm][t]), _mm512_loadu_ps(fp));
            f = _mm512_fnmadd_ps(zg, _mm512_set1_ps((float)s->xqsum[(m0 + mm) * NG + g]), f);
            _mm512_storeu_ps(fp, f);
        }
    }
}

template <int NT>
static void int8_rows_nt(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, const uint8_t* tile,
                         float* facc) {
    const int64_t M = a->m;
    constexpr int64_t MC = 96;  // rows per chunk: its accumulators (12 KB) stay in L1 across the groups
    for (int64_t c0 = 0; c0 < M; c0 += MC) {
        const int64_t c1 = M < c0 + MC ? M : c0 + MC;
        for (int64_t i = c0 * NT * 16; i < c1 * NT * 16; ++i) facc[i] = 0.0f;
        for (int64_t g = 0; g < a->n_groups; ++g) {
            int64_t m0 = c0;
            for (; m0 + 6 <= c1; m0 += 6) int8_group<6, NT>(a, s, nb, m0, g, tile, facc);
            switch (c1 - m0) {
                case 1: int8_group<1, NT>(a, s, nb, m0, g, tile, facc); break;
                case 2: int8_group<2, NT>(a, s, nb, m0, g, tile, facc); break;
                case 3: int8_group<3, NT>(a, s, nb, m0, g, tile, facc); break;
                case 4: int8_group<4, NT>(a, s, nb, m0, g, tile, facc); break;
                case 5: int8_group<5, NT>(a, s, nb, m0, g, tile, facc); break;
                default: break;
            }
        }
        for (int64_t m = c0; m < c1; ++m) {
            const __m512 sxv = _mm512_set1_ps(s->sx[m]);
            UNROLL for (int t = 0; t < NT; ++t) {
                float out[16];
                _mm512_storeu_ps(out, _mm512_mul_ps(sxv, _mm512_loadu_ps(facc + m * NT * 16 + 16 * t)));
                store_block(a, nb + t, m, out);
            }
        }
    }
}

static void rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, void* work) {
    if (a->kernel == BF_KERNEL_LUT8) {
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            int64_t m0 = 0;
            for (; m0 + 4 <= a->m; m0 += 4) lut8_block_gq<4>(a, s, nb, m0);
            switch (a->m - m0) {
                case 1: lut8_block_gq<1>(a, s, nb, m0); break;
                case 2: lut8_block_gq<2>(a, s, nb, m0); break;
                case 3: lut8_block_gq<3>(a, s, nb, m0); break;
                default: break;
            }
        }
        return;
    }
    uint8_t* tile = (uint8_t*)work;
    const int64_t KQ = 8 * kquarts(a);
    float* facc = (float*)(tile + 2 * KQ * 64);  // [M][32] after the two blocks' codes
    int64_t nb = nb0;
    for (; nb + 2 <= nb1; nb += 2) {
        unpack_block(a, nb, tile);
        unpack_block(a, nb + 1, tile + KQ * 64);
        int8_rows_nt<2>(a, s, nb, tile, facc);
    }
    if (nb < nb1) {
        unpack_block(a, nb, tile);
        int8_rows_nt<1>(a, s, nb, tile, facc);
    }
}
}  // namespace bf_avx512q

extern "C" void bf_avx512_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_avx512q::prepare_q8<bf_avx512q::Ops>(a, s);
    if (a->kernel != BF_KERNEL_INT8) return;
    const int64_t KQ = 8 * ((a->k + 31) / 32), M = a->m;  // xqt[kq][m] = the 4 bytes xq[m][4kq .. 4kq+3]
    const int32_t* src = (const int32_t*)s->xq;
    int32_t* dst = (int32_t*)s->xqt;
    for (int64_t m0 = 0; m0 < M; m0 += 16)  // 16 x 16 tiles: both sides touch whole cache lines
        for (int64_t k0 = 0; k0 < KQ; k0 += 16)
            for (int64_t m = m0; m < m0 + 16 && m < M; ++m)
                for (int64_t kq = k0; kq < k0 + 16 && kq < KQ; ++kq) dst[kq * M + m] = src[m * KQ + kq];
}
extern "C" void bf_avx512_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_avx512q::rows_q8(a, s, b0, b1, work);
}
