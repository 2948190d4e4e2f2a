// Owning, 64-byte aligned host arrays.
#pragma once

#include "core/error.hpp"

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace qlora {

struct AlignedFree {
    void operator()(void * p) const noexcept { std::free(p); }
};

template <typename T>
class HostArray {
public:
    HostArray() = default;
    explicit HostArray(size_t n) { resize(n); }

    void resize(size_t n) {
        if (n == 0) { data_.reset(); size_ = 0; return; }
        const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
        void * p = std::aligned_alloc(64, bytes);
        if (!p) fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
        data_.reset(p);
        size_ = n;
    }
    T * data() { return static_cast<T *>(data_.get()); }
    const T * data() const { return static_cast<const T *>(data_.get()); }
    size_t size() const { return size_; }
    size_t bytes() const { return size_ * sizeof(T); }
    T & operator[](size_t i) { return data()[i]; }
    const T & operator[](size_t i) const { return data()[i]; }

private:
    std::unique_ptr<void, AlignedFree> data_;
    size_t size_ = 0;
};

} // namespace qlora
