// AVX-512 (F/BW/DQ/VL, optionally BF16) quantization kernels. Compiled with
// AVX-512 flags; only called when the context's ISA level allows it.
//
// Bit-exactness with ref:: rests on: the same fp32 operations in the same
// order (x * (1 / absmax), code * scale, map * nested + offset: no FMA), codes
// chosen by the same comparisons (NF4/FP4 thresholds, Int4 round-half-even,
// the dQuantize search restated in quant_simd.hpp), and conversions that
// round like core/half.hpp (see to_bf16 for the one hardware difference).
#include "core/half.hpp"
#include "cpu/dq_lookup_avx512.hpp"
#include "cpu/quant_simd.hpp"
#include "quant/kernels.hpp"
#include "quant/tables.hpp"

// GCC 12's AVX-512 headers start many intrinsics from _mm512_undefined_*(),
// which trips -Wmaybe-uninitialized once inlined (GCC bug 105593, fixed in 13).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace qlora::cpu::avx512 {

namespace {

// ---- conversions ---------------------------------------------------------

// f32_to_bf16 in integer arithmetic: round to nearest even, NaN -> quiet NaN.
inline __m256i bf16_int(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

// Lanes holding a denormal (non-zero with a zero exponent).
inline __mmask16 denormal_lanes(__m512 v) {
    const __m512i a = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff));
    return _mm512_cmp_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x007fffff),
                                 _MM_CMPINT_LT);
}

// vcvtneps2bf16 rounds to nearest even and quiets NaN exactly as f32_to_bf16
// (NaN -> (u >> 16) | 0x40), but treats denormal inputs as zero; those lanes
// (rare: |value| < 2^-126) are redone in integer arithmetic.
template <bool HW>
inline __m256i to_bf16(__m512 v) {
    if constexpr (HW) {
        __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
        const __mmask16 den = denormal_lanes(v);
        if (den) h = _mm256_mask_mov_epi16(h, den, bf16_int(v));
        return h;
    } else {
        return bf16_int(v);
    }
}

inline __m256i to_f16(__m512 v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

// 16 elements of `dtype` at p as f32.
template <qlora_dtype D>
inline __m512 load16(const void * p) {
    if constexpr (D == QLORA_DTYPE_F32) {
        return _mm512_loadu_ps(p);
    } else if constexpr (D == QLORA_DTYPE_BF16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i *>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    } else {
        return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i *>(p)));
    }
}

template <qlora_dtype D>
constexpr int64_t esize() {
    return D == QLORA_DTYPE_F32 ? 4 : 2;
}

// ---- absmax fused with the finiteness check --------------------------------
// max |x| taken on the bit patterns: for non-negative floats (and f16/bf16)
// integer order is value order, and NaN/Inf sort above every finite value,
// so one integer max gives the absmax and whether the block is finite.

inline uint32_t hmax_epu16(__m512i v) {
    __m256i y = _mm256_max_epu16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    __m128i x = _mm_max_epu16(_mm256_castsi256_si128(y), _mm256_extracti128_si256(y, 1));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 8));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 4));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 2));
    return static_cast<uint32_t>(_mm_extract_epi16(x, 0));
}

// absmax of the n (multiple of 32) elements at p; false if any is NaN/Inf.
template <qlora_dtype D>
inline bool block_absmax(const void * p, int64_t n, float & absmax) {
    if constexpr (D == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(p);
        const __m512i mask = _mm512_set1_epi32(0x7fffffff);
        __m512i m0 = _mm512_setzero_si512(), m1 = _mm512_setzero_si512();
        for (int64_t i = 0; i < n; i += 32) {
            m0 = _mm512_max_epu32(m0, _mm512_and_si512(_mm512_loadu_si512(f + i), mask));
            m1 = _mm512_max_epu32(m1, _mm512_and_si512(_mm512_loadu_si512(f + i + 16), mask));
        }
        const uint32_t bits = _mm512_reduce_max_epu32(_mm512_max_epu32(m0, m1));
        absmax = f32_from_bits(bits);
        return bits < 0x7f800000u;
    } else {
        const uint16_t * h = static_cast<const uint16_t *>(p);
        const __m512i mask = _mm512_set1_epi16(0x7fff);
        __m512i m = _mm512_setzero_si512();
        for (int64_t i = 0; i < n; i += 32) m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512(h + i), mask));
        const uint32_t bits = hmax_epu16(m);
        if constexpr (D == QLORA_DTYPE_BF16) {
            absmax = bf16_to_f32(static_cast<uint16_t>(bits));
            return bits < 0x7f80u;
        } else {
            absmax = f16_to_f32(static_cast<uint16_t>(bits));
            return bits < 0x7c00u;
        }
    }
}

