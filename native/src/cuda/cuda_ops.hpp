// The CUDA backend's entry points for the C ABI files (quant/q4_api.cpp,
// quant/matmul_api.cpp, optim/adamw.cpp, core/cuda_api.cpp). Free of CUDA
// headers; only built with QLORA_CUDA. Arguments arrive validated for shape
// and dtype (check_view with allow_device); these functions check where the
// data lives (all host memory, staged through the device; or all on the
// context's device), run the kernels on the context's stream, and document
// where they synchronize.
#pragma once

#include "core/view.hpp"
#include "qlora.h"

#include <cstdint>
#include <memory>

struct qlora_context;
struct qlora_q4_tensor;
struct qlora_adamw;

namespace qlora {
struct MatmulArgs;
}

namespace qlora::cuda {

// Context creation (core/context.cpp).
void init_context(qlora_context & ctx, int32_t device);

int32_t device_count();
void    set_stream(qlora_context & ctx, void * stream);
void *  get_stream(qlora_context & ctx);
void    synchronize(qlora_context & ctx);
int64_t scratch_bytes(const qlora_context & ctx);
int64_t scratch_peak(const qlora_context & ctx);
void    release_scratch(qlora_context & ctx);

// 4-bit tensors (quant/q4_api.cpp, core/cuda_api.cpp).
std::unique_ptr<qlora_q4_tensor> q4_quantize(qlora_context & ctx, const ViewInfo & src,
                                             const qlora_quant_params & params);
void q4_dequantize(qlora_context & ctx, const qlora_q4_tensor & t, const ViewInfo & dst);
std::unique_ptr<qlora_q4_tensor> q4_to_device(qlora_context & ctx, const qlora_q4_tensor & t);
std::unique_ptr<qlora_q4_tensor> q4_to_host(qlora_context & ctx, const qlora_q4_tensor & t);

// 8-bit blockwise; `code` is host memory (256 floats).
void q8_quantize(qlora_context & ctx, const ViewInfo & src, int32_t blocksize, const float * code, const ViewInfo & q,
                 const ViewInfo & absmax);
void q8_dequantize(qlora_context & ctx, const ViewInfo & q, const ViewInfo & absmax, int32_t blocksize,
                   const float * code, const ViewInfo & out);

// Matmul (quant/matmul_api.cpp): arguments resolved; alpha == 0 is scale_only.
void q4_matmul(qlora_context & ctx, const MatmulArgs & a, const ViewInfo & x, const ViewInfo & y);

// AdamW (optim/adamw.cpp).
qlora_adamw_step_info adamw_step(qlora_context & ctx, qlora_adamw & opt, const qlora_view * params,
                                 const qlora_view * grads, int32_t n_buffers);
// Moves unpaged states that a CUDA step left on a device back to host memory.
void adamw_states_to_host(qlora_adamw & opt);

} // namespace qlora::cuda
