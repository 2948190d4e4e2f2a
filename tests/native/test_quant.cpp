// 4-bit (NF4/FP4, double quant) and 8-bit blockwise quantization: golden
// tables, properties against float64 oracles, and every backend vs ref.
#include "core/half.hpp"
#include "quant/tables.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cstring>
#include <random>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace qtest;

namespace {

// FORMATS.md: the NF4 table, index -> value.
const double kNF4Golden[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                               -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                               0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                               0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
// FORMATS.md: FP4 values by bit pattern, before dividing by 12.
const double kFP4Golden[16] = {0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3};

struct Q4Result {
    std::vector<uint8_t> packed;
    std::vector<float>   scales; // decoded fp32 block scales
    qlora_q4_info        info{};
    Q4                   tensor;
};

Q4 quantize(qlora_context_t ctx, void * data, qlora_dtype dtype, int64_t rows, int64_t cols,
            const qlora_quant_params & p) {
    qlora_view v = view_of(data, dtype, rows, cols);
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ctx, &v, &p, &t), QLORA_OK) << qlora_last_error();
    return Q4(t);
}

std::vector<float> dequantize(qlora_context_t ctx, qlora_q4_tensor_t t, int64_t rows, int64_t cols) {
    std::vector<float> out(static_cast<size_t>(rows * cols), -12345.0f);
    qlora_view v = view_of(out, QLORA_DTYPE_F32, rows, cols);
    EXPECT_EQ(qlora_q4_dequantize(ctx, t, &v), QLORA_OK) << qlora_last_error();
    return out;
}

std::vector<uint8_t> packed_of(qlora_q4_tensor_t t) {
    qlora_q4_info info{};
    qlora_q4_parts parts{};
    EXPECT_EQ(qlora_q4_get_info(t, &info), QLORA_OK);
    EXPECT_EQ(qlora_q4_get_parts(t, &parts), QLORA_OK);
    return std::vector<uint8_t>(parts.packed, parts.packed + info.packed_bytes);
}

uint8_t code_at(const std::vector<uint8_t> & packed, int64_t i) {
    const uint8_t b = packed[static_cast<size_t>(i / 2)];
    return (i & 1) ? (b & 0xf) : (b >> 4);
}

} // namespace

TEST(Tables, NF4MatchesFormats) {
    float t[16];
    ASSERT_EQ(qlora_q4_code_table(QLORA_QUANT_NF4, t), QLORA_OK);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(t[i], static_cast<float>(kNF4Golden[i])) << i;
}

TEST(Tables, FP4MatchesFormats) {
    float t[16];
    ASSERT_EQ(qlora_q4_code_table(QLORA_QUANT_FP4, t), QLORA_OK);
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(t[i], static_cast<float>(kFP4Golden[i]) / 12.0f) << i;
        EXPECT_EQ(std::signbit(t[i]), i >= 8) << i;
    }
}

TEST(Tables, NF4ThresholdsAreMidpoints) {
    // Each threshold is within one fp32 ulp of the exact (float64) midpoint of
    // neighbouring table values (bitsandbytes' decimal literals pick the side).
    const float * t = qlora::nf4_thresholds();
    for (int i = 0; i < 15; ++i) {
        const double mid = (kNF4Golden[i] + kNF4Golden[i + 1]) / 2;
        EXPECT_LE(std::fabs(t[i] - mid), std::fabs(mid) * 6e-8) << i;
    }
    // bitsandbytes' documented example: x > 0.03979014977812767f selects the upper half,
    // and a value exactly on a threshold takes the lower code.
    EXPECT_EQ(qlora::quantize_nf4(t, 0.03979014977812767f), 7);
    EXPECT_EQ(qlora::quantize_nf4(t, std::nextafter(0.03979014977812767f, 1.0f)), 8);
    EXPECT_EQ(qlora::quantize_nf4(t, -0.8480964004993439f), 0);
    EXPECT_EQ(qlora::quantize_nf4(t, 1.0f), 15);
    EXPECT_EQ(qlora::quantize_nf4(t, 0.0f), 7);
}

