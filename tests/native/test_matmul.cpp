// Fused 4-bit matmul: every backend against ref, ref against a float64 oracle
// computed here from the dequantized weight, determinism, errors, scratch.
#include "core/half.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

using namespace qtest;

namespace {

const float kYSentinel = -7776.0f; // y padding between rows must stay untouched (exact in bf16)

struct Case {
    qlora_matmul_op  op;
    int64_t          M, N, K;
    qlora_quant_type quant;
    int32_t          blocksize;
    bool             dq;
    qlora_dtype      x_dtype, y_dtype;
    bool             strided;
    float            alpha, beta;
    Dist             dist;
    uint32_t         seed;
};

std::string describe(const Case & c) {
    std::ostringstream s;
    s << (c.op == QLORA_MATMUL_FORWARD ? "fwd" : "bwd") << " M=" << c.M << " N=" << c.N << " K=" << c.K << " "
      << (c.quant == QLORA_QUANT_NF4 ? "nf4" : "fp4") << " bs=" << c.blocksize << (c.dq ? " dq" : " nodq")
      << " x=" << (c.x_dtype == QLORA_DTYPE_BF16 ? "bf16" : "f32")
      << " y=" << (c.y_dtype == QLORA_DTYPE_BF16 ? "bf16" : "f32") << (c.strided ? " strided" : "")
      << " alpha=" << c.alpha << " beta=" << c.beta << " " << dist_name(c.dist);
    return s.str();
}

void PrintTo(const Case & c, std::ostream * os) { *os << describe(c); }

// A host matrix of F32 or BF16 with a row stride; padding holds `pad`.
struct Mat {
    qlora_dtype           dtype = QLORA_DTYPE_F32;
    int64_t               rows = 0, cols = 0, stride = 0;
    std::vector<float>    f;
    std::vector<uint16_t> h;

    Mat(qlora_dtype d, int64_t r, int64_t c, int64_t s, float pad) : dtype(d), rows(r), cols(c), stride(s) {
        const size_t n = static_cast<size_t>(r * s);
        if (d == QLORA_DTYPE_BF16) h.assign(n, qlora::f32_to_bf16(pad));
        else f.assign(n, pad);
    }
    float get(int64_t i, int64_t j) const {
        const size_t k = static_cast<size_t>(i * stride + j);
        return dtype == QLORA_DTYPE_BF16 ? qlora::bf16_to_f32(h[k]) : f[k];
    }
    void set(int64_t i, int64_t j, float v) { // rounds to the storage type
        const size_t k = static_cast<size_t>(i * stride + j);
        if (dtype == QLORA_DTYPE_BF16) h[k] = qlora::f32_to_bf16(v);
        else f[k] = v;
    }
    qlora_view view() {
        qlora_view v{};
        v.data = dtype == QLORA_DTYPE_BF16 ? static_cast<void *>(h.data()) : static_cast<void *>(f.data());
        v.dtype = dtype;
        v.device = QLORA_DEVICE_HOST;
        v.rows = rows;
        v.cols = cols;
        v.stride = stride == cols ? 0 : stride;
        return v;
    }
    bool same_bits(const Mat & o) const { // NaN included
        return f.size() == o.f.size() && h == o.h &&
               (f.empty() || std::memcmp(f.data(), o.f.data(), sizeof(float) * f.size()) == 0);
    }
};

struct Weight {
    Q4                 q;
    std::vector<float> deq; // [N][K], as qlora_q4_dequantize gives it
};

Weight make_weight(int64_t N, int64_t K, qlora_quant_type quant, int32_t bs, bool dq, Dist dist, uint32_t seed) {
    Context ref = make_context(QLORA_BACKEND_REF);
    std::vector<float> w = random_values(static_cast<size_t>(N * K), dist, seed);
    for (auto & v : w) v *= 0.05f;
    qlora_quant_params p = qlora_quant_default_params();
    p.quant_type = quant;
    p.blocksize = bs;
    p.double_quant = dq ? 1 : 0;
    p.nested_blocksize = (seed % 3 == 0) ? 64 : 256; // the nested block size varies too
    qlora_view v = view_of(w, QLORA_DTYPE_F32, N, K);
    qlora_q4_tensor_t t = nullptr;
    EXPECT_EQ(qlora_q4_quantize(ref.get(), &v, &p, &t), QLORA_OK) << qlora_last_error();
    Weight out;
    out.q.reset(t);
    out.deq.assign(static_cast<size_t>(N * K), 0.0f);
    qlora_view d = view_of(out.deq, QLORA_DTYPE_F32, N, K);
    EXPECT_EQ(qlora_q4_dequantize(ref.get(), t, &d), QLORA_OK) << qlora_last_error();
    return out;
}

struct Problem {
    Case               c;
    Weight             w;
    Mat                x, y0;      // y0: y before the call
    std::vector<double> oracle;    // float64 result, [M][cols]
    std::vector<double> abs_sum;   // sum |x w| per element (error scale)
    int64_t            cols = 0, red = 0;
    bool               int8_x = false; // qlora_matmul_params.int8_x

