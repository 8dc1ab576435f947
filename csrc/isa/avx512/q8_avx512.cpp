// AVX-512 integer kernels (needs VBMI and VNNI on top of F/BW/DQ/VL; the dispatcher uses the AVX2 ones
// on CPUs without them). Compiled with those flags (this file only).
//
// LUT8 GEMV: one 64-byte plane vector holds 16 rows x 4 plane bytes (a row per 32-bit lane). Its low
// nibbles, with the byte's lane position p in bits 4-5 (one vpternlogd), index 64 table bytes: the 4
// tables of activations 8(4q+p)..+3 side by side, so one vpermb looks up 64 entries; the high nibbles
// likewise. vpdpbusd against ones sums each row's 4 lookups into its int32 lane. Planes combine by
// Horner in int32 per group (d = 2d + p_j) in registers.
// INT8 GEMM: codes of two 16-row blocks are unpacked to bytes [k/4][16 rows][4 k] (byte interleave of the
// planes, GF2P8AFFINEQB bit transpose, dword transpose), then 6 activation rows x 32 weight rows per step of
// 4 k: vpdpbusd(codes u8, xq s8), fp32 accumulators in registers across the groups.
#include <immintrin.h>
#include <math.h>
#include <string.h>
#include "bitsfusion/kernels.h"

#define UNROLL _Pragma("GCC unroll 16")

namespace bf_avx512q {
#include "../../core/kernel_impl.h"
#include "ops_avx512.h"
#include "../../core/q8_prep.h"

constexpr int64_t PF = 1024;

// acc += u8 w x s8 x per 32-bit lane, in place. GCC otherwise copies every accumulator of an array of
// __m512i through another register around each vpdpbusd (24 vmovdqa per 12 vpdpbusd in the GEMM's inner
// loop, which then ran at 2/3 of the instruction's throughput); the asm ties the accumulator to its register.
static inline void dpbusd(__m512i& acc, __m512i w, __m512i x) {
#if defined(__GNUC__) || defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(w), "v"(x));
#else
    acc = _mm512_dpbusd_epi32(acc, w, x);
#endif
}  // software prefetch distance along each plane stream, bytes

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
        if (a->scales_h) {  // float16 scales and zeros: half the bytes of fp32 scales and s*z; none for a constant zero
            sg = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(a->scales_h + (nb * NG + g) * 16)));
            const __m512 zh = a->zeros_h
                ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(a->zeros_h + (nb * NG + g) * 16)))
                : _mm512_set1_ps(a->zero_h);
            zg = _mm512_mul_ps(sg, zh);
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