TEST(Tables, DynamicMapSelfCheck) {
    float m[256];
    ASSERT_EQ(qlora_q8_dynamic_map(m), QLORA_OK);
    EXPECT_EQ(m[0], static_cast<float>(-0.992968738079071));
    EXPECT_EQ(m[127], 0.0f);
    EXPECT_EQ(m[128], static_cast<float>(5.500000384017767e-07));
    EXPECT_EQ(m[254], static_cast<float>(0.992968738079071));
    EXPECT_EQ(m[255], 1.0f);
    for (int i = 1; i < 256; ++i) EXPECT_LT(m[i - 1], m[i]) << i;
}

TEST(Tables, DynamicQuantizeIsNearest) {
    const float * m = qlora::signed_dynamic_map();
    auto rng = random_values(20000, Dist::Uniform, 7);
    for (float x : rng) {
        const uint8_t q = qlora::quantize_dynamic(m, x);
        double best = 1e9;
        for (int i = 0; i < 256; ++i) best = std::min(best, std::fabs(static_cast<double>(m[i]) - x));
        EXPECT_LE(std::fabs(static_cast<double>(m[q]) - x), best + 1e-7) << x;
    }
    EXPECT_EQ(qlora::quantize_dynamic(m, 1.0f), 255);
    EXPECT_EQ(qlora::quantize_dynamic(m, -1.0f), 0);
    EXPECT_EQ(qlora::quantize_dynamic(m, 0.0f), 127);
}

