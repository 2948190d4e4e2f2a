#include "cuda/cuda_common.hpp"

#include <utility>

namespace qlora::cuda {

namespace {

bool is_unsupported(cudaError_t e) {
    return e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorNoKernelImageForDevice ||
           e == cudaErrorUnsupportedPtxVersion || e == cudaErrorCallRequiresNewerDriver ||
           e == cudaErrorSystemDriverMismatch || e == cudaErrorCompatNotSupportedOnDevice;
}

void free_device(void * ptr, int32_t device) noexcept {
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    if (prev != device) cudaSetDevice(device);
    cudaFree(ptr);
    if (prev >= 0 && prev != device) cudaSetDevice(prev);
    cudaGetLastError(); // a failed free (e.g. after a sticky error) is not reported to a later call
}

} // namespace

void fail_cuda(cudaError_t e, const char * what) {
    cudaGetLastError(); // clear a non-sticky error so that it is not reported twice
    if (e == cudaErrorMemoryAllocation) {
        int dev = -1;
        cudaGetDevice(&dev);
        fail_oom(0, dev, what);
    }
    fail(is_unsupported(e) ? QLORA_ERROR_UNSUPPORTED : QLORA_ERROR_CUDA, "%s failed: %s (%s)", what,
         cudaGetErrorName(e), cudaGetErrorString(e));
}

void check_launch(const char * kernel) {
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return;
    fail(QLORA_ERROR_CUDA, "launching %s failed: %s (%s)", kernel, cudaGetErrorName(e), cudaGetErrorString(e));
}

void fail_oom(size_t requested, int32_t device, const char * what) {
    size_t free_b = 0, total_b = 0;
    const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    cudaGetLastError();
    const std::string need = requested ? format("%zu bytes", requested) : std::string("memory");
    if (known)
        fail(QLORA_ERROR_OUT_OF_MEMORY, "%s: cannot allocate %s on CUDA device %d (free: %zu of %zu bytes)", what,
             need.c_str(), static_cast<int>(device), free_b, total_b);
    fail(QLORA_ERROR_OUT_OF_MEMORY, "%s: cannot allocate %s on CUDA device %d", what, need.c_str(),
         static_cast<int>(device));
}

DeviceGuard::DeviceGuard(int32_t device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != prev_ && prev_ >= 0) cudaSetDevice(prev_);
}

DeviceBuffer device_alloc(size_t bytes, int32_t device, const char * what) {
    if (bytes == 0) return DeviceBuffer();
    void * p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        fail_oom(bytes, device, what);
    }
    check(e, "cudaMalloc");
    return DeviceBuffer(p, bytes, device, free_device);
}

StreamBuffer::StreamBuffer(size_t bytes, int32_t device, cudaStream_t stream, bool pools, const char * what)
    : stream_(stream), pools_(pools) {
    if (bytes == 0) return;
    void * p = nullptr;
    const cudaError_t e = pools ? cudaMallocAsync(&p, bytes, stream) : cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        fail_oom(bytes, device, what);
    }
    check(e, pools ? "cudaMallocAsync" : "cudaMalloc");
    ptr_ = p;
    bytes_ = bytes;
}

StreamBuffer::StreamBuffer(StreamBuffer && o) noexcept { *this = std::move(o); }

StreamBuffer & StreamBuffer::operator=(StreamBuffer && o) noexcept {
    if (this != &o) {
        reset();
        ptr_ = std::exchange(o.ptr_, nullptr);
        bytes_ = std::exchange(o.bytes_, 0);
        stream_ = o.stream_;
        pools_ = o.pools_;
    }
    return *this;
}

void StreamBuffer::reset() noexcept {
    if (ptr_) {
        if (pools_) cudaFreeAsync(ptr_, stream_);
        else cudaFree(ptr_);
        cudaGetLastError();
    }
    ptr_ = nullptr;
    bytes_ = 0;
}

} // namespace qlora::cuda
