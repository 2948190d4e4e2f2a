// Every CPU ISA level and thread count against the scalar reference, bit for
// bit, where the SIMD kernels have their edges: sizes around the block and
// vector widths, partial trailing blocks, work split across threads, zero and
// denormal blocks, values exactly on thresholds and midpoints, outputs large
// enough to span many chunks, NaN/Inf reporting, the Int4 rounding rule,
// and the 8-bit search on the default map, another sorted map and an
// unsorted one.
#include "core/buffer.hpp"
#include "core/half.hpp"
#include "cpu/quant_simd.hpp"
#include "quant/tables.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cfloat>
#include <cstring>

using namespace qtest;

namespace {

// Converts to f16/bf16, clamping finite values to the largest finite value of
// the type so that edge-of-range fp32 inputs stay finite (NaN/Inf stay).
std::vector<uint16_t> to_16(const std::vector<float> & x, qlora_dtype dtype) {
    const float max = dtype == QLORA_DTYPE_F16 ? 65504.0f : qlora::bf16_to_f32(0x7f7f);
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const float v = std::isfinite(x[i]) ? std::clamp(x[i], -max, max) : x[i];
        h[i] = dtype == QLORA_DTYPE_F16 ? qlora::f32_to_f16(v) : qlora::f32_to_bf16(v);
    }
    return h;
}

// Input data of `dtype` (bytes) from fp32 values.
std::vector<uint8_t> as_bytes(const std::vector<float> & x, qlora_dtype dtype) {
    std::vector<uint8_t> out(x.size() * qlora_dtype_size(dtype));
    if (dtype == QLORA_DTYPE_F32) std::memcpy(out.data(), x.data(), out.size());
    else std::memcpy(out.data(), to_16(x, dtype).data(), out.size());
    return out;
}

struct Parts {
    std::vector<uint8_t> packed, qabsmax;
    std::vector<float>   absmax, nested_absmax;
    float                offset = 0;
    bool operator==(const Parts & o) const {
        return packed == o.packed && qabsmax == o.qabsmax && absmax == o.absmax &&
               nested_absmax == o.nested_absmax && qlora::f32_bits(offset) == qlora::f32_bits(o.offset);
    }
};

Parts parts_of(qlora_q4_tensor_t t) {
    qlora_q4_info info{};
    qlora_q4_parts p{};
    EXPECT_EQ(qlora_q4_get_info(t, &info), QLORA_OK);
    EXPECT_EQ(qlora_q4_get_parts(t, &p), QLORA_OK);
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

Q4 quantize(qlora_context_t ctx, const void * data, qlora_dtype dtype, int64_t rows, int64_t cols,
            const qlora_quant_params & p) {
    qlora_view v = view_of(const_cast<void *>(data), dtype, rows, cols);
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ctx, &v, &p, &t), QLORA_OK) << qlora_last_error();
    return Q4(t);
}

std::vector<uint8_t> dequantize(qlora_context_t ctx, qlora_q4_tensor_t t, qlora_dtype dtype, int64_t rows,
                                int64_t cols) {
    std::vector<uint8_t> out(static_cast<size_t>(rows * cols) * qlora_dtype_size(dtype), 0xcd);
    qlora_view v = view_of(out.data(), dtype, rows, cols);
    EXPECT_EQ(qlora_q4_dequantize(ctx, t, &v), QLORA_OK) << qlora_last_error();
    return out;
}

const qlora_dtype kFloatTypes[] = {QLORA_DTYPE_F32, QLORA_DTYPE_F16, QLORA_DTYPE_BF16};
const qlora_quant_type kQuantTypes[] = {QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4};

