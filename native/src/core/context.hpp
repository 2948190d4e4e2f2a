// The object behind qlora_context_t: resolved backend, CPU ISA and thread pool.
#pragma once

#include "qlora.h"
#include "core/scratch.hpp"
#include "core/thread_pool.hpp"

#include <memory>

namespace qlora::cuda {
struct CudaState; // src/cuda/cuda_state.hpp
}

struct qlora_context {
    qlora_backend backend = QLORA_BACKEND_CPU; // resolved, never AUTO
    qlora_cpu_isa isa = QLORA_ISA_SCALAR;      // what CPU kernels may use
    int32_t       device = 0;
    std::unique_ptr<qlora::ThreadPool> pool;
    qlora::Scratch scratch; // per-thread tiles of the kernels (qlora_context_get_stats)
    std::shared_ptr<qlora::cuda::CudaState> cuda; // CUDA contexts: stream, cuBLAS, device scratch

    qlora::ThreadPool & threads() { return *pool; }
};

namespace qlora {
// Throws INVALID_ARGUMENT for a NULL context.
qlora_context & checked(qlora_context_t ctx);
} // namespace qlora
