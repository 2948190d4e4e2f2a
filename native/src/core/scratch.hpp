// Scratch memory owned by a context: one 64-byte aligned slot per pool thread
// (plus shared slots), grown on demand and kept between calls. Kernels size
// their tiles up front from the calling thread (`reserve`), then each thread
// uses its own slot. The context reports the bytes held and their high-water
// mark (qlora_context_get_stats), which is how tests check that a kernel's
// extra memory is bounded by its tiles.
#pragma once

#include "core/buffer.hpp"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qlora {

class Scratch {
public:
    // Makes slot `slot` at least `bytes` long (contents are not kept when it
    // grows) and returns it. Not thread-safe: call from the calling thread
    // before a parallel region.
    void * reserve(size_t slot, size_t bytes);
    // The memory of a slot reserved earlier (for use inside a parallel region).
    void * at(size_t slot) { return slots_[slot].data(); }

    int64_t bytes() const { return bytes_; }
    int64_t peak() const { return peak_; }
    // Frees every slot and restarts the high-water mark at 0.
    void release();

private:
    std::vector<HostArray<uint8_t>> slots_;
    int64_t bytes_ = 0, peak_ = 0;
};

} // namespace qlora
