// AVX-512 fused 4-bit matmul: fp32 tiles with FMA (F32 x, or BF16 x widened),
// and bf16 tiles with vdpbf16ps (BF16 x on AVX512-BF16 CPUs). The driver is
// matmul_impl.hpp; this file has the decoders, packers and micro-kernels.
//
// Decoding 32 elements of a row (16 bytes, one block, fp32 scale s): the bytes
// widen to 16 dwords; >> 4 gives the even elements' codes, the byte itself the
// odd ones (vpermps reads only the low 4 index bits); vpermps looks both up in
// the 16-entry code table multiplied by s once, which yields exactly the
// dequantized fp32 values code[q] * s. Even elements land in one vector and
// odd ones in the other, hence perm(p) below. Forward GEMM panels (lanes = rows
// of W) decode a transposed view instead: see decode_rows_transposed.
#define QLORA_MM_NS avx512
#include "cpu/matmul_impl.hpp"
#include "cpu/dq_lookup_avx512.hpp"
#include "cpu/matmul_cpu.hpp"

// GCC 12 reports its own _mm512_undefined_* helpers (used inside the
// intrinsics headers) as maybe-uninitialized; nothing here reads them.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cmath>
#include <unistd.h>

namespace qlora::cpu {
namespace avx512 {
namespace {

// Position p of a 32-chunk holds element perm(p): evens, then odds.
inline int perm32(int p) { return p < 16 ? 2 * p : 2 * (p - 16) + 1; }

// In-register 16x16 transpose of 32-bit elements: r[i] lane j -> r[j] lane i.
inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int q = 0; q < 4; ++q) {
        const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
        r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; ++c) {
        t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
        t[4 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xdd);
        t[8 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xdd);
    }
    for (int c = 0; c < 8; ++c) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd);
    }
}

// ---------------------------------------------------------------------------
// Block scales, vectorized. With DQ, 32 at a time: the 8-bit map looked up
// without a gather (NestedCodeLookup), the nested absmax - at most two values
// among 16 consecutive blocks, as the nested block is >= 32 - blended in,
// then mul and add as block_scale does.
//
// Block scales b .. b + n - 1 (1 <= n <= 32) in two vectors: out[0] holds
// b .. b + 15, out[1] b + 16 .. b + 31; lanes from n on are 0.
__attribute__((always_inline)) inline void block_scales32(const WView & w, const NestedCodeLookup & lut, int64_t b, int n, __m512 out[2]) {
    const int n1 = std::max(0, n - 16);
    const __mmask16 m0 = static_cast<__mmask16>((1u << std::min(16, n)) - 1u), m1 = static_cast<__mmask16>((1u << n1) - 1u);
    if (!w.dq) {
        out[0] = _mm512_maskz_loadu_ps(m0, w.absmax + b);
        out[1] = _mm512_maskz_loadu_ps(m1, w.absmax + b + 16);
        return;
    }
    __m512 code[2];
    lut.lookup32(w.qabsmax + b, n, code[0], code[1]);
    out[1] = _mm512_setzero_ps();
    for (int h = 0; h < (n1 > 0 ? 2 : 1); ++h) {
        const int64_t bh = b + 16 * h, last = bh + std::min(16, n - 16 * h) - 1;
        const int64_t nlo = bh >> w.log2nb, nhi = last >> w.log2nb;
        __m512 na = _mm512_set1_ps(w.nested_absmax[nlo]);
        if (nhi != nlo) { // lanes from the first block of the next nested block on
            const int split = static_cast<int>((nhi << w.log2nb) - bh);
            na = _mm512_mask_blend_ps(static_cast<__mmask16>(0xffffu << split), na, _mm512_set1_ps(w.nested_absmax[nhi]));
        }
        out[h] = _mm512_maskz_add_ps(h == 0 ? m0 : m1, _mm512_mul_ps(code[h], na), _mm512_set1_ps(w.offset));
    }
}

// bs[j] = scale of block b0 + j, j < nblk (a multiple of 16 is written; the
// lanes past nblk are 0).
inline void block_scales16(const WView & w, const NestedCodeLookup & lut, int64_t b0, int nblk, float * bs) {
    for (int j = 0; j < nblk; j += 32) {
        __m512 v[2];
        block_scales32(w, lut, b0 + j, std::min(32, nblk - j), v);
        _mm512_storeu_ps(bs + j, v[0]);
        if (j + 16 < nblk) _mm512_storeu_ps(bs + j + 16, v[1]);
    }
}

inline void block_scales16(const WView & w, int64_t b0, int nblk, float * bs) {
    block_scales16(w, NestedCodeLookup(w.nested_words), b0, nblk, bs);
}

// Chunk scales: out[c] = scale of the 32-element chunk at g0 + 32 c,
// c < count <= kSegChunks (g0 % 32 == 0): the block scales (block_scales16)
// spread over the chunks with vpermps.
inline void chunk_scales16(const WView & w, int64_t g0, int count, float * out) {
    const int sh = w.log2b - 5; // chunks per block = 2^sh
    const int64_t c0 = g0 >> 5, b0 = c0 >> sh;
    const int nblk = static_cast<int>(((c0 + count - 1) >> sh) - b0 + 1);
    alignas(64) float bs[kSegChunks + 16];
    const float * src = w.dq ? bs : w.absmax + b0; // block scales from block b0 on
    if (w.dq) block_scales16(w, b0, nblk, bs);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int c = 0; c < count; c += 16) {
        const int64_t cc = c0 + c;
        const int first = static_cast<int>((cc >> sh) - b0); // block of chunk c, relative to b0
        const int phase = static_cast<int>(cc & ((int64_t{1} << sh) - 1));
        const __m512i idx = _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(phase), iota), static_cast<unsigned>(sh));
        const int avail = std::min(16, nblk - first); // block scales readable from src + first
        const __m512 v = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << avail) - 1u), src + first);
        _mm512_store_ps(out + c, _mm512_permutexvar_ps(idx, v));
    }
}

// ---------------------------------------------------------------------------
// Matvec (M <= 8), fast mode. x is fp32 in the mv_elem layout (quads, then
// 32-chunks for a tail). W rows stream once, NR rows at a time.
//
// A quad is 128 elements of a row: 64 bytes loaded as 16 dwords, dword j
// holding elements 8j .. 8j+7. Shifting right by nibble_shift(e) brings
// element 8j+e to the low nibble, which is all vpermps reads, so 8 shifts and
// 8 vpermps decode a quad: vector e holds the codes of elements 8j+e (lanes j),
// matching x at quad positions 16e+j (perm128). Dword j lies in the 32-chunk
// j/4, so the sum over e of code * x is scaled once per quad by a vector of the
// four chunk scales (quad_scales). This needs no widening shuffle (vpmovzxbd)
// and no per-chunk scaled table, which left the 32-chunk decoder
// compute-bound at about 11 GB/s per core with the weights in cache.


// The matvec layout (mv_elem): quads, and 32-chunks in perm32 order.
struct MvLayout {
    static constexpr bool kMvQuads = true;
    static int perm(int p) { return perm32(p); }
};

// Shift that brings element e (0..7) of a dword to the low nibble: the even
// element of each byte is its high nibble.
inline constexpr int nibble_shift(int e) { return 8 * (e / 2) + ((e & 1) ? 0 : 4); }

inline void decode32_codes(const uint8_t * p, __m512 code, __m512 & H, __m512 & L) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    H = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), code);
    L = _mm512_permutexvar_ps(v, code);
}

// Lanes 4c .. 4c+3 = sc4[c] (c < 4): the scales of a quad's dwords.
inline __m512 quad_scales(const float * sc4) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutevar_ps(_mm512_broadcast_f32x4(_mm_loadu_ps(sc4)), idx);
}

inline __m512 quad_codes(__m512i v, int e, __m512 code) {
    return _mm512_permutexvar_ps(_mm512_srli_epi32(v, static_cast<unsigned>(nibble_shift(e))), code);
}

// Scales of the cn chunks from column offset k of NR rows whose first
// element is g0 (row i starts at g0 + i * K); prefetches the scale bytes two
// segments ahead.
template <int NR>
inline void segment_scales(const WView & w, int64_t g0, int64_t K, int64_t k, int cn, float (*sc)[kSegChunks]) {
    for (int i = 0; i < NR; ++i) {
        prefetch_scale(w, g0 + i * K + k + 32 * 2 * kSegChunks);
        chunk_scales16(w, g0 + i * K + k, cn, sc[i]);
    }
}

// The number of W rows streamed together for MR rows of x (registers:
// NR (1 + 2 MR) + MR <= 28 in the forward matvecs).
constexpr int mv_fwd_rows_per_pass(int MR) { return MR <= 2 ? 4 : MR == 3 ? 3 : MR == 4 ? 2 : 1; }

