// Pager tests: CRC32C, the host spill-file pager's contract (budget, LRU,
// pins, dirty tracking), its failure modes, and a model-based random test.
#include "pager/crc32c.hpp"
#include "pager/host_spill_pager.hpp"
#include "test_pager_util.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using qtest::PagerPtr;
using qtest::TempDir;

PagerPtr make_pager(const fs::path & dir, int64_t budget, int64_t page = 4096) {
    qlora_pager_params p = qlora_pager_default_params();
    p.budget_bytes = budget;
    p.page_bytes = page;
    const std::string d = dir.string();
    p.spill_dir = d.c_str();
    qlora_pager_t h = nullptr;
    EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_OK) << qlora_last_error();
    return PagerPtr(h);
}

qlora::HostSpillPager & host(qlora_pager_t p) { return dynamic_cast<qlora::HostSpillPager &>(*p->impl); }

qlora_pager_stats stats(qlora_pager_t p) {
    qlora_pager_stats s{};
    EXPECT_EQ(qlora_pager_get_stats(p, &s), QLORA_OK) << qlora_last_error();
    return s;
}

// Writes / reads a byte range, one acquire per page it touches.
void fill(qlora_pager_t pg, int64_t id, int64_t off, const std::vector<uint8_t> & data, int64_t page = 4096) {
    for (int64_t done = 0; done < static_cast<int64_t>(data.size());) {
        const int64_t at = off + done;
        const int64_t len = std::min<int64_t>(static_cast<int64_t>(data.size()) - done, page - at % page);
        void * ptr = nullptr;
        ASSERT_EQ(qlora_pager_acquire(pg, id, at, len, QLORA_PAGER_READ_WRITE, &ptr), QLORA_OK) << qlora_last_error();
        std::memcpy(ptr, data.data() + done, static_cast<size_t>(len));
        ASSERT_EQ(qlora_pager_release(pg, id, at, len), QLORA_OK) << qlora_last_error();
        done += len;
    }
}

std::vector<uint8_t> read(qlora_pager_t pg, int64_t id, int64_t off, int64_t n, int64_t page = 4096) {
    std::vector<uint8_t> out(static_cast<size_t>(n));
    for (int64_t done = 0; done < n;) {
        const int64_t at = off + done;
        const int64_t len = std::min<int64_t>(n - done, page - at % page);
        void * ptr = nullptr;
        EXPECT_EQ(qlora_pager_acquire(pg, id, at, len, QLORA_PAGER_READ, &ptr), QLORA_OK) << qlora_last_error();
        if (!ptr) break;
        std::memcpy(out.data() + done, ptr, static_cast<size_t>(len));
        EXPECT_EQ(qlora_pager_release(pg, id, at, len), QLORA_OK) << qlora_last_error();
        done += len;
    }
    return out;
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<uint8_t> v(n);
    for (auto & b : v) b = static_cast<uint8_t>(rng());
    return v;
}

bool contains(const std::string & s, const std::string & part) { return s.find(part) != std::string::npos; }

} // namespace

// --------------------------------------------------------------------------
// CRC32C

TEST(Crc32c, KnownValue) {
    const char * s = "123456789";
    EXPECT_EQ(qlora::crc32c_update_sw(0, s, 9), 0xE3069283u);
    EXPECT_EQ(qlora::crc32c(s, 9), 0xE3069283u);
    EXPECT_EQ(qlora::crc32c_update_sw(0, s, 0), 0u);
    // 32 bytes of zeros (RFC 3720 B.4): 0x8A9136AA.
    const std::vector<uint8_t> zeros(32, 0);
    EXPECT_EQ(qlora::crc32c_update_sw(0, zeros.data(), 32), 0x8A9136AAu);
    const std::vector<uint8_t> ones(32, 0xff);
    EXPECT_EQ(qlora::crc32c_update_sw(0, ones.data(), 32), 0x62A8AB43u);
}

