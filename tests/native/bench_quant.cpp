// Quantization benchmarks: throughput next to a memcpy of the same size.
#include "qlora.h"

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

static void BM_Memcpy(benchmark::State & state) {
    const size_t n = static_cast<size_t>(state.range(0));
    std::vector<uint8_t> a(n, 1), b(n);
    for (auto _ : state) {
        std::memcpy(b.data(), a.data(), n);
        benchmark::ClobberMemory();
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(2 * n));
}
BENCHMARK(BM_Memcpy)->Arg(64 << 20)->UseRealTime();

BENCHMARK_MAIN();
