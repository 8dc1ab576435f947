// 16-lane vector operations of the AVX-512 path, shared by its fp32 kernels (kernel_impl.h) and int8 kernels.
// Included inside the ISA's own namespace by each translation unit compiled with that ISA's flags.
struct Ops {
    using V = __m512;
    using I = __m512i;
    static V zero() { return _mm512_setzero_ps(); }
    static I izero() { return _mm512_setzero_si512(); }
    static V set1(float x) { return _mm512_set1_ps(x); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
    static V add(V x, V y) { return _mm512_add_ps(x, y); }
    static V mul(V x, V y) { return _mm512_mul_ps(x, y); }
    static V neg(V x) { return _mm512_sub_ps(_mm512_setzero_ps(), x); }
    static V fmadd(V x, V y, V c) { return _mm512_fmadd_ps(x, y, c); }
    static V fnmadd(V x, V y, V c) { return _mm512_fnmadd_ps(x, y, c); }
    static I bytes4(const uint8_t* p, int b) {
        return _mm512_and_si512(_mm512_srl_epi32(_mm512_loadu_si512(p), _mm_cvtsi32_si128(8 * b)),
                                _mm512_set1_epi32(0xFF));
    }
    static I shr4(I x) { return _mm512_srli_epi32(x, 4); }
    static I push_bit(I c, I v, int bit) {
        const I b = _mm512_and_si512(_mm512_srlv_epi32(v, _mm512_set1_epi32(bit)), _mm512_set1_epi32(1));
        return _mm512_add_epi32(_mm512_add_epi32(c, c), b);
    }
    static V to_float(I x) { return _mm512_cvtepi32_ps(x); }
    static V lookup(I idx, const float* table) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table)); }
    // Used by the int8 kernels' preparation (csrc/core/q8_prep.h).
    static V sub(V x, V y) { return _mm512_sub_ps(x, y); }
    static V div(V x, V y) { return _mm512_div_ps(x, y); }
    static V abs(V x) { return _mm512_abs_ps(x); }
    static V max(V x, V y) { return _mm512_max_ps(x, y); }
    static V min(V x, V y) { return _mm512_min_ps(x, y); }
    // 1 / x to ~2^-24 relative: the 14-bit estimate and one Newton step (vdivps costs ~5x as much)
    static V rcp(V x) {
        const V r = _mm512_rcp14_ps(x);
        return _mm512_mul_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(2.0f)));
    }
    static float hmax(V x) { return _mm512_reduce_max_ps(x); }
    static I round_i(V x) { return _mm512_cvtps_epi32(x); }
    static void store_u8(uint8_t* p, I x) {
        _mm_storeu_si128((__m128i*)p, _mm512_cvtusepi32_epi8(_mm512_max_epi32(x, _mm512_setzero_si512())));
    }
    static void store_i8(int8_t* p, I x) { _mm_storeu_si128((__m128i*)p, _mm512_cvtsepi32_epi8(x)); }
};
