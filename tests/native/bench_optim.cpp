// AdamW step benchmarks: unpaged vs paged (budgets of 100%, 50% and 10% of
// the state), 32-bit vs 8-bit states, and the step's memory bandwidth next to
// a STREAM-triad baseline measured in the same benchmark. Every figure that
// is a ratio compares two measurements taken back to back in one process.
#include "core/context.hpp"
#include "optim/adamw.hpp"
#include "optim/adamw_kernels.hpp"
#include "qlora.h"
#include "test_pager_util.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int64_t kParams = INT64_C(16) << 20; // 16 Mi parameters: 128 MiB of 32-bit state
constexpr int kThreads = 2;

struct Data {
    std::vector<float> p, g, a, b, c;
    Data() : p(kParams), g(kParams), a(kParams), b(kParams, 1.0f), c(kParams, 2.0f) {
        std::mt19937 rng(1);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        for (int64_t i = 0; i < kParams; ++i) {
            p[static_cast<size_t>(i)] = nd(rng);
            g[static_cast<size_t>(i)] = nd(rng) * 1e-2f;
        }
    }
};

Data & data() {
    static Data d;
    return d;
}

qlora_context_t context() {
    static qlora_context_t ctx = [] {
        qlora_context_params p = qlora_context_default_params();
        p.backend = QLORA_BACKEND_CPU;
        p.n_threads = kThreads;
        qlora_context_t c = nullptr;
        if (qlora_context_create(&p, &c) != QLORA_OK) std::fprintf(stderr, "context: %s\n", qlora_last_error());
        return c;
    }();
    return ctx;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// STREAM triad a = b + s c over kParams floats on the context's threads:
// 12 bytes per element (no write-allocate counted, as STREAM). GB/s, best of `reps`.
double triad_gbs(int reps) {
    Data & d = data();
    double best = 0;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        context()->threads().parallel_for(kParams, 1 << 16, [&](int64_t i0, int64_t i1, int) {
            float * a = d.a.data();
            const float * b = d.b.data();
            const float * c = d.c.data();
            for (int64_t i = i0; i < i1; ++i) a[i] = b[i] + 3.0f * c[i];
        });
        benchmark::DoNotOptimize(d.a.data());
        best = std::max(best, 12.0 * static_cast<double>(kParams) / seconds_since(t0) / 1e9);
    }
    return best;
}

struct Optimizer {
    qtest::PagerPtr pager;
    qtest::AdamwPtr opt;
    int64_t state_bytes = 0;
};

Optimizer make(qlora_optim_state state, int percent, const std::string & spill_dir) {
    qlora_adamw_params hp = qlora_adamw_default_params();
    hp.state = state;
    hp.max_grad_norm = 1.0f;
    Optimizer o;
    if (percent > 0) {
        // The paged layout pads pages: size the budget from the paged state.
        qlora_pager_params pp = qlora_pager_default_params();
        pp.spill_dir = spill_dir.c_str();
        qlora_pager_t probe = nullptr;
        qlora_pager_create(&pp, &probe);
        qlora_adamw_t po = nullptr;
        qlora_adamw_create(&hp, probe, &po);
        qlora_adamw_add_buffer(po, kParams, nullptr);
        qlora_adamw_info info{};
        qlora_adamw_get_info(po, &info);
        qlora_adamw_free(po);
        qlora_pager_free(probe);
        pp.budget_bytes = std::max<int64_t>(pp.page_bytes, info.state_bytes * percent / 100);
        qlora_pager_t pg = nullptr;
        if (qlora_pager_create(&pp, &pg) != QLORA_OK) std::fprintf(stderr, "pager: %s\n", qlora_last_error());
        o.pager.reset(pg);
    }
    qlora_adamw_t opt = nullptr;
    qlora_adamw_create(&hp, o.pager.get(), &opt);
    qlora_adamw_add_buffer(opt, kParams, nullptr);
    o.opt.reset(opt);
    qlora_adamw_info info{};
    qlora_adamw_get_info(opt, &info);
    o.state_bytes = info.state_bytes;
    return o;
}

