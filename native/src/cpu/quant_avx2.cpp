// AVX2 + FMA + F16C quantization kernels (8 lanes). Compiled with those
// flags; only called when the context's ISA level allows it. Same structure
// and the same exactness arguments as quant_avx512.cpp; the 16-entry lookups
// are two 8-entry vpermps selected by index bit 3, the 16-bit tables vpshufb,
// and the deeper levels of the 8-bit search are gathers.
#include "core/half.hpp"
#include "cpu/quant_simd.hpp"
#include "quant/kernels.hpp"
#include "quant/tables.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace qlora::cpu::avx2 {

namespace {

// f32_to_bf16 of 8 lanes, as dwords (round to nearest even, NaN -> quiet NaN).
inline __m256i bf16_int(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, bias), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}

// 8 dwords (each < 65536) -> 8 u16.
inline __m128i pack_u16(__m256i d) {
    return _mm_packus_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
}

inline __m128i to_16(__m256 v, qlora_dtype dtype) {
    if (dtype == QLORA_DTYPE_F16) return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return pack_u16(bf16_int(v));
}

// 8 dwords (each < 256) -> 8 bytes in the low half.
inline __m128i pack_u8(__m256i d) {
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i b = _mm256_shuffle_epi8(d, pick);
    return _mm_unpacklo_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

template <qlora_dtype D>
constexpr int64_t esize() {
    return D == QLORA_DTYPE_F32 ? 4 : 2;
}

template <qlora_dtype D>
inline __m256 load8(const void * p) {
    if constexpr (D == QLORA_DTYPE_F32) {
        return _mm256_loadu_ps(static_cast<const float *>(p));
    } else if constexpr (D == QLORA_DTYPE_BF16) {
        const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i *>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    } else {
        return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i *>(p)));
    }
}

inline uint32_t hmax_epu32(__m256i v) {
    __m128i x = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_max_epu32(x, _mm_srli_si128(x, 8));
    x = _mm_max_epu32(x, _mm_srli_si128(x, 4));
    return static_cast<uint32_t>(_mm_cvtsi128_si32(x));
}

inline uint32_t hmax_epu16(__m256i v) {
    __m128i x = _mm_max_epu16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 8));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 4));
    x = _mm_max_epu16(x, _mm_srli_si128(x, 2));
    return static_cast<uint32_t>(_mm_extract_epi16(x, 0));
}

// absmax of n (multiple of 32) elements, on the bit patterns (see avx512); false if any is NaN/Inf.
template <qlora_dtype D>
inline bool block_absmax(const void * p, int64_t n, float & absmax) {
    if constexpr (D == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(p);
        const __m256i mask = _mm256_set1_epi32(0x7fffffff);
        __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
        for (int64_t i = 0; i < n; i += 16) {
            m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(f + i)), mask));
            m1 = _mm256_max_epu32(m1,
                                  _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(f + i + 8)), mask));
        }
        const uint32_t bits = hmax_epu32(_mm256_max_epu32(m0, m1));
        absmax = f32_from_bits(bits);
        return bits < 0x7f800000u;
    } else {
        const uint16_t * h = static_cast<const uint16_t *>(p);
        const __m256i mask = _mm256_set1_epi16(0x7fff);
        __m256i m = _mm256_setzero_si256();
        for (int64_t i = 0; i < n; i += 16)
            m = _mm256_max_epu16(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(h + i)), mask));
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

// ---- 4-bit codes of 8 normalised values -------------------------------------

struct CodeTables {
    alignas(32) float nf4_l2[8];   // thresholds[c + 1] for c = 0, 4, 8, 12 (index c >> 2)
    alignas(32) float nf4_l3[8];   // thresholds[c] for c = 0, 2, ..., 14 (index c >> 1)
    alignas(32) float fp4_l2[8];   // literals[c] for c = 0, 2, 4, 6 (index c >> 1)
    alignas(32) int32_t fp4_code[8];
    CodeTables() {
        const float * t = nf4_thresholds();
        for (int i = 0; i < 8; ++i) {
            nf4_l2[i] = t[std::min(4 * i + 1, 14)];
            nf4_l3[i] = t[std::min(2 * i, 14)];
            fp4_l2[i] = kFP4Thresholds[std::min(2 * i, 6)];
            fp4_code[i] = kFP4CodeOfCount[i];
        }
    }
};
const CodeTables kTables;

