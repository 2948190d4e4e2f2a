// Core: statuses, errors, contexts, thread pool.
#include "test_util.hpp"
#include "core/thread_pool.hpp"

#include <atomic>
#include <cstring>
#include <stdexcept>

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
    if (qlora_cpu_isa_detected() < QLORA_ISA_AVX512_BF16) {
        p = qlora_context_default_params();
        p.max_isa = QLORA_ISA_AVX512_BF16;
        EXPECT_EQ(qlora_context_create(&p, &c), QLORA_ERROR_UNSUPPORTED);
    }
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
