// The CUDA_UNIFIED pager: every allocation is one range of CUDA managed
// memory (cudaMallocManaged), usable on the device and the host. The pager
// keeps at most `budget` bytes of pages resident on the device: acquiring a
// range advises the device as its preferred location and prefetches its
// non-resident pages there (zero-filling pages never written), evicting the
// least recently used unpinned pages first (advised and prefetched back to
// the host). It never prefetches more than the device has free: the
// effective budget is capped by the free device memory at creation, and an
// acquire that would need more than is free now is OUT_OF_MEMORY with the
// sizes; an allocation larger than the device's free memory is refused too
// (managed memory is never oversubscribed). Prefetches run on the pager's own
// stream; acquire waits for them, so the data is on the device when the
// caller's kernels run.
#include "cuda/cuda_common.hpp"
#include "pager/pager.hpp"

#include <algorithm>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace qlora {

namespace {

class CudaUnifiedPager final : public Pager {
public:
    explicit CudaUnifiedPager(const qlora_pager_params & p) : page_bytes_(p.page_bytes), device_(p.device) {
        int count = 0;
        const cudaError_t e = cudaGetDeviceCount(&count);
        if (e != cudaSuccess) cuda::fail_cuda(e, "cudaGetDeviceCount (CUDA_UNIFIED pager)");
        QLORA_CHECK_ARG(p.device >= 0 && p.device < count, "device must be a CUDA device ordinal in [0, %d), got %d",
                        count, static_cast<int>(p.device));
        cuda::DeviceGuard g(device_);
        int managed = 0;
        cuda::check(cudaDeviceGetAttribute(&managed, cudaDevAttrConcurrentManagedAccess, device_),
                    "cudaDeviceGetAttribute(concurrentManagedAccess)");
        if (!managed)
            fail(QLORA_ERROR_UNSUPPORTED, "CUDA device %d cannot prefetch managed memory (no concurrent managed access, "
                 "e.g. Windows or WSL); use QLORA_PAGER_HOST_SPILL_FILE", static_cast<int>(device_));
        size_t free_b = 0, total_b = 0;
        cuda::check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
        const int64_t free_pages = static_cast<int64_t>(free_b) / page_bytes_;
        if (free_pages < 1)
            cuda::fail_oom(static_cast<size_t>(page_bytes_), device_, "CUDA_UNIFIED pager (one page)");
        budget_ = std::min(p.budget_bytes / page_bytes_, free_pages) * page_bytes_;
        cuda::check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    }

    ~CudaUnifiedPager() override {
        int prev = -1;
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        cudaSetDevice(device_);
        if (stream_) cudaStreamSynchronize(stream_);
        for (auto & [id, a] : allocs_) cudaFree(a.base);
        if (stream_) cudaStreamDestroy(stream_);
        if (prev >= 0) cudaSetDevice(prev);
        cudaGetLastError();
    }

    qlora_pager_backing backing() const override { return QLORA_PAGER_CUDA_UNIFIED; }
    int64_t page_bytes() const override { return page_bytes_; }
    int64_t budget_bytes() const override { return budget_; }
    std::string describe() const override { return "CUDA managed memory on device " + std::to_string(device_); }

