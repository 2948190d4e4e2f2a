// CUDA backend: contexts, device-resident tensors, every op on device views
// against the REF backend, staging rules, streams, errors, AdamW with device
// and unified-memory states. The backend-ops suites (test_quant*.cpp,
// test_matmul.cpp, test_optim.cpp) also run the CUDA kernels through
// available_backends() (host data staged through the device).
//
// Without -DQLORA_CUDA=ON the backend must refuse cleanly (test_core.cpp and
// test_cuda_api.cpp check that); with it, these tests need a device and skip
// with the driver's reason where there is none. With -DQLORA_CUDA_EMULATOR=ON
// they run on the CPU emulation of tools/cuda-emu.
#include "test_optim_util.hpp"
#include "test_util.hpp"

#include <cstring>
#include <string>

#if QLORA_CUDA
#include "core/half.hpp"
#include "cuda/cuda_common.hpp"
#include "cuda/cuda_state.hpp"

#include <cuda_runtime.h>

#include <cmath>
#include <sstream>

using namespace qtest;

namespace {

// Independent of the library: asks the CUDA runtime directly.
int cuda_device_count(std::string & why_none) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        why_none = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
        cudaGetLastError();
        return 0;
    }
    if (n == 0) why_none = "cudaGetDeviceCount returned 0";
    return n;
}

#define REQUIRE_CUDA()                                                                          \
    do {                                                                                        \
        std::string why_;                                                                       \
        if (cuda_device_count(why_) == 0) GTEST_SKIP() << "no CUDA device: " << why_;           \
        if (!cuda_available()) GTEST_SKIP() << "no usable CUDA device: " << qlora_last_error(); \
    } while (0)

qlora_status create_cuda(int32_t device, qlora_context_t * out) {
    qlora_context_params p = qlora_context_default_params();
    p.backend = QLORA_BACKEND_CUDA;
    p.device = device;
    return qlora_context_create(&p, out);
}

Context cuda_context() { return make_context(QLORA_BACKEND_CUDA, QLORA_ISA_BEST, 1); }

// Device memory for a test: copies in and out with synchronous cudaMemcpy.
struct DeviceMem {
    void * p = nullptr;
    size_t bytes = 0;
    explicit DeviceMem(size_t b) : bytes(b) { EXPECT_EQ(cudaMalloc(&p, b), cudaSuccess); }
    template <typename T>
    explicit DeviceMem(const std::vector<T> & v) : DeviceMem(v.size() * sizeof(T)) {
        EXPECT_EQ(cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice), cudaSuccess);
    }
    ~DeviceMem() { cudaFree(p); }
    DeviceMem(const DeviceMem &) = delete;
    DeviceMem & operator=(const DeviceMem &) = delete;
    template <typename T>
    std::vector<T> get() const {
        std::vector<T> v(bytes / sizeof(T));
        EXPECT_EQ(cudaMemcpy(v.data(), p, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
        return v;
    }
    qlora_view view(qlora_dtype dtype, int64_t rows, int64_t cols, int64_t stride = 0) const {
        qlora_view v = view_of(p, dtype, rows, cols);
        v.device = 0;
        v.stride = stride;
        return v;
    }
};

std::vector<uint8_t> bytes_of(const std::vector<float> & x, qlora_dtype dtype) {
    std::vector<uint8_t> out(x.size() * qlora_dtype_size(dtype));
    for (size_t i = 0; i < x.size(); ++i) {
        if (dtype == QLORA_DTYPE_F32) {
            std::memcpy(out.data() + 4 * i, &x[i], 4);
        } else {
            const uint16_t h = dtype == QLORA_DTYPE_F16 ? qlora::f32_to_f16(x[i]) : qlora::f32_to_bf16(x[i]);
            std::memcpy(out.data() + 2 * i, &h, 2);
        }
    }
    return out;
}

float elem(const std::vector<uint8_t> & b, qlora_dtype dtype, size_t i) {
    if (dtype == QLORA_DTYPE_F32) {
        float f;
        std::memcpy(&f, b.data() + 4 * i, 4);
        return f;
    }
    uint16_t h;
    std::memcpy(&h, b.data() + 2 * i, 2);
    return dtype == QLORA_DTYPE_F16 ? qlora::f16_to_f32(h) : qlora::bf16_to_f32(h);
}

struct Parts {
    std::vector<uint8_t> packed, qabsmax;
    std::vector<float>   absmax, nested_absmax;
    float                offset = 0;
    bool operator==(const Parts & o) const {
        return packed == o.packed && qabsmax == o.qabsmax && absmax == o.absmax && nested_absmax == o.nested_absmax &&
               std::memcmp(&offset, &o.offset, 4) == 0;
    }
};

Parts parts_of(qlora_q4_tensor_t t) {
    qlora_q4_info info{};
    qlora_q4_parts p{};
    EXPECT_EQ(qlora_q4_get_info(t, &info), QLORA_OK);
    EXPECT_EQ(qlora_q4_get_parts(t, &p), QLORA_OK) << qlora_last_error();
    Parts r;
    r.packed.assign(p.packed, p.packed + info.packed_bytes);
    if (info.double_quant) {
        r.qabsmax.assign(p.qabsmax, p.qabsmax + info.n_blocks);
        r.nested_absmax.assign(p.nested_absmax, p.nested_absmax + info.n_nested_blocks);
        r.offset = p.nested_offset;
    } else {
        r.absmax.assign(p.absmax, p.absmax + info.n_blocks);
    }
    return r;
}

Q4 quantize_host(qlora_context_t ctx, const std::vector<uint8_t> & data, qlora_dtype dtype, int64_t rows, int64_t cols,
                 const qlora_quant_params & p) {
    qlora_view v = view_of(const_cast<uint8_t *>(data.data()), dtype, rows, cols);
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ctx, &v, &p, &t), QLORA_OK) << qlora_last_error();
    return Q4(t);
}

Q4 to_device(qlora_context_t ctx, qlora_q4_tensor_t t) {
    qlora_q4_tensor_t d = nullptr;
    EXPECT_EQ(qlora_q4_to_device(ctx, t, &d), QLORA_OK) << qlora_last_error();
    return Q4(d);
}

