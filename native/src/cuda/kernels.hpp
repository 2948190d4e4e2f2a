// The CUDA kernels' launch functions: plain pointers and small structs passed
// by value, so that the host code (C++20) and the .cu files (nvcc, C++17)
// share nothing else. Every launch goes to `stream` and returns at once;
// launch errors are reported by check_launch() (cuda_common.hpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "qlora.h"

namespace qlora::cuda {

// A 4-bit tensor's parts in device memory (bitsandbytes layout, FORMATS.md).
// `packed` is readable up to 16 bytes past (numel + 1) / 2 (zero padding).
struct Q4Dev {
    const uint8_t *  packed;
    const float *    absmax;        // no DQ
    const uint8_t *  qabsmax;       // DQ
    const float *    nested_absmax; // DQ
    int64_t          rows, cols, numel;
    int32_t          blocksize, log2b;
    int32_t          nested_blocksize, nested_log2;
    int32_t          dq;
    float            nested_offset;
};

struct Code16 {
    float v[16];
};
struct Code256 {
    float v[256];
};
// The literals of bitsandbytes' dQuantizeNF4 / dQuantizeFP4 (quant/tables.hpp).
struct Thresholds {
    float nf4[15];
    float fp4[7];
};

// Fused absmax + 4-bit codes of x[0, n) (F32/F16/BF16, contiguous), blocks of
// `bs`; *first_bad (initialise to ~0) gets the smallest index of a NaN/Inf.
void launch_q4_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t bs, qlora_quant_type type,
                        const Thresholds & th, float * absmax, uint8_t * packed, unsigned long long * first_bad,
                        int sm_count, cudaStream_t stream);

// 8-bit blockwise quantization of (x[i] - subtract) with `code`; subtract is
// the nested offset of double quantization (0 otherwise; x is then F32).
void launch_q8_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t bs, float subtract, const Code256 & code,
                        uint8_t * q, float * absmax, unsigned long long * first_bad, int sm_count, cudaStream_t stream);

void launch_q8_dequantize(const uint8_t * q, const float * absmax, int64_t n, int32_t bs, const Code256 & code,
                          void * out, qlora_dtype dtype, int sm_count, cudaStream_t stream);

// Elements [e0, e0 + count) of W (flattened row-major) into out[0, count).
void launch_q4_dequantize(const Q4Dev & w, const Code16 & code, const Code256 & ncode, int64_t e0, int64_t count,
                          void * out, qlora_dtype dtype, int sm_count, cudaStream_t stream);

// ---- matmul (quant/matmul.hpp has the semantics) --------------------------------

struct MatmulDev {
    qlora_matmul_op op;
    int64_t         M, N, K;
    const void *    x;
    qlora_dtype     x_dtype;
    int64_t         ldx;
    void *          y;
    qlora_dtype     y_dtype;
    int64_t         ldy;
    float           alpha, beta;
};

// M <= 8. `partial` is scratch of gemv_partial_floats() floats (backward).
int64_t gemv_partial_floats(const MatmulDev & a, int sm_count);
void launch_gemv(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode, float * partial,
                 int sm_count, cudaStream_t stream);

// Any M: the tiled SIMT kernel.
void launch_fused_matmul(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode,
                         cudaStream_t stream);

// y = alpha * acc + beta * y over [M, cols] (acc fp32, contiguous [M, cols]).
void launch_epilogue(const float * acc, const MatmulDev & a, int64_t cols, int sm_count, cudaStream_t stream);

// y = beta * y over [rows, cols] with row stride ldy (beta 0: y = 0, NaN not kept).
void launch_scale(void * y, qlora_dtype dtype, int64_t rows, int64_t cols, int64_t ldy, float beta, int sm_count,
                  cudaStream_t stream);

// ---- AdamW (optim/adamw_kernels.hpp has the layout and the order of operations) ----

struct AdamwConsts {
    float   beta1, beta2, omb1, omb2, step_size, eps_c2, decay;
    int32_t apply_decay;
    float   gscale;
};

// n elements of p / g, states from `state` (whole blocks of 256).
void launch_adamw32(const AdamwConsts & c, float * p, const float * g, int64_t n, uint8_t * state, int sm_count,
                    cudaStream_t stream);
void launch_adamw8(const AdamwConsts & c, float * p, const float * g, int64_t n, uint8_t * state, const Code256 & map1,
                   const Code256 & map2, cudaStream_t stream);

// partial[c] = ref::sumsq(g + c * 4096, min(4096, n - c * 4096)) for every chunk c.
void launch_sumsq_chunks(const float * g, int64_t n, double * partial, cudaStream_t stream);

// *first_bad = min index of a NaN/Inf in x[0, n) (F32/F16/BF16; initialise to ~0).
void launch_find_nonfinite(const void * x, qlora_dtype dtype, int64_t n, unsigned long long * first_bad, int sm_count,
                           cudaStream_t stream);

} // namespace qlora::cuda
