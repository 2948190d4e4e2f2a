// AVX-512 AdamW kernels: bit-identical to ref::adamw32 / adamw8 / sumsq (same
// IEEE operations in the same order; masked tails).
#include "optim/adamw_kernels.hpp"

#include <algorithm>
#include <cstring>
#include <immintrin.h>

// GCC 12's AVX-512 headers build gathers and narrowing stores on
// _mm512_undefined_*(), which trips -Wmaybe-uninitialized (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace qlora::cpu {

using optim::kBlock;

namespace {

inline __mmask16 tail_mask(int64_t left) {
    return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

// 32-entry table lookup: t[idx & 31] (t[0..15] in a, t[16..31] in b).
inline __m512 lookup32(const float * t, __m512i idx) {
    return _mm512_permutex2var_ps(_mm512_loadu_ps(t), idx, _mm512_loadu_ps(t + 16));
}

// t[idx & 127].
inline __m512 lookup128(const float * t, __m512i idx) {
    const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __m512 lo = _mm512_mask_blend_ps(b5, lookup32(t, idx), lookup32(t + 32, idx));
    const __m512 hi = _mm512_mask_blend_ps(b5, lookup32(t + 64, idx), lookup32(t + 96, idx));
    return _mm512_mask_blend_ps(b6, lo, hi);
}

// t[idx] for idx in [0, 256).
inline __m512 lookup256(const float * t, __m512i idx) {
    const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    return _mm512_mask_blend_ps(b7, lookup128(t, idx), lookup128(t + 128, idx));
}

// quantize_dynamic (bitsandbytes' dQuantize) of 16 values, with register
// permutes instead of gathers (optim::SearchTables has the derivation).
inline __m512i quantize16(const optim::SearchTables & t, __m512 x) {
    const __m512i one = _mm512_set1_epi32(1);
    const __m512 top = _mm512_load_ps(t.level); // levels 0..3: 15 values
    __m512i j = _mm512_setzero_si512();
    for (int L = 0; L < 4; ++L) {
        const __m512 val = _mm512_permutexvar_ps(_mm512_add_epi32(j, _mm512_set1_epi32((1 << L) - 1)), top);
        const __mmask16 right = _mm512_cmp_ps_mask(x, val, _CMP_GT_OQ);
        j = _mm512_mask_add_epi32(_mm512_add_epi32(j, j), right, _mm512_add_epi32(j, j), one);
    }
    {   // level 4: 16 values
        const __m512 val = _mm512_permutexvar_ps(j, _mm512_loadu_ps(t.level + 15));
        const __mmask16 right = _mm512_cmp_ps_mask(x, val, _CMP_GT_OQ);
        j = _mm512_mask_add_epi32(_mm512_add_epi32(j, j), right, _mm512_add_epi32(j, j), one);
    }
    {   // level 5: 32 values
        const __m512 val = lookup32(t.level + 31, j);
        const __mmask16 right = _mm512_cmp_ps_mask(x, val, _CMP_GT_OQ);
        j = _mm512_mask_add_epi32(_mm512_add_epi32(j, j), right, _mm512_add_epi32(j, j), one);
    }
    {   // level 6: 64 values
        const __mmask16 b5 = _mm512_test_epi32_mask(j, _mm512_set1_epi32(32));
        const __m512 val = _mm512_mask_blend_ps(b5, lookup32(t.level + 63, j), lookup32(t.level + 95, j));
        const __mmask16 right = _mm512_cmp_ps_mask(x, val, _CMP_GT_OQ);
        j = _mm512_mask_add_epi32(_mm512_add_epi32(j, j), right, _mm512_add_epi32(j, j), one);
    }
    const __mmask16 up = _mm512_cmp_ps_mask(x, lookup128(t.up, j), _CMP_GT_OQ);
    const __mmask16 down = _mm512_cmp_ps_mask(x, lookup128(t.down, j), _CMP_LT_OQ);
    __m512i q = _mm512_add_epi32(j, j);
    q = _mm512_mask_add_epi32(q, up, q, one);
    return _mm512_mask_sub_epi32(q, down, q, one);
}

} // namespace

void adamw32_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    const __m512 b1 = _mm512_set1_ps(c.beta1), b2 = _mm512_set1_ps(c.beta2);
    const __m512 omb1 = _mm512_set1_ps(c.omb1), omb2 = _mm512_set1_ps(c.omb2);
    const __m512 ss = _mm512_set1_ps(c.step_size), epsc2 = _mm512_set1_ps(c.eps_c2);
    const __m512 decay = _mm512_set1_ps(c.decay), gs = _mm512_set1_ps(c.gscale);
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        float * m = reinterpret_cast<float *>(state + b * optim::kBlockBytesF32);
        float * v = m + kBlock;
        const int64_t cnt = std::min(kBlock, n - e0);
        for (int64_t j = 0; j < cnt; j += 16) {
            const __mmask16 k = tail_mask(cnt - j);
            const __m512 gj = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + e0 + j), gs);
            const __m512 mj = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, m + j), b1), _mm512_mul_ps(omb1, gj));
            const __m512 vj = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, v + j), b2),
                                            _mm512_mul_ps(omb2, _mm512_mul_ps(gj, gj)));
            const __m512 upd = _mm512_mul_ps(ss, _mm512_div_ps(mj, _mm512_add_ps(_mm512_sqrt_ps(vj), epsc2)));
            __m512 pj = _mm512_add_ps(_mm512_maskz_loadu_ps(k, p + e0 + j), upd);
            if (c.apply_decay) pj = _mm512_mul_ps(pj, decay);
            _mm512_mask_storeu_ps(m + j, k, mj);
            _mm512_mask_storeu_ps(v + j, k, vj);
            _mm512_mask_storeu_ps(p + e0 + j, k, pj);
        }
    }
}

