// The CUDA backend's entry point for contexts (built only with -DQLORA_CUDA=ON).
// Kept free of CUDA headers and C++20 so that both g++ and nvcc 11.8 (C++17)
// compile everything that includes it.
#pragma once

#include <cstdint>
#include <string>

namespace qlora::cuda {

struct DeviceInfo {
    int32_t     ordinal = 0;
    int32_t     cc_major = 0, cc_minor = 0;
    int64_t     total_memory = 0;
    std::string name;
};

// Validates `device` against the devices the driver reports, makes it the
// calling thread's current device and runs a one-kernel self-test (proves that
// this build's fatbin has code for the device). Throws qlora::Error:
// UNSUPPORTED when no usable driver/device exists or the device is too old for
// this build, INVALID_ARGUMENT for an ordinal out of range, CUDA for any other
// CUDA runtime error (message carries the CUDA error name and string).
DeviceInfo select_device(int32_t device);

} // namespace qlora::cuda
