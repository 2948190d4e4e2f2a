// Fused 4-bit matmul benchmarks on LLaMA-7B layer shapes, next to baselines
// measured in the same run:
//   dense  - MKL GEMM on an unquantized W (fp32 sgemm_ / cblas_gemm_bf16bf16f32),
//            from the libtorch_cpu.so PyTorch ships (QLORA_LIBTORCH_CPU, default
//            the NuGet cache of libtorch-cpu-linux-x64 2.10.0), 2 threads;
//   deq    - dequantize the whole W (qlora_q4_dequantize) then the same dense GEMM;
//   STREAM - STREAM's triad on 3 arrays of 4x the L3 each, 128 MiB at least
//            (M = 1 is bandwidth-bound), 2 threads;
//   read   - a plain read of the same weight bytes, 2 threads.
// M = 1 rotates weight copies over 4x the L3 (256 MiB at least).
// Matmul/core/* repeat the compute-bound sizes on one thread, timed by the
// thread's CPU time (robust to time-slicing on a shared machine), next to MKL
// on one thread and the measured per-core FMA / vdpbf16ps peak.
// The last benchmark, Matmul/table, prints both tables with the ratios.
//
//   artifacts/native/dev/tests/native/qlora_bench --benchmark_filter='Matmul'
#include "qlora.h"

#include <benchmark/benchmark.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int kThreads = 2;

// The last-level cache in bytes: glibc's sysconf, else sysfs ("307200K"),
// else 32 MiB. "From DRAM" figures size their data from it, as STREAM does
// (each array at least 4x the cache): the machines this runs on range from
// 32 MiB of L3 (Zen 4/5) to 300 MiB (a Xeon with AMX). On the Xeon a fixed
// 3 x 32 MiB triad partly stayed in L3 between rounds of Matmul/m1_interleaved:
// next to 4096 x 4096 weights it ran 1.04-1.25x a plain read of the (cold)
// weights in 5 runs, against 0.93-1.04x with arrays of 4x the L3.
int64_t llc_bytes() {
    static const int64_t bytes = [] {
        const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (v > 0) return static_cast<int64_t>(v);
        std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
        int64_t n = 0;
        char unit = 0;
        if (f >> n >> unit && n > 0) return unit == 'M' ? n << 20 : unit == 'K' ? n << 10 : n;
        return int64_t{32} << 20;
    }();
    return bytes;
}
// M = 1 rotates weight copies over this many bytes (4x the L3, 256 MiB at least).
int64_t cold_bytes() { return std::max<int64_t>(int64_t{256} << 20, 4 * llc_bytes()); }

struct Shape { int64_t K, N; };
const Shape kShapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
const int64_t kMs[] = {1, 16, 512};

// ---------------------------------------------------------------- MKL via dlopen
using sgemm_fn = void (*)(const char *, const char *, const int *, const int *, const int *, const float *,
                          const float *, const int *, const float *, const int *, const float *, float *, const int *);
using gemm_bf16_fn = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const uint16_t *, int64_t,
                              const uint16_t *, int64_t, float, float *, int64_t);
struct Mkl {
    sgemm_fn     sgemm = nullptr;
    gemm_bf16_fn gemm_bf16 = nullptr;
    int (*set_threads)(const int *) = nullptr; // mkl_set_num_threads_local (this thread's calls)
    std::string  status;
};

Mkl & mkl() {
    static Mkl m = [] {
        Mkl r;
        const char * env = std::getenv("QLORA_LIBTORCH_CPU");
        std::string path = env ? env : "";
        if (path.empty()) {
            const char * home = std::getenv("HOME");
            path = std::string(home ? home : "/root") +
                   "/.nuget/packages/libtorch-cpu-linux-x64/2.10.0/runtimes/linux-x64/native/libtorch_cpu.so";
        }
        // MKL and its OpenMP runtime read these when they load.
        setenv("OMP_NUM_THREADS", "2", 0);
        setenv("MKL_NUM_THREADS", "2", 0);
        void * h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            r.status = "dense baselines UNAVAILABLE: cannot load " + path + " (" + dlerror() +
                       "); set QLORA_LIBTORCH_CPU to libtorch_cpu.so";
            return r;
        }
        r.sgemm = reinterpret_cast<sgemm_fn>(dlsym(h, "sgemm_"));
        r.gemm_bf16 = reinterpret_cast<gemm_bf16_fn>(dlsym(h, "cblas_gemm_bf16bf16f32"));
        auto omp_set = reinterpret_cast<void (*)(int)>(dlsym(h, "omp_set_num_threads"));
        auto mkl_set = reinterpret_cast<int (*)(const int *)>(dlsym(h, "mkl_set_num_threads_local"));
        const int n = kThreads;
        if (omp_set) omp_set(n);
        if (mkl_set) mkl_set(&n);
        r.set_threads = mkl_set;
        r.status = "dense baselines: MKL from " + path + " (sgemm_" + (r.sgemm ? "" : " MISSING") +
                   ", cblas_gemm_bf16bf16f32" + (r.gemm_bf16 ? "" : " MISSING") + "), " + std::to_string(n) +
                   " threads (oneDNN's C API is not exported by this libtorch_cpu.so)";
        return r;
    }();
    return m;
}

// y[M,N] = x[M,K] W^T (forward) or y[M,K] = x[M,N] W (backward); W row-major [N,K].
void dense_f32(bool fwd, int M, int N, int K, const float * x, const float * W, float * y) {
    const float one = 1.0f, zero = 0.0f;
    if (fwd) mkl().sgemm("T", "N", &N, &M, &K, &one, W, &K, x, &K, &zero, y, &N);
    else mkl().sgemm("N", "N", &K, &M, &N, &one, W, &K, x, &N, &zero, y, &K);
}
void dense_bf16(bool fwd, int64_t M, int64_t N, int64_t K, const uint16_t * x, const uint16_t * W, float * y) {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
    if (fwd) mkl().gemm_bf16(kRowMajor, kNoTrans, kTrans, M, N, K, 1.0f, x, K, W, K, 0.0f, y, N);
    else mkl().gemm_bf16(kRowMajor, kNoTrans, kNoTrans, M, K, N, 1.0f, x, N, W, K, 0.0f, y, K);
}

