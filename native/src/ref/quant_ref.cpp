// Scalar reference kernels: the oracle every other backend is tested against.
// Compiled with -ffp-contract=off so that a*b+c is never fused.
#include "core/half.hpp"
#include "quant/kernels.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <cmath>

namespace qlora::ref {

namespace {
inline float load(const void * x, qlora_dtype dtype, int64_t i) {
    switch (dtype) {
        case QLORA_DTYPE_F16: return f16_to_f32(static_cast<const uint16_t *>(x)[i]);
        case QLORA_DTYPE_BF16: return bf16_to_f32(static_cast<const uint16_t *>(x)[i]);
        default: return static_cast<const float *>(x)[i];
    }
}
inline void store(void * out, qlora_dtype dtype, int64_t i, float v) {
    switch (dtype) {
        case QLORA_DTYPE_F16: static_cast<uint16_t *>(out)[i] = f32_to_f16(v); break;
        case QLORA_DTYPE_BF16: static_cast<uint16_t *>(out)[i] = f32_to_bf16(v); break;
        default: static_cast<float *>(out)[i] = v; break;
    }
}
// 1/absmax, or 0 for an all-zero block (its codes then encode 0, not NaN).
inline float reciprocal(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }
} // namespace

void q4_absmax(const void * x, qlora_dtype dtype, const Q4Shape & s, int64_t b0, int64_t b1, float * absmax) {
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * s.blocksize, e1 = std::min(s.numel, e0 + s.blocksize);
        float m = 0.0f;
        for (int64_t i = e0; i < e1; ++i) m = std::max(m, std::fabs(load(x, dtype, i)));
        absmax[b] = m;
    }
}

void q4_quantize(const void * x, qlora_dtype dtype, const Q4Shape & s, const float * absmax, int64_t b0, int64_t b1,
                 uint8_t * packed) {
    const float * thresholds = nf4_thresholds();
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * s.blocksize, e1 = std::min(s.numel, e0 + s.blocksize);
        const float inv = reciprocal(absmax[b]);
        for (int64_t i = e0; i < e1; i += 2) {
            uint8_t q[2] = {0, 0};
            for (int64_t k = 0; k < 2 && i + k < e1; ++k) {
                const float xn = load(x, dtype, i + k) * inv;
                switch (s.type) {
                    case QLORA_QUANT_FP4: q[k] = quantize_fp4(xn); break;
                    case QLORA_QUANT_INT4: q[k] = quantize_int4(xn); break;
                    default: q[k] = quantize_nf4(thresholds, xn); break;
                }
            }
            packed[i / 2] = static_cast<uint8_t>((q[0] << 4) | q[1]);
        }
    }
}

void q4_dequantize(const uint8_t * packed, const float * code16, const float * scales, const Q4Shape & s, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype) {
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * s.blocksize, e1 = std::min(s.numel, e0 + s.blocksize);
        const float scale = scales[b - b0];
        for (int64_t i = e0; i < e1; ++i) {
            const uint8_t byte = packed[i / 2];
            const uint8_t q = (i & 1) ? (byte & 0xf) : (byte >> 4);
            store(out, dtype, i, code16[q] * scale);
        }
    }
}

void q8_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t blocksize, const float * code256, int64_t b0,
                 int64_t b1, uint8_t * q, float * absmax) {
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * blocksize, e1 = std::min(n, e0 + blocksize);
        float m = 0.0f;
        for (int64_t i = e0; i < e1; ++i) m = std::max(m, std::fabs(load(x, dtype, i)));
        absmax[b] = m;
        const float inv = reciprocal(m);
        for (int64_t i = e0; i < e1; ++i) q[i] = quantize_dynamic(code256, load(x, dtype, i) * inv);
    }
}

void q8_dequantize(const uint8_t * q, const float * absmax, int64_t n, int32_t blocksize, const float * code256,
                   int64_t b0, int64_t b1, void * out, qlora_dtype dtype) {
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * blocksize, e1 = std::min(n, e0 + blocksize);
        for (int64_t i = e0; i < e1; ++i) store(out, dtype, i, code256[q[i]] * absmax[b]);
    }
}

void dq_scales(const uint8_t * qabsmax, const float * nested_absmax, int32_t nested_blocksize,
               const float * nested_code, float offset, int64_t b0, int64_t b1, float * scales) {
    for (int64_t b = b0; b < b1; ++b) {
        const float s = nested_code[qabsmax[b]] * nested_absmax[b / nested_blocksize];
        scales[b - b0] = s + offset;
    }
}

int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
        if (!std::isfinite(load(x, dtype, i))) return i;
    return -1;
}

} // namespace qlora::ref