    explicit Problem(const Case & cs)
        : c(cs), w(make_weight(cs.N, cs.K, cs.quant, cs.blocksize, cs.dq, cs.dist, cs.seed)),
          x(cs.x_dtype, cs.M, cs.op == QLORA_MATMUL_FORWARD ? cs.K : cs.N,
            (cs.op == QLORA_MATMUL_FORWARD ? cs.K : cs.N) + (cs.strided ? 5 : 0), std::nanf("")),
          y0(cs.y_dtype, cs.M, cs.op == QLORA_MATMUL_FORWARD ? cs.N : cs.K,
             (cs.op == QLORA_MATMUL_FORWARD ? cs.N : cs.K) + (cs.strided ? 3 : 0), kYSentinel) {
        const bool fwd = c.op == QLORA_MATMUL_FORWARD;
        cols = fwd ? c.N : c.K;
        red = fwd ? c.K : c.N;
        const std::vector<float> xv = random_values(static_cast<size_t>(c.M * red), c.dist, cs.seed + 1);
        for (int64_t m = 0; m < c.M; ++m)
            for (int64_t r = 0; r < red; ++r) x.set(m, r, xv[static_cast<size_t>(m * red + r)]);
        // beta == 0: y is write-only, so start from NaN to prove it is never read.
        const std::vector<float> yv = random_values(static_cast<size_t>(c.M * cols), Dist::Normal, cs.seed + 2);
        for (int64_t m = 0; m < c.M; ++m)
            for (int64_t j = 0; j < cols; ++j)
                y0.set(m, j, c.beta == 0.0f ? std::nanf("") : yv[static_cast<size_t>(m * cols + j)]);
        oracle.assign(static_cast<size_t>(c.M * cols), 0.0);
        abs_sum.assign(static_cast<size_t>(c.M * cols), 0.0);
        for (int64_t m = 0; m < c.M; ++m)
            for (int64_t j = 0; j < cols; ++j) {
                double acc = 0.0, s = 0.0;
                for (int64_t r = 0; r < red; ++r) {
                    const double wv = fwd ? w.deq[static_cast<size_t>(j * c.K + r)]
                                          : w.deq[static_cast<size_t>(r * c.K + j)];
                    const double p = static_cast<double>(x.get(m, r)) * wv;
                    acc += p;
                    s += std::fabs(p);
                }
                double v = static_cast<double>(c.alpha) * acc;
                if (c.beta != 0.0f) v += static_cast<double>(c.beta) * y0.get(m, j);
                oracle[static_cast<size_t>(m * cols + j)] = v;
                abs_sum[static_cast<size_t>(m * cols + j)] = std::fabs(static_cast<double>(c.alpha)) * s;
            }
    }

    qlora_matmul_params params() const {
        qlora_matmul_params p = qlora_matmul_default_params();
        p.op = c.op;
        p.alpha = c.alpha;
        p.beta = c.beta;
        p.int8_x = int8_x ? 1 : 0;
        return p;
    }

