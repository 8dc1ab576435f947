// cpuid -> which ISA paths run here; one linear call fanned out over worker threads by row blocks.
// Compiled for baseline x86-64 (or whatever the target's default is): no ISA-specific code here.
#include "dispatch.h"

#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <atomic>
#include <chrono>
#include <memory>
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
    f.gfni = __builtin_cpu_supports("gfni");
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

// Persistent workers: starting a std::thread costs ~20 us, a fifth of a 4096x4096 GEMV. One call at a time
// uses the pool (the others, from other Python threads, start their own threads as before); it is never
// destroyed (threads may still wait on it at exit) and not used in a forked child (its threads are gone).
// Hand-off: each worker has its own slot (job pointer + generation); a worker spins on its slot for up to
// kSpinUs after its last job before it sleeps on a condition variable, and the caller spins likewise on the
// count of unfinished workers. Waking a sleeping thread through the kernel took 10-30 us here, which made
// two threads slower than one on MiniLM-sized layers (~50 us calls); a job's slot is written only by the
// caller and only while that worker is idle, so a worker never sees another call's job.
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
                slots_.emplace_back(new Slot());
                Slot* slot = slots_.back().get();
                const int id = (int)workers_.size() + 1;
                workers_.emplace_back([this, id, slot] { loop(id, slot); });
            }
        }
        pending_.store(nt - 1);
        ++gen_;
        for (int t = 1; t < nt; ++t) {
            Slot& sl = *slots_[t - 1];
            sl.job = &job;
            sl.go.store(gen_);
        }
        if (sleepers_.load() > 0) {
            { std::lock_guard<std::mutex> lk(m_); }
            wake_.notify_all();
        }
        job(0);
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinUs);
        for (int i = 0; pending_.load(std::memory_order_acquire) != 0; ++i) {
            if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) {
                std::unique_lock<std::mutex> lk(m_);
                done_.wait(lk, [this] { return pending_.load() == 0; });
                break;
            }
            cpu_relax();
        }
        return true;
    }

  private:
    static constexpr int kSpinUs = 20;
    struct alignas(64) Slot {
        std::atomic<uint64_t> go{0};
        const std::function<void(int)>* job = nullptr;
    };
    static void cpu_relax() {
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
        __builtin_ia32_pause();
#endif
    }
    Pool() : pid_(getpid()) {}
    void loop(int id, Slot* slot) {
        uint64_t seen = 0;
        for (;;) {
            uint64_t g = slot->go.load(std::memory_order_acquire);
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinUs);
            for (int i = 0; g == seen; ++i) {
                if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) {
                    std::unique_lock<std::mutex> lk(m_);
                    sleepers_.fetch_add(1);
                    wake_.wait(lk, [&] { return (g = slot->go.load()) != seen; });
                    sleepers_.fetch_sub(1);
                    break;
                }
                cpu_relax();
                g = slot->go.load(std::memory_order_acquire);
            }
            seen = g;
            (*slot->job)(id);
            if (pending_.fetch_sub(1) == 1) {
                { std::lock_guard<std::mutex> lk(m_); }
                done_.notify_one();
            }
        }
    }
    const pid_t pid_;
    std::mutex busy_, m_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    std::vector<std::unique_ptr<Slot>> slots_;
    std::atomic<int> pending_{0}, sleepers_{0};
    uint64_t gen_ = 0;  // written under busy_
};

