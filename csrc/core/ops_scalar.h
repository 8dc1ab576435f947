// 16-lane vector operations of the scalar path, shared by its fp32 kernels (kernel_impl.h) and int8 kernels.
// Included inside the ISA's own namespace by each translation unit compiled with that ISA's flags.
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
    static I bytes4(const uint8_t* p, int b) { I r; for (int i = 0; i < 16; ++i) r.v[i] = p[4 * i + b]; return r; }
    static I shr4(I a) { for (int i = 0; i < 16; ++i) a.v[i] >>= 4; return a; }
    static I push_bit(I c, I v, int bit) {
        for (int i = 0; i < 16; ++i) c.v[i] = 2 * c.v[i] + ((v.v[i] >> bit) & 1);
        return c;
    }
    static V to_float(I a) { V r; for (int i = 0; i < 16; ++i) r.v[i] = (float)a.v[i]; return r; }
    static V lookup(I idx, const float* table) {
        V r; for (int i = 0; i < 16; ++i) r.v[i] = table[idx.v[i] & 15]; return r;
    }
    // Used by the int8 kernels' preparation (csrc/core/q8_prep.h).
    static V sub(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] -= b.v[i]; return a; }
    static V div(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] /= b.v[i]; return a; }
    static V abs(V a) { for (int i = 0; i < 16; ++i) a.v[i] = a.v[i] < 0.0f ? -a.v[i] : a.v[i]; return a; }
    static V max(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
    static V min(V a, V b) { for (int i = 0; i < 16; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i]; return a; }
    static V rcp(V a) { for (int i = 0; i < 16; ++i) a.v[i] = 1.0f / a.v[i]; return a; }
    static float hmax(V a) { float m = a.v[0]; for (int i = 1; i < 16; ++i) m = a.v[i] > m ? a.v[i] : m; return m; }
    static I round_i(V a) { I r; for (int i = 0; i < 16; ++i) r.v[i] = (int32_t)nearbyintf(a.v[i]); return r; }
    static void store_u8(uint8_t* p, I a) {
        for (int i = 0; i < 16; ++i) p[i] = (uint8_t)(a.v[i] < 0 ? 0 : a.v[i] > 255 ? 255 : a.v[i]);
    }
    static void store_i8(int8_t* p, I a) {
        for (int i = 0; i < 16; ++i) p[i] = (int8_t)(a.v[i] < -128 ? -128 : a.v[i] > 127 ? 127 : a.v[i]);
    }
};
