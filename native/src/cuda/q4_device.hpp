// Device-resident 4-bit tensors: the kernel view of a device tensor and a
// stream-ordered device copy of a host tensor (for staged calls).
#pragma once

#include "cuda/cuda_state.hpp"
#include "cuda/kernels.hpp"
#include "quant/q4_tensor.hpp"

#include <memory>

namespace qlora {
struct MatmulArgs;
}

namespace qlora::cuda {

// The path qlora_q4_matmul takes for `a` on this context (MatmulPath in
// cuda_state.hpp; CudaState::matmul_path forces one where it applies).
MatmulPath matmul_path(const CudaState & st, const MatmulArgs & a);

Q4Dev   dev_view(const qlora_q4_tensor & t); // t on a device
Code16  code_of(const qlora_q4_tensor & t);
Code256 ncode_of(const qlora_q4_tensor & t);

// INVALID_ARGUMENT unless t lives on the context's device.
void check_tensor_device(const CudaState & st, const qlora_q4_tensor & t, const char * name);

// Persistent device storage for t (cudaMalloc) laid out for the kernels.
void allocate_device_storage(CudaState & st, qlora_q4_tensor & t);

// A host tensor copied into stream-ordered device memory for one call.
struct StagedTensor {
    StagedTensor(CudaState & st, const qlora_q4_tensor & host);
    std::unique_ptr<qlora_q4_tensor> tensor; // device view of `buffer` (owns no storage)
    StreamBuffer                     buffer;
};

} // namespace qlora::cuda
