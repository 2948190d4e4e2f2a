// qlora_q4_matmul on a CUDA context: where the data lives, which kernel path
// computes it (gemv / fused tiles / dequantize + cuBLAS), staging of host data.
#include "core/half.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/q4_device.hpp"
#include "quant/matmul.hpp"

#include <algorithm>
#include <climits>

namespace qlora::cuda {

namespace {

MatmulDev dev_args(const MatmulArgs & a) {
    MatmulDev d{};
    d.op = a.op;
    d.M = a.M;
    d.N = a.N;
    d.K = a.K;
    d.x = a.x;
    d.x_dtype = a.x_dtype;
    d.ldx = a.ldx;
    d.y = a.y;
    d.y_dtype = a.y_dtype;
    d.ldy = a.ldy;
    d.alpha = a.alpha;
    d.beta = a.beta;
    return d;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

cudaDataType_t cuda_type(qlora_dtype d) {
    return d == QLORA_DTYPE_BF16 ? CUDA_R_16BF : d == QLORA_DTYPE_F16 ? CUDA_R_16F : CUDA_R_32F;
}

// cublasGemmEx with fp32 compute: A and B share the tile type; C is that type or F32.
bool cublas_combo(qlora_dtype tile, qlora_dtype y) {
    return y == QLORA_DTYPE_F32 || (tile != QLORA_DTYPE_F32 && y == tile);
}

// Tile budget of the cuBLAS path: W rows dequantized per GEMM. Half the L2
// (so the GEMM reads the tile from L2), within [4, 32] MiB.
int64_t tile_budget(const CudaState & st) {
    return std::clamp<int64_t>(st.l2_bytes / 2, int64_t(4) << 20, int64_t(32) << 20);
}

void run_cublas(CudaState & st, const MatmulDev & a, const qlora_q4_tensor & t) {
    const bool fwd = a.op == QLORA_MATMUL_FORWARD;
    const qlora_dtype tdt = a.x_dtype;
    const int64_t es = static_cast<int64_t>(qlora_dtype_size(tdt));
    const int64_t N = a.N, K = a.K, M = a.M, cols = fwd ? N : K;
    const int64_t nc = std::clamp<int64_t>(tile_budget(st) / (K * es), 1, N);
    const bool chunked = nc < N;
    // Straight into y when cuBLAS can write y's type and (backward) no chunk
    // sum would be rounded to 16 bits; else into fp32 scratch, then the epilogue.
    const bool direct = cublas_combo(tdt, a.y_dtype) && (fwd || !chunked || a.y_dtype == QLORA_DTYPE_F32);
    const size_t tile_bytes = align_up(static_cast<size_t>(nc * K * es), 256);
    const size_t acc_bytes = direct ? 0 : static_cast<size_t>(M * cols) * 4;
    auto * base = static_cast<uint8_t *>(st.scratch(tile_bytes + acc_bytes));
    void * tile = base;
    float * acc = direct ? nullptr : reinterpret_cast<float *>(base + tile_bytes);
    cublasHandle_t h = st.cublas();
    const Q4Dev w = dev_view(t);
    const Code16 code = code_of(t);
    const Code256 ncode = ncode_of(t);
    const cudaDataType_t at = cuda_type(tdt), ct = direct ? cuda_type(a.y_dtype) : CUDA_R_32F;
    void * C = direct ? a.y : static_cast<void *>(acc);
    const int64_t ldc = direct ? a.ldy : cols;
    const int64_t cs = direct ? static_cast<int64_t>(qlora_dtype_size(a.y_dtype)) : 4;
    const float alpha = direct ? a.alpha : 1.0f;
    const float beta0 = direct ? a.beta : 0.0f, one = 1.0f;
    for (int64_t n0 = 0; n0 < N; n0 += nc) {
        const int64_t rows = std::min(nc, N - n0);
        launch_q4_dequantize(w, code, ncode, n0 * K, rows * K, tile, tdt, st.sm_count, st.stream);
        check_launch("the 4-bit dequantize kernel (matmul tile)");
        if (fwd) {
            // y[:, n0:n0+rows] (col-major: rows x M, ld ldc) = W_chunk (K x rows col-major, transposed) . x^T
            check_cublas(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(M),
                                      static_cast<int>(K), &alpha, tile, at, static_cast<int>(K), a.x, at,
                                      static_cast<int>(a.ldx), &beta0, static_cast<uint8_t *>(C) + n0 * cs, ct,
                                      static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx (forward)");
        } else {
            // y (col-major: K x M) += W_chunk (K x rows col-major) . x[:, n0:n0+rows]^T
            check_cublas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(K), static_cast<int>(M),
                                      static_cast<int>(rows), &alpha, tile, at, static_cast<int>(K),
                                      static_cast<const uint8_t *>(a.x) + n0 * es, at, static_cast<int>(a.ldx),
                                      n0 == 0 ? &beta0 : &one, C, ct, static_cast<int>(ldc), CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx (backward)");
        }
    }
    if (!direct) {
        launch_epilogue(acc, a, cols, st.sm_count, st.stream);
        check_launch("the matmul epilogue kernel");
    }
}

// Host y = beta * y (alpha == 0 on staged data), F16 included.
void scale_host(const ViewInfo & y, float beta) {
    for (int64_t m = 0; m < y.rows; ++m)
        for (int64_t c = 0; c < y.cols; ++c) {
            const int64_t i = m * y.stride + c;
            if (y.dtype == QLORA_DTYPE_F32) {
                float & f = static_cast<float *>(y.data)[i];
                f = beta == 0.0f ? 0.0f : beta * f;
            } else {
                uint16_t & h = static_cast<uint16_t *>(y.data)[i];
                const bool bf = y.dtype == QLORA_DTYPE_BF16;
                const float v = beta == 0.0f ? 0.0f : beta * (bf ? bf16_to_f32(h) : f16_to_f32(h));
                h = bf ? f32_to_bf16(v) : f32_to_f16(v);
            }
        }
}

} // namespace

MatmulPath matmul_path(const CudaState & st, const MatmulArgs & a) {
    const bool gemv_ok = a.M <= 8 && a.K % 8 == 0;
    const int64_t cols = a.op == QLORA_MATMUL_FORWARD ? a.N : a.K;
    const bool cublas_ok = fits_int(a.M) && fits_int(a.N) && fits_int(a.K) && fits_int(a.ldx) && fits_int(a.ldy) &&
                           fits_int(cols);
    switch (st.matmul_path) {
        case MatmulPath::Gemv: return gemv_ok ? MatmulPath::Gemv : MatmulPath::Fused;
        case MatmulPath::Fused: return MatmulPath::Fused;
        case MatmulPath::Cublas: return cublas_ok ? MatmulPath::Cublas : MatmulPath::Fused;
        case MatmulPath::Auto: break;
    }
    if (a.M <= 8) return gemv_ok ? MatmulPath::Gemv : MatmulPath::Fused;
    // Small problems: one fused launch beats dequantize + GEMM launches.
    if (!cublas_ok || (a.M <= 32 && a.N * a.K <= (int64_t(1) << 20))) return MatmulPath::Fused;
    return MatmulPath::Cublas;
}

// Runs on device data (x, y device pointers; t on the device).
void run_matmul(CudaState & st, const MatmulDev & d, const MatmulArgs & a, const qlora_q4_tensor & t) {
    switch (matmul_path(st, a)) {
        case MatmulPath::Gemv: {
            const int64_t pf = gemv_partial_floats(d, st.sm_count);
            float * partial = pf ? static_cast<float *>(st.scratch(static_cast<size_t>(pf) * 4)) : nullptr;
            launch_gemv(d, dev_view(t), code_of(t), ncode_of(t), partial, st.sm_count, st.stream);
            check_launch("the 4-bit gemv kernel");
            break;
        }
        case MatmulPath::Fused:
            launch_fused_matmul(d, dev_view(t), code_of(t), ncode_of(t), st.stream);
            check_launch("the fused 4-bit matmul kernel");
            break;
        default: run_cublas(st, d, t); break;
    }
}

void q4_matmul(qlora_context & ctx, const MatmulArgs & a, const ViewInfo & x, const ViewInfo & y) {
    CudaState & st = state_of(ctx);
    DeviceGuard g(st.device);
    const bool xdev = x.device != QLORA_DEVICE_HOST, ydev = y.device != QLORA_DEVICE_HOST;
    const bool wdev = a.w->device != QLORA_DEVICE_HOST;
    if (xdev) check_device_view(st, x, "x");
    if (ydev) check_device_view(st, y, "y");
    if (xdev != ydev || xdev != wdev)
        fail(QLORA_ERROR_INVALID_ARGUMENT,
             "x is %s, y is %s and W is %s: the data of one call must all be host memory or all on the context's "
             "CUDA device (%d)", xdev ? "device memory" : "host memory", ydev ? "device memory" : "host memory",
             wdev ? "a device tensor" : "a host tensor", static_cast<int>(st.device));
    if (wdev) check_tensor_device(st, *a.w, "W");
    if (a.alpha == 0.0f) { // y = beta * y; x and W unread
        if (ydev) {
            launch_scale(y.data, y.dtype, y.rows, y.cols, y.stride, a.beta, st.sm_count, st.stream);
            check_launch("the matmul scale kernel");
        } else {
            scale_host(y, a.beta);
        }
        return;
    }
    if (xdev) {
        run_matmul(st, dev_args(a), a, *a.w);
        return;
    }
    // Host data: staged through the device (contiguous copies), y copied back
    // row by row so that the caller's padding between rows stays untouched.
    StreamSync sync(st);
    StagedTensor w(st, *a.w);
    const size_t xes = qlora_dtype_size(x.dtype), yes = qlora_dtype_size(y.dtype);
    StreamBuffer xs = st.temp(static_cast<size_t>(x.numel()) * xes, "staging x on the device");
    StreamBuffer ys = st.temp(static_cast<size_t>(y.numel()) * yes, "staging y on the device");
    check(cudaMemcpy2DAsync(xs.data(), x.cols * xes, x.data, x.stride * xes, x.cols * xes, x.rows,
                            cudaMemcpyHostToDevice, st.stream),
          "cudaMemcpy2DAsync (x)");
    if (a.beta != 0.0f)
        check(cudaMemcpy2DAsync(ys.data(), y.cols * yes, y.data, y.stride * yes, y.cols * yes, y.rows,
                                cudaMemcpyHostToDevice, st.stream),
              "cudaMemcpy2DAsync (y)");
    MatmulArgs b = a;
    b.x = xs.data();
    b.ldx = x.cols;
    b.y = ys.data();
    b.ldy = y.cols;
    b.w = w.tensor.get();
    run_matmul(st, dev_args(b), b, *w.tensor);
    check(cudaMemcpy2DAsync(y.data, y.stride * yes, ys.data(), y.cols * yes, y.cols * yes, y.rows,
                            cudaMemcpyDeviceToHost, st.stream),
          "cudaMemcpy2DAsync (y)");
    sync.sync("cudaStreamSynchronize (matmul)");
}

} // namespace qlora::cuda
