// Fused 4-bit matmul kernels (semantics: quant/matmul.hpp): a gemv family
// for M <= 8 that streams W once, and a tiled SIMT kernel for any shape that
// decodes W tiles into shared memory. Weights are decoded exactly as the
// dequantizer does (code[q] * block scale in fp32); products accumulate in
// fp32 with explicit fmaf.
#include "cuda/device_math.cuh"
#include "cuda/kernels.hpp"

namespace qlora::cuda {

namespace {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void store_y(void * y, qlora_dtype dt, int64_t i, float v) {
    if (dt == QLORA_DTYPE_BF16) store_elem<QLORA_DTYPE_BF16>(y, i, v);
    else if (dt == QLORA_DTYPE_F16) store_elem<QLORA_DTYPE_F16>(y, i, v);
    else store_elem<QLORA_DTYPE_F32>(y, i, v);
}

__device__ __forceinline__ float load_y(const void * y, qlora_dtype dt, int64_t i) {
    if (dt == QLORA_DTYPE_BF16) return load_elem<QLORA_DTYPE_BF16>(y, i);
    if (dt == QLORA_DTYPE_F16) return load_elem<QLORA_DTYPE_F16>(y, i);
    return load_elem<QLORA_DTYPE_F32>(y, i);
}

// y[i] = alpha * acc + beta * y[i] (beta == 0: y is not read).
__device__ __forceinline__ void epilogue(const MatmulDev & a, int64_t i, float acc) {
    float v = a.alpha * acc;
    if (a.beta != 0.0f) v = v + a.beta * load_y(a.y, a.y_dtype, i);
    store_y(a.y, a.y_dtype, i, v);
}

// Eight consecutive x values starting at element `off` (vector loads when `vec`:
// x 16-byte aligned and every row start too).
template <int XT>
__device__ __forceinline__ void load8(const void * x, int64_t off, bool vec, float * out) {
    if constexpr (XT == QLORA_DTYPE_F32) {
        if (vec) {
            const float4 a = *reinterpret_cast<const float4 *>(static_cast<const float *>(x) + off);
            const float4 b = *reinterpret_cast<const float4 *>(static_cast<const float *>(x) + off + 4);
            out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
            out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
            return;
        }
    } else {
        if (vec) {
            const uint4 u = *reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(x) + off);
            const uint32_t h[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if constexpr (XT == QLORA_DTYPE_BF16) {
                    out[2 * j] = bf16_to_f32(static_cast<uint16_t>(h[j] & 0xffffu));
                    out[2 * j + 1] = bf16_to_f32(static_cast<uint16_t>(h[j] >> 16));
                } else {
                    out[2 * j] = f16_to_f32(static_cast<uint16_t>(h[j] & 0xffffu));
                    out[2 * j + 1] = f16_to_f32(static_cast<uint16_t>(h[j] >> 16));
                }
            }
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = load_elem<XT>(x, off + j);
}

// The 8 weights of 4 packed bytes (even element in the high nibble), times `scale`.
__device__ __forceinline__ void decode8(uint32_t bytes, const float * code, float scale, float * w) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t b = (bytes >> (8 * j)) & 0xffu;
        w[2 * j] = code[b >> 4] * scale;
        w[2 * j + 1] = code[b & 0xfu] * scale;
    }
}

constexpr int kGemvRows = 4;       // rows of W per warp (forward)
constexpr int kGemvFwdThreads = 128;
constexpr int kGemvBwdThreads = 256;
constexpr int kGemvBwdCols = 256;  // columns of W per block (backward): 8 per lane

// Forward, M <= MT <= 8, K % 8 == 0: each warp owns 4 rows of W; each lane
// takes 8 consecutive k (4 packed bytes per row) per step of 256, keeps its
// x values in registers for the 4 rows, and the warp sums at the end.
template <int MT, int XT, bool DQ>
__global__ void __launch_bounds__(kGemvFwdThreads)
gemv_fwd_kernel(MatmulDev a, Q4Dev w, Code16 code, Code256 ncode, int xvec) {
    QLORA_LOAD_TABLES();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * (kGemvFwdThreads / 32) + warp) * kGemvRows;
    if (n0 >= a.N) return;
    const int M = static_cast<int>(a.M);
    const int64_t K = a.K;
    float acc[kGemvRows][MT];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
    for (int64_t k0 = lane * 8; k0 < K; k0 += 256) {
        float xv[MT][8];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < M) load8<XT>(a.x, m * a.ldx + k0, xvec != 0, xv[m]);
            else
#pragma unroll
                for (int j = 0; j < 8; ++j) xv[m][j] = 0.0f;
        }
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r) {
            const int64_t n = n0 + r;
            if (n >= a.N) break;
            const int64_t i = n * K + k0;
            const uint32_t bytes = *reinterpret_cast<const uint32_t *>(w.packed + (i >> 1));
            float wv[8];
            decode8(bytes, s_code, block_scale<DQ>(w, s_ncode, i >> w.log2b), wv);
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[r][m] = fmaf(xv[m][j], wv[j], acc[r][m]);
        }
    }
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const float s = warp_sum(acc[r][m]);
            if (lane == r * MT + m && n0 + r < a.N && m < M) epilogue(a, m * a.ldy + n0 + r, s);
        }
}