    Mat run(qlora_context_t ctx) {
        Mat y = y0;
        qlora_view xv = x.view(), yv = y.view();
        const qlora_matmul_params p = params();
        EXPECT_EQ(qlora_q4_matmul(ctx, &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
        return y;
    }
};

// Error model. Per element (worst case, cannot fail on a correct kernel):
//   |y - ref| <= (u_w + (red + 4) * 2^-23) * sum|alpha x w| + u_out * |ref| + 2^-22 * |beta y0|
// with u_w = 2^-8 when W is rounded to bf16 in the tiles, else 0, and u_out
// two units of the output type. In aggregate (normalized MSE, ggml
// test-backend-ops style): sum (y - ref)^2 / sum ref^2 <= 4 (u_w^2 + red 2^-48) + (2^-16 for a bf16 y).
struct Tolerance {
    double u_w, u_out, nmse;
};

Tolerance tolerance(const Case & c, int64_t red, bool bf16_tiles) {
    Tolerance t{};
    t.u_w = bf16_tiles ? std::ldexp(1.0, -8) : 0.0;
    t.u_out = c.y_dtype == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -23);
    t.nmse = 4.0 * (t.u_w * t.u_w + static_cast<double>(red) * std::ldexp(1.0, -48)) +
             (c.y_dtype == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -16) : 0.0);
    return t;
}

// Checks `got` against `want` (both [M][cols]); returns "" or a description.
std::string compare(const Problem & p, const Mat & got, const std::vector<double> & want, const Tolerance & t) {
    double num = 0.0, den = 0.0;
    for (int64_t m = 0; m < p.c.M; ++m) {
        for (int64_t j = 0; j < p.cols; ++j) {
            const size_t i = static_cast<size_t>(m * p.cols + j);
            const double g = got.get(m, j), w = want[i];
            if (!std::isfinite(g)) return "non-finite output at [" + std::to_string(m) + ", " + std::to_string(j) + "]";
            const double beta_y = p.c.beta == 0.0f ? 0.0 : std::fabs(p.c.beta * p.y0.get(m, j));
            const double bound = (t.u_w + static_cast<double>(p.red + 4) * std::ldexp(1.0, -23)) * p.abs_sum[i] +
                                 t.u_out * std::fabs(w) + std::ldexp(1.0, -22) * beta_y + 1e-30;
            if (std::fabs(g - w) > bound) {
                std::ostringstream s;
                s << "element [" << m << ", " << j << "]: got " << g << ", want " << w << ", |diff| " << std::fabs(g - w)
                  << " > bound " << bound;
                return s.str();
            }
            num += (g - w) * (g - w);
            den += w * w;
        }
        // padding after each row is untouched
        for (int64_t j = p.cols; j < got.stride; ++j)
            if (got.get(m, j) != kYSentinel) return "y padding overwritten in row " + std::to_string(m);
    }
    if (den > 0.0 && num / den > t.nmse) {
        std::ostringstream s;
        s << "normalized MSE " << num / den << " > " << t.nmse;
        return s.str();
    }
    return "";
}

std::vector<double> as_double(const Problem & p, const Mat & y) {
    std::vector<double> out(static_cast<size_t>(p.c.M * p.cols));
    for (int64_t m = 0; m < p.c.M; ++m)
        for (int64_t j = 0; j < p.cols; ++j) out[static_cast<size_t>(m * p.cols + j)] = y.get(m, j);
    return out;
}

bool uses_bf16_tiles(const BackendCase & b, const Case & c) {
    if (b.backend == QLORA_BACKEND_CUDA) return c.x_dtype == QLORA_DTYPE_BF16 && c.M > 8; // the cuBLAS path's tile
    return b.backend == QLORA_BACKEND_CPU && b.isa >= QLORA_ISA_AVX512_BF16 && c.x_dtype == QLORA_DTYPE_BF16;
}

// The cases: awkward shapes crossed with formats, dtypes, strides, accumulation.
std::vector<Case> all_cases() {
    struct Shape { int64_t N, K; };
    const Shape shapes[] = {
        {33, 64},   // K one block
        {70, 96},   // K % 64 != 0: blocks span rows
        {17, 31},   // K odd, < 32 and < blocksize: rows start mid-byte
        {96, 160},  // K % 32 == 0 (SIMD fast path), K % 64 != 0
        {45, 257},  // K odd and > 256
        {130, 320}, // several lane panels
        {5, 4},     // tiny
        {64, 8},    // K < 32
    };
    const int64_t Ms[] = {1, 2, 7, 8, 9, 33};
    const int32_t blocksizes[] = {64, 32, 128, 4096, 256};
    std::vector<Case> out;
    uint32_t seed = 1000;
    int i = 0;
    for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
        for (int64_t M : Ms)
            for (const Shape & s : shapes) {
                Case c{};
                c.op = op;
                c.M = M;
                c.N = s.N;
                c.K = s.K;
                c.quant = (i % 3 == 2) ? QLORA_QUANT_FP4 : QLORA_QUANT_NF4;
                c.blocksize = blocksizes[i % 5];
                c.dq = (i / 2) % 2 == 0;
                c.x_dtype = (i % 4 < 2) ? QLORA_DTYPE_F32 : QLORA_DTYPE_BF16;
                c.y_dtype = ((i / 3) % 2 == 0) ? QLORA_DTYPE_F32 : QLORA_DTYPE_BF16;
                c.strided = i % 2 == 1;
                c.alpha = (i % 7 == 3) ? -0.75f : 1.0f;
                c.beta = (i % 5 == 1) ? 1.0f : (i % 5 == 3) ? 0.5f : 0.0f;
                c.dist = (i % 3 == 1) ? Dist::StudentT : Dist::Normal;
                c.seed = seed++;
                out.push_back(c);
                ++i;
            }
    return out;
}

void check_backends(Problem & p) {
    Context refc = make_context(QLORA_BACKEND_REF);
    const Mat ref = p.run(refc.get());
    // ref against the float64 oracle: one rounding apart
    Tolerance exact{0.0, p.c.y_dtype == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24), 0.0};
    exact.nmse = 1.0;
    std::string err = compare(p, ref, p.oracle, exact);
    ASSERT_EQ(err, "") << "ref vs float64 oracle: " << describe(p.c);
    const std::vector<double> refd = as_double(p, ref);
    for (const BackendCase & b : available_backends()) {
        if (b.backend == QLORA_BACKEND_REF) continue;
        Context ctx = make_context(b.backend, b.isa, b.threads);
        const Mat got = p.run(ctx.get());
        const Tolerance t = tolerance(p.c, p.red, uses_bf16_tiles(b, p.c));
        err = compare(p, got, refd, t);
        EXPECT_EQ(err, "") << b.name << " vs ref: " << describe(p.c);
        err = compare(p, got, p.oracle, t);
        EXPECT_EQ(err, "") << b.name << " vs float64 oracle: " << describe(p.c);
    }
}

class MatmulCases : public ::testing::TestWithParam<Case> {};

} // namespace

TEST_P(MatmulCases, EveryBackendMatchesRefAndOracle) {
    Problem p(GetParam());
    check_backends(p);
}

INSTANTIATE_TEST_SUITE_P(All, MatmulCases, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case> & info) { return "case" + std::to_string(info.index); });

// Shapes that cross every tile boundary of the CPU kernels (several reduction,
// column and row blocks), on the fast (K % 32 == 0) and the generic path.
TEST(Matmul, LargeShapesCrossAllTiles) {
    // M = 300: two row blocks, cols > 448 (the column block at that M);
    // M = 20: one thread's columns > 2048 (the column block at small M);
    // M = 1 and 6 (matvec): rows longer than a scale segment (2048), then whole
    // 128-element quads, then a 32-chunk tail; M = 1, 3, 7 with K % 128 == 0
    // (the bf16 matvec for bf16 x): whole quads only, row groups plus leftovers.
    // AMX (bf16 x): M = 300 and 20 end in rows outside whole 16-row tiles;
    // backward with N = 470 ends each column block in 11 reduction pairs
    // outside whole 16-pair tiles; M = 600, N = 20 splits the rows.
    const struct { int64_t M, N, K; } shapes[] = {{300, 470, 608}, {270, 64, 601}, {20, 2100, 64}, {600, 20, 352},
                                                  {1, 37, 4256},   {6, 21, 2208},  {1, 45, 2304},
                                                  {3, 29, 4352},   {7, 13, 384}};
    uint32_t seed = 77;
    for (const auto & s : shapes)
        for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
            for (qlora_dtype xd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
                Case c{op, s.M, s.N, s.K, QLORA_QUANT_NF4, 64, true, xd, QLORA_DTYPE_F32, true, 1.0f, 1.0f,
                       Dist::Normal, seed++};
                Problem p(c);
                check_backends(p);
            }
}