template <int MR, int NR>
void mv_fwd_rows(const MatmulArgs & a, const WView & win, const float * xf, int64_t n) {
    const WView w = win; // a local copy: its fields stay in registers
    const int64_t K = a.K, nch = K / 32;
    const __m512 code = _mm512_loadu_ps(w.code);
    const uint8_t * rowp[NR];
    for (int i = 0; i < NR; ++i) rowp[i] = w.packed + (((n + i) * K) >> 1);
    alignas(64) float sc[NR][kSegChunks];
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) acc[m][i] = _mm512_setzero_ps();
    for (int64_t s0 = 0; s0 < nch; s0 += kSegChunks) { // kSegChunks % 4 == 0: quads never straddle segments
        const int cn = static_cast<int>(std::min<int64_t>(kSegChunks, nch - s0));
        segment_scales<NR>(w, n * K, K, 32 * s0, cn, sc);
        const float * xs = xf + 32 * s0;
        int c = 0;
        for (; c + 4 <= cn; c += 4) {
            // the next group of NR rows, same columns: a group ahead in each row's stream
            for (int i = 0; i < NR; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(rowp[i] + 16 * (s0 + c)) + NR * (K >> 1), _MM_HINT_T0);
            __m512i v[NR];
            for (int i = 0; i < NR; ++i) v[i] = _mm512_loadu_si512(rowp[i] + 16 * (s0 + c));
            __m512 t[MR][NR];
#pragma GCC unroll 8
            for (int e = 0; e < 8; ++e) { // each x vector is loaded once for the NR rows
                __m512 xv[MR];
                for (int m = 0; m < MR; ++m) xv[m] = _mm512_load_ps(xs + m * K + 32 * c + 16 * e);
#pragma GCC unroll 4
                for (int i = 0; i < NR; ++i) {
                    const __m512 wv = quad_codes(v[i], e, code);
                    for (int m = 0; m < MR; ++m) t[m][i] = e == 0 ? _mm512_mul_ps(wv, xv[m]) : _mm512_fmadd_ps(wv, xv[m], t[m][i]);
                }
            }
            for (int i = 0; i < NR; ++i) {
                const __m512 s = quad_scales(sc[i] + c);
                for (int m = 0; m < MR; ++m) acc[m][i] = _mm512_fmadd_ps(t[m][i], s, acc[m][i]);
            }
        }
        for (; c < cn; ++c) { // the row's tail: 32-chunks, table scaled by the chunk's scale
#pragma GCC unroll 4
            for (int i = 0; i < NR; ++i) {
                __m512 H, L;
                decode32_codes(rowp[i] + 16 * (s0 + c), _mm512_mul_ps(code, _mm512_set1_ps(sc[i][c])), H, L);
#pragma GCC unroll 8
                for (int m = 0; m < MR; ++m) {
                    const float * x = xs + m * K + 32 * c;
                    acc[m][i] = _mm512_fmadd_ps(L, _mm512_load_ps(x + 16), _mm512_fmadd_ps(H, _mm512_load_ps(x), acc[m][i]));
                }
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) store_one(a, m, n + i, _mm512_reduce_add_ps(acc[m][i]));
}

template <int MR>
void mv_fwd_range(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
    constexpr int NR = mv_fwd_rows_per_pass(MR);
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) mv_fwd_rows<MR, NR>(a, w, xf, n);
    for (; n < n1; ++n) mv_fwd_rows<MR, 1>(a, w, xf, n);
}

void matvec_fwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
    with_matvec_rows(a, [&](auto m) { mv_fwd_range<decltype(m)::value>(a, w, xf, n0, n1); });
}

// Forward with bf16 x (AVX512-BF16), rows of whole quads (K % 128 == 0). A
// quad's 64 bytes are read as 32 words of 4 nibbles: vpsrlw by 4f and vpermw
// (index = the low 5 bits, on a 16-entry bf16 table written twice) decode 32
// elements at a time, 4w + {1, 0, 3, 2}[f] in word w (mv_elem_bf16), and
// vdpbf16ps multiplies them with x in the same layout. fp32 lane i of the
// product sums words 2i and 2i + 1, elements of the 32-chunk i / 4, so the
// chunk scales apply per lane after the sum, in fp32, as in the fp32 path.
// The code table is rounded to bf16 (relative error <= 2^-9), as in the bf16
// GEMM tiles; half the instructions of the fp32 decoder per weight.
template <int MR, int NR>
void mv_fwd_rows_bf16(const MatmulArgs & a, const WView & win, const uint16_t * xb, int64_t n) {
    const WView w = win;
    const int64_t K = a.K, nch = K / 32;
    const __m512 code = _mm512_loadu_ps(w.code);
    const __m256i half = (__m256i)_mm512_cvtneps_pbh(code);
    const __m512i table = _mm512_inserti64x4(_mm512_castsi256_si512(half), half, 1);
    const uint8_t * rowp[NR];
    for (int i = 0; i < NR; ++i) rowp[i] = w.packed + (((n + i) * K) >> 1);
    alignas(64) float sc[NR][kSegChunks];
    __m512 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) acc[m][i] = _mm512_setzero_ps();
    for (int64_t s0 = 0; s0 < nch; s0 += kSegChunks) {
        const int cn = static_cast<int>(std::min<int64_t>(kSegChunks, nch - s0));
        segment_scales<NR>(w, n * K, K, 32 * s0, cn, sc);
        const uint16_t * xs = xb + 32 * s0;
        for (int c = 0; c < cn; c += 4) {
            // the next group of NR rows, same columns: a group ahead in each row's stream
            for (int i = 0; i < NR; ++i)
                _mm_prefetch(reinterpret_cast<const char *>(rowp[i] + 16 * (s0 + c)) + NR * (K >> 1), _MM_HINT_T0);
            __m512i v[NR];
            for (int i = 0; i < NR; ++i) v[i] = _mm512_loadu_si512(rowp[i] + 16 * (s0 + c));
            __m512 t[MR][NR];
            for (int m = 0; m < MR; ++m)
                for (int i = 0; i < NR; ++i) t[m][i] = _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int f = 0; f < 4; ++f) { // each x vector is loaded once for the NR rows
                __m512bh xv[MR];
                for (int m = 0; m < MR; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(xs + m * K + 32 * c + 32 * f);
#pragma GCC unroll 4
                for (int i = 0; i < NR; ++i) {
                    const __m512bh wv =
                        (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(v[i], static_cast<unsigned>(4 * f)), table);
                    for (int m = 0; m < MR; ++m) t[m][i] = _mm512_dpbf16_ps(t[m][i], wv, xv[m]);
                }
            }
            for (int i = 0; i < NR; ++i) {
                const __m512 s = quad_scales(sc[i] + c);
                for (int m = 0; m < MR; ++m) acc[m][i] = _mm512_fmadd_ps(t[m][i], s, acc[m][i]);
            }
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int i = 0; i < NR; ++i) store_one(a, m, n + i, _mm512_reduce_add_ps(acc[m][i]));
}

template <int MR>
void mv_fwd_range_bf16(const MatmulArgs & a, const WView & w, const uint16_t * xb, int64_t n0, int64_t n1) {
    constexpr int NR = mv_fwd_rows_per_pass(MR);
    int64_t n = n0;
    for (; n + NR <= n1; n += NR) mv_fwd_rows_bf16<MR, NR>(a, w, xb, n);
    for (; n < n1; ++n) mv_fwd_rows_bf16<MR, 1>(a, w, xb, n);
}

void matvec_fwd_bf16(const MatmulArgs & a, const WView & w, const uint16_t * xb, int64_t n0, int64_t n1) {
    with_matvec_rows(a, [&](auto m) { mv_fwd_range_bf16<decltype(m)::value>(a, w, xb, n0, n1); });
}

