// The pager behind qlora_pager_t: an interface with one implementation per
// backing (host + spill file here; CUDA unified memory in src/cuda).
#pragma once

#include "qlora.h"

#include <cstdint>
#include <memory>
#include <string>

namespace qlora {

class Pager {
public:
    virtual ~Pager() = default;
    virtual qlora_pager_backing backing() const = 0;
    virtual int64_t page_bytes() const = 0;
    virtual int64_t budget_bytes() const = 0;

    // See qlora.h for the contracts; every method is thread-safe and throws
    // qlora::Error (never leaves a half-done change behind).
    virtual int64_t alloc(int64_t bytes) = 0;
    virtual void    dealloc(int64_t id) = 0;
    virtual void *  acquire(int64_t id, int64_t offset, int64_t bytes, qlora_pager_access access) = 0;
    virtual void    release(int64_t id, int64_t offset, int64_t bytes) = 0;
    virtual void    trim(int64_t target_bytes) = 0;
    virtual qlora_pager_stats stats() const = 0;
    virtual void    reset_stats() = 0;
    // Where the pages go, for messages ("spill file /tmp/x/qlora-spill-1a2b3c").
    virtual std::string describe() const = 0;
};

// Validates the backing-independent fields of `params` (budget, page size).
void check_pager_params(const qlora_pager_params & params);

std::shared_ptr<Pager> make_host_spill_pager(const qlora_pager_params & params);
// QLORA_PAGER_CUDA_UNIFIED slots in here: a `make_cuda_unified_pager(params)`
// defined in src/cuda (cudaMallocManaged + prefetch/advise, docs/pager.md),
// called from qlora_pager_create where it now answers UNSUPPORTED.

} // namespace qlora

struct qlora_pager {
    std::shared_ptr<qlora::Pager> impl;
};
