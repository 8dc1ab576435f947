// The kernels, written once over a 16-lane vector type `O` (scalar arrays, 2 x AVX2, 1 x AVX-512).
//
// Included by one translation unit per ISA, inside that ISA's own namespace, so that nothing here is an
// inline symbol shared between units compiled with different -m flags (the linker could otherwise keep an
// AVX-512 copy for the scalar path). Uses no standard-library templates for the same reason.
//
// Plane bytes are read with O::bytes4(vec, p): byte p of each of the 16 32-bit lanes of a 64-byte vector.
// LUT32 kernel (M <= 8, bit-serial, T-MAC style, fp32 tables, exact): per 4 activations t the 16 partial sums
// tables[m][t][v]; the nibble of plane j for 16 rows indexes them with one lane-wise table lookup
// (vpermps), planes combine MSB first by Horner (d = 2d + p_j), the group scale and zero come last.
// DEQUANT kernel (any M, exact): a 16-row tile is dequantised to fp32 [K8][16] once and multiplied by
// 8 activation rows at a time with broadcast FMAs.
#pragma once
#include <stdint.h>
#include "bitsfusion/kernels.h"

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t kbytes(const bf_linear_args* a) { return (a->k + 7) / 8; }
static inline int64_t kquarts(const bf_linear_args* a) { return (kbytes(a) + 3) / 4; }
// Byte kb of plane j of block blk (16 rows at a 4-byte stride): the 64-byte vector and the lane byte.
static inline const uint8_t* plane_vec(const uint8_t* pj, int64_t kb) { return pj + 64 * (kb >> 2); }

template <class O>
static void prepare(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    using V = typename O::V;
    const int64_t KB = kbytes(a), K8 = 8 * KB, K32 = 32 * kquarts(a), NG = a->n_groups;
    for (int64_t m = 0; m < a->m; ++m) {
        float* xm = xs + m * K32;
        const float* src = a->x + m * a->k;
        if (a->input_scale) {
            const float* is = a->input_scale;
            for (int64_t k = 0; k < a->k; ++k) xm[k] = src[k] * is[k];
        } else {
            for (int64_t k = 0; k < a->k; ++k) xm[k] = src[k];
        }
        for (int64_t k = a->k; k < K32; ++k) xm[k] = 0.0f;
        for (int64_t g = 0; g < NG; ++g) {  // groups span whole bytes: 8 partial sums, no serial chain
            const int64_t k1 = imin((g + 1) * a->group_kb * 8, K8);
            float s8[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t k = g * a->group_kb * 8; k < k1; k += 8)
                for (int i = 0; i < 8; ++i) s8[i] += xm[k + i];
            xsum[m * NG + g] = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
        }
        if (!tables) continue;
        float bitf[4][16];  // bitf[i][v] = bit i of v
        for (int i = 0; i < 4; ++i)
            for (int v = 0; v < 16; ++v) bitf[i][v] = (float)((v >> i) & 1);
        const V b0 = O::load(bitf[0]), b1 = O::load(bitf[1]), b2 = O::load(bitf[2]), b3 = O::load(bitf[3]);
        float* tm = tables + m * (K32 / 4) * 16;
        for (int64_t t = 0; t < 2 * KB; ++t) {
            const float* x4 = xm + 4 * t;
            V v = O::mul(O::set1(x4[0]), b0);
            v = O::fmadd(O::set1(x4[1]), b1, v);
            v = O::fmadd(O::set1(x4[2]), b2, v);
            v = O::fmadd(O::set1(x4[3]), b3, v);
            O::store(tm + 16 * t, v);
        }
    }
}

// GELU(x) = x/2 (1 + erf(x / sqrt 2)) on 16 lanes, erf(u) = u P(u^2) / Q(u^2) on u clamped to [-4, 4]
// (erf(4) rounds to 1 in float32). P (degree 6) and Q (degree 4, positive coefficients: no pole) were fitted
// by iteratively reweighted least squares on [0, 4]; evaluated in float32 with a division it is within 3.6e-7
// of erf there. 1/Q is the ISA's reciprocal estimate with a Newton step; tests/kernels/test_fused_activation.py
// holds every path's GELU within 4e-7 |y| + 1e-6 of F.gelu.
template <class O>
static inline typename O::V gelu(typename O::V x) {
    using V = typename O::V;
    const V u = O::max(O::min(O::mul(x, O::set1(0.70710678118654752f)), O::set1(4.0f)), O::set1(-4.0f));
    const V t = O::mul(u, u);
    V p = O::set1(1.9208759027833366e-08f);
    p = O::fmadd(p, t, O::set1(-1.9915660232072696e-06f));
    p = O::fmadd(p, t, O::set1(1.5588085807394236e-04f));
    p = O::fmadd(p, t, O::set1(4.307434894144535e-03f));
    p = O::fmadd(p, t, O::set1(5.247938260436058e-02f));
    p = O::fmadd(p, t, O::set1(2.1428155899047852e-01f));
    p = O::fmadd(p, t, O::set1(1.1283786296844482f));
    V q = O::set1(1.1015128111466765e-03f);
    q = O::fmadd(q, t, O::set1(1.5580429695546627e-02f));
    q = O::fmadd(q, t, O::set1(1.2094002217054367e-01f));
    q = O::fmadd(q, t, O::set1(5.232296586036682e-01f));
    q = O::fmadd(q, t, O::set1(1.0f));
    const V erf = O::mul(O::mul(u, p), O::rcp(q));  // Q in [1, 177]: no pole, no denormal
    const V half_x = O::mul(x, O::set1(0.5f));
    return O::fmadd(half_x, erf, half_x);
}

