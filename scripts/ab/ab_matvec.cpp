// A/B of two builds of libqlora on the forward matvec (M = 1 unless given): both libraries
// are dlopen'ed side by side, each gets its own context and its own copies of
// the same random 4-bit W, and their calls alternate (the order flips every
// round). Each timed call follows an untimed one of the same build, which
// wakes the build's worker threads, asleep while the other build ran: without
// it every timed call paid a wake-up (about 50 us on this VM, a third of a
// 4096 x 4096 matvec). Each build's calls take its copies in turn, so a copy
// is read again only after 2 x COPIES other reads. Prints each build's median
// GB/s of weight bytes and the median over rounds of the per-round speed ratio
// B/A, which is robust to the machine's speed drifting during the run (not to
// all of it: repeat a run, as two runs of A against itself gave 0.97-1.00). A change to a kernel is
// measured by building the previous commit next to the current one:
//
//   git worktree add /tmp/prev HEAD~1
//   (cd /tmp/prev && cmake --preset linux-x64-cpu -B build -DQLORA_TESTS=OFF -DQLORA_BENCHMARKS=OFF &&
//    cmake --build build --target qlora -j2)
//   g++ -O2 -Inative/include -o /tmp/ab scripts/ab/ab_matvec.cpp -ldl
//   /tmp/ab /tmp/prev/build/native/libqlora.so artifacts/native/linux-x64-cpu/native/libqlora.so
//           N K DQ INT8_X THREADS SECONDS [COPIES [M [X_DTYPE [OP]]]]
//
// X_DTYPE f32 (default) or bf16; OP fwd (default, y = x W^T) or bwd (y = x W,
// x [M][N]). With M > 8 the GEMM runs, and GFLOP/s are printed too. The
// environment variable AB_ISA caps both builds' ISA (a qlora_cpu_isa value,
// e.g. AB_ISA=3 for avx512_bf16 on an AMX CPU).
//
// COPIES (default 1) copies of W per build: 1 keeps a small W in cache, enough
// copies to exceed the L3 measure the stream from DRAM. With COPIES = 1 the
// two builds' outputs are compared too (max |yA - yB|).
#include "qlora.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {
using clk = std::chrono::steady_clock;

struct Lib {
    void * h = nullptr;
    template <class F>
    F sym(const char * name) const {
        void * p = dlsym(h, name);
        if (!p) {
            std::fprintf(stderr, "%s\n", dlerror());
            std::exit(2);
        }
        return reinterpret_cast<F>(p);
    }
};
#define SYM(lib, name) (lib).sym<decltype(&::name)>(#name)

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
} // namespace

