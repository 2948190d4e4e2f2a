// A CPU emulation of the part of the CUDA runtime that native/src/cuda uses,
// so that the CUDA backend's host code AND kernels can be compiled as plain
// C++ and run by the native test suite on a machine without a GPU
// (cmake -DQLORA_CUDA_EMULATOR=ON; see tools/cuda-emu/README.md).
//
// It is a test harness, not a GPU: it proves indexing, synchronization,
// staging, stream ordering and error paths, not speed or the hardware's
// memory model. What it models:
//  - kernels: every thread of a block is a fiber (ucontext); __syncthreads and
//    warp shuffles are real barriers among them (a barrier some threads never
//    reach is reported as a launch failure); blocks run one after another;
//    __shared__ variables are static storage (one block at a time);
//  - streams: every operation is queued on its stream and runs only when the
//    host synchronizes (cudaStreamSynchronize, cudaEventSynchronize,
//    cudaDeviceSynchronize, synchronous cudaMemcpy/cudaMemset/cudaFree), so a
//    missing synchronization makes the host read stale data;
//  - device memory: separate mappings that are inaccessible (PROT_NONE)
//    except while queued device work runs, so host code touching device
//    memory crashes; a guard page follows every allocation (over-reads
//    past the end crash too); a configurable capacity gives real
//    out-of-memory errors (QLORA_CUDA_EMU_MEMORY_MB, default 4096);
//  - QLORA_CUDA_EMU_DEVICES=0 makes cudaGetDeviceCount fail like a machine
//    without a driver; QLORA_CUDA_EMU_TRACE=1 prints every kernel launch.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define QLORA_CUDA_EMULATED 1
#define CUDART_VERSION 11080

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time, so static storage is the block's shared memory.
#define __shared__ static

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};
struct __attribute__((aligned(8))) uint2 {
    unsigned int x, y;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned int x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorCallRequiresNewerDriver = 36,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorUnsupportedPtxVersion = 222,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
    cudaErrorSystemDriverMismatch = 803,
    cudaErrorCompatNotSupportedOnDevice = 804,
    cudaErrorUnknown = 999
};
typedef cudaError_t cudaError;

typedef struct CUstream_st * cudaStream_t;
typedef struct CUevent_st * cudaEvent_t;

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaMemAttachGlobal 0x01
#define cudaCpuDeviceId (-1)

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};

enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3
};

struct cudaPointerAttributes {
    cudaMemoryType type;
    int            device;
    void *         devicePointer;
    void *         hostPointer;
};

enum cudaMemoryAdvise {
    cudaMemAdviseSetReadMostly = 1,
    cudaMemAdviseUnsetReadMostly = 2,
    cudaMemAdviseSetPreferredLocation = 3,
    cudaMemAdviseUnsetPreferredLocation = 4,
    cudaMemAdviseSetAccessedBy = 5,
    cudaMemAdviseUnsetAccessedBy = 6
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrConcurrentManagedAccess = 89,
    cudaDevAttrMemoryPoolsSupported = 115
};

// library_types.h
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_8I = 3, CUDA_R_32I = 10, CUDA_R_16BF = 14 };
typedef cudaDataType_t cudaDataType;

struct cudaDeviceProp {
    char   name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int    regsPerBlock;
    int    warpSize;
    int    maxThreadsPerBlock;
    int    maxThreadsDim[3];
    int    maxGridSize[3];
    int    clockRate;
    int    major;
    int    minor;
    int    multiProcessorCount;
    int    memoryClockRate;
    int    memoryBusWidth;
    int    l2CacheSize;
    int    concurrentManagedAccess;
};

// ---- runtime API ------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int * count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int * device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp * prop, int device);
cudaError_t cudaDeviceGetAttribute(int * value, cudaDeviceAttr attr, int device);
cudaError_t cudaDriverGetVersion(int * version);
cudaError_t cudaRuntimeGetVersion(int * version);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char * cudaGetErrorName(cudaError_t error);
const char * cudaGetErrorString(cudaError_t error);