// The OpenMP runtime torch already loaded (libgomp.so.1 in torch's wheel), if any: a call run on its team uses
// the very threads torch's own ops just ran on. On two cores our pool's second thread and torch's OpenMP
// worker (which spins after each torch op) otherwise fought over one core, and MiniLM-sized calls (~50 us)
// took longer on two threads than on one. Looked up with RTLD_NOLOAD, never linked or loaded by us: without
// torch in the process (the sanitizer test's child), or with $BITSFUSION_OWN_POOL=1, the pool above runs.
struct Gomp {
    void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;
    int (*thread_num)() = nullptr;
    int (*num_threads)() = nullptr;
    static const Gomp& get() {
        static const Gomp g = [] {
            Gomp r;
            const char* own = getenv("BITSFUSION_OWN_POOL");
            if (own && own[0] && own[0] != '0') return r;
            void* h = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD);
            if (!h) return r;
            r.parallel = (void (*)(void (*)(void*), void*, unsigned, unsigned))dlsym(h, "GOMP_parallel");
            r.thread_num = (int (*)())dlsym(h, "omp_get_thread_num");
            r.num_threads = (int (*)())dlsym(h, "omp_get_num_threads");
            if (!r.parallel || !r.thread_num || !r.num_threads) r = Gomp();
            return r;
        }();
        return g;
    }
};

struct GompJob {
    const std::function<void(int)>* job;
    int nt;
    const Gomp* g;
};
static void gomp_body(void* p) {
    const GompJob& j = *(const GompJob*)p;
    // The team may be smaller than asked (nested region, thread limit): each member takes every T-th part.
    const int t = j.g->thread_num(), T = std::max(1, j.g->num_threads());
    for (int id = t; id < j.nt; id += T) (*j.job)(id);
}

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
    const Gomp& g = Gomp::get();
    if (g.parallel) {
        GompJob j{&job, nt, &g};
        g.parallel(gomp_body, &j, (unsigned)nt, 0);
        return;
    }
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
    const bool direct = !lut && !a.input_scale && a.k == K32;
    const double work = (double)a.n * (double)K32 * (double)M * (lut ? a.active_bits / 8.0 : 1.0);
    const int nt = worker_count(threads, NB, work);
    // The per-row preparation (x' copy, quantisation or tables) is split over the workers by rows of x when
    // there is enough of it (0.35 ms at M = 128, K = 4096 on one thread); each range gets its own view of
    // the scratch arrays (tstat, per-row reuse, one per worker).
    const int npt = (int)std::min<int64_t>(nt, (M * K32) >= (1 << 16) ? M : 1);
    // LUT8: per-group int32 sums (portable/AVX2 paths) per worker; INT8: the codes of at most a panel of
    // row-block pairs (AVX-512: 2P blocks of 512 Q bytes, no more than the worker's own blocks; AVX2: one block
    // as int16, 1024 Q bytes; portable: 512 Q), not zeroed: every tile byte is unpacked before it is read.
    size_t work_bytes;
    if (lut) {
        work_bytes = (size_t)8 * NG * 16 * sizeof(int32_t);
    } else {
        int64_t per = (NB + nt - 1) / nt;
        per = (per + 1) / 2 * 2;  // fan_out's range with align = 2
        const int64_t blocks = std::min<int64_t>(2 * bf_int8_panel_pairs(Q), per);
        work_bytes = (size_t)std::max<int64_t>(1024 * Q, blocks * 512 * Q);
    }
    ScratchLayout L;
    const size_t o_xs = L.add(direct ? 0 : sizeof(float) * M * K32);
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
    if (npt <= 1) {
        impl.prepare_q8(&a, &s);
    } else {
        float* tstats = (float*)(base + o_tstats);
        fan_out(M, npt, 1, [&](int t, int64_t m0, int64_t m1) {
            bf_linear_args ar = a;
            ar.x = a.x + m0 * a.k;
            ar.m = m1 - m0;
            bf_q8_scratch sr = s;
            sr.xs = s.xs ? s.xs + m0 * K32 : nullptr;
            sr.xsum = s.xsum + m0 * NG;
            if (lut) {
                sr.tab8 = s.tab8 + m0 * 128 * Q;
                sr.tpar = s.tpar + m0 * NG * 2;
                sr.tstat = tstats + (size_t)t * 2 * K32 / 4;
            } else {
                sr.xq = s.xq + m0 * K32;
                sr.xqt_m0 = m0;
                sr.sx = s.sx + m0;
                sr.xqsum = s.xqsum + m0 * NG;
            }
            impl.prepare_q8(&ar, &sr);
        });
    }
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
    impl.prepare(&a, xs.data(), xsum.data(), lut ? tables.data() : nullptr);
    const int nt = worker_count(threads, NB, (double)a.n * (double)K8 * (double)(lut ? a.active_bits : a.m));
    std::vector<std::vector<float>> tiles(nt, std::vector<float>(lut ? 0 : (size_t)K8 * 16));
    fan_out(NB, nt, 1, [&](int t, int64_t b0, int64_t b1) {
        impl.rows(&a, xs.data(), xsum.data(), tables.data(), b0, b1, tiles[t].data());
    });
}

