// CUDA device selection and validation for QLORA_BACKEND_CUDA contexts.
// Every CUDA error becomes a qlora::Error (and so a status at the ABI
// boundary); nothing here aborts or exits.
#include "cuda/cuda_device.hpp"

#include "core/error.hpp"
#include "cuda/device_math.cuh"

#include <cuda_runtime.h>

namespace qlora::cuda {

namespace {

// The oldest compute capability this build has device code for (sm_80, see
// CMAKE_CUDA_ARCHITECTURES in CMakePresets.json); PTX for newer devices is
// JIT-compiled by the driver.
__global__ void probe_kernel(int * out, int value) {
    if (blockIdx.x == 0 && threadIdx.x == 0) *out = value;
}

[[noreturn]] void fail_cuda(cudaError_t e, const char * what) {
    cudaGetLastError(); // reset the runtime's last-error state for the next call
    const qlora_status st = (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
                             e == cudaErrorNoKernelImageForDevice || e == cudaErrorUnsupportedPtxVersion ||
                             e == cudaErrorCallRequiresNewerDriver || e == cudaErrorSystemDriverMismatch ||
                             e == cudaErrorCompatNotSupportedOnDevice)
                                ? QLORA_ERROR_UNSUPPORTED
                                : QLORA_ERROR_CUDA;
    fail(st, "%s failed: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

void check(cudaError_t e, const char * what) {
    if (e != cudaSuccess) fail_cuda(e, what);
}

// Frees a device allocation on every path out of select_device.
struct DeviceBuffer {
    int * ptr = nullptr;
    ~DeviceBuffer() {
        if (ptr) cudaFree(ptr);
    }
};

} // namespace

DeviceInfo select_device(int32_t device) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        fail(QLORA_ERROR_UNSUPPORTED,
             "no usable CUDA device: %s (%s); this library was built with CUDA, but the machine has no NVIDIA "
             "GPU or no working driver (libcuda.so.1) - use QLORA_BACKEND_CPU",
             cudaGetErrorName(e), cudaGetErrorString(e));
    }
    check(e, "cudaGetDeviceCount");
    if (count <= 0) fail(QLORA_ERROR_UNSUPPORTED, "no CUDA device found (cudaGetDeviceCount returned %d)", count);
    QLORA_CHECK_ARG(device >= 0 && device < count, "device must be a CUDA device ordinal in [0, %d), got %d",
                    count, static_cast<int>(device));

    check(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    if (prop.major < 8)
        fail(QLORA_ERROR_UNSUPPORTED,
             "CUDA device %d (%s) has compute capability %d.%d; this build needs 8.0 or newer (sm_80..sm_90)",
             static_cast<int>(device), prop.name, prop.major, prop.minor);

    // Self-test: one tiny kernel round trip on this device.
    DeviceBuffer buf;
    check(cudaMalloc(reinterpret_cast<void **>(&buf.ptr), sizeof(int)), "cudaMalloc(4 bytes)");
    check(cudaMemset(buf.ptr, 0, sizeof(int)), "cudaMemset");
    const int expect = 0x51a0 + device;
    QLORA_LAUNCH(1, 32, nullptr, probe_kernel)(buf.ptr, expect);
    check(cudaGetLastError(), "launching the device probe kernel");
    int got = 0;
    check(cudaMemcpy(&got, buf.ptr, sizeof(int), cudaMemcpyDeviceToHost), "cudaMemcpy (device probe)");
    if (got != expect)
        fail(QLORA_ERROR_CUDA, "CUDA device %d (%s) failed its self-test: wrote %d, read back %d",
             static_cast<int>(device), prop.name, expect, got);

    DeviceInfo info;
    info.ordinal = device;
    info.cc_major = prop.major;
    info.cc_minor = prop.minor;
    info.total_memory = static_cast<int64_t>(prop.totalGlobalMem);
    info.name = prop.name;
    return info;
}

} // namespace qlora::cuda