void adamw8_avx512(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    const float * code1 = optim::signed_state_map();
    const float * code2 = optim::unsigned_dynamic_map();
    const optim::SearchTables & t1 = optim::search_tables(0);
    const optim::SearchTables & t2 = optim::search_tables(1);
    const __m512 b1 = _mm512_set1_ps(c.beta1), b2 = _mm512_set1_ps(c.beta2);
    const __m512 omb1 = _mm512_set1_ps(c.omb1), omb2 = _mm512_set1_ps(c.omb2);
    const __m512 ss = _mm512_set1_ps(c.step_size), epsc2 = _mm512_set1_ps(c.eps_c2);
    const __m512 decay = _mm512_set1_ps(c.decay), gs = _mm512_set1_ps(c.gscale);
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    alignas(64) float s1[kBlock], s2[kBlock];
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        uint8_t * qm = state + b * optim::kBlockBytes8;
        uint8_t * qv = qm + kBlock;
        float absmax[2];
        std::memcpy(absmax, qm + 2 * kBlock, sizeof(absmax));
        const __m512 a1 = _mm512_set1_ps(absmax[0]), a2 = _mm512_set1_ps(absmax[1]);
        const int64_t cnt = std::min(kBlock, n - e0);
        __m512 max1 = _mm512_setzero_ps(), max2 = _mm512_setzero_ps();
        for (int64_t j = 0; j < cnt; j += 16) {
            const __mmask16 k = tail_mask(cnt - j);
            const __m512i i1 = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, qm + j));
            const __m512i i2 = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, qv + j));
            const __m512 gj = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, g + e0 + j), gs);
            __m512 vj = _mm512_mul_ps(lookup256(code2, i2), a2);
            vj = _mm512_add_ps(_mm512_mul_ps(vj, b2), _mm512_mul_ps(omb2, _mm512_mul_ps(gj, gj)));
            __m512 mj = _mm512_mul_ps(lookup256(code1, i1), a1);
            mj = _mm512_add_ps(_mm512_mul_ps(mj, b1), _mm512_mul_ps(omb1, gj));
            max1 = _mm512_mask_max_ps(max1, k, max1, _mm512_and_ps(mj, abs_mask));
            max2 = _mm512_mask_max_ps(max2, k, max2, _mm512_and_ps(vj, abs_mask));
            const __m512 upd = _mm512_mul_ps(ss, _mm512_div_ps(mj, _mm512_add_ps(_mm512_sqrt_ps(vj), epsc2)));
            __m512 pj = _mm512_add_ps(_mm512_maskz_loadu_ps(k, p + e0 + j), upd);
            if (c.apply_decay) pj = _mm512_mul_ps(pj, decay);
            _mm512_mask_storeu_ps(p + e0 + j, k, pj);
            _mm512_store_ps(s1 + j, mj);
            _mm512_store_ps(s2 + j, vj);
        }
        const float m1 = _mm512_reduce_max_ps(max1), m2 = _mm512_reduce_max_ps(max2);
        const __m512 r1 = _mm512_set1_ps(m1 > 0.0f ? 1.0f / m1 : 0.0f);
        const __m512 r2 = _mm512_set1_ps(m2 > 0.0f ? 1.0f / m2 : 0.0f);
        const __m512i c127 = _mm512_set1_epi32(127), one = _mm512_set1_epi32(1);
        for (int64_t j = 0; j < cnt; j += 16) {
            const __mmask16 k = tail_mask(cnt - j);
            const __m512 x1 = _mm512_load_ps(s1 + j);
            __m512i c1 = quantize16(t1, _mm512_mul_ps(x1, r1));
            // Sign fix: code1[c] is negative exactly for c < 127 (code1[127] = +0).
            const __mmask16 code_neg = _mm512_cmplt_epi32_mask(c1, c127);
            const __mmask16 s_neg = _mm512_movepi32_mask(_mm512_castps_si512(x1));
            const __mmask16 fix = code_neg ^ s_neg;
            const __mmask16 pos = _mm512_cmp_ps_mask(x1, _mm512_setzero_ps(), _CMP_GT_OQ);
            c1 = _mm512_mask_add_epi32(c1, fix & pos, c1, one);
            c1 = _mm512_mask_sub_epi32(c1, fix & static_cast<__mmask16>(~pos), c1, one);
            const __m512i c2 = quantize16(t2, _mm512_mul_ps(_mm512_load_ps(s2 + j), r2));
            _mm_mask_storeu_epi8(qm + j, k, _mm512_cvtepi32_epi8(c1));
            _mm_mask_storeu_epi8(qv + j, k, _mm512_cvtepi32_epi8(c2));
        }
        absmax[0] = m1;
        absmax[1] = m2;
        std::memcpy(qm + 2 * kBlock, absmax, sizeof(absmax));
    }
}

void quantize_map_avx512(int map, const float * x, int64_t n, uint8_t * q) {
    const optim::SearchTables & t = optim::search_tables(map);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        _mm_mask_storeu_epi8(q + i, k, _mm512_cvtepi32_epi8(quantize16(t, _mm512_maskz_loadu_ps(k, x + i))));
    }
}

double sumsq_avx512(const float * g, int64_t n) {
    // Lanes 0-7 in acc0, 8-15 in acc1: element i goes to lane i % 16.
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        const __m512 x = _mm512_maskz_loadu_ps(tail_mask(n - i), g + i);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        acc0 = _mm512_add_pd(acc0, _mm512_mul_pd(lo, lo));
        acc1 = _mm512_add_pd(acc1, _mm512_mul_pd(hi, hi));
    }
    // Tree: w = 8, 4, 2, 1 (lane k += lane k + w).
    const __m512d s8 = _mm512_add_pd(acc0, acc1);
    const __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(s8), _mm512_extractf64x4_pd(s8, 1));
    const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
}

} // namespace qlora::cpu
