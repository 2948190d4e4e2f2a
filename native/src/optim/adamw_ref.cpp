// Scalar reference ("oracle") of the AdamW kernels, written for clarity.
// Compiled with -ffp-contract=off: every a*b+c below rounds twice.
#include "optim/adamw_kernels.hpp"
#include "quant/tables.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace qlora::ref {

using optim::kBlock;

void adamw32(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        float * m = reinterpret_cast<float *>(state + b * optim::kBlockBytesF32);
        float * v = m + kBlock;
        const int64_t cnt = std::min(kBlock, n - e0);
        for (int64_t j = 0; j < cnt; ++j) {
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

// bitsandbytes' kOptimizerStatic8bit2StateBlockwise (ADAM), per block:
// dequantize both states with the old absmax, update in fp32 (the parameter
// too), then requantize with the new absmax of the block; a negative m never
// becomes the code of +0 (bitsandbytes' sign fix).
void adamw8(const optim::StepConsts & c, float * p, const float * g, int64_t n, uint8_t * state) {
    const float * code1 = optim::signed_state_map();
    const float * code2 = optim::unsigned_dynamic_map();
    float s1[kBlock], s2[kBlock];
    for (int64_t e0 = 0, b = 0; e0 < n; e0 += kBlock, ++b) {
        uint8_t * qm = state + b * optim::kBlockBytes8;
        uint8_t * qv = qm + kBlock;
        float absmax[2];
        std::memcpy(absmax, qm + 2 * kBlock, sizeof(absmax));
        const int64_t cnt = std::min(kBlock, n - e0);
        float max1 = 0.0f, max2 = 0.0f;
        for (int64_t j = 0; j < cnt; ++j) {
            const float gj = g[e0 + j] * c.gscale;
            float vj = code2[qv[j]] * absmax[1];
            vj = vj * c.beta2 + c.omb2 * (gj * gj);
            float mj = code1[qm[j]] * absmax[0];
            mj = mj * c.beta1 + c.omb1 * gj;
            max1 = std::max(max1, std::fabs(mj));
            max2 = std::max(max2, std::fabs(vj));
            float pj = p[e0 + j] + c.step_size * (mj / (std::sqrt(vj) + c.eps_c2));
            if (c.apply_decay) pj = pj * c.decay;
            p[e0 + j] = pj;
            s1[j] = mj;
            s2[j] = vj;
        }
        const float r1 = max1 > 0.0f ? 1.0f / max1 : 0.0f;
        const float r2 = max2 > 0.0f ? 1.0f / max2 : 0.0f;
        for (int64_t j = 0; j < cnt; ++j) {
            uint8_t c1 = quantize_dynamic(code1, s1[j] * r1);
            if (std::signbit(code1[c1]) != std::signbit(s1[j])) c1 = static_cast<uint8_t>(s1[j] > 0.0f ? c1 + 1 : c1 - 1);
            qm[j] = c1;
            qv[j] = quantize_dynamic(code2, s2[j] * r2);
        }
        absmax[0] = max1;
        absmax[1] = max2;
        std::memcpy(qm + 2 * kBlock, absmax, sizeof(absmax));
    }
}

double sumsq(const float * g, int64_t n) {
    double lane[optim::kNormLanes] = {};
    for (int64_t i = 0; i < n; ++i) {
        const double x = static_cast<double>(g[i]);
        lane[i % optim::kNormLanes] += x * x; // exact: a float's square fits a double
    }
    for (int w = optim::kNormLanes / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; ++k) lane[k] += lane[k + w];
    return lane[0];
}

} // namespace qlora::ref
