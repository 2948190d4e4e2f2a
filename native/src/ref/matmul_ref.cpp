// The scalar oracle of the fused 4-bit matmul (see quant/matmul.hpp).
#include "core/half.hpp"
#include "quant/matmul.hpp"
#include "quant/q4_tensor.hpp"

namespace qlora::ref {

namespace {
inline double load(const void * p, qlora_dtype dtype, int64_t i) {
    return dtype == QLORA_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(p)[i])
                                     : static_cast<const float *>(p)[i];
}
// W[n, k] exactly as the dequantizer computes it: code[q] * scale in fp32.
inline float weight(const qlora_q4_tensor & w, int64_t n, int64_t k) {
    const int64_t i = n * w.cols + k;
    const uint8_t byte = w.packed[static_cast<size_t>(i / 2)];
    const uint8_t q = (i & 1) ? (byte & 0xf) : (byte >> 4);
    return w.code[q] * w.block_scale(i / w.blocksize);
}
} // namespace

void q4_matmul(const MatmulArgs & a) {
    const qlora_q4_tensor & w = *a.w;
    const bool fwd = a.op == QLORA_MATMUL_FORWARD;
    const int64_t cols = a.out_cols(), red = a.red_len();
    for (int64_t m = 0; m < a.M; ++m) {
        for (int64_t c = 0; c < cols; ++c) {
            double acc = 0.0;
            for (int64_t r = 0; r < red; ++r) {
                const double xv = load(a.x, a.x_dtype, m * a.ldx + r);
                const double wv = fwd ? weight(w, c, r) : weight(w, r, c);
                acc += xv * wv;
            }
            const int64_t yi = m * a.ldy + c;
            double v = static_cast<double>(a.alpha) * acc;
            if (a.beta != 0.0f) v += static_cast<double>(a.beta) * load(a.y, a.y_dtype, yi);
            const float f = static_cast<float>(v);
            if (a.y_dtype == QLORA_DTYPE_BF16) static_cast<uint16_t *>(a.y)[yi] = f32_to_bf16(f);
            else static_cast<float *>(a.y)[yi] = f;
        }
    }
}

} // namespace qlora::ref
