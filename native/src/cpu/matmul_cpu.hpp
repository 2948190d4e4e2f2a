// Per-ISA entry points of the CPU fused 4-bit matmul (see matmul_impl.hpp).
#pragma once

#include "quant/matmul.hpp"

namespace qlora::cpu {
void q4_matmul_portable(qlora_context & ctx, const MatmulArgs & a);
#if defined(QLORA_X86)
void q4_matmul_avx2(qlora_context & ctx, const MatmulArgs & a);
void q4_matmul_avx512(qlora_context & ctx, const MatmulArgs & a);      // fp32 tiles (BF16 x widened)
void q4_matmul_avx512_bf16(qlora_context & ctx, const MatmulArgs & a); // BF16 x: bf16 tiles, vdpbf16ps
void q4_matmul_amx_bf16(qlora_context & ctx, const MatmulArgs & a);    // BF16 x, M > 8: the same tiles, tdpbf16ps
// The 8-bit-activation matvec (a.int8_x, AVX512-VNNI); false (nothing done)
// if x holds a NaN or Inf.
bool q4_matvec_int8_avx512(qlora_context & ctx, const MatmulArgs & a);
#endif
} // namespace qlora::cpu
