// CUDA benchmarks (its own binary, qlora_bench_cuda, built only with CUDA; no
// Google Benchmark needed on the GPU machine). Every figure is printed next to
// a baseline measured in the same run, interleaved with it, best of rounds:
//  - dequantize (NF4 + double quant -> bf16 / fp32) bandwidth, bytes read +
//    written, vs a device-to-device cudaMemcpy of the output's size (target >= 0.8x);
//  - 4-bit matmul at M = 512 (forward and backward, bf16 activations) vs a
//    cuBLAS dense bf16 GEMM of the same shape (target >= 0.85x), per path;
//  - gemv (M = 1, 4, 8): weight bytes / time vs the copy bandwidth (target
//    >= 0.7x), over a ring of weight copies several times the L2 size.
// Shapes: LLaMA-7B layers, (K, N) = (4096, 4096), (4096, 11008), (11008, 4096).
//
//   qlora_bench_cuda [--min-time S] [--quick] [--ms 1,4,...] [--no-dequant]
// (--ms: only these M in the matmul table; --no-dequant: skip the dequantize table)
// Lines starting with "SUMMARY" carry the headline figures (scripts/gpu-check.sh
// collects them).
#include "qlora.h"

#include "cuda/cuda_state.hpp"
#include "cuda/q4_device.hpp"
#include "quant/matmul.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

double g_min_time = 0.2; // seconds per measurement round
int    g_rounds = 3;

#define CK(call)                                                                                           \
    do {                                                                                                   \
        const cudaError_t e_ = (call);                                                                     \
        if (e_ != cudaSuccess) {                                                                           \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));     \
            std::exit(2);                                                                                  \
        }                                                                                                  \
    } while (0)
#define QK(call)                                                                                           \
    do {                                                                                                   \
        const qlora_status s_ = (call);                                                                    \
        if (s_ != QLORA_OK) {                                                                              \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, qlora_last_error());         \
            std::exit(2);                                                                                  \
        }                                                                                                  \
    } while (0)

struct CtxDel { void operator()(qlora_context_t c) const { qlora_context_free(c); } };
struct Q4Del { void operator()(qlora_q4_tensor_t t) const { qlora_q4_free(t); } };
using Ctx = std::unique_ptr<qlora_context, CtxDel>;
using Q4 = std::unique_ptr<qlora_q4_tensor, Q4Del>;

struct Dev {
    void * p = nullptr;
    size_t bytes = 0;
    explicit Dev(size_t b, int fill = 0) : bytes(b) {
        CK(cudaMalloc(&p, b));
        CK(cudaMemset(p, fill, b));
    }
    ~Dev() { cudaFree(p); }
};

qlora_view dview(void * p, qlora_dtype d, int64_t r, int64_t c) {
    qlora_view v{};
    v.data = p;
    v.dtype = d;
    v.device = 0;
    v.rows = r;
    v.cols = c;
    return v;
}

// Seconds per call of `fn` (queued on the legacy stream): calls are timed in
// batches with CUDA events until a round lasts g_min_time.
double time_op(const std::function<void()> & fn) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) fn(); // warm-up
    CK(cudaDeviceSynchronize());
    int reps = 1;
    double per = 0.0;
    for (;;) {
        CK(cudaEventRecord(a));
        for (int i = 0; i < reps; ++i) fn();
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms = 0.0f;
        CK(cudaEventElapsedTime(&ms, a, b));
        per = ms / 1000.0 / reps;
        if (ms / 1000.0 >= g_min_time || reps >= (1 << 20)) break;
        reps = std::max(reps * 2, static_cast<int>(g_min_time / std::max(per, 1e-7) * 1.2));
    }
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return per;
}

// Best of g_rounds, op and baseline interleaved.
std::pair<double, double> time_pair(const std::function<void()> & op, const std::function<void()> & base) {
    double t_op = 1e30, t_base = 1e30;
    for (int r = 0; r < g_rounds; ++r) {
        t_op = std::min(t_op, time_op(op));
        t_base = std::min(t_base, time_op(base));
    }
    return {t_op, t_base};
}

