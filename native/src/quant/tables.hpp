// bitsandbytes' code tables and scalar quantizers, bit-exact (FORMATS.md).
#pragma once

#include "qlora.h"

#include <cstdint>

namespace qlora {

// NF4 values by 4-bit code (bitsandbytes' get_4bit_type("nf4")).
extern const float kNF4Table[16];
// FP4 (E2M1 variant) values by code, divided by 12 (get_4bit_type("fp4")).
extern const float kFP4Table[16];
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

// FP4 code of a normalised value (bitsandbytes' dQuantizeFP4, same literals).
inline uint8_t quantize_fp4(float x) {
    const uint8_t sign = x < 0.0f ? 0x8 : 0x0;
    const float a = x < 0.0f ? -x : x;
    uint8_t c;
    if (a > 0.29166667f) {
        if (a > 0.583333f) c = a > 0.8333333f ? 0x3 : 0x2;
        else c = a > 0.4166667f ? 0x5 : 0x4;
    } else {
        if (a > 0.0859375f) c = a > 0.20833333f ? 0x7 : 0x6;
        else c = a > 0.00260417f ? 0x1 : 0x0;
    }
    return static_cast<uint8_t>(c + sign);
}

// Nearest entry of a sorted 256-value map (bitsandbytes' dQuantize,
// non-stochastic): binary search from 127 with steps 64..1, then an fp32
// midpoint test against the bracketing entries.
uint8_t quantize_dynamic(const float * code256, float x);

} // namespace qlora
