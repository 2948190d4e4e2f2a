// The CPU fused 4-bit matmul, written once and compiled once per ISA: each of
// matmul_cpu.cpp (portable), matmul_avx2.cpp and matmul_avx512.cpp defines
// QLORA_MM_NS (its own namespace, so code built with different -m flags is
// never shared between translation units) and an `Ops` struct with its tile
// sizes, panel packers and micro-kernels, then instantiates `run<Ops>`.
//
// Layout of the work (docs/kernels.md has the full story):
//  - Both ops are C[M, cols] = x[M, red] . B[red, cols] with B taken from W:
//    forward B[k, n] = W[n, k] (red = K, cols = N), backward B[n, k] = W[n, k]
//    (red = N, cols = K). Lanes of the micro-kernel run along cols, so y rows
//    are written in order; x values are broadcast.
//  - M > 8 (GEMM): for each block of cols (NC) x rows of x (MC) x reduction
//    (KC): x's block is packed into Sp [MC][KC] (rows, or panels of kRows rows
//    with kXPanels; some Ops read x's rows in place; where every block is
//    packed, all of x is packed once per call, shared by the threads, up to
//    kMaxPackedX), and W is decoded one
//    lane panel at a time into Bp [KC][LANES] (fp32 or bf16 pairs), which the register
//    blocked micro-kernel multiplies with ROWS rows of Sp at a time into an fp32
//    accumulator tile Cacc [MC][NC]. y is written once, at the end of the
//    reduction (alpha, beta, dtype conversion). Scratch per thread: Cacc + Sp +
//    Bp, independent of N and K; shared: x packed (at most M x K, capped).
//  - M <= 8 (matvec): W is decoded in registers and streamed once.
//  - "fast" mode (K % 32 == 0, SIMD ISAs): 32-element chunks of a W row never
//    straddle a block or a byte, so they are decoded 16 or 32 at a time; the
//    row decoder yields even and odd elements in separate vectors, so the
//    lanes (backward, matvec) or the reduction order (forward panels when
//    Ops::kFwdPermuted) are permuted within each 32-chunk by Ops::perm, and x /
//    the epilogue use the same permutation. Otherwise every element is decoded
//    on its own (natural order).
//  - Determinism: every output element is one fixed sequence of fp32 FMAs over
//    the reduction, whatever the thread split, so results do not depend on the
//    thread count.
#pragma once

#include "core/context.hpp"
#include "core/half.hpp"
#include "quant/matmul.hpp"
#include "quant/q4_tensor.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include <unistd.h>

#ifndef QLORA_MM_NS
#error "define QLORA_MM_NS before including cpu/matmul_impl.hpp"
#endif

namespace qlora::cpu::QLORA_MM_NS {

// ---------------------------------------------------------------------------
// The weight, as the kernels see it.
struct WView {
    const uint8_t * packed;
    const float *   code;
    int64_t         N, K;
    int             log2b;
    bool            dq;
    const float *   absmax;
    const uint8_t * qabsmax;
    const float *   nested_absmax;
    const float *   nested_code;
    const uint16_t * nested_words; // nested_code split in 16-bit halves (DQ, AVX-512 only; else null)
    int             log2nb;
    float           offset;

    // fp32 scale of block b, exactly as qlora_q4_tensor::block_scale.
    float scale(int64_t b) const {
        if (!dq) return absmax[b];
        const float s = nested_code[qabsmax[b]] * nested_absmax[b >> log2nb];
        return s + offset;
    }
    uint8_t nibble(int64_t i) const {
        const uint8_t byte = packed[i >> 1];
        return (i & 1) ? (byte & 0xf) : (byte >> 4);
    }
};

inline int ilog2(int64_t v) {
    int l = 0;
    while ((int64_t{1} << l) < v) ++l;
    return l;
}

// words: 512 entries for nested_code's 16-bit halves (split_nested_code),
// filled here for a DQ tensor; null where the kernels do not use them.
inline WView make_wview(const qlora_q4_tensor & t, uint16_t * words = nullptr) {
    WView w{};
    w.packed = t.packed.data();
    w.code = t.code;
    w.N = t.rows;
    w.K = t.cols;
    w.log2b = ilog2(t.blocksize);
    w.dq = t.double_quant;
    w.absmax = t.double_quant ? nullptr : t.absmax.data();
    w.qabsmax = t.double_quant ? t.qabsmax.data() : nullptr;
    w.nested_absmax = t.double_quant ? t.nested_absmax.data() : nullptr;
    w.nested_code = t.nested_code;
    if (t.double_quant && words) {
        t.split_nested_code(words);
        w.nested_words = words;
    }
    w.log2nb = t.double_quant ? ilog2(t.nested_blocksize) : 0;
    w.offset = t.nested_offset;
    return w;
}

// Decodes W's flat elements [i0, i0 + n) (natural order) into out[0..n), one
// element at a time, refreshing the scale at block boundaries.
inline void decode_run(const WView & w, int64_t i0, int64_t n, float * out) {
    int64_t cur = -1;
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) {
        const int64_t i = i0 + j, b = i >> w.log2b;
        if (b != cur) {
            s = w.scale(b);
            cur = b;
        }
        out[j] = w.code[w.nibble(i)] * s;
    }
}