TEST(Crc32c, HardwareMatchesTableOnEveryLengthClass) {
#if !defined(QLORA_X86)
    GTEST_SKIP() << "the hardware CRC32C path is x86 (SSE4.2) only";
#else
    if (qlora_cpu_isa_detected() < QLORA_ISA_AVX2) GTEST_SKIP() << "no SSE4.2 crc32 on this CPU";
    const auto data = random_bytes(200000, 7);
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(4095), size_t(24575),
                     size_t(24576), size_t(24577), size_t(49152 + 13), size_t(200000)})
        for (size_t off : {size_t(0), size_t(3)}) {
            if (off + n > data.size()) continue;
            EXPECT_EQ(qlora::cpu::crc32c_update_hw(0x12345678u, data.data() + off, n),
                      qlora::crc32c_update_sw(0x12345678u, data.data() + off, n)) << "n=" << n << " off=" << off;
        }
#endif
}

TEST(Crc32c, IncrementalEqualsWhole) {
    const auto data = random_bytes(100000, 9);
    const uint32_t whole = qlora::crc32c(data.data(), data.size());
    uint32_t c = 0;
    for (size_t off = 0; off < data.size(); off += 30011)
        c = qlora::crc32c_update(c, data.data() + off, std::min<size_t>(30011, data.size() - off));
    EXPECT_EQ(c, whole);
}

// --------------------------------------------------------------------------
// Creation and parameters

TEST(Pager, DefaultParams) {
    const qlora_pager_params p = qlora_pager_default_params();
    EXPECT_EQ(p.backing, QLORA_PAGER_HOST_SPILL_FILE);
    EXPECT_EQ(p.page_bytes, 1 << 20);
    EXPECT_EQ(p.budget_bytes, INT64_MAX);
    EXPECT_EQ(p.spill_dir, nullptr);
}

TEST(Pager, RejectsBadParams) {
    TempDir dir;
    const std::string d = dir.path.string();
    qlora_pager_t h = nullptr;
    qlora_pager_params p = qlora_pager_default_params();
    p.spill_dir = d.c_str();

    p.budget_bytes = (1 << 20) - 1; // less than one page
    EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "smaller than one page")) << qlora_last_error();
    p.budget_bytes = 0;
    EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_INVALID_ARGUMENT);

    p = qlora_pager_default_params();
    p.spill_dir = d.c_str();
    for (int64_t page : {int64_t(0), int64_t(1000), int64_t(2048), int64_t(3 << 20), int64_t(1) << 31}) {
        p.page_bytes = page;
        EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_INVALID_ARGUMENT) << page;
        EXPECT_TRUE(contains(qlora_last_error(), "page_bytes")) << qlora_last_error();
    }
    p = qlora_pager_default_params();
    p.backing = static_cast<qlora_pager_backing>(7);
    EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_create(nullptr, &h), QLORA_ERROR_INVALID_ARGUMENT);
    p = qlora_pager_default_params();
    EXPECT_EQ(qlora_pager_create(&p, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(h, nullptr);
}

TEST(Pager, CudaUnifiedBackingIsUnsupportedForNow) {
    qlora_pager_params p = qlora_pager_default_params();
    p.backing = QLORA_PAGER_CUDA_UNIFIED;
    qlora_pager_t h = nullptr;
    EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_UNSUPPORTED);
    EXPECT_TRUE(contains(qlora_last_error(), "QLORA_PAGER_CUDA_UNIFIED")) << qlora_last_error();
    EXPECT_EQ(h, nullptr);
}

TEST(Pager, CreatesMissingDirectoryAndRemovesItsFileOnFree) {
    TempDir dir;
    const fs::path nested = dir.path / "a" / "b";
    fs::path file;
    {
        PagerPtr p = make_pager(nested, 1 << 20);
        ASSERT_TRUE(p);
        ASSERT_TRUE(fs::is_directory(nested));
        file = host(p.get()).spill_path();
        EXPECT_EQ(fs::path(file).parent_path(), nested);
        EXPECT_TRUE(fs::exists(file));
        EXPECT_EQ(fs::path(file).filename().string().rfind("qlora-spill-", 0), 0u);
        PagerPtr q = make_pager(nested, 1 << 20);
        EXPECT_NE(host(q.get()).spill_path(), host(p.get()).spill_path()); // unique names
    }
    EXPECT_FALSE(fs::exists(file));
    EXPECT_TRUE(fs::is_empty(nested));
}

