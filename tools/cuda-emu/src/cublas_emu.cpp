// CPU emulation of cublasGemmEx and the handle calls (see include/cublas_v2.h).
#include "cublas_v2.h"
#include "emu_internal.hpp"

#include <cstring>
#include <vector>

struct cublasContext {
    cudaStream_t stream = nullptr;
};

namespace {

float load(const void * p, cudaDataType_t t, size_t i) {
    uint32_t u = 0;
    switch (t) {
        case CUDA_R_16BF: u = static_cast<uint32_t>(static_cast<const uint16_t *>(p)[i]) << 16; break;
        case CUDA_R_16F: {
            const uint16_t h = static_cast<const uint16_t *>(p)[i];
            const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
            uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
            if (exp == 0) {
                if (mant == 0) { u = sign; break; }
                int e = -1;
                do { ++e; mant <<= 1; } while ((mant & 0x400u) == 0);
                u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
            } else if (exp == 0x1f) {
                u = sign | 0x7f800000u | (mant << 13);
            } else {
                u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
            }
            break;
        }
        default: return static_cast<const float *>(p)[i];
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

uint16_t to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
}

uint16_t to_f16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t sign = (u >> 16) & 0x8000u, au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
    if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
    if (au < 0x38800000u) {
        if (au < 0x33000000u) return static_cast<uint16_t>(sign);
        const uint32_t e = au >> 23, m = (au & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return static_cast<uint16_t>(sign | r);
    }
    uint32_t r = au - 0x38000000u;
    r += 0xfffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
}

void store(void * p, cudaDataType_t t, size_t i, float v) {
    switch (t) {
        case CUDA_R_16BF: static_cast<uint16_t *>(p)[i] = to_bf16(v); break;
        case CUDA_R_16F: static_cast<uint16_t *>(p)[i] = to_f16(v); break;
        default: static_cast<float *>(p)[i] = v; break;
    }
}

bool supported(cudaDataType_t a, cudaDataType_t b, cudaDataType_t c, cublasComputeType_t ct) {
    if (ct != CUBLAS_COMPUTE_32F && ct != CUBLAS_COMPUTE_32F_FAST_TF32) return false;
    if (a != b) return false;
    if (a == CUDA_R_32F) return c == CUDA_R_32F;
    if (a == CUDA_R_16BF) return c == CUDA_R_16BF || c == CUDA_R_32F;
    if (a == CUDA_R_16F) return c == CUDA_R_16F || c == CUDA_R_32F;
    return false;
}

} // namespace

cublasStatus_t cublasCreate(cublasHandle_t * handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError();
        return CUBLAS_STATUS_NOT_INITIALIZED;
    }
    *handle = new cublasContext();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!qlora_emu::valid_stream(stream)) return CUBLAS_STATUS_INVALID_VALUE;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream(cublasHandle_t handle, cudaStream_t * stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t) {
    return handle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                            const void * alpha, const void * A, cudaDataType_t Atype, int lda, const void * B,
                            cudaDataType_t Btype, int ldb, const void * beta, void * C, cudaDataType_t Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || !alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    if (transa == CUBLAS_OP_C || transb == CUBLAS_OP_C) return CUBLAS_STATUS_INVALID_VALUE;
    const int arows = transa == CUBLAS_OP_N ? m : k, brows = transb == CUBLAS_OP_N ? k : n;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!supported(Atype, Btype, Ctype, computeType)) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!qlora_emu::is_device_pointer(C) || (k > 0 && (!qlora_emu::is_device_pointer(A) || !qlora_emu::is_device_pointer(B))))
        return CUBLAS_STATUS_INVALID_VALUE; // a GPU would fault on host pointers
    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
    qlora_emu::enqueue_on(handle->stream, [=]() {
        for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) {
                float acc = 0.0f;
                for (int l = 0; l < k; ++l) {
                    const float av = load(A, Atype, ta ? static_cast<size_t>(i) * lda + l : static_cast<size_t>(l) * lda + i);
                    const float bv = load(B, Btype, tb ? static_cast<size_t>(l) * ldb + j : static_cast<size_t>(j) * ldb + l);
                    acc = std::fma(av, bv, acc);
                }
                const size_t ci = static_cast<size_t>(j) * ldc + i;
                float v = a * acc;
                if (b != 0.0f) v += b * load(C, Ctype, ci);
                store(C, Ctype, ci, v);
            }
    });
    return CUBLAS_STATUS_SUCCESS;
}
