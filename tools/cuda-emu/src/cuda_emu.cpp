// The CPU emulation of the CUDA runtime (see include/cuda_runtime.h for what
// it models). Single device, one global lock: queued device work runs on the
// thread that synchronizes, one block at a time, each CUDA thread a fiber.
#include "cuda_runtime.h"
#include "emu_internal.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace qlora_emu {

// ---- global state -------------------------------------------------------------

namespace {

struct Allocation {
    uint8_t * map = nullptr; // the mapping (data + slack + guard page)
    size_t    map_bytes = 0;
    size_t    bytes = 0;
    bool      managed = false;
    bool      pinned_host = false;
};

struct Stream {
    unsigned int                       flags = 0;
    std::deque<std::function<void()>>  queue;
};

struct Event {
    Stream *                                   stream = nullptr;
    std::chrono::steady_clock::time_point      time{};
    bool                                       recorded = false;
};

std::recursive_mutex & lock() {
    static std::recursive_mutex m;
    return m;
}

struct State {
    std::map<uintptr_t, Allocation> allocs; // by data address
    std::set<Stream *>              streams;
    Stream                          legacy;  // stream 0 / cudaStreamLegacy / cudaStreamPerThread
    size_t                          capacity = 0, used = 0;
    int                             devices = 1;
    int                             current_device = 0;
    cudaError_t                     last_error = cudaSuccess;
    bool                            draining = false;
};

State & state() {
    static State * s = [] {
        auto * st = new State();
        const char * mem = std::getenv("QLORA_CUDA_EMU_MEMORY_MB");
        st->capacity = static_cast<size_t>(mem ? std::strtoull(mem, nullptr, 10) : 4096) << 20;
        const char * dev = std::getenv("QLORA_CUDA_EMU_DEVICES");
        st->devices = dev ? std::atoi(dev) : 1;
        return st;
    }();
    return *s;
}

const size_t kPage = static_cast<size_t>(sysconf(_SC_PAGESIZE));

cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) state().last_error = e;
    return e;
}

Stream * stream_of(cudaStream_t s) {
    State & st = state();
    if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &st.legacy;
    auto * p = reinterpret_cast<Stream *>(s);
    return st.streams.count(p) ? p : nullptr;
}

void protect_device_memory(bool accessible) {
    for (auto & [addr, a] : state().allocs)
        if (!a.managed && !a.pinned_host)
            mprotect(a.map, a.map_bytes - kPage, accessible ? PROT_READ | PROT_WRITE : PROT_NONE);
}

void run_queue(Stream & s) {
    State & st = state();
    const bool outer = !st.draining;
    if (outer) {
        st.draining = true;
        protect_device_memory(true);
    }
    while (!s.queue.empty()) {
        std::function<void()> op = std::move(s.queue.front());
        s.queue.pop_front();
        op();
    }
    if (outer) {
        protect_device_memory(false);
        st.draining = false;
    }
}

void drain_all() {
    State & st = state();
    run_queue(st.legacy);
    for (Stream * s : st.streams) run_queue(*s);
}

// Queues `op` on `s`. The legacy stream waits for every other stream, and
// every stream waits for the legacy stream's earlier work.
void enqueue(Stream & s, std::function<void()> op) {
    State & st = state();
    if (&s == &st.legacy) {
        for (Stream * other : st.streams)
            if (!(other->flags & cudaStreamNonBlocking)) run_queue(*other);
    } else if (!(s.flags & cudaStreamNonBlocking)) {
        run_queue(st.legacy);
    }
    s.queue.push_back(std::move(op));
}

const Allocation * find_alloc(const void * p) {
    State & st = state();
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = st.allocs.upper_bound(a);
    if (it == st.allocs.begin()) return nullptr;
    --it;
    if (a >= it->first && a < it->first + std::max<size_t>(it->second.bytes, 1)) return &it->second;
    return nullptr;
}

