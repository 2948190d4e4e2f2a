// qlora_adamw_step on a CUDA context. Parameters and gradients are device
// views (or host views, staged through the device). States:
//  - unpaged: moved to the context's device on the first CUDA step and kept
//    there (save / load / a CPU step move them back: states_to_host);
//  - a CUDA_UNIFIED pager: managed memory, prefetched to the device by the
//    pager when a group of pages is acquired; the stream is synchronized
//    before the group is released (the pager may then evict it);
//  - a HOST_SPILL_FILE pager: each pinned page is copied to the device,
//    updated and copied back before it is released.
// The gradient norm is reduced on the device per 4096-element chunk in the
// reference's lane order and summed on the host in chunk order, so results
// are bit-identical to the CPU backends.
#include "cuda/cuda_ops.hpp"
#include "cuda/cuda_state.hpp"
#include "cuda/kernels.hpp"
#include "optim/adamw.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace qlora::cuda {

struct AdamwDeviceStates {
    int32_t                   device = 0;
    std::vector<DeviceBuffer> buffers;        // one per optimizer buffer, storage_bytes each
    cudaEvent_t               done = nullptr; // recorded after the last step's updates (on that step's stream)
    ~AdamwDeviceStates() {
        if (done) cudaEventDestroy(done);
    }
};