// Forward with 8-bit activations (qlora_matmul_params.int8_x; AVX512-VNNI),
// rows of whole quads. x is quantized once per call (quantize_x_int8):
//   rec   per x row and quad, 128 bytes: [0, 64) the int8 x of the quad's even
//         elements (byte j: element 2j), [64, 128) of its odd ones (2j + 1);
//   xs    per x row and 32-chunk c: its scale (amax / 127) * (cmax / 127);
//   bias  per x row and chunk: xs[c] * -128 * (sum of the chunk's int8 x);
//   xsl   per x row and quad (used when M > 1): 16 fp32 lanes, lane l = xs of
//         the quad's chunk l / 4.
// xs, bias and bias_blk are padded with zeros to a multiple of 64 chunks.
// A quad's 64 weight bytes give the even elements' codes as (byte >> 4) & 15
// and the odd ones' as byte & 15. vpshufb maps them to the unsigned bytes
// qw + 128 (vpermb, which needs no mask, measured slower on Zen 5), and
// vpdpbusd multiplies them with the signed x bytes, 4 per int32 lane: lane l
// sums elements 8l .. 8l+7 of the quad, all in its chunk l / 4. The lane sums
// are converted to fp32 and multiplied by the chunk scale
// s[c] = (W's block scale of c) * xs[c]. The +128 on every weight adds
// sum_c s[c] * 128 * (sum of chunk c's int8 x) to the row, which is taken off
// once per row: the dot product of W's chunk scales with bias. The chunk
// scales and that dot product are computed ahead of the loop that uses them:
// in registers one unit of 16 quads ahead for M = 1 with blocks of 32-128
// elements (mv_int8_rows_m1), else one row ahead into a per-thread buffer
// (int8_row_prep). Per quad the loop reads the 64 weight bytes, 128 bytes of
// x and the chunk scales.
struct Int8X {
    uint8_t * rec;
    float *   xs;
    float *   bias;
    float *   xsl;
    float *   bias_blk; // blocks of 32 to 128 elements: bias summed per W block of a row
    int64_t   nq, nchp; // quads per row; chunks per row, padded to 64

    static int64_t bytes(int64_t M, int64_t K) {
        const int64_t nq = K / 128, nchp = (K / 32 + 63) & ~int64_t{63};
        return M * (nq * 128 + 3 * nchp * 4 + nq * 64);
    }
    Int8X(uint8_t * base, int64_t M, int64_t K)
        : nq(K / 128), nchp((K / 32 + 63) & ~int64_t{63}) {
        rec = base;
        xs = reinterpret_cast<float *>(base + M * nq * 128);
        bias = xs + M * nchp;
        bias_blk = bias + M * nchp;
        xsl = bias_blk + M * nchp;
    }
};

// x's elements [i, i + 16) as fp32 (bf16 x widened); lanes outside mk are 0
// and not read.
inline __m512 load_x16(const MatmulArgs & a, int64_t i, __mmask16 mk = 0xffff) {
    if (a.x_dtype == QLORA_DTYPE_BF16)
        return _mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t *>(a.x) + i)), 16));
    return _mm512_maskz_loadu_ps(mk, static_cast<const float *>(a.x) + i);
}

// x rows quantized into an Int8X; false if x holds a NaN or Inf. The same
// fp32 operations as the REF backend (amax, 127 / amax, x * that rounded to
// nearest even), 32 elements at a time.
bool quantize_x_int8(const MatmulArgs & a, float cmax, const Int8X & x) {
    const int64_t nch = a.K / 32;
    const int sh = a.w->blocksize == 32 ? 0 : a.w->blocksize == 64 ? 1 : a.w->blocksize == 128 ? 2 : -1;
    const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
    const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
    for (int64_t m = 0; m < a.M; ++m) {
        float * xs = x.xs + m * x.nchp;
        float * bias = x.bias + m * x.nchp;
        uint8_t * rec = x.rec + m * x.nq * 128;
        float * xsl = x.xsl + m * x.nq * 16;
        for (int64_t c = 0; c < nch; ++c) {
            const __m512 lo = load_x16(a, m * a.ldx + 32 * c), hi = load_x16(a, m * a.ldx + 32 * c + 16);
            const __m512 alo = _mm512_abs_ps(lo), ahi = _mm512_abs_ps(hi);
            if ((_mm512_cmp_ps_mask(alo, fmax, _CMP_LE_OQ) & _mm512_cmp_ps_mask(ahi, fmax, _CMP_LE_OQ)) != 0xffff) return false;
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(alo, ahi));
            const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
            const float xd = amax > 0.0f ? (amax / 127.0f) * (cmax / 127.0f) : 0.0f;
            const __m512 vinv = _mm512_set1_ps(inv);
            const __m512i qe = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(lo, even_idx, hi), vinv));
            const __m512i qo = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(lo, odd_idx, hi), vinv));
            // chunk c is bytes 16 (c % 4) .. of its quad's even and odd halves
            uint8_t * r = rec + (c / 4) * 128 + 16 * (c % 4);
            _mm_storeu_si128(reinterpret_cast<__m128i *>(r), _mm512_cvtepi32_epi8(qe));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(r + 64), _mm512_cvtepi32_epi8(qo));
            xs[c] = xd;
            bias[c] = xd * static_cast<float>(-128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qe, qo)));
            if (a.M > 1) _mm_storeu_ps(xsl + 4 * c, _mm_set1_ps(xd)); // per lane, for the rows of M > 1
        }
        for (int64_t c = nch; c < x.nchp; ++c) xs[c] = bias[c] = 0.0f;
        // blocks of 2^sh <= 4 chunks start on a quad in every row
        float * bias_blk = x.bias_blk + m * x.nchp;
        if (sh >= 0)
            for (int64_t b = 0; b < x.nchp; ++b) {
                float sum = 0.0f;
                for (int64_t c = b << sh; c < std::min(x.nchp, (b + 1) << sh); ++c) sum += bias[c];
                bias_blk[b] = sum;
            }
    }
    return true;
}

// Software prefetch of a row's stream, one W row at a time: each quad asks
// for the line 8 KB ahead into L2 and the one 2 KB ahead into L1. Two levels
// against one prefetch 4 KB ahead into L1 (the tuned single distance: 1, 2
// and 8 KB, and 2 to 8 rows at a time sharing each x load, were slower), with
// scripts/ab/ab_matvec.cpp from DRAM, 2 threads: +3-8 % on the LLaMA-7B
// shapes; one prefetch 4 KB ahead into L2 only, or non-temporal, 1-5 %
// slower. The L2 distance was 16 KB until the loop got faster (four FMA
// chains): then 8 KB measured +7 %, and 4, 6, 12 or 32 KB no better.
constexpr int kInt8PrefetchL2 = 8192, kInt8PrefetchL1 = 2048;

// A quad's weight codes as unsigned bytes qw + 128 (table): wh for its even
// elements (high nibbles), wl for its odd ones; prefetches the stream ahead.
__attribute__((always_inline)) inline void int8_quad_codes(const uint8_t * p, __m512i table, __m512i & wh, __m512i & wl) {
    _mm_prefetch(reinterpret_cast<const char *>(p) + kInt8PrefetchL2, _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char *>(p) + kInt8PrefetchL1, _MM_HINT_T0);
    __m512i v = _mm512_loadu_si512(p);
    __asm__("" : "+v"(v)); // one load of the weights, not one per use
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    wh = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
    wl = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low4));
}

// The 16 int32 lane sums of (qw + 128) * qx over a quad, x's record at xr.
__attribute__((always_inline)) inline __m512i int8_quad_dot(__m512i wh, __m512i wl, const uint8_t * xr) {
    const __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wh, _mm512_load_si512(xr));
    return _mm512_dpbusd_epi32(t, wl, _mm512_load_si512(xr + 64));
}

// Per-thread scratch of the int8 matvec's row path (int8_row_prep), in
// floats: a row's block scales (blocks of 256 or more elements with DQ:
// decoded, then spread over chunks), and two (double-buffered) sets of a
// row's chunk scales (nchp) and its bias dot products (16 lanes per x row).
inline int64_t int8_block_floats(const WView & w, int64_t K) {
    return w.dq && w.log2b > 7 ? (((K >> w.log2b) + 2 + 15) & ~int64_t{15}) : 0;
}

