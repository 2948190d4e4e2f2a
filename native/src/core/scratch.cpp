#include "core/scratch.hpp"

#include <algorithm>

namespace qlora {

void * Scratch::reserve(size_t slot, size_t bytes) {
    if (slot >= slots_.size()) slots_.resize(slot + 1);
    HostArray<uint8_t> & s = slots_[slot];
    if (s.size() < bytes) {
        bytes_ -= static_cast<int64_t>(s.size());
        s.resize(0);
        s.resize(bytes);
        bytes_ += static_cast<int64_t>(bytes);
        peak_ = std::max(peak_, bytes_);
    }
    return s.data();
}

void Scratch::release() {
    slots_.clear();
    bytes_ = 0;
    peak_ = 0;
}

} // namespace qlora
