// AdamW update kernels (32-bit and 8-bit blockwise states) and the gradient
// norm's partial sums, bit-identical to the scalar reference
// (src/optim/adamw_ref.cpp): same IEEE operations in the same order, no FMA
// contraction (-fmad=false), correctly rounded division and square root.
#include "cuda/device_math.cuh"
#include "cuda/kernels.hpp"

namespace qlora::cuda {

namespace {

constexpr int64_t kBlock = 256;          // optim::kBlock
constexpr int64_t kBlockBytesF32 = 2048; // optim::kBlockBytesF32: float m[256], v[256]
constexpr int64_t kBlockBytes8 = 520;    // optim::kBlockBytes8: uint8 qm[256], qv[256], float absmax[2]
constexpr int64_t kNormChunk = 4096;     // optim::kNormChunk
constexpr int     kNormLanes = 16;       // optim::kNormLanes

__global__ void __launch_bounds__(256)
adamw32_kernel(AdamwConsts c, float * __restrict__ p, const float * __restrict__ g, int64_t n, uint8_t * state) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * 256;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; e < n; e += stride) {
        float * m = reinterpret_cast<float *>(state + (e / kBlock) * kBlockBytesF32);
        float * v = m + kBlock;
        const int64_t j = e % kBlock;
        const float gj = g[e] * c.gscale;
        const float mj = m[j] * c.beta1 + c.omb1 * gj;
        const float vj = v[j] * c.beta2 + c.omb2 * (gj * gj);
        float pj = p[e] + c.step_size * (mj / (sqrtf(vj) + c.eps_c2));
        if (c.apply_decay) pj = pj * c.decay;
        m[j] = mj;
        v[j] = vj;
        p[e] = pj;
    }
}

__device__ __forceinline__ float block_max(float v, float * red) {
    v = warp_max(v);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float m = red[0];
    for (int i = 1; i < 8; ++i) m = fmaxf(m, red[i]);
    __syncthreads();
    return m;
}

// One 256-thread block per state block (bitsandbytes'
// kOptimizerStatic8bit2StateBlockwise, ADAM): dequantize both states with the
// old absmax, update, requantize with the new absmax; a negative m never
// becomes the code of +0.
__global__ void __launch_bounds__(256)
adamw8_kernel(AdamwConsts c, float * __restrict__ p, const float * __restrict__ g, int64_t n, uint8_t * state,
              Code256 map1, Code256 map2) {
    __shared__ float code1[256], code2[256];
    __shared__ float red[8];
    code1[threadIdx.x] = map1.v[threadIdx.x];
    code2[threadIdx.x] = map2.v[threadIdx.x];
    __syncthreads();
    const int64_t blocks = ceil_div(n, kBlock);
    const int j = threadIdx.x;
    for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
        uint8_t * qm = state + b * kBlockBytes8;
        uint8_t * qv = qm + kBlock;
        float * absmax = reinterpret_cast<float *>(qm + 2 * kBlock);
        const float a0 = absmax[0], a1 = absmax[1];
        const int64_t e = b * kBlock + j;
        const bool valid = e < n;
        float mj = 0.0f, vj = 0.0f;
        if (valid) {
            const float gj = g[e] * c.gscale;
            vj = code2[qv[j]] * a1;
            vj = vj * c.beta2 + c.omb2 * (gj * gj);
            mj = code1[qm[j]] * a0;
            mj = mj * c.beta1 + c.omb1 * gj;
            float pj = p[e] + c.step_size * (mj / (sqrtf(vj) + c.eps_c2));
            if (c.apply_decay) pj = pj * c.decay;
            p[e] = pj;
        }
        const float max1 = block_max(fabsf(mj), red); // all threads have read absmax by now
        const float max2 = block_max(fabsf(vj), red);
        if (valid) {
            const float r1 = max1 > 0.0f ? 1.0f / max1 : 0.0f;
            const float r2 = max2 > 0.0f ? 1.0f / max2 : 0.0f;
            uint8_t c1 = quantize_dynamic(code1, mj * r1);
            if ((f32_bits(code1[c1]) >> 31) != (f32_bits(mj) >> 31))
                c1 = static_cast<uint8_t>(mj > 0.0f ? c1 + 1 : c1 - 1);
            qm[j] = c1;
            qv[j] = quantize_dynamic(code2, vj * r2);
        }
        if (j == 0) {
            absmax[0] = max1;
            absmax[1] = max2;
        }
        __syncthreads();
    }
}

// Half-warps: 16 lanes per chunk of 4096; lane L sums elements L, L + 16, ...
// in order (float64), then the lanes meet in ref::sumsq's fixed tree.
__global__ void __launch_bounds__(256) sumsq_kernel(const float * __restrict__ g, int64_t n, double * partial) {
    const int64_t chunks = ceil_div(n, kNormChunk);
    const int lane = threadIdx.x & (kNormLanes - 1);
    const int half = (threadIdx.x >> 4) & 1;
    const int64_t gt = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
    const int64_t groups = static_cast<int64_t>(gridDim.x) * (256 / kNormLanes);
    // `base` is the same for both half-warps of a warp: shuffles need the whole warp
    for (int64_t base = (gt / 32) * 2; base < chunks; base += groups) {
        const int64_t ch = base + half;
        double s = 0.0;
        if (ch < chunks) {
            const int64_t e0 = ch * kNormChunk, cnt = imin64(kNormChunk, n - e0);
            for (int64_t i = lane; i < cnt; i += kNormLanes) {
                const double x = static_cast<double>(g[e0 + i]);
                s = s + x * x;
            }
        }
#pragma unroll
        for (int w = kNormLanes / 2; w >= 1; w /= 2) {
            const double o = __shfl_down_sync(0xffffffffu, s, w, kNormLanes);
            if (lane < w) s = s + o;
        }
        if (lane == 0 && ch < chunks) partial[ch] = s;
    }
}

} // namespace

void launch_adamw32(const AdamwConsts & c, float * p, const float * g, int64_t n, uint8_t * state, int sm_count,
                    cudaStream_t s) {
    QLORA_LAUNCH(grid_for(n, 256, sm_count), 256, s, adamw32_kernel)(c, p, g, n, state);
}

void launch_adamw8(const AdamwConsts & c, float * p, const float * g, int64_t n, uint8_t * state, const Code256 & map1,
                   const Code256 & map2, cudaStream_t s) {
    const int64_t blocks = ceil_div(n, kBlock);
    QLORA_LAUNCH(static_cast<unsigned>(imin64(blocks, 65535)), 256, s, adamw8_kernel)(c, p, g, n, state, map1, map2);
}

void launch_sumsq_chunks(const float * g, int64_t n, double * partial, cudaStream_t s) {
    const int64_t chunks = ceil_div(n, kNormChunk);
    const int64_t per_block = 256 / kNormLanes;
    QLORA_LAUNCH(static_cast<unsigned>(imin64(ceil_div(chunks, per_block), 65535)), 256, s, sumsq_kernel)(g, n, partial);
}

} // namespace qlora::cuda