inline __m256i bits_of(__m256 mask, int value) {
    return _mm256_and_si256(_mm256_castps_si256(mask), _mm256_set1_epi32(value));
}

template <qlora_quant_type T>
inline __m256i codes8(__m256 x) {
    if constexpr (T == QLORA_QUANT_NF4) {
        const float * t = nf4_thresholds();
        const __m256 m1 = _mm256_cmp_ps(x, _mm256_set1_ps(t[7]), _CMP_GT_OQ);
        __m256i c = bits_of(m1, 8);
        const __m256 m2 = _mm256_cmp_ps(x, _mm256_blendv_ps(_mm256_set1_ps(t[3]), _mm256_set1_ps(t[11]), m1), _CMP_GT_OQ);
        c = _mm256_add_epi32(c, bits_of(m2, 4));
        const __m256 t3 = _mm256_permutevar8x32_ps(_mm256_load_ps(kTables.nf4_l2), _mm256_srli_epi32(c, 2));
        c = _mm256_add_epi32(c, bits_of(_mm256_cmp_ps(x, t3, _CMP_GT_OQ), 2));
        const __m256 t4 = _mm256_permutevar8x32_ps(_mm256_load_ps(kTables.nf4_l3), _mm256_srli_epi32(c, 1));
        return _mm256_add_epi32(c, bits_of(_mm256_cmp_ps(x, t4, _CMP_GT_OQ), 1));
    } else if constexpr (T == QLORA_QUANT_FP4) {
        const float * t = kFP4Thresholds;
        const __m256 a = _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff)));
        const __m256 m1 = _mm256_cmp_ps(a, _mm256_set1_ps(t[3]), _CMP_GT_OQ);
        __m256i c = bits_of(m1, 4);
        const __m256 m2 = _mm256_cmp_ps(a, _mm256_blendv_ps(_mm256_set1_ps(t[1]), _mm256_set1_ps(t[5]), m1), _CMP_GT_OQ);
        c = _mm256_add_epi32(c, bits_of(m2, 2));
        const __m256 t3 = _mm256_permutevar8x32_ps(_mm256_load_ps(kTables.fp4_l2), _mm256_srli_epi32(c, 1));
        c = _mm256_add_epi32(c, bits_of(_mm256_cmp_ps(a, t3, _CMP_GT_OQ), 1));
        c = _mm256_permutevar8x32_epi32(_mm256_load_si256(reinterpret_cast<const __m256i *>(kTables.fp4_code)), c);
        return _mm256_or_si256(c, bits_of(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ), 8));
    } else {
        __m256 r = _mm256_mul_ps(x, _mm256_set1_ps(7.0f));
        r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-7.0f)), _mm256_set1_ps(7.0f));
        r = _mm256_round_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        return _mm256_add_epi32(_mm256_cvttps_epi32(r), _mm256_set1_epi32(8));
    }
}

// Even and odd elements of 16 consecutive values at p, as f32, in order.
template <qlora_dtype D>
inline void load_pairs(const void * p, __m256 & even, __m256 & odd) {
    if constexpr (D == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(p);
        const __m256 a = _mm256_loadu_ps(f), b = _mm256_loadu_ps(f + 8);
        // shuffle gives [a0 a2 b0 b2 | a4 a6 b4 b6]; the qword permute restores order
        even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
        odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
    } else {
        const __m256i v = _mm256_loadu_si256(static_cast<const __m256i *>(p)); // dword j = x[2j] | x[2j+1] << 16
        if constexpr (D == QLORA_DTYPE_BF16) {
            even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
            odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
        } else {
            even = _mm256_cvtph_ps(pack_u16(_mm256_and_si256(v, _mm256_set1_epi32(0xffff))));
            odd = _mm256_cvtph_ps(pack_u16(_mm256_srli_epi32(v, 16)));
        }
    }
}

