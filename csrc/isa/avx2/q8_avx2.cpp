// AVX2 integer kernels (no VNNI, no byte permute across 16 entries x 4 tables). Compiled with -mavx2 -mfma.
//
// LUT8 GEMV: vpshufb looks up one 16-entry table per 128-bit lane, while a plane vector holds 8 rows x 4 byte
// positions p (4 tables per lane). Each quartet's plane bytes are regrouped in registers so that a lane holds
// one p of 16 rows (lut8_regroup), then every lookup of a vpshufb is useful; sums in u16, widened per group.
// INT8 GEMM: codes unpacked to bytes [k/4][16 rows][4] (vpshufb + bit tests), vpmaddubsw against broadcast
// int8 activations, int16 sums of up to 16 steps at low bit widths before one vpmaddwd (int8_tile).
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

// One quartet's 64 plane bytes ([16 rows][4 bytes p], rows 0..7 in v0, 8..15 in v1) regrouped so that each
// 128-bit lane holds one byte position p of all 16 rows: y01 = (p0 | p1), y23 = (p2 | p3), rows in the lane
// order 0-3, 8-11, 4-7, 12-15 (lut8_block undoes it). An in-lane 4x4 byte transpose, a dword unpack and a
// qword permute: 6 instructions, shared by every activation row.
static inline void lut8_regroup(__m256i v0, __m256i v1, __m256i& y01, __m256i& y23) {
    const __m256i t = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                       0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i s0 = _mm256_shuffle_epi8(v0, t), s1 = _mm256_shuffle_epi8(v1, t);  // lane: [p][4 rows]
    y01 = _mm256_permute4x64_epi64(_mm256_unpacklo_epi32(s0, s1), 0xD8);
    y23 = _mm256_permute4x64_epi64(_mm256_unpackhi_epi32(s0, s1), 0xD8);
}

#ifndef BF_LUT8_PF
#define BF_LUT8_PF 1024  // software prefetch distance along a plane, bytes (the hardware prefetcher alone left the
                         // GEMV waiting on memory at ~4 GB/s a core)
#endif

// Adds one plane's lookups over quartets q0..q1-1 to u16 sums, per activation row: A = rows (0-3, 8-11), B =
// (4-7, 12-15), each split over the two lanes (two byte positions p). Per quartet and row: 4 vpshufb (the tables
// of 16 rows' low and high nibbles at p = 0, 1 and 2, 3: one 32-byte table load each, tab8 being [q][h][p][16]),
// 4 byte unpacks pairing each row's low- and high-nibble entries, 4 vpmaddubsw against ones (pair sums <= 510),
// 4 adds: at most 1020 a quartet per u16 lane. The callers keep every lane below 2^15 (so that the two lanes'
// sum in lut8_widen fits 16 bits): 32 quartets of one plane, or the Horner sum of b' planes over a group when
// (2^b' - 1) gq <= 32.
template <int MT>
static inline void lut8_plane_add(const uint8_t* pj, const uint8_t* const* tab, int64_t q0, int64_t q1,
                                  __m256i (&A)[MT], __m256i (&B)[MT]) {
    const __m256i lo4 = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1);
    for (int64_t q = q0; q < q1; ++q) {
        _mm_prefetch((const char*)(pj + 64 * q + BF_LUT8_PF), _MM_HINT_T0);
        __m256i y[2];
        lut8_regroup(_mm256_loadu_si256((const __m256i*)(pj + 64 * q)),
                     _mm256_loadu_si256((const __m256i*)(pj + 64 * q + 32)), y[0], y[1]);
        UNROLL for (int i = 0; i < 2; ++i) {
            const __m256i lo = _mm256_and_si256(y[i], lo4), hi = _mm256_and_si256(_mm256_srli_epi16(y[i], 4), lo4);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                const uint8_t* t = tab[mm] + 128 * q + 32 * i;
                const __m256i r = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)t), lo);
                const __m256i h = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(t + 64)), hi);
                A[mm] = _mm256_add_epi16(A[mm], _mm256_maddubs_epi16(_mm256_unpacklo_epi8(r, h), ones8));
                B[mm] = _mm256_add_epi16(B[mm], _mm256_maddubs_epi16(_mm256_unpackhi_epi8(r, h), ones8));
            }
        }
    }
}