#if defined(__GNUC__) || defined(__clang__)
#define BF_NOINLINE __attribute__((noinline))
#else
#define BF_NOINLINE
#endif

// y[m0:m1, n0:n1] in place (bias included) through the call's activation (bf_act); nothing for NONE. A pass
// of its own over values the kernel has just written (in L1/L2), kept out of the kernels' register tiles:
// applied in their store, the approximation's constants and the possible call cost the AVX-512 GEMM its
// registers (MiniLM's up-projection ran 27% slower even with no activation).
template <class O>
BF_NOINLINE static void activate_region(const bf_linear_args* a, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    if (a->act != BF_ACT_GELU || n0 >= n1) return;
    for (int64_t m = m0; m < m1; ++m) {
        float* row = a->y + m * a->n;
        int64_t n = n0;
        for (; n + 16 <= n1; n += 16) O::store(row + n, gelu<O>(O::load(row + n)));
        if (n < n1) {
            float t[16] = {0.0f};
            for (int64_t i = 0; i < n1 - n; ++i) t[i] = row[n + i];
            O::store(t, gelu<O>(O::load(t)));
            for (int64_t i = 0; i < n1 - n; ++i) row[n + i] = t[i];
        }
    }
}

// The columns of row block nb that exist, [16 nb, min(16 nb + 16 w, N)): w blocks wide.
static inline int64_t block_end(const bf_linear_args* a, int64_t nb, int64_t w) { return imin(16 * (nb + w), a->n); }

template <class O>
static void store_rows(const bf_linear_args* a, int64_t nb, int64_t m, typename O::V acc) {
    float tmp[16];
    O::store(tmp, acc);
    const int64_t n0 = nb * 16, cnt = imin(16, a->n - n0);
    float* dst = a->y + m * a->n + n0;
    for (int64_t r = 0; r < cnt; ++r) dst[r] = tmp[r] + (a->bias ? a->bias[n0 + r] : 0.0f);
}

// Sum over bytes [kb0, kb1) of one plane of the table lookups, for MT activation rows. U independent
// accumulator pairs per row hide the add latency when MT is small (a single row is otherwise latency-bound).
template <class O, int MT>
static inline void lut_plane(const uint8_t* pj, const float* tables, int64_t tstride, int64_t kb0, int64_t kb1,
                             typename O::V* p) {
    using V = typename O::V;
    using I = typename O::I;
    constexpr int U = MT <= 2 ? 2 : 1;
    V acc[U][2][MT];
    for (int u = 0; u < U; ++u)
        for (int mm = 0; mm < MT; ++mm) acc[u][0][mm] = acc[u][1][mm] = O::zero();
    int64_t kb = kb0;
    for (; kb + U <= kb1; kb += U) {
        for (int u = 0; u < U; ++u) {
            const I lo = O::bytes4(plane_vec(pj, kb + u), (int)((kb + u) & 3));
            const I hi = O::shr4(lo);
            for (int mm = 0; mm < MT; ++mm) {
                const float* t = tables + mm * tstride + 32 * (kb + u);
                acc[u][0][mm] = O::add(acc[u][0][mm], O::lookup(lo, t));
                acc[u][1][mm] = O::add(acc[u][1][mm], O::lookup(hi, t + 16));
            }
        }
    }
    for (; kb < kb1; ++kb) {
        const I lo = O::bytes4(plane_vec(pj, kb), (int)(kb & 3));
        const I hi = O::shr4(lo);
        for (int mm = 0; mm < MT; ++mm) {
            const float* t = tables + mm * tstride + 32 * kb;
            acc[0][0][mm] = O::add(acc[0][0][mm], O::lookup(lo, t));
            acc[0][1][mm] = O::add(acc[0][1][mm], O::lookup(hi, t + 16));
        }
    }
    for (int mm = 0; mm < MT; ++mm) {
        p[mm] = O::add(acc[0][0][mm], acc[0][1][mm]);
        for (int u = 1; u < U; ++u) p[mm] = O::add(p[mm], O::add(acc[u][0][mm], acc[u][1][mm]));
    }
}