template <qlora_quant_type T, qlora_dtype D>
bool q4_quantize_t(const void * x, int32_t bs, int64_t b0, int64_t b1, float * absmax, uint8_t * packed) {
    const char * base = static_cast<const char *>(x);
    bool finite = true;
    for (int64_t b = b0; b < b1; ++b) {
        const char * p = base + b * bs * esize<D>();
        float m;
        finite &= block_absmax<D>(p, bs, m);
        absmax[b] = m;
        const __m256 inv = _mm256_set1_ps(m > 0.0f ? 1.0f / m : 0.0f);
        uint8_t * out = packed + b * bs / 2;
        for (int64_t i = 0; i < bs; i += 16) {
            __m256 e, o;
            load_pairs<D>(p + i * esize<D>(), e, o);
            const __m256i ce = codes8<T>(_mm256_mul_ps(e, inv)), co = codes8<T>(_mm256_mul_ps(o, inv));
            const __m256i bytes = _mm256_or_si256(_mm256_slli_epi32(ce, 4), co); // high nibble = even element
            _mm_storel_epi64(reinterpret_cast<__m128i *>(out + i / 2), pack_u8(bytes));
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

// ---- 4-bit dequantization (per-block table of code * scale, see avx512) ----

// Nibble indices of 32 elements from 16 packed bytes: n0 = elements 0..15, n1 = 16..31.
inline void nibbles(const uint8_t * p, __m128i & n0, __m128i & n1) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(x, 4), m), lo = _mm_and_si128(x, m);
    n0 = _mm_unpacklo_epi8(hi, lo);
    n1 = _mm_unpackhi_epi8(hi, lo);
}

inline void store32(void * p, __m256i v) { _mm256_storeu_si256(static_cast<__m256i *>(p), v); }

inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

void dequant_f32(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                 int64_t b1, float * out) {
    const __m256 code_lo = _mm256_loadu_ps(code16), code_hi = _mm256_loadu_ps(code16 + 8);
    for (int64_t b = b0; b < b1; ++b) {
        const __m256 s = _mm256_set1_ps(scales[b - b0]);
        const __m256 tlo = _mm256_mul_ps(code_lo, s), thi = _mm256_mul_ps(code_hi, s);
        const uint8_t * p = packed + b * bs / 2;
        float * o = out + b * bs;
        for (int64_t i = 0; i < bs; i += 32) {
            __m128i n[2];
            nibbles(p + i / 2, n[0], n[1]);
            for (int k = 0; k < 2; ++k) {
                const __m256i i0 = _mm256_cvtepu8_epi32(n[k]), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(n[k], 8));
                store32(o + i + 16 * k, _mm256_castps_si256(lookup16(tlo, thi, i0)));
                store32(o + i + 16 * k + 8, _mm256_castps_si256(lookup16(tlo, thi, i1)));
            }
        }
    }
}

void dequant_16(const uint8_t * packed, const float * code16, const float * scales, int32_t bs, int64_t b0,
                int64_t b1, uint16_t * out, qlora_dtype dtype) {
    const __m256 code_lo = _mm256_loadu_ps(code16), code_hi = _mm256_loadu_ps(code16 + 8);
    const __m128i low_byte = _mm_set1_epi16(0xff);
    for (int64_t b = b0; b < b1; ++b) {
        const __m256 s = _mm256_set1_ps(scales[b - b0]);
        const __m128i h0 = to_16(_mm256_mul_ps(code_lo, s), dtype), h1 = to_16(_mm256_mul_ps(code_hi, s), dtype);
        // the 16 results split into a low-byte and a high-byte table for vpshufb
        const __m256i tlo = _mm256_broadcastsi128_si256(
            _mm_packus_epi16(_mm_and_si128(h0, low_byte), _mm_and_si128(h1, low_byte)));
        const __m256i thi = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_srli_epi16(h0, 8), _mm_srli_epi16(h1, 8)));
        const uint8_t * p = packed + b * bs / 2;
        uint16_t * o = out + b * bs;
        for (int64_t i = 0; i < bs; i += 32) {
            __m128i n0, n1;
            nibbles(p + i / 2, n0, n1);
            const __m256i idx = _mm256_set_m128i(n1, n0);
            const __m256i lob = _mm256_shuffle_epi8(tlo, idx), hib = _mm256_shuffle_epi8(thi, idx);
            const __m256i w0 = _mm256_unpacklo_epi8(lob, hib), w1 = _mm256_unpackhi_epi8(lob, hib);
            store32(o + i, _mm256_permute2x128_si256(w0, w1, 0x20));
            store32(o + i + 16, _mm256_permute2x128_si256(w0, w1, 0x31));
        }
    }
}

// ---- 8-bit search (see Q8Search) ---------------------------------------------

