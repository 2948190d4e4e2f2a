// bitsandbytes' code tables and scalar quantizers, bit-exact (FORMATS.md).
#pragma once

#include "qlora.h"

#include <cmath>
#include <cstdint>

namespace qlora {

// NF4 values by 4-bit code (bitsandbytes' get_4bit_type("nf4")).
extern const float kNF4Table[16];
// FP4 (E2M1 variant) values by code, divided by 12 (get_4bit_type("fp4")).
extern const float kFP4Table[16];
// Symmetric absmax Int4: value(i) = (i - 8) / 7 in fp32 (code 0 = -8/7 is
// never produced by quantize_int4; it only completes the 16-entry table).
extern const float kInt4Table[16];
// bitsandbytes' create_dynamic_map(signed=True, 7, 8), computed once.
const float * signed_dynamic_map();

const float * code_table(qlora_quant_type type);

// NF4 code of a normalised value: the number of the 15 fp32 midpoints it
// exceeds (a value exactly on a midpoint takes the lower code).
// The 15 thresholds of bitsandbytes' dQuantizeNF4 (midpoints of neighbouring
// kNF4Table entries, within one fp32 ulp), ascending.
const float * nf4_thresholds();

inline uint8_t quantize_nf4(const float * thresholds, float x) {
    uint8_t c = 0;
    for (int i = 0; i < 15; ++i) c += x > thresholds[i] ? 1 : 0;
    return c;
}

// The decimal literals of bitsandbytes' dQuantizeFP4, ascending. Its decision
// tree is a binary search over them: the number k of literals below |x| picks
// the code kFP4CodeOfCount[k] (then + 8 for x < 0).
inline constexpr float kFP4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                            0.4166667f,  0.583333f,  0.8333333f};
inline constexpr uint8_t kFP4CodeOfCount[8] = {0x0, 0x1, 0x6, 0x7, 0x4, 0x5, 0x2, 0x3};

// FP4 code of a normalised value (bitsandbytes' dQuantizeFP4, same literals).
inline uint8_t quantize_fp4(float x) {
    const float * t = kFP4Thresholds;
    const uint8_t sign = x < 0.0f ? 0x8 : 0x0;
    const float a = x < 0.0f ? -x : x;
    uint8_t c;
    if (a > t[3]) {
        if (a > t[5]) c = a > t[6] ? 0x3 : 0x2;
        else c = a > t[4] ? 0x5 : 0x4;
    } else {
        if (a > t[1]) c = a > t[2] ? 0x7 : 0x6;
        else c = a > t[0] ? 0x1 : 0x0;
    }
    return static_cast<uint8_t>(c + sign);
}

// Round half to even of |r| < 2^22, independent of the FP rounding mode
// (std::trunc never depends on it; r - trunc(r) is exact).
inline float round_half_even(float r) {
    float t = std::trunc(r);
    const float d = std::fabs(r - t);
    if (d > 0.5f || (d == 0.5f && (static_cast<int>(t) & 1) != 0)) t += r < 0.0f ? -1.0f : 1.0f;
    return t;
}

// Int4 code of a normalised value: clamp(round_half_even(x * 7), -7, 7) + 8,
// with x * 7 rounded to fp32 first. That is the nearest kInt4Table entry up to
// that one rounding; ties (x * 7 exactly k + 0.5) go to the even integer, as
// torch.round does. NaN maps to -7 (code 1), the same as the SIMD kernels'
// max/min order; quantize rejects NaN before it gets here.
inline uint8_t quantize_int4(float x) {
    float r = x * 7.0f;
    r = r >= -7.0f ? r : -7.0f;
    r = r <= 7.0f ? r : 7.0f;
    return static_cast<uint8_t>(static_cast<int>(round_half_even(r)) + 8);
}

// Nearest entry of a sorted 256-value map (bitsandbytes' dQuantize,
// non-stochastic): binary search from 127 with steps 64..1, then an fp32
// midpoint test against the bracketing entries.
uint8_t quantize_dynamic(const float * code256, float x);

} // namespace qlora
