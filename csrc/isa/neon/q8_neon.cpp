// NEON integer kernels (AArch64).
//
// LUT8 GEMV: tbl looks up one 16-entry table per 128-bit register, and vld4q_u8 deinterleaves a quartet's
// 64 plane bytes ([16 rows][4 byte positions p]) into one register per p holding that byte of all 16 rows,
// so every lookup is useful: per quartet and activation row, 8 tbl (low and high nibbles of p = 0..3) and
// widening adds into u16 sums of each row (at most 2040 a quartet), widened to int32 every 32 quartets.
// INT8 GEMM (needs the dot-product extension, ARMv8.2 and later; the portable kernel otherwise): codes are
// unpacked to int8 [k/4][16 rows][4] tiles (c' for b' <= 7, c' - 128 at 8 bits with the zero term adjusted),
// then sdot (vdotq_s32) of 4 rows x 4 k against a broadcast of 4 activations: 4 per step of 4 k and 16 rows.
#include <arm_neon.h>
#include <math.h>
#include <string.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#include "bitsfusion/kernels.h"

#define UNROLL _Pragma("GCC unroll 16")

namespace bf_neonq {
#include "../../core/kernel_impl.h"
#include "ops_neon.h"
#include "../../core/q8_prep.h"
#include "../../core/q8_portable.h"

// Adds plane pj's lookups over quartets q0..q1-1 (at most 32) to the u16 row sums A[mm] (rows 0-7), B[mm] (8-15).
template <int MT>
static inline void lut8_plane_add(const uint8_t* pj, const uint8_t* const* tab, int64_t q0, int64_t q1,
                                  uint16x8_t (&A)[MT], uint16x8_t (&B)[MT]) {
    const uint8x16_t lo4 = vdupq_n_u8(0x0F);
    for (int64_t q = q0; q < q1; ++q) {
        const uint8x16x4_t w = vld4q_u8(pj + 64 * q);  // w.val[p][r] = plane byte p of row r
        UNROLL for (int p = 0; p < 4; ++p) {
            const uint8x16_t lo = vandq_u8(w.val[p], lo4), hi = vshrq_n_u8(w.val[p], 4);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                const uint8_t* t = tab[mm] + 128 * q + 16 * p;  // tab8: [q][h][p][16]
                const uint8x16_t r = vqtbl1q_u8(vld1q_u8(t), lo), h = vqtbl1q_u8(vld1q_u8(t + 64), hi);
                A[mm] = vaddq_u16(A[mm], vaddl_u8(vget_low_u8(r), vget_low_u8(h)));
                B[mm] = vaddq_u16(B[mm], vaddl_high_u8(r, h));
            }
        }
    }
}

