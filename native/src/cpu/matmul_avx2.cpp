// AVX2 fused 4-bit matmul (fp32 tiles with FMA; BF16 x is widened to fp32).
// The driver is matmul_impl.hpp; this file has the decoders, packers and
// micro-kernels.
//
// Decoding 16 elements (8 bytes, one block, fp32 scale s): the bytes widen to 8
// dwords; >> 4 gives the even elements' codes, the byte itself the odd ones
// (vpermps reads the low 3 bits, and bit 3, shifted into the sign, picks the
// upper half of the 16-entry table with blendv). Evens land in one vector and
// odds in the other, hence perm(p) below (period 16).
#define QLORA_MM_NS avx2
#include "cpu/matmul_impl.hpp"
#include "cpu/matmul_cpu.hpp"

#include <immintrin.h>

namespace qlora::cpu {
namespace avx2 {
namespace {

inline int perm32(int p) {
    const int q = p & 15;
    return (p & 16) + (q < 8 ? 2 * q : 2 * (q - 8) + 1);
}

struct Code {
    __m256 lo, hi;
    explicit Code(const float * code) : lo(_mm256_loadu_ps(code)), hi(_mm256_loadu_ps(code + 8)) {}
    __m256 lookup(__m256i idx) const {
        const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
        return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
    }
};

inline void decode16(const uint8_t * packed, int64_t g, const Code & code, float scale, __m256 & H, __m256 & L) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(packed + (g >> 1))));
    const __m256 s = _mm256_set1_ps(scale);
    H = _mm256_mul_ps(code.lookup(_mm256_srli_epi32(v, 4)), s);
    L = _mm256_mul_ps(code.lookup(v), s);
}

// 8x8 transpose of a tile (row stride 8) into dst rows (stride dst_stride).
inline void transpose_store8(const float * tile, float * dst, int64_t dst_stride) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(tile + 8 * i);
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int q = 0; q < 2; ++q) {
        r[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
        r[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xee);
        r[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
        r[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {
        _mm256_store_ps(dst + c * dst_stride, _mm256_permute2f128_ps(r[c], r[4 + c], 0x20));
        _mm256_store_ps(dst + (4 + c) * dst_stride, _mm256_permute2f128_ps(r[c], r[4 + c], 0x31));
    }
}

inline void load16(const void * x, qlora_dtype dtype, int64_t i, __m256 & v0, __m256 & v1) {
    if (dtype == QLORA_DTYPE_F32) {
        const float * p = static_cast<const float *>(x) + i;
        v0 = _mm256_loadu_ps(p);
        v1 = _mm256_loadu_ps(p + 8);
    } else {
        const uint16_t * p = static_cast<const uint16_t *>(x) + i;
        const __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
        const __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p + 8)));
        v0 = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
        v1 = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
    }
}

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// ---------------------------------------------------------------------------
// Matvec (M <= 8), fast mode; x is fp32, permuted like the decoder's output.

constexpr int kPrefetchBytes = 512;

inline void decode16_codes(const uint8_t * p, const Code & code, __m256 & H, __m256 & L) {
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p)));
    H = code.lookup(_mm256_srli_epi32(v, 4));
    L = code.lookup(v);
}

