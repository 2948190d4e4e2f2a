// Internals shared by the emulator's sources (not part of the emulated API).
#pragma once

#include "cuda_runtime.h"

#include <functional>

namespace qlora_emu {

struct EmuStats {
    long long prefetches[2] = {0, 0}; // [0]: to the host, [1]: to the device
    long long advises = 0;
};
EmuStats & emu_stats();

// Queues host-side work on a stream (the emulated cuBLAS uses it).
void enqueue_on(cudaStream_t stream, std::function<void()> op);
bool valid_stream(cudaStream_t stream);
bool is_device_pointer(const void * p);

} // namespace qlora_emu