// A mapping with the data at its end, just before a PROT_NONE guard page.
cudaError_t map_alloc(void ** ptr, size_t bytes, bool managed, bool pinned_host) {
    if (!ptr) return set_error(cudaErrorInvalidValue);
    State & st = state();
    if (bytes == 0) {
        *ptr = nullptr;
        return cudaSuccess;
    }
    if (!managed && !pinned_host && bytes > st.capacity - st.used) return set_error(cudaErrorMemoryAllocation);
    const size_t data = (bytes + 255) / 256 * 256;
    const size_t body = (data + kPage - 1) / kPage * kPage;
    const size_t map_bytes = body + kPage;
    void * m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return set_error(cudaErrorMemoryAllocation);
    auto * base = static_cast<uint8_t *>(m);
    mprotect(base + body, kPage, PROT_NONE);
    uint8_t * p = base + body - data;
    // Fresh device memory is not zero on a GPU: fill it with a pattern.
    if (!managed) std::memset(p, 0xA5, data);
    if (!managed && !pinned_host && !st.draining) mprotect(base, body, PROT_NONE);
    Allocation a;
    a.map = base;
    a.map_bytes = map_bytes;
    a.bytes = bytes;
    a.managed = managed;
    a.pinned_host = pinned_host;
    st.allocs[reinterpret_cast<uintptr_t>(p)] = a;
    if (!managed && !pinned_host) st.used += bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t unmap_alloc(void * p) {
    if (!p) return cudaSuccess;
    State & st = state();
    auto it = st.allocs.find(reinterpret_cast<uintptr_t>(p));
    if (it == st.allocs.end()) return set_error(cudaErrorInvalidValue);
    if (!it->second.managed && !it->second.pinned_host) st.used -= it->second.bytes;
    munmap(it->second.map, it->second.map_bytes);
    st.allocs.erase(it);
    return cudaSuccess;
}

bool device_ok(int d) { return d >= 0 && d < state().devices; }

// ---- fibers -----------------------------------------------------------------------
// On x86-64 a fiber switch saves the callee-saved registers and the stack
// pointer (no signal mask system call, unlike swapcontext): the emulator
// switches millions of times per test.

#if defined(__x86_64__)
extern "C" void qlora_emu_switch(void ** save_sp, void * load_sp);
asm(R"(
    .text
    .globl qlora_emu_switch
    .type qlora_emu_switch, @function
qlora_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size qlora_emu_switch, .-qlora_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
struct FiberContext {
    void * sp = nullptr;
};
#else
struct FiberContext {
    ucontext_t uc;
};
#endif

enum class Wait { None, Block, Warp, Done };

struct Fiber {
    FiberContext ctx;
    ThreadState  ts;
    Wait         wait = Wait::None;
};

struct BlockRun {
    std::vector<Fiber>          fibers;
    std::vector<uint64_t>       slots; // 32 per warp
    FiberContext                sched;
    int                         current = -1;
    const std::function<void()> * body = nullptr;
    bool                        failed = false;
};

void switch_to(FiberContext & save, FiberContext & load) {
#if defined(__x86_64__)
    qlora_emu_switch(&save.sp, load.sp);
#else
    swapcontext(&save.uc, &load.uc);
#endif
}

constexpr size_t kStackBytes = 128 * 1024;
BlockRun * g_run = nullptr;
ThreadState g_host_thread{{0, 0, 0}, 0, 0};

struct Stacks {
    std::vector<uint8_t *> stacks;
    uint8_t * get(size_t i) {
        while (stacks.size() <= i) {
            void * m = mmap(nullptr, kStackBytes + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                            -1, 0);
            if (m == MAP_FAILED) {
                std::fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
                std::abort();
            }
            mprotect(m, kPage, PROT_NONE); // stack overflow guard
            stacks.push_back(static_cast<uint8_t *>(m) + kPage);
        }
        return stacks[i];
    }
};
Stacks & stacks() {
    static Stacks s;
    return s;
}

[[noreturn]] void fiber_entry() {
    BlockRun & r = *g_run;
    (*r.body)();
    r.fibers[static_cast<size_t>(r.current)].wait = Wait::Done;
    switch_to(r.fibers[static_cast<size_t>(r.current)].ctx, r.sched);
    std::abort(); // a finished fiber is never resumed
}

void init_fiber(Fiber & f, uint8_t * stack) {
#if defined(__x86_64__)
    // What qlora_emu_switch pops: six registers, then the "return address"
    // fiber_entry, entered with rsp = 8 mod 16 as after a call.
    auto * top = reinterpret_cast<uint64_t *>(reinterpret_cast<uintptr_t>(stack + kStackBytes) & ~uintptr_t(15));
    top[-1] = 0;
    top[-2] = reinterpret_cast<uint64_t>(&fiber_entry);
    for (int i = 3; i <= 8; ++i) top[-i] = 0;
    f.ctx.sp = top - 8;
#else
    getcontext(&f.ctx.uc);
    f.ctx.uc.uc_stack.ss_sp = stack;
    f.ctx.uc.uc_stack.ss_size = kStackBytes;
    f.ctx.uc.uc_link = nullptr;
    makecontext(&f.ctx.uc, reinterpret_cast<void (*)()>(fiber_entry), 0);
#endif
}

void yield(Wait w) {
    BlockRun & r = *g_run;
    Fiber & f = r.fibers[static_cast<size_t>(r.current)];
    f.wait = w;
    switch_to(f.ctx, r.sched);
}

// Runs one block to completion; false if its threads deadlocked on barriers.
bool run_block(BlockRun & r, const dim3 & block) {
    const int n = static_cast<int>(block.x * block.y * block.z);
    r.fibers.assign(static_cast<size_t>(n), Fiber{});
    r.slots.assign(static_cast<size_t>((n + 31) / 32 * 32), 0);
    for (int i = 0; i < n; ++i) {
        Fiber & f = r.fibers[static_cast<size_t>(i)];
        f.ts.tid = uint3{static_cast<unsigned>(i) % block.x, (static_cast<unsigned>(i) / block.x) % block.y,
                         static_cast<unsigned>(i) / (block.x * block.y)};
        f.ts.lane = i % 32;
        f.ts.warp = i / 32;
        init_fiber(f, stacks().get(static_cast<size_t>(i)));
    }
    int done = 0;
    while (done < n) {
        bool ran = false;
        for (int i = 0; i < n; ++i) {
            Fiber & f = r.fibers[static_cast<size_t>(i)];
            if (f.wait != Wait::None) continue;
            r.current = i;
            switch_to(r.sched, f.ctx);
            r.current = -1;
            ran = true;
            if (f.wait == Wait::Done) ++done;
        }
        if (done == n) break;
        // Release warps whose live lanes all wait at a warp barrier.
        bool released = false;
        for (int w = 0; w * 32 < n; ++w) {
            bool all = true, any = false;
            for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
                const Wait s = r.fibers[static_cast<size_t>(i)].wait;
                if (s == Wait::Done) continue;
                any = true;
                all = all && s == Wait::Warp;
            }
            if (any && all) {
                for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i)
                    if (r.fibers[static_cast<size_t>(i)].wait == Wait::Warp) r.fibers[static_cast<size_t>(i)].wait = Wait::None;
                released = true;
            }
        }
        if (!released) {
            bool all = true;
            for (const Fiber & f : r.fibers) all = all && (f.wait == Wait::Block || f.wait == Wait::Done);
            if (all) {
                for (Fiber & f : r.fibers)
                    if (f.wait == Wait::Block) f.wait = Wait::None;
                released = true;
            }
        }
        if (!released && !ran) return false; // some threads wait at a barrier others never reach
    }
    return true;
}

} // namespace

