#include "cuda/cuda_state.hpp"

#include "cuda/cuda_device.hpp"

#include <algorithm>

namespace qlora::cuda {

CudaState::~CudaState() {
    scratch_.reset();
    if (blas) cublasDestroy(blas);
}

void * CudaState::scratch(size_t bytes) {
    if (scratch_.bytes() < bytes) {
        scratch_.reset(); // stream-ordered: work queued before still sees the old memory
        const size_t want = align_up(bytes, size_t(1) << 20);
        scratch_ = StreamBuffer(want, device, stream, pools, "device scratch of the matmul kernels");
        scratch_peak_ = std::max(scratch_peak_, static_cast<int64_t>(want));
    }
    return scratch_.data();
}

void CudaState::release_scratch() {
    scratch_.reset();
    scratch_peak_ = 0;
}

void CudaState::set_stream(cudaStream_t s) {
    if (s == stream) return;
    scratch_.reset(); // freed in the order of the old stream, where it was last used
    stream = s;
}

cublasHandle_t CudaState::cublas() {
    if (!blas) {
        DeviceGuard g(device);
        check_cublas(cublasCreate(&blas), "cublasCreate");
        // Plain fp32 products for fp32 inputs (no TF32): results stay within
        // the error bounds qlora_q4_matmul documents.
        check_cublas(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    }
    check_cublas(cublasSetStream(blas, stream), "cublasSetStream");
    return blas;
}

StreamBuffer CudaState::temp(size_t bytes, const char * what) const {
    return StreamBuffer(bytes, device, stream, pools, what);
}

CudaState & state_of(qlora_context & ctx) {
    if (ctx.backend != QLORA_BACKEND_CUDA || !ctx.cuda)
        fail(QLORA_ERROR_INVALID_ARGUMENT, "this call needs a QLORA_BACKEND_CUDA context");
    return *ctx.cuda;
}

void init_context(qlora_context & ctx, int32_t device) {
    const DeviceInfo info = select_device(device);
    auto st = std::make_shared<CudaState>();
    st->device = device;
    st->name = info.name;
    st->cc_major = info.cc_major;
    st->cc_minor = info.cc_minor;
    int v = 0;
    check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute(SM count)");
    st->sm_count = std::max(1, v);
    check(cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute(L2 size)");
    st->l2_bytes = v;
    v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
        cudaGetLastError();
        v = 0;
    }
    st->pools = v != 0;
    v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrConcurrentManagedAccess, device) != cudaSuccess) {
        cudaGetLastError();
        v = 0;
    }
    st->managed_prefetch = v != 0;
    ctx.cuda = std::move(st);
}

void check_device_view(const CudaState & st, const ViewInfo & v, const char * name) {
    QLORA_CHECK_ARG(v.device == st.device, "%s is on device %d; the context uses CUDA device %d", name, v.device,
                    st.device);
    cudaPointerAttributes a{};
    const cudaError_t e = cudaPointerGetAttributes(&a, v.data);
    if (e != cudaSuccess) {
        cudaGetLastError();
        fail(QLORA_ERROR_INVALID_ARGUMENT, "%s.data (%p) is not CUDA memory (cudaPointerGetAttributes: %s), but %s.device "
             "says CUDA device %d", name, v.data, cudaGetErrorName(e), name, v.device);
    }
    if (a.type == cudaMemoryTypeManaged) return;
    QLORA_CHECK_ARG(a.type == cudaMemoryTypeDevice,
                    "%s.data (%p) is host memory, but %s.device says CUDA device %d (pass QLORA_DEVICE_HOST for host "
                    "memory)", name, v.data, name, v.device);
    QLORA_CHECK_ARG(a.device == st.device, "%s.data (%p) is memory of CUDA device %d, but %s.device says %d", name,
                    v.data, a.device, name, v.device);
}

const char * cublas_status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "CUBLAS_STATUS_(unknown)";
    }
}

void check_cublas(cublasStatus_t s, const char * what) {
    if (s == CUBLAS_STATUS_SUCCESS) return;
    if (s == CUBLAS_STATUS_ALLOC_FAILED) {
        int dev = -1;
        cudaGetDevice(&dev);
        fail_oom(0, dev, what);
    }
    fail(QLORA_ERROR_CUDA, "%s failed: %s", what, cublas_status_name(s));
}

} // namespace qlora::cuda

namespace qlora::cuda {

int32_t device_count() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        return 0;
    }
    check(e, "cudaGetDeviceCount");
    return n;
}

void set_stream(qlora_context & ctx, void * stream) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    st.set_stream(static_cast<cudaStream_t>(stream));
}

void * get_stream(qlora_context & ctx) { return state_of(ctx).stream; }

void synchronize(qlora_context & ctx) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (qlora_context_synchronize)");
}

int64_t scratch_bytes(const qlora_context & ctx) { return ctx.cuda ? ctx.cuda->scratch_bytes() : 0; }
int64_t scratch_peak(const qlora_context & ctx) { return ctx.cuda ? ctx.cuda->scratch_peak() : 0; }

void release_scratch(qlora_context & ctx) {
    if (!ctx.cuda) return;
    DeviceGuard g(ctx.cuda->device);
    ctx.cuda->release_scratch();
}

} // namespace qlora::cuda