template <int MR, int NR>
void mv_fwd_rows(const MatmulArgs & a, const WView & win, const float * xf, int64_t n) {
    const WView w = win;
    const int64_t K = a.K, nch = K / 32;
    const Code code(w.code);
    const uint8_t * rowp[NR];
    for (int i = 0; i < NR; ++i) rowp[i] = w.packed + (((n + i) * K) >> 1);
    alignas(32) float sc[NR][kSegChunks];
    __m256 accH[MR][NR], accL[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) accH[m][i] = accL[m][i] = _mm256_setzero_ps();
    for (int64_t s0 = 0; s0 < nch; s0 += kSegChunks) {
        const int cn = static_cast<int>(std::min<int64_t>(kSegChunks, nch - s0));
        for (int i = 0; i < NR; ++i) {
            prefetch_scale(w, (n + i) * K + 32 * (s0 + 2 * kSegChunks)); // two segments ahead
            chunk_scales(w, (n + i) * K + 32 * s0, cn, sc[i]);
        }
        const float * xs = xf + 32 * s0;
        for (int c = 0; c < cn; ++c) {
            if ((c & 3) == 0)
                for (int i = 0; i < NR; ++i)
                    _mm_prefetch(reinterpret_cast<const char *>(rowp[i] + 16 * (s0 + c)) + kPrefetchBytes, _MM_HINT_T0);
            for (int h = 0; h < 2; ++h) // two 16-element halves of the chunk
                for (int i = 0; i < NR; ++i) {
                    __m256 H, L;
                    decode16_codes(rowp[i] + 16 * (s0 + c) + 8 * h, code, H, L);
                    const __m256 sv = _mm256_set1_ps(sc[i][c]);
                    H = _mm256_mul_ps(H, sv);
                    L = _mm256_mul_ps(L, sv);
                    for (int m = 0; m < MR; ++m) {
                        const float * x = xs + m * K + 32 * c + 16 * h;
                        accH[m][i] = _mm256_fmadd_ps(H, _mm256_load_ps(x), accH[m][i]);
                        accL[m][i] = _mm256_fmadd_ps(L, _mm256_load_ps(x + 8), accL[m][i]);
                    }
                }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) store_one(a, m, n + i, hsum(_mm256_add_ps(accH[m][i], accL[m][i])));
}

template <int MR>
void mv_fwd_range(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
    constexpr int NR = MR == 1 ? 4 : MR == 2 ? 2 : 1;
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) mv_fwd_rows<MR, NR>(a, w, xf, n);
    for (; n < n1; ++n) mv_fwd_rows<MR, 1>(a, w, xf, n);
}

template <int MR, int NR>
void mv_bwd_rows(const MatmulArgs & a, const WView & win, const float * xf, int64_t n, int64_t k0, int64_t kv,
                 float * acc) {
    const WView w = win;
    const int64_t K = a.K, N = a.N, nch = kv / 32;
    const Code code(w.code);
    const uint8_t * rowp[NR];
    for (int i = 0; i < NR; ++i) rowp[i] = w.packed + (((n + i) * K + k0) >> 1);
    alignas(32) float sc[NR][kSegChunks];
    for (int64_t s0 = 0; s0 < nch; s0 += kSegChunks) {
        const int cn = static_cast<int>(std::min<int64_t>(kSegChunks, nch - s0));
        for (int i = 0; i < NR; ++i) {
            prefetch_scale(w, (n + i) * K + k0 + 32 * (s0 + 2 * kSegChunks)); // two segments ahead
            chunk_scales(w, (n + i) * K + k0 + 32 * s0, cn, sc[i]);
        }
        for (int c = 0; c < cn; ++c) {
            if ((c & 3) == 0)
                for (int i = 0; i < NR; ++i)
                    _mm_prefetch(reinterpret_cast<const char *>(rowp[i] + 16 * (s0 + c)) + kPrefetchBytes, _MM_HINT_T0);
            for (int h = 0; h < 2; ++h) {
                __m256 H[NR], L[NR];
                for (int i = 0; i < NR; ++i) {
                    decode16_codes(rowp[i] + 16 * (s0 + c) + 8 * h, code, H[i], L[i]);
                    const __m256 sv = _mm256_set1_ps(sc[i][c]);
                    H[i] = _mm256_mul_ps(H[i], sv);
                    L[i] = _mm256_mul_ps(L[i], sv);
                }
                for (int m = 0; m < MR; ++m) {
                    float * p = acc + m * kv + 32 * (s0 + c) + 16 * h;
                    __m256 hv = _mm256_load_ps(p), lv = _mm256_load_ps(p + 8);
                    for (int i = 0; i < NR; ++i) {
                        const __m256 xv = _mm256_set1_ps(xf[m * N + n + i]);
                        hv = _mm256_fmadd_ps(H[i], xv, hv);
                        lv = _mm256_fmadd_ps(L[i], xv, lv);
                    }
                    _mm256_store_ps(p, hv);
                    _mm256_store_ps(p + 8, lv);
                }
            }
        }
    }
}

