// Quantization kernels: 4-bit (NF4 / FP4 / Int4) and 8-bit blockwise, both
// directions, bit-identical to the scalar reference (src/ref/quant_ref.cpp).
#include "cuda/device_math.cuh"
#include "cuda/kernels.hpp"

namespace qlora::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <int QT>
__device__ __forceinline__ uint8_t quantize4(float xn, const Thresholds & th) {
    if constexpr (QT == QLORA_QUANT_FP4) return quantize_fp4(th.fp4, xn);
    else if constexpr (QT == QLORA_QUANT_INT4) return quantize_int4(xn);
    else return quantize_nf4(th.nf4, xn);
}

// One warp per quantization block (grid-stride over blocks): absmax by a warp
// reduction (max is exact in any order), then the codes, two per byte.
template <int DT, int QT>
__global__ void __launch_bounds__(kThreads)
q4_quantize_kernel(const void * __restrict__ x, int64_t n, int32_t bs, int64_t nb, Thresholds th,
                   float * __restrict__ absmax, uint8_t * __restrict__ packed, unsigned long long * first_bad) {
    const int lane = threadIdx.x & 31;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
    for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; b < nb; b += warps) {
        const int64_t e0 = b * bs, cnt = imin64(bs, n - e0);
        float m = 0.0f;
        for (int64_t e = lane; e < cnt; e += 32) {
            const float v = load_elem<DT>(x, e0 + e);
            if (!is_finite(v)) atomicMin(first_bad, static_cast<unsigned long long>(e0 + e));
            m = fmaxf(m, fabsf(v));
        }
        m = warp_max(m);
        if (lane == 0) absmax[b] = m;
        const float inv = reciprocal(m);
        const int64_t pairs = (cnt + 1) / 2;
        for (int64_t p = lane; p < pairs; p += 32) {
            const int64_t i = e0 + 2 * p;
            const uint8_t q0 = quantize4<QT>(load_elem<DT>(x, i) * inv, th);
            const uint8_t q1 = 2 * p + 1 < cnt ? quantize4<QT>(load_elem<DT>(x, i + 1) * inv, th) : 0;
            packed[i / 2] = static_cast<uint8_t>((q0 << 4) | q1);
        }
    }
}

template <int DT, bool CENTRE>
__global__ void __launch_bounds__(kThreads)
q8_quantize_kernel(const void * __restrict__ x, int64_t n, int32_t bs, int64_t nb, float subtract, Code256 code,
                   uint8_t * __restrict__ q, float * __restrict__ absmax, unsigned long long * first_bad) {
    __shared__ float s_code[256];
    for (int i = threadIdx.x; i < 256; i += kThreads) s_code[i] = code.v[i];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
    for (int64_t b = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; b < nb; b += warps) {
        const int64_t e0 = b * bs, cnt = imin64(bs, n - e0);
        float m = 0.0f;
        for (int64_t e = lane; e < cnt; e += 32) {
            float v = load_elem<DT>(x, e0 + e);
            if constexpr (CENTRE) v = v - subtract;
            if (!is_finite(v)) atomicMin(first_bad, static_cast<unsigned long long>(e0 + e));
            m = fmaxf(m, fabsf(v));
        }
        m = warp_max(m);
        if (lane == 0) absmax[b] = m;
        const float inv = reciprocal(m);
        for (int64_t e = lane; e < cnt; e += 32) {
            float v = load_elem<DT>(x, e0 + e);
            if constexpr (CENTRE) v = v - subtract;
            q[e0 + e] = quantize_dynamic(s_code, v * inv);
        }
    }
}

template <int DT>
__global__ void __launch_bounds__(kThreads)
q8_dequantize_kernel(const uint8_t * __restrict__ q, const float * __restrict__ absmax, int64_t n, int32_t log2bs,
                     Code256 code, void * __restrict__ out) {
    __shared__ float s_code[256];
    for (int i = threadIdx.x; i < 256; i += kThreads) s_code[i] = code.v[i];
    __syncthreads();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
        store_elem<DT>(out, i, s_code[q[i]] * absmax[i >> log2bs]);
}

