// The 8-bit maps of the optimizer states (bitsandbytes' create_dynamic_map).
#include "optim/adamw_kernels.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace qlora::optim {

namespace {

// torch.linspace(start, end, n) in float32 (the kernel's two-sided formula).
std::vector<float> linspace_f32(float start, float end, int n) {
    std::vector<float> out(static_cast<size_t>(n));
    const float step = (end - start) / static_cast<float>(n - 1);
    const int halfway = n / 2;
    for (int i = 0; i < n; ++i)
        out[static_cast<size_t>(i)] = i < halfway ? start + step * static_cast<float>(i)
                                                  : end - step * static_cast<float>(n - 1 - i);
    return out;
}

// create_dynamic_map(signed=False, max_exponent_bits=7, total_bits=8): for
// i in 0..6, the 2^(i+1) midpoints of linspace(0.1, 1, 2^(i+1) + 1) scaled by
// 10^(i-6); plus 0 and 1; sorted. 254 + 2 = 256 values.
std::vector<float> make_unsigned_dynamic_map() {
    static const double kPow10[7] = {1e-06, 1e-05, 1e-04, 1e-03, 1e-02, 1e-01, 1.0};
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
        const int n = (1 << (i + 1)) + 1;
        const std::vector<float> b = linspace_f32(0.1f, 1.0f, n);
        const float scale = static_cast<float>(kPow10[i]);
        for (int j = 0; j + 1 < n; ++j)
            data.push_back(scale * ((b[static_cast<size_t>(j)] + b[static_cast<size_t>(j + 1)]) / 2.0f));
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    return data;
}

} // namespace

const float * unsigned_dynamic_map() {
    static const std::vector<float> map = make_unsigned_dynamic_map();
    return map.data();
}

const float * signed_state_map() { return signed_dynamic_map(); }

namespace {
SearchTables make_search_tables(const float * code) {
    SearchTables t{};
    for (int L = 0; L < 7; ++L)
        for (int j = 0; j < (1 << L); ++j) t.level[(1 << L) - 1 + j] = code[(2 * j + 1) * (1 << (7 - L)) - 1];
    t.level[127] = 0.0f;
    for (int j = 0; j < 128; ++j) {
        t.up[j] = (code[2 * j + 1] + code[2 * j]) * 0.5f;
        t.down[j] = j == 0 ? -std::numeric_limits<float>::infinity() : (code[2 * j - 1] + code[2 * j]) * 0.5f;
    }
    return t;
}
} // namespace

const SearchTables & search_tables(int map) {
    static const SearchTables t0 = make_search_tables(signed_state_map());
    static const SearchTables t1 = make_search_tables(unsigned_dynamic_map());
    return map == 0 ? t0 : t1;
}

} // namespace qlora::optim