constexpr int kWideRows = 4;    // rows of W per block (forward, K % 32 == 0)
constexpr int kWideWarps = 4;   // warps per block; they split K
constexpr int kWideStep = 1024; // k per warp step: 32 lanes x 32 weights (16 packed bytes each)

// Forward, M <= MT <= 8, K % 32 == 0 (the usual case): block b owns rows
// [4b, 4b + 4); its 4 warps take interleaved steps of 1024 k, each lane 32
// consecutive k per step: one 16-byte load per row (a whole 32-element group
// shares one block scale, blocksize >= 32), the x values of each 8-element
// quarter loaded once for the 4 rows. So a warp has 2 KB of W in flight per
// step and N / 4 x 4 warps cover the GPU (the narrow kernel above has 512 B per
// warp and N / 4 warps). The warps' sums meet in shared memory in warp order:
// deterministic.
template <int MT, int XT, bool DQ>
__global__ void __launch_bounds__(kWideWarps * 32)
gemv_fwd_wide_kernel(MatmulDev a, Q4Dev w, Code16 code, Code256 ncode, int xvec) {
    QLORA_LOAD_TABLES();
    __shared__ float s_part[kWideWarps][kWideRows][MT];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kWideRows;
    const int rows = static_cast<int>(imin64(kWideRows, a.N - n0));
    const int M = static_cast<int>(a.M);
    const int64_t K = a.K;
    float acc[kWideRows][MT];
#pragma unroll
    for (int r = 0; r < kWideRows; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) acc[r][m] = 0.0f;
    for (int64_t k0 = static_cast<int64_t>(warp) * kWideStep + lane * 32; k0 < K; k0 += kWideWarps * kWideStep) {
        uint32_t q[kWideRows][4];
        float sc[kWideRows];
#pragma unroll
        for (int r = 0; r < kWideRows; ++r) {
            if (r < rows) {
                const int64_t i = (n0 + r) * K + k0;
                const uint4 v = *reinterpret_cast<const uint4 *>(w.packed + (i >> 1));
                q[r][0] = v.x, q[r][1] = v.y, q[r][2] = v.z, q[r][3] = v.w;
                sc[r] = block_scale<DQ>(w, s_ncode, i >> w.log2b);
            } else {
                q[r][0] = q[r][1] = q[r][2] = q[r][3] = 0u;
                sc[r] = 0.0f;
            }
        }
#pragma unroll
        for (int g = 0; g < 4; ++g) {
            float xv[MT][8];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < M) load8<XT>(a.x, m * a.ldx + k0 + 8 * g, xvec != 0, xv[m]);
                else
#pragma unroll
                    for (int j = 0; j < 8; ++j) xv[m][j] = 0.0f;
            }
#pragma unroll
            for (int r = 0; r < kWideRows; ++r) {
                float wv[8];
                decode8(q[r][g], s_code, sc[r], wv);
#pragma unroll
                for (int m = 0; m < MT; ++m)
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[r][m] = fmaf(xv[m][j], wv[j], acc[r][m]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < kWideRows; ++r)
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const float s = warp_sum(acc[r][m]);
            if (lane == 0) s_part[warp][r][m] = s;
        }
    __syncthreads();
    if (threadIdx.x < kWideRows * MT) {
        const int r = static_cast<int>(threadIdx.x) / MT, m = static_cast<int>(threadIdx.x) % MT;
        if (r < rows && m < M) {
            float v = 0.0f;
#pragma unroll
            for (int k = 0; k < kWideWarps; ++k) v += s_part[k][r][m];
            epilogue(a, m * a.ldy + n0 + r, v);
        }
    }
}