// Quantizes x on ref and on every backend, in every input dtype and with and
// without double quant, and dequantizes (the ref tensor) to every dtype.
void expect_all_backends_match(const std::vector<float> & x, int64_t rows, int64_t cols, qlora_quant_type type,
                               int blocksize, int nested_blocksize = 256) {
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    const auto backends = available_backends();
    std::vector<Context> ctxs;
    for (const auto & bc : backends) ctxs.push_back(make_context(bc.backend, bc.isa, bc.threads));
    for (qlora_dtype in : kFloatTypes) {
        const auto data = as_bytes(x, in);
        for (int dq : {0, 1}) {
            qlora_quant_params p = qlora_quant_default_params();
            p.quant_type = type;
            p.blocksize = blocksize;
            p.double_quant = dq;
            p.nested_blocksize = nested_blocksize;
            auto ref_t = quantize(ref_ctx.get(), data.data(), in, rows, cols, p);
            ASSERT_NE(ref_t, nullptr);
            const Parts ref_parts = parts_of(ref_t.get());
            std::vector<std::vector<uint8_t>> ref_out;
            for (qlora_dtype out : kFloatTypes) ref_out.push_back(dequantize(ref_ctx.get(), ref_t.get(), out, rows, cols));
            for (size_t k = 1; k < backends.size(); ++k) {
                SCOPED_TRACE(backends[k].name + " in=" + std::to_string(in) + " dq=" + std::to_string(dq));
                auto t = quantize(ctxs[k].get(), data.data(), in, rows, cols, p);
                ASSERT_NE(t, nullptr);
                EXPECT_TRUE(parts_of(t.get()) == ref_parts) << "quantized parts differ";
                for (size_t o = 0; o < 3; ++o)
                    EXPECT_EQ(dequantize(ctxs[k].get(), ref_t.get(), kFloatTypes[o], rows, cols), ref_out[o])
                        << "dequantize to dtype " << kFloatTypes[o];
            }
        }
    }
}

} // namespace

// ---- sizes and tails ------------------------------------------------------------

class Q4Sizes : public ::testing::TestWithParam<std::tuple<qlora_quant_type, int>> {};

TEST_P(Q4Sizes, EveryBackendMatchesRefAcrossSizes) {
    const auto [type, blocksize] = GetParam();
    // below one block, one block, a block +- one element, vector-width tails,
    // odd counts, and enough blocks that 3 threads and several chunks get work
    const std::vector<std::pair<int64_t, int64_t>> shapes = {
        {1, 1},  {1, 7},   {1, 31},  {1, 33},  {3, 21},  {1, blocksize - 1}, {1, blocksize}, {1, blocksize + 1},
        {2, 80}, {5, 103}, {7, 129}, {1, 3 * blocksize + 17}, {97, 1023}, {64, 3000}};
    for (auto [rows, cols] : shapes) {
        SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(cols));
        auto x = random_values(static_cast<size_t>(rows * cols), Dist::StudentT,
                               static_cast<uint32_t>(rows * 131 + cols + blocksize));
        expect_all_backends_match(x, rows, cols, type, blocksize, 32);
    }
}

INSTANTIATE_TEST_SUITE_P(All, Q4Sizes,
                         ::testing::Combine(::testing::Values(QLORA_QUANT_NF4, QLORA_QUANT_FP4, QLORA_QUANT_INT4),
                                            ::testing::Values(32, 64, 128, 512, 4096)));

// ---- special values -------------------------------------------------------------

// Blocks of 64 built to hit the edges: all-zero blocks (also at the tail),
// -0.0, values exactly on the NF4 thresholds / FP4 literals / Int4 half
// steps (with absmax 1 so that x / absmax is exact), their fp32 neighbours,
// denormals, a block whose absmax is denormal (1 / absmax overflows to inf),
// and values near FLT_MAX.
std::vector<float> special_values() {
    std::vector<float> x;
    auto block = [&](std::vector<float> v) {
        v.resize(64, 0.0f);
        x.insert(x.end(), v.begin(), v.end());
    };
    block({});                                             // all zero
    block({-0.0f, 0.0f, -0.0f, 1.0f});                     // signed zeros, absmax 1
    std::vector<float> edges{1.0f};
    for (int i = 0; i < 15; ++i) {
        const float t = qlora::nf4_thresholds()[i];
        edges.insert(edges.end(), {t, std::nextafter(t, 2.0f), std::nextafter(t, -2.0f)});
    }
    for (float t : qlora::kFP4Thresholds) edges.insert(edges.end(), {t, -t, std::nextafter(t, 2.0f)});
    for (size_t i = 0; i < edges.size(); i += 63) {
        std::vector<float> v{1.0f};
        v.insert(v.end(), edges.begin() + static_cast<long>(i),
                 edges.begin() + static_cast<long>(std::min(edges.size(), i + 63)));
        block(v);
    }
    std::vector<float> half_steps{-1.0f};
    for (int k = -7; k <= 7; ++k) {
        float h = (static_cast<float>(k) + 0.5f) / 7.0f;
        half_steps.insert(half_steps.end(), {h, std::nextafter(h, 2.0f), std::nextafter(h, -2.0f)});
    }
    block(half_steps);
    block({1e-40f, -3e-41f, 2e-39f, -1e-45f, 0.0f, 5e-39f}); // denormal absmax: 1 / absmax = inf
    block({1e-40f, 0.5f, -1e-44f, 1e-38f, -0.25f});         // denormals next to normal values
    block({FLT_MAX, -FLT_MAX / 3, 1.0f, -1e30f, 3e38f});
    std::vector<float> tail{0.0f, -0.0f, 0.0f}; // an all-zero partial block at the end
    x.insert(x.end(), tail.begin(), tail.end());
    return x;
}