template <class O, int MT>
static void lut_block(const bf_linear_args* a, const float* xsum, const float* tables, int64_t nb, int64_t m0) {
    using V = typename O::V;
    const int64_t KB = kbytes(a), Q = kquarts(a), NG = a->n_groups, tstride = 128 * Q;
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    const float* sc = a->scales + nb * NG * 16;
    const float* sz = a->szs + nb * NG * 16;
    const float* tb = tables + m0 * tstride;
    V acc[MT], d[MT], p[MT];
    for (int mm = 0; mm < MT; ++mm) acc[mm] = O::zero();
    for (int64_t g = 0; g < NG; ++g) {
        const int64_t kb0 = g * a->group_kb, kb1 = imin(kb0 + a->group_kb, KB);
        for (int mm = 0; mm < MT; ++mm) d[mm] = O::zero();
        for (int j = 0; j < a->active_bits; ++j) {
            lut_plane<O, MT>(blk + j * Q * 64, tb, tstride, kb0, kb1, p);
            for (int mm = 0; mm < MT; ++mm) d[mm] = O::add(O::add(d[mm], d[mm]), p[mm]);
        }
        const V s = O::load(sc + 16 * g), z = O::load(sz + 16 * g);
        for (int mm = 0; mm < MT; ++mm) {
            acc[mm] = O::fmadd(s, d[mm], acc[mm]);
            acc[mm] = O::fnmadd(z, O::set1(xsum[(m0 + mm) * NG + g]), acc[mm]);
        }
    }
    for (int mm = 0; mm < MT; ++mm) store_rows<O>(a, nb, m0 + mm, acc[mm]);
}

// tile[k][r] = s[r] * c'[r, k] - s[r] * z[r] for the 16 rows of block nb, k < K8.
template <class O>
static void dequant_tile(const bf_linear_args* a, int64_t nb, float* tile) {
    using V = typename O::V;
    using I = typename O::I;
    const int64_t KB = kbytes(a), Q = kquarts(a), NG = a->n_groups;
    const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
    for (int64_t g = 0; g < NG; ++g) {
        const V s = O::load(a->scales + (nb * NG + g) * 16);
        const V nz = O::neg(O::load(a->szs + (nb * NG + g) * 16));
        const int64_t kb1 = imin((g + 1) * a->group_kb, KB);
        for (int64_t kb = g * a->group_kb; kb < kb1; ++kb) {
            I c[8];
            for (int i = 0; i < 8; ++i) c[i] = O::izero();
            for (int j = 0; j < a->active_bits; ++j) {
                const I v = O::bytes4(plane_vec(blk + j * Q * 64, kb), (int)(kb & 3));
                for (int i = 0; i < 8; ++i) c[i] = O::push_bit(c[i], v, i);
            }
            for (int i = 0; i < 8; ++i) O::store(tile + (8 * kb + i) * 16, O::fmadd(s, O::to_float(c[i]), nz));
        }
    }
}

template <class O, int MT>
static void gemm_micro(const bf_linear_args* a, const float* xs, const float* tile, int64_t nb, int64_t m0) {
    using V = typename O::V;
    const int64_t K8 = 8 * kbytes(a), K32 = 32 * kquarts(a);
    V acc[MT];
    for (int mm = 0; mm < MT; ++mm) acc[mm] = O::zero();
    const float* xm = xs + m0 * K32;
    for (int64_t k = 0; k < K8; ++k) {
        const V w = O::load(tile + 16 * k);
        for (int mm = 0; mm < MT; ++mm) acc[mm] = O::fmadd(O::set1(xm[mm * K32 + k]), w, acc[mm]);
    }
    for (int mm = 0; mm < MT; ++mm) store_rows<O>(a, nb, m0 + mm, acc[mm]);
}

template <class O, template <class, int> class F, class... Args>
static void by_rows(int64_t mt, Args... args) {
    switch (mt) {
        case 1: F<O, 1>::run(args...); break;
        case 2: F<O, 2>::run(args...); break;
        case 3: F<O, 3>::run(args...); break;
        case 4: F<O, 4>::run(args...); break;
        case 5: F<O, 5>::run(args...); break;
        case 6: F<O, 6>::run(args...); break;
        case 7: F<O, 7>::run(args...); break;
        default: F<O, 8>::run(args...); break;
    }
}
template <class O, int MT> struct LutF {
    static void run(const bf_linear_args* a, const float* xsum, const float* tb, int64_t nb, int64_t m0) {
        lut_block<O, MT>(a, xsum, tb, nb, m0);
    }
};
template <class O, int MT> struct GemmF {
    static void run(const bf_linear_args* a, const float* xs, const float* tile, int64_t nb, int64_t m0) {
        gemm_micro<O, MT>(a, xs, tile, nb, m0);
    }
};

template <class O>
static void rows(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                 int64_t nb_begin, int64_t nb_end, float* tile) {
    for (int64_t nb = nb_begin; nb < nb_end; ++nb) {
        if (a->kernel == BF_KERNEL_LUT32) {
            for (int64_t m0 = 0; m0 < a->m; m0 += 8) by_rows<O, LutF>(imin(8, a->m - m0), a, xsum, tables, nb, m0);
        } else {
            dequant_tile<O>(a, nb, tile);
            for (int64_t m0 = 0; m0 < a->m; m0 += 8) by_rows<O, GemmF>(imin(8, a->m - m0), a, xs, tile, nb, m0);
        }
        activate_region<O>(a, 0, a->m, 16 * nb, block_end(a, nb, 1));
    }
}