// Scales of `count` consecutive 32-element chunks starting at flat index g0
// (g0 % 32 == 0, so no chunk straddles a block): out[c] = scale of chunk c.
// Every chunk decodes its block's scale on its own: the iterations are
// independent, which is faster than sharing one decode per block through a
// loop-carried "next block" computation.
inline void chunk_scales(const WView & w, int64_t g0, int count, float * out) {
    const int64_t c0 = g0 >> 5;
    const int sh = w.log2b - 5;
    for (int c = 0; c < count; ++c) out[c] = w.scale((c0 + c) >> sh);
}

// Matvec rows are processed in segments of this many 32-element chunks, with
// the chunk scales of the segment computed up front.
constexpr int kSegChunks = 64;

// Prefetches the block scale storage of the segment (kSegChunks chunks) from
// flat element g on: the qabsmax line of its first block with DQ (a segment
// has at most 64 blocks; a second prefetch for its last block measured 6-8 %
// slower), else every line of its fp32 absmax (up to 256 bytes).
inline void prefetch_scale(const WView & w, int64_t g) {
    const int64_t b = g >> w.log2b;
    if (w.dq) {
        __builtin_prefetch(w.qabsmax + b, 0, 3);
    } else {
        const int64_t last = (g + 32 * kSegChunks - 1) >> w.log2b;
        for (int64_t i = b & ~int64_t{15}; i <= last; i += 16) __builtin_prefetch(w.absmax + i, 0, 3);
    }
}

inline float load_act(const void * p, qlora_dtype dtype, int64_t i) {
    return dtype == QLORA_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(p)[i])
                                     : static_cast<const float *>(p)[i];
}

