// Quantization kernels shared by the backends. Every function works on a
// range of blocks [b0, b1) so that the CPU backend can split work statically
// across threads; `ref::` is the scalar oracle, `cpu::` dispatches by ISA.
#pragma once

#include "qlora.h"

#include <cstdint>

struct qlora_context;
struct qlora_q4_tensor;

namespace qlora {

struct Q4Shape {
    int64_t          numel;
    int32_t          blocksize;
    qlora_quant_type type;
    int64_t n_blocks() const { return (numel + blocksize - 1) / blocksize; }
};

namespace ref {
// absmax[b] = max |x| over block b, for b in [b0, b1). x has `dtype` (F32/F16/BF16).
void q4_absmax(const void * x, qlora_dtype dtype, const Q4Shape & s, int64_t b0, int64_t b1, float * absmax);
// Codes of blocks [b0, b1) from their fp32 absmax, packed two per byte.
void q4_quantize(const void * x, qlora_dtype dtype, const Q4Shape & s, const float * absmax, int64_t b0, int64_t b1,
                 uint8_t * packed);
// out = code[q] * scales[b - b0] for blocks [b0, b1), converted to `dtype`
// (scales holds the fp32 scales of just those blocks).
void q4_dequantize(const uint8_t * packed, const float * code16, const float * scales, const Q4Shape & s, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype);
// 8-bit blockwise: absmax and codes of blocks [b0, b1) of x[n] (F32/F16/BF16).
void q8_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t blocksize, const float * code256, int64_t b0,
                 int64_t b1, uint8_t * q, float * absmax);
// out = code256[q] * absmax[b] for blocks [b0, b1), converted to `dtype`.
void q8_dequantize(const uint8_t * q, const float * absmax, int64_t n, int32_t blocksize, const float * code256,
                   int64_t b0, int64_t b1, void * out, qlora_dtype dtype);
// Decoded fp32 scales of blocks [b0, b1) of a double-quantized tensor, into
// scales[b - b0]: nested_code[q] * nested_absmax[b / nbs], then + offset.
void dq_scales(const uint8_t * qabsmax, const float * nested_absmax, int32_t nested_blocksize,
               const float * nested_code, float offset, int64_t b0, int64_t b1, float * scales);
// Index of the first NaN or Inf in x[i0, i1), or -1.
int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1);
} // namespace ref

// bitsandbytes' compress_statistics on the fp32 block scales of a tensor:
// returns offset = mean(absmax) and codes absmax - offset (computed in place,
// so `absmax` is overwritten) 8-bit blockwise with `code256` into qabsmax
// [n_blocks] and nested_absmax [ceil(n_blocks / nested_blocksize)]. Runs on
// the context's backend; the result is the same on every backend.
float double_quantize(qlora_context & ctx, float * absmax, int64_t n_blocks, int32_t nested_blocksize,
                      const float * code256, uint8_t * qabsmax, float * nested_absmax);

} // namespace qlora

namespace qlora::cpu {
// The CPU backend: SIMD by the context's ISA, blocks split across the
// context's threads. Same results as ref:: bit for bit.

// Fused absmax + codes (reads x once). Returns false if x holds a NaN or Inf
// (absmax/packed then hold garbage; the caller reports the first bad index).
bool q4_quantize(qlora_context & ctx, const void * x, qlora_dtype dtype, const Q4Shape & s, float * absmax,
                 uint8_t * packed);
// Whole-tensor dequantization into `out` (numel elements of `dtype`).
void q4_dequantize(qlora_context & ctx, const qlora_q4_tensor & t, void * out, qlora_dtype dtype);
// x must be finite (check with find_nonfinite first).
void q8_quantize(qlora_context & ctx, const void * x, qlora_dtype dtype, int64_t n, int32_t blocksize,
                 const float * code256, uint8_t * q, float * absmax);
void q8_dequantize(qlora_context & ctx, const uint8_t * q, const float * absmax, int64_t n, int32_t blocksize,
                   const float * code256, void * out, qlora_dtype dtype);
int64_t find_nonfinite(qlora_context & ctx, const void * x, qlora_dtype dtype, int64_t n);
} // namespace qlora::cpu
