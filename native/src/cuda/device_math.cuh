// Element conversions and the bitsandbytes quantizers for device code, each a
// restatement of the host version it names (core/half.hpp, quant/tables.hpp)
// with the same IEEE operations in the same order. The .cu files are compiled
// with -fmad=false, so a * b + c rounds twice here exactly as on the host
// (built with -ffp-contract=off); kernels call fmaf() where they mean to fuse.
#pragma once

#include <cuda_runtime.h>
#if !defined(QLORA_CUDA_EMULATED)
#include <cuda_fp16.h>
#endif

#include <cstdint>
#include <cstring>

#include "qlora.h"

#define QLORA_HD __host__ __device__ __forceinline__

namespace qlora::cuda {

QLORA_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}
QLORA_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

QLORA_HD float bf16_to_f32(uint16_t h) { return f32_from_bits(static_cast<uint32_t>(h) << 16); }

// f32_to_bf16 of core/half.hpp: round to nearest even, NaN stays a quiet NaN.
QLORA_HD uint16_t f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

// f16_to_f32 / f32_to_f16 of core/half.hpp (exact; RNE, overflow to inf).
QLORA_HD float f16_to_f32_bits(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0) return f32_from_bits(sign);
        int e = -1;
        do {
            ++e;
            mant <<= 1;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        return f32_from_bits(sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13));
    }
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

QLORA_HD uint16_t f32_to_f16_bits(float f) {
    const uint32_t u = f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((au >> 13) & 0x3ffu));
    if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
    if (au < 0x38800000u) {
        if (au < 0x33000000u) return static_cast<uint16_t>(sign);
        const uint32_t e = au >> 23;
        const uint32_t m = (au & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return static_cast<uint16_t>(sign | r);
    }
    uint32_t r = au - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
}

// The hardware conversions are exact too (IEEE round to nearest even, fp16
// subnormals kept); only a NaN's payload differs, so NaN takes the bit path.
__device__ __forceinline__ float f16_to_f32(uint16_t h) {
#if defined(QLORA_CUDA_EMULATED)
    return f16_to_f32_bits(h);
#else
    return __half2float(__ushort_as_half(h));
#endif
}

__device__ __forceinline__ uint16_t f32_to_f16(float f) {
#if defined(QLORA_CUDA_EMULATED)
    return f32_to_f16_bits(f);
#else
    if (f != f) return f32_to_f16_bits(f);
    return __half_as_ushort(__float2half_rn(f));
#endif
}

template <int DT>
__device__ __forceinline__ float load_elem(const void * p, int64_t i) {
    if constexpr (DT == QLORA_DTYPE_BF16) return bf16_to_f32(static_cast<const uint16_t *>(p)[i]);
    else if constexpr (DT == QLORA_DTYPE_F16) return f16_to_f32(static_cast<const uint16_t *>(p)[i]);
    else return static_cast<const float *>(p)[i];
}

template <int DT>
__device__ __forceinline__ void store_elem(void * p, int64_t i, float v) {
    if constexpr (DT == QLORA_DTYPE_BF16) static_cast<uint16_t *>(p)[i] = f32_to_bf16(v);
    else if constexpr (DT == QLORA_DTYPE_F16) static_cast<uint16_t *>(p)[i] = f32_to_f16(v);
    else static_cast<float *>(p)[i] = v;
}

template <int DT>
__device__ __forceinline__ uint16_t to_16(float v) {
    if constexpr (DT == QLORA_DTYPE_BF16) return f32_to_bf16(v);
    else return f32_to_f16(v);
}

QLORA_HD bool is_finite(float v) { return (f32_bits(v) & 0x7f800000u) != 0x7f800000u; }

// 1/absmax, or 0 for an all-zero block (ref::reciprocal).
QLORA_HD float reciprocal(float absmax) { return absmax > 0.0f ? 1.0f / absmax : 0.0f; }

// quantize_nf4: how many of the 15 thresholds x exceeds.
QLORA_HD uint8_t quantize_nf4(const float * t, float x) {
    uint8_t c = 0;
#pragma unroll
    for (int i = 0; i < 15; ++i) c += x > t[i] ? 1 : 0;
    return c;
}