// Row n's chunk scales cs[c] = W's block scale of chunk c, times x row 0's
// chunk scale when MR == 1 (the loop then needs no multiply), and
// corr + 16 m = 16 lanes whose sum is the dot product of W's chunk scales
// with x row m's bias. Computed a row ahead of the row's loop: read back right
// after being stored, they would stall it (store-to-load forwarding).
template <int MR>
void int8_row_prep(const WView & w, const NestedCodeLookup & lut, const Int8X & x, int64_t K, int64_t n, float * bs,
                   float * cs, float * corr) {
    const int sh = w.log2b - 5; // chunks per block = 2^sh
    const int64_t nch = K >> 5, c0 = (n * K) >> 5, b0 = c0 >> sh;
    const int nblk = static_cast<int>(((c0 + nch - 1) >> sh) - b0 + 1);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 cacc[MR];
    for (int m = 0; m < MR; ++m) cacc[m] = _mm512_setzero_ps();
    if (MR > 1 && sh <= 2) { // (M = 1 with these blocks takes mv_int8_rows_m1)
        // Blocks of 32 to 128 elements: rows start on a block (K % 128 == 0),
        // so 16 block scales spread over 16 << sh chunks straight from
        // registers, and the bias is taken per block (x.bias_blk).
        __m512i spread[4];
        for (int k = 0; k < 4; ++k)
            spread[k] = _mm512_srli_epi32(_mm512_add_epi32(iota, _mm512_set1_epi32(16 * k)), static_cast<unsigned>(sh));
        for (int j = 0; j < nblk; j += 32) {
            __m512 v[2];
            block_scales32(w, lut, b0 + j, std::min(32, nblk - j), v);
            for (int h = 0; h < 2; ++h) {
                for (int m = 0; m < MR; ++m)
                    cacc[m] = _mm512_fmadd_ps(v[h], _mm512_loadu_ps(x.bias_blk + m * x.nchp + j + 16 * h), cacc[m]);
                for (int k = 0; k < (1 << sh); ++k) {
                    const int64_t c = (static_cast<int64_t>(j + 16 * h) << sh) + 16 * k;
                    if (c >= nch) break;
                    const __m512 ws = _mm512_permutexvar_ps(spread[k], v[h]);
                    _mm512_storeu_ps(cs + c, MR == 1 ? _mm512_mul_ps(ws, _mm512_loadu_ps(x.xs + c)) : ws);
                }
            }
        }
    } else {
        // Larger blocks, which may start before the row: decoded into bs first.
        const float * src = w.absmax + b0; // block scales from block b0 on
        if (w.dq) {
            block_scales16(w, lut, b0, nblk, bs);
            src = bs;
        }
        for (int64_t c = 0; c < nch; c += 16) {
            const int64_t cc = c0 + c;
            const int first = static_cast<int>((cc >> sh) - b0); // block of chunk c, relative to b0
            const int phase = static_cast<int>(cc & ((int64_t{1} << sh) - 1));
            const __m512i idx = _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(phase), iota), static_cast<unsigned>(sh));
            const int avail = std::min(16, nblk - first); // lanes past the row read 0 (bias is 0 there)
            const __m512 ws = _mm512_permutexvar_ps(
                idx, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << avail) - 1u), src + first));
            for (int m = 0; m < MR; ++m) cacc[m] = _mm512_fmadd_ps(ws, _mm512_loadu_ps(x.bias + m * x.nchp + c), cacc[m]);
            _mm512_storeu_ps(cs + c, MR == 1 ? _mm512_mul_ps(ws, _mm512_loadu_ps(x.xs + c)) : ws);
        }
    }
    for (int m = 0; m < MR; ++m) _mm512_store_ps(corr + 16 * m, cacc[m]);
}

// One row of the int8 matvec; cs, corr = its int8_row_prep, table = qw + 128.
template <int MR>
void mv_int8_row(const MatmulArgs & a, const WView & w, const Int8X & x, const float * cs, const float * corr,
                 __m512i table, int64_t n) {
    const int64_t nq = x.nq;
    const __m512i lane_chunk = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const uint8_t * row = w.packed + ((n * a.K) >> 1);
    // Each quad adds one FMA into an accumulator of x row m: with one chain
    // per row the FMA latency (4 cycles) would bound the loop, so small MR
    // spread the quads over NA chains.
    constexpr int NA = MR == 1 ? 4 : MR == 2 ? 2 : 1;
    __m512 acc[NA][MR];
    for (int j = 0; j < NA; ++j)
        for (int m = 0; m < MR; ++m) acc[j][m] = _mm512_setzero_ps();
    auto quad = [&](int64_t q, __m512 * accq) __attribute__((always_inline)) {
        __m512i wh, wl;
        int8_quad_codes(row + 64 * q, table, wh, wl);
        const __m512 s = _mm512_permutexvar_ps(lane_chunk, _mm512_castps128_ps512(_mm_loadu_ps(cs + 4 * q)));
        const uint8_t * r = x.rec + q * 128;
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m, r += nq * 128) {
            const __m512i t = int8_quad_dot(wh, wl, r);
            const __m512 sm = MR == 1 ? s : _mm512_mul_ps(s, _mm512_load_ps(x.xsl + (m * nq + q) * 16));
            accq[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), sm, accq[m]);
        }
    };
    int64_t q = 0;
    for (; q + NA <= nq; q += NA)
#pragma GCC unroll 4
        for (int j = 0; j < NA; ++j) quad(q + j, acc[j]);
    for (; q < nq; ++q) quad(q, acc[0]);
    for (int j = 1; j < NA; ++j)
        for (int m = 0; m < MR; ++m) acc[0][m] = _mm512_add_ps(acc[0][m], acc[j][m]);
    for (int m = 0; m < MR; ++m) store_one(a, m, n, _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], _mm512_load_ps(corr + 16 * m))));
}

// M = 1 with blocks of 32, 64 or 128 elements (2^SH chunks; every row starts
// on a block as K % 128 == 0): the rows [n0, n1) as one sequence of units of
// 16 quads (the last unit of a row may be shorter). A unit's chunk scales (W's
// times x's, 4 vectors) and its share of the bias dot product are computed in
// registers one unit ahead of its quads: no per-row pass over a buffer, which
// cost the 2 KB rows of K = 4096 10 % from DRAM.
// flatten: everything inlined, lookup32 included (a call would spill every
// live vector; forcing it inline everywhere made the exact matvec 5 % slower);
// noinline: its machine code stays apart from its caller's (merged into the
// caller's lambda, with the row claims inlined, it measured 0.8-1.1x from DRAM).
template <int SH>
__attribute__((flatten, noinline)) void mv_int8_rows_m1(const MatmulArgs & a, const WView & w, const NestedCodeLookup & lut, const Int8X & x,
                     __m512i table, int64_t n0, int64_t n1) {
    constexpr int kUnitBlocks = 64 >> SH; // blocks of a full unit
    const int64_t nq = x.nq, upr = (nq + 15) / 16; // units per row
    const int64_t nblk = a.K >> (SH + 5);            // blocks per row
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i lane_chunk = _mm512_srli_epi32(iota, 2);
    // chunks 16k .. 16k + 15 of a unit lie in blocks (16k + lane) >> SH:
    // vector (16k) >> (SH + 4) of the unit's block scales (vpermps reads
    // index bits 0-3)
    __m512i spread[4];
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) spread[k] = _mm512_srli_epi32(_mm512_add_epi32(iota, _mm512_set1_epi32(16 * k)), SH);
    const char * scale_stream = w.dq ? reinterpret_cast<const char *>(w.qabsmax) : reinterpret_cast<const char *>(w.absmax);
    const int64_t scale_bytes = w.dq ? 1 : 4;
    // unit j of row `row`: chunk scales cs[4] (W's times x's), bias share cb
    auto prep = [&](int64_t row, int64_t j, __m512 * cs, __m512 & cb) __attribute__((always_inline)) {
        const int64_t b = nblk * row + kUnitBlocks * j;
        __m512 v[4];
        if (kUnitBlocks * (j + 1) <= nblk) { // a full unit
            block_scales32(w, lut, b, std::min(32, kUnitBlocks), v);
            if (SH == 0) block_scales32(w, lut, b + 32, 32, v + 2);
        } else {
            const int nb = static_cast<int>(nblk - kUnitBlocks * j);
            block_scales32(w, lut, b, std::min(32, nb), v);
            if (SH == 0) {
                v[2] = v[3] = _mm512_setzero_ps();
                if (nb > 32) block_scales32(w, lut, b + 32, nb - 32, v + 2);
            }
        }
        const float * xs = x.xs + 64 * j;
        const float * bias = x.bias_blk + kUnitBlocks * j;
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k)
            cs[k] = _mm512_mul_ps(SH == 0 ? v[k] : _mm512_permutexvar_ps(spread[k], v[(16 * k) >> (SH + 4)]),
                                  _mm512_loadu_ps(xs + 16 * k));
        cb = _mm512_mul_ps(v[0], _mm512_loadu_ps(bias));