namespace {

using optim::kBlock;
using optim::kNormChunk;

AdamwConsts consts_of(const optim::StepConsts & s) {
    AdamwConsts c{};
    c.beta1 = s.beta1;
    c.beta2 = s.beta2;
    c.omb1 = s.omb1;
    c.omb2 = s.omb2;
    c.step_size = s.step_size;
    c.eps_c2 = s.eps_c2;
    c.decay = s.decay;
    c.apply_decay = s.apply_decay;
    c.gscale = s.gscale;
    return c;
}

Code256 map_of(const float * m) {
    Code256 c;
    std::memcpy(c.v, m, sizeof(c.v));
    return c;
}

// Moves unpaged host states to the device (once).
void states_to_device(CudaState & st, qlora_adamw & opt) {
    if (opt.device_states) {
        QLORA_CHECK_ARG(opt.device_states->device == st.device,
                        "the optimizer's states live on CUDA device %d; this context uses device %d",
                        opt.device_states->device, st.device);
        return;
    }
    auto ds = std::make_shared<AdamwDeviceStates>();
    ds->device = st.device;
    check(cudaEventCreateWithFlags(&ds->done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    {
        StreamSync sync(st);
        for (const auto & b : opt.buffers) {
            ds->buffers.push_back(device_alloc(static_cast<size_t>(b.storage_bytes), st.device, "AdamW states"));
            check(cudaMemcpyAsync(ds->buffers.back().data(), b.host.data(), static_cast<size_t>(b.storage_bytes),
                                  cudaMemcpyHostToDevice, st.stream),
                  "cudaMemcpyAsync (AdamW states to the device)");
        }
        sync.sync("cudaStreamSynchronize (AdamW states to the device)");
    }
    for (auto & b : opt.buffers) b.host.resize(0);
    opt.device_states = std::move(ds);
}

struct Views {
    std::vector<float *>       p;
    std::vector<const float *> g;
    bool                       device = false;
};

Views check_views(CudaState & st, const qlora_adamw & opt, const qlora_view * pviews, const qlora_view * gviews) {
    const size_t nb = opt.buffers.size();
    Views v;
    v.p.resize(nb);
    v.g.resize(nb);
    struct Range {
        uintptr_t begin, end;
        size_t    index;
        bool      grad;
    };
    std::vector<Range> ranges;
    for (size_t i = 0; i < nb; ++i) {
        const std::string pn = "params[" + std::to_string(i) + "]", gn = "grads[" + std::to_string(i) + "]";
        const ViewInfo pv = check_contiguous(&pviews[i], pn.c_str(), {QLORA_DTYPE_F32}, true);
        const ViewInfo gv = check_contiguous(&gviews[i], gn.c_str(), {QLORA_DTYPE_F32}, true);
        const int64_t numel = opt.buffers[i].numel;
        QLORA_CHECK_ARG(pv.numel() == numel, "%s has %lld elements but buffer %zu was registered with %lld", pn.c_str(),
                        static_cast<long long>(pv.numel()), i, static_cast<long long>(numel));
        QLORA_CHECK_ARG(gv.numel() == numel, "%s has %lld elements but buffer %zu was registered with %lld", gn.c_str(),
                        static_cast<long long>(gv.numel()), i, static_cast<long long>(numel));
        const bool pd = pv.device != QLORA_DEVICE_HOST, gd = gv.device != QLORA_DEVICE_HOST;
        if (i == 0) v.device = pd;
        if (pd != v.device || gd != v.device)
            fail(QLORA_ERROR_INVALID_ARGUMENT,
                 "params[0] is %s but %s is not: the views of one step must all be host memory or all on the "
                 "context's CUDA device (%d)", v.device ? "device memory" : "host memory",
                 pd != v.device ? pn.c_str() : gn.c_str(), static_cast<int>(st.device));
        if (pd) {
            check_device_view(st, pv, pn.c_str());
            check_device_view(st, gv, gn.c_str());
        }
        v.p[i] = pv.as<float>();
        v.g[i] = gv.as<const float>();
        const uintptr_t pb = reinterpret_cast<uintptr_t>(v.p[i]), gb = reinterpret_cast<uintptr_t>(v.g[i]);
        const uintptr_t bytes = static_cast<uintptr_t>(numel) * sizeof(float);
        ranges.push_back({pb, pb + bytes, i, false});
        ranges.push_back({gb, gb + bytes, i, true});
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range & a, const Range & b) { return a.begin < b.begin; });
    for (size_t k = 1; k < ranges.size(); ++k)
        if (ranges[k].begin < ranges[k - 1].end)
            fail(QLORA_ERROR_INVALID_ARGUMENT, "%s[%zu] and %s[%zu] overlap in memory", ranges[k - 1].grad ? "grads" : "params",
                 ranges[k - 1].index, ranges[k].grad ? "grads" : "params", ranges[k].index);
    return v;
}

} // namespace

void adamw_states_to_host(qlora_adamw & opt) {
    if (!opt.device_states) return;
    DeviceGuard g(opt.device_states->device);
    // The last step's kernels may still run on the stream it was given.
    check(cudaEventSynchronize(opt.device_states->done), "cudaEventSynchronize (AdamW states)");
    for (size_t i = 0; i < opt.buffers.size(); ++i) {
        auto & b = opt.buffers[i];
        b.host.resize(static_cast<size_t>(b.storage_bytes));
        check(cudaMemcpy(b.host.data(), opt.device_states->buffers[i].data(), static_cast<size_t>(b.storage_bytes),
                         cudaMemcpyDeviceToHost),
              "cudaMemcpy (AdamW states to the host)");
    }
    opt.device_states.reset();
}

qlora_adamw_step_info adamw_step(qlora_context & ctx, qlora_adamw & opt, const qlora_view * pviews,
                                 const qlora_view * gviews, int32_t n_buffers) {
    CudaState & st = state_of(ctx);
    DeviceGuard guard(st.device);
    const size_t nb = opt.buffers.size();
    Views v = check_views(st, opt, pviews, gviews);
    Pager * pager = opt.pager.get();
    const bool unified = pager && pager->backing() == QLORA_PAGER_CUDA_UNIFIED;
    StreamSync sync(st); // staged host memory and host pages must not be in flight when we return
    if (v.device) sync.dismiss();

    // Host views: staged on the device for the whole step.
    std::vector<StreamBuffer> staged;
    if (!v.device) {
        for (size_t i = 0; i < nb; ++i) {
            const size_t bytes = static_cast<size_t>(opt.buffers[i].numel) * 4;
            staged.push_back(st.temp(bytes, "staging params on the device"));
            check(cudaMemcpyAsync(staged.back().data(), v.p[i], bytes, cudaMemcpyHostToDevice, st.stream),
                  "cudaMemcpyAsync (params)");
            staged.push_back(st.temp(bytes, "staging grads on the device"));
            check(cudaMemcpyAsync(staged.back().data(), v.g[i], bytes, cudaMemcpyHostToDevice, st.stream),
                  "cudaMemcpyAsync (grads)");
        }
    }
    std::vector<float *> p(nb);
    std::vector<const float *> g(nb);
    for (size_t i = 0; i < nb; ++i) {
        p[i] = v.device ? v.p[i] : staged[2 * i].as<float>();
        g[i] = v.device ? v.g[i] : staged[2 * i + 1].as<const float>();
    }

    // Global gradient norm: per-chunk partial sums on the device, summed here in order.
    std::vector<int64_t> first_chunk(nb + 1, 0);
    for (size_t i = 0; i < nb; ++i)
        first_chunk[i + 1] = first_chunk[i] + (opt.buffers[i].numel + kNormChunk - 1) / kNormChunk;
    const int64_t chunks = first_chunk[nb];
    std::vector<double> partial(static_cast<size_t>(chunks));
    {
        StreamBuffer dpart = st.temp(static_cast<size_t>(chunks) * 8, "gradient norm partial sums");
        for (size_t i = 0; i < nb; ++i) {
            launch_sumsq_chunks(g[i], opt.buffers[i].numel, dpart.as<double>() + first_chunk[i], st.stream);
            check_launch("the gradient norm kernel");
        }
        check(cudaMemcpyAsync(partial.data(), dpart.data(), static_cast<size_t>(chunks) * 8, cudaMemcpyDeviceToHost,
                              st.stream),
              "cudaMemcpyAsync (gradient norm)");
        check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (gradient norm)");
    }
    double total = 0.0;
    for (double s : partial) total += s;
    if (!std::isfinite(total)) {
        StreamBuffer bad = st.temp(8 * nb, "NaN/Inf index");
        check(cudaMemsetAsync(bad.data(), 0xff, 8 * nb, st.stream), "cudaMemsetAsync");
        for (size_t i = 0; i < nb; ++i) {
            launch_find_nonfinite(g[i], QLORA_DTYPE_F32, opt.buffers[i].numel, bad.as<unsigned long long>() + i,
                                  st.sm_count, st.stream);
            check_launch("the NaN/Inf scan");
        }
        std::vector<unsigned long long> idx(nb);
        check(cudaMemcpyAsync(idx.data(), bad.data(), 8 * nb, cudaMemcpyDeviceToHost, st.stream), "cudaMemcpyAsync");
        check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (NaN/Inf scan)");
        for (size_t i = 0; i < nb; ++i)
            if (idx[i] != ~0ull) {
                float val = 0.0f;
                check(cudaMemcpy(&val, g[i] + idx[i], 4, cudaMemcpyDeviceToHost), "cudaMemcpy (bad gradient)");
                fail(QLORA_ERROR_INVALID_ARGUMENT,
                     "grads[%zu] element %lld is %s: non-finite gradient (nothing was updated)", i,
                     static_cast<long long>(idx[i]), std::isnan(val) ? "NaN" : "Inf");
            }
        fail(QLORA_ERROR_INVALID_ARGUMENT, "the gradient norm overflowed");
    }
    const double norm = std::sqrt(total);
    float gscale = 1.0f;
    if (opt.params.max_grad_norm > 0.0f) {
        const double coef = static_cast<double>(opt.params.max_grad_norm) / (norm + 1e-6);
        if (coef < 1.0) gscale = static_cast<float>(coef);
    }
    const int64_t t = opt.steps_done + 1;
    const AdamwConsts c = consts_of(optim::step_consts(opt.params, t, gscale));
    const bool eight = opt.params.state == QLORA_OPTIM_STATE_8BIT;
    const Code256 map1 = map_of(optim::signed_state_map()), map2 = map_of(optim::unsigned_dynamic_map());
    auto update = [&](size_t i, int64_t block0, int64_t blocks, uint8_t * states) {
        const int64_t e0 = block0 * kBlock;
        const int64_t n = std::min(opt.buffers[i].numel, (block0 + blocks) * kBlock) - e0;
        if (eight) launch_adamw8(c, p[i] + e0, g[i] + e0, n, states, map1, map2, st.stream);
        else launch_adamw32(c, p[i] + e0, g[i] + e0, n, states, st.sm_count, st.stream);
        check_launch(eight ? "the 8-bit AdamW kernel" : "the 32-bit AdamW kernel");
    };

    if (!pager) states_to_device(st, opt); // before anything changes: a failure here leaves the optimizer as it was
    try {
        if (!pager) {
            // after the previous step's updates, also when it ran on another stream
            check(cudaStreamWaitEvent(st.stream, opt.device_states->done, 0), "cudaStreamWaitEvent");
            for (size_t i = 0; i < nb; ++i)
                update(i, 0, opt.buffers[i].n_blocks, static_cast<uint8_t *>(opt.device_states->buffers[i].data()));
            check(cudaEventRecord(opt.device_states->done, st.stream), "cudaEventRecord");
        } else if (unified) {
            // Groups of up to half the budget's pages (at least one chunk): pinned (prefetched), updated, then
            // the stream is synchronized before the pages are released.
            const int64_t group = std::max<int64_t>(1, pager->budget_bytes() / pager->page_bytes() / 2);
            for (size_t i = 0; i < nb; ++i) {
                const auto & b = opt.buffers[i];
                for (int64_t c0 = 0; c0 < b.n_chunks; c0 += group) {
                    const int64_t c1 = std::min(b.n_chunks, c0 + group);
                    const int64_t off = opt.chunk_offset(c0);
                    const int64_t bytes = opt.chunk_offset(c1 - 1) + opt.chunk_blocks(b, c1 - 1) * opt.block_bytes() - off;
                    PinnedRange pin(*pager, b.alloc_id, off, bytes, QLORA_PAGER_READ_WRITE);
                    for (int64_t ch = c0; ch < c1; ++ch)
                        update(i, ch * opt.blocks_per_chunk(), opt.chunk_blocks(b, ch),
                               pin.data() + (opt.chunk_offset(ch) - off));
                    check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (paged AdamW group)");
                }
            }
        } else {
            // Host pages: each chunk copied to the device, updated, copied back.
            StreamBuffer dev = st.temp(static_cast<size_t>(pager->page_bytes()), "a state page on the device");
            for (size_t i = 0; i < nb; ++i) {
                const auto & b = opt.buffers[i];
                for (int64_t ch = 0; ch < b.n_chunks; ++ch) {
                    const int64_t bytes = opt.chunk_blocks(b, ch) * opt.block_bytes();
                    PinnedRange pin(*pager, b.alloc_id, opt.chunk_offset(ch), bytes, QLORA_PAGER_READ_WRITE);
                    check(cudaMemcpyAsync(dev.data(), pin.data(), static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                                          st.stream),
                          "cudaMemcpyAsync (state page)");
                    update(i, ch * opt.blocks_per_chunk(), opt.chunk_blocks(b, ch), dev.as<uint8_t>());
                    check(cudaMemcpyAsync(pin.data(), dev.data(), static_cast<size_t>(bytes), cudaMemcpyDeviceToHost,
                                          st.stream),
                          "cudaMemcpyAsync (state page)");
                    check(cudaStreamSynchronize(st.stream), "cudaStreamSynchronize (state page)");
                }
            }
        }
        if (!v.device) {
            for (size_t i = 0; i < nb; ++i)
                check(cudaMemcpyAsync(v.p[i], p[i], static_cast<size_t>(opt.buffers[i].numel) * 4,
                                      cudaMemcpyDeviceToHost, st.stream),
                      "cudaMemcpyAsync (params)");
            sync.sync("cudaStreamSynchronize (AdamW step)");
        }
    } catch (const Error & e) {
        opt.failure = "step " + std::to_string(t) + ": " + e.what();
        opt.failure_status = e.status();
        throw;
    } catch (const std::exception & e) {
        opt.failure = "step " + std::to_string(t) + ": " + e.what();
        opt.failure_status = QLORA_ERROR_INTERNAL;
        throw;
    }
    opt.steps_done = t;
    qlora_adamw_step_info out{};
    out.step = t;
    out.grad_norm = norm;
    out.clip_scale = gscale;
    (void)n_buffers;
    return out;
}

} // namespace qlora::cuda
