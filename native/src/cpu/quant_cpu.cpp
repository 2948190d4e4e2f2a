// CPU backend for quantization: blocks split statically across the context's
// threads (contiguous ranges, so each thread streams its own part of the
// tensor); each range runs the best kernel the context's ISA level allows on
// its whole blocks, and the scalar reference on a trailing partial block.
#include "core/context.hpp"
#include "cpu/quant_simd.hpp"
#include "quant/kernels.hpp"
#include "quant/q4_tensor.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace qlora::cpu {

bool make_q8_search(const float * code, Q8Search & out) {
    for (int j = 1; j < 256; ++j)
        if (!(code[j - 1] <= code[j])) return false;
    for (int l = 0; l < 8; ++l) {
        const int step = 128 >> l;
        for (int m = 0; m < 128; ++m) out.level[l][m] = m < (1 << l) ? code[m * 2 * step + step - 1] : 0.0f;
    }
    out.top = code[255];
    return true;
}

const Nf4Buckets & nf4_buckets() {
    static const Nf4Buckets table = [] {
        Nf4Buckets b;
        const float * t = nf4_thresholds();
        const double margin = 1e-3 / 16; // 1/1000 of a bucket; fp32 rounding of x * 16 + 16 is < 2^-18 of one
        for (int j = 0; j < 32; ++j) {
            const double lo = j == 0 ? -INFINITY : (j / 16.0 - 1.0) - margin;
            const double hi = j == 31 ? INFINITY : ((j + 1) / 16.0 - 1.0) + margin;
            int below = 0, inside = 0;
            float cand = INFINITY;
            for (int i = 0; i < 15; ++i) {
                if (t[i] < lo) ++below;
                else if (t[i] <= hi) { ++inside; cand = t[i]; }
            }
            b.cand[j] = cand;
            b.base[j] = below;
            b.most = std::max(b.most, inside);
        }
        return b;
    }();
    return table;
}

namespace {

enum class Level { Portable, Avx2, Avx512, Avx512Bf16 };

Level level_of(const qlora_context & ctx) {
#if defined(QLORA_X86)
    switch (ctx.isa) {
        case QLORA_ISA_AVX2: return Level::Avx2;
        case QLORA_ISA_AVX512: return Level::Avx512;
        case QLORA_ISA_AVX512_BF16:
        case QLORA_ISA_AMX_BF16: return Level::Avx512Bf16; // no tile code for quantization
        default: return Level::Portable;
    }
#else
    return Level::Portable;
#endif
}

// Work units of at least 16K elements (64 KB of f32 input): big enough that
// waking a worker pays off, small enough that two threads share a 4 MB tensor.
constexpr int64_t kGrainElements = 16384;
int64_t grain_blocks(int32_t blocksize) { return std::max<int64_t>(1, kGrainElements / blocksize); }

// Portable quantize of whole blocks (the SCALAR level): finiteness, absmax
// and codes block by block with the reference functions, so each block comes
// from memory once and the later passes over it hit L1.
bool q4_quantize_portable(const void * x, qlora_dtype dtype, const Q4Shape & s, int64_t b0, int64_t b1,
                          float * absmax, uint8_t * packed) {
    bool finite = true;
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t e0 = b * s.blocksize;
        finite &= ref::find_nonfinite(x, dtype, e0, e0 + s.blocksize) < 0;
        ref::q4_absmax(x, dtype, s, b, b + 1, absmax);
        ref::q4_quantize(x, dtype, s, absmax, b, b + 1, packed);
    }
    return finite;
}

} // namespace