TEST(Pager, UnwritableSpillDirectoryIsAnIoError) {
    TempDir dir;
    const fs::path blocker = dir.path / "not-a-dir";
    std::ofstream(blocker) << "x";
    for (const fs::path & bad : {blocker / "spill", blocker}) {
        qlora_pager_params p = qlora_pager_default_params();
        const std::string d = bad.string();
        p.spill_dir = d.c_str();
        qlora_pager_t h = nullptr;
        EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_IO) << d;
        EXPECT_TRUE(contains(qlora_last_error(), d)) << qlora_last_error();
        EXPECT_EQ(h, nullptr);
    }
    if (::geteuid() != 0) { // root ignores permission bits
        const fs::path ro = dir.path / "ro";
        fs::create_directories(ro);
        fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
        qlora_pager_params p = qlora_pager_default_params();
        const std::string d = ro.string();
        p.spill_dir = d.c_str();
        qlora_pager_t h = nullptr;
        EXPECT_EQ(qlora_pager_create(&p, &h), QLORA_ERROR_IO);
        EXPECT_TRUE(contains(qlora_last_error(), d)) << qlora_last_error();
        fs::permissions(ro, fs::perms::owner_all);
    }
}

// --------------------------------------------------------------------------
// Contract

TEST(Pager, FreshAllocationsReadAsZerosWithoutIo) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 2 * 4096);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 10 * 4096 + 100, &id), QLORA_OK);
    EXPECT_GT(id, 0);
    const auto bytes = read(p.get(), id, 0, 4096 + 50);
    EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; }));
    for (int64_t pg = 0; pg < 11; ++pg) (void)read(p.get(), id, pg * 4096, pg == 10 ? 100 : 4096);
    const auto s = stats(p.get());
    EXPECT_EQ(s.page_ins, 0);
    EXPECT_EQ(s.page_outs, 0); // clean zero pages are dropped, not written
    EXPECT_GT(s.evictions, 0);
    EXPECT_EQ(s.allocated_bytes, 10 * 4096 + 100);
    EXPECT_EQ(s.allocations, 1);
    EXPECT_EQ(s.resident_bytes, 2 * 4096); // whole frames, within the budget
}

TEST(Pager, SpillsAndRestoresContentsUnderATightBudget) {
    TempDir dir;
    const int64_t page = 4096, budget = 3 * page;
    PagerPtr p = make_pager(dir.path, budget, page);
    std::vector<int64_t> ids;
    std::vector<std::vector<uint8_t>> data;
    for (int a = 0; a < 4; ++a) {
        const int64_t n = 5 * page + 123 * (a + 1);
        int64_t id = 0;
        ASSERT_EQ(qlora_pager_alloc(p.get(), n, &id), QLORA_OK);
        ids.push_back(id);
        data.push_back(random_bytes(static_cast<size_t>(n), 100 + a));
        for (int64_t off = 0; off < n; off += page) {
            const int64_t len = std::min(page, n - off);
            fill(p.get(), id, off, std::vector<uint8_t>(data[a].begin() + off, data[a].begin() + off + len));
            EXPECT_LE(stats(p.get()).resident_bytes, budget);
        }
    }
    for (int a = 3; a >= 0; --a) {
        EXPECT_EQ(read(p.get(), ids[a], 0, static_cast<int64_t>(data[a].size())), data[a]) << a;
        for (int64_t off = 0; off < static_cast<int64_t>(data[a].size()); off += 1000) {
            const int64_t len = std::min<int64_t>(1000, static_cast<int64_t>(data[a].size()) - off);
            const auto part = read(p.get(), ids[a], off, len);
            ASSERT_TRUE(std::equal(part.begin(), part.end(), data[a].begin() + off)) << a << " @" << off;
            ASSERT_LE(stats(p.get()).resident_bytes, budget);
        }
    }
    const auto s = stats(p.get());
    EXPECT_GT(s.page_outs, 0);
    EXPECT_GT(s.page_ins, 0);
    EXPECT_GT(s.bytes_spilled, 0);
    EXPECT_LE(s.peak_resident_bytes, budget);
    EXPECT_GE(s.store_bytes, s.bytes_spilled / std::max<int64_t>(1, s.page_outs));
    EXPECT_EQ(s.pinned_bytes, 0);
}