// The 16 rows' int32 sums (rows 0-7, 8-15) of the lane-split u16 sums A, B.
static inline void lut8_widen(__m256i A, __m256i B, __m256i& r0, __m256i& r1) {
    const __m128i a = _mm_add_epi16(_mm256_castsi256_si128(A), _mm256_extracti128_si256(A, 1));  // rows 0-3, 8-11
    const __m128i b = _mm_add_epi16(_mm256_castsi256_si128(B), _mm256_extracti128_si256(B, 1));  // rows 4-7, 12-15
    r0 = _mm256_cvtepu16_epi32(_mm_unpacklo_epi64(a, b));
    r1 = _mm256_cvtepu16_epi32(_mm_unpackhi_epi64(a, b));
}

// LUT8 GEMV when (2^b' - 1) gq <= 32 (4 bits at groups of 64, 2 bits up to 256, ...): groups outer, planes inner,
// the Horner sum d = 2d + P_j kept in the u16 accumulators (doubled before each plane), so a group costs one
// widening and one epilogue, and the fp32 results stay in registers.
template <int MT>
static void lut8_block_h16(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = lut8_group_q(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const float planes_sum = (float)((1 << a->active_bits) - 1);
    const uint8_t* tab[MT];
    __m256 f[MT][2];
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        tab[mm] = s->tab8 + (m0 + mm) * 128 * Q;
        f[mm][0] = f[mm][1] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
        __m256i A[MT], B[MT];
        UNROLL for (int mm = 0; mm < MT; ++mm) A[mm] = B[mm] = _mm256_setzero_si256();
        for (int j = 0; j < a->active_bits; ++j) {
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                A[mm] = _mm256_add_epi16(A[mm], A[mm]);
                B[mm] = _mm256_add_epi16(B[mm], B[mm]);
            }
            lut8_plane_add<MT>(blk + j * Q * 64, tab, q0, q1, A, B);
        }
        const __m256 sg0 = _mm256_loadu_ps(a->scales + (nb * NG + g) * 16);
        const __m256 sg1 = _mm256_loadu_ps(a->scales + (nb * NG + g) * 16 + 8);
        const __m256 zg0 = _mm256_loadu_ps(a->szs + (nb * NG + g) * 16);
        const __m256 zg1 = _mm256_loadu_ps(a->szs + (nb * NG + g) * 16 + 8);
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const int64_t m = m0 + mm;
            __m256i d0, d1;
            lut8_widen(A[mm], B[mm], d0, d1);
            const float* tp = s->tpar + (m * NG + g) * 2;
            const __m256 sc = _mm256_set1_ps(tp[0]), off = _mm256_set1_ps(planes_sum * tp[1]);
            const __m256 xs = _mm256_set1_ps(s->xsum[m * NG + g]);
            f[mm][0] = _mm256_fmadd_ps(sg0, _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(d0), off), f[mm][0]);
            f[mm][1] = _mm256_fmadd_ps(sg1, _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(d1), off), f[mm][1]);
            f[mm][0] = _mm256_fnmadd_ps(zg0, xs, f[mm][0]);
            f[mm][1] = _mm256_fnmadd_ps(zg1, xs, f[mm][1]);
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        float out[16];
        _mm256_storeu_ps(out, f[mm][0]);
        _mm256_storeu_ps(out + 8, f[mm][1]);
        store_block(a, nb, m0 + mm, out);
    }
}

