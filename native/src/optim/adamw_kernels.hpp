// AdamW update kernels shared by the backends. ref:: is the scalar oracle;
// the cpu:: AVX2 / AVX-512 versions give bit-identical results (same IEEE
// operations in the same order; no FMA contraction).
//
// States are stored per block of 256 elements (kBlock), in this layout:
//   F32 : float m[256], float v[256]                          (2048 bytes)
//   8BIT: uint8 qm[256], uint8 qv[256], float absmax_m, absmax_v  (520 bytes)
// A buffer's tail block holds fewer valid elements; the rest stays zero.
#pragma once

#include <cstdint>

namespace qlora::optim {

constexpr int64_t kBlock = 256;
constexpr int64_t kBlockBytesF32 = 2 * kBlock * 4;
constexpr int64_t kBlockBytes8 = 2 * kBlock + 2 * 4;
// The gradient norm is a sum of per-chunk float64 partial sums; inside a
// chunk element i goes to lane i % kNormLanes, lanes meet in a fixed tree.
constexpr int64_t kNormChunk = 4096;
constexpr int     kNormLanes = 16;

// Per-step constants, computed once in float64 and rounded to fp32.
struct StepConsts {
    float   beta1, beta2;
    float   omb1, omb2;    // 1 - beta1, 1 - beta2
    float   step_size;     // -lr * sqrt(1 - beta2^t) / (1 - beta1^t)
    float   eps_c2;        // eps * sqrt(1 - beta2^t)
    float   decay;         // 1 - lr * weight_decay
    int32_t apply_decay;   // weight_decay > 0
    float   gscale;        // gradient clipping factor (1 when not clipping)
};

// bitsandbytes' create_dynamic_map(signed=False): 256 sorted values in [0, 1].
const float * unsigned_dynamic_map();
// create_dynamic_map(signed=True) (quant/tables.hpp), for m.
const float * signed_state_map();

using Adamw32Fn = void (*)(const StepConsts &, float * p, const float * g, int64_t n, uint8_t * state);
using Adamw8Fn = void (*)(const StepConsts &, float * p, const float * g, int64_t n, uint8_t * state);
using SumSqFn = double (*)(const float * g, int64_t n);

} // namespace qlora::optim

namespace qlora::ref {
// Updates elements [0, n) of p with gradients g; `state` points at the block
// holding element 0 (blocks follow contiguously).
void adamw32(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
void adamw8(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
// Sum of squares (float64) of g[0, n), n <= kNormChunk, lane/tree order above.
double sumsq(const float * g, int64_t n);
} // namespace qlora::ref

namespace qlora::cpu {
void   adamw32_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
void   adamw8_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
double sumsq_avx2(const float * g, int64_t n);
void   adamw32_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
void   adamw8_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
double sumsq_avx512(const float * g, int64_t n);
} // namespace qlora::cpu