TEST(Half, F16RoundTripsEveryValue) {
    for (uint32_t h = 0; h < 65536; ++h) {
        const uint16_t v = static_cast<uint16_t>(h);
        const float f = qlora::f16_to_f32(v);
        if (std::isnan(f)) continue;
        EXPECT_EQ(qlora::f32_to_f16(f), v) << h;
    }
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t hw_f16(float f) {
    return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) static float hw_f32(uint16_t h) { return _cvtsh_ss(h); }
TEST(Half, F16MatchesHardwareConversion) {
    if (qlora_cpu_isa_detected() < QLORA_ISA_AVX2) GTEST_SKIP() << "no F16C";
    std::mt19937 rng(1);
    for (int i = 0; i < 2000000; ++i) {
        uint32_t u = rng();
        float f;
        std::memcpy(&f, &u, 4);
        if (std::isnan(f)) continue;
        ASSERT_EQ(qlora::f32_to_f16(f), hw_f16(f)) << std::hex << u;
    }
    for (uint32_t h = 0; h < 65536; ++h) {
        const float a = qlora::f16_to_f32(static_cast<uint16_t>(h)), b = hw_f32(static_cast<uint16_t>(h));
        if (std::isnan(a)) { EXPECT_TRUE(std::isnan(b)); continue; }
        ASSERT_EQ(qlora::f32_bits(a), qlora::f32_bits(b)) << h;
    }
}
#endif

TEST(Half, BF16RoundsToNearestEven) {
    // Independent oracle: round the double value to 8 significant bits.
    std::mt19937 rng(3);
    for (int i = 0; i < 200000; ++i) {
        uint32_t u = rng() & 0xbfffffffu; // keep exponents finite
        float f;
        std::memcpy(&f, &u, 4);
        const uint16_t h = qlora::f32_to_bf16(f);
        const double lo = qlora::bf16_to_f32(h), d = f;
        const double up = qlora::bf16_to_f32(static_cast<uint16_t>(h + 1)),
                     dn = qlora::bf16_to_f32(static_cast<uint16_t>(h - 1));
        EXPECT_LE(std::fabs(lo - d), std::fabs(up - d)) << u;
        if ((h & 0x7fff) != 0) {
            EXPECT_LE(std::fabs(lo - d), std::fabs(dn - d)) << u;
        }
    }
}

// ---- properties on the reference backend -------------------------------

class Q4Property : public ::testing::TestWithParam<std::tuple<qlora_quant_type, int, Dist>> {};

TEST_P(Q4Property, CodesAreNearestAndErrorWithinHalfGap) {
    const auto [type, blocksize, dist] = GetParam();
    auto ctx = make_context(QLORA_BACKEND_REF);
    // Odd, not a multiple of the block size, spanning rows, three and a bit blocks.
    const int64_t rows = 5, cols = 2 * ((3 * blocksize + 35) / 10) + 1;
    auto x = random_values(static_cast<size_t>(rows * cols), dist, 11);
    // An all-zero block in the middle.
    std::fill(x.begin() + blocksize, x.begin() + 2 * blocksize, 0.0f);
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.blocksize = blocksize;
    p.double_quant = 0;
    auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, rows, cols, p);
    auto packed = packed_of(t.get());
    auto y = dequantize(ctx.get(), t.get(), rows, cols);
    float table[16];
    qlora_q4_code_table(type, table);
    double max_half_gap = 0;
    std::vector<double> sorted(table, table + 16);
    std::sort(sorted.begin(), sorted.end());
    for (int i = 1; i < 16; ++i) max_half_gap = std::max(max_half_gap, (sorted[i] - sorted[i - 1]) / 2);

    const int64_t n = rows * cols;
    EXPECT_EQ(static_cast<int64_t>(packed.size()), (n + 1) / 2);
    EXPECT_EQ(packed.back() & 0xf, 0) << "odd element count pads the low nibble with 0";
    for (int64_t b = 0; b * blocksize < n; ++b) {
        const int64_t e0 = b * blocksize, e1 = std::min(n, e0 + blocksize);
        double absmax = 0;
        for (int64_t i = e0; i < e1; ++i) absmax = std::max(absmax, std::fabs(static_cast<double>(x[i])));
        for (int64_t i = e0; i < e1; ++i) {
            ASSERT_TRUE(std::isfinite(y[i])) << i;
            if (absmax == 0) {
                EXPECT_EQ(y[i], 0.0f) << "all-zero block must dequantize to 0";
                continue;
            }
            const double xn = x[i] / absmax;
            const uint8_t q = code_at(packed, i);
            double best = 1e9;
            for (int k = 0; k < 16; ++k) best = std::min(best, std::fabs(table[k] - xn));
            EXPECT_LE(std::fabs(table[q] - xn), best + 1e-6) << "element " << i << " xn " << xn;
            EXPECT_LE(std::fabs(y[i] - x[i]), absmax * (max_half_gap + 1e-6)) << i;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(All, Q4Property,
                         ::testing::Combine(::testing::Values(QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4),
                                            ::testing::Values(32, 64, 128, 256, 512, 1024, 2048, 4096),
                                            ::testing::Values(Dist::Normal, Dist::StudentT, Dist::Uniform)));

TEST(Q4, DoubleQuantScalesWithinNestedStep) {
    auto ctx = make_context(QLORA_BACKEND_REF);
    const int64_t rows = 300, cols = 640; // 3000 blocks of 64: 12 nested blocks, the last partial
    auto x = random_values(static_cast<size_t>(rows * cols), Dist::StudentT, 5);
    qlora_quant_params p = qlora_quant_default_params();
    auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, rows, cols, p);
    qlora_q4_info info{};
    qlora_q4_parts parts{};
    ASSERT_EQ(qlora_q4_get_info(t.get(), &info), QLORA_OK);
    ASSERT_EQ(qlora_q4_get_parts(t.get(), &parts), QLORA_OK);
    ASSERT_EQ(info.n_blocks, 3000);
    ASSERT_EQ(info.n_nested_blocks, 12);
    EXPECT_EQ(parts.absmax, nullptr);
    // offset = mean of the exact absmax (float64 here)
    std::vector<double> absmax(3000);
    double mean = 0;
    for (int b = 0; b < 3000; ++b) {
        double m = 0;
        for (int i = 0; i < 64; ++i) m = std::max(m, std::fabs(static_cast<double>(x[b * 64 + i])));
        absmax[b] = m;
        mean += m / 3000;
    }
    EXPECT_NEAR(info.nested_offset, mean, 1e-6 * mean);
    for (int b = 0; b < 3000; ++b) {
        const int nb = b / 256;
        double nested = 0;
        for (int k = nb * 256; k < std::min(3000, nb * 256 + 256); ++k)
            nested = std::max(nested, std::fabs(absmax[k] - info.nested_offset));
        EXPECT_NEAR(parts.nested_absmax[nb], nested, 1e-6 * nested);
        const double decoded = static_cast<double>(parts.nested_code[parts.qabsmax[b]]) * parts.nested_absmax[nb] +
                               parts.nested_offset;
        // the largest gap of the dynamic map is below 0.015 (at the top of the range)
        EXPECT_NEAR(decoded, absmax[b], 0.0075 * nested + 1e-6) << b;
    }
}

TEST(Q4, BitsPerParameter) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    const int64_t rows = 1024, cols = 1024;
    auto x = random_values(static_cast<size_t>(rows * cols), Dist::Normal, 9);
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_info info{};
    auto dq = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, rows, cols, p);
    ASSERT_EQ(qlora_q4_get_info(dq.get(), &info), QLORA_OK);
    EXPECT_NEAR(8.0 * info.storage_bytes / info.numel, 4.0 + 8.0 / 64 + 32.0 / (64 * 256), 1e-4);
    p.double_quant = 0;
    auto plain = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, rows, cols, p);
    ASSERT_EQ(qlora_q4_get_info(plain.get(), &info), QLORA_OK);
    EXPECT_DOUBLE_EQ(8.0 * info.storage_bytes / info.numel, 4.5);
}

