// Per-call preparation of the integer kernels (LUT8, INT8), written once over the 16-lane ops `O`.
// Included after kernel_impl.h inside each ISA's namespace (see there why), so the ISA's flags apply.
//
// LUT8 (T-MAC style tables quantised to uint8): for the 4 activations x_0..x_3 of table t, entry v is
//   T_t[v] = sum_{i: bit i of v} x_i = sc_g * e_t[v] + neg_t,  neg_t = sum_i min(x_i, 0),
//   e_t[v] = round((T_t[v] - neg_t) / sc_g) in [0, 255],     sc_g = max_{t in g} sum_i |x_i| / 255,
// one scale per weight group g (per row when the layer has one group), so every lookup of a group sums
// in integers. The offsets neg_t do not depend on the code: summed over a group and over the planes
// (weights 2^(b'-1-j)) they contribute (2^b' - 1) * off_g, off_g = sum_{t in g} neg_t, added back exactly.
// Each entry is off by at most sc_g / 2, which bounds the kernel's error (docs/KERNELS.md).
//
// INT8: sx = max_k |x'_k| / 127 per row, xq = round_half_even(x' / sx) (|xq| <= 127), the per-group sums
// of xq for the zero-point term; bitsfusion/kernels/reference.py (quantize_activations) does the same.
#pragma once
// (the including unit includes <math.h>, <stdint.h> and bitsfusion/kernels.h outside the namespace)

// Quartets per group for LUT8 (the dispatcher checks NG == 1 or group_kb % 4 == 0).
static inline int64_t lut8_group_q(const bf_linear_args* a) {
    return a->n_groups == 1 ? kquarts(a) : a->group_kb / 4;
}
// Byte offset of table t's 16 entries in one row's tab8: [q][h][p][16] with t = 8q + 2p + h.
static inline int64_t tab8_offset(int64_t t) { return (t >> 3) * 128 + (t & 1) * 64 + ((t & 7) >> 1) * 16; }

template <class O>
static void lut8_tables(const bf_linear_args* a, const float* xs, uint8_t* tab8, float* tpar, float* tstat) {
    using V = typename O::V;
    const int64_t Q = kquarts(a), K32 = 32 * Q, NG = a->n_groups, gq = lut8_group_q(a);
    float bitf[4][16];  // bitf[i][v] = bit i of v
    for (int i = 0; i < 4; ++i)
        for (int v = 0; v < 16; ++v) bitf[i][v] = (float)((v >> i) & 1);
    const V b0 = O::load(bitf[0]), b1 = O::load(bitf[1]), b2 = O::load(bitf[2]), b3 = O::load(bitf[3]);
    float* rng = tstat;          // [T] sum_i |x_i| of table t
    float* ngs = tstat + 8 * Q;  // [T] neg_t
    for (int64_t m = 0; m < a->m; ++m) {
        const float* xm = xs + m * K32;
        uint8_t* tm = tab8 + m * 128 * Q;
        for (int64_t t = 0; t < 8 * Q; ++t) {  // independent per t (no loop-carried chain)
            const float* x4 = xm + 4 * t;
            float r[4], n[4];
            for (int i = 0; i < 4; ++i) {
                r[i] = x4[i] < 0.0f ? -x4[i] : x4[i];
                n[i] = x4[i] < 0.0f ? x4[i] : 0.0f;
            }
            rng[t] = (r[0] + r[1]) + (r[2] + r[3]);
            ngs[t] = (n[0] + n[1]) + (n[2] + n[3]);
        }
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t t0 = 8 * g * gq, t1 = g == NG - 1 ? 8 * Q : 8 * (g + 1) * gq;  // t1 - t0: a multiple of 8
            float r4[4] = {0.0f, 0.0f, 0.0f, 0.0f}, o4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int64_t t = t0; t < t1; t += 4)
                for (int i = 0; i < 4; ++i) {
                    r4[i] = rng[t + i] > r4[i] ? rng[t + i] : r4[i];
                    o4[i] += ngs[t + i];
                }
            const float r01 = r4[0] > r4[1] ? r4[0] : r4[1], r23 = r4[2] > r4[3] ? r4[2] : r4[3];
            const float range = r01 > r23 ? r01 : r23, off = (o4[0] + o4[1]) + (o4[2] + o4[3]);
            const float inv = range > 0.0f ? 255.0f / range : 0.0f;
            tpar[(m * NG + g) * 2] = range / 255.0f;
            tpar[(m * NG + g) * 2 + 1] = off;
            const V vinv = O::set1(inv);
            for (int64_t t = t0; t < t1; ++t) {
                const float* x4 = xm + 4 * t;
                V v = O::mul(O::set1(x4[0]), b0);
                v = O::fmadd(O::set1(x4[1]), b1, v);
                v = O::fmadd(O::set1(x4[2]), b2, v);
                v = O::fmadd(O::set1(x4[3]), b3, v);
                O::store_u8(tm + tab8_offset(t), O::round_i(O::mul(O::sub(v, O::set1(ngs[t])), vinv)));
            }
        }
    }
}