// Codes of block nb as bytes [8Q][16][4]: tile[kq][r][i] = c'[r, 4kq + i]. Per quartet q (32 k of 16 rows):
// 1. the active planes are interleaved (vpunpck*) so that each 64-bit word holds, for one (row r, plane byte
//    p), that byte of every plane: bytes 8-np .. 7 = planes 0 .. np-1 (np = 4 or 8, missing planes in front
//    zero, so byte 7-i is plane b'-1-i);
// 2. one GF2P8AFFINEQB per 8 words transposes each 8x8 bit matrix: with x byte b = 1 << b, result byte b bit i =
//    bit b of word byte 7-i, i.e. byte b = the code c' of element k = 32q + 8p + b;
// 3. a 4x4 dword transpose per 128-bit lane turns (row, 4 k) words into the [k/4][16 rows][4] tile.
// About 40 vector instructions per quartet at <= 4 bits (48 above), against 112 bit by bit.
static void unpack_block(const bf_linear_args* a, int64_t nb, uint8_t* tile) {
    const int64_t Q = kquarts(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const int nbits = a->active_bits, np = nbits <= 4 ? 4 : 8;
    const __m512i sel = _mm512_set1_epi64(0x8040201008040201LL), z = _mm512_setzero_si512();
    for (int64_t q = 0; q < Q; ++q) {
        __m512i P[8], V[8];
        UNROLL for (int s = 0; s < 8; ++s) {
            const int j = s - (np - nbits);
            P[s] = (s < np && j >= 0) ? _mm512_loadu_si512(blk + (j * Q + q) * 64) : z;
        }
        if (np == 4) {
            const __m512i al = _mm512_unpacklo_epi8(P[0], P[1]), ah = _mm512_unpackhi_epi8(P[0], P[1]);
            const __m512i bl = _mm512_unpacklo_epi8(P[2], P[3]), bh = _mm512_unpackhi_epi8(P[2], P[3]);
            const __m512i D[4] = {_mm512_unpacklo_epi16(al, bl), _mm512_unpackhi_epi16(al, bl),
                                  _mm512_unpacklo_epi16(ah, bh), _mm512_unpackhi_epi16(ah, bh)};
            UNROLL for (int i = 0; i < 4; ++i) {  // word = [0, planes]: bytes 4..7
                V[2 * i] = _mm512_unpacklo_epi32(z, D[i]);
                V[2 * i + 1] = _mm512_unpackhi_epi32(z, D[i]);
            }
        } else {
            __m512i A[8], D[8];
            UNROLL for (int i = 0; i < 4; ++i) {
                A[2 * i] = _mm512_unpacklo_epi8(P[2 * i], P[2 * i + 1]);
                A[2 * i + 1] = _mm512_unpackhi_epi8(P[2 * i], P[2 * i + 1]);
            }
            UNROLL for (int h = 0; h < 2; ++h) {  // h = 0: planes 0..3, 1: planes 4..7; D[4h + i]: x = 4i .. 4i+3
                D[4 * h + 0] = _mm512_unpacklo_epi16(A[4 * h + 0], A[4 * h + 2]);
                D[4 * h + 1] = _mm512_unpackhi_epi16(A[4 * h + 0], A[4 * h + 2]);
                D[4 * h + 2] = _mm512_unpacklo_epi16(A[4 * h + 1], A[4 * h + 3]);
                D[4 * h + 3] = _mm512_unpackhi_epi16(A[4 * h + 1], A[4 * h + 3]);
            }
            UNROLL for (int i = 0; i < 4; ++i) {
                V[2 * i] = _mm512_unpacklo_epi32(D[i], D[4 + i]);
                V[2 * i + 1] = _mm512_unpackhi_epi32(D[i], D[4 + i]);
            }
        }
        // V[v], lane L, word s: row 4L + v/2, plane byte p = 2(v&1) + s. After the affine step its dword
        // u = 2s + h holds k = 4e .. 4e+3 with e = 4(v&1) + u.
        __m512i G[8];
        UNROLL for (int v = 0; v < 8; ++v) G[v] = _mm512_gf2p8affine_epi64_epi8(sel, V[v], 0);
        UNROLL for (int h = 0; h < 2; ++h) {  // rows r' = 0..3 of each lane: G[2r' + h]
            const __m512i t0 = _mm512_unpacklo_epi32(G[h], G[2 + h]), t1 = _mm512_unpackhi_epi32(G[h], G[2 + h]);
            const __m512i t2 = _mm512_unpacklo_epi32(G[4 + h], G[6 + h]), t3 = _mm512_unpackhi_epi32(G[4 + h], G[6 + h]);
            uint8_t* dst = tile + (8 * q + 4 * h) * 64;
            _mm512_storeu_si512(dst, _mm512_unpacklo_epi64(t0, t2));
            _mm512_storeu_si512(dst + 64, _mm512_unpackhi_epi64(t0, t2));
            _mm512_storeu_si512(dst + 128, _mm512_unpacklo_epi64(t1, t3));
            _mm512_storeu_si512(dst + 192, _mm512_unpackhi_epi64(t1, t3));
        }
    }
}

// Rows m0..m0+MT-1 against NT row blocks over all of K, the fp32 accumulators in registers across the groups
// (MT = 6, NT = 2: 12 int32 + 12 fp32 accumulators): the per-group epilogue is cvt + 2 FMA per accumulator,
// with no fp32 accumulator traffic through memory. Per step of 4 k: NT code vectors (L1/L2: the two blocks'
// codes are 2 KB a group), MT broadcast dwords of xqt, MT x NT vpdpbusd.
template <int MT, int NT>
static void int8_tile_regs(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0,
                           const uint8_t* tile) {
    const int64_t Q = kquarts(a), KQ = 8 * Q, NG = a->n_groups, gk = 2 * a->group_kb;
    __m512 f[MT][NT];
    UNROLL for (int mm = 0; mm < MT; ++mm)
        UNROLL for (int t = 0; t < NT; ++t) f[mm][t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t k0 = g * gk, k1 = g == NG - 1 ? KQ : k0 + gk;
        __m512i d[MT][NT];
        UNROLL for (int mm = 0; mm < MT; ++mm)
            UNROLL for (int t = 0; t < NT; ++t) d[mm][t] = _mm512_setzero_si512();
        const uint8_t* wp = tile + k0 * 64;
        const int32_t* xp = (const int32_t*)(s->xqt) + ((m0 / 6) * KQ + k0) * 6;  // m0: a multiple of 6
        for (int64_t kq = k0; kq < k1; ++kq, wp += 64, xp += 6) {
            __m512i w[NT];
            UNROLL for (int t = 0; t < NT; ++t) w[t] = _mm512_loadu_si512(wp + t * KQ * 64);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                const __m512i xb = _mm512_set1_epi32(xp[mm]);
                UNROLL for (int t = 0; t < NT; ++t) dpbusd(d[mm][t], w[t], xb);
            }
        }
        __m512 xs[MT];
        UNROLL for (int mm = 0; mm < MT; ++mm) xs[mm] = _mm512_set1_ps(s->xqsum[(m0 + mm) * NG + g]);
        UNROLL for (int t = 0; t < NT; ++t) {
            const __m512 sg = _mm512_loadu_ps(a->scales + ((nb + t) * NG + g) * 16);
            const __m512 zg = _mm512_loadu_ps(a->szs + ((nb + t) * NG + g) * 16);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                f[mm][t] = _mm512_fmadd_ps(sg, _mm512_cvtepi32_ps(d[mm][t]), f[mm][t]);
                f[mm][t] = _mm512_fnmadd_ps(zg, xs[mm], f[mm][t]);
            }
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        const __m512 sxv = _mm512_set1_ps(s->sx[m0 + mm]);
        UNROLL for (int t = 0; t < NT; ++t) {
            const __m512 v = _mm512_mul_ps(sxv, f[mm][t]);
            const int64_t n0 = (nb + t) * 16;
            if (n0 + 16 <= a->n) {  // a whole block: one vector store (y of M = 4096 rows is 25 MB at N = 1536)
                float* dst = a->y + (m0 + mm) * a->n + n0;
                _mm512_storeu_ps(dst, a->bias ? _mm512_add_ps(v, _mm512_loadu_ps(a->bias + n0)) : v);
            } else {
                float out[16];
                _mm512_storeu_ps(out, v);
                store_block(a, nb + t, m0 + mm, out);
            }
        }
    }
}