// N x 8 values through each level together (independent dependency chains).
template <int N>
inline void dquantize(const __m256 (&x)[N], __m256i (&r)[N], const Q8Search & s) {
    // lo / hi: the entries bracketing x so far (see avx512): the midpoint needs no gather.
    __m256i pos[N];
    __m256 lo[N], hi[N];
    for (int k = 0; k < N; ++k) {
        pos[k] = _mm256_setzero_si256();
        lo[k] = _mm256_setzero_ps();
        hi[k] = _mm256_set1_ps(s.top);
    }
    auto step = [&](auto lookup, int s_step) {
        for (int k = 0; k < N; ++k) {
            const __m256 c = lookup(pos[k]);
            const __m256 m = _mm256_cmp_ps(x[k], c, _CMP_GT_OQ);
            pos[k] = _mm256_add_epi32(pos[k], bits_of(m, s_step));
            lo[k] = _mm256_blendv_ps(lo[k], c, m);
            hi[k] = _mm256_blendv_ps(c, hi[k], m);
        }
    };
    const __m256 l0 = _mm256_set1_ps(s.level[0][0]), l1a = _mm256_set1_ps(s.level[1][0]),
                 l1b = _mm256_set1_ps(s.level[1][1]), l2 = _mm256_load_ps(s.level[2]), l3 = _mm256_load_ps(s.level[3]);
    step([&](__m256i) { return l0; }, 128);
    step([&](__m256i p) { return _mm256_blendv_ps(l1a, l1b, _mm256_castsi256_ps(_mm256_slli_epi32(p, 24))); }, 64);
    step([&](__m256i p) { return _mm256_permutevar8x32_ps(l2, _mm256_srli_epi32(p, 6)); }, 32);
    step([&](__m256i p) { return _mm256_permutevar8x32_ps(l3, _mm256_srli_epi32(p, 5)); }, 16);
    step([&](__m256i p) { return _mm256_i32gather_ps(s.level[4], _mm256_srli_epi32(p, 4), 4); }, 8);
    step([&](__m256i p) { return _mm256_i32gather_ps(s.level[5], _mm256_srli_epi32(p, 3), 4); }, 4);
    step([&](__m256i p) { return _mm256_i32gather_ps(s.level[6], _mm256_srli_epi32(p, 2), 4); }, 2);
    step([&](__m256i p) { return _mm256_i32gather_ps(s.level[7], _mm256_srli_epi32(p, 1), 4); }, 1);
    for (int k = 0; k < N; ++k) {
        const __m256i j = _mm256_sub_epi32(pos[k], _mm256_set1_epi32(1));
        const __m256 mid = _mm256_mul_ps(_mm256_add_ps(hi[k], lo[k]), _mm256_set1_ps(0.5f));
        const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(pos[k], _mm256_set1_epi32(1)), _mm256_set1_epi32(1));
        const __m256i gt = _mm256_castps_si256(_mm256_cmp_ps(x[k], mid, _CMP_GT_OQ));
        const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(x[k], mid, _CMP_GE_OQ));
        const __m256i up = _mm256_or_si256(_mm256_and_si256(odd, gt), _mm256_andnot_si256(odd, ge));
        const __m256i v = _mm256_sub_epi32(j, up); // up is -1 where true
        r[k] = _mm256_andnot_si256(_mm256_cmpeq_epi32(pos[k], _mm256_setzero_si256()), v);
    }
}

