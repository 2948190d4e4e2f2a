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

// bitsandbytes' dQuantize on a sorted 256-entry map, restated for SIMD
// lookups without gathers. Its binary search visits odd entries only: at
// level L (0..6) the node after decisions j (L bits, MSB first) is
// code[(2j + 1) * 2^(7-L) - 1], and x > node sends it right (j = 2j + 1).
// It ends on the even index 2j (j < 128); the final fp32 midpoint tests
// against the neighbours give q = 2j + [x > up[j]] - [x < down[j]] with
// up[j] = (code[2j+1] + code[2j]) * 0.5f, down[j] = (code[2j-1] + code[2j]) * 0.5f
// (down[0] = -inf). Bit-identical to quantize_dynamic (tested).
struct alignas(64) SearchTables {
    float level[128]; // level[(2^L - 1) + j]: the node of level L after decisions j; [127] unused
    float up[128];
    float down[128];
};
// Tables of the signed (map 0) and unsigned (map 1) state maps.
const SearchTables & search_tables(int map);

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
// The SIMD quantizers alone, for tests: q[i] = quantize_dynamic(map, x[i]).
void   quantize_map_avx2(int map, const float * x, int64_t n, uint8_t * q);
void   quantize_map_avx512(int map, const float * x, int64_t n, uint8_t * q);
void   adamw32_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
void   adamw8_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
double sumsq_avx2(const float * g, int64_t n);
void   adamw32_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
void   adamw8_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state);
double sumsq_avx512(const float * g, int64_t n);
} // namespace qlora::cpu