bool step(const Optimizer & o) {
    Data & d = data();
    const qlora_view pv = {d.p.data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, kParams, 0};
    const qlora_view gv = {d.g.data(), QLORA_DTYPE_F32, QLORA_DEVICE_HOST, 1, kParams, 0};
    if (qlora_adamw_step(context(), o.opt.get(), &pv, &gv, 1, nullptr) != QLORA_OK) {
        std::fprintf(stderr, "step: %s\n", qlora_last_error());
        return false;
    }
    return true;
}

// Bytes an AdamW step moves per parameter: p read + write, g read, and the
// state read + written.
double step_bytes(const Optimizer & o) {
    return 12.0 * static_cast<double>(kParams) + 2.0 * static_cast<double>(o.state_bytes);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// args: state (0 = 32-bit, 1 = 8-bit), budget percent (0 = unpaged).
// Every iteration times, back to back, a STREAM triad, one step of an
// unpaged optimizer (the baseline) and one step of the optimizer under test,
// so that all three see the same machine load; ratios use the minima (the
// least disturbed runs) and the medians.
void BM_AdamwStep(benchmark::State & st) {
    const auto state = static_cast<qlora_optim_state>(st.range(0));
    const int percent = static_cast<int>(st.range(1));
    qtest::TempDir dir;
    const std::string spill = dir.path.string();
    Optimizer base = make(state, 0, spill);
    Optimizer o = make(state, percent, spill);
    step(base); // first touch of the states; paged: every page spilled once
    step(o);
    if (o.pager) qlora_pager_reset_stats(o.pager.get());
    std::vector<double> t_subject, t_base, gbs_triad;
    for (auto _ : st) {
        gbs_triad.push_back(triad_gbs(1));
        auto t0 = std::chrono::steady_clock::now();
        const bool ok_base = step(base);
        t_base.push_back(seconds_since(t0));
        t0 = std::chrono::steady_clock::now();
        const bool ok = step(o);
        const double s = seconds_since(t0);
        if (!ok || !ok_base) {
            st.SkipWithError("step failed");
            break;
        }
        st.SetIterationTime(s);
        t_subject.push_back(s);
    }
    if (t_subject.empty()) return;
    const double best = *std::min_element(t_subject.begin(), t_subject.end());
    const double best_base = *std::min_element(t_base.begin(), t_base.end());
    const double triad = *std::max_element(gbs_triad.begin(), gbs_triad.end());
    const double gbs = step_bytes(o) / best / 1e9;
    st.counters["state_MiB"] = static_cast<double>(o.state_bytes) / (1 << 20);
    st.counters["min_ms"] = best * 1e3;
    st.counters["GB/s"] = gbs;
    st.counters["triad_GB/s"] = triad;
    st.counters["x_triad"] = gbs / triad;
    st.counters["unpaged_min_ms"] = best_base * 1e3;
    st.counters["x_unpaged_min"] = best / best_base;
    st.counters["x_unpaged_median"] = median(t_subject) / median(t_base);
    if (o.pager) {
        qlora_pager_stats s{};
        qlora_pager_get_stats(o.pager.get(), &s);
        const double steps = static_cast<double>(t_subject.size());
        st.counters["budget_MiB"] = static_cast<double>(s.budget_bytes) / (1 << 20);
        st.counters["peak_MiB"] = static_cast<double>(s.peak_resident_bytes) / (1 << 20);
        st.counters["in_MiB/step"] = static_cast<double>(s.bytes_paged_in) / (1 << 20) / steps;
        st.counters["out_MiB/step"] = static_cast<double>(s.bytes_spilled) / (1 << 20) / steps;
    }
}
BENCHMARK(BM_AdamwStep)
    ->ArgNames({"8bit", "budget%"})
    ->Args({0, 0})->Args({0, 100})->Args({0, 50})->Args({0, 10})
    ->Args({1, 0})->Args({1, 100})->Args({1, 50})->Args({1, 10})
    ->Iterations(7)->UseManualTime()->Unit(benchmark::kMillisecond);

// State memory of 8-bit vs 32-bit AdamW for the same parameters.
void BM_AdamwStateMemory(benchmark::State & st) {
    qtest::TempDir dir;
    int64_t b32 = 0, b8 = 0;
    for (auto _ : st) {
        b32 = make(QLORA_OPTIM_STATE_F32, 0, dir.path.string()).state_bytes;
        b8 = make(QLORA_OPTIM_STATE_8BIT, 0, dir.path.string()).state_bytes;
    }
    st.counters["params_Mi"] = static_cast<double>(kParams) / (1 << 20);
    st.counters["state32_MiB"] = static_cast<double>(b32) / (1 << 20);
    st.counters["state8_MiB"] = static_cast<double>(b8) / (1 << 20);
    st.counters["bytes/param_32"] = static_cast<double>(b32) / static_cast<double>(kParams);
    st.counters["bytes/param_8"] = static_cast<double>(b8) / static_cast<double>(kParams);
    st.counters["x_8_vs_32"] = static_cast<double>(b8) / static_cast<double>(b32);
}
BENCHMARK(BM_AdamwStateMemory)->Iterations(1)->Unit(benchmark::kMillisecond);

// One thread, in cache (64 Ki elements): the kernels' compute cost per
// element for each ISA, next to the scalar oracle measured in the same run.
// args: state (0 = 32-bit, 1 = 8-bit), isa (1 = AVX2, 2 = AVX-512).
void BM_AdamwKernel(benchmark::State & st) {
    const bool eight = st.range(0) == 1;
    const auto isa = static_cast<qlora_cpu_isa>(st.range(1));
    if (qlora_cpu_isa_detected() < isa) {
        st.SkipWithError("ISA not available");
        return;
    }
    constexpr int64_t n = 1 << 16;
    std::vector<float> p(data().p.begin(), data().p.begin() + n), g(data().g.begin(), data().g.begin() + n);
    std::vector<uint8_t> state(static_cast<size_t>(n / 256 * (eight ? qlora::optim::kBlockBytes8 : qlora::optim::kBlockBytesF32)));
    qlora_adamw_params hp = qlora_adamw_default_params();
    const auto c = qlora::optim::step_consts(hp, 10, 1.0f);
    using Fn = void (*)(const qlora::optim::StepConsts &, float *, const float *, int64_t, uint8_t *);
    const Fn ref = eight ? qlora::ref::adamw8 : qlora::ref::adamw32;
    Fn fn = ref;
#if defined(QLORA_X86)
    if (isa == QLORA_ISA_AVX2) fn = eight ? qlora::cpu::adamw8_avx2 : qlora::cpu::adamw32_avx2;
    if (isa == QLORA_ISA_AVX512) fn = eight ? qlora::cpu::adamw8_avx512 : qlora::cpu::adamw32_avx512;
#endif
    auto time_of = [&](Fn f, int reps) {
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            f(c, p.data(), g.data(), n, state.data());
            best = std::min(best, seconds_since(t0));
        }
        return best;
    };
    const double ref_s = time_of(ref, 3);
    for (auto _ : st) {
        fn(c, p.data(), g.data(), n, state.data());
        benchmark::ClobberMemory();
    }
    const double s = time_of(fn, 20);
    st.counters["ns/elem"] = s / n * 1e9;
    st.counters["ref_ns/elem"] = ref_s / n * 1e9;
    st.counters["x_ref_speed"] = ref_s / s;
    st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_AdamwKernel)->ArgNames({"8bit", "isa"})->Args({0, 1})->Args({0, 2})->Args({1, 1})->Args({1, 2})
    ->Unit(benchmark::kMicrosecond);

} // namespace