// The same bits on every run, and with 1 or 3 threads.
TEST(Matmul, DeterministicAcrossRunsAndThreadCounts) {
    // {600, 20, 352}: few columns, so the rows are split (in whole row units:
    // on AMX, 32 rows, whose last 24 run partly through the vdpbf16ps kernel).
    const struct { int64_t M, N, K; } shapes[] = {{3, 200, 320}, {40, 200, 320}, {40, 77, 99}, {5, 77, 99},
                                                  {600, 20, 352}};
    for (const auto & s : shapes)
        for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
            for (qlora_dtype xd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
                Case c{op, s.M, s.N, s.K, QLORA_QUANT_NF4, 64, true, xd, QLORA_DTYPE_F32, false, 1.0f, 0.0f,
                       Dist::StudentT, 5};
                Problem p(c);
                const qlora_cpu_isa best = qlora_cpu_isa_detected();
                for (qlora_cpu_isa isa : {QLORA_ISA_SCALAR, QLORA_ISA_AVX2, QLORA_ISA_AVX512, QLORA_ISA_AVX512_BF16,
                                  QLORA_ISA_AMX_BF16}) {
                    if (isa > best) break;
                    Context one = make_context(QLORA_BACKEND_CPU, isa, 1);
                    Context three = make_context(QLORA_BACKEND_CPU, isa, 3);
                    const Mat a = p.run(one.get()), b = p.run(one.get()), c3 = p.run(three.get());
                    EXPECT_TRUE(a.same_bits(b)) << qlora_cpu_isa_name(isa) << " differs between runs: " << describe(c);
                    EXPECT_TRUE(a.same_bits(c3)) << qlora_cpu_isa_name(isa) << " differs between 1 and 3 threads: "
                                                 << describe(c);
                }
            }
}

// x too large to pack once per call (more than 64 MiB packed: fp32 panels of
// 12 rows, AMX rows of bf16 pairs) is packed block by block by each thread:
// the same bits as row slices small enough to be packed once, and sampled rows
// within the fp32 error bound of a float64 oracle.
TEST(Matmul, LargeXPackedBlockByBlockGivesTheSameBits) {
    // Slices of whole AMX tiles (32 rows), the last one a GEMM too (M > 8).
    const int64_t M = 9248, red = 4096, cols = 40, slice = 1024;
    uint32_t seed = 4242;
    for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
        for (qlora_dtype xd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
            const bool fwd = op == QLORA_MATMUL_FORWARD;
            const int64_t N = fwd ? cols : red, K = fwd ? red : 64, ycols = fwd ? N : K;
            Weight w = make_weight(N, K, QLORA_QUANT_NF4, 64, true, Dist::Normal, seed++);
            Mat x(xd, M, red, red, 0.0f);
            const std::vector<float> xv = random_values(static_cast<size_t>(M * red), Dist::Normal, seed++);
            for (int64_t m = 0; m < M; ++m)
                for (int64_t r = 0; r < red; ++r) x.set(m, r, xv[static_cast<size_t>(m * red + r)]);
            Context ctx = make_context(QLORA_BACKEND_CPU, QLORA_ISA_BEST, 2);
            qlora_matmul_params p = qlora_matmul_default_params();
            p.op = op;
            std::vector<float> y(static_cast<size_t>(M * ycols)), ys(y.size());
            qlora_view xv_all = x.view(), yv = view_of(y, QLORA_DTYPE_F32, M, ycols);
            ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv_all, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
            const size_t esize = xd == QLORA_DTYPE_BF16 ? 2 : 4;
            for (int64_t m0 = 0; m0 < M; m0 += slice) {
                const int64_t rows = std::min(slice, M - m0);
                qlora_view xs = xv_all;
                xs.data = static_cast<char *>(xv_all.data) + static_cast<size_t>(m0 * red) * esize;
                xs.rows = rows;
                qlora_view ysv = view_of(ys.data() + m0 * ycols, QLORA_DTYPE_F32, rows, ycols);
                ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xs, w.q.get(), &ysv, &p), QLORA_OK) << qlora_last_error();
            }
            EXPECT_EQ(std::memcmp(y.data(), ys.data(), sizeof(float) * y.size()), 0)
                << (fwd ? "fwd" : "bwd") << (xd == QLORA_DTYPE_BF16 ? " bf16" : " f32")
                << ": the whole x and its row slices give different bits";
            // bf16 x: W rounded to bf16 in the tiles on the BF16 ISAs (2^-8 per weight).
            const double u_w = xd == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -8) : 0.0;
            for (int64_t m : {int64_t{0}, int64_t{4103}, int64_t{4104}, int64_t{8191}, M - 1})
                for (int64_t j = 0; j < ycols; j += 7) {
                    double acc = 0.0, s = 0.0;
                    for (int64_t r = 0; r < red; ++r) {
                        const double wv = fwd ? w.deq[static_cast<size_t>(j * K + r)] : w.deq[static_cast<size_t>(r * K + j)];
                        acc += static_cast<double>(x.get(m, r)) * wv;
                        s += std::fabs(static_cast<double>(x.get(m, r)) * wv);
                    }
                    const double got = y[static_cast<size_t>(m * ycols + j)];
                    EXPECT_LE(std::fabs(got - acc), (u_w + (red + 4) * std::ldexp(1.0, -23)) * s + std::ldexp(1.0, -23) * std::fabs(acc))
                        << "row " << m << " col " << j << (fwd ? " fwd" : " bwd");
                }
        }
}