// ---- 4-bit codes of 16 normalised values -----------------------------------

struct CodeTables {
    // FP4: bitsandbytes' decision tree as a 3-level binary search over its 7
    // literals on |x|; fp4[l][c] is the literal compared at level l + 1 when
    // the count so far is c; then the count's code.
    alignas(64) float fp4[2][16];
    alignas(64) int32_t fp4_code[16];
    CodeTables() {
        for (int c = 0; c < 16; ++c) {
            fp4[0][c] = kFP4Thresholds[(c & 4) + 1];
            fp4[1][c] = kFP4Thresholds[c & 6];
            fp4_code[c] = kFP4CodeOfCount[c & 7];
        }
    }
};
const CodeTables kTables;

// Codes of 16 normalised values; the tables live in registers for a whole kernel call.
template <qlora_quant_type T>
struct Coder;

template <>
struct Coder<QLORA_QUANT_NF4> {
    // one threshold compare per value: see Nf4Buckets
    const __m512 cand_lo = _mm512_load_ps(nf4_buckets().cand), cand_hi = _mm512_load_ps(nf4_buckets().cand + 16);
    const __m512i base_lo = _mm512_load_si512(nf4_buckets().base), base_hi = _mm512_load_si512(nf4_buckets().base + 16);
    __m512i operator()(__m512 x) const {
        // an approximate bucket is fine (the buckets overlap by the margin): FMA on purpose
        __m512 y = _mm512_fmadd_ps(x, _mm512_set1_ps(16.0f), _mm512_set1_ps(16.0f));
        y = _mm512_min_ps(_mm512_max_ps(y, _mm512_setzero_ps()), _mm512_set1_ps(31.5f)); // NaN -> 0
        const __m512i j = _mm512_cvttps_epi32(y);
        const __m512 cand = _mm512_permutex2var_ps(cand_lo, j, cand_hi);
        const __m512i base = _mm512_permutex2var_epi32(base_lo, j, base_hi);
        const __mmask16 up = _mm512_cmp_ps_mask(x, cand, _CMP_GT_OQ);
        return _mm512_mask_add_epi32(base, up, base, _mm512_set1_epi32(1));
    }
};

template <>
struct Coder<QLORA_QUANT_FP4> {
    const __m512 t3 = _mm512_set1_ps(kFP4Thresholds[3]), l1 = _mm512_load_ps(kTables.fp4[0]),
                 l2 = _mm512_load_ps(kTables.fp4[1]);
    const __m512i code = _mm512_load_si512(kTables.fp4_code);
    __m512i operator()(__m512 x) const {
        const __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
        __mmask16 m = _mm512_cmp_ps_mask(a, t3, _CMP_GT_OQ);
        __m512i c = _mm512_maskz_mov_epi32(m, _mm512_set1_epi32(4));
        m = _mm512_cmp_ps_mask(a, _mm512_permutexvar_ps(c, l1), _CMP_GT_OQ);
        c = _mm512_mask_add_epi32(c, m, c, _mm512_set1_epi32(2));
        m = _mm512_cmp_ps_mask(a, _mm512_permutexvar_ps(c, l2), _CMP_GT_OQ);
        c = _mm512_mask_add_epi32(c, m, c, _mm512_set1_epi32(1));
        c = _mm512_permutexvar_epi32(c, code);
        const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        return _mm512_mask_or_epi32(c, neg, c, _mm512_set1_epi32(8));
    }
};

template <>
struct Coder<QLORA_QUANT_INT4> {
    __m512i operator()(__m512 x) const {
        // max/min return their second operand for NaN, like quantize_int4
        __m512 r = _mm512_mul_ps(x, _mm512_set1_ps(7.0f));
        r = _mm512_min_ps(_mm512_max_ps(r, _mm512_set1_ps(-7.0f)), _mm512_set1_ps(7.0f));
        r = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        return _mm512_add_epi32(_mm512_cvttps_epi32(r), _mm512_set1_epi32(8));
    }
};