// ---------------------------------------------------------------- data
struct CtxDel { void operator()(qlora_context_t c) const { qlora_context_free(c); } };
struct Q4Del { void operator()(qlora_q4_tensor_t t) const { qlora_q4_free(t); } };

// QLORA_BENCH_ISA=avx2 (a qlora_cpu_isa_name) caps our kernels' ISA, e.g. to
// measure the AVX2 kernels on an AVX-512 machine; MKL_ENABLE_INSTRUCTIONS=AVX2
// caps MKL's the same way.
qlora_cpu_isa bench_isa() {
    const char * env = std::getenv("QLORA_BENCH_ISA");
    if (env)
        for (int i = QLORA_ISA_SCALAR; i <= QLORA_ISA_AMX_BF16; ++i)
            if (std::strcmp(env, qlora_cpu_isa_name(static_cast<qlora_cpu_isa>(i))) == 0)
                return static_cast<qlora_cpu_isa>(i);
    if (env) std::fprintf(stderr, "QLORA_BENCH_ISA=%s is not an ISA name (scalar, avx2, avx512, ...); ignored\n", env);
    return QLORA_ISA_BEST;
}

qlora_context_t make_ctx(int threads) {
    qlora_context_params p = qlora_context_default_params();
    p.backend = QLORA_BACKEND_CPU;
    p.n_threads = threads;
    p.max_isa = bench_isa();
    qlora_context_t out = nullptr;
    if (qlora_context_create(&p, &out) != QLORA_OK) std::fprintf(stderr, "context: %s\n", qlora_last_error());
    return out;
}
qlora_context_t ctx(int threads = kThreads) {
    static std::unique_ptr<qlora_context, CtxDel> two(make_ctx(kThreads)), one(make_ctx(1));
    return threads == 1 ? one.get() : two.get();
}

// Random NF4 + double-quant weights (values do not matter for timing; built
// from parts so that hundreds of MB are ready at once).
std::unique_ptr<qlora_q4_tensor, Q4Del> random_q4(int64_t N, int64_t K, uint32_t seed) {
    std::mt19937 rng(seed);
    const int64_t numel = N * K, nb = (numel + 63) / 64, nnb = (nb + 255) / 256;
    std::vector<uint8_t> packed(static_cast<size_t>((numel + 1) / 2)), qabs(static_cast<size_t>(nb));
    for (auto & b : packed) b = static_cast<uint8_t>(rng());
    for (auto & b : qabs) b = static_cast<uint8_t>(rng());
    std::vector<float> nested(static_cast<size_t>(nnb), 0.01f), code(16), map(256);
    qlora_q4_code_table(QLORA_QUANT_NF4, code.data());
    qlora_q8_dynamic_map(map.data());
    qlora_q4_parts parts{};
    parts.packed = packed.data();
    parts.qabsmax = qabs.data();
    parts.nested_absmax = nested.data();
    parts.code = code.data();
    parts.nested_code = map.data();
    parts.nested_offset = 0.02f;
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_tensor_t t = nullptr;
    if (qlora_q4_from_parts(ctx(), N, K, &p, QLORA_DTYPE_BF16, &parts, &t) != QLORA_OK)
        std::fprintf(stderr, "from_parts: %s\n", qlora_last_error());
    return std::unique_ptr<qlora_q4_tensor, Q4Del>(t);
}

struct Weights {
    std::vector<std::unique_ptr<qlora_q4_tensor, Q4Del>> copies; // copies[0] for M > 1; all for M = 1
    int64_t storage_bytes = 0;
};

Weights & weights(const Shape & s) {
    static std::map<std::pair<int64_t, int64_t>, Weights> cache;
    Weights & w = cache[{s.K, s.N}];
    if (w.copies.empty()) {
        w.copies.push_back(random_q4(s.N, s.K, 1));
        qlora_q4_info info{};
        qlora_q4_get_info(w.copies[0].get(), &info);
        w.storage_bytes = info.storage_bytes;
        const int64_t n = std::max<int64_t>(2, cold_bytes() / info.storage_bytes + 1);
        for (int64_t i = 1; i < n; ++i) w.copies.push_back(random_q4(s.N, s.K, static_cast<uint32_t>(i + 1)));
    }
    return w;
}

template <typename T>
std::vector<T> filled(size_t n, T v) { return std::vector<T>(n, v); }

qlora_view view(void * p, qlora_dtype d, int64_t r, int64_t c) {
    qlora_view v{};
    v.data = p;
    v.dtype = d;
    v.device = QLORA_DEVICE_HOST;
    v.rows = r;
    v.cols = c;
    return v;
}

// ---------------------------------------------------------------- results
struct Result { double seconds = 0.0; };
std::map<std::string, Result> & results() {
    static std::map<std::string, Result> r;
    return r;
}
std::string key(const char * what, bool fwd, bool bf16, int64_t M, const Shape & s, int threads = kThreads) {
    return std::string(what) + (fwd ? "/fwd" : "/bwd") + (bf16 ? "/bf16" : "/f32") + "/M" + std::to_string(M) +
           "/K" + std::to_string(s.K) + "/N" + std::to_string(s.N) + "/t" + std::to_string(threads);
}

// The table keeps, per benchmark, the best (lowest) time per iteration over
// all of Google Benchmark's runs of it (use --benchmark_repetitions=N for
// more): the machine is shared, and the minimum is what is achievable. Every
// kernel and baseline is treated the same way.
// Per-core mode (one thread): the thread's CPU time, which time-slicing by
// other processes does not inflate.
double thread_cpu_seconds() {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

template <typename F>
void timed(benchmark::State & state, const std::string & k, F && body, bool per_core = false) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = thread_cpu_seconds();
    for (auto _ : state) body();
    const double dt = per_core ? thread_cpu_seconds() - c0
                               : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double per = dt / static_cast<double>(state.iterations());
    Result & r = results()[k];
    if (r.seconds == 0.0 || per < r.seconds) r.seconds = per;
}

