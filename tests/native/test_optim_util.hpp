// Helpers shared by the optimizer tests: a multi-buffer problem with a
// deterministic gradient sequence, and step runners.
#pragma once

#include "qlora.h"
#include "test_pager_util.hpp"
#include "test_util.hpp"

#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace qtest {

using Buffers = std::vector<std::vector<float>>;

inline bool contains(const std::string & s, const std::string & part) { return s.find(part) != std::string::npos; }

// A set of parameter buffers (odd sizes: partial blocks, single elements) and
// a deterministic gradient sequence with per-buffer scales, exact zeros and
// tiny values.
struct Problem {
    std::vector<int64_t> sizes;
    Buffers              init;
    uint32_t             seed;
    std::vector<Buffers> cache;

    Problem(std::vector<int64_t> s, uint32_t sd) : sizes(std::move(s)), seed(sd) {
        std::mt19937 rng(seed);
        std::normal_distribution<float> nd(0.0f, 0.5f);
        for (int64_t n : sizes) {
            std::vector<float> p(static_cast<size_t>(n));
            for (auto & x : p) x = nd(rng);
            init.push_back(std::move(p));
        }
    }
    int64_t numel() const {
        int64_t n = 0;
        for (int64_t s : sizes) n += s;
        return n;
    }
    // Keeps the gradients of steps 1..upto, for tests that replay them often.
    void cache_grads(int64_t upto) {
        cache.clear();
        for (int64_t t = 1; t <= upto; ++t) cache.push_back(grads(t));
    }
    // Gradients of step t (1-based).
    Buffers grads(int64_t t) const {
        if (t >= 1 && t <= static_cast<int64_t>(cache.size())) return cache[static_cast<size_t>(t - 1)];
        static const float kScale[] = {1e-3f, 1.0f, 0.05f, 3.0f, 1e-6f, 0.3f};
        std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(t) * 104729u);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        Buffers g;
        for (size_t i = 0; i < sizes.size(); ++i) {
            std::vector<float> b(static_cast<size_t>(sizes[i]));
            const float scale = kScale[i % 6];
            for (size_t e = 0; e < b.size(); ++e) {
                b[e] = nd(rng) * scale;
                if (e % 7 == 3) b[e] = 0.0f;
                if (e % 13 == 5) b[e] = (e & 1 ? -1e-30f : 1e-30f);
            }
            g.push_back(std::move(b));
        }
        return g;
    }
};

inline std::vector<qlora_view> views(Buffers & b) {
    std::vector<qlora_view> v;
    for (auto & x : b) v.push_back(view_of(x, QLORA_DTYPE_F32, 1, static_cast<int64_t>(x.size())));
    return v;
}

inline AdamwPtr make_opt(const qlora_adamw_params & hp, qlora_pager_t pager, const std::vector<int64_t> & sizes) {
    qlora_adamw_t o = nullptr;
    EXPECT_EQ(qlora_adamw_create(&hp, pager, &o), QLORA_OK) << qlora_last_error();
    for (size_t i = 0; i < sizes.size(); ++i) {
        int32_t idx = -1;
        EXPECT_EQ(qlora_adamw_add_buffer(o, sizes[i], &idx), QLORA_OK) << qlora_last_error();
        EXPECT_EQ(idx, static_cast<int32_t>(i));
    }
    return AdamwPtr(o);
}

inline PagerPtr make_pager(const std::filesystem::path & dir, int64_t budget, int64_t page) {
    qlora_pager_params pp = qlora_pager_default_params();
    pp.budget_bytes = budget;
    pp.page_bytes = page;
    const std::string d = dir.string();
    pp.spill_dir = d.c_str();
    qlora_pager_t h = nullptr;
    EXPECT_EQ(qlora_pager_create(&pp, &h), QLORA_OK) << qlora_last_error();
    return PagerPtr(h);
}

// Steps t = from+1 .. to on `params`; `after` runs after each step.
inline void run_steps(qlora_context_t ctx, qlora_adamw_t opt, const Problem & pb, Buffers & params, int64_t from, int64_t to,
               const std::function<void(int64_t)> & after = {}) {
    for (int64_t t = from + 1; t <= to; ++t) {
        Buffers g = pb.grads(t);
        auto pv = views(params), gv = views(g);
        qlora_adamw_step_info info{};
        ASSERT_EQ(qlora_adamw_step(ctx, opt, pv.data(), gv.data(), static_cast<int32_t>(pv.size()), &info), QLORA_OK)
            << "step " << t << ": " << qlora_last_error();
        ASSERT_EQ(info.step, t);
        if (after) after(t);
    }
}

inline qlora_adamw_params hyper(qlora_optim_state state) {
    qlora_adamw_params hp = qlora_adamw_default_params();
    hp.state = state;
    hp.lr = 2e-3f;
    hp.weight_decay = 0.05f;
    hp.max_grad_norm = 20.0f; // clips some steps of the Problem above, not all
    return hp;
}

inline bool bit_equal(const Buffers & a, const Buffers & b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * 4) != 0) return false;
    return true;
}

inline const std::vector<int64_t> kSizes = {1, 255, 256, 257, 5000, 70001};

inline const char * state_name(qlora_optim_state s) { return s == QLORA_OPTIM_STATE_8BIT ? "8bit" : "32bit"; }


} // namespace qtest