// Even and odd elements of 32 consecutive values at p, as f32.
template <qlora_dtype D>
inline void load_pairs(const void * p, __m512 & even, __m512 & odd) {
    if constexpr (D == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(p);
        const __m512 a = _mm512_loadu_ps(f), b = _mm512_loadu_ps(f + 16);
        const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        even = _mm512_permutex2var_ps(a, ie, b);
        odd = _mm512_permutex2var_ps(a, io, b);
    } else {
        const __m512i v = _mm512_loadu_si512(p); // dword j = x[2j] | x[2j + 1] << 16
        if constexpr (D == QLORA_DTYPE_BF16) {
            even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
        } else {
            even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v));
            odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
        }
    }
}

template <qlora_quant_type T, qlora_dtype D>
bool q4_quantize_t(const void * x, int32_t bs, int64_t b0, int64_t b1, float * absmax, uint8_t * packed) {
    const char * base = static_cast<const char *>(x);
    const Coder<T> code;
    bool finite = true;
    for (int64_t b = b0; b < b1; ++b) {
        const void * p = base + b * bs * esize<D>();
        float m;
        finite &= block_absmax<D>(p, bs, m);
        absmax[b] = m;
        const __m512 inv = _mm512_set1_ps(m > 0.0f ? 1.0f / m : 0.0f);
        uint8_t * out = packed + b * bs / 2;
        for (int64_t i = 0; i < bs; i += 32) {
            __m512 e, o;
            load_pairs<D>(static_cast<const char *>(p) + i * esize<D>(), e, o);
            const __m512i ce = code(_mm512_mul_ps(e, inv)), co = code(_mm512_mul_ps(o, inv));
            const __m512i bytes = _mm512_or_si512(_mm512_slli_epi32(ce, 4), co); // high nibble = even element
            _mm_storeu_si128(reinterpret_cast<__m128i *>(out + i / 2), _mm512_cvtepi32_epi8(bytes));
        }
    }
    return finite;
}

template <qlora_quant_type T>
bool q4_quantize_d(const void * x, qlora_dtype dtype, int32_t bs, int64_t b0, int64_t b1, float * absmax,
                   uint8_t * packed) {
    switch (dtype) {
        case QLORA_DTYPE_F16: return q4_quantize_t<T, QLORA_DTYPE_F16>(x, bs, b0, b1, absmax, packed);
        case QLORA_DTYPE_BF16: return q4_quantize_t<T, QLORA_DTYPE_BF16>(x, bs, b0, b1, absmax, packed);
        default: return q4_quantize_t<T, QLORA_DTYPE_F32>(x, bs, b0, b1, absmax, packed);
    }
}

// ---- 4-bit dequantization ------------------------------------------------
// Per block, the 16 products code[i] * scale form a table (the same fp32
// products ref computes per element), converted once to the output dtype;
// each element is then one table lookup by its nibble.

void dequant_f32(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                 int64_t b1, float * out) {
    const __m512 code = _mm512_loadu_ps(code16);
    // interleave (nibble >> 4, nibble) pairs: element 2j = high nibble of byte j
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int64_t b = b0; b < b1; ++b) {
        const __m512 table = _mm512_mul_ps(code, _mm512_set1_ps(scales[b - b0]));
        const uint8_t * p = packed + b * bs / 2;
        float * o = out + b * bs;
        for (int64_t i = 0; i < bs; i += 32) {
            const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + i / 2)));
            const __m512i s = _mm512_srli_epi32(d, 4);
            // vpermps reads only the low 4 bits of each index
            const __m512 v0 = _mm512_permutexvar_ps(_mm512_permutex2var_epi32(s, lo, d), table);
            const __m512 v1 = _mm512_permutexvar_ps(_mm512_permutex2var_epi32(s, hi, d), table);
            _mm512_storeu_ps(o + i, v0);
            _mm512_storeu_ps(o + i + 16, v1);
        }
    }
}

