#include "core/context.hpp"

#include "core/cpu_features.hpp"
#include "core/error.hpp"

#include <algorithm>

#if QLORA_CUDA
#include "cuda/cuda_ops.hpp"
#endif

namespace qlora {
qlora_context & checked(qlora_context_t ctx) {
    QLORA_CHECK_ARG(ctx != nullptr, "context must not be NULL");
    return *ctx;
}
} // namespace qlora

extern "C" {

QLORA_API qlora_context_params qlora_context_default_params(void) {
    qlora_context_params p{};
    p.backend = QLORA_BACKEND_AUTO;
    p.max_isa = QLORA_ISA_BEST;
    p.n_threads = 0;
    p.device = 0;
    return p;
}

QLORA_API qlora_status qlora_context_create(const qlora_context_params * params, qlora_context_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(params);
        QLORA_CHECK_NOT_NULL(out);
        using namespace qlora;
        const qlora_cpu_isa have = detect_cpu_isa();
        const int32_t isa_raw = raw_enum(params->max_isa);
        qlora_cpu_isa isa = have;
        switch (isa_raw) {
            case QLORA_ISA_BEST: break;
            case QLORA_ISA_SCALAR: case QLORA_ISA_AVX2: case QLORA_ISA_AVX512: case QLORA_ISA_AVX512_BF16:
            case QLORA_ISA_AMX_BF16:
                isa = static_cast<qlora_cpu_isa>(isa_raw);
                if (isa > have)
                    fail(QLORA_ERROR_UNSUPPORTED, "ISA %s requested but this CPU supports at most %s",
                         cpu_isa_name(isa), cpu_isa_name(have));
                break;
            default: fail(QLORA_ERROR_INVALID_ARGUMENT, "unknown max_isa value %d", isa_raw);
        }
        QLORA_CHECK_ARG(params->n_threads >= 0 && params->n_threads <= 1024,
                        "n_threads must be in [0, 1024], got %d", params->n_threads);
        auto ctx = std::make_unique<qlora_context>();
        const int32_t backend = raw_enum(params->backend);
        switch (backend) {
            case QLORA_BACKEND_AUTO:
            case QLORA_BACKEND_CPU:
                ctx->backend = QLORA_BACKEND_CPU;
                ctx->isa = isa;
                break;
            case QLORA_BACKEND_REF:
                ctx->backend = QLORA_BACKEND_REF;
                ctx->isa = QLORA_ISA_SCALAR;
                break;
            case QLORA_BACKEND_CUDA:
#if QLORA_CUDA
                cuda::init_context(*ctx, params->device);
                ctx->backend = QLORA_BACKEND_CUDA;
                ctx->isa = isa; // host-side helpers may still use the CPU kernels
                break;
#else
                fail(QLORA_ERROR_UNSUPPORTED, "the CUDA backend is not part of this build (configure with -DQLORA_CUDA=ON)");
#endif
            default: fail(QLORA_ERROR_INVALID_ARGUMENT, "unknown backend value %d", backend);
        }
        const int n = params->n_threads == 0 ? hardware_threads() : params->n_threads;
        ctx->pool = std::make_unique<ThreadPool>(ctx->backend == QLORA_BACKEND_REF ? 1 : n);
        ctx->device = params->device;
        *out = ctx.release();
    });
}

QLORA_API void qlora_context_free(qlora_context_t ctx) { delete ctx; }

QLORA_API qlora_status qlora_context_get_info(qlora_context_t ctx, qlora_context_info * out) {
    return QLORA_GUARD({
        auto & c = qlora::checked(ctx);
        QLORA_CHECK_NOT_NULL(out);
        qlora_context_info info{};
        info.backend = c.backend;
        info.isa = c.isa;
        info.n_threads = c.pool->size();
        info.device = c.device;
        *out = info;
    });
}

QLORA_API qlora_status qlora_context_get_stats(qlora_context_t ctx, qlora_context_stats * out) {
    return QLORA_GUARD({
        auto & c = qlora::checked(ctx);
        QLORA_CHECK_NOT_NULL(out);
        qlora_context_stats s{};
        s.scratch_bytes = c.scratch.bytes();
        s.scratch_peak_bytes = c.scratch.peak();
#if QLORA_CUDA
        if (c.cuda) { // device scratch counts too
            s.scratch_bytes += qlora::cuda::scratch_bytes(c);
            s.scratch_peak_bytes += qlora::cuda::scratch_peak(c);
        }
#endif
        *out = s;
    });
}

QLORA_API qlora_status qlora_context_reset_stats(qlora_context_t ctx) {
    return QLORA_GUARD({
        auto & c = qlora::checked(ctx);
        c.scratch.release();
#if QLORA_CUDA
        if (c.cuda) qlora::cuda::release_scratch(c);
#endif
    });
}

} // extern "C"
