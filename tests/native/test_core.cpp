// Core: statuses, errors, contexts, thread pool.
#include "test_util.hpp"
#include "core/thread_pool.hpp"

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

using namespace qtest;

TEST(Core, StatusStringsAreDistinctAndNamed) {
    EXPECT_STREQ(qlora_status_string(QLORA_OK), "QLORA_OK");
    EXPECT_STREQ(qlora_status_string(QLORA_ERROR_INVALID_ARGUMENT), "QLORA_ERROR_INVALID_ARGUMENT");
    EXPECT_STREQ(qlora_status_string(static_cast<qlora_status>(999)), "QLORA_ERROR_UNKNOWN");
}

TEST(Core, NullArgumentsReturnStatusAndMessage) {
    EXPECT_EQ(qlora_context_create(nullptr, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "params must not be NULL"), nullptr) << qlora_last_error();
    qlora_context_info info;
    EXPECT_EQ(qlora_context_get_info(nullptr, &info), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "context must not be NULL"), nullptr);
    // A successful call clears the message.
    auto ctx = make_context(QLORA_BACKEND_REF);
    ASSERT_EQ(qlora_context_get_info(ctx.get(), &info), QLORA_OK);
    EXPECT_STREQ(qlora_last_error(), "");
}

TEST(Core, ContextResolvesBackendAndIsa) {
    auto ctx = make_context(QLORA_BACKEND_AUTO);
    qlora_context_info info{};
    ASSERT_EQ(qlora_context_get_info(ctx.get(), &info), QLORA_OK);
    EXPECT_EQ(info.backend, QLORA_BACKEND_CPU);
    EXPECT_EQ(info.isa, qlora_cpu_isa_detected());
    EXPECT_GE(info.n_threads, 1);

    auto ref = make_context(QLORA_BACKEND_REF, QLORA_ISA_BEST, 4);
    ASSERT_EQ(qlora_context_get_info(ref.get(), &info), QLORA_OK);
    EXPECT_EQ(info.backend, QLORA_BACKEND_REF);
    EXPECT_EQ(info.n_threads, 1);
}

TEST(Core, UnavailableRequestsAreErrors) {
    qlora_context_params p = qlora_context_default_params();
    qlora_context_t c = nullptr;
    p.backend = static_cast<qlora_backend>(42);
    EXPECT_EQ(qlora_context_create(&p, &c), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "unknown backend"), nullptr);
    p = qlora_context_default_params();
    p.n_threads = -1;
    EXPECT_EQ(qlora_context_create(&p, &c), QLORA_ERROR_INVALID_ARGUMENT);
#ifndef QLORA_CUDA
    p = qlora_context_default_params();
    p.backend = QLORA_BACKEND_CUDA;
    EXPECT_EQ(qlora_context_create(&p, &c), QLORA_ERROR_UNSUPPORTED);
    EXPECT_NE(std::strstr(qlora_last_error(), "QLORA_CUDA"), nullptr);
#endif
    for (qlora_cpu_isa isa : {QLORA_ISA_AVX512_BF16, QLORA_ISA_AMX_BF16})
        if (qlora_cpu_isa_detected() < isa) {
            p = qlora_context_default_params();
            p.max_isa = isa;
            EXPECT_EQ(qlora_context_create(&p, &c), QLORA_ERROR_UNSUPPORTED) << qlora_cpu_isa_name(isa);
        }
    EXPECT_STREQ(qlora_cpu_isa_name(QLORA_ISA_AMX_BF16), "amx_bf16");
    EXPECT_EQ(c, nullptr);
}

TEST(ThreadPool, SplitCoversRangeExactlyOnce) {
    for (int64_t n : {1, 7, 64, 1000, 4097})
        for (int64_t grain : {1, 3, 64})
            for (int parts : {1, 2, 3, 8}) {
                int64_t expect = 0;
                for (int p = 0; p < parts; ++p) {
                    int64_t b, e;
                    qlora::split_range(n, grain, parts, p, b, e);
                    if (b >= e) continue;
                    EXPECT_EQ(b, expect);
                    EXPECT_TRUE(b % grain == 0);
                    expect = e;
                }
                EXPECT_EQ(expect, n) << n << " " << grain << " " << parts;
            }
}