// alpha == 0 only scales y (x and W unread, so NaN in x does not matter);
// beta == 0 ignores NaN already in y.
TEST(Matmul, AlphaZeroScalesAndBetaZeroIgnoresY) {
    Weight w = make_weight(20, 64, QLORA_QUANT_NF4, 64, true, Dist::Normal, 3);
    std::vector<float> x(3 * 64, std::nanf("")), y(3 * 20, 2.0f);
    Context ctx = make_context(QLORA_BACKEND_CPU);
    qlora_view xv = view_of(x, QLORA_DTYPE_F32, 3, 64), yv = view_of(y, QLORA_DTYPE_F32, 3, 20);
    qlora_matmul_params p = qlora_matmul_default_params();
    p.alpha = 0.0f;
    p.beta = 0.5f;
    ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
    for (float v : y) EXPECT_EQ(v, 1.0f);
    const std::vector<float> fresh = random_values(x.size(), Dist::Normal, 4);
    std::copy(fresh.begin(), fresh.end(), x.begin()); // same buffer: xv still points at it
    std::fill(y.begin(), y.end(), std::nanf(""));
    p = qlora_matmul_default_params();
    ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
    for (float v : y) EXPECT_TRUE(std::isfinite(v));
}

TEST(Matmul, DefaultParams) {
    const qlora_matmul_params p = qlora_matmul_default_params();
    EXPECT_EQ(p.op, QLORA_MATMUL_FORWARD);
    EXPECT_EQ(p.alpha, 1.0f);
    EXPECT_EQ(p.beta, 0.0f);
    EXPECT_EQ(p.int8_x, 0);
}

TEST(MatmulErrors, BadArgumentsReturnStatusAndMessage) {
    Weight w = make_weight(6, 10, QLORA_QUANT_NF4, 64, true, Dist::Normal, 9);
    Context ctx = make_context(QLORA_BACKEND_CPU);
    std::vector<float> x(4 * 10, 1.0f), y(4 * 6, 0.0f), xb(4 * 6, 1.0f);
    std::vector<uint16_t> h(4 * 10, 0);
    std::vector<uint8_t> u8(4 * 6, 0);
    qlora_view xv = view_of(x, QLORA_DTYPE_F32, 4, 10), yv = view_of(y, QLORA_DTYPE_F32, 4, 6);
    qlora_matmul_params p = qlora_matmul_default_params();
    auto expect_error = [&](qlora_status want, const char * fragment, const qlora_view * a, const qlora_view * b,
                            qlora_q4_tensor_t t, const qlora_matmul_params * pp, qlora_context_t c) {
        EXPECT_EQ(qlora_q4_matmul(c, a, t, b, pp), want) << fragment;
        EXPECT_NE(std::string(qlora_last_error()).find(fragment), std::string::npos)
            << "message '" << qlora_last_error() << "' lacks '" << fragment << "'";
    };
    ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();

    // shapes: the message names x, y and W
    qlora_view bad = view_of(x, QLORA_DTYPE_F32, 4, 9);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "x [4, 9]", &bad, &yv, w.q.get(), &p, ctx.get());
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "W [6, 10]", &bad, &yv, w.q.get(), &p, ctx.get());
    qlora_view ybad = view_of(y, QLORA_DTYPE_F32, 3, 6);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "y [3, 6]", &xv, &ybad, w.q.get(), &p, ctx.get());
    // backward wants x [M, N] and y [M, K]
    p.op = QLORA_MATMUL_BACKWARD;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "backward", &xv, &yv, w.q.get(), &p, ctx.get());
    qlora_view xbv = view_of(xb, QLORA_DTYPE_F32, 4, 6), ybv = view_of(x, QLORA_DTYPE_F32, 4, 10);
    EXPECT_EQ(qlora_q4_matmul(ctx.get(), &xbv, w.q.get(), &ybv, &p), QLORA_OK) << qlora_last_error();
    p = qlora_matmul_default_params();

    // dtypes
    qlora_view f16 = view_of(h.data(), QLORA_DTYPE_F16, 4, 10);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "x has dtype F16", &f16, &yv, w.q.get(), &p, ctx.get());
    qlora_view yu8 = view_of(u8.data(), QLORA_DTYPE_U8, 4, 6);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "y has dtype U8", &xv, &yu8, w.q.get(), &p, ctx.get());
    // NULLs
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "context", &xv, &yv, w.q.get(), &p, nullptr);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "x must not be NULL", nullptr, &yv, w.q.get(), &p, ctx.get());
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "y must not be NULL", &xv, nullptr, w.q.get(), &p, ctx.get());
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "tensor", &xv, &yv, nullptr, &p, ctx.get());
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "params", &xv, &yv, w.q.get(), nullptr, ctx.get());
    qlora_view nodata = xv;
    nodata.data = nullptr;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "x.data", &nodata, &yv, w.q.get(), &p, ctx.get());
    // stride smaller than cols
    qlora_view short_stride = xv;
    short_stride.stride = 5;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "stride", &short_stride, &yv, w.q.get(), &p, ctx.get());
    // params
    qlora_matmul_params q = p;
    const int32_t bad_op = 7; // what a C or .NET caller can pass; set bytewise (no out-of-range enum in C++)
    std::memcpy(&q.op, &bad_op, sizeof(bad_op));
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "params->op", &xv, &yv, w.q.get(), &q, ctx.get());
    q = p;
    q.alpha = std::nanf("");
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "alpha", &xv, &yv, w.q.get(), &q, ctx.get());
    q = p;
    q.beta = INFINITY;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "beta", &xv, &yv, w.q.get(), &q, ctx.get());
    q = p;
    q.int8_x = 2;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "params->int8_x must be 0 or 1, got 2", &xv, &yv, w.q.get(), &q, ctx.get());
    // y overlapping x
    std::vector<float> both(4 * 10 + 4 * 6, 0.0f);
    qlora_view xo = view_of(both.data(), QLORA_DTYPE_F32, 4, 10), yo = view_of(both.data() + 30, QLORA_DTYPE_F32, 4, 6);
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "overlap", &xo, &yo, w.q.get(), &p, ctx.get());
    // device memory
    qlora_view dev = xv;
    dev.device = 0;
    expect_error(QLORA_ERROR_INVALID_ARGUMENT, "device", &dev, &yv, w.q.get(), &p, ctx.get());
}