#pragma GCC unroll 4
        for (int h = 1; h < (kUnitBlocks + 15) / 16; ++h) cb = _mm512_fmadd_ps(v[h], _mm512_loadu_ps(bias + 16 * h), cb);
    };
    auto quad = [&](const uint8_t * p, const uint8_t * xr, __m512 sc, __m512 accq) __attribute__((always_inline)) {
        __m512i wh, wl;
        int8_quad_codes(p, table, wh, wl);
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(int8_quad_dot(wh, wl, xr)), sc, accq);
    };
    __m512 cs_next[4], cb_next;
    prep(n0, 0, cs_next, cb_next);
    __m512 acc[4], corr = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t row = n0, j = 0; row < n1;) {
        __m512 cs[4];
        const __m512 cb = cb_next;
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) cs[k] = cs_next[k];
        const int64_t nrow = j + 1 < upr ? row : row + 1, nj = j + 1 < upr ? j + 1 : 0; // the next unit
        if (nrow < n1) prep(nrow, nj, cs_next, cb_next);
        { // the scale bytes of the unit 8 units ahead (fp32 without DQ: kUnitBlocks / 16 lines)
            const char * sp = scale_stream + (nblk * row + kUnitBlocks * (j + 8)) * scale_bytes;
            __builtin_prefetch(sp, 0, 3);
            if (!w.dq)
                for (int l = 1; l < kUnitBlocks / 16; ++l) __builtin_prefetch(sp + 64 * l, 0, 3);
        }
        const uint8_t * base = w.packed + ((row * a.K) >> 1) + 1024 * j;
        const uint8_t * xr = x.rec + 2048 * j;
        if (16 * (j + 1) <= nq) {
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i)
                acc[i % 4] = quad(base + 64 * i, xr + 128 * i,
                                  _mm512_permutexvar_ps(_mm512_add_epi32(lane_chunk, _mm512_set1_epi32(4 * (i % 4))), cs[i / 4]),
                                  acc[i % 4]);
        } else { // the row's last unit, short: still unrolled, so acc stays in registers
            const int64_t nqu = nq - 16 * j;
#pragma GCC unroll 16
            for (int i = 0; i < 16; ++i)
                if (i < nqu)
                    acc[i % 4] = quad(base + 64 * i, xr + 128 * i,
                                  _mm512_permutexvar_ps(_mm512_add_epi32(lane_chunk, _mm512_set1_epi32(4 * (i % 4))), cs[i / 4]),
                                  acc[i % 4]);
        }
        corr = _mm512_add_ps(corr, cb);
        if (nj == 0) { // the row's last unit
            const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], _mm512_add_ps(acc[3], corr)));
            store_one(a, 0, row, _mm512_reduce_add_ps(sum));
            for (int i = 0; i < 4; ++i) acc[i] = _mm512_setzero_ps();
            corr = _mm512_setzero_ps();
        }
        row = nrow;
        j = nj;
    }
}

// Backward: acc[m][p] over cols [k0, k1) in the mv_elem layout of kv = k1 - k0
// elements, rows of W streamed NR at a time; every element is one FMA chain in
// row order. A quad's multiplier for row i is x[m][n + i] times its scales.
template <int MR, int NR>
void mv_bwd_rows(const MatmulArgs & a, const WView & win, const float * xf, int64_t n, int64_t k0, int64_t kv,
                 float * acc) {
    const WView w = win;
    const int64_t K = a.K, N = a.N, nch = kv / 32;
    const __m512 code = _mm512_loadu_ps(w.code);
    const uint8_t * rowp[NR];
    for (int i = 0; i < NR; ++i) rowp[i] = w.packed + (((n + i) * K + k0) >> 1);
    alignas(64) float sc[NR][kSegChunks];
    for (int64_t s0 = 0; s0 < nch; s0 += kSegChunks) {
        const int cn = static_cast<int>(std::min<int64_t>(kSegChunks, nch - s0));
        segment_scales<NR>(w, n * K + k0, K, 32 * s0, cn, sc);
        int c = 0;
        for (; c + 4 <= cn; c += 4) {
            __m512i v[NR];
            __m512 mul[MR][NR];
#pragma GCC unroll 4
            for (int i = 0; i < NR; ++i) {
                // the same columns of the next group of NR rows
                _mm_prefetch(reinterpret_cast<const char *>(rowp[i] + 16 * (s0 + c)) + NR * (K >> 1), _MM_HINT_T0);
                v[i] = _mm512_loadu_si512(rowp[i] + 16 * (s0 + c));
                const __m512 s = quad_scales(sc[i] + c);
                for (int m = 0; m < MR; ++m) mul[m][i] = _mm512_mul_ps(s, _mm512_set1_ps(xf[m * N + n + i]));
            }
#pragma GCC unroll 8
            for (int e = 0; e < 8; ++e) {
                __m512 h[MR];
                for (int m = 0; m < MR; ++m) h[m] = _mm512_load_ps(acc + m * kv + 32 * (s0 + c) + 16 * e);
#pragma GCC unroll 4
                for (int i = 0; i < NR; ++i) {
                    const __m512 wv = quad_codes(v[i], e, code);
                    for (int m = 0; m < MR; ++m) h[m] = _mm512_fmadd_ps(wv, mul[m][i], h[m]);
                }
                for (int m = 0; m < MR; ++m) _mm512_store_ps(acc + m * kv + 32 * (s0 + c) + 16 * e, h[m]);
            }
        }
        for (; c < cn; ++c) { // the range's tail: 32-chunks, rounded like the quads (code * (s * x))
            __m512 H[NR], L[NR];
#pragma GCC unroll 4
            for (int i = 0; i < NR; ++i) decode32_codes(rowp[i] + 16 * (s0 + c), code, H[i], L[i]);
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m) {
                float * p = acc + m * kv + 32 * (s0 + c);
                __m512 h = _mm512_load_ps(p), l = _mm512_load_ps(p + 16);
                for (int i = 0; i < NR; ++i) {
                    const __m512 xv = _mm512_mul_ps(_mm512_set1_ps(sc[i][c]), _mm512_set1_ps(xf[m * N + n + i]));
                    h = _mm512_fmadd_ps(H[i], xv, h);
                    l = _mm512_fmadd_ps(L[i], xv, l);
                }
                _mm512_store_ps(p, h);
                _mm512_store_ps(p + 16, l);
            }
        }
    }
}

template <int MR>
void mv_bwd_range(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1, float * acc) {
    const int64_t kv = k1 - k0;
    std::memset(acc, 0, sizeof(float) * static_cast<size_t>(MR * kv));
    constexpr int NR = MR <= 2 ? 4 : MR <= 4 ? 2 : 1;
    int64_t n = 0;
    for (; n + NR <= a.N; n += NR) mv_bwd_rows<MR, NR>(a, w, xf, n, k0, kv, acc);
    for (; n < a.N; ++n) mv_bwd_rows<MR, 1>(a, w, xf, n, k0, kv, acc);
    store_cols(a, acc, kv, 0, MR, k0, kv, [kv](int64_t p) { return mv_elem<MvLayout>(p, kv); });
}

void matvec_bwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1, float * acc) {
    with_matvec_rows(a, [&](auto m) { mv_bwd_range<decltype(m)::value>(a, w, xf, k0, k1, acc); });
}

// ---------------------------------------------------------------------------
// Forward panels, W^T: lanes are 16 rows of W, so the decoder works on a
// transposed view. 64 bytes (128 elements) of each of the 16 rows are loaded
// and transposed as 16x16 dwords; dword j of a row then holds its elements
// 8j .. 8j+7, and one shift + vpermps + multiply by the rows' scales yields
// element 8j+e of all 16 rows, in natural k order.

// Calls emit(k, values) for k in [0, kc), values = W[n0 + i, k0 + k] for the
// 16 rows i (rows >= `rows` give 0); kc % 32 == 0. Prefetches the same columns
// of the 16 rows from n0 + 32 on (the next panel), a line per row per block,
// so that the prefetches trickle out instead of flooding the miss buffers.
template <class Emit>
inline void decode_rows_transposed(const WView & w, int64_t n0, int rows, int64_t k0, int kc, __m512 code,
                                   Emit emit) {
    const int64_t pf_rows = std::max<int64_t>(0, std::min<int64_t>(16, w.N - (n0 + 32)));
    const uint8_t * pf = w.packed + (((n0 + 32) * w.K + k0) >> 1);
    const int64_t row_bytes = w.K / 2;
    constexpr int kMaxChunks = 512 / 32;
    alignas(64) float sct[kMaxChunks][16]; // [chunk][row] scales
    alignas(64) float tmp[kMaxChunks + 16];
    const int nch = kc / 32;
    const uint8_t * rowp[16];
    for (int i = 0; i < 16; ++i) {
        if (i < rows) {
            const int64_t g0 = (n0 + i) * w.K + k0;
            rowp[i] = w.packed + (g0 >> 1);
            chunk_scales16(w, g0, nch, tmp);
            for (int c = 0; c < nch; ++c) sct[c][i] = tmp[c];
        } else {
            rowp[i] = rowp[0]; // any readable bytes; scale 0 makes the values 0
            for (int c = 0; c < nch; ++c) sct[c][i] = 0.0f;
        }
    }
    for (int b = 0; b < kc; b += 128) {
        for (int64_t i = 0; i < pf_rows; ++i) _mm_prefetch(reinterpret_cast<const char *>(pf + i * row_bytes + b / 2), _MM_HINT_T0);
        const int nd = std::min(16, (kc - b) / 8); // dwords of each row in this block
        const __mmask16 mk = static_cast<__mmask16>((1u << nd) - 1u);
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(mk, rowp[i] + b / 2));
        transpose16(r);
        for (int j = 0; j < nd; ++j) {
            const __m512i v = _mm512_castps_si512(r[j]);
            const __m512 sv = _mm512_load_ps(sct[(b + 8 * j) / 32]);
#pragma GCC unroll 8
            for (int e = 0; e < 8; ++e)
                emit(b + 8 * j + e, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, nibble_shift(e)), code), sv));
        }
    }
}

