// The object behind qlora_q4_tensor_t: a 4-bit matrix in bitsandbytes' layout.
#pragma once

#include "core/buffer.hpp"
#include "core/device_buffer.hpp"
#include "qlora.h"

#include <cstdint>
#include <cstring>

struct qlora_q4_tensor {
    int64_t          rows = 0, cols = 0;
    qlora_quant_type quant_type = QLORA_QUANT_NF4;
    int32_t          blocksize = 64;
    bool             double_quant = true;
    int32_t          nested_blocksize = 256;
    qlora_dtype      orig_dtype = QLORA_DTYPE_F32;
    int32_t          device = QLORA_DEVICE_HOST;

    qlora::HostArray<uint8_t> packed;        // (numel + 1) / 2 bytes, high nibble first
    qlora::HostArray<float>   absmax;        // n_blocks, without double quant
    qlora::HostArray<uint8_t> qabsmax;       // n_blocks, with double quant
    qlora::HostArray<float>   nested_absmax; // n_nested_blocks, with double quant
    float                     nested_offset = 0.0f;
    float                     code[16] = {};
    float                     nested_code[256] = {};

    // A device tensor (device != QLORA_DEVICE_HOST) keeps packed / absmax /
    // qabsmax / nested_absmax in one allocation on that device, addressed by
    // the d_* pointers (src/cuda/q4_cuda.cpp); the host arrays above are then
    // empty. code and nested_code always stay here (kernels take them by value).
    qlora::DeviceBuffer device_storage;
    uint8_t *           d_packed = nullptr;
    float *             d_absmax = nullptr;
    uint8_t *           d_qabsmax = nullptr;
    float *             d_nested_absmax = nullptr;

    int64_t numel() const { return rows * cols; }
    int64_t n_blocks() const { return (numel() + blocksize - 1) / blocksize; }
    int64_t n_nested_blocks() const {
        return double_quant ? (n_blocks() + nested_blocksize - 1) / nested_blocksize : 0;
    }
    int64_t packed_bytes() const { return (numel() + 1) / 2; }
    int64_t storage_bytes() const {
        return packed_bytes() +
               (double_quant ? n_blocks() + 4 * n_nested_blocks() + 4 : 4 * n_blocks());
    }
    // fp32 scale of block b (decodes the double-quantized absmax: two fp32
    // roundings, multiply then add, as bitsandbytes does).
    float block_scale(int64_t b) const {
        if (!double_quant) return absmax[static_cast<size_t>(b)];
        const float s = nested_code[qabsmax[static_cast<size_t>(b)]] *
                        nested_absmax[static_cast<size_t>(b / nested_blocksize)];
        return s + nested_offset;
    }
    // The bits of nested_code in 16-bit halves: words[i] the low half of
    // nested_code[i], words[256 + i] the high half (the AVX-512 kernels look
    // DQ scales up in these, cpu/dq_lookup_avx512.hpp).
    void split_nested_code(uint16_t * words) const {
        for (int i = 0; i < 256; ++i) {
            uint32_t u;
            std::memcpy(&u, nested_code + i, sizeof u);
            words[i] = static_cast<uint16_t>(u);
            words[256 + i] = static_cast<uint16_t>(u >> 16);
        }
    }
};

namespace qlora {
qlora_q4_tensor & checked(qlora_q4_tensor_t t);
// Checks a blocksize argument: a power of two in [32, 4096].
void check_blocksize(int32_t blocksize, const char * name);
} // namespace qlora
