// Portable integer kernels (LUT8, INT8): the scalar path, and the definition the SIMD paths must equal.
// Included after q8_prep.h inside an ISA namespace. Integer sums are exact; only the float epilogue
// (group scales, zero term, bias) rounds, in the same order as the SIMD paths.

// LUT8: per block of 16 rows and activation row m, for each group g:
//   D[r] = sum_j 2^(b'-1-j) sum_{t in g} e_t[nibble_j(r, t)]     (exact in int32 for K < 2^17)
//   y[r] += s[r,g] * (sc_g * D[r] + (2^b' - 1) * off_g) - s[r,g] z[r,g] * sum_{k in g} x'_k
static void lut8_rows_portable(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1) {
    const int64_t Q = kquarts(a), NG = a->n_groups, gq = lut8_group_q(a);
    const float planes_sum = (float)((1 << a->active_bits) - 1);
    for (int64_t nb = nb0; nb < nb1; ++nb) {
        const uint8_t* blk = a->planes + nb * a->bits * Q * 64;
        const float* sc = a->scales + nb * NG * 16;
        const float* sz = a->szs + nb * NG * 16;
        for (int64_t m = 0; m < a->m; ++m) {
            const uint8_t* tab = s->tab8 + m * 128 * Q;
            float f[16] = {0};
            for (int64_t g = 0; g < NG; ++g) {
                const int64_t q0 = g * gq, q1 = g == NG - 1 ? Q : q0 + gq;
                const float tsc = s->tpar[(m * NG + g) * 2], toff = s->tpar[(m * NG + g) * 2 + 1];
                const float xsum = s->xsum[m * NG + g];
                for (int r = 0; r < 16; ++r) {
                    int32_t d = 0;
                    for (int j = 0; j < a->active_bits; ++j) {
                        int32_t p = 0;
                        for (int64_t q = q0; q < q1; ++q) {
                            const uint8_t* w = blk + (j * Q + q) * 64 + 4 * r;
                            const uint8_t* t = tab + 128 * q;
                            for (int b = 0; b < 4; ++b) p += t[16 * b + (w[b] & 15)] + t[64 + 16 * b + (w[b] >> 4)];
                        }
                        d = 2 * d + p;
                    }
                    const float inner = tsc * (float)d + planes_sum * toff;
                    f[r] = sc[16 * g + r] * inner + f[r];
                    f[r] = f[r] - sz[16 * g + r] * xsum;
                }
            }
            store_block(a, nb, m, f);
        }
    }
}

// INT8: y[r] = sx * sum_g ( s[r,g] * sum_{k in g} c'[r,k] xq[k]  -  s[r,g] z[r,g] * sum_{k in g} xq[k] ) + bias.
// work: uint8 [16][K32] codes of one block.
static void int8_rows_portable(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1,
                               uint8_t* codes) {
    const int64_t K32 = 32 * kquarts(a), NG = a->n_groups, gk = 8 * a->group_kb;
    for (int64_t nb = nb0; nb < nb1; ++nb) {
        const uint8_t* blk = a->planes + nb * a->bits * kquarts(a) * 64;
        for (int r = 0; r < 16; ++r)
            for (int64_t k = 0; k < K32; ++k) codes[r * K32 + k] = (uint8_t)code_at(a, blk, r, k);
        const float* sc = a->scales + nb * NG * 16;
        const float* sz = a->szs + nb * NG * 16;
        for (int64_t m = 0; m < a->m; ++m) {
            const int8_t* xq = s->xq + m * K32;
            float f[16];
            for (int r = 0; r < 16; ++r) {
                float acc = 0.0f;
                for (int64_t g = 0; g < NG; ++g) {
                    const int64_t k0 = g * gk, k1 = g == NG - 1 ? K32 : k0 + gk;
                    int32_t d = 0;
                    for (int64_t k = k0; k < k1; ++k) d += (int32_t)codes[r * K32 + k] * xq[k];
                    acc = sc[16 * g + r] * (float)d + acc;
                    acc = acc - sz[16 * g + r] * s->xqsum[m * NG + g];
                }
                f[r] = s->sx[m] * acc;
            }
            store_block(a, nb, m, f);
        }
    }
}

static void rows_q8_portable(const bf_linear_args* a, const bf_q8_scratch* s, int64_t nb0, int64_t nb1, void* work) {
    if (a->kernel == BF_KERNEL_LUT8)
        lut8_rows_portable(a, s, nb0, nb1);
    else
        int8_rows_portable(a, s, nb0, nb1, (uint8_t*)work);
    activate_region<Ops>(a, 0, a->m, 16 * nb0, block_end(a, nb0, nb1 - nb0));
}
