// C ABI of 4-bit tensors and 8-bit blockwise quantization.
#include "core/context.hpp"
#include "core/error.hpp"
#include "quant/kernels.hpp"
#include "quant/q4_tensor.hpp"
#include "quant/tables.hpp"
#include "core/view.hpp"

#include <cmath>
#include <cstring>
#include <memory>

#if QLORA_CUDA
#include "cuda/cuda_ops.hpp"
#endif

namespace qlora {

qlora_q4_tensor & checked(qlora_q4_tensor_t t) {
    QLORA_CHECK_ARG(t != nullptr, "tensor must not be NULL");
    return *t;
}

void check_blocksize(int32_t blocksize, const char * name) {
    QLORA_CHECK_ARG(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
                    "%s must be a power of two in [32, 4096], got %d", name, blocksize);
}

namespace {

// Takes the enum's bytes, not its value: a caller across the C ABI can pass
// any int, and loading an out-of-range value as the C++ enum type is UB.
void check_quant_type(const qlora_quant_type * type) {
    const int32_t v = raw_enum(*type);
    QLORA_CHECK_ARG(v == QLORA_QUANT_NF4 || v == QLORA_QUANT_FP4 || v == QLORA_QUANT_INT4,
                    "quant_type must be NF4 (0), FP4 (1) or INT4 (2), got %d", static_cast<int>(v));
}

void check_quant_params(const qlora_quant_params * p) {
    QLORA_CHECK_NOT_NULL(p);
    check_quant_type(&p->quant_type);
    check_blocksize(p->blocksize, "blocksize");
    if (p->double_quant) check_blocksize(p->nested_blocksize, "nested_blocksize");
}

bool is_ref(const qlora_context & c) { return c.backend == QLORA_BACKEND_REF; }
bool is_cuda(const qlora_context & c) { return c.backend == QLORA_BACKEND_CUDA; }

// The CPU backends compute on host tensors only.
void check_host_tensor(const qlora_q4_tensor & t) {
    if (t.device != QLORA_DEVICE_HOST)
        fail(QLORA_ERROR_INVALID_ARGUMENT, "the tensor lives on CUDA device %d; use a QLORA_BACKEND_CUDA context for "
             "it, or copy it to the host first (qlora_q4_to_host)", t.device);
}

int64_t find_nonfinite(qlora_context & c, const void * x, qlora_dtype dtype, int64_t n) {
    return is_ref(c) ? ref::find_nonfinite(x, dtype, 0, n) : cpu::find_nonfinite(c, x, dtype, n);
}

void q8_quantize_all(qlora_context & c, const void * x, qlora_dtype dtype, int64_t n, int32_t bs, const float * code,
                     uint8_t * q, float * absmax) {
    if (is_ref(c)) ref::q8_quantize(x, dtype, n, bs, code, 0, (n + bs - 1) / bs, q, absmax);
    else cpu::q8_quantize(c, x, dtype, n, bs, code, q, absmax);
}

void check_finite_array(const float * x, int64_t n, const char * name) {
    for (int64_t i = 0; i < n; ++i)
        QLORA_CHECK_ARG(std::isfinite(x[i]), "%s[%lld] is %f; scales and tables must be finite", name,
                        static_cast<long long>(i), static_cast<double>(x[i]));
}

} // namespace

float double_quantize(qlora_context & c, float * absmax, int64_t n_blocks, int32_t nested_blocksize,
                      const float * code256, uint8_t * qabsmax, float * nested_absmax) {
    // A sequential float64 sum, rounded once: the same on every backend and thread count.
    double sum = 0.0;
    for (int64_t b = 0; b < n_blocks; ++b) sum += absmax[b];
    const float offset = static_cast<float>(sum / static_cast<double>(n_blocks));
    for (int64_t b = 0; b < n_blocks; ++b) absmax[b] -= offset;
    q8_quantize_all(c, absmax, QLORA_DTYPE_F32, n_blocks, nested_blocksize, code256, qabsmax, nested_absmax);
    return offset;
}

} // namespace qlora

using namespace qlora;