// f16 / bf16 output: a 16-entry table of 16-bit results, duplicated to 32
// entries so that vpermw (5 index bits) can take the raw byte as the index of
// the odd element.
template <qlora_dtype D, bool HW>
void dequant_16(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                int64_t b1, uint16_t * out) {
    const __m512 code = _mm512_loadu_ps(code16);
    for (int64_t b = b0; b < b1; ++b) {
        const __m512 prod = _mm512_mul_ps(code, _mm512_set1_ps(scales[b - b0]));
        const __m256i t16 = D == QLORA_DTYPE_F16 ? to_f16(prod) : to_bf16<HW>(prod);
        const __m512i table = _mm512_broadcast_i64x4(t16);
        const uint8_t * p = packed + b * bs / 2;
        uint16_t * o = out + b * bs;
        for (int64_t i = 0; i < bs; i += 32) {
            const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + i / 2)));
            // word 2j = byte j >> 4, word 2j + 1 = byte j
            const __m512i idx = _mm512_or_si512(_mm512_srli_epi32(d, 4), _mm512_slli_epi32(d, 16));
            _mm512_storeu_si512(o + i, _mm512_permutexvar_epi16(idx, table));
        }
    }
}

// ---- 256-entry lookups (8-bit map) ------------------------------------------

// t[idx & 31] from a 32-entry table.
inline __m512 lut32(__m512i idx, const float * t) {
    return _mm512_permutex2var_ps(_mm512_load_ps(t), idx, _mm512_load_ps(t + 16));
}
// t[idx & (n - 1)] for n = 64, 128, 256: 32-entry lookups selected by the higher index bits.
template <int N>
inline __m512 lut(__m512i idx, const float * t) {
    if constexpr (N == 32) {
        return lut32(idx, t);
    } else {
        const __m512 a = lut<N / 2>(idx, t), b = lut<N / 2>(idx, t + N / 2);
        return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(N / 2)), a, b);
    }
}

// bitsandbytes' dQuantize of N x 16 normalised values (see Q8Search). The N
// vectors go through each search level together: the levels form a long
// dependency chain, and independent chains side by side keep the units busy.
template <int N>
inline void dquantize(const __m512 (&x)[N], __m512i (&r)[N], const Q8Search & s) {
    // Each level also keeps the entries that bracket x so far: the largest
    // c[j] < x (lo) and the smallest c[j] >= x (hi). At the end they are
    // c[k' - 1] and c[k'] (c[255] when every step went up), the two operands
    // of the midpoint M[k' - 1], so it needs no lookup.
    __m512i pos[N];
    __m512 lo[N], hi[N];
    for (int k = 0; k < N; ++k) {
        pos[k] = _mm512_setzero_si512();
        lo[k] = _mm512_setzero_ps();
        hi[k] = _mm512_set1_ps(s.top);
    }
    auto step = [&](auto lookup, int shift, int s_step) {
        for (int k = 0; k < N; ++k) {
            const __m512 c = lookup(_mm512_srli_epi32(pos[k], shift));
            const __mmask16 m = _mm512_cmp_ps_mask(x[k], c, _CMP_GT_OQ);
            pos[k] = _mm512_mask_add_epi32(pos[k], m, pos[k], _mm512_set1_epi32(s_step));
            lo[k] = _mm512_mask_mov_ps(lo[k], m, c);
            hi[k] = _mm512_mask_mov_ps(c, m, hi[k]);
        }
    };
    const __m512 l0 = _mm512_set1_ps(s.level[0][0]);
    step([&](__m512i) { return l0; }, 0, 128);
    for (int l = 1; l <= 4; ++l) {
        const __m512 t = _mm512_load_ps(s.level[l]);
        step([&](__m512i i) { return _mm512_permutexvar_ps(i, t); }, 8 - l, 128 >> l);
    }
    step([&](__m512i i) { return lut32(i, s.level[5]); }, 3, 4);
    step([&](__m512i i) { return lut<64>(i, s.level[6]); }, 2, 2);
    step([&](__m512i i) { return lut<128>(i, s.level[7]); }, 1, 1);
    for (int k = 0; k < N; ++k) {
        // pos = k' in [0, 255]; M[k' - 1] = (c[k'] + c[k' - 1]) * 0.5f, as bitsandbytes rounds it
        const __m512i j = _mm512_sub_epi32(pos[k], _mm512_set1_epi32(1));
        const __m512 mid = _mm512_mul_ps(_mm512_add_ps(hi[k], lo[k]), _mm512_set1_ps(0.5f));
        const __mmask16 odd = _mm512_test_epi32_mask(pos[k], _mm512_set1_epi32(1));
        const __mmask16 gt = _mm512_cmp_ps_mask(x[k], mid, _CMP_GT_OQ), ge = _mm512_cmp_ps_mask(x[k], mid, _CMP_GE_OQ);
        const __mmask16 up = static_cast<__mmask16>((odd & gt) | (~odd & ge));
        const __m512i v = _mm512_mask_add_epi32(j, up, j, _mm512_set1_epi32(1));
        r[k] = _mm512_maskz_mov_epi32(_mm512_test_epi32_mask(pos[k], pos[k]), v);
    }
}