Q4 to_host(qlora_context_t ctx, qlora_q4_tensor_t t) {
    qlora_q4_tensor_t h = nullptr;
    EXPECT_EQ(qlora_q4_to_host(ctx, t, &h), QLORA_OK) << qlora_last_error();
    return Q4(h);
}

qlora_quant_params qparams(qlora_quant_type type, int bs, int dq, int nbs = 256) {
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.blocksize = bs;
    p.double_quant = dq;
    p.nested_blocksize = nbs;
    return p;
}

} // namespace

// ---- contexts ------------------------------------------------------------------------

TEST(Cuda, NoDeviceIsUnsupportedWithReason) {
    std::string why;
    if (cuda_device_count(why) > 0) GTEST_SKIP() << "this machine has a CUDA device; the no-device path is not reachable";
    qlora_context_t c = nullptr;
    EXPECT_EQ(create_cuda(0, &c), QLORA_ERROR_UNSUPPORTED);
    EXPECT_EQ(c, nullptr);
    const std::string msg = qlora_last_error();
    EXPECT_NE(msg.find("no usable CUDA device"), std::string::npos) << msg;
    int32_t n = -1;
    EXPECT_EQ(qlora_cuda_device_count(&n), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(n, 0);
    std::printf("[   INFO   ] no CUDA device here (%s); library said: %s\n", why.c_str(), msg.c_str());
}

TEST(Cuda, ContextOnEveryDevice) {
    std::string why;
    const int n = cuda_device_count(why);
    if (n == 0) GTEST_SKIP() << "no CUDA device: " << why;
    int32_t count = -1;
    ASSERT_EQ(qlora_cuda_device_count(&count), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(count, n);
    for (int d = 0; d < n; ++d) {
        cudaDeviceProp prop{};
        ASSERT_EQ(cudaGetDeviceProperties(&prop, d), cudaSuccess);
        qlora_context_t c = nullptr;
        const qlora_status st = create_cuda(d, &c);
        if (prop.major < 8) {
            EXPECT_EQ(st, QLORA_ERROR_UNSUPPORTED) << "device " << d << " cc " << prop.major << "." << prop.minor;
            EXPECT_NE(std::strstr(qlora_last_error(), "compute capability"), nullptr) << qlora_last_error();
            continue;
        }
        ASSERT_EQ(st, QLORA_OK) << qlora_last_error();
        Context owner(c);
        qlora_context_info info{};
        ASSERT_EQ(qlora_context_get_info(c, &info), QLORA_OK) << qlora_last_error();
        EXPECT_EQ(info.backend, QLORA_BACKEND_CUDA);
        EXPECT_EQ(info.device, d);
        int current = -1;
        ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
        EXPECT_EQ(current, d);
        std::printf("[   INFO   ] device %d: %s, compute capability %d.%d, %d SMs\n", d, prop.name, prop.major,
                    prop.minor, prop.multiProcessorCount);
    }
}

TEST(Cuda, DeviceOrdinalOutOfRangeIsInvalidArgument) {
    std::string why;
    const int n = cuda_device_count(why);
    if (n == 0) GTEST_SKIP() << "no CUDA device: " << why;
    for (int32_t bad : {-1, n, n + 7}) {
        qlora_context_t c = nullptr;
        EXPECT_EQ(create_cuda(bad, &c), QLORA_ERROR_INVALID_ARGUMENT) << bad;
        EXPECT_EQ(c, nullptr);
        const std::string msg = qlora_last_error();
        EXPECT_NE(msg.find("device must be a CUDA device ordinal in [0, " + std::to_string(n) + ")"), std::string::npos)
            << msg;
        EXPECT_NE(msg.find("got " + std::to_string(bad)), std::string::npos) << msg;
    }
}

TEST(Cuda, StreamIsSetGotAndUsed) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    void * s = reinterpret_cast<void *>(0x1234);
    ASSERT_EQ(qlora_context_get_cuda_stream(ctx.get(), &s), QLORA_OK);
    EXPECT_EQ(s, nullptr) << "a new context uses the legacy default stream";
    cudaStream_t stream = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(qlora_context_set_cuda_stream(ctx.get(), stream), QLORA_OK) << qlora_last_error();
    ASSERT_EQ(qlora_context_get_cuda_stream(ctx.get(), &s), QLORA_OK);
    EXPECT_EQ(s, static_cast<void *>(stream));
    // Work on the caller's stream: a dequantize into device memory, then the
    // caller synchronizes that stream (not the device) before reading.
    auto ref = make_context(QLORA_BACKEND_REF);
    const auto x = random_values(64 * 257, Dist::Normal, 3);
    auto host = quantize_host(ref.get(), bytes_of(x, QLORA_DTYPE_F32), QLORA_DTYPE_F32, 64, 257,
                              qparams(QLORA_QUANT_NF4, 64, 1));
    std::vector<float> want(x.size());
    qlora_view wv = view_of(want, QLORA_DTYPE_F32, 64, 257);
    ASSERT_EQ(qlora_q4_dequantize(ref.get(), host.get(), &wv), QLORA_OK);
    auto dev = to_device(ctx.get(), host.get());
    DeviceMem out(x.size() * 4);
    qlora_view ov = out.view(QLORA_DTYPE_F32, 64, 257);
    ASSERT_EQ(qlora_q4_dequantize(ctx.get(), dev.get(), &ov), QLORA_OK) << qlora_last_error();
    std::vector<float> got(x.size());
    ASSERT_EQ(cudaMemcpyAsync(got.data(), out.p, out.bytes, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(got, want);
    ASSERT_EQ(qlora_context_synchronize(ctx.get()), QLORA_OK) << qlora_last_error();
    ASSERT_EQ(qlora_context_set_cuda_stream(ctx.get(), nullptr), QLORA_OK);
    dev.reset();
    ctx.reset();
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// ---- device tensors ----------------------------------------------------------------------

TEST(Cuda, TensorsMoveBetweenHostAndDeviceUnchanged) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto ref = make_context(QLORA_BACKEND_REF);
    const auto x = random_values(33 * 517, Dist::StudentT, 5);
    for (int dq : {0, 1}) {
        SCOPED_TRACE("dq " + std::to_string(dq));
        auto host = quantize_host(ref.get(), bytes_of(x, QLORA_DTYPE_F32), QLORA_DTYPE_F32, 33, 517,
                                  qparams(QLORA_QUANT_FP4, 128, dq, 64));
        auto dev = to_device(ctx.get(), host.get());
        qlora_q4_info hi{}, di{};
        ASSERT_EQ(qlora_q4_get_info(host.get(), &hi), QLORA_OK);
        ASSERT_EQ(qlora_q4_get_info(dev.get(), &di), QLORA_OK);
        EXPECT_EQ(di.device, 0);
        EXPECT_EQ(hi.device, QLORA_DEVICE_HOST);
        EXPECT_EQ(di.storage_bytes, hi.storage_bytes);
        EXPECT_EQ(di.nested_offset, hi.nested_offset);
        qlora_q4_parts parts{};
        EXPECT_EQ(qlora_q4_get_parts(dev.get(), &parts), QLORA_ERROR_UNSUPPORTED);
        EXPECT_TRUE(contains(qlora_last_error(), "copy it to the host first")) << qlora_last_error();
        auto clone = to_device(ctx.get(), dev.get()); // device to device
        dev.reset();                                  // the clone owns its own storage
        auto back = to_host(ctx.get(), clone.get());
        EXPECT_TRUE(parts_of(back.get()) == parts_of(host.get()));
        auto host_copy = to_host(ctx.get(), host.get()); // host to host
        EXPECT_TRUE(parts_of(host_copy.get()) == parts_of(host.get()));
    }
}

// Quantize from device views (every type, input dtype, DQ, block size, odd
// sizes) equals the REF backend bit for bit; so does dequantize into device views.
TEST(Cuda, DeviceQuantizeAndDequantizeMatchRef) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto ref = make_context(QLORA_BACKEND_REF);
    const struct { int64_t rows, cols; } shapes[] = {{1, 1}, {3, 21}, {7, 129}, {37, 515}, {64, 1024}};
    uint32_t seed = 100;
    for (const auto & s : shapes)
        for (qlora_quant_type type : {QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4})
            for (qlora_dtype in : {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16})
                for (int dq : {0, 1}) {
                    const int bs = (seed % 3 == 0) ? 32 : (seed % 3 == 1) ? 64 : 256;
                    SCOPED_TRACE(std::to_string(s.rows) + "x" + std::to_string(s.cols) + " type " +
                                 std::to_string(type) + " in " + std::to_string(in) + " dq " + std::to_string(dq) +
                                 " bs " + std::to_string(bs));
                    auto x = random_values(static_cast<size_t>(s.rows * s.cols), Dist::StudentT, seed++);
                    if (x.size() > 70) std::fill(x.begin() + 3, x.begin() + 3 + bs, 0.0f); // a zero block (mostly)
                    const auto data = bytes_of(x, in);
                    const qlora_quant_params p = qparams(type, bs, dq, 32);
                    auto want = quantize_host(ref.get(), data, in, s.rows, s.cols, p);
                    DeviceMem src(data);
                    qlora_view sv = src.view(in, s.rows, s.cols);
                    qlora_q4_tensor_t raw = nullptr;
                    ASSERT_EQ(qlora_q4_quantize(ctx.get(), &sv, &p, &raw), QLORA_OK) << qlora_last_error();
                    Q4 dev(raw);
                    qlora_q4_info info{};
                    ASSERT_EQ(qlora_q4_get_info(dev.get(), &info), QLORA_OK);
                    EXPECT_EQ(info.device, 0);
                    EXPECT_EQ(info.orig_dtype, in);
                    auto back = to_host(ctx.get(), dev.get());
                    EXPECT_TRUE(parts_of(back.get()) == parts_of(want.get())) << "quantized parts differ";
                    for (qlora_dtype out : {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}) {
                        const size_t n = x.size() * qlora_dtype_size(out);
                        std::vector<uint8_t> w(n);
                        qlora_view wv = view_of(w.data(), out, s.rows, s.cols);
                        ASSERT_EQ(qlora_q4_dequantize(ref.get(), want.get(), &wv), QLORA_OK);
                        // + 4 bytes: an output that is not 16-byte aligned takes the scalar kernel
                        for (size_t offset : {size_t(0), size_t(4)}) {
                            DeviceMem o(n + 16);
                            qlora_view ov = view_of(static_cast<uint8_t *>(o.p) + offset, out, s.rows, s.cols);
                            ov.device = 0;
                            ASSERT_EQ(qlora_q4_dequantize(ctx.get(), dev.get(), &ov), QLORA_OK) << qlora_last_error();
                            const auto got = o.get<uint8_t>();
                            EXPECT_EQ(0, std::memcmp(got.data() + offset, w.data(), n))
                                << "dequantize to dtype " << out << " offset " << offset;
                        }
                    }
                }
}

TEST(Cuda, DeviceQuantizeReportsTheFirstNonFiniteElement) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    const int64_t rows = 40, cols = 1000;
    for (int64_t at : {int64_t(0), int64_t(777), int64_t(rows * cols - 1)}) {
        auto x = random_values(static_cast<size_t>(rows * cols), Dist::Normal, 8);
        x[static_cast<size_t>(at)] = std::nanf("");
        x[static_cast<size_t>(std::min(at + 4000, rows * cols - 1))] = INFINITY;
        DeviceMem src(x);
        qlora_view sv = src.view(QLORA_DTYPE_F32, rows, cols);
        qlora_quant_params p = qlora_quant_default_params();
        qlora_q4_tensor_t t = nullptr;
        ASSERT_EQ(qlora_q4_quantize(ctx.get(), &sv, &p, &t), QLORA_ERROR_INVALID_ARGUMENT);
        EXPECT_EQ(t, nullptr);
        const std::string want = "src[" + std::to_string(at / cols) + ", " + std::to_string(at % cols) + "] is not finite";
        EXPECT_TRUE(contains(qlora_last_error(), want)) << qlora_last_error();
        // 8-bit: refused before q and absmax are written
        std::vector<uint8_t> q0(static_cast<size_t>(rows * cols), 0x5a);
        std::vector<float> a0(static_cast<size_t>((rows * cols + 255) / 256), -3.0f);
        DeviceMem q(q0), a(a0);
        qlora_view qv = q.view(QLORA_DTYPE_U8, 1, rows * cols), av = a.view(QLORA_DTYPE_F32, 1, static_cast<int64_t>(a0.size()));
        qlora_view flat = src.view(QLORA_DTYPE_F32, 1, rows * cols);
        ASSERT_EQ(qlora_q8_quantize(ctx.get(), &flat, 256, nullptr, &qv, &av), QLORA_ERROR_INVALID_ARGUMENT);
        EXPECT_TRUE(contains(qlora_last_error(), "src[" + std::to_string(at) + "] is not finite")) << qlora_last_error();
        EXPECT_EQ(q.get<uint8_t>(), q0);
        EXPECT_EQ(a.get<float>(), a0);
    }
}

TEST(Cuda, Device8BitMatchesRef) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto ref = make_context(QLORA_BACKEND_REF);
    const int64_t n = 10003;
    const auto x = random_values(static_cast<size_t>(n), Dist::StudentT, 31);
    for (int bs : {64, 256, 4096})
        for (qlora_dtype in : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
            SCOPED_TRACE("bs " + std::to_string(bs) + " in " + std::to_string(in));
            const int64_t nb = (n + bs - 1) / bs;
            const auto data = bytes_of(x, in);
            std::vector<uint8_t> q_ref(static_cast<size_t>(n));
            std::vector<float> a_ref(static_cast<size_t>(nb));
            qlora_view xv = view_of(const_cast<uint8_t *>(data.data()), in, 1, n);
            qlora_view qv = view_of(q_ref, QLORA_DTYPE_U8, 1, n), av = view_of(a_ref, QLORA_DTYPE_F32, 1, nb);
            ASSERT_EQ(qlora_q8_quantize(ref.get(), &xv, bs, nullptr, &qv, &av), QLORA_OK) << qlora_last_error();
            DeviceMem dx(data), dq(static_cast<size_t>(n)), da(static_cast<size_t>(nb) * 4);
            qlora_view dxv = dx.view(in, 1, n), dqv = dq.view(QLORA_DTYPE_U8, 1, n), dav = da.view(QLORA_DTYPE_F32, 1, nb);
            ASSERT_EQ(qlora_q8_quantize(ctx.get(), &dxv, bs, nullptr, &dqv, &dav), QLORA_OK) << qlora_last_error();
            EXPECT_EQ(dq.get<uint8_t>(), q_ref);
            EXPECT_EQ(da.get<float>(), a_ref);
            for (qlora_dtype out : {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}) {
                std::vector<uint8_t> y_ref(static_cast<size_t>(n) * qlora_dtype_size(out));
                qlora_view yv = view_of(y_ref.data(), out, 1, n);
                ASSERT_EQ(qlora_q8_dequantize(ref.get(), &qv, &av, bs, nullptr, &yv), QLORA_OK);
                DeviceMem dy(y_ref.size());
                qlora_view dyv = dy.view(out, 1, n);
                ASSERT_EQ(qlora_q8_dequantize(ctx.get(), &dqv, &dav, bs, nullptr, &dyv), QLORA_OK) << qlora_last_error();
                EXPECT_EQ(dy.get<uint8_t>(), y_ref) << "out dtype " << out;
            }
        }
}

