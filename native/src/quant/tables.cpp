#include "quant/tables.hpp"

#include <algorithm>
#include <vector>

namespace qlora {

const float kNF4Table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3] / 12 in fp32.
const float kFP4Table[16] = {
    0.0f / 12.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f, 4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f, 3.0f / 12.0f,
    -0.0f / 12.0f, -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f, -4.0f / 12.0f, -6.0f / 12.0f, -2.0f / 12.0f,
    -3.0f / 12.0f};

// (i - 8) / 7 for i in 0..15, each a correctly rounded fp32 division.
const float kInt4Table[16] = {
    -8.0f / 7.0f, -7.0f / 7.0f, -6.0f / 7.0f, -5.0f / 7.0f, -4.0f / 7.0f, -3.0f / 7.0f, -2.0f / 7.0f, -1.0f / 7.0f,
    0.0f / 7.0f,  1.0f / 7.0f,  2.0f / 7.0f,  3.0f / 7.0f,  4.0f / 7.0f,  5.0f / 7.0f,  6.0f / 7.0f,  7.0f / 7.0f};

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

std::vector<float> make_signed_dynamic_map() {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
        const int n = (1 << i) + 1;
        const std::vector<float> b = linspace_f32(0.1f, 1.0f, n);
        // python: (10 ** (i - 6)) * means -> the double 10^(i-6), cast to fp32 by torch
        static const double kPow10[7] = {1e-06, 1e-05, 1e-04, 1e-03, 1e-02, 1e-01, 1.0};
        const float scale = static_cast<float>(kPow10[i]);
        for (int j = 0; j + 1 < n; ++j) {
            const float mean = (b[static_cast<size_t>(j)] + b[static_cast<size_t>(j + 1)]) / 2.0f;
            data.push_back(scale * mean);
            data.push_back(-scale * mean);
        }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    return data;
}

} // namespace

const float * signed_dynamic_map() {
    static const std::vector<float> map = make_signed_dynamic_map();
    return map.data();
}

// bitsandbytes' dQuantizeNF4 compares against these decimal literals (the
// midpoints of neighbouring table values, printed with 16-17 digits). Each
// exact midpoint of two fp32 values is a tie between two fp32 neighbours, and
// for 4 of the 15 the shortened decimal rounds to the other neighbour than
// round-to-nearest-even of the exact midpoint would: using the literals keeps
// codes bit-identical with bitsandbytes' kernel.
const float * nf4_thresholds() {
    static const float t[15] = {
        -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
        -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
        0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
        0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
    return t;
}

const float * code_table(qlora_quant_type type) {
    switch (type) {
        case QLORA_QUANT_FP4: return kFP4Table;
        case QLORA_QUANT_INT4: return kInt4Table;
        default: return kNF4Table;
    }
}

uint8_t quantize_dynamic(const float * code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        const float midpoint = (upper + val) * 0.5f;
        return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
    }
    const float midpoint = (lower + val) * 0.5f;
    return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

} // namespace qlora