uint3 g_block_idx{0, 0, 0};
dim3  g_block_dim{1, 1, 1}, g_grid_dim{1, 1, 1};

ThreadState * current_thread() {
    if (!g_run || g_run->current < 0) return &g_host_thread;
    return &g_run->fibers[static_cast<size_t>(g_run->current)].ts;
}

void block_barrier() {
    if (g_run && g_run->current >= 0) yield(Wait::Block);
}
void warp_barrier() {
    if (g_run && g_run->current >= 0) yield(Wait::Warp);
}
uint64_t * warp_slots() {
    if (!g_run || g_run->current < 0) {
        static uint64_t host_slots[32];
        return host_slots;
    }
    return g_run->slots.data() + current_thread()->warp * 32;
}

void enqueue_kernel(const LaunchConfig & cfg, std::function<void()> body) {
    std::lock_guard<std::recursive_mutex> g(lock());
    const uint64_t threads = uint64_t(cfg.block.x) * cfg.block.y * cfg.block.z;
    if (threads == 0 || threads > 1024 || cfg.block.z > 64 || cfg.grid.x == 0 || cfg.grid.y == 0 || cfg.grid.z == 0 ||
        cfg.grid.y > 65535 || cfg.grid.z > 65535 || cfg.grid.x > 2147483647u || cfg.shared_bytes > 48 * 1024) {
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    Stream * s = stream_of(cfg.stream);
    if (!s) {
        set_error(cudaErrorInvalidResourceHandle);
        return;
    }
    static const bool trace = std::getenv("QLORA_CUDA_EMU_TRACE") != nullptr;
    if (trace)
        std::fprintf(stderr, "cuda-emu: launch grid (%u, %u, %u) block (%u, %u, %u)\n", cfg.grid.x, cfg.grid.y, cfg.grid.z,
                     cfg.block.x, cfg.block.y, cfg.block.z);
    const LaunchConfig c = cfg;
    enqueue(*s, [c, body = std::move(body)]() {
        BlockRun run;
        run.body = &body;
        BlockRun * outer = g_run;
        g_run = &run;
        g_grid_dim = c.grid;
        g_block_dim = c.block;
        for (unsigned z = 0; z < c.grid.z && !run.failed; ++z)
            for (unsigned y = 0; y < c.grid.y && !run.failed; ++y)
                for (unsigned x = 0; x < c.grid.x && !run.failed; ++x) {
                    g_block_idx = uint3{x, y, z};
                    if (!run_block(run, c.block)) {
                        std::fprintf(stderr, "cuda-emu: block (%u, %u, %u) deadlocked on a barrier\n", x, y, z);
                        run.failed = true;
                    }
                }
        g_run = outer;
        if (run.failed) state().last_error = cudaErrorLaunchFailure; // sticky on a GPU; reported at the next call
    });
}

} // namespace qlora_emu