TEST(Pager, PinsBeyondTheBudgetAreOutOfMemoryAndChangeNothing) {
    TempDir dir;
    const int64_t page = 4096;
    PagerPtr p = make_pager(dir.path, 2 * page + 100, page); // room for 2 frames
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 8 * page, &id), QLORA_OK);
    void * a = nullptr, * b = nullptr;
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, 0, page, QLORA_PAGER_READ_WRITE, &a), QLORA_OK);
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, page + 8, 16, QLORA_PAGER_READ, &b), QLORA_OK);
    void * c = reinterpret_cast<void *>(0x1);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 2 * page, page, QLORA_PAGER_READ_WRITE, &c), QLORA_ERROR_OUT_OF_MEMORY);
    EXPECT_TRUE(contains(qlora_last_error(), "budget")) << qlora_last_error();
    EXPECT_EQ(c, reinterpret_cast<void *>(0x1)); // out-param untouched
    EXPECT_EQ(stats(p.get()).pinned_bytes, 2 * page);
    // Pages already pinned can be pinned again.
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 0, 10, QLORA_PAGER_READ, &c), QLORA_OK);
    EXPECT_EQ(c, a);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, 10), QLORA_OK);
    EXPECT_EQ(qlora_pager_release(p.get(), id, page + 8, 16), QLORA_OK);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 2 * page, page, QLORA_PAGER_READ_WRITE, &c), QLORA_OK);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 2 * page, page), QLORA_OK);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, page), QLORA_OK);
    EXPECT_EQ(stats(p.get()).pinned_bytes, 0);
    EXPECT_LE(stats(p.get()).peak_resident_bytes, 2 * page);
}

TEST(Pager, RangesMustLieWithinOnePage) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 8 * 4096);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 3 * 4096, &id), QLORA_OK);
    void * ptr = nullptr;
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4000, 200, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "crosses a page boundary")) << qlora_last_error();
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4096, 4097, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4096, 4096, QLORA_PAGER_READ, &ptr), QLORA_OK);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 4096, 4096), QLORA_OK);
    EXPECT_EQ(stats(p.get()).pinned_bytes, 0);
}

TEST(Pager, ArgumentErrors) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 4 * 4096);
    int64_t id = 0;
    void * ptr = nullptr;
    EXPECT_EQ(qlora_pager_alloc(p.get(), 0, &id), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_alloc(p.get(), -5, &id), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_alloc(nullptr, 10, &id), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_alloc(p.get(), 10, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    ASSERT_EQ(qlora_pager_alloc(p.get(), 10000, &id), QLORA_OK);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id + 1, 0, 10, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "no allocation")) << qlora_last_error();
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 9990, 11, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "outside allocation")) << qlora_last_error();
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, -1, 10, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 0, 0, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 0, INT64_MAX, QLORA_PAGER_READ, &ptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 0, 10, static_cast<qlora_pager_access>(9), &ptr),
              QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 0, 10, QLORA_PAGER_READ, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, 10), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "not acquired")) << qlora_last_error();
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, 0, 10, QLORA_PAGER_READ, &ptr), QLORA_OK);
    EXPECT_EQ(qlora_pager_dealloc(p.get(), id), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "acquired")) << qlora_last_error();
    // Releasing a range that was never acquired (across pages) changes nothing.
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, 5000), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 4096, 10), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(stats(p.get()).pinned_bytes, 4096);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, 10), QLORA_OK);
    EXPECT_EQ(qlora_pager_dealloc(p.get(), id), QLORA_OK);
    EXPECT_EQ(qlora_pager_dealloc(p.get(), id), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_pager_trim(p.get(), -1), QLORA_ERROR_INVALID_ARGUMENT);
    const auto s = stats(p.get());
    EXPECT_EQ(s.allocations, 0);
    EXPECT_EQ(s.allocated_bytes, 0);
    EXPECT_EQ(s.resident_bytes, 0);
    qlora_pager_free(nullptr);
}

TEST(Pager, NestedPinsKeepPagesResidentAndTrimRespectsThem) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 4 * 4096);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 3 * 4096, &id), QLORA_OK);
    fill(p.get(), id, 0, random_bytes(3 * 4096, 1));
    void * a = nullptr, * b = nullptr;
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, 0, 100, QLORA_PAGER_READ, &a), QLORA_OK);
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, 50, 100, QLORA_PAGER_READ, &b), QLORA_OK);
    EXPECT_EQ(static_cast<uint8_t *>(b) - static_cast<uint8_t *>(a), 50);
    ASSERT_EQ(qlora_pager_release(p.get(), id, 0, 100), QLORA_OK);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    auto s = stats(p.get());
    EXPECT_EQ(s.resident_bytes, 4096); // page 0 is still pinned once
    EXPECT_EQ(s.page_outs, 2);         // pages 1 and 2 were dirty, page 0 too but pinned
    ASSERT_EQ(qlora_pager_release(p.get(), id, 50, 100), QLORA_OK);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    s = stats(p.get());
    EXPECT_EQ(s.resident_bytes, 0);
    EXPECT_EQ(s.page_outs, 3);
}

