// CPU backend for quantization: blocks split statically across the context's
// threads; each range runs the best kernel the context's ISA allows.
#include "core/context.hpp"
#include "quant/kernels.hpp"
#include "quant/q4_tensor.hpp"

#include <vector>

namespace qlora::cpu {

namespace {
// Blocks per task: enough work per thread to amortise the dispatch.
constexpr int64_t kGrainBlocks = 256;
} // namespace

void q4_absmax(qlora_context & ctx, const void * x, qlora_dtype dtype, const Q4Shape & s, float * absmax) {
    ctx.threads().parallel_for(s.n_blocks(), kGrainBlocks, [&](int64_t b0, int64_t b1, int) {
        ref::q4_absmax(x, dtype, s, b0, b1, absmax);
    });
}

void q4_quantize(qlora_context & ctx, const void * x, qlora_dtype dtype, const Q4Shape & s, const float * absmax,
                 uint8_t * packed) {
    ctx.threads().parallel_for(s.n_blocks(), kGrainBlocks, [&](int64_t b0, int64_t b1, int) {
        ref::q4_quantize(x, dtype, s, absmax, b0, b1, packed);
    });
}

void q4_dequantize(qlora_context & ctx, const qlora_q4_tensor & t, void * out, qlora_dtype dtype) {
    const Q4Shape s{t.numel(), t.blocksize, t.quant_type};
    ctx.threads().parallel_for(s.n_blocks(), kGrainBlocks, [&](int64_t b0, int64_t b1, int) {
        std::vector<float> scales(static_cast<size_t>(kGrainBlocks));
        for (int64_t c0 = b0; c0 < b1; c0 += kGrainBlocks) {
            const int64_t c1 = std::min(b1, c0 + kGrainBlocks);
            for (int64_t b = c0; b < c1; ++b) scales[static_cast<size_t>(b - c0)] = t.block_scale(b);
            ref::q4_dequantize(t.packed.data(), t.code, scales.data(), s, c0, c1, out, dtype);
        }
    });
}

void q8_quantize(qlora_context & ctx, const float * x, int64_t n, int32_t blocksize, const float * code256,
                 uint8_t * q, float * absmax) {
    const int64_t nb = (n + blocksize - 1) / blocksize;
    ctx.threads().parallel_for(nb, kGrainBlocks * 64 / blocksize + 1, [&](int64_t b0, int64_t b1, int) {
        ref::q8_quantize(x, n, blocksize, code256, b0, b1, q, absmax);
    });
}

void q8_dequantize(qlora_context & ctx, const uint8_t * q, const float * absmax, int64_t n, int32_t blocksize,
                   const float * code256, float * out) {
    const int64_t nb = (n + blocksize - 1) / blocksize;
    ctx.threads().parallel_for(nb, kGrainBlocks * 64 / blocksize + 1, [&](int64_t b0, int64_t b1, int) {
        ref::q8_dequantize(q, absmax, n, blocksize, code256, b0, b1, out);
    });
}

} // namespace qlora::cpu

namespace qlora::cpu {
int64_t find_nonfinite(qlora_context & ctx, const void * x, qlora_dtype dtype, int64_t n) {
    std::vector<int64_t> first(static_cast<size_t>(ctx.threads().size()), -1);
    ctx.threads().parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1, int t) {
        first[static_cast<size_t>(t)] = ref::find_nonfinite(x, dtype, i0, i1);
    });
    for (int64_t f : first)
        if (f >= 0) return f; // ranges are ascending by thread index
    return -1;
}
} // namespace qlora::cpu