// Backward, M <= MT <= 8, K % 8 == 0: block (bx, s) owns columns
// [256 bx, 256 bx + 256) of W and rows [s * rows_per_split, ...); its 8 warps
// take interleaved rows, each lane 8 consecutive columns; the warps' sums meet
// in shared memory in warp order, then go to y (one split) or to
// partial[s][m][k] for gemv_reduce_kernel.
template <int MT, int XT, bool DQ>
__global__ void __launch_bounds__(kGemvBwdThreads)
gemv_bwd_kernel(MatmulDev a, Q4Dev w, Code16 code, Code256 ncode, int64_t rows_per_split, float * partial) {
    QLORA_LOAD_TABLES();
    __shared__ float s_red[MT][kGemvBwdCols];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int M = static_cast<int>(a.M);
    const int64_t K = a.K;
    const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kGemvBwdCols + lane * 8;
    const int64_t nb = static_cast<int64_t>(blockIdx.y) * rows_per_split;
    const int64_t ne = imin64(a.N, nb + rows_per_split);
    float acc[MT][8];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[m][j] = 0.0f;
    if (k0 < K) {
        // U rows per pass, their loads issued before any use (the same order of sums as one row at a time):
        // one row per pass leaves a warp waiting a full memory latency per 128 bytes. Measured on an H200
        // (docs/cuda.md): U = 8 gave +10..35 % at M = 1 and 4 but -10..20 % at M = 8 (64 accumulators per
        // lane already), so M = 8 keeps one row per pass.
        constexpr int WS = kGemvBwdThreads / 32, U = MT >= 8 ? 1 : 8;
        int64_t n = nb + warp;
        for (; n + (U - 1) * WS < ne; n += U * WS) {
            uint32_t bytes[U];
            float sc[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int64_t i = (n + u * WS) * K + k0;
                bytes[u] = *reinterpret_cast<const uint32_t *>(w.packed + (i >> 1));
                sc[u] = block_scale<DQ>(w, s_ncode, i >> w.log2b);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float wv[8];
                decode8(bytes[u], s_code, sc[u], wv);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    const float xv = m < M ? load_elem<XT>(a.x, m * a.ldx + n + u * WS) : 0.0f;
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[m][j] = fmaf(xv, wv[j], acc[m][j]);
                }
            }
        }
        for (; n < ne; n += WS) {
            const int64_t i = n * K + k0;
            const uint32_t bytes = *reinterpret_cast<const uint32_t *>(w.packed + (i >> 1));
            float wv[8];
            decode8(bytes, s_code, block_scale<DQ>(w, s_ncode, i >> w.log2b), wv);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const float xv = m < M ? load_elem<XT>(a.x, m * a.ldx + n) : 0.0f;
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[m][j] = fmaf(xv, wv[j], acc[m][j]);
            }
        }
    }
    for (int wv = 0; wv < kGemvBwdThreads / 32; ++wv) {
        if (warp == wv)
#pragma unroll
            for (int m = 0; m < MT; ++m)
#pragma unroll
                for (int j = 0; j < 8; ++j)
                    s_red[m][lane * 8 + j] = wv == 0 ? acc[m][j] : s_red[m][lane * 8 + j] + acc[m][j];
        __syncthreads();
    }
    const int64_t k = static_cast<int64_t>(blockIdx.x) * kGemvBwdCols + threadIdx.x;
    if (k >= K) return;
    for (int m = 0; m < M; ++m) {
        if (gridDim.y == 1) epilogue(a, m * a.ldy + k, s_red[m][threadIdx.x]);
        else partial[(static_cast<int64_t>(blockIdx.y) * M + m) * K + k] = s_red[m][threadIdx.x];
    }
}