TEST(Pager, ReadAccessKeepsPagesCleanAndOverwriteSkipsTheRead) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 8 * 4096);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 4 * 4096, &id), QLORA_OK);
    const auto data = random_bytes(4 * 4096, 2);
    fill(p.get(), id, 0, data);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    EXPECT_EQ(stats(p.get()).page_outs, 4);
    EXPECT_EQ(read(p.get(), id, 0, 4 * 4096), data);
    EXPECT_EQ(stats(p.get()).page_ins, 4);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    EXPECT_EQ(stats(p.get()).page_outs, 4); // clean: dropped, not rewritten

    // OVERWRITE of pages 1 and 2 whole and of part of page 3: only page 3 is read back.
    const auto fresh = random_bytes(2 * 4096 + 100, 3);
    for (int64_t pg = 1; pg <= 3; ++pg) {
        const int64_t len = pg < 3 ? 4096 : 100;
        void * ptr = nullptr;
        ASSERT_EQ(qlora_pager_acquire(p.get(), id, pg * 4096, len, QLORA_PAGER_OVERWRITE, &ptr), QLORA_OK);
        std::memcpy(ptr, fresh.data() + (pg - 1) * 4096, static_cast<size_t>(len));
        ASSERT_EQ(qlora_pager_release(p.get(), id, pg * 4096, len), QLORA_OK);
    }
    EXPECT_EQ(stats(p.get()).page_ins, 5);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    std::vector<uint8_t> expect = data;
    std::copy(fresh.begin(), fresh.end(), expect.begin() + 4096);
    EXPECT_EQ(read(p.get(), id, 0, 4 * 4096), expect);
}

TEST(Pager, OverwritingAWholePageNeverReadsItsOldCopy) {
    TempDir dir;
    const int64_t page = 4096;
    PagerPtr p = make_pager(dir.path, 3 * page, page);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(p.get(), 4 * page, &id), QLORA_OK);
    const auto data = random_bytes(4 * page, 4);
    fill(p.get(), id, 0, data);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK);
    // Corrupt the copies of pages 1 and 2.
    auto & h = host(p.get());
    const int fd = ::open(h.spill_path().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    for (int64_t pg : {1, 2}) {
        const int64_t off = h.spill_offset(id, pg);
        ASSERT_GE(off, 0);
        uint8_t b = 0;
        ASSERT_EQ(::pread(fd, &b, 1, off + 7), 1);
        b ^= 0x40;
        ASSERT_EQ(::pwrite(fd, &b, 1, off + 7), 1);
    }
    ::close(fd);
    // Page 1 overwritten whole: no read, so no error; page 2 overwritten in part: read, refused.
    void * ptr = nullptr;
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, page, page, QLORA_PAGER_OVERWRITE, &ptr), QLORA_OK) << qlora_last_error();
    const auto fresh = random_bytes(static_cast<size_t>(page), 5);
    std::memcpy(ptr, fresh.data(), fresh.size());
    ASSERT_EQ(qlora_pager_release(p.get(), id, page, page), QLORA_OK);
    ptr = nullptr;
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 2 * page, 10, QLORA_PAGER_OVERWRITE, &ptr), QLORA_ERROR_FORMAT);
    EXPECT_EQ(ptr, nullptr);
    EXPECT_EQ(stats(p.get()).pinned_bytes, 0);
    ASSERT_EQ(qlora_pager_trim(p.get(), 0), QLORA_OK); // page 1 is written out fresh
    EXPECT_EQ(read(p.get(), id, page, page), fresh);
    const auto p0 = read(p.get(), id, 0, page);
    EXPECT_TRUE(std::equal(p0.begin(), p0.end(), data.begin()));
}

// --------------------------------------------------------------------------
// Failure modes of the spill file