inline uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Packed elements: fp32 values, or bf16 pairs along the reduction (the low
// half holds the first element), as vdpbf16ps consumes them.
template <class E> constexpr int kStep = std::is_same_v<E, float> ? 1 : 2;

// Writes value v of reduction index r (relative) at lane l of a panel with
// `lanes` lanes.
template <class E>
inline void put(E * panel, int lanes, int64_t r, int l, float v) {
    if constexpr (std::is_same_v<E, float>) {
        panel[r * lanes + l] = v;
    } else {
        reinterpret_cast<uint16_t *>(panel)[((r >> 1) * lanes + l) * 2 + (r & 1)] = f32_to_bf16(v);
    }
}

// ---------------------------------------------------------------------------
// Element-by-element packers (natural order): used for every shape on the
// portable ISA and when K % 32 != 0 on the SIMD ones.

// Forward: Bp[r][l] = W[n0 + l, k0 + r] for l < nv (0 beyond), r < kc (pairs
// padded with 0).
template <class E, int LANES>
void pack_w_fwd_generic(const WView & w, int64_t n0, int nv, int64_t k0, int kc, E * Bp, float * tmp) {
    const int steps = (kc + kStep<E> - 1) / kStep<E>;
    std::memset(Bp, 0, sizeof(E) * static_cast<size_t>(steps) * LANES);
    for (int l = 0; l < nv; ++l) {
        decode_run(w, (n0 + l) * w.K + k0, kc, tmp);
        for (int r = 0; r < kc; ++r) put(Bp, LANES, r, l, tmp[r]);
    }
}

// Backward: Bp[r][l] = W[n0 + r, k0 + l] for r < nr, l < kv (0 beyond).
template <class E, int LANES>
void pack_w_bwd_generic(const WView & w, int64_t n0, int nr, int64_t k0, int kv, E * Bp, float * tmp) {
    const int steps = (nr + kStep<E> - 1) / kStep<E>;
    std::memset(Bp, 0, sizeof(E) * static_cast<size_t>(steps) * LANES);
    for (int r = 0; r < nr; ++r) {
        decode_run(w, (n0 + r) * w.K + k0, kv, tmp);
        for (int l = 0; l < kv; ++l) put(Bp, LANES, r, l, tmp[l]);
    }
}

// Sp[m][r] = x[m0 + m, r0 + r] for m < mc, r < kc (pairs padded with 0);
// row stride sps elements of E.
template <class E>
void pack_x_natural_generic(const MatmulArgs & a, int64_t m0, int mc, int64_t r0, int kc, E * Sp, int sps) {
    for (int m = 0; m < mc; ++m) {
        E * row = Sp + static_cast<int64_t>(m) * sps;
        const int64_t base = (m0 + m) * a.ldx + r0;
        if constexpr (std::is_same_v<E, float>) {
            if (a.x_dtype == QLORA_DTYPE_F32) {
                std::memcpy(row, static_cast<const float *>(a.x) + base, sizeof(float) * static_cast<size_t>(kc));
            } else {
                const uint16_t * src = static_cast<const uint16_t *>(a.x) + base;
                for (int r = 0; r < kc; ++r) row[r] = bf16_to_f32(src[r]);
            }
        } else { // bf16 pairs from bf16 x: the bytes as they are
            uint16_t * h = reinterpret_cast<uint16_t *>(row);
            std::memcpy(h, static_cast<const uint16_t *>(a.x) + base, sizeof(uint16_t) * static_cast<size_t>(kc));
            if (kc & 1) h[kc] = 0;
        }
    }
}

// ---------------------------------------------------------------------------
// Epilogue: y[m0 + m, c0 + col(p)] = alpha * C[m][p] + beta * y, for p < nc.
template <class Col>
void store_cols(const MatmulArgs & a, const float * C, int64_t ldc, int64_t m0, int mc, int64_t c0, int64_t nc,
                Col col) {
    const float alpha = a.alpha, beta = a.beta;
    for (int m = 0; m < mc; ++m) {
        const float * c = C + static_cast<int64_t>(m) * ldc;
        const int64_t base = (m0 + m) * a.ldy + c0;
        if (a.y_dtype == QLORA_DTYPE_F32) {
            float * y = static_cast<float *>(a.y) + base;
            if (beta == 0.0f)
                for (int64_t p = 0; p < nc; ++p) y[col(p)] = alpha * c[p];
            else
                for (int64_t p = 0; p < nc; ++p) y[col(p)] = alpha * c[p] + beta * y[col(p)];
        } else {
            uint16_t * y = static_cast<uint16_t *>(a.y) + base;
            for (int64_t p = 0; p < nc; ++p) {
                uint16_t & o = y[col(p)];
                o = f32_to_bf16(beta == 0.0f ? alpha * c[p] : alpha * c[p] + beta * bf16_to_f32(o));
            }
        }
    }
}

// The same with col(p) = p, or permuted within 32-chunks by perm. A permuted
// row is put back in order one whole 32-chunk at a time (perm(p) is a
// constant in the unrolled copy), so that the alpha / beta / dtype loop runs
// on consecutive columns: writing through col(p) element by element took 9 %
// of a bf16 backward GEMM on AMX (M = 512, 4096 x 4096).
template <class Perm>
void store_rows(const MatmulArgs & a, const float * C, int64_t ldc, int64_t m0, int mc, int64_t c0, int nc,
                bool permuted, Perm perm) {
    if (!permuted) return store_cols(a, C, ldc, m0, mc, c0, nc, [](int64_t p) { return p; });
    const int whole = nc & ~31;
    alignas(64) float chunk[32];
    for (int m = 0; m < mc; ++m) {
        const float * c = C + static_cast<int64_t>(m) * ldc;
        for (int p0 = 0; p0 < whole; p0 += 32) {
#pragma GCC unroll 32
            for (int p = 0; p < 32; ++p) chunk[perm(p)] = c[p0 + p];
            store_cols(a, chunk, 0, m0 + m, 1, c0 + p0, 32, [](int64_t p) { return p; });
        }
    }
    if (whole < nc) // a partial chunk (never in the fast modes, whose chunks are whole)
        store_cols(a, C + whole, ldc, m0, mc, c0 + whole, nc - whole,
                   [perm](int64_t p) { return (p & ~int64_t{31}) + perm(static_cast<int>(p & 31)); });
}

// Matvec lane layouts. A 32-chunk holds its elements in Ops::perm order. Ops
// with kMvQuads decode whole 128-element quads (16 dwords of 8 nibbles, one
// shift + vpermps per nibble position): position p of a quad then holds
// element perm128(p), and a row's tail of fewer than 128 elements falls back to
// 32-chunks. mv_elem maps position p of a run of len elements to its element.
inline int perm128(int p) { return 8 * (p & 15) + (p >> 4); }

// The bf16 matvec (Ops::kMvBf16) decodes a quad as 32 words of 4 nibbles:
// shifting right by 4f leaves element 4w + {1, 0, 3, 2}[f] of word w in the
// low bits, so position 32f + w of a quad holds that element.
inline int64_t mv_elem_bf16(int64_t p) {
    const int f = static_cast<int>((p >> 5) & 3), w = static_cast<int>(p & 31);
    return (p & ~int64_t{127}) + 4 * w + (f ^ 1);
}

template <class Ops>
int64_t mv_elem(int64_t p, int64_t len) {
    if (Ops::kMvQuads && p < (len & ~int64_t{127})) return (p & ~int64_t{127}) + perm128(static_cast<int>(p & 127));
    return (p & ~int64_t{31}) + Ops::perm(static_cast<int>(p & 31));
}

inline void store_one(const MatmulArgs & a, int64_t m, int64_t c, float acc) {
    const int64_t i = m * a.ldy + c;
    if (a.y_dtype == QLORA_DTYPE_F32) {
        float & o = static_cast<float *>(a.y)[i];
        o = a.beta == 0.0f ? a.alpha * acc : a.alpha * acc + a.beta * o;
    } else {
        uint16_t & o = static_cast<uint16_t *>(a.y)[i];
        o = f32_to_bf16(a.beta == 0.0f ? a.alpha * acc : a.alpha * acc + a.beta * bf16_to_f32(o));
    }
}

// ---------------------------------------------------------------------------
// GEMM (M > 8).

// The L2 size per core in bytes (0 where the C library does not say).
inline long l2_cache_bytes() {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? v : 0;
#else
    return 0;
#endif
}

// Rows of x per block: Ops::block_rows() where the Ops sizes it at run time
// (from the machine's L2), else Ops::kMC. The bits do not depend on it.
template <class Ops>
int block_rows() {
    if constexpr (requires { Ops::block_rows(); }) return Ops::block_rows();
    else return Ops::kMC;
}

template <class Ops>
struct GemmPlan {
    using E = typename Ops::Elem;
    static constexpr int kSteps = Ops::kKC / kStep<E>; // packed rows per reduction block
    int     mc_max;                                    // rows of x per block (multiple of kRows)
    int     nc;                                        // cols per block (multiple of kLanes)
    size_t  cacc_bytes, sp_bytes, bp_bytes, tmp_bytes;
    size_t  total() const { return cacc_bytes + sp_bytes + bp_bytes + tmp_bytes; }

    // x_blocks: each thread packs x's blocks itself (else x is packed once per call).
    GemmPlan(int64_t M, bool x_blocks) {
        const int64_t kmc = block_rows<Ops>();
        const int64_t nmb = (M + kmc - 1) / kmc;
        mc_max = static_cast<int>(round_up(static_cast<uint64_t>((M + nmb - 1) / nmb), Ops::kRows));
        // Few rows: wider column blocks (same accumulator bytes), so x is packed fewer times.
        nc = static_cast<int>(std::max<int64_t>(
            Ops::kNC, std::min<int64_t>(8 * Ops::kNC, Ops::kNC * kmc / mc_max / Ops::kLanes * Ops::kLanes)));
        cacc_bytes = round_up(sizeof(float) * static_cast<size_t>(mc_max) * nc, 64);
        sp_bytes = x_blocks ? round_up(sizeof(E) * static_cast<size_t>(mc_max) * kSteps, 64) : 0;
        bp_bytes = round_up(sizeof(E) * static_cast<size_t>(kSteps) * Ops::kLanes, 64);
        tmp_bytes = round_up(sizeof(float) * static_cast<size_t>(std::max(Ops::kKC, Ops::kLanes)), 64);
    }
};

template <class Ops, int R>
void kernel_dispatch_impl(int r, const typename Ops::Elem * Bp, const typename Ops::Elem * Sp, int64_t sps, int steps,
                          float * C, int64_t ldc, bool first) {
    if constexpr (R >= 1) {
        if (r == R) return Ops::template kernel<R>(Bp, Sp, sps, steps, C, ldc, first);
        kernel_dispatch_impl<Ops, R - 1>(r, Bp, Sp, sps, steps, C, ldc, first);
    }
}

// Whether the micro-kernel can broadcast straight from x's rows (no packing):
// x already has the packed element type and natural order (and, for bf16
// pairs, pairs that start on even columns and a reduction block of even length,
// so no pair reaches past the row).
template <class Ops>
bool x_direct(const MatmulArgs & a, bool permuted_x, int kc) {
    if (permuted_x || !Ops::kXDirect) return false;
    if constexpr (std::is_same_v<typename Ops::Elem, float>) return a.x_dtype == QLORA_DTYPE_F32;
    else return a.x_dtype == QLORA_DTYPE_BF16 && a.ldx % 2 == 0 && kc % 2 == 0;
}

// Whether the block of x for a reduction block of length kc is packed (else
// the micro-kernel reads x's rows in place).
template <class Ops>
bool packs_x(const MatmulArgs & a, bool permuted_x, int kc) {
    return Ops::kXPanels || !x_direct<Ops>(a, permuted_x, kc);
}

// Packs rows [mb, mb + mc) x reduction [rb, rb + kc) of x into Sp (row or
// panel j at Sp + j * kSteps).
template <class Ops>
void pack_x_block(const MatmulArgs & a, bool permuted_x, int64_t mb, int mc, int64_t rb, int kc,
                  typename Ops::Elem * Sp) {
    constexpr int SPS = GemmPlan<Ops>::kSteps;
    static_assert(Ops::kXPanels || !Ops::kFwdPermuted, "x in permuted order is packed by pack_x_panels");
    if constexpr (Ops::kXPanels) Ops::pack_x_panels(a, permuted_x, mb, mc, rb, kc, Sp, SPS);
    else Ops::pack_x_natural(a, mb, mc, rb, kc, Sp, SPS);
}

// x packed once for the whole call, shared by the threads: reduction block b
// (of Ops::kKC) of row m at xpk + (b * rows + m) * kSteps (rows = M rounded up
// to kRows), in pack_x_block's layout.
template <class Ops>
struct PackedX {
    const typename Ops::Elem * data = nullptr;
    int64_t                    rows = 0;
};

// One thread's rectangle of the output: rows [m0, m1), cols [c0, c1).
template <class Ops>
void gemm_rect(const MatmulArgs & a, const WView & w, bool fast, const GemmPlan<Ops> & plan, int64_t m0, int64_t m1,
               int64_t c0, int64_t c1, uint8_t * scratch, PackedX<Ops> xpk) {
    using E = typename Ops::Elem;
    constexpr int LANES = Ops::kLanes, ROWS = Ops::kRows, SPS = GemmPlan<Ops>::kSteps;
    float * Cacc = reinterpret_cast<float *>(scratch);
    E * Sp = reinterpret_cast<E *>(scratch + plan.cacc_bytes);
    E * Bp = reinterpret_cast<E *>(scratch + plan.cacc_bytes + plan.sp_bytes);
    float * tmp = reinterpret_cast<float *>(scratch + plan.cacc_bytes + plan.sp_bytes + plan.bp_bytes);
    const bool fwd = a.op == QLORA_MATMUL_FORWARD;
    const int64_t red = a.red_len();
    const int64_t nmb = (m1 - m0 + plan.mc_max - 1) / plan.mc_max;
    const int64_t mc_even = static_cast<int64_t>(round_up(static_cast<uint64_t>((m1 - m0 + nmb - 1) / nmb), ROWS));

    const int NC = plan.nc;
    Ops::gemm_begin();
    for (int64_t cb = c0; cb < c1; cb += NC) {
        const int nc = static_cast<int>(std::min<int64_t>(NC, c1 - cb));
        for (int64_t mb = m0; mb < m1; mb += mc_even) {
            const int mc = static_cast<int>(std::min<int64_t>(mc_even, m1 - mb));
            for (int64_t rb = 0; rb < red; rb += Ops::kKC) {
                const int kc = static_cast<int>(std::min<int64_t>(Ops::kKC, red - rb));
                const int steps = (kc + kStep<E> - 1) / kStep<E>;
                // forward panels in Ops::perm order: x follows
                const bool permuted_x = Ops::kFwdPermuted && fwd && fast;
                const E * S = Sp;
                int64_t sps = SPS;
                if (xpk.data) {
                    S = xpk.data + (rb / Ops::kKC * xpk.rows + mb) * SPS;
                } else if (packs_x<Ops>(a, permuted_x, kc)) {
                    pack_x_block<Ops>(a, permuted_x, mb, mc, rb, kc, Sp);
                } else {
                    S = reinterpret_cast<const E *>(static_cast<const char *>(a.x) +
                                                    (mb * a.ldx + rb) * static_cast<int64_t>(qlora_dtype_size(a.x_dtype)));
                    sps = a.ldx * static_cast<int64_t>(qlora_dtype_size(a.x_dtype)) / static_cast<int64_t>(sizeof(E));
                }
                for (int64_t cp = cb; cp < cb + nc; cp += LANES) {
                    const int lv = static_cast<int>(std::min<int64_t>(LANES, cb + nc - cp));
                    if (fwd) {
                        if (fast) Ops::pack_w_fwd_fast(w, cp, lv, rb, kc, Bp);
                        else pack_w_fwd_generic<E, LANES>(w, cp, lv, rb, kc, Bp, tmp);
                    } else {
                        if (fast) Ops::pack_w_bwd_fast(w, rb, kc, cp, Bp);
                        else pack_w_bwd_generic<E, LANES>(w, rb, kc, cp, lv, Bp, tmp);
                    }
                    float * Ct = Cacc + (cp - cb);
                    for (int mp = 0; mp < mc; mp += ROWS) {
                        const int r = std::min(ROWS, mc - mp);
                        kernel_dispatch_impl<Ops, ROWS>(r, Bp, S + mp * sps, sps, steps,
                                                        Ct + static_cast<int64_t>(mp) * NC, NC, rb == 0);
                    }
                }
            }
            store_rows(a, Cacc, NC, mb, mc, cb, nc, !fwd && fast, [](int p) { return Ops::perm(p); });
        }
    }
    Ops::gemm_end();
}

// ---------------------------------------------------------------------------
// Matvec (M <= 8), element-by-element decoding (natural order).

// Forward: rows [n0, n1) of y's columns. xf: x as fp32 [M][K]; row: K floats.
inline void matvec_fwd_generic(const MatmulArgs & a, const WView & w, const float * xf, int64_t n0, int64_t n1,
                               float * row) {
    const int64_t K = a.K;
    for (int64_t n = n0; n < n1; ++n) {
        decode_run(w, n * K, K, row);
        for (int64_t m = 0; m < a.M; ++m) {
            const float * x = xf + m * K;
            float part[16] = {};
            int64_t k = 0;
            for (; k + 16 <= K; k += 16)
                for (int l = 0; l < 16; ++l) part[l] = part[l] + x[k + l] * row[k + l];
            for (int l = 0; k + l < K; ++l) part[l] = part[l] + x[k + l] * row[k + l];
            float s = 0.0f;
            for (int l = 0; l < 16; ++l) s += part[l];
            store_one(a, m, n, s);
        }
    }
}

// Backward: cols [k0, k1) of y. xf: x as fp32 [M][N]; acc: M * (k1 - k0)
// floats; row: k1 - k0 floats.
inline void matvec_bwd_generic(const MatmulArgs & a, const WView & w, const float * xf, int64_t k0, int64_t k1,
                               float * acc, float * row) {
    const int64_t kv = k1 - k0;
    std::memset(acc, 0, sizeof(float) * static_cast<size_t>(a.M * kv));
    for (int64_t n = 0; n < a.N; ++n) {
        decode_run(w, n * a.K + k0, kv, row);
        for (int64_t m = 0; m < a.M; ++m) {
            const float xv = xf[m * a.N + n];
            float * c = acc + m * kv;
            for (int64_t k = 0; k < kv; ++k) c[k] = c[k] + xv * row[k];
        }
    }
    for (int64_t m = 0; m < a.M; ++m)
        for (int64_t k = 0; k < kv; ++k) store_one(a, m, k0 + k, acc[m * kv + k]);
}

// x as fp32 rows [M][red]: position r holds element elem(r).
template <class Elem>
void widen_x(const MatmulArgs & a, Elem elem, float * xf) {
    const int64_t red = a.red_len();
    for (int64_t m = 0; m < a.M; ++m)
        for (int64_t r = 0; r < red; ++r) xf[m * red + r] = load_act(a.x, a.x_dtype, m * a.ldx + elem(r));
}

// ---------------------------------------------------------------------------
// Entry point: plan, scratch, thread split.

constexpr int64_t kMatvecMaxM = 8;
// The most scratch a GEMM spends on x packed once per call (64 MiB: M = 512
// rows of K = 32768 fp32); larger x is packed block by block by each thread.
constexpr size_t kMaxPackedX = size_t{64} << 20;

// The forward matvecs' rows [0, n) of K elements, handed out to the pool's
// threads by a ChunkQueue in chunks of about 64 KB of weights (a multiple of
// 4 rows): fn(n0, n1, thread) per range taken. Static halves left one thread
// of two idle for 5-7 % of a call from DRAM (4096 x 4096: 9 us of 138; the
// 7B shapes: 17-23 us of 370-385), as the threads' shares of the memory
// differ; taking work as they get done measured +1-16 % with 2 threads (the
// kernels' machine code unchanged). Each row is computed whole by one thread,
// so the bits do not depend on which.
template <class F>
void parallel_rows(ThreadPool & pool, int64_t n, int64_t K, F && fn) {
    if (pool.size() == 1) return fn(int64_t{0}, n, 0);
    ChunkQueue rows(n, std::max<int64_t>(4, (65536 / std::max<int64_t>(K / 2, 1) + 3) & ~int64_t{3}), pool.size());
    pool.run([&](int t, int) {
        for (int64_t n0, n1; rows.next(t, n0, n1);) fn(n0, n1, t);
    });
}

// Calls f(std::integral_constant<int, M>{}) for M = a.M in 1 .. kMatvecMaxM:
// the matvec kernels are templates on the number of x rows.
template <class F>
void with_matvec_rows(const MatmulArgs & a, F && f) {
    switch (a.M) {
        case 1: return f(std::integral_constant<int, 1>{});
        case 2: return f(std::integral_constant<int, 2>{});
        case 3: return f(std::integral_constant<int, 3>{});
        case 4: return f(std::integral_constant<int, 4>{});
        case 5: return f(std::integral_constant<int, 5>{});
        case 6: return f(std::integral_constant<int, 6>{});
        case 7: return f(std::integral_constant<int, 7>{});
        default: return f(std::integral_constant<int, 8>{});
    }
}

template <class Ops>
void run(qlora_context & ctx, const MatmulArgs & a) {
    alignas(64) uint16_t words[512];
    const WView w = make_wview(*a.w, Ops::kNestedWords ? words : nullptr);
    const bool fast = Ops::kFast && a.K % 32 == 0;
    ThreadPool & pool = ctx.threads();
    const int T = pool.size();
    Scratch & scratch = ctx.scratch;
    const bool fwd = a.op == QLORA_MATMUL_FORWARD;
    const int64_t cols = a.out_cols(), red = a.red_len();

    if (Ops::kMvBf16 && a.M <= kMatvecMaxM && fwd && fast && a.x_dtype == QLORA_DTYPE_BF16 && a.K % 128 == 0) {
        // bf16 x, rows of whole quads: x copied once as bf16 in the layout of
        // the bf16 matvec (mv_elem_bf16), then rows split across threads.
        uint16_t * xb = static_cast<uint16_t *>(scratch.reserve(static_cast<size_t>(T), sizeof(uint16_t) * a.M * red));
        const uint16_t * x = static_cast<const uint16_t *>(a.x);
        for (int64_t m = 0; m < a.M; ++m)
            for (int64_t r = 0; r < red; ++r) xb[m * red + r] = x[m * a.ldx + mv_elem_bf16(r)];
        parallel_rows(pool, cols, a.K, [&](int64_t c0, int64_t c1, int) { Ops::matvec_fwd_bf16(a, w, xb, c0, c1); });
        return;
    }
    if (a.M <= kMatvecMaxM) {
        // x widened to fp32 once (shared), then rows (forward) or column
        // ranges (backward) split across threads.
        float * xf = static_cast<float *>(scratch.reserve(static_cast<size_t>(T), sizeof(float) * a.M * red));
        if (fwd && fast) widen_x(a, [red](int64_t r) { return mv_elem<Ops>(r, red); }, xf);
        else widen_x(a, [](int64_t r) { return r; }, xf);
        const int64_t grain = fwd ? 4 : Ops::kMvQuads ? 128 : 64;
        const size_t per_thread =
            fwd ? (fast ? 0 : sizeof(float) * static_cast<size_t>(a.K))
                : sizeof(float) * static_cast<size_t>((a.M + 1) * std::min<int64_t>(cols, (cols + T - 1) / T + grain));
        for (int t = 0; t < T; ++t)
            if (per_thread) scratch.reserve(static_cast<size_t>(t), per_thread);
        if (fwd && fast) {
            parallel_rows(pool, cols, a.K, [&](int64_t c0, int64_t c1, int) { Ops::matvec_fwd_fast(a, w, xf, c0, c1); });
            return;
        }
        pool.parallel_for(cols, grain, [&](int64_t c0, int64_t c1, int t) {
            float * buf = per_thread ? static_cast<float *>(scratch.at(static_cast<size_t>(t))) : nullptr;
            if (fwd) {
                matvec_fwd_generic(a, w, xf, c0, c1, buf);
            } else {
                if (fast) Ops::matvec_bwd_fast(a, w, xf, c0, c1, buf);
                else matvec_bwd_generic(a, w, xf, c0, c1, buf, buf + a.M * (c1 - c0));
            }
        });
        return;
    }

    // x packed once per call when every block of it is packed and the copy is
    // at most kMaxPackedX (else each thread packs each block it needs, once
    // per block of columns): x1.00-1.08 at M = 512 (fp32, 2 threads).
    using E = typename Ops::Elem;
    constexpr int SPS = GemmPlan<Ops>::kSteps;
    const bool permuted_x = Ops::kFwdPermuted && fwd && fast;
    const int64_t nrb = (red + Ops::kKC - 1) / Ops::kKC;
    const int last_kc = static_cast<int>(red - (nrb - 1) * Ops::kKC);
    PackedX<Ops> xpk;
    xpk.rows = static_cast<int64_t>(round_up(static_cast<uint64_t>(a.M), Ops::kRows));
    const size_t xpk_bytes = sizeof(E) * static_cast<size_t>(nrb * xpk.rows * SPS);
    const bool pack_once =
        packs_x<Ops>(a, permuted_x, Ops::kKC) && packs_x<Ops>(a, permuted_x, last_kc) && xpk_bytes <= kMaxPackedX;

    const GemmPlan<Ops> plan(a.M, !pack_once);
    for (int t = 0; t < T; ++t) scratch.reserve(static_cast<size_t>(t), plan.total());
    if (pack_once) {
        E * buf = static_cast<E *>(scratch.reserve(static_cast<size_t>(T), xpk_bytes));
        const int64_t panels = xpk.rows / Ops::kRows;
        pool.parallel_for(nrb * panels, 1, [&](int64_t u0, int64_t u1, int) {
            for (int64_t u = u0; u < u1; ++u) {
                const int64_t b = u / panels, m = u % panels * Ops::kRows;
                pack_x_block<Ops>(a, permuted_x, m, static_cast<int>(std::min<int64_t>(Ops::kRows, a.M - m)),
                                  b * Ops::kKC, b + 1 < nrb ? Ops::kKC : last_kc, buf + (b * xpk.rows + m) * SPS);
            }
        });
        xpk.data = buf;
    }
    // Split the output columns in whole lane panels when there are enough of
    // them, else the rows of x; the result does not depend on the split.
    const int64_t col_units = (cols + Ops::kLanes - 1) / Ops::kLanes;
    const int64_t row_units = (a.M + Ops::kRows - 1) / Ops::kRows;
    const bool split_cols = col_units >= T || col_units >= row_units;
    pool.run([&](int t, int nt) {
        int64_t b, e;
        uint8_t * s = static_cast<uint8_t *>(scratch.at(static_cast<size_t>(t)));
        if (split_cols) {
            split_range(cols, Ops::kLanes, nt, t, b, e);
            if (b < e) gemm_rect<Ops>(a, w, fast, plan, 0, a.M, b, e, s, xpk);
        } else {
            split_range(a.M, Ops::kRows, nt, t, b, e);
            if (b < e) gemm_rect<Ops>(a, w, fast, plan, b, e, 0, cols, s, xpk);
        }
    });
}

// Defaults an Ops struct can inherit: natural-order packers and the epilogue.
template <class E>
struct OpsBase {
    using Elem = E;
    static constexpr bool kMvQuads = false; // matvec layout: 32-chunks only (see mv_elem)
    static constexpr bool kMvBf16 = false;  // no bf16 matvec for bf16 x (see mv_elem_bf16)
    static constexpr bool kNestedWords = false; // WView::nested_words unused
    static constexpr bool kXPanels = false;     // x packed in row panels (pack_x_panels), else rows
    static constexpr bool kXDirect = true;      // rows read from x itself where its layout fits (x_direct)
    // Around each thread's share of a GEMM (AMX: load the tile configuration, release the tiles).
    static void gemm_begin() {}
    static void gemm_end() {}
    static void matvec_fwd_bf16(const MatmulArgs &, const WView &, const uint16_t *, int64_t, int64_t) {}
    static void pack_x_natural(const MatmulArgs & a, int64_t m0, int mc, int64_t r0, int kc, E * Sp, int sps) {
        pack_x_natural_generic<E>(a, m0, mc, r0, kc, Sp, sps);
    }
};

} // namespace qlora::cpu::QLORA_MM_NS
