// The worker threads behind bf::run_parallel (parallel.h): torch's OpenMP team when it is loaded, else a
// persistent pool of our own, else threads started for one call.
#include "parallel.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bf {
namespace {

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
}  // namespace

void run_parallel(int nt, const std::function<void(int)>& job) {
    if (nt <= 1) return job(0);
    const Gomp& g = Gomp::get();
    if (g.parallel) {
        GompJob j{&job, nt, &g};
        g.parallel(gomp_body, &j, (unsigned)nt, 0);
        return;
    }
    if (Pool::get().run(nt, job)) return;
    std::vector<std::thread> pool;
    pool.reserve(nt);
    for (int t = 1; t < nt; ++t) pool.emplace_back(job, t);
    job(0);
    for (auto& th : pool) th.join();
}

}  // namespace bf
