// cpuid -> which ISA paths run here; one linear call fanned out over worker threads by row blocks.
// Compiled for baseline x86-64 (or whatever the target's default is): no ISA-specific code here.
#include "dispatch.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

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
#endif
    return f;
}

bool isa_supported(int isa) {
    const CpuFeatures f = cpu_features();
    switch (isa) {
        case BF_ISA_SCALAR: return true;
#if defined(BF_X86)
        case BF_ISA_AVX2: return f.avx2;
        case BF_ISA_AVX512: return f.avx2 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl;
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
    return bf_impl_scalar;
}

const char* isa_name(int isa) {
    static const char* names[BF_ISA_COUNT] = {"scalar", "avx2", "avx512"};
    return (isa >= 0 && isa < BF_ISA_COUNT) ? names[isa] : "unknown";
}

void linear(const bf_linear_args& a, int isa, int threads) {
    const bf_isa_impl& impl = impl_of(isa);
    const int64_t KB = (a.k + 7) / 8, K8 = 8 * KB, NB = (a.n + 15) / 16;
    const bool lut = a.kernel == BF_KERNEL_LUT;
    std::vector<float> xs(a.m * K8), xsum(a.m * a.n_groups), tables(lut ? a.m * 2 * KB * 16 : 0);
    impl.prepare(&a, xs.data(), xsum.data(), lut ? tables.data() : nullptr);

    // Small layers stay on the calling thread: spawning costs ~20 us, more than their whole product.
    const double work = (double)a.n * (double)K8 * (double)(lut ? a.active_bits : a.m);
    int nt = (int)std::min<int64_t>(std::max(threads, 1), NB);
    if (work < (1 << 21)) nt = 1;
    // Every allocation happens here, on the calling thread, so a bad_alloc surfaces as a Python MemoryError.
    std::vector<std::vector<float>> tiles(nt, std::vector<float>(lut ? 0 : (size_t)K8 * 16));
    auto worker = [&](int t, int64_t b0, int64_t b1) {
        impl.rows(&a, xs.data(), xsum.data(), tables.data(), b0, b1, tiles[t].data());
    };
    std::vector<std::thread> pool;
    pool.reserve(nt);
    const int64_t per = (NB + nt - 1) / nt;
    for (int t = 1; t < nt; ++t) {
        const int64_t b0 = t * per, b1 = std::min(NB, b0 + per);
        if (b0 < b1) pool.emplace_back(worker, t, b0, b1);
    }
    worker(0, 0, std::min(NB, per));
    for (auto& th : pool) th.join();
}

}  // namespace bf