// ---------------------------------------------------------------- benchmarks
void BM_Q4(benchmark::State & state, Shape s, int64_t M, bool fwd, bool bf16, int threads, bool int8) {
    Weights & w = weights(s);
    const int64_t in = fwd ? s.K : s.N, out = fwd ? s.N : s.K;
    const qlora_dtype dt = bf16 ? QLORA_DTYPE_BF16 : QLORA_DTYPE_F32;
    std::vector<float> xf(static_cast<size_t>(M * in), 0.01f), yf(static_cast<size_t>(M * out));
    std::vector<uint16_t> xh(static_cast<size_t>(M * in), 0x3c23), yh(static_cast<size_t>(M * out));
    qlora_view xv = bf16 ? view(xh.data(), dt, M, in) : view(xf.data(), dt, M, in);
    qlora_view yv = bf16 ? view(yh.data(), dt, M, out) : view(yf.data(), dt, M, out);
    qlora_matmul_params p = qlora_matmul_default_params();
    p.op = fwd ? QLORA_MATMUL_FORWARD : QLORA_MATMUL_BACKWARD;
    p.int8_x = int8 ? 1 : 0;
    const size_t copies = M == 1 ? w.copies.size() : 1;
    size_t i = 0;
    qlora_context_t c = ctx(threads);
    timed(
        state, key(int8 ? "q4i8" : "q4", fwd, bf16, M, s, threads),
        [&] {
            if (qlora_q4_matmul(c, &xv, w.copies[i].get(), &yv, &p) != QLORA_OK) state.SkipWithError(qlora_last_error());
            i = (i + 1) % copies;
        },
        threads == 1);
    state.counters["GFLOP/s"] =
        benchmark::Counter(2.0 * M * s.N * s.K, benchmark::Counter::kIsIterationInvariantRate);
}

// Unquantized W, one per shape and precision (cached: hundreds of MB), made
// when `make`.
std::vector<float> & dense_wf(const Shape & s, bool make) {
    static std::map<std::pair<int64_t, int64_t>, std::vector<float>> cache;
    std::vector<float> & w = cache[{s.K, s.N}];
    if (make && w.empty()) w.assign(static_cast<size_t>(s.N * s.K), 0.01f);
    return w;
}
std::vector<uint16_t> & dense_wh(const Shape & s, bool make) {
    static std::map<std::pair<int64_t, int64_t>, std::vector<uint16_t>> cache;
    std::vector<uint16_t> & w = cache[{s.K, s.N}];
    if (make && w.empty()) w.assign(static_cast<size_t>(s.N * s.K), 0x3c23);
    return w;
}

void BM_Dense(benchmark::State & state, Shape s, int64_t M, bool fwd, bool bf16, bool dequantize, int threads) {
    if ((!bf16 && !mkl().sgemm) || (bf16 && !mkl().gemm_bf16)) {
        state.SkipWithError(mkl().status.c_str());
        return;
    }
    const int64_t in = fwd ? s.K : s.N, out = fwd ? s.N : s.K;
    std::vector<float> xf(static_cast<size_t>(M * in), 0.01f), y(static_cast<size_t>(M * out));
    std::vector<uint16_t> xh(static_cast<size_t>(M * in), 0x3c23);
    std::vector<float> & Wf = dense_wf(s, !bf16);
    std::vector<uint16_t> & Wh = dense_wh(s, bf16);
    qlora_q4_tensor_t q = weights(s).copies[0].get();
    qlora_view wv = bf16 ? view(Wh.data(), QLORA_DTYPE_BF16, s.N, s.K) : view(Wf.data(), QLORA_DTYPE_F32, s.N, s.K);
    if (mkl().set_threads) mkl().set_threads(&threads);
    timed(
        state, key(dequantize ? "deq" : "dense", fwd, bf16, M, s, threads),
        [&] {
            if (dequantize && qlora_q4_dequantize(ctx(threads), q, &wv) != QLORA_OK)
                state.SkipWithError(qlora_last_error());
            if (bf16) dense_bf16(fwd, M, s.N, s.K, xh.data(), Wh.data(), y.data());
            else dense_f32(fwd, static_cast<int>(M), static_cast<int>(s.N), static_cast<int>(s.K), xf.data(),
                           Wf.data(), y.data());
            benchmark::DoNotOptimize(y.data());
        },
        threads == 1);
    const int all = kThreads;
    if (mkl().set_threads) mkl().set_threads(&all);
    state.counters["GFLOP/s"] =
        benchmark::Counter(2.0 * M * s.N * s.K, benchmark::Counter::kIsIterationInvariantRate);
}

// Streaming read of the same bytes the M = 1 kernel reads (all weight copies
// in turn), split over 2 threads.
#if defined(__x86_64__)
__attribute__((target("avx2"))) uint64_t read_bytes(const uint8_t * p, size_t n) {
    __m256i acc = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + i));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + i + 32));
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + i + 64));
        const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p + i + 96));
        acc = _mm256_add_epi64(acc, _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(lanes), acc);
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; ++i) s += p[i];
    return s;
}
#else
uint64_t read_bytes(const uint8_t * p, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; ++i) s += p[i];
    return s;
}
#endif

