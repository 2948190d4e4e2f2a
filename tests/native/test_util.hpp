// Helpers shared by the native tests: RAII wrappers, random data, views.
#pragma once

#include "qlora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace qtest {

struct ContextDeleter { void operator()(qlora_context_t c) const { qlora_context_free(c); } };
struct Q4Deleter { void operator()(qlora_q4_tensor_t t) const { qlora_q4_free(t); } };
using Context = std::unique_ptr<qlora_context, ContextDeleter>;
using Q4 = std::unique_ptr<qlora_q4_tensor, Q4Deleter>;

inline Context make_context(qlora_backend backend, qlora_cpu_isa isa = QLORA_ISA_BEST, int threads = 0) {
    qlora_context_params p = qlora_context_default_params();
    p.backend = backend;
    p.max_isa = isa;
    p.n_threads = threads;
    qlora_context_t c = nullptr;
    qlora_status st = qlora_context_create(&p, &c);
    EXPECT_EQ(st, QLORA_OK) << qlora_last_error();
    return Context(c);
}

// True when this build has the CUDA backend and a context on device 0 can be
// created here (a driver and a usable device exist).
inline bool cuda_available() {
#if QLORA_CUDA
    static const bool ok = [] {
        qlora_context_params p = qlora_context_default_params();
        p.backend = QLORA_BACKEND_CUDA;
        qlora_context_t c = nullptr;
        if (qlora_context_create(&p, &c) != QLORA_OK) return false;
        qlora_context_free(c);
        return true;
    }();
    return ok;
#else
    return false;
#endif
}

// Every backend/ISA combination available on this machine, ref first, then
// the CPU levels, then CUDA when a device is present (host data is staged
// through the device, so the same tests run the CUDA kernels).
struct BackendCase {
    std::string   name;
    qlora_backend backend;
    qlora_cpu_isa isa;
    int           threads;
};
inline std::vector<BackendCase> available_backends() {
    std::vector<BackendCase> out{{"ref", QLORA_BACKEND_REF, QLORA_ISA_SCALAR, 1}};
    const qlora_cpu_isa best = qlora_cpu_isa_detected();
    for (qlora_cpu_isa isa : {QLORA_ISA_SCALAR, QLORA_ISA_AVX2, QLORA_ISA_AVX512, QLORA_ISA_AVX512_BF16,
                                  QLORA_ISA_AMX_BF16}) {
        if (isa > best) break;
        for (int threads : {1, 3})
            out.push_back({std::string("cpu_") + qlora_cpu_isa_name(isa) + "_t" + std::to_string(threads),
                           QLORA_BACKEND_CPU, isa, threads});
    }
    if (cuda_available()) out.push_back({"cuda", QLORA_BACKEND_CUDA, QLORA_ISA_BEST, 1});
    return out;
}

inline qlora_view view_of(void * data, qlora_dtype dtype, int64_t rows, int64_t cols) {
    qlora_view v{};
    v.data = data;
    v.dtype = dtype;
    v.device = QLORA_DEVICE_HOST;
    v.rows = rows;
    v.cols = cols;
    v.stride = 0;
    return v;
}
template <typename T>
qlora_view view_of(std::vector<T> & v, qlora_dtype dtype, int64_t rows, int64_t cols) {
    return view_of(static_cast<void *>(v.data()), dtype, rows, cols);
}

enum class Dist { Normal, StudentT, Uniform };
inline const char * dist_name(Dist d) {
    return d == Dist::Normal ? "normal" : d == Dist::StudentT ? "student_t3" : "uniform";
}
inline std::vector<float> random_values(size_t n, Dist d, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::student_t_distribution<float> student(3.0f);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> x(n);
    for (auto & v : x) v = d == Dist::Normal ? normal(rng) : d == Dist::StudentT ? student(rng) : uniform(rng);
    return x;
}

} // namespace qtest