TEST(Q4Special, EdgeValuesMatchRef) {
    const auto x = special_values();
    for (qlora_quant_type type : kQuantTypes) {
        SCOPED_TRACE(type);
        expect_all_backends_match(x, 1, static_cast<int64_t>(x.size()), type, 64, 32);
        expect_all_backends_match(x, 1, static_cast<int64_t>(x.size()), type, 32, 32);
    }
}

TEST(Q4Special, ZeroBlocksDecodeToZero) {
    std::vector<float> x = random_values(64 * 40 + 5, Dist::Normal, 3);
    std::fill(x.begin() + 64 * 7, x.begin() + 64 * 9, 0.0f);
    std::fill(x.end() - 5, x.end(), 0.0f);
    for (const auto & bc : available_backends()) {
        auto ctx = make_context(bc.backend, bc.isa, bc.threads);
        for (qlora_quant_type type : kQuantTypes)
            for (int dq : {0, 1}) {
                SCOPED_TRACE(bc.name + " type " + std::to_string(type) + " dq " + std::to_string(dq));
                qlora_quant_params p = qlora_quant_default_params();
                p.quant_type = type;
                p.double_quant = dq;
                auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, 1, static_cast<int64_t>(x.size()), p);
                auto y = dequantize(ctx.get(), t.get(), QLORA_DTYPE_F32, 1, static_cast<int64_t>(x.size()));
                const float * f = reinterpret_cast<const float *>(y.data());
                for (size_t i = 64 * 7; i < 64 * 9; ++i) ASSERT_EQ(f[i], 0.0f) << i;
                for (size_t i = x.size() - 5; i < x.size(); ++i) ASSERT_EQ(f[i], 0.0f) << i;
            }
    }
}

// Scales whose products are denormal in fp32: vcvtneps2bf16 would flush them
// to zero, f32_to_bf16 rounds them; the BF16 path must fix those lanes. Also
// scales that overflow f16 and land in its subnormal range.
TEST(Q4Special, DenormalAndOverflowingScalesMatchRef) {
    const int64_t n = 64 * 64;
    auto x = random_values(static_cast<size_t>(n), Dist::Normal, 5);
    qlora_quant_params p = qlora_quant_default_params();
    p.double_quant = 0;
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    auto src = quantize(ref_ctx.get(), x.data(), QLORA_DTYPE_F32, 1, n, p);
    qlora_q4_parts parts{};
    ASSERT_EQ(qlora_q4_get_parts(src.get(), &parts), QLORA_OK);
    std::vector<float> scales(64);
    const float picks[] = {1e-39f, 3e-40f, 1.2e-38f, 1e-45f, 2e-38f, 1e-36f, 1e5f, 7e4f, 1e-6f, 3e-8f, 0.0f, 1.0f};
    for (size_t b = 0; b < scales.size(); ++b) scales[b] = picks[b % (sizeof(picks) / sizeof(picks[0]))];
    parts.absmax = scales.data();
    for (qlora_quant_type type : kQuantTypes) {
        float code[16];
        ASSERT_EQ(qlora_q4_code_table(type, code), QLORA_OK);
        parts.code = code;
        p.quant_type = type;
        qlora_q4_tensor_t raw = nullptr;
        ASSERT_EQ(qlora_q4_from_parts(ref_ctx.get(), 1, n, &p, QLORA_DTYPE_F32, &parts, &raw), QLORA_OK)
            << qlora_last_error();
        Q4 t(raw);
        for (qlora_dtype out : kFloatTypes) {
            const auto want = dequantize(ref_ctx.get(), t.get(), out, 1, n);
            for (const auto & bc : available_backends()) {
                SCOPED_TRACE(bc.name + " out " + std::to_string(out));
                auto ctx = make_context(bc.backend, bc.isa, bc.threads);
                EXPECT_EQ(dequantize(ctx.get(), t.get(), out, 1, n), want);
            }
        }
    }
}

