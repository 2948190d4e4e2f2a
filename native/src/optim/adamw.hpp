// The object behind qlora_adamw_t: one parameter group of fp32 buffers whose
// AdamW states (32-bit or 8-bit blockwise) live in host memory or a pager.
//
// A buffer's states are stored in chunks of whole blocks (optim/
// adamw_kernels.hpp has the block layout). With a pager a chunk is exactly
// one page (blocks_per_chunk = page_bytes / block_bytes, the page's tail
// padding unused), so updating a chunk pins one page and any budget of at
// least one page works.
#pragma once

#include "core/buffer.hpp"
#include "core/context.hpp"
#include "optim/adamw_kernels.hpp"
#include "pager/pager.hpp"
#include "qlora.h"

#include <memory>
#include <string>
#include <vector>

namespace qlora::cuda {
struct AdamwDeviceStates; // src/cuda/adamw_cuda.cpp
}

namespace qlora::optim {
// Throws INVALID_ARGUMENT naming the first bad field.
void check_adamw_params(const qlora_adamw_params & p);
// Constants of step t (>= 1) with clipping factor gscale.
StepConsts step_consts(const qlora_adamw_params & p, int64_t t, float gscale);
} // namespace qlora::optim

struct qlora_adamw {
    struct Buffer {
        int64_t numel = 0;
        int64_t n_blocks = 0;
        int64_t n_chunks = 0;
        int64_t storage_bytes = 0;
        int64_t alloc_id = 0;            // paged
        qlora::HostArray<uint8_t> host;  // unpaged
    };

    qlora_adamw(const qlora_adamw_params & params, std::shared_ptr<qlora::Pager> pager);
    ~qlora_adamw();

    void add_buffer(int64_t numel);
    qlora_adamw_step_info step(qlora_context & ctx, const qlora_view * params, const qlora_view * grads,
                               int32_t n_buffers);
    void save(const std::string & path) const;
    void load(const std::string & path);
    qlora_adamw_info info() const;

    // Blocks in chunk c of b, and the byte offset of that chunk in b's storage.
    int64_t chunk_blocks(const Buffer & b, int64_t c) const;
    int64_t chunk_offset(int64_t c) const { return c * chunk_stride_; }
    int64_t block_bytes() const { return block_bytes_; }
    int64_t blocks_per_chunk() const { return blocks_per_chunk_; }

    qlora_adamw_params              params;
    std::shared_ptr<qlora::Pager>   pager;   // null: unpaged
    std::vector<Buffer>             buffers;
    int64_t                         steps_done = 0;
    std::string                     failure; // non-empty: a step failed half-way
    qlora_status                    failure_status = QLORA_OK;
    // Unpaged states that a CUDA step moved to its device (the host arrays
    // are then empty); host code calls states_to_host() before touching them.
    std::shared_ptr<qlora::cuda::AdamwDeviceStates> device_states;
    void states_to_host() const;

private:
    void check_usable(const char * what) const;

    int64_t block_bytes_ = 0;
    int64_t blocks_per_chunk_ = 0;
    int64_t chunk_stride_ = 0;
};
