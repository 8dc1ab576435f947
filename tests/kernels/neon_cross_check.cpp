// Cross-built for AArch64 and run under qemu-user by tests/kernels/test_neon_cross.py: every kernel of the
// NEON path (fp32 LUT32 and DEQUANT, LUT8, INT8 with sdot) against the portable scalar path on random weights,
// odd shapes, 1..8-bit codes at their lowest and full precision, grouped and per-channel, 1 and 2 threads, plain,
// with an input rotation and with an AWQ input scale. Prints one line per mismatch and exits 1 on any; "neon cross check ok: N" else.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/core/dispatch.h"

int main() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    int checked = 0, bad = 0;
    const int ms[] = {1, 3, 5, 9, 14};  // LUT8 row tiles of 4 and their tails; INT8 likewise
    struct Shape { int n, k, group; };  // group 0: per channel
    const Shape shapes[] = {{37, 203, 32}, {21, 1000, 64}, {19, 520, 128}, {23, 4100, 0}, {16, 64, 16}};
    if (!bf::isa_supported(BF_ISA_NEON)) {
        std::printf("the neon path does not run here\n");
        return 1;
    }
    for (const Shape& sh : shapes)
        for (int bits = 1; bits <= 8; ++bits) {
            const int64_t NB = (sh.n + 15) / 16, KB = (sh.k + 7) / 8, Q = (KB + 3) / 4;
            const int64_t gkb = sh.group ? sh.group / 8 : KB, NG = (KB + gkb - 1) / gkb;
            std::vector<uint8_t> planes(NB * bits * Q * 64);
            for (auto& b : planes) b = (uint8_t)(rng() & 0xFF);
            std::vector<float> scales(NB * NG * 16), szs(NB * NG * 16), bias(sh.n);
            for (auto& v : scales) v = 0.01f + 0.1f * std::fabs(uni(rng));
            for (size_t i = 0; i < szs.size(); ++i) szs[i] = scales[i] * (float)(rng() % (1u << bits));
            for (auto& v : bias) v = uni(rng);
            std::vector<float> signs(sh.k), in_scale(sh.k);
            for (auto& v : signs) v = (rng() & 1) ? 1.0f : -1.0f;
            for (auto& v : in_scale) v = 0.25f + 2.0f * std::fabs(uni(rng));
            for (int m : ms) {
                std::vector<float> x(m * sh.k);
                for (auto& v : x) v = uni(rng);
                for (int kernel = 0; kernel < 4; ++kernel) {
                    if (kernel == BF_KERNEL_LUT8 && !(NG == 1 || gkb % 4 == 0)) continue;
                    const int actives[2] = {1, bits};  // the lowest and the full precision
                    for (int ai = 0; ai < (bits > 1 ? 2 : 1); ++ai) {
                        const int active = actives[ai];
                        for (int variant = 0; variant < 3; ++variant) {  // plain, rotated (block 32), AWQ input scale
                            if (variant && (kernel == BF_KERNEL_LUT32 || kernel == BF_KERNEL_DEQUANT) && m > 3) continue;
                            const int rot = variant == 1 ? 32 : 0;
                            bf_linear_args a{};
                            a.x = x.data(); a.m = m; a.k = sh.k; a.n = sh.n;
                            a.planes = planes.data(); a.bits = bits; a.active_bits = active;
                            a.scales = scales.data(); a.szs = szs.data(); a.n_groups = NG; a.group_kb = gkb;
                            a.bias = bias.data(); a.kernel = kernel; a.rot_block = rot;
                            a.rot_signs = rot ? signs.data() : nullptr;
                            a.input_scale = variant == 2 ? in_scale.data() : nullptr;
                            std::vector<float> y0(m * sh.n), y1(m * sh.n);
                            a.y = y0.data();
                            bf::linear(a, BF_ISA_SCALAR, 1);
                            for (int threads : {1, 2}) {
                                a.y = y1.data();
                                bf::linear(a, BF_ISA_NEON, threads);
                                for (int r = 0; r < m; ++r) {
                                    float mag = 0.0f;
                                    for (int c = 0; c < sh.n; ++c) mag = std::fmax(mag, std::fabs(y0[r * sh.n + c]));
                                    for (int c = 0; c < sh.n; ++c) {
                                        const float d = std::fabs(y1[r * sh.n + c] - y0[r * sh.n + c]);
                                        if (!(d <= 1e-4f * mag + 1e-5f)) {
                                            if (bad < 20)
                                                std::printf("mismatch kernel %d n %d k %d g %d bits %d b' %d m %d variant %d "
                                                            "threads %d at (%d, %d): %g vs %g\n", kernel, sh.n, sh.k,
                                                            sh.group, bits, active, m, variant, threads, r, c,
                                                            y1[r * sh.n + c], y0[r * sh.n + c]);
                                            ++bad;
                                        }
                                    }
                                }
                                ++checked;
                            }
                        }
                    }
                }
            }
        }
    if (bad) {
        std::printf("neon cross check: %d mismatching outputs in %d calls\n", bad, checked);
        return 1;
    }
    std::printf("neon cross check ok: %d calls\n", checked);
    return 0;
}