// ---- where data lives: the rules -------------------------------------------------------------

TEST(Cuda, MixedHostAndDeviceDataIsRefused) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto cpu = make_context(QLORA_BACKEND_CPU);
    const auto x = random_values(8 * 64, Dist::Normal, 1);
    std::vector<float> host(x);
    DeviceMem dev(x);
    auto ref = make_context(QLORA_BACKEND_REF);
    auto ht = quantize_host(ref.get(), bytes_of(x, QLORA_DTYPE_F32), QLORA_DTYPE_F32, 8, 64, qlora_quant_default_params());
    auto dt = to_device(ctx.get(), ht.get());
    qlora_view hv = view_of(host, QLORA_DTYPE_F32, 8, 64), dv = dev.view(QLORA_DTYPE_F32, 8, 64);
    auto expect = [](qlora_status got, qlora_status want, const std::string & fragment) {
        EXPECT_EQ(got, want) << fragment;
        EXPECT_TRUE(contains(qlora_last_error(), fragment)) << "'" << qlora_last_error() << "' lacks '" << fragment << "'";
    };
    // device tensor, host dst (and the reverse)
    expect(qlora_q4_dequantize(ctx.get(), dt.get(), &hv), QLORA_ERROR_INVALID_ARGUMENT, "host memory");
    expect(qlora_q4_dequantize(ctx.get(), ht.get(), &dv), QLORA_ERROR_INVALID_ARGUMENT, "all on the context's CUDA device");
    // a device view whose pointer is host memory
    qlora_view liar = hv;
    liar.device = 0;
    expect(qlora_q4_dequantize(ctx.get(), dt.get(), &liar), QLORA_ERROR_INVALID_ARGUMENT, "is host memory");
    // a view on another device than the context's
    qlora_view other = dv;
    other.device = 5;
    expect(qlora_q4_dequantize(ctx.get(), dt.get(), &other), QLORA_ERROR_INVALID_ARGUMENT, "is on device 5");
    // the CPU backends: no device data, no device tensors
    expect(qlora_q4_dequantize(cpu.get(), ht.get(), &dv), QLORA_ERROR_INVALID_ARGUMENT, "needs host memory");
    expect(qlora_q4_dequantize(cpu.get(), dt.get(), &hv), QLORA_ERROR_INVALID_ARGUMENT, "lives on CUDA device 0");
    qlora_q4_tensor_t out = nullptr;
    const qlora_quant_params qp = qlora_quant_default_params();
    expect(qlora_q4_quantize(cpu.get(), &dv, &qp, &out), QLORA_ERROR_INVALID_ARGUMENT, "needs host memory");
    // matmul: x, y and W on one side
    std::vector<float> yh(8 * 8);
    DeviceMem yd(yh);
    auto w = quantize_host(ref.get(), bytes_of(random_values(8 * 64, Dist::Normal, 2), QLORA_DTYPE_F32), QLORA_DTYPE_F32,
                           8, 64, qlora_quant_default_params());
    auto wd = to_device(ctx.get(), w.get());
    qlora_view yhv = view_of(yh, QLORA_DTYPE_F32, 8, 8), ydv = yd.view(QLORA_DTYPE_F32, 8, 8);
    const qlora_matmul_params mp = qlora_matmul_default_params();
    expect(qlora_q4_matmul(ctx.get(), &dv, wd.get(), &yhv, &mp), QLORA_ERROR_INVALID_ARGUMENT, "y is host memory");
    expect(qlora_q4_matmul(ctx.get(), &dv, w.get(), &ydv, &mp), QLORA_ERROR_INVALID_ARGUMENT, "W is a host tensor");
    expect(qlora_q4_matmul(cpu.get(), &hv, wd.get(), &yhv, &mp), QLORA_ERROR_UNSUPPORTED, "needs a host tensor");
    EXPECT_EQ(qlora_q4_matmul(ctx.get(), &dv, wd.get(), &ydv, &mp), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(qlora_q4_matmul(ctx.get(), &hv, w.get(), &yhv, &mp), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(yd.get<float>(), yh) << "device and staged runs of the same call differ";
    // tensors of the wrong side for to_host / to_device on a CPU context
    expect(qlora_q4_to_device(cpu.get(), ht.get(), &out), QLORA_ERROR_INVALID_ARGUMENT, "not QLORA_BACKEND_CUDA");
}

TEST(Cuda, DeviceOutOfMemoryIsAnErrorWithTheSizes) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    size_t free_b = 0, total_b = 0;
    ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
    const size_t huge = total_b + (size_t(1) << 30);
    const qlora_status st = qlora::guard("test", [&] { qlora::cuda::device_alloc(huge, 0, "a test buffer"); });
    EXPECT_EQ(st, QLORA_ERROR_OUT_OF_MEMORY);
    const std::string msg = qlora_last_error();
    EXPECT_TRUE(contains(msg, "a test buffer: cannot allocate " + std::to_string(huge) + " bytes on CUDA device 0"))
        << msg;
    EXPECT_TRUE(contains(msg, "free: ")) << msg;
    // The context still works afterwards.
    std::vector<float> x(64, 0.5f);
    qlora_view xv = view_of(x, QLORA_DTYPE_F32, 1, 64);
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ctx.get(), &xv, &p, &t), QLORA_OK) << qlora_last_error();
    qlora_q4_free(t);
}