int main(int argc, char ** argv) {
    if (argc < 9) {
        std::fprintf(stderr, "usage: %s LIB_A LIB_B N K DQ(0|1) INT8_X(0|1) THREADS SECONDS [COPIES [M [f32|bf16 [fwd|bwd]]]]\n",
                     argv[0]);
        return 2;
    }
    const int64_t N = std::atoll(argv[3]), K = std::atoll(argv[4]);
    const int dq = std::atoi(argv[5]), int8 = std::atoi(argv[6]), threads = std::atoi(argv[7]);
    const double secs = std::atof(argv[8]);
    const int copies = argc > 9 ? std::atoi(argv[9]) : 1;
    const int64_t M = argc > 10 ? std::atoll(argv[10]) : 1;
    const bool bf16 = argc > 11 && std::string(argv[11]) == "bf16";
    const bool bwd = argc > 12 && std::string(argv[12]) == "bwd";
    const int64_t XC = bwd ? N : K, YC = bwd ? K : N; // x and y columns
    if (N <= 0 || K <= 0 || K % 64 != 0 || copies <= 0 || threads <= 0 || M <= 0) {
        std::fprintf(stderr, "N, K (a multiple of 64), THREADS, COPIES and M must be positive\n");
        return 2;
    }
    Lib lib[2];
    for (int l = 0; l < 2; ++l)
        if (!(lib[l].h = dlopen(argv[1 + l], RTLD_NOW | RTLD_LOCAL))) {
            std::fprintf(stderr, "%s\n", dlerror());
            return 2;
        }
    std::mt19937 rng(1);
    const int64_t numel = N * K, nb = numel / 64, nnb = (nb + 255) / 256;
    std::vector<std::vector<uint8_t>> packed(static_cast<size_t>(copies)), qabsmax(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c) {
        packed[static_cast<size_t>(c)].resize(static_cast<size_t>(numel / 2));
        qabsmax[static_cast<size_t>(c)].resize(static_cast<size_t>(nb));
        for (auto & b : packed[static_cast<size_t>(c)]) b = static_cast<uint8_t>(rng());
        for (auto & b : qabsmax[static_cast<size_t>(c)]) b = static_cast<uint8_t>(rng());
    }
    std::vector<float> nested(static_cast<size_t>(nnb)), absmax(static_cast<size_t>(nb)), code(16), map(256);
    std::vector<float> x(static_cast<size_t>(M * XC)), y(static_cast<size_t>(M * YC));
    std::vector<uint16_t> xh(x.size());
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    std::normal_distribution<float> g(0.0f, 1.0f);
    for (auto & a : nested) a = 0.01f * u(rng);
    for (auto & a : absmax) a = 0.02f * u(rng);
    for (auto & v : x) v = g(rng);
    for (size_t i = 0; i < x.size(); ++i) { // bf16 x: x rounded to bf16 (truncated)
        uint32_t u32;
        std::memcpy(&u32, &x[i], 4);
        xh[i] = static_cast<uint16_t>(u32 >> 16);
    }
    qlora_context_t ctx[2];
    std::vector<qlora_q4_tensor_t> w[2];
    for (int l = 0; l < 2; ++l) {
        SYM(lib[l], qlora_q4_code_table)(QLORA_QUANT_NF4, code.data());
        SYM(lib[l], qlora_q8_dynamic_map)(map.data());
        qlora_context_params cp = SYM(lib[l], qlora_context_default_params)();
        cp.n_threads = threads;
        if (const char * isa = std::getenv("AB_ISA")) cp.max_isa = static_cast<qlora_cpu_isa>(std::atoi(isa));
        if (SYM(lib[l], qlora_context_create)(&cp, &ctx[l]) != QLORA_OK) return 1;
        for (int c = 0; c < copies; ++c) {
            qlora_q4_parts parts{};
            parts.packed = packed[static_cast<size_t>(c)].data();
            parts.code = code.data();
            if (dq) {
                parts.qabsmax = qabsmax[static_cast<size_t>(c)].data();
                parts.nested_absmax = nested.data();
                parts.nested_code = map.data();
                parts.nested_offset = 0.02f;
            } else {
                parts.absmax = absmax.data();
            }
            qlora_quant_params qp = SYM(lib[l], qlora_quant_default_params)();
            qp.double_quant = dq;
            qlora_q4_tensor_t t = nullptr;
            if (SYM(lib[l], qlora_q4_from_parts)(ctx[l], N, K, &qp, QLORA_DTYPE_BF16, &parts, &t) != QLORA_OK) {
                std::fprintf(stderr, "from_parts: %s\n", SYM(lib[l], qlora_last_error)());
                return 1;
            }
            w[l].push_back(t);
        }
    }
    qlora_view xv{};
    xv.data = bf16 ? static_cast<void *>(xh.data()) : static_cast<void *>(x.data());
    xv.dtype = bf16 ? QLORA_DTYPE_BF16 : QLORA_DTYPE_F32;
    xv.device = QLORA_DEVICE_HOST;
    xv.rows = M;
    xv.cols = XC;
    qlora_view yv = xv;
    yv.data = y.data();
    yv.dtype = QLORA_DTYPE_F32;
    yv.cols = YC;
    std::vector<double> ratio, ts[2];
    size_t calls[2] = {0, 0};
    std::vector<float> first[2];
    const auto end = clk::now() + std::chrono::duration<double>(secs);
    for (int it = 0; it == 0 || clk::now() < end; ++it) {
        double t[2];
        for (int k = 0; k < 2; ++k) {
            const int l = (it & 1) ? 1 - k : k;
            qlora_matmul_params p = SYM(lib[l], qlora_matmul_default_params)();
            p.int8_x = int8;
            if (bwd) p.op = QLORA_MATMUL_BACKWARD;
            for (int warm = 1; warm >= 0; --warm) {
                const auto t0 = clk::now();
                if (SYM(lib[l], qlora_q4_matmul)(ctx[l], &xv, w[l][calls[l]++ % static_cast<size_t>(copies)], &yv, &p) !=
                    QLORA_OK) {
                    std::fprintf(stderr, "matmul: %s\n", SYM(lib[l], qlora_last_error)());
                    return 1;
                }
                t[l] = std::chrono::duration<double>(clk::now() - t0).count();
            }
            if (it == 0) first[l] = y;
        }
        ratio.push_back(t[0] / t[1]);
        ts[0].push_back(t[0]);
        ts[1].push_back(t[1]);
    }
    double diff = 0.0;
    for (size_t n = 0; n < y.size(); ++n) diff = std::max(diff, static_cast<double>(std::fabs(first[0][n] - first[1][n])));
    const double bytes = static_cast<double>(numel) / 2;
    std::printf("M=%lld N=%lld K=%lld dq=%d int8_x=%d threads=%d copies=%d: A %.2f GB/s, B %.2f GB/s, B/A speed x%.3f "
                "(median of %zu rounds)",
                static_cast<long long>(M), static_cast<long long>(N), static_cast<long long>(K), dq, int8, threads, copies,
                bytes / median(ts[0]) / 1e9, bytes / median(ts[1]) / 1e9, median(ratio), ratio.size());
    if (M > 8)
        std::printf(", A %.1f GFLOP/s, B %.1f GFLOP/s", 2.0 * M * N * K / median(ts[0]) / 1e9,
                    2.0 * M * N * K / median(ts[1]) / 1e9);
    if (copies == 1) std::printf(", max |yA - yB| %.3g", diff);
    std::printf("\n");
    for (int l = 0; l < 2; ++l) {
        for (auto t : w[l]) SYM(lib[l], qlora_q4_free)(t);
        SYM(lib[l], qlora_context_free)(ctx[l]);
    }
    return 0;
}