// A code table with denormal entries (from_parts accepts any finite table).
TEST(Q4Special, DenormalCodeTableMatchesRef) {
    const int64_t n = 64 * 8;
    std::vector<uint8_t> packed(n / 2);
    for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(i * 37 + 11);
    std::vector<float> absmax{1.0f, 0.5f, 3.0f, 1e-3f, 2.0f, 0.75f, 1e10f, 1e-20f};
    float code[16];
    for (int i = 0; i < 16; ++i) code[i] = (i % 3 == 0 ? 1e-39f : 1.7e-38f) * static_cast<float>(i - 8);
    qlora_q4_parts parts{};
    parts.packed = packed.data();
    parts.absmax = absmax.data();
    parts.code = code;
    qlora_quant_params p = qlora_quant_default_params();
    p.double_quant = 0;
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    qlora_q4_tensor_t raw = nullptr;
    ASSERT_EQ(qlora_q4_from_parts(ref_ctx.get(), 8, 64, &p, QLORA_DTYPE_F32, &parts, &raw), QLORA_OK);
    Q4 t(raw);
    for (qlora_dtype out : kFloatTypes) {
        const auto want = dequantize(ref_ctx.get(), t.get(), out, 8, 64);
        for (const auto & bc : available_backends()) {
            SCOPED_TRACE(bc.name);
            auto ctx = make_context(bc.backend, bc.isa, bc.threads);
            EXPECT_EQ(dequantize(ctx.get(), t.get(), out, 8, 64), want) << "dtype " << out;
        }
    }
}

// ---- the vector coders on normalised values ---------------------------------------

TEST(Q4Coders, Nf4BucketsHoldAtMostOneThreshold) {
    const auto & b = qlora::cpu::nf4_buckets();
    EXPECT_LE(b.most, 1);
    EXPECT_EQ(b.base[0], 0);
    EXPECT_EQ(b.base[31] + (std::isinf(b.cand[31]) ? 0 : 1), 15);
    for (int j = 1; j < 32; ++j) EXPECT_GE(b.base[j], b.base[j - 1]);
}

// Blocks whose absmax is 1 (so x / absmax = x exactly) filled with a dense
// sweep of [-1, 1] plus every bucket edge of the NF4 coder, every threshold
// and FP4 literal, and the Int4 half steps, each with 8 fp32 neighbours either
// side. (An exhaustive run over every fp32 in [-1, 1] matched too; it takes
// minutes, so it is not part of the suite.)
TEST(Q4Coders, DenseSweepMatchesRef) {
    std::vector<float> centres;
    for (int j = 0; j <= 32; ++j) centres.push_back(static_cast<float>(j) / 16.0f - 1.0f);
    for (int i = 0; i < 15; ++i) centres.push_back(qlora::nf4_thresholds()[i]);
    for (float t : qlora::kFP4Thresholds) centres.insert(centres.end(), {t, -t});
    for (int k = -8; k <= 7; ++k) centres.push_back((static_cast<float>(k) + 0.5f) / 7.0f);
    std::vector<float> v;
    for (float c : centres) {
        float lo = c, hi = c;
        v.push_back(c);
        for (int k = 0; k < 8; ++k) {
            lo = std::nextafter(lo, -2.0f);
            hi = std::nextafter(hi, 2.0f);
            v.insert(v.end(), {lo, hi});
        }
    }
    for (int i = 0; i <= 400000; ++i) v.push_back(-1.0f + 2.0f * static_cast<float>(i) / 400000.0f);
    std::vector<float> x;
    for (size_t i = 0; i < v.size(); i += 63) {
        x.push_back(1.0f);
        for (size_t k = i; k < std::min(v.size(), i + 63); ++k) x.push_back(std::clamp(v[k], -1.0f, 1.0f));
        while (x.size() % 64) x.push_back(0.0f);
    }
    const int64_t n = static_cast<int64_t>(x.size());
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    for (qlora_quant_type type : kQuantTypes) {
        qlora_quant_params p = qlora_quant_default_params();
        p.quant_type = type;
        p.double_quant = 0;
        auto want = quantize(ref_ctx.get(), x.data(), QLORA_DTYPE_F32, 1, n, p);
        for (const auto & bc : available_backends()) {
            SCOPED_TRACE(bc.name + " type " + std::to_string(type));
            auto ctx = make_context(bc.backend, bc.isa, bc.threads);
            auto got = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, 1, n, p);
            EXPECT_TRUE(parts_of(got.get()) == parts_of(want.get()));
        }
    }
}