// 16-bit outputs: 16 elements per thread, 8 packed bytes in, 32 bytes out
// with two 16-byte stores. (The unit layout below, 8 elements per thread here,
// was slower to bf16 on an H200: 0.55-0.61x the copy rate against this
// kernel's 0.62-0.75x.) Needs e0 % 16 == 0 (a group never straddles a block:
// blocksize >= 32) and `out` 16-byte aligned.
template <int DT, bool DQ>
__global__ void __launch_bounds__(kThreads)
q4_dequantize_vec16_kernel(Q4Dev w, Code16 code, Code256 ncode, int64_t e0, int64_t groups, void * __restrict__ out) {
    QLORA_LOAD_TABLES();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t g = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; g < groups; g += stride) {
        const int64_t i = e0 + g * 16;
        const uint2 bytes = *reinterpret_cast<const uint2 *>(w.packed + i / 2);
        const float scale = block_scale<DQ>(w, s_ncode, i >> w.log2b);
        float v[16];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const uint32_t byte = ((j < 4 ? bytes.x : bytes.y) >> (8 * (j & 3))) & 0xffu;
            v[2 * j] = s_code[byte >> 4] * scale;
            v[2 * j + 1] = s_code[byte & 0xfu] * scale;
        }
        uint32_t h[8];
#pragma unroll
        for (int j = 0; j < 8; ++j)
            h[j] = static_cast<uint32_t>(to_16<DT>(v[2 * j])) | (static_cast<uint32_t>(to_16<DT>(v[2 * j + 1])) << 16);
        uint4 * o = reinterpret_cast<uint4 *>(static_cast<uint16_t *>(out) + g * 16);
        o[0] = make_uint4(h[0], h[1], h[2], h[3]);
        o[1] = make_uint4(h[4], h[5], h[6], h[7]);
    }
}

// fp32 outputs: units of 4 elements (2 packed bytes in, one 16-byte store
// out), unit u of the call at out + 16 u: consecutive lanes write consecutive
// 16 bytes, so each warp store fills whole 512-byte spans (16 elements per
// thread, 64 contiguous bytes each, made every warp store touch 32 lines: 0.39-
// 0.40x the copy rate on an H200; this kernel 0.71-0.81x). Each thread loads
// its U units (bytes and block scale) before decoding any. Needs e0 % 16 == 0
// and `out` 16-byte aligned.
template <bool DQ>
__global__ void __launch_bounds__(kThreads)
q4_dequantize_f32_kernel(Q4Dev w, Code16 code, Code256 ncode, int64_t e0, int64_t units, float * __restrict__ out) {
    constexpr int U = 4; // units per thread per pass
    QLORA_LOAD_TABLES();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t u0 = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; u0 < units; u0 += U * stride) {
        uint32_t bits[U];
        float sc[U];
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int64_t u = u0 + k * stride;
            bits[k] = 0u;
            sc[k] = 0.0f;
            if (u < units) {
                const int64_t i = e0 + u * 4;
                bits[k] = *reinterpret_cast<const uint16_t *>(w.packed + i / 2);
                sc[k] = block_scale<DQ>(w, s_ncode, i >> w.log2b);
            }
        }
#pragma unroll
        for (int k = 0; k < U; ++k) {
            const int64_t u = u0 + k * stride;
            if (u >= units) break;
            const uint32_t b0 = bits[k] & 0xffu, b1 = bits[k] >> 8;
            reinterpret_cast<float4 *>(out)[u] = make_float4(s_code[b0 >> 4] * sc[k], s_code[b0 & 0xfu] * sc[k],
                                                             s_code[b1 >> 4] * sc[k], s_code[b1 & 0xfu] * sc[k]);
        }
    }
}

// One element per thread: any e0 and alignment (and the tail of the above).
template <int DT, bool DQ>
__global__ void __launch_bounds__(kThreads)
q4_dequantize_scalar_kernel(Q4Dev w, Code16 code, Code256 ncode, int64_t e0, int64_t count, void * __restrict__ out) {
    QLORA_LOAD_TABLES();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < count; j += stride) {
        const int64_t i = e0 + j;
        const uint8_t byte = w.packed[i >> 1];
        const uint8_t qv = (i & 1) ? (byte & 0xf) : (byte >> 4);
        store_elem<DT>(out, j, s_code[qv] * block_scale<DQ>(w, s_ncode, i >> w.log2b));
    }
}

