// Error handling and memory helpers of the CUDA backend, for its host code
// (compiled by the C++ compiler) and its .cu files (nvcc, C++17). Every CUDA
// runtime call goes through check(): a failure becomes a qlora::Error
// (QLORA_ERROR_CUDA with the operation and CUDA's error name and text;
// OUT_OF_MEMORY with the requested and free sizes; UNSUPPORTED for a missing
// driver or device), never an abort.
#pragma once

#include "core/device_buffer.hpp"
#include "core/error.hpp"

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace qlora::cuda {

[[noreturn]] void fail_cuda(cudaError_t e, const char * what);

inline void check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) fail_cuda(e, what);
}

// Right after a kernel launch: reports a bad launch configuration, or a
// sticky error left by earlier asynchronous work, naming `kernel`.
void check_launch(const char * kernel);

// OUT_OF_MEMORY naming the request, the device and its free / total memory.
[[noreturn]] void fail_oom(size_t requested, int32_t device, const char * what);

// Makes `device` current for the scope and restores the caller's device.
class DeviceGuard {
public:
    explicit DeviceGuard(int32_t device);
    ~DeviceGuard();
    DeviceGuard(const DeviceGuard &) = delete;
    DeviceGuard & operator=(const DeviceGuard &) = delete;

private:
    int prev_ = -1;
};

// Persistent device memory (4-bit tensors, optimizer states): cudaMalloc,
// freed with cudaFree (which waits for the device) when the buffer dies.
DeviceBuffer device_alloc(size_t bytes, int32_t device, const char * what);

// Stream-ordered device memory for temporaries: cudaMallocAsync on `stream`,
// cudaFreeAsync on the same stream when the buffer dies (no synchronization).
// Falls back to cudaMalloc / cudaFree on devices without memory pools.
class StreamBuffer {
public:
    StreamBuffer() = default;
    StreamBuffer(size_t bytes, int32_t device, cudaStream_t stream, bool pools, const char * what);
    StreamBuffer(StreamBuffer && o) noexcept;
    StreamBuffer & operator=(StreamBuffer && o) noexcept;
    StreamBuffer(const StreamBuffer &) = delete;
    StreamBuffer & operator=(const StreamBuffer &) = delete;
    ~StreamBuffer() { reset(); }

    void reset() noexcept;
    void *  data() const { return ptr_; }
    size_t  bytes() const { return bytes_; }
    template <typename T> T * as() const { return static_cast<T *>(ptr_); }

private:
    void *       ptr_ = nullptr;
    size_t       bytes_ = 0;
    cudaStream_t stream_ = nullptr;
    bool         pools_ = false;
};

inline size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Managed-memory hints, for CUDA 11/12 (device ordinal) and 13 (cudaMemLocation)
// alike; `device` may be cudaCpuDeviceId for the host.
inline cudaError_t prefetch_managed(const void * p, size_t bytes, int device, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
    cudaMemLocation loc{};
    loc.type = device == cudaCpuDeviceId ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
    loc.id = device == cudaCpuDeviceId ? 0 : device;
    return cudaMemPrefetchAsync(p, bytes, loc, 0, stream);
#else
    return cudaMemPrefetchAsync(p, bytes, device, stream);
#endif
}

inline cudaError_t advise_preferred_location(const void * p, size_t bytes, int device) {
#if CUDART_VERSION >= 13000
    cudaMemLocation loc{};
    loc.type = device == cudaCpuDeviceId ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
    loc.id = device == cudaCpuDeviceId ? 0 : device;
    return cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, loc);
#else
    return cudaMemAdvise(p, bytes, cudaMemAdviseSetPreferredLocation, device);
#endif
}

} // namespace qlora::cuda
