// Per-ISA quantization kernels of the CPU backend (quant_avx2.cpp,
// quant_avx512.cpp) and the tables they share. quant_cpu.cpp splits the work
// across threads, calls these on whole blocks only and runs the scalar
// reference on the one partial block a tensor may end with. Every kernel is
// bit-identical to ref:: (tests/native/test_quant.cpp checks each ISA level).
#pragma once

#include "qlora.h"

#include <cstdint>

namespace qlora::cpu {

// Tables of the vectorised dQuantize (bitsandbytes' 8-bit binary search).
//
// For a non-decreasing map c[0..255], bitsandbytes' search (pivot 127, steps
// 64..1, then a midpoint test against the bracketing entries) returns
//   r = 0                                   if k = 0
//   r = k - 1 + (x >  M[k - 1])             if k is odd
//   r = k - 1 + (x >= M[k - 1])             if k is even (k >= 2)
// where k = #{ j < 255 : c[j] < x } and M[j] = (c[j + 1] + c[j]) * 0.5f: the
// search visits a perfect binary tree over positions 0..254 whose leaves are
// the even positions, so it ends on the leaf 2 * floor(k / 2) with the odd
// neighbours (its in-order neighbours) as bracketing entries. k itself is a
// branch-free lower-bound search with steps 128..1; level l (0..7) of that
// search reads c[m * 2s + s - 1] with s = 128 >> l and m = pos >> (8 - l).
// The kernels keep the last entry below x and the last one not below it as
// they go: at the end those are c[k - 1] and c[k] (c[255] if no step went
// down), the operands of M[k - 1].
struct Q8Search {
    alignas(64) float level[8][128]; // level[l][m], 1 << l entries used
    float top;                       // c[255]
};
// Fills `out` from `code256`; false if the map is not non-decreasing (the
// derivation above needs it), in which case callers use the scalar search.
bool make_q8_search(const float * code256, Q8Search & out);

// Bucketed NF4 coder (AVX-512). [-1, 1] is cut into 32 buckets of width
// 1/16, narrower than the smallest gap between the NF4 thresholds (0.0805),
// so a bucket widened by a margin far above any fp32 rounding holds at most
// one threshold. For x in bucket j the code (#thresholds < x) is then
//   base[j] + (x > cand[j]),
// with j = trunc(clamp(x * 16 + 16, 0, 31.5)) (NaN -> bucket 0 -> code 0,
// +-inf -> the end buckets, as the scalar count gives).
struct Nf4Buckets {
    alignas(64) float   cand[32]; // the threshold in widened bucket j, or +inf
    alignas(64) int32_t base[32]; // thresholds below widened bucket j
    int most = 0;                 // most thresholds in one widened bucket (the scheme needs <= 1)
};
const Nf4Buckets & nf4_buckets();

// Where the fp32 scales of double-quantized blocks come from.
struct DqSource {
    const uint8_t * qabsmax;
    const float *   nested_absmax;
    int32_t         nested_blocksize; // power of two
    const float *   nested_code;      // 256
    const uint16_t * nested_words;    // nested_code in 16-bit halves (split_nested_code; the AVX-512 kernel)
    float           offset;
};

#if defined(QLORA_X86)
// Both namespaces have the same kernels. Block ranges [b0, b1) hold whole
// blocks only. Outputs are written with ordinary stores: on the Zen VM this
// was built on, non-temporal stores measured slower (one core filling 180 MB:
// 6.7-10 GB/s streamed, 10-28 GB/s ordinary), and the next op usually reads
// the output.
namespace avx2 {
// Fused absmax + codes; false if a block holds NaN or Inf.
bool q4_quantize(const void * x, qlora_dtype dtype, qlora_quant_type type, int32_t bs, int64_t b0, int64_t b1,
                 float * absmax, uint8_t * packed);
// scales[b - b0] is the fp32 scale of block b.
void q4_dequantize(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype);
void dq_scales(const DqSource & src, int64_t b0, int64_t b1, float * scales);
// x must be finite.
void q8_quantize(const void * x, qlora_dtype dtype, int32_t bs, const Q8Search & search, int64_t b0, int64_t b1,
                 uint8_t * q, float * absmax);
void q8_dequantize(const uint8_t * q, const float * absmax, int32_t bs, const float * code256, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype);
int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1);
} // namespace avx2

// AVX-512 F/BW/DQ/VL. With `hw_bf16` (ISA level AVX512_BF16) bf16 results are
// converted with vcvtneps2bf16, and the lanes where it differs from
// f32_to_bf16 (denormal inputs, which it flushes to zero) are redone in
// integer arithmetic; without it, integer arithmetic throughout.
namespace avx512 {
// Fused absmax + codes; false if a block holds NaN or Inf.
bool q4_quantize(const void * x, qlora_dtype dtype, qlora_quant_type type, int32_t bs, int64_t b0, int64_t b1,
                 float * absmax, uint8_t * packed);
// scales[b - b0] is the fp32 scale of block b.
void q4_dequantize(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype, bool hw_bf16);
void dq_scales(const DqSource & src, int64_t b0, int64_t b1, float * scales);
// x must be finite.
void q8_quantize(const void * x, qlora_dtype dtype, int32_t bs, const Q8Search & search, int64_t b0, int64_t b1,
                 uint8_t * q, float * absmax);
void q8_dequantize(const uint8_t * q, const float * absmax, int32_t bs, const float * code256, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype, bool hw_bf16);
int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1);
} // namespace avx512
#endif

} // namespace qlora::cpu