// ---- every backend bit-identical to ref ----------------------------------

class Q4Backends : public ::testing::TestWithParam<std::tuple<qlora_quant_type, int, int, qlora_dtype>> {};

TEST_P(Q4Backends, MatchRefBitForBit) {
    const auto [type, blocksize, dq, dtype] = GetParam();
    const int64_t rows = 37, cols = 515; // odd numel, not a multiple of blocks
    auto xf = random_values(static_cast<size_t>(rows * cols), Dist::StudentT, 17 + blocksize);
    std::fill(xf.begin(), xf.begin() + blocksize, 0.0f); // an all-zero first block
    std::vector<uint16_t> xh(xf.size());
    void * data = xf.data();
    if (dtype != QLORA_DTYPE_F32) {
        for (size_t i = 0; i < xf.size(); ++i)
            xh[i] = dtype == QLORA_DTYPE_F16 ? qlora::f32_to_f16(xf[i]) : qlora::f32_to_bf16(xf[i]);
        data = xh.data();
    }
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = type;
    p.blocksize = blocksize;
    p.double_quant = dq;
    p.nested_blocksize = 32; // several nested blocks even for this small tensor
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    auto ref_t = quantize(ref_ctx.get(), data, dtype, rows, cols, p);
    const auto ref_packed = packed_of(ref_t.get());
    for (qlora_dtype out_dtype : {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16}) {
        std::vector<uint8_t> ref_out(static_cast<size_t>(rows * cols) * qlora_dtype_size(out_dtype));
        qlora_view rv = view_of(ref_out.data(), out_dtype, rows, cols);
        ASSERT_EQ(qlora_q4_dequantize(ref_ctx.get(), ref_t.get(), &rv), QLORA_OK) << qlora_last_error();
        for (const auto & bc : available_backends()) {
            SCOPED_TRACE(bc.name);
            auto ctx = make_context(bc.backend, bc.isa, bc.threads);
            auto t = quantize(ctx.get(), data, dtype, rows, cols, p);
            EXPECT_EQ(packed_of(t.get()), ref_packed);
            qlora_q4_info a{}, b{};
            qlora_q4_get_info(t.get(), &a);
            qlora_q4_get_info(ref_t.get(), &b);
            EXPECT_EQ(a.nested_offset, b.nested_offset);
            std::vector<uint8_t> out(ref_out.size());
            qlora_view ov = view_of(out.data(), out_dtype, rows, cols);
            ASSERT_EQ(qlora_q4_dequantize(ctx.get(), ref_t.get(), &ov), QLORA_OK) << qlora_last_error();
            EXPECT_EQ(out, ref_out) << "dequantize to dtype " << out_dtype;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(All, Q4Backends,
                         ::testing::Combine(::testing::Values(QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4),
                                            ::testing::Values(32, 64, 256, 4096), ::testing::Values(0, 1),
                                            ::testing::Values(QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16)));

// Double-quantized scales decode every entry of the 8-bit map exactly: a
// random map (random mantissas and signs, exponents from 2^-6 to 2^6) addressed by every byte
// value in a shuffled order, nested blocks of 32 starting inside a vector,
// dequantized bit for bit as REF on every backend, and the forward matvec
// (exact and int8_x) within fp32 summation error of a float64 product with
// REF's dequantized W.
TEST(Q4, EveryNestedMapEntryDecodesExactly) {
    const int64_t rows = 19, cols = 32 * 36; // 684 blocks of 32: 22 nested blocks, the last partial
    const int64_t numel = rows * cols, nb = numel / 32, nnb = (nb + 31) / 32;
    std::mt19937 rng(4242);
    std::vector<uint8_t> packed(static_cast<size_t>(numel / 2)), qabsmax(static_cast<size_t>(nb));
    for (auto & b : packed) b = static_cast<uint8_t>(rng());
    std::vector<uint8_t> order(256);
    for (int i = 0; i < 256; ++i) order[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
    for (int64_t b = 0; b < nb; b += 256) {
        std::shuffle(order.begin(), order.end(), rng);
        for (int64_t i = b; i < std::min(nb, b + 256); ++i) qabsmax[static_cast<size_t>(i)] = order[static_cast<size_t>(i - b)];
    }
    std::vector<float> nested_code(256), nested_absmax(static_cast<size_t>(nnb)), code(16);
    std::uniform_real_distribution<float> mant(1.0f, 2.0f);
    for (auto & c : nested_code)
        c = std::ldexp(mant(rng), static_cast<int>(rng() % 13) - 6) * ((rng() & 1) ? -1.0f : 1.0f);
    for (auto & a : nested_absmax) a = std::ldexp(mant(rng), -8);
    ASSERT_EQ(qlora_q4_code_table(QLORA_QUANT_NF4, code.data()), QLORA_OK);
    qlora_q4_parts parts{};
    parts.packed = packed.data();
    parts.qabsmax = qabsmax.data();
    parts.nested_absmax = nested_absmax.data();
    parts.code = code.data();
    parts.nested_code = nested_code.data();
    parts.nested_offset = 0.375f;
    qlora_quant_params p = qlora_quant_default_params();
    p.blocksize = 32;
    p.nested_blocksize = 32;
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    const std::vector<float> ref_w = [&] {
        qlora_q4_tensor_t t = nullptr;
        EXPECT_EQ(qlora_q4_from_parts(ref_ctx.get(), rows, cols, &p, QLORA_DTYPE_F32, &parts, &t), QLORA_OK);
        Q4 q(t);
        return dequantize(ref_ctx.get(), q.get(), rows, cols);
    }();
    // the decoded scales are the map's values: a spot check of the oracle itself
    for (int64_t b : {int64_t{0}, nb / 2, nb - 1}) {
        const float s = nested_code[qabsmax[static_cast<size_t>(b)]] * nested_absmax[static_cast<size_t>(b / 32)] + 0.375f;
        const uint8_t byte = packed[static_cast<size_t>(b * 16)];
        EXPECT_EQ(ref_w[static_cast<size_t>(b * 32)], code[byte >> 4] * s) << "block " << b;
    }
    const auto x = random_values(static_cast<size_t>(cols), Dist::Normal, 77);
    std::vector<double> want(static_cast<size_t>(rows)), magn(static_cast<size_t>(rows));
    for (int64_t n = 0; n < rows; ++n)
        for (int64_t k = 0; k < cols; ++k) {
            const double w = ref_w[static_cast<size_t>(n * cols + k)], xv = x[static_cast<size_t>(k)];
            want[static_cast<size_t>(n)] += w * xv;
            magn[static_cast<size_t>(n)] += std::fabs(w * xv);
        }
    for (const auto & bc : available_backends()) {
        SCOPED_TRACE(bc.name);
        auto ctx = make_context(bc.backend, bc.isa, bc.threads);
        qlora_q4_tensor_t t = nullptr;
        ASSERT_EQ(qlora_q4_from_parts(ctx.get(), rows, cols, &p, QLORA_DTYPE_F32, &parts, &t), QLORA_OK) << qlora_last_error();
        Q4 q(t);
        EXPECT_EQ(dequantize(ctx.get(), q.get(), rows, cols), ref_w);
        for (int int8 : {0, 1}) {
            std::vector<float> y(static_cast<size_t>(rows));
            qlora_view xv = view_of(const_cast<float *>(x.data()), QLORA_DTYPE_F32, 1, cols);
            qlora_view yv = view_of(y.data(), QLORA_DTYPE_F32, 1, rows);
            qlora_matmul_params mp = qlora_matmul_default_params();
            mp.int8_x = int8;
            ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, q.get(), &yv, &mp), QLORA_OK) << qlora_last_error();
            // int8_x rounds x and the code table to 8 bits (error well under 2 %
            // of sum |w x| here); exact: fp32 summation over 1152 products
            const double tol = int8 ? 0.02 : 1e-5;
            for (int64_t n = 0; n < rows; ++n)
                EXPECT_NEAR(y[static_cast<size_t>(n)], want[static_cast<size_t>(n)], tol * magn[static_cast<size_t>(n)])
                    << "row " << n << (int8 ? " (int8_x)" : "");
        }
    }
}

TEST(Q4, PartsRoundTrip) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    auto x = random_values(64 * 100 + 10, Dist::Normal, 23);
    for (int dq : {0, 1}) {
        qlora_quant_params p = qlora_quant_default_params();
        p.double_quant = dq;
        auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, 1, static_cast<int64_t>(x.size()), p);
        qlora_q4_parts parts{};
        ASSERT_EQ(qlora_q4_get_parts(t.get(), &parts), QLORA_OK);
        qlora_q4_tensor_t copy = nullptr;
        ASSERT_EQ(qlora_q4_from_parts(ctx.get(), 1, static_cast<int64_t>(x.size()), &p, QLORA_DTYPE_BF16, &parts,
                                      &copy),
                  QLORA_OK)
            << qlora_last_error();
        Q4 c(copy);
        EXPECT_EQ(dequantize(ctx.get(), c.get(), 1, static_cast<int64_t>(x.size())),
                  dequantize(ctx.get(), t.get(), 1, static_cast<int64_t>(x.size())));
        qlora_q4_info info{};
        qlora_q4_get_info(c.get(), &info);
        EXPECT_EQ(info.orig_dtype, QLORA_DTYPE_BF16);
    }
}