// Runs fn(t) on kThreads threads: t = 0 on the caller, the others on helpers
// that live as long as the runner (spawning a thread per iteration would put
// its start-up, tens of microseconds, into a baseline of a few hundred).
class Team {
public:
    Team() {
        for (int t = 1; t < kThreads; ++t) helpers_.emplace_back([this, t] { loop(t); });
    }
    ~Team() {
        stop_ = true;
        gen_.fetch_add(1);
        gen_.notify_all();
        for (auto & h : helpers_) h.join();
    }
    template <typename F>
    void run(F && fn) {
        std::function<void(int)> f = fn;
        job_ = &f;
        done_.store(0);
        gen_.fetch_add(1, std::memory_order_release);
        gen_.notify_all();
        fn(0);
        while (done_.load(std::memory_order_acquire) != kThreads - 1) wait_pause();
        job_ = nullptr;
    }

private:
    static void wait_pause() {
#if defined(__x86_64__)
        _mm_pause();
#endif
    }
    void loop(int t) {
        uint64_t seen = 0; // gen_'s initial value: run() may already have moved it

        for (;;) {
            // A short spin, then sleep: a spinning helper would take a core from
            // the kernels measured between two runs (Matmul/m1_interleaved).
            for (int spins = 0; gen_.load(std::memory_order_acquire) == seen;)
                if (++spins > 1000) gen_.wait(seen, std::memory_order_acquire);
                else wait_pause();
            seen = gen_.load();
            if (stop_) return;
            (*job_)(t);
            done_.fetch_add(1, std::memory_order_release);
        }
    }
    std::vector<std::thread> helpers_;
    std::atomic<uint64_t> gen_{0};
    std::atomic<int> done_{0};
    std::atomic<bool> stop_{false};
    const std::function<void(int)> * job_ = nullptr;
};

// The bytes the M = 1 kernel reads from one weight copy: its codes and its
// block-scale bytes.
struct WeightBytes {
    std::vector<std::pair<const uint8_t *, size_t>> parts; // per copy: packed, qabsmax

    explicit WeightBytes(Weights & w) {
        for (auto & c : w.copies) {
            qlora_q4_parts p{};
            qlora_q4_info info{};
            qlora_q4_get_parts(c.get(), &p);
            qlora_q4_get_info(c.get(), &info);
            parts.push_back({p.packed, static_cast<size_t>(info.packed_bytes)});
            parts.push_back({p.qabsmax, static_cast<size_t>(info.n_blocks)});
        }
    }
    // Thread t of kThreads reads its share of copy i's bytes.
    uint64_t read(size_t copy, int t) const {
        uint64_t r = 0;
        for (size_t j = 0; j < 2; ++j) {
            const auto & pp = parts[2 * copy + j];
            const size_t b = pp.second * t / kThreads, e = pp.second * (t + 1) / kThreads;
            r += read_bytes(pp.first + b, e - b);
        }
        return r;
    }
};