// LUT8 GEMV: rows m0..m0+MT-1 against row block nb. Planes outer (each streamed once, in order), groups inner;
// dacc [MT][NG][16] int32 holds d = sum_j 2^(b'-1-j) P_j per group (Horner: d = 2d + P_j).
template <int MT>
static void lut8_block(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0, int32_t* dacc) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = lut8_group_q(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const uint8_t* tab[MT];
    UNROLL for (int mm = 0; mm < MT; ++mm) tab[mm] = s->tab8 + (m0 + mm) * 128 * Q;
    for (int64_t i = 0; i < 2 * MT * NG; ++i) _mm256_storeu_si256((__m256i*)(dacc + 8 * i), _mm256_setzero_si256());
    for (int j = 0; j < a->active_bits; ++j) {
        const uint8_t* pj = blk + j * Q * 64;
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
            __m256i P[MT][2];
            UNROLL for (int mm = 0; mm < MT; ++mm) P[mm][0] = P[mm][1] = _mm256_setzero_si256();
            for (int64_t c0 = q0; c0 < q1; c0 += 32) {  // u16 chunks of at most 32 quartets
                __m256i A[MT], B[MT];
                UNROLL for (int mm = 0; mm < MT; ++mm) A[mm] = B[mm] = _mm256_setzero_si256();
                lut8_plane_add<MT>(pj, tab, c0, c0 + 32 < q1 ? c0 + 32 : q1, A, B);
                UNROLL for (int mm = 0; mm < MT; ++mm) {
                    __m256i r0, r1;
                    lut8_widen(A[mm], B[mm], r0, r1);
                    P[mm][0] = _mm256_add_epi32(P[mm][0], r0);
                    P[mm][1] = _mm256_add_epi32(P[mm][1], r1);
                }
            }
            UNROLL for (int mm = 0; mm < MT; ++mm)
                UNROLL for (int h = 0; h < 2; ++h) {
                    __m256i* d = (__m256i*)(dacc + (mm * NG + g) * 16 + 8 * h);
                    const __m256i dv = _mm256_loadu_si256(d);
                    _mm256_storeu_si256(d, _mm256_add_epi32(_mm256_add_epi32(dv, dv), P[mm][h]));
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

// Codes of block nb as bytes [8Q][16][4]: tile[kq][r][i] = c'[r, 4kq + i], as the AVX-512 GEMM has them; at
// 8 active bits c' ^ 0x80 = c' - 128 as int8 (int8_tile). Per half (8 rows) of each quartet's plane vectors:
// vpshufb copies plane byte (r, p) into the 4 bytes of row r's dword (4 shuffles, one per p), a test of bit
// 4h + i of byte i (and + cmpeq, h: the nibble) gives that code bit, and c = 2c + bit (Horner over the
// planes) keeps 8 accumulators (p, h) in registers. About 10 vector ops per plane and 8 x 32 codes.
static void unpack_block_u8(const bf_linear_args* a, int64_t nb, uint8_t* tile) {
    const int64_t Q = kquarts(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const int nbits = a->active_bits;
    const __m256i bit_lo = _mm256_set1_epi32(0x08040201), bit_hi = _mm256_set1_epi32((int32_t)0x80402010u);
    const __m256i flip = _mm256_set1_epi8(nbits == 8 ? (char)0x80 : 0);
    const __m256i rowb = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                          0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    __m256i sel[4];  // sel[p]: byte 4r' + i <- byte 4r' + p of the same 128-bit lane
    UNROLL for (int p = 0; p < 4; ++p) sel[p] = _mm256_add_epi8(rowb, _mm256_set1_epi8((char)p));
    for (int64_t q = 0; q < Q; ++q) {
        UNROLL for (int half = 0; half < 2; ++half) {
            __m256i c[8];
            UNROLL for (int e = 0; e < 8; ++e) c[e] = _mm256_setzero_si256();
            for (int j = 0; j < nbits; ++j) {
                const __m256i w = _mm256_loadu_si256((const __m256i*)(blk + (j * Q + q) * 64 + 32 * half));
                UNROLL for (int p = 0; p < 4; ++p) {
                    const __m256i b = _mm256_shuffle_epi8(w, sel[p]);
                    c[2 * p] = _mm256_sub_epi8(_mm256_add_epi8(c[2 * p], c[2 * p]),
                                               _mm256_cmpeq_epi8(_mm256_and_si256(b, bit_lo), bit_lo));
                    c[2 * p + 1] = _mm256_sub_epi8(_mm256_add_epi8(c[2 * p + 1], c[2 * p + 1]),
                                                   _mm256_cmpeq_epi8(_mm256_and_si256(b, bit_hi), bit_hi));
                }
            }
            UNROLL for (int e = 0; e < 8; ++e)
                _mm256_storeu_si256((__m256i*)(tile + (8 * q + e) * 64 + 32 * half), _mm256_xor_si256(c[e], flip));
        }
    }
}

// Rows m0..m0+MT-1 of xq against one row block (16 rows: 2 code vectors per step of 4 k). vpmaddubsw (codes
// u8 x xq s8, pairs summed into int16) is exact while a pair sum stays below 2^15: 2 (2^b' - 1) 127 for b' <= 7.
// NC steps of it are summed in int16 before one vpmaddwd widens them (NC (2^b' - 1) 254 <= 32767: NC = 16 up to
// 3 bits, 8 at 4, 4 at 5, 2 at 6, 1 at 7), so a 4-bit weight costs ~2.1 instructions per 32 MACs where an int8
// weight (fbgemm) costs 3. At 8 active bits (S8) the codes are stored as w = c - 128 (int8) and multiplied as
// |w| (u8, 128 included) * sign(x, w) (|x| <= 127, so no overflow), the - 128 sum x folded into the zero term. fp32 accumulators stay in registers across
// the groups: per chunk cvt + FMA, per group one zero-term FMA.
// acc += p (int16 lanes) in place. GCC otherwise keeps the accumulators of an array of __m256i on the stack
// and round-trips them around each add (the inner loop then ran ~3x slower); the asm ties each to a register.
static inline void add16(__m256i& acc, __m256i p) {
#if defined(__GNUC__) || defined(__clang__)
    __asm__("vpaddw %1, %0, %0" : "+x"(acc) : "x"(p));
#else
    acc = _mm256_add_epi16(acc, p);
#endif
}

template <int MT, int NC, bool S8>
static void int8_tile(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0, const uint8_t* tile) {
    const int64_t KQ = 8 * kquarts(a), K32 = 4 * KQ, NG = a->n_groups, gk = 2 * a->group_kb;
    const __m256i ones16 = _mm256_set1_epi16(1);
    const int8_t* xr[MT];
    __m256 f[MT][2];
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        xr[mm] = s->xq + (m0 + mm) * K32;
        f[mm][0] = f[mm][1] = _mm256_setzero_ps();
    }
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t k0 = g * gk, k1 = g == NG - 1 ? KQ : k0 + gk;
        const __m256 sg0 = _mm256_loadu_ps(a->scales + (nb * NG + g) * 16);
        const __m256 sg1 = _mm256_loadu_ps(a->scales + (nb * NG + g) * 16 + 8);
        for (int64_t kq = k0; kq < k1;) {
            const int64_t ke = kq + NC < k1 ? kq + NC : k1;
            __m256i e[MT][2];  // int16 pair sums (NC > 1) or int32 (NC = 1: widened every step)
            UNROLL for (int mm = 0; mm < MT; ++mm) e[mm][0] = e[mm][1] = _mm256_setzero_si256();
#define BF_INT8_STEP(kk)                                                                                   \
    do {                                                                                                   \
        const int64_t k_ = (kk);                                                                           \
        const __m256i w0 = _mm256_loadu_si256((const __m256i*)(tile + k_ * 64));                           \
        const __m256i w1 = _mm256_loadu_si256((const __m256i*)(tile + k_ * 64 + 32));                      \
        UNROLL for (int mm = 0; mm < MT; ++mm) {                                                           \
            int32_t xw;                                                                                    \
            memcpy(&xw, xr[mm] + 4 * k_, 4);                                                               \
            const __m256i xb = _mm256_set1_epi32(xw);                                                      \
            __m256i p0, p1;                                                                                \
            if (S8) {                                                                                      \
                p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(xb, w0));                  \
                p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(xb, w1));                  \
            } else {                                                                                       \
                p0 = _mm256_maddubs_epi16(w0, xb);                                                         \
                p1 = _mm256_maddubs_epi16(w1, xb);                                                         \
            }                                                                                              \
            if (NC == 1) {                                                                                 \
                e[mm][0] = _mm256_add_epi32(e[mm][0], _mm256_madd_epi16(p0, ones16));                      \
                e[mm][1] = _mm256_add_epi32(e[mm][1], _mm256_madd_epi16(p1, ones16));                      \
            } else {                                                                                       \
                add16(e[mm][0], p0);                                                                       \
                add16(e[mm][1], p1);                                                                       \
            }                                                                                              \
        }                                                                                                  \
    } while (0)
            if (NC == 1) {  // int32: the whole group, then one conversion
                for (; kq < k1; ++kq) BF_INT8_STEP(kq);
            } else if (ke - kq == NC) {
                // not unrolled: unrolled, GCC computes every product of the chunk first and spills them
                _Pragma("GCC unroll 1") for (int u = 0; u < NC; ++u) BF_INT8_STEP(kq + u);
                kq = ke;
            } else {
                for (; kq < ke; ++kq) BF_INT8_STEP(kq);
            }
#undef BF_INT8_STEP
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                const __m256i d0 = NC == 1 ? e[mm][0] : _mm256_madd_epi16(e[mm][0], ones16);
                const __m256i d1 = NC == 1 ? e[mm][1] : _mm256_madd_epi16(e[mm][1], ones16);
                f[mm][0] = _mm256_fmadd_ps(sg0, _mm256_cvtepi32_ps(d0), f[mm][0]);
                f[mm][1] = _mm256_fmadd_ps(sg1, _mm256_cvtepi32_ps(d1), f[mm][1]);
            }
        }
        __m256 zg0 = _mm256_loadu_ps(a->szs + (nb * NG + g) * 16);
        __m256 zg1 = _mm256_loadu_ps(a->szs + (nb * NG + g) * 16 + 8);
        if (S8) {  // sum (c - 128) x = sum c x - 128 sum x: the zero term becomes (z - 128) s
            const __m256 c128 = _mm256_set1_ps(128.0f);
            zg0 = _mm256_fnmadd_ps(c128, sg0, zg0);
            zg1 = _mm256_fnmadd_ps(c128, sg1, zg1);
        }
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const __m256 xs = _mm256_set1_ps(s->xqsum[(m0 + mm) * NG + g]);
            f[mm][0] = _mm256_fnmadd_ps(zg0, xs, f[mm][0]);
            f[mm][1] = _mm256_fnmadd_ps(zg1, xs, f[mm][1]);
        }
    }
    const int64_t n0 = nb * 16;
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        const __m256 sxv = _mm256_set1_ps(s->sx[m0 + mm]);
        const __m256 v0 = _mm256_mul_ps(sxv, f[mm][0]), v1 = _mm256_mul_ps(sxv, f[mm][1]);
        if (n0 + 16 <= a->n) {  // a whole block: two vector stores
            float* dst = a->y + (m0 + mm) * a->n + n0;
            _mm256_storeu_ps(dst, a->bias ? _mm256_add_ps(v0, _mm256_loadu_ps(a->bias + n0)) : v0);
            _mm256_storeu_ps(dst + 8, a->bias ? _mm256_add_ps(v1, _mm256_loadu_ps(a->bias + n0 + 8)) : v1);
        } else {
            float out[16];
            _mm256_storeu_ps(out, v0);
            _mm256_storeu_ps(out + 8, v1);
            store_block(a, nb, m0 + mm, out);
        }
    }
}