namespace {
// Writes `data` into a 3-page allocation and spills everything.
int64_t spill_pattern(qlora_pager_t p, const std::vector<uint8_t> & data) {
    int64_t id = 0;
    EXPECT_EQ(qlora_pager_alloc(p, static_cast<int64_t>(data.size()), &id), QLORA_OK);
    fill(p, id, 0, data);
    EXPECT_EQ(qlora_pager_trim(p, 0), QLORA_OK);
    EXPECT_EQ(stats(p).resident_bytes, 0);
    return id;
}
} // namespace

TEST(Pager, CorruptedSpillPageIsAFormatErrorNeverGarbage) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 2 * 4096);
    const auto data = random_bytes(3 * 4096, 5);
    const int64_t id = spill_pattern(p.get(), data);
    auto & h = host(p.get());
    const int64_t off = h.spill_offset(id, 1);
    ASSERT_GE(off, 0);
    {
        const int fd = ::open(h.spill_path().c_str(), O_RDWR);
        ASSERT_GE(fd, 0);
        uint8_t b = 0;
        ASSERT_EQ(::pread(fd, &b, 1, off + 1000), 1);
        b ^= 1;
        ASSERT_EQ(::pwrite(fd, &b, 1, off + 1000), 1);
        ::close(fd);
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
        void * ptr = reinterpret_cast<void *>(0x7);
        EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4096, 10, QLORA_PAGER_READ, &ptr), QLORA_ERROR_FORMAT);
        const std::string msg = qlora_last_error();
        EXPECT_TRUE(contains(msg, h.spill_path())) << msg;
        EXPECT_TRUE(contains(msg, "page 1 ")) << msg;
        EXPECT_TRUE(contains(msg, "CRC32C")) << msg;
        EXPECT_EQ(ptr, reinterpret_cast<void *>(0x7));
        const auto s = stats(p.get());
        EXPECT_EQ(s.pinned_bytes, 0);
        EXPECT_EQ(s.resident_bytes, 0);
    }
    // The other pages are intact.
    const auto p0 = read(p.get(), id, 0, 4096);
    EXPECT_TRUE(std::equal(p0.begin(), p0.end(), data.begin()));
    const auto p2 = read(p.get(), id, 2 * 4096, 4096);
    EXPECT_TRUE(std::equal(p2.begin(), p2.end(), data.begin() + 2 * 4096));
    // With other pages pinned, the failure leaves their pins alone and pins nothing more.
    void * ptr = nullptr, * keep = nullptr;
    ASSERT_EQ(qlora_pager_acquire(p.get(), id, 0, 4096, QLORA_PAGER_READ, &keep), QLORA_OK);
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4096, 4096, QLORA_PAGER_READ_WRITE, &ptr), QLORA_ERROR_FORMAT);
    EXPECT_EQ(stats(p.get()).pinned_bytes, 4096);
    EXPECT_EQ(qlora_pager_release(p.get(), id, 0, 4096), QLORA_OK);
}

TEST(Pager, TruncatedSpillFileIsAShortReadError) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 2 * 4096);
    const auto data = random_bytes(3 * 4096, 6);
    const int64_t id = spill_pattern(p.get(), data);
    auto & h = host(p.get());
    const int64_t off = h.spill_offset(id, 2);
    ASSERT_EQ(::truncate(h.spill_path().c_str(), off + 100), 0);
    void * ptr = nullptr;
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 2 * 4096, 4096, QLORA_PAGER_READ, &ptr), QLORA_ERROR_IO);
    const std::string msg = qlora_last_error();
    EXPECT_TRUE(contains(msg, "short read")) << msg;
    EXPECT_TRUE(contains(msg, "got 100 of 4096")) << msg;
    EXPECT_TRUE(contains(msg, h.spill_path())) << msg;
    EXPECT_EQ(ptr, nullptr);
    EXPECT_EQ(stats(p.get()).resident_bytes, 0);
}