using namespace qlora_emu;

#define EMU_LOCK std::lock_guard<std::recursive_mutex> emu_guard_(lock())

// ---- runtime API ------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int * count) {
    EMU_LOCK;
    if (!count) return set_error(cudaErrorInvalidValue);
    if (state().devices <= 0) {
        *count = 0;
        return set_error(cudaErrorNoDevice);
    }
    *count = state().devices;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    EMU_LOCK;
    if (!device_ok(device)) return set_error(cudaErrorInvalidDevice);
    state().current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int * device) {
    EMU_LOCK;
    if (!device) return set_error(cudaErrorInvalidValue);
    if (state().devices <= 0) return set_error(cudaErrorNoDevice);
    *device = state().current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp * prop, int device) {
    EMU_LOCK;
    if (!prop) return set_error(cudaErrorInvalidValue);
    if (!device_ok(device)) return set_error(cudaErrorInvalidDevice);
    std::memset(prop, 0, sizeof(*prop));
    std::snprintf(prop->name, sizeof(prop->name), "QLoRA CUDA emulator (CPU)");
    prop->totalGlobalMem = state().capacity;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024;
    prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 2147483647;
    prop->maxGridSize[1] = 65535;
    prop->maxGridSize[2] = 65535;
    prop->clockRate = 1000000;
    prop->major = 8;
    prop->minor = 0;
    prop->multiProcessorCount = 2;
    prop->memoryClockRate = 1000000;
    prop->memoryBusWidth = 64;
    prop->l2CacheSize = 4 << 20;
    prop->concurrentManagedAccess = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int * value, cudaDeviceAttr attr, int device) {
    if (!value) return set_error(cudaErrorInvalidValue);
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return set_error(cudaErrorInvalidDevice);
    switch (attr) {
        case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
        case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(p.sharedMemPerBlock); break;
        case cudaDevAttrWarpSize: *value = 32; break;
        case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
        case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
        case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
        case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
        case cudaDevAttrConcurrentManagedAccess: *value = 1; break;
        case cudaDevAttrMemoryPoolsSupported: *value = 1; break;
        default: return set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int * version) {
    if (!version) return set_error(cudaErrorInvalidValue);
    *version = state().devices > 0 ? CUDART_VERSION : 0;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int * version) {
    if (!version) return set_error(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
    EMU_LOCK;
    drain_all();
    return state().last_error == cudaErrorLaunchFailure ? cudaErrorLaunchFailure : cudaSuccess;
}

cudaError_t cudaGetLastError() {
    EMU_LOCK;
    const cudaError_t e = state().last_error;
    if (e != cudaErrorLaunchFailure) state().last_error = cudaSuccess; // launch failures are sticky
    return e;
}

cudaError_t cudaPeekAtLastError() {
    EMU_LOCK;
    return state().last_error;
}

const char * cudaGetErrorName(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "cudaSuccess";
        case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
        case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
        case cudaErrorInitializationError: return "cudaErrorInitializationError";
        case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
        case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
        case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
        case cudaErrorCallRequiresNewerDriver: return "cudaErrorCallRequiresNewerDriver";
        case cudaErrorNoDevice: return "cudaErrorNoDevice";
        case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
        case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
        case cudaErrorUnsupportedPtxVersion: return "cudaErrorUnsupportedPtxVersion";
        case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
        case cudaErrorNotReady: return "cudaErrorNotReady";
        case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
        case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
        case cudaErrorNotSupported: return "cudaErrorNotSupported";
        case cudaErrorSystemDriverMismatch: return "cudaErrorSystemDriverMismatch";
        case cudaErrorCompatNotSupportedOnDevice: return "cudaErrorCompatNotSupportedOnDevice";
        default: return "cudaErrorUnknown";
    }
}

const char * cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case cudaErrorMemoryAllocation: return "out of memory";
        case cudaErrorInvalidConfiguration: return "invalid configuration argument";
        case cudaErrorNoDevice: return "no CUDA-capable device is detected";
        case cudaErrorInvalidDevice: return "invalid device ordinal";
        case cudaErrorInvalidResourceHandle: return "invalid resource handle";
        case cudaErrorLaunchFailure: return "unspecified launch failure";
        case cudaErrorNotSupported: return "operation not supported";
        default: return "emulated CUDA error";
    }
}