// ---- matmul on device views, every path ------------------------------------------------------

namespace {

struct MmCase {
    qlora_matmul_op op;
    int64_t         M, N, K;
    qlora_dtype     xd, yd;
    bool            dq, strided;
    float           alpha, beta;
    qlora::cuda::MatmulPath path;
};

std::string describe(const MmCase & c) {
    std::ostringstream s;
    s << (c.op == QLORA_MATMUL_FORWARD ? "fwd" : "bwd") << " M=" << c.M << " N=" << c.N << " K=" << c.K
      << " x=" << c.xd << " y=" << c.yd << (c.dq ? " dq" : "") << (c.strided ? " strided" : "") << " alpha=" << c.alpha
      << " beta=" << c.beta << " path=" << static_cast<int>(c.path);
    return s.str();
}

double unit(qlora_dtype d) {
    return d == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -7) : d == QLORA_DTYPE_F16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -23);
}

// Runs c on device views with the forced path and checks it against a float64
// computation from the REF-dequantized W (error bound as in test_matmul.cpp).
void check_matmul(qlora_context_t ctx, const MmCase & c, uint32_t seed) {
    SCOPED_TRACE(describe(c));
    auto ref = make_context(QLORA_BACKEND_REF);
    std::vector<float> wf = random_values(static_cast<size_t>(c.N * c.K), Dist::Normal, seed);
    for (auto & v : wf) v *= 0.05f;
    auto w = quantize_host(ref.get(), bytes_of(wf, QLORA_DTYPE_F32), QLORA_DTYPE_F32, c.N, c.K,
                           qparams(QLORA_QUANT_NF4, 64, c.dq ? 1 : 0, 64));
    std::vector<float> deq(wf.size());
    qlora_view dv = view_of(deq, QLORA_DTYPE_F32, c.N, c.K);
    ASSERT_EQ(qlora_q4_dequantize(ref.get(), w.get(), &dv), QLORA_OK);
    auto wd = to_device(ctx, w.get());
    const bool fwd = c.op == QLORA_MATMUL_FORWARD;
    const int64_t red = fwd ? c.K : c.N, cols = fwd ? c.N : c.K;
    const int64_t ldx = red + (c.strided ? 3 : 0), ldy = cols + (c.strided ? 5 : 0);
    // x and y0 rounded to their dtypes first: the oracle uses exactly those values
    std::vector<float> xv(static_cast<size_t>(c.M * ldx), 0.0f), y0(static_cast<size_t>(c.M * ldy), -7776.0f);
    const auto xr = random_values(static_cast<size_t>(c.M * red), Dist::Normal, seed + 1);
    const auto yr = random_values(static_cast<size_t>(c.M * cols), Dist::Normal, seed + 2);
    for (int64_t m = 0; m < c.M; ++m) {
        for (int64_t r = 0; r < red; ++r) xv[static_cast<size_t>(m * ldx + r)] = xr[static_cast<size_t>(m * red + r)];
        for (int64_t j = 0; j < cols; ++j)
            y0[static_cast<size_t>(m * ldy + j)] = c.beta == 0.0f ? std::nanf("") : yr[static_cast<size_t>(m * cols + j)];
    }
    auto xb = bytes_of(xv, c.xd), yb = bytes_of(y0, c.yd);
    DeviceMem dx(xb), dy(yb);
    qlora_view xview = dx.view(c.xd, c.M, red, ldx), yview = dy.view(c.yd, c.M, cols, ldy);
    qlora_matmul_params p = qlora_matmul_default_params();
    p.op = c.op;
    p.alpha = c.alpha;
    p.beta = c.beta;
    qlora::cuda::state_of(*ctx).matmul_path = c.path;
    ASSERT_EQ(qlora_q4_matmul(ctx, &xview, wd.get(), &yview, &p), QLORA_OK) << qlora_last_error();
    const auto got = dy.get<uint8_t>();
    // the same call again gives the same bits
    DeviceMem dy2(yb);
    qlora_view yview2 = dy2.view(c.yd, c.M, cols, ldy);
    ASSERT_EQ(qlora_q4_matmul(ctx, &xview, wd.get(), &yview2, &p), QLORA_OK) << qlora_last_error();
    EXPECT_EQ(dy2.get<uint8_t>(), got) << "not deterministic";
    qlora::cuda::state_of(*ctx).matmul_path = qlora::cuda::MatmulPath::Auto;
    const bool tiles16 = c.path == qlora::cuda::MatmulPath::Cublas && c.xd != QLORA_DTYPE_F32;
    const double u_w = tiles16 ? (c.xd == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11)) : 0.0;
    for (int64_t m = 0; m < c.M; ++m) {
        for (int64_t j = 0; j < cols; ++j) {
            double acc = 0.0, s = 0.0;
            for (int64_t r = 0; r < red; ++r) {
                const double wv = fwd ? deq[static_cast<size_t>(j * c.K + r)] : deq[static_cast<size_t>(r * c.K + j)];
                const double pr = static_cast<double>(elem(xb, c.xd, static_cast<size_t>(m * ldx + r))) * wv;
                acc += pr;
                s += std::fabs(pr);
            }
            const double y0v = c.beta == 0.0f ? 0.0 : elem(yb, c.yd, static_cast<size_t>(m * ldy + j));
            const double want = c.alpha * acc + c.beta * y0v;
            const double g = elem(got, c.yd, static_cast<size_t>(m * ldy + j));
            const double bound = (u_w + static_cast<double>(red + 4) * std::ldexp(1.0, -23)) * std::fabs(c.alpha) * s +
                                 unit(c.yd) * std::fabs(want) + std::ldexp(1.0, -22) * std::fabs(c.beta * y0v) + 1e-30;
            ASSERT_TRUE(std::isfinite(g)) << "[" << m << ", " << j << "]";
            ASSERT_LE(std::fabs(g - want), bound) << "[" << m << ", " << j << "] got " << g << " want " << want;
        }
        for (int64_t j = cols; j < ldy; ++j)
            ASSERT_EQ(elem(got, c.yd, static_cast<size_t>(m * ldy + j)), -7776.0f) << "padding of row " << m;
    }
}

} // namespace