template <class O>
static void int8_quantize(const bf_linear_args* a, const float* xs, int8_t* xq, float* sx, float* xqsum) {
    using V = typename O::V;
    const int64_t K32 = 32 * kquarts(a), NG = a->n_groups, gk = 8 * a->group_kb;
    for (int64_t m = 0; m < a->m; ++m) {
        const float* xm = xs + m * K32;
        int8_t* qm = xq + m * K32;
        V mx = O::zero();
        for (int64_t k = 0; k < K32; k += 16) mx = O::max(mx, O::abs(O::load(xm + k)));
        const float amax = O::hmax(mx), s = amax / 127.0f;
        sx[m] = s;
        if (amax > 0.0f) {
            const V vs = O::set1(s);
            for (int64_t k = 0; k < K32; k += 16) O::store_i8(qm + k, O::round_i(O::div(O::load(xm + k), vs)));
        } else {
            for (int64_t k = 0; k < K32; ++k) qm[k] = 0;
        }
        for (int64_t g = 0; g < NG; ++g) {
            const int64_t k0 = g * gk, k1 = g == NG - 1 ? K32 : k0 + gk;
            int32_t sum = 0;
            for (int64_t k = k0; k < k1; ++k) sum += qm[k];
            xqsum[m * NG + g] = (float)sum;  // exact: |sum| <= 127 K < 2^24 (repack refuses K >= 131072)
        }
    }
}

template <class O>
static void prepare_q8(const bf_linear_args* a, const bf_q8_scratch* s) {
    if (!s->xs) {  // INT8, no input_scale, K = K32 (the dispatcher's choice): quantise x in place of x'
        int8_quantize<O>(a, a->x, s->xq, s->sx, s->xqsum);
        return;
    }
    prepare<O>(a, s->xs, s->xsum, nullptr);  // x' padded to K32, per-group sums of x' (xsum: LUT8 only)
    if (a->kernel == BF_KERNEL_LUT8)
        lut8_tables<O>(a, s->xs, s->tab8, s->tpar, s->tstat);
    else
        int8_quantize<O>(a, s->xs, s->xq, s->sx, s->xqsum);
}

// Code c'[r, k] (top active_bits bits) of row r of the block at blk, read from the plane bytes.
static inline uint32_t code_at(const bf_linear_args* a, const uint8_t* blk, int64_t r, int64_t k) {
    const int64_t Q = kquarts(a), kb = k >> 3;
    const uint8_t* p = blk + 64 * (kb >> 2) + 4 * r + (kb & 3);
    uint32_t c = 0;
    for (int j = 0; j < a->active_bits; ++j) c = 2 * c + ((p[j * Q * 64] >> (k & 7)) & 1);
    return c;
}

// Stores y[m, 16nb .. 16nb+15] = f[r] (+ bias), the rows that exist.
static inline void store_block(const bf_linear_args* a, int64_t nb, int64_t m, const float* f) {
    const int64_t n0 = nb * 16, cnt = imin(16, a->n - n0);
    float* dst = a->y + m * a->n + n0;
    for (int64_t r = 0; r < cnt; ++r) dst[r] = f[r] + (a->bias ? a->bias[n0 + r] : 0.0f);
}