// ---- the randomised block Hadamard rotation of x (bitsfusion/quant/rotation.py) ----------------------------
// Each block of B consecutive floats of a row (the tail past the last whole block untouched) becomes
// H_B (s * v) / sqrt(B) (forward) or s * (H_B v) / sqrt(B) (inverse), in place: log2(B) butterfly stages. The
// AVX-512 path does the four stages inside a 16-float vector with lane permutes and masked subtracts, and the
// later ones between whole vectors; the portable path is plain loops (vectorised by the compiler where the
// stride allows, compiled for AVX2 by a target attribute). Rows are split over the workers.
namespace {

inline void butterfly(float* __restrict a, float* __restrict b, int64_t h) {
    for (int64_t j = 0; j < h; ++j) {
        const float p = a[j], q = b[j];
        a[j] = p + q;
        b[j] = p - q;
    }
}

#define BF_HADAMARD_PORTABLE                                                                                 \
    const int64_t nb = k / B;                                                                                \
    const float c = 1.0f / std::sqrt((float)B);                                                              \
    for (int64_t r = r0; r < r1; ++r) {                                                                      \
        for (int64_t blk = 0; blk < nb; ++blk) {                                                             \
            float* v = x + r * k + blk * B;                                                                  \
            const float* sg = s + blk * B;                                                                   \
            if (!inverse)                                                                                    \
                for (int64_t i = 0; i < B; ++i) v[i] *= sg[i];                                               \
            for (int64_t h = 1; h < B; h <<= 1)                                                              \
                for (int64_t i = 0; i < B; i += 2 * h) butterfly(v + i, v + i + h, h);                       \
            if (inverse)                                                                                     \
                for (int64_t i = 0; i < B; ++i) v[i] *= c * sg[i];                                           \
            else                                                                                             \
                for (int64_t i = 0; i < B; ++i) v[i] *= c;                                                   \
        }                                                                                                    \
    }

void hadamard_rows_portable(float* x, int64_t r0, int64_t r1, int64_t k, int64_t B, const float* s,
                            bool inverse) {
    BF_HADAMARD_PORTABLE
}
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) void hadamard_rows_avx2(float* x, int64_t r0, int64_t r1, int64_t k,
                                                            int64_t B, const float* s, bool inverse) {
    BF_HADAMARD_PORTABLE
}

// One 16-float vector through the stages h = 1, 2, 4, 8: v[j] += v[j^h] where bit h of j is 0, else
// v[j] = v[j^h] - v[j].
__attribute__((target("avx512f"))) inline __m512 wht16(__m512 v) {
    __m512 p = _mm512_permute_ps(v, 0xB1);  // h = 1: swap neighbours
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xAAAA, p, v);
    p = _mm512_permute_ps(v, 0x4E);  // h = 2: swap pairs
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xCCCC, p, v);
    p = _mm512_shuffle_f32x4(v, v, 0xB1);  // h = 4: swap 128-bit lanes
    v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xF0F0, p, v);
    p = _mm512_shuffle_f32x4(v, v, 0x4E);  // h = 8: swap 256-bit halves
    return _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xFF00, p, v);
}