TEST(Pager, VanishedSpillDirectoryIsAnIoErrorAndLosesNothingResident) {
    TempDir dir;
    const fs::path sub = dir.path / "spill";
    PagerPtr p = make_pager(sub, 2 * 4096);
    const auto data = random_bytes(3 * 4096, 8);
    const int64_t id = spill_pattern(p.get(), data);
    const std::string path = host(p.get()).spill_path();
    // Page 0 back in and dirty, then the directory disappears.
    fill(p.get(), id, 0, std::vector<uint8_t>(data.begin(), data.begin() + 4096));
    fs::remove_all(sub);
    void * ptr = nullptr;
    EXPECT_EQ(qlora_pager_acquire(p.get(), id, 4096, 4096, QLORA_PAGER_READ, &ptr), QLORA_ERROR_IO);
    std::string msg = qlora_last_error();
    EXPECT_TRUE(contains(msg, path) && contains(msg, "deleted")) << msg;
    EXPECT_EQ(qlora_pager_trim(p.get(), 0), QLORA_ERROR_IO); // page 0 is dirty and cannot be written
    msg = qlora_last_error();
    EXPECT_TRUE(contains(msg, path)) << msg;
    // The resident page is intact and still usable.
    EXPECT_EQ(stats(p.get()).resident_bytes, 4096);
    const auto back = read(p.get(), id, 0, 4096);
    EXPECT_TRUE(std::equal(back.begin(), back.end(), data.begin()));
}

// --------------------------------------------------------------------------
// Model-based random test: random allocations, acquires (nested), writes,
// releases, trims and deallocs against a shadow copy; the budget invariant
// is checked after every operation.

TEST(Pager, RandomOperationsMatchAShadowModel) {
    TempDir dir;
    const int64_t page = 4096, budget = 6 * page;
    PagerPtr p = make_pager(dir.path, budget, page);
    std::mt19937 rng(1234);
    struct Alloc {
        int64_t id;
        std::vector<uint8_t> shadow;
    };
    struct Pin {
        size_t alloc;
        int64_t off, len;
        uint8_t * ptr;
        qlora_pager_access access;
    };
    std::vector<Alloc> allocs;
    std::vector<Pin> pins;
    int64_t max_resident = 0;
    for (int op = 0; op < 4000; ++op) {
        const int kind = static_cast<int>(rng() % 100);
        if (allocs.empty() || (kind < 5 && allocs.size() < 8)) {
            const int64_t n = 1 + static_cast<int64_t>(rng() % (7 * page));
            int64_t id = 0;
            ASSERT_EQ(qlora_pager_alloc(p.get(), n, &id), QLORA_OK);
            allocs.push_back({id, std::vector<uint8_t>(static_cast<size_t>(n), 0)});
        } else if (kind < 55 && pins.size() < 3) {
            const size_t a = rng() % allocs.size();
            const int64_t n = static_cast<int64_t>(allocs[a].shadow.size());
            const int64_t off = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
            const int64_t room = std::min<int64_t>(n - off, page - off % page);
            const int64_t len = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(room));
            const auto access = static_cast<qlora_pager_access>(rng() % 3);
            void * ptr = nullptr;
            const qlora_status st = qlora_pager_acquire(p.get(), allocs[a].id, off, len, access, &ptr);
            if (st == QLORA_ERROR_OUT_OF_MEMORY) continue; // too much pinned right now: legal refusal
            ASSERT_EQ(st, QLORA_OK) << qlora_last_error();
            auto * b = static_cast<uint8_t *>(ptr);
            if (access == QLORA_PAGER_OVERWRITE) {
                for (int64_t i = 0; i < len; ++i) b[i] = static_cast<uint8_t>(rng());
                std::copy(b, b + len, allocs[a].shadow.begin() + off);
            } else {
                ASSERT_TRUE(std::equal(b, b + len, allocs[a].shadow.begin() + off)) << "op " << op;
                if (access == QLORA_PAGER_READ_WRITE)
                    for (int64_t i = 0; i < len; i += 1 + static_cast<int64_t>(rng() % 64)) {
                        b[i] = static_cast<uint8_t>(rng());
                        allocs[a].shadow[static_cast<size_t>(off + i)] = b[i];
                    }
            }
            pins.push_back({a, off, len, b, access});
        } else if (kind < 85 && !pins.empty()) {
            const size_t k = rng() % pins.size();
            const Pin pin = pins[k];
            // Pinned memory still holds what we saw/wrote (other pins may overlap it).
            ASSERT_TRUE(std::equal(pin.ptr, pin.ptr + pin.len, allocs[pin.alloc].shadow.begin() + pin.off)) << op;
            ASSERT_EQ(qlora_pager_release(p.get(), allocs[pin.alloc].id, pin.off, pin.len), QLORA_OK);
            pins.erase(pins.begin() + static_cast<std::ptrdiff_t>(k));
        } else if (kind < 92) {
            ASSERT_EQ(qlora_pager_trim(p.get(), static_cast<int64_t>(rng() % budget)), QLORA_OK);
        } else if (kind < 96 && allocs.size() > 1) {
            const size_t a = rng() % allocs.size();
            const bool pinned = std::any_of(pins.begin(), pins.end(), [&](const Pin & q) { return q.alloc == a; });
            const qlora_status st = qlora_pager_dealloc(p.get(), allocs[a].id);
            if (pinned) {
                ASSERT_EQ(st, QLORA_ERROR_INVALID_ARGUMENT);
            } else {
                ASSERT_EQ(st, QLORA_OK);
                allocs.erase(allocs.begin() + static_cast<std::ptrdiff_t>(a));
                for (auto & q : pins)
                    if (q.alloc > a) --q.alloc;
            }
        }
        const auto s = stats(p.get());
        ASSERT_LE(s.resident_bytes, budget) << "op " << op;
        ASSERT_LE(s.pinned_bytes, s.resident_bytes);
        max_resident = std::max(max_resident, s.resident_bytes);
    }
    for (const auto & pin : pins) ASSERT_EQ(qlora_pager_release(p.get(), allocs[pin.alloc].id, pin.off, pin.len), QLORA_OK);
    for (const auto & a : allocs) EXPECT_EQ(read(p.get(), a.id, 0, static_cast<int64_t>(a.shadow.size())), a.shadow);
    const auto s = stats(p.get());
    EXPECT_LE(s.peak_resident_bytes, budget);
    EXPECT_EQ(s.peak_resident_bytes, max_resident);
    EXPECT_GT(s.page_ins, 50);
    EXPECT_GT(s.page_outs, 50);
}