extern "C" {

QLORA_API qlora_quant_params qlora_quant_default_params(void) {
    qlora_quant_params p{};
    p.quant_type = QLORA_QUANT_NF4;
    p.blocksize = 64;
    p.double_quant = 1;
    p.nested_blocksize = 256;
    return p;
}

QLORA_API qlora_status qlora_q4_code_table(qlora_quant_type quant_type, float * out16) {
    return QLORA_GUARD({
        check_quant_type(&quant_type);
        QLORA_CHECK_NOT_NULL(out16);
        std::memcpy(out16, code_table(quant_type), 16 * sizeof(float));
    });
}

QLORA_API qlora_status qlora_q4_quantize(qlora_context_t ctx, const qlora_view * src,
                                         const qlora_quant_params * params, qlora_q4_tensor_t * out) {
    return QLORA_GUARD({
        auto & c = checked(ctx);
        const ViewInfo v =
            check_contiguous(src, "src", {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}, is_cuda(c));
        check_quant_params(params);
        QLORA_CHECK_NOT_NULL(out);
#if QLORA_CUDA
        if (is_cuda(c)) {
            *out = cuda::q4_quantize(c, v, *params).release();
            return;
        }
#endif

        auto t = std::make_unique<qlora_q4_tensor>();
        t->rows = v.rows;
        t->cols = v.cols;
        t->quant_type = params->quant_type;
        t->blocksize = params->blocksize;
        t->double_quant = params->double_quant != 0;
        t->nested_blocksize = params->double_quant ? params->nested_blocksize : 0;
        t->orig_dtype = v.dtype;
        std::memcpy(t->code, code_table(t->quant_type), sizeof(t->code));
        const Q4Shape s{t->numel(), t->blocksize, t->quant_type};

        HostArray<float> absmax(static_cast<size_t>(s.n_blocks()));
        t->packed.resize(static_cast<size_t>(t->packed_bytes()));
        int64_t bad = -1;
        if (is_ref(c)) {
            bad = ref::find_nonfinite(v.data, v.dtype, 0, v.numel());
            if (bad < 0) {
                ref::q4_absmax(v.data, v.dtype, s, 0, s.n_blocks(), absmax.data());
                ref::q4_quantize(v.data, v.dtype, s, absmax.data(), 0, s.n_blocks(), t->packed.data());
            }
        } else if (!cpu::q4_quantize(c, v.data, v.dtype, s, absmax.data(), t->packed.data())) {
            // the fused kernel saw a NaN/Inf (its output is discarded): find the first one
            bad = cpu::find_nonfinite(c, v.data, v.dtype, v.numel());
        }
        QLORA_CHECK_ARG(bad < 0, "src[%lld, %lld] is not finite (NaN or Inf); cannot quantize",
                        static_cast<long long>(bad / v.cols), static_cast<long long>(bad % v.cols));
        if (t->double_quant) {
            std::memcpy(t->nested_code, signed_dynamic_map(), sizeof(t->nested_code));
            t->qabsmax.resize(static_cast<size_t>(s.n_blocks()));
            t->nested_absmax.resize(static_cast<size_t>(t->n_nested_blocks()));
            t->nested_offset = double_quantize(c, absmax.data(), s.n_blocks(), t->nested_blocksize, t->nested_code,
                                               t->qabsmax.data(), t->nested_absmax.data());
        } else {
            t->absmax = std::move(absmax);
        }
        *out = t.release();
    });
}

QLORA_API qlora_status qlora_q4_dequantize(qlora_context_t ctx, qlora_q4_tensor_t tensor, const qlora_view * dst) {
    return QLORA_GUARD({
        auto & c = checked(ctx);
        const auto & t = checked(tensor);
        const ViewInfo v =
            check_contiguous(dst, "dst", {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}, is_cuda(c));
        QLORA_CHECK_ARG(v.numel() == t.numel(), "dst has shape [%lld, %lld] but the tensor is [%lld, %lld]",
                        static_cast<long long>(v.rows), static_cast<long long>(v.cols),
                        static_cast<long long>(t.rows), static_cast<long long>(t.cols));
#if QLORA_CUDA
        if (is_cuda(c)) {
            cuda::q4_dequantize(c, t, v);
            return;
        }
#endif
        check_host_tensor(t);
        if (is_ref(c)) {
            const Q4Shape s{t.numel(), t.blocksize, t.quant_type};
            HostArray<float> scales(static_cast<size_t>(s.n_blocks()));
            for (int64_t b = 0; b < s.n_blocks(); ++b) scales[static_cast<size_t>(b)] = t.block_scale(b);
            ref::q4_dequantize(t.packed.data(), t.code, scales.data(), s, 0, s.n_blocks(), v.data, v.dtype);
        } else {
            cpu::q4_dequantize(c, t, v.data, v.dtype);
        }
    });
}

QLORA_API qlora_status qlora_q4_from_parts(qlora_context_t ctx, int64_t rows, int64_t cols,
                                           const qlora_quant_params * params, qlora_dtype orig_dtype,
                                           const qlora_q4_parts * parts, qlora_q4_tensor_t * out) {
    return QLORA_GUARD({
        checked(ctx);
        check_quant_params(params);
        QLORA_CHECK_NOT_NULL(parts);
        QLORA_CHECK_NOT_NULL(out);
        QLORA_CHECK_ARG(rows >= 1 && cols >= 1 && rows <= (INT64_C(1) << 40) / cols,
                        "shape [%lld, %lld] is invalid", static_cast<long long>(rows), static_cast<long long>(cols));
        const int32_t od = raw_enum(orig_dtype);
        QLORA_CHECK_ARG(od == QLORA_DTYPE_F32 || od == QLORA_DTYPE_F16 || od == QLORA_DTYPE_BF16,
                        "orig_dtype must be F32, F16 or BF16, got %d", od);
        QLORA_CHECK_NOT_NULL(parts->packed);
        QLORA_CHECK_NOT_NULL(parts->code);
        auto t = std::make_unique<qlora_q4_tensor>();
        t->rows = rows;
        t->cols = cols;
        t->quant_type = params->quant_type;
        t->blocksize = params->blocksize;
        t->double_quant = params->double_quant != 0;
        t->nested_blocksize = params->double_quant ? params->nested_blocksize : 0;
        t->orig_dtype = orig_dtype;
        check_finite_array(parts->code, 16, "code");
        std::memcpy(t->code, parts->code, sizeof(t->code));
        t->packed.resize(static_cast<size_t>(t->packed_bytes()));
        std::memcpy(t->packed.data(), parts->packed, t->packed.bytes());
        const int64_t nb = t->n_blocks();
        if (t->double_quant) {
            QLORA_CHECK_NOT_NULL(parts->qabsmax);
            QLORA_CHECK_NOT_NULL(parts->nested_absmax);
            QLORA_CHECK_NOT_NULL(parts->nested_code);
            QLORA_CHECK_ARG(std::isfinite(parts->nested_offset), "nested_offset is not finite");
            check_finite_array(parts->nested_absmax, t->n_nested_blocks(), "nested_absmax");
            check_finite_array(parts->nested_code, 256, "nested_code");
            t->nested_offset = parts->nested_offset;
            std::memcpy(t->nested_code, parts->nested_code, sizeof(t->nested_code));
            t->qabsmax.resize(static_cast<size_t>(nb));
            std::memcpy(t->qabsmax.data(), parts->qabsmax, t->qabsmax.bytes());
            t->nested_absmax.resize(static_cast<size_t>(t->n_nested_blocks()));
            std::memcpy(t->nested_absmax.data(), parts->nested_absmax, t->nested_absmax.bytes());
        } else {
            QLORA_CHECK_NOT_NULL(parts->absmax);
            check_finite_array(parts->absmax, nb, "absmax");
            t->absmax.resize(static_cast<size_t>(nb));
            std::memcpy(t->absmax.data(), parts->absmax, t->absmax.bytes());
        }
        *out = t.release();
    });
}

QLORA_API qlora_status qlora_q4_get_info(qlora_q4_tensor_t tensor, qlora_q4_info * out) {
    return QLORA_GUARD({
        const auto & t = checked(tensor);
        QLORA_CHECK_NOT_NULL(out);
        qlora_q4_info i{};
        i.rows = t.rows;
        i.cols = t.cols;
        i.numel = t.numel();
        i.quant_type = t.quant_type;
        i.blocksize = t.blocksize;
        i.n_blocks = t.n_blocks();
        i.double_quant = t.double_quant ? 1 : 0;
        i.nested_blocksize = t.nested_blocksize;
        i.n_nested_blocks = t.n_nested_blocks();
        i.nested_offset = t.nested_offset;
        i.orig_dtype = t.orig_dtype;
        i.device = t.device;
        i.packed_bytes = t.packed_bytes();
        i.storage_bytes = t.storage_bytes();
        *out = i;
    });
}

QLORA_API qlora_status qlora_q4_get_parts(qlora_q4_tensor_t tensor, qlora_q4_parts * out) {
    return QLORA_GUARD({
        const auto & t = checked(tensor);
        QLORA_CHECK_NOT_NULL(out);
        if (t.device != QLORA_DEVICE_HOST)
            fail(QLORA_ERROR_UNSUPPORTED, "tensor lives on device %d; copy it to the host first (qlora_q4_to_host)",
                 t.device);
        qlora_q4_parts p{};
        p.packed = t.packed.data();
        p.code = t.code;
        if (t.double_quant) {
            p.qabsmax = t.qabsmax.data();
            p.nested_absmax = t.nested_absmax.data();
            p.nested_code = t.nested_code;
            p.nested_offset = t.nested_offset;
        } else {
            p.absmax = t.absmax.data();
        }
        *out = p;
    });
}

QLORA_API void qlora_q4_free(qlora_q4_tensor_t tensor) { delete tensor; }

QLORA_API qlora_status qlora_q8_dynamic_map(float * out256) {
    return QLORA_GUARD({
        QLORA_CHECK_NOT_NULL(out256);
        std::memcpy(out256, signed_dynamic_map(), 256 * sizeof(float));
    });
}

namespace {
const float * check_code256(const qlora_view * code) {
    if (code == nullptr) return signed_dynamic_map();
    const ViewInfo v = check_contiguous(code, "code", {QLORA_DTYPE_F32});
    QLORA_CHECK_ARG(v.numel() == 256, "code must have 256 elements, got %lld", static_cast<long long>(v.numel()));
    check_finite_array(v.as<float>(), 256, "code");
    return v.as<float>();
}
} // namespace

QLORA_API qlora_status qlora_q8_quantize(qlora_context_t ctx, const qlora_view * src, int32_t blocksize,
                                         const qlora_view * code, const qlora_view * q, const qlora_view * absmax) {
    return QLORA_GUARD({
        auto & c = checked(ctx);
        const bool dev = is_cuda(c);
        const ViewInfo x = check_contiguous(src, "src", {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}, dev);
        check_blocksize(blocksize, "blocksize");
        const float * map = check_code256(code);
        const ViewInfo qv = check_contiguous(q, "q", {QLORA_DTYPE_U8}, dev);
        const ViewInfo av = check_contiguous(absmax, "absmax", {QLORA_DTYPE_F32}, dev);
        const int64_t n = x.numel(), nb = (n + blocksize - 1) / blocksize;
        QLORA_CHECK_ARG(qv.numel() == n, "q has %lld elements, src has %lld", static_cast<long long>(qv.numel()),
                        static_cast<long long>(n));
        QLORA_CHECK_ARG(av.numel() == nb, "absmax has %lld elements, expected ceil(%lld / %d) = %lld",
                        static_cast<long long>(av.numel()), static_cast<long long>(n), blocksize,
                        static_cast<long long>(nb));
#if QLORA_CUDA
        if (dev) {
            cuda::q8_quantize(c, x, blocksize, map, qv, av);
            return;
        }
#endif
        // checked before anything is written: q and absmax are the caller's
        const int64_t bad = find_nonfinite(c, x.data, x.dtype, n);
        QLORA_CHECK_ARG(bad < 0, "src[%lld] is not finite (NaN or Inf); cannot quantize", static_cast<long long>(bad));
        q8_quantize_all(c, x.data, x.dtype, n, blocksize, map, qv.as<uint8_t>(), av.as<float>());
    });
}

QLORA_API qlora_status qlora_q8_dequantize(qlora_context_t ctx, const qlora_view * q, const qlora_view * absmax,
                                           int32_t blocksize, const qlora_view * code, const qlora_view * out) {
    return QLORA_GUARD({
        auto & c = checked(ctx);
        const bool dev = is_cuda(c);
        const ViewInfo qv = check_contiguous(q, "q", {QLORA_DTYPE_U8}, dev);
        const ViewInfo av = check_contiguous(absmax, "absmax", {QLORA_DTYPE_F32}, dev);
        check_blocksize(blocksize, "blocksize");
        const float * map = check_code256(code);
        const ViewInfo ov = check_contiguous(out, "out", {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}, dev);
        const int64_t n = qv.numel(), nb = (n + blocksize - 1) / blocksize;
        QLORA_CHECK_ARG(ov.numel() == n, "out has %lld elements, q has %lld", static_cast<long long>(ov.numel()),
                        static_cast<long long>(n));
        QLORA_CHECK_ARG(av.numel() == nb, "absmax has %lld elements, expected ceil(%lld / %d) = %lld",
                        static_cast<long long>(av.numel()), static_cast<long long>(n), blocksize,
                        static_cast<long long>(nb));
#if QLORA_CUDA
        if (dev) {
            cuda::q8_dequantize(c, qv, av, blocksize, map, ov);
            return;
        }
#endif
        if (is_ref(c)) ref::q8_dequantize(qv.as<uint8_t>(), av.as<float>(), n, blocksize, map, 0, nb, ov.data, ov.dtype);
        else cpu::q8_dequantize(c, qv.as<uint8_t>(), av.as<float>(), n, blocksize, map, ov.data, ov.dtype);
    });
}

} // extern "C"