TEST(CudaMatmul, EveryPathOnDeviceViewsMatchesTheOracle) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    using qlora::cuda::MatmulPath;
    const qlora_dtype dts[] = {QLORA_DTYPE_F32, QLORA_DTYPE_BF16, QLORA_DTYPE_F16};
    const struct { int64_t M, N, K; } shapes[] = {{1, 40, 64}, {3, 33, 200}, {8, 70, 96}, {5, 17, 31}, {9, 45, 257},
                                                   {70, 130, 320}, {33, 64, 8}, {2, 37, 4160}, {3, 600, 256}};
    uint32_t seed = 500;
    int i = 0;
    for (const auto & s : shapes)
        for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
            for (MatmulPath path : {MatmulPath::Gemv, MatmulPath::Fused, MatmulPath::Cublas}) {
                MmCase c{op, s.M, s.N, s.K, dts[i % 3], dts[(i / 3) % 3], i % 2 == 0, i % 4 >= 2,
                         i % 5 == 3 ? -0.75f : 1.0f, i % 3 == 1 ? 1.0f : i % 3 == 2 ? 0.5f : 0.0f, path};
                check_matmul(ctx.get(), c, seed++);
                ++i;
            }
}

// The cuBLAS path in chunks (a tile budget smaller than W) with an fp32
// accumulator (16-bit y, backward) and straight into y.
TEST(CudaMatmul, CublasPathAcrossManyTiles) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    using qlora::cuda::MatmulPath;
    const int64_t K = 2048, N = 2100; // > 4 MiB of fp32 tile: several chunks at the smallest budget
    for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
        for (qlora_dtype yd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
            MmCase c{op, 12, N, K, QLORA_DTYPE_F32, yd, true, false, 1.0f, 0.5f, MatmulPath::Cublas};
            check_matmul(ctx.get(), c, 77);
        }
}