template <qlora_dtype D, int N>
void q8_quantize_t(const void * x, int32_t bs, const Q8Search & s, int64_t b0, int64_t b1, uint8_t * q,
                   float * absmax) {
    const char * base = static_cast<const char *>(x);
    for (int64_t b = b0; b < b1; ++b) {
        const char * p = base + b * bs * esize<D>();
        float m;
        block_absmax<D>(p, bs, m);
        absmax[b] = m;
        const __m512 inv = _mm512_set1_ps(m > 0.0f ? 1.0f / m : 0.0f);
        for (int64_t i = 0; i < bs; i += 16 * N) {
            __m512 xn[N];
            __m512i r[N];
            for (int k = 0; k < N; ++k) xn[k] = _mm512_mul_ps(load16<D>(p + (i + 16 * k) * esize<D>()), inv);
            dquantize<N>(xn, r, s);
            for (int k = 0; k < N; ++k)
                _mm_storeu_si128(reinterpret_cast<__m128i *>(q + b * bs + i + 16 * k), _mm512_cvtepi32_epi8(r[k]));
        }
    }
}

template <qlora_dtype D>
void q8_quantize_d(const void * x, int32_t bs, const Q8Search & s, int64_t b0, int64_t b1, uint8_t * q,
                   float * absmax) {
    if (bs % 64 == 0) q8_quantize_t<D, 4>(x, bs, s, b0, b1, q, absmax);
    else q8_quantize_t<D, 2>(x, bs, s, b0, b1, q, absmax);
}

template <qlora_dtype D, bool HW>
void q8_dequantize_t(const uint8_t * q, const float * absmax, int32_t bs, const float * code256, int64_t b0,
                     int64_t b1, void * out) {
    alignas(64) float code[256];
    std::copy(code256, code256 + 256, code);
    for (int64_t b = b0; b < b1; ++b) {
        const __m512 scale = _mm512_set1_ps(absmax[b]);
        for (int64_t i = b * bs; i < (b + 1) * bs; i += 16) {
            const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(q + i)));
            const __m512 v = _mm512_mul_ps(lut<256>(idx, code), scale);
            if constexpr (D == QLORA_DTYPE_F32) {
                _mm512_storeu_ps(static_cast<float *>(out) + i, v);
            } else {
                const __m256i h = D == QLORA_DTYPE_F16 ? to_f16(v) : to_bf16<HW>(v);
                _mm256_storeu_si256(reinterpret_cast<__m256i *>(static_cast<uint16_t *>(out) + i), h);
            }
        }
    }
}

} // namespace

bool q4_quantize(const void * x, qlora_dtype dtype, qlora_quant_type type, int32_t bs, int64_t b0, int64_t b1,
                 float * absmax, uint8_t * packed) {
    switch (type) {
        case QLORA_QUANT_FP4: return q4_quantize_d<QLORA_QUANT_FP4>(x, dtype, bs, b0, b1, absmax, packed);
        case QLORA_QUANT_INT4: return q4_quantize_d<QLORA_QUANT_INT4>(x, dtype, bs, b0, b1, absmax, packed);
        default: return q4_quantize_d<QLORA_QUANT_NF4>(x, dtype, bs, b0, b1, absmax, packed);
    }
}

void q4_dequantize(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype, bool hw_bf16) {
    uint16_t * o16 = static_cast<uint16_t *>(out);
    switch (dtype) {
        case QLORA_DTYPE_F16: dequant_16<QLORA_DTYPE_F16, false>(packed, code16, scales, bs, b0, b1, o16); break;
        case QLORA_DTYPE_BF16:
            if (hw_bf16) dequant_16<QLORA_DTYPE_BF16, true>(packed, code16, scales, bs, b0, b1, o16);
            else dequant_16<QLORA_DTYPE_BF16, false>(packed, code16, scales, bs, b0, b1, o16);
            break;
        default: dequant_f32(packed, code16, scales, bs, b0, b1, static_cast<float *>(out)); break;
    }
}

