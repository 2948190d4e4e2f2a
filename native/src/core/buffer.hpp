// Owning, 64-byte aligned host arrays (2 MiB aligned from 4 MiB up).
#pragma once

#include "core/error.hpp"

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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
        // Arrays of 4 MiB and more: 2 MiB aligned and offered transparent huge
        // pages, so that first touch faults once per 2 MiB instead of once per
        // 4 KiB (on the paravirtualized build VM a 4 KiB fault costs ~50 us:
        // filling a fresh 45 MB array took 0.5-0.7 s, with huge pages ~0.06 s).
        const size_t align = n * sizeof(T) >= (size_t(4) << 20) ? size_t(2) << 20 : 64;
        const size_t bytes = ((n * sizeof(T) + align - 1) / align) * align;
        void * p = std::aligned_alloc(align, bytes);
        if (!p) fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot allocate %zu bytes of host memory", bytes);
#if defined(__linux__)
        if (align > 64) madvise(p, bytes, MADV_HUGEPAGE); // advice only: failure changes nothing
#endif
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
