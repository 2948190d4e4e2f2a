#include "pager/host_spill_pager.hpp"

#include "core/error.hpp"
#include "pager/crc32c.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <system_error>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define QLORA_HAVE_POSIX 1
#endif

namespace qlora {

#if QLORA_HAVE_POSIX

namespace {

std::string errno_text(int err) { return std::strerror(err); }

std::string default_spill_dir() {
    const char * t = std::getenv("TMPDIR");
    return (t && *t) ? std::string(t) : std::string("/tmp");
}

// pread/pwrite until done; returns bytes transferred (short only at EOF) or -errno.
int64_t pread_full(int fd, uint8_t * p, int64_t len, int64_t off) {
    int64_t done = 0;
    while (done < len) {
        const ssize_t r = ::pread(fd, p + done, static_cast<size_t>(len - done), static_cast<off_t>(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) break;
        done += r;
    }
    return done;
}

int64_t pwrite_full(int fd, const uint8_t * p, int64_t len, int64_t off) {
    int64_t done = 0;
    while (done < len) {
        const ssize_t r = ::pwrite(fd, p + done, static_cast<size_t>(len - done), static_cast<off_t>(off + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) return -EIO;
        done += r;
    }
    return done;
}

} // namespace

HostSpillPager::HostSpillPager(const qlora_pager_params & params)
    : budget_(params.budget_bytes), page_bytes_(params.page_bytes), max_frames_(params.budget_bytes / params.page_bytes) {
    const std::string dir = params.spill_dir ? std::string(params.spill_dir) : default_spill_dir();
    QLORA_CHECK_ARG(!dir.empty(), "spill_dir must not be empty");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail(QLORA_ERROR_IO, "cannot create spill directory '%s': %s", dir.c_str(), ec.message().c_str());
    if (!std::filesystem::is_directory(dir, ec))
        fail(QLORA_ERROR_IO, "spill_dir '%s' is not a directory", dir.c_str());
    std::string templ = dir + (dir.back() == '/' ? "" : "/") + "qlora-spill-XXXXXX";
    fd_ = ::mkostemp(templ.data(), O_CLOEXEC);
    if (fd_ < 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot create a spill file in '%s': %s", dir.c_str(), errno_text(err).c_str());
    }
    path_ = templ;
}

HostSpillPager::~HostSpillPager() {
    for (auto & kv : allocs_)
        for (auto & pg : kv.second.pages)
            if (pg.frame) free_frame(pg.frame);
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(path_.c_str()); // may already be gone with its directory
    }
}

HostSpillPager::Allocation & HostSpillPager::find(int64_t id, const char * what) {
    auto it = allocs_.find(id);
    if (it == allocs_.end())
        fail(QLORA_ERROR_INVALID_ARGUMENT, "%s: no allocation with id %lld in this pager", what,
             static_cast<long long>(id));
    return it->second;
}

const HostSpillPager::Allocation & HostSpillPager::find(int64_t id, const char * what) const {
    return const_cast<HostSpillPager *>(this)->find(id, what);
}

int64_t HostSpillPager::page_len(const Allocation & a, int64_t page) const {
    return std::min(page_bytes_, a.bytes - page * page_bytes_);
}

uint8_t * HostSpillPager::new_frame() {
    void * p = ::mmap(nullptr, static_cast<size_t>(page_bytes_), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (p == MAP_FAILED) {
        const int err = errno;
        fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot allocate a page frame of %lld bytes: %s",
             static_cast<long long>(page_bytes_), errno_text(err).c_str());
    }
    ++frames_;
    peak_frames_ = std::max(peak_frames_, frames_);
    return static_cast<uint8_t *>(p);
}

void HostSpillPager::free_frame(uint8_t * frame) {
    ::munmap(frame, static_cast<size_t>(page_bytes_));
    --frames_;
}

int64_t HostSpillPager::alloc(int64_t bytes) {
    QLORA_CHECK_ARG(bytes >= 1 && bytes <= (INT64_C(1) << 46), "bytes must be in [1, 2^46], got %lld",
                    static_cast<long long>(bytes));
    Allocation a;
    a.bytes = bytes;
    a.pages.resize(static_cast<size_t>((bytes + page_bytes_ - 1) / page_bytes_));
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t id = next_id_++;
    allocs_.emplace(id, std::move(a));
    allocated_ += bytes;
    return id;
}

void HostSpillPager::dealloc(int64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    Allocation & a = find(id, "dealloc");
    for (size_t i = 0; i < a.pages.size(); ++i)
        QLORA_CHECK_ARG(a.pages[i].pins == 0, "allocation %lld still has page %zu acquired (%d pins)",
                        static_cast<long long>(id), i, a.pages[i].pins);
    for (Page & pg : a.pages) {
        if (pg.frame) {
            lru_.erase(pg.lru);
            free_frame(pg.frame);
        }
        if (pg.slot >= 0) free_slots_.push_back(pg.slot);
    }
    allocated_ -= a.bytes;
    allocs_.erase(id);
}

void HostSpillPager::check_file_alive(const char * doing) const {
    struct stat st;
    if (::fstat(fd_, &st) != 0) {
        const int err = errno;
        fail(QLORA_ERROR_IO, "cannot %s: fstat of spill file '%s' failed: %s", doing, path_.c_str(),
             errno_text(err).c_str());
    }
    if (st.st_nlink == 0)
        fail(QLORA_ERROR_IO, "cannot %s: spill file '%s' was deleted (its directory vanished?)", doing,
             path_.c_str());
}

void HostSpillPager::write_out(int64_t id, int64_t page_index, Allocation & a, Page & pg) {
    check_file_alive("write a page out");
    const int64_t len = page_len(a, page_index);
    const bool new_slot = pg.slot < 0;
    int64_t slot = pg.slot;
    if (new_slot) {
        if (!free_slots_.empty()) {
            slot = free_slots_.back();
            free_slots_.pop_back();
        } else {
            slot = next_slot_++;
        }
    }
    const uint32_t crc = crc32c(pg.frame, static_cast<size_t>(len));
    const int64_t off = slot * page_bytes_;
    const int64_t r = pwrite_full(fd_, pg.frame, len, off);
    if (r < 0) {
        if (new_slot) free_slots_.push_back(slot);
        fail(QLORA_ERROR_IO, "cannot write page %lld of allocation %lld (%lld bytes) to spill file '%s' at offset "
             "%lld: %s", static_cast<long long>(page_index), static_cast<long long>(id), static_cast<long long>(len),
             path_.c_str(), static_cast<long long>(off), errno_text(static_cast<int>(-r)).c_str());
    }
    pg.slot = slot;
    pg.crc = crc;
    pg.dirty = false;
    ++page_outs_;
    bytes_out_ += len;
}

// Evicts an unpinned resident page: written out first if dirty (a failed
// write throws and leaves it resident and dirty: nothing is lost). Its frame
// goes to *frame_out, or back to the system with free_frame.
void HostSpillPager::evict(const PageRef & ref, bool release, uint8_t ** frame_out) {
    Allocation & a = allocs_.at(ref.id);
    Page & pg = a.pages[static_cast<size_t>(ref.page)];
    if (pg.dirty) write_out(ref.id, ref.page, a, pg);
    lru_.erase(pg.lru);
    uint8_t * frame = pg.frame;
    pg.frame = nullptr;
    ++evictions_;
    if (release)
        free_frame(frame);
    else
        *frame_out = frame;
}

uint8_t * HostSpillPager::take_frame() {
    if (frames_ < max_frames_) return new_frame();
    if (lru_.empty())
        fail(QLORA_ERROR_OUT_OF_MEMORY, "pager budget of %lld bytes (%lld frames of %lld bytes) exhausted: every "
             "frame holds a pinned page", static_cast<long long>(budget_), static_cast<long long>(max_frames_),
             static_cast<long long>(page_bytes_));
    uint8_t * frame = nullptr;
    evict(lru_.front(), false, &frame);
    return frame;
}

void HostSpillPager::page_in(int64_t id, int64_t page_index, Allocation & a, uint8_t * frame, bool skip_read) {
    Page & pg = a.pages[static_cast<size_t>(page_index)];
    const int64_t len = page_len(a, page_index);
    if (skip_read) {
        // The caller overwrites the whole page; the slot's copy is stale from here on.
    } else if (pg.slot < 0) {
        std::memset(frame, 0, static_cast<size_t>(len)); // never written: zeros
    } else {
        check_file_alive("read a page back");
        const int64_t off = pg.slot * page_bytes_;
        const int64_t r = pread_full(fd_, frame, len, off);
        if (r < 0)
            fail(QLORA_ERROR_IO, "cannot read page %lld of allocation %lld from spill file '%s' at offset %lld: %s",
                 static_cast<long long>(page_index), static_cast<long long>(id), path_.c_str(),
                 static_cast<long long>(off), errno_text(static_cast<int>(-r)).c_str());
        if (r < len)
            fail(QLORA_ERROR_IO, "short read of page %lld of allocation %lld from spill file '%s' at offset %lld: got "
                 "%lld of %lld bytes (the file was truncated)", static_cast<long long>(page_index),
                 static_cast<long long>(id), path_.c_str(), static_cast<long long>(off), static_cast<long long>(r),
                 static_cast<long long>(len));
        const uint32_t crc = crc32c(frame, static_cast<size_t>(len));
        if (crc != pg.crc)
            fail(QLORA_ERROR_FORMAT, "corrupted page %lld of allocation %lld in spill file '%s' at offset %lld: "
                 "CRC32C 0x%08x, expected 0x%08x", static_cast<long long>(page_index), static_cast<long long>(id),
                 path_.c_str(), static_cast<long long>(off), crc, pg.crc);
        ++page_ins_;
        bytes_in_ += len;
    }
}

void * HostSpillPager::acquire(int64_t id, int64_t offset, int64_t bytes, qlora_pager_access access) {
    const int32_t mode = raw_enum(access);
    QLORA_CHECK_ARG(mode == QLORA_PAGER_READ || mode == QLORA_PAGER_READ_WRITE || mode == QLORA_PAGER_OVERWRITE,
                    "unknown access value %d", mode);
    std::lock_guard<std::mutex> lock(mutex_);
    Allocation & a = find(id, "acquire");
    QLORA_CHECK_ARG(offset >= 0 && bytes >= 1 && offset <= a.bytes && bytes <= a.bytes - offset,
                    "range [offset %lld, + %lld bytes) is outside allocation %lld of %lld bytes",
                    static_cast<long long>(offset), static_cast<long long>(bytes), static_cast<long long>(id),
                    static_cast<long long>(a.bytes));
    const int64_t p = offset / page_bytes_;
    QLORA_CHECK_ARG((offset + bytes - 1) / page_bytes_ == p,
                    "range [offset %lld, + %lld bytes) of allocation %lld crosses a page boundary: the host pager "
                    "acquires within one page of %lld bytes at a time", static_cast<long long>(offset),
                    static_cast<long long>(bytes), static_cast<long long>(id), static_cast<long long>(page_bytes_));
    Page & pg = a.pages[static_cast<size_t>(p)];
    if (!pg.frame) {
        if (pinned_ + 1 > max_frames_)
            fail(QLORA_ERROR_OUT_OF_MEMORY, "acquiring page %lld of allocation %lld would pin %lld pages of %lld bytes, "
                 "more than the budget of %lld bytes holds", static_cast<long long>(p), static_cast<long long>(id),
                 static_cast<long long>(pinned_ + 1), static_cast<long long>(page_bytes_),
                 static_cast<long long>(budget_));
        uint8_t * frame = take_frame(); // may evict (and throw before anything changed here)
        const int64_t len = page_len(a, p);
        const bool whole = access == QLORA_PAGER_OVERWRITE && offset == p * page_bytes_ && bytes == len;
        try {
            page_in(id, p, a, frame, whole);
        } catch (...) {
            free_frame(frame);
            throw;
        }
        pg.frame = frame;
    } else if (pg.pins == 0) {
        lru_.erase(pg.lru);
    }
    if (pg.pins++ == 0) ++pinned_;
    if (access != QLORA_PAGER_READ) pg.dirty = true;
    return pg.frame + (offset - p * page_bytes_);
}

void HostSpillPager::release(int64_t id, int64_t offset, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    Allocation & a = find(id, "release");
    QLORA_CHECK_ARG(offset >= 0 && bytes >= 1 && offset <= a.bytes && bytes <= a.bytes - offset &&
                        (offset + bytes - 1) / page_bytes_ == offset / page_bytes_,
                    "release of allocation %lld: range [offset %lld, + %lld bytes) was never acquired (outside the "
                    "allocation of %lld bytes or across pages)", static_cast<long long>(id),
                    static_cast<long long>(offset), static_cast<long long>(bytes), static_cast<long long>(a.bytes));
    const int64_t p = offset / page_bytes_;
    Page & pg = a.pages[static_cast<size_t>(p)];
    QLORA_CHECK_ARG(pg.pins > 0, "release of allocation %lld range [%lld, +%lld): page %lld is not acquired",
                    static_cast<long long>(id), static_cast<long long>(offset), static_cast<long long>(bytes),
                    static_cast<long long>(p));
    if (--pg.pins == 0) {
        --pinned_;
        pg.lru = lru_.insert(lru_.end(), PageRef{id, p});
    }
}

void HostSpillPager::trim(int64_t target_bytes) {
    QLORA_CHECK_ARG(target_bytes >= 0, "target_bytes must be >= 0, got %lld", static_cast<long long>(target_bytes));
    std::lock_guard<std::mutex> lock(mutex_);
    while (frames_ * page_bytes_ > target_bytes && !lru_.empty()) evict(lru_.front(), true, nullptr);
}

qlora_pager_stats HostSpillPager::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    qlora_pager_stats s{};
    s.budget_bytes = budget_;
    s.page_bytes = page_bytes_;
    s.allocations = static_cast<int64_t>(allocs_.size());
    s.allocated_bytes = allocated_;
    s.resident_bytes = frames_ * page_bytes_;
    s.peak_resident_bytes = peak_frames_ * page_bytes_;
    s.pinned_bytes = pinned_ * page_bytes_;
    s.page_ins = page_ins_;
    s.page_outs = page_outs_;
    s.evictions = evictions_;
    s.bytes_paged_in = bytes_in_;
    s.bytes_spilled = bytes_out_;
    s.store_bytes = next_slot_ * page_bytes_;
    return s;
}

void HostSpillPager::reset_stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    page_ins_ = page_outs_ = evictions_ = bytes_in_ = bytes_out_ = 0;
    peak_frames_ = frames_;
}

int64_t HostSpillPager::spill_offset(int64_t id, int64_t page) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const Allocation & a = find(id, "spill_offset");
    QLORA_CHECK_ARG(page >= 0 && page < static_cast<int64_t>(a.pages.size()), "page %lld out of range",
                    static_cast<long long>(page));
    const Page & pg = a.pages[static_cast<size_t>(page)];
    return pg.slot < 0 ? -1 : pg.slot * page_bytes_;
}

std::shared_ptr<Pager> make_host_spill_pager(const qlora_pager_params & params) {
    return std::make_shared<HostSpillPager>(params);
}

#else // no POSIX

std::shared_ptr<Pager> make_host_spill_pager(const qlora_pager_params &) {
    fail(QLORA_ERROR_UNSUPPORTED, "the host spill-file pager needs a POSIX system (mmap, pread, pwrite)");
}

#endif

} // namespace qlora