// Read bandwidth: a read of the same bytes the M = 1 kernel reads (one weight
// copy per iteration, all copies in turn), split over kThreads threads.
void BM_Read(benchmark::State & state, Shape s) {
    Weights & w = weights(s);
    const WeightBytes bytes(w);
    Team team;
    size_t i = 0;
    uint64_t r[kThreads] = {};
    timed(state, "read/K" + std::to_string(s.K) + "/N" + std::to_string(s.N), [&] {
        team.run([&](int t) { r[t] += bytes.read(i, t); });
        i = (i + 1) % w.copies.size();
    });
    benchmark::DoNotOptimize(r);
    state.counters["GB/s"] = benchmark::Counter(static_cast<double>(w.storage_bytes),
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

// STREAM's triad, a[i] = b[i] + q c[i], counted as STREAM counts it (3 x 4
// bytes per element, write-allocate traffic not counted), on kThreads threads
// over 3 arrays of 4x the L3 each (128 MiB at least), STREAM's own rule: the
// "STREAM" figure the targets refer to. Matmul/stream_triad and
// Matmul/m1_interleaved share the arrays.
struct TriadArrays {
    std::vector<float> a, b, c;
    TriadArrays() {
        const size_t n = static_cast<size_t>(std::max<int64_t>(int64_t{128} << 20, 4 * llc_bytes()) / 4);
        a.assign(n, 0.0f);
        b.assign(n, 1.0f);
        c.assign(n, 2.0f);
    }
    size_t size() const { return a.size(); }
    double stream_bytes() const { return 12.0 * static_cast<double>(size()); }
    // Thread t of kThreads runs its share.
    void run(int t) {
        const size_t lo = size() * t / kThreads, hi = size() * (t + 1) / kThreads;
        float * pa = a.data();
        const float * pb = b.data();
        const float * pc = c.data();
        for (size_t i = lo; i < hi; ++i) pa[i] = pb[i] + 3.0f * pc[i];
        benchmark::DoNotOptimize(pa);
    }
};
TriadArrays & triad_arrays() {
    static TriadArrays t;
    return t;
}
void BM_Triad(benchmark::State & state) {
    TriadArrays & tr = triad_arrays();
    Team team;
    timed(state, "triad", [&] { team.run([&](int t) { tr.run(t); }); });
    state.counters["GB/s"] = benchmark::Counter(tr.stream_bytes(), benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

// M = 1 on a machine whose memory bandwidth moves by 2x within minutes (a
// shared VM): the plain read, STREAM's triad and the four matvecs (exact and
// int8_x, F32 and BF16 x) run in turn, one call each per round, each on the
// next weight copy, so every ratio compares figures taken over the same
// seconds. Time per kind = the median over the rounds (a stall of the VM in
// one round does not move it).
constexpr int kInterleavedRounds = 60;
struct Interleaved {
    std::vector<double> read, triad, exact[2], int8[2];
};
double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
}
std::map<std::pair<int64_t, int64_t>, Interleaved> & interleaved() {
    static std::map<std::pair<int64_t, int64_t>, Interleaved> r;
    return r;
}
void BM_M1Interleaved(benchmark::State & state, Shape s) {
    Weights & w = weights(s);
    const WeightBytes bytes(w);
    TriadArrays & tr = triad_arrays();
    std::vector<float> xf(static_cast<size_t>(s.K), 0.01f), yf(static_cast<size_t>(s.N));
    std::vector<uint16_t> xh(static_cast<size_t>(s.K), 0x3c23);
    qlora_view xv[2] = {view(xf.data(), QLORA_DTYPE_F32, 1, s.K), view(xh.data(), QLORA_DTYPE_BF16, 1, s.K)};
    qlora_view yv = view(yf.data(), QLORA_DTYPE_F32, 1, s.N);
    qlora_context_t c = ctx(kThreads);
    Interleaved & r = interleaved()[{s.K, s.N}];
    r = Interleaved{};
    uint64_t sink[kThreads] = {};
    size_t copy = 0;
    auto next = [&] { return copy = (copy + 1) % w.copies.size(); };
    auto clock = [](auto && body) {
        const auto t0 = std::chrono::steady_clock::now();
        body();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    Team team;
    for (auto _ : state) {
        for (int round = 0; round < kInterleavedRounds; ++round) {
            // Each side's threads sleep while the other runs: the first run of
            // each side in a round wakes them and is not counted.
            for (int warm = 1; warm >= 0; --warm) {
                const size_t i = next();
                const double dt = clock([&] { team.run([&](int t) { sink[t] += bytes.read(i, t); }); });
                if (!warm) r.read.push_back(dt);
            }
            r.triad.push_back(clock([&] {
                team.run([&](int t) { tr.run(t); });
            }));
            qlora_matmul_params warm = qlora_matmul_default_params();
            if (qlora_q4_matmul(c, &xv[0], w.copies[next()].get(), &yv, &warm) != QLORA_OK)
                state.SkipWithError(qlora_last_error());
            for (int int8 = 0; int8 < 2; ++int8)
                for (int bf16 = 0; bf16 < 2; ++bf16) {
                    qlora_matmul_params p = qlora_matmul_default_params();
                    p.int8_x = int8;
                    qlora_q4_tensor_t wt = w.copies[next()].get();
                    (int8 ? r.int8 : r.exact)[bf16].push_back(clock([&] {
                        if (qlora_q4_matmul(c, &xv[bf16], wt, &yv, &p) != QLORA_OK) state.SkipWithError(qlora_last_error());
                    }));
                }
        }
    }
    benchmark::DoNotOptimize(sink);
}

// M = 512 (training) against MKL in the same seconds: the machine's speed
// moves by up to 3x within minutes (AMX on a Xeon VM: 410-455 vs 1180-1320
// GFLOP/s per core in a plain tile loop), so each round times one call of
// ours and one of MKL's dense GEMM of the same precision, in alternating
// order, with a 10 ms pause after each call (MKL's OpenMP threads spin for a
// while after a call, and would take the cores from the next one; our pool's
// wake-up, ~50 us, is noise at these sizes). Ratio = the median over rounds
// of MKL's time / ours. Baseline (a), dequantize the whole W then the same
// MKL GEMM, takes part in the rounds too (the three calls in rotating order).
constexpr int kGemmRounds = 12;
constexpr int64_t kGemmM = 512;
struct GemmInterleaved {
    std::vector<double> ours, dense, deq, ratio, ratio_deq;
};
std::map<std::string, GemmInterleaved> & gemm_interleaved() {
    static std::map<std::string, GemmInterleaved> r;
    return r;
}
void BM_GemmInterleaved(benchmark::State & state, Shape s) {
    if (!mkl().sgemm || !mkl().gemm_bf16) {
        state.SkipWithError(mkl().status.c_str());
        return;
    }
    Weights & w = weights(s);
    qlora_context_t c = ctx(kThreads);
    if (mkl().set_threads) {
        const int all = kThreads;
        mkl().set_threads(&all);
    }
    for (auto _ : state)
        for (bool fwd : {true, false})
            for (bool bf16 : {false, true}) {
                const int64_t in = fwd ? s.K : s.N, out = fwd ? s.N : s.K, M = kGemmM;
                const qlora_dtype dt = bf16 ? QLORA_DTYPE_BF16 : QLORA_DTYPE_F32;
                std::vector<float> xf(static_cast<size_t>(M * in), 0.01f), yf(static_cast<size_t>(M * out));
                std::vector<uint16_t> xh(static_cast<size_t>(M * in), 0x3c23);
                qlora_view xv = bf16 ? view(xh.data(), dt, M, in) : view(xf.data(), dt, M, in);
                qlora_view yv = view(yf.data(), QLORA_DTYPE_F32, M, out);
                qlora_matmul_params p = qlora_matmul_default_params();
                p.op = fwd ? QLORA_MATMUL_FORWARD : QLORA_MATMUL_BACKWARD;
                std::vector<float> & Wf = dense_wf(s, !bf16);
                std::vector<uint16_t> & Wh = dense_wh(s, bf16);
                auto ours = [&] {
                    if (qlora_q4_matmul(c, &xv, w.copies[0].get(), &yv, &p) != QLORA_OK)
                        state.SkipWithError(qlora_last_error());
                };
                auto dense = [&] {
                    if (bf16) dense_bf16(fwd, M, s.N, s.K, xh.data(), Wh.data(), yf.data());
                    else dense_f32(fwd, static_cast<int>(M), static_cast<int>(s.N), static_cast<int>(s.K), xf.data(),
                                   Wf.data(), yf.data());
                    benchmark::DoNotOptimize(yf.data());
                };
                // (a): the whole W dequantized into the dense GEMM's own W (its values do not matter to the timing)
                qlora_view wv = bf16 ? view(Wh.data(), QLORA_DTYPE_BF16, s.N, s.K) : view(Wf.data(), QLORA_DTYPE_F32, s.N, s.K);
                auto deq = [&] {
                    if (qlora_q4_dequantize(c, w.copies[0].get(), &wv) != QLORA_OK) state.SkipWithError(qlora_last_error());
                    dense();
                };
                auto clock = [](auto && body) {
                    const auto t0 = std::chrono::steady_clock::now();
                    body();
                    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    std::this_thread::sleep_for(std::chrono::milliseconds(10));
                    return dt;
                };
                GemmInterleaved & r = gemm_interleaved()[key("gemm", fwd, bf16, M, s, kThreads)];
                r = GemmInterleaved{};
                clock(ours); // first calls: scratch, page faults, MKL's buffers
                clock(dense);
                clock(deq);
                for (int round = 0; round < kGemmRounds; ++round) {
                    double t[3];
                    for (int i = 0; i < 3; ++i) { // order: ours, dense, deq rotated by the round
                        const int which = (i + round) % 3;
                        t[which] = which == 0 ? clock(ours) : which == 1 ? clock(dense) : clock(deq);
                    }
                    r.ours.push_back(t[0]);
                    r.dense.push_back(t[1]);
                    r.deq.push_back(t[2]);
                    r.ratio.push_back(t[1] / t[0]);
                    r.ratio_deq.push_back(t[2] / t[0]);
                }
            }
}

// The physical limit per core: fp32 FMA and bf16 dot-product throughput
// (24 independent accumulators, thread CPU time).
#if defined(__x86_64__)
__attribute__((target("avx512f"))) void peak_fma(int64_t iters) {
    __m512 a[24];
    for (int i = 0; i < 24; ++i) a[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
    __m512 b = _mm512_set1_ps(1.0000001f);
    const __m512 c = _mm512_set1_ps(1e-7f);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
        __asm__ volatile("" : "+v"(b));
    }
    for (int i = 1; i < 24; ++i) a[0] = _mm512_add_ps(a[0], a[i]);
    benchmark::DoNotOptimize(a[0]);
}
__attribute__((target("avx512f,avx512bf16"))) void peak_dpbf16(int64_t iters) {
    __m512 a[24];
    for (int i = 0; i < 24; ++i) a[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
    __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    const __m512bh c = (__m512bh)_mm512_set1_epi32(0x33d633d6);
    for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 24
        for (int i = 0; i < 24; ++i) a[i] = _mm512_dpbf16_ps(a[i], b, c);
        __asm__ volatile("" : "+v"(b));
    }
    for (int i = 1; i < 24; ++i) a[0] = _mm512_add_ps(a[0], a[i]);
    benchmark::DoNotOptimize(a[0]);
}
#endif

constexpr int64_t kPeakIters = 1 << 16;
double peak_flop_per_iter(bool bf16) { return static_cast<double>(kPeakIters) * 24 * 16 * (bf16 ? 4 : 2); }

void BM_Peak(benchmark::State & state, bool bf16) {
#if defined(__x86_64__)
    const bool ok = bf16 ? __builtin_cpu_supports("avx512bf16") : __builtin_cpu_supports("avx512f");
    if (!ok) {
        state.SkipWithError("ISA not available");
        return;
    }
    timed(state, bf16 ? "peak/bf16" : "peak/f32", [&] { bf16 ? peak_dpbf16(kPeakIters) : peak_fma(kPeakIters); }, true);
#else
    state.SkipWithError("x86-64 only");
#endif
}

void BM_Table(benchmark::State & state) {
    for (auto _ : state) {
    }
    auto & r = results();
    auto get = [&](const std::string & k) { auto it = r.find(k); return it == r.end() ? 0.0 : it->second.seconds; };
    qlora_context_info info{};
    qlora_context_get_info(ctx(), &info);
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0) load[0] = -1;
    std::printf("\nFused 4-bit matmul (NF4 + double quant, blocksize 64), ISA %s, load average %.1f\n%s\n",
                qlora_cpu_isa_name(info.isa), load[0], mkl().status.c_str());
    std::printf("Times: the best of all runs of each benchmark (also for the baselines).\n");
    std::printf("GFLOP/s = 2 M N K / time. 'vs dense': ours / dense GEMM of the same precision on an unquantized W; "
                "'vs deq': ours / (dequantize whole W + the same dense GEMM).\n");
    const double tri = get("triad");
    const double stream = tri > 0 ? triad_arrays().stream_bytes() / tri / 1e9 : 0.0;
    std::printf("M = 1: weight GB/s = stored 4-bit bytes (4.127 bits/weight) / time, over weight copies of %lld MiB in "
                "all (L3: %lld MiB); 'vs STREAM': / STREAM triad bandwidth (%.1f GB/s in this run, %d threads, "
                "3 x %lld MiB); 'vs read': / a plain read of the same bytes (reads alone stream faster than STREAM's "
                "mix of reads and writes).\n\n",
                static_cast<long long>(cold_bytes() >> 20), static_cast<long long>(llc_bytes() >> 20), stream,
                kThreads, static_cast<long long>(triad_arrays().size() * 4 >> 20));
    std::printf("%d threads, wall clock:\n\n", kThreads);
    std::printf("| op  | act  |    K  |     N |   M | q4 GFLOP/s | dense GFLOP/s | vs dense | deq+dense GFLOP/s | vs deq | "
                "weight GB/s | vs STREAM | read GB/s | vs read |\n");
    std::printf("|-----|------|-------|-------|-----|-----------:|--------------:|---------:|------------------:|-------:|"
                "------------:|----------:|----------:|--------:|\n");
    for (bool fwd : {true, false})
        for (bool bf16 : {false, true})
            for (const Shape & s : kShapes)
                for (int64_t M : kMs) {
                    const double flop = 2.0 * M * s.N * s.K;
                    const double q = get(key("q4", fwd, bf16, M, s)), d = get(key("dense", fwd, bf16, M, s)),
                                 a = get(key("deq", fwd, bf16, M, s));
                    if (q == 0.0) continue;
                    std::printf("| %s | %s | %5lld | %5lld | %3lld | %10.1f |", fwd ? "fwd" : "bwd",
                                bf16 ? "bf16" : "f32 ", static_cast<long long>(s.K), static_cast<long long>(s.N),
                                static_cast<long long>(M), flop / q / 1e9);
                    if (d > 0) std::printf(" %13.1f | %7.2fx |", flop / d / 1e9, d / q);
                    else std::printf(" %13s | %8s |", "n/a", "n/a");
                    if (a > 0) std::printf(" %17.1f | %5.2fx |", flop / a / 1e9, a / q);
                    else std::printf(" %17s | %6s |", "n/a", "n/a");
                    if (M == 1) {
                        const double rd = get("read/K" + std::to_string(s.K) + "/N" + std::to_string(s.N));
                        const double bytes = static_cast<double>(weights(s).storage_bytes), gbs = bytes / q / 1e9;
                        std::printf(" %11.1f | %8.2fx | %9.1f | %6.2fx |\n", gbs, stream > 0 ? gbs / stream : 0.0,
                                    rd > 0 ? bytes / rd / 1e9 : 0.0, rd > 0 ? rd / q : 0.0);
                    } else {
                        std::printf(" %11s | %9s | %9s | %7s |\n", "", "", "", "");
                    }
                }
    std::printf("\nM = 1 forward with 8-bit activations (qlora_matmul_params.int8_x: x rounded to int8 per "
                "32 elements, vpdpbusd), %d threads, wall clock; 'vs exact': / the exact matvec above (same act):\n\n",
                kThreads);
    std::printf("| act  |    K  |     N | weight GB/s | vs STREAM | vs read | vs exact |\n");
    std::printf("|------|-------|-------|------------:|----------:|--------:|---------:|\n");
    for (bool bf16 : {false, true})
        for (const Shape & s : kShapes) {
            const double q = get(key("q4i8", true, bf16, 1, s)), e = get(key("q4", true, bf16, 1, s));
            if (q == 0.0) continue;
            const double rd = get("read/K" + std::to_string(s.K) + "/N" + std::to_string(s.N));
            const double gbs = static_cast<double>(weights(s).storage_bytes) / q / 1e9;
            std::printf("| %s | %5lld | %5lld | %11.1f | %8.2fx | %6.2fx | %7.2fx |\n", bf16 ? "bf16" : "f32 ",
                        static_cast<long long>(s.K), static_cast<long long>(s.N), gbs, stream > 0 ? gbs / stream : 0.0,
                        rd > 0 ? rd / q : 0.0, e > 0 ? e / q : 0.0);
        }
    if (!interleaved().empty()) {
        std::printf("\nM = 1 interleaved (Matmul/m1_interleaved): %d rounds of one call each of: a plain read of the "
                    "weight bytes, STREAM's triad (3 x %lld MiB), and the forward matvec exact / int8_x with F32 "
                    "and BF16 x, each call on the next weight copy (%lld MiB in all); GB/s = weight bytes (or "
                    "STREAM's count) / the median time over the rounds; the ratios compare figures taken over the "
                    "same seconds:\n\n",
                    kInterleavedRounds, static_cast<long long>(triad_arrays().size() * 4 >> 20),
                    static_cast<long long>(cold_bytes() >> 20));
        std::printf("|    K  |     N | read GB/s | STREAM GB/s | exact f32 | exact bf16 | int8 f32 | int8 bf16 | "
                    "int8 f32 vs STREAM | int8 bf16 vs STREAM | int8 f32 vs read | int8 bf16 vs read |\n");
        std::printf("|-------|-------|----------:|------------:|----------:|-----------:|---------:|----------:|"
                    "-------------------:|--------------------:|-----------------:|------------------:|\n");
        for (const Shape & s : kShapes) {
            auto it = interleaved().find({s.K, s.N});
            if (it == interleaved().end() || it->second.read.empty()) continue;
            const Interleaved & v = it->second;
            const double bytes = static_cast<double>(weights(s).storage_bytes) / 1e9;
            const double rd = bytes / median(v.read), st = triad_arrays().stream_bytes() / 1e9 / median(v.triad);
            const double e0 = bytes / median(v.exact[0]), e1 = bytes / median(v.exact[1]);
            const double i0 = bytes / median(v.int8[0]), i1 = bytes / median(v.int8[1]);
            std::printf("| %5lld | %5lld | %9.1f | %11.1f | %9.1f | %10.1f | %8.1f | %9.1f | %17.2fx | %18.2fx | "
                        "%15.2fx | %16.2fx |\n",
                        static_cast<long long>(s.K), static_cast<long long>(s.N), rd, st, e0, e1, i0, i1, i0 / st,
                        i1 / st, i0 / rd, i1 / rd);
        }
    }
    if (!gemm_interleaved().empty()) {
        std::printf("\nM = %lld interleaved (Matmul/gemm_interleaved): %d rounds of one call each of ours, MKL's "
                    "dense GEMM of the same precision, and (a) qlora_q4_dequantize of the whole W + the same MKL GEMM "
                    "(rotating order, a 10 ms pause after each call), %d threads; GFLOP/s from the median times; "
                    "'vs dense' / 'vs deq' = the median over rounds of MKL's / (a)'s time / ours (min-max over rounds "
                    "after it):\n\n",
                    static_cast<long long>(kGemmM), kGemmRounds, kThreads);
        std::printf("| op  | act  |    K  |     N | q4 GFLOP/s | dense GFLOP/s | vs dense | rounds' min-max | "
                    "deq+dense GFLOP/s | vs deq | rounds' min-max |\n");
        std::printf("|-----|------|-------|-------|-----------:|--------------:|---------:|----------------:|"
                    "------------------:|-------:|----------------:|\n");
        for (bool fwd : {true, false})
            for (bool bf16 : {false, true})
                for (const Shape & s : kShapes) {
                    auto it = gemm_interleaved().find(key("gemm", fwd, bf16, kGemmM, s, kThreads));
                    if (it == gemm_interleaved().end() || it->second.ratio.empty()) continue;
                    const GemmInterleaved & g = it->second;
                    const double flop = 2.0 * kGemmM * s.N * s.K;
                    const auto mm = std::minmax_element(g.ratio.begin(), g.ratio.end());
                    const auto md = std::minmax_element(g.ratio_deq.begin(), g.ratio_deq.end());
                    std::printf("| %s | %s | %5lld | %5lld | %10.1f | %13.1f | %7.2fx | %6.2f-%.2f | %17.1f | %5.2fx | "
                                "%6.2f-%.2f |\n",
                                fwd ? "fwd" : "bwd", bf16 ? "bf16" : "f32 ", static_cast<long long>(s.K),
                                static_cast<long long>(s.N), flop / median(g.ours) / 1e9, flop / median(g.dense) / 1e9,
                                median(g.ratio), *mm.first, *mm.second, flop / median(g.deq) / 1e9,
                                median(g.ratio_deq), *md.first, *md.second);
                }
    }
    const double pf = get("peak/f32"), pb = get("peak/bf16");
    std::printf("\nOne thread, thread CPU time (kernel efficiency, robust to time-slicing on a shared machine). "
                "Peak per core, measured: fp32 FMA %.1f GFLOP/s, bf16 vdpbf16ps %.1f GFLOP/s.\n\n",
                pf > 0 ? peak_flop_per_iter(false) / pf / 1e9 : 0.0, pb > 0 ? peak_flop_per_iter(true) / pb / 1e9 : 0.0);
    std::printf("| op  | act  |    K  |     N |   M | q4 GFLOP/s/core | of peak | MKL GFLOP/s/core | vs MKL |\n");
    std::printf("|-----|------|-------|-------|-----|----------------:|--------:|-----------------:|-------:|\n");
    for (bool fwd : {true, false})
        for (bool bf16 : {false, true})
            for (const Shape & s : kShapes)
                for (int64_t M : kMs) {
                    const double flop = 2.0 * M * s.N * s.K;
                    const double q = get(key("q4", fwd, bf16, M, s, 1)), d = get(key("dense", fwd, bf16, M, s, 1));
                    if (q == 0.0) continue;
                    // bf16 with M > 8 on AMX: the tiles, not vdpbf16ps, set the limit (not measured here)
                    const bool amx = bf16 && M > 8 && info.isa == QLORA_ISA_AMX_BF16;
                    const double peak = amx ? 0.0
                                        : bf16 ? (pb > 0 ? peak_flop_per_iter(true) / pb : 0.0)
                                               : (pf > 0 ? peak_flop_per_iter(false) / pf : 0.0);
                    std::printf("| %s | %s | %5lld | %5lld | %3lld | %15.1f |", fwd ? "fwd" : "bwd", bf16 ? "bf16" : "f32 ",
                                static_cast<long long>(s.K), static_cast<long long>(s.N), static_cast<long long>(M),
                                flop / q / 1e9);
                    if (peak > 0) std::printf(" %6.0f%% |", 100.0 * flop / q / peak);
                    else std::printf(" %7s |", amx ? "AMX" : "n/a");
                    if (d > 0) std::printf(" %16.1f | %5.2fx |\n", flop / d / 1e9, d / q);
                    else std::printf(" %16s | %6s |\n", "n/a", "n/a");
                }
    std::printf("\n");
}

// Ours first, MKL after: MKL's OpenMP threads keep spinning for a while after
// each call, which would steal the 2 cores from whatever runs next.
int register_all() {
    auto each = [](const char * what, auto && reg, bool with_m1 = true) {
        for (const Shape & s : kShapes)
            for (bool fwd : {true, false})
                for (bool bf16 : {false, true})
                    for (int64_t M : kMs) {
                        if (M == 1 && !with_m1) continue;
                        const std::string name = std::string("Matmul/") + what + (fwd ? "/fwd" : "/bwd") +
                                                 (bf16 ? "/bf16" : "/f32") + "/M" + std::to_string(M) + "/K" +
                                                 std::to_string(s.K) + "/N" + std::to_string(s.N);
                        reg(name, s, M, fwd, bf16)->UseRealTime()->MinTime(0.3);
                    }
    };
    benchmark::RegisterBenchmark("Matmul/stream_triad", BM_Triad)->UseRealTime()->MinTime(0.5);
    for (const Shape & s : kShapes)
        benchmark::RegisterBenchmark(("Matmul/read/K" + std::to_string(s.K) + "/N" + std::to_string(s.N)).c_str(),
                                     BM_Read, s)
            ->UseRealTime()
            ->MinTime(0.3);
    each("q4", [](const std::string & n, Shape s, int64_t M, bool fwd, bool bf16) {
        return benchmark::RegisterBenchmark(n.c_str(), BM_Q4, s, M, fwd, bf16, kThreads, false);
    });
    for (const Shape & s : kShapes)
        for (bool bf16 : {false, true})
            benchmark::RegisterBenchmark((std::string("Matmul/q4i8/fwd") + (bf16 ? "/bf16" : "/f32") + "/M1/K" +
                                          std::to_string(s.K) + "/N" + std::to_string(s.N))
                                             .c_str(),
                                         BM_Q4, s, int64_t{1}, true, bf16, kThreads, true)
                ->UseRealTime()
                ->MinTime(0.3);
    for (const Shape & s : kShapes)
        benchmark::RegisterBenchmark(("Matmul/m1_interleaved/K" + std::to_string(s.K) + "/N" + std::to_string(s.N)).c_str(),
                                     BM_M1Interleaved, s)
            ->UseRealTime()
            ->Iterations(1);
    // per core (one thread): the compute-bound sizes (M = 1 is bandwidth-bound: 2 threads only)
    each(
        "core/q4",
        [](const std::string & n, Shape s, int64_t M, bool fwd, bool bf16) {
            return benchmark::RegisterBenchmark(n.c_str(), BM_Q4, s, M, fwd, bf16, 1, false);
        },
        false);
    each("dense", [](const std::string & n, Shape s, int64_t M, bool fwd, bool bf16) {
        return benchmark::RegisterBenchmark(n.c_str(), BM_Dense, s, M, fwd, bf16, false, kThreads);
    });
    each("deq_dense", [](const std::string & n, Shape s, int64_t M, bool fwd, bool bf16) {
        return benchmark::RegisterBenchmark(n.c_str(), BM_Dense, s, M, fwd, bf16, true, kThreads);
    });
    each(
        "core/dense",
        [](const std::string & n, Shape s, int64_t M, bool fwd, bool bf16) {
            return benchmark::RegisterBenchmark(n.c_str(), BM_Dense, s, M, fwd, bf16, false, 1);
        },
        false);
    for (const Shape & s : kShapes)
        benchmark::RegisterBenchmark(("Matmul/gemm_interleaved/K" + std::to_string(s.K) + "/N" + std::to_string(s.N)).c_str(),
                                     BM_GemmInterleaved, s)
            ->UseRealTime()
            ->Iterations(1);
    benchmark::RegisterBenchmark("Matmul/core/peak/f32", BM_Peak, false)->MinTime(0.2);
    benchmark::RegisterBenchmark("Matmul/core/peak/bf16", BM_Peak, true)->MinTime(0.2);
    benchmark::RegisterBenchmark("Matmul/table", BM_Table)->Iterations(1)->Repetitions(1);
    return 0;
}
const int kRegistered = register_all();

} // namespace