template <int NT>
static void int8_rows_regs(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, const uint8_t* tile,
                           int64_t c0, int64_t c1) {
    constexpr int MR = 6;  // = the row tile of xqt (bf_avx512_prepare_q8); c0 is a multiple of it
    int64_t m0 = c0;
    for (; m0 + MR <= c1; m0 += MR) int8_tile_regs<MR, NT>(a, s, nb, m0, tile);
    switch (c1 - m0) {
        case 1: int8_tile_regs<1, NT>(a, s, nb, m0, tile); break;
        case 2: int8_tile_regs<2, NT>(a, s, nb, m0, tile); break;
        case 3: int8_tile_regs<3, NT>(a, s, nb, m0, tile); break;
        case 4: int8_tile_regs<4, NT>(a, s, nb, m0, tile); break;
        case 5: int8_tile_regs<5, NT>(a, s, nb, m0, tile); break;
        default: break;
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
            activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
        }
        return;
    }
    // Cache blocking: a panel of row-block pairs (<= 256 KB of codes, bf_int8_panel_pairs) is unpacked once,
    // then chunks of rows of xqt (~256 KB, a multiple of 6 rows) run against every pair of the panel, so
    // with many rows (MiniLM at 32 x 128 tokens: M = 4096) the activations are not re-read from L3 / DRAM
    // once per pair.
    uint8_t* tile = (uint8_t*)work;
    const int64_t KQ = 8 * kquarts(a), M = a->m, blk_bytes = KQ * 64;
    const int64_t P = bf_int8_panel_pairs(kquarts(a));
    int64_t MC = (256 << 10) / (4 * KQ) / 6 * 6;
    if (MC < 6) MC = 6;
    for (int64_t p0 = nb0; p0 < nb1; p0 += 2 * P) {
        const int64_t p1 = p0 + 2 * P < nb1 ? p0 + 2 * P : nb1;
        for (int64_t nb = p0; nb < p1; ++nb) unpack_block(a, nb, tile + (nb - p0) * blk_bytes);
        for (int64_t c0 = 0; c0 < M; c0 += MC) {
            const int64_t c1 = c0 + MC < M ? c0 + MC : M;
            int64_t nb = p0;
            for (; nb + 2 <= p1; nb += 2) int8_rows_regs<2>(a, s, nb, tile + (nb - p0) * blk_bytes, c0, c1);
            if (nb < p1) int8_rows_regs<1>(a, s, nb, tile + (nb - p0) * blk_bytes, c0, c1);
            activate_region<Ops>(a, c0, c1, 16 * p0, block_end(a, p0, p1 - p0));  // the panel's rows c0..c1: in L2
        }
    }
}
}  // namespace bf_avx512q

extern "C" void bf_avx512_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_avx512q::prepare_q8<bf_avx512q::Ops>(a, s);
    if (a->kernel != BF_KERNEL_INT8) return;
    const int64_t KQ = 8 * ((a->k + 31) / 32), M = a->m, M0 = s->xqt_m0;
    // xqt[(m / 6)][kq][m % 6] = the 4 bytes xq[m][4kq .. 4kq+3], m the row of the whole call (M0 + local row)
    const int32_t* src = (const int32_t*)s->xq;
    int32_t* dst = (int32_t*)s->xqt;
    for (int64_t m = 0; m < M; ++m) {
        const int64_t mg = M0 + m;
        int32_t* d = dst + (mg / 6) * KQ * 6 + mg % 6;
        const int32_t* sm = src + m * KQ;
        for (int64_t kq = 0; kq < KQ; ++kq) d[kq * 6] = sm[kq];
    }
}
extern "C" void bf_avx512_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_avx512q::rows_q8(a, s, b0, b1, work);
}