// Scratch is owned by the context, bounded by the tiles plus one fp32 copy of
// x (never O(N*K)), and reused between calls.
TEST(MatmulScratch, PeakIsBoundedByTilesNotByWeight) {
    const int64_t N = 4096, K = 4096;
    Weight w = make_weight(N, K, QLORA_QUANT_NF4, 64, true, Dist::Normal, 11);
    const int64_t dense_bf16 = N * K * 2; // what materializing W in 16 bits would take
    for (int64_t M : {int64_t{1}, int64_t{8}, int64_t{64}, int64_t{600}})
        for (qlora_matmul_op op : {QLORA_MATMUL_FORWARD, QLORA_MATMUL_BACKWARD})
            for (qlora_dtype xd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
                Context ctx = make_context(QLORA_BACKEND_CPU, QLORA_ISA_BEST, 2);
                qlora_context_stats st{};
                ASSERT_EQ(qlora_context_get_stats(ctx.get(), &st), QLORA_OK);
                EXPECT_EQ(st.scratch_bytes, 0);
                EXPECT_EQ(st.scratch_peak_bytes, 0);
                std::vector<float> xf(static_cast<size_t>(M * 4096));
                std::vector<uint16_t> xh(static_cast<size_t>(M * 4096), 0x3f80);
                std::vector<float> y(static_cast<size_t>(M * 4096));
                for (size_t i = 0; i < xf.size(); ++i) xf[i] = 0.001f * static_cast<float>(i % 97);
                qlora_view xv = xd == QLORA_DTYPE_F32 ? view_of(xf, xd, M, 4096) : view_of(xh.data(), xd, M, 4096);
                qlora_view yv = view_of(y, QLORA_DTYPE_F32, M, 4096);
                qlora_matmul_params p = qlora_matmul_default_params();
                p.op = op;
                ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
                ASSERT_EQ(qlora_context_get_stats(ctx.get(), &st), QLORA_OK);
                EXPECT_GT(st.scratch_peak_bytes, 0);
                const int64_t x_f32 = M * 4096 * 4; // x packed once per call (GEMM) or widened (matvec)
                EXPECT_LT(st.scratch_peak_bytes, dense_bf16 / 8 + x_f32)
                    << "M=" << M << " op=" << op << ": scratch peak " << st.scratch_peak_bytes << " bytes";
                const int64_t held = st.scratch_bytes;
                ASSERT_EQ(qlora_q4_matmul(ctx.get(), &xv, w.q.get(), &yv, &p), QLORA_OK) << qlora_last_error();
                ASSERT_EQ(qlora_context_get_stats(ctx.get(), &st), QLORA_OK);
                EXPECT_EQ(st.scratch_bytes, held) << "a second identical call must reuse the scratch";
                ASSERT_EQ(qlora_context_reset_stats(ctx.get()), QLORA_OK);
                ASSERT_EQ(qlora_context_get_stats(ctx.get(), &st), QLORA_OK);
                EXPECT_EQ(st.scratch_bytes, 0);
                EXPECT_EQ(st.scratch_peak_bytes, 0);
            }
    qlora_context_stats st{};
    EXPECT_EQ(qlora_context_get_stats(nullptr, &st), QLORA_ERROR_INVALID_ARGUMENT);
    Context ctx = make_context(QLORA_BACKEND_CPU);
    EXPECT_EQ(qlora_context_get_stats(ctx.get(), nullptr), QLORA_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(qlora_context_reset_stats(nullptr), QLORA_ERROR_INVALID_ARGUMENT);
}

// ---------------------------------------------------------------------------
// 8-bit activations (qlora_matmul_params.int8_x): the REF backend's int8
// product against the exact float64 oracle within the error of the two
// roundings it adds, and the CPU kernel (AVX512-VNNI) against that REF within
// fp32 summation error; where the flag does not apply it changes no bit.
namespace {

// Per output element, the bound on |int8 product - exact| and a magnitude for
// fp32 summation error, from the spec (quant/matmul.hpp): x rounded to
// steps of amax/127 per 32-block (error <= amax/254), the code table to steps
// of cmax/127 (error <= ws * cmax / 254 per weight, ws = the block scale).
// For NF4 and FP4 the element that set a block's absmax decodes to exactly
// +-ws * cmax (code +-1 = +-cmax), so ws * cmax = max |W| over the block.
// The CPU kernel multiplies x with the unsigned bytes qw + 128 and takes the
// +128 off once per row, so what it sums in fp32 is up to
// sum (|x| + dx)(|w| + dw + 2 * (128 / 127) * wmax), wmax = max |W| over the
// block: the magnitude its summation error is bounded by.
struct Int8Bounds {
    std::vector<double> quant;  // sum |x dw| + |w dx| + |dx dw|, times |alpha|
    std::vector<double> magn;   // sum (|x| + dx)(|w| + dw + 2.02 wmax), times |alpha|
};

Int8Bounds int8_bounds(const Problem & p) {
    const int64_t K = p.c.K, N = p.c.N, bs = p.c.blocksize;
    std::vector<double> wmax(static_cast<size_t>((N * K + bs - 1) / bs), 0.0);
    for (int64_t i = 0; i < N * K; ++i)
        wmax[static_cast<size_t>(i / bs)] = std::max(wmax[static_cast<size_t>(i / bs)],
                                                     std::fabs(static_cast<double>(p.w.deq[static_cast<size_t>(i)])));
    Int8Bounds b;
    b.quant.assign(static_cast<size_t>(p.c.M * N), 0.0);
    b.magn.assign(static_cast<size_t>(p.c.M * N), 0.0);
    const double slack = 1.01, alpha = std::fabs(static_cast<double>(p.c.alpha));
    for (int64_t m = 0; m < p.c.M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            double q = 0.0, g = 0.0;
            for (int64_t c = 0; c < K / 32; ++c) {
                double amax = 0.0;
                for (int64_t k = 32 * c; k < 32 * c + 32; ++k) amax = std::max(amax, std::fabs(double{p.x.get(m, k)}));
                const double dx = slack * amax / 254.0;
                for (int64_t k = 32 * c; k < 32 * c + 32; ++k) {
                    const int64_t i = n * K + k;
                    const double wm = wmax[static_cast<size_t>(i / bs)], dw = slack * wm / 254.0;
                    const double x = std::fabs(double{p.x.get(m, k)}), w = std::fabs(double{p.w.deq[static_cast<size_t>(i)]});
                    q += x * dw + w * dx + dx * dw;
                    g += (x + dx) * (w + dw + 2.02 * wm);
                }
            }
            b.quant[static_cast<size_t>(m * N + n)] = alpha * q;
            b.magn[static_cast<size_t>(m * N + n)] = alpha * g;
        }
    return b;
}

// "" or the first element of `got` farther than bound(i) from `want`.
template <class Bound>
std::string compare_int8(const Problem & p, const Mat & got, const std::vector<double> & want, Bound bound) {
    for (int64_t m = 0; m < p.c.M; ++m) {
        for (int64_t j = 0; j < p.cols; ++j) {
            const size_t i = static_cast<size_t>(m * p.cols + j);
            const double g = got.get(m, j), w = want[i];
            const double beta_y = p.c.beta == 0.0f ? 0.0 : std::fabs(p.c.beta * p.y0.get(m, j));
            const double u_out = p.c.y_dtype == QLORA_DTYPE_BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -23);
            const double lim = bound(i) + u_out * std::fabs(w) + std::ldexp(1.0, -22) * beta_y + 1e-30;
            if (!(std::fabs(g - w) <= lim)) {
                std::ostringstream s;
                s << "element [" << m << ", " << j << "]: got " << g << ", want " << w << ", |diff| " << std::fabs(g - w)
                  << " > bound " << lim;
                return s.str();
            }
        }
        for (int64_t j = p.cols; j < got.stride; ++j)
            if (got.get(m, j) != kYSentinel) return "y padding overwritten in row " + std::to_string(m);
    }
    return "";
}

bool has_int8_kernel(const BackendCase & b) { return b.backend == QLORA_BACKEND_CPU && b.isa >= QLORA_ISA_AVX512_BF16; }

void check_int8(Problem & p) {
    p.int8_x = true;
    const Int8Bounds bounds = int8_bounds(p);
    Context refc = make_context(QLORA_BACKEND_REF);
    const Mat ref = p.run(refc.get());
    std::string err = compare_int8(p, ref, p.oracle, [&](size_t i) { return bounds.quant[i]; });
    ASSERT_EQ(err, "") << "ref int8 vs float64 oracle: " << describe(p.c);
    // a real approximation: not the exact product (catches a flag that is ignored)
    double diff = 0.0;
    for (int64_t m = 0; m < p.c.M; ++m)
        for (int64_t j = 0; j < p.cols; ++j)
            diff = std::max(diff, std::fabs(ref.get(m, j) - p.oracle[static_cast<size_t>(m * p.cols + j)]));
    EXPECT_GT(diff, 0.0) << describe(p.c);
    const std::vector<double> refd = as_double(p, ref);
    const double fsum = static_cast<double>(p.c.K / 8 + 16) * std::ldexp(1.0, -23);
    for (const BackendCase & b : available_backends()) {
        if (!has_int8_kernel(b)) continue;
        Context ctx = make_context(b.backend, b.isa, b.threads);
        const Mat got = p.run(ctx.get());
        err = compare_int8(p, got, refd, [&](size_t i) { return fsum * bounds.magn[i]; });
        EXPECT_EQ(err, "") << b.name << " int8 vs ref int8: " << describe(p.c);
    }
}

} // namespace

