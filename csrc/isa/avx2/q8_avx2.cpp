// AVX2 integer kernels (no VNNI, no byte permute across 16 entries x 4 tables). Compiled with -mavx2 -mfma.
//
// LUT8 GEMV: a ymm holds 8 rows x 4 plane bytes (a row per 32-bit lane) and the 4 bytes of a lane need
// 4 different tables, while vpshufb looks up one 16-entry table per 128-bit lane. So each table p is
// looked up with the indices of the other 3 byte positions forced to 0x80 (vpshufb then yields 0) and the
// 4 results are OR-ed; vpmaddubsw + vpmaddwd against ones then sum each row's 8 lookups into int32.
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
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            int64_t m0 = 0;
            for (; m0 + 2 <= a->m; m0 += 2) lut8_block<2>(a, s, nb, m0, dacc);
            if (m0 < a->m) lut8_block<1>(a, s, nb, m0, dacc);
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