// ---------------------------------------------------------------------------
// Backward panels: rows of W are the reduction, so each row chunk has its own
// block. Their scales are decoded first, in a loop of their own (so that the
// scalar lookups overlap instead of stalling the vector decode; gathers of 16
// rows' scales measured slower on Zen 5).

// out[i] = scale of row n0 + i at column k0, i < nr.
inline void bwd_row_scales(const WView & w, int64_t n0, int nr, int64_t k0, float * out) {
    for (int i = 0; i < nr; ++i) out[i] = w.scale(((n0 + i) * w.K + k0) >> w.log2b);
}

// ---------------------------------------------------------------------------
// The micro-kernels' R rows of Sp, addressed as base + {0, 1, 2} x stride from
// one base per 3 rows: 4 bases and a stride for 12 rows. One pointer per row
// (12 of them, with Bp, the index and the frame pointer) did not fit in the
// 16 general registers: GCC reloaded a row pointer from the stack in every
// reduction step, and the FMA that waited on it was the kernel's hottest
// instruction on a Xeon.
template <int R>
struct SpRows {
    const char * base[(R + 2) / 3];
    int64_t      stride; // bytes

    SpRows(const void * sp, int64_t stride_bytes) : stride(stride_bytes) {
        for (int q = 0; q < (R + 2) / 3; ++q) base[q] = static_cast<const char *>(sp) + 3 * q * stride_bytes;
    }
    // Element r (of type T) of row j.
    template <class T>
    T at(int j, int r) const {
        return *reinterpret_cast<const T *>(base[j / 3] + (j % 3) * stride + int64_t{r} * int64_t{sizeof(T)});
    }
};

// ---------------------------------------------------------------------------
// fp32 tiles: Bp [KC][32] floats, Sp panels [rows / 12][KC][12] floats, C tile 12 x 32.

struct OpsF32 : OpsBase<float> {
    static constexpr bool kFast = true;
    static constexpr bool kNestedWords = true; // block_scales16
    static constexpr int  kLanes = 32, kRows = 12, kKC = 256, kMC = 288, kNC = 512;

    // Rows of x per block: 528 where the L2 holds a block's Sp and Cacc (1.6 MB
    // at M = 512, so that M = 512 decodes W once: x1.00-1.04 over 288 with
    // ab_matvec on a Xeon with 2 MiB of L2 per core, 2 threads), else kMC
    // (Zen 4 / 5: 1 MiB).
    static int block_rows() {
        static const int rows = l2_cache_bytes() >= (2 << 20) ? 528 : kMC;
        return rows;
    }
    static constexpr bool kFwdPermuted = false; // forward panels are in natural k order
    static int perm(int p) { return perm32(p); }
    static constexpr bool kMvQuads = MvLayout::kMvQuads;

    // Bp[r][l] = W[n0 + l, k0 + r] (l < nv, else 0), natural order; kc % 32 == 0.
    static void pack_w_fwd_fast(const WView & win, int64_t n0, int nv, int64_t k0, int kc, float * Bp) {
        const WView w = win;
        const __m512 code = _mm512_loadu_ps(w.code);
        for (int g = 0; g < 2; ++g) {
            const int rows = std::min(16, nv - 16 * g);
            float * out = Bp + 16 * g;
            if (rows <= 0) {
                for (int r = 0; r < kc; ++r) _mm512_store_ps(out + r * 32, _mm512_setzero_ps());
                continue;
            }
            decode_rows_transposed(w, n0 + 16 * g, rows, k0, kc, code,
                                   [out](int k, __m512 v) { _mm512_store_ps(out + k * 32, v); });
        }
    }

    // Bp[r][p] = W[n0 + r, k0 + perm(p)], r < nr.
    static void pack_w_bwd_fast(const WView & win, int64_t n0, int nr, int64_t k0, float * Bp) {
        const WView w = win;
        const __m512 code = _mm512_loadu_ps(w.code);
        alignas(64) float sc[kKC];
        bwd_row_scales(w, n0, nr, k0, sc);
        const uint8_t * p = w.packed + ((n0 * w.K + k0) >> 1);
        const int64_t row_bytes = w.K / 2;
        for (int r = 0; r < nr; ++r, p += row_bytes) {
            _mm_prefetch(reinterpret_cast<const char *>(p) + 64, _MM_HINT_T0); // the next panels' line
            __m512 H, L;
            decode32_codes(p, _mm512_mul_ps(code, _mm512_set1_ps(sc[r])), H, L);
            _mm512_store_ps(Bp + 32 * r, H);
            _mm512_store_ps(Bp + 32 * r + 16, L);
        }
    }

    // x in panels of kRows rows: the panel of rows [mp, mp + 12) starts at
    // Sp + mp * sps and holds element (r, j) = x[m0 + mp + j, r0 + r] at
    // 12 r + j, so the micro-kernel reads one sequential stream.
    static constexpr bool kXPanels = true;
    static void pack_x_panels(const MatmulArgs & a, bool /*permuted: never, natural k order*/, int64_t m0, int mc,
                              int64_t r0, int kc, float * Sp, int sps) {
        for (int mp = 0; mp < mc; mp += kRows) {
            const int R = std::min(kRows, mc - mp);
            float * tile = Sp + static_cast<int64_t>(mp) * sps;
            for (int k = 0; k < kc; k += 16) {
                const int kv = std::min(16, kc - k);
                const __mmask16 mk = static_cast<__mmask16>((1u << kv) - 1u);
                __m512 v[16];
                for (int i = 0; i < 16; ++i)
                    v[i] = i < R ? load_x16(a, (m0 + mp + i) * a.ldx + r0 + k, mk) : _mm512_setzero_ps();
                transpose16(v); // v[i]: column k + i of the 16 rows
                for (int i = 0; i < kv; ++i) _mm512_mask_storeu_ps(tile + (k + i) * kRows, 0x0fff, v[i]);
            }
        }
    }

    template <int R>
    static void kernel(const float * Bp, const float * Sp, int64_t, int steps, float * C, int64_t ldc, bool first) {
        __m512 c0[R], c1[R];
        if (first) {
            for (int j = 0; j < R; ++j) c0[j] = c1[j] = _mm512_setzero_ps();
        } else {
            for (int j = 0; j < R; ++j) {
                c0[j] = _mm512_load_ps(C + j * ldc);
                c1[j] = _mm512_load_ps(C + j * ldc + 16);
            }
        }
        for (int r = 0; r < steps; ++r) {
            // The panel's stream 1 KB ahead into L1 (it comes from L2, or L3 for
            // x packed once): x1.04-1.09 at M = 512; 512 to 4096 B ahead alike.
            _mm_prefetch(reinterpret_cast<const char *>(Sp + kRows * r) + 1024, _MM_HINT_T0);
            const __m512 b0 = _mm512_load_ps(Bp + 32 * r), b1 = _mm512_load_ps(Bp + 32 * r + 16);
#pragma GCC unroll 12
            for (int j = 0; j < R; ++j) {
                const __m512 s = _mm512_set1_ps(Sp[kRows * r + j]);
                c0[j] = _mm512_fmadd_ps(b0, s, c0[j]);
                c1[j] = _mm512_fmadd_ps(b1, s, c1[j]);
            }
        }
        for (int j = 0; j < R; ++j) {
            _mm512_store_ps(C + j * ldc, c0[j]);
            _mm512_store_ps(C + j * ldc + 16, c1[j]);
        }
    }

    static void matvec_fwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
        avx512::matvec_fwd_fast(a, w, xf, n0, n1);
    }
    static void matvec_bwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1,
                                float * acc) {
        avx512::matvec_bwd_fast(a, w, xf, k0, k1, acc);
    }
};

// ---------------------------------------------------------------------------
// bf16 tiles (BF16 x): Bp [KC/2][32] dwords, each a bf16 pair along the
// reduction; Sp [rows][KC/2] dwords; C tile 12 x 32 fp32; vdpbf16ps.

inline __m512i bf16_pairs(__m512 hi_half, __m512 lo_half) { // words [lo_half | hi_half]
    return (__m512i)_mm512_cvtne2ps_pbh(hi_half, lo_half);
}

// vpermw index: words [a0..a15 | b0..b15] -> dwords (a_i, b_i).
inline __m512i interleave_words() {
    return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                            19, 3, 18, 2, 17, 1, 16, 0);
}