// Random NF4 + double-quant weights [N, K] on the device (built from parts on the host).
Q4 random_weight(qlora_context_t ctx, int64_t N, int64_t K, uint32_t seed) {
    std::mt19937 rng(seed);
    const int64_t numel = N * K, nb = (numel + 63) / 64, nnb = (nb + 255) / 256;
    std::vector<uint8_t> packed(static_cast<size_t>((numel + 1) / 2)), qabs(static_cast<size_t>(nb));
    for (auto & b : packed) b = static_cast<uint8_t>(rng());
    for (auto & b : qabs) b = static_cast<uint8_t>(rng());
    std::vector<float> nested(static_cast<size_t>(nnb), 0.01f), code(16), map(256);
    QK(qlora_q4_code_table(QLORA_QUANT_NF4, code.data()));
    QK(qlora_q8_dynamic_map(map.data()));
    qlora_q4_parts parts{};
    parts.packed = packed.data();
    parts.qabsmax = qabs.data();
    parts.nested_absmax = nested.data();
    parts.code = code.data();
    parts.nested_code = map.data();
    parts.nested_offset = 0.02f;
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_tensor_t host = nullptr, dev = nullptr;
    QK(qlora_q4_from_parts(ctx, N, K, &p, QLORA_DTYPE_BF16, &parts, &host));
    QK(qlora_q4_to_device(ctx, host, &dev));
    qlora_q4_free(host);
    return Q4(dev);
}

int64_t storage_bytes(qlora_q4_tensor_t t) {
    qlora_q4_info i{};
    QK(qlora_q4_get_info(t, &i));
    return i.storage_bytes;
}

struct Shape {
    int64_t K, N;
};

void summary(const std::string & what, double value, const char * unit, double base, const char * base_name,
             double target) {
    const double ratio = value / base;
    std::printf("SUMMARY %-44s %9.1f %-8s | %s %9.1f %-8s | ratio %.2fx (target >= %.2fx) %s\n", what.c_str(), value,
                unit, base_name, base, unit, ratio, target, ratio >= target ? "MET" : "MISSED");
}

} // namespace