// ---- large outputs: many chunks per thread, aligned and unaligned ------------------------

TEST(Q4Large, LargeDequantizeMatchesRef) {
    const int64_t rows = 4096, cols = 2048; // 8M elements: 32 MB f32 and 16 MB bf16 outputs
    auto x = random_values(static_cast<size_t>(rows * cols), Dist::Normal, 41);
    qlora_quant_params p = qlora_quant_default_params();
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    auto t = quantize(ref_ctx.get(), x.data(), QLORA_DTYPE_F32, rows, cols, p);
    for (qlora_dtype out : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
        const size_t bytes = static_cast<size_t>(rows * cols) * qlora_dtype_size(out);
        qlora::HostArray<uint8_t> want(bytes), got(bytes + 64);
        qlora_view wv = view_of(want.data(), out, rows, cols);
        ASSERT_EQ(qlora_q4_dequantize(ref_ctx.get(), t.get(), &wv), QLORA_OK);
        for (const auto & bc : available_backends()) {
            if (bc.backend == QLORA_BACKEND_REF) continue;
            auto ctx = make_context(bc.backend, bc.isa, bc.threads);
            for (size_t offset : {size_t(0), size_t(4)}) { // 64-byte aligned and not
                SCOPED_TRACE(bc.name + " dtype " + std::to_string(out) + " offset " + std::to_string(offset));
                std::memset(got.data(), 0xcd, got.size());
                qlora_view gv = view_of(got.data() + offset, out, rows, cols);
                ASSERT_EQ(qlora_q4_dequantize(ctx.get(), t.get(), &gv), QLORA_OK);
                EXPECT_EQ(std::memcmp(got.data() + offset, want.data(), bytes), 0);
            }
        }
    }
}

// ---- NaN / Inf -------------------------------------------------------------------------

TEST(Q4Errors, NonFiniteIsReportedAtItsIndexOnEveryBackend) {
    const int64_t rows = 40, cols = 1000;
    const auto clean = random_values(static_cast<size_t>(rows * cols), Dist::Normal, 8);
    qlora_quant_params p = qlora_quant_default_params();
    for (const auto & bc : available_backends()) {
        auto ctx = make_context(bc.backend, bc.isa, bc.threads);
        for (qlora_dtype dtype : kFloatTypes)
            for (int64_t at : {int64_t(0), int64_t(63), int64_t(20000), int64_t(rows * cols - 1)})
                for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
                    SCOPED_TRACE(bc.name + " dtype " + std::to_string(dtype) + " at " + std::to_string(at));
                    auto x = clean;
                    x[static_cast<size_t>(at)] = bad;
                    x[static_cast<size_t>(std::min(at + 999, rows * cols - 1))] = bad; // a later one too
                    const auto data = as_bytes(x, dtype);
                    qlora_view v = view_of(const_cast<uint8_t *>(data.data()), dtype, rows, cols);
                    qlora_q4_tensor_t t = nullptr;
                    ASSERT_EQ(qlora_q4_quantize(ctx.get(), &v, &p, &t), QLORA_ERROR_INVALID_ARGUMENT);
                    EXPECT_EQ(t, nullptr);
                    const std::string want = "src[" + std::to_string(at / cols) + ", " + std::to_string(at % cols) +
                                             "] is not finite";
                    EXPECT_NE(std::string(qlora_last_error()).find(want), std::string::npos) << qlora_last_error();
                }
    }
}

