// C ABI of the fused 4-bit matmul: argument checks, then the backend.
#include "core/context.hpp"
#include "core/error.hpp"
#include "core/half.hpp"
#include "core/view.hpp"
#include "quant/matmul.hpp"
#include "quant/q4_tensor.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>

#if QLORA_CUDA
#include "cuda/cuda_ops.hpp"
#endif

using namespace qlora;

namespace {

// Byte range [begin, end) a strided view touches.
void byte_range(const ViewInfo & v, uintptr_t & begin, uintptr_t & end) {
    const size_t es = qlora_dtype_size(v.dtype);
    begin = reinterpret_cast<uintptr_t>(v.data);
    end = begin + static_cast<uintptr_t>(((v.rows - 1) * v.stride + v.cols) * static_cast<int64_t>(es));
}

// alpha == 0: y = beta * y, without reading x or W (BLAS semantics).
void scale_only(const ViewInfo & y, float beta) {
    for (int64_t m = 0; m < y.rows; ++m)
        for (int64_t c = 0; c < y.cols; ++c) {
            const int64_t i = m * y.stride + c;
            if (y.dtype == QLORA_DTYPE_BF16) {
                uint16_t & h = static_cast<uint16_t *>(y.data)[i];
                h = f32_to_bf16(beta == 0.0f ? 0.0f : beta * bf16_to_f32(h));
            } else {
                float & f = static_cast<float *>(y.data)[i];
                f = beta == 0.0f ? 0.0f : beta * f;
            }
        }
}

} // namespace

extern "C" {

QLORA_API qlora_matmul_params qlora_matmul_default_params(void) {
    qlora_matmul_params p{};
    p.op = QLORA_MATMUL_FORWARD;
    p.alpha = 1.0f;
    p.beta = 0.0f;
    return p;
}

QLORA_API qlora_status qlora_q4_matmul(qlora_context_t ctx, const qlora_view * x, qlora_q4_tensor_t w,
                                       const qlora_view * y, const qlora_matmul_params * params) {
    return QLORA_GUARD({
        auto & c = checked(ctx);
        const auto & t = checked(w);
        QLORA_CHECK_NOT_NULL(params);
        // CUDA contexts also take F16 activations and device views (docs/cuda.md).
        const bool cuda = c.backend == QLORA_BACKEND_CUDA;
        const ViewInfo xv = cuda ? check_view(x, "x", {QLORA_DTYPE_F32, QLORA_DTYPE_BF16, QLORA_DTYPE_F16}, true)
                                 : check_view(x, "x", {QLORA_DTYPE_F32, QLORA_DTYPE_BF16});
        const ViewInfo yv = cuda ? check_view(y, "y", {QLORA_DTYPE_F32, QLORA_DTYPE_BF16, QLORA_DTYPE_F16}, true)
                                 : check_view(y, "y", {QLORA_DTYPE_F32, QLORA_DTYPE_BF16});
        if (!cuda && t.device != QLORA_DEVICE_HOST)
            fail(QLORA_ERROR_UNSUPPORTED, "w lives on device %d; the CPU matmul needs a host tensor", t.device);
        // Raw bytes: a caller may pass any int, and loading an out-of-range
        // value as the enum type is undefined behaviour (found by fuzzing).
        const int32_t op = raw_enum(params->op);
        QLORA_CHECK_ARG(op == QLORA_MATMUL_FORWARD || op == QLORA_MATMUL_BACKWARD,
                        "params->op must be QLORA_MATMUL_FORWARD (0) or QLORA_MATMUL_BACKWARD (1), got %d", op);
        QLORA_CHECK_ARG(std::isfinite(params->alpha), "params->alpha must be finite, got %f",
                        static_cast<double>(params->alpha));
        QLORA_CHECK_ARG(std::isfinite(params->beta), "params->beta must be finite, got %f",
                        static_cast<double>(params->beta));
        QLORA_CHECK_ARG(params->int8_x == 0 || params->int8_x == 1, "params->int8_x must be 0 or 1, got %d",
                        params->int8_x);

        const bool fwd = op == QLORA_MATMUL_FORWARD;
        const int64_t N = t.rows, K = t.cols;
        const int64_t red = fwd ? K : N, out = fwd ? N : K;
        const bool ok = xv.cols == red && yv.rows == xv.rows && yv.cols == out;
        if (!ok)
            fail(QLORA_ERROR_INVALID_ARGUMENT,
                 "%s with W [%lld, %lld] needs x [M, %lld] and y [M, %lld]; got x [%lld, %lld] and y [%lld, %lld]",
                 fwd ? "forward (y = x W^T)" : "backward (y = x W)", static_cast<long long>(N),
                 static_cast<long long>(K), static_cast<long long>(red), static_cast<long long>(out),
                 static_cast<long long>(xv.rows), static_cast<long long>(xv.cols), static_cast<long long>(yv.rows),
                 static_cast<long long>(yv.cols));
        uintptr_t xb, xe, yb, ye;
        byte_range(xv, xb, xe);
        byte_range(yv, yb, ye);
        QLORA_CHECK_ARG(xe <= yb || ye <= xb, "x and y overlap in memory (x at %p, y at %p); y must be a separate buffer",
                        xv.data, yv.data);

        MatmulArgs a{};
        a.op = fwd ? QLORA_MATMUL_FORWARD : QLORA_MATMUL_BACKWARD;
        a.M = xv.rows;
        a.N = N;
        a.K = K;
        a.x = xv.data;
        a.x_dtype = xv.dtype;
        a.ldx = xv.stride;
        a.y = yv.data;
        a.y_dtype = yv.dtype;
        a.ldy = yv.stride;
        a.alpha = params->alpha;
        a.beta = params->beta;
        a.w = &t;
        a.int8_x = params->int8_x == 1 && fwd && a.M <= 8 && K % 128 == 0 && t.blocksize >= 32;
#if QLORA_CUDA
        if (cuda) {
            cuda::q4_matmul(c, a, xv, yv);
            return;
        }
#endif
        if (params->alpha == 0.0f) {
            scale_only(yv, params->beta);
            return;
        }
        if (c.backend == QLORA_BACKEND_REF) ref::q4_matmul(a);
        else cpu::q4_matmul(c, a);
    });
}

} // extern "C"