// y[m, k] = alpha * sum over s (in order) of partial[s][m][k] + beta * y[m, k].
__global__ void __launch_bounds__(256) gemv_reduce_kernel(MatmulDev a, const float * partial, int64_t splits) {
    const int64_t total = a.M * a.K;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * 256;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; e < total; e += stride) {
        const int64_t m = e / a.K, k = e % a.K;
        float s = 0.0f;
        for (int64_t sp = 0; sp < splits; ++sp) s += partial[(sp * a.M + m) * a.K + k];
        epilogue(a, m * a.ldy + k, s);
    }
}

constexpr int kBM = 64, kBN = 64, kBK = 32;

// W[n, k] (flat index i) as the dequantizer computes it.
template <bool DQ>
__device__ __forceinline__ float weight_at(const Q4Dev & w, const float * code, const float * ncode, int64_t i,
                                           int64_t & last_block, float & scale) {
    const int64_t b = i >> w.log2b;
    if (b != last_block) {
        scale = block_scale<DQ>(w, ncode, b);
        last_block = b;
    }
    const uint8_t byte = w.packed[i >> 1];
    return code[(i & 1) ? (byte & 0xf) : (byte >> 4)] * scale;
}

// Any shape: 64 x 64 output tiles, 256 threads with 4 x 4 outputs each; per
// step of 32 along the reduction, x and the decoded W tile go to shared memory.
template <int XT, bool DQ, bool FWD>
__global__ void __launch_bounds__(256) fused_kernel(MatmulDev a, Q4Dev w, Code16 code, Code256 ncode) {
    QLORA_LOAD_TABLES();
    __shared__ __align__(16) float As[kBK][kBM + 4];
    __shared__ __align__(16) float Bs[kBK][kBN + 4];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int64_t M = a.M, N = a.N, K = a.K;
    const int64_t red = FWD ? K : N, cols = FWD ? N : K;
    const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kBN;
    const int64_t m_tiles = ceil_div(M, kBM);
    for (int64_t mt = blockIdx.y; mt < m_tiles; mt += gridDim.y) {
        const int64_t m0 = mt * kBM;
        float acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
        for (int64_t r0 = 0; r0 < red; r0 += kBK) {
            {   // x tile, transposed: As[r][m] = x[m0 + m][r0 + r]
                const int mm = tid >> 2, rr = (tid & 3) * 8;
                const int64_t gm = m0 + mm;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int64_t gr = r0 + rr + j;
                    As[rr + j][mm] = gm < M && gr < red ? load_elem<XT>(a.x, gm * a.ldx + gr) : 0.0f;
                }
            }
            int64_t last_block = -1;
            float scale = 0.0f;
            if constexpr (FWD) { // Bs[r][c] = W[c0 + c][r0 + r]
                const int cc = tid >> 2, rr = (tid & 3) * 8;
                const int64_t n = c0 + cc;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int64_t k = r0 + rr + j;
                    Bs[rr + j][cc] = n < N && k < K ? weight_at<DQ>(w, s_code, s_ncode, n * K + k, last_block, scale) : 0.0f;
                }
            } else { // Bs[r][c] = W[r0 + r][c0 + c]
                const int rr = tid >> 3, cc = (tid & 7) * 8;
                const int64_t n = r0 + rr;
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    const int64_t k = c0 + cc + j;
                    Bs[rr][cc + j] = n < N && k < K ? weight_at<DQ>(w, s_code, s_ncode, n * K + k, last_block, scale) : 0.0f;
                }
            }
            __syncthreads();
