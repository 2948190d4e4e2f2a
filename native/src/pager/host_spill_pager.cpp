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
    : budget_(params.budget_bytes), page_bytes_(params.page_bytes) {
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
        if (kv.second.base) ::munmap(kv.second.base, kv.second.map_bytes);
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

void HostSpillPager::check_range(const Allocation & a, int64_t id, int64_t offset, int64_t bytes) const {
    QLORA_CHECK_ARG(offset >= 0 && bytes >= 1 && offset <= a.bytes && bytes <= a.bytes - offset,
                    "range [offset %lld, + %lld bytes) is outside allocation %lld of %lld bytes",
                    static_cast<long long>(offset), static_cast<long long>(bytes), static_cast<long long>(id),
                    static_cast<long long>(a.bytes));
}

int64_t HostSpillPager::page_len(const Allocation & a, int64_t page) const {
    return std::min(page_bytes_, a.bytes - page * page_bytes_);
}

int64_t HostSpillPager::alloc(int64_t bytes) {
    QLORA_CHECK_ARG(bytes >= 1 && bytes <= (INT64_C(1) << 46), "bytes must be in [1, 2^46], got %lld",
                    static_cast<long long>(bytes));
    const int64_t n_pages = (bytes + page_bytes_ - 1) / page_bytes_;
    const size_t map_bytes = static_cast<size_t>(n_pages * page_bytes_);
    Allocation a;
    a.bytes = bytes;
    a.pages.resize(static_cast<size_t>(n_pages));
    void * p = ::mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        const int err = errno;
        fail(QLORA_ERROR_OUT_OF_MEMORY, "cannot reserve %zu bytes of address space: %s", map_bytes,
             errno_text(err).c_str());
    }
    a.base = static_cast<uint8_t *>(p);
    a.map_bytes = map_bytes;
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
    for (size_t i = 0; i < a.pages.size(); ++i) {
        Page & pg = a.pages[i];
        if (pg.resident) {
            lru_.erase(pg.lru);
            resident_ -= page_len(a, static_cast<int64_t>(i));
        }
        if (pg.slot >= 0) free_slots_.push_back(pg.slot);
    }
    ::munmap(a.base, a.map_bytes);
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

void HostSpillPager::discard(uint8_t * ptr, int64_t len) {
    // Anonymous private memory: the next touch sees zeros, and the physical
    // pages go back to the system now.
    ::madvise(ptr, static_cast<size_t>(len), MADV_DONTNEED);
}

void HostSpillPager::write_out(int64_t id, int64_t page_index, Allocation & a, Page & pg) {
    check_file_alive("write a page out");
    const int64_t len = page_len(a, page_index);
    const uint8_t * ptr = a.base + page_index * page_bytes_;
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
    const uint32_t crc = crc32c(ptr, static_cast<size_t>(len));
    const int64_t off = slot * page_bytes_;
    const int64_t r = pwrite_full(fd_, ptr, len, off);
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

void HostSpillPager::evict(const PageRef & ref) {
    Allocation & a = allocs_.at(ref.id);
    Page & pg = a.pages[static_cast<size_t>(ref.page)];
    if (pg.dirty) write_out(ref.id, ref.page, a, pg); // throws: the page stays resident and dirty
    const int64_t len = page_len(a, ref.page);
    discard(a.base + ref.page * page_bytes_, len);
    lru_.erase(pg.lru);
    pg.resident = false;
    resident_ -= len;
    ++evictions_;
}

void HostSpillPager::make_room(int64_t need) {
    while (resident_ + need > budget_) {
        if (lru_.empty())
            fail(QLORA_ERROR_OUT_OF_MEMORY, "pager budget of %lld bytes exhausted: %lld bytes resident, all pinned",
                 static_cast<long long>(budget_), static_cast<long long>(resident_));
        const PageRef victim = lru_.front();
        evict(victim);
    }
}

void HostSpillPager::page_in(int64_t id, int64_t page_index, Allocation & a, Page & pg, bool skip_read) {
    const int64_t len = page_len(a, page_index);
    uint8_t * ptr = a.base + page_index * page_bytes_;
    if (skip_read) {
        // Overwritten by the caller: whatever the memory holds now (zeros after a
        // discard) is replaced. The slot's copy is stale from here on.
    } else if (pg.slot < 0) {
        std::memset(ptr, 0, static_cast<size_t>(len)); // never written: zeros
    } else {
        check_file_alive("read a page back");
        const int64_t off = pg.slot * page_bytes_;
        const int64_t r = pread_full(fd_, ptr, len, off);
        if (r < 0) {
            discard(ptr, len);
            fail(QLORA_ERROR_IO, "cannot read page %lld of allocation %lld from spill file '%s' at offset %lld: %s",
                 static_cast<long long>(page_index), static_cast<long long>(id), path_.c_str(),
                 static_cast<long long>(off), errno_text(static_cast<int>(-r)).c_str());
        }
        if (r < len) {
            discard(ptr, len);
            fail(QLORA_ERROR_IO, "short read of page %lld of allocation %lld from spill file '%s' at offset %lld: got "
                 "%lld of %lld bytes (the file was truncated)", static_cast<long long>(page_index),
                 static_cast<long long>(id), path_.c_str(), static_cast<long long>(off), static_cast<long long>(r),
                 static_cast<long long>(len));
        }
        const uint32_t crc = crc32c(ptr, static_cast<size_t>(len));
        if (crc != pg.crc) {
            discard(ptr, len);
            fail(QLORA_ERROR_FORMAT, "corrupted page %lld of allocation %lld in spill file '%s' at offset %lld: "
                 "CRC32C 0x%08x, expected 0x%08x", static_cast<long long>(page_index), static_cast<long long>(id),
                 path_.c_str(), static_cast<long long>(off), crc, pg.crc);
        }
        ++page_ins_;
        bytes_in_ += len;
    }
    pg.resident = true;
    resident_ += len;
    peak_ = std::max(peak_, resident_);
}

void * HostSpillPager::acquire(int64_t id, int64_t offset, int64_t bytes, qlora_pager_access access) {
    QLORA_CHECK_ARG(access == QLORA_PAGER_READ || access == QLORA_PAGER_READ_WRITE || access == QLORA_PAGER_OVERWRITE,
                    "unknown access value %d", static_cast<int>(access));
    std::lock_guard<std::mutex> lock(mutex_);
    Allocation & a = find(id, "acquire");
    check_range(a, id, offset, bytes);
    const int64_t p0 = offset / page_bytes_, p1 = (offset + bytes - 1) / page_bytes_;

    int64_t newly_pinned = 0;
    for (int64_t p = p0; p <= p1; ++p)
        if (a.pages[static_cast<size_t>(p)].pins == 0) newly_pinned += page_len(a, p);
    if (pinned_ + newly_pinned > budget_)
        fail(QLORA_ERROR_OUT_OF_MEMORY, "acquiring %lld bytes of allocation %lld would pin %lld bytes, more than the "
             "budget of %lld bytes", static_cast<long long>(bytes), static_cast<long long>(id),
             static_cast<long long>(pinned_ + newly_pinned), static_cast<long long>(budget_));

    // Pin the resident pages first so that making room for the others cannot
    // evict them; then bring the others in one by one.
    std::vector<int64_t> pinned_here, not_read;
    pinned_here.reserve(static_cast<size_t>(p1 - p0 + 1));
    auto pin = [&](int64_t p) {
        Page & pg = a.pages[static_cast<size_t>(p)];
        if (pg.pins == 0) {
            if (pg.resident) lru_.erase(pg.lru);
            pinned_ += page_len(a, p);
        }
        ++pg.pins;
        pinned_here.push_back(p);
    };
    try {
        for (int64_t p = p0; p <= p1; ++p)
            if (a.pages[static_cast<size_t>(p)].resident) pin(p);
        for (int64_t p = p0; p <= p1; ++p) {
            Page & pg = a.pages[static_cast<size_t>(p)];
            if (pg.resident) continue;
            const int64_t len = page_len(a, p);
            make_room(len);
            const bool whole = access == QLORA_PAGER_OVERWRITE && p * page_bytes_ >= offset &&
                               p * page_bytes_ + len <= offset + bytes;
            page_in(id, p, a, pg, whole);
            if (whole) not_read.push_back(p);
            // The page is resident and not yet on the LRU list: pin it.
            pinned_ += len;
            ++pg.pins;
            pinned_here.push_back(p);
        }
    } catch (...) {
        for (int64_t p : pinned_here) {
            Page & pg = a.pages[static_cast<size_t>(p)];
            if (--pg.pins == 0) {
                pinned_ -= page_len(a, p);
                pg.lru = lru_.insert(lru_.end(), PageRef{id, p});
            }
        }
        // Pages made resident without reading them hold no valid contents:
        // drop them again (their slot, if any, still has the right bytes).
        for (int64_t p : not_read) {
            Page & pg = a.pages[static_cast<size_t>(p)];
            if (pg.pins > 0) continue;
            const int64_t len = page_len(a, p);
            discard(a.base + p * page_bytes_, len);
            lru_.erase(pg.lru);
            pg.resident = false;
            resident_ -= len;
        }
        throw;
    }
    if (access != QLORA_PAGER_READ)
        for (int64_t p = p0; p <= p1; ++p) a.pages[static_cast<size_t>(p)].dirty = true;
    return a.base + offset;
}

void HostSpillPager::release(int64_t id, int64_t offset, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    Allocation & a = find(id, "release");
    check_range(a, id, offset, bytes);
    const int64_t p0 = offset / page_bytes_, p1 = (offset + bytes - 1) / page_bytes_;
    for (int64_t p = p0; p <= p1; ++p)
        QLORA_CHECK_ARG(a.pages[static_cast<size_t>(p)].pins > 0,
                        "release of allocation %lld range [%lld, +%lld): page %lld is not acquired",
                        static_cast<long long>(id), static_cast<long long>(offset), static_cast<long long>(bytes),
                        static_cast<long long>(p));
    for (int64_t p = p0; p <= p1; ++p) {
        Page & pg = a.pages[static_cast<size_t>(p)];
        if (--pg.pins == 0) {
            pinned_ -= page_len(a, p);
            pg.lru = lru_.insert(lru_.end(), PageRef{id, p});
        }
    }
}

void HostSpillPager::trim(int64_t target_bytes) {
    QLORA_CHECK_ARG(target_bytes >= 0, "target_bytes must be >= 0, got %lld", static_cast<long long>(target_bytes));
    std::lock_guard<std::mutex> lock(mutex_);
    while (resident_ > target_bytes && !lru_.empty()) {
        const PageRef victim = lru_.front();
        evict(victim);
    }
}

qlora_pager_stats HostSpillPager::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    qlora_pager_stats s{};
    s.budget_bytes = budget_;
    s.page_bytes = page_bytes_;
    s.allocations = static_cast<int64_t>(allocs_.size());
    s.allocated_bytes = allocated_;
    s.resident_bytes = resident_;
    s.peak_resident_bytes = peak_;
    s.pinned_bytes = pinned_;
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
    peak_ = resident_;
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