// M = 1 (generation) has its own CPU loop for blocks of 32 to 128 elements:
// rows as units of 16 quads, the last unit of a row shorter when K % 2048 != 0
// (K = 2176: 17 quads, 4224: 33), rows shared by 1 or 3 threads; blocks of
// 256 take the general path.
TEST(MatmulInt8, SingleRowMatchesRefForEveryBlockSizeAndRowLength) {
    uint32_t seed = 900;
    int i = 0;
    for (int32_t bs : {32, 64, 128, 256})
        for (int64_t K : {int64_t{128}, int64_t{2176}, int64_t{4224}})
            for (bool dq : {false, true}) {
                Case c{QLORA_MATMUL_FORWARD, 1, 13 + 2 * i, K, i % 4 == 3 ? QLORA_QUANT_FP4 : QLORA_QUANT_NF4, bs, dq,
                       i % 2 == 0 ? QLORA_DTYPE_F32 : QLORA_DTYPE_BF16, QLORA_DTYPE_F32, false, 1.0f, 0.0f,
                       i % 3 == 2 ? Dist::StudentT : Dist::Normal, seed++};
                ++i;
                Problem p(c);
                check_int8(p);
            }
}

// The forward matvecs hand rows out in chunks of about 64 KB of weights (32
// rows at K = 4096, 60 at K = 2176; ChunkQueue): with 2 and 3 threads, the
// ranges a thread takes from its own run and those it takes from the back of
// another's give every row once (y starts as NaN), with the bits of one
// thread: exact with f32 and bf16 x, M = 1 and 3, and int8_x with blocks of
// 32, 64 and 128 (the M = 1 loop), checked against REF too.
TEST(Matmul, ChunkedMatvecRowsGiveTheBitsOfOneThread) {
    uint32_t seed = 950;
    const qlora_cpu_isa isa = qlora_cpu_isa_detected();
    int i = 0;
    for (int64_t K : {int64_t{2176}, int64_t{4096}})
        for (int32_t bs : {32, 64, 128}) {
            Case c{QLORA_MATMUL_FORWARD, i % 2 == 0 ? 1 : 3, 301 + i, K, QLORA_QUANT_NF4, bs, i % 2 == 0,
                   i % 3 == 0 ? QLORA_DTYPE_BF16 : QLORA_DTYPE_F32, QLORA_DTYPE_F32, false, 1.0f, 0.0f, Dist::Normal,
                   seed++};
            ++i;
            Problem p(c);
            for (bool int8 : {false, true}) {
                p.int8_x = int8;
                Context one = make_context(QLORA_BACKEND_CPU, isa, 1);
                const Mat a = p.run(one.get());
                for (int threads : {2, 3}) {
                    Context many = make_context(QLORA_BACKEND_CPU, isa, threads);
                    for (int run = 0; run < 3; ++run)
                        EXPECT_TRUE(a.same_bits(p.run(many.get())))
                            << (int8 ? "int8_x, " : "exact, ") << threads << " threads: " << describe(c);
                }
            }
            if (c.M == 1) check_int8(p);
        }
}