template <int DT>
void q4_quantize_t(const void * x, int64_t n, int32_t bs, qlora_quant_type type, const Thresholds & th, float * absmax,
                   uint8_t * packed, unsigned long long * first_bad, int sms, cudaStream_t s) {
    const int64_t nb = ceil_div(n, bs);
    const unsigned grid = grid_for(nb, kWarps, sms);
    switch (type) {
        case QLORA_QUANT_FP4:
            QLORA_LAUNCH(grid, kThreads, s, q4_quantize_kernel<DT, QLORA_QUANT_FP4>)(x, n, bs, nb, th, absmax, packed,
                                                                                     first_bad);
            break;
        case QLORA_QUANT_INT4:
            QLORA_LAUNCH(grid, kThreads, s, q4_quantize_kernel<DT, QLORA_QUANT_INT4>)(x, n, bs, nb, th, absmax, packed,
                                                                                      first_bad);
            break;
        default:
            QLORA_LAUNCH(grid, kThreads, s, q4_quantize_kernel<DT, QLORA_QUANT_NF4>)(x, n, bs, nb, th, absmax, packed,
                                                                                     first_bad);
            break;
    }
}

int log2i(int64_t v) {
    int l = 0;
    while ((int64_t(1) << l) < v) ++l;
    return l;
}

template <int DT, bool DQ>
void q4_dequantize_t(const Q4Dev & w, const Code16 & code, const Code256 & ncode, int64_t e0, int64_t count, void * out,
                     int sms, cudaStream_t s) {
    const bool vec = e0 % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
    int64_t done = 0;
    if constexpr (DT == QLORA_DTYPE_F32) {
        const int64_t units = vec ? count / 4 : 0;
        if (units > 0)
            QLORA_LAUNCH(grid_for(units, kThreads, sms), kThreads, s, q4_dequantize_f32_kernel<DQ>)(
                w, code, ncode, e0, units, static_cast<float *>(out));
        done = units * 4;
    } else {
        const int64_t groups = vec ? count / 16 : 0;
        if (groups > 0)
            QLORA_LAUNCH(grid_for(groups, kThreads, sms), kThreads, s, q4_dequantize_vec16_kernel<DT, DQ>)(
                w, code, ncode, e0, groups, out);
        done = groups * 16;
    }
    if (done < count) {
        void * tail = static_cast<uint8_t *>(out) + done * (DT == QLORA_DTYPE_F32 ? 4 : 2);
        QLORA_LAUNCH(grid_for(count - done, kThreads, sms), kThreads, s, q4_dequantize_scalar_kernel<DT, DQ>)(
            w, code, ncode, e0 + done, count - done, tail);
    }
}

} // namespace

void launch_q4_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t bs, qlora_quant_type type,
                        const Thresholds & th, float * absmax, uint8_t * packed, unsigned long long * first_bad,
                        int sm_count, cudaStream_t stream) {
    switch (dtype) {
        case QLORA_DTYPE_F16:
            q4_quantize_t<QLORA_DTYPE_F16>(x, n, bs, type, th, absmax, packed, first_bad, sm_count, stream);
            break;
        case QLORA_DTYPE_BF16:
            q4_quantize_t<QLORA_DTYPE_BF16>(x, n, bs, type, th, absmax, packed, first_bad, sm_count, stream);
            break;
        default: q4_quantize_t<QLORA_DTYPE_F32>(x, n, bs, type, th, absmax, packed, first_bad, sm_count, stream); break;
    }
}

