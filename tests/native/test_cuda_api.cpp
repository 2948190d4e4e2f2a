// The CUDA section of the C ABI, checked on every build: argument validation,
// the refusals of builds without CUDA, and the rules that keep device data
// away from the CPU backends. (test_cuda.cpp runs the device code itself.)
#include "test_util.hpp"

#include <cstring>
#include <string>

using namespace qtest;

namespace {
bool has(const char * fragment) { return std::strstr(qlora_last_error(), fragment) != nullptr; }
} // namespace

TEST(CudaApi, NullArgumentsAreInvalid) {
    EXPECT_EQ(qlora_cuda_device_count(nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("out must not be NULL")) << qlora_last_error();
    void * s = nullptr;
    EXPECT_EQ(qlora_context_set_cuda_stream(nullptr, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("context must not be NULL")) << qlora_last_error();
    EXPECT_EQ(qlora_context_get_cuda_stream(nullptr, &s), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_context_synchronize(nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    qlora_q4_tensor_t out = nullptr;
    EXPECT_EQ(qlora_q4_to_device(nullptr, nullptr, &out), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_q4_to_host(nullptr, nullptr, &out), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(out, nullptr);
}

// A CPU or REF context has no stream and copies no tensors to a device: in a
// CUDA build that is INVALID_ARGUMENT (wrong backend), without CUDA UNSUPPORTED.
TEST(CudaApi, CpuContextsRefuseTheCudaCalls) {
    for (qlora_backend b : {QLORA_BACKEND_CPU, QLORA_BACKEND_REF}) {
        auto ctx = make_context(b);
#if QLORA_CUDA
        const qlora_status want = QLORA_ERROR_INVALID_ARGUMENT;
        const char * why = "not QLORA_BACKEND_CUDA";
#else
        const qlora_status want = QLORA_ERROR_UNSUPPORTED;
        const char * why = "configure with -DQLORA_CUDA=ON";
#endif
        void * s = nullptr;
        EXPECT_EQ(qlora_context_set_cuda_stream(ctx.get(), nullptr), want);
        EXPECT_TRUE(has(why)) << qlora_last_error();
        EXPECT_EQ(qlora_context_get_cuda_stream(ctx.get(), &s), want);
        EXPECT_EQ(qlora_context_synchronize(ctx.get()), want);
        std::vector<float> x(64, 0.25f);
        qlora_view v = view_of(x, QLORA_DTYPE_F32, 1, 64);
        qlora_quant_params p = qlora_quant_default_params();
        qlora_q4_tensor_t t = nullptr;
        ASSERT_EQ(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_OK) << qlora_last_error();
        Q4 host(t);
        qlora_q4_tensor_t out = nullptr;
        EXPECT_EQ(qlora_q4_to_device(ctx.get(), host.get(), &out), want);
        EXPECT_EQ(qlora_q4_to_host(ctx.get(), host.get(), &out), want);
        EXPECT_EQ(out, nullptr);
    }
}

TEST(CudaApi, DeviceCountWithoutCudaIsUnsupported) {
    int32_t n = -1;
#if QLORA_CUDA
    EXPECT_EQ(qlora_cuda_device_count(&n), QLORA_OK) << qlora_last_error();
    EXPECT_GE(n, 0);
#else
    EXPECT_EQ(qlora_cuda_device_count(&n), QLORA_ERROR_UNSUPPORTED);
    EXPECT_TRUE(has("-DQLORA_CUDA=ON")) << qlora_last_error();
    EXPECT_EQ(n, -1);
#endif
}

// Device views never reach the CPU kernels: every op refuses them on a CPU
// context, naming the argument (the pointer is never dereferenced).
TEST(CudaApi, CpuContextsRefuseDeviceViews) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    std::vector<float> x(4 * 64, 0.5f), y(4 * 8, 0.0f);
    std::vector<uint8_t> q(256);
    std::vector<float> a(1);
    auto dev = [](qlora_view v) {
        v.device = 0;
        return v;
    };
    qlora_view xv = view_of(x, QLORA_DTYPE_F32, 4, 64);
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_tensor_t t = nullptr;
    qlora_view dx = dev(xv);
    EXPECT_EQ(qlora_q4_quantize(ctx.get(), &dx, &p, &t), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("src is on device 0; this call needs host memory")) << qlora_last_error();
    ASSERT_EQ(qlora_q4_quantize(ctx.get(), &xv, &p, &t), QLORA_OK);
    Q4 w(t); // [4, 64]
    EXPECT_EQ(qlora_q4_dequantize(ctx.get(), w.get(), &dx), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("dst is on device 0")) << qlora_last_error();
    qlora_view fl = view_of(x, QLORA_DTYPE_F32, 1, 256), qv = view_of(q, QLORA_DTYPE_U8, 1, 256),
               av = view_of(a, QLORA_DTYPE_F32, 1, 1);
    qlora_view dq = dev(qv), da = dev(av), dfl = dev(fl);
    EXPECT_EQ(qlora_q8_quantize(ctx.get(), &fl, 256, nullptr, &dq, &av), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("q is on device 0")) << qlora_last_error();
    EXPECT_EQ(qlora_q8_dequantize(ctx.get(), &qv, &da, 256, nullptr, &fl), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("absmax is on device 0")) << qlora_last_error();
    EXPECT_EQ(qlora_q8_dequantize(ctx.get(), &qv, &av, 256, nullptr, &dfl), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("out is on device 0")) << qlora_last_error();
    // matmul: W [4, 64], x [4, 64] -> y [4, 4]
    std::vector<float> y4(16);
    qlora_view yv = view_of(y4, QLORA_DTYPE_F32, 4, 4), dy = dev(yv);
    qlora_matmul_params mp = qlora_matmul_default_params();
    EXPECT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.get(), &dy, &mp), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("y is on device 0")) << qlora_last_error();
    // F16 activations are a CUDA feature: the CPU backends say so clearly
    std::vector<uint16_t> h(4 * 64, 0x3c00);
    qlora_view hv = view_of(h.data(), QLORA_DTYPE_F16, 4, 64);
    EXPECT_EQ(qlora_q4_matmul(ctx.get(), &hv, w.get(), &yv, &mp), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("x has dtype F16")) << qlora_last_error();
    // AdamW: device views refused by the CPU step
    qlora_adamw_params hp = qlora_adamw_default_params();
    qlora_adamw_t opt = nullptr;
    ASSERT_EQ(qlora_adamw_create(&hp, nullptr, &opt), QLORA_OK);
    ASSERT_EQ(qlora_adamw_add_buffer(opt, 256, nullptr), QLORA_OK);
    qlora_view pv = fl, gv = dfl;
    std::vector<float> g(256, 0.1f);
    pv = view_of(g, QLORA_DTYPE_F32, 1, 256);
    EXPECT_EQ(qlora_adamw_step(ctx.get(), opt, &pv, &gv, 1, nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(has("grads[0] is on device 0")) << qlora_last_error();
    qlora_adamw_free(opt);
}