template <int NC, bool S8>
static void int8_rows(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, const uint8_t* tile,
                      int64_t c0, int64_t c1) {
    constexpr int MR = 4;
    int64_t m0 = c0;
    for (; m0 + MR <= c1; m0 += MR) int8_tile<MR, NC, S8>(a, s, nb, m0, tile);
    switch (c1 - m0) {
        case 1: int8_tile<1, NC, S8>(a, s, nb, m0, tile); break;
        case 2: int8_tile<2, NC, S8>(a, s, nb, m0, tile); break;
        case 3: int8_tile<3, NC, S8>(a, s, nb, m0, tile); break;
        default: break;
    }
}

// Steps of 4 k summed in int16 before widening (int8_tile), by active bits.
static inline int int8_chunk(int active_bits) {
    static const int nc[9] = {16, 16, 16, 16, 8, 4, 2, 1, 1};
    return nc[active_bits];
}

// Cache blocking as in the AVX-512 GEMM: a panel of row blocks (<= 256 KB of codes) is unpacked once, then
// chunks of ~256 KB of xq rows run against every block of the panel.
template <int NC, bool S8>
static void int8_panels(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, uint8_t* tile) {
    const int64_t KQ = 8 * kquarts(a), M = a->m, blk_bytes = KQ * 64;
    const int64_t PB = 2 * bf_int8_panel_pairs(kquarts(a));
    int64_t MC = (256 << 10) / (4 * KQ) / 4 * 4;
    if (MC < 3) MC = 3;
    for (int64_t p0 = nb0; p0 < nb1; p0 += PB) {
        const int64_t p1 = p0 + PB < nb1 ? p0 + PB : nb1;
        for (int64_t nb = p0; nb < p1; ++nb) unpack_block_u8(a, nb, tile + (nb - p0) * blk_bytes);
        for (int64_t c0 = 0; c0 < M; c0 += MC) {
            const int64_t c1 = c0 + MC < M ? c0 + MC : M;
            for (int64_t nb = p0; nb < p1; ++nb) int8_rows<NC, S8>(a, s, nb, tile + (nb - p0) * blk_bytes, c0, c1);
            activate_region<Ops>(a, c0, c1, 16 * p0, block_end(a, p0, p1 - p0));
        }
    }
}