// LUT8 GEMV, rows m0..m0+MT-1 against row block nb: groups outer, planes inner, d = 2d + P_j in int32 registers.
template <int MT>
static void lut8_block(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb, int64_t m0) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = lut8_group_q(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const float planes_sum = (float)((1 << a->active_bits) - 1);
    const uint8_t* tab[MT];
    float32x4_t f[MT][4];
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        tab[mm] = s->tab8 + (m0 + mm) * 128 * Q;
        UNROLL for (int i = 0; i < 4; ++i) f[mm][i] = vdupq_n_f32(0.0f);
    }
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
        int32x4_t d[MT][4];
        UNROLL for (int mm = 0; mm < MT; ++mm) UNROLL for (int i = 0; i < 4; ++i) d[mm][i] = vdupq_n_s32(0);
        for (int j = 0; j < a->active_bits; ++j) {
            const uint8_t* pj = blk + j * Q * 64;
            UNROLL for (int mm = 0; mm < MT; ++mm) UNROLL for (int i = 0; i < 4; ++i) d[mm][i] = vaddq_s32(d[mm][i], d[mm][i]);
            for (int64_t c0 = q0; c0 < q1; c0 += 32) {
                uint16x8_t A[MT], B[MT];
                UNROLL for (int mm = 0; mm < MT; ++mm) A[mm] = B[mm] = vdupq_n_u16(0);
                lut8_plane_add<MT>(pj, tab, c0, c0 + 32 < q1 ? c0 + 32 : q1, A, B);
                UNROLL for (int mm = 0; mm < MT; ++mm) {
                    d[mm][0] = vaddq_s32(d[mm][0], vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(A[mm]))));
                    d[mm][1] = vaddq_s32(d[mm][1], vreinterpretq_s32_u32(vmovl_high_u16(A[mm])));
                    d[mm][2] = vaddq_s32(d[mm][2], vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(B[mm]))));
                    d[mm][3] = vaddq_s32(d[mm][3], vreinterpretq_s32_u32(vmovl_high_u16(B[mm])));
                }
            }
        }
        const float* sg = a->scales + (nb * NG + g) * 16;
        const float* zg = a->szs + (nb * NG + g) * 16;
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const int64_t m = m0 + mm;
            const float* tp = s->tpar + (m * NG + g) * 2;
            const float32x4_t sc = vdupq_n_f32(tp[0]), off = vdupq_n_f32(planes_sum * tp[1]);
            const float32x4_t xs = vdupq_n_f32(s->xsum[m * NG + g]);
            UNROLL for (int i = 0; i < 4; ++i) {
                const float32x4_t inner = vfmaq_f32(off, sc, vcvtq_f32_s32(d[mm][i]));
                f[mm][i] = vfmaq_f32(f[mm][i], vld1q_f32(sg + 4 * i), inner);
                f[mm][i] = vfmsq_f32(f[mm][i], vld1q_f32(zg + 4 * i), xs);
            }
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        float out[16];
        UNROLL for (int i = 0; i < 4; ++i) vst1q_f32(out + 4 * i, f[mm][i]);
        store_block(a, nb, m0 + mm, out);
    }
}

static bool has_dotprod() {
#if defined(__APPLE__)
    return true;
#elif defined(__linux__) && defined(HWCAP_ASIMDDP)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return false;
#endif
}

// Codes of block nb as int8 [8Q][16][4]: tile[kq][r][i] = c'[r, 4kq + i] (- 128 at 8 active bits).
static void unpack_block_s8(const bf_linear_args* a, int64_t nb, int8_t* tile) {
    const int64_t Q = kquarts(a);
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const int nbits = a->active_bits;
    const uint8_t flip = nbits == 8 ? 0x80 : 0;
    for (int64_t q = 0; q < Q; ++q) {
        // c[r][k] for the quartet's 32 k, Horner over the planes on 16 rows at a time: bit i of plane byte
        // (r, p) is element 8p + i.
        uint8x16_t c[32];
        UNROLL for (int k = 0; k < 32; ++k) c[k] = vdupq_n_u8(0);
        for (int j = 0; j < nbits; ++j) {
            const uint8x16x4_t w = vld4q_u8(blk + (j * Q + q) * 64);
            UNROLL for (int p = 0; p < 4; ++p)
                UNROLL for (int i = 0; i < 8; ++i) {
                    const uint8x16_t bit = vandq_u8(vshlq_u8(w.val[p], vdupq_n_s8((int8_t)-i)), vdupq_n_u8(1));
                    c[8 * p + i] = vaddq_u8(vaddq_u8(c[8 * p + i], c[8 * p + i]), bit);
                }
        }
        // Store as [kq][r][i]: 4 k of each row side by side, via 4-way interleaving stores.
        UNROLL for (int e = 0; e < 8; ++e) {
            uint8x16x4_t v;
            UNROLL for (int i = 0; i < 4; ++i) v.val[i] = veorq_u8(c[4 * e + i], vdupq_n_u8(flip));
            vst4q_u8((uint8_t*)tile + (8 * q + e) * 64, v);
        }
    }
}