bool q4_quantize(qlora_context & ctx, const void * x, qlora_dtype dtype, const Q4Shape & s, float * absmax,
                 uint8_t * packed) {
    const Level lvl = level_of(ctx);
    const int64_t nb = s.n_blocks(), whole = s.numel / s.blocksize;
    std::vector<char> finite(static_cast<size_t>(ctx.threads().size()), 1);
    ctx.threads().parallel_for(nb, grain_blocks(s.blocksize), [&](int64_t b0, int64_t b1, int t) {
        const int64_t w1 = std::min(b1, whole);
        bool ok = true;
        if (b0 < w1) {
            switch (lvl) {
#if defined(QLORA_X86)
                case Level::Avx2: ok = avx2::q4_quantize(x, dtype, s.type, s.blocksize, b0, w1, absmax, packed); break;
                case Level::Avx512:
                case Level::Avx512Bf16:
                    ok = avx512::q4_quantize(x, dtype, s.type, s.blocksize, b0, w1, absmax, packed);
                    break;
#endif
                default: ok = q4_quantize_portable(x, dtype, s, b0, w1, absmax, packed); break;
            }
        }
        if (w1 < b1) { // the trailing partial block
            ok &= ref::find_nonfinite(x, dtype, w1 * s.blocksize, s.numel) < 0;
            ref::q4_absmax(x, dtype, s, w1, b1, absmax);
            ref::q4_quantize(x, dtype, s, absmax, w1, b1, packed);
        }
        finite[static_cast<size_t>(t)] = ok;
    });
    return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

void q4_dequantize(qlora_context & ctx, const qlora_q4_tensor & t, void * out, qlora_dtype dtype) {
    const Level lvl = level_of(ctx);
    const Q4Shape s{t.numel(), t.blocksize, t.quant_type};
    const int64_t nb = s.n_blocks(), whole = s.numel / s.blocksize;
    alignas(64) uint16_t words[512];
    if (t.double_quant) t.split_nested_code(words);
    const DqSource dq{t.qabsmax.data(), t.nested_absmax.data(), t.nested_blocksize, t.nested_code, words, t.nested_offset};
    // Scales are decoded per chunk of blocks into a small buffer that stays in L1.
    constexpr int64_t kChunk = 512;
    ctx.threads().parallel_for(nb, grain_blocks(s.blocksize), [&](int64_t b0, int64_t b1, int) {
        alignas(64) float buffer[kChunk];
        for (int64_t c0 = b0; c0 < b1; c0 += kChunk) {
            const int64_t c1 = std::min(b1, c0 + kChunk), w1 = std::min(c1, whole);
            const float * scales = buffer;
            if (!t.double_quant) {
                scales = t.absmax.data() + c0;
            } else {
                switch (lvl) {
#if defined(QLORA_X86)
                    case Level::Avx2: avx2::dq_scales(dq, c0, c1, buffer); break;
                    case Level::Avx512:
                    case Level::Avx512Bf16: avx512::dq_scales(dq, c0, c1, buffer); break;
#endif
                    default:
                        ref::dq_scales(dq.qabsmax, dq.nested_absmax, dq.nested_blocksize, dq.nested_code, dq.offset,
                                       c0, c1, buffer);
                        break;
                }
            }
            if (c0 < w1) {
                switch (lvl) {
#if defined(QLORA_X86)
                    case Level::Avx2:
                        avx2::q4_dequantize(t.packed.data(), t.code, scales, s.blocksize, c0, w1, out, dtype);
                        break;
                    case Level::Avx512:
                    case Level::Avx512Bf16:
                        avx512::q4_dequantize(t.packed.data(), t.code, scales, s.blocksize, c0, w1, out, dtype,
                                              lvl == Level::Avx512Bf16);
                        break;
#endif
                    default: ref::q4_dequantize(t.packed.data(), t.code, scales, s, c0, w1, out, dtype); break;
                }
            }
            if (w1 < c1) ref::q4_dequantize(t.packed.data(), t.code, scales + (w1 - c0), s, w1, c1, out, dtype);
        }
    });
}

void q8_quantize(qlora_context & ctx, const void * x, qlora_dtype dtype, int64_t n, int32_t blocksize,
                 const float * code256, uint8_t * q, float * absmax) {
    Level lvl = level_of(ctx);
    std::unique_ptr<Q8Search> search;
    if (lvl != Level::Portable) {
        search = std::make_unique<Q8Search>();
        if (!make_q8_search(code256, *search)) lvl = Level::Portable; // unsorted map: scalar search
    }
    const int64_t nb = (n + blocksize - 1) / blocksize, whole = n / blocksize;
    ctx.threads().parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1, int) {
        const int64_t w1 = std::min(b1, whole);
        if (b0 < w1) {
            switch (lvl) {
#if defined(QLORA_X86)
                case Level::Avx2: avx2::q8_quantize(x, dtype, blocksize, *search, b0, w1, q, absmax); break;
                case Level::Avx512:
                case Level::Avx512Bf16: avx512::q8_quantize(x, dtype, blocksize, *search, b0, w1, q, absmax); break;
#endif
                default: ref::q8_quantize(x, dtype, n, blocksize, code256, b0, w1, q, absmax); break;
            }
        }
        if (w1 < b1) ref::q8_quantize(x, dtype, n, blocksize, code256, w1, b1, q, absmax);
    });
}

void q8_dequantize(qlora_context & ctx, const uint8_t * q, const float * absmax, int64_t n, int32_t blocksize,
                   const float * code256, void * out, qlora_dtype dtype) {
    const Level lvl = level_of(ctx);
    const int64_t nb = (n + blocksize - 1) / blocksize, whole = n / blocksize;
    ctx.threads().parallel_for(nb, grain_blocks(blocksize), [&](int64_t b0, int64_t b1, int) {
        const int64_t w1 = std::min(b1, whole);
        if (b0 < w1) {
            switch (lvl) {
#if defined(QLORA_X86)
                case Level::Avx2: avx2::q8_dequantize(q, absmax, blocksize, code256, b0, w1, out, dtype); break;
                case Level::Avx512:
                case Level::Avx512Bf16:
                    avx512::q8_dequantize(q, absmax, blocksize, code256, b0, w1, out, dtype,
                                          lvl == Level::Avx512Bf16);
                    break;
#endif
                default: ref::q8_dequantize(q, absmax, n, blocksize, code256, b0, w1, out, dtype); break;
            }
        }
        if (w1 < b1) ref::q8_dequantize(q, absmax, n, blocksize, code256, w1, b1, out, dtype);
    });
}

int64_t find_nonfinite(qlora_context & ctx, const void * x, qlora_dtype dtype, int64_t n) {
    const Level lvl = level_of(ctx);
    std::vector<int64_t> first(static_cast<size_t>(ctx.threads().size()), -1);
    ctx.threads().parallel_for(n, int64_t(1) << 16, [&](int64_t i0, int64_t i1, int t) {
        int64_t f;
        switch (lvl) {
#if defined(QLORA_X86)
            case Level::Avx2: f = avx2::find_nonfinite(x, dtype, i0, i1); break;
            case Level::Avx512:
            case Level::Avx512Bf16: f = avx512::find_nonfinite(x, dtype, i0, i1); break;
#endif
            default: f = ref::find_nonfinite(x, dtype, i0, i1); break;
        }
        first[static_cast<size_t>(t)] = f;
    });
    for (int64_t f : first)
        if (f >= 0) return f; // ranges are ascending by thread index
    return -1;
}

} // namespace qlora::cpu