static void rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, void* work) {
    if (a->kernel == BF_KERNEL_LUT8) {
        int32_t* dacc = (int32_t*)work;
        const bool h16 = ((1 << a->active_bits) - 1) * lut8_group_q(a) <= 32;
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            int64_t m0 = 0;
            if (h16) {
                for (; m0 + 2 <= a->m; m0 += 2) lut8_block_h16<2>(a, s, nb, m0);
                if (m0 < a->m) lut8_block_h16<1>(a, s, nb, m0);
            } else {
                for (; m0 + 2 <= a->m; m0 += 2) lut8_block<2>(a, s, nb, m0, dacc);
                if (m0 < a->m) lut8_block<1>(a, s, nb, m0, dacc);
            }
            activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
        }
        return;
    }
    uint8_t* tile = (uint8_t*)work;
    switch (int8_chunk(a->active_bits)) {
        case 16: int8_panels<16, false>(a, s, nb0, nb1, tile); break;
        case 8: int8_panels<8, false>(a, s, nb0, nb1, tile); break;
        case 4: int8_panels<4, false>(a, s, nb0, nb1, tile); break;
        case 2: int8_panels<2, false>(a, s, nb0, nb1, tile); break;
        default:
            if (a->active_bits == 8)
                int8_panels<1, true>(a, s, nb0, nb1, tile);
            else
                int8_panels<1, false>(a, s, nb0, nb1, tile);
            break;
    }
}
}  // namespace bf_avx2q

extern "C" void bf_avx2_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_avx2q::prepare_q8<bf_avx2q::Ops>(a, s);
}
extern "C" void bf_avx2_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_avx2q::rows_q8(a, s, b0, b1, work);
}
