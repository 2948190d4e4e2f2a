// The scalar oracle of the fused 4-bit matmul (see quant/matmul.hpp).
#include "core/half.hpp"
#include "quant/matmul.hpp"
#include "quant/q4_tensor.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace qlora::ref {

namespace {
inline double load(const void * p, qlora_dtype dtype, int64_t i) {
    return dtype == QLORA_DTYPE_BF16 ? bf16_to_f32(static_cast<const uint16_t *>(p)[i])
                                     : static_cast<const float *>(p)[i];
}
// The 4-bit code of W's flat element i (the even element of a byte is its high nibble).
inline uint8_t code_index(const qlora_q4_tensor & w, int64_t i) {
    const uint8_t byte = w.packed[static_cast<size_t>(i / 2)];
    return (i & 1) ? (byte & 0xf) : (byte >> 4);
}
// W[n, k] exactly as the dequantizer computes it: code[q] * scale in fp32.
inline float weight(const qlora_q4_tensor & w, int64_t n, int64_t k) {
    const int64_t i = n * w.cols + k;
    return w.code[code_index(w, i)] * w.block_scale(i / w.blocksize);
}

inline void store(const MatmulArgs & a, int64_t yi, double acc) {
    double v = static_cast<double>(a.alpha) * acc;
    if (a.beta != 0.0f) v += static_cast<double>(a.beta) * load(a.y, a.y_dtype, yi);
    const float f = static_cast<float>(v);
    if (a.y_dtype == QLORA_DTYPE_BF16) static_cast<uint16_t *>(a.y)[yi] = f32_to_bf16(f);
    else static_cast<float *>(a.y)[yi] = f;
}

// The 8-bit-activation forward matvec (see quant/matmul.hpp). false, with y
// untouched, when x holds a NaN or Inf.
bool q4_matvec_int8(const MatmulArgs & a) {
    const qlora_q4_tensor & w = *a.w;
    const int64_t K = a.K, nblk = K / 32;
    float cmax = 0.0f;
    for (int i = 0; i < 16; ++i) cmax = std::max(cmax, std::fabs(w.code[i]));
    int qw[16] = {};
    if (cmax > 0.0f)
        for (int i = 0; i < 16; ++i) qw[i] = static_cast<int>(std::nearbyint(w.code[i] * (127.0f / cmax)));
    std::vector<int> qx(static_cast<size_t>(a.M * K));
    std::vector<float> xd(static_cast<size_t>(a.M * nblk));
    for (int64_t m = 0; m < a.M; ++m) {
        for (int64_t c = 0; c < nblk; ++c) {
            float amax = 0.0f;
            for (int64_t k = 32 * c; k < 32 * c + 32; ++k) {
                const float v = static_cast<float>(load(a.x, a.x_dtype, m * a.ldx + k));
                if (!std::isfinite(v)) return false;
                amax = std::max(amax, std::fabs(v));
            }
            xd[static_cast<size_t>(m * nblk + c)] = amax > 0.0f ? (amax / 127.0f) * (cmax / 127.0f) : 0.0f;
            for (int64_t k = 32 * c; k < 32 * c + 32; ++k) {
                const float v = static_cast<float>(load(a.x, a.x_dtype, m * a.ldx + k));
                qx[static_cast<size_t>(m * K + k)] = amax > 0.0f ? static_cast<int>(std::nearbyint(v * (127.0f / amax))) : 0;
            }
        }
    }
    for (int64_t m = 0; m < a.M; ++m) {
        for (int64_t n = 0; n < a.N; ++n) {
            double acc = 0.0;
            for (int64_t c = 0; c < nblk; ++c) {
                int64_t dot = 0;
                for (int64_t k = 32 * c; k < 32 * c + 32; ++k)
                    dot += qw[code_index(w, n * K + k)] * qx[static_cast<size_t>(m * K + k)];
                const float s = w.block_scale((n * K + 32 * c) / w.blocksize) * xd[static_cast<size_t>(m * nblk + c)];
                acc += static_cast<double>(s) * static_cast<double>(dot);
            }
            store(a, m * a.ldy + n, acc);
        }
    }
    return true;
}
} // namespace

void q4_matmul(const MatmulArgs & a) {
    if (a.int8_x && q4_matvec_int8(a)) return;
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
            store(a, m * a.ldy + c, acc);
        }
    }
}

} // namespace qlora::ref