cudaError_t cudaMalloc(void ** ptr, size_t bytes);
cudaError_t cudaFree(void * ptr);
cudaError_t cudaMallocAsync(void ** ptr, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void * ptr, cudaStream_t stream);
cudaError_t cudaMallocManaged(void ** ptr, size_t bytes, unsigned int flags = cudaMemAttachGlobal);
cudaError_t cudaMallocHost(void ** ptr, size_t bytes);
cudaError_t cudaFreeHost(void * ptr);
cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes * attributes, const void * ptr);
cudaError_t cudaMemcpy(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemcpy2DAsync(void * dst, size_t dpitch, const void * src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream = 0);
cudaError_t cudaMemset(void * ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void * ptr, int value, size_t bytes, cudaStream_t stream = 0);
cudaError_t cudaMemPrefetchAsync(const void * ptr, size_t bytes, int device, cudaStream_t stream = 0);
cudaError_t cudaMemAdvise(const void * ptr, size_t bytes, cudaMemoryAdvise advice, int device);

cudaError_t cudaStreamCreate(cudaStream_t * stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t * stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t * event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t * event, unsigned int flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t start, cudaEvent_t end);

template <typename T>
cudaError_t cudaMalloc(T ** ptr, size_t bytes) {
    return cudaMalloc(reinterpret_cast<void **>(ptr), bytes);
}
template <typename T>
cudaError_t cudaMallocManaged(T ** ptr, size_t bytes, unsigned int flags = cudaMemAttachGlobal) {
    return cudaMallocManaged(reinterpret_cast<void **>(ptr), bytes, flags);
}

// ---- kernels ------------------------------------------------------------------

namespace qlora_emu {

struct ThreadState {
    uint3 tid;
    int   lane, warp;
};
ThreadState * current_thread();
extern uint3 g_block_idx;
extern dim3  g_block_dim, g_grid_dim;

void block_barrier();
void warp_barrier();
uint64_t * warp_slots(); // 32 slots of the calling thread's warp

struct LaunchConfig {
    dim3         grid, block;
    size_t       shared_bytes;
    cudaStream_t stream;
};
// Validates the configuration (the launch error is then reported by
// cudaGetLastError, as on a GPU) and queues the grid on the stream.
void enqueue_kernel(const LaunchConfig & cfg, std::function<void()> thread_body);

template <typename... P>
struct Launcher {
    LaunchConfig cfg;
    void (*fn)(P...);
    template <typename... A>
    void operator()(A &&... a) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        // Kernel parameters are copied at launch, converted to the parameter types.
        auto args = std::tuple<std::decay_t<P>...>(static_cast<std::decay_t<P>>(std::forward<A>(a))...);
        auto f = fn;
        enqueue_kernel(cfg, [f, args]() { std::apply(f, args); });
    }
};

template <typename... P>
Launcher<P...> launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, void (*fn)(P...)) {
    return Launcher<P...>{LaunchConfig{grid, block, shared_bytes, stream}, fn};
}

template <typename T>
T shuffle(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t * slots = warp_slots();
    const int  lane = current_thread()->lane;
    uint64_t   bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    warp_barrier();
    T r;
    const uint64_t got = slots[src_lane];
    std::memcpy(&r, &got, sizeof(T));
    warp_barrier();
    return r;
}

} // namespace qlora_emu

#define threadIdx (::qlora_emu::current_thread()->tid)
#define blockIdx (::qlora_emu::g_block_idx)
#define blockDim (::qlora_emu::g_block_dim)
#define gridDim (::qlora_emu::g_grid_dim)
inline constexpr int warpSize = 32;

inline void __syncthreads() { ::qlora_emu::block_barrier(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { ::qlora_emu::warp_barrier(); }
inline void __threadfence() {}

template <typename T>
T __shfl_sync(unsigned int, T v, int src, int width = 32) {
    const int lane = ::qlora_emu::current_thread()->lane;
    return ::qlora_emu::shuffle(v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned int, T v, int mask, int width = 32) {
    const int lane = ::qlora_emu::current_thread()->lane;
    return ::qlora_emu::shuffle(v, (lane & ~(width - 1)) + ((lane ^ mask) & (width - 1)));
}
template <typename T>
T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = ::qlora_emu::current_thread()->lane;
    const int in_seg = lane & (width - 1);
    const int src = in_seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
    return ::qlora_emu::shuffle(v, src);
}

template <typename T>
T __ldg(const T * p) {
    return *p;
}

// One OS thread runs every emulated thread, switching only at barriers:
// read-modify-write is atomic by construction.
inline float atomicAdd(float * p, float v) { const float o = *p; *p = o + v; return o; }
inline double atomicAdd(double * p, double v) { const double o = *p; *p = o + v; return o; }
inline int atomicAdd(int * p, int v) { const int o = *p; *p = o + v; return o; }
inline unsigned int atomicAdd(unsigned int * p, unsigned int v) { const unsigned o = *p; *p = o + v; return o; }
inline unsigned long long atomicAdd(unsigned long long * p, unsigned long long v) {
    const unsigned long long o = *p; *p = o + v; return o;
}
inline int atomicMax(int * p, int v) { const int o = *p; if (v > o) *p = v; return o; }
inline unsigned int atomicMax(unsigned int * p, unsigned int v) { const unsigned o = *p; if (v > o) *p = v; return o; }
inline unsigned long long atomicMin(unsigned long long * p, unsigned long long v) {
    const unsigned long long o = *p; if (v < o) *p = v; return o;
}
inline long long atomicMin(long long * p, long long v) { const long long o = *p; if (v < o) *p = v; return o; }
inline int atomicMin(int * p, int v) { const int o = *p; if (v < o) *p = v; return o; }

inline unsigned int __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