struct OpsBF16 : OpsBase<uint32_t> {
    static constexpr bool kFast = true;
    static constexpr bool kNestedWords = true; // block_scales16
    static constexpr int  kLanes = 32, kRows = 12, kKC = 512, kMC = 288, kNC = 256;

    // Sp rows = x's bf16 rows as they are (pairs along the reduction; an odd
    // kc padded with 0), copied 64 bytes at a time. The copy reads x from L3:
    // GCC's inlined rep movsq took 5 % of an AMX GEMM (M = 512, 2 threads);
    // this loop measured x1.004-1.032 over it (a prefetch of the row 8 ahead:
    // x0.95-1.00).
    static void pack_x_natural(const MatmulArgs & a, int64_t m0, int mc, int64_t r0, int kc, uint32_t * Sp, int sps) {
        for (int m = 0; m < mc; ++m) {
            const uint16_t * src = static_cast<const uint16_t *>(a.x) + (m0 + m) * a.ldx + r0;
            uint16_t * dst = reinterpret_cast<uint16_t *>(Sp + static_cast<int64_t>(m) * sps);
            for (int i = 0; i < kc; i += 32) {
                const __mmask32 mk = kc - i >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << (kc - i)) - 1u);
                _mm512_mask_storeu_epi16(dst + i, mk, _mm512_maskz_loadu_epi16(mk, src + i));
            }
            if (kc & 1) dst[kc] = 0;
        }
    }
    static constexpr bool kFwdPermuted = false; // forward panels are in natural k order
    static int perm(int p) { return perm32(p); }
    static constexpr bool kMvQuads = MvLayout::kMvQuads;

    // Word position p of a 32-chunk holds element perm(p) (evens, then odds),
    // so dword d pairs perm(2d) and perm(2d + 1); x is packed the same way.
    static void pack_w_fwd_fast(const WView & win, int64_t n0, int nv, int64_t k0, int kc, uint32_t * Bp) {
        const WView w = win;
        const __m512 code = _mm512_loadu_ps(w.code);
        const __m512i inter = interleave_words();
        for (int g = 0; g < 2; ++g) {
            const int rows = std::min(16, nv - 16 * g);
            uint32_t * out = Bp + 16 * g;
            if (rows <= 0) {
                for (int r = 0; r < kc / 2; ++r) _mm512_store_si512(out + r * 32, _mm512_setzero_si512());
                continue;
            }
            __m512 even = _mm512_setzero_ps();
            decode_rows_transposed(w, n0 + 16 * g, rows, k0, kc, code, [out, inter, &even](int k, __m512 v) {
                if ((k & 1) == 0) {
                    even = v;
                } else { // dword lane i = (W[i, k - 1], W[i, k]) as bf16
                    _mm512_store_si512(out + (k >> 1) * 32, _mm512_permutexvar_epi16(inter, bf16_pairs(v, even)));
                }
            });
        }
    }

    // Bp[r2][p] = (W[n0 + 2 r2, k0 + perm(p)], W[n0 + 2 r2 + 1, k0 + perm(p)]).
    // Per pair of rows, the two rows' scaled code tables rounded to bf16 make
    // one 32-word vpermw table (row 2 r2 in words 0-15, the next row in 16-31);
    // the rows' 32 bytes widened to words are the indices (high nibble: even
    // elements, low nibble: odd ones, + 16 for the second row). The same bits
    // as rounding code[q] * s per element (the table holds those products),
    // with fewer shuffles than decoding to fp32 and converting: AMX backward,
    // M = 512, 2 threads, x1.006-1.021 (the decode's own samples -6 %: it
    // waits on W's lines more than on shuffles).
    static void pack_w_bwd_fast(const WView & win, int64_t n0, int nr, int64_t k0, uint32_t * Bp) {
        const WView w = win;
        const __m512 code = _mm512_loadu_ps(w.code);
        const __m512i inter = interleave_words();
        const __m512i low4 = _mm512_set1_epi16(15);
        const __m512i second = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
        alignas(64) float sc[kKC];
        bwd_row_scales(w, n0, nr, k0, sc);
        const int64_t row_bytes = w.K / 2;
        for (int r = 0; r < nr; r += 2) {
            const bool two = r + 1 < nr;
            const uint8_t * p = w.packed + (((n0 + r) * w.K + k0) >> 1);
            _mm_prefetch(reinterpret_cast<const char *>(p) + 64, _MM_HINT_T0); // the next panels' lines
            _mm_prefetch(reinterpret_cast<const char *>(p + row_bytes) + 64, _MM_HINT_T0);
            const __m512 t0 = _mm512_mul_ps(code, _mm512_set1_ps(sc[r]));
            const __m512 t1 = two ? _mm512_mul_ps(code, _mm512_set1_ps(sc[r + 1])) : _mm512_setzero_ps();
            const __m512i table = bf16_pairs(t1, t0);
            const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
            const __m128i b1 = two ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(p + row_bytes)) : _mm_setzero_si128();
            const __m512i v = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(b0), b1, 1));
            const __m512i H = _mm512_permutexvar_epi16(_mm512_or_si512(_mm512_srli_epi16(v, 4), second), table);
            const __m512i L = _mm512_permutexvar_epi16(_mm512_or_si512(_mm512_and_si512(v, low4), second), table);
            uint32_t * dst = Bp + 16 * r; // row r / 2 of 32 dwords
            _mm512_store_si512(dst, _mm512_permutexvar_epi16(inter, H));
            _mm512_store_si512(dst + 16, _mm512_permutexvar_epi16(inter, L));
        }
    }

    template <int R>
    static void kernel(const uint32_t * Bp, const uint32_t * Sp, int64_t sps, int steps, float * C, int64_t ldc,
                       bool first) {
        __m512 c0[R], c1[R];
        if (first) {
            for (int j = 0; j < R; ++j) c0[j] = c1[j] = _mm512_setzero_ps();
        } else {
            for (int j = 0; j < R; ++j) {
                c0[j] = _mm512_load_ps(C + j * ldc);
                c1[j] = _mm512_load_ps(C + j * ldc + 16);
            }
        }
        // Sp may be x's own bf16 memory, read here as pairs: a may_alias type.
        typedef uint32_t __attribute__((may_alias)) pair_t;
        const SpRows<R> rows(Sp, sps * int64_t{sizeof(uint32_t)});
        for (int r = 0; r < steps; ++r) {
            const __m512bh b0 = (__m512bh)(_mm512_load_si512(Bp + 32 * r));
            const __m512bh b1 = (__m512bh)(_mm512_load_si512(Bp + 32 * r + 16));
#pragma GCC unroll 12
            for (int j = 0; j < R; ++j) {
                const __m512bh s = (__m512bh)(_mm512_set1_epi32(static_cast<int>(rows.template at<pair_t>(j, r))));
                c0[j] = _mm512_dpbf16_ps(c0[j], b0, s);
                c1[j] = _mm512_dpbf16_ps(c1[j], b1, s);
            }
        }
        for (int j = 0; j < R; ++j) {
            _mm512_store_ps(C + j * ldc, c0[j]);
            _mm512_store_ps(C + j * ldc + 16, c1[j]);
        }
    }

    // M <= 8: forward with K % 128 == 0 runs the bf16 matvec; otherwise the
    // fp32 matvec (W decoded to exact fp32 in registers).
    static constexpr bool kMvBf16 = true;
    static void matvec_fwd_bf16(const MatmulArgs & a, const WView & w, const uint16_t * xb, int64_t n0, int64_t n1) {
        avx512::matvec_fwd_bf16(a, w, xb, n0, n1);
    }
    static void matvec_fwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1) {
        avx512::matvec_fwd_fast(a, w, xf, n0, n1);
    }
    static void matvec_bwd_fast(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1,
                                float * acc) {
        avx512::matvec_bwd_fast(a, w, xf, k0, k1, acc);
    }
};

// ---------------------------------------------------------------------------
// AMX (QLORA_ISA_AMX_BF16): OpsBF16's panels multiplied by tdpbf16ps. Bp's
// rows of 32 bf16 pairs are two B tiles side by side (16 pairs x 16 lanes,
// a stride of 128 bytes), Sp's (or x's own) rows of pairs are A tiles
// (16 rows x 16 pairs), and Cacc holds four 16 x 16 fp32 C tiles per 32 rows
// x 32 lanes, loaded and stored once per reduction block. Rows past the last
// whole 16 and reduction steps past the last whole 16 pairs (only where the
// reduction is not a multiple of 32) go through OpsBF16's vdpbf16ps kernel:
// which rows and steps those are depends only on M and the reduction length,
// never on the thread split, so results stay the same for every thread count.