template <int MT>
__attribute__((target("arch=armv8.2-a+dotprod"))) static void int8_tile(const bf_linear_args* a, const bf_q8_scratch* s,
                                                          int64_t nb, int64_t m0, const int8_t* tile) {
    const int64_t KQ = 8 * kquarts(a), K32 = 4 * KQ, NG = a->n_groups, gk = 2 * a->group_kb;
    const bool s8 = a->active_bits == 8;
    float32x4_t f[MT][4];
    UNROLL for (int mm = 0; mm < MT; ++mm) UNROLL for (int i = 0; i < 4; ++i) f[mm][i] = vdupq_n_f32(0.0f);
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t k0 = g * gk, k1 = g == NG - 1 ? KQ : k0 + gk;
        int32x4_t d[MT][4];
        UNROLL for (int mm = 0; mm < MT; ++mm) UNROLL for (int i = 0; i < 4; ++i) d[mm][i] = vdupq_n_s32(0);
        for (int64_t kq = k0; kq < k1; ++kq) {
            const int8_t* wp = tile + kq * 64;
            const int8x16_t w0 = vld1q_s8(wp), w1 = vld1q_s8(wp + 16), w2 = vld1q_s8(wp + 32), w3 = vld1q_s8(wp + 48);
            UNROLL for (int mm = 0; mm < MT; ++mm) {
                int32_t xw;
                memcpy(&xw, s->xq + (m0 + mm) * K32 + 4 * kq, 4);
                const int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(xw));
                d[mm][0] = vdotq_s32(d[mm][0], w0, xb);
                d[mm][1] = vdotq_s32(d[mm][1], w1, xb);
                d[mm][2] = vdotq_s32(d[mm][2], w2, xb);
                d[mm][3] = vdotq_s32(d[mm][3], w3, xb);
            }
        }
        const float* sg = a->scales + (nb * NG + g) * 16;
        const float* zg = a->szs + (nb * NG + g) * 16;
        UNROLL for (int mm = 0; mm < MT; ++mm) {
            const float32x4_t xs = vdupq_n_f32(s->xqsum[(m0 + mm) * NG + g]);
            UNROLL for (int i = 0; i < 4; ++i) {
                const float32x4_t sv = vld1q_f32(sg + 4 * i);
                float32x4_t zv = vld1q_f32(zg + 4 * i);
                if (s8) zv = vfmsq_f32(zv, vdupq_n_f32(128.0f), sv);  // sum (c - 128) x: zero term (z - 128) s
                f[mm][i] = vfmaq_f32(f[mm][i], sv, vcvtq_f32_s32(d[mm][i]));
                f[mm][i] = vfmsq_f32(f[mm][i], zv, xs);
            }
        }
    }
    UNROLL for (int mm = 0; mm < MT; ++mm) {
        const float32x4_t sxv = vdupq_n_f32(s->sx[m0 + mm]);
        float out[16];
        UNROLL for (int i = 0; i < 4; ++i) vst1q_f32(out + 4 * i, vmulq_f32(sxv, f[mm][i]));
        store_block(a, nb, m0 + mm, out);
    }
}

static void rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, void* work) {
    if (a->kernel == BF_KERNEL_LUT8) {
        for (int64_t nb = nb0; nb < nb1; ++nb) {
            int64_t m0 = 0;
            for (; m0 + 4 <= a->m; m0 += 4) lut8_block<4>(a, s, nb, m0);
            switch (a->m - m0) {
                case 1: lut8_block<1>(a, s, nb, m0); break;
                case 2: lut8_block<2>(a, s, nb, m0); break;
                case 3: lut8_block<3>(a, s, nb, m0); break;
                default: break;
            }
            activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
        }
        return;
    }
    static const bool dot = has_dotprod();
    if (!dot) {
        rows_q8_portable(a, s, nb0, nb1, work);
        return;
    }
    int8_t* tile = (int8_t*)work;  // one block: 512 Q bytes
    for (int64_t nb = nb0; nb < nb1; ++nb) {
        unpack_block_s8(a, nb, tile);
        int64_t m0 = 0;
        for (; m0 + 4 <= a->m; m0 += 4) int8_tile<4>(a, s, nb, m0, tile);
        switch (a->m - m0) {
            case 1: int8_tile<1>(a, s, nb, m0, tile); break;
            case 2: int8_tile<2>(a, s, nb, m0, tile); break;
            case 3: int8_tile<3>(a, s, nb, m0, tile); break;
            default: break;
        }
        activate_region<Ops>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
    }
}
}  // namespace bf_neonq

extern "C" void bf_neon_prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    bf_neonq::prepare_q8<bf_neonq::Ops>(a, s);
}
extern "C" void bf_neon_rows_q8(const bf_linear_args* a, const bf_q8_scratch* s, int64_t b0, int64_t b1, void* work) {
    bf_neonq::rows_q8(a, s, b0, b1, work);
}