    int64_t alloc(int64_t bytes) override {
        QLORA_CHECK_ARG(bytes >= 1 && bytes <= (INT64_C(1) << 46), "bytes must be in [1, 2^46], got %lld",
                        static_cast<long long>(bytes));
        const int64_t pages = (bytes + page_bytes_ - 1) / page_bytes_;
        cuda::DeviceGuard g(device_);
        // Never more managed memory than the device has free (oversubscribed
        // managed memory can stall the whole GPU on some systems).
        size_t free_b = 0, total_b = 0;
        cuda::check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
        if (pages * page_bytes_ > static_cast<int64_t>(free_b))
            fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot allocate %lld bytes of CUDA managed memory: CUDA device %d has %zu of "
                 "%zu bytes free, and the pager never asks for more managed memory than that",
                 static_cast<long long>(pages * page_bytes_), static_cast<int>(device_), free_b, total_b);
        void * p = nullptr;
        const cudaError_t e = cudaMallocManaged(&p, static_cast<size_t>(pages * page_bytes_), cudaMemAttachGlobal);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot allocate %lld bytes of CUDA managed memory",
                 static_cast<long long>(pages * page_bytes_));
        }
        cuda::check(e, "cudaMallocManaged");
        Allocation a;
        a.bytes = bytes;
        a.base = static_cast<uint8_t *>(p);
        a.pages.resize(static_cast<size_t>(pages));
        std::lock_guard<std::mutex> lock(mutex_);
        const int64_t id = next_id_++;
        allocs_.emplace(id, std::move(a));
        allocated_ += bytes;
        store_ += pages * page_bytes_;
        return id;
    }

    void dealloc(int64_t id) override {
        std::lock_guard<std::mutex> lock(mutex_);
        Allocation & a = find(id, "dealloc");
        for (size_t i = 0; i < a.pages.size(); ++i)
            QLORA_CHECK_ARG(a.pages[i].pins == 0, "allocation %lld still has page %zu acquired (%d pins)",
                            static_cast<long long>(id), i, a.pages[i].pins);
        for (size_t i = 0; i < a.pages.size(); ++i) {
            Page & pg = a.pages[i];
            if (pg.resident) {
                lru_.erase(pg.lru);
                --resident_;
            }
        }
        cuda::DeviceGuard g(device_);
        cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (pager)");
        cuda::check(cudaFree(a.base), "cudaFree (managed allocation)");
        allocated_ -= a.bytes;
        store_ -= static_cast<int64_t>(a.pages.size()) * page_bytes_;
        allocs_.erase(id);
    }

    void * acquire(int64_t id, int64_t offset, int64_t bytes, qlora_pager_access access) override {
        const int32_t acc = raw_enum(access);
        QLORA_CHECK_ARG(acc == QLORA_PAGER_READ || acc == QLORA_PAGER_READ_WRITE || acc == QLORA_PAGER_OVERWRITE,
                        "access must be READ (0), READ_WRITE (1) or OVERWRITE (2), got %d", acc);
        std::lock_guard<std::mutex> lock(mutex_);
        Allocation & a = find(id, "acquire");
        QLORA_CHECK_ARG(offset >= 0 && bytes >= 1 && offset <= a.bytes && bytes <= a.bytes - offset,
                        "acquire of allocation %lld: range [offset %lld, + %lld bytes) is outside its %lld bytes",
                        static_cast<long long>(id), static_cast<long long>(offset), static_cast<long long>(bytes),
                        static_cast<long long>(a.bytes));
        const int64_t p0 = offset / page_bytes_, p1 = (offset + bytes - 1) / page_bytes_ + 1;
        int64_t need = 0, newly_pinned = 0;
        for (int64_t p = p0; p < p1; ++p) {
            const Page & pg = a.pages[static_cast<size_t>(p)];
            need += pg.resident ? 0 : 1;
            newly_pinned += pg.pins == 0 ? 1 : 0;
        }
        if ((pinned_ + newly_pinned) * page_bytes_ > budget_)
            fail(QLORA_ERROR_OUT_OF_MEMORY, "acquire of allocation %lld: pinning %lld more pages (%lld bytes) would pin "
                 "%lld bytes, more than the budget of %lld", static_cast<long long>(id),
                 static_cast<long long>(newly_pinned), static_cast<long long>(newly_pinned * page_bytes_),
                 static_cast<long long>((pinned_ + newly_pinned) * page_bytes_), static_cast<long long>(budget_));
        cuda::DeviceGuard g(device_);
        // Make room within the budget (evictions are asynchronous prefetches to the host).
        while ((resident_ + need) * page_bytes_ > budget_) {
            if (!evict_lru(id, p0, p1))
                fail(QLORA_ERROR_OUT_OF_MEMORY, "acquire of allocation %lld: no unpinned page left to evict",
                     static_cast<long long>(id));
        }
        if (need > 0) {
            size_t free_b = 0, total_b = 0;
            cuda::check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
            const int64_t want = need * page_bytes_;
            if (static_cast<int64_t>(free_b) < want)
                fail(QLORA_ERROR_OUT_OF_MEMORY, "acquire of allocation %lld: %lld bytes to prefetch to CUDA device %d, "
                     "which has %zu of %zu bytes free", static_cast<long long>(id), static_cast<long long>(want),
                     static_cast<int>(device_), free_b, total_b);
        }
        for (int64_t p = p0; p < p1; ++p) {
            Page & pg = a.pages[static_cast<size_t>(p)];
            uint8_t * ptr = a.base + p * page_bytes_;
            const int64_t len = page_len(a, p);
            if (!pg.resident) {
                cuda::check(cuda::advise_preferred_location(ptr, static_cast<size_t>(len), device_),
                            "cudaMemAdvise (preferred location: device)");
                const bool whole = acc == QLORA_PAGER_OVERWRITE && p * page_bytes_ >= offset &&
                                   p * page_bytes_ + len <= offset + bytes;
                if (!pg.written && !whole) {
                    // Never written: zero it on the device (this also places it there).
                    cuda::check(cudaMemsetAsync(ptr, 0, static_cast<size_t>(len), stream_), "cudaMemsetAsync (new page)");
                } else if (pg.written) {
                    cuda::check(cuda::prefetch_managed(ptr, static_cast<size_t>(len), device_, stream_),
                                "cudaMemPrefetchAsync (to the device)");
                    ++page_ins_;
                    bytes_in_ += len;
                }
                pg.resident = true;
                ++resident_;
                peak_ = std::max(peak_, resident_);
            } else if (pg.pins == 0) {
                lru_.erase(pg.lru);
            }
            if (pg.pins++ == 0) ++pinned_;
            pg.written = true; // zero-filled above, or about to be overwritten
        }
        cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (pager prefetch)");
        return a.base + offset;
    }

    void release(int64_t id, int64_t offset, int64_t bytes) override {
        std::lock_guard<std::mutex> lock(mutex_);
        Allocation & a = find(id, "release");
        QLORA_CHECK_ARG(offset >= 0 && bytes >= 1 && offset <= a.bytes && bytes <= a.bytes - offset,
                        "release of allocation %lld: range [offset %lld, + %lld bytes) was never acquired",
                        static_cast<long long>(id), static_cast<long long>(offset), static_cast<long long>(bytes));
        const int64_t p0 = offset / page_bytes_, p1 = (offset + bytes - 1) / page_bytes_ + 1;
        for (int64_t p = p0; p < p1; ++p)
            QLORA_CHECK_ARG(a.pages[static_cast<size_t>(p)].pins > 0,
                            "release of allocation %lld range [%lld, +%lld): page %lld is not acquired",
                            static_cast<long long>(id), static_cast<long long>(offset), static_cast<long long>(bytes),
                            static_cast<long long>(p));
        for (int64_t p = p0; p < p1; ++p) {
            Page & pg = a.pages[static_cast<size_t>(p)];
            if (--pg.pins == 0) {
                --pinned_;
                pg.lru = lru_.insert(lru_.end(), PageRef{id, p});
            }
        }
    }

    void trim(int64_t target_bytes) override {
        QLORA_CHECK_ARG(target_bytes >= 0, "target_bytes must be >= 0, got %lld", static_cast<long long>(target_bytes));
        std::lock_guard<std::mutex> lock(mutex_);
        cuda::DeviceGuard g(device_);
        while (resident_ * page_bytes_ > target_bytes && evict_lru(-1, 0, 0)) {
        }
        cuda::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (pager eviction)");
    }

    qlora_pager_stats stats() const override {
        std::lock_guard<std::mutex> lock(mutex_);
        qlora_pager_stats s{};
        s.budget_bytes = budget_;
        s.page_bytes = page_bytes_;
        s.allocations = static_cast<int64_t>(allocs_.size());
        s.allocated_bytes = allocated_;
        s.resident_bytes = resident_ * page_bytes_;
        s.peak_resident_bytes = peak_ * page_bytes_;
        s.pinned_bytes = pinned_ * page_bytes_;
        s.page_ins = page_ins_;
        s.page_outs = page_outs_;
        s.evictions = evictions_;
        s.bytes_paged_in = bytes_in_;
        s.bytes_spilled = bytes_out_;
        s.store_bytes = store_;
        return s;
    }

    void reset_stats() override {
        std::lock_guard<std::mutex> lock(mutex_);
        page_ins_ = page_outs_ = evictions_ = bytes_in_ = bytes_out_ = 0;
        peak_ = resident_;
    }

