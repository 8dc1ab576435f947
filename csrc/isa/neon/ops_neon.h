// 16-lane vector operations of the NEON path (AArch64 Advanced SIMD, baseline on every AArch64 CPU), shared by
// its fp32 kernels (kernel_impl.h) and the int8 kernels' preparation (q8_prep.h): four 128-bit registers.
// Included inside the ISA's own namespace by each translation unit of the path.
struct Ops {
    struct V { float32x4_t v[4]; };
    struct I { int32x4_t v[4]; };
    static V zero() { const float32x4_t z = vdupq_n_f32(0.0f); return {{z, z, z, z}}; }
    static I izero() { const int32x4_t z = vdupq_n_s32(0); return {{z, z, z, z}}; }
    static V set1(float x) { const float32x4_t v = vdupq_n_f32(x); return {{v, v, v, v}}; }
    static V load(const float* p) { return {{vld1q_f32(p), vld1q_f32(p + 4), vld1q_f32(p + 8), vld1q_f32(p + 12)}}; }
    static void store(float* p, V x) { for (int i = 0; i < 4; ++i) vst1q_f32(p + 4 * i, x.v[i]); }
    static V add(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vaddq_f32(x.v[i], y.v[i]); return x; }
    static V sub(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vsubq_f32(x.v[i], y.v[i]); return x; }
    static V mul(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vmulq_f32(x.v[i], y.v[i]); return x; }
    static V div(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vdivq_f32(x.v[i], y.v[i]); return x; }
    static V neg(V x) { for (int i = 0; i < 4; ++i) x.v[i] = vnegq_f32(x.v[i]); return x; }
    static V abs(V x) { for (int i = 0; i < 4; ++i) x.v[i] = vabsq_f32(x.v[i]); return x; }
    static V max(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vmaxq_f32(x.v[i], y.v[i]); return x; }
    static V min(V x, V y) { for (int i = 0; i < 4; ++i) x.v[i] = vminq_f32(x.v[i], y.v[i]); return x; }
    static V fmadd(V x, V y, V c) { for (int i = 0; i < 4; ++i) c.v[i] = vfmaq_f32(c.v[i], x.v[i], y.v[i]); return c; }
    static V fnmadd(V x, V y, V c) { for (int i = 0; i < 4; ++i) c.v[i] = vfmsq_f32(c.v[i], x.v[i], y.v[i]); return c; }
    static V rcp(V x) { return div(set1(1.0f), x); }
    static float hmax(V x) {
        return vmaxvq_f32(vmaxq_f32(vmaxq_f32(x.v[0], x.v[1]), vmaxq_f32(x.v[2], x.v[3])));
    }
    // Lane i = p[4i + b]: vld4q deinterleaves the 64 bytes by position mod 4, then widen to int32.
    static I bytes4(const uint8_t* p, int b) {
        const uint8x16x4_t t = vld4q_u8(p);
        const uint8x16_t v = b == 0 ? t.val[0] : b == 1 ? t.val[1] : b == 2 ? t.val[2] : t.val[3];
        const uint16x8_t lo = vmovl_u8(vget_low_u8(v)), hi = vmovl_u8(vget_high_u8(v));
        return {{vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(lo))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(lo))),
                 vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(hi))), vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(hi)))}};
    }
    static I shr4(I x) { for (int i = 0; i < 4; ++i) x.v[i] = vshrq_n_s32(x.v[i], 4); return x; }
    static I push_bit(I c, I v, int bit) {
        const int32x4_t sh = vdupq_n_s32(-bit), one = vdupq_n_s32(1);
        for (int i = 0; i < 4; ++i)
            c.v[i] = vaddq_s32(vaddq_s32(c.v[i], c.v[i]), vandq_s32(vshlq_s32(v.v[i], sh), one));
        return c;
    }
    static V to_float(I x) { V r; for (int i = 0; i < 4; ++i) r.v[i] = vcvtq_f32_s32(x.v[i]); return r; }
    // table[idx & 15] per lane: the 64 table bytes in 4 registers, one tbl on byte indices 4 (idx & 15) + 0..3.
    static V lookup(I idx, const float* table) {
        const uint8x16x4_t t = vld1q_u8_x4((const uint8_t*)table);
        const uint32x4_t rep = vdupq_n_u32(0x04040404u), offs = vdupq_n_u32(0x03020100u), m = vdupq_n_u32(15);
        V r;
        for (int i = 0; i < 4; ++i) {
            const uint32x4_t bi = vmlaq_u32(offs, vandq_u32(vreinterpretq_u32_s32(idx.v[i]), m), rep);
            r.v[i] = vreinterpretq_f32_u8(vqtbl4q_u8(t, vreinterpretq_u8_u32(bi)));
        }
        return r;
    }
    static I round_i(V x) { I r; for (int i = 0; i < 4; ++i) r.v[i] = vcvtnq_s32_f32(x.v[i]); return r; }  // half to even
    static void store_u8(uint8_t* p, I x) {
        const uint16x8_t a = vcombine_u16(vqmovun_s32(x.v[0]), vqmovun_s32(x.v[1]));
        const uint16x8_t b = vcombine_u16(vqmovun_s32(x.v[2]), vqmovun_s32(x.v[3]));
        vst1q_u8(p, vcombine_u8(vqmovn_u16(a), vqmovn_u16(b)));
    }
    static void store_i8(int8_t* p, I x) {
        const int16x8_t a = vcombine_s16(vqmovn_s32(x.v[0]), vqmovn_s32(x.v[1]));
        const int16x8_t b = vcombine_s16(vqmovn_s32(x.v[2]), vqmovn_s32(x.v[3]));
        vst1q_s8(p, vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)));
    }
};
