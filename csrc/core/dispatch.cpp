// cpuid -> which ISA paths run here; one linear call fanned out over worker threads by row blocks.
// Compiled for baseline x86-64 (or whatever the target's default is): no ISA-specific code here.
#include "dispatch.h"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
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

// The integer kernels of the AVX-512 path need VNNI and VBMI; without them it runs AVX2's.
static const bf_isa_impl& q8_impl_of(int isa) {
    const bf_isa_impl& impl = impl_of(isa);
#if defined(BF_X86)
    if (isa == BF_ISA_AVX512) {
        const CpuFeatures f = cpu_features();
        if (!(f.avx512vnni && f.avx512vbmi)) return bf_impl_avx2;
    }
#endif
    return impl;
}

// Persistent workers: starting a std::thread costs ~20 us, a fifth of a 4096x4096 GEMV. One call at a time
// uses the pool (the others, from other Python threads, start their own threads as before); it is never
// destroyed (threads may still wait on it at exit) and not used in a forked child (its threads are gone).
class Pool {
  public:
    static Pool& get() {
        static Pool* pool = new Pool();
        return *pool;
    }
    // Runs job(t) for t in [0, nt), t = 0 on the calling thread. Returns false (nothing run) if busy.
    bool run(int nt, const std::function<void(int)>& job) {
        if (getpid() != pid_) return false;
        std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
        if (!busy.owns_lock()) return false;
        {
            std::lock_guard<std::mutex> lk(m_);
            while ((int)workers_.size() < nt - 1) {
                const int id = (int)workers_.size() + 1;
                workers_.emplace_back([this, id] { loop(id); });
            }
            job_ = &job;
            n_ = nt;
            pending_ = nt - 1;
            ++gen_;
        }
        wake_.notify_all();
        job(0);
        std::unique_lock<std::mutex> lk(m_);
        done_.wait(lk, [this] { return pending_ == 0; });
        job_ = nullptr;
        return true;
    }

  private:
    Pool() : pid_(getpid()) {}
    void loop(int id) {
        uint64_t seen = 0;
        for (;;) {
            const std::function<void(int)>* job;
            {
                std::unique_lock<std::mutex> lk(m_);
                wake_.wait(lk, [&] { return gen_ != seen; });
                seen = gen_;
                if (id >= n_) continue;
                job = job_;
            }
            (*job)(id);
            std::lock_guard<std::mutex> lk(m_);
            if (--pending_ == 0) done_.notify_one();
        }
    }
    const pid_t pid_;
    std::mutex busy_, m_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(int)>* job_ = nullptr;
    int n_ = 0, pending_ = 0;
    uint64_t gen_ = 0;
};

// Runs body(t, nb0, nb1) over row blocks [0, NB) on nt workers (the calling thread is worker 0);
// `align` keeps every range but the last a multiple of it (the INT8 kernel takes blocks in pairs).
template <class F>
static void fan_out(int64_t NB, int nt, int64_t align, F body) {
    int64_t per = (NB + nt - 1) / nt;
    per = (per + align - 1) / align * align;
    auto range = [&](int t) {
        const int64_t b0 = t * per, b1 = std::min(NB, b0 + per);
        if (b0 < b1) body(t, b0, b1);
    };
    if (nt == 1) return range(0);
    const std::function<void(int)> job = range;
    if (Pool::get().run(nt, job)) return;
    std::vector<std::thread> pool;
    pool.reserve(nt);
    for (int t = 1; t < nt; ++t) pool.emplace_back(range, t);
    range(0);
    for (auto& th : pool) th.join();
}

static int worker_count(int threads, int64_t NB, double work) {
    int nt = (int)std::min<int64_t>(std::max(threads, 1), NB);
    // Small layers stay on the calling thread: spawning costs ~20 us, more than their whole product.
    return work < (1 << 21) ? 1 : nt;
}

static void linear_q8(const bf_linear_args& a, int isa, int threads) {
    const bf_isa_impl& impl = q8_impl_of(isa);
    const int64_t Q = (a.k + 31) / 32, K32 = 32 * Q, NB = (a.n + 15) / 16, NG = a.n_groups, M = a.m;
    const bool lut = a.kernel == BF_KERNEL_LUT8;
    // Every allocation happens here, on the calling thread, so a bad_alloc surfaces as a Python MemoryError.
    std::vector<float> xs(M * K32), xsum(M * NG), tpar(lut ? M * NG * 2 : 0), tstat(lut ? 2 * K32 / 4 : 0);
    std::vector<float> sx(lut ? 0 : M);
    std::vector<uint8_t> tab8(lut ? M * 128 * Q : 0);
    std::vector<int8_t> xq(lut ? 0 : M * K32), xqt(lut ? 0 : M * K32);
    std::vector<int32_t> xqsum(lut ? 0 : M * NG);
    bf_q8_scratch s{xs.data(), xsum.data(), tab8.data(), tpar.data(), tstat.data(), xq.data(), xqt.data(), sx.data(),
                    xqsum.data()};
    impl.prepare_q8(&a, &s);
    const double work = (double)a.n * (double)K32 * (double)M * (lut ? a.active_bits / 8.0 : 1.0);
    const int nt = worker_count(threads, NB, work);
    // LUT8: per-group int32 sums (portable/AVX2 paths); INT8: two blocks' codes, then fp32 [M][32] accumulators.
    const size_t per_worker = lut ? (size_t)8 * NG * 16 * sizeof(int32_t) : (size_t)1024 * Q + (size_t)M * 32 * 4;
    std::vector<std::vector<uint64_t>> work_buf(nt, std::vector<uint64_t>((per_worker + 7) / 8));
    fan_out(NB, nt, lut ? 1 : 2, [&](int t, int64_t b0, int64_t b1) {
        impl.rows_q8(&a, &s, b0, b1, work_buf[t].data());
    });
}

void linear(const bf_linear_args& a, int isa, int threads) {
    if (a.kernel == BF_KERNEL_LUT8 || a.kernel == BF_KERNEL_INT8) return linear_q8(a, isa, threads);
    const bf_isa_impl& impl = impl_of(isa);
    const int64_t KB = (a.k + 7) / 8, K8 = 8 * KB, K32 = 32 * ((KB + 3) / 4), NB = (a.n + 15) / 16;
    const bool lut = a.kernel == BF_KERNEL_LUT32;
    std::vector<float> xs(a.m * K32), xsum(a.m * a.n_groups), tables(lut ? a.m * (K32 / 4) * 16 : 0);
    impl.prepare(&a, xs.data(), xsum.data(), lut ? tables.data() : nullptr);
    const int nt = worker_count(threads, NB, (double)a.n * (double)K8 * (double)(lut ? a.active_bits : a.m));
    std::vector<std::vector<float>> tiles(nt, std::vector<float>(lut ? 0 : (size_t)K8 * 16));
    fan_out(NB, nt, 1, [&](int t, int64_t b0, int64_t b1) {
        impl.rows(&a, xs.data(), xsum.data(), tables.data(), b0, b1, tiles[t].data());
    });
}

}  // namespace bf
