// C ABI of the CUDA backend section of qlora.h. Without -DQLORA_CUDA=ON every
// call (after its argument checks) is UNSUPPORTED.
#include "core/context.hpp"
#include "core/error.hpp"
#include "quant/q4_tensor.hpp"

#if QLORA_CUDA
#include "cuda/cuda_ops.hpp"
#endif

namespace {

#if !QLORA_CUDA
[[noreturn]] void no_cuda() {
    qlora::fail(QLORA_ERROR_UNSUPPORTED, "the CUDA backend is not part of this build (configure with -DQLORA_CUDA=ON)");
}
#endif

qlora_context & checked_cuda(qlora_context_t ctx) {
    auto & c = qlora::checked(ctx);
#if !QLORA_CUDA
    no_cuda();
#endif
    QLORA_CHECK_ARG(c.backend == QLORA_BACKEND_CUDA, "the context's backend is %s, not QLORA_BACKEND_CUDA",
                    c.backend == QLORA_BACKEND_REF ? "QLORA_BACKEND_REF" : "QLORA_BACKEND_CPU");
    return c;
}

} // namespace

extern "C" {

QLORA_API qlora_status qlora_cuda_device_count(int32_t * out) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(out);
#if QLORA_CUDA
        *out = qlora::cuda::device_count();
#else
        no_cuda();
#endif
    });
}

QLORA_API qlora_status qlora_context_set_cuda_stream(qlora_context_t ctx, void * stream) {
    return QLORA_GUARD({
        auto & c = checked_cuda(ctx);
#if QLORA_CUDA
        qlora::cuda::set_stream(c, stream);
#else
        (void)c;
        (void)stream;
#endif
    });
}

QLORA_API qlora_status qlora_context_get_cuda_stream(qlora_context_t ctx, void ** out) {
    return QLORA_GUARD({
        auto & c = checked_cuda(ctx);
        QLORA_CHECK_NOT_NULL(out);
#if QLORA_CUDA
        *out = qlora::cuda::get_stream(c);
#else
        (void)c;
#endif
    });
}

QLORA_API qlora_status qlora_context_synchronize(qlora_context_t ctx) {
    return QLORA_GUARD({
        auto & c = checked_cuda(ctx);
#if QLORA_CUDA
        qlora::cuda::synchronize(c);
#else
        (void)c;
#endif
    });
}

QLORA_API qlora_status qlora_q4_to_device(qlora_context_t ctx, qlora_q4_tensor_t tensor, qlora_q4_tensor_t * out) {
    return QLORA_GUARD({
        auto & c = checked_cuda(ctx);
        const auto & t = qlora::checked(tensor);
        QLORA_CHECK_NOT_NULL(out);
#if QLORA_CUDA
        *out = qlora::cuda::q4_to_device(c, t).release();
#else
        (void)c;
        (void)t;
#endif
    });
}

QLORA_API qlora_status qlora_q4_to_host(qlora_context_t ctx, qlora_q4_tensor_t tensor, qlora_q4_tensor_t * out) {
    return QLORA_GUARD({
        auto & c = checked_cuda(ctx);
        const auto & t = qlora::checked(tensor);
        QLORA_CHECK_NOT_NULL(out);
#if QLORA_CUDA
        *out = qlora::cuda::q4_to_host(c, t).release();
#else
        (void)c;
        (void)t;
#endif
    });
}

} // extern "C"