cudaError_t cudaMalloc(void ** ptr, size_t bytes) {
    EMU_LOCK;
    return map_alloc(ptr, bytes, false, false);
}

cudaError_t cudaFree(void * ptr) {
    EMU_LOCK;
    drain_all(); // cudaFree waits for the device
    return unmap_alloc(ptr);
}

cudaError_t cudaMallocAsync(void ** ptr, size_t bytes, cudaStream_t stream) {
    EMU_LOCK;
    if (!stream_of(stream)) return set_error(cudaErrorInvalidResourceHandle);
    return map_alloc(ptr, bytes, false, false);
}

cudaError_t cudaFreeAsync(void * ptr, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    if (ptr && !state().allocs.count(reinterpret_cast<uintptr_t>(ptr))) return set_error(cudaErrorInvalidValue);
    enqueue(*s, [ptr]() { unmap_alloc(ptr); });
    return cudaSuccess;
}

cudaError_t cudaMallocManaged(void ** ptr, size_t bytes, unsigned int) {
    EMU_LOCK;
    return map_alloc(ptr, bytes, true, false);
}

cudaError_t cudaMallocHost(void ** ptr, size_t bytes) {
    EMU_LOCK;
    return map_alloc(ptr, bytes, false, true);
}

cudaError_t cudaFreeHost(void * ptr) {
    EMU_LOCK;
    drain_all();
    return unmap_alloc(ptr);
}

