// Owning handle of accelerator memory (CUDA device memory), without CUDA
// headers so that host-only code can hold one. It records the device and the
// function that frees it (src/cuda: cudaFree on that device); a build without
// CUDA never creates a non-empty one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace qlora {

class DeviceBuffer {
public:
    using FreeFn = void (*)(void * ptr, int32_t device) noexcept;

    DeviceBuffer() = default;
    DeviceBuffer(void * ptr, size_t bytes, int32_t device, FreeFn free_fn) noexcept
        : ptr_(ptr), bytes_(bytes), device_(device), free_(free_fn) {}
    DeviceBuffer(DeviceBuffer && o) noexcept { *this = std::move(o); }
    DeviceBuffer & operator=(DeviceBuffer && o) noexcept {
        if (this != &o) {
            reset();
            ptr_ = std::exchange(o.ptr_, nullptr);
            bytes_ = std::exchange(o.bytes_, 0);
            device_ = o.device_;
            free_ = o.free_;
        }
        return *this;
    }
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer & operator=(const DeviceBuffer &) = delete;
    ~DeviceBuffer() { reset(); }

    void reset() noexcept {
        if (ptr_ && free_) free_(ptr_, device_);
        ptr_ = nullptr;
        bytes_ = 0;
    }
    void *  data() const { return ptr_; }
    size_t  bytes() const { return bytes_; }
    int32_t device() const { return device_; }
    explicit operator bool() const { return ptr_ != nullptr; }

private:
    void *  ptr_ = nullptr;
    size_t  bytes_ = 0;
    int32_t device_ = -1;
    FreeFn  free_ = nullptr;
};

} // namespace qlora