void launch_q8_quantize(const void * x, qlora_dtype dtype, int64_t n, int32_t bs, float subtract, const Code256 & code,
                        uint8_t * q, float * absmax, unsigned long long * first_bad, int sm_count, cudaStream_t s) {
    const int64_t nb = ceil_div(n, bs);
    const unsigned grid = grid_for(nb, kWarps, sm_count);
    if (subtract != 0.0f) {
        QLORA_LAUNCH(grid, kThreads, s, q8_quantize_kernel<QLORA_DTYPE_F32, true>)(x, n, bs, nb, subtract, code, q,
                                                                                   absmax, first_bad);
        return;
    }
    switch (dtype) {
        case QLORA_DTYPE_F16:
            QLORA_LAUNCH(grid, kThreads, s, q8_quantize_kernel<QLORA_DTYPE_F16, false>)(x, n, bs, nb, 0.0f, code, q,
                                                                                        absmax, first_bad);
            break;
        case QLORA_DTYPE_BF16:
            QLORA_LAUNCH(grid, kThreads, s, q8_quantize_kernel<QLORA_DTYPE_BF16, false>)(x, n, bs, nb, 0.0f, code, q,
                                                                                         absmax, first_bad);
            break;
        default:
            QLORA_LAUNCH(grid, kThreads, s, q8_quantize_kernel<QLORA_DTYPE_F32, false>)(x, n, bs, nb, 0.0f, code, q,
                                                                                        absmax, first_bad);
            break;
    }
}

void launch_q8_dequantize(const uint8_t * q, const float * absmax, int64_t n, int32_t bs, const Code256 & code,
                          void * out, qlora_dtype dtype, int sm_count, cudaStream_t s) {
    const unsigned grid = grid_for(n, kThreads, sm_count);
    const int l = log2i(bs);
    switch (dtype) {
        case QLORA_DTYPE_F16:
            QLORA_LAUNCH(grid, kThreads, s, q8_dequantize_kernel<QLORA_DTYPE_F16>)(q, absmax, n, l, code, out);
            break;
        case QLORA_DTYPE_BF16:
            QLORA_LAUNCH(grid, kThreads, s, q8_dequantize_kernel<QLORA_DTYPE_BF16>)(q, absmax, n, l, code, out);
            break;
        default: QLORA_LAUNCH(grid, kThreads, s, q8_dequantize_kernel<QLORA_DTYPE_F32>)(q, absmax, n, l, code, out); break;
    }
}

void launch_q4_dequantize(const Q4Dev & w, const Code16 & code, const Code256 & ncode, int64_t e0, int64_t count,
                          void * out, qlora_dtype dtype, int sm_count, cudaStream_t s) {
    const bool dq = w.dq != 0;
    switch (dtype) {
        case QLORA_DTYPE_F16:
            if (dq) q4_dequantize_t<QLORA_DTYPE_F16, true>(w, code, ncode, e0, count, out, sm_count, s);
            else q4_dequantize_t<QLORA_DTYPE_F16, false>(w, code, ncode, e0, count, out, sm_count, s);
            break;
        case QLORA_DTYPE_BF16:
            if (dq) q4_dequantize_t<QLORA_DTYPE_BF16, true>(w, code, ncode, e0, count, out, sm_count, s);
            else q4_dequantize_t<QLORA_DTYPE_BF16, false>(w, code, ncode, e0, count, out, sm_count, s);
            break;
        default:
            if (dq) q4_dequantize_t<QLORA_DTYPE_F32, true>(w, code, ncode, e0, count, out, sm_count, s);
            else q4_dequantize_t<QLORA_DTYPE_F32, false>(w, code, ncode, e0, count, out, sm_count, s);
            break;
    }
}

} // namespace qlora::cuda

namespace qlora::cuda {

namespace {
template <int DT>
__global__ void __launch_bounds__(kThreads)
find_nonfinite_kernel(const void * __restrict__ x, int64_t n, unsigned long long * first_bad) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
        if (!is_finite(load_elem<DT>(x, i))) atomicMin(first_bad, static_cast<unsigned long long>(i));
}
} // namespace

void launch_find_nonfinite(const void * x, qlora_dtype dtype, int64_t n, unsigned long long * first_bad, int sm_count,
                           cudaStream_t s) {
    const unsigned grid = grid_for(n, kThreads, sm_count);
    switch (dtype) {
        case QLORA_DTYPE_F16: QLORA_LAUNCH(grid, kThreads, s, find_nonfinite_kernel<QLORA_DTYPE_F16>)(x, n, first_bad); break;
        case QLORA_DTYPE_BF16: QLORA_LAUNCH(grid, kThreads, s, find_nonfinite_kernel<QLORA_DTYPE_BF16>)(x, n, first_bad); break;
        default: QLORA_LAUNCH(grid, kThreads, s, find_nonfinite_kernel<QLORA_DTYPE_F32>)(x, n, first_bad); break;
    }
}

} // namespace qlora::cuda
