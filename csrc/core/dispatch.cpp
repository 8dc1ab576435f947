// cpuid -> which ISA paths run here; one linear call fanned out over worker threads (parallel.h) by row blocks.
// Compiled for baseline x86-64 (or whatever the target's default is): no ISA-specific code here.
#include "dispatch.h"
#include "parallel.h"

#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace bf {

CpuFeatures cpu_features() {
    CpuFeatures f;
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    f.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
    f.gfni = __builtin_cpu_supports("gfni");
#endif
    return f;
}

bool isa_supported(int isa) {
    const CpuFeatures f = cpu_features();
    (void)f;  // no flags to read where neither x86 path is compiled
    switch (isa) {
        case BF_ISA_SCALAR: return true;
#if defined(BF_X86)
        case BF_ISA_AVX2: return f.avx2;
        case BF_ISA_AVX512: return f.avx2 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
#endif
#if defined(BF_ARM)
        case BF_ISA_NEON: return true;  // baseline on AArch64
#endif
        default: return false;
    }
}

int best_isa() {
    for (int isa = BF_ISA_COUNT - 1; isa > 0; --isa)
        if (isa_supported(isa)) return isa;
    return BF_ISA_SCALAR;
}

static const bf_isa_impl& impl_of(int isa) {
    if (!isa_supported(isa)) throw std::invalid_argument("ISA path " + std::to_string(isa) + " does not run here");
#if defined(BF_X86)
    if (isa == BF_ISA_AVX512) return bf_impl_avx512;
    if (isa == BF_ISA_AVX2) return bf_impl_avx2;
#endif
#if defined(BF_ARM)
    if (isa == BF_ISA_NEON) return bf_impl_neon;
#endif
    return bf_impl_scalar;
}