private:
    struct PageRef {
        int64_t id, page;
    };
    struct Page {
        int32_t pins = 0;
        bool    resident = false; // prefetched to the device and not evicted since
        bool    written = false;  // has contents (else it reads as zeros)
        std::list<PageRef>::iterator lru;
    };
    struct Allocation {
        int64_t           bytes = 0;
        uint8_t *         base = nullptr;
        std::vector<Page> pages;
    };

    Allocation & find(int64_t id, const char * what) {
        auto it = allocs_.find(id);
        QLORA_CHECK_ARG(it != allocs_.end(), "%s: no allocation with id %lld", what, static_cast<long long>(id));
        return it->second;
    }

    int64_t page_len(const Allocation & a, int64_t p) const {
        return std::min(page_bytes_, static_cast<int64_t>(a.pages.size()) * page_bytes_ - p * page_bytes_);
    }

    // Evicts the least recently used unpinned page outside [p0, p1) of `id`.
    bool evict_lru(int64_t id, int64_t p0, int64_t p1) {
        for (auto it = lru_.begin(); it != lru_.end(); ++it) {
            if (it->id == id && it->page >= p0 && it->page < p1) continue;
            Allocation & a = allocs_.at(it->id);
            Page & pg = a.pages[static_cast<size_t>(it->page)];
            uint8_t * ptr = a.base + it->page * page_bytes_;
            const int64_t len = page_len(a, it->page);
            cuda::check(cuda::advise_preferred_location(ptr, static_cast<size_t>(len), cudaCpuDeviceId),
                        "cudaMemAdvise (preferred location: host)");
            cuda::check(cuda::prefetch_managed(ptr, static_cast<size_t>(len), cudaCpuDeviceId, stream_),
                        "cudaMemPrefetchAsync (to the host)");
            pg.resident = false;
            --resident_;
            ++evictions_;
            ++page_outs_;
            bytes_out_ += len;
            lru_.erase(it);
            return true;
        }
        return false;
    }

    const int64_t page_bytes_;
    const int32_t device_;
    int64_t       budget_ = 0;
    cudaStream_t  stream_ = nullptr;

    mutable std::mutex                      mutex_;
    std::unordered_map<int64_t, Allocation> allocs_;
    std::list<PageRef>                      lru_; // front = least recently released
    int64_t next_id_ = 1, resident_ = 0, pinned_ = 0, peak_ = 0, allocated_ = 0, store_ = 0;
    int64_t page_ins_ = 0, page_outs_ = 0, evictions_ = 0, bytes_in_ = 0, bytes_out_ = 0;
};

} // namespace

std::shared_ptr<Pager> make_cuda_unified_pager(const qlora_pager_params & params) {
    return std::make_shared<CudaUnifiedPager>(params);
}

} // namespace qlora
