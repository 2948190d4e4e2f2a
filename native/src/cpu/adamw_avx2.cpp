// AVX2 AdamW kernels: bit-identical to ref::adamw32 / adamw8 / sumsq (same
// IEEE operations in the same order; scalar tails do what ref does).
#include "optim/adamw_kernels.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <immintrin.h>

namespace qlora::cpu {

using optim::kBlock;

namespace {

// quantize_dynamic of 8 values (optim::SearchTables has the derivation):
// levels 0..4 with register permutes, levels 5, 6 and the midpoints with gathers.
inline __m256i quantize8(const optim::SearchTables & t, __m256 x) {
    auto descend = [&](__m256i j, __m256 val) {
        const __m256i right = _mm256_castps_si256(_mm256_cmp_ps(x, val, _CMP_GT_OQ));
        return _mm256_sub_epi32(_mm256_add_epi32(j, j), right); // right is 0 or -1
    };
    const __m256 top = _mm256_load_ps(t.level); // levels 0..2: 7 values
    __m256i j = _mm256_setzero_si256();
    for (int L = 0; L < 3; ++L)
        j = descend(j, _mm256_permutevar8x32_ps(top, _mm256_add_epi32(j, _mm256_set1_epi32((1 << L) - 1))));
    j = descend(j, _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.level + 7), j));
    {
        const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.level + 15), j);
        const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t.level + 23), j);
        const __m256 b3 = _mm256_castsi256_ps(_mm256_slli_epi32(j, 28)); // bit 3 -> sign bit
        j = descend(j, _mm256_blendv_ps(lo, hi, b3));
    }
    j = descend(j, _mm256_i32gather_ps(t.level + 31, j, 4));
    j = descend(j, _mm256_i32gather_ps(t.level + 63, j, 4));
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_i32gather_ps(t.up, j, 4), _CMP_GT_OQ));
    const __m256i down = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_i32gather_ps(t.down, j, 4), _CMP_LT_OQ));
    // 2j + [x > up] - [x < down]  (masks are -1 when true)
    return _mm256_add_epi32(_mm256_sub_epi32(_mm256_add_epi32(j, j), up), down);
}

inline __m256i load8_u8(const uint8_t * p) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
}

inline void store8_u8(uint8_t * p, __m256i v) {
    // 8 x int32 (each in 0..255) -> 8 bytes.
    const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    const __m128i w = _mm_packus_epi32(lo, hi);  // 8 x u16
    const __m128i b = _mm_packus_epi16(w, w);    // 16 x u8, first 8 valid
    const int64_t out = _mm_cvtsi128_si64(b);
    std::memcpy(p, &out, 8);
}

} // namespace

void adamw32_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    const __m256 b1 = _mm256_set1_ps(c.beta1), b2 = _mm256_set1_ps(c.beta2);
    const __m256 omb1 = _mm256_set1_ps(c.omb1), omb2 = _mm256_set1_ps(c.omb2);
    const __m256 ss = _mm256_set1_ps(c.step_size), epsc2 = _mm256_set1_ps(c.eps_c2);
    const __m256 decay = _mm256_set1_ps(c.decay), gs = _mm256_set1_ps(c.gscale);
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        float * m = reinterpret_cast<float *>(state + b * optim::kBlockBytesF32);
        float * v = m + kBlock;
        const int64_t cnt = std::min(kBlock, n - e0);
        int64_t j = 0;
        for (; j + 8 <= cnt; j += 8) {
            const __m256 gj = _mm256_mul_ps(_mm256_loadu_ps(g + e0 + j), gs);
            const __m256 mj = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(m + j), b1), _mm256_mul_ps(omb1, gj));
            const __m256 vj = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(v + j), b2),
                                            _mm256_mul_ps(omb2, _mm256_mul_ps(gj, gj)));
            const __m256 upd = _mm256_mul_ps(ss, _mm256_div_ps(mj, _mm256_add_ps(_mm256_sqrt_ps(vj), epsc2)));
            __m256 pj = _mm256_add_ps(_mm256_loadu_ps(p + e0 + j), upd);
            if (c.apply_decay) pj = _mm256_mul_ps(pj, decay);
            _mm256_storeu_ps(m + j, mj);
            _mm256_storeu_ps(v + j, vj);
            _mm256_storeu_ps(p + e0 + j, pj);
        }
        for (; j < cnt; ++j) {
            const float gj = g[e0 + j] * c.gscale;
            const float mj = m[j] * c.beta1 + c.omb1 * gj;
            const float vj = v[j] * c.beta2 + c.omb2 * (gj * gj);
            float pj = p[e0 + j] + c.step_size * (mj / (std::sqrt(vj) + c.eps_c2));
            if (c.apply_decay) pj = pj * c.decay;
            m[j] = mj;
            v[j] = vj;
            p[e0 + j] = pj;
        }
    }
}