using Ranges = std::vector<std::pair<int64_t, int64_t>>;

// One thread drains the queue: from its own run half of what is left per
// call (at least a chunk), then single chunks from the back of the others'
// runs, the run with the most left first; ranges are whole chunks, the last
// one cut at n.
TEST(ChunkQueue, OneThreadTakesHalvesOfItsRunThenStealsFromTheBack) {
    auto drain = [](qlora::ChunkQueue & q, int p) {
        Ranges got;
        for (int64_t b, e; q.next(p, b, e);) got.push_back({b, e});
        return got;
    };
    qlora::ChunkQueue whole(64, 1, 1);
    EXPECT_EQ(drain(whole, 0), (Ranges{{0, 32}, {32, 48}, {48, 56}, {56, 60}, {60, 62}, {62, 63}, {63, 64}}));
    qlora::ChunkQueue two(10, 3, 2); // chunks [0,3) [3,6) | [6,9) [9,10)
    EXPECT_EQ(drain(two, 0), (Ranges{{0, 3}, {3, 6}, {9, 10}, {6, 9}}));
    int64_t b, e;
    EXPECT_FALSE(two.next(1, b, e));
    qlora::ChunkQueue three(40, 4, 3); // runs of 4, 3, 3 chunks; on a tie the lower part's run
    EXPECT_EQ(drain(three, 2), (Ranges{{28, 32}, {32, 36}, {36, 40}, {12, 16}, {8, 12}, {24, 28}, {4, 8},
                                       {20, 24}, {0, 4}, {16, 20}}));
    qlora::ChunkQueue empty(0, 4, 3);
    EXPECT_FALSE(empty.next(2, b, e));
    qlora::ChunkQueue more_parts(2, 1, 4); // parts without a chunk steal
    EXPECT_TRUE(more_parts.next(3, b, e));
    EXPECT_TRUE(more_parts.next(3, b, e));
    EXPECT_FALSE(more_parts.next(0, b, e));
}

// Threads racing for chunks, one of them slowed down: every index is handed
// out exactly once, and the others take over most of the slow one's run.
TEST(ChunkQueue, RacingThreadsTakeEveryIndexExactlyOnce) {
    qlora::ThreadPool pool(4);
    for (int64_t n : {1, 5, 97, 1000, 4099})
        for (int64_t chunk : {1, 4, 33})
            for (int round = 0; round < 4; ++round) {
                qlora::ChunkQueue q(n, chunk, 4);
                std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
                std::atomic<int64_t> by_slow{0};
                pool.run([&](int t, int) {
                    for (int64_t b, e; q.next(t, b, e);) {
                        EXPECT_EQ(b % chunk, 0);
                        EXPECT_TRUE(e == n || e % chunk == 0);
                        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
                        if (t == 3) {
                            by_slow += e - b;
                            std::this_thread::sleep_for(std::chrono::milliseconds(2));
                        }
                    }
                });
                for (int64_t i = 0; i < n; ++i) {
                    ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << n << " " << chunk << " " << i;
                }
                if ((n + chunk - 1) / chunk >= 64) { // less than its static share
                    EXPECT_LT(by_slow.load(), n / 4) << n << " " << chunk;
                }
            }
}

TEST(ThreadPool, RunsEveryThreadAndPropagatesExceptions) {
    qlora::ThreadPool pool(4);
    for (int round = 0; round < 200; ++round) {
        std::atomic<int> mask{0};
        pool.run([&](int t, int n) { EXPECT_EQ(n, 4); mask.fetch_or(1 << t); });
        EXPECT_EQ(mask.load(), 0xf);
    }
    EXPECT_THROW(pool.run([](int t, int) { if (t == 2) throw std::runtime_error("boom"); }), std::runtime_error);
    std::atomic<int64_t> sum{0};
    pool.parallel_for(1000, 10, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 999 * 1000 / 2);
}