template <qlora_dtype D>
void q8_quantize_t(const void * x, int32_t bs, const Q8Search & s, int64_t b0, int64_t b1, uint8_t * q,
                   float * absmax) {
    constexpr int N = 4; // blocks hold >= 32 values
    const char * base = static_cast<const char *>(x);
    for (int64_t b = b0; b < b1; ++b) {
        const char * p = base + b * bs * esize<D>();
        float m;
        block_absmax<D>(p, bs, m);
        absmax[b] = m;
        const __m256 inv = _mm256_set1_ps(m > 0.0f ? 1.0f / m : 0.0f);
        for (int64_t i = 0; i < bs; i += 8 * N) {
            __m256 xn[N];
            __m256i r[N];
            for (int k = 0; k < N; ++k) xn[k] = _mm256_mul_ps(load8<D>(p + (i + 8 * k) * esize<D>()), inv);
            dquantize<N>(xn, r, s);
            for (int k = 0; k < N; ++k)
                _mm_storel_epi64(reinterpret_cast<__m128i *>(q + b * bs + i + 8 * k), pack_u8(r[k]));
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
                   int64_t b1, void * out, qlora_dtype dtype) {
    if (dtype == QLORA_DTYPE_F32) dequant_f32(packed, code16, scales, bs, b0, b1, static_cast<float *>(out));
    else dequant_16(packed, code16, scales, bs, b0, b1, static_cast<uint16_t *>(out), dtype);
}

void dq_scales(const DqSource & src, int64_t b0, int64_t b1, float * scales) {
    const int shift = __builtin_ctz(static_cast<unsigned>(src.nested_blocksize));
    const __m256 offset = _mm256_set1_ps(src.offset);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const int64_t vend = std::min<int64_t>(b1, INT32_MAX - 8); // int32 lanes hold block indices
    int64_t b = b0;
    for (; b + 8 <= vend; b += 8) {
        const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(src.qabsmax + b)));
        const __m256 c = _mm256_i32gather_ps(src.nested_code, q, 4);
        const __m256i nb = _mm256_srli_epi32(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(b)), lane), shift);
        const __m256 na = _mm256_i32gather_ps(src.nested_absmax, nb, 4);
        _mm256_storeu_ps(scales + (b - b0), _mm256_add_ps(_mm256_mul_ps(c, na), offset));
    }
    for (; b < b1; ++b) {
        const float s = src.nested_code[src.qabsmax[b]] * src.nested_absmax[b >> shift];
        scales[b - b0] = s + src.offset;
    }
}

void q8_quantize(const void * x, qlora_dtype dtype, int32_t bs, const Q8Search & search, int64_t b0, int64_t b1,
                 uint8_t * q, float * absmax) {
    switch (dtype) {
        case QLORA_DTYPE_F16: q8_quantize_t<QLORA_DTYPE_F16>(x, bs, search, b0, b1, q, absmax); break;
        case QLORA_DTYPE_BF16: q8_quantize_t<QLORA_DTYPE_BF16>(x, bs, search, b0, b1, q, absmax); break;
        default: q8_quantize_t<QLORA_DTYPE_F32>(x, bs, search, b0, b1, q, absmax); break;
    }
}

void q8_dequantize(const uint8_t * q, const float * absmax, int32_t bs, const float * code256, int64_t b0,
                   int64_t b1, void * out, qlora_dtype dtype) {
    for (int64_t b = b0; b < b1; ++b) {
        const __m256 scale = _mm256_set1_ps(absmax[b]);
        for (int64_t i = b * bs; i < (b + 1) * bs; i += 8) {
            const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(q + i)));
            const __m256 v = _mm256_mul_ps(_mm256_i32gather_ps(code256, idx, 4), scale);
            if (dtype == QLORA_DTYPE_F32)
                _mm256_storeu_ps(static_cast<float *>(out) + i, v);
            else
                _mm_storeu_si128(reinterpret_cast<__m128i *>(static_cast<uint16_t *>(out) + i), to_16(v, dtype));
        }
    }
}

int64_t find_nonfinite(const void * x, qlora_dtype dtype, int64_t i0, int64_t i1) {
    int64_t i = i0;
    if (dtype == QLORA_DTYPE_F32) {
        const float * f = static_cast<const float *>(x);
        const __m256i mask = _mm256_set1_epi32(0x7fffffff), lim = _mm256_set1_epi32(0x7f7fffff);
        for (; i + 8 <= i1; i += 8) {
            const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(f + i)), mask);
            const int bad = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, lim)));
            if (bad) return i + __builtin_ctz(static_cast<unsigned>(bad));
        }
    } else {
        const uint16_t * h = static_cast<const uint16_t *>(x);
        const __m256i mask = _mm256_set1_epi16(0x7fff);
        const __m256i lim = _mm256_set1_epi16(static_cast<short>(dtype == QLORA_DTYPE_BF16 ? 0x7f7f : 0x7bff));
        for (; i + 16 <= i1; i += 16) {
            const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(h + i)), mask);
            const int bad = _mm256_movemask_epi8(_mm256_cmpgt_epi16(a, lim));
            if (bad) return i + __builtin_ctz(static_cast<unsigned>(bad)) / 2;
        }
    }
    return i < i1 ? ref::find_nonfinite(x, dtype, i, i1) : -1;
}

} // namespace qlora::cpu::avx2