struct AmxTileConfig {
    uint8_t  palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t  rows[16];
};

struct OpsAMX : OpsBF16 {
    // kMC: 256 rows per block measured x1.05-1.08 over 512 (M = 512 in one
    // block, W decoded once) and x1.03-1.06 over 128 (ab_matvec, 2 threads),
    // with tiles loaded from x itself; with x copied into Sp, 512 ran the same
    // as 256.
    static constexpr int kRows = 32, kMC = 256;
    // x rows copied into Sp (KC bf16 = 1 KB apart) rather than loaded as tiles
    // from x itself (K x 2 bytes apart, 8 KB for K = 4096): x1.21-1.32 with
    // ab_matvec, M = 512, 2 threads, the LLaMA-7B shapes forward and backward.
    static constexpr bool kXDirect = false;

    // Every tile 16 rows x 64 bytes: tmm0-3 C, tmm4-5 A, tmm6-7 B.
    __attribute__((target("amx-tile"))) static void gemm_begin() {
        alignas(64) AmxTileConfig cfg{};
        cfg.palette = 1;
        for (int t = 0; t < 8; ++t) {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // The asm, not _tile_loadconfig: GCC 12 does not see that builtin read
        // the struct and dropped the stores of colsb and rows (tiles of 0 rows,
        // then SIGILL on the first tile instruction).
        __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
    }
    __attribute__((target("amx-tile"))) static void gemm_end() { _tile_release(); }

    // C[16 G rows][32] (+)= Sp[16 G rows][ks pairs] . Bp[ks][32], ks % 16 == 0.
    template <int G>
    __attribute__((target("amx-tile,amx-bf16"))) static void tiles(const uint32_t * Bp, const uint32_t * Sp,
                                                                    int64_t sps, int ks, float * C, int64_t ldc,
                                                                    bool first) {
        const int64_t cs = ldc * 4, as = sps * 4;
        if (first) {
            _tile_zero(0);
            _tile_zero(1);
            if constexpr (G == 2) {
                _tile_zero(2);
                _tile_zero(3);
            }
        } else {
            _tile_loadd(0, C, cs);
            _tile_loadd(1, C + 16, cs);
            if constexpr (G == 2) {
                _tile_loadd(2, C + 16 * ldc, cs);
                _tile_loadd(3, C + 16 * ldc + 16, cs);
            }
        }
        for (int k = 0; k < ks; k += 16) {
            _tile_loadd(6, Bp + 32 * k, 128);
            _tile_loadd(7, Bp + 32 * k + 16, 128);
            _tile_loadd(4, Sp + k, as);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            if constexpr (G == 2) {
                _tile_loadd(5, Sp + 16 * sps + k, as);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
        }
        _tile_stored(0, C, cs);
        _tile_stored(1, C + 16, cs);
        if constexpr (G == 2) {
            _tile_stored(2, C + 16 * ldc, cs);
            _tile_stored(3, C + 16 * ldc + 16, cs);
        }
    }

    // OpsBF16's kernel on rows [0, R) in pieces of at most its 12 rows.
    template <int R>
    static void rows_bf16(const uint32_t * Bp, const uint32_t * Sp, int64_t sps, int steps, float * C, int64_t ldc,
                          bool first) {
        if constexpr (R > 0) {
            constexpr int P = R < OpsBF16::kRows ? R : OpsBF16::kRows;
            OpsBF16::kernel<P>(Bp, Sp, sps, steps, C, ldc, first);
            rows_bf16<R - P>(Bp, Sp + P * sps, sps, steps, C + P * ldc, ldc, first);
        }
    }

    template <int R>
    static void kernel(const uint32_t * Bp, const uint32_t * Sp, int64_t sps, int steps, float * C, int64_t ldc,
                       bool first) {
        constexpr int G = R / 16;
        const int ks = G > 0 ? steps & ~15 : 0;
        if constexpr (G > 0)
            if (ks > 0) tiles<G>(Bp, Sp, sps, ks, C, ldc, first);
        if (ks < steps) // the reduction's last steps of the tile rows
            rows_bf16<16 * G>(Bp + 32 * ks, Sp + ks, sps, steps - ks, C, ldc, first && ks == 0);
        rows_bf16<R - 16 * G>(Bp, Sp + 16 * G * sps, sps, steps, C + 16 * G * ldc, ldc, first);
    }
};

} // namespace
} // namespace avx512

void q4_matmul_amx_bf16(qlora_context & ctx, const MatmulArgs & a) { avx512::run<avx512::OpsAMX>(ctx, a); }
void q4_matmul_avx512(qlora_context & ctx, const MatmulArgs & a) { avx512::run<avx512::OpsF32>(ctx, a); }
void q4_matmul_avx512_bf16(qlora_context & ctx, const MatmulArgs & a) { avx512::run<avx512::OpsBF16>(ctx, a); }

bool q4_matvec_int8_avx512(qlora_context & ctx, const MatmulArgs & a) {
    using namespace avx512;
    alignas(64) uint16_t words[512];
    const WView w = make_wview(*a.w, words);
    float cmax = 0.0f;
    for (int i = 0; i < 16; ++i) cmax = std::max(cmax, std::fabs(w.code[i]));
    alignas(64) uint8_t qw[64] = {};
    for (int i = 0; i < 64; ++i)
        qw[i] = static_cast<uint8_t>(
            128 + (cmax > 0.0f ? static_cast<int>(std::nearbyint(w.code[i & 15] * (127.0f / cmax))) : 0));
    const __m512i table = _mm512_load_si512(qw);
    ThreadPool & pool = ctx.threads();
    const int T = pool.size();
    const Int8X x(static_cast<uint8_t *>(ctx.scratch.reserve(static_cast<size_t>(T), static_cast<size_t>(Int8X::bytes(a.M, a.K)))),
                  a.M, a.K);
    if (!quantize_x_int8(a, cmax, x)) return false;
    if (a.M == 1 && w.log2b <= 7) { // blocks of 32, 64, 128
        const NestedCodeLookup lut(w.nested_words); // 1 KB of tables, shared
        parallel_rows(pool, a.N, a.K, [&](int64_t n0, int64_t n1, int) {
            if (w.log2b == 5) mv_int8_rows_m1<0>(a, w, lut, x, table, n0, n1);
            else if (w.log2b == 6) mv_int8_rows_m1<1>(a, w, lut, x, table, n0, n1);
            else mv_int8_rows_m1<2>(a, w, lut, x, table, n0, n1);
        });
        return true;
    }
    // the row path's per-thread scratch (int8_block_floats)
    const int64_t nchp = (a.K / 32 + 63) & ~int64_t{63}, block_floats = int8_block_floats(w, a.K);
    const int64_t set_floats = nchp + 16 * 8; // one row's chunk scales, then its corr (MR vectors)
    for (int t = 0; t < T; ++t)
        ctx.scratch.reserve(static_cast<size_t>(t), sizeof(float) * static_cast<size_t>(block_floats + 2 * set_floats));
    pool.parallel_for(a.N, 4, [&](int64_t n0, int64_t n1, int t) {
        const NestedCodeLookup lut(w.nested_words); // once per range of rows: 1 KB of tables
        float * bs = static_cast<float *>(ctx.scratch.at(static_cast<size_t>(t)));
        float * set[2] = {bs + block_floats, bs + block_floats + set_floats};
        // the block scales' bytes: one per block with DQ, else an fp32 absmax
        const char * scale_stream = w.dq ? reinterpret_cast<const char *>(w.qabsmax) : reinterpret_cast<const char *>(w.absmax);
        const int64_t scale_bytes = w.dq ? 1 : 4;
        with_matvec_rows(a, [&](auto m) {
            constexpr int MR = decltype(m)::value;
            int8_row_prep<MR>(w, lut, x, a.K, n0, bs, set[0], set[0] + nchp);
            for (int64_t n = n0; n < n1; ++n) {
                if (n + 2 < n1) { // row n + 2's scale bytes (cache lines), read during row n + 1
                    const int64_t b0 = ((n + 2) * a.K) >> w.log2b, b1 = ((n + 3) * a.K - 1) >> w.log2b;
                    for (int64_t i = (b0 * scale_bytes) & ~int64_t{63}; i <= b1 * scale_bytes; i += 64)
                        __builtin_prefetch(scale_stream + i, 0, 3);
                }
                float * cur = set[(n - n0) & 1], * next = set[(n + 1 - n0) & 1];
                if (n + 1 < n1) int8_row_prep<MR>(w, lut, x, a.K, n + 1, bs, next, next + nchp);
                mv_int8_row<MR>(a, w, x, cur, cur + nchp, table, n);
            }
        });
    });
    return true;
}

} // namespace qlora::cpu
