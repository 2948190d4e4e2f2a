// CUDA backend contexts. Without -DQLORA_CUDA=ON the backend must refuse
// cleanly (test_core.cpp checks that); with it, these tests run on a GPU and
// skip with the driver's reason where there is none.
#include "test_util.hpp"

#include <cstring>
#include <string>

#if QLORA_CUDA
#include <cuda_runtime.h>

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

qlora_status create_cuda(int32_t device, qlora_context_t * out) {
    qlora_context_params p = qlora_context_default_params();
    p.backend = QLORA_BACKEND_CUDA;
    p.device = device;
    return qlora_context_create(&p, out);
}

} // namespace

TEST(Cuda, NoDeviceIsUnsupportedWithReason) {
    std::string why;
    if (cuda_device_count(why) > 0) GTEST_SKIP() << "this machine has a CUDA device; the no-device path is not reachable";
    qlora_context_t c = nullptr;
    EXPECT_EQ(create_cuda(0, &c), QLORA_ERROR_UNSUPPORTED);
    EXPECT_EQ(c, nullptr);
    const std::string msg = qlora_last_error();
    EXPECT_NE(msg.find("no usable CUDA device"), std::string::npos) << msg;
    std::printf("[   INFO   ] no CUDA device here (%s); library said: %s\n", why.c_str(), msg.c_str());
}

TEST(Cuda, ContextOnEveryDevice) {
    std::string why;
    const int n = cuda_device_count(why);
    if (n == 0) GTEST_SKIP() << "no CUDA device: " << why;
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
        qtest::Context owner(c);
        qlora_context_info info{};
        ASSERT_EQ(qlora_context_get_info(c, &info), QLORA_OK) << qlora_last_error();
        EXPECT_EQ(info.backend, QLORA_BACKEND_CUDA);
        EXPECT_EQ(info.device, d);
        int current = -1;
        ASSERT_EQ(cudaGetDevice(&current), cudaSuccess);
        EXPECT_EQ(current, d);
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

#endif // QLORA_CUDA (without it, test_core.cpp checks that the backend refuses cleanly)