#pragma unroll 8
            for (int r = 0; r < kBK; ++r) {
                const float4 av = *reinterpret_cast<const float4 *>(&As[r][ty * 4]);
                const float4 bv = *reinterpret_cast<const float4 *>(&Bs[r][tx * 4]);
                const float ai[4] = {av.x, av.y, av.z, av.w};
                const float bj[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ai[i], bj[j], acc[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int64_t m = m0 + ty * 4 + i, c = c0 + tx * 4 + j;
                if (m < M && c < cols) epilogue(a, m * a.ldy + c, acc[i][j]);
            }
    }
}

__global__ void __launch_bounds__(256) epilogue_kernel(const float * acc, MatmulDev a, int64_t cols) {
    const int64_t total = a.M * cols;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * 256;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; e < total; e += stride)
        epilogue(a, (e / cols) * a.ldy + e % cols, acc[e]);
}

__global__ void __launch_bounds__(256)
scale_kernel(void * y, qlora_dtype dt, int64_t rows, int64_t cols, int64_t ldy, float beta) {
    const int64_t total = rows * cols;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * 256;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x; e < total; e += stride) {
        const int64_t i = (e / cols) * ldy + e % cols;
        store_y(y, dt, i, beta == 0.0f ? 0.0f : beta * load_y(y, dt, i));
    }
}

int64_t bwd_splits(const MatmulDev & a, int sm_count) {
    const int64_t col_blocks = ceil_div(a.K, kGemvBwdCols);
    int64_t s = ceil_div(2 * static_cast<int64_t>(sm_count), col_blocks);
    s = imin64(s, ceil_div(a.N, 16)); // at least 16 rows per split
    return imax64(1, s);
}

template <int MT, int XT, bool DQ>
void gemv_t(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode, float * partial,
            int sms, cudaStream_t s) {
    if (a.op == QLORA_MATMUL_FORWARD) {
        const size_t es = XT == QLORA_DTYPE_F32 ? 4 : 2;
        const int xvec = reinterpret_cast<uintptr_t>(a.x) % 16 == 0 && (a.ldx * static_cast<int64_t>(es)) % 16 == 0;
        if (a.K % 32 == 0 && reinterpret_cast<uintptr_t>(w.packed) % 16 == 0) {
            QLORA_LAUNCH(static_cast<unsigned>(ceil_div(a.N, kWideRows)), kWideWarps * 32, s,
                         gemv_fwd_wide_kernel<MT, XT, DQ>)(a, w, code, ncode, xvec);
            return;
        }
        const int64_t rows_per_block = (kGemvFwdThreads / 32) * kGemvRows;
        QLORA_LAUNCH(static_cast<unsigned>(ceil_div(a.N, rows_per_block)), kGemvFwdThreads, s,
                     gemv_fwd_kernel<MT, XT, DQ>)(a, w, code, ncode, xvec);
        return;
    }
    const int64_t splits = bwd_splits(a, sms);
    const int64_t rows = ceil_div(a.N, splits);
    const int64_t used = ceil_div(a.N, rows); // splits that get rows
    QLORA_LAUNCH(dim3(static_cast<unsigned>(ceil_div(a.K, kGemvBwdCols)), static_cast<unsigned>(used)), kGemvBwdThreads,
                 s, gemv_bwd_kernel<MT, XT, DQ>)(a, w, code, ncode, rows, partial);
    if (used > 1)
        QLORA_LAUNCH(grid_for(a.M * a.K, 256, sms), 256, s, gemv_reduce_kernel)(a, static_cast<const float *>(partial),
                                                                                used);
}

template <int XT, bool DQ>
void gemv_m(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode, float * partial, int sms,
            cudaStream_t s) {
    if (a.M <= 1) gemv_t<1, XT, DQ>(a, w, code, ncode, partial, sms, s);
    else if (a.M <= 2) gemv_t<2, XT, DQ>(a, w, code, ncode, partial, sms, s);
    else if (a.M <= 4) gemv_t<4, XT, DQ>(a, w, code, ncode, partial, sms, s);
    else gemv_t<8, XT, DQ>(a, w, code, ncode, partial, sms, s);
}

