// The CUDA side of a QLORA_BACKEND_CUDA context: its device, the caller's
// stream, the cuBLAS handle and the device scratch that kernels reuse between
// calls. Host code only (includes the CUDA runtime and cuBLAS headers).
#pragma once

#include "core/context.hpp"
#include "core/view.hpp"
#include "cuda/cuda_common.hpp"

#include <cublas_v2.h>

#include <string>

namespace qlora::cuda {

// How qlora_q4_matmul computes on the device (chosen per shape, see
// matmul_path(); tests and benchmarks may force one).
enum class MatmulPath : int32_t {
    Auto = -1,
    Gemv = 0,   // M <= 8: streams the 4-bit weights once, warp-level reductions
    Fused = 1,  // tiled SIMT kernel that decodes W tiles into shared memory (fp32 FMA)
    Cublas = 2, // W dequantized chunk by chunk into a reused tile buffer, then cuBLAS GEMM
};

struct CudaState {
    int32_t        device = 0;
    cudaStream_t   stream = nullptr; // the caller's stream; nullptr = the legacy default stream
    std::string    name;
    int32_t        cc_major = 0, cc_minor = 0;
    int32_t        sm_count = 1;
    int64_t        l2_bytes = 0;
    bool           pools = false; // cudaMallocAsync supported
    bool           managed_prefetch = false;
    cublasHandle_t blas = nullptr;
    MatmulPath     matmul_path = MatmulPath::Auto;

    ~CudaState();

    // Device scratch of at least `bytes` (contents not kept when it grows).
    void * scratch(size_t bytes);
    int64_t scratch_bytes() const { return static_cast<int64_t>(scratch_.bytes()); }
    int64_t scratch_peak() const { return scratch_peak_; }
    void    release_scratch();
    void    set_stream(cudaStream_t s);
    // The cuBLAS handle (created on first use), bound to the current stream.
    cublasHandle_t cublas();
    // A stream-ordered temporary on this context's device and stream.
    StreamBuffer temp(size_t bytes, const char * what) const;

private:
    StreamBuffer scratch_;
    int64_t      scratch_peak_ = 0;
};

// The CUDA state of a context; INVALID_ARGUMENT if it is not a CUDA context.
CudaState & state_of(qlora_context & ctx);

// Creates the CUDA state of a new context on `device` (validates it, see
// select_device).
void init_context(qlora_context & ctx, int32_t device);

// Checks that a device view is CUDA memory on the context's device (by asking
// the runtime where its pointer lives).
void check_device_view(const CudaState & st, const ViewInfo & v, const char * name);

// Synchronizes the context's stream when it goes out of scope (also when an
// error unwinds), so that no copy into or out of the caller's host memory is
// still pending after a staged call returns. sync() does it early and checks.
class StreamSync {
public:
    explicit StreamSync(const CudaState & st) : st_(st) {}
    ~StreamSync() {
        if (!done_) cudaStreamSynchronize(st_.stream);
    }
    void dismiss() { done_ = true; } // device data: nothing of the caller's host memory is in flight
    void sync(const char * what) {
        done_ = true;
        check(cudaStreamSynchronize(st_.stream), what);
    }

private:
    const CudaState & st_;
    bool              done_ = false;
};

const char * cublas_status_name(cublasStatus_t s);
void check_cublas(cublasStatus_t s, const char * what);

} // namespace qlora::cuda