int main(int argc, char ** argv) {
    bool quick = false, dequant = true;
    std::vector<int64_t> only_ms;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--min-time") && i + 1 < argc) g_min_time = std::atof(argv[++i]);
        else if (!std::strcmp(argv[i], "--quick")) quick = true;
        else if (!std::strcmp(argv[i], "--no-dequant")) dequant = false;
        else if (!std::strcmp(argv[i], "--ms") && i + 1 < argc) {
            for (char * p = argv[++i]; *p;) {
                char * end = nullptr;
                const long long m = std::strtoll(p, &end, 10);
                if (end == p || m < 1) {
                    std::fprintf(stderr, "--ms takes a comma-separated list of positive integers, got '%s'\n", argv[i]);
                    return 2;
                }
                only_ms.push_back(m);
                p = *end == ',' ? end + 1 : end;
            }
        } else {
            std::fprintf(stderr, "usage: %s [--min-time SECONDS] [--quick] [--ms 1,4,...] [--no-dequant]\n", argv[0]);
            return 2;
        }
    }
    if (quick) g_rounds = 1;
    qlora_context_params cp = qlora_context_default_params();
    cp.backend = QLORA_BACKEND_CUDA;
    qlora_context_t raw = nullptr;
    if (qlora_context_create(&cp, &raw) != QLORA_OK) {
        std::printf("SKIPPED: no CUDA context: %s\n", qlora_last_error());
        return 0;
    }
    Ctx ctx(raw);
    qlora::cuda::CudaState & st = qlora::cuda::state_of(*ctx);
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    std::printf("device: %s (sm_%d%d, %d SMs, L2 %lld MB), driver %d, runtime %d\n\n", st.name.c_str(), st.cc_major,
                st.cc_minor, st.sm_count, static_cast<long long>(st.l2_bytes >> 20), driver, runtime);

    std::vector<Shape> shapes = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
    if (quick) shapes = {{256, 384}};
    const int64_t ring_bytes = quick ? (int64_t(8) << 20) : std::max<int64_t>(4 * st.l2_bytes, int64_t(256) << 20);

    // ---- dequantize vs copy -------------------------------------------------------------
    if (dequant) {
        std::printf("## Dequantize (NF4 + double quant, blocksize 64) vs a device-to-device copy of the output\n\n");
        std::printf("GB/s = (bytes read + bytes written) / time; the copy reads and writes the output's size.\n\n");
        std::printf("|     K |     N | out  | dequant GB/s | copy GB/s | ratio |\n|------:|------:|------|-------------:|----------:|------:|\n");
        for (const Shape & s : shapes) {
            Q4 w = random_weight(ctx.get(), s.N, s.K, 1);
            const int64_t n = s.N * s.K, sb = storage_bytes(w.get());
            for (qlora_dtype dt : {QLORA_DTYPE_BF16, QLORA_DTYPE_F32}) {
                const size_t out_bytes = static_cast<size_t>(n) * qlora_dtype_size(dt);
                Dev out(out_bytes), copy_src(out_bytes);
                qlora_view ov = dview(out.p, dt, s.N, s.K);
                auto [td, tc] = time_pair([&] { QK(qlora_q4_dequantize(ctx.get(), w.get(), &ov)); },
                                          [&] { CK(cudaMemcpyAsync(out.p, copy_src.p, out_bytes, cudaMemcpyDeviceToDevice, 0)); });
                const double dq_gbs = static_cast<double>(sb + static_cast<int64_t>(out_bytes)) / td / 1e9;
                const double cp_gbs = 2.0 * static_cast<double>(out_bytes) / tc / 1e9;
                const char * dn = dt == QLORA_DTYPE_BF16 ? "bf16" : "f32";
                std::printf("| %5lld | %5lld | %-4s | %12.1f | %9.1f | %5.2f |\n", static_cast<long long>(s.K),
                            static_cast<long long>(s.N), dn, dq_gbs, cp_gbs, dq_gbs / cp_gbs);
                summary("dequantize->" + std::string(dn) + " K=" + std::to_string(s.K) + " N=" + std::to_string(s.N), dq_gbs,
                        "GB/s", cp_gbs, "copy", 0.8);
            }
        }
        std::printf("\n");
    }

    // ---- copy bandwidth for the gemv ratio ---------------------------------------------------
    const size_t big = static_cast<size_t>(ring_bytes);
    Dev ca(big), cb(big);
    const double t_copy = time_op([&] { CK(cudaMemcpyAsync(ca.p, cb.p, big, cudaMemcpyDeviceToDevice, 0)); });
    const double copy_gbs = 2.0 * static_cast<double>(big) / t_copy / 1e9;

    // ---- matmul: every path vs dense cuBLAS bf16 ---------------------------------------------
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "cublasCreate failed\n");
        return 2;
    }
    using qlora::cuda::MatmulPath;
    const char * path_names[] = {"gemv", "fused", "cublas"};
    std::printf("## 4-bit matmul vs cuBLAS dense bf16 GEMM (bf16 x and y, fp32 accumulation)\n\n");
    std::printf("TFLOP/s = 2 M N K / time. 'ratio' = dense time / ours. 'auto' is the path qlora_q4_matmul picks.\n");
    std::printf("For M <= 8 also: weight GB/s = stored 4-bit bytes / time over a ring of %lld MB of weight copies "
                "(beyond L2), vs the copy bandwidth %.1f GB/s.\n\n", static_cast<long long>(ring_bytes >> 20), copy_gbs);
    std::printf("| op  |     K |     N |   M | path   | ours TFLOP/s | dense TFLOP/s | ratio | weight GB/s | vs copy |\n");
    std::printf("|-----|------:|------:|----:|--------|-------------:|--------------:|------:|------------:|--------:|\n");
    const std::vector<int64_t> Ms = !only_ms.empty() ? only_ms
                                    : quick           ? std::vector<int64_t>{1, 16, 64}
                                                      : std::vector<int64_t>{1, 4, 8, 16, 64, 512};
    for (const Shape & s : shapes) {
        const int64_t sb = [&] {
            Q4 t = random_weight(ctx.get(), s.N, s.K, 7);
            return storage_bytes(t.get());
        }();
        const int64_t copies = std::max<int64_t>(2, ring_bytes / sb + 1);
        std::vector<Q4> ring;
        for (int64_t i = 0; i < copies; ++i) ring.push_back(random_weight(ctx.get(), s.N, s.K, static_cast<uint32_t>(i + 1)));
        Dev wdense(static_cast<size_t>(s.N * s.K) * 2, 0x3c);
        for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD}) {
            const bool fwd = op == QLORA_MATMUL_FORWARD;
            const int64_t in = fwd ? s.K : s.N, out = fwd ? s.N : s.K;
            for (int64_t M : Ms) {
                Dev x(static_cast<size_t>(M * in) * 2, 0x3c), y(static_cast<size_t>(M * out) * 2), yd(static_cast<size_t>(M * out) * 2);
                qlora_view xv = dview(x.p, QLORA_DTYPE_BF16, M, in), yv = dview(y.p, QLORA_DTYPE_BF16, M, out);
                qlora_matmul_params mp = qlora_matmul_default_params();
                mp.op = op;
                const float one = 1.0f, zero = 0.0f;
                auto dense = [&] {
                    cublasStatus_t r;
                    if (fwd)
                        r = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(s.N), static_cast<int>(M),
                                         static_cast<int>(s.K), &one, wdense.p, CUDA_R_16BF, static_cast<int>(s.K), x.p,
                                         CUDA_R_16BF, static_cast<int>(s.K), &zero, yd.p, CUDA_R_16BF,
                                         static_cast<int>(s.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                    else
                        r = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(s.K), static_cast<int>(M),
                                         static_cast<int>(s.N), &one, wdense.p, CUDA_R_16BF, static_cast<int>(s.K), x.p,
                                         CUDA_R_16BF, static_cast<int>(s.N), &zero, yd.p, CUDA_R_16BF,
                                         static_cast<int>(s.K), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
                    if (r != CUBLAS_STATUS_SUCCESS) {
                        std::fprintf(stderr, "cublasGemmEx: %s\n", qlora::cuda::cublas_status_name(r));
                        std::exit(2);
                    }
                };
                const double flop = 2.0 * static_cast<double>(M) * static_cast<double>(s.N) * static_cast<double>(s.K);
                for (int p = -1; p < 3; ++p) {
                    const MatmulPath path = static_cast<MatmulPath>(p);
                    if (path == MatmulPath::Gemv && M > 8) continue;
                    st.matmul_path = path;
                    size_t i = 0;
                    // M <= 8 is bandwidth-bound: rotate through the ring so that W comes from DRAM
                    const bool rotate = M <= 8;
                    auto ours = [&] {
                        QK(qlora_q4_matmul(ctx.get(), &xv, ring[rotate ? i : 0].get(), &yv, &mp));
                        i = (i + 1) % ring.size();
                    };
                    auto [tq, td] = time_pair(ours, dense);
                    st.matmul_path = MatmulPath::Auto;
                    std::string name = p < 0 ? "auto" : path_names[p];
                    if (p < 0) {
                        qlora::MatmulArgs a{};
                        a.op = op;
                        a.M = M;
                        a.N = s.N;
                        a.K = s.K;
                        a.ldx = in;
                        a.ldy = out;
                        name = std::string("auto:") + path_names[static_cast<int>(qlora::cuda::matmul_path(st, a))];
                    }
                    std::printf("| %s | %5lld | %5lld | %3lld | %-6s | %12.2f | %13.2f | %5.2f |", fwd ? "fwd" : "bwd",
                                static_cast<long long>(s.K), static_cast<long long>(s.N), static_cast<long long>(M),
                                name.c_str(), flop / tq / 1e12, flop / td / 1e12, td / tq);
                    if (rotate) {
                        const double gbs = static_cast<double>(sb) / tq / 1e9;
                        std::printf(" %11.1f | %6.2fx |\n", gbs, gbs / copy_gbs);
                        if (p < 0)
                            summary(std::string("gemv ") + (fwd ? "fwd" : "bwd") + " M=" + std::to_string(M) + " K=" +
                                        std::to_string(s.K) + " N=" + std::to_string(s.N),
                                    gbs, "GB/s", copy_gbs, "copy", 0.7);
                    } else {
                        std::printf(" %11s | %7s |\n", "", "");
                        if (p < 0 && M >= 512)
                            summary(std::string("matmul ") + (fwd ? "fwd" : "bwd") + " M=" + std::to_string(M) + " K=" +
                                        std::to_string(s.K) + " N=" + std::to_string(s.N),
                                    flop / tq / 1e12, "TFLOP/s", flop / td / 1e12, "cuBLAS", 0.85);
                    }
                }
            }
        }
    }
    cublasDestroy(h);
    std::printf("\n");
    return 0;
}
