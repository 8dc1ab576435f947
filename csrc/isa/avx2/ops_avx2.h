// 16-lane vector operations of the AVX2 path, shared by its fp32 kernels (kernel_impl.h) and int8 kernels.
// Included inside the ISA's own namespace by each translation unit compiled with that ISA's flags.
struct Ops {
    struct V { __m256 a, b; };
    struct I { __m256i a, b; };
    static V zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
    static I izero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
    static V set1(float x) { const __m256 v = _mm256_set1_ps(x); return {v, v}; }
    static V load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
    static void store(float* p, V x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
    static V add(V x, V y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
    static V mul(V x, V y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
    static V neg(V x) { const __m256 z = _mm256_setzero_ps(); return {_mm256_sub_ps(z, x.a), _mm256_sub_ps(z, x.b)}; }
    static V fmadd(V x, V y, V c) { return {_mm256_fmadd_ps(x.a, y.a, c.a), _mm256_fmadd_ps(x.b, y.b, c.b)}; }
    static V fnmadd(V x, V y, V c) { return {_mm256_fnmadd_ps(x.a, y.a, c.a), _mm256_fnmadd_ps(x.b, y.b, c.b)}; }
    static I bytes4(const uint8_t* p, int b) {
        const __m128i c = _mm_cvtsi32_si128(8 * b);
        const __m256i ff = _mm256_set1_epi32(0xFF);
        return {_mm256_and_si256(_mm256_srl_epi32(_mm256_loadu_si256((const __m256i*)p), c), ff),
                _mm256_and_si256(_mm256_srl_epi32(_mm256_loadu_si256((const __m256i*)(p + 32)), c), ff)};
    }
    static I shr4(I x) { return {_mm256_srli_epi32(x.a, 4), _mm256_srli_epi32(x.b, 4)}; }
    static __m256i push1(__m256i c, __m256i v, int bit) {
        const __m256i b = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set1_epi32(bit)), _mm256_set1_epi32(1));
        return _mm256_add_epi32(_mm256_add_epi32(c, c), b);
    }
    static I push_bit(I c, I v, int bit) { return {push1(c.a, v.a, bit), push1(c.b, v.b, bit)}; }
    static V to_float(I x) { return {_mm256_cvtepi32_ps(x.a), _mm256_cvtepi32_ps(x.b)}; }
    static __m256 look8(__m256i idx, __m256 lo, __m256 hi) {
        const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 -> sign bit
        return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), sel);
    }
    static V lookup(I idx, const float* table) {
        const __m256 lo = _mm256_loadu_ps(table), hi = _mm256_loadu_ps(table + 8);
        return {look8(idx.a, lo, hi), look8(idx.b, lo, hi)};
    }
    // Used by the int8 kernels' preparation (csrc/core/q8_prep.h).
    static V sub(V x, V y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
    static V div(V x, V y) { return {_mm256_div_ps(x.a, y.a), _mm256_div_ps(x.b, y.b)}; }
    static V abs(V x) {
        const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        return {_mm256_and_ps(x.a, m), _mm256_and_ps(x.b, m)};
    }
    static V max(V x, V y) { return {_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b)}; }
    static V min(V x, V y) { return {_mm256_min_ps(x.a, y.a), _mm256_min_ps(x.b, y.b)}; }
    // 1 / x to ~2^-22 relative: the 12-bit estimate and one Newton step (vdivps costs several times as much)
    static V rcp(V x) {
        const __m256 two = _mm256_set1_ps(2.0f), ra = _mm256_rcp_ps(x.a), rb = _mm256_rcp_ps(x.b);
        return {_mm256_mul_ps(ra, _mm256_fnmadd_ps(x.a, ra, two)), _mm256_mul_ps(rb, _mm256_fnmadd_ps(x.b, rb, two))};
    }
    static float hmax(V x) {
        alignas(32) float t[8];
        _mm256_store_ps(t, _mm256_max_ps(x.a, x.b));
        float m = t[0];
        for (int i = 1; i < 8; ++i) m = t[i] > m ? t[i] : m;
        return m;
    }
    static I round_i(V x) { return {_mm256_cvtps_epi32(x.a), _mm256_cvtps_epi32(x.b)}; }
    static __m128i pack16(I x, bool is_unsigned) {
        const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(x.a, x.b), 0xD8);  // 16 x int16 in order
        const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
        return is_unsigned ? _mm_packus_epi16(lo, hi) : _mm_packs_epi16(lo, hi);
    }
    static void store_u8(uint8_t* p, I x) { _mm_storeu_si128((__m128i*)p, pack16(x, true)); }
    static void store_i8(int8_t* p, I x) { _mm_storeu_si128((__m128i*)p, pack16(x, false)); }
};