const char* isa_name(int isa) {
    static const char* names[BF_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon"};
    return (isa >= 0 && isa < BF_ISA_COUNT) ? names[isa] : "unknown";
}

// The integer kernels of the AVX-512 path need VNNI, VBMI and GFNI; without them it runs AVX2's.
static const bf_isa_impl& q8_impl_of(int isa) {
    const bf_isa_impl& impl = impl_of(isa);
#if defined(BF_X86)
    if (isa == BF_ISA_AVX512) {
        const CpuFeatures f = cpu_features();
        if (!(f.avx512vnni && f.avx512vbmi && f.gfni)) return bf_impl_avx2;
    }
#endif
    return impl;
}


// Scratch memory of linear_q8, kept by each calling thread from one call to the next. Allocated afresh as
// separate blocks, the buffers of a 4096-row call (MiniLM at 32 x 128 tokens: ~3 MB of quantised activations)
// were handed back to the system at every call's end (glibc trims the top of its heap once that much is free)
// and page-faulted in again by the next: ~1.0 of a 1.5 ms call at 4096 x 384 -> 32 (0.5 ms with this block,
// the same as with glibc's mmap and trim thresholds raised). A call that needed more than kKeepBytes frees its
// block again at its end, so one huge call does not pin its memory.
class ScratchArena {
  public:
    static constexpr size_t kKeepBytes = size_t(64) << 20;
    // A page-aligned block of at least `bytes`, contents unspecified; throws std::bad_alloc.
    uint8_t* get(size_t bytes) {
        if (bytes + 4096 > cap_) {
            mem_.reset();
            cap_ = 0;
            mem_.reset(new uint8_t[bytes + 4096]);
            cap_ = bytes + 4096;
        }
        return (uint8_t*)(((uintptr_t)mem_.get() + 4095) & ~(uintptr_t)4095);
    }
    void trim() {
        if (cap_ > kKeepBytes) {
            mem_.reset();
            cap_ = 0;
        }
    }

  private:
    std::unique_ptr<uint8_t[]> mem_;
    size_t cap_ = 0;
};

// Offsets of the scratch arrays of one call inside its block, each on its own cache lines.
struct ScratchLayout {
    size_t total = 0;
    size_t add(size_t bytes) {
        const size_t off = total;
        total += (bytes + 63) & ~(size_t)63;
        return off;
    }
};

static void linear_q8(const bf_linear_args& a, int isa, int threads) {
    const bf_isa_impl& impl = q8_impl_of(isa);
    const int64_t Q = (a.k + 31) / 32, K32 = 32 * Q, NB = (a.n + 15) / 16, NG = a.n_groups, M = a.m;
    const bool lut = a.kernel == BF_KERNEL_LUT8;
    // INT8 without input_scale and with K a multiple of 32 quantises x itself (prepare_q8 sees xs == NULL): the
    // padded copy x' of a 4096 x 1536 input is 25 MB written and read twice. The large arrays (xs, xq, xqt, the
    // INT8 tiles) are left as they are (every element the kernels read is written by the preparation first;
    // xqt's padding rows past M are never read): zero-filling them cost as much as the copy. The small ones are
    // zeroed, although every kernel writes them before it reads them, so that no call can see its predecessor's.
    //
    // With a rotation (a.rot_block), each range of rows is first rotated into xr [M][K32] (zero past k), and the
    // preparation then reads xr as its x (k = K32: the same quartets; the zero columns add to no sum or maximum),
    // so INT8 quantises xr directly; the rotated copy costs one pass through cache-resident rows instead of a
    // separate call, and a fresh output tensor page-faulted in at every call.
    const bool rot = a.rot_block > 0;
    const bool direct = !lut && !a.input_scale && (a.k == K32 || rot);
    const double work = (double)a.n * (double)K32 * (double)M * (lut ? a.active_bits / 8.0 : 1.0);
    const int nt = worker_count(threads, NB, work);
    // The per-row preparation (x' copy, quantisation or tables) is split over the workers by rows of x when
    // there is enough of it (0.35 ms at M = 128, K = 4096 on one thread); each range gets its own view of
    // the scratch arrays (tstat, per-row reuse, one per worker).
    const int npt = (int)std::min<int64_t>(nt, (M * K32) >= (1 << 16) ? M : 1);
    // LUT8: per-group int32 sums (portable/AVX2 paths) per worker; INT8: the codes of at most a panel of
    // row-block pairs (AVX-512 and AVX2: 2P blocks of 512 Q bytes, no more than the worker's own blocks;
    // portable: one block, 512 Q), not zeroed: every tile byte is unpacked before it is read.
    size_t work_bytes;
    if (lut) {
        work_bytes = (size_t)8 * NG * 16 * sizeof(int32_t);
    } else {
        int64_t per = (NB + nt - 1) / nt;
        per = (per + 1) / 2 * 2;  // fan_out's range with align = 2
        const int64_t blocks = std::min<int64_t>(2 * bf_int8_panel_pairs(Q), per);
        work_bytes = (size_t)(blocks * 512 * Q);
    }
    ScratchLayout L;
    const size_t o_xs = L.add(direct ? 0 : sizeof(float) * M * K32);
    const size_t o_xr = L.add(rot ? sizeof(float) * M * K32 : 0);
    const size_t o_xq = L.add(lut ? 0 : (size_t)(M * K32));
    const size_t o_xqt = L.add(lut ? 0 : (size_t)((M + 5) / 6 * 6 * K32));
    const size_t o_int8 = L.add(lut ? 0 : nt * ((work_bytes + 63) & ~(size_t)63));
    const size_t zeroed = L.total;  // everything from here on starts at zero
    const size_t o_xsum = L.add(sizeof(float) * M * NG);
    const size_t o_tpar = L.add(lut ? sizeof(float) * M * NG * 2 : 0);
    const size_t o_tstat = L.add(lut ? sizeof(float) * 2 * K32 / 4 : 0);
    const size_t o_tstats = L.add(lut && npt > 1 ? sizeof(float) * npt * 2 * K32 / 4 : 0);
    const size_t o_sx = L.add(lut ? 0 : sizeof(float) * M);
    const size_t o_tab8 = L.add(lut ? (size_t)(M * 128 * Q) : 0);
    const size_t o_xqsum = L.add(lut ? 0 : sizeof(float) * M * NG);
    const size_t o_lut = L.add(lut ? nt * ((work_bytes + 63) & ~(size_t)63) : 0);
    // The one allocation, on the calling thread, so a bad_alloc surfaces as a Python MemoryError.
    static thread_local ScratchArena arena;
    uint8_t* base = arena.get(L.total);
    memset(base + zeroed, 0, L.total - zeroed);
    auto at = [&](size_t off, size_t bytes) { return bytes ? base + off : nullptr; };
    const size_t stride = (work_bytes + 63) & ~(size_t)63;
    bf_q8_scratch s{(float*)at(o_xs, direct ? 0 : 1), (float*)(base + o_xsum), (uint8_t*)at(o_tab8, lut),
                    (float*)at(o_tpar, lut), (float*)at(o_tstat, lut), (int8_t*)at(o_xq, !lut),
                    (int8_t*)at(o_xqt, !lut), (float*)at(o_sx, !lut), (float*)at(o_xqsum, !lut), 0};
    float* tstats = (float*)(base + o_tstats);
    float* xr = (float*)at(o_xr, rot);
    auto prep = [&](int t, int64_t m0, int64_t m1) {
        bf_linear_args ar = a;
        ar.x = a.x + m0 * a.k;
        ar.m = m1 - m0;
        if (rot) {
            hadamard_copy(ar.x, a.k, xr + m0 * K32, K32, ar.m, a.k, a.rot_block, a.rot_signs, isa);
            ar.x = xr + m0 * K32;
            ar.k = K32;
        }
        bf_q8_scratch sr = s;
        sr.xs = s.xs ? s.xs + m0 * K32 : nullptr;
        sr.xsum = s.xsum + m0 * NG;
        if (lut) {
            sr.tab8 = s.tab8 + m0 * 128 * Q;
            sr.tpar = s.tpar + m0 * NG * 2;
            if (npt > 1) sr.tstat = tstats + (size_t)t * 2 * K32 / 4;
        } else {
            sr.xq = s.xq + m0 * K32;
            sr.xqt_m0 = m0;
            sr.sx = s.sx + m0;
            sr.xqsum = s.xqsum + m0 * NG;
        }
        impl.prepare_q8(&ar, &sr);
    };
    if (npt <= 1)
        prep(0, 0, M);
    else
        fan_out(M, npt, 1, prep);
    uint8_t* work_base = base + (lut ? o_lut : o_int8);
    fan_out(NB, nt, lut ? 1 : 2, [&](int t, int64_t b0, int64_t b1) {
        impl.rows_q8(&a, &s, b0, b1, work_base + (size_t)t * stride);
    });
    arena.trim();
}

void linear(const bf_linear_args& a, int isa, int threads) {
    if (a.kernel == BF_KERNEL_LUT8 || a.kernel == BF_KERNEL_INT8) return linear_q8(a, isa, threads);
    const bf_isa_impl& impl = impl_of(isa);
    const int64_t KB = (a.k + 7) / 8, K8 = 8 * KB, K32 = 32 * ((KB + 3) / 4), NB = (a.n + 15) / 16;
    const bool lut = a.kernel == BF_KERNEL_LUT32;
    std::vector<float> xs(a.m * K32), xsum(a.m * a.n_groups), tables(lut ? a.m * (K32 / 4) * 16 : 0);
    std::vector<float> xr(a.rot_block ? a.m * a.k : 0);  // the exact kernels' rotated x, [m][k]
    bf_linear_args ar = a;
    if (a.rot_block) {
        const int nr = worker_count(threads, a.m, (double)a.m * (double)a.k * 8.0);
        fan_out(a.m, nr, 1, [&](int, int64_t m0, int64_t m1) {
            hadamard_copy(a.x + m0 * a.k, a.k, xr.data() + m0 * a.k, a.k, m1 - m0, a.k, a.rot_block, a.rot_signs,
                          isa);
        });
        ar.x = xr.data();
    }
    impl.prepare(&ar, xs.data(), xsum.data(), lut ? tables.data() : nullptr);
    const int nt = worker_count(threads, NB, (double)a.n * (double)K8 * (double)(lut ? a.active_bits : a.m));
    std::vector<std::vector<float>> tiles(nt, std::vector<float>(lut ? 0 : (size_t)K8 * 16));
    fan_out(NB, nt, 1, [&](int t, int64_t b0, int64_t b1) {
        impl.rows(&a, xs.data(), xsum.data(), tables.data(), b0, b1, tiles[t].data());
    });
}


}  // namespace bf