// A block of V vectors (B = 16 V <= 256) held in registers from load to store.
template <int V>
__attribute__((target("avx512f"))) inline void wht_block_regs(float* v, const float* sg, __m512 c, bool inverse) {
    __m512 r[V];
    for (int i = 0; i < V; ++i) {
        __m512 t = _mm512_loadu_ps(v + 16 * i);
        if (!inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + 16 * i));
        r[i] = wht16(t);
    }
    for (int h = 1; h < V; h <<= 1)
        for (int i = 0; i < V; i += 2 * h)
            for (int j = i; j < i + h; ++j) {
                const __m512 p = r[j], q = r[j + h];
                r[j] = _mm512_add_ps(p, q);
                r[j + h] = _mm512_sub_ps(p, q);
            }
    for (int i = 0; i < V; ++i) {
        __m512 t = _mm512_mul_ps(r[i], c);
        if (inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + 16 * i));
        _mm512_storeu_ps(v + 16 * i, t);
    }
}

__attribute__((target("avx512f,avx2,fma"))) void hadamard_rows_avx512(float* x, int64_t r0, int64_t r1, int64_t k,
                                                                      int64_t B, const float* s, bool inverse) {
    if (B < 16) {
        BF_HADAMARD_PORTABLE
        return;
    }
    const int64_t nb = k / B;
    const __m512 c = _mm512_set1_ps(1.0f / std::sqrt((float)B));
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t blk = 0; blk < nb; ++blk) {
            float* v = x + r * k + blk * B;
            const float* sg = s + blk * B;
            switch (B) {
                case 16: wht_block_regs<1>(v, sg, c, inverse); continue;
                case 32: wht_block_regs<2>(v, sg, c, inverse); continue;
                case 64: wht_block_regs<4>(v, sg, c, inverse); continue;
                case 128: wht_block_regs<8>(v, sg, c, inverse); continue;
                case 256: wht_block_regs<16>(v, sg, c, inverse); continue;
                default: break;
            }
            for (int64_t i = 0; i < B; i += 16) {
                __m512 t = _mm512_loadu_ps(v + i);
                if (!inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + i));
                _mm512_storeu_ps(v + i, wht16(t));
            }
            for (int64_t h = 16; h < B; h <<= 1)
                for (int64_t i = 0; i < B; i += 2 * h)
                    for (int64_t j = i; j < i + h; j += 16) {
                        const __m512 p = _mm512_loadu_ps(v + j), q = _mm512_loadu_ps(v + j + h);
                        _mm512_storeu_ps(v + j, _mm512_add_ps(p, q));
                        _mm512_storeu_ps(v + j + h, _mm512_sub_ps(p, q));
                    }
            for (int64_t i = 0; i < B; i += 16) {
                __m512 t = _mm512_mul_ps(_mm512_loadu_ps(v + i), c);
                if (inverse) t = _mm512_mul_ps(t, _mm512_loadu_ps(sg + i));
                _mm512_storeu_ps(v + i, t);
            }
        }
    }
}
#endif
#undef BF_HADAMARD_PORTABLE

}  // namespace

void hadamard(float* x, int64_t m, int64_t k, int64_t block, const float* signs, bool inverse, int isa,
              int threads) {
    if (!isa_supported(isa)) throw std::invalid_argument("ISA path " + std::to_string(isa) + " does not run here");
    if (block < 2 || block > 4096 || (block & (block - 1)) || k < 1 || m < 0)
        throw std::invalid_argument("hadamard: block must be a power of two in 2..4096, k >= 1, m >= 0");
    auto rows = hadamard_rows_portable;
#if defined(BF_X86) && (defined(__GNUC__) || defined(__clang__))
    if (isa == BF_ISA_AVX512) rows = hadamard_rows_avx512;
    else if (isa == BF_ISA_AVX2) rows = hadamard_rows_avx2;
#endif
    if (m == 0 || k < block) return;
    const double work = (double)m * (double)k * 8.0;
    const int nt = worker_count(threads, m, work);
    fan_out(m, nt, 1, [&](int, int64_t r0, int64_t r1) { rows(x, r0, r1, k, block, signs, inverse); });
}

}  // namespace bf