TEST(CudaMatmul, AlphaZeroScalesDeviceY) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto ref = make_context(QLORA_BACKEND_REF);
    auto w = quantize_host(ref.get(), bytes_of(random_values(20 * 64, Dist::Normal, 3), QLORA_DTYPE_F32),
                           QLORA_DTYPE_F32, 20, 64, qlora_quant_default_params());
    auto wd = to_device(ctx.get(), w.get());
    DeviceMem x(std::vector<float>(3 * 64, std::nanf(""))), y(std::vector<float>(3 * 20, 2.0f));
    qlora_view xv = x.view(QLORA_DTYPE_F32, 3, 64), yv = y.view(QLORA_DTYPE_F32, 3, 20);
    qlora_matmul_params p = qlora_matmul_default_params();
    p.alpha = 0.0f;
    p.beta = 0.5f;
    ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, wd.get(), &yv, &p), QLORA_OK) << qlora_last_error();
    for (float v : y.get<float>()) EXPECT_EQ(v, 1.0f);
}

TEST(CudaMatmul, DeviceScratchIsReportedAndReleased) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    using qlora::cuda::MatmulPath;
    MmCase c{QLORA_MATMUL_FORWARD, 40, 256, 512, QLORA_DTYPE_BF16, QLORA_DTYPE_BF16, true, false, 1.0f, 0.0f,
             MatmulPath::Cublas};
    check_matmul(ctx.get(), c, 9);
    qlora_context_stats s{};
    ASSERT_EQ(qlora_context_get_stats(ctx.get(), &s), QLORA_OK);
    EXPECT_GT(s.scratch_bytes, 0);
    EXPECT_LT(s.scratch_peak_bytes, int64_t(64) << 20) << "bounded by the tile budget, not by N * K";
    ASSERT_EQ(qlora_context_reset_stats(ctx.get()), QLORA_OK);
    ASSERT_EQ(qlora_context_get_stats(ctx.get(), &s), QLORA_OK);
    EXPECT_EQ(s.scratch_bytes, 0);
    EXPECT_EQ(s.scratch_peak_bytes, 0);
}

// ---- AdamW ------------------------------------------------------------------------------------