cudaError_t cudaMemGetInfo(size_t * free_bytes, size_t * total_bytes) {
    EMU_LOCK;
    if (!free_bytes || !total_bytes) return set_error(cudaErrorInvalidValue);
    *total_bytes = state().capacity;
    *free_bytes = state().capacity - state().used;
    return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes * attr, const void * ptr) {
    EMU_LOCK;
    if (!attr) return set_error(cudaErrorInvalidValue);
    std::memset(attr, 0, sizeof(*attr));
    attr->device = -2;
    const Allocation * a = find_alloc(ptr);
    if (!a) {
        attr->type = cudaMemoryTypeUnregistered;
        attr->hostPointer = const_cast<void *>(ptr);
        return cudaSuccess;
    }
    attr->type = a->managed ? cudaMemoryTypeManaged : a->pinned_host ? cudaMemoryTypeHost : cudaMemoryTypeDevice;
    attr->device = 0;
    attr->devicePointer = const_cast<void *>(ptr);
    attr->hostPointer = a->managed || a->pinned_host ? const_cast<void *>(ptr) : nullptr;
    return cudaSuccess;
}

namespace {

bool is_device(const void * p) {
    const Allocation * a = find_alloc(p);
    return a && !a->pinned_host;
}

// Checks a copy's direction against where the pointers really are (as a GPU
// would fault on a wrong one).
cudaError_t check_copy(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    const bool dd = is_device(dst), sd = is_device(src);
    switch (kind) {
        case cudaMemcpyHostToDevice: return dd && !sd ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyDeviceToHost: return sd && !dd ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyDeviceToDevice: return sd && dd ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyHostToHost: return !sd && !dd ? cudaSuccess : cudaErrorInvalidValue;
        case cudaMemcpyDefault: return cudaSuccess;
    }
    return cudaErrorInvalidMemcpyDirection;
}

bool in_bounds(const void * p, size_t bytes) {
    State & st = state();
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = st.allocs.upper_bound(a);
    if (it == st.allocs.begin()) return true;
    --it;
    if (a >= it->first + std::max<size_t>(it->second.bytes, 1)) return true; // not device memory
    return a + bytes <= it->first + it->second.bytes;
}

} // namespace