template <int MR>
void mv_bwd_range(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1, float * acc) {
    const int64_t kv = k1 - k0;
    std::memset(acc, 0, sizeof(float) * static_cast<size_t>(MR * kv));
    constexpr int NR = 4;
    int64_t n = 0;
    for (; n + NR <= a.N; n += NR) mv_bwd_rows<MR, NR>(a, w, xf, n, k0, kv, acc);
    for (; n < a.N; ++n) mv_bwd_rows<MR, 1>(a, w, xf, n, k0, kv, acc);
    store_rows(a, acc, kv, 0, MR, k0, static_cast<int>(kv), true, perm32);
}

struct Ops : OpsBase<float> {
    static constexpr bool kFast = true;
    static constexpr int  kLanes = 16, kRows = 6, kKC = 256, kMC = 240, kNC = 256;
    // Rows of x per block: 516 where the L2 per core is >= 2 MiB (M = 512 in
    // one block, W decoded once; Cacc 528 KB): x0.97-1.31 over 240 (ab_matvec,
    // AB_ISA=1 on the Xeon, two runs; the forward gained in every cell).
    static int block_rows() {
        static const int rows = l2_cache_bytes() >= (2 << 20) ? 516 : kMC;
        return rows;
    }
    static constexpr bool kFwdPermuted = true; // forward panels in perm order (decode, then 8x8 transposes)
    static int perm(int p) { return perm32(p); }

    // Bp[r][l] = W[n0 + l, k0 + perm(r)] (l < nv, else 0); kc % 32 == 0.
    static void pack_w_fwd_fast(const WView & w, int64_t n0, int nv, int64_t k0, int kc, float * Bp) {
        const Code code(w.code);
        alignas(32) float tile[2][8 * 8];
        for (int g = 0; g < 2; ++g) {
            if (8 * g >= nv) {
                for (int r = 0; r < kc; ++r) _mm256_store_ps(Bp + r * 16 + 8 * g, _mm256_setzero_ps());
                continue;
            }
            for (int c = 0; c < kc; c += 16) {
                for (int i = 0; i < 8; ++i) {
                    __m256 H = _mm256_setzero_ps(), L = _mm256_setzero_ps();
                    if (8 * g + i < nv) {
                        const int64_t gi = (n0 + 8 * g + i) * w.K + k0 + c;
                        decode16(w.packed, gi, code, w.scale(gi >> w.log2b), H, L);
                    }
                    _mm256_store_ps(tile[0] + 8 * i, H);
                    _mm256_store_ps(tile[1] + 8 * i, L);
                }
                transpose_store8(tile[0], Bp + c * 16 + 8 * g, 16);
                transpose_store8(tile[1], Bp + (c + 8) * 16 + 8 * g, 16);
            }
        }
    }

    // Bp[r][p] = W[n0 + r, k0 + perm(p)], r < nr.
    static void pack_w_bwd_fast(const WView & w, int64_t n0, int nr, int64_t k0, float * Bp) {
        const Code code(w.code);
        for (int r = 0; r < nr; ++r) {
            const int64_t g = (n0 + r) * w.K + k0;
            __m256 H, L;
            decode16(w.packed, g, code, w.scale(g >> w.log2b), H, L);
            _mm256_store_ps(Bp + 16 * r, H);
            _mm256_store_ps(Bp + 16 * r + 8, L);
        }
    }