namespace {

// Steps t = from+1..to with params and grads in device memory.
void run_device_steps(qlora_context_t ctx, qlora_adamw_t opt, const Problem & pb, Buffers & params, int64_t from,
                      int64_t to) {
    std::vector<std::unique_ptr<DeviceMem>> dp;
    for (auto & b : params) dp.push_back(std::make_unique<DeviceMem>(b));
    for (int64_t t = from + 1; t <= to; ++t) {
        Buffers g = pb.grads(t);
        std::vector<std::unique_ptr<DeviceMem>> dg;
        std::vector<qlora_view> pv, gv;
        for (size_t i = 0; i < g.size(); ++i) {
            dg.push_back(std::make_unique<DeviceMem>(g[i]));
            pv.push_back(dp[i]->view(QLORA_DTYPE_F32, 1, static_cast<int64_t>(params[i].size())));
            gv.push_back(dg[i]->view(QLORA_DTYPE_F32, 1, static_cast<int64_t>(g[i].size())));
        }
        qlora_adamw_step_info info{};
        ASSERT_EQ(qlora_adamw_step(ctx, opt, pv.data(), gv.data(), static_cast<int32_t>(pv.size()), &info), QLORA_OK)
            << "step " << t << ": " << qlora_last_error();
        ASSERT_EQ(info.step, t);
    }
    for (size_t i = 0; i < params.size(); ++i) params[i] = dp[i]->get<float>();
}

} // namespace

TEST(CudaAdamw, DeviceStepsAreBitIdenticalToTheCpuAndSurviveSaveLoad) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto cpu = make_context(QLORA_BACKEND_CPU, QLORA_ISA_BEST, 1);
    const Problem pb(kSizes, 11);
    for (qlora_optim_state state : {QLORA_OPTIM_STATE_F32, QLORA_OPTIM_STATE_8BIT}) {
        SCOPED_TRACE(state_name(state));
        Buffers want = pb.init;
        auto ref_opt = make_opt(hyper(state), nullptr, pb.sizes);
        run_steps(cpu.get(), ref_opt.get(), pb, want, 0, 12);
        // 6 steps on the device, save (states come back to the host), 6 more
        Buffers got = pb.init;
        auto opt = make_opt(hyper(state), nullptr, pb.sizes);
        run_device_steps(ctx.get(), opt.get(), pb, got, 0, 6);
        TempDir dir;
        const std::string path = (dir.path / "opt.bin").string();
        ASSERT_EQ(qlora_adamw_save(opt.get(), path.c_str()), QLORA_OK) << qlora_last_error();
        run_device_steps(ctx.get(), opt.get(), pb, got, 6, 12);
        EXPECT_TRUE(bit_equal(got, want));
        // load into a fresh optimizer, continue on the CPU from step 6: same result
        Buffers resumed = pb.init;
        auto first = make_opt(hyper(state), nullptr, pb.sizes);
        run_device_steps(ctx.get(), first.get(), pb, resumed, 0, 6);
        auto second = make_opt(hyper(state), nullptr, pb.sizes);
        ASSERT_EQ(qlora_adamw_load(second.get(), path.c_str()), QLORA_OK) << qlora_last_error();
        run_steps(cpu.get(), second.get(), pb, resumed, 6, 12);
        EXPECT_TRUE(bit_equal(resumed, want));
    }
}

TEST(CudaAdamw, UnifiedPagerRunsAreBitIdenticalAndStayInBudget) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto cpu = make_context(QLORA_BACKEND_CPU, QLORA_ISA_BEST, 1);
    const Problem pb(kSizes, 41);
    const int64_t page = 16384;
    for (qlora_optim_state state : {QLORA_OPTIM_STATE_F32, QLORA_OPTIM_STATE_8BIT}) {
        Buffers want = pb.init;
        auto ref_opt = make_opt(hyper(state), nullptr, pb.sizes);
        run_steps(cpu.get(), ref_opt.get(), pb, want, 0, 20);
        for (int64_t budget_pages : {int64_t(1000), int64_t(2)}) {
            SCOPED_TRACE(std::string(state_name(state)) + " budget pages " + std::to_string(budget_pages));
            qlora_pager_params pp = qlora_pager_default_params();
            pp.backing = QLORA_PAGER_CUDA_UNIFIED;
            pp.page_bytes = page;
            pp.budget_bytes = budget_pages * page;
            qlora_pager_t h = nullptr;
            ASSERT_EQ(qlora_pager_create(&pp, &h), QLORA_OK) << qlora_last_error();
            PagerPtr pager(h);
            auto opt = make_opt(hyper(state), pager.get(), pb.sizes);
            Buffers got = pb.init;
            run_device_steps(ctx.get(), opt.get(), pb, got, 0, 10);
            run_steps(ctx.get(), opt.get(), pb, got, 10, 15); // host views: staged
            run_steps(cpu.get(), opt.get(), pb, got, 15, 20); // the CPU step on managed memory
            EXPECT_TRUE(bit_equal(got, want));
            qlora_pager_stats s{};
            ASSERT_EQ(qlora_pager_get_stats(pager.get(), &s), QLORA_OK);
            EXPECT_LE(s.peak_resident_bytes, pp.budget_bytes);
            EXPECT_EQ(s.pinned_bytes, 0);
            if (budget_pages == 2) {
                EXPECT_GT(s.page_outs, 0);
                EXPECT_GT(s.page_ins, 0);
            }
        }
    }
}

TEST(CudaAdamw, HostSpillPagerOnACudaContextIsBitIdentical) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    auto cpu = make_context(QLORA_BACKEND_CPU, QLORA_ISA_BEST, 1);
    const Problem pb(kSizes, 43);
    Buffers want = pb.init;
    auto ref_opt = make_opt(hyper(QLORA_OPTIM_STATE_8BIT), nullptr, pb.sizes);
    run_steps(cpu.get(), ref_opt.get(), pb, want, 0, 8);
    TempDir dir;
    auto pager = make_pager(dir.path, 2 * 16384, 16384);
    auto opt = make_opt(hyper(QLORA_OPTIM_STATE_8BIT), pager.get(), pb.sizes);
    Buffers got = pb.init;
    run_device_steps(ctx.get(), opt.get(), pb, got, 0, 8);
    EXPECT_TRUE(bit_equal(got, want));
}