void adamw8_avx2(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    const float * code1 = optim::signed_state_map();
    const float * code2 = optim::unsigned_dynamic_map();
    const optim::SearchTables & t1 = optim::search_tables(0);
    const optim::SearchTables & t2 = optim::search_tables(1);
    const __m256 b1 = _mm256_set1_ps(c.beta1), b2 = _mm256_set1_ps(c.beta2);
    const __m256 omb1 = _mm256_set1_ps(c.omb1), omb2 = _mm256_set1_ps(c.omb2);
    const __m256 ss = _mm256_set1_ps(c.step_size), epsc2 = _mm256_set1_ps(c.eps_c2);
    const __m256 decay = _mm256_set1_ps(c.decay), gs = _mm256_set1_ps(c.gscale);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    alignas(32) float s1[kBlock], s2[kBlock];
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        uint8_t * qm = state + b * optim::kBlockBytes8;
        uint8_t * qv = qm + kBlock;
        float absmax[2];
        std::memcpy(absmax, qm + 2 * kBlock, sizeof(absmax));
        const __m256 a1 = _mm256_set1_ps(absmax[0]), a2 = _mm256_set1_ps(absmax[1]);
        const int64_t cnt = std::min(kBlock, n - e0);
        __m256 max1v = _mm256_setzero_ps(), max2v = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= cnt; j += 8) {
            const __m256 gj = _mm256_mul_ps(_mm256_loadu_ps(g + e0 + j), gs);
            __m256 vj = _mm256_mul_ps(_mm256_i32gather_ps(code2, load8_u8(qv + j), 4), a2);
            vj = _mm256_add_ps(_mm256_mul_ps(vj, b2), _mm256_mul_ps(omb2, _mm256_mul_ps(gj, gj)));
            __m256 mj = _mm256_mul_ps(_mm256_i32gather_ps(code1, load8_u8(qm + j), 4), a1);
            mj = _mm256_add_ps(_mm256_mul_ps(mj, b1), _mm256_mul_ps(omb1, gj));
            max1v = _mm256_max_ps(max1v, _mm256_and_ps(mj, abs_mask));
            max2v = _mm256_max_ps(max2v, _mm256_and_ps(vj, abs_mask));
            const __m256 upd = _mm256_mul_ps(ss, _mm256_div_ps(mj, _mm256_add_ps(_mm256_sqrt_ps(vj), epsc2)));
            __m256 pj = _mm256_add_ps(_mm256_loadu_ps(p + e0 + j), upd);
            if (c.apply_decay) pj = _mm256_mul_ps(pj, decay);
            _mm256_storeu_ps(p + e0 + j, pj);
            _mm256_store_ps(s1 + j, mj);
            _mm256_store_ps(s2 + j, vj);
        }
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, max1v);
        float max1 = 0.0f, max2 = 0.0f;
        for (float l : lanes) max1 = std::max(max1, l);
        _mm256_store_ps(lanes, max2v);
        for (float l : lanes) max2 = std::max(max2, l);
        for (int64_t t = j; t < cnt; ++t) {
            const float gj = g[e0 + t] * c.gscale;
            float vj = code2[qv[t]] * absmax[1];
            vj = vj * c.beta2 + c.omb2 * (gj * gj);
            float mj = code1[qm[t]] * absmax[0];
            mj = mj * c.beta1 + c.omb1 * gj;
            max1 = std::max(max1, std::fabs(mj));
            max2 = std::max(max2, std::fabs(vj));
            float pj = p[e0 + t] + c.step_size * (mj / (std::sqrt(vj) + c.eps_c2));
            if (c.apply_decay) pj = pj * c.decay;
            p[e0 + t] = pj;
            s1[t] = mj;
            s2[t] = vj;
        }
        const float r1s = max1 > 0.0f ? 1.0f / max1 : 0.0f;
        const float r2s = max2 > 0.0f ? 1.0f / max2 : 0.0f;
        const __m256 r1 = _mm256_set1_ps(r1s), r2 = _mm256_set1_ps(r2s);
        const __m256i c127 = _mm256_set1_epi32(127), one = _mm256_set1_epi32(1);
        j = 0;
        for (; j + 8 <= cnt; j += 8) {
            const __m256 x1 = _mm256_load_ps(s1 + j);
            __m256i c1 = quantize8(t1, _mm256_mul_ps(x1, r1));
            const __m256i code_neg = _mm256_cmpgt_epi32(c127, c1);
            const __m256i s_neg = _mm256_srai_epi32(_mm256_castps_si256(x1), 31);
            const __m256i fix = _mm256_xor_si256(code_neg, s_neg);
            const __m256i pos = _mm256_castps_si256(_mm256_cmp_ps(x1, _mm256_setzero_ps(), _CMP_GT_OQ));
            // fix & pos: +1; fix & !pos: -1.
            const __m256i delta = _mm256_or_si256(_mm256_and_si256(pos, one), _mm256_andnot_si256(pos, _mm256_set1_epi32(-1)));
            c1 = _mm256_add_epi32(c1, _mm256_and_si256(fix, delta));
            const __m256i c2 = quantize8(t2, _mm256_mul_ps(_mm256_load_ps(s2 + j), r2));
            store8_u8(qm + j, c1);
            store8_u8(qv + j, c2);
        }
        for (; j < cnt; ++j) {
            uint8_t c1 = quantize_dynamic(code1, s1[j] * r1s);
            if (std::signbit(code1[c1]) != std::signbit(s1[j])) c1 = static_cast<uint8_t>(s1[j] > 0.0f ? c1 + 1 : c1 - 1);
            qm[j] = c1;
            qv[j] = quantize_dynamic(code2, s2[j] * r2s);
        }
        absmax[0] = max1;
        absmax[1] = max2;
        std::memcpy(qm + 2 * kBlock, absmax, sizeof(absmax));
    }
}

void quantize_map_avx2(int map, const float * x, int64_t n, uint8_t * q) {
    const optim::SearchTables & t = optim::search_tables(map);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store8_u8(q + i, quantize8(t, _mm256_loadu_ps(x + i)));
    const float * code = map == 0 ? optim::signed_state_map() : optim::unsigned_dynamic_map();
    for (; i < n; ++i) q[i] = quantize_dynamic(code, x[i]);
}

double sumsq_avx2(const float * g, int64_t n) {
    // acc[q] holds lanes 4q..4q+3: element i goes to lane i % 16.
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int q = 0; q < 4; ++q) {
            const __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(g + i + 4 * q));
            acc[q] = _mm256_add_pd(acc[q], _mm256_mul_pd(x, x));
        }
    alignas(32) double lane[16];
    for (int q = 0; q < 4; ++q) _mm256_store_pd(lane + 4 * q, acc[q]);
    for (; i < n; ++i) {
        const double x = static_cast<double>(g[i]);
        lane[i % 16] += x * x;
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; ++k) lane[k] += lane[k + w];
    return lane[0];
}

} // namespace qlora::cpu
