// Portable kernels: the 16 lanes are plain arrays (the compiler may use the baseline SIMD of the target).
#include "bitsfusion/kernels.h"

namespace bf_scalar {
#include "kernel_impl.h"

struct Ops {
    struct V { float v[16]; };
    struct I { int32_t v[16]; };
    static V zero() { V r; for (int i = 0; i < 16; ++i) r.v[i] = 0.0f; return r; }
    static I izero() { I r; for (int i = 0; i < 16; ++i) r.v[i] = 0; return r; }
    static V set1(float a) { V r; for (int i = 0; i < 16; ++i) r.v[i] = a; return r; }
    static V load(const float* p) { V r; for (int i = 0; i < 16; ++i) r.v[i] = p[i]; return r; }
    static void store(float* p, V a) { for (int i = 0; i < 16; ++i) p[i] = a.v[i]; }
    static V add(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] += b.v[i]; return a; }
    static V mul(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] *= b.v[i]; return a; }
    static V neg(V a) { for (int i = 0; i < 16; ++i) a.v[i] = -a.v[i]; return a; }
    static V fmadd(V a, V b, V c) { for (int i = 0; i < 16; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
    static V fnmadd(V a, V b, V c) { for (int i = 0; i < 16; ++i) c.v[i] -= a.v[i] * b.v[i]; return c; }
    static I bytes(const uint8_t* p) { I r; for (int i = 0; i < 16; ++i) r.v[i] = p[i]; return r; }
    static I shr4(I a) { for (int i = 0; i < 16; ++i) a.v[i] >>= 4; return a; }
    static I push_bit(I c, I v, int bit) {
        for (int i = 0; i < 16; ++i) c.v[i] = 2 * c.v[i] + ((v.v[i] >> bit) & 1);
        return c;
    }
    static V to_float(I a) { V r; for (int i = 0; i < 16; ++i) r.v[i] = (float)a.v[i]; return r; }
    static V lookup(I idx, const float* table) {
        V r; for (int i = 0; i < 16; ++i) r.v[i] = table[idx.v[i] & 15]; return r;
    }
};
}  // namespace bf_scalar

static void prepare_scalar(const bf_linear_args* a, float* xs, float* xsum, float* tables) {
    bf_scalar::prepare<bf_scalar::Ops>(a, xs, xsum, tables);
}
static void rows_scalar(const bf_linear_args* a, const float* xs, const float* xsum, const float* tables,
                        int64_t b0, int64_t b1, float* tile) {
    bf_scalar::rows<bf_scalar::Ops>(a, xs, xsum, tables, b0, b1, tile);
}
extern "C" const bf_isa_impl bf_impl_scalar = {"scalar", prepare_scalar, rows_scalar};