// ---- Int4 ------------------------------------------------------------------------------

TEST(Int4, TableIsIMinus8Over7) {
    float t[16];
    ASSERT_EQ(qlora_q4_code_table(QLORA_QUANT_INT4, t), QLORA_OK);
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(t[i], static_cast<float>(i - 8) / 7.0f) << i;
        EXPECT_NEAR(t[i], (i - 8) / 7.0, 1e-7) << i;
    }
}

TEST(Int4, RoundsHalfToEvenAndClamps) {
    // values whose fp32 product x * 7 is exactly k + 0.5
    int ties = 0;
    for (int k = -8; k <= 7; ++k) {
        const float target = static_cast<float>(k) + 0.5f;
        float x = target / 7.0f;
        for (int step = 0; step < 8 && x * 7.0f != target; ++step)
            x = std::nextafter(x, x * 7.0f < target ? 2.0f : -2.0f);
        if (x * 7.0f != target) continue;
        ++ties;
        const int even = (k % 2 == 0) ? k : k + 1; // the even one of k, k + 1
        const int want = std::clamp(even, -7, 7) + 8;
        EXPECT_EQ(qlora::quantize_int4(x), want) << "x * 7 = " << target;
    }
    EXPECT_GE(ties, 8) << "too few exact ties found to test the rule";
    EXPECT_EQ(qlora::quantize_int4(1.0f), 15);
    EXPECT_EQ(qlora::quantize_int4(-1.0f), 1);
    EXPECT_EQ(qlora::quantize_int4(0.0f), 8);
    EXPECT_EQ(qlora::quantize_int4(-0.0f), 8);
    EXPECT_EQ(qlora::quantize_int4(5.0f), 15);
    EXPECT_EQ(qlora::quantize_int4(-5.0f), 1);
    EXPECT_EQ(qlora::quantize_int4(std::nextafter(0.5f / 7.0f, 0.0f)), 8);
}

TEST(Int4, NeverProducesCodeZeroAndErrorIsHalfAStep) {
    const int64_t n = 64 * 1000;
    auto x = random_values(static_cast<size_t>(n), Dist::StudentT, 77);
    for (const auto & bc : available_backends()) {
        SCOPED_TRACE(bc.name);
        auto ctx = make_context(bc.backend, bc.isa, bc.threads);
        qlora_quant_params p = qlora_quant_default_params();
        p.quant_type = QLORA_QUANT_INT4;
        p.double_quant = 0;
        auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, 1, n, p);
        const Parts parts = parts_of(t.get());
        for (uint8_t b : parts.packed) {
            ASSERT_NE(b >> 4, 0);
            ASSERT_NE(b & 0xf, 0);
        }
        auto y = dequantize(ctx.get(), t.get(), QLORA_DTYPE_F32, 1, n);
        const float * f = reinterpret_cast<const float *>(y.data());
        for (int64_t i = 0; i < n; ++i) {
            const double absmax = parts.absmax[static_cast<size_t>(i / 64)];
            ASSERT_LE(std::fabs(static_cast<double>(f[i]) - x[static_cast<size_t>(i)]), absmax * (0.5 / 7 + 1e-6)) << i;
        }
    }
}