// ---- bad input -----------------------------------------------------------

TEST(Q4Errors, BadArgumentsReturnStatusAndMessage) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    std::vector<float> x(256, 1.0f);
    qlora_view v = view_of(x, QLORA_DTYPE_F32, 4, 64);
    qlora_quant_params p = qlora_quant_default_params();
    qlora_q4_tensor_t t = nullptr;
    auto expect_error = [&](qlora_status got, qlora_status want, const char * text) {
        EXPECT_EQ(got, want);
        EXPECT_NE(std::strstr(qlora_last_error(), text), nullptr) << qlora_last_error();
        EXPECT_EQ(t, nullptr);
    };
    expect_error(qlora_q4_quantize(nullptr, &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "context");
    expect_error(qlora_q4_quantize(ctx.get(), nullptr, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "src must not be NULL");
    expect_error(qlora_q4_quantize(ctx.get(), &v, nullptr, &t), QLORA_ERROR_INVALID_ARGUMENT, "p must not be NULL");
    for (int bs : {0, 16, 48, 8192, -64}) {
        p.blocksize = bs;
        expect_error(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "power of two");
    }
    p = qlora_quant_default_params();
    p.quant_type = static_cast<qlora_quant_type>(7);
    expect_error(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "quant_type");
    p = qlora_quant_default_params();
    qlora_view bad = v;
    bad.rows = 0;
    expect_error(qlora_q4_quantize(ctx.get(), &bad, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "dimensions");
    bad = v;
    bad.dtype = QLORA_DTYPE_U8;
    expect_error(qlora_q4_quantize(ctx.get(), &bad, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "dtype U8");
    bad = v;
    bad.data = nullptr;
    expect_error(qlora_q4_quantize(ctx.get(), &bad, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "src.data");
    x[130] = std::nanf("");
    expect_error(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "src[2, 2] is not finite");
    x[130] = INFINITY;
    expect_error(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT, "not finite");
    x[130] = 1.0f;
    ASSERT_EQ(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_OK);
    Q4 ok(t);
    std::vector<float> small(100);
    qlora_view dst = view_of(small, QLORA_DTYPE_F32, 10, 10);
    EXPECT_EQ(qlora_q4_dequantize(ctx.get(), ok.get(), &dst), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "dst has shape [10, 10] but the tensor is [4, 64]"), nullptr)
        << qlora_last_error();
    // NaN scales are rejected when building from parts.
    qlora_q4_parts parts{};
    ASSERT_EQ(qlora_q4_get_parts(ok.get(), &parts), QLORA_OK);
    std::vector<float> nested(parts.nested_absmax, parts.nested_absmax + 1);
    nested[0] = std::nanf("");
    parts.nested_absmax = nested.data();
    qlora_q4_tensor_t bad_t = nullptr;
    EXPECT_EQ(qlora_q4_from_parts(ctx.get(), 4, 64, &p, QLORA_DTYPE_F32, &parts, &bad_t), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "nested_absmax[0]"), nullptr) << qlora_last_error();
    EXPECT_EQ(bad_t, nullptr);
}

// ---- 8-bit blockwise --------------------------------------------------

TEST(Q8, BackendsMatchRefAndErrorIsBounded) {
    const int64_t n = 10000 + 3;
    auto x = random_values(static_cast<size_t>(n), Dist::StudentT, 31);
    for (int bs : {64, 256, 2048}) {
        const int64_t nb = (n + bs - 1) / bs;
        std::vector<uint8_t> q_ref(static_cast<size_t>(n));
        std::vector<float> a_ref(static_cast<size_t>(nb)), y_ref(static_cast<size_t>(n));
        auto ref_ctx = make_context(QLORA_BACKEND_REF);
        qlora_view xv = view_of(x, QLORA_DTYPE_F32, 1, n);
        qlora_view qv = view_of(q_ref, QLORA_DTYPE_U8, 1, n);
        qlora_view av = view_of(a_ref, QLORA_DTYPE_F32, 1, nb);
        qlora_view yv = view_of(y_ref, QLORA_DTYPE_F32, 1, n);
        ASSERT_EQ(qlora_q8_quantize(ref_ctx.get(), &xv, bs, nullptr, &qv, &av), QLORA_OK) << qlora_last_error();
        ASSERT_EQ(qlora_q8_dequantize(ref_ctx.get(), &qv, &av, bs, nullptr, &yv), QLORA_OK) << qlora_last_error();
        for (int64_t i = 0; i < n; ++i) {
            const double absmax = a_ref[static_cast<size_t>(i / bs)];
            EXPECT_LE(std::fabs(y_ref[i] - x[i]), 0.0075 * absmax + 1e-7) << i;
        }
        for (const auto & bc : available_backends()) {
            SCOPED_TRACE(bc.name);
            auto ctx = make_context(bc.backend, bc.isa, bc.threads);
            std::vector<uint8_t> q(static_cast<size_t>(n));
            std::vector<float> a(static_cast<size_t>(nb)), y(static_cast<size_t>(n));
            qlora_view qv2 = view_of(q, QLORA_DTYPE_U8, 1, n);
            qlora_view av2 = view_of(a, QLORA_DTYPE_F32, 1, nb);
            qlora_view yv2 = view_of(y, QLORA_DTYPE_F32, 1, n);
            ASSERT_EQ(qlora_q8_quantize(ctx.get(), &xv, bs, nullptr, &qv2, &av2), QLORA_OK);
            ASSERT_EQ(qlora_q8_dequantize(ctx.get(), &qv2, &av2, bs, nullptr, &yv2), QLORA_OK);
            EXPECT_EQ(q, q_ref);
            EXPECT_EQ(a, a_ref);
            EXPECT_EQ(y, y_ref);
        }
    }
}

TEST(Q8, ShapeErrorsNameTheArgument) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    std::vector<float> x(1000, 0.5f), a(3);
    std::vector<uint8_t> q(999);
    qlora_view xv = view_of(x, QLORA_DTYPE_F32, 1, 1000);
    qlora_view qv = view_of(q, QLORA_DTYPE_U8, 1, 999);
    qlora_view av = view_of(a, QLORA_DTYPE_F32, 1, 3);
    EXPECT_EQ(qlora_q8_quantize(ctx.get(), &xv, 256, nullptr, &qv, &av), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "q has 999 elements, src has 1000"), nullptr) << qlora_last_error();
    q.resize(1000);
    qv = view_of(q, QLORA_DTYPE_U8, 1, 1000);
    EXPECT_EQ(qlora_q8_quantize(ctx.get(), &xv, 256, nullptr, &qv, &av), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "absmax has 3 elements, expected ceil(1000 / 256) = 4"), nullptr)
        << qlora_last_error();
}
