// Host memory with a file-backed spill store and LRU eviction.
//
// Resident pages live in frames: page-sized blocks of host memory, at most
// floor(budget / page_bytes) of them, each committed once and then reused.
// A page is either in a frame (resident) or not: then its bytes are in a
// slot of the spill file (with the CRC32C of what was written, verified on
// page-in) or it was never written and is all zeros. Unpinned resident pages
// sit on an LRU list; a page-in that finds no free frame takes the frame of
// the least recently used page, writing that page out first if it is dirty.
// In steady state nothing is mapped, unmapped or faulted in: a page-in is a
// pread into a warm frame and an eviction a pwrite (see docs/pager.md for
// why: on virtual machines a re-faulted MiB costs ten times its I/O).
//
// A consequence: pages of one allocation are not contiguous in memory, so an
// acquired range must lie within one page.
#pragma once

#include "pager/pager.hpp"

#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace qlora {

class HostSpillPager final : public Pager {
public:
    explicit HostSpillPager(const qlora_pager_params & params);
    ~HostSpillPager() override;

    qlora_pager_backing backing() const override { return QLORA_PAGER_HOST_SPILL_FILE; }
    int64_t page_bytes() const override { return page_bytes_; }
    int64_t budget_bytes() const override { return budget_; }
    int64_t alloc(int64_t bytes) override;
    void    dealloc(int64_t id) override;
    void *  acquire(int64_t id, int64_t offset, int64_t bytes, qlora_pager_access access) override;
    void    release(int64_t id, int64_t offset, int64_t bytes) override;
    void    trim(int64_t target_bytes) override;
    qlora_pager_stats stats() const override;
    void    reset_stats() override;
    std::string describe() const override { return "spill file " + path_; }

    // For tests: the spill file, and where page `page` of `id` lives in it
    // (-1 when the page has no copy there).
    const std::string & spill_path() const { return path_; }
    int64_t spill_offset(int64_t id, int64_t page) const;

private:
    struct PageRef {
        int64_t id;
        int64_t page;
    };
    struct Page {
        int64_t   slot = -1;       // slot in the spill file, -1 = none (never written: zeros)
        uint32_t  crc = 0;         // CRC32C of the slot's contents
        int32_t   pins = 0;
        uint8_t * frame = nullptr; // non-null = resident
        bool      dirty = false;   // the frame differs from the slot
        std::list<PageRef>::iterator lru;
    };
    struct Allocation {
        int64_t           bytes = 0;
        std::vector<Page> pages;
    };

    Allocation & find(int64_t id, const char * what);
    const Allocation & find(int64_t id, const char * what) const;
    int64_t   page_len(const Allocation & a, int64_t page) const;
    uint8_t * take_frame();                        // a free frame, evicting if needed
    void      evict(const PageRef & ref, bool free_frame, uint8_t ** frame_out);
    void      write_out(int64_t id, int64_t page_index, Allocation & a, Page & pg);
    void      page_in(int64_t id, int64_t page_index, Allocation & a, uint8_t * frame, bool skip_read);
    uint8_t * new_frame();
    void      free_frame(uint8_t * frame);
    void      check_file_alive(const char * doing) const;

    const int64_t budget_;
    const int64_t page_bytes_;
    const int64_t max_frames_;
    std::string   path_;
    int           fd_ = -1;

    mutable std::mutex                      mutex_;
    std::unordered_map<int64_t, Allocation> allocs_;
    int64_t                                 next_id_ = 1;
    std::list<PageRef>                      lru_; // front = least recently released
    std::vector<int64_t>                    free_slots_;
    int64_t                                 next_slot_ = 0;

    int64_t frames_ = 0, pinned_ = 0, peak_frames_ = 0, allocated_ = 0;
    int64_t page_ins_ = 0, page_outs_ = 0, evictions_ = 0, bytes_in_ = 0, bytes_out_ = 0;
};

} // namespace qlora