cudaError_t cudaMemcpyAsync(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    const cudaError_t e = check_copy(dst, src, bytes, kind);
    if (e != cudaSuccess) return set_error(e);
    if (!in_bounds(dst, bytes) || !in_bounds(src, bytes)) return set_error(cudaErrorInvalidValue);
    if (bytes) enqueue(*s, [dst, src, bytes]() { std::memmove(dst, src, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void * dst, const void * src, size_t bytes, cudaMemcpyKind kind) {
    EMU_LOCK;
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
    if (e != cudaSuccess) return e;
    drain_all();
    return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void * dst, size_t dpitch, const void * src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    if (width > dpitch || width > spitch) return set_error(cudaErrorInvalidValue);
    if (height == 0 || width == 0) return cudaSuccess;
    const size_t dspan = dpitch * (height - 1) + width, sspan = spitch * (height - 1) + width;
    const cudaError_t e = check_copy(dst, src, 1, kind);
    if (e != cudaSuccess) return set_error(e);
    if (!in_bounds(dst, dspan) || !in_bounds(src, sspan)) return set_error(cudaErrorInvalidValue);
    enqueue(*s, [=]() {
        for (size_t r = 0; r < height; ++r)
            std::memmove(static_cast<uint8_t *>(dst) + r * dpitch, static_cast<const uint8_t *>(src) + r * spitch, width);
    });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void * ptr, int value, size_t bytes, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    if (bytes == 0) return cudaSuccess;
    const Allocation * a = find_alloc(ptr);
    if (!a || a->pinned_host || !in_bounds(ptr, bytes)) return set_error(cudaErrorInvalidValue);
    enqueue(*s, [=]() { std::memset(ptr, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemset(void * ptr, int value, size_t bytes) {
    EMU_LOCK;
    const cudaError_t e = cudaMemsetAsync(ptr, value, bytes, nullptr);
    if (e != cudaSuccess) return e;
    drain_all();
    return cudaSuccess;
}

cudaError_t cudaMemPrefetchAsync(const void * ptr, size_t bytes, int device, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    const Allocation * a = find_alloc(ptr);
    if (!a || !a->managed || !in_bounds(ptr, bytes)) return set_error(cudaErrorInvalidValue);
    if (device != cudaCpuDeviceId && !device_ok(device)) return set_error(cudaErrorInvalidDevice);
    emu_stats().prefetches[device == cudaCpuDeviceId ? 0 : 1] += 1;
    return cudaSuccess;
}

cudaError_t cudaMemAdvise(const void * ptr, size_t bytes, cudaMemoryAdvise, int device) {
    EMU_LOCK;
    const Allocation * a = find_alloc(ptr);
    if (!a || !a->managed || !in_bounds(ptr, bytes)) return set_error(cudaErrorInvalidValue);
    if (device != cudaCpuDeviceId && !device_ok(device)) return set_error(cudaErrorInvalidDevice);
    emu_stats().advises += 1;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t * stream, unsigned int flags) {
    EMU_LOCK;
    if (!stream) return set_error(cudaErrorInvalidValue);
    auto * s = new Stream();
    s->flags = flags;
    state().streams.insert(s);
    *stream = reinterpret_cast<cudaStream_t>(s);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t * stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    EMU_LOCK;
    auto * s = reinterpret_cast<Stream *>(stream);
    if (!state().streams.count(s)) return set_error(cudaErrorInvalidResourceHandle);
    run_queue(*s); // pending work still completes
    state().streams.erase(s);
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    if (s == &state().legacy) drain_all();
    else run_queue(*s);
    return state().last_error == cudaErrorLaunchFailure ? cudaErrorLaunchFailure : cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) { return cudaStreamSynchronize(stream); }

struct CUevent_st {
    Event e;
};

cudaError_t cudaEventCreate(cudaEvent_t * event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t * event, unsigned int) {
    if (!event) return set_error(cudaErrorInvalidValue);
    *event = new CUevent_st();
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    EMU_LOCK;
    delete event;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    EMU_LOCK;
    Stream * s = stream_of(stream);
    if (!s || !event) return set_error(cudaErrorInvalidResourceHandle);
    event->e.stream = s;
    event->e.recorded = false;
    enqueue(*s, [event]() {
        event->e.time = std::chrono::steady_clock::now();
        event->e.recorded = true;
    });
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    EMU_LOCK;
    if (!event) return set_error(cudaErrorInvalidResourceHandle);
    if (event->e.stream) run_queue(*event->e.stream);
    return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int) {
    EMU_LOCK;
    if (!stream_of(stream) || !event) return set_error(cudaErrorInvalidResourceHandle);
    if (event->e.stream) run_queue(*event->e.stream);
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float * ms, cudaEvent_t start, cudaEvent_t end) {
    EMU_LOCK;
    if (!ms || !start || !end) return set_error(cudaErrorInvalidValue);
    if (!start->e.recorded || !end->e.recorded) return set_error(cudaErrorNotReady);
    *ms = std::chrono::duration<float, std::milli>(end->e.time - start->e.time).count();
    return cudaSuccess;
}

namespace qlora_emu {

EmuStats & emu_stats() {
    static EmuStats s;
    return s;
}

void enqueue_on(cudaStream_t stream, std::function<void()> op) {
    std::lock_guard<std::recursive_mutex> g(lock());
    Stream * s = stream_of(stream);
    if (s) enqueue(*s, std::move(op));
}

bool valid_stream(cudaStream_t stream) {
    std::lock_guard<std::recursive_mutex> g(lock());
    return stream_of(stream) != nullptr;
}

bool is_device_pointer(const void * p) {
    std::lock_guard<std::recursive_mutex> g(lock());
    return is_device(p);
}

} // namespace qlora_emu
