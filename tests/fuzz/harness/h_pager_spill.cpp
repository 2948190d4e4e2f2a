// The pager's spill file: pages written out under memory pressure and read
// back later. The file lives on disk, where other processes, a full disk or
// bad storage can change it, so reading it back is parsing outside input.
//
// Input: byte 0 = number of allocations (1..4), then per allocation a u16
// size in bytes (1..4 pages of 4 KiB); then a list of edits to the spill file
// after every page was written out: (u8 kind, u32 offset, u8 value) with kind
// 0 = xor a byte, 1 = truncate the file to `offset`, 2 = append `value`
// bytes. Properties: every page read back is either exactly what was written
// or refused with FORMAT (checksum) or IO (short read) naming the spill file,
// with nothing left pinned; the pager stays usable after a refusal.
#include "fuzz_common.hpp"

#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace qfuzz {

namespace {
constexpr int64_t kPage = 4096;

uint8_t pattern(int64_t id, int64_t byte) { return static_cast<uint8_t>((id * 131 + byte * 7 + (byte >> 9)) & 0xFF); }
} // namespace

int qfuzz_pager_spill(const uint8_t * data, size_t size) {
    Bytes in(data, size);
    const int n_alloc = 1 + in.u8() % 4;
    std::vector<int64_t> sizes;
    for (int i = 0; i < n_alloc; ++i) sizes.push_back(1 + in.u16() % (4 * kPage));

    std::string dir = scratch_dir() + "/spillXXXXXX";
    QFUZZ_CHECK(mkdtemp(dir.data()) != nullptr, "mkdtemp");
    qlora_pager_params pp = qlora_pager_default_params();
    pp.page_bytes = kPage;
    pp.budget_bytes = kPage; // one frame: every other page lives in the spill file
    pp.spill_dir = dir.c_str();
    qlora_pager_t pager = nullptr;
    check_status(qlora_pager_create(&pp, &pager), "qlora_pager_create", {});
    QFUZZ_CHECK(pager != nullptr, "pager_create: %s", qlora_last_error());

    std::vector<int64_t> ids;
    for (int64_t bytes : sizes) {
        int64_t id = 0;
        check_status(qlora_pager_alloc(pager, bytes, &id), "qlora_pager_alloc", {});
        ids.push_back(id);
        for (int64_t off = 0; off < bytes; off += kPage) {
            const int64_t len = std::min(kPage, bytes - off);
            void * p = nullptr;
            check_status(qlora_pager_acquire(pager, id, off, len, QLORA_PAGER_OVERWRITE, &p), "qlora_pager_acquire", {});
            auto * b = static_cast<uint8_t *>(p);
            for (int64_t k = 0; k < len; ++k) b[k] = pattern(id, off + k);
            check_status(qlora_pager_release(pager, id, off, len), "qlora_pager_release", {});
        }
    }
    check_status(qlora_pager_trim(pager, 0), "qlora_pager_trim", {});

    const std::vector<std::string> files = list_dir(dir);
    QFUZZ_CHECK(files.size() == 1, "expected one spill file in %s, found %zu", dir.c_str(), files.size());
    const std::string spill = dir + "/" + files[0];
    {
        const int fd = ::open(spill.c_str(), O_RDWR | O_CLOEXEC);
        QFUZZ_CHECK(fd >= 0, "cannot open the spill file %s", spill.c_str());
        for (int edits = 0; !in.empty() && edits < 64; ++edits) {
            const uint8_t kind = in.u8() % 3;
            const uint32_t offset = in.u32();
            const uint8_t value = in.u8();
            const off_t len = ::lseek(fd, 0, SEEK_END);
            if (kind == 0 && len > 0) {
                const off_t at = static_cast<off_t>(offset % static_cast<uint64_t>(len));
                uint8_t b = 0;
                if (::pread(fd, &b, 1, at) == 1) {
                    b ^= value ? value : 1;
                    (void)!::pwrite(fd, &b, 1, at);
                }
            } else if (kind == 1) {
                (void)!::ftruncate(fd, static_cast<off_t>(offset % static_cast<uint64_t>(len + 1)));
            } else if (kind == 2) {
                std::vector<uint8_t> extra(value, 0x5A);
                (void)!::pwrite(fd, extra.data(), extra.size(), len);
            }
        }
        ::close(fd);
    }

    for (size_t i = 0; i < ids.size(); ++i) {
        for (int64_t off = 0; off < sizes[i]; off += kPage) {
            const int64_t len = std::min(kPage, sizes[i] - off);
            void * p = reinterpret_cast<void *>(&pp); // must stay untouched on failure
            const qlora_status st = qlora_pager_acquire(pager, ids[i], off, len, QLORA_PAGER_READ, &p);
            check_status(st, "qlora_pager_acquire", {QLORA_ERROR_FORMAT, QLORA_ERROR_IO});
            if (st != QLORA_OK) {
                QFUZZ_CHECK(p == reinterpret_cast<void *>(&pp), "acquire failed but wrote its out-param");
                QFUZZ_CHECK(std::string(qlora_last_error()).find(spill) != std::string::npos,
                            "the message must name the spill file: %s", qlora_last_error());
                qlora_pager_stats s{};
                check_status(qlora_pager_get_stats(pager, &s), "qlora_pager_get_stats", {});
                QFUZZ_CHECK(s.pinned_bytes == 0, "a refused page-in left %lld bytes pinned",
                            static_cast<long long>(s.pinned_bytes));
                continue;
            }
            const auto * b = static_cast<const uint8_t *>(p);
            for (int64_t k = 0; k < len; ++k)
                QFUZZ_CHECK(b[k] == pattern(ids[i], off + k),
                            "allocation %lld byte %lld came back as 0x%02x, written 0x%02x (corruption not detected)",
                            static_cast<long long>(ids[i]), static_cast<long long>(off + k), b[k],
                            pattern(ids[i], off + k));
            check_status(qlora_pager_release(pager, ids[i], off, len), "qlora_pager_release", {});
        }
    }
    // Still usable: a new allocation round-trips through the (damaged) file.
    int64_t id = 0;
    check_status(qlora_pager_alloc(pager, kPage, &id), "qlora_pager_alloc", {});
    void * p = nullptr;
    if (check_status(qlora_pager_acquire(pager, id, 0, kPage, QLORA_PAGER_OVERWRITE, &p), "qlora_pager_acquire", {}) ==
        QLORA_OK) {
        std::memset(p, 0x3C, kPage);
        check_status(qlora_pager_release(pager, id, 0, kPage), "qlora_pager_release", {});
    }
    check_status(qlora_pager_trim(pager, 0), "qlora_pager_trim", {});
    if (check_status(qlora_pager_acquire(pager, id, 0, kPage, QLORA_PAGER_READ, &p), "qlora_pager_acquire", {}) ==
        QLORA_OK) {
        const auto * b = static_cast<const uint8_t *>(p);
        for (int64_t k = 0; k < kPage; ++k) QFUZZ_CHECK(b[k] == 0x3C, "fresh page byte %lld", static_cast<long long>(k));
        check_status(qlora_pager_release(pager, id, 0, kPage), "qlora_pager_release", {});
    }
    qlora_pager_free(pager);
    QFUZZ_CHECK(list_dir(dir).empty(), "qlora_pager_free left files in %s", dir.c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    return 0;
}

} // namespace qfuzz