    // x in panels of kRows rows, as in the AVX-512 fp32 kernel: the panel of
    // rows [mp, mp + 6) starts at Sp + mp * sps and holds element (r, j) =
    // x[m0 + mp + j, r0 + col(r)] at 6 r + j (rows past mc: 0), col = perm
    // where permuted (forward, fast mode), else natural. The micro-kernel then
    // reads one stream instead of 6 rows (with a prefetch 1 KB ahead): x1.02-1.19
    // over reading x's rows (ab_matvec, AB_ISA=1 on the Xeon, M = 512, 2 threads;
    // backward 11008 x 4096 x0.96-0.98). A scalar interleave: x is packed once
    // per call, so its cost is ~1 % of a GEMM.
    static constexpr bool kXPanels = true;
    static void pack_x_panels(const MatmulArgs & a, bool permuted, int64_t m0, int mc, int64_t r0, int kc, float * Sp,
                              int sps) {
        alignas(32) float row[kKC];
        for (int mp = 0; mp < mc; mp += kRows) {
            float * tile = Sp + static_cast<int64_t>(mp) * sps;
            for (int j = 0; j < kRows; ++j) {
                if (mp + j >= mc) {
                    for (int r = 0; r < kc; ++r) tile[kRows * r + j] = 0.0f;
                    continue;
                }
                const int64_t x0 = (m0 + mp + j) * a.ldx + r0;
                if (permuted) { // fast mode: kc % 32 == 0
                    for (int c = 0; c < kc; c += 16) {
                        __m256 v0, v1;
                        load16(a.x, a.x_dtype, x0 + c, v0, v1);
                        const __m256 e = _mm256_shuffle_ps(v0, v1, 0x88), o = _mm256_shuffle_ps(v0, v1, 0xdd);
                        _mm256_store_ps(row + c, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8)));
                        _mm256_store_ps(row + c + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8)));
                    }
                } else {
                    for (int r = 0; r < kc; ++r) row[r] = load_act(a.x, a.x_dtype, x0 + r);
                }
                for (int r = 0; r < kc; ++r) tile[kRows * r + j] = row[r];
            }
        }
    }

    template <int R>
    static void kernel(const float * Bp, const float * Sp, int64_t, int steps, float * C, int64_t ldc, bool first) {
        __m256 c0[R], c1[R];
        if (first) {
            for (int j = 0; j < R; ++j) c0[j] = c1[j] = _mm256_setzero_ps();
        } else {
            for (int j = 0; j < R; ++j) {
                c0[j] = _mm256_load_ps(C + j * ldc);
                c1[j] = _mm256_load_ps(C + j * ldc + 8);
            }
        }
        for (int r = 0; r < steps; ++r) {
            _mm_prefetch(reinterpret_cast<const char *>(Sp + kRows * r) + 1024, _MM_HINT_T0);
            const __m256 b0 = _mm256_load_ps(Bp + 16 * r), b1 = _mm256_load_ps(Bp + 16 * r + 8);
#pragma GCC unroll 6
            for (int j = 0; j < R; ++j) {
                const __m256 s = _mm256_broadcast_ss(Sp + kRows * r + j);
                c0[j] = _mm256_fmadd_ps(b0, s, c0[j]);
                c1[j] = _mm256_fmadd_ps(b1, s, c1[j]);
            }
        }
        for (int j = 0; j < R; ++j) {
            _mm256_store_ps(C + j * ldc, c0[j]);
            _mm256_store_ps(C + j * ldc + 8, c1[j]);
        }
    }

    static void matvec_fwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
        with_matvec_rows(a, [&](auto m) { mv_fwd_range<decltype(m)::value>(a, w, xf, n0, n1); });
    }
    static void matvec_bwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1,
                                float * acc) {
        with_matvec_rows(a, [&](auto m) { mv_bwd_range<decltype(m)::value>(a, w, xf, k0, k1, acc); });
    }
};

} // namespace
} // namespace avx2

void q4_matmul_avx2(qlora_context & ctx, const MatmulArgs & a) { avx2::run<avx2::Ops>(ctx, a); }

} // namespace qlora::cpu
