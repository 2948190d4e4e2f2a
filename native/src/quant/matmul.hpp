// Fused 4-bit matmul: the resolved arguments every backend receives, and the
// backend entry points. W is [N, K] (bitsandbytes layout); FORWARD computes
// y[M,N] = alpha * x[M,K] W^T + beta * y, BACKWARD y[M,K] = alpha * x[M,N] W + beta * y.
#pragma once

#include "qlora.h"

#include <cstdint>

struct qlora_context;
struct qlora_q4_tensor;

namespace qlora {

struct MatmulArgs {
    qlora_matmul_op         op;
    int64_t                 M, N, K;     // W is [N, K]
    const void *            x;           // [M, K] forward, [M, N] backward
    qlora_dtype             x_dtype;     // F32 or BF16
    int64_t                 ldx;         // row stride of x in elements
    void *                  y;           // [M, N] forward, [M, K] backward
    qlora_dtype             y_dtype;     // F32 or BF16
    int64_t                 ldy;
    float                   alpha, beta; // alpha != 0 (alpha == 0 is handled before dispatch)
    const qlora_q4_tensor * w;
    // qlora_matmul_params.int8_x where it applies (forward, M <= 8,
    // K % 128 == 0, blocksize >= 32): see ref::q4_matmul for what it computes.
    bool                    int8_x;

    // Columns of y and length of the reduction.
    int64_t out_cols() const { return op == QLORA_MATMUL_FORWARD ? N : K; }
    int64_t red_len() const { return op == QLORA_MATMUL_FORWARD ? K : N; }
};

namespace ref {
// The scalar oracle: every weight dequantized on the fly (code * block scale
// in fp32, exactly as qlora_q4_dequantize), products and sums in float64, then
// alpha * sum + beta * y in float64, rounded once to fp32 (then to bf16 for a
// BF16 y).
//
// With a.int8_x (8-bit activations, as llama.cpp's Q8 matvec), unless x holds
// a NaN or Inf (then the exact product above):
//  - the code table becomes integers qw[i] = nearbyint(code[i] * (127 / cmax)),
//    cmax = max |code[i]| (all in fp32);
//  - each 32-element block c of an x row becomes integers
//    qx[k] = nearbyint(x[k] * (127 / amax)), amax = max |x| over the block
//    (0 for all-zero blocks), with scale xd = (amax / 127) * (cmax / 127);
//  - y = alpha * sum_c s_c * I_c + beta * y with s_c = (W's block scale of c) * xd
//    in fp32 and I_c = sum over the block of qw[code] * qx, an exact integer.
// The CPU kernel sums s_c * I_c in fp32 (8-element partial sums of I_c with
// every qw offset by +128, scaled, then added in its own order, and the
// offset's share, s_c * 128 * sum qx, taken off per row); this oracle sums in
// float64.
void q4_matmul(const MatmulArgs & a);
} // namespace ref

namespace cpu {
// SIMD by the context's ISA, threads from its pool, scratch from its arena.
void q4_matmul(qlora_context & ctx, const MatmulArgs & a);
} // namespace cpu

} // namespace qlora