void dq_scales(const DqSource & src, int64_t b0, int64_t b1, float * scales) {
    const int shift = __builtin_ctz(static_cast<unsigned>(src.nested_blocksize));
    const __m512 offset = _mm512_set1_ps(src.offset);
    const NestedCodeLookup lut(src.nested_words);
    // 32 blocks at a time; the nested absmax takes at most two values among 16
    // consecutive blocks (nested blocks are >= 32 long), blended in.
    for (int64_t b = b0; b < b1; b += 32) {
        const int n = static_cast<int>(std::min<int64_t>(32, b1 - b));
        __m512 code[2];
        lut.lookup32(src.qabsmax + b, n, code[0], code[1]);
        for (int h = 0; h < 2 && 16 * h < n; ++h) {
            const int nh = std::min(16, n - 16 * h);
            const int64_t bh = b + 16 * h, nlo = bh >> shift, nhi = (bh + nh - 1) >> shift;
            __m512 na = _mm512_set1_ps(src.nested_absmax[nlo]);
            if (nhi != nlo)
                na = _mm512_mask_blend_ps(static_cast<__mmask16>(0xffffu << ((nhi << shift) - bh)), na,
                                          _mm512_set1_ps(src.nested_absmax[nhi]));
            _mm512_mask_storeu_ps(scales + (bh - b0), static_cast<__mmask16>((1u << nh) - 1u),
                                  _mm512_add_ps(_mm512_mul_ps(code[h], na), offset));
        }
    }
}

void q8_quantize(const void * x, qlora_dtype dtype, int32_t bs, const Q8Search & search, int64_t b0, int64_t b1,
                 uint8_t * q, float * absmax) {
    switch (dtype) {
        case QLORA_DTYPE_F16: q8_quantize_d<QLORA_DTYPE_F16>(x, bs, search, b0, b1, q, absmax); break;
        case QLORA_DTYPE_BF16: q8_quantize_d<QLORA_DTYPE_BF16>(x, bs, search, b0, b1, q, absmax); break;
        default: q8_quantize_d<QLORA_DTYPE_F32>(x, bs, search, b0, b1, q, absmax); break;
    }
}

void q8_dequantize(const uint8_t * q, const float * absmax, int32_t bs, const float * code256, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype, bool hw_bf16) {
    switch (dtype) {
        case QLORA_DTYPE_F16: q8_dequantize_t<QLORA_DTYPE_F16, false>(q, absmax, bs, code256, b0, b1, out); break;
        case QLORA_DTYPE_BF16:
            if (hw_bf16) q8_dequantize_t<QLORA_DTYPE_BF16, true>(q, absmax, bs, code256, b0, b1, out);
            else q8_dequantize_t<QLORA_DTYPE_BF16, false>(q, absmax, bs, code256, b0, b1, out);
            break;
        default: q8_dequantize_t<QLORA_DTYPE_F32, false>(q, absmax, bs, code256, b0, b1, out); break;
    }
}

int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1) {
    int64_t i = i0;
    if (dtype == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(x);
        const __m512i mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
        for (; i + 16 <= i1; i += 16) {
            const __mmask16 bad =
                _mm512_cmp_epu32_mask(_mm512_and_si512(_mm512_loadu_si512(f + i), mask), inf, _MM_CMPINT_NLT);
            if (bad) return i + __builtin_ctz(bad);
        }
    } else {
        const uint16_t * h = static_cast<const uint16_t *>(x);
        const __m512i mask = _mm512_set1_epi16(0x7fff);
        const __m512i inf = _mm512_set1_epi16(static_cast<short>(dtype == QLORA_DTYPE_BF16 ? 0x7f80 : 0x7c00));
        for (; i + 32 <= i1; i += 32) {
            const __mmask32 bad =
                _mm512_cmp_epu16_mask(_mm512_and_si512(_mm512_loadu_si512(h + i), mask), inf, _MM_CMPINT_NLT);
            if (bad) return i + __builtin_ctz(bad);
        }
    }
    return i < i1 ? ref::find_nonfinite(x, dtype, i, i1) : -1;
}

} // namespace qlora::cpu::avx512