TEST(MatmulInt8, CpuMatchesRefAndRefIsWithinQuantizationError) {
    // K % 128 == 0; K = 2176 and 4224 cross a scale segment (2048) with a
    // partial one; blocks of 4096 span rows; M = 1 .. 8.
    const struct { int64_t M, N, K; } shapes[] = {{1, 37, 128}, {2, 70, 384},  {3, 16, 2176}, {4, 9, 4224},
                                                  {5, 11, 256}, {6, 13, 640}, {7, 5, 1152},  {8, 19, 512}};
    const int32_t blocksizes[] = {64, 32, 128, 4096, 256};
    uint32_t seed = 500;
    int i = 0;
    for (const auto & s : shapes)
        for (qlora_dtype xd : {QLORA_DTYPE_F32, QLORA_DTYPE_BF16}) {
            Case c{QLORA_MATMUL_FORWARD, s.M, s.N, s.K, i % 3 == 2 ? QLORA_QUANT_FP4 : QLORA_QUANT_NF4,
                   blocksizes[i % 5], (i / 2) % 2 == 0, xd, (i / 3) % 2 == 0 ? QLORA_DTYPE_F32 : QLORA_DTYPE_BF16,
                   i % 2 == 1, i % 7 == 3 ? -0.75f : 1.0f, i % 5 == 1 ? 1.0f : 0.0f,
                   i % 3 == 1 ? Dist::StudentT : Dist::Normal, seed++};
            ++i;
            Problem p(c);
            check_int8(p);
        }
}

// Where int8_x does not apply (backward, M > 8, K % 128 != 0, ISAs without
// the int8 kernel, x with a NaN or Inf) the result has the bits of a call
// without it.
TEST(MatmulInt8, FlagChangesNothingWhereItDoesNotApply) {
    const Case cases[] = {
        {QLORA_MATMUL_BACKWARD, 1, 128, 256, QLORA_QUANT_NF4, 64, true, QLORA_DTYPE_F32, QLORA_DTYPE_F32, false, 1.0f,
         0.0f, Dist::Normal, 31},
        {QLORA_MATMUL_FORWARD, 9, 40, 256, QLORA_QUANT_NF4, 64, true, QLORA_DTYPE_F32, QLORA_DTYPE_F32, false, 1.0f,
         0.0f, Dist::Normal, 32},
        {QLORA_MATMUL_FORWARD, 2, 40, 160, QLORA_QUANT_NF4, 32, true, QLORA_DTYPE_BF16, QLORA_DTYPE_F32, false, 1.0f,
         0.0f, Dist::Normal, 33},
        {QLORA_MATMUL_FORWARD, 3, 40, 384, QLORA_QUANT_FP4, 64, false, QLORA_DTYPE_F32, QLORA_DTYPE_F32, true, 1.0f,
         1.0f, Dist::Normal, 34},
    };
    for (const Case & c : cases) {
        Problem p(c);
        const bool applies = c.op == QLORA_MATMUL_FORWARD && c.M <= 8 && c.K % 128 == 0;
        for (const BackendCase & b : available_backends()) {
            if (b.backend == QLORA_BACKEND_CUDA) continue;
            if (applies && (b.backend == QLORA_BACKEND_REF || has_int8_kernel(b))) continue;
            Context ctx = make_context(b.backend, b.isa, b.threads);
            p.int8_x = false;
            const Mat exact = p.run(ctx.get());
            p.int8_x = true;
            const Mat flagged = p.run(ctx.get());
            EXPECT_TRUE(exact.same_bits(flagged)) << b.name << ": " << describe(c);
        }
    }
    // a NaN or an Inf in x: the exact product, which propagates it
    for (float bad : {std::nanf(""), INFINITY}) {
        Problem p(cases[3]);
        p.x.set(1, 200, bad);
        for (const BackendCase & b : available_backends()) {
            if (b.backend == QLORA_BACKEND_CUDA) continue;
            Context ctx = make_context(b.backend, b.isa, b.threads);
            p.int8_x = false;
            const Mat exact = p.run(ctx.get());
            p.int8_x = true;
            const Mat flagged = p.run(ctx.get());
            EXPECT_TRUE(exact.same_bits(flagged)) << b.name << " with " << bad << " in x";
            EXPECT_FALSE(std::isfinite(flagged.get(1, 0))) << b.name;
        }
    }
}