template <int XT, bool DQ>
void fused_t(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode, cudaStream_t s) {
    const int64_t cols = a.op == QLORA_MATMUL_FORWARD ? a.N : a.K;
    const dim3 grid(static_cast<unsigned>(ceil_div(cols, kBN)),
                    static_cast<unsigned>(imin64(ceil_div(a.M, kBM), 65535)));
    if (a.op == QLORA_MATMUL_FORWARD)
        QLORA_LAUNCH(grid, 256, s, fused_kernel<XT, DQ, true>)(a, w, code, ncode);
    else
        QLORA_LAUNCH(grid, 256, s, fused_kernel<XT, DQ, false>)(a, w, code, ncode);
}

} // namespace

int64_t gemv_partial_floats(const MatmulDev & a, int sm_count) {
    if (a.op == QLORA_MATMUL_FORWARD) return 0;
    const int64_t splits = bwd_splits(a, sm_count);
    const int64_t used = ceil_div(a.N, ceil_div(a.N, splits));
    return used > 1 ? used * a.M * a.K : 0;
}

void launch_gemv(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode, float * partial,
                 int sm_count, cudaStream_t s) {
    const bool dq = w.dq != 0;
    switch (a.x_dtype) {
        case QLORA_DTYPE_BF16:
            if (dq) gemv_m<QLORA_DTYPE_BF16, true>(a, w, code, ncode, partial, sm_count, s);
            else gemv_m<QLORA_DTYPE_BF16, false>(a, w, code, ncode, partial, sm_count, s);
            break;
        case QLORA_DTYPE_F16:
            if (dq) gemv_m<QLORA_DTYPE_F16, true>(a, w, code, ncode, partial, sm_count, s);
            else gemv_m<QLORA_DTYPE_F16, false>(a, w, code, ncode, partial, sm_count, s);
            break;
        default:
            if (dq) gemv_m<QLORA_DTYPE_F32, true>(a, w, code, ncode, partial, sm_count, s);
            else gemv_m<QLORA_DTYPE_F32, false>(a, w, code, ncode, partial, sm_count, s);
            break;
    }
}

void launch_fused_matmul(const MatmulDev & a, const Q4Dev & w, const Code16 & code, const Code256 & ncode,
                         cudaStream_t s) {
    const bool dq = w.dq != 0;
    switch (a.x_dtype) {
        case QLORA_DTYPE_BF16:
            if (dq) fused_t<QLORA_DTYPE_BF16, true>(a, w, code, ncode, s);
            else fused_t<QLORA_DTYPE_BF16, false>(a, w, code, ncode, s);
            break;
        case QLORA_DTYPE_F16:
            if (dq) fused_t<QLORA_DTYPE_F16, true>(a, w, code, ncode, s);
            else fused_t<QLORA_DTYPE_F16, false>(a, w, code, ncode, s);
            break;
        default:
            if (dq) fused_t<QLORA_DTYPE_F32, true>(a, w, code, ncode, s);
            else fused_t<QLORA_DTYPE_F32, false>(a, w, code, ncode, s);
            break;
    }
}

void launch_epilogue(const float * acc, const MatmulDev & a, int64_t cols, int sm_count, cudaStream_t s) {
    QLORA_LAUNCH(grid_for(a.M * cols, 256, sm_count), 256, s, epilogue_kernel)(acc, a, cols);
}

void launch_scale(void * y, qlora_dtype dtype, int64_t rows, int64_t cols, int64_t ldy, float beta, int sm_count,
                  cudaStream_t s) {
    QLORA_LAUNCH(grid_for(rows * cols, 256, sm_count), 256, s, scale_kernel)(y, dtype, rows, cols, ldy, beta);
}

} // namespace qlora::cuda