// quantize_fp4: bitsandbytes' decision tree over its 7 literals.
QLORA_HD uint8_t quantize_fp4(const float * t, float x) {
    const uint8_t sign = x < 0.0f ? 0x8 : 0x0;
    const float a = x < 0.0f ? -x : x;
    uint8_t c;
    if (a > t[3]) {
        if (a > t[5]) c = a > t[6] ? 0x3 : 0x2;
        else c = a > t[4] ? 0x5 : 0x4;
    } else {
        if (a > t[1]) c = a > t[2] ? 0x7 : 0x6;
        else c = a > t[0] ? 0x1 : 0x0;
    }
    return static_cast<uint8_t>(c + sign);
}

QLORA_HD float round_half_even(float r) {
    float t = truncf(r);
    const float d = fabsf(r - t);
    if (d > 0.5f || (d == 0.5f && (static_cast<int>(t) & 1) != 0)) t += r < 0.0f ? -1.0f : 1.0f;
    return t;
}

// quantize_int4: clamp(round_half_even(x * 7), -7, 7) + 8.
QLORA_HD uint8_t quantize_int4(float x) {
    float r = x * 7.0f;
    r = r >= -7.0f ? r : -7.0f;
    r = r <= 7.0f ? r : 7.0f;
    return static_cast<uint8_t>(static_cast<int>(round_half_even(r)) + 8);
}

// quantize_dynamic: bitsandbytes' dQuantize on a 256-entry map.
QLORA_HD uint8_t quantize_dynamic(const float * code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        const float midpoint = (upper + val) * 0.5f;
        return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
    }
    const float midpoint = (lower + val) * 0.5f;
    return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

QLORA_HD int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }
QLORA_HD int64_t imax64(int64_t a, int64_t b) { return a > b ? a : b; }
QLORA_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

} // namespace qlora::cuda

// Kernel launches: `<<<grid, block, 0, stream>>>` on a GPU, the emulator's
// launcher elsewhere (tools/cuda-emu). QLORA_LAUNCH(grid, block, stream, kernel<...>)(args...).
#if defined(QLORA_CUDA_EMULATED)
#define QLORA_LAUNCH(grid, block, stream, ...) ::qlora_emu::launch(grid, block, 0, stream, __VA_ARGS__)
#else
#define QLORA_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

namespace qlora::cuda {

// Blocks for a grid-stride loop over `items` with `per_block` items per
// block pass: enough to fill the device, never more than the work needs.
inline unsigned grid_for(int64_t items, int64_t per_block, int sm_count, int per_sm = 16) {
    const int64_t need = ceil_div(items < 1 ? 1 : items, per_block);
    const int64_t cap = static_cast<int64_t>(sm_count) * per_sm;
    return static_cast<unsigned>(need < cap ? need : cap);
}

// The fp32 scale of block b (qlora_q4_tensor::block_scale): DQ decodes with
// two roundings, multiply then add. ncode is the nested map in shared memory.
template <bool DQ, typename W>
__device__ __forceinline__ float block_scale(const W & w, const float * ncode, int64_t b) {
    if constexpr (DQ) {
        const float s = ncode[w.qabsmax[b]] * w.nested_absmax[b >> w.nested_log2];
        return s + w.nested_offset;
    } else {
        return w.absmax[b];
    }
}

// A 4-bit kernel's tables in shared memory: s_code (the 16 codes) and, with
// double quantization (template parameter DQ), s_ncode (the nested 8-bit map),
// from the Code16 `code` and Code256 `ncode` parameters. Declares both arrays.
#define QLORA_LOAD_TABLES()                                                              \
    __shared__ float s_code[16];                                                         \
    __shared__ float s_ncode[256];                                                       \
    if (threadIdx.x < 16) s_code[threadIdx.x] = code.v[threadIdx.x];                     \
    if constexpr (DQ)                                                                    \
        for (int i_ = threadIdx.x; i_ < 256; i_ += blockDim.x) s_ncode[i_] = ncode.v[i_]; \
    __syncthreads()

} // namespace qlora::cuda