TEST(Int4, PartsRoundTripAndInfo) {
    auto ctx = make_context(QLORA_BACKEND_CPU);
    auto x = random_values(64 * 50, Dist::Normal, 2);
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = QLORA_QUANT_INT4;
    auto t = quantize(ctx.get(), x.data(), QLORA_DTYPE_F32, 50, 64, p);
    qlora_q4_info info{};
    ASSERT_EQ(qlora_q4_get_info(t.get(), &info), QLORA_OK);
    EXPECT_EQ(info.quant_type, QLORA_QUANT_INT4);
    qlora_q4_parts parts{};
    ASSERT_EQ(qlora_q4_get_parts(t.get(), &parts), QLORA_OK);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(parts.code[i], static_cast<float>(i - 8) / 7.0f);
    qlora_q4_tensor_t copy = nullptr;
    ASSERT_EQ(qlora_q4_from_parts(ctx.get(), 50, 64, &p, QLORA_DTYPE_F32, &parts, &copy), QLORA_OK)
        << qlora_last_error();
    Q4 c(copy);
    EXPECT_EQ(dequantize(ctx.get(), c.get(), QLORA_DTYPE_F32, 50, 64), dequantize(ctx.get(), t.get(), QLORA_DTYPE_F32, 50, 64));
    EXPECT_EQ(qlora_q4_code_table(static_cast<qlora_quant_type>(3), nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::strstr(qlora_last_error(), "INT4 (2)"), nullptr) << qlora_last_error();
}

// ---- 8-bit -----------------------------------------------------------------------------

namespace {

struct Q8Out {
    std::vector<uint8_t> q;
    std::vector<float>   absmax;
};

Q8Out q8_quantize(qlora_context_t ctx, const std::vector<uint8_t> & data, qlora_dtype dtype, int64_t n, int bs,
                  const float * code) {
    Q8Out r;
    r.q.assign(static_cast<size_t>(n), 0xee);
    r.absmax.assign(static_cast<size_t>((n + bs - 1) / bs), -1.0f);
    qlora_view xv = view_of(const_cast<uint8_t *>(data.data()), dtype, 1, n);
    qlora_view qv = view_of(r.q, QLORA_DTYPE_U8, 1, n);
    qlora_view av = view_of(r.absmax, QLORA_DTYPE_F32, 1, static_cast<int64_t>(r.absmax.size()));
    std::vector<float> code_copy;
    qlora_view cv{};
    if (code) {
        code_copy.assign(code, code + 256);
        cv = view_of(code_copy, QLORA_DTYPE_F32, 1, 256);
    }
    EXPECT_EQ(qlora_q8_quantize(ctx, &xv, bs, code ? &cv : nullptr, &qv, &av), QLORA_OK) << qlora_last_error();
    return r;
}

std::vector<uint8_t> q8_dequantize(qlora_context_t ctx, Q8Out & in, int bs, const float * code, qlora_dtype dtype) {
    const int64_t n = static_cast<int64_t>(in.q.size());
    std::vector<uint8_t> out(static_cast<size_t>(n) * qlora_dtype_size(dtype), 0xcd);
    qlora_view qv = view_of(in.q, QLORA_DTYPE_U8, 1, n);
    qlora_view av = view_of(in.absmax, QLORA_DTYPE_F32, 1, static_cast<int64_t>(in.absmax.size()));
    qlora_view ov = view_of(out.data(), dtype, 1, n);
    std::vector<float> code_copy;
    qlora_view cv{};
    if (code) {
        code_copy.assign(code, code + 256);
        cv = view_of(code_copy, QLORA_DTYPE_F32, 1, 256);
    }
    EXPECT_EQ(qlora_q8_dequantize(ctx, &qv, &av, bs, code ? &cv : nullptr, &ov), QLORA_OK) << qlora_last_error();
    return out;
}

// Values that stress the search: every map entry, every midpoint and their
// fp32 neighbours, +-0, and a 1.0 in every block of 64 so that x / absmax is x.
std::vector<float> q8_edge_values(const float * code) {
    std::vector<float> v;
    for (int j = 0; j < 256; ++j) v.push_back(code[j]);
    for (int j = 0; j < 255; ++j) {
        const float m = (code[j + 1] + code[j]) * 0.5f;
        v.insert(v.end(), {m, std::nextafter(m, 2.0f), std::nextafter(m, -2.0f)});
    }
    v.insert(v.end(), {0.0f, -0.0f, 1.0f, -1.0f, 1e-45f, -1e-45f});
    std::vector<float> x;
    for (size_t i = 0; i < v.size(); i += 63) {
        x.push_back(1.0f);
        for (size_t k = i; k < std::min(v.size(), i + 63); ++k) x.push_back(v[k]);
        while (x.size() % 64) x.push_back(0.0f);
    }
    return x;
}

} // namespace

class Q8Backends : public ::testing::TestWithParam<int> {};

TEST_P(Q8Backends, MatchRefForEveryDtypeSizeAndMap) {
    const int bs = GetParam();
    // maps: bitsandbytes' signed dynamic map, a sorted linear map with a run
    // of duplicates, and an unsorted map (the SIMD path falls back to scalar)
    std::vector<std::vector<float>> maps(3, std::vector<float>(256));
    std::memcpy(maps[0].data(), qlora::signed_dynamic_map(), 256 * sizeof(float));
    for (int j = 0; j < 256; ++j) maps[1][static_cast<size_t>(j)] = -1.0f + 2.0f * static_cast<float>(j) / 255.0f;
    std::fill(maps[1].begin() + 100, maps[1].begin() + 110, maps[1][100]);
    maps[2] = random_values(256, Dist::Uniform, 12);
    auto ref_ctx = make_context(QLORA_BACKEND_REF);
    const auto backends = available_backends();
    for (size_t mi = 0; mi < maps.size(); ++mi) {
        const float * code = maps[mi].data();
        std::vector<std::vector<float>> inputs = {q8_edge_values(code)};
        for (int64_t n : {int64_t(1), int64_t(bs - 1), int64_t(bs + 1), int64_t(3 * bs + 7), int64_t(70001)})
            inputs.push_back(random_values(static_cast<size_t>(n), Dist::StudentT, static_cast<uint32_t>(n + bs)));
        inputs.back()[100] = 0.0f;
        for (const auto & x : inputs) {
            const int64_t n = static_cast<int64_t>(x.size());
            for (qlora_dtype in : kFloatTypes) {
                const auto data = as_bytes(x, in);
                const float * c = mi == 0 ? nullptr : code;
                auto want = q8_quantize(ref_ctx.get(), data, in, n, bs, c);
                std::vector<std::vector<uint8_t>> want_out;
                for (qlora_dtype out : kFloatTypes) want_out.push_back(q8_dequantize(ref_ctx.get(), want, bs, c, out));
                for (size_t k = 1; k < backends.size(); ++k) {
                    SCOPED_TRACE(backends[k].name + " map " + std::to_string(mi) + " n " + std::to_string(n) +
                                 " in " + std::to_string(in));
                    auto ctx = make_context(backends[k].backend, backends[k].isa, backends[k].threads);
                    auto got = q8_quantize(ctx.get(), data, in, n, bs, c);
                    ASSERT_EQ(got.q, want.q);
                    ASSERT_EQ(got.absmax, want.absmax);
                    for (size_t o = 0; o < 3; ++o)
                        ASSERT_EQ(q8_dequantize(ctx.get(), want, bs, c, kFloatTypes[o]), want_out[o])
                            << "out dtype " << kFloatTypes[o];
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(All, Q8Backends, ::testing::Values(32, 64, 256, 4096));

TEST(Q8Errors, NonFiniteLeavesOutputsUntouched) {
    const int64_t n = 5000;
    auto x = random_values(static_cast<size_t>(n), Dist::Normal, 4);
    x[4321] = INFINITY;
    for (const auto & bc : available_backends()) {
        auto ctx = make_context(bc.backend, bc.isa, bc.threads);
        for (qlora_dtype in : kFloatTypes) {
            SCOPED_TRACE(bc.name + " in " + std::to_string(in));
            const auto data = as_bytes(x, in);
            std::vector<uint8_t> q(static_cast<size_t>(n), 0xee);
            std::vector<float> a(static_cast<size_t>((n + 63) / 64), -1.0f);
            qlora_view xv = view_of(const_cast<uint8_t *>(data.data()), in, 1, n);
            qlora_view qv = view_of(q, QLORA_DTYPE_U8, 1, n);
            qlora_view av = view_of(a, QLORA_DTYPE_F32, 1, static_cast<int64_t>(a.size()));
            EXPECT_EQ(qlora_q8_quantize(ctx.get(), &xv, 64, nullptr, &qv, &av), QLORA_ERROR_INVALID_ARGUMENT);
            EXPECT_NE(std::strstr(qlora_last_error(), "src[4321] is not finite"), nullptr) << qlora_last_error();
            EXPECT_TRUE(std::all_of(q.begin(), q.end(), [](uint8_t v) { return v == 0xee; }));
            EXPECT_TRUE(std::all_of(a.begin(), a.end(), [](float v) { return v == -1.0f; }));
        }
    }
}