TEST(Pager, ConcurrentUsersOfOnePagerStayConsistent) {
    TempDir dir;
    const int64_t page = 4096;
    PagerPtr p = make_pager(dir.path, 8 * page, page);
    constexpr int kThreads = 3;
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            int64_t id = 0;
            if (qlora_pager_alloc(p.get(), 10 * page, &id) != QLORA_OK) { ++failures; return; }
            std::vector<uint8_t> shadow(static_cast<size_t>(10 * page), 0);
            std::mt19937 rng(static_cast<uint32_t>(t));
            for (int it = 0; it < 300; ++it) {
                const int64_t off = static_cast<int64_t>(rng() % 10) * page;
                void * ptr = nullptr;
                qlora_status st;
                while ((st = qlora_pager_acquire(p.get(), id, off, page, QLORA_PAGER_READ_WRITE, &ptr)) ==
                       QLORA_ERROR_OUT_OF_MEMORY) std::this_thread::yield();
                if (st != QLORA_OK) { ++failures; return; }
                auto * b = static_cast<uint8_t *>(ptr);
                if (!std::equal(b, b + page, shadow.begin() + off)) ++failures;
                for (int64_t i = 0; i < page; i += 97) b[i] = shadow[static_cast<size_t>(off + i)] = static_cast<uint8_t>(rng());
                if (qlora_pager_release(p.get(), id, off, page) != QLORA_OK) ++failures;
            }
        });
    for (auto & th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    const auto s = stats(p.get());
    EXPECT_LE(s.peak_resident_bytes, 8 * page);
    EXPECT_GT(s.page_outs, 0);
}

TEST(Pager, ResetStats) {
    TempDir dir;
    PagerPtr p = make_pager(dir.path, 2 * 4096);
    const int64_t id = spill_pattern(p.get(), random_bytes(3 * 4096, 11));
    (void)read(p.get(), id, 0, 10);
    auto s = stats(p.get());
    EXPECT_GT(s.page_outs, 0);
    ASSERT_EQ(qlora_pager_reset_stats(p.get()), QLORA_OK);
    s = stats(p.get());
    EXPECT_EQ(s.page_outs, 0);
    EXPECT_EQ(s.page_ins, 0);
    EXPECT_EQ(s.evictions, 0);
    EXPECT_EQ(s.bytes_spilled, 0);
    EXPECT_EQ(s.peak_resident_bytes, s.resident_bytes);
    EXPECT_EQ(s.resident_bytes, 4096);
}
