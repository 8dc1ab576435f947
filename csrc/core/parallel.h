// Worker threads for the kernels: one call's row blocks fanned out over `nt` workers, the calling thread
// being worker 0. Used by the linear dispatcher (dispatch.cpp) and the Hadamard transform (hadamard.cpp).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>

namespace bf {

// Runs job(t) for t in [0, nt), t = 0 on the calling thread, and returns when all are done: on the OpenMP team
// torch already loaded when there is one, else on our persistent pool, else (pool busy with another Python
// thread's call, or a forked child) on threads started for this call.
void run_parallel(int nt, const std::function<void(int)>& job);

// Runs body(t, nb0, nb1) over row blocks [0, NB) on nt workers (the calling thread is worker 0);
// `align` keeps every range but the last a multiple of it (the INT8 kernel takes blocks in pairs).
template <class F>
inline void fan_out(int64_t NB, int nt, int64_t align, F body) {
    int64_t per = (NB + nt - 1) / nt;
    per = (per + align - 1) / align * align;
    auto range = [&](int t) {
        const int64_t b0 = t * per, b1 = std::min(NB, b0 + per);
        if (b0 < b1) body(t, b0, b1);
    };
    if (nt == 1) return range(0);
    run_parallel(nt, range);
}

// Workers worth using for `work` (about one unit per multiply-add) over NB row blocks.
inline int worker_count(int threads, int64_t NB, double work) {
    const int nt = (int)std::min<int64_t>(std::max(threads, 1), NB);
    // Small layers stay on the calling thread: spawning costs ~20 us, more than their whole product.
    return work < (1 << 21) ? 1 : nt;
}

}  // namespace bf