TEST(CudaAdamw, NonFiniteDeviceGradientIsRejectedAndChangesNothing) {
    REQUIRE_CUDA();
    auto ctx = cuda_context();
    const Problem pb(kSizes, 12);
    auto opt = make_opt(hyper(QLORA_OPTIM_STATE_F32), nullptr, pb.sizes);
    Buffers params = pb.init;
    run_device_steps(ctx.get(), opt.get(), pb, params, 0, 2);
    std::vector<std::unique_ptr<DeviceMem>> dp, dg;
    std::vector<qlora_view> pv, gv;
    Buffers g = pb.grads(3);
    g[4][1234] = std::nanf("");
    for (size_t i = 0; i < g.size(); ++i) {
        dp.push_back(std::make_unique<DeviceMem>(params[i]));
        dg.push_back(std::make_unique<DeviceMem>(g[i]));
        pv.push_back(dp[i]->view(QLORA_DTYPE_F32, 1, static_cast<int64_t>(params[i].size())));
        gv.push_back(dg[i]->view(QLORA_DTYPE_F32, 1, static_cast<int64_t>(g[i].size())));
    }
    EXPECT_EQ(qlora_adamw_step(ctx.get(), opt.get(), pv.data(), gv.data(), static_cast<int32_t>(pv.size()), nullptr),
              QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "grads[4] element 1234 is NaN")) << qlora_last_error();
    for (size_t i = 0; i < params.size(); ++i) EXPECT_EQ(dp[i]->get<float>(), params[i]);
    qlora_adamw_info info{};
    ASSERT_EQ(qlora_adamw_get_info(opt.get(), &info), QLORA_OK);
    EXPECT_EQ(info.step, 2);
    EXPECT_EQ(info.failed, 0);
}

// ---- the unified pager on its own ---------------------------------------------------------------

TEST(CudaPager, UnifiedPagesAreZeroKeptAndEvictedWithinBudget) {
    REQUIRE_CUDA();
    const int64_t page = 4096;
    qlora_pager_params pp = qlora_pager_default_params();
    pp.backing = QLORA_PAGER_CUDA_UNIFIED;
    pp.page_bytes = page;
    pp.budget_bytes = 3 * page;
    qlora_pager_t h = nullptr;
    ASSERT_EQ(qlora_pager_create(&pp, &h), QLORA_OK) << qlora_last_error();
    PagerPtr pager(h);
    int64_t id = 0;
    ASSERT_EQ(qlora_pager_alloc(pager.get(), 10 * page + 100, &id), QLORA_OK);
    // any range, across pages; zero-filled at first; the host reads and writes it (managed memory)
    void * p = nullptr;
    ASSERT_EQ(qlora_pager_acquire(pager.get(), id, page - 8, 2 * page, QLORA_PAGER_READ_WRITE, &p), QLORA_OK)
        << qlora_last_error();
    auto * b = static_cast<uint8_t *>(p);
    for (int64_t i = 0; i < 2 * page; ++i) ASSERT_EQ(b[i], 0) << i;
    for (int64_t i = 0; i < 2 * page; ++i) b[i] = static_cast<uint8_t>(i * 7 + 1);
    ASSERT_EQ(qlora_pager_release(pager.get(), id, page - 8, 2 * page), QLORA_OK);
    // pinning more than the budget is refused
    EXPECT_EQ(qlora_pager_acquire(pager.get(), id, 0, 5 * page, QLORA_PAGER_READ, &p), QLORA_ERROR_OUT_OF_MEMORY);
    EXPECT_TRUE(contains(qlora_last_error(), "more than the budget")) << qlora_last_error();
    // touch other pages so that the first ones are evicted, then read them back
    for (int64_t pg = 5; pg < 10; ++pg) {
        ASSERT_EQ(qlora_pager_acquire(pager.get(), id, pg * page, page, QLORA_PAGER_READ_WRITE, &p), QLORA_OK);
        std::memset(p, static_cast<int>(pg), static_cast<size_t>(page));
        ASSERT_EQ(qlora_pager_release(pager.get(), id, pg * page, page), QLORA_OK);
        qlora_pager_stats s{};
        ASSERT_EQ(qlora_pager_get_stats(pager.get(), &s), QLORA_OK);
        ASSERT_LE(s.resident_bytes, 3 * page);
    }
    ASSERT_EQ(qlora_pager_acquire(pager.get(), id, page - 8, 2 * page, QLORA_PAGER_READ, &p), QLORA_OK);
    b = static_cast<uint8_t *>(p);
    for (int64_t i = 0; i < 2 * page; ++i) ASSERT_EQ(b[i], static_cast<uint8_t>(i * 7 + 1)) << i;
    ASSERT_EQ(qlora_pager_release(pager.get(), id, page - 8, 2 * page), QLORA_OK);
    qlora_pager_stats s{};
    ASSERT_EQ(qlora_pager_get_stats(pager.get(), &s), QLORA_OK);
    EXPECT_GT(s.page_outs, 0);
    EXPECT_GT(s.page_ins, 0);
    EXPECT_LE(s.peak_resident_bytes, 3 * page);
    EXPECT_EQ(s.allocated_bytes, 10 * page + 100);
    ASSERT_EQ(qlora_pager_trim(pager.get(), 0), QLORA_OK);
    ASSERT_EQ(qlora_pager_get_stats(pager.get(), &s), QLORA_OK);
    EXPECT_EQ(s.resident_bytes, 0);
    ASSERT_EQ(qlora_pager_dealloc(pager.get(), id), QLORA_OK) << qlora_last_error();
}

TEST(CudaPager, BudgetIsCappedByFreeDeviceMemory) {
    REQUIRE_CUDA();
    size_t free_b = 0, total_b = 0;
    ASSERT_EQ(cudaMemGetInfo(&free_b, &total_b), cudaSuccess);
    qlora_pager_params pp = qlora_pager_default_params();
    pp.backing = QLORA_PAGER_CUDA_UNIFIED;
    qlora_pager_t h = nullptr;
    ASSERT_EQ(qlora_pager_create(&pp, &h), QLORA_OK) << qlora_last_error();
    PagerPtr pager(h);
    qlora_pager_stats s{};
    ASSERT_EQ(qlora_pager_get_stats(pager.get(), &s), QLORA_OK);
    EXPECT_LE(s.budget_bytes, static_cast<int64_t>(total_b));
    EXPECT_GT(s.budget_bytes, 0);
    pp.device = 99;
    EXPECT_EQ(qlora_pager_create(&pp, &h), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(qlora_last_error(), "device must be a CUDA device ordinal")) << qlora_last_error();
}

#endif // QLORA_CUDA (without it, test_core.cpp and test_cuda_api.cpp check that the backend refuses cleanly)
